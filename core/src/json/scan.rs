//! The JSON reader's byte scans (`mod.rs` holds the reader): where a key or
//! a string ends, a small integer read without the float parser, a number's
//! syntax, and escapes. Each works on bytes it is given and returns offsets
//! or values; none may move the reader or keep state between calls.

use super::JsonError;

/// Where the usual key at `at` ends: the offset of its closing quote, when
/// it is a short string (see [`short_string_end`]) and a `:` follows it.
/// `None` leaves the key to `Reader::other_key`, which reads every key this
/// does, the same way.
#[inline(never)]
pub(super) fn short_key_end(buf: &[u8], at: usize) -> Option<usize> {
    quoted_end::<true>(buf, at)
}

/// Where the usual string value at `at` ends: the offset of its closing
/// quote, when `at` holds its opening one (no white space before it), it has
/// no backslash and that quote is within the first 32 bytes after `at`.
/// `None` leaves the string to `Reader::other_string`, which reads every
/// string this does, the same way.
#[inline(never)]
pub(super) fn short_string_end(buf: &[u8], at: usize) -> Option<usize> {
    quoted_end::<false>(buf, at)
}

/// The scan of both short readings (`COLON`: a `:` must follow the closing
/// quote, as after a key), inlined into each. Each is a leaf that calls
/// nothing and saves two registers, where the general reading saved six:
/// about 20 instructions a key less (docs/perf.md, "Thirtieth pass"). Bytes
/// are read with `get`, not by index: a bounds check's panic is a call, and
/// with it the scans saved five. Written as two functions with the colon
/// test between them, the key's scan saved five as well.
#[inline(always)]
fn quoted_end<const COLON: bool>(buf: &[u8], at: usize) -> Option<usize> {
    let rest = buf.get(at..)?;
    if rest.first() != Some(&b'"') {
        return None;
    }
    let text = &rest[1..];
    let len = quote_or_backslash_in_words(text)?;
    let closed = text.get(len) == Some(&b'"') && (!COLON || text.get(len + 1) == Some(&b':'));
    closed.then_some(at + 1 + len)
}

/// The offset of the first `"` or `\` in the first 32 bytes of `bytes`;
/// `None` past them (and, for fewer than 32 bytes, in a last part shorter
/// than eight). With 32 bytes to read, sixteen at a time, which x86-64 always
/// has (SSE2): a key's scan is then one compare of its first sixteen bytes.
#[inline]
fn quote_or_backslash_in_words(bytes: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(block) = bytes.first_chunk::<32>() {
        return quote_or_backslash_in_32(block);
    }
    quote_or_backslash_in_words_of_8(bytes)
}

/// [`quote_or_backslash_in_words`] over 32 bytes with SSE2: a mask of the
/// matches in each half, the second half read only when the first has none.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn quote_or_backslash_in_32(block: &[u8; 32]) -> Option<usize> {
    use std::arch::x86_64::{__m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8};
    let matches = |half: &[u8; 16]| {
        // SAFETY: SSE2 is part of x86-64; the unaligned load reads exactly the 16 bytes of `half`.
        unsafe {
            let bytes = _mm_loadu_si128(half.as_ptr().cast::<__m128i>());
            let quotes = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
            let backslashes = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
            _mm_movemask_epi8(_mm_or_si128(quotes, backslashes)) as u32
        }
    };
    let (first, second) = block.split_at(16);
    let first = matches(first.try_into().expect("16 bytes"));
    if first != 0 {
        return Some(first.trailing_zeros() as usize);
    }
    let second = matches(second.try_into().expect("16 bytes"));
    (second != 0).then(|| 16 + second.trailing_zeros() as usize)
}

/// [`quote_or_backslash_in_words`] eight bytes at a time, on any target. On
/// x86-64 only the last 31 bytes of a body come here: out of line, so that
/// the scans' usual path saves fewer registers.
#[cfg_attr(target_arch = "x86_64", inline(never))]
#[cfg_attr(not(target_arch = "x86_64"), inline)]
fn quote_or_backslash_in_words_of_8(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // A byte's high bit is set where the byte is zero; bits above a zero
    // byte may be set falsely (the borrow), never below it, so the lowest
    // set bit marks the first match.
    let zero_bytes = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
    for (n, word) in bytes.chunks_exact(8).take(4).enumerate() {
        let word = u64::from_le_bytes(word.try_into().expect("chunks of 8"));
        let found = zero_bytes(word ^ (ONES * u64::from(b'"'))) | zero_bytes(word ^ (ONES * u64::from(b'\\')));
        if found != 0 {
            return Some(n * 8 + found.trailing_zeros() as usize / 8);
        }
    }
    None
}

/// The offset of the first `"` or `\` in `bytes`. Keys and most strings end
/// within 32 bytes, which `quote_or_backslash_in_words` scans without
/// memchr's set-up; a string running past them is left to memchr.
pub fn quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    if let Some(at) = quote_or_backslash_in_words(bytes) {
        return Some(at);
    }
    let scanned = bytes.len().min(32) / 8 * 8;
    memchr::memchr2(b'"', b'\\', &bytes[scanned..]).map(|at| scanned + at)
}

pub(super) fn even_backslashes_before(buf: &[u8], start: usize, quote: usize) -> bool {
    buf[start..quote].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 0
}

pub(super) fn all_quotes_escaped(raw: &[u8]) -> bool {
    raw.iter().enumerate().filter(|(_, &b)| b == b'"').all(|(i, _)| !even_backslashes_before(raw, 0, i))
}

/// The common number, an integer of at most 15 digits (exact as an `f64`),
/// read without the float parser: its value and length. Anything else
/// (a fraction, an exponent, a leading zero, a non-finite token, more digits)
/// is `None`, for the general path to read or refuse.
pub(super) fn small_integer(rest: &[u8]) -> Option<(f64, usize)> {
    let negative = rest.first() == Some(&b'-');
    let first = usize::from(negative);
    let mut value = 0u64;
    let mut at = first;
    while let Some(&digit @ b'0'..=b'9') = rest.get(at) {
        if at - first == 15 {
            return None;
        }
        value = value * 10 + u64::from(digit - b'0');
        at += 1;
    }
    let digits = at - first;
    let leading_zero = digits > 1 && rest[first] == b'0';
    if digits == 0 || leading_zero || matches!(rest.get(at), Some(b'.' | b'e' | b'E' | b'+' | b'-')) {
        return None;
    }
    let value = value as f64;
    Some((if negative { -value } else { value }, at))
}

pub(super) fn is_json_number(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match digits.find(['e', 'E']) {
        Some(i) => (&digits[..i], Some(&digits[i + 1..])),
        None => (digits, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    all_digits(int)
        && !(int.len() > 1 && int.starts_with('0'))
        && frac.is_none_or(all_digits)
        && exponent.is_none_or(|e| all_digits(e.strip_prefix(['+', '-']).unwrap_or(e)))
}

/// Decodes JSON escapes in a string body; raw control characters pass through.
pub(super) fn unescape(raw: &[u8], base: usize) -> Result<String, Box<JsonError>> {
    let err = |at: usize, reason: &str, syntax: bool| JsonError::at(base + at, reason, syntax);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let Some(&escape) = raw.get(i + 1) else {
            return Err(err(i, "dangling backslash", true));
        };
        i += 2;
        let ch = match escape {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let (ch, used) = unicode_escape(&raw[i..]).ok_or_else(|| err(i - 2, "invalid \\u escape", true))?;
                i += used;
                ch
            }
            _ => return Err(err(i - 2, "invalid escape", true)),
        };
        let mut tmp = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
    }
    String::from_utf8(out).map_err(|e| err(e.utf8_error().valid_up_to(), "string is not UTF-8", false))
}

/// Decodes the hex digits after `\u` (and a following low surrogate), returning
/// the character and how many bytes were used.
fn unicode_escape(rest: &[u8]) -> Option<(char, usize)> {
    let hex = |s: &[u8]| std::str::from_utf8(s.get(..4)?).ok().and_then(|h| u32::from_str_radix(h, 16).ok());
    let high = hex(rest)?;
    if (0xD800..0xDC00).contains(&high) {
        if rest.get(4..6) == Some(b"\\u") {
            let low = hex(&rest[6..])?;
            if (0xDC00..0xE000).contains(&low) {
                let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                return char::from_u32(code).map(|c| (c, 10));
            }
        }
        return Some(('\u{FFFD}', 4));
    }
    Some((char::from_u32(high).unwrap_or('\u{FFFD}'), 4))
}

//! A pull reader for the field mod's JSON dialect, straight from the request buffer.
//!
//! It accepts strict JSON plus every quirk of the BalatroMCP encoder: bare `inf`,
//! `-inf`, `nan`, `-nan` (and `Infinity`/`NaN`), raw control characters inside
//! strings, and unescaped object keys where they can be read unambiguously. Strings
//! are borrowed from the buffer unless they contain escapes. The reader never builds
//! a tree for the caller; [`Reader::value`] builds a protobuf `Value` only where
//! the caller asks for one (unknown keys). It must never guess: input that has two
//! readings is a [`JsonError`] with the byte offset.

use std::borrow::Cow;

mod built;
mod scan;
pub use built::{list_slot_bytes, FIRST_LIST_SLOTS, HELD_PER_STRUCT, HELD_PER_VALUE};
pub use scan::quote_or_backslash;
use scan::{
    all_quotes_escaped, even_backslashes_before, is_json_number, short_key_end, short_string_end, small_integer,
    unescape,
};

/// Deeper nesting than this is refused rather than risking the stack.
pub const MAX_DEPTH: u32 = 512;

/// What went wrong, and where. The reader returns it boxed (`JsonError::at`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason} at byte {offset}")]
pub struct JsonError {
    /// Byte offset into the body.
    pub offset: usize,
    pub reason: String,
    /// A syntax error makes the rest of the body unreadable; a value error (bad
    /// UTF-8 in a string) spoils only the value it is in.
    pub syntax: bool,
}

/// The kind of value a byte starts, where that byte alone says it (not
/// white space, not `n`, which starts `null` and `nan`).
const KIND_OF_BYTE: [Option<Kind>; 256] = {
    let mut table = [None; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            b'{' => Some(Kind::Object),
            b'[' => Some(Kind::Array),
            b'"' => Some(Kind::String),
            b't' | b'f' => Some(Kind::Bool),
            b'-' | b'0'..=b'9' | b'i' | b'I' | b'N' => Some(Kind::Number),
            _ => None,
        };
        b += 1;
    }
    table
};

/// The JSON type of the next value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

// A string's reading is no larger than its `Cow` (the tag fits in the
// `Cow`'s spare bits). With the error unboxed, it is not: the build stops here.
const _: () = assert!(std::mem::size_of::<Result<Cow<'static, str>, Box<JsonError>>>() <= 24);

impl JsonError {
    /// An error at byte `offset`, boxed as the reader returns it: a `Result`
    /// holding the 40-byte error inline is copied through memory at every
    /// `?` of the decoder's hot path (see `adapt::Result` for the measure).
    /// Cold, so that building one stays out of the callers' inlined code.
    #[cold]
    pub(crate) fn at(offset: usize, reason: impl Into<String>, syntax: bool) -> Box<Self> {
        Box::new(JsonError { offset, reason: reason.into(), syntax })
    }
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Object => "object",
            Kind::Array => "array",
            Kind::String => "string",
            Kind::Number => "number",
            Kind::Bool => "boolean",
            Kind::Null => "null",
        }
    }
}

/// Reads one JSON document from a byte buffer.
pub struct Reader<'a> {
    buf: &'a [u8],
    /// `buf` as text when all of it is UTF-8 (checked once, for the whole
    /// body): then a string between two quotes is a slice of it, with no check
    /// of its own. A body with invalid bytes is checked string by string, so
    /// only the events holding them are refused.
    text: Option<&'a str>,
    pos: usize,
    depth: u32,
    /// Heap bytes built so far beyond copies of the input's strings: the
    /// `Value`s and `Struct`s of [`Reader::value`], and what callers note
    /// with [`Reader::note_built`] (their lists' slots, formatted numbers).
    /// A list of empty objects builds fifty times its bytes, so callers that
    /// bound memory count this, not the input's length.
    built_bytes: usize,
    /// [`Reader::note_built`] fails once `built_bytes` passes this: a caller
    /// holds one value's reading to the memory it was granted.
    built_ceiling: usize,
}

const NON_FINITE: &[(&[u8], f64)] = &[
    (b"-Infinity", f64::NEG_INFINITY),
    (b"Infinity", f64::INFINITY),
    (b"-inf", f64::NEG_INFINITY),
    (b"inf", f64::INFINITY),
    (b"-nan", f64::NAN),
    (b"nan", f64::NAN),
    (b"NaN", f64::NAN),
];

/// A UTF-8 byte order mark. RFC 8259 lets a reader ignore one before a JSON
/// text, and some clients' JSON writers put it there (.NET's and
/// PowerShell's UTF-8 encodings, by default).
pub const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

impl<'a> Reader<'a> {
    /// A reader of a whole request body: past its byte order mark, if it
    /// opens with one. Offsets stay the body's own.
    pub fn of_body(buf: &'a [u8]) -> Self {
        let mut reader = Self::new(buf);
        if buf.starts_with(BYTE_ORDER_MARK) {
            reader.pos = BYTE_ORDER_MARK.len();
        }
        reader
    }

    pub fn new(buf: &'a [u8]) -> Self {
        // SIMD validation: the whole body at once costs less than checking each string.
        Self {
            buf,
            text: simdutf8::basic::from_utf8(buf).ok(),
            pos: 0,
            depth: 0,
            built_bytes: 0,
            built_ceiling: usize::MAX,
        }
    }

    /// `buf[start..end]` as text, when the whole body is UTF-8 (the bounds sit
    /// next to ASCII quotes, so they are character boundaries).
    #[inline]
    fn text_of(&self, start: usize, end: usize) -> Option<&'a str> {
        self.text?.get(start..end)
    }

    /// The current byte offset.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// Moves back to an offset this reader has already passed (to skip a value
    /// whose contents the caller rejected).
    pub fn rewind(&mut self, offset: usize, depth: u32) {
        self.pos = offset;
        self.depth = depth;
    }

    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The bytes between two offsets.
    pub fn slice(&self, start: usize, end: usize) -> &'a [u8] {
        &self.buf[start..end]
    }

    #[cold]
    fn syntax(&self, reason: impl Into<String>) -> Box<JsonError> {
        JsonError::at(self.pos, reason, true)
    }

    fn skip_ws(&mut self) {
        // The mod writes no white space: one comparison usually ends it.
        if self.buf.get(self.pos).is_some_and(|&b| b > b' ') {
            return;
        }
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.buf.get(self.pos) {
            self.pos += 1;
        }
    }

    #[inline]
    fn peek_byte(&mut self) -> Result<u8, Box<JsonError>> {
        self.skip_ws();
        self.buf.get(self.pos).copied().ok_or_else(|| self.syntax("unexpected end of body"))
    }

    #[inline]
    fn expect(&mut self, byte: u8) -> Result<(), Box<JsonError>> {
        if self.peek_byte()? == byte {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.syntax(format!("expected `{}`", byte as char)))
        }
    }

    /// The kind of the next value, without consuming it.
    #[inline]
    pub fn peek(&mut self) -> Result<Kind, Box<JsonError>> {
        // One load from a table for the usual value, no white space before
        // it; the rest out of line (docs/perf.md, "Thirtieth pass").
        match self.buf.get(self.pos).and_then(|&b| KIND_OF_BYTE[usize::from(b)]) {
            Some(kind) => Ok(kind),
            None => self.other_peek(),
        }
    }

    /// [`Reader::peek`] after white space, at `n` (`null` or `nan`), or at
    /// what starts no value.
    #[inline(never)]
    fn other_peek(&mut self) -> Result<Kind, Box<JsonError>> {
        Ok(match self.peek_byte()? {
            b'{' => Kind::Object,
            b'[' => Kind::Array,
            b'"' => Kind::String,
            b't' | b'f' => Kind::Bool,
            b'n' if self.buf[self.pos..].starts_with(b"null") => Kind::Null,
            b'-' | b'0'..=b'9' | b'i' | b'I' | b'n' | b'N' => Kind::Number,
            _ => return Err(self.syntax("expected a value")),
        })
    }

    /// Checks that nothing but white space follows the document.
    pub fn finish(&mut self) -> Result<(), Box<JsonError>> {
        self.skip_ws();
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(self.syntax("unexpected data after the JSON document"))
        }
    }

    fn enter(&mut self) -> Result<(), Box<JsonError>> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.syntax(format!("nesting deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    /// Reads an object, calling `on_key` for each key with the reader placed on its
    /// value. `on_key` must consume the value.
    pub fn object<E: From<Box<JsonError>>>(
        &mut self,
        mut on_key: impl FnMut(&mut Self, Cow<'a, str>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.expect(b'{')?;
        self.enter()?;
        if self.peek_byte()? == b'}' {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            let key = self.key()?;
            on_key(self, key)?;
            match self.peek_byte()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(self.syntax("expected `,` or `}` in object").into()),
            }
        }
    }

    /// Reads an array, calling `on_item` with the index and the reader placed on
    /// each element. The field mod writes an empty list as `{}`, which is accepted
    /// here as an empty array.
    pub fn array<E: From<Box<JsonError>>>(
        &mut self,
        mut on_item: impl FnMut(&mut Self, usize) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.peek_byte()? == b'{' {
            return self
                .object(|r, key| Err(r.syntax(format!("expected a list, found an object with key `{key}`")).into()));
        }
        self.expect(b'[')?;
        self.enter()?;
        if self.peek_byte()? == b']' {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        let mut index = 0;
        loop {
            on_item(self, index)?;
            index += 1;
            match self.peek_byte()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(self.syntax("expected `,` or `]` in array").into()),
            }
        }
    }

    /// Reads an object key and the `:` after it (the scan that finds the key
    /// finds the colon). The field mod does not escape keys, so a key ends at
    /// the first `"` that is followed by `:`. A key with a backslash is read
    /// with JSON escapes when that is the only valid reading; when both the
    /// escaped and the literal reading are valid and differ, the body is
    /// ambiguous and refused.
    #[inline]
    fn key(&mut self) -> Result<Cow<'a, str>, Box<JsonError>> {
        if let Some(quote) = short_key_end(self.buf, self.pos) {
            if let Some(text) = self.text_of(self.pos + 1, quote) {
                self.pos = quote + 2;
                return Ok(Cow::Borrowed(text));
            }
        }
        self.other_key()
    }

    /// Every key [`short_key_end`] leaves: after white space, longer than
    /// its scan, or unusual. Out of line, so that [`Reader::key`] stays
    /// small enough to be inlined into each object's loop: a call to the
    /// short scan, and one to this.
    #[inline(never)]
    fn other_key(&mut self) -> Result<Cow<'a, str>, Box<JsonError>> {
        if self.peek_byte()? != b'"' {
            return Err(self.syntax("expected a string key"));
        }
        let start = self.pos + 1;
        match self.plain_key(start) {
            Some(key) => Ok(key),
            None => self.unusual_key(start),
        }
    }

    /// A key [`Reader::plain_key`] does not read (a backslash or quote in it,
    /// space before its colon), out of line: the usual key's path stays short.
    #[inline(never)]
    fn unusual_key(&mut self, start: usize) -> Result<Cow<'a, str>, Box<JsonError>> {
        let mut end = start;
        loop {
            let Some(found) = memchr::memchr(b'"', &self.buf[end..]) else {
                self.pos = self.buf.len();
                return Err(self.syntax("unterminated key"));
            };
            let quote = end + found;
            let mut after = quote + 1;
            while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.buf.get(after) {
                after += 1;
            }
            let escaped =
                quote > start && self.buf[quote - 1] == b'\\' && !even_backslashes_before(self.buf, start, quote);
            if self.buf.get(after) == Some(&b':') && !escaped {
                self.pos = after + 1;
                return self.key_text(start, quote);
            }
            end = quote + 1;
        }
    }

    /// The usual key, read in one short scan: no backslash, UTF-8 (the body
    /// is), and its closing quote right before `:`. This is the key the
    /// general reading in [`Reader::key`] finds too; any other key is left to it.
    #[inline]
    fn plain_key(&mut self, start: usize) -> Option<Cow<'a, str>> {
        let len = quote_or_backslash(&self.buf[start..])?;
        let quote = start + len;
        if self.buf[quote] != b'"' || self.buf.get(quote + 1) != Some(&b':') {
            return None;
        }
        let text = self.text_of(start, quote)?;
        self.pos = quote + 2;
        Some(Cow::Borrowed(text))
    }

    fn key_text(&self, start: usize, end: usize) -> Result<Cow<'a, str>, Box<JsonError>> {
        let raw = &self.buf[start..end];
        let literal = match self.text_of(start, end) {
            Some(text) => text,
            None => std::str::from_utf8(raw).map_err(|_| JsonError::at(start, "key is not UTF-8", true))?,
        };
        if !raw.contains(&b'\\') {
            return Ok(Cow::Borrowed(literal));
        }
        match unescape(raw, start) {
            Ok(text) if text == literal => Ok(Cow::Borrowed(literal)),
            Ok(_) if raw.contains(&b'"') && !all_quotes_escaped(raw) => Ok(Cow::Borrowed(literal)),
            Ok(_) => Err(JsonError::at(
                start,
                format!("ambiguous key `{literal}`: it reads both as escaped JSON and as an unescaped field-mod key"),
                true,
            )),
            Err(_) => Ok(Cow::Borrowed(literal)),
        }
    }

    /// Reads a string value. The field mod escapes only `\\`, `"`, `\n`, `\r` and
    /// `\t` and leaves other control characters raw; both are accepted, as are all
    /// standard JSON escapes.
    #[inline]
    pub fn string(&mut self) -> Result<Cow<'a, str>, Box<JsonError>> {
        match self.plain_string() {
            Some(text) => Ok(Cow::Borrowed(text)),
            None => self.other_string(),
        }
    }

    /// The usual string right at the reader (see `scan::short_string_end`), read
    /// and passed. `None` leaves the reader where it was, for
    /// [`Reader::peek`] and [`Reader::string`], which read it too: a caller
    /// that expects a string tries this first and skips the peek.
    #[inline]
    pub fn plain_string(&mut self) -> Option<&'a str> {
        let end = short_string_end(self.buf, self.pos)?;
        let text = self.text_of(self.pos + 1, end)?;
        self.pos = end + 1;
        Some(text)
    }

    /// Every string [`short_string_end`] leaves (after white space, longer
    /// than its scan, or escaped), out of line as [`Reader::other_key`] is.
    #[inline(never)]
    fn other_string(&mut self) -> Result<Cow<'a, str>, Box<JsonError>> {
        self.expect(b'"')?;
        let start = self.pos;
        let (end, escaped) = self.string_end()?;
        self.pos = end + 1;
        let raw = &self.buf[start..end];
        if escaped {
            return unescape(raw, start).map(Cow::Owned);
        }
        if let Some(text) = self.text_of(start, end) {
            return Ok(Cow::Borrowed(text));
        }
        std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|e| JsonError::at(start + e.valid_up_to(), "string is not UTF-8", false))
    }

    /// The offset of the closing quote of the string starting at `self.pos`,
    /// and whether the string holds a backslash (found on the same scan, so
    /// the common string without one is not scanned twice).
    #[inline]
    fn string_end(&self) -> Result<(usize, bool), Box<JsonError>> {
        let mut at = self.pos;
        let mut escaped = false;
        loop {
            match quote_or_backslash(&self.buf[at..]) {
                Some(i) if self.buf[at + i] == b'"' => return Ok((at + i, escaped)),
                Some(i) => (at, escaped) = (at + i + 2, true),
                None => break,
            }
            if at > self.buf.len() {
                break;
            }
        }
        Err(JsonError::at(self.buf.len(), "unterminated string", true))
    }

    /// A plain integer of at most 15 digits right at the reader (no white
    /// space before it), read and passed. `None` leaves the reader where it
    /// was, for [`Reader::peek`] and [`Reader::number`], which read it too: a
    /// caller that expects a number tries this first and skips the peek.
    #[inline]
    pub fn plain_integer(&mut self) -> Option<f64> {
        let (value, len) = small_integer(self.buf.get(self.pos..)?)?;
        self.pos += len;
        Some(value)
    }

    /// Reads a number, including the bare non-finite tokens of Lua's `tostring`.
    #[inline]
    pub fn number(&mut self) -> Result<f64, Box<JsonError>> {
        self.skip_ws();
        match self.plain_integer() {
            Some(value) => Ok(value),
            None => self.other_number(),
        }
    }

    /// A number [`small_integer`] does not read, out of line: the common
    /// small integer's path stays short (its callee-saved registers were
    /// most of its cost, about 20 instructions a number).
    #[inline(never)]
    fn other_number(&mut self) -> Result<f64, Box<JsonError>> {
        let rest = &self.buf[self.pos..];
        for (token, value) in NON_FINITE {
            if rest.starts_with(token) && !rest.get(token.len()).is_some_and(u8::is_ascii_alphanumeric) {
                self.pos += token.len();
                return Ok(*value);
            }
        }
        let len = rest
            .iter()
            .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            .unwrap_or(rest.len());
        let text = std::str::from_utf8(&rest[..len]).unwrap_or_default();
        if !is_json_number(text) {
            return Err(self.syntax("invalid number"));
        }
        let value = text.parse::<f64>().map_err(|_| self.syntax("invalid number"))?;
        self.pos += len;
        Ok(value)
    }

    pub fn boolean(&mut self) -> Result<bool, Box<JsonError>> {
        self.skip_ws();
        for (token, value) in [(&b"true"[..], true), (&b"false"[..], false)] {
            if self.buf[self.pos..].starts_with(token) {
                self.pos += token.len();
                return Ok(value);
            }
        }
        Err(self.syntax("expected `true` or `false`"))
    }

    pub fn null(&mut self) -> Result<(), Box<JsonError>> {
        self.skip_ws();
        if self.buf[self.pos..].starts_with(b"null") {
            self.pos += 4;
            Ok(())
        } else {
            Err(self.syntax("expected `null`"))
        }
    }

    /// Skips one value, checking its syntax but not the UTF-8 of its strings.
    pub fn skip(&mut self) -> Result<(), Box<JsonError>> {
        match self.peek()? {
            Kind::Object => self.object(|r, _| r.skip()),
            Kind::Array => self.array(|r, _| r.skip()),
            Kind::String => {
                self.pos += 1;
                self.pos = self.string_end()?.0 + 1;
                Ok(())
            }
            Kind::Number => self.number().map(drop),
            Kind::Bool => self.boolean().map(drop),
            Kind::Null => self.null(),
        }
    }
}

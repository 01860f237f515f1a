//! CRC-32C of three byte strings at once, for the checksums of a commit's
//! records. One record's checksum is a chain of `crc32` instructions, each
//! waiting for the one before (three cycles apiece on x86-64): at the usual
//! record's 300 bytes, the chain is all the time it takes, and it was 4 % of
//! the whole ingest path (docs/perf.md, "Fortieth pass"). Three records'
//! chains interleaved keep the unit busy. The `crc32c` crate interleaves
//! within one buffer only from 768 bytes on.
//!
//! It owns arithmetic over borrowed bytes. It must never decide what a
//! checksum covers, which is the record frame's (`record`), and must always
//! give what `crc32c::crc32c` gives for the same bytes.

/// The CRC-32C of each of `parts`, as `crc32c::crc32c` computes it.
pub fn crc32c_3(parts: [&[u8]; 3]) -> [u32; 3] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE4.2, the one feature the function enables.
        return unsafe { interleaved(parts) };
    }
    parts.map(crc32c::crc32c)
}

/// [`crc32c_3`] with the `crc32` instruction: eight bytes of each part per
/// step while all three have them, then each part's rest on its own.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn interleaved(parts: [&[u8]; 3]) -> [u32; 3] {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let word = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().expect("eight bytes"));
    let mut crcs = [u64::from(u32::MAX); 3];
    let [a, b, c] = parts.map(|part| part.chunks_exact(8));
    let mut steps = 0;
    for ((a, b), c) in a.zip(b).zip(c) {
        crcs[0] = _mm_crc32_u64(crcs[0], word(a));
        crcs[1] = _mm_crc32_u64(crcs[1], word(b));
        crcs[2] = _mm_crc32_u64(crcs[2], word(c));
        steps += 8;
    }
    let mut done = [0u32; 3];
    for ((crc, part), out) in crcs.into_iter().zip(parts).zip(&mut done) {
        let rest = part[steps..].chunks_exact(8);
        let tail = rest.remainder();
        let mut crc = rest.fold(crc, |crc, bytes| _mm_crc32_u64(crc, word(bytes))) as u32;
        for &byte in tail {
            crc = _mm_crc32_u8(crc, byte);
        }
        *out = !crc;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any three lengths and contents, each part of them misaligned too.
        #[test]
        fn three_at_once_are_what_one_at_a_time_are(
            parts in proptest::array::uniform3(proptest::collection::vec(any::<u8>(), 0..400)),
            skip in 0usize..8,
        ) {
            let parts = parts.each_ref().map(|part| &part[skip.min(part.len())..]);
            prop_assert_eq!(crc32c_3(parts), parts.map(crc32c::crc32c));
        }
    }

    #[test]
    fn empty_parts_have_the_empty_checksum() {
        assert_eq!(crc32c_3([b"", b"a", b""]), [0, crc32c::crc32c(b"a"), 0]);
    }
}

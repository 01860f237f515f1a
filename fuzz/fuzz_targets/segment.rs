//! The log's record and segment reader on damaged files. The input is a
//! segment file (the seeds are valid segments; the fuzzer damages them): a
//! scan, and a read at any position a damaged index could point to, must never
//! panic and never yield a record whose checksum, recomputed here
//! independently, does not match; reading a frame without its checksum must
//! agree with that read wherever the checksum holds. The segment index decoder
//! gets the same bytes.
#![no_main]

use jimbus_core::checkpoint::SegmentIndex;
use jimbus_core::record::{self, Record, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

/// The CRC32C stored in the frame at `data` covers every byte after it.
fn checksum_holds(data: &[u8], rec: &Record<'_>) {
    let len = rec.framed_len();
    assert!(len >= HEADER_LEN && len <= data.len(), "a record longer than its data");
    let stored = u32::from_le_bytes(data[..4].try_into().unwrap());
    assert_eq!(crc32c::crc32c(&data[4..len]), stored, "a record whose checksum fails was read");
}

fuzz_target!(|data: &[u8]| {
    let mut next = 0;
    let end = record::scan(data, |at, rec| {
        assert_eq!(at, next, "records are read back to back");
        checksum_holds(&data[at..], rec);
        next = at + rec.framed_len();
    });
    assert_eq!(end.valid_len, next);
    assert!(end.valid_len <= data.len());
    assert_eq!(end.stopped.is_none(), end.valid_len == data.len());
    // Reads at positions a damaged index could name.
    // Reading without the checksum never panics either, and where the
    // checksum holds it reads what decode reads.
    for at in (0..data.len()).take(512) {
        let unchecked = record::decode_without_checksum(&data[at..]);
        if let Ok(rec) = record::decode(&data[at..]) {
            checksum_holds(&data[at..], &rec);
            assert_eq!(unchecked, Ok(rec));
        }
    }
    if let Ok(index) = SegmentIndex::decode(data) {
        assert_eq!(SegmentIndex::decode(&index.encode()), Ok(index));
    }
});

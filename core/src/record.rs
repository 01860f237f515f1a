//! The on-disk frame of one log record.
//!
//! ```text
//! +-------+--------+---------+-----------+------+-----------+----------+-------+---------+
//! | crc32c| len u32| offset  | time_us   | kind | topic_len | reserved | topic | message |
//! | u32 LE| LE     | u64 LE  | u64 LE    | u8   | u16 LE    | u8       | bytes | bytes   |
//! +-------+--------+---------+-----------+------+-----------+----------+-------+---------+
//! ```
//! `len` counts the topic and message bytes; the CRC32C covers everything after
//! the crc field. Headers are read and written through zerocopy, in place. A frame
//! that runs past the end of the data is torn (a write that did not finish); one
//! whose CRC does not match is corrupt. This module must never touch a file.

use crate::checksum;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The fixed part of every record.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RecordHeader {
    pub crc: U32,
    pub len: U32,
    pub offset: U64,
    pub time_us: U64,
    pub kind: u8,
    pub topic_len: U16,
    pub reserved: u8,
}

pub const HEADER_LEN: usize = std::mem::size_of::<RecordHeader>();

/// A larger record than this is treated as corrupt on read. Writers stay far
/// under it, so [`frame_with`] only asserts it in debug builds: an event is
/// at most the schema's 2 MiB at admission, a dead letter's raw bytes are
/// cut, and an aggregated message holds a cascade part of at most
/// `cascade_split_bytes` and a game state of at most `max_state_bytes`.
pub const MAX_RECORD_LEN: usize = 64 << 20;

/// What a record's message bytes hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A `jimbot.events.v1.Event`.
    Event = 1,
    /// A `jimbot.events.v1.BalatroGameStateEvent`.
    Aggregated = 2,
    /// A `jimbot.bus.v1.DeadLetter`.
    DeadLetter = 3,
}

impl RecordKind {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Event),
            2 => Some(Self::Aggregated),
            3 => Some(Self::DeadLetter),
            _ => None,
        }
    }
}

/// One record, borrowed from the buffer it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: u64,
    pub time_us: u64,
    pub kind: RecordKind,
    pub topic: &'a str,
    pub message: &'a [u8],
}

impl Record<'_> {
    /// The bytes this record takes in a segment.
    pub fn framed_len(&self) -> usize {
        HEADER_LEN + self.topic.len() + self.message.len()
    }
}

/// Why the data at some position is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame runs past the end of the data: an unfinished write.
    #[error("torn record: {needed} bytes needed, {available} available")]
    Torn { needed: usize, available: usize },
    #[error("record checksum mismatch")]
    Checksum,
    #[error("record is malformed: {0}")]
    Malformed(&'static str),
}

/// Appends a framed record to `out`, with its checksum.
pub fn encode(record: &Record<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    let message = |out: &mut Vec<u8>| {
        out.extend_from_slice(record.message);
        Some(())
    };
    frame_with(record.offset, record.time_us, record.kind, record.topic, out, message);
    let len = out.len() - start;
    seal(&mut out[start..], [len]);
}

/// Frames a record at the end of `out` whose message `message` appends
/// straight after the topic, so that an event is encoded once, into the
/// buffer that is written, and not into a scratch buffer and copied. When
/// `message` returns `None`, `out` is cut back to what it was.
///
/// Its checksum is left for [`seal`] to write, for a run of records at once:
/// a log frames each record of a commit as it is staged, and seals them all
/// before it writes them.
pub fn frame_with<T>(
    offset: u64,
    time_us: u64,
    kind: RecordKind,
    topic: &str,
    out: &mut Vec<u8>,
    message: impl FnOnce(&mut Vec<u8>) -> Option<T>,
) -> Option<T> {
    let start = out.len();
    let mut header = RecordHeader {
        crc: U32::new(0),
        len: U32::new(0),
        offset: U64::new(offset),
        time_us: U64::new(time_us),
        kind: kind as u8,
        topic_len: U16::new(topic.len() as u16),
        reserved: 0,
    };
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(topic.as_bytes());
    let Some(written) = message(out) else {
        out.truncate(start);
        return None;
    };
    let len = out.len() - start - HEADER_LEN;
    debug_assert!(len <= MAX_RECORD_LEN, "a record of {len} bytes could never be read back");
    header.len = U32::new(len as u32);
    out[start..start + HEADER_LEN].copy_from_slice(header.as_bytes());
    Some(written)
}

/// Writes the checksum of each record framed by [`frame_with`] in `records`,
/// which holds them one after the other from its start; `ends` says where
/// each ends. Three records are summed at once ([`checksum::crc32c_3`]).
pub fn seal(records: &mut [u8], ends: impl IntoIterator<Item = usize>) {
    let mut spans = [(0, 0); 3];
    let (mut held, mut start) = (0, 0);
    for end in ends {
        spans[held] = (start, end);
        (held, start) = (held + 1, end);
        if held == 3 {
            let crcs = checksum::crc32c_3(spans.map(|(start, end)| &records[start + 4..end]));
            for ((start, _), crc) in spans.into_iter().zip(crcs) {
                records[start..start + 4].copy_from_slice(&crc.to_le_bytes());
            }
            held = 0;
        }
    }
    for &(start, end) in &spans[..held] {
        let crc = crc32c::crc32c(&records[start + 4..end]);
        records[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Reads the record at the start of `data`, checking its checksum.
pub fn decode(data: &[u8]) -> Result<Record<'_>, FrameError> {
    let (header, body) = frame(data)?;
    if crc32c::crc32c(&data[4..HEADER_LEN + body.len()]) != header.crc.get() {
        return Err(FrameError::Checksum);
    }
    fields(header, body)
}

/// Reads the record at the start of `data` as [`decode`] does, but without
/// its checksum: for a frame whose checksum was checked when it was read from
/// disk, or that this process framed and kept in memory. Publishing a commit
/// and each subscriber's deliveries read every record again, and each of
/// them computed its checksum once more.
pub fn decode_without_checksum(data: &[u8]) -> Result<Record<'_>, FrameError> {
    let (header, body) = frame(data)?;
    fields(header, body)
}

/// The header at the start of `data` and the body (topic and message) it frames.
fn frame(data: &[u8]) -> Result<(&RecordHeader, &[u8]), FrameError> {
    let (header, rest) = RecordHeader::ref_from_prefix(data)
        .map_err(|_| FrameError::Torn { needed: HEADER_LEN, available: data.len() })?;
    let len = header.len.get() as usize;
    if len > MAX_RECORD_LEN {
        return Err(FrameError::Malformed("length over the maximum"));
    }
    if rest.len() < len {
        return Err(FrameError::Torn { needed: HEADER_LEN + len, available: data.len() });
    }
    Ok((header, &rest[..len]))
}

/// The record a header and its body describe.
fn fields<'a>(header: &RecordHeader, body: &'a [u8]) -> Result<Record<'a>, FrameError> {
    let topic_len = header.topic_len.get() as usize;
    if topic_len > body.len() {
        return Err(FrameError::Malformed("topic longer than the record"));
    }
    let kind = RecordKind::from_u8(header.kind).ok_or(FrameError::Malformed("unknown kind"))?;
    let topic = std::str::from_utf8(&body[..topic_len]).map_err(|_| FrameError::Malformed("topic is not UTF-8"))?;
    Ok(Record { offset: header.offset.get(), time_us: header.time_us.get(), kind, topic, message: &body[topic_len..] })
}

/// Where valid records stop in a segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEnd {
    /// Length of the valid prefix.
    pub valid_len: usize,
    /// Records in the valid prefix.
    pub records: usize,
    /// Why scanning stopped before the end, if it did.
    pub stopped: Option<FrameError>,
}

/// Walks records from the start of `data`, calling `each` for every valid one,
/// and stops at the first torn or corrupt frame.
pub fn scan<'a>(data: &'a [u8], mut each: impl FnMut(usize, &Record<'a>)) -> ScanEnd {
    let mut at = 0;
    let mut records = 0;
    while at < data.len() {
        match decode(&data[at..]) {
            Ok(record) => {
                each(at, &record);
                at += record.framed_len();
                records += 1;
            }
            Err(e) => return ScanEnd { valid_len: at, records, stopped: Some(e) },
        }
    }
    ScanEnd { valid_len: at, records, stopped: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn records() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
        proptest::collection::vec(("[a-z.]{0,20}", proptest::collection::vec(any::<u8>(), 0..200)), 1..20)
    }

    fn encode_all(items: &[(String, Vec<u8>)]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut ends = Vec::new();
        for (i, (topic, message)) in items.iter().enumerate() {
            encode(&Record { offset: i as u64, time_us: 7, kind: RecordKind::Event, topic, message }, &mut out);
            ends.push(out.len());
        }
        (out, ends)
    }

    proptest! {
        #[test]
        fn round_trips(items in records()) {
            let (data, _) = encode_all(&items);
            let mut seen = Vec::new();
            let end = scan(&data, |_, r| seen.push((r.topic.to_string(), r.message.to_vec(), r.offset)));
            prop_assert_eq!(end.stopped, None);
            prop_assert_eq!(end.valid_len, data.len());
            for (i, (topic, message, offset)) in seen.into_iter().enumerate() {
                prop_assert_eq!(&topic, &items[i].0);
                prop_assert_eq!(&message, &items[i].1);
                prop_assert_eq!(offset, i as u64);
            }
        }

        /// Records framed one by one and sealed together are the bytes that
        /// encoding each with its checksum gives, whatever their count.
        #[test]
        fn framed_then_sealed_is_encoded(items in records()) {
            let (encoded, ends) = encode_all(&items);
            let mut framed = Vec::new();
            for (i, (topic, message)) in items.iter().enumerate() {
                frame_with(i as u64, 7, RecordKind::Event, topic, &mut framed, |out| {
                    out.extend_from_slice(message);
                    Some(())
                });
            }
            seal(&mut framed, ends);
            prop_assert_eq!(framed, encoded);
        }

        #[test]
        fn a_refused_message_leaves_nothing(items in records(), refused in proptest::collection::vec(any::<bool>(), 20)) {
            let (mut data, mut ends) = (Vec::new(), Vec::new());
            let mut kept = Vec::new();
            for (i, (topic, message)) in items.iter().enumerate() {
                // Half of the message is written before the refusal, as a
                // duplicate found after its encoding is.
                let framed = frame_with(i as u64, 7, RecordKind::Event, topic, &mut data, |out| {
                    out.extend_from_slice(&message[..message.len() / 2]);
                    (!refused[i]).then(|| out.extend_from_slice(&message[message.len() / 2..]))
                });
                prop_assert_eq!(framed.is_some(), !refused[i]);
                if framed.is_some() {
                    kept.push((topic.clone(), message.clone(), i as u64));
                    ends.push(data.len());
                }
            }
            seal(&mut data, ends);
            let mut seen = Vec::new();
            let end = scan(&data, |_, r| seen.push((r.topic.to_string(), r.message.to_vec(), r.offset)));
            prop_assert_eq!(end.stopped, None);
            prop_assert_eq!(end.valid_len, data.len());
            prop_assert_eq!(seen, kept);
        }

        #[test]
        fn truncation_keeps_exactly_the_whole_records(items in records(), cut in any::<prop::sample::Index>()) {
            let (data, ends) = encode_all(&items);
            let cut = cut.index(data.len() + 1);
            let end = scan(&data[..cut], |_, _| {});
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            prop_assert_eq!(end.records, whole);
            prop_assert_eq!(end.valid_len, if whole == 0 { 0 } else { ends[whole - 1] });
            if cut != end.valid_len {
                let is_torn = matches!(end.stopped, Some(FrameError::Torn { .. }));
                prop_assert!(is_torn);
            }
        }

        #[test]
        fn corruption_is_never_served(items in records(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let (mut data, ends) = encode_all(&items);
            let at = at.index(data.len());
            data[at] ^= flip;
            let end = scan(&data, |_, _| {});
            let damaged = ends.iter().position(|&e| e > at).unwrap();
            // Every record before the damaged one survives; the damaged one never does.
            prop_assert_eq!(end.records, damaged);
            prop_assert!(end.stopped.is_some());
        }
    }
}

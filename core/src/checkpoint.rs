//! What a shard writes when it closes a segment, so that a restart reads only
//! the tail segment: the closed segment's index ([`SegmentIndex`]: record
//! positions and time marks, beside the segment as `<base>.index`) and the
//! shard's state at that point ([`ShardCheckpoint`]: next sequence per session,
//! record count per topic, and the offset from which a replay of the log
//! rebuilds the dedup window).
//!
//! Both are little-endian binary with a magic, a version and a CRC32C trailer,
//! so a torn or stale file is recognised and ignored (the caller then scans the
//! segment, which is always correct, only slower). This module only encodes and
//! decodes; it must never touch a file.

/// A file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a {0} file")]
    Magic(&'static str),
    #[error("truncated")]
    Truncated,
    #[error("checksum mismatch")]
    Checksum,
    #[error("text is not UTF-8")]
    Text,
}

const INDEX_MAGIC: &[u8; 8] = b"JIDX\x00\x00\x00\x01";
// Version 2 keeps where to rebuild the dedup window from instead of its keys;
// a version 1 file is refused, and the shard then replays its whole log.
const CHECKPOINT_MAGIC: &[u8; 8] = b"JCKP\x00\x00\x00\x02";

/// The offset and time index of one closed segment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SegmentIndex {
    /// Bytes of valid records: the index is stale unless the file has exactly this size.
    pub valid_len: u64,
    pub last_time_us: u64,
    /// File position of each record, in offset order from the segment's base.
    pub positions: Vec<u32>,
    /// (time, offset) marks for time-based starts.
    pub time_marks: Vec<(u64, u64)>,
}

/// A shard's state once every record below `end` is applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardCheckpoint {
    pub end: u64,
    pub next_sequence: Vec<(String, u64)>,
    pub topics: Vec<(String, u64)>,
    /// Where a replay must start to rebuild the dedup window (at most `end`).
    pub dedup_from: u64,
}

struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn text(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn pairs(&mut self, pairs: &[(String, u64)]) {
        self.u64(pairs.len() as u64);
        for (name, n) in pairs {
            self.text(name);
            self.u64(*n);
        }
    }
    fn finish(mut self) -> Vec<u8> {
        let crc = crc32c::crc32c(&self.0);
        self.u32(crc);
        self.0
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CheckpointError> {
        if self.0.len() < n {
            return Err(CheckpointError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, CheckpointError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, CheckpointError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// A count, refused when the remaining bytes could not hold that many items.
    fn count(&mut self, item_bytes: usize) -> Result<usize, CheckpointError> {
        let n = self.u64()? as usize;
        if n.saturating_mul(item_bytes) > self.0.len() {
            return Err(CheckpointError::Truncated);
        }
        Ok(n)
    }
    fn text(&mut self) -> Result<String, CheckpointError> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| CheckpointError::Text)
    }
    fn pairs(&mut self) -> Result<Vec<(String, u64)>, CheckpointError> {
        let n = self.count(12)?;
        (0..n).map(|_| Ok((self.text()?, self.u64()?))).collect()
    }
}

/// Checks magic and CRC, and returns a reader of the body.
fn open<'a>(data: &'a [u8], magic: &[u8; 8], what: &'static str) -> Result<Reader<'a>, CheckpointError> {
    if data.len() < magic.len() + 4 {
        return Err(CheckpointError::Truncated);
    }
    let (body, crc) = data.split_at(data.len() - 4);
    if !body.starts_with(magic) {
        return Err(CheckpointError::Magic(what));
    }
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err(CheckpointError::Checksum);
    }
    Ok(Reader(&body[magic.len()..]))
}

impl SegmentIndex {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(INDEX_MAGIC.to_vec());
        w.u64(self.valid_len);
        w.u64(self.last_time_us);
        w.u64(self.positions.len() as u64);
        self.positions.iter().for_each(|p| w.u32(*p));
        w.u64(self.time_marks.len() as u64);
        for (time, offset) in &self.time_marks {
            w.u64(*time);
            w.u64(*offset);
        }
        w.finish()
    }

    pub fn decode(data: &[u8]) -> Result<Self, CheckpointError> {
        let mut r = open(data, INDEX_MAGIC, "segment index")?;
        let valid_len = r.u64()?;
        let last_time_us = r.u64()?;
        let n = r.count(4)?;
        let positions = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
        let marks = r.count(16)?;
        let time_marks = (0..marks).map(|_| Ok((r.u64()?, r.u64()?))).collect::<Result<_, _>>()?;
        Ok(Self { valid_len, last_time_us, positions, time_marks })
    }
}

impl ShardCheckpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(CHECKPOINT_MAGIC.to_vec());
        w.u64(self.end);
        w.pairs(&self.next_sequence);
        w.pairs(&self.topics);
        w.u64(self.dedup_from);
        w.finish()
    }

    pub fn decode(data: &[u8]) -> Result<Self, CheckpointError> {
        let mut r = open(data, CHECKPOINT_MAGIC, "shard checkpoint")?;
        let end = r.u64()?;
        let next_sequence = r.pairs()?;
        let topics = r.pairs()?;
        let dedup_from = r.u64()?;
        Ok(Self { end, next_sequence, topics, dedup_from })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn checkpoints() -> impl Strategy<Value = ShardCheckpoint> {
        let pairs = || proptest::collection::vec(("\\PC{0,12}", any::<u64>()), 0..8);
        (any::<u64>(), pairs(), pairs(), any::<u64>()).prop_map(|(end, next_sequence, topics, dedup_from)| {
            ShardCheckpoint { end, next_sequence, topics, dedup_from }
        })
    }

    fn indexes() -> impl Strategy<Value = SegmentIndex> {
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u32>(), 0..50),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..5),
        )
            .prop_map(|(valid_len, last_time_us, positions, time_marks)| SegmentIndex {
                valid_len,
                last_time_us,
                positions,
                time_marks,
            })
    }

    proptest! {
        #[test]
        fn checkpoints_round_trip_and_any_damage_is_refused(c in checkpoints(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let bytes = c.encode();
            prop_assert_eq!(ShardCheckpoint::decode(&bytes), Ok(c));
            let mut damaged = bytes.clone();
            damaged[at.index(bytes.len())] ^= flip;
            prop_assert!(ShardCheckpoint::decode(&damaged).is_err());
            prop_assert!(ShardCheckpoint::decode(&bytes[..at.index(bytes.len())]).is_err());
        }

        #[test]
        fn indexes_round_trip_and_any_damage_is_refused(i in indexes(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let bytes = i.encode();
            prop_assert_eq!(SegmentIndex::decode(&bytes), Ok(i));
            let mut damaged = bytes.clone();
            damaged[at.index(bytes.len())] ^= flip;
            prop_assert!(SegmentIndex::decode(&damaged).is_err());
        }
    }

    #[test]
    fn one_kind_is_not_read_as_the_other() {
        let index = SegmentIndex::default().encode();
        assert_eq!(ShardCheckpoint::decode(&index), Err(CheckpointError::Magic("shard checkpoint")));
    }
}

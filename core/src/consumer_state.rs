//! What a durable consumer persists, and in what shape: the offsets it is done
//! with ([`DoneSet`]: an ack floor and the ranges done above it), the snapshot
//! of every consumer of a shard (`consumers.json`, [`decode_snapshot`]) and the
//! ack journal appended between snapshots ([`JournalEntry`]).
//!
//! State is proportional to what is in flight, never to how far a consumer has
//! read: done offsets above the floor are kept as ranges, so a run of skipped or
//! acknowledged records is one pair however long it is. The journal is a
//! sequence of CRC-framed entries; a torn or damaged entry ends it (everything
//! before it is kept). Replaying an entry twice changes nothing, so a snapshot
//! written before its journal was emptied is harmless. This module only encodes
//! and decodes; it must never touch a file.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Bound;

/// The offsets a consumer is done with (acknowledged, skipped or dead-lettered).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DoneSet {
    /// Every offset below this is done.
    floor: u64,
    /// Done ranges `start..end` above the floor, disjoint and never touching
    /// (adjacent ranges are merged), each starting above the floor.
    ranges: BTreeMap<u64, u64>,
}

impl DoneSet {
    pub fn new(floor: u64) -> Self {
        Self { floor, ranges: BTreeMap::new() }
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// How many ranges are kept above the floor (the state's size).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(s, e)| (*s, *e))
    }

    pub fn contains(&self, offset: u64) -> bool {
        offset < self.floor || self.ranges.range(..=offset).next_back().is_some_and(|(_, &end)| offset < end)
    }

    /// Marks `offset` done; false when it already was.
    pub fn insert(&mut self, offset: u64) -> bool {
        if offset == u64::MAX || self.contains(offset) {
            return false;
        }
        self.insert_range(offset, offset + 1);
        true
    }

    /// Marks `start..end` done (an empty or reversed range changes nothing).
    pub fn insert_range(&mut self, start: u64, end: u64) {
        let (mut start, mut end) = (start.max(self.floor), end);
        if start >= end {
            return;
        }
        // Absorb every range that overlaps or touches start..end.
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range((Bound::Unbounded, Bound::Included(end)))
            .rev()
            .take_while(|(_, &e)| e >= start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        if start <= self.floor {
            self.floor = end;
        } else {
            self.ranges.insert(start, end);
        }
    }

    /// Raises the floor to at least `floor`, dropping ranges it covers.
    pub fn raise_floor(&mut self, floor: u64) {
        if floor > self.floor {
            self.insert_range(self.floor, floor);
        }
    }
}

/// One consumer in `consumers.json`. Files written before ranges existed hold
/// `acked` (one offset per done record above the floor); they are still read,
/// and `acked` is still written (empty) so an older binary can read a new file
/// (it then redelivers what the ranges held: at least once, never lost).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotEntry<O> {
    pub pattern: String,
    pub ack_floor: u64,
    #[serde(default)]
    pub acked: Vec<u64>,
    #[serde(default)]
    pub acked_ranges: Vec<(u64, u64)>,
    pub options: O,
    /// Identifies this life of the name: journal entries of an earlier
    /// consumer of the same name (expired, then created again) never apply.
    #[serde(default)]
    pub incarnation: u64,
}

impl<O> SnapshotEntry<O> {
    /// The done set this entry describes (old `acked` lists included).
    pub fn done(&self) -> DoneSet {
        let mut done = DoneSet::new(self.ack_floor);
        for &(start, end) in &self.acked_ranges {
            done.insert_range(start, end);
        }
        for &offset in &self.acked {
            done.insert(offset);
        }
        done
    }
}

/// Why a snapshot cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("consumers.json: {0}")]
pub struct SnapshotError(#[from] serde_json::Error);

pub fn decode_snapshot<O: DeserializeOwned>(bytes: &[u8]) -> Result<BTreeMap<String, SnapshotEntry<O>>, SnapshotError> {
    Ok(serde_json::from_slice(bytes)?)
}

pub fn encode_snapshot<O: Serialize>(entries: &BTreeMap<String, SnapshotEntry<O>>) -> Vec<u8> {
    serde_json::to_vec(entries).expect("a map of plain records always serialises")
}

/// One journal entry: acks of one consumer, and its floor after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub name: String,
    pub incarnation: u64,
    pub floor: u64,
    pub offsets: Vec<u64>,
}

/// Bytes of an entry's frame before its payload: length and CRC32C of the payload.
const FRAME: usize = 8;
/// A journal entry larger than this is damage, not data (the pump writes one
/// entry per consumer per commit, bounded by the offsets one Ack may carry).
pub const MAX_ENTRY: usize = 64 << 20;

impl JournalEntry {
    /// Appends this entry's frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME]);
        out.extend_from_slice(&(self.name.len() as u32).to_le_bytes());
        out.extend_from_slice(self.name.as_bytes());
        for v in [self.incarnation, self.floor, self.offsets.len() as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for offset in &self.offsets {
            out.extend_from_slice(&offset.to_le_bytes());
        }
        let payload = &out[start + FRAME..];
        let (len, crc) = (payload.len() as u32, crc32c::crc32c(payload));
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + FRAME].copy_from_slice(&crc.to_le_bytes());
    }

    fn decode_payload(payload: &[u8]) -> Option<Self> {
        let mut r = payload;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, rest) = r.split_at_checked(n)?;
            r = rest;
            Some(head)
        };
        let name_len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let name = std::str::from_utf8(take(name_len)?).ok()?.to_string();
        let mut u64s = [0u64; 3];
        for v in &mut u64s {
            *v = u64::from_le_bytes(take(8)?.try_into().ok()?);
        }
        let [incarnation, floor, count] = u64s;
        let rest = take(usize::try_from(count).ok()?.checked_mul(8)?)?;
        let offsets = rest.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        // Bytes after the offsets mean the entry is not what it claims.
        r.is_empty().then_some(Self { name, incarnation, floor, offsets })
    }
}

/// The entries of a journal up to the first torn or damaged one, and how many
/// bytes they span (where the next append belongs).
pub fn decode_journal(data: &[u8]) -> (Vec<JournalEntry>, usize) {
    let mut entries = Vec::new();
    let mut at = 0;
    while let Some(header) = data.get(at..at + FRAME) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(payload) = data.get(at + FRAME..at + FRAME + len).filter(|_| len <= MAX_ENTRY) else { break };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Some(entry) = JournalEntry::decode_payload(payload) else { break };
        entries.push(entry);
        at += FRAME + len;
    }
    (entries, at)
}

/// Applies journal entries to a snapshot's consumers: each entry's acks and
/// floor go to the consumer of the same name and incarnation; others are
/// ignored (their consumer was removed).
pub fn replay<O>(entries: &mut BTreeMap<String, (SnapshotEntry<O>, DoneSet)>, journal: &[JournalEntry]) {
    for entry in journal {
        let Some((snapshot, done)) = entries.get_mut(&entry.name) else { continue };
        if snapshot.incarnation != entry.incarnation {
            continue;
        }
        done.raise_floor(entry.floor);
        for &offset in &entry.offsets {
            done.insert(offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        /// The ranges hold exactly the offsets a plain set would, and never
        /// more pairs than there are gaps.
        #[test]
        fn a_done_set_matches_a_plain_set(floor in 0u64..20, ops in proptest::collection::vec((0u64..120, 1u64..6, any::<bool>()), 0..80)) {
            let mut done = DoneSet::new(floor);
            let mut plain: BTreeSet<u64> = (0..floor).collect();
            for (at, len, single) in ops {
                if single {
                    prop_assert_eq!(done.insert(at), plain.insert(at));
                } else {
                    done.insert_range(at, at + len);
                    plain.extend(at..at + len);
                }
            }
            for o in 0..140 {
                prop_assert_eq!(done.contains(o), plain.contains(&o), "offset {}", o);
            }
            let floor = (0..).find(|o| !plain.contains(o)).unwrap();
            prop_assert_eq!(done.floor(), floor);
            let mut last_end = floor;
            for (s, e) in done.ranges() {
                prop_assert!(s > last_end && s < e, "ranges are disjoint, apart and above the floor");
                last_end = e;
            }
        }

        #[test]
        fn journal_entries_round_trip_and_a_damaged_tail_is_cut(
            names in proptest::collection::vec("\\PC{0,8}", 1..5),
            offsets in proptest::collection::vec(any::<u64>(), 0..10),
            cut in any::<prop::sample::Index>(),
        ) {
            let entries: Vec<JournalEntry> = names.into_iter().enumerate().map(|(i, name)| JournalEntry {
                name, incarnation: i as u64, floor: 7, offsets: offsets.clone(),
            }).collect();
            let mut bytes = Vec::new();
            entries.iter().for_each(|e| e.encode(&mut bytes));
            prop_assert_eq!(decode_journal(&bytes), (entries.clone(), bytes.len()));
            let at = cut.index(bytes.len());
            let (kept, len) = decode_journal(&bytes[..at]);
            prop_assert!(len <= at);
            prop_assert_eq!(&kept[..], &entries[..kept.len()]);
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x55;
            let (kept, _) = decode_journal(&damaged);
            prop_assert!(kept.len() < entries.len());
            prop_assert_eq!(&kept[..], &entries[..kept.len()]);
        }
    }

    #[test]
    fn an_old_snapshot_with_an_offset_list_is_read() {
        let old = br#"{"trainer":{"pattern":"balatro.>","ack_floor":4,"acked":[6,5,9,3,4],"options":{"max_in_flight":10,"ack_wait_ms":100,"max_deliver":2}}}"#;
        let read = decode_snapshot::<serde_json::Value>(old).unwrap();
        let done = read["trainer"].done();
        assert_eq!(done.floor(), 7);
        assert_eq!(done.ranges().collect::<Vec<_>>(), vec![(9, 10)]);
        assert_eq!(read["trainer"].incarnation, 0);
    }

    #[test]
    fn replay_applies_only_to_the_same_incarnation() {
        let entry = |incarnation| SnapshotEntry {
            pattern: ">".into(),
            ack_floor: 0,
            acked: vec![],
            acked_ranges: vec![],
            options: (),
            incarnation,
        };
        let mut consumers = BTreeMap::from([("a".to_string(), (entry(2), DoneSet::new(0)))]);
        let ack = |incarnation, offsets: Vec<u64>| JournalEntry { name: "a".into(), incarnation, floor: 0, offsets };
        replay(&mut consumers, &[ack(1, vec![0, 1]), ack(2, vec![0, 3]), ack(2, vec![0])]);
        let (_, done) = &consumers["a"];
        assert_eq!((done.floor(), done.ranges().collect::<Vec<_>>()), (1, vec![(3, 4)]));
    }
}

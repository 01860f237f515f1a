//! Recognises retried events so that they are acknowledged but not stored twice.
//!
//! A retry resends the same `event_id`, but the field mod is known to reuse one id
//! for many distinct events of a batch, so the id alone is not an identity. The key
//! is the session, the id and a hash of the event's content as the client sent it
//! (the protobuf encoding, whose map and Struct order is canonical, so JSON key
//! order does not matter). Events without an id are never deduplicated.
//!
//! The window is two generations of keys, each a hash table sized once for
//! `capacity` keys: new keys go into the current one, and when it is full it
//! becomes the previous one and the old previous one is dropped whole. So the
//! most recent `capacity` keys are always remembered (up to twice as many are),
//! no table ever grows or rehashes on the hot path, and memory is bounded by two
//! tables. Each generation notes the log offset of its first key, so a restart
//! rebuilds the window by replaying the log from [`DedupWindow::oldest_offset`].
//! This module owns only the window; the shard that owns a session is its single
//! writer.

use jimbus_proto::events as pb;
use prost::Message;
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// The identity of an event for deduplication.
pub type DedupKey = u128;

/// The key of a client event, before the server stamped it; `None` when the
/// client sent no `event_id`.
pub fn dedup_key(event: &pb::Event) -> Option<DedupKey> {
    if event.event_id.is_empty() {
        return None;
    }
    Some(dedup_key_of_encoding(&event.encode_to_vec()))
}

/// The key of a client event from its protobuf encoding (for callers that
/// encode it anyway; [`dedup_key`] is this of `event.encode_to_vec()`).
pub fn dedup_key_of_encoding(encoded: &[u8]) -> DedupKey {
    xxhash_rust::xxh3::xxh3_128(encoded)
}

/// Keys are already uniform hashes: a table hashes them by folding, not again.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, key: u128) {
        self.0 = key as u64 ^ (key >> 64) as u64;
    }
}

/// A set of dedup keys, hashed by folding (the keys are hashes already).
pub type KeySet = HashSet<DedupKey, BuildHasherDefault<KeyHasher>>;

/// One generation: its keys and the log offset of the first.
#[derive(Debug, Default)]
struct Generation {
    keys: KeySet,
    first_offset: Option<u64>,
}

impl Generation {
    fn sized(capacity: usize) -> Self {
        Self { keys: KeySet::with_capacity_and_hasher(capacity, Default::default()), first_offset: None }
    }
}

/// The most recent keys: at least `capacity`, at most two full generations.
#[derive(Debug)]
pub struct DedupWindow {
    current: Generation,
    previous: Generation,
    capacity: usize,
}

impl DedupWindow {
    pub fn new(capacity: usize) -> Self {
        Self { current: Generation::sized(capacity), previous: Generation::default(), capacity }
    }

    pub fn contains(&self, key: DedupKey) -> bool {
        self.current.keys.contains(&key) || self.previous.keys.contains(&key)
    }

    /// Remembers the key of the record stored at `offset`; returns false when
    /// it was already known.
    pub fn insert(&mut self, key: DedupKey, offset: u64) -> bool {
        if self.capacity == 0 || self.contains(key) {
            return false;
        }
        // The table's real capacity is at least `capacity`; filling it to there
        // never reallocates.
        if self.current.keys.len() == self.current.keys.capacity() {
            self.rotate();
        }
        self.current.first_offset.get_or_insert(offset);
        self.current.keys.insert(key)
    }

    /// The full current generation becomes the previous one, and the old
    /// previous one's table, emptied, becomes the current one. Reusing it
    /// keeps the window at two tables: allocating a fresh one before the old
    /// previous was dropped held three at the peak (9 MiB each at the default
    /// window) and faulted every page of the new one in again.
    fn rotate(&mut self) {
        std::mem::swap(&mut self.current, &mut self.previous);
        self.current.keys.clear();
        self.current.first_offset = None;
        if self.current.keys.capacity() < self.capacity {
            self.current = Generation::sized(self.capacity);
        }
    }

    /// Where a replay of the log must start to find every remembered key.
    pub fn oldest_offset(&self) -> Option<u64> {
        self.previous.first_offset.or(self.current.first_offset)
    }

    pub fn len(&self) -> usize {
        self.current.keys.len() + self.previous.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(id: &str, amount: f64) -> pb::Event {
        pb::Event {
            event_id: id.into(),
            event_type: "MONEY_CHANGED".into(),
            session_id: "s".into(),
            payload: Some(pb::event::Payload::MoneyChanged(pb::MoneyChangedEvent {
                new_value: amount,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn same_id_different_content_is_not_a_duplicate() {
        assert_ne!(dedup_key(&event("x", 1.0)), dedup_key(&event("x", 2.0)));
        assert_eq!(dedup_key(&event("x", 1.0)), dedup_key(&event("x", 1.0)));
        assert_eq!(dedup_key(&event("", 1.0)), None);
    }

    /// Keys reach the table through `write_u128` only, and it must fold both
    /// halves: a constant or half-blind hash would still be correct but turn
    /// every lookup into a scan of one bucket.
    #[test]
    fn the_key_hasher_folds_both_halves() {
        use std::hash::BuildHasher;
        let hash = |key: u128| BuildHasherDefault::<KeyHasher>::default().hash_one(key);
        assert_eq!(hash(0x1234), 0x1234);
        assert_eq!(hash(0x1234 << 64), 0x1234);
        assert_eq!(hash((0xff << 64) | 0x0f), 0xf0);
        let mut bytes = KeyHasher::default();
        bytes.write(&[1, 2]);
        assert_eq!(bytes.finish(), 0x0102);
        // Past eight bytes the first byte comes round again and cancels.
        let mut long = KeyHasher::default();
        long.write(&[1, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(long.finish(), 0);
    }

    proptest! {
        /// Against a model of every insertion: a key is known exactly when it
        /// was inserted (never forgotten among the last `cap`), memory stays
        /// within two generations, and a replay from `oldest_offset` finds
        /// every key the window still holds.
        #[test]
        fn window_remembers_the_last_capacity_keys(keys in proptest::collection::vec(0u128..300, 0..600), cap in 1usize..40) {
            let mut window = DedupWindow::new(cap);
            let mut stored: Vec<u128> = Vec::new(); // keys in log order; offset = index
            for k in keys {
                let known = stored.contains(&k);
                let recent = stored.iter().rev().take(cap).any(|&s| s == k);
                prop_assert!(!recent || window.contains(k), "forgot a recent key");
                prop_assert!(!window.contains(k) || known, "knows a key never inserted");
                if window.insert(k, stored.len() as u64) {
                    stored.push(k);
                }
                let real = DedupWindow::new(cap).current.keys.capacity();
                prop_assert!(window.len() <= 2 * real);
                let from = window.oldest_offset().unwrap_or(0) as usize;
                let replayed: HashSet<u128> = stored[from.min(stored.len())..].iter().copied().collect();
                for s in &stored {
                    prop_assert!(!window.contains(*s) || replayed.contains(s), "a replay would miss a key");
                }
            }
        }
    }
}

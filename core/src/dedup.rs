//! Recognises retried events so that they are acknowledged but not stored twice.
//!
//! A retry resends the same `event_id`, but the field mod is known to reuse one id
//! for many distinct events of a batch, so the id alone is not an identity. The key
//! is the session, the id and a hash of the event's content as the client sent it
//! (the protobuf encoding, whose map and Struct order is canonical, so JSON key
//! order does not matter). The window is bounded by count: the oldest keys are
//! forgotten first. Events without an id are never deduplicated. This module
//! owns only the window; the shard that owns a session is its single writer.

use jimbus_proto::events as pb;
use prost::Message;
use std::collections::{HashSet, VecDeque};

/// The identity of an event for deduplication.
pub type DedupKey = u128;

/// The key of a client event, before the server stamped it; `None` when the
/// client sent no `event_id`.
pub fn dedup_key(event: &pb::Event) -> Option<DedupKey> {
    if event.event_id.is_empty() {
        return None;
    }
    let mut content = Vec::with_capacity(event.encoded_len());
    event.encode(&mut content).ok()?;
    Some(xxhash_rust::xxh3::xxh3_128(&content))
}

/// The most recent keys, up to a fixed count.
#[derive(Debug)]
pub struct DedupWindow {
    seen: HashSet<DedupKey>,
    order: VecDeque<DedupKey>,
    capacity: usize,
}

impl DedupWindow {
    pub fn new(capacity: usize) -> Self {
        Self { seen: HashSet::with_capacity(capacity.min(1 << 16)), order: VecDeque::new(), capacity }
    }

    pub fn contains(&self, key: DedupKey) -> bool {
        self.seen.contains(&key)
    }

    /// Remembers a key; returns false when it was already known.
    pub fn insert(&mut self, key: DedupKey) -> bool {
        if self.capacity == 0 || !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// The remembered keys, oldest first (inserting them in this order into an
    /// empty window rebuilds this one).
    pub fn keys(&self) -> impl Iterator<Item = DedupKey> + '_ {
        self.order.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
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

    proptest! {
        #[test]
        fn window_remembers_exactly_the_last_capacity_keys(keys in proptest::collection::vec(0u128..50, 0..200), cap in 1usize..20) {
            let mut window = DedupWindow::new(cap);
            let mut model: VecDeque<u128> = VecDeque::new();
            for k in keys {
                let fresh = !model.contains(&k);
                prop_assert_eq!(window.insert(k), fresh);
                if fresh {
                    model.push_back(k);
                    if model.len() > cap { model.pop_front(); }
                }
                prop_assert_eq!(window.len(), model.len());
                for m in &model { prop_assert!(window.contains(*m)); }
            }
        }
    }
}

//! What a shard reads back at start besides its segments: `consumers.json`
//! (current and earlier formats), the ack journal replayed over it, and the
//! shard checkpoint. No input may panic; whatever is read must be internally
//! consistent (done ranges disjoint and above the floor) and round-trip.
//!
//! Input: one selector byte, then the file. Selector 0: consumers.json;
//! 1: a journal replayed over a fixed snapshot; 2: a checkpoint; 3: a
//! snapshot then a journal, split at the first 0xFF byte.
#![no_main]

use jimbus_core::checkpoint::ShardCheckpoint;
use jimbus_core::consumer_state::{self, DoneSet, SnapshotEntry};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

/// The server's consumer options, field for field (`net::bus::ConsumerOptions`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct Options {
    max_in_flight: usize,
    ack_wait_ms: u64,
    max_deliver: u32,
}

type Consumers = BTreeMap<String, (SnapshotEntry<Options>, DoneSet)>;

fn consistent(done: &DoneSet) {
    let mut last = done.floor();
    for (start, end) in done.ranges() {
        assert!(start > last && start < end, "ranges are disjoint, apart and above the floor");
        last = end;
    }
}

fn snapshot(bytes: &[u8]) -> Consumers {
    let Ok(read) = consumer_state::decode_snapshot::<Options>(bytes) else { return Consumers::new() };
    let consumers: Consumers = read.into_iter().map(|(name, e)| (name, (e.clone(), e.done()))).collect();
    for (entry, done) in consumers.values() {
        consistent(done);
        // What the server writes back is read as the same state.
        let written = SnapshotEntry {
            ack_floor: done.floor(),
            acked: Vec::new(),
            acked_ranges: done.ranges().collect(),
            ..entry.clone()
        };
        let again = consumer_state::decode_snapshot::<Options>(&consumer_state::encode_snapshot(
            &BTreeMap::from([("c".to_string(), written)]),
        ))
        .expect("a written snapshot reads back");
        assert_eq!(&again["c"].done(), done);
    }
    consumers
}

fn journal(consumers: &mut Consumers, bytes: &[u8]) {
    let (entries, valid) = consumer_state::decode_journal(bytes);
    assert!(valid <= bytes.len());
    let mut encoded = Vec::new();
    entries.iter().for_each(|e| e.encode(&mut encoded));
    assert_eq!(&encoded[..], &bytes[..valid], "what was read is exactly what was written");
    consumer_state::replay(consumers, &entries);
    consumers.values().for_each(|(_, done)| consistent(done));
}

fn fixed() -> Consumers {
    snapshot(br#"{"c":{"pattern":">","ack_floor":3,"acked":[5],"acked_ranges":[[9,12]],"options":{"max_in_flight":10,"ack_wait_ms":100,"max_deliver":2},"incarnation":0}}"#)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, file)) = data.split_first() else { return };
    match selector % 4 {
        0 => {
            snapshot(file);
        }
        1 => journal(&mut fixed(), file),
        2 => {
            if let Ok(checkpoint) = ShardCheckpoint::decode(file) {
                assert_eq!(ShardCheckpoint::decode(&checkpoint.encode()), Ok(checkpoint));
            }
        }
        _ => {
            let split = file.iter().position(|&b| b == 0xFF).unwrap_or(file.len());
            let mut consumers = snapshot(&file[..split]);
            journal(&mut consumers, file.get(split + 1..).unwrap_or_default());
        }
    }
});

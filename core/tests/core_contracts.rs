//! Contracts of core's pure modules that no test held, found by the mutation
//! run (`cargo mutants`, see docs/testing.md) or by reading its list of
//! mutants: the derived session name, shards actually spreading sessions, the
//! dedup window's replay start and size, the record frame's length limit and
//! torn-frame report, which error a short or foreign checkpoint file gets, the
//! aggregation settings at their limits, a game state merge keeping the lists
//! an update leaves empty, and a batch size that already matches its queue.

use jimbus_core::aggregate::{merge_game_state, AggregateConfig};
use jimbus_core::batch::{BatchConfig, BatchConfigError, BatchSizer};
use jimbus_core::checkpoint::{CheckpointError, SegmentIndex, ShardCheckpoint};
use jimbus_core::dedup::DedupWindow;
use jimbus_core::record::{self, FrameError, Record, RecordKind, HEADER_LEN, MAX_RECORD_LEN};
use jimbus_core::topic::{derived_session, shard_for};
use jimbus_proto::events as pb;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[test]
fn a_derived_session_is_the_peer_and_the_source() {
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    assert_eq!(derived_session(local, "BalatroMCP"), "127.0.0.1-BalatroMCP");
    assert_eq!(derived_session(local, ""), "127.0.0.1-unknown");
    assert_eq!(derived_session(IpAddr::V6(Ipv6Addr::LOCALHOST), "m"), "::1-m");
}

#[test]
fn sessions_spread_over_every_shard() {
    // A constant shard (or one out of range) would put a farm on one core.
    let mut hits = [0usize; 4];
    for i in 0..400 {
        hits[shard_for(&format!("session-{i}"), 4)] += 1;
    }
    assert!(hits.iter().all(|&n| n > 40), "sessions per shard: {hits:?}");
    assert_eq!(shard_for("anything", 0), 0, "no shards counts as one");
}

/// Inserts `n` distinct keys at offsets 0..n.
fn filled(capacity: usize, n: u64) -> DedupWindow {
    let mut window = DedupWindow::new(capacity);
    for offset in 0..n {
        assert!(window.insert(u128::from(offset) * 7919 + 1, offset));
    }
    window
}

#[test]
fn the_replay_start_moves_forward_as_generations_are_dropped() {
    let fresh = DedupWindow::new(4);
    assert_eq!(fresh.oldest_offset(), None, "an empty window needs no replay");
    assert!(fresh.is_empty());

    let small = filled(1000, 3);
    assert_eq!(small.oldest_offset(), Some(0));

    // Far more keys than two generations hold: replaying from offset 0 would be
    // correct but reread the whole log; the start must be recent, and still
    // cover the last `capacity` keys.
    let window = filled(4, 1000);
    let from = window.oldest_offset().expect("keys are held");
    assert!(from > 900 && from <= 996, "replay starts at {from}");
    assert!(window.contains(u128::from(from) * 7919 + 1), "the first key of the oldest generation is held");
}

#[test]
fn len_counts_the_keys_of_both_generations() {
    for n in [1u64, 3, 10, 57, 1000] {
        let window = filled(4, n);
        let held = (0..n).filter(|&o| window.contains(u128::from(o) * 7919 + 1)).count();
        assert_eq!(window.len(), held, "after {n} keys");
        assert!(!window.is_empty());
        assert!(held >= 4.min(n as usize), "the last `capacity` keys are held");
    }
}

#[test]
fn a_key_in_the_older_generation_is_still_a_duplicate() {
    let mut window = DedupWindow::new(4);
    assert!(window.insert(1, 0));
    for k in 2..100u128 {
        assert!(window.insert(k, k as u64));
        if window.contains(1) {
            assert!(!window.insert(1, 1000 + k as u64), "a retry of key 1 after {k} keys was stored again");
        }
    }
    assert!(!window.contains(1), "key 1 is forgotten at last");
}

#[test]
fn a_window_of_zero_keys_remembers_nothing() {
    // `--dedup-window 0` turns deduplication off.
    let mut window = DedupWindow::new(0);
    assert!(!window.insert(5, 0));
    assert!(!window.insert(5, 1));
    assert!(window.is_empty());
    assert_eq!(window.oldest_offset(), None);
}

fn frame(topic: &str, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    record::encode(&Record { offset: 9, time_us: 11, kind: RecordKind::Aggregated, topic, message }, &mut out);
    out
}

#[test]
fn a_torn_frame_says_how_many_bytes_it_needs() {
    let data = frame("balatro.s.aggregated", b"0123456789");
    for cut in [HEADER_LEN, HEADER_LEN + 5, data.len() - 1] {
        assert_eq!(record::decode(&data[..cut]), Err(FrameError::Torn { needed: data.len(), available: cut }));
    }
    assert_eq!(record::decode(&data[..3]), Err(FrameError::Torn { needed: HEADER_LEN, available: 3 }));
    let whole = record::decode(&data).unwrap();
    assert_eq!(
        (whole.offset, whole.time_us, whole.kind, whole.message),
        (9, 11, RecordKind::Aggregated, &b"0123456789"[..])
    );
}

#[test]
fn reading_without_the_checksum_differs_from_decode_only_in_the_checksum() {
    let data = frame("balatro.s.aggregated", b"0123456789");
    assert_eq!(record::decode_without_checksum(&data), record::decode(&data));
    for cut in [3, HEADER_LEN, data.len() - 1] {
        assert_eq!(record::decode_without_checksum(&data[..cut]), record::decode(&data[..cut]));
    }
    let mut damaged = data.clone();
    *damaged.last_mut().expect("a message") = b'X';
    assert_eq!(record::decode(&damaged), Err(FrameError::Checksum));
    assert_eq!(record::decode_without_checksum(&damaged).expect("framed").message, b"012345678X");
    let mut unknown_kind = data;
    unknown_kind[24] = 4;
    assert_eq!(record::decode_without_checksum(&unknown_kind), Err(FrameError::Malformed("unknown kind")));
}

#[test]
fn every_kind_reads_back_and_an_unknown_one_is_malformed() {
    for kind in [RecordKind::Event, RecordKind::Aggregated, RecordKind::DeadLetter] {
        let mut data = Vec::new();
        record::encode(&Record { offset: 1, time_us: 2, kind, topic: "deadletter", message: b"x" }, &mut data);
        assert_eq!(record::decode(&data).unwrap().kind, kind);
        assert_eq!(RecordKind::from_u8(kind as u8), Some(kind));
    }
    // Kind byte 4 under a correct checksum.
    let mut data = frame("t", b"m");
    data[24] = 4;
    let crc = crc32c::crc32c(&data[4..]);
    data[..4].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(record::decode(&data), Err(FrameError::Malformed("unknown kind")));
    assert_eq!(RecordKind::from_u8(0), None);
}

/// A header alone, claiming `len` bytes of topic and message.
fn header_claiming(len: usize) -> Vec<u8> {
    let mut data = frame("", b"");
    data[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    data
}

#[test]
fn the_length_limit_is_inclusive() {
    // Exactly the maximum is a legal length (so a short buffer is torn, not
    // malformed); one byte more is refused before anything is read.
    assert_eq!(
        record::decode(&header_claiming(MAX_RECORD_LEN)),
        Err(FrameError::Torn { needed: HEADER_LEN + MAX_RECORD_LEN, available: HEADER_LEN })
    );
    assert_eq!(
        record::decode(&header_claiming(MAX_RECORD_LEN + 1)),
        Err(FrameError::Malformed("length over the maximum"))
    );
    assert_eq!(MAX_RECORD_LEN, 64 << 20);
}

#[test]
fn short_and_foreign_files_get_their_own_error() {
    assert_eq!(SegmentIndex::decode(&[]), Err(CheckpointError::Truncated));
    assert_eq!(SegmentIndex::decode(&[0u8; 8]), Err(CheckpointError::Truncated));
    assert_eq!(ShardCheckpoint::decode(b"JIDX\0\0\0\x01abc"), Err(CheckpointError::Truncated));
    // 12 bytes: room for a magic and a CRC, so the magic is what is wrong.
    assert_eq!(SegmentIndex::decode(&[0u8; 12]), Err(CheckpointError::Magic("segment index")));
    assert_eq!(SegmentIndex::decode(&[7u8; 20]), Err(CheckpointError::Magic("segment index")));
    // The right magic with a wrong CRC.
    let mut bytes = SegmentIndex { valid_len: 1, last_time_us: 2, positions: vec![0], time_marks: vec![] }.encode();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert_eq!(SegmentIndex::decode(&bytes), Err(CheckpointError::Checksum));
}

#[test]
fn an_index_with_no_time_marks_reads_back() {
    // The item count check must let a count of zero through at the very end.
    let index = SegmentIndex { valid_len: 99, last_time_us: 5, positions: vec![0, 40, 80], time_marks: vec![] };
    assert_eq!(SegmentIndex::decode(&index.encode()), Ok(index));
    let empty = ShardCheckpoint::default();
    assert_eq!(ShardCheckpoint::decode(&empty.encode()), Ok(empty));
}

#[test]
fn aggregation_settings_at_their_limits_are_valid() {
    let config = AggregateConfig { cascade_split: 10_000, ..AggregateConfig::default() };
    assert_eq!(config.validate(), Ok(()));
    let mut batch = BatchConfig { min_batch: 64, max_batch: 64, grow_gain: 1.0, ..BatchConfig::default() };
    assert_eq!(batch.validate(), Ok(()));
    batch.max_batch = 63;
    assert_eq!(batch.validate(), Err(BatchConfigError::Range));
}

#[test]
fn a_game_state_keeps_the_lists_an_update_leaves_empty() {
    let card = |rank: &str| pb::Card { rank: rank.into(), ..Default::default() };
    let joker = |name: &str| pb::Joker { name: name.into(), ..Default::default() };
    let mut state =
        pb::GameStateEvent { hand: vec![card("A")], jokers: vec![joker("Blueprint")], ..Default::default() };
    merge_game_state(&mut state, &pb::GameStateEvent { phase: "SHOP".into(), ..Default::default() });
    assert_eq!((state.hand.len(), state.jokers.len(), state.phase.as_str()), (1, 1, "SHOP"));
    merge_game_state(
        &mut state,
        &pb::GameStateEvent { hand: vec![card("K"), card("Q")], jokers: vec![joker("Joker")], ..Default::default() },
    );
    assert_eq!(state.hand, vec![card("K"), card("Q")]);
    assert_eq!(state.jokers, vec![joker("Joker")]);
    assert_eq!(state.phase, "SHOP", "an empty phase keeps the last one");
}

#[test]
fn a_batch_size_that_matches_the_queue_stays() {
    let mut sizer = BatchSizer::new(BatchConfig { min_batch: 1, max_batch: 4096, light_load: 1, grow_gain: 0.5 });
    assert_eq!(sizer.observe(10), 6, "half the gap of 9, rounded up, on top of 1");
    assert_eq!(sizer.observe(6), 6, "a queue as deep as the batch is not a reason to grow");
    assert_eq!((sizer.target(), sizer.queue_depth()), (6, 6));
    assert_eq!(sizer.observe(4), 4);
    assert_eq!(sizer.observe(1), 1);
}

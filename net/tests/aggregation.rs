//! Aggregation on the embedded log, through the real binary. The cases live in
//! `cases/aggregation.rs`; `jetstream.rs` runs them on NATS JetStream.

mod cases;
mod harness;

use cases::aggregation as case;
use harness::Jimbus;

#[tokio::test(flavor = "multi_thread")]
async fn cascades_of_100_500_and_5000_triggers_become_one_message_each() {
    case::cascades_of_100_500_and_5000_triggers_become_one_message_each(&Jimbus::start(&["--shards", "2"])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn interleaved_sessions_keep_their_own_hands() {
    case::interleaved_sessions_keep_their_own_hands(&Jimbus::start(&["--shards", "2"])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hand_without_its_complete_is_published_incomplete_after_the_timeout() {
    let server = Jimbus::start(&["--shards", "1", "--cascade-timeout-ms", "300"]);
    case::a_hand_without_its_complete_is_published_incomplete_after_the_timeout(&server).await;
    let metrics = String::from_utf8(server.get("/metrics").body).unwrap();
    assert!(metrics.contains("jimbus_aggregate_cascades_incomplete_total"), "the incomplete hand is counted");
}

#[tokio::test(flavor = "multi_thread")]
async fn bracketless_triggers_within_the_legacy_gap_are_one_group() {
    let server = Jimbus::start(&["--shards", "1", "--legacy-gap-ms", "3600000"]);
    case::bracketless_triggers_within_the_legacy_gap_are_one_group(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_field_mods_cascade_fixture_becomes_one_hand_with_depth() {
    case::the_field_mods_cascade_fixture_becomes_one_hand_with_depth(&Jimbus::start(&["--shards", "1"])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_chooses_the_raw_or_the_aggregated_stream() {
    case::a_subscriber_chooses_the_raw_or_the_aggregated_stream(&Jimbus::start(&["--shards", "1"])).await;
}

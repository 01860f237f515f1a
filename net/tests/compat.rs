//! Field mods keep working unchanged on the embedded log: every compat fixture,
//! posted as the field mod posts it, is answered 2xx and reaches a gRPC
//! subscriber in order with its values intact; retries are deduplicated. The
//! cases live in `cases/compat.rs`; `jetstream.rs` runs them on NATS JetStream.

mod cases;
mod harness;

use harness::Jimbus;

#[tokio::test(flavor = "multi_thread")]
async fn every_fixture_is_accepted_and_delivered_in_order() {
    cases::compat::every_fixture_is_accepted_and_delivered_in_order(&Jimbus::start(&[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_batch_is_acknowledged_but_stored_once() {
    cases::compat::a_retried_batch_is_acknowledged_but_stored_once(&Jimbus::start(&[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_of_every_event_never_receives_a_dead_letter() {
    cases::compat::a_subscriber_of_every_event_never_receives_a_dead_letter(&Jimbus::start(&[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_session_ids_win_and_sessions_keep_their_own_order() {
    let server = Jimbus::start(&["--shards", "2"]);
    cases::compat::explicit_session_ids_win_and_sessions_keep_their_own_order(&server, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_batch_stream_keeps_each_sessions_order() {
    let server = Jimbus::start(&["--shards", "2"]);
    cases::compat::a_publish_batch_stream_keeps_each_sessions_order(&server).await;
}

//! Durable subscriptions through the real binary on the embedded log: resume
//! after a crash at the last acknowledgement, redelivery after the ack deadline,
//! dead-letter after `max_deliver`, flow control by `max_in_flight`, and consumer
//! groups. The cases live in `cases/durable.rs`; `jetstream.rs` runs them on
//! NATS JetStream.

mod cases;
mod harness;

use cases::durable;
use harness::Jimbus;

#[tokio::test(flavor = "multi_thread")]
async fn a_durable_consumer_resumes_after_sigkill_at_its_last_ack() {
    let mut server = Jimbus::start(&["--shards", "2"]);
    durable::a_durable_consumer_resumes_after_sigkill_at_its_last_ack(&mut server, 30_000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unacked_deliveries_come_back_then_go_to_the_dead_letter_topic() {
    durable::unacked_deliveries_come_back_then_go_to_the_dead_letter_topic(&Jimbus::start(&["--shards", "1"])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_in_flight_holds_back_deliveries_until_acks_arrive() {
    durable::max_in_flight_holds_back_deliveries_until_acks_arrive(&Jimbus::start(&["--shards", "1"])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_group_shares_the_events() {
    durable::a_consumer_group_shares_the_events(&Jimbus::start(&["--shards", "2"])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_leaves_gives_its_unacked_deliveries_to_the_group() {
    durable::a_member_that_leaves_gives_its_unacked_deliveries_to_the_group(&Jimbus::start(&["--shards", "2"])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_slow_subscriber_catches_up_in_order() {
    durable::a_paused_slow_subscriber_catches_up_in_order(&Jimbus::start(&["--shards", "1"])).await;
}

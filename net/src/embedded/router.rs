//! The embedded bus as the edges see it: [`ShardRouter`] implements [`Bus`]
//! by sending each request to the pump of the shard that owns it (a session's
//! events to its shard; subscriptions, topic counts and shutdown to all) and
//! gathering the answers. It is `Send` and cheap to clone, so the tokio gRPC
//! edge and every glommio shard hold one. It must never touch a shard's state:
//! it only sends commands and waits for their answers.

use super::command::{Appended, Command, ConsumerRequest};
use super::consumer::DurableNames;
use crate::bus::{delivery_channel, AppendItem, Bus, BusError, BusFuture, DeliveryBatch, ItemOutcome, Subscription};
use jimbus_core::topic;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How to reach every shard. Cheap to clone; `Send`, so the gRPC edge holds one.
#[derive(Clone)]
pub struct ShardRouter {
    /// Each shard's command queue, by shard id.
    queues: Vec<flume::Sender<Command>>,
    /// Durable names on any shard, to refuse one past the limit.
    pub(super) durables: Arc<DurableNames>,
}

type AppendAnswer = Result<Appended, BusError>;

/// The command that appends `items` on their shard, and where its answer
/// comes. Made on the thread that sends it, as the list the stored events
/// come back in must be ([`Command::Append`]).
fn append_command(items: Vec<AppendItem>) -> (Command, flume::Receiver<AppendAnswer>) {
    let (reply, answer) = flume::bounded(1);
    let spent = Vec::with_capacity(items.len());
    (Command::Append { items, reply, spent }, answer)
}

impl ShardRouter {
    pub(super) fn new(queues: Vec<flume::Sender<Command>>) -> Self {
        Self { queues, durables: Arc::default() }
    }

    pub fn shards(&self) -> usize {
        self.queues.len()
    }

    pub fn shard_for(&self, session: &str) -> usize {
        topic::shard_for(session, self.queues.len())
    }

    /// Splits `items` by owning shard, keeping each item's place in the request.
    fn split(&self, items: Vec<AppendItem>) -> Vec<(usize, Vec<usize>, Vec<AppendItem>)> {
        // Nearly always every item of a request has one session, hence one
        // shard: the request goes whole, without growing new lists for it.
        if let Some(first) = items.first().map(AppendItem::session) {
            if items.iter().all(|item| item.session() == first) {
                return vec![(self.shard_for(first), (0..items.len()).collect(), items)];
            }
        }
        let mut parts: Vec<(usize, Vec<usize>, Vec<AppendItem>)> = Vec::new();
        for (place, item) in items.into_iter().enumerate() {
            let shard = self.shard_for(item.session());
            match parts.iter_mut().find(|(s, _, _)| *s == shard) {
                Some((_, places, items)) => {
                    places.push(place);
                    items.push(item);
                }
                None => parts.push((shard, vec![place], vec![item])),
            }
        }
        parts
    }

    /// Waits for every shard's answer and puts the outcomes back in request order.
    fn gather(waits: Vec<(Vec<usize>, flume::Receiver<AppendAnswer>)>, len: usize) -> BusFuture<Vec<ItemOutcome>> {
        Box::pin(async move {
            let mut outcomes = vec![ItemOutcome::Duplicate; len];
            for (places, answer) in waits {
                let Appended { outcomes: answered, spent } =
                    answer.recv_async().await.map_err(|_| BusError::Stopped)??;
                for (place, outcome) in places.into_iter().zip(answered) {
                    outcomes[place] = outcome;
                }
                // Here, on the thread that decoded them: kept as its spares, or freed.
                jimbus_core::spare_events::give_back(spent.into_iter().map(|stored| stored.event));
            }
            Ok(outcomes)
        })
    }

    /// Acknowledges offsets of a durable consumer on `shard`.
    async fn ack_on(&self, shard: usize, name: String, offsets: Vec<u64>) -> Result<u32, BusError> {
        let queue = self.queues.get(shard).ok_or(BusError::Stopped)?;
        let (reply, answer) = flume::bounded(1);
        queue.send_async(Command::Ack { name, offsets, reply }).await.map_err(|_| BusError::Stopped)?;
        answer.recv_async().await.map_err(|_| BusError::Stopped)?
    }

    /// Sends a delivery task's request about consumer `name` to its shard;
    /// false once the shard has stopped.
    pub(super) async fn ask_consumer(
        &self,
        shard: usize,
        name: &str,
        incarnation: u64,
        request: ConsumerRequest,
    ) -> bool {
        let command = Command::Consumer { name: name.to_string(), incarnation, request };
        self.queues[shard].send_async(command).await.is_ok()
    }

    /// Sends one command to every shard; false if any has stopped.
    pub fn broadcast(&self, make: impl Fn() -> Command) -> bool {
        self.queues.iter().all(|q| q.send(make()).is_ok())
    }

    /// Asks `shard` for housekeeping every `every`, until it stops.
    pub(super) async fn maintain_every(self, shard: usize, every: Duration) {
        loop {
            glommio::timer::sleep(every).await;
            if self.queues[shard].send_async(Command::Maintain).await.is_err() {
                return;
            }
        }
    }
}

impl Bus for ShardRouter {
    /// Refuses the request only while none of it is queued. A request of
    /// several shards' sessions whose first part was queued waits for room
    /// for the rest: that part will be stored, so refusing the request then
    /// would answer 503 for stored events, and a retry would store any
    /// without an id twice.
    fn try_append(&self, items: Vec<AppendItem>) -> Result<BusFuture<Vec<ItemOutcome>>, BusError> {
        let len = items.len();
        let mut waits = Vec::new();
        let mut deferred = Vec::new();
        for (shard, places, items) in self.split(items) {
            let (command, answer) = append_command(items);
            match self.queues[shard].try_send(command) {
                Ok(()) => waits.push((places, answer)),
                Err(_) if waits.is_empty() => return Err(BusError::Overloaded),
                Err(flume::TrySendError::Full(command)) => deferred.push((shard, places, command, answer)),
                Err(flume::TrySendError::Disconnected(_)) => return Err(BusError::Stopped),
            }
        }
        if deferred.is_empty() {
            return Ok(Self::gather(waits, len));
        }
        let router = self.clone();
        Ok(Box::pin(async move {
            for (shard, places, command, answer) in deferred {
                router.queues[shard].send_async(command).await.map_err(|_| BusError::Stopped)?;
                waits.push((places, answer));
            }
            Self::gather(waits, len).await
        }))
    }

    fn append(&self, items: Vec<AppendItem>) -> BusFuture<BusFuture<Vec<ItemOutcome>>> {
        let router = self.clone();
        Box::pin(async move {
            let len = items.len();
            let mut waits = Vec::new();
            for (shard, places, items) in router.split(items) {
                let (command, answer) = append_command(items);
                router.queues[shard].send_async(command).await.map_err(|_| BusError::Stopped)?;
                waits.push((places, answer));
            }
            Ok(Self::gather(waits, len))
        })
    }

    fn subscribe(&self, subscription: Subscription) -> Result<flume::Receiver<DeliveryBatch>, BusError> {
        if let Some(durable) = &subscription.durable {
            self.durables.reserve(&durable.name).map_err(BusError::Exhausted)?;
        }
        let (deliveries, receiver) = delivery_channel(subscription.buffer, subscription.room, self.shards());
        let opened = self.broadcast(|| Command::Subscribe {
            pattern: subscription.pattern.clone(),
            start: subscription.start,
            durable: subscription.durable.clone(),
            deliveries: deliveries.clone(),
        });
        if opened {
            Ok(receiver)
        } else {
            Err(BusError::Stopped)
        }
    }

    fn ack(&self, durable: String, positions: Vec<(u32, u64)>) -> BusFuture<u32> {
        let router = self.clone();
        Box::pin(async move {
            let mut per_shard: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
            for (partition, offset) in positions {
                let shard = partition as usize;
                if shard >= router.shards() {
                    return Err(BusError::InvalidArgument(format!("positions: partition {shard} does not exist")));
                }
                per_shard.entry(shard).or_default().push(offset);
            }
            let mut acked = 0;
            for (shard, offsets) in per_shard {
                acked += router.ack_on(shard, durable.clone(), offsets).await?;
            }
            Ok(acked)
        })
    }

    fn topics(&self) -> BusFuture<Vec<(String, u64)>> {
        let (reply, answers) = flume::unbounded();
        let asked = self.broadcast(|| Command::ListTopics { reply: reply.clone() });
        drop(reply);
        Box::pin(async move {
            if !asked {
                return Err(BusError::Stopped);
            }
            let mut totals = BTreeMap::<String, u64>::new();
            while let Ok(topics) = answers.recv_async().await {
                for (name, count) in topics {
                    *totals.entry(name).or_default() += count;
                }
            }
            Ok(totals.into_iter().collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jimbus_core::stamps::RequestStamps;
    use jimbus_proto::events as pb;
    use proptest::prelude::*;

    fn item(session: &str, stamps: &Arc<RequestStamps>) -> AppendItem {
        AppendItem::Event(Box::new(pb::Event { session_id: session.into(), ..Default::default() }), stamps.clone())
    }

    /// Two sessions whose shards differ, the first on shard 0.
    fn sessions_on_two_shards(router: &ShardRouter) -> (String, String) {
        let on = |shard| (0..).map(|n| format!("s{n}")).find(|s| router.shard_for(s) == shard).unwrap();
        (on(0), on(1))
    }

    /// Answers every append on `queue` as stored (and takes any other
    /// command); returns once its senders are gone.
    fn store_all(queue: super::super::ShardQueue) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            for command in queue.0.iter() {
                if let Command::Append { items, reply, spent } = command {
                    let outcomes = vec![ItemOutcome::Stored { partition: 0, offset: 0 }; items.len()];
                    let _ = reply.send(Ok(Appended { outcomes, spent }));
                }
            }
        })
    }

    #[test]
    fn a_request_refused_for_a_full_queue_left_nothing_queued() {
        let (router, queues) = super::super::queues(2, 1);
        let (first, second) = sessions_on_two_shards(&router);
        router.queues[0].try_send(Command::Maintain).unwrap();
        let stamps = Arc::new(RequestStamps::default());
        let refused = router.try_append(vec![item(&first, &stamps), item(&second, &stamps)]);
        assert!(matches!(refused, Err(BusError::Overloaded)));
        assert_eq!(queues[1].0.len(), 0, "the second shard's part was not queued");
    }

    #[test]
    fn a_request_partly_queued_waits_for_room_for_the_rest() {
        let (router, mut queues) = super::super::queues(2, 1);
        let (first, second) = sessions_on_two_shards(&router);
        router.queues[1].try_send(Command::Maintain).unwrap();
        let stamps = Arc::new(RequestStamps::default());
        let items = vec![item(&first, &stamps), item(&second, &stamps), item(&first, &stamps)];
        let stored = router.try_append(items).expect("the first part was queued, so the request is taken");
        assert_eq!(queues[0].0.len(), 1, "the first shard's part is queued");
        let shard1 = store_all(queues.pop().unwrap());
        let shard0 = store_all(queues.pop().unwrap());
        let outcomes = futures_lite::future::block_on(stored).expect("every part stored");
        assert_eq!(outcomes.len(), 3);
        assert!(outcomes.iter().all(|o| matches!(o, ItemOutcome::Stored { .. })), "{outcomes:?}");
        drop(router);
        shard0.join().unwrap();
        shard1.join().unwrap();
    }

    proptest! {
        /// Every item lands once, on its session's shard, in request order
        /// within its part; a request of one session goes whole.
        #[test]
        fn split_keeps_every_item_on_its_shard_in_order(sessions in prop::collection::vec("[a-d]", 0..40)) {
            let (router, _queues) = super::super::queues(4, 1);
            let stamps = Arc::new(RequestStamps::default());
            let parts = router.split(sessions.iter().map(|s| item(s, &stamps)).collect());
            let mut seen = vec![false; sessions.len()];
            for (shard, places, items) in &parts {
                prop_assert_eq!(places.len(), items.len());
                prop_assert!(places.windows(2).all(|w| w[0] < w[1]));
                for (&place, item) in places.iter().zip(items) {
                    prop_assert_eq!(item.session(), sessions[place].as_str());
                    prop_assert_eq!(router.shard_for(item.session()), *shard);
                    prop_assert!(!std::mem::replace(&mut seen[place], true));
                }
            }
            prop_assert!(seen.iter().all(|&s| s));
            let distinct: std::collections::BTreeSet<_> = sessions.iter().map(|s| router.shard_for(s)).collect();
            prop_assert_eq!(parts.len(), distinct.len());
        }
    }
}

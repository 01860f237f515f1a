//! Memory for the gRPC messages a request is still receiving.
//!
//! tonic gathers each message of a request whole before a handler sees it (up
//! to its 4 MiB limit), and h2 opened as many streams as a client asked: a
//! client that sent all but the last byte of 4 MiB messages on many streams
//! made the server hold them outside the memory budget, without bound.
//! [`GrantedBody`] reads the gRPC framing of a request body as it passes to
//! tonic and grants each message's declared length from the budget (a short
//! one from a small reserve first) when its 5-byte prefix arrives, before
//! tonic holds a byte of it (RESOURCE_EXHAUSTED when there is no room), and
//! gives it back once the message has passed: from then on its handler holds
//! it (the bus grants what events take decoded). The call itself holds
//! [`STREAM_BYTES`] while its request arrives: h2 opens up to 256 streams on
//! each of up to `--max-grpc-connections`, and calls stalled before their
//! first byte held 9.5 KiB each outside the budget. What the calls and
//! messages under way take from the budget is capped at [`UNDER_WAY_SHARE`]
//! of its limit, so that a client stalling calls or messages can refuse other
//! gRPC calls but never starve the mods' ingest. It must never change the
//! bytes it passes, or decode a message.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use jimbus_core::budget::{self, Grant, MemoryBudget};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tonic::Status;

/// A gRPC message's prefix: a compression flag, then its length (big-endian).
const PREFIX: usize = 5;

/// The longest message the gRPC port takes (tonic's default, which the bus
/// service sets explicitly); tonic refuses a longer one from the prefix
/// alone, holding none of it, so no more is granted.
pub const MAX_MESSAGE_BYTES: u64 = 4 << 20;

/// A message this short takes its grant from [`SHORT_RESERVE`] first: a
/// Subscribe, an ack or a topic list must reach its handler, which says why
/// it is refused, when ingest has spent the budget.
pub const SHORT_MESSAGE_BYTES: u64 = 4 << 10;

/// What short messages under way may hold beside the budget, in all.
pub const SHORT_RESERVE: u64 = 16 << 20;

/// What a call holds besides its messages while its request arrives: h2's
/// stream state and the request's futures (1,000 calls stalled before their
/// first message grew the server by 9.3 MiB). Granted like a short message,
/// so a Subscribe still reaches its handler when ingest has spent the budget.
pub const STREAM_BYTES: u64 = 16 << 10;

/// The budget's limit is divided by this for what gRPC requests under way
/// (their calls and messages) may hold of it together, beyond the reserve:
/// a quarter, 64 MiB of the default 256, sixteen 4 MiB messages at once; on
/// a budget so small that a quarter is less, one message of
/// [`MAX_MESSAGE_BYTES`]. Without it, 16,384 stalled calls spent the whole
/// budget and every mod's request got 503 until they ended.
pub const UNDER_WAY_SHARE: u64 = 4;

/// The budgets a gRPC port's messages under way are granted from.
#[derive(Clone)]
pub struct FrameBudgets {
    /// The server's memory budget.
    budget: Arc<MemoryBudget>,
    /// [`SHORT_RESERVE`], for short messages before the budget.
    short: Arc<MemoryBudget>,
    /// What the grants from `budget` hold, counted against [`UNDER_WAY_SHARE`]
    /// of its limit (set again before each grant: a coordinator may change it).
    under_way: Arc<MemoryBudget>,
}

/// A grant of a call or a message under way: from the reserve, or from the
/// budget together with its place in the under-way share. Given back on drop.
struct Held {
    /// The bytes, from the reserve or the budget.
    _bytes: Grant,
    /// Their place in the under-way share, when they come from the budget.
    _share: Option<Grant>,
}

impl FrameBudgets {
    pub fn new(budget: Arc<MemoryBudget>) -> Self {
        Self::with_reserve(budget, SHORT_RESERVE)
    }

    /// The budgets with a reserve of `reserve` bytes ([`SHORT_RESERVE`], or a
    /// unit test's size).
    fn with_reserve(budget: Arc<MemoryBudget>, reserve: u64) -> Self {
        Self { budget, short: MemoryBudget::new(reserve), under_way: MemoryBudget::new(0) }
    }

    /// `want` bytes of the budget within the under-way share, or RESOURCE_EXHAUSTED.
    fn within_share(&self, want: u64) -> Result<Held, Status> {
        self.under_way.set_limit((self.budget.limit() / UNDER_WAY_SHARE).max(MAX_MESSAGE_BYTES));
        let refused = || super::refused_for_memory(budget::SPENT);
        let share = self.under_way.request(want, want).ok_or_else(refused)?;
        let bytes = self.budget.request(want, want).ok_or_else(refused)?;
        Ok(Held { _bytes: bytes, _share: Some(share) })
    }

    /// `want` bytes from [`SHORT_RESERVE`], else from the budget, else
    /// RESOURCE_EXHAUSTED.
    fn reserve_first(&self, want: u64) -> Result<Held, Status> {
        match self.short.request(want, want) {
            Some(bytes) => Ok(Held { _bytes: bytes, _share: None }),
            None => self.within_share(want),
        }
    }
}

/// Gives every request body of the gRPC port its grants (a tower request
/// map): the call's [`STREAM_BYTES`] at once, its messages as they arrive.
pub fn granted(request: http::Request<tonic::body::Body>, budgets: &FrameBudgets) -> http::Request<tonic::body::Body> {
    let budgets = budgets.clone();
    request.map(|inner| {
        let mut body = GrantedBody::new(inner, budgets);
        body.call = Some(body.budgets.reserve_first(STREAM_BYTES));
        tonic::body::Body::new(body)
    })
}

/// A request body whose message under way holds its length of the budget.
pub struct GrantedBody {
    /// The body as h2 delivers it.
    inner: tonic::body::Body,
    /// Where the messages' grants come from.
    budgets: FrameBudgets,
    /// The current message's prefix, as far as it has come.
    prefix: [u8; PREFIX],
    /// Bytes of `prefix` come so far.
    seen: usize,
    /// Bytes of the current message still to come, once its prefix is whole.
    left: u64,
    /// What the current message holds of the budget, from its prefix to its end.
    grant: Option<Held>,
    /// What the call holds while its request arrives ([`STREAM_BYTES`]), or
    /// why the call is refused, which the first read answers.
    call: Option<Result<Held, Status>>,
}

impl GrantedBody {
    fn new(inner: tonic::body::Body, budgets: FrameBudgets) -> Self {
        Self { inner, budgets, prefix: [0; PREFIX], seen: 0, left: 0, grant: None, call: None }
    }

    /// Follows the framing through `bytes`, granting each message as it begins.
    fn follow(&mut self, mut bytes: &[u8]) -> Result<(), Status> {
        while !bytes.is_empty() {
            if self.seen < PREFIX {
                let n = (PREFIX - self.seen).min(bytes.len());
                self.prefix[self.seen..self.seen + n].copy_from_slice(&bytes[..n]);
                (self.seen, bytes) = (self.seen + n, &bytes[n..]);
                if self.seen == PREFIX {
                    let [_, length @ ..] = self.prefix;
                    self.left = u64::from(u32::from_be_bytes(length));
                    self.grant = Some(self.grant_for(self.left)?);
                }
            } else {
                let n = bytes.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
                (self.left, bytes) = (self.left - n as u64, &bytes[n..]);
            }
            if self.seen == PREFIX && self.left == 0 {
                // Whole: tonic decodes it now, and its handler holds it.
                (self.seen, self.grant) = (0, None);
            }
        }
        Ok(())
    }

    /// The grant of a message of `length` bytes, or RESOURCE_EXHAUSTED.
    fn grant_for(&self, length: u64) -> Result<Held, Status> {
        let want = length.min(MAX_MESSAGE_BYTES);
        if want <= SHORT_MESSAGE_BYTES {
            return self.budgets.reserve_first(want);
        }
        self.budgets.within_share(want)
    }
}

impl Body for GrantedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(Err(refused)) = this.call.take_if(|call| call.is_err()) {
            return Poll::Ready(Some(Err(refused)));
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame {
            if let Some(data) = frame.data_ref() {
                this.follow(data)?;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn body(budget: &Arc<MemoryBudget>) -> GrantedBody {
        GrantedBody::new(tonic::body::Body::empty(), FrameBudgets::with_reserve(budget.clone(), 0))
    }

    fn prefix(length: u32) -> Vec<u8> {
        [&[0][..], &length.to_be_bytes()].concat()
    }

    fn message(length: u32) -> Vec<u8> {
        let mut bytes = prefix(length);
        bytes.resize(PREFIX + length as usize, 7);
        bytes
    }

    proptest::proptest! {
        /// However the bytes of several messages arrive, each holds its length
        /// from its prefix's last byte to its own, and nothing after.
        #[test]
        fn each_message_holds_its_length_while_it_arrives(
            lengths in proptest::collection::vec(0u32..12_000, 1..5),
            cuts in proptest::collection::vec(1usize..3000, 1..8),
        ) {
            let budget = MemoryBudget::new(1 << 20);
            let mut granted = body(&budget);
            let stream: Vec<u8> = lengths.iter().flat_map(|&l| message(l)).collect();
            // What must be held after each byte: the message it is in, once its prefix is whole.
            let mut held_after = Vec::new();
            for &length in &lengths {
                held_after.extend(std::iter::repeat_n(0, PREFIX - 1));
                held_after.extend(std::iter::repeat_n(u64::from(length), length as usize));
                held_after.push(0);
            }
            let mut at = 0;
            for cut in cuts.iter().cycle() {
                let end = (at + cut).min(stream.len());
                granted.follow(&stream[at..end]).unwrap();
                proptest::prop_assert_eq!(budget.used(), held_after[end - 1], "after byte {}", end);
                at = end;
                if at == stream.len() {
                    break;
                }
            }
        }
    }

    #[test]
    fn a_message_the_budget_has_no_room_for_is_refused_before_it_is_held() {
        let budget = MemoryBudget::new(10_000);
        let mut first = body(&budget);
        first.follow(&message(8_000)[..100]).unwrap();
        assert_eq!(budget.used(), 8_000);
        let refused = body(&budget).follow(&prefix(5_000)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        first.follow(&message(8_000)[100..]).unwrap();
        assert_eq!(budget.used(), 0, "a whole message is its handler's to hold");
        body(&budget).follow(&prefix(5_000)).unwrap();
    }

    #[test]
    fn messages_under_way_hold_at_most_their_share_and_leave_the_rest_to_ingest() {
        const MAX: u64 = MAX_MESSAGE_BYTES;
        let budget = MemoryBudget::new(8 * MAX);
        let budgets = FrameBudgets::with_reserve(budget.clone(), 0);
        let body = || GrantedBody::new(tonic::body::Body::empty(), budgets.clone());
        let (mut first, mut second) = (body(), body());
        first.follow(&prefix(MAX as u32)).unwrap();
        second.follow(&prefix(MAX as u32)).unwrap();
        let refused = body().follow(&prefix(SHORT_MESSAGE_BYTES as u32 + 1)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "past a quarter of the limit");
        assert_eq!(budget.used(), 2 * MAX, "a refused message holds nothing");
        assert!(budget.request(6 * MAX, 6 * MAX).is_some(), "the rest is ingest's");
        budget.set_limit(16 * MAX);
        body().follow(&prefix(MAX as u32)).expect("the share follows a new limit");
        drop((first, second));
        let small = MemoryBudget::new(2 * MAX);
        let budgets = FrameBudgets::with_reserve(small.clone(), 0);
        let mut lone = GrantedBody::new(tonic::body::Body::empty(), budgets);
        lone.follow(&prefix(MAX as u32)).expect("a quarter under one message is one message");
        assert_eq!(small.used(), MAX);
    }

    #[test]
    fn a_short_message_is_granted_from_the_reserve_first() {
        let budget = MemoryBudget::new(1_000);
        let budgets = FrameBudgets::with_reserve(budget.clone(), 3_000);
        let body = || GrantedBody::new(tonic::body::Body::empty(), budgets.clone());
        let (mut first, mut second, mut third) = (body(), body(), body());
        first.follow(&prefix(2_000)).unwrap();
        second.follow(&prefix(800)).unwrap();
        assert_eq!((budgets.short.used(), budget.used()), (2_800, 0));
        third.follow(&prefix(900)).unwrap();
        assert_eq!((budgets.short.used(), budget.used()), (2_800, 900), "past the reserve, from the budget");
        let refused = body().follow(&prefix(900)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "and past both, refused");
        drop(first);
        body().follow(&prefix(2_000)).expect("a grant given back is the reserve's again");
        let reserve_only = FrameBudgets::with_reserve(MemoryBudget::new(0), 1 << 20);
        let body = || GrantedBody::new(tonic::body::Body::empty(), reserve_only.clone());
        body().follow(&prefix(SHORT_MESSAGE_BYTES as u32)).unwrap();
        assert!(
            body().follow(&prefix(SHORT_MESSAGE_BYTES as u32 + 1)).is_err(),
            "a longer one never takes the reserve"
        );
    }

    #[test]
    fn a_call_holds_its_stream_bytes_until_it_ends_and_is_refused_without_room() {
        use http_body_util::BodyExt;
        let budgets = FrameBudgets::with_reserve(MemoryBudget::new(STREAM_BYTES), STREAM_BYTES);
        // A body still to come (tonic keeps none of one that has ended).
        let open = || {
            tonic::body::Body::new(http_body_util::StreamBody::new(futures_util::stream::pending::<
                Result<Frame<Bytes>, Status>,
            >()))
        };
        let call = || granted(http::Request::new(open()), &budgets).into_body();
        let (first, second) = (call(), call());
        assert_eq!((budgets.short.used(), budgets.budget.used()), (STREAM_BYTES, STREAM_BYTES), "reserve first");
        let mut third = call();
        let refused = third.frame().now_or_never().expect("answered at once").expect("an error, not the end");
        assert_eq!(refused.unwrap_err().code(), tonic::Code::ResourceExhausted);
        drop((first, second));
        assert_eq!((budgets.short.used(), budgets.budget.used()), (0, 0), "given back when the call's body drops");
        let mut fourth = call();
        assert!(fourth.frame().now_or_never().is_none(), "with room, the body waits for the client's bytes");
    }

    #[test]
    fn a_message_past_tonics_limit_holds_only_the_limit() {
        let budget = MemoryBudget::new(8 << 20);
        let mut huge = body(&budget);
        huge.follow(&prefix(u32::MAX)).unwrap();
        assert_eq!(budget.used(), MAX_MESSAGE_BYTES, "tonic refuses it from the prefix");
    }
}

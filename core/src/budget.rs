//! The memory budget: one byte budget shared by every shard and the gRPC edge.
//!
//! A component asks for memory *before* it queues work ([`MemoryBudget::request`]),
//! and the answer mirrors the Resource Coordinator's RequestResource: all of it
//! ([`GrantStatus::Granted`]), part of it but at least the stated minimum
//! ([`GrantStatus::Partial`], so a batch can shrink), or nothing ([`None`], the
//! caller sheds load: 429/503 at HTTP, flow control on gRPC). A [`Grant`] gives
//! its bytes back when dropped, so nothing leaks on an error path. The counter
//! is one atomic updated by compare-and-swap, so threads never block on it; the
//! counter type is a parameter so that loom can check the protocol.
//! [`StreamGrants`] holds long-lived streams (subscriptions, live views) to
//! half the budget between them. This module must never allocate on behalf
//! of the caller or wait for memory to free up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The atomic operations the budget needs (std's `AtomicU64`, or loom's in tests).
pub trait Counter: Send + Sync {
    fn new(value: u64) -> Self;
    fn load(&self) -> u64;
    fn compare_exchange_weak(&self, current: u64, new: u64) -> Result<u64, u64>;
    fn fetch_sub(&self, value: u64) -> u64;
    fn fetch_add(&self, value: u64) -> u64;
}

impl Counter for AtomicU64 {
    fn new(value: u64) -> Self {
        AtomicU64::new(value)
    }
    fn load(&self) -> u64 {
        AtomicU64::load(self, Ordering::Acquire)
    }
    fn compare_exchange_weak(&self, current: u64, new: u64) -> Result<u64, u64> {
        AtomicU64::compare_exchange_weak(self, current, new, Ordering::AcqRel, Ordering::Acquire)
    }
    fn fetch_sub(&self, value: u64) -> u64 {
        AtomicU64::fetch_sub(self, value, Ordering::AcqRel)
    }
    fn fetch_add(&self, value: u64) -> u64 {
        AtomicU64::fetch_add(self, value, Ordering::Relaxed)
    }
}

/// What every edge answers a request refused because the budget has not
/// the memory free now (503 at HTTP, RESOURCE_EXHAUSTED on gRPC).
pub const SPENT: &str = "the server's memory budget is spent, retry later";

/// The answer to [`Grant::grow_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// The grant holds the total asked.
    Held,
    /// Not now: the budget has not that much free.
    NotNow,
    /// Never: the total is over [`MemoryBudget::most_one_grant_may_hold`].
    BeyondLimit,
}

/// How much of a request was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantStatus {
    Granted,
    Partial,
}

/// A global byte budget.
pub struct MemoryBudget<C: Counter = AtomicU64> {
    /// Changes when a remote coordinator grants a different share.
    limit: C,
    used: C,
    denied: C,
}

impl<C: Counter> std::fmt::Debug for MemoryBudget<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget").field("limit", &self.limit.load()).field("used", &self.used.load()).finish()
    }
}

impl<C: Counter> MemoryBudget<C> {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self { limit: C::new(limit), used: C::new(0), denied: C::new(0) })
    }

    pub fn limit(&self) -> u64 {
        self.limit.load()
    }

    /// Sets a new limit. Grants already made stay valid: lowering the limit
    /// only makes new requests wait for enough to be given back.
    pub fn set_limit(&self, limit: u64) {
        let mut current = self.limit.load();
        while let Err(now) = self.limit.compare_exchange_weak(current, limit) {
            current = now;
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load()
    }

    /// Half the limit. The other half is what may be held for the server's
    /// life (the aggregators ask for at most that), so a grant up to here is
    /// granted once others give theirs back, and one past it maybe never.
    pub fn most_one_grant_may_hold(&self) -> u64 {
        self.limit() / 2
    }

    /// Requests refused so far.
    pub fn denials(&self) -> u64 {
        self.denied.load()
    }

    /// Grants `want` bytes, or as many as are free if that is at least `min`;
    /// `None` when fewer than `min` are free.
    pub fn request(self: &Arc<Self>, want: u64, min: u64) -> Option<Grant<C>> {
        let min = min.min(want);
        let mut used = self.used.load();
        loop {
            let free = self.limit.load().saturating_sub(used);
            // A request for nothing, or one that fits in nothing, always succeeds.
            let take = want.min(free);
            if take < min {
                self.denied.fetch_add(1);
                return None;
            }
            match self.used.compare_exchange_weak(used, used + take) {
                Ok(_) => {
                    let status = if take == want { GrantStatus::Granted } else { GrantStatus::Partial };
                    return Some(Grant { budget: self.clone(), bytes: take, status });
                }
                Err(now) => used = now,
            }
        }
    }
}

/// Bytes held from a [`MemoryBudget`]; given back on drop.
pub struct Grant<C: Counter = AtomicU64> {
    budget: Arc<MemoryBudget<C>>,
    bytes: u64,
    status: GrantStatus,
}

impl<C: Counter> Grant<C> {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn status(&self) -> GrantStatus {
        self.status
    }

    /// Takes `more` bytes on top of this grant, all or nothing (a request whose
    /// decoded size turns out larger than first asked); false when they are not free.
    pub fn try_grow(&mut self, more: u64) -> bool {
        match self.budget.request(more, more) {
            Some(mut extra) => {
                // The bytes now belong to this grant: `extra` gives back nothing.
                self.bytes += std::mem::take(&mut extra.bytes);
                true
            }
            None => false,
        }
    }

    /// Grows this grant to hold `total` bytes, all or nothing: a caller that
    /// counts what it holds so far asks with the total, not the difference.
    pub fn grow_to(&mut self, total: u64) -> Growth {
        if total <= self.bytes {
            Growth::Held
        } else if total > self.budget.most_one_grant_may_hold() {
            Growth::BeyondLimit
        } else if self.try_grow(total - self.bytes) {
            Growth::Held
        } else {
            Growth::NotNow
        }
    }

    /// Takes over `other`'s bytes, which then come back with this grant.
    ///
    /// # Panics
    /// When `other` is a grant of another budget.
    pub fn merge(&mut self, mut other: Grant<C>) {
        assert!(Arc::ptr_eq(&self.budget, &other.budget), "grants of one budget");
        self.bytes += std::mem::take(&mut other.bytes);
    }

    /// Gives back what is no longer needed, keeping `keep` bytes.
    pub fn shrink_to(&mut self, keep: u64) {
        if keep < self.bytes {
            self.budget.used.fetch_sub(self.bytes - keep);
            self.bytes = keep;
        }
    }
}

impl<C: Counter> std::fmt::Debug for Grant<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant").field("bytes", &self.bytes).field("status", &self.status).finish()
    }
}

impl<C: Counter> Drop for Grant<C> {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes);
    }
}

/// Why [`StreamGrants::take`] refused a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRefusal {
    /// The cap is reached, or one more stream would hold more than half the
    /// budget's limit (the other half stays for the mods' requests).
    TooMany,
    /// The budget has not a stream's grant free now.
    BudgetSpent,
}

/// Long-lived streams of one kind (gRPC subscriptions, live views): each
/// holds a fixed grant for its life, and the open ones together at most half
/// the budget's limit, and at most a fixed number.
#[derive(Debug)]
pub struct StreamGrants {
    /// Where each stream's grant comes from.
    budget: Arc<MemoryBudget>,
    /// Bytes each open stream holds.
    each: u64,
    /// Streams open at most, whatever the budget.
    most: u64,
    /// Streams open now, shared with every [`StreamGrant`] so each gives its place back.
    open: Arc<AtomicU64>,
}

impl StreamGrants {
    pub fn new(budget: Arc<MemoryBudget>, each: u64, most: u64) -> Self {
        Self { budget, each, most, open: Arc::default() }
    }

    /// Streams open now (the gauges count them where they are served).
    #[cfg(test)]
    fn open(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    /// A place and a grant for one more stream. The place is counted before
    /// the limit is checked, so two racing takes never both pass the last place.
    pub fn take(&self) -> Result<StreamGrant, StreamRefusal> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let refused = if open > self.most || open.saturating_mul(self.each) > self.budget.limit() / 2 {
            StreamRefusal::TooMany
        } else if let Some(grant) = self.budget.request(self.each, self.each) {
            return Ok(StreamGrant { _grant: grant, open: self.open.clone() });
        } else {
            StreamRefusal::BudgetSpent
        };
        self.open.fetch_sub(1, Ordering::AcqRel);
        Err(refused)
    }
}

/// One open stream's place among [`StreamGrants`] and its grant; both are given back on drop.
#[derive(Debug)]
pub struct StreamGrant {
    _grant: Grant,
    open: Arc<AtomicU64>,
}

impl Drop for StreamGrant {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_in_full_then_in_part_then_denies() {
        let budget: Arc<MemoryBudget> = MemoryBudget::new(100);
        let a = budget.request(60, 60).expect("fits");
        assert_eq!((a.bytes(), a.status()), (60, GrantStatus::Granted));
        let b = budget.request(60, 10).expect("part fits");
        assert_eq!((b.bytes(), b.status()), (40, GrantStatus::Partial));
        assert!(budget.request(1, 1).is_none());
        assert_eq!(budget.denials(), 1);
        drop(a);
        assert_eq!(budget.used(), 40);
    }

    #[test]
    fn a_lower_limit_holds_new_requests_until_grants_come_back() {
        let budget: Arc<MemoryBudget> = MemoryBudget::new(100);
        let held = budget.request(80, 80).unwrap();
        budget.set_limit(50);
        assert!(budget.request(1, 1).is_none(), "80 held is over the new limit");
        drop(held);
        assert_eq!(budget.request(50, 50).map(|g| g.bytes()), Some(50));
    }

    #[test]
    fn growing_to_a_total_tells_not_now_from_never() {
        let budget: Arc<MemoryBudget> = MemoryBudget::new(100);
        let other = budget.request(30, 30).unwrap();
        let mut grant = budget.request(10, 10).unwrap();
        assert_eq!(grant.grow_to(8), Growth::Held, "already held");
        assert_eq!(grant.grow_to(40), Growth::Held);
        assert_eq!((grant.bytes(), budget.used()), (40, 70));
        assert_eq!(grant.grow_to(51), Growth::BeyondLimit, "over half the limit, whatever is free");
        let more = budget.request(30, 30).unwrap();
        assert_eq!(grant.grow_to(50), Growth::NotNow, "all 100 are held");
        drop((other, more));
        assert_eq!(grant.grow_to(50), Growth::Held);
        assert_eq!(budget.used(), 50);
    }

    #[test]
    fn growing_takes_all_or_nothing() {
        let budget: Arc<MemoryBudget> = MemoryBudget::new(100);
        let mut grant = budget.request(40, 40).unwrap();
        assert!(grant.try_grow(50));
        assert_eq!((grant.bytes(), budget.used()), (90, 90));
        assert!(!grant.try_grow(11), "only 10 are free");
        assert_eq!(budget.used(), 90);
        drop(grant);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_merged_grant_comes_back_with_the_one_it_joined() {
        let budget: Arc<MemoryBudget> = MemoryBudget::new(100);
        let mut first = budget.request(30, 30).unwrap();
        first.merge(budget.request(20, 20).unwrap());
        assert_eq!((first.bytes(), budget.used()), (50, 50));
        drop(first);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn shrinking_gives_back_the_difference() {
        let budget: Arc<MemoryBudget> = MemoryBudget::new(100);
        let mut grant = budget.request(80, 80).unwrap();
        grant.shrink_to(30);
        assert_eq!(budget.used(), 30);
        grant.shrink_to(50);
        assert_eq!(grant.bytes(), 30, "shrinking never grows");
        drop(grant);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn streams_hold_at_most_half_the_limit_and_give_their_place_back() {
        let budget: Arc<MemoryBudget> = MemoryBudget::new(100);
        let streams = StreamGrants::new(budget.clone(), 20, 10);
        let (a, b) = (streams.take().unwrap(), streams.take().unwrap());
        assert_eq!((streams.open(), budget.used()), (2, 40));
        assert_eq!(streams.take().unwrap_err(), StreamRefusal::TooMany, "60 is over half of 100");
        assert_eq!(streams.open(), 2, "a refused stream takes no place");
        drop(a);
        assert_eq!((streams.open(), budget.used()), (1, 20));
        let rest = budget.request(80, 80).unwrap();
        assert_eq!(streams.take().unwrap_err(), StreamRefusal::BudgetSpent);
        drop((b, rest));
        assert_eq!((streams.open(), budget.used()), (0, 0));
    }

    #[test]
    fn streams_stop_at_their_cap_whatever_the_budget() {
        let budget: Arc<MemoryBudget> = MemoryBudget::new(1000);
        let streams = StreamGrants::new(budget, 1, 2);
        let held = [streams.take().unwrap(), streams.take().unwrap()];
        assert_eq!(streams.take().unwrap_err(), StreamRefusal::TooMany);
        drop(held);
        assert!(streams.take().is_ok());
    }
}

//! What one HTTP connection's own buffers hold, charged to the memory budget.
//!
//! A request body and its decoded events are charged by the request that
//! reads them (`GRANT_PER_BODY_BYTE`); this module charges what a connection
//! holds besides: the bytes read from the socket and not yet handed on, the
//! framer's copy of a head in progress, and hyper's read buffer, which grows
//! to the largest head the connection has sent and keeps that size. Without
//! it a client could hold three copies of a 64 KiB head on each of thousands
//! of connections outside the budget. A connection's idle state and its first
//! [`FREE_BUFFER_BYTES`] of buffers are a fixed cost bounded by
//! `--max-connections` instead, so that health probes and metrics scrapes are
//! served while the budget is spent. When the budget cannot cover the rest,
//! the connection is answered 503 and closed. This module must never allocate
//! or read a socket: the connection tells it what its buffers hold.

use jimbus_core::budget::{Grant, MemoryBudget};
use std::sync::Arc;

/// The buffers every connection may hold without a charge: one socket read
/// and a usual head (a mod's is about 200 bytes, a browser's 1–2 KiB) with
/// its copies. Besides them an idle connection holds about 16 KiB (its task,
/// hyper's state and first read buffer; `docs/tuning.md`).
pub const FREE_BUFFER_BYTES: u64 = 16 * 1024;

/// A charge is given back only when it exceeds what the buffers hold by more
/// than this, so that a connection's usual reads touch the shared counter
/// rarely.
const SHRINK_SLACK: u64 = 32 * 1024;

/// The part of the memory budget one connection holds for its buffers.
#[derive(Debug)]
pub struct BufferCharge {
    /// The bytes held; given back when the connection closes.
    grant: Grant,
    /// The longest head the connection has sent: hyper's read buffer grew to
    /// hold it and keeps its size for the connection's life.
    longest_head: u64,
}

/// The budget could not cover what a connection's buffers hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

impl BufferCharge {
    /// A new connection's charge: nothing until its buffers outgrow
    /// [`FREE_BUFFER_BYTES`].
    pub fn new(budget: &Arc<MemoryBudget>) -> Self {
        let grant = budget.request(0, 0).expect("a request for nothing is always granted");
        Self { grant, longest_head: 0 }
    }

    /// The bytes charged now.
    pub fn bytes(&self) -> u64 {
        self.grant.bytes()
    }

    /// Brings the charge to what the buffers hold: `pending` bytes of capacity
    /// read and not yet handed to hyper, and `head` bytes of the current head
    /// (held by the framer, and by hyper as they are handed on).
    pub fn follow(&mut self, pending: usize, head: usize) -> Result<(), OverBudget> {
        let longest_head = self.longest_head.max(head as u64);
        let held = charged_part(pending as u64 + head as u64 + longest_head);
        let charged = self.grant.bytes();
        if held > charged && !self.grant.try_grow(held - charged) {
            return Err(OverBudget);
        }
        self.longest_head = longest_head;
        self.give_back_beyond(held);
        Ok(())
    }

    /// Gives back what the buffers no longer hold, after they shrank.
    pub fn shrink(&mut self, pending: usize, head: usize) {
        let longest_head = self.longest_head.max(head as u64);
        self.give_back_beyond(charged_part(pending as u64 + head as u64 + longest_head));
    }

    fn give_back_beyond(&mut self, held: u64) {
        if self.grant.bytes() > held + SHRINK_SLACK {
            self.grant.shrink_to(held);
        }
    }
}

/// The part of `buffers` bytes the budget covers.
fn charged_part(buffers: u64) -> u64 {
    buffers.saturating_sub(FREE_BUFFER_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_charge_follows_the_buffers_and_keeps_hypers_largest_head() {
        let budget = MemoryBudget::new(1 << 20);
        let mut charge = BufferCharge::new(&budget);
        charge.follow(1024, 700).unwrap();
        assert_eq!(budget.used(), 0, "a usual head is free");
        charge.follow(16 * 1024, 60_000).unwrap();
        assert_eq!(budget.used(), 120_000, "the framer's copy and hyper's, and one read beyond the free part");
        charge.follow(0, 0).unwrap();
        assert_eq!(budget.used(), 60_000 - FREE_BUFFER_BYTES, "hyper keeps the buffer the head grew");
        charge.follow(16 * 1024, 0).unwrap();
        charge.follow(1024, 0).unwrap();
        assert_eq!(charge.bytes(), 60_000, "a drop within the slack stays");
        charge.follow(200_000, 0).unwrap();
        charge.shrink(0, 0);
        assert_eq!(charge.bytes(), 60_000 - FREE_BUFFER_BYTES, "shrinking gives back what the buffers let go");
        drop(charge);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn buffers_beyond_the_budget_are_refused_and_the_charge_stays_whole() {
        let budget = MemoryBudget::new(50_000);
        let mut charge = BufferCharge::new(&budget);
        charge.follow(0, 20_000).unwrap();
        let held = budget.used();
        assert_eq!(charge.follow(0, 40_000), Err(OverBudget), "80,000 bytes for two copies do not fit");
        assert_eq!(budget.used(), held, "nothing was taken for the refused growth");
    }
}

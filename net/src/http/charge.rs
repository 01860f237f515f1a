//! What one HTTP connection's own buffers hold, charged to the memory budget.
//!
//! A request body and its decoded events are charged by the request that
//! reads them (`GRANT_PER_BODY_BYTE`); this module charges what a connection
//! holds besides: the bytes read from the socket and not yet handed on, what
//! the framer keeps of a head in progress, and hyper's read buffer, which
//! grows to the largest head the connection has sent and keeps that size.
//! Without it a client could hold copies of a 64 KiB head on each of
//! thousands of connections outside the budget. A connection's idle state
//! and its first [`FREE_BUFFER_BYTES`] of buffers are a fixed cost bounded by
//! `--max-connections` instead, so that health probes and metrics scrapes are
//! served while the budget is spent. When the budget cannot cover the rest,
//! the connection is answered 503 and closed. This module must never allocate
//! or read a socket: the connection tells it what its buffers hold.

use jimbus_core::budget::{Grant, MemoryBudget};
use std::sync::Arc;

/// The buffers every connection may hold without a charge: one socket read
/// and a usual head (a mod's is about 200 bytes, a browser's 1–2 KiB) with
/// its copies. Besides them an idle connection holds about 17 KiB (its task,
/// hyper's state and first read buffer; `docs/tuning.md`).
pub const FREE_BUFFER_BYTES: u64 = 16 * 1024;

/// A charge is given back only when it exceeds what the buffers hold by more
/// than this, so that a connection's usual reads touch the shared counter
/// rarely.
const SHRINK_SLACK: u64 = 32 * 1024;

/// What a connection's buffers hold, as the connection reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Buffers {
    /// Capacity of the bytes read and not yet handed on, while they hold a head.
    pub pending: usize,
    /// What the framer keeps of the current head (the lines that frame it).
    pub framer: usize,
    /// Bytes of the current head handed to hyper, whose read buffer holds them.
    pub head_passed: usize,
}

/// The part of the memory budget one connection holds for its buffers.
#[derive(Debug)]
pub struct BufferCharge {
    /// The bytes held; given back when the connection closes.
    grant: Grant,
    /// The longest head the connection has sent: hyper's read buffer grew to
    /// hold it and keeps its size for the connection's life.
    longest_head: usize,
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

    /// Brings the charge to what `buffers` hold, after they grew.
    pub fn follow(&mut self, buffers: Buffers) -> Result<(), OverBudget> {
        let longest_head = self.longest_head.max(buffers.head_passed);
        let held = charged_part(buffers, longest_head);
        let charged = self.grant.bytes();
        if held > charged && !self.grant.try_grow(held - charged) {
            return Err(OverBudget);
        }
        self.longest_head = longest_head;
        self.give_back_beyond(held);
        Ok(())
    }

    /// Gives back what `buffers` no longer hold, after they shrank.
    pub fn shrink(&mut self, buffers: Buffers) {
        self.give_back_beyond(charged_part(buffers, self.longest_head.max(buffers.head_passed)));
    }

    fn give_back_beyond(&mut self, held: u64) {
        if self.grant.bytes() > held + SHRINK_SLACK {
            self.grant.shrink_to(held);
        }
    }
}

/// The part of what `buffers` and hyper's buffer (`longest_head`) hold that
/// the budget covers.
fn charged_part(buffers: Buffers, longest_head: usize) -> u64 {
    ((buffers.pending + buffers.framer + longest_head) as u64).saturating_sub(FREE_BUFFER_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffers(pending: usize, framer: usize, head_passed: usize) -> Buffers {
        Buffers { pending, framer, head_passed }
    }

    #[test]
    fn the_charge_follows_the_buffers_and_keeps_hypers_largest_head() {
        let budget = MemoryBudget::new(1 << 20);
        let mut charge = BufferCharge::new(&budget);
        charge.follow(buffers(1024, 0, 700)).unwrap();
        assert_eq!(budget.used(), 0, "a usual head is free");
        charge.follow(buffers(16 * 1024, 200, 100_000)).unwrap();
        assert_eq!(budget.used(), 100_200, "read ahead, the framer's lines and hyper's copy, beyond the free part");
        charge.follow(buffers(200_000, 0, 0)).unwrap();
        charge.shrink(buffers(0, 0, 0));
        let hypers = 100_000 - FREE_BUFFER_BYTES;
        assert_eq!(budget.used(), hypers, "hyper keeps the buffer the head grew");
        charge.follow(buffers(16 * 1024, 0, 0)).unwrap();
        charge.follow(buffers(1024, 0, 0)).unwrap();
        assert_eq!(budget.used(), hypers + 16 * 1024, "a drop within the slack stays");
        drop(charge);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn buffers_beyond_the_budget_are_refused_and_the_charge_stays_whole() {
        let budget = MemoryBudget::new(50_000);
        let mut charge = BufferCharge::new(&budget);
        charge.follow(buffers(0, 0, 20_000)).unwrap();
        let held = budget.used();
        assert_eq!(charge.follow(buffers(0, 0, 80_000)), Err(OverBudget), "80,000 bytes of head do not fit");
        assert_eq!(budget.used(), held, "nothing was taken for the refused growth");
    }
}

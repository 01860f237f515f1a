//! The crate's one policy for a poisoned `std::sync::Mutex`: carry on with the
//! value inside. Every lock in this crate guards a small table (pools,
//! durable names, pending acks) whose every update is a single insert or
//! remove, so a panic elsewhere while the lock was held cannot leave it half
//! changed, and refusing all later callers would turn one panic into a dead
//! server. This module must never be used for a lock whose holder makes
//! several dependent changes.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, taking over a poisoned one.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

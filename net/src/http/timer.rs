//! hyper's timer (for the header read timeout), kept on the shard that runs
//! the connection.
//!
//! hyper wants `Send` sleeps, which glommio's timers are not. async-io's are,
//! but each one armed wakes async-io's own thread through an eventfd: with a
//! sleep armed for every request on a keep-alive connection, those wakeups
//! and the context switches behind them cost about a tenth of the server's CPU
//! under wrk. Here a sleep is an `Arc` deadline put in its shard's list, and
//! one glommio task per shard, running only while the list is not empty,
//! fires what is due every `TICK` and forgets what hyper dropped. A deadline
//! fires up to one tick late, which a timeout of seconds does not notice.
//! This module must never be used off a glommio executor (a sleep is listed
//! on the thread that asks for it) and never carries anything but deadlines.

use futures_util::task::AtomicWaker;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How often a shard looks at its deadlines while it has any.
const TICK: Duration = Duration::from_millis(50);

/// One sleep's deadline, shared by the sleep and its shard's list.
struct Deadline {
    at: Instant,
    /// Set by the shard's ticker once `at` has passed.
    fired: AtomicBool,
    /// The task waiting on the sleep.
    waker: AtomicWaker,
}

thread_local! {
    /// This shard's armed deadlines, in no order.
    static ARMED: RefCell<Vec<Arc<Deadline>>> = const { RefCell::new(Vec::new()) };
    /// Whether this shard's ticker task is running.
    static TICKING: Cell<bool> = const { Cell::new(false) };
}

/// hyper's timer for connections served on a glommio shard.
#[derive(Clone)]
pub struct ShardTimer;

impl hyper::rt::Timer for ShardTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(arm(deadline))
    }
}

/// A sleep until a deadline, fired by its shard's ticker.
pub struct ShardSleep(Arc<Deadline>);

impl Future for ShardSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.0.waker.register(cx.waker());
        // Fired between the check and the registration: its wake was missed.
        if self.0.fired.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl hyper::rt::Sleep for ShardSleep {}

/// Lists a deadline on this shard and starts the ticker if it is not running.
fn arm(at: Instant) -> ShardSleep {
    let deadline = Arc::new(Deadline { at, fired: AtomicBool::new(false), waker: AtomicWaker::new() });
    ARMED.with(|armed| armed.borrow_mut().push(deadline.clone()));
    if !TICKING.replace(true) {
        glommio::spawn_local(tick()).detach();
    }
    ShardSleep(deadline)
}

/// Fires due deadlines and drops those whose sleep is gone, every tick,
/// until none is left.
async fn tick() {
    loop {
        glommio::timer::sleep(TICK).await;
        if fire_due(Instant::now()) == 0 {
            TICKING.set(false);
            return;
        }
    }
}

/// Fires the deadlines due at `now` and forgets them and those nobody waits
/// on any more (the list holds the only reference); returns how many are left.
fn fire_due(now: Instant) -> usize {
    ARMED.with(|armed| {
        let mut armed = armed.borrow_mut();
        armed.retain(|deadline| {
            if Arc::strong_count(deadline) == 1 {
                return false;
            }
            if deadline.at > now {
                return true;
            }
            deadline.fired.store(true, Ordering::Release);
            deadline.waker.wake();
            false
        });
        armed.len()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleep_ends_at_its_deadline_and_a_dropped_one_is_forgotten() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let started = Instant::now();
                let dropped = arm(started + Duration::from_secs(3600));
                drop(dropped);
                arm(started + Duration::from_millis(120)).await;
                let waited = started.elapsed();
                assert!(waited >= Duration::from_millis(120), "{waited:?}");
                assert_eq!(ARMED.with(|a| a.borrow().len()), 0, "the dropped sleep is not kept");
                // The tick that fired the last deadline stopped the ticker
                // before this task ran again; the next sleep starts it anew.
                assert!(!TICKING.get());
                arm(Instant::now() + Duration::from_millis(10)).await;
            })
            .unwrap()
            .join()
            .unwrap();
    }
}

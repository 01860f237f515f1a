//! A server's readiness and stopping, as every part of it sees them. The
//! server ([`crate::server`]) owns the one [`Shutdown`] of the process and is
//! the only one to change it: ready once every shard and the gRPC edge are up
//! (and, on JetStream, while the cluster is available), then stopping when a
//! signal arrives. The edges only read it: `/ready` answers from it, listeners
//! stop accepting and event streams end when it says stopping. This module
//! must never stop anything itself.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the server is ready, and whether it is stopping.
#[derive(Default)]
pub struct Shutdown {
    /// Ready to take events: every part is up and nothing stops it.
    ready: AtomicBool,
    /// Set once, when stopping begins; never cleared.
    stopping: AtomicBool,
    /// Woken when stopping begins.
    stop: event_listener::Event,
}

impl Shutdown {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_stopping()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// A listener that fires when stopping begins; check [`Shutdown::is_stopping`]
    /// after taking it, so a stop in between is not missed.
    pub fn listen(&self) -> event_listener::EventListener {
        self.stop.listen()
    }

    /// Readiness changes (the server's start, a JetStream cluster's
    /// availability); ignored once stopping.
    pub(crate) fn set_ready(&self, ready: bool) {
        if !self.is_stopping() {
            self.ready.store(ready, Ordering::Release);
        }
    }

    /// Begins stopping: not ready any more, and every listener is woken.
    pub(crate) fn begin(&self) {
        self.ready.store(false, Ordering::Release);
        self.stopping.store(true, Ordering::Release);
        self.stop.notify(usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_stopping_it_is_never_ready_again() {
        let shutdown = Shutdown::default();
        assert!(!shutdown.is_ready());
        shutdown.set_ready(true);
        assert!(shutdown.is_ready());
        let woken = shutdown.listen();
        shutdown.begin();
        assert!(shutdown.is_stopping() && !shutdown.is_ready());
        shutdown.set_ready(true);
        assert!(!shutdown.is_ready(), "a late availability report does not make it ready");
        futures_lite::future::block_on(woken);
    }
}

//! The memory budget under every interleaving loom can find: grants never add
//! up to more than the limit, a request that cannot fit is denied, and every
//! byte comes back when the grants are dropped.

use jimbus_core::budget::{Counter, MemoryBudget};
use loom::sync::atomic::{AtomicU64, Ordering};

/// loom's atomic behind the budget's counter trait.
struct LoomCounter(AtomicU64);

impl Counter for LoomCounter {
    fn new(value: u64) -> Self {
        Self(AtomicU64::new(value))
    }
    fn load(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
    fn compare_exchange_weak(&self, current: u64, new: u64) -> Result<u64, u64> {
        self.0.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire)
    }
    fn fetch_sub(&self, value: u64) -> u64 {
        self.0.fetch_sub(value, Ordering::AcqRel)
    }
    fn fetch_add(&self, value: u64) -> u64 {
        self.0.fetch_add(value, Ordering::Relaxed)
    }
}

#[test]
fn two_whole_requests_that_do_not_both_fit_get_exactly_one_grant() {
    loom::model(|| {
        let budget = MemoryBudget::<LoomCounter>::new(100);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let budget = budget.clone();
                loom::thread::spawn(move || {
                    let grant = budget.request(60, 60);
                    assert!(budget.used() <= budget.limit());
                    grant
                })
            })
            .collect();
        // Both grants are held until here, so exactly one can exist.
        let grants: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(grants.iter().flatten().count(), 1, "{grants:?}");
        assert_eq!(budget.used(), 60);
        assert_eq!(budget.denials(), 1);
        drop(grants);
        assert_eq!(budget.used(), 0, "every byte came back");
    });
}

#[test]
fn concurrent_partial_grants_never_exceed_the_limit() {
    loom::model(|| {
        let budget = MemoryBudget::<LoomCounter>::new(100);
        let held = MemoryBudget::<LoomCounter>::request(&budget, 30, 30).expect("first grant");
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let budget = budget.clone();
                loom::thread::spawn(move || budget.request(50, 10))
            })
            .collect();
        let grants: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let total: u64 = held.bytes() + grants.iter().flatten().map(|g| g.bytes()).sum::<u64>();
        assert!(total <= 100, "granted {total}");
        assert_eq!(budget.used(), total);
        assert!(grants.iter().all(Option::is_some), "70 free bytes fit two minimums of 10");
        drop(grants);
        drop(held);
        assert_eq!(budget.used(), 0);
    });
}

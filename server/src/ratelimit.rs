//! Limits per key (pure, in memory, per replica): fixed-window counters for the
//! `sealed/compare` budget per token and the failed-login budget per auth mount, role and source
//! address; [`InFlight`], the share of requests in flight one token may hold.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked at most; past it, expired windows are dropped first, then newcomers are
/// refused (fail closed) rather than the counts of busy keys forgotten.
const MAX_TRACKED: usize = 10_000;

pub struct FixedWindow {
    limit: u32,
    window: Duration,
    counts: Mutex<HashMap<String, (Instant, u32)>>,
}

impl FixedWindow {
    pub fn new(limit: u32, window: Duration) -> FixedWindow {
        FixedWindow {
            limit,
            window,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds until the window resets)` if `key` has used its budget.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), u64> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match counts.get(key) {
            Some((start, n)) if now.duration_since(*start) < self.window && *n >= self.limit => {
                let left = self.window.saturating_sub(now.duration_since(*start));
                Err(left.as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    /// Counts one use of `key`'s budget; `Err(seconds)` if it was already used up.
    pub fn spend(&self, key: &str, now: Instant) -> Result<(), u64> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() >= MAX_TRACKED && !counts.contains_key(key) {
            let window = self.window;
            counts.retain(|_, (start, _)| now.duration_since(*start) < window);
            if counts.len() >= MAX_TRACKED {
                return Err(self.window.as_secs());
            }
        }
        let entry = counts.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            let left = self.window.saturating_sub(now.duration_since(entry.0));
            return Err(left.as_secs().max(1));
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_and_resets_after_the_window() {
        let limit = FixedWindow::new(10, Duration::from_secs(60));
        let start = Instant::now();
        for _ in 0..10 {
            assert!(limit.check("a", start).is_ok());
            assert!(limit.spend("a", start).is_ok());
        }
        let later = start + Duration::from_secs(10);
        assert_eq!(limit.check("a", later), Err(50));
        assert_eq!(limit.spend("a", later), Err(50));
        assert!(
            limit.check("b", start).is_ok(),
            "another key has its own count"
        );
        assert!(limit.spend("b", start).is_ok());
        let next_window = start + Duration::from_secs(60);
        assert!(limit.check("a", next_window).is_ok());
        assert!(limit.spend("a", next_window).is_ok());
    }
}

/// Requests in flight per key (a token), each holding a [`Slot`] until it is answered: one
/// holder cannot take the server-wide in-flight budget (`kinko_tls::MAX_IN_FLIGHT`) from
/// everyone else, for instance with bodies it never finishes sending.
pub struct InFlight {
    limit: usize,
    /// By a keyed 64-bit hash of the key: nothing to allocate per request, and two keys that
    /// collide (about 2^-64 for random tokens) would only share one limit.
    counts: Mutex<HashMap<u64, usize>>,
    hasher: std::hash::RandomState,
}

/// One request's place in its key's share; given back when dropped.
pub struct Slot {
    owner: std::sync::Arc<InFlight>,
    key: u64,
}

impl InFlight {
    pub fn new(limit: usize) -> std::sync::Arc<InFlight> {
        std::sync::Arc::new(InFlight {
            limit,
            counts: Mutex::new(HashMap::new()),
            hasher: std::hash::RandomState::new(),
        })
    }

    /// A slot for `key`, or `None` when it already has `limit` requests in flight.
    pub fn try_take(self: &std::sync::Arc<Self>, key: &str) -> Option<Slot> {
        use std::hash::BuildHasher;
        let key = self.hasher.hash_one(key);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            owner: self.clone(),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let std::collections::hash_map::Entry::Occupied(mut count) = counts.entry(self.key) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

#[cfg(test)]
mod in_flight_tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_its_limit_and_gets_slots_back() {
        let slots = InFlight::new(2);
        let a = slots.try_take("t1").unwrap();
        let _b = slots.try_take("t1").unwrap();
        assert!(slots.try_take("t1").is_none(), "over the limit");
        assert!(
            slots.try_take("t2").is_some(),
            "another key is not affected"
        );
        drop(a);
        assert!(
            slots.try_take("t1").is_some(),
            "a dropped slot is given back"
        );
        drop(_b);
        assert!(
            slots.counts.lock().unwrap().len() <= 1,
            "idle keys are forgotten"
        );
    }
}

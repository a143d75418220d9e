//! Bounded staleness: what one replica caches from storage, another replica may change. Every
//! such cache here forgets its entries after [`REFRESH`], which is the stated bound for a
//! change on one replica (policy, mount, token revocation) to take effect on the others.
//! Changes made through this replica take effect at once (callers invalidate locally).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

pub const REFRESH: Duration = Duration::from_secs(1);
const MAX_ENTRIES: usize = 100_000;

pub struct TtlCache<K, V> {
    entries: RwLock<HashMap<K, (V, Instant)>>,
    /// Bumped by every `remove` and `clear`: a value read from storage before an invalidation
    /// must not be inserted after it (see [`TtlCache::insert_unless_invalidated`]).
    generation: AtomicU64,
}

impl<K, V> Default for TtlCache<K, V> {
    fn default() -> Self {
        TtlCache {
            entries: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let entries = self.entries.read().expect("cache poisoned");
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < REFRESH)
            .map(|(v, _)| v.clone())
    }

    /// Take this before reading what will be inserted.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Inserts `value`, read from storage after [`TtlCache::generation`] returned `seen`, unless
    /// something was removed since: that removal may be of this very entry (a revocation racing
    /// the lookup), and re-inserting it would bring it back for a whole refresh period.
    pub fn insert_unless_invalidated(&self, seen: u64, key: K, value: V) {
        let mut entries = self.entries.write().expect("cache poisoned");
        if self.generation.load(Ordering::Acquire) == seen {
            Self::insert_locked(&mut entries, key, value);
        }
    }

    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.entries.write().expect("cache poisoned");
        Self::insert_locked(&mut entries, key, value);
    }

    fn insert_locked(entries: &mut HashMap<K, (V, Instant)>, key: K, value: V) {
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, at)| at.elapsed() < REFRESH);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (value, Instant::now()));
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&self, key: &Q)
    where
        K: Borrow<Q>,
    {
        let mut entries = self.entries.write().expect("cache poisoned");
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.remove(key);
    }

    pub fn clear(&self) {
        let mut entries = self.entries.write().expect("cache poisoned");
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_can_be_removed() {
        let cache = TtlCache::default();
        cache.insert("a", 1);
        assert_eq!(cache.get(&"a"), Some(1));
        cache.remove(&"a");
        assert_eq!(cache.get(&"a"), None);
        cache.insert("b", 2);
        std::thread::sleep(REFRESH + Duration::from_millis(50));
        assert_eq!(cache.get(&"b"), None, "older than the bound");
    }

    #[test]
    fn a_value_read_before_a_removal_is_not_inserted_after_it() {
        let cache = TtlCache::default();
        let seen = cache.generation();
        cache.remove(&"revoked"); // the revocation lands between the read and the insert
        cache.insert_unless_invalidated(seen, "revoked", 1);
        assert_eq!(cache.get(&"revoked"), None);
        let seen = cache.generation();
        cache.insert_unless_invalidated(seen, "live", 2);
        assert_eq!(cache.get(&"live"), Some(2));
    }
}

//! Bounded staleness: what one replica caches from storage, another replica may change. Every
//! such cache here forgets its entries after [`REFRESH`], which is the stated bound for a
//! change on one replica (policy, mount, token revocation) to take effect on the others.
//! Changes made through this replica take effect at once (callers invalidate locally).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;
use std::time::{Duration, Instant};

pub const REFRESH: Duration = Duration::from_secs(1);
const MAX_ENTRIES: usize = 100_000;

pub struct TtlCache<K, V> {
    entries: RwLock<HashMap<K, (V, Instant)>>,
}

impl<K, V> Default for TtlCache<K, V> {
    fn default() -> Self {
        TtlCache {
            entries: RwLock::new(HashMap::new()),
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

    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.entries.write().expect("cache poisoned");
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
        self.entries.write().expect("cache poisoned").remove(key);
    }

    pub fn clear(&self) {
        self.entries.write().expect("cache poisoned").clear();
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
}

//! Items as stored (ciphertext under the barrier, never plaintext), recently read or written,
//! kept in memory by a backend whose process is the only writer of its data (the embedded
//! SQLite store), so that a hot key is served without a storage read.
//!
//! It is exact, not a staleness bound:
//! - the writer marks the keys of a transaction pending before it commits (reads of them go to
//!   storage meanwhile, and keep nothing), and puts what it committed here before it answers;
//! - an entry is replaced by a read only with a higher version of its key. Versions never repeat
//!   (a delete is remembered with its last version), so a read that raced a write cannot put back
//!   what the write replaced;
//! - a read that raced an eviction keeps nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::Entry;

/// What an entry costs beyond its key and value (map slot, `Arc` header, version).
const ENTRY_OVERHEAD_BYTES: usize = 64;

pub struct ItemCache {
    state: RwLock<State>,
    /// Bumped by every eviction: a read started before one must not insert after it (it could
    /// be older than a write whose entry the eviction dropped).
    evictions: AtomicU64,
    budget_bytes: usize,
}

#[derive(Default)]
struct State {
    entries: HashMap<Box<str>, Cached>,
    bytes: usize,
}

struct Cached {
    version: u64,
    value: Kept,
}

enum Kept {
    Value(Arc<[u8]>),
    /// Deleted, its last version being the entry's.
    Deleted,
    /// Present at the entry's version, too large to keep: only the version is remembered, so
    /// that an older read cannot be kept in its place.
    TooLarge,
    /// Being written (its version is `u64::MAX`, which no read can replace).
    Pending,
}

/// What the cache knows of a key.
pub enum Lookup {
    Present(Entry),
    Deleted,
    /// Not cached: read storage, taking [`Lookup::Unknown`]'s ticket to [`ItemCache::read`].
    Unknown(Ticket),
}

/// Taken before a storage read whose result may be cached.
pub struct Ticket(u64);

impl ItemCache {
    /// A cache of at most about `budget_bytes` of keys and values.
    pub fn new(budget_bytes: usize) -> ItemCache {
        ItemCache {
            state: RwLock::default(),
            evictions: AtomicU64::new(0),
            budget_bytes,
        }
    }

    pub fn get(&self, key: &str) -> Lookup {
        // The ticket is taken first: an eviction after it makes the later insert a no-op.
        let ticket = Ticket(self.evictions.load(Ordering::Acquire));
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        match state
            .entries
            .get(key)
            .map(|cached| (cached.version, &cached.value))
        {
            Some((version, Kept::Value(value))) => Lookup::Present(Entry {
                value: value.to_vec(),
                version,
            }),
            Some((_, Kept::Deleted)) => Lookup::Deleted,
            Some((_, Kept::TooLarge | Kept::Pending)) | None => Lookup::Unknown(ticket),
        }
    }

    /// Keeps what a storage read found (taken after [`ItemCache::get`] gave `ticket`).
    pub fn read(&self, ticket: Ticket, key: &str, entry: &Entry) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if self.evictions.load(Ordering::Acquire) == ticket.0 {
            let value = self.kept(Some(&entry.value));
            self.insert(&mut state, key, entry.version, value);
        }
    }

    /// Marks keys about to be written (before the commit).
    pub fn pending<'k>(&self, keys: impl IntoIterator<Item = &'k str>) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            self.insert(&mut state, key, u64::MAX, Kept::Pending);
        }
    }

    /// Settles a key marked pending once the commit is known: `Some((version, value))` for a
    /// committed put (`Some(value)`) or delete (`None`, `version` being its last one), `None` for
    /// a key the commit did not change.
    pub fn settle(&self, key: &str, committed: Option<(u64, Option<&[u8]>)>) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = state.entries.remove(key) {
            state.bytes -= key.len() + old.value.size();
        }
        if let Some((version, value)) = committed {
            let value = self.kept(value);
            self.insert(&mut state, key, version, value);
        }
    }

    fn kept(&self, value: Option<&[u8]>) -> Kept {
        match value {
            None => Kept::Deleted,
            Some(value) if value.len() > self.budget_bytes / 8 => Kept::TooLarge,
            Some(value) => Kept::Value(Arc::from(value)),
        }
    }

    fn insert(&self, state: &mut State, key: &str, version: u64, value: Kept) {
        if let Some(cached) = state.entries.get(key) {
            if cached.version >= version {
                return;
            }
        }
        let size = key.len() + value.size();
        if state.bytes + size > self.budget_bytes {
            // Bounded simply: start over. A hot key is back after its next read.
            self.evictions.fetch_add(1, Ordering::AcqRel);
            state.entries.clear();
            state.bytes = 0;
        }
        let replaced = state.entries.insert(key.into(), Cached { version, value });
        state.bytes += size;
        if let Some(old) = replaced {
            state.bytes -= key.len() + old.value.size();
        }
    }
}

impl Kept {
    /// Its share of the budget, its key's length aside.
    fn size(&self) -> usize {
        ENTRY_OVERHEAD_BYTES
            + match self {
                Kept::Value(value) => value.len(),
                Kept::Deleted | Kept::TooLarge | Kept::Pending => 0,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &[u8], version: u64) -> Entry {
        Entry {
            value: value.to_vec(),
            version,
        }
    }

    /// What the writer does for one committed change.
    fn written(cache: &ItemCache, key: &str, version: u64, value: Option<&[u8]>) {
        cache.pending([key]);
        cache.settle(key, Some((version, value)));
    }

    fn ticket(cache: &ItemCache, key: &str) -> Ticket {
        match cache.get(key) {
            Lookup::Unknown(ticket) => ticket,
            _ => panic!("{key} is cached"),
        }
    }

    #[test]
    fn a_read_older_than_a_write_does_not_replace_it() {
        let cache = ItemCache::new(1 << 20);
        let stale_read = ticket(&cache, "k");
        written(&cache, "k", 6, Some(b"six"));
        cache.read(stale_read, "k", &entry(b"five", 5));
        assert!(
            matches!(cache.get("k"), Lookup::Present(e) if e.version == 6 && e.value == b"six")
        );
        // A delete is remembered with its version: the older read cannot bring the key back.
        let stale_read = Ticket(0);
        written(&cache, "k", 6, None);
        written(&cache, "k", 7, None);
        cache.read(stale_read, "k", &entry(b"six", 6));
        assert!(matches!(cache.get("k"), Lookup::Deleted));
        written(&cache, "k", 8, Some(b"again"));
        assert!(matches!(cache.get("k"), Lookup::Present(e) if e.version == 8));
    }

    #[test]
    fn a_key_being_written_is_read_from_storage_and_a_read_keeps_nothing() {
        let cache = ItemCache::new(1 << 20);
        written(&cache, "k", 5, Some(b"five"));
        cache.pending(["k"]);
        // A read during the write goes to storage; what it finds (old or new) is not kept.
        let during = ticket(&cache, "k");
        cache.read(during, "k", &entry(b"five", 5));
        assert!(matches!(cache.get("k"), Lookup::Unknown(_)));
        cache.settle("k", Some((6, Some(b"six"))));
        assert!(matches!(cache.get("k"), Lookup::Present(e) if e.version == 6));
        // A transaction that failed changes nothing: the key is simply not cached.
        cache.pending(["k"]);
        cache.settle("k", None);
        assert!(matches!(cache.get("k"), Lookup::Unknown(_)));
    }

    #[test]
    fn a_read_that_raced_an_eviction_is_not_kept() {
        let cache = ItemCache::new(64 * 1024);
        let before = ticket(&cache, "k");
        // Filling past the budget starts over, forgetting "k"'s newer write with the rest.
        written(&cache, "k", 9, Some(b"nine"));
        for i in 0..2000 {
            written(&cache, &format!("other-{i}"), 1, Some(&[0; 32]));
        }
        cache.read(before, "k", &entry(b"old", 3));
        assert!(matches!(cache.get("k"), Lookup::Unknown(_)));
    }

    #[test]
    fn it_stays_within_its_budget() {
        let cache = ItemCache::new(64 * 1024);
        for i in 0..10_000 {
            written(&cache, &format!("key-{i}"), 1, Some(&[7; 100]));
            let state = cache.state.read().unwrap();
            assert!(state.bytes <= 64 * 1024, "{}", state.bytes);
        }
        // Too large to keep: its version is, so an older read is not kept in its place.
        let stale_read = ticket(&cache, "big");
        written(&cache, "big", 2, Some(&vec![0; 64 * 1024]));
        assert!(matches!(cache.get("big"), Lookup::Unknown(_)));
        cache.read(stale_read, "big", &entry(b"small and old", 1));
        assert!(matches!(cache.get("big"), Lookup::Unknown(_)));
    }
}

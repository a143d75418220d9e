//! Items as stored (never decrypted: ciphertext under the barrier, or the few plain items such
//! as the seal configuration), recently read or written, kept in memory by a backend whose
//! process is the only writer of its data (the embedded SQLite store), so that a hot key is
//! served without a storage read.
//!
//! It is exact, not a staleness bound:
//! - the writer marks the keys of a transaction pending before it commits (reads of them go to
//!   storage meanwhile, and keep nothing), and settles them before it answers: with what it
//!   committed, or back to what they were if the commit left them as they were;
//! - an entry is replaced by a read only with a higher version of its key. Versions never repeat
//!   (a delete is remembered with its last version), so a read that raced a write cannot put back
//!   what the write replaced;
//! - an entry that knew something leaves the cache only when the cache starts over, which begins
//!   a new generation: a read whose ticket is from an older one keeps nothing (it could be older
//!   than a write whose entry went). (A pending key that knew nothing is dropped when its write
//!   leaves it unchanged: reads kept out meanwhile found what is still current.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockWriteGuard};

use super::Entry;

/// What an entry costs beyond its key and value (map slot, box header, version).
const ENTRY_OVERHEAD_BYTES: usize = 64;
/// The largest value kept: a few large items would otherwise make the cache start over often.
const MAX_KEPT_VALUE_BYTES: usize = 16 * 1024;

pub struct ItemCache {
    state: RwLock<State>,
    /// Bumped each time the cache starts over (see the module's rules).
    generation: AtomicU64,
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
    /// Being written: reads go to storage and keep nothing, and the entry is what the key was
    /// before the write, to go back to if the write leaves it unchanged.
    pending: bool,
}

enum Kept {
    Value(Box<[u8]>),
    /// Deleted, its last version being the entry's.
    Deleted,
    /// Present at the entry's version, too large to keep: only the version is remembered, so
    /// that an older read cannot be kept in its place.
    TooLarge,
    /// Nothing known: a pending key that was not cached, or whose entry went when the cache
    /// started over.
    Unknown,
}

/// What the cache knows of a key.
pub enum Lookup {
    Present(Entry),
    Deleted,
    /// Not cached: read storage, taking [`Lookup::Unknown`]'s ticket to [`ItemCache::keep_read`].
    Unknown(Ticket),
}

/// Taken before a storage read whose result may be kept.
pub struct Ticket(u64);

/// What a commit did to a key: `Some((version, value))` for a put (`Some(value)`) or a delete
/// (`None`, `version` being its last one), `None` if it left the key as it was.
pub type Settled<'a> = Option<(u64, Option<&'a [u8]>)>;

impl ItemCache {
    /// A cache of at most about `budget_bytes` of keys and values.
    pub fn new(budget_bytes: usize) -> ItemCache {
        ItemCache {
            state: RwLock::default(),
            generation: AtomicU64::new(0),
            budget_bytes,
        }
    }

    /// How many times it started over.
    #[cfg(test)]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn get(&self, key: &str) -> Lookup {
        // The ticket is taken first: starting over after it makes the later keep a no-op.
        let ticket = Ticket(self.generation.load(Ordering::Acquire));
        let Ok(state) = self.state.read() else {
            // Poisoned: the next write starts over, which also makes this ticket worthless.
            return Lookup::Unknown(ticket);
        };
        match state.entries.get(key) {
            Some(Cached {
                version,
                value: Kept::Value(value),
                pending: false,
            }) => Lookup::Present(Entry {
                value: value.to_vec(),
                version: *version,
            }),
            Some(Cached {
                value: Kept::Deleted,
                pending: false,
                ..
            }) => Lookup::Deleted,
            _ => Lookup::Unknown(ticket),
        }
    }

    /// Keeps what a storage read found, unless something it may be older than happened since
    /// [`ItemCache::get`] gave `ticket`.
    pub fn keep_read(&self, ticket: Ticket, key: &str, entry: &Entry) {
        let keeps = |state: &State| {
            self.generation.load(Ordering::Acquire) == ticket.0
                && state
                    .entries
                    .get(key)
                    .is_none_or(|cached| !cached.pending && cached.version < entry.version)
        };
        // Most reads that find nothing to keep (a large item, a key being written) learn it
        // without taking the lock for writing.
        if !self.state.read().is_ok_and(|state| keeps(&state)) {
            return;
        }
        let mut state = self.write_state();
        if keeps(&state) {
            let value = self.kept(Some(&entry.value));
            self.insert(&mut state, key, entry.version, value, false);
        }
    }

    /// Marks keys about to be written (before the commit).
    pub fn pending<'k>(&self, keys: impl IntoIterator<Item = &'k str>) {
        let mut state = self.write_state();
        for key in keys {
            match state.entries.get_mut(key) {
                Some(cached) => cached.pending = true,
                None => self.insert(&mut state, key, 0, Kept::Unknown, true),
            }
        }
    }

    /// Settles keys marked pending once the commit is known.
    pub fn settle<'k>(&self, keys: impl IntoIterator<Item = (&'k str, Settled<'k>)>) {
        let mut state = self.write_state();
        for (key, settled) in keys {
            match settled {
                Some((version, value)) => {
                    let value = self.kept(value);
                    self.insert(&mut state, key, version, value, false);
                }
                None => match state.entries.get_mut(key) {
                    Some(Cached {
                        value: Kept::Unknown,
                        ..
                    }) => {
                        // Nothing was known before: a read that started before the write, and
                        // was kept out while it was pending, may keep what it finds after it.
                        state.remove(key);
                    }
                    Some(cached) => cached.pending = false,
                    None => {}
                },
            }
        }
    }

    /// The state, to change. A panic while it was held may have left it half-changed: it then
    /// starts over, knowing nothing (pending marks included: a read kept out by one may keep
    /// what it found before the write, which the write's settling then replaces).
    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|poisoned| {
            let mut state = poisoned.into_inner();
            self.generation.fetch_add(1, Ordering::AcqRel);
            state.entries.clear();
            state.bytes = 0;
            self.state.clear_poison();
            state
        })
    }

    fn kept(&self, value: Option<&[u8]>) -> Kept {
        match value {
            None => Kept::Deleted,
            Some(value) if value.len() > MAX_KEPT_VALUE_BYTES.min(self.budget_bytes / 8) => {
                Kept::TooLarge
            }
            Some(value) => Kept::Value(value.into()),
        }
    }

    fn insert(&self, state: &mut State, key: &str, version: u64, value: Kept, pending: bool) {
        state.remove(key);
        let size = key.len() + value.size();
        if state.bytes + size > self.budget_bytes {
            // Bounded simply: start over. A hot key is back after its next read. Pending keys
            // stay marked (a read during their write still keeps nothing), knowing nothing.
            self.generation.fetch_add(1, Ordering::AcqRel);
            state.entries.retain(|_, cached| cached.pending);
            state.bytes = 0;
            for (key, cached) in &mut state.entries {
                cached.value = Kept::Unknown;
                cached.version = 0;
                state.bytes += key.len() + cached.value.size();
            }
        }
        state.entries.insert(
            key.into(),
            Cached {
                version,
                value,
                pending,
            },
        );
        state.bytes += size;
    }
}

impl State {
    fn remove(&mut self, key: &str) {
        if let Some(old) = self.entries.remove(key) {
            self.bytes -= key.len() + old.value.size();
        }
    }
}

impl Kept {
    /// Its share of the budget, its key's length aside.
    fn size(&self) -> usize {
        ENTRY_OVERHEAD_BYTES
            + match self {
                Kept::Value(value) => value.len(),
                Kept::Deleted | Kept::TooLarge | Kept::Unknown => 0,
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
        cache.settle([(key, Some((version, value)))]);
    }

    fn ticket(cache: &ItemCache, key: &str) -> Ticket {
        match cache.get(key) {
            Lookup::Unknown(ticket) => ticket,
            _ => panic!("{key} is cached"),
        }
    }

    fn present(cache: &ItemCache, key: &str) -> Option<(Vec<u8>, u64)> {
        match cache.get(key) {
            Lookup::Present(e) => Some((e.value, e.version)),
            _ => None,
        }
    }

    #[test]
    fn a_read_older_than_a_write_does_not_replace_it() {
        let cache = ItemCache::new(1 << 20);
        let stale_read = ticket(&cache, "k");
        written(&cache, "k", 6, Some(b"six"));
        cache.keep_read(stale_read, "k", &entry(b"five", 5));
        assert_eq!(present(&cache, "k"), Some((b"six".to_vec(), 6)));
        // A delete is remembered with its version: the older read cannot bring the key back.
        let stale_read = Ticket(0);
        written(&cache, "k", 6, None);
        written(&cache, "k", 7, None);
        cache.keep_read(stale_read, "k", &entry(b"six", 6));
        assert!(matches!(cache.get("k"), Lookup::Deleted));
        written(&cache, "k", 8, Some(b"again"));
        assert_eq!(present(&cache, "k"), Some((b"again".to_vec(), 8)));
    }

    #[test]
    fn a_key_being_written_is_read_from_storage_and_a_read_keeps_nothing() {
        let cache = ItemCache::new(1 << 20);
        written(&cache, "k", 5, Some(b"five"));
        cache.pending(["k"]);
        // A read during the write goes to storage; what it finds (old or new) is not kept.
        let during = ticket(&cache, "k");
        cache.keep_read(during, "k", &entry(b"five", 5));
        assert!(matches!(cache.get("k"), Lookup::Unknown(_)));
        cache.settle([("k", Some((6, Some(&b"six"[..]))))]);
        assert_eq!(present(&cache, "k"), Some((b"six".to_vec(), 6)));
    }

    /// A transaction that left a key as it was (a check, a failed precondition, a failed
    /// commit) puts its entry back as it was: forgetting it instead would let a read older than
    /// the entry keep what it found.
    #[test]
    fn a_write_that_changed_nothing_leaves_the_entry_as_it_was() {
        let cache = ItemCache::new(1 << 20);
        let stale_read = ticket(&cache, "k");
        written(&cache, "k", 6, Some(b"six"));
        cache.pending(["k"]);
        cache.settle([("k", None)]);
        cache.keep_read(stale_read, "k", &entry(b"five", 5));
        assert_eq!(present(&cache, "k"), Some((b"six".to_vec(), 6)));
        // Not cached before: not cached after, and a read then keeps what it finds.
        cache.pending(["other"]);
        let during = ticket(&cache, "other");
        cache.settle([("other", None)]);
        assert!(matches!(cache.get("other"), Lookup::Unknown(_)));
        cache.keep_read(during, "other", &entry(b"one", 1));
        assert_eq!(present(&cache, "other"), Some((b"one".to_vec(), 1)));
    }

    #[test]
    fn a_read_that_raced_a_start_over_is_not_kept() {
        let cache = ItemCache::new(64 * 1024);
        let before = ticket(&cache, "k");
        // Filling past the budget starts over, forgetting "k"'s newer write with the rest.
        written(&cache, "k", 9, Some(b"nine"));
        for i in 0..2000 {
            written(&cache, &format!("other-{i}"), 1, Some(&[0; 32]));
        }
        cache.keep_read(before, "k", &entry(b"old", 3));
        assert!(matches!(cache.get("k"), Lookup::Unknown(_)));
    }

    #[test]
    fn a_pending_key_stays_pending_when_the_cache_starts_over() {
        let cache = ItemCache::new(4096);
        written(&cache, "k", 5, Some(b"five"));
        cache.pending(["k"]);
        for i in 0..200 {
            written(&cache, &format!("other-{i}"), 1, Some(&[0; 32]));
        }
        let during = ticket(&cache, "k");
        cache.keep_read(during, "k", &entry(b"five", 5));
        assert!(matches!(cache.get("k"), Lookup::Unknown(_)));
        cache.settle([("k", Some((6, Some(&b"six"[..]))))]);
        assert_eq!(present(&cache, "k"), Some((b"six".to_vec(), 6)));
    }

    /// A panic while the state was held may have left it half-changed: it starts over.
    #[test]
    fn a_poisoned_cache_starts_over() {
        let cache = ItemCache::new(1 << 20);
        written(&cache, "k", 5, Some(b"five"));
        let before = ticket(&cache, "other");
        std::thread::scope(|s| {
            s.spawn(|| {
                let _held = cache.state.write().unwrap();
                panic!("while holding the cache");
            })
            .join()
            .unwrap_err();
        });
        assert!(matches!(cache.get("k"), Lookup::Unknown(_)));
        written(&cache, "j", 1, Some(b"one"));
        assert!(matches!(cache.get("k"), Lookup::Unknown(_)), "forgotten");
        cache.keep_read(before, "other", &entry(b"old", 1));
        assert!(matches!(cache.get("other"), Lookup::Unknown(_)));
        assert_eq!(present(&cache, "j"), Some((b"one".to_vec(), 1)));
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
        written(&cache, "big", 2, Some(&vec![0; 8 * 1024 + 1]));
        assert!(matches!(cache.get("big"), Lookup::Unknown(_)));
        cache.keep_read(stale_read, "big", &entry(b"small and old", 1));
        assert!(matches!(cache.get("big"), Lookup::Unknown(_)));
    }
}

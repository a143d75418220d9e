//! SQLite's own page cache behind a thin wrapper, so that a commit does not scan the writer's
//! whole cache when there is nothing to drop.
//!
//! At every commit SQLite truncates the page cache to the database's size (`xTruncate`), which
//! drops nothing unless the cache holds a page past the end. The default cache decides that
//! from the largest page number it has seen since its last truncate, and that number is raised
//! by a page number the cache never keeps: when a B-tree rebalance reorders its pages, it moves
//! one page to a temporary number (that of the page holding SQLite's lock byte, at 1 GiB) and
//! straight on to its place. In a database under 1 GiB every commit after such a rebalance then
//! walked every page of the cache (the writer's 16 MiB: ~4,000 pages, ~20 µs); with 1M secrets,
//! where random writes rebalance often, it was the writer thread's largest cost (perf, in
//! bench/RESULTS.md, 2026-12-07 evening). This wrapper keeps the largest page number a page
//! really has and passes a truncate on only when some page can be at or past its limit;
//! everything else goes to SQLite's own cache unchanged.
//!
//! Reviewed against SQLite 3.46.0 (a test pins the version): the parked page is moved on
//! before the rebalance returns. Should a page ever stay parked, truncates are passed on
//! until it leaves.
//!
//! The methods are installed process-wide before SQLite initialises, by [`install`] (called
//! before any connection of this crate opens); if SQLite is already in use, it is left as it is.

use std::cell::Cell;
use std::os::raw::{c_int, c_uint};
use std::sync::OnceLock;

use rusqlite::ffi;

/// SQLite's `PENDING_BYTE`: the page holding it is never a page of the database.
const PENDING_BYTE: u32 = 0x4000_0000;

/// SQLite's default page cache, as it was before [`install`] put the wrapper in front of it:
/// set before the wrapper is, so that every call of the wrapper finds it.
static DEFAULT: OnceLock<Methods> = OnceLock::new();
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// The default methods: function pointers and SQLite's own (null) argument, never changed.
struct Methods(ffi::sqlite3_pcache_methods2);
// SAFETY: the struct is only read; its pointers are SQLite's functions and their argument.
unsafe impl Sync for Methods {}
unsafe impl Send for Methods {}

/// Puts the wrapper in front of SQLite's page cache, once; `false` if SQLite was initialised
/// before (by code that opened a connection without this), which leaves its cache as it is.
pub(super) fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        // SAFETY: sqlite3_config before sqlite3_initialize; both calls refuse (MISUSE) once
        // SQLite is initialised, and then nothing is changed. SQLite copies the struct.
        unsafe {
            let mut default: ffi::sqlite3_pcache_methods2 = std::mem::zeroed();
            let got = ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_GETPCACHE2,
                &mut default as *mut ffi::sqlite3_pcache_methods2,
            );
            if got != ffi::SQLITE_OK || DEFAULT.set(Methods(default)).is_err() {
                return false;
            }
            let wrapper = ffi::sqlite3_pcache_methods2 {
                xCreate: Some(create),
                xCachesize: Some(cachesize),
                xPagecount: Some(pagecount),
                xFetch: Some(fetch),
                xUnpin: Some(unpin),
                xRekey: Some(rekey),
                xTruncate: Some(truncate),
                xDestroy: Some(destroy),
                xShrink: Some(shrink),
                ..default
            };
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_PCACHE2,
                &wrapper as *const ffi::sqlite3_pcache_methods2,
            ) == ffi::SQLITE_OK
        }
    })
}

/// One connection's cache: SQLite's, and what the wrapper knows of its page numbers. A cache
/// belongs to one connection, which one thread uses at a time: `Cell`s are enough.
struct Cache {
    default: &'static ffi::sqlite3_pcache_methods2,
    inner: *mut ffi::sqlite3_pcache,
    /// Where a rebalance parks a page for a moment: not a page number of the database.
    parking: c_uint,
    /// The largest number a page has had since the last truncate that went through, the
    /// parking one aside.
    largest: Cell<c_uint>,
    /// A page is at the parking number now.
    parked: Cell<bool>,
}

/// # Safety
/// `cache` is a pointer [`create`] returned and [`destroy`] has not freed.
unsafe fn wrapper_of<'a>(cache: *mut ffi::sqlite3_pcache) -> &'a Cache {
    &*(cache as *const Cache)
}

/// A missing default (never: the wrapper is installed only after it is set) makes `xCreate`
/// return NULL, which SQLite reports as out of memory; nothing here panics across the FFI
/// boundary. (Like every allocation in this process, the `Box` aborts if memory runs out.)
unsafe extern "C" fn create(
    page_size: c_int,
    extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let Some(Methods(default)) = DEFAULT.get() else {
        return std::ptr::null_mut();
    };
    let inner = match default.xCreate {
        Some(create) => create(page_size, extra, purgeable),
        None => return std::ptr::null_mut(),
    };
    if inner.is_null() {
        return inner;
    }
    Box::into_raw(Box::new(Cache {
        default,
        inner,
        parking: PENDING_BYTE / (page_size.max(1) as u32) + 1,
        largest: Cell::new(0),
        parked: Cell::new(false),
    })) as *mut ffi::sqlite3_pcache
}

unsafe extern "C" fn destroy(cache: *mut ffi::sqlite3_pcache) {
    let cache = Box::from_raw(cache as *mut Cache);
    if let Some(destroy) = cache.default.xDestroy {
        destroy(cache.inner);
    }
}

unsafe extern "C" fn cachesize(cache: *mut ffi::sqlite3_pcache, pages: c_int) {
    let cache = wrapper_of(cache);
    if let Some(cachesize) = cache.default.xCachesize {
        cachesize(cache.inner, pages);
    }
}

unsafe extern "C" fn pagecount(cache: *mut ffi::sqlite3_pcache) -> c_int {
    let cache = wrapper_of(cache);
    cache
        .default
        .xPagecount
        .map_or(0, |pagecount| pagecount(cache.inner))
}

unsafe extern "C" fn shrink(cache: *mut ffi::sqlite3_pcache) {
    let cache = wrapper_of(cache);
    if let Some(shrink) = cache.default.xShrink {
        shrink(cache.inner);
    }
}

unsafe extern "C" fn fetch(
    cache: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let cache = wrapper_of(cache);
    let page = match cache.default.xFetch {
        Some(fetch) => fetch(cache.inner, key, create),
        None => std::ptr::null_mut(),
    };
    // Every page number a page gets counts here, the parking one included (SQLite asks for it
    // only to find it absent, or on a corrupt file).
    if !page.is_null() && key > cache.largest.get() {
        cache.largest.set(key);
    }
    page
}

unsafe extern "C" fn unpin(
    cache: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    let cache = wrapper_of(cache);
    if let Some(unpin) = cache.default.xUnpin {
        unpin(cache.inner, page, discard);
    }
}

unsafe extern "C" fn rekey(
    cache: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    let cache = wrapper_of(cache);
    if let Some(rekey) = cache.default.xRekey {
        rekey(cache.inner, page, old, new);
    }
    if new == cache.parking {
        cache.parked.set(true);
        #[cfg(test)]
        counts::add(|c| c.parked += 1);
    } else {
        if old == cache.parking {
            cache.parked.set(false);
        }
        if new > cache.largest.get() {
            cache.largest.set(new);
        }
    }
}

unsafe extern "C" fn truncate(cache: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let cache = wrapper_of(cache);
    if limit > cache.largest.get() && !cache.parked.get() {
        // No page has a number at or past the limit: nothing to drop.
        #[cfg(test)]
        counts::add(|c| c.skipped += 1);
        return;
    }
    #[cfg(test)]
    counts::add(|c| c.passed += 1);
    if let Some(truncate) = cache.default.xTruncate {
        truncate(cache.inner, limit);
    }
    // Never raised here: a truncate that went through only for a parked page leaves the rest
    // as they were.
    cache
        .largest
        .set(cache.largest.get().min(limit.saturating_sub(1)));
    if limit <= cache.parking {
        cache.parked.set(false);
    }
}

/// What the wrapper did on this thread, for tests (per thread, so tests running at once do not
/// see each other's).
#[cfg(test)]
pub(super) mod counts {
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Counts {
        /// Pages moved to the parking number.
        pub parked: u64,
        /// Truncates passed on to SQLite's cache.
        pub passed: u64,
        /// Truncates found to have nothing to drop.
        pub skipped: u64,
    }

    thread_local! {
        static COUNTS: std::cell::Cell<Counts> = const { std::cell::Cell::new(Counts {
            parked: 0,
            passed: 0,
            skipped: 0,
        }) };
    }

    pub fn add(change: impl FnOnce(&mut Counts)) {
        COUNTS.with(|counts| {
            let mut now = counts.get();
            change(&mut now);
            counts.set(now);
        });
    }

    pub fn get() -> Counts {
        COUNTS.with(std::cell::Cell::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    /// The wrapper on top of SQLite's own cache, driven the way the pager drives it: whatever
    /// sequence of creates, moves (parking included), discards and truncates, a truncate never
    /// leaves a page at or past its limit in SQLite's cache, and one with nothing to drop is
    /// skipped, even right after a page was parked and moved on.
    #[test]
    fn a_truncate_is_skipped_only_when_no_page_is_at_or_past_its_limit() {
        unsafe {
            let (default, cache) = wrapped_cache(100_000);
            let parking = wrapper_of(cache).parking;
            assert_eq!(parking, 262_145, "the lock-byte page at 4 KiB pages");
            let present_in_sqlite = |key| present_in_sqlite(default, cache, key);
            let mut present = BTreeSet::new();
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let before = counts::get();
            let mut skipped_after_park = 0;
            let mut parked_since_truncate = false;
            for _ in 0..20_000 {
                match rng.gen_range(0..10) {
                    0..=4 => {
                        let key = rng.gen_range(1..400);
                        let page = fetch(cache, key, 2);
                        assert!(!page.is_null());
                        unpin(cache, page, 0);
                        present.insert(key);
                    }
                    5 | 6 => {
                        // A rebalance's swap of two pages through the parking number.
                        let (Some(&a), Some(&b)) = (
                            present.iter().nth(rng.gen_range(0..present.len().max(1))),
                            present.iter().next_back(),
                        ) else {
                            continue;
                        };
                        if a == b {
                            continue;
                        }
                        let (page_a, page_b) = (fetch(cache, a, 0), fetch(cache, b, 0));
                        assert!(!page_a.is_null() && !page_b.is_null(), "{a} or {b} evicted");
                        rekey(cache, page_a, a, parking);
                        rekey(cache, page_b, b, a);
                        rekey(cache, page_a, parking, b);
                        unpin(cache, page_a, 0);
                        unpin(cache, page_b, 0);
                        parked_since_truncate = true;
                    }
                    7 => {
                        let Some(&key) = present.iter().next() else {
                            continue;
                        };
                        let page = fetch(cache, key, 0);
                        assert!(!page.is_null(), "{key} evicted");
                        unpin(cache, page, 1);
                        present.remove(&key);
                    }
                    _ => {
                        let limit = rng.gen_range(1..420);
                        let skipped = counts::get().skipped;
                        truncate(cache, limit);
                        present.retain(|key| *key < limit);
                        if counts::get().skipped > skipped && parked_since_truncate {
                            skipped_after_park += 1;
                        }
                        parked_since_truncate = false;
                        for key in limit..420 {
                            assert!(!present_in_sqlite(key), "page {key} left past {limit}");
                        }
                        assert!(!present_in_sqlite(parking));
                    }
                }
                assert_eq!(pagecount(cache) as usize, present.len());
            }
            let after = counts::get();
            assert!(after.parked > before.parked);
            assert!(
                after.passed > before.passed,
                "no truncate had pages to drop"
            );
            assert!(after.skipped > before.skipped, "no truncate was skipped");
            assert!(skipped_after_park > 0, "a parked page still costs a scan");
            destroy(cache);
        }
    }

    /// A cache of 4 KiB pages through the wrapper, room for `pages` (none evicted below that),
    /// and SQLite's default methods to look behind it.
    unsafe fn wrapped_cache(
        pages: c_int,
    ) -> (
        &'static ffi::sqlite3_pcache_methods2,
        *mut ffi::sqlite3_pcache,
    ) {
        assert!(install(), "SQLite was initialised before the wrapper");
        // SQLite's own cache is ready once SQLite is initialised.
        rusqlite::Connection::open_in_memory().unwrap();
        let cache = create(4096, 64, 1);
        assert!(!cache.is_null());
        cachesize(cache, pages);
        (&DEFAULT.get().unwrap().0, cache)
    }

    /// Whether SQLite's own cache holds `key` (asked directly, so the wrapper does not count it).
    unsafe fn present_in_sqlite(
        default: &ffi::sqlite3_pcache_methods2,
        cache: *mut ffi::sqlite3_pcache,
        key: c_uint,
    ) -> bool {
        let inner = wrapper_of(cache).inner;
        let page = (default.xFetch.unwrap())(inner, key, 0);
        if !page.is_null() {
            (default.xUnpin.unwrap())(inner, page, 0);
        }
        !page.is_null()
    }

    /// A page left at the parking number (which SQLite 3.46 never does) makes every truncate
    /// go through, and the first that does drops it, pinned or not; then truncates with nothing
    /// to drop are skipped again. The same when the parked page was discarded instead.
    #[test]
    fn a_parked_page_makes_truncates_go_through_until_it_is_gone() {
        unsafe {
            let (default, cache) = wrapped_cache(1000);
            let parking = wrapper_of(cache).parking;
            for key in 1..=10 {
                let page = fetch(cache, key, 2);
                assert!(!page.is_null());
                unpin(cache, page, 0);
            }
            let park = |key| {
                let page = fetch(cache, key, 0);
                assert!(!page.is_null());
                rekey(cache, page, key, parking);
                page
            };
            let truncate_counted = |limit| {
                let before = counts::get();
                truncate(cache, limit);
                let after = counts::get();
                (after.passed - before.passed, after.skipped - before.skipped)
            };

            // Parked and still pinned: the truncate goes through and frees it.
            park(5);
            assert_eq!(
                truncate_counted(11),
                (1, 0),
                "past every page, but one is parked"
            );
            assert!(!present_in_sqlite(default, cache, parking));
            assert_eq!(pagecount(cache), 9);
            assert_eq!(truncate_counted(11), (0, 1), "nothing past 10 any more");

            // Parked, then discarded rather than moved on.
            let page = park(7);
            unpin(cache, page, 1);
            assert_eq!(truncate_counted(11), (1, 0));
            assert_eq!(truncate_counted(11), (0, 1));
            assert_eq!(pagecount(cache), 8);
            destroy(cache);
        }
    }

    /// The reasoning above was checked against this SQLite's pager and B-tree: an upgrade must
    /// check it again (that a parked page is moved on before a truncate, and where the lock
    /// byte is), then move this number.
    #[test]
    fn the_sqlite_version_is_the_one_the_wrapper_was_checked_against() {
        assert_eq!(rusqlite::version_number(), 3_046_000);
    }
}

//! SQLite's own page cache behind a thin wrapper, so that a commit does not scan the writer's
//! whole cache when there is nothing to drop.
//!
//! At every commit SQLite truncates the page cache to the database's size (`xTruncate`), which
//! drops nothing unless the cache holds a page past the end. The default cache decides that
//! from the largest page number it has seen since its last truncate, and that number is raised
//! by a page number the cache never keeps: when a B-tree rebalance reorders its pages, it moves
//! one page to a temporary number (that of the page holding SQLite's lock byte, at 1 GiB) and
//! straight on to its place. In a database under 1 GiB every commit after such a rebalance then
//! walks every page of the cache (the writer's 16 MiB: ~4,000 pages, ~20 µs); with 1M secrets,
//! where random writes rebalance often, it was the writer thread's largest cost (perf, see
//! bench/RESULTS.md). This wrapper counts the largest page number a page really has and lets
//! a truncate through only when some page can be at or past its limit; everything else goes to
//! SQLite's own cache unchanged.
//!
//! The methods are installed process-wide before SQLite initialises, by [`install`] (called
//! before any connection of this crate opens); if SQLite is already in use, it is left as it is.

use std::cell::Cell;
use std::os::raw::{c_int, c_uint};
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Truncates passed on to SQLite's cache and truncates found to have nothing to drop.
static TRUNCATES: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Puts the wrapper in front of SQLite's page cache, once; `false` if SQLite was initialised
/// before (by code that opened a connection without this), which leaves its cache as it is.
pub fn install() -> bool {
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

/// How many truncates were passed on to SQLite's cache, and how many had nothing to drop.
#[cfg(test)]
pub fn truncates() -> (u64, u64) {
    (
        TRUNCATES[0].load(Ordering::Relaxed),
        TRUNCATES[1].load(Ordering::Relaxed),
    )
}

/// One connection's cache: SQLite's, and the largest page number one of its pages has had
/// since the last truncate that went through. A cache belongs to one connection, which one
/// thread uses at a time: a `Cell` is enough.
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    /// Where a rebalance parks a page for a moment: not a page number of the database.
    parking: c_uint,
    largest: Cell<c_uint>,
}

/// SQLite's default methods. The wrapper is installed only after they are set, so no call of
/// it finds them missing; and none could panic across the FFI boundary if one did.
fn methods() -> &'static ffi::sqlite3_pcache_methods2 {
    static NONE: Methods = Methods(ffi::sqlite3_pcache_methods2 {
        iVersion: 0,
        pArg: std::ptr::null_mut(),
        xInit: None,
        xShutdown: None,
        xCreate: None,
        xCachesize: None,
        xPagecount: None,
        xFetch: None,
        xUnpin: None,
        xRekey: None,
        xTruncate: None,
        xDestroy: None,
        xShrink: None,
    });
    &DEFAULT.get().unwrap_or(&NONE).0
}

/// # Safety
/// `cache` is a pointer [`create`] returned and [`destroy`] has not freed.
unsafe fn ours<'a>(cache: *mut ffi::sqlite3_pcache) -> &'a Cache {
    &*(cache as *const Cache)
}

unsafe extern "C" fn create(
    page_size: c_int,
    extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let inner = match methods().xCreate {
        Some(create) => create(page_size, extra, purgeable),
        None => return std::ptr::null_mut(),
    };
    if inner.is_null() {
        return inner;
    }
    let parking = PENDING_BYTE / (page_size.max(1) as u32) + 1;
    Box::into_raw(Box::new(Cache {
        inner,
        parking,
        largest: Cell::new(0),
    })) as *mut ffi::sqlite3_pcache
}

unsafe extern "C" fn destroy(cache: *mut ffi::sqlite3_pcache) {
    let cache = Box::from_raw(cache as *mut Cache);
    if let Some(destroy) = methods().xDestroy {
        destroy(cache.inner);
    }
}

unsafe extern "C" fn cachesize(cache: *mut ffi::sqlite3_pcache, pages: c_int) {
    if let Some(cachesize) = methods().xCachesize {
        cachesize(ours(cache).inner, pages);
    }
}

unsafe extern "C" fn pagecount(cache: *mut ffi::sqlite3_pcache) -> c_int {
    methods()
        .xPagecount
        .map_or(0, |pagecount| pagecount(ours(cache).inner))
}

unsafe extern "C" fn shrink(cache: *mut ffi::sqlite3_pcache) {
    if let Some(shrink) = methods().xShrink {
        shrink(ours(cache).inner);
    }
}

unsafe extern "C" fn fetch(
    cache: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let cache = ours(cache);
    let page = match methods().xFetch {
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
    if let Some(unpin) = methods().xUnpin {
        unpin(ours(cache).inner, page, discard);
    }
}

unsafe extern "C" fn rekey(
    cache: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    let cache = ours(cache);
    if let Some(rekey) = methods().xRekey {
        rekey(cache.inner, page, old, new);
    }
    // A page parked for a moment by a rebalance is moved on before the rebalance returns.
    if new != cache.parking && new > cache.largest.get() {
        cache.largest.set(new);
    }
}

unsafe extern "C" fn truncate(cache: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let cache = ours(cache);
    if limit > cache.largest.get() {
        // No page has a number at or past the limit: nothing to drop.
        TRUNCATES[1].fetch_add(1, Ordering::Relaxed);
        return;
    }
    TRUNCATES[0].fetch_add(1, Ordering::Relaxed);
    if let Some(truncate) = methods().xTruncate {
        truncate(cache.inner, limit);
    }
    cache.largest.set(limit.saturating_sub(1));
}

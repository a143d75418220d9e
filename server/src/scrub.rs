//! Stack scrubbing after sealing. Zeroize-on-drop wipes a key where it finally lives, but every
//! move of a key and every AES key expansion leaves bytes in stack frames that have since
//! returned, below the stack pointer, until something happens to overwrite them. When the last
//! unsealed state is dropped, each runtime worker overwrites the unused part of its own stack
//! the next time it goes idle ([`on_thread_park`], installed by the binary's runtime).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Deeper than any request's frames reach.
const SCRUB_BYTES: usize = 512 * 1024;

/// The runtime's worker stack size (set by the binary), so that a scrub always fits.
pub const WORKER_STACK_BYTES: usize = 2 * 1024 * 1024;
const _: () = assert!(SCRUB_BYTES * 4 <= WORKER_STACK_BYTES);

/// Bumped when key material is dropped; each worker scrubs once per bump.
static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static SCRUBBED: Cell<u64> = const { Cell::new(0) };
}

/// Asks every worker to scrub its stack when it next parks, and wakes them all: a worker
/// parked since it last touched a key would otherwise keep the copies until it is next busy.
/// One task per worker waits (bounded) until all have started, so each lands on its own
/// worker and scrubs there.
pub fn request() {
    GENERATION.fetch_add(1, Ordering::Release);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let workers = runtime.metrics().num_workers();
    let started = std::sync::Arc::new((std::sync::Mutex::new(0usize), std::sync::Condvar::new()));
    for _ in 0..workers {
        let started = started.clone();
        runtime.spawn(async move {
            let (count, all) = &*started;
            let mut count = count.lock().unwrap_or_else(|p| p.into_inner());
            *count += 1;
            all.notify_all();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
            while *count < workers && std::time::Instant::now() < deadline {
                count = all
                    .wait_timeout(count, std::time::Duration::from_millis(50))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            drop(count);
            this_thread();
        });
    }
}

/// The runtime's `on_thread_park` hook: one atomic load unless a scrub is due.
pub fn on_thread_park() {
    let wanted = GENERATION.load(Ordering::Acquire);
    if SCRUBBED.get() != wanted {
        this_thread();
        SCRUBBED.set(wanted);
    }
}

/// Overwrites [`SCRUB_BYTES`] of this thread's stack below the caller's frame.
#[inline(never)]
pub fn this_thread() {
    let mut area = [0u8; SCRUB_BYTES];
    zeroize::Zeroize::zeroize(&mut area[..]);
    std::hint::black_box(&area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_park_after_a_request_scrubs_once() {
        request();
        let wanted = GENERATION.load(Ordering::Acquire);
        on_thread_park();
        assert_eq!(SCRUBBED.get(), wanted);
        on_thread_park();
        assert_eq!(
            SCRUBBED.get(),
            wanted,
            "nothing more until the next request"
        );
    }
}

//! Giving the system back the memory a burst of streams and topics left free.
//!
//! glibc's malloc keeps what is freed in its arenas for reuse and returns little to the
//! system by itself: after 2,000 stream opens and closes a second for a minute, a pod
//! held +15% of its starting RSS with every churned stream and topic gone (freed, not
//! leaked; docs/BENCHMARKS.md, "Topics at scale"). `malloc_trim(0)` hands every whole free
//! page of every arena back. It walks the heap under each arena's lock, so it runs on a
//! blocking thread, at most every [`TRIM_INTERVAL`] (a release sooner than that is trimmed
//! when the interval is over), and only after topics were released.
//! (jemalloc, tried instead, returned the memory too but let the peak of a burst grow:
//! the 1,000-stalled-clients fault test went from ~80 MiB to 156-272 MiB in some runs.)

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allocations of at least this size get their own mapping, given back whole when freed.
/// glibc's default starts at 128 KiB and then rises to the size of the largest mapped
/// block freed, up to 32 MiB, after which the big tables of a burst (the hub's topic map,
/// the subscription's sets, redis-rs's set of channels) land in the heap and leave it
/// fragmented once they shrink. 64 KiB did as well after churn but let the
/// 1,000-stalled-clients fault test peak at 135 MiB in 1 of 6 debug runs (bound 128; its
/// pending writes are tens of KiB each); at 256 KiB it peaked at 68-75 MiB in 6 of 6, as
/// without the setting.
pub const MMAP_THRESHOLD: usize = 256 * 1024;

/// Least time between two trims.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// When the last trim ran (`None` before the first), and whether one is already waiting
/// for [`TRIM_INTERVAL`] to pass.
static STATE: Mutex<State> = Mutex::new(State {
    last: None,
    waiting: false,
});

struct State {
    last: Option<Instant>,
    waiting: bool,
}

/// Trims the heap on a blocking thread: now, or, if it was trimmed within
/// [`TRIM_INTERVAL`], once that has passed (one waiting trim covers every release until
/// it runs, so the last batch of a burst is trimmed too). Call it when something sizeable
/// was freed (a batch of topics unsubscribed). Never waits for the interval itself.
pub async fn trim_after_release() {
    let wait = {
        let mut state = STATE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match state.last.map(|at| at.elapsed()) {
            Some(since) if since < TRIM_INTERVAL => {
                if state.waiting {
                    return;
                }
                state.waiting = true;
                Some(TRIM_INTERVAL - since)
            }
            _ => {
                state.last = Some(Instant::now());
                None
            }
        }
    };
    match wait {
        // A failed join (the blocking pool shutting down) only means no trim this time.
        None => drop(tokio::task::spawn_blocking(trim).await),
        Some(wait) => drop(tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            {
                let mut state = STATE
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                state.last = Some(Instant::now());
                state.waiting = false;
            }
            let _ = tokio::task::spawn_blocking(trim).await;
        })),
    }
}

/// Sets the allocator's policy for this process: a fixed [`MMAP_THRESHOLD`] on glibc
/// (nothing elsewhere). Call once, early in `main`. With it, the pod's RSS 20 s after a
/// minute of 2,000 stream opens and closes a second was +6.6-6.8% of its start instead
/// of +9-10% (docs/BENCHMARKS.md, "Topics at scale").
#[allow(unsafe_code)]
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and no pointers; it sets a parameter of the
    // allocator under its own lock and is safe to call from any thread at any time.
    unsafe {
        libc::mallopt(
            libc::M_MMAP_THRESHOLD,
            libc::c_int::try_from(MMAP_THRESHOLD).unwrap_or(libc::c_int::MAX),
        );
    }
}

/// `malloc_trim(0)` on glibc; nothing elsewhere (musl and other allocators keep their own
/// policy).
#[allow(unsafe_code)]
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a size and no pointers; it only rearranges the allocator's
    // own free lists under its locks and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

//! Giving the system back the memory a burst of streams and topics left free.
//!
//! glibc's malloc keeps what is freed in its arenas for reuse and returns little to the
//! system by itself: after 2,000 stream opens and closes a second for a minute, a pod
//! held +15% of its starting RSS with every churned stream and topic gone (freed, not
//! leaked; docs/BENCHMARKS.md, "Topics at scale"). `malloc_trim(0)` hands every whole free
//! page of every arena back. It walks the heap under each arena's lock, so it runs on a
//! blocking thread, at most every [`TRIM_INTERVAL`], and only after topics were released.
//! (jemalloc, tried instead, returned the memory too but let the peak of a burst grow:
//! the 1,000-stalled-clients fault test went from ~80 MiB to 156-272 MiB in some runs.)

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Least time between two trims.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// When the last trim ran; `None` before the first.
static LAST_TRIM: Mutex<Option<Instant>> = Mutex::new(None);

/// Trims the heap (on a blocking thread) unless it was trimmed within [`TRIM_INTERVAL`].
/// Call it when something sizeable was freed (a batch of topics unsubscribed).
pub async fn trim_after_release() {
    {
        let mut last = LAST_TRIM
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < TRIM_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
    }
    // A failed join (the blocking pool shutting down) only means no trim this time.
    let _ = tokio::task::spawn_blocking(trim).await;
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

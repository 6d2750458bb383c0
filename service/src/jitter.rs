//! Random spreads for timers that many processes or clients would otherwise fire at the
//! same moment: reconnects to Redis, streams ended on a drain, `retry:` hints.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A uniformly random duration below `window` (std's per-process random hash keys are
/// randomness enough for spreading reconnects).
pub fn below(window: Duration) -> Duration {
    let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(nanos);
    Duration::from_nanos(hasher.finish() % nanos)
}

/// `base` spread uniformly over `[base * 3/4, base * 5/4)`.
pub fn around(base: Duration) -> Duration {
    base * 3 / 4 + below(base / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_the_window_and_varies() {
        let window = Duration::from_secs(5);
        let samples: Vec<Duration> = (0..200).map(|_| below(window)).collect();
        assert!(samples.iter().all(|d| *d < window));
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 150);
        assert_eq!(below(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn around_stays_within_a_quarter() {
        let base = Duration::from_secs(4);
        for _ in 0..200 {
            let d = around(base);
            assert!(
                d >= Duration::from_secs(3) && d < Duration::from_secs(5),
                "{d:?}"
            );
        }
    }
}

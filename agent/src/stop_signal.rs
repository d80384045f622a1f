//! SIGTERM and SIGINT as a flag, with the moment the first one arrived: the shutdown budget
//! (--shutdown-timeout) counts from then, not from when the loop next looks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Whether, and since when, the process was asked to stop.
#[derive(Clone, Default)]
pub struct StopSignal {
    stop: Arc<AtomicBool>,
    /// CLOCK_MONOTONIC at the first signal, in nanoseconds; 0 before it.
    at_ns: Arc<AtomicU64>,
}

/// CLOCK_MONOTONIC now, in nanoseconds (async-signal-safe).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; it is async-signal-safe.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

impl StopSignal {
    /// Installs the handlers for SIGTERM and SIGINT.
    pub fn install() -> anyhow::Result<StopSignal> {
        let s = StopSignal::default();
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            let (stop, at_ns) = (s.stop.clone(), s.at_ns.clone());
            // SAFETY: the handler only stores to atomics and calls clock_gettime, all
            // async-signal-safe.
            unsafe {
                signal_hook::low_level::register(signal, move || {
                    let _ = at_ns.compare_exchange(
                        0,
                        monotonic_ns().max(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    stop.store(true, Ordering::Relaxed);
                })
            }
            .context("installing the signal handlers")?;
        }
        Ok(s)
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// `budget` after the first signal (or after now, if none came).
    pub fn deadline(&self, budget: Duration) -> Instant {
        let at = self.at_ns.load(Ordering::Relaxed);
        let since = match at {
            0 => Duration::ZERO,
            at => Duration::from_nanos(monotonic_ns().saturating_sub(at)),
        };
        (Instant::now() + budget)
            .checked_sub(since)
            .unwrap_or_else(Instant::now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_from_the_signal() {
        let s = StopSignal::default();
        assert!(!s.requested());
        let d = s.deadline(Duration::from_secs(2));
        assert!(d > Instant::now() + Duration::from_millis(1900));
        // A signal that came 1.5 s ago leaves half a second.
        s.at_ns
            .store(monotonic_ns() - 1_500_000_000, Ordering::Relaxed);
        let left = s
            .deadline(Duration::from_secs(2))
            .saturating_duration_since(Instant::now());
        assert!(left <= Duration::from_millis(500), "{left:?}");
        assert!(left >= Duration::from_millis(400), "{left:?}");
    }
}

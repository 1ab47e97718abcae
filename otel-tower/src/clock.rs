//! Call start times: the monotonic instant and the wall-clock time, with one
//! clock read.
//!
//! A call needs both: the monotonic clock for its duration, the wall clock
//! for its span's timestamps. Each thread keeps a recent pair of readings and
//! derives the wall-clock time from the monotonic one; the pair is renewed
//! every [`RENEW`], so the derived time never drifts from the system clock by
//! more than the clock's slew over that interval (microseconds), and a step
//! of the system clock shows within it.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime};

/// How long a thread's pair of readings is used.
const RENEW: Duration = Duration::from_secs(1);

thread_local! {
    static ANCHOR: Cell<Option<(Instant, SystemTime)>> = const { Cell::new(None) };
}

/// The current instant and wall-clock time.
pub(crate) fn now() -> (Instant, SystemTime) {
    let now = Instant::now();
    ANCHOR.with(|anchor| {
        if let Some((at, wall)) = anchor.get()
            && let Some(since) = now.checked_duration_since(at)
            && since < RENEW
        {
            return (now, wall + since);
        }
        let wall = SystemTime::now();
        anchor.set(Some((now, wall)));
        (now, wall)
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    #[test]
    fn derived_wall_clock_tracks_the_system_clock() {
        for _ in 0..3 {
            let (_, first) = super::now();
            std::thread::sleep(Duration::from_millis(20));
            let (instant, derived) = super::now();
            let system = SystemTime::now();
            // Monotonic order, and close to the real clock (a millisecond by
            // design; the slack is for the two reads being descheduled
            // apart, while an anchor that lagged would be off by the 20 ms
            // slept).
            assert!(derived >= first);
            let gap = system
                .duration_since(derived)
                .unwrap_or_else(|e| e.duration());
            assert!(gap < Duration::from_millis(5), "{gap:?}");
            assert!(instant.elapsed() < Duration::from_secs(1));
        }
    }
}

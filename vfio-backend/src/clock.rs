//! [`MonotonicClock`]: `CLOCK_MONOTONIC` through [`std::time::Instant`].

use std::time::Instant;

use nvme_core::hw::Clock;

/// A monotonic clock (Linux `CLOCK_MONOTONIC`, which [`Instant`] uses): never goes backwards,
/// unaffected by wall-clock changes. Its epoch is its creation.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    epoch: Instant,
}

impl MonotonicClock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

/// Busy-wait hints per [`Clock::relax`] call before the thread yields.
const SPINS: u32 = 64;

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
    /// Spins a little (a register poll usually succeeds within microseconds), then yields the
    /// CPU so that a long wait (CSTS.RDY, up to CAP.TO × 500 ms) does not starve other threads.
    fn relax(&self) {
        for _ in 0..SPINS {
            std::hint::spin_loop();
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_core::hw::Deadline;
    use std::time::Duration;

    #[test]
    fn monotonic_and_deadlines_expire() {
        let c = MonotonicClock::new();
        let a = c.now_ns();
        let d = Deadline::after(&c, Duration::from_millis(5));
        let mut n = 0u64;
        while !d.expired(&c) {
            c.relax();
            n += 1;
        }
        let b = c.now_ns();
        assert!(b >= a + 5_000_000, "{a} {b}");
        assert!(n > 0);
    }
}

//! Fewer wake-ups per completion with MSI-X: interrupt coalescing (NVMe Base 2.1 §5.27.1.8,
//! feature 08h), per-vector opt-out (§5.27.1.9, feature 09h), a hybrid completion wait, and
//! interrupt counters.
//!
//! # Policy
//! - **Coalescing** ([`crate::ControllerConfig::interrupt_coalescing`], off by default): at
//!   bring-up (and after every controller reset, since a reset returns features to their
//!   defaults) the core sends Set Features Interrupt Coalescing with the configured
//!   aggregation threshold and time, when MSI-X is in use. The controller then signals a
//!   vector once per `threshold` completions, or `time` after the first unsignalled one,
//!   whichever comes first (§5.27.1.8); the admin completion queue is never coalesced. A
//!   controller that refuses the feature (QEMU 7.2 answers Feature Not Changeable) keeps
//!   interrupting per completion: the refusal is recorded in
//!   [`crate::controller::ControllerStats::coalescing_refused`], bring-up goes on.
//! - **Latency-sensitive vectors**: [`crate::Controller::set_vector_coalescing`] sends
//!   Interrupt Vector Configuration with Coalescing Disable (CD) for one vector (a queue
//!   pair's vector is [`crate::IoQueuePair::vector`]), so that pair is interrupted per
//!   completion while others aggregate.
//! - **Hybrid wait** ([`crate::ControllerConfig::irq_spin`], default 10 µs): a waiting queue
//!   pair with a vector first polls its completion queue for up to that long, and only then
//!   sleeps on the vector (an eventfd `poll(2)` with VFIO). A completion that arrives within
//!   the spin costs no sleep and wake-up. Zero sleeps at once.
//!
//! # Counting interrupts
//! [`crate::hw::InterruptSource::counts`] reports what a backend counted: interrupts the
//! device signalled and wake-ups of a waiter ([`InterruptCounts`]); VFIO counts the values it
//! reads from each vector's eventfd, the simulator the vectors it raises.
//! [`crate::Controller::interrupt_counts`] reads it; a benchmark takes it before and after a
//! run and divides by the I/Os completed to print interrupts per I/O.

use core::time::Duration;

use crate::hw::Clock;
pub use crate::hw::InterruptCounts;

/// Interrupt Coalescing (§5.27.1.8, feature 08h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptCoalescing {
    /// Completion entries to aggregate per vector before an interrupt (1..=256; the
    /// feature's Aggregation Threshold, THR, bits 7:0, is this minus one).
    pub threshold: u16,
    /// The longest an interrupt is delayed after the first completion it covers, in units
    /// of 100 µs (Aggregation Time, TIME, bits 15:8; 0 means no delay, which turns
    /// coalescing off whatever the threshold).
    pub time_100us: u8,
}

impl InterruptCoalescing {
    /// The Set Features CDW11 value: THR in bits 7:0 (0's based), TIME in bits 15:8.
    pub const fn to_dword(self) -> u32 {
        let thr = if self.threshold == 0 {
            0
        } else if self.threshold > 256 {
            255
        } else {
            self.threshold - 1
        };
        thr as u32 | (self.time_100us as u32) << 8
    }
    /// Decodes a Get Features completion DW0 (or a CDW11).
    pub const fn from_dword(d: u32) -> Self {
        Self {
            threshold: (d & 0xFF) as u16 + 1,
            time_100us: (d >> 8) as u8,
        }
    }
    /// The longest delay this setting allows.
    pub const fn max_delay(self) -> Duration {
        Duration::from_micros(self.time_100us as u64 * 100)
    }
}

/// Interrupt Vector Configuration CDW11 (§5.27.1.9, feature 09h): IV in bits 15:0, Coalescing
/// Disable (CD) in bit 16.
pub const fn vector_config_dword(vector: u16, coalescing: bool) -> u32 {
    vector as u32 | (!coalescing as u32) << 16
}

/// The spin phase of a hybrid wait: until `until_ns` on the platform clock, poll the
/// completion queue instead of sleeping on the vector.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spin {
    until_ns: u64,
}

impl Spin {
    /// A spin phase of `spin_ns` from now (no clock read when it is zero).
    #[inline]
    pub(crate) fn start<C: Clock + ?Sized>(clock: &C, spin_ns: u64) -> Self {
        Self {
            until_ns: if spin_ns == 0 {
                0
            } else {
                clock.now_ns().saturating_add(spin_ns)
            },
        }
    }
    /// True while the waiter should keep polling (then it relaxes the CPU and polls again).
    #[inline]
    pub(crate) fn spinning<C: Clock + ?Sized>(&self, clock: &C) -> bool {
        self.until_ns != 0 && clock.now_ns() < self.until_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn coalescing_dword() {
        let c = InterruptCoalescing {
            threshold: 8,
            time_100us: 2,
        };
        assert_eq!(c.to_dword(), 0x0207);
        assert_eq!(InterruptCoalescing::from_dword(0x0207), c);
        assert_eq!(c.max_delay(), Duration::from_micros(200));
        let max = InterruptCoalescing {
            threshold: 1000,
            time_100us: 255,
        };
        assert_eq!(max.to_dword(), 0xFFFF);
        assert_eq!(vector_config_dword(3, false), 0x1_0003);
        assert_eq!(vector_config_dword(3, true), 0x3);
    }

    struct Fake(AtomicU64);
    impl Clock for Fake {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn spin_phase() {
        let c = Fake(AtomicU64::new(1000));
        let s = Spin::start(&c, 500);
        assert!(s.spinning(&c));
        c.0.store(1499, Ordering::Relaxed);
        assert!(s.spinning(&c));
        c.0.store(1500, Ordering::Relaxed);
        assert!(!s.spinning(&c));
        assert!(!Spin::start(&c, 0).spinning(&c));
    }
}

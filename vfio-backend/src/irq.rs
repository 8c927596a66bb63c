//! MSI-X through VFIO: one eventfd per vector, routed with `VFIO_DEVICE_SET_IRQS`
//! (`VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER`, index
//! `VFIO_PCI_MSIX_IRQ_INDEX`; linux/vfio.h). The kernel signals the eventfd when the vector
//! fires; `wait` is `poll(2)` on it, then a `read` consumes the count.
//!
//! NVMe over PCIe §3.3 (interrupts): each completion queue names an MSI-X vector (IV in Create
//! I/O Completion Queue); vector 0 serves the admin completion queue.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use nvme_core::hw::{InterruptCounts, InterruptSource};
use vfio_bindings::bindings::vfio as b;

use crate::error::VfioError;
use crate::sys;

/// Routing of the vectors to eventfds (the device side, mockable in tests).
pub(crate) trait IrqControl: Send + Sync + std::fmt::Debug {
    /// Routes vectors `0 .. fds.len()` to `fds` (enabling MSI-X).
    fn set_eventfds(&self, fds: &[BorrowedFd<'_>]) -> io::Result<()>;
    /// Disables all vectors (MSI-X off).
    fn disable(&self) -> io::Result<()>;
}

/// The real control: `VFIO_DEVICE_SET_IRQS` on the device fd, MSI-X index.
#[derive(Debug)]
pub(crate) struct MsixControl(pub(crate) Arc<OwnedFd>);

impl IrqControl for MsixControl {
    fn set_eventfds(&self, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        sys::device_set_irq_eventfds(self.0.as_fd(), b::VFIO_PCI_MSIX_IRQ_INDEX, fds)
    }
    fn disable(&self) -> io::Result<()> {
        sys::device_disable_irqs(self.0.as_fd(), b::VFIO_PCI_MSIX_IRQ_INDEX)
    }
}

/// The MSI-X vectors of a VFIO device as an [`InterruptSource`]. In polled mode
/// (`IrqMode::Polled`) it offers no vectors and enables none.
#[derive(Debug)]
pub struct VfioIrq {
    addr: String,
    ctl: Option<Arc<dyn IrqControl>>,
    max: u16,
    /// Serialises enable/disable.
    setup: Mutex<()>,
    fds: RwLock<Vec<Arc<OwnedFd>>>,
    enabled: AtomicU16,
    /// Sum of the eventfd counter values read: interrupts signalled.
    fired: AtomicU64,
    /// Reads that found the counter non-zero: wake-ups.
    wakeups: AtomicU64,
}

impl VfioIrq {
    /// No vectors (polled mode).
    pub(crate) fn polled(addr: &str) -> Self {
        Self::new(addr, None, 0)
    }

    /// `max` vectors (from `VFIO_DEVICE_GET_IRQ_INFO`) behind `ctl`.
    pub(crate) fn new(addr: &str, ctl: Option<Arc<dyn IrqControl>>, max: u16) -> Self {
        Self {
            addr: addr.to_string(),
            max: if ctl.is_some() { max } else { 0 },
            ctl,
            setup: Mutex::new(()),
            fds: RwLock::new(Vec::new()),
            enabled: AtomicU16::new(0),
            fired: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
        }
    }

    fn fd(&self, vector: u16) -> Option<Arc<OwnedFd>> {
        let fds = self.fds.read().unwrap_or_else(|p| p.into_inner());
        fds.get(vector as usize).cloned()
    }

    /// Consumes what is pending on `fd`; on `true` an Acquire fence makes the completion
    /// entries written before the interrupt visible (the trait's contract).
    fn consume(&self, fd: &OwnedFd) -> bool {
        match sys::eventfd_consume(fd.as_fd()) {
            Ok(n) if n > 0 => {
                // Relaxed: statistics only.
                self.fired.fetch_add(n, Ordering::Relaxed);
                self.wakeups.fetch_add(1, Ordering::Relaxed);
                // Acquire: pairs with the device's writes of the CQ entries that precede its
                // MSI-X write (PCIe ordering); the syscall is a barrier in practice, this
                // fence states the contract for the compiler and weakly ordered CPUs.
                fence(Ordering::Acquire);
                true
            }
            _ => false,
        }
    }

    /// The eventfd of `vector`, for callers that integrate with their own event loop (epoll).
    pub fn eventfd(&self, vector: u16) -> Option<Arc<OwnedFd>> {
        self.fd(vector)
    }

    #[cfg(test)]
    pub(crate) fn signal_for_test(&self, vector: u16) {
        let fd = self.fd(vector).expect("vector enabled");
        sys::eventfd_signal(fd.as_fd(), 1).unwrap();
    }
}

impl InterruptSource for VfioIrq {
    type Error = VfioError;

    fn max_vectors(&self) -> u16 {
        self.max
    }

    fn enable(&self, count: u16) -> Result<u16, VfioError> {
        let _g = self.setup.lock().unwrap_or_else(|p| p.into_inner());
        let n = count.min(self.max);
        let Some(ctl) = self.ctl.as_ref() else {
            return Ok(0);
        };
        // MSI-X cannot grow in place on every kernel: turn it off, then on with `n` vectors.
        if self.enabled.load(Ordering::Acquire) > 0 {
            if let Err(e) = ctl.disable() {
                log::warn!("{}: disabling MSI-X before re-enabling: {e}", self.addr);
            }
            self.enabled.store(0, Ordering::Release);
            self.fds.write().unwrap_or_else(|p| p.into_inner()).clear();
        }
        if n == 0 {
            return Ok(0);
        }
        let mut fds = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let fd = sys::eventfd().map_err(|source| VfioError::Irq {
                addr: self.addr.clone(),
                count: n,
                op: "eventfd",
                source,
            })?;
            fds.push(Arc::new(fd));
        }
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        ctl.set_eventfds(&borrowed)
            .map_err(|source| VfioError::Irq {
                addr: self.addr.clone(),
                count: n,
                op: "VFIO_DEVICE_SET_IRQS",
                source,
            })?;
        *self.fds.write().unwrap_or_else(|p| p.into_inner()) = fds;
        // Release: the fds are in place before anyone sees the new count.
        self.enabled.store(n, Ordering::Release);
        Ok(n)
    }

    fn disable(&self) {
        let _g = self.setup.lock().unwrap_or_else(|p| p.into_inner());
        if self.enabled.swap(0, Ordering::AcqRel) > 0 {
            if let Some(ctl) = &self.ctl {
                if let Err(e) = ctl.disable() {
                    log::warn!(
                        "{}: VFIO_DEVICE_SET_IRQS (MSI-X off) failed: {e}",
                        self.addr
                    );
                }
            }
        }
        self.fds.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn enabled(&self) -> u16 {
        self.enabled.load(Ordering::Acquire)
    }

    fn poll(&self, vector: u16) -> bool {
        self.fd(vector).is_some_and(|fd| self.consume(&fd))
    }

    fn counts(&self) -> Option<InterruptCounts> {
        Some(InterruptCounts {
            fired: self.fired.load(Ordering::Relaxed),
            wakeups: self.wakeups.load(Ordering::Relaxed),
        })
    }

    fn wait(&self, vector: u16, timeout: Duration) -> bool {
        let Some(fd) = self.fd(vector) else {
            return false;
        };
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if self.consume(&fd) {
                return true;
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return false;
            }
            // Round up so that a sub-millisecond remainder still sleeps instead of spinning.
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            match sys::poll_in(fd.as_fd(), ms) {
                Ok(_) => {} // ready, timed out or EINTR: the loop re-checks
                Err(e) => {
                    log::warn!("{}: poll on vector {vector}: {e}", self.addr);
                    return false;
                }
            }
        }
    }
}

impl Drop for VfioIrq {
    fn drop(&mut self) {
        self.disable();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Debug, Default)]
    struct FakeCtl {
        sets: Mutex<Vec<usize>>,
        disables: AtomicUsize,
        fail: bool,
    }

    impl IrqControl for FakeCtl {
        fn set_eventfds(&self, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
            if self.fail {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.sets.lock().unwrap().push(fds.len());
            Ok(())
        }
        fn disable(&self) -> io::Result<()> {
            self.disables.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    #[test]
    fn polled_mode_enables_nothing() {
        let irq = VfioIrq::polled("0000:00:04.0");
        assert_eq!(irq.max_vectors(), 0);
        assert_eq!(irq.enable(4).unwrap(), 0);
        assert_eq!(irq.enabled(), 0);
        assert!(!irq.poll(0));
        assert!(!irq.wait(0, Duration::from_millis(1)));
    }

    #[test]
    fn enable_clamps_waits_and_disables() {
        let ctl = Arc::new(FakeCtl::default());
        let irq = VfioIrq::new("0000:00:04.0", Some(ctl.clone()), 65);
        assert_eq!(irq.max_vectors(), 65);
        assert_eq!(irq.enable(100).unwrap(), 65);
        assert_eq!(irq.enabled(), 65);
        assert_eq!(*ctl.sets.lock().unwrap(), vec![65]);
        assert_eq!(irq.enable(3).unwrap(), 3, "re-enable with fewer");
        assert_eq!(ctl.disables.load(Ordering::Relaxed), 1);
        assert!(!irq.poll(1));
        irq.signal_for_test(1);
        assert!(irq.poll(1));
        assert!(!irq.poll(1), "consumed");
        // Two interrupts before anyone looked: one read, one wake-up, both counted fired.
        irq.signal_for_test(1);
        irq.signal_for_test(1);
        assert!(irq.poll(1));
        assert_eq!(
            irq.counts(),
            Some(InterruptCounts {
                fired: 3,
                wakeups: 2
            })
        );
        let t = Instant::now();
        assert!(!irq.wait(2, Duration::from_millis(20)));
        assert!(t.elapsed() >= Duration::from_millis(20));
        assert!(
            !irq.wait(7, Duration::from_secs(5)),
            "unknown vector returns at once"
        );
        // A vector fired from another thread wakes the waiter.
        let fd = irq.eventfd(0).unwrap();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            sys::eventfd_signal(fd.as_fd(), 1).unwrap();
        });
        assert!(irq.wait(0, Duration::from_secs(10)));
        h.join().unwrap();
        irq.disable();
        irq.disable();
        assert_eq!(irq.enabled(), 0);
        assert_eq!(
            ctl.disables.load(Ordering::Relaxed),
            2,
            "disable is idempotent"
        );
        assert!(!irq.poll(0));
    }

    #[test]
    fn set_irqs_failure_is_reported() {
        let ctl = Arc::new(FakeCtl {
            fail: true,
            ..Default::default()
        });
        let irq = VfioIrq::new("0000:00:04.0", Some(ctl), 8);
        let e = irq.enable(2).unwrap_err();
        let m = e.to_string();
        assert!(
            m.starts_with(
                "0000:00:04.0: enabling 2 MSI-X vectors failed during VFIO_DEVICE_SET_IRQS"
            ),
            "{m}"
        );
        assert!(m.contains("IrqMode::Polled"), "{m}");
        assert_eq!(irq.enabled(), 0);
    }
}

//! MSI-X vectors of the simulated function: a pending flag per vector and a condition
//! variable (NVMe over PCIe: one vector per completion queue or shared; vector 0 serves the
//! admin completion queue, NVMe Base §3.1.4 / PCIe transport §3.5).

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use nvme_core::hw::{InterruptCounts, InterruptError, InterruptSource};

#[derive(Debug, Default)]
struct IrqState {
    enabled: u16,
    pending: Vec<bool>,
    raised: u64,
    /// `poll`/`wait` calls that found their vector pending.
    wakeups: u64,
    /// Interrupts raised per vector since the simulator was built.
    per_vector: Vec<u64>,
}

/// The interrupt lines, shared by the controller (which raises them) and [`SimIrq`] (which the
/// host waits on).
#[derive(Debug)]
pub(crate) struct IrqCore {
    max: u16,
    state: Mutex<IrqState>,
    cond: Condvar,
}

impl IrqCore {
    pub(crate) fn new(max: u16) -> Self {
        Self {
            max,
            state: Mutex::new(IrqState {
                enabled: 0,
                pending: vec![false; usize::from(max)],
                raised: 0,
                wakeups: 0,
                per_vector: vec![0; usize::from(max)],
            }),
            cond: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, IrqState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Raises `vector` if it is enabled. Called after the completion entries it signals were
    /// written (their Release stores happen before this mutex is taken).
    pub(crate) fn raise(&self, vector: u16) -> bool {
        let mut g = self.lock();
        if vector >= g.enabled {
            return false;
        }
        if let Some(p) = g.pending.get_mut(usize::from(vector)) {
            *p = true;
            g.raised += 1;
            if let Some(n) = g.per_vector.get_mut(usize::from(vector)) {
                *n += 1;
            }
            drop(g);
            self.cond.notify_all();
            return true;
        }
        false
    }

    /// Drops every pending interrupt (controller reset).
    pub(crate) fn clear_pending(&self) {
        let mut g = self.lock();
        g.pending.iter_mut().for_each(|p| *p = false);
    }

    pub(crate) fn raised(&self) -> u64 {
        self.lock().raised
    }

    /// Interrupts raised on `vector` so far (0 for a vector the function lacks).
    pub(crate) fn raised_on(&self, vector: u16) -> u64 {
        self.lock()
            .per_vector
            .get(usize::from(vector))
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn wake_all(&self) {
        self.cond.notify_all();
    }
}

/// A hook the interrupt source calls while the host waits, so that timed events of an
/// inline-mode controller (delayed completions, RDY rising) happen without a device thread.
pub(crate) trait Service: Send + Sync {
    /// Delivers what is due; returns how long until the next timed event, if any.
    fn service(&self) -> Option<Duration>;
}

/// The error of [`SimIrq`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the simulated function has {max} MSI-X vectors")]
pub struct SimIrqError {
    max: u16,
}

impl InterruptError for SimIrqError {}

/// The simulator's [`InterruptSource`].
#[derive(Clone)]
pub struct SimIrq {
    core: Arc<IrqCore>,
    service: Weak<dyn Service>,
}

impl fmt::Debug for SimIrq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimIrq").field("core", &self.core).finish()
    }
}

impl SimIrq {
    pub(crate) fn new(core: Arc<IrqCore>, service: Weak<dyn Service>) -> Self {
        Self { core, service }
    }

    fn service(&self) -> Option<Duration> {
        self.service.upgrade().and_then(|s| s.service())
    }
}

impl InterruptSource for SimIrq {
    type Error = SimIrqError;

    fn max_vectors(&self) -> u16 {
        self.core.max
    }

    fn enable(&self, count: u16) -> Result<u16, Self::Error> {
        let n = count.min(self.core.max);
        let mut g = self.core.lock();
        g.enabled = n;
        Ok(n)
    }

    fn disable(&self) {
        let mut g = self.core.lock();
        g.enabled = 0;
        g.pending.iter_mut().for_each(|p| *p = false);
    }

    fn enabled(&self) -> u16 {
        self.core.lock().enabled
    }

    fn poll(&self, vector: u16) -> bool {
        let _ = self.service();
        let mut g = self.core.lock();
        if vector >= g.enabled {
            return false;
        }
        match g.pending.get_mut(usize::from(vector)) {
            Some(p) if *p => {
                *p = false;
                g.wakeups += 1;
                true
            }
            _ => false,
        }
    }

    /// `fired`: the vectors the controller raised; `wakeups`: `poll`/`wait` calls that found
    /// one pending.
    fn counts(&self) -> Option<InterruptCounts> {
        let g = self.core.lock();
        Some(InterruptCounts {
            fired: g.raised,
            wakeups: g.wakeups,
        })
    }

    fn wait(&self, vector: u16, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let next_event = self.service();
            let mut g = self.core.lock();
            if vector >= g.enabled {
                drop(g);
                // An unknown or disabled vector never fires: wait out the timeout (bounded).
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                return false;
            }
            let idx = usize::from(vector);
            if g.pending.get(idx).copied().unwrap_or(false) {
                g.pending[idx] = false;
                g.wakeups += 1;
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let mut slice = deadline - now;
            if let Some(n) = next_event {
                slice = slice.min(n.max(Duration::from_micros(50)));
            }
            let (g2, _) = self
                .core
                .cond
                .wait_timeout(g, slice)
                .unwrap_or_else(|e| e.into_inner());
            drop(g2);
        }
    }
}

//! # sim-backend
//!
//! A software NVMe controller: a model, not a mock. It implements the NVMe Base
//! Specification 2.1 register file and controller state machine, the mandatory admin
//! commands and the NVM command set (NVM Command Set Specification 1.1) on a memory or raw
//! file backing image, and exposes them to `nvme-core` through the hardware traits
//! ([`nvme_core::hw::Platform`]): a driver that works on it must work on a real SSD, and a
//! driver that breaks the spec is caught by its strict checker.
//!
//! - [`Simulator`]: the controller and the handle tests use (violations, statistics, the
//!   medium's back door, power events, [`FaultInjector`]).
//! - [`SimPlatform`]: what the driver gets: [`SimBar`] (registers and doorbells),
//!   [`SimDma`] (device-visible memory with IOVAs and an IOMMU-like translation),
//!   [`SimIrq`] (MSI-X vectors) and [`StdClock`].
//! - [`SimConfig`]: capabilities (queue sizes, MDTS, queue pairs, vectors, doorbell
//!   stride, namespaces, …) and the mode: [`SimMode::Inline`] (deterministic: a doorbell
//!   write processes the commands before it returns) or [`SimMode::Thread`] (a device
//!   thread).
//!
//! ```
//! use nvme_core::hw::{Bar, Platform};
//! use nvme_core::spec::regs::{offset, Cap};
//! use sim_backend::{SimConfig, Simulator};
//!
//! let sim = Simulator::new(SimConfig::default()).unwrap();
//! let platform = sim.platform();
//! let cap = Cap(platform.bar().read64(offset::CAP));
//! assert_eq!(cap.mqes_z(), 1023);
//! sim.assert_no_violations();
//! ```
//!
//! No `unsafe` anywhere except the one `unsafe impl DmaAllocator` that the trait requires
//! (see [`SimDma`]).
//!
//! # Choices where the spec leaves room
//! - CAP: CQR = 1, AMS = 0 (round robin only), CSS = NVM only (CC.CSS must be 000b),
//!   MPSMIN = 0, MPSMAX = 4, NSSRS = 1. VS = 2.0.0.
//! - CC.EN = 1 with an invalid AQA/ASQ/ACQ/MPS/CSS/AMS, or IOSQES/IOCQES set to anything
//!   but 6/4, sets CSTS.CFS (§3.5.1 leaves the reaction open). IOSQES/IOCQES left at 0 are
//!   accepted at enable and refused when an I/O queue is created (Invalid Queue Size).
//! - RDY rises and falls `ready_delay` after EN changes; SHST reaches 10b `ready_delay`
//!   after SHN is written (the cache is written back at once).
//! - Identify CNS 00h with NSID FFFFFFFFh: Invalid Namespace or Format (no Namespace
//!   Management, §5.1.13.2.1).
//! - A failed SQ entry fetch or CQ entry post (unmapped queue memory) is a controller fatal
//!   status; a failed data transfer is a Data Transfer Error for the command.
//! - Completions that find their CQ full wait in the controller, and the SQs feeding that CQ
//!   are not fetched from until the host frees entries.
//! - Abort can abort commands whose completion the controller holds (outstanding AERs,
//!   completions delayed or dropped by fault injection) and commands not yet fetched.
//! - SGLs (Identify SGLS from [`SimConfig::sgls`], default byte granularity with Bit
//!   Buckets): see [`sgl`] for the descriptors walked and the status of every refusal.
//! - Interrupt coalescing (feature 08h) is applied to every vector but 0 whose Interrupt
//!   Vector Configuration (09h) leaves coalescing on: see `coalesce.rs`; INTMS/INTMC are stored and
//!   have no effect (MSI-X only).
//!
//! # Data path and what it costs
//! A Read moves the data once, from the memory medium (or the write cache) straight into the
//! host memory its PRPs describe; an image-backed namespace the same way from its read cache
//! ([`NamespaceConfig::read_cache`]: whole 64 KiB chunks of the image, filled by the first
//! read of each, which allocates the chunk), or, when the chunks a read misses do not fit
//! the cache's budget, with `pread` into a staging buffer first. A Write gathers the host's
//! data into a staging buffer, then into the write cache (a slab of reused block slots) or
//! the medium. The PRP segment list, the staging buffer, the cache's slab and map, the CID
//! sets and the interrupt list are all reused: an I/O allocates nothing once they have grown
//! (`scripts/iocost.sh` counts 0.00 heap allocations per I/O for 4 KiB reads and writes at
//! QD1 and QD128, memory-backed). Device accesses to host memory go through the controller's cache of IOVA translations (see `dma.rs`): an
//! access to a queue or buffer used recently takes no lock and no search, one bounds check
//! and one load of the region's "freed" flag, so a host that frees a buffer and lets the
//! device use it still gets a Data Transfer Error. The clock is read only while a timed event
//! (RDY change, shutdown, delayed completion, wrong-phase entry) is pending. Every check on
//! the host (PRPs, SGLs, doorbells, CIDs) is still made for every command.
//!
//! Every byte the device writes into host memory is written by an atomic 64-bit store (the
//! words are shared with the host thread, and Rust's memory model allows neither a data race
//! nor racing atomics of another size there: the driver core polls completion entries, reads
//! EventIdx and writes shadow doorbells with 64-bit atomics on 8-aligned words): 512 stores
//! per 4 KiB, which no `memcpy` pays. The copy loop is plain moves (one load and one store
//! per 8 bytes, unrolled by 32), after one load per cache line of each 4 KiB of the source,
//! so that the source's cache misses overlap. Read-ahead hides most of those misses: when
//! the next entry of the I/O SQ is a Read too (already queued, not fetched yet), the copy
//! loop of this Read prefetches the first 4 KiB of that one's data, one cache line per line
//! it stores, so it arrives while this one is copied (x86 and x86_64, through `safe_arch`'s
//! `prefetcht0`; no hint on other architectures). The next entry is only looked at: it is
//! fetched and checked in its turn, a hostile one gives no hint, and the hint is never read
//! as data ([`SimStats::read_ahead_bytes`] counts it). `cargo run --release -p sim-backend --example
//! simbw` measures it against `memcpy` (per CPU second, so that a busy machine does not skew
//! it); the README's "Speed" section gives the latest figures.
//!
//! # One lock for the whole controller
//! The controller model is one state machine behind one mutex: every register access and
//! doorbell write takes it, and so does command execution, including the data copy. Queues
//! do not run in parallel:
//! - [`SimMode::Inline`]: a doorbell write executes, before it returns and under the lock,
//!   the commands of every submission queue (round robin), so one thread may execute
//!   another's commands. With 4 KiB random reads at QD32, 94% of the submitting thread's CPU
//!   time is spent under the lock (measured by `simbw`), so two threads on two queue pairs
//!   gain at most 1.03x over one, on any number of cores.
//! - [`SimMode::Thread`]: one device thread executes every queue, as a single-core
//!   controller would, taking the lock for one arbitration round (at most one command per
//!   queue) at a time, so a doorbell write on another queue waits for at most that. Two
//!   host threads on two queue pairs share that one device thread (and contend with it for
//!   the lock and, on a 2-core machine, for the cores): `simbw` measured 0.56 to 0.74 of the
//!   IOPS of one pair.
//!
//! Independent queues would need command execution split in three phases (fetch and
//! checks under the controller lock; the transfer under a per-namespace lock; completion
//! under the controller lock again, checking that no reset or queue deletion happened in
//! between): the simulator is a model for correctness first, and does not do that.
//!
//! # Fault injection
//! [`FaultInjector`] breaks the device side on purpose, one command at a time (selected by a
//! [`CommandMatch`]: queue, opcode, LBA range, nth occurrence) or at random for soak runs
//! ([`FaultInjector::random`] with [`RandomFault`] kinds): dropped, late, duplicated or
//! misnumbered completions, entries with the wrong phase tag, lost SQ doorbell writes, DMA to
//! an unmapped IOVA, asynchronous event storms, media errors, controller fatal status,
//! surprise removal and power loss. What the simulator does on purpose is never recorded as a
//! host violation, so a test can inject faults and still assert there were none.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod coalesce;
mod config;
mod ctrl;
mod dma;
mod fault;
mod image;
mod irq;
mod namespace;
mod prp;
pub mod sgl;
mod violation;

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvme_core::hw::{Bar, Clock, Platform};

pub use config::{Backing, NamespaceConfig, SimConfig, SimMode, DEFAULT_READ_CACHE};
pub use ctrl::BAR_SIZE;
pub use dma::{SimDma, SimDmaError, DMA_PAGE, IOVA_BASE};
pub use fault::{CommandMatch, FaultInjector, QueueMatch, RandomFault};
pub use image::{sidecar_path, ImageError, ImageFile, MIN_IMAGE_BYTES};
pub use irq::{SimIrq, SimIrqError};
pub use violation::{SimStats, Violation, ViolationKind};

use ctrl::Controller;
use dma::DmaSpace;
use irq::{IrqCore, Service};
use namespace::Namespace;

/// Why a simulator could not be built, or a back-door access failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The configuration is invalid.
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    /// A namespace's backing file could not be used.
    #[error("namespace backing: {0}")]
    Io(#[from] std::io::Error),
    /// A back-door access named a namespace or LBA range that does not exist.
    #[error("no such namespace range: {0}")]
    Range(String),
}

/// The device thread's wake-up flag.
#[derive(Debug, Default)]
struct Wake {
    state: Mutex<WakeState>,
    cond: Condvar,
}

#[derive(Debug, Default)]
struct WakeState {
    /// Work was queued since the device thread last looked.
    kicked: bool,
    /// The simulator is being dropped.
    stop: bool,
    /// The device thread is waiting on the condition variable (only then is it notified:
    /// a doorbell write while it is busy costs no system call).
    sleeping: bool,
}

impl Wake {
    fn kick(&self) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        g.kicked = true;
        let sleeping = g.sleeping;
        drop(g);
        if sleeping {
            self.cond.notify_all();
        }
    }
}

/// Everything one simulated controller is made of, shared by every handle.
pub(crate) struct Shared {
    ctrl: Mutex<Controller>,
    wake: Arc<Wake>,
    thread: Mutex<Option<JoinHandle<()>>>,
    irq: Arc<IrqCore>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Controller> {
        self.ctrl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the controller, then raises collected interrupts and wakes the device
    /// thread if work was queued.
    pub(crate) fn with_ctrl<R>(&self, f: impl FnOnce(&mut Controller) -> R) -> R {
        let mut c = self.lock();
        let r = f(&mut c);
        c.raise_interrupts();
        let kick = std::mem::take(&mut c.kick);
        drop(c);
        if kick {
            self.wake.kick();
        }
        r
    }

    /// Power cycle (`clean`: the cache is written back) or power loss.
    pub(crate) fn power(&self, clean: bool) {
        self.with_ctrl(|c| c.power_cycle(clean));
        self.irq.wake_all();
    }
}

impl Service for Shared {
    fn service(&self) -> Option<Duration> {
        self.with_ctrl(|c| c.service_now())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        {
            let mut g = self.wake.state.lock().unwrap_or_else(|e| e.into_inner());
            g.stop = true;
        }
        self.wake.cond.notify_all();
        let handle = self
            .thread
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            // The device thread may itself drop the last handle: it cannot join itself.
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

/// The device thread of [`SimMode::Thread`]: processes submission queues when a doorbell
/// kicks it and delivers timed events. It takes the controller lock for one arbitration
/// round at a time, so host threads ringing doorbells of other queues wait for at most one
/// command per queue, not for a whole batch.
fn device_thread(weak: Weak<Shared>, wake: Arc<Wake>) {
    loop {
        let timeout = {
            let Some(sh) = weak.upgrade() else {
                return;
            };
            let next = sh.with_ctrl(|c| c.service_now());
            while sh.with_ctrl(|c| c.process_round()) {}
            next.unwrap_or(Duration::from_millis(50))
                .min(Duration::from_millis(50))
        };
        let mut g = wake.state.lock().unwrap_or_else(|e| e.into_inner());
        if !g.kicked && !g.stop {
            g.sleeping = true;
            g = wake
                .cond
                .wait_timeout(g, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            g.sleeping = false;
        }
        if g.stop {
            return;
        }
        g.kicked = false;
    }
}

/// A monotonic [`Clock`] on [`std::time::Instant`]; `relax` yields the thread.
#[derive(Debug, Clone, Copy)]
pub struct StdClock {
    epoch: Instant,
}

impl Default for StdClock {
    fn default() -> Self {
        Self::new()
    }
}

impl StdClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }
}

impl Clock for StdClock {
    /// `CLOCK_MONOTONIC` (through [`Instant`]) since the clock's creation, nanosecond
    /// resolution: the simulator's timing (CSTS.RDY delays, injected completion delays) wants
    /// it, and an inline simulator has no hardware to wait for. A read is a vDSO call that
    /// reads the time-stamp counter: 120 ns on the development host (x86_64 virtual machine,
    /// where the counter read is slow), tens of nanoseconds on bare metal
    /// (`cargo run --release -p vfio-backend --example clockcost`). The driver reads it at most
    /// once per poll with commands outstanding, never per command.
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
    fn relax(&self) {
        std::thread::yield_now();
    }
}

/// BAR0 of the simulated controller: the register file (NVMe Base §3.1.4) and the
/// doorbells at `1000h` with the CAP.DSTRD stride. [`BAR_SIZE`] bytes.
///
/// In [`SimMode::Inline`] a submission queue tail doorbell write executes the new commands
/// and posts their completions before `write32` returns.
#[derive(Clone)]
pub struct SimBar {
    shared: Arc<Shared>,
}

impl fmt::Debug for SimBar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimBar").field("size", &BAR_SIZE).finish()
    }
}

/// The simulated device's own register port: safe, because the simulated device can reach
/// only memory of its own allocator (every access translated by its IOVA map, through atomics,
/// never a Rust reference), so a write cannot corrupt memory in the Rust sense. It can still
/// make the device overwrite a `DmaBuffer` that safe code holds: the driver's promise that
/// this cannot happen covers code that goes through `nvme_core` (where `Bar` writes are
/// `unsafe`), not tests that drive the simulated device directly, as the simulator's own tests
/// and the hostile-host fuzzer do.
impl SimBar {
    /// Reads the 32-bit register at `offset` (all-ones outside the BAR).
    pub fn read32(&self, offset: usize) -> u32 {
        self.shared.with_ctrl(|c| c.read32(offset))
    }
    /// Writes the 32-bit register at `offset` (dropped outside the BAR).
    pub fn write32(&self, offset: usize, value: u32) {
        self.shared.with_ctrl(|c| c.write32(offset, value));
    }
    /// Writes the 64-bit register at `offset`, low dword first (§3.1.4).
    pub fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

#[allow(unsafe_code)] // implementing the trait's `unsafe fn` declares one; no unsafe operation
impl Bar for SimBar {
    fn size(&self) -> usize {
        BAR_SIZE
    }
    fn read32(&self, offset: usize) -> u32 {
        SimBar::read32(self, offset)
    }
    unsafe fn write32(&self, offset: usize, value: u32) {
        SimBar::write32(self, offset, value);
    }
}

/// The simulator's [`Platform`]: `name()` is `"sim"`.
#[derive(Debug)]
pub struct SimPlatform {
    bar: SimBar,
    dma: SimDma,
    irq: SimIrq,
    clock: StdClock,
}

impl Platform for SimPlatform {
    type Bar = SimBar;
    type Dma = SimDma;
    type Irq = SimIrq;
    type Clock = StdClock;
    fn bar(&self) -> &SimBar {
        &self.bar
    }
    fn dma(&self) -> &SimDma {
        &self.dma
    }
    fn irq(&self) -> &SimIrq {
        &self.irq
    }
    fn clock(&self) -> &StdClock {
        &self.clock
    }
    fn name(&self) -> &str {
        "sim"
    }
}

/// A simulated NVMe controller. Cheap to clone (an `Arc` inside); every clone is a handle to
/// the same controller. In [`SimMode::Thread`] the device thread stops and is joined when
/// the last handle (including platforms) is dropped.
#[derive(Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
    platform: Arc<SimPlatform>,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator").finish_non_exhaustive()
    }
}

fn validate(cfg: &SimConfig) -> Result<(), SimError> {
    let bad = |s: String| Err(SimError::Config(s));
    if cfg.mqes_z == 0 {
        return bad("mqes_z must be at least 1".into());
    }
    if cfg.max_io_queues == 0 || cfg.max_io_queues == u16::MAX {
        return bad("max_io_queues must be in 1..65535".into());
    }
    if cfg.dstrd > 8 {
        return bad("dstrd must be at most 8".into());
    }
    if !cfg.dma_granule.is_power_of_two() || !(4096..=1 << 21).contains(&cfg.dma_granule) {
        return bad(format!(
            "dma_granule {} must be a power of two from 4096 to 2 MiB",
            cfg.dma_granule
        ));
    }
    let last = nvme_core::spec::regs::cq_head_doorbell(cfg.max_io_queues, cfg.dstrd);
    if last + 4 > BAR_SIZE {
        return bad(format!(
            "{} queue pairs with DSTRD {} do not fit in the {BAR_SIZE:#x}-byte BAR",
            cfg.max_io_queues, cfg.dstrd
        ));
    }
    if cfg.msix_vectors > 2048 {
        return bad("at most 2048 MSI-X vectors".into());
    }
    if cfg.mdts > 20 {
        return bad("mdts above 20 (4 GiB) is not supported".into());
    }
    for (name, s, max) in [
        ("serial", &cfg.serial, 20),
        ("model", &cfg.model, 40),
        ("firmware", &cfg.firmware, 8),
    ] {
        if s.len() > max || !s.bytes().all(|b| (0x20..0x7F).contains(&b)) {
            return bad(format!(
                "{name} must be at most {max} printable ASCII characters"
            ));
        }
    }
    Ok(())
}

impl Simulator {
    /// Builds a simulator (and, in [`SimMode::Thread`], starts its device thread).
    ///
    /// # Errors
    /// [`SimError::Config`] for an invalid configuration (an unsupported LBA size, a zero
    /// queue count, doorbells that do not fit in the BAR, …); [`SimError::Io`] if a backing
    /// file cannot be opened or sized.
    pub fn new(config: SimConfig) -> Result<Self, SimError> {
        validate(&config)?;
        let mut namespaces = Vec::new();
        for (i, nc) in config.namespaces.iter().enumerate() {
            namespaces.push(Namespace::open(i as u32 + 1, nc).map_err(SimError::Config)?);
        }
        let dma = Arc::new(DmaSpace::new(config.dma_granule));
        let irq = Arc::new(IrqCore::new(config.msix_vectors));
        let mode = config.mode;
        let ctrl = Controller::new(config, namespaces, dma.clone(), irq.clone());
        let wake = Arc::new(Wake::default());
        let shared = Arc::new(Shared {
            ctrl: Mutex::new(ctrl),
            wake: wake.clone(),
            thread: Mutex::new(None),
            irq: irq.clone(),
        });
        if mode == SimMode::Thread {
            let weak = Arc::downgrade(&shared);
            let h = std::thread::Builder::new()
                .name("nvme-sim".into())
                .spawn(move || device_thread(weak, wake))
                .map_err(SimError::Io)?;
            *shared.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
        }
        let service: Weak<dyn Service> = Arc::downgrade(&shared) as Weak<dyn Service>;
        let platform = Arc::new(SimPlatform {
            bar: SimBar {
                shared: shared.clone(),
            },
            dma: SimDma::new(dma),
            irq: SimIrq::new(irq, service),
            clock: StdClock::new(),
        });
        Ok(Self { shared, platform })
    }

    /// The platform to give the driver.
    pub fn platform(&self) -> Arc<SimPlatform> {
        self.platform.clone()
    }

    /// Every host protocol violation recorded so far (strict mode).
    pub fn violations(&self) -> Vec<Violation> {
        self.shared.with_ctrl(|c| c.violations.clone())
    }

    /// Forgets the recorded violations.
    pub fn clear_violations(&self) {
        self.shared.with_ctrl(|c| c.violations.clear());
    }

    /// Asserts that no violation was recorded.
    ///
    /// # Panics
    /// If any was, listing them all. Meant for tests.
    #[track_caller]
    pub fn assert_no_violations(&self) {
        let v = self.violations();
        if !v.is_empty() {
            let list: Vec<String> = v.iter().map(|v| format!("  - {v}")).collect();
            panic!(
                "the simulated controller recorded {} host protocol violation(s):\n{}",
                v.len(),
                list.join("\n")
            );
        }
    }

    /// The fault injector.
    pub fn faults(&self) -> FaultInjector {
        FaultInjector {
            shared: self.shared.clone(),
        }
    }

    /// Counters: commands per opcode, doorbell writes, completions, interrupts, resets.
    pub fn stats(&self) -> SimStats {
        let irq = self.shared.irq.raised();
        let mut s = self.shared.with_ctrl(|c| c.stats());
        s.interrupts_raised = s.interrupts_raised.max(irq);
        s
    }

    /// Test hook: how many times MSI-X `vector` was raised since the simulator was built
    /// (only enabled vectors are raised; 0 for a vector the function lacks). A conformance
    /// case compares it with the completions it saw (NVMe Base §5.2.1 IEN/IV).
    pub fn interrupts_on(&self, vector: u16) -> u64 {
        self.shared.irq.raised_on(vector)
    }

    /// Delivers timed events that are due (RDY changes, shutdown completion, delayed
    /// completions). Register accesses and interrupt waits do this too; a test that only
    /// polls completion queue memory in [`SimMode::Inline`] can call it. Returns the time
    /// until the next timed event, if any.
    pub fn service(&self) -> Option<Duration> {
        Service::service(&*self.shared)
    }

    /// Test back door: `count` blocks from `lba` of namespace `nsid` as the host would read
    /// them (unflushed cache contents included).
    ///
    /// # Errors
    /// [`SimError::Range`] for an unknown namespace or a range beyond its size;
    /// [`SimError::Io`] if the backing file cannot be read.
    pub fn namespace_bytes(&self, nsid: u32, lba: u64, count: u64) -> Result<Vec<u8>, SimError> {
        self.shared.with_ctrl(|c| {
            let i = c
                .ns_index(nsid)
                .map_err(|_| SimError::Range(format!("namespace {nsid}")))?;
            let ns = &c.namespaces[i];
            if lba.checked_add(count).is_none_or(|e| e > ns.blocks) {
                return Err(SimError::Range(format!(
                    "blocks {lba}+{count} of namespace {nsid} ({} blocks)",
                    ns.blocks
                )));
            }
            let mut out = vec![0u8; (count * u64::from(ns.lba_size())) as usize];
            ns.read(lba, count, &mut out)?;
            Ok(out)
        })
    }

    /// Test back door: writes `data` at block `lba` of namespace `nsid` straight to the
    /// medium (persistent, bypassing the cache). A partial last block keeps its other
    /// bytes.
    ///
    /// # Errors
    /// As [`namespace_bytes`](Self::namespace_bytes).
    pub fn write_namespace_bytes(&self, nsid: u32, lba: u64, data: &[u8]) -> Result<(), SimError> {
        self.shared.with_ctrl(|c| {
            let i = c
                .ns_index(nsid)
                .map_err(|_| SimError::Range(format!("namespace {nsid}")))?;
            let ns = &mut c.namespaces[i];
            let bs = u64::from(ns.lba_size());
            let count = (data.len() as u64).div_ceil(bs);
            if lba.checked_add(count).is_none_or(|e| e > ns.blocks) {
                return Err(SimError::Range(format!(
                    "blocks {lba}+{count} of namespace {nsid} ({} blocks)",
                    ns.blocks
                )));
            }
            ns.backdoor_write(lba, data)?;
            Ok(())
        })
    }

    /// The logical block size of namespace `nsid` now (it changes with Format NVM).
    pub fn lba_size(&self, nsid: u32) -> Option<u32> {
        self.shared
            .with_ctrl(|c| c.ns_index(nsid).ok().map(|i| c.namespaces[i].lba_size()))
    }

    /// An orderly power cycle: the volatile write cache is written back, the controller
    /// returns to its power-on state (registers cleared, queues gone, faults like surprise
    /// removal cleared), SMART Power Cycles counts it, and Unsafe Shutdowns too unless the
    /// host completed a shutdown notification (CC.SHN) first. MSI-X enablement is host
    /// state and is kept.
    pub fn power_cycle(&self) {
        self.shared.power(true);
    }

    /// Power loss: like [`power_cycle`](Self::power_cycle), but unflushed writes in the
    /// volatile write cache are lost.
    pub fn power_loss(&self) {
        self.shared.power(false);
    }
}

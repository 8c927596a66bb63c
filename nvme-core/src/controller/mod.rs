//! Controller bring-up (NVMe Base §3.5.1 "Memory-based Controller Initialization"), admin
//! commands (§5), shutdown (§3.6.1) and reset (§3.7.2 "Controller Level Reset").
//!
//! Split by responsibility: `bringup` (enable, disable, reset, shutdown), `admin` (the admin
//! queue), `commands` (typed admin commands), `queues` (I/O queue pair lifecycle) and `raw`
//! (the raw queue door for conformance tests).

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use core::time::Duration;

use crate::dma::{DmaBuffer, Mem};
use crate::engine::{Engine, Expiry, Reaped, Transfer};
use crate::error::{Error, Result};
use crate::hw::{Bar, Clock, Deadline, DmaAllocator, InterruptSource, Platform};
use crate::io::IoQueuePair;
pub use crate::namespace::Namespace;
use crate::queue::{CompQueue, QueueStats, SubQueue};
use crate::reclaim;
use crate::shared::Claim;
pub(crate) use crate::shared::Shared;
use crate::spec::features::{aec, select, FeatureId, NumberOfQueues};
use crate::spec::identify::{cns, oacs, IDENTIFY_LEN};
use crate::spec::log::lid;
use crate::spec::regs::{css, offset, shn, shst};
use crate::spec::transfer::{admin_data_length, DataLength};
use crate::spec::{
    AdminOpcode, Aqa, AsyncEvent, Cap, Cc, Command, Completion, Csts, ErrorLogEntry,
    FirmwareSlotLog, IdentifyController, IdentifyNamespace, NamespaceList, SmartLog, Vs, PAGE_SIZE,
};

mod admin;
mod bringup;
mod commands;
mod dbbuf;
mod interrupts;
mod queues;
mod raw;
mod recover;

use admin::AdminReq;
use bringup::ms;
use raw::RawQueue;
pub use raw::{CreateCq, CreateSq};
pub use recover::RecoveryReport;

/// How the core brings up and runs a controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Admin queue entries (2..=4096, capped by CAP.MQES + 1).
    pub admin_queue_entries: u16,
    /// Number of I/O queue pairs to request with Set Features Number of Queues.
    pub io_queue_pairs: u16,
    /// Use MSI-X interrupts when the platform offers them; otherwise poll.
    pub interrupts: bool,
    /// Deadline of an admin command.
    pub admin_timeout: Duration,
    /// Deadline of an I/O command.
    pub io_timeout: Duration,
    /// Deadline of Format NVM.
    pub format_timeout: Duration,
    /// Minimum wait for shutdown completion; Identify RTD3E extends it (§3.6.1).
    pub shutdown_timeout: Duration,
    /// Upper bound on the bytes one command transfers (also bounded by MDTS). Sizes the
    /// per-slot PRP lists.
    pub max_transfer: usize,
    /// Asynchronous Event Requests to keep outstanding (capped by AERL + 1; 0 for none).
    /// Each one that completes with an event is re-posted.
    pub async_events: u8,
    /// What happens on I/O timeouts, CSTS.CFS and resets (see [`crate::recovery`]); the
    /// thread that owns the controller drives it by calling [`Controller::recover`]
    /// periodically.
    pub recovery: crate::RecoveryPolicy,
    /// PRPs or SGLs for data transfers of I/O queue pairs (see [`crate::sgl`]); default
    /// [`crate::TransferMode::Auto`]: an SGL when Identify SGLS allows it.
    pub transfer_mode: crate::TransferMode,
    /// Interrupt coalescing to request with MSI-X (see [`crate::interrupts`]); `None` (the
    /// default) leaves the controller interrupting per completion.
    pub interrupt_coalescing: Option<crate::interrupts::InterruptCoalescing>,
    /// How long a queue pair waiting on an MSI-X vector polls its completion queue before it
    /// sleeps (the hybrid wait, [`crate::interrupts`]); zero sleeps at once.
    pub irq_spin: Duration,
    /// Use shadow doorbells when the controller supports them (NVMe Base §5.8, Doorbell
    /// Buffer Config, Identify OACS bit 8): I/O queues then write a doorbell register only
    /// when the controller's EventIdx asks for it. On by default; emulated controllers gain
    /// the most.
    pub shadow_doorbells: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            admin_queue_entries: 32,
            io_queue_pairs: 4,
            interrupts: true,
            admin_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            format_timeout: Duration::from_secs(600),
            shutdown_timeout: Duration::from_secs(5),
            max_transfer: 2 * 1024 * 1024,
            async_events: 1,
            recovery: crate::RecoveryPolicy::default(),
            transfer_mode: crate::TransferMode::Auto,
            interrupt_coalescing: None,
            irq_spin: Duration::from_micros(10),
            shadow_doorbells: true,
        }
    }
}

/// Counters of the controller.
#[derive(Debug, Default, Clone, Copy)]
pub struct ControllerStats {
    /// The admin queue's counters.
    pub admin: QueueStats,
    /// Asynchronous events received.
    pub async_events: u64,
    /// Controller resets performed.
    pub resets: u64,
    /// Asynchronous Event Requests that completed with an error status instead of an event.
    pub aer_failures: u64,
    /// The status of the last such request (e.g. AER Limit Exceeded, 01h/05h).
    pub last_aer_failure: Option<crate::spec::Status>,
    /// The status with which the controller refused the configured interrupt coalescing
    /// (then it interrupts per completion), if it did.
    pub coalescing_refused: Option<crate::spec::Status>,
    /// The controller accepted Doorbell Buffer Config at the last bring-up or reset: the
    /// queues use shadow doorbells (NVMe Base §5.8).
    pub shadow_doorbells: bool,
}

/// An NVMe controller: bring-up, the admin queue, namespaces, I/O queue pair management and
/// shutdown.
///
/// # Threads
/// The controller itself is used from one thread (`&mut self` for every command). Each
/// [`IoQueuePair`] it creates is `Send` and runs on its own thread independently; the only
/// state they share is immutable configuration, an atomic reset generation and the
/// graveyard of memory awaiting a safe moment to be freed.
pub struct Controller<P: Platform> {
    /// This controller is the one driving its platform (released on drop).
    _claim: Claim,
    shared: Arc<Shared<P>>,
    config: ControllerConfig,
    admin: Engine<AdminReq<P>>,
    scratch: Mem,
    /// True while a timed-out admin command may still write the scratch buffer.
    scratch_busy: bool,
    cap: Cap,
    vs: Vs,
    identify: IdentifyController,
    namespaces: Vec<Namespace>,
    granted: NumberOfQueues,
    allocated: NumberOfQueues,
    qids_in_use: Vec<bool>,
    raw_queues: Vec<RawQueue<P>>,
    /// Buffers of raw SQs that were deleted, waiting for [`Controller::take_raw_buffers`].
    released_raw: Vec<(u16, DmaBuffer<P>)>,
    events: VecDeque<AsyncEvent>,
    aers_outstanding: u8,
    /// AERs to keep outstanding (re-posted after each event, NVMe Base §5.1.2).
    aers_wanted: u8,
    /// The controller refused an AER (AER Limit Exceeded): no more re-posting.
    aer_refused: bool,
    needs_reset: Option<&'static str>,
    io_queues_created: bool,
    max_transfer: usize,
    stats: ControllerStats,
    shut_down: bool,
    /// RDY never rose after the last enable: teardown must not wait for it again.
    enable_failed: bool,
    /// The shadow doorbell and EventIdx pages (`dbbuf`), once allocated.
    dbbuf_pages: Option<(Mem, Mem)>,
}

impl<P: Platform> core::fmt::Debug for Controller<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Controller")
            .field("device", &self.shared.platform.name())
            .field("cap", &self.cap)
            .field("vs", &self.vs)
            .field("namespaces", &self.namespaces.len())
            .finish()
    }
}

/// Size of the controller's scratch buffer for Identify and log pages.
const SCRATCH_LEN: usize = 64 * 1024;
/// Most events kept before the oldest is dropped.
const MAX_EVENTS: usize = 64;

impl<P: Platform> Controller<P> {
    // ---- accessors ----

    /// The platform.
    pub fn platform(&self) -> &Arc<P> {
        &self.shared.platform
    }
    /// CAP as read at bring-up.
    pub fn cap(&self) -> Cap {
        self.cap
    }
    /// VS.
    pub fn version(&self) -> Vs {
        self.vs
    }
    /// Identify Controller data.
    pub fn identify(&self) -> &IdentifyController {
        &self.identify
    }
    /// Active namespaces.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// for ns in ctrl.namespaces() {
    ///     println!("nsid {}: {} bytes", ns.nsid(), ns.size_bytes());
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }
    /// One active namespace.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// let ns = ctrl.namespace(1)?;
    /// println!("namespace {}: {} blocks of {} bytes", ns.nsid(), ns.blocks(), ns.lba_size());
    /// assert!(ctrl.namespace(99).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidNamespace`].
    pub fn namespace(&self, nsid: u32) -> Result<&Namespace> {
        self.namespaces
            .iter()
            .find(|n| n.nsid() == nsid)
            .ok_or(Error::InvalidNamespace { nsid })
    }
    /// I/O queue pairs granted by Number of Queues (bounded by the request).
    pub fn granted_queue_pairs(&self) -> u16 {
        self.granted.nsq_z.min(self.granted.ncq_z) + 1
    }
    /// The raw Number of Queues grant (0's based counts).
    pub fn granted_queues(&self) -> NumberOfQueues {
        self.granted
    }
    /// What Set Features Number of Queues reported the controller allocated (0's based
    /// counts, §5.1.25.2.1): the valid I/O QIDs are 1 ..= count.
    pub fn queues_allocated(&self) -> NumberOfQueues {
        self.allocated
    }
    /// Bytes one command may transfer (MDTS and the configured bound).
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// let ns = ctrl.namespace(1)?.clone();
    /// let mut qp = ctrl.create_io_queue_pair(16)?;
    /// // One command moves at most this much; Namespace::read_at splits longer transfers.
    /// let buf = ctrl.alloc_buffer(ctrl.max_transfer())?;
    /// qp.read(&ns, 0, buf)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }
    /// MSI-X vectors in use (0: polled).
    pub fn vectors(&self) -> u16 {
        self.shared.vectors.load(Ordering::Acquire)
    }
    /// Counters.
    pub fn stats(&self) -> ControllerStats {
        let mut s = self.stats;
        s.admin = self.admin.stats;
        s
    }
    /// Reads CSTS now.
    pub fn csts(&self) -> Csts {
        Csts(self.shared.platform.bar().read32(offset::CSTS))
    }
    /// The configuration.
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }
    /// Allocates a DMA buffer on this controller's platform.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// let mut buf = ctrl.alloc_buffer(8192)?; // device-visible, zeroed
    /// buf.write(0, b"data")?;
    /// assert_eq!(buf.len(), 8192);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Dma`].
    pub fn alloc_buffer(&self, len: usize) -> Result<DmaBuffer<P>> {
        DmaBuffer::new(&self.shared.platform, len)
    }
}

impl<P: Platform> Drop for Controller<P> {
    fn drop(&mut self) {
        if !self.shut_down {
            // Abrupt shutdown (§3.6.1, SHN 10b), then disable. Errors cannot be reported from
            // drop; if the device does not stop, its memory is leaked rather than freed.
            let _ = self.shutdown_inner(shn::ABRUPT);
        }
        // Retired, the admin rings and the scratch page are freed if the controller is
        // disabled; if it could not be disabled they are leaked rather than freed: the
        // device may still write them.
        if self.shared.reclaim.is_stopped() {
            let regions: Vec<Mem> = self
                .admin
                .regions()
                .chain([self.scratch])
                .chain(self.dbbuf_pages.into_iter().flat_map(|(d, e)| [d, e]))
                .collect();
            self.retire_all(regions);
        }
    }
}

//! Controller bring-up (NVMe Base §3.5.1 "Memory-based Controller Initialization"), admin
//! commands (§5), shutdown (§3.6.1) and reset (§3.7.2 "Controller Level Reset").

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration;

use crate::dma::{self, DmaBuffer, Graveyard, Mem};
use crate::engine::{Engine, Reaped, Transfer};
use crate::error::{Error, Result};
use crate::hw::{Bar, Clock, Deadline, DmaAllocator, InterruptSource, Platform};
use crate::io::IoQueuePair;
use crate::queue::{CompQueue, QueueStats, SubQueue};
use crate::spec::features::{aec, select, FeatureId, NumberOfQueues};
use crate::spec::identify::{cns, oacs, IDENTIFY_LEN};
use crate::spec::log::lid;
use crate::spec::regs::{css, offset, shn, shst};
use crate::spec::{
    AdminOpcode, Aqa, AsyncEvent, Cap, Cc, Command, Completion, Csts, ErrorLogEntry,
    FirmwareSlotLog, IdentifyController, IdentifyNamespace, NamespaceList, SmartLog, Vs, PAGE_SIZE,
};

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
    pub async_events: u8,
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
        }
    }
}

/// An active namespace and its format (NVM Command Set §4.1.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace ID.
    pub nsid: u32,
    /// NSZE, size in logical blocks.
    pub blocks: u64,
    /// NCAP, capacity in logical blocks.
    pub capacity: u64,
    /// LBA data size in bytes.
    pub lba_size: u32,
    /// Metadata bytes per LBA.
    pub metadata_size: u16,
    /// The full Identify Namespace data.
    pub identify: IdentifyNamespace,
}

impl Namespace {
    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.lba_size as u64)
    }
    fn from_identify(nsid: u32, id: IdentifyNamespace) -> Result<Self> {
        let lba_size = id.lba_size().ok_or(Error::DeviceProtocol(
            "Identify Namespace names an LBA format with LBADS below 9",
        ))?;
        Ok(Self {
            nsid,
            blocks: id.nsze,
            capacity: id.ncap,
            lba_size,
            metadata_size: id.current_format().ms,
            identify: id,
        })
    }
}

/// State shared by the controller and its I/O queue pairs.
pub(crate) struct Shared<P: Platform> {
    pub(crate) platform: Arc<P>,
    pub(crate) dstrd: u8,
    /// Moves on every controller reset/disable; a queue pair from an older generation is dead.
    pub(crate) generation: AtomicU32,
    pub(crate) graveyard: spin::Mutex<Graveyard>,
    pub(crate) io_timeout_ns: u64,
    pub(crate) vectors: core::sync::atomic::AtomicU16,
}

impl<P: Platform> Shared<P> {
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn detached(platform: Arc<P>, io_timeout: Duration) -> Self {
        Self {
            platform,
            dstrd: 0,
            generation: AtomicU32::new(0),
            graveyard: spin::Mutex::new(Graveyard::default()),
            io_timeout_ns: u64::try_from(io_timeout.as_nanos()).unwrap_or(u64::MAX),
            vectors: core::sync::atomic::AtomicU16::new(0),
        }
    }
    /// Frees `region` now if the device can no longer reach it, otherwise parks it until the
    /// controller is disabled.
    pub(crate) fn retire(&self, region: crate::hw::DmaRegion, generation: u32) {
        let mut g = self.graveyard.lock();
        if g.controller_disabled || generation != self.generation.load(Ordering::Acquire) {
            drop(g);
            // SAFETY: the controller was disabled (or reset) since the region was last given
            // to the device, so no queue or command refers to it any more (§3.7.2: a reset
            // deletes all I/O queues and aborts every command).
            unsafe { self.platform.dma().free(region) };
        } else {
            g.regions.push(region);
        }
    }
    pub(crate) fn now_ns(&self) -> u64 {
        self.platform.clock().now_ns()
    }
}

enum AdminReq<P: Platform> {
    /// A command whose data, if any, is the controller's scratch page.
    Scratch,
    /// A command with a caller's buffer.
    Buffer(DmaBuffer<P>),
    /// No data.
    NoData,
    /// An Asynchronous Event Request.
    Aer,
}

impl<P: Platform> core::fmt::Debug for AdminReq<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            AdminReq::Scratch => "Scratch",
            AdminReq::Buffer(_) => "Buffer",
            AdminReq::NoData => "NoData",
            AdminReq::Aer => "Aer",
        })
    }
}

/// Parameters of a raw Create I/O Completion Queue, for conformance tests and tools that
/// exercise the controller's checks. The core allocates and owns the queue memory.
#[derive(Debug, Clone, Copy)]
pub struct CreateCq {
    /// Queue ID.
    pub qid: u16,
    /// Entries (not 0's based; 0 is sent as QSIZE 0FFFFh... use `qsize_z` for exact control).
    pub qsize_z: u16,
    /// Physically contiguous (PC).
    pub pc: bool,
    /// Interrupts enabled (IEN).
    pub ien: bool,
    /// Interrupt vector (IV).
    pub iv: u16,
    /// Byte offset added to the page-aligned queue base (to test misaligned bases).
    pub base_offset: u32,
}

/// Parameters of a raw Create I/O Submission Queue.
#[derive(Debug, Clone, Copy)]
pub struct CreateSq {
    /// Queue ID.
    pub qid: u16,
    /// QSIZE, 0's based.
    pub qsize_z: u16,
    /// Physically contiguous (PC).
    pub pc: bool,
    /// Completion queue ID.
    pub cqid: u16,
    /// Queue priority.
    pub qprio: u8,
    /// Byte offset added to the page-aligned base.
    pub base_offset: u32,
}

/// A queue created through [`Controller::create_cq_raw`] / [`Controller::create_sq_raw`].
struct RawQueue<P: Platform> {
    qid: u16,
    is_sq: bool,
    region: crate::hw::DmaRegion,
    /// Byte offset of the queue base inside `region` (`base_offset` of the create call).
    base: usize,
    /// Data buffers of commands written into this (SQ) queue: the device may use them until
    /// the queue is deleted or the controller disabled.
    held: Vec<DmaBuffer<P>>,
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
    needs_reset: Option<&'static str>,
    io_queues_created: bool,
    max_transfer: usize,
    stats: ControllerStats,
    shut_down: bool,
    /// RDY never rose after the last enable: teardown must not wait for it again.
    enable_failed: bool,
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

/// Waits until `done(csts)` or the deadline; CSTS all-ones is [`Error::DeviceGone`].
pub(crate) fn wait_csts<P: Platform>(
    p: &P,
    timeout: Duration,
    mut done: impl FnMut(Csts) -> bool,
) -> core::result::Result<Csts, Option<Error>> {
    let deadline = Deadline::after(p.clock(), timeout);
    loop {
        let csts = Csts(p.bar().read32(offset::CSTS));
        if csts.is_all_ones() {
            return Err(Some(Error::DeviceGone));
        }
        if done(csts) {
            return Ok(csts);
        }
        if deadline.expired(p.clock()) {
            return Err(None);
        }
        p.clock().relax();
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Disables the controller (§3.5.2 / §3.7.2): if EN=1 and RDY=0 wait for RDY=1 first (never
/// toggle EN while EN≠RDY) unless `settled` says that wait already happened and failed,
/// clear EN, wait for RDY=0 within CAP.TO.
pub(crate) fn disable<P: Platform>(p: &P, cap: Cap, settled: bool) -> Result<()> {
    let timeout = Duration::from_millis(cap.timeout_ms().max(500));
    let cc = Cc(p.bar().read32(offset::CC));
    let csts = Csts(p.bar().read32(offset::CSTS));
    if csts.is_all_ones() {
        return Err(Error::DeviceGone);
    }
    if cc.en() && !csts.rdy() && !csts.cfs() && !settled {
        // Enabling is still in progress; let it finish before clearing EN.
        match wait_csts(p, timeout, |c| c.rdy() || c.cfs()) {
            Ok(_) => {}
            Err(Some(e)) => return Err(e),
            Err(None) => {} // fall through: clearing EN is the only way forward
        }
    }
    if cc.en() {
        p.bar()
            .write32(offset::CC, cc.with_en(false).with_shn(shn::NONE).0);
    }
    match wait_csts(p, timeout, |c| !c.rdy()) {
        Ok(_) => Ok(()),
        Err(Some(e)) => Err(e),
        Err(None) => Err(Error::ReadyTimeout {
            expected: false,
            waited_ms: ms(timeout),
        }),
    }
}

impl<P: Platform> Controller<P> {
    /// Brings the controller up (§3.5.1): disable, admin queue, CC, enable, Identify
    /// Controller, namespaces, Number of Queues, interrupts, Asynchronous Event Requests.
    ///
    /// # Errors
    /// [`Error::DeviceGone`] (all-ones registers), [`Error::ControllerFatal`] (CSTS.CFS),
    /// [`Error::ReadyTimeout`] (RDY did not follow EN within CAP.TO), [`Error::Unsupported`]
    /// (no NVM command set, page size, entry sizes), DMA and command failures.
    pub fn new(platform: Arc<P>, config: ControllerConfig) -> Result<Self> {
        let p = &*platform;
        let cap = Cap(p.bar().read64(offset::CAP));
        if cap.0 == u64::MAX || Csts(p.bar().read32(offset::CSTS)).is_all_ones() {
            return Err(Error::DeviceGone);
        }
        if cap.mpsmin() > 0 {
            return Err(Error::Unsupported(
                "CAP.MPSMIN above 4 KiB (the core uses 4 KiB memory pages)",
            ));
        }
        if !cap.css_nvm() && !cap.css_io_sets() {
            return Err(Error::Unsupported(
                "the controller supports no I/O command set (CAP.CSS)",
            ));
        }
        if cap.mqes_z() == 0 {
            return Err(Error::DeviceProtocol(
                "CAP.MQES is 0, which the spec forbids",
            ));
        }
        if p.dma().page_size() < PAGE_SIZE || !p.dma().page_size().is_power_of_two() {
            return Err(Error::Backend("DMA allocator page size below 4 KiB"));
        }
        let vs = Vs(p.bar().read32(offset::VS));
        disable(p, cap, false)?;

        // Admin queue memory (§3.5.1 step 2).
        let entries = config
            .admin_queue_entries
            .clamp(2, 4096)
            .min(cap.mqes_z().saturating_add(1));
        let sq_mem = Mem::new(dma::allocate(p, entries as usize * 64)?);
        let cq_mem = match dma::allocate(p, entries as usize * 16) {
            Ok(r) => Mem::new(r),
            Err(e) => {
                // SAFETY: never given to the device.
                unsafe { p.dma().free(sq_mem.region()) };
                return Err(e);
            }
        };
        let scratch = match dma::allocate(p, SCRATCH_LEN) {
            Ok(r) => Mem::new(r),
            Err(e) => {
                // SAFETY: never given to the device.
                unsafe {
                    p.dma().free(sq_mem.region());
                    p.dma().free(cq_mem.region());
                }
                return Err(e);
            }
        };
        let lists_per_slot = crate::prp::max_list_pages(SCRATCH_LEN, PAGE_SIZE);
        let lists = match dma::allocate(p, (entries as usize - 1) * lists_per_slot * PAGE_SIZE) {
            Ok(r) => Mem::new(r),
            Err(e) => {
                // SAFETY: never given to the device.
                unsafe {
                    p.dma().free(sq_mem.region());
                    p.dma().free(cq_mem.region());
                    p.dma().free(scratch.region());
                }
                return Err(e);
            }
        };
        let dstrd = cap.dstrd();
        let admin = Engine::new(
            SubQueue::new(sq_mem, 0, entries, dstrd),
            CompQueue::new(cq_mem, 0, entries, dstrd),
            Some(lists),
            lists_per_slot,
        );
        let shared = Arc::new(Shared {
            platform: platform.clone(),
            dstrd,
            generation: AtomicU32::new(0),
            graveyard: spin::Mutex::new(Graveyard::default()),
            io_timeout_ns: u64::try_from(config.io_timeout.as_nanos()).unwrap_or(u64::MAX),
            vectors: core::sync::atomic::AtomicU16::new(0),
        });
        let mut c = Self {
            shared,
            config,
            admin,
            scratch,
            scratch_busy: false,
            cap,
            vs,
            identify: IdentifyController::default(),
            namespaces: Vec::new(),
            granted: NumberOfQueues { nsq_z: 0, ncq_z: 0 },
            allocated: NumberOfQueues { nsq_z: 0, ncq_z: 0 },
            qids_in_use: Vec::new(),
            raw_queues: Vec::new(),
            released_raw: Vec::new(),
            events: VecDeque::new(),
            aers_outstanding: 0,
            needs_reset: None,
            io_queues_created: false,
            max_transfer: 0,
            stats: ControllerStats::default(),
            shut_down: false,
            enable_failed: false,
        };
        c.enable_and_initialize()?;
        Ok(c)
    }

    /// §3.5.1 steps 2–7 on a disabled controller whose admin rings are allocated.
    fn enable_and_initialize(&mut self) -> Result<()> {
        let p = &*self.shared.platform;
        let cap = self.cap;
        let entries = self.admin.sq.entries();
        let bar = p.bar();
        bar.write32(offset::AQA, Aqa::new(entries - 1, entries - 1).0);
        bar.write64(offset::ASQ, self.admin.sq.mem().iova());
        bar.write64(offset::ACQ, self.admin.cq.mem().iova());
        // §3.5.1 step 3: CSS from CAP.CSS, MPS = 4 KiB, round robin, entry sizes 2^6 / 2^4.
        let css = if cap.css_io_sets() {
            css::ALL_IO
        } else {
            css::NVM
        };
        let cc = Cc(0)
            .with_css(css)
            .with_mps(0)
            .with_ams(0)
            .with_shn(shn::NONE)
            .with_iosqes(6)
            .with_iocqes(4);
        bar.write32(offset::CC, cc.with_en(true).0);
        let timeout = Duration::from_millis(cap.timeout_ms().max(500));
        match wait_csts(p, timeout, |c| c.rdy() || c.cfs()) {
            Ok(c) if c.cfs() => return Err(Error::ControllerFatal),
            Ok(_) => {}
            Err(Some(e)) => return Err(e),
            Err(None) => {
                self.enable_failed = true;
                return Err(Error::ReadyTimeout {
                    expected: true,
                    waited_ms: ms(timeout),
                });
            }
        }
        self.enable_failed = false;
        self.shared.graveyard.lock().controller_disabled = false;

        // Interrupts: vector 0 for the admin queue, one per I/O queue pair when available.
        let mut vectors = 0;
        if self.config.interrupts && p.irq().max_vectors() > 0 {
            let want = self
                .config
                .io_queue_pairs
                .saturating_add(1)
                .min(p.irq().max_vectors());
            vectors = p
                .irq()
                .enable(want)
                .map_err(|e| Error::Interrupt(alloc::boxed::Box::new(e)))?;
        }
        self.shared.vectors.store(vectors, Ordering::Release);

        // §3.5.1 step 5: Identify Controller, then the namespaces.
        let page = self.identify_raw(cns::CONTROLLER, 0)?;
        self.identify = IdentifyController::parse(&page)?;
        if self.identify.sqes & 0xF > 6
            || self.identify.sqes >> 4 < 6
            || self.identify.cqes & 0xF > 4
            || self.identify.cqes >> 4 < 4
        {
            return Err(Error::Unsupported(
                "the controller does not support 64-byte SQ and 16-byte CQ entries (SQES/CQES)",
            ));
        }
        let mdts = self
            .identify
            .max_transfer_bytes(cap.mpsmin())
            .unwrap_or(u64::MAX);
        self.max_transfer = (self.config.max_transfer as u64)
            .min(mdts)
            .max(PAGE_SIZE as u64) as usize;
        self.rescan_namespaces()?;

        // §3.5.1 step 6: Number of Queues, once, before creating I/O queues.
        let want = self.config.io_queue_pairs.max(1);
        let req = NumberOfQueues {
            nsq_z: want - 1,
            ncq_z: want - 1,
        };
        let dw0 = self.set_features(FeatureId::NUMBER_OF_QUEUES, req.to_dword(), false)?;
        let got = NumberOfQueues::from_dword(dw0);
        self.allocated = got;
        // Use no more than requested, even if the controller grants more.
        self.granted = NumberOfQueues {
            nsq_z: got.nsq_z.min(req.nsq_z),
            ncq_z: got.ncq_z.min(req.ncq_z),
        };
        let pairs = self.granted.nsq_z.min(self.granted.ncq_z) as usize + 1;
        self.qids_in_use = alloc::vec![false; pairs + 1];
        self.qids_in_use[0] = true;

        // §3.5.1 step 7: event configuration, then post AERs.
        if self.config.async_events > 0 {
            // Best effort: some controllers refuse a feature they consider not changeable.
            let _ = self.set_features(
                FeatureId::ASYNC_EVENT_CONFIG,
                aec::SMART_ALL | aec::NS_ATTRIBUTE,
                false,
            );
            let n = self
                .config
                .async_events
                .min(self.identify.aerl.saturating_add(1));
            for _ in 0..n {
                self.post_aer()?;
            }
        }
        Ok(())
    }

    /// Re-reads the active namespace list and every namespace's Identify data.
    ///
    /// # Errors
    /// Command failures.
    pub fn rescan_namespaces(&mut self) -> Result<()> {
        let ids: Vec<u32> = if self.vs.0 >= Vs::new(1, 1, 0).0 {
            let page = self.identify_raw(cns::ACTIVE_NS_LIST, 0)?;
            NamespaceList::parse(&page).ids().to_vec()
        } else {
            (1..=self.identify.nn.min(1024)).collect()
        };
        let mut list = Vec::with_capacity(ids.len());
        for nsid in ids {
            let id = IdentifyNamespace::parse(&self.identify_raw(cns::NAMESPACE, nsid)?)?;
            if id.is_inactive() || id.nsze == 0 {
                continue;
            }
            list.push(Namespace::from_identify(nsid, id)?);
        }
        self.namespaces = list;
        Ok(())
    }

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
    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }
    /// One active namespace.
    ///
    /// # Errors
    /// [`Error::InvalidNamespace`].
    pub fn namespace(&self, nsid: u32) -> Result<&Namespace> {
        self.namespaces
            .iter()
            .find(|n| n.nsid == nsid)
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
    /// # Errors
    /// [`Error::Dma`].
    pub fn alloc_buffer(&self, len: usize) -> Result<DmaBuffer<P>> {
        DmaBuffer::new(&self.shared.platform, len)
    }

    // ---- the admin queue ----

    fn check_usable(&self) -> Result<()> {
        if self.shut_down {
            return Err(Error::NeedsReset("the controller was shut down"));
        }
        if let Some(why) = self.needs_reset {
            return Err(Error::NeedsReset(why));
        }
        Ok(())
    }

    fn handle_other(
        r: Reaped<AdminReq<P>>,
        events: &mut VecDeque<AsyncEvent>,
        aers: &mut u8,
        scratch_busy: &mut bool,
        stats: &mut ControllerStats,
    ) {
        match r.payload {
            AdminReq::Aer => {
                *aers = aers.saturating_sub(1);
                if r.completion.status().is_success() {
                    if events.len() == MAX_EVENTS {
                        events.pop_front();
                    }
                    events.push_back(AsyncEvent::from_dw0(r.completion.dw0()));
                    stats.async_events += 1;
                } else {
                    // Refused (AER Limit Exceeded, §5.1.2) or aborted: no event.
                    stats.aer_failures += 1;
                    stats.last_aer_failure = Some(r.completion.status());
                }
            }
            AdminReq::Scratch if r.late => *scratch_busy = false,
            // A late completion's buffer is freed here: the device is done with it.
            AdminReq::Buffer(_) | AdminReq::Scratch | AdminReq::NoData => {}
        }
    }

    /// Processes admin completions that arrived (asynchronous events, late completions)
    /// without waiting. Returns how many entries were consumed.
    pub fn process_admin_completions(&mut self) -> usize {
        let bar = self.shared.platform.bar();
        let (events, aers, busy, stats) = (
            &mut self.events,
            &mut self.aers_outstanding,
            &mut self.scratch_busy,
            &mut self.stats,
        );
        self.admin.reap(bar, usize::MAX, |r| {
            Self::handle_other(r, events, aers, busy, stats)
        })
    }

    /// Submits an admin command and waits for its completion. Any status is returned; only
    /// transport failures (timeout, device gone) are errors.
    fn admin_wait(
        &mut self,
        cmd: Command,
        data: Option<Transfer>,
        payload: AdminReq<P>,
        timeout: Duration,
    ) -> Result<(Completion, AdminReq<P>)> {
        self.check_usable()?;
        let p = self.shared.platform.clone();
        // One register read per admin command (never on the I/O path): a removed or fatal
        // controller fails the command here instead of receiving a doorbell it cannot serve.
        let csts = Csts(p.bar().read32(offset::CSTS));
        if csts.is_all_ones() {
            self.needs_reset = Some("the device is gone");
            return Err(Error::DeviceGone);
        }
        if csts.cfs() {
            self.needs_reset = Some("Controller Fatal Status");
            return Err(Error::ControllerFatal);
        }
        let deadline_ns = p
            .clock()
            .now_ns()
            .saturating_add(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX));
        let opcode = cmd.opcode();
        let cid = match self.admin.submit(cmd, data, payload, deadline_ns) {
            Ok(cid) => cid,
            Err((e, _payload)) => return Err(e),
        };
        self.admin.ring(p.bar());
        let mut spins: u32 = 0;
        loop {
            let mut done = None;
            {
                let (events, aers, busy, stats) = (
                    &mut self.events,
                    &mut self.aers_outstanding,
                    &mut self.scratch_busy,
                    &mut self.stats,
                );
                self.admin.reap(p.bar(), usize::MAX, |r| {
                    if r.cid == cid && !r.late {
                        done = Some((r.completion, r.payload));
                    } else {
                        Self::handle_other(r, events, aers, busy, stats)
                    }
                });
            }
            if let Some(d) = done {
                return Ok(d);
            }
            spins = spins.wrapping_add(1);
            if spins % 64 == 0 {
                let csts = Csts(p.bar().read32(offset::CSTS));
                if csts.is_all_ones() {
                    self.needs_reset = Some("the device is gone");
                    return Err(Error::DeviceGone);
                }
                if csts.cfs() {
                    self.needs_reset = Some("Controller Fatal Status");
                    return Err(Error::ControllerFatal);
                }
            }
            let now = p.clock().now_ns();
            if now >= deadline_ns {
                let mut scratch = false;
                self.admin.expire(now, |c, _, req| {
                    if c == cid && matches!(req, AdminReq::Scratch) {
                        scratch = true;
                    }
                });
                if scratch {
                    self.scratch_busy = true;
                }
                // §3.7: a command that never completes leaves the controller in an unknown
                // state; further admin commands wait for a reset.
                self.needs_reset = Some("an admin command timed out");
                return Err(Error::Timeout {
                    qid: 0,
                    cid,
                    opcode,
                    waited_ms: ms(timeout),
                });
            }
            if self.vectors() > 0 {
                let left = Duration::from_nanos(deadline_ns - now).min(Duration::from_millis(10));
                p.irq().wait(0, left);
            } else {
                p.clock().relax();
            }
        }
    }

    fn check_status(opcode: u8, c: &Completion) -> Result<u32> {
        if c.status().is_success() {
            Ok(c.dw0())
        } else {
            Err(Error::Command {
                opcode,
                opcode_name: AdminOpcode(opcode).name().unwrap_or("admin command"),
                status: c.status(),
                dw0: c.dw0(),
            })
        }
    }

    /// Runs an admin command with up to 64 KiB of data in the scratch buffer and returns
    /// its completion (any status).
    fn admin_scratch(
        &mut self,
        cmd: Command,
        len: usize,
        to_device: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Completion> {
        if self.scratch_busy {
            return Err(Error::NeedsReset(
                "a timed-out admin command still owns the scratch buffer",
            ));
        }
        if len > SCRATCH_LEN {
            return Err(Error::TransferTooLarge {
                bytes: len as u64,
                max: SCRATCH_LEN as u64,
            });
        }
        if len == 0 {
            return self
                .admin_wait(cmd, None, AdminReq::NoData, timeout)
                .map(|(c, _)| c);
        }
        self.scratch.fill(0, SCRATCH_LEN, 0);
        if let Some(src) = to_device {
            self.scratch.copy_in(0, &src[..src.len().min(len)]);
        }
        let t = Transfer {
            mem: self.scratch,
            offset: 0,
            len,
        };
        self.admin_wait(cmd, Some(t), AdminReq::Scratch, timeout)
            .map(|(c, _)| c)
    }

    fn scratch_bytes(&self, len: usize) -> Vec<u8> {
        let mut v = alloc::vec![0u8; len.min(SCRATCH_LEN)];
        self.scratch.copy_out(0, &mut v);
        v
    }

    /// Runs any admin command and returns its completion, whatever the status (raw
    /// passthrough, like `nvme admin-passthru`). `buffer` is the data buffer (PRP1/PRP2 are
    /// filled in from it) and comes back with the completion.
    ///
    /// Commands that hand memory to the controller beyond the command's own lifetime
    /// (Create I/O SQ/CQ, Doorbell Buffer Config) are refused here: use
    /// [`IoQueuePair`] creation or [`Controller::create_cq_raw`] instead, which keep that
    /// memory alive.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for the refused opcodes; transport failures.
    pub fn admin_passthrough(
        &mut self,
        mut cmd: Command,
        buffer: Option<DmaBuffer<P>>,
        timeout: Option<Duration>,
    ) -> Result<(Completion, Option<DmaBuffer<P>>)> {
        crate::dma::sanitize_pointers(&mut cmd);
        let op = AdminOpcode(cmd.opcode());
        if op == AdminOpcode::CREATE_IO_CQ
            || op == AdminOpcode::CREATE_IO_SQ
            || op == AdminOpcode::DOORBELL_BUFFER_CONFIG
        {
            return Err(Error::InvalidArgument("queue creation and doorbell buffer commands keep memory beyond the command; use the queue APIs"));
        }
        if op == AdminOpcode::ASYNC_EVENT_REQUEST {
            return Err(Error::InvalidArgument(
                "Asynchronous Event Requests are managed by the controller; use post_aer",
            ));
        }
        let timeout = timeout.unwrap_or(self.config.admin_timeout);
        let (c, req) = match buffer {
            Some(b) => {
                let t = Transfer {
                    mem: b.mem(),
                    offset: 0,
                    len: b.len(),
                };
                self.admin_wait(cmd, Some(t), AdminReq::Buffer(b), timeout)?
            }
            None => self.admin_wait(cmd, None, AdminReq::NoData, timeout)?,
        };
        if op == AdminOpcode::FORMAT_NVM
            || op == AdminOpcode::NAMESPACE_ATTACHMENT
            || op == AdminOpcode::NAMESPACE_MANAGEMENT
        {
            let _ = self.rescan_namespaces();
        }
        let buf = match req {
            AdminReq::Buffer(b) => Some(b),
            _ => None,
        };
        Ok((c, buf))
    }

    /// Runs an admin command without data and returns the completion, whatever the status
    /// (for conformance tests of error paths).
    ///
    /// # Errors
    /// As [`Controller::admin_passthrough`].
    pub fn admin_command(&mut self, cmd: Command) -> Result<Completion> {
        self.admin_passthrough(cmd, None, None).map(|(c, _)| c)
    }

    /// Runs an admin command whose data (up to 64 KiB, controller to host) lands in the
    /// scratch buffer; returns the completion and the bytes.
    ///
    /// # Errors
    /// Transport failures and [`Error::TransferTooLarge`].
    pub fn admin_read(&mut self, mut cmd: Command, len: usize) -> Result<(Completion, Vec<u8>)> {
        crate::dma::sanitize_pointers(&mut cmd);
        let op = AdminOpcode(cmd.opcode());
        if op == AdminOpcode::CREATE_IO_CQ
            || op == AdminOpcode::CREATE_IO_SQ
            || op == AdminOpcode::DOORBELL_BUFFER_CONFIG
            || op == AdminOpcode::ASYNC_EVENT_REQUEST
        {
            return Err(Error::InvalidArgument(
                "this opcode is managed by the controller API",
            ));
        }
        let c = self.admin_scratch(cmd, len, None, self.config.admin_timeout)?;
        Ok((c, self.scratch_bytes(len)))
    }

    /// Identify (§5.1.13) with any CNS; returns the 4096-byte page.
    ///
    /// # Errors
    /// [`Error::Command`] with the controller's status.
    pub fn identify_raw(&mut self, cns: u8, nsid: u32) -> Result<Vec<u8>> {
        let cmd = Command::identify(cns, nsid, 0, 0);
        let c = self.admin_scratch(cmd, IDENTIFY_LEN, None, self.config.admin_timeout)?;
        Self::check_status(cmd.opcode(), &c)?;
        Ok(self.scratch_bytes(IDENTIFY_LEN))
    }

    /// Identify Controller (CNS 01h), read again from the device.
    ///
    /// # Errors
    /// Command failures.
    pub fn identify_controller(&mut self) -> Result<IdentifyController> {
        Ok(IdentifyController::parse(
            &self.identify_raw(cns::CONTROLLER, 0)?,
        )?)
    }

    /// Identify Namespace (CNS 00h).
    ///
    /// # Errors
    /// Command failures.
    pub fn identify_namespace(&mut self, nsid: u32) -> Result<IdentifyNamespace> {
        Ok(IdentifyNamespace::parse(
            &self.identify_raw(cns::NAMESPACE, nsid)?,
        )?)
    }

    /// Active namespace IDs (CNS 02h) greater than `start`.
    ///
    /// # Errors
    /// Command failures.
    pub fn active_namespace_ids(&mut self, start: u32) -> Result<Vec<u32>> {
        Ok(
            NamespaceList::parse(&self.identify_raw(cns::ACTIVE_NS_LIST, start)?)
                .ids()
                .to_vec(),
        )
    }

    /// Get Features (§5.1.11); returns completion DW0.
    ///
    /// # Errors
    /// [`Error::Command`].
    pub fn get_features(&mut self, fid: FeatureId, sel: u8, cdw11: u32) -> Result<u32> {
        let cmd = Command::get_features(fid.0, sel, 0, cdw11);
        let c = self.admin_no_data(cmd)?;
        Self::check_status(cmd.opcode(), &c)
    }

    /// Get Features, current value (SEL 000b).
    ///
    /// # Errors
    /// [`Error::Command`].
    pub fn get_feature(&mut self, fid: FeatureId) -> Result<u32> {
        self.get_features(fid, select::CURRENT, 0)
    }

    /// Set Features (§5.1.25); returns completion DW0.
    ///
    /// Number of Queues may only be set once, before I/O queues exist (§5.1.25.2.1); the
    /// controller already did that at bring-up, so it is refused here with the spec's reason.
    ///
    /// # Errors
    /// [`Error::Command`].
    pub fn set_features(&mut self, fid: FeatureId, value: u32, save: bool) -> Result<u32> {
        let cmd = Command::set_features(fid.0, save, 0, value);
        let c = self.admin_no_data(cmd)?;
        Self::check_status(cmd.opcode(), &c)
    }

    /// Get Log Page (§5.1.12): `len` bytes (a multiple of 4, at most 64 KiB) from byte
    /// `offset` of log `lid`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a length not a multiple of 4; [`Error::Command`].
    pub fn get_log_page(
        &mut self,
        lid: u8,
        nsid: u32,
        offset: u64,
        len: usize,
        rae: bool,
    ) -> Result<Vec<u8>> {
        if len == 0 || len % 4 != 0 || offset % 4 != 0 {
            return Err(Error::InvalidArgument(
                "log page length and offset must be non-zero multiples of 4",
            ));
        }
        let cmd = Command::get_log_page(lid, nsid, (len / 4) as u32, offset, 0, rae);
        let c = self.admin_scratch(cmd, len, None, self.config.admin_timeout)?;
        Self::check_status(cmd.opcode(), &c)?;
        Ok(self.scratch_bytes(len))
    }

    /// SMART / Health Information (log 02h) for the whole controller.
    ///
    /// # Errors
    /// Command failures.
    pub fn smart_log(&mut self) -> Result<SmartLog> {
        Ok(SmartLog::parse(&self.get_log_page(
            lid::SMART,
            0xFFFF_FFFF,
            0,
            SmartLog::LEN,
            false,
        )?)?)
    }

    /// The Error Information log (01h): up to `entries` entries (at most ELPE + 1).
    ///
    /// # Errors
    /// Command failures.
    pub fn error_log(&mut self, entries: usize) -> Result<Vec<ErrorLogEntry>> {
        let n = entries
            .clamp(1, self.identify.elpe as usize + 1)
            .min(SCRATCH_LEN / ErrorLogEntry::LEN);
        let bytes = self.get_log_page(lid::ERROR_INFO, 0, 0, n * ErrorLogEntry::LEN, false)?;
        Ok(bytes
            .chunks_exact(ErrorLogEntry::LEN)
            .map(ErrorLogEntry::parse)
            .filter(|e| e.error_count != 0)
            .collect())
    }

    /// Firmware Slot Information (log 03h).
    ///
    /// # Errors
    /// Command failures.
    pub fn firmware_slot_log(&mut self) -> Result<FirmwareSlotLog> {
        Ok(FirmwareSlotLog::parse(&self.get_log_page(
            lid::FIRMWARE_SLOT,
            0,
            0,
            FirmwareSlotLog::LEN,
            false,
        )?)?)
    }

    /// Abort (§5.1.1) command `cid` on SQ `sqid`. Returns `true` if the controller reports
    /// the command aborted (DW0 bit 0 cleared), `false` if it was not.
    ///
    /// # Errors
    /// [`Error::Command`] (for example Abort Command Limit Exceeded).
    pub fn abort(&mut self, sqid: u16, cid: u16) -> Result<bool> {
        let cmd = Command::abort(sqid, cid);
        let c = self.admin_no_data(cmd)?;
        let dw0 = Self::check_status(cmd.opcode(), &c)?;
        Ok(dw0 & 1 == 0)
    }

    /// Posts one Asynchronous Event Request (§5.1.2). Its completion arrives whenever an
    /// event occurs; collect events with [`Controller::take_async_event`]. Returns the
    /// command's CID (to name it in an Abort).
    ///
    /// # Errors
    /// [`Error::QueueFull`] if the admin queue has no slot.
    pub fn post_aer(&mut self) -> Result<u16> {
        self.check_usable()?;
        let p = self.shared.platform.clone();
        let cid = self
            .admin
            .submit(
                Command::async_event_request(),
                None,
                AdminReq::Aer,
                u64::MAX,
            )
            .map_err(|(e, _)| e)?;
        self.admin.ring(p.bar());
        self.aers_outstanding += 1;
        Ok(cid)
    }

    /// Asynchronous Event Requests outstanding.
    pub fn aers_outstanding(&self) -> u8 {
        self.aers_outstanding
    }

    /// The oldest asynchronous event received and not yet taken (processes pending admin
    /// completions first).
    pub fn take_async_event(&mut self) -> Option<AsyncEvent> {
        self.process_admin_completions();
        self.events.pop_front()
    }

    /// Waits up to `timeout` for an asynchronous event.
    pub fn wait_async_event(&mut self, timeout: Duration) -> Option<AsyncEvent> {
        let p = self.shared.platform.clone();
        let deadline = Deadline::after(p.clock(), timeout);
        loop {
            if let Some(e) = self.take_async_event() {
                return Some(e);
            }
            if deadline.expired(p.clock()) {
                return None;
            }
            if self.vectors() > 0 {
                p.irq().wait(
                    0,
                    deadline.remaining(p.clock()).min(Duration::from_millis(10)),
                );
            } else {
                p.clock().relax();
            }
        }
    }

    /// Format NVM (§5.1.10 / NVM Command Set §5.1.x): LBA format `lbaf`, secure erase
    /// setting `ses`; then re-reads the namespaces.
    ///
    /// # Errors
    /// [`Error::Unsupported`] if OACS lacks Format NVM; [`Error::Command`].
    pub fn format_nvm(&mut self, nsid: u32, lbaf: u8, ses: u8) -> Result<()> {
        if self.identify.oacs & oacs::FORMAT_NVM == 0 {
            return Err(Error::Unsupported("Format NVM (OACS bit 1 is clear)"));
        }
        let cmd = Command::format_nvm(nsid, lbaf, ses);
        let c = self
            .admin_wait(cmd, None, AdminReq::NoData, self.config.format_timeout)?
            .0;
        Self::check_status(cmd.opcode(), &c)?;
        self.rescan_namespaces()
    }

    // ---- I/O queues ----

    /// Creates an I/O queue pair (one CQ, then one SQ bound to it: §3.5.1 step 7) with
    /// `entries` slots (capped by CAP.MQES + 1), using the next free queue ID.
    ///
    /// # Errors
    /// [`Error::NoQueueAvailable`] when all granted pairs are in use; DMA and command
    /// failures.
    pub fn create_io_queue_pair(&mut self, entries: u16) -> Result<IoQueuePair<P>> {
        self.check_usable()?;
        let Some(qid) = self.qids_in_use.iter().position(|u| !u) else {
            return Err(Error::NoQueueAvailable {
                granted: self.granted_queue_pairs(),
            });
        };
        let qid = qid as u16;
        let entries = entries.clamp(2, self.cap.mqes_z().saturating_add(1).max(2));
        let p = self.shared.platform.clone();
        let lists_per_slot = crate::prp::max_list_pages(self.max_transfer, PAGE_SIZE);
        let mut regions: Vec<crate::hw::DmaRegion> = Vec::with_capacity(3);
        let alloc_all = |regions: &mut Vec<crate::hw::DmaRegion>| -> Result<()> {
            regions.push(dma::allocate(&*p, entries as usize * 64)?);
            regions.push(dma::allocate(&*p, entries as usize * 16)?);
            if lists_per_slot > 0 {
                regions.push(dma::allocate(
                    &*p,
                    (entries as usize - 1) * lists_per_slot * PAGE_SIZE,
                )?);
            }
            Ok(())
        };
        if let Err(e) = alloc_all(&mut regions) {
            for r in regions {
                // SAFETY: never given to the device.
                unsafe { p.dma().free(r) };
            }
            return Err(e);
        }
        let (sq_mem, cq_mem) = (Mem::new(regions[0]), Mem::new(regions[1]));
        let lists = regions.get(2).copied().map(Mem::new);
        let vectors = self.vectors();
        let (ien, iv) = if vectors > 1 {
            (true, 1 + (qid - 1) % (vectors - 1))
        } else if vectors == 1 {
            (true, 0)
        } else {
            (false, 0)
        };
        let free_all = |regions: &[crate::hw::DmaRegion]| {
            for r in regions {
                // SAFETY: the create command failed or the queue was deleted: the device holds
                // no reference to the region.
                unsafe { p.dma().free(*r) };
            }
        };
        let create_cq = Command::create_io_cq(qid, entries - 1, cq_mem.iova(), ien, iv);
        let create_sq = Command::create_io_sq(qid, entries - 1, sq_mem.iova(), qid, 0);
        for (cmd, is_sq) in [(create_cq, false), (create_sq, true)] {
            let c = match self.admin_no_data(cmd) {
                Ok(c) => c,
                Err(e) => {
                    // Unknown outcome: the device may have the queue; keep the memory until
                    // the next disable.
                    self.retire_all(&regions);
                    return Err(e);
                }
            };
            if let Err(e) = Self::check_status(cmd.opcode(), &c) {
                // Refused. If the SQ was refused, undo the CQ first.
                let undone = !is_sq
                    || self
                        .admin_no_data(Command::delete_io_cq(qid))
                        .is_ok_and(|c| c.status().is_success());
                if undone {
                    free_all(&regions);
                } else {
                    self.retire_all(&regions);
                }
                return Err(e);
            }
        }
        self.qids_in_use[qid as usize] = true;
        self.io_queues_created = true;
        let dstrd = self.shared.dstrd;
        let engine = Engine::new(
            SubQueue::new(sq_mem, qid, entries, dstrd),
            CompQueue::new(cq_mem, qid, entries, dstrd),
            lists,
            lists_per_slot,
        );
        Ok(IoQueuePair::new(
            self.shared.clone(),
            engine,
            if ien { Some(iv) } else { None },
            self.max_transfer,
            self.generation(),
        ))
    }

    /// Deletes an I/O queue pair: Delete I/O SQ (which aborts what is outstanding), then
    /// Delete I/O CQ (§3.6.1, §5.2.3, §5.2.4). The memory is freed once both succeed;
    /// otherwise it waits for the next controller disable.
    ///
    /// # Errors
    /// Command failures (the pair is consumed either way).
    pub fn delete_io_queue_pair(&mut self, mut qp: IoQueuePair<P>) -> Result<()> {
        let qid = qp.qid();
        if qp.generation() != self.generation() {
            drop(qp); // from before a reset: the device no longer knows it
            return Ok(());
        }
        let r1 = self.admin_no_data(Command::delete_io_sq(qid));
        let sq_ok = matches!(&r1, Ok(c) if c.status().is_success());
        let r2 = if sq_ok {
            Some(self.admin_no_data(Command::delete_io_cq(qid)))
        } else {
            None
        };
        let cq_ok = matches!(&r2, Some(Ok(c)) if c.status().is_success());
        // Deleting the SQ completed or aborted every command in it (§5.2.4), so the buffers
        // are free to go once both deletions succeeded.
        qp.release(sq_ok && cq_ok);
        if sq_ok && cq_ok {
            if let Some(u) = self.qids_in_use.get_mut(qid as usize) {
                *u = false;
            }
        }
        match (r1, r2) {
            (Err(e), _) | (_, Some(Err(e))) => Err(e),
            (Ok(c), _) if !c.status().is_success() => {
                Self::check_status(AdminOpcode::DELETE_IO_SQ.0, &c).map(|_| ())
            }
            (_, Some(Ok(c))) if !c.status().is_success() => {
                Self::check_status(AdminOpcode::DELETE_IO_CQ.0, &c).map(|_| ())
            }
            _ => Ok(()),
        }
    }

    /// Sends Create I/O Completion Queue with exactly these parameters and returns the
    /// completion, whatever its status. On success the core keeps the queue memory until
    /// [`Controller::delete_queue_raw`] deletes it, or the controller is reset.
    ///
    /// # Errors
    /// Transport failures and DMA allocation.
    pub fn create_cq_raw(&mut self, params: CreateCq) -> Result<Completion> {
        let len = (params.qsize_z as usize + 1) * 16 + params.base_offset as usize;
        let region = dma::allocate(&*self.shared.platform, len)?;
        let mut cmd = Command::create_io_cq(
            params.qid,
            params.qsize_z,
            region.iova() + params.base_offset as u64,
            params.ien,
            params.iv,
        );
        cmd.set_cdw(
            11,
            (params.pc as u32) | (params.ien as u32) << 1 | (params.iv as u32) << 16,
        );
        self.raw_create(cmd, region, params.qid, false)
    }

    /// Sends Create I/O Submission Queue with exactly these parameters (see
    /// [`Controller::create_cq_raw`]).
    ///
    /// # Errors
    /// Transport failures and DMA allocation.
    pub fn create_sq_raw(&mut self, params: CreateSq) -> Result<Completion> {
        let len = (params.qsize_z as usize + 1) * 64 + params.base_offset as usize;
        let region = dma::allocate(&*self.shared.platform, len)?;
        let mut cmd = Command::create_io_sq(
            params.qid,
            params.qsize_z,
            region.iova() + params.base_offset as u64,
            params.cqid,
            params.qprio,
        );
        cmd.set_cdw(
            11,
            (params.pc as u32) | ((params.qprio as u32 & 3) << 1) | (params.cqid as u32) << 16,
        );
        self.raw_create(cmd, region, params.qid, true)
    }

    fn raw_create(
        &mut self,
        cmd: Command,
        region: crate::hw::DmaRegion,
        qid: u16,
        is_sq: bool,
    ) -> Result<Completion> {
        match self.admin_no_data(cmd) {
            Ok(c) => {
                if c.status().is_success() {
                    let base = cmd.prp1().saturating_sub(region.iova()) as usize;
                    self.raw_queues.push(RawQueue {
                        qid,
                        is_sq,
                        region,
                        base,
                        held: Vec::new(),
                    });
                    self.io_queues_created = true;
                } else {
                    // SAFETY: the controller refused the queue; it holds no reference.
                    unsafe { self.shared.platform.dma().free(region) };
                }
                Ok(c)
            }
            Err(e) => {
                self.shared.retire(region, self.generation());
                Err(e)
            }
        }
    }

    /// Sends Delete I/O SQ (`sq = true`) or CQ with this QID and returns the completion,
    /// whatever its status; frees the memory of a queue created with the raw calls once its
    /// deletion succeeds.
    ///
    /// # Errors
    /// Transport failures.
    pub fn delete_queue_raw(&mut self, qid: u16, sq: bool) -> Result<Completion> {
        let cmd = if sq {
            Command::delete_io_sq(qid)
        } else {
            Command::delete_io_cq(qid)
        };
        let c = self.admin_no_data(cmd)?;
        if c.status().is_success() {
            if let Some(i) = self
                .raw_queues
                .iter()
                .position(|q| q.qid == qid && q.is_sq == sq)
            {
                let q = self.raw_queues.swap_remove(i);
                // SAFETY: the controller confirmed the deletion; it holds no reference.
                unsafe { self.shared.platform.dma().free(q.region) };
                // Deleting an SQ completes or aborts every command in it (§5.2.4): their
                // buffers are the caller's again.
                self.released_raw
                    .extend(q.held.into_iter().map(|b| (qid, b)));
            }
        }
        Ok(c)
    }

    /// Writes `cmd` (CID included: the caller chooses it) into entry `index` of the SQ `qid`
    /// created with [`Controller::create_sq_raw`], with PRP1/PRP2 pointing at `buffer` (at most
    /// two memory pages; PSDT and MPTR cleared). Nothing else happens: the caller rings the SQ
    /// tail doorbell itself through the platform's BAR (after a `Release` fence), tracks its
    /// tail and reads completions with [`Controller::raw_cq_entry`]. The controller keeps the
    /// buffer until the SQ is deleted (then [`Controller::take_raw_buffers`] gives it back) or
    /// the controller is disabled, so the device can never write freed memory. For
    /// conformance tests of queue topologies the queue pair API cannot express, such as
    /// several SQs sharing one CQ (§3.3.1).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if no such raw SQ exists or `index` is beyond it;
    /// [`Error::TransferTooLarge`] for a buffer spanning more than two pages.
    pub fn raw_sq_write(
        &mut self,
        qid: u16,
        index: u16,
        cmd: &Command,
        buffer: Option<DmaBuffer<P>>,
    ) -> Result<()> {
        let (region, off) = self.raw_queue(qid, true, index as usize, crate::spec::SQE_SIZE)?;
        let mut cmd = *cmd;
        cmd.set_psdt(0).set_cdw(4, 0).set_cdw(5, 0).set_prps(0, 0);
        if let Some(b) = &buffer {
            let mut no_lists = crate::prp::NoListPages;
            let prps =
                crate::prp::build(b.iova(), b.len(), PAGE_SIZE, &mut no_lists).map_err(|_| {
                    Error::TransferTooLarge {
                        bytes: b.len() as u64,
                        max: 2 * PAGE_SIZE as u64,
                    }
                })?;
            cmd.set_prps(prps.prp1, prps.prp2);
        }
        let mem = Mem::new(region);
        for (i, d) in cmd.dwords().iter().enumerate() {
            mem.write_u32(off + 4 * i, *d);
        }
        if let Some(b) = buffer {
            if let Some(q) = self.raw_queues.iter_mut().find(|q| q.qid == qid && q.is_sq) {
                q.held.push(b);
            }
        }
        Ok(())
    }

    /// The buffers given to [`Controller::raw_sq_write`] for SQ `qid`, once that SQ was
    /// deleted, in the order they were written.
    pub fn take_raw_buffers(&mut self, qid: u16) -> Vec<DmaBuffer<P>> {
        let (mine, rest): (Vec<_>, Vec<_>) =
            self.released_raw.drain(..).partition(|(q, _)| *q == qid);
        self.released_raw = rest;
        mine.into_iter().map(|(_, b)| b).collect()
    }

    /// Reads entry `index` of the CQ `qid` created with [`Controller::create_cq_raw`]: DW3
    /// (with the phase tag) first with `Acquire` ordering, then the rest. The caller checks
    /// the phase tag, tracks its head and writes the CQ head doorbell itself.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if no such raw CQ exists or `index` is beyond it.
    pub fn raw_cq_entry(&self, qid: u16, index: u16) -> Result<Completion> {
        let (region, off) = self.raw_queue(qid, false, index as usize, crate::spec::CQE_SIZE)?;
        let mem = Mem::new(region);
        let dw3 = mem.load_acquire_u32(off + 12).unwrap_or(0);
        let mut dw = [0u32; 4];
        for (i, d) in dw.iter_mut().take(3).enumerate() {
            *d = mem.read_u32(off + 4 * i).unwrap_or(0);
        }
        dw[3] = dw3;
        Ok(Completion::from_dwords(dw))
    }

    /// The region of a raw queue and the byte offset of its entry `index`.
    fn raw_queue(
        &self,
        qid: u16,
        is_sq: bool,
        index: usize,
        entry: usize,
    ) -> Result<(crate::hw::DmaRegion, usize)> {
        let q = self
            .raw_queues
            .iter()
            .find(|q| q.qid == qid && q.is_sq == is_sq)
            .ok_or(Error::InvalidArgument("no raw queue with this QID"))?;
        let off = q.base + index * entry;
        if off + entry > q.region.len() {
            return Err(Error::InvalidArgument("entry index beyond the raw queue"));
        }
        Ok((q.region, off))
    }

    /// Runs an admin command without data and returns its completion, whatever the status.
    fn admin_no_data(&mut self, cmd: Command) -> Result<Completion> {
        self.admin_wait(cmd, None, AdminReq::NoData, self.config.admin_timeout)
            .map(|(c, _)| c)
    }

    /// Parks regions until the next disable (the device may still refer to them).
    fn retire_all(&self, regions: &[crate::hw::DmaRegion]) {
        for r in regions {
            self.shared.retire(*r, self.generation());
        }
    }

    /// The current reset generation.
    pub(crate) fn generation(&self) -> u32 {
        self.shared.generation.load(Ordering::Acquire)
    }

    // ---- reset and shutdown ----

    /// Disables the controller and frees everything the device could have reached.
    fn disable_and_reclaim(&mut self) -> Result<()> {
        let p = self.shared.platform.clone();
        let r = disable(&*p, self.cap, self.enable_failed);
        p.irq().disable();
        // On failure the device may still be running: keep its memory (leaked, not reused).
        r?;
        // §3.7.2: the reset deleted every I/O queue and aborted every command.
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.admin.take_all(drop);
        self.scratch_busy = false;
        self.aers_outstanding = 0;
        for q in self.raw_queues.drain(..) {
            // SAFETY: the controller is disabled.
            unsafe { p.dma().free(q.region) };
            // `q.held` (data buffers of raw commands) is dropped here, for the same reason.
        }
        let mut g = self.shared.graveyard.lock();
        g.controller_disabled = true;
        for r in g.regions.drain(..) {
            // SAFETY: the controller is disabled; nothing it knew of survives.
            unsafe { p.dma().free(r) };
        }
        Ok(())
    }

    /// Controller Level Reset (§3.7.2): disables the controller (every I/O queue is deleted
    /// and every outstanding command is discarded; existing [`IoQueuePair`]s become dead and
    /// fail with [`Error::ControllerReset`]), then brings it up again. Use it to recover
    /// from a timeout or CSTS.CFS.
    ///
    /// # Errors
    /// As [`Controller::new`].
    pub fn reset(&mut self) -> Result<()> {
        self.disable_and_reclaim()?;
        self.stats.resets += 1;
        self.needs_reset = None;
        self.shut_down = false;
        self.io_queues_created = false;
        self.events.clear();
        // Fresh rings: the admin queue restarts at slot 0 with phase 1.
        let dstrd = self.shared.dstrd;
        let entries = self.admin.sq.entries();
        let (sqm, cqm) = (self.admin.sq.mem(), self.admin.cq.mem());
        sqm.fill(0, sqm.len(), 0);
        cqm.fill(0, cqm.len(), 0);
        let lists = self.admin.regions().nth(2);
        let lists_per_slot = crate::prp::max_list_pages(SCRATCH_LEN, PAGE_SIZE);
        let stats = self.admin.stats;
        self.admin = Engine::new(
            SubQueue::new(sqm, 0, entries, dstrd),
            CompQueue::new(cqm, 0, entries, dstrd),
            lists,
            lists_per_slot,
        );
        self.admin.stats = stats;
        self.enable_and_initialize()
    }

    /// Orderly shutdown (§3.6.1): deletes the queues created through the raw calls, sets
    /// CC.SHN to normal and waits for CSTS.SHST = complete (at least
    /// [`ControllerConfig::shutdown_timeout`], longer if RTD3E says so), then disables the
    /// controller and frees its memory. Delete your [`IoQueuePair`]s first
    /// ([`Controller::delete_io_queue_pair`]); pairs still alive become dead.
    ///
    /// # Errors
    /// [`Error::ShutdownTimeout`], [`Error::DeviceGone`].
    pub fn shutdown(mut self) -> Result<()> {
        self.shutdown_inner(shn::NORMAL)
    }

    fn shutdown_inner(&mut self, kind: u8) -> Result<()> {
        if self.shut_down {
            return Ok(());
        }
        let p = self.shared.platform.clone();
        if self.needs_reset.is_none() && kind == shn::NORMAL {
            // Delete raw queues: SQs first, then CQs.
            let mut qs: Vec<(u16, bool)> =
                self.raw_queues.iter().map(|q| (q.qid, q.is_sq)).collect();
            qs.sort_by_key(|&(_, sq)| !sq);
            for (qid, sq) in qs {
                let _ = self.delete_queue_raw(qid, sq);
            }
        }
        self.shut_down = true;
        let cc = Cc(p.bar().read32(offset::CC));
        let csts = Csts(p.bar().read32(offset::CSTS));
        if csts.is_all_ones() {
            return Err(Error::DeviceGone);
        }
        let mut result = Ok(());
        if cc.en() && csts.rdy() && !csts.cfs() {
            p.bar().write32(offset::CC, cc.with_shn(kind).0);
            let rtd3e = Duration::from_micros(self.identify.rtd3e as u64);
            let timeout = self.config.shutdown_timeout.max(rtd3e);
            result = match wait_csts(&*p, timeout, |c| c.shst() == shst::COMPLETE) {
                Ok(_) => Ok(()),
                Err(Some(e)) => Err(e),
                Err(None) => Err(Error::ShutdownTimeout {
                    waited_ms: ms(timeout),
                }),
            };
        }
        // After shutdown the controller needs a reset before further use (§3.6.1); disabling
        // it also makes every region safe to free.
        let r = self.disable_and_reclaim();
        result.and(r)
    }
}

impl<P: Platform> Drop for Controller<P> {
    fn drop(&mut self) {
        if !self.shut_down {
            // Abrupt shutdown (§3.6.1, SHN 10b), then disable. Errors cannot be reported from
            // drop; if the device does not stop, its memory is leaked rather than freed.
            let _ = self.shutdown_inner(shn::ABRUPT);
        }
        let p = self.shared.platform.clone();
        let g = self.shared.graveyard.lock();
        let disabled = g.controller_disabled;
        drop(g);
        // If the controller could not be disabled, the rings and the scratch page are
        // leaked rather than freed: the device may still write them.
        if disabled {
            for m in self.admin.regions().chain(core::iter::once(self.scratch)) {
                // SAFETY: the controller is disabled; the admin rings and the scratch page
                // are unreferenced.
                unsafe { p.dma().free(m.region()) };
            }
        }
    }
}

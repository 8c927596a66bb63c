//! The controller model: register file, enable/disable/shutdown state machine, queues,
//! doorbells, command fetch and completion posting. Admin commands are in [`admin`], NVM
//! commands in [`nvm`].

mod admin;
mod nvm;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_core::spec::log::{error_event, event_type, lid};
use nvme_core::spec::regs::{offset, shst, Aqa, Cap, Cc, Csts, NSSR_RESET};
use nvme_core::spec::status::generic;
use nvme_core::spec::{AsyncEvent, Command, Completion, ErrorLogEntry, Status, CQE_SIZE, SQE_SIZE};

use crate::coalesce::Coalescer;
use crate::config::SimConfig;
use crate::dma::{DeviceDma, DmaFault, DmaSpace, Peek, Pinned};
use crate::fault::{CompletionFault, FaultState};
use crate::irq::IrqCore;
use crate::namespace::{Namespace, ReadError};
use crate::prp::{self, PrpError};
use crate::sgl;
use crate::violation::{SimStats, Violation, ViolationKind};
use nvme_core::spec::sgl::{sgl1, Sgls};

/// Size of BAR0 (registers at 0h, doorbells at 1000h).
pub const BAR_SIZE: usize = 0x4000;
/// Error Information log entries kept (Identify ELPE + 1).
pub(crate) const ERROR_LOG_ENTRIES: usize = 64;
/// Default composite temperature, kelvin (37 °C).
pub(crate) const DEFAULT_TEMPERATURE: u16 = 310;
/// WCTEMP, kelvin (70 °C): the default over-temperature threshold.
pub(crate) const WCTEMP: u16 = 343;
/// CCTEMP, kelvin (80 °C).
pub(crate) const CCTEMP: u16 = 353;

/// A set of command identifiers: one bit per possible CID (8 KiB), so that marking a
/// command outstanding and completing it are a bit operation each, with no hashing and no
/// allocation.
pub(crate) struct CidSet(Box<[u64; 1024]>);

impl CidSet {
    pub(crate) fn new() -> Self {
        Self(Box::new([0; 1024]))
    }
    pub(crate) fn contains(&self, cid: u16) -> bool {
        self.0[usize::from(cid >> 6)] & (1 << (cid & 63)) != 0
    }
    /// Adds `cid`; false if it was already in.
    pub(crate) fn insert(&mut self, cid: u16) -> bool {
        let w = &mut self.0[usize::from(cid >> 6)];
        let had = *w & (1 << (cid & 63)) != 0;
        *w |= 1 << (cid & 63);
        !had
    }
    pub(crate) fn remove(&mut self, cid: u16) {
        self.0[usize::from(cid >> 6)] &= !(1 << (cid & 63));
    }
}

impl std::fmt::Debug for CidSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries((0..=u16::MAX).filter(|&c| self.contains(c)))
            .finish()
    }
}

/// An I/O or admin submission queue (NVMe Base §3.3.1, §4.1).
#[derive(Debug)]
pub(crate) struct Sq {
    base: u64,
    size: u32,
    head: u32,
    tail: u32,
    cqid: u16,
    /// Commands fetched whose completion is not yet in the CQ memory.
    outstanding: CidSet,
    /// CIDs an Abort asked for before they were fetched.
    abort_on_fetch: HashSet<u16>,
    /// The queue's memory, pinned at creation if one mapping holds it (entries are then
    /// fetched without a translation each).
    pin: Option<Pinned>,
}

/// A completion waiting for room in its CQ.
#[derive(Debug, Clone, Copy)]
struct PendingCqe {
    sqid: u16,
    cid: u16,
    dw0: u32,
    dw1: u32,
    status: Status,
    /// An injected posting fault.
    fault: PostFault,
}

/// A fault applied when the entry is written into the CQ (fault injection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PostFault {
    None,
    /// Written twice, in consecutive slots.
    Duplicate,
    /// First written with the wrong phase tag; the right one after the duration.
    WrongPhase(Duration),
}

/// An IOVA no mapping ever covers (below [`crate::dma::IOVA_BASE`], where the allocator
/// never maps): the target of the unmapped-DMA fault.
const UNMAPPED_IOVA: u64 = 0x1000;

/// A completion queue (§3.3.1, §4.2).
#[derive(Debug)]
pub(crate) struct Cq {
    base: u64,
    size: u32,
    /// Next slot the controller writes.
    tail: u32,
    /// Head as last written by the host.
    head: u32,
    phase: bool,
    ien: bool,
    iv: u16,
    /// Completions that found the CQ full: posted in order as the host frees entries.
    backlog: VecDeque<PendingCqe>,
    /// An entry was written with the wrong phase tag (fault injection): it is rewritten
    /// with the right one at this time, and nothing else is posted until then.
    phase_hold: Option<Instant>,
    /// The head was last taken from the shadow CQ head doorbell (§5.8): the host, having
    /// found EventIdx asking for it, may still write the register with that same value.
    head_from_shadow: bool,
    /// The queue's memory, pinned at creation if one mapping holds it (entries are then
    /// posted without a translation each).
    pin: Option<Pinned>,
}

impl Cq {
    fn full(&self) -> bool {
        let next = if self.tail + 1 == self.size {
            0
        } else {
            self.tail + 1
        };
        next == self.head
    }
}

/// Why the data path of a Read failed.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// The PRPs were invalid or unmapped (not yet recorded as a violation).
    Prp(PrpError),
    /// The backing file could not be read.
    Medium,
}

impl From<ReadError<PrpError>> for ReadFailure {
    fn from(e: ReadError<PrpError>) -> Self {
        match e {
            ReadError::Medium => Self::Medium,
            ReadError::Sink(e) => Self::Prp(e),
        }
    }
}

/// The result of executing one command.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    /// Complete with this.
    Done(Done),
    /// Completed later (an Asynchronous Event Request).
    Deferred,
}

/// A finished command.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done {
    pub(crate) dw0: u32,
    pub(crate) dw1: u32,
    pub(crate) status: Status,
    /// For the error log.
    pub(crate) nsid: u32,
    /// For the error log (media errors).
    pub(crate) lba: Option<u64>,
}

impl Done {
    pub(crate) fn ok(dw0: u32) -> Outcome {
        Outcome::Done(Done {
            dw0,
            dw1: 0,
            status: Status::SUCCESS,
            nsid: 0,
            lba: None,
        })
    }
    pub(crate) fn err(status: Status) -> Outcome {
        Outcome::Done(Done {
            dw0: 0,
            dw1: 0,
            status,
            nsid: 0,
            lba: None,
        })
    }
}

/// A completion held back by a fault (delayed or dropped).
#[derive(Debug, Clone, Copy)]
struct Held {
    sqid: u16,
    cid: u16,
    opcode: u8,
    /// `None`: held until aborted or reset.
    due: Option<Instant>,
    done: Done,
}

/// Current values of the features (§5.1.25).
#[derive(Debug, Clone)]
pub(crate) struct Features {
    pub(crate) arbitration: u32,
    pub(crate) power_management: u32,
    pub(crate) temp_over: u16,
    pub(crate) temp_under: u16,
    pub(crate) error_recovery: u32,
    pub(crate) vwc: bool,
    pub(crate) irq_coalescing: u32,
    pub(crate) irq_vector_cd: Vec<bool>,
    pub(crate) write_atomicity: u32,
    pub(crate) async_event_config: u32,
}

impl Features {
    fn defaults(cfg: &SimConfig) -> Self {
        Self {
            arbitration: 0,
            power_management: 0,
            temp_over: WCTEMP,
            temp_under: 0,
            error_recovery: 0,
            vwc: cfg.volatile_write_cache,
            irq_coalescing: 0,
            irq_vector_cd: vec![false; usize::from(cfg.msix_vectors)],
            write_atomicity: 0,
            async_event_config: 0,
        }
    }
}

/// Asynchronous events (§5.1.2): outstanding requests, events not yet reported, and the
/// types masked until their log page is read.
#[derive(Debug, Default)]
struct AerState {
    outstanding: VecDeque<u16>,
    pending: VecDeque<AsyncEvent>,
    masked: [bool; 8],
}

/// SMART counters that survive resets and power cycles.
#[derive(Debug, Default, Clone)]
pub(crate) struct Health {
    pub(crate) bytes_read: u128,
    pub(crate) bytes_written: u128,
    pub(crate) host_reads: u128,
    pub(crate) host_writes: u128,
    pub(crate) power_cycles: u128,
    pub(crate) unsafe_shutdowns: u128,
    pub(crate) media_errors: u128,
    pub(crate) temperature: u16,
}

/// The whole controller.
pub(crate) struct Controller {
    pub(crate) cfg: SimConfig,
    cap: Cap,
    cc: Cc,
    rdy: bool,
    cfs: bool,
    shst: u8,
    nssro: bool,
    intms: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    /// A pending change of CSTS.RDY: (when, to what).
    rdy_change: Option<(Instant, bool)>,
    shutdown_done_at: Option<Instant>,
    /// A shutdown notification completed since the last enable (for "unsafe shutdowns").
    shutdown_clean: bool,
    sqs: Vec<Option<Sq>>,
    /// No SQ at or above this index exists (an upper bound, raised when one is created):
    /// the arbitration scan stops there.
    sq_end: usize,
    cqs: Vec<Option<Cq>>,
    /// Granted I/O SQs / CQs (1's based).
    granted: (u16, u16),
    io_queues_created: bool,
    pub(crate) feat: Features,
    aer: AerState,
    error_log: VecDeque<ErrorLogEntry>,
    error_count: u64,
    pub(crate) health: Health,
    pub(crate) namespaces: Vec<Namespace>,
    held: Vec<Held>,
    pub(crate) violations: Vec<Violation>,
    pub(crate) stats: SimStats,
    /// Commands fetched per opcode, admin (0) and I/O (1): counted here with one add, and
    /// folded into [`SimStats`] when the counters are read ([`Controller::stats`]).
    op_counts: Box<[[u64; 256]; 2]>,
    pub(crate) faults: FaultState,
    dma: DeviceDma,
    irq: Arc<IrqCore>,
    pending_irqs: Vec<u16>,
    /// The CIDs of one SQ doorbell's new commands while they are checked.
    batch_cids: BatchCids,
    /// The PRP segments of the command being executed (reused: no allocation per command).
    segs: Vec<(u64, usize)>,
    /// Staging for writes and image-file reads (reused, grown to the largest transfer).
    scratch: Vec<u8>,
    /// The SGL pieces of the command being executed (reused: no allocation per command).
    sgl_pieces: Vec<sgl::Piece>,
    /// The next entry of the I/O SQ the command being executed came from, if it is a Read
    /// already queued there: the command's data transfer prefetches the medium under it
    /// (see [`Controller::read_ahead_hint`]).
    read_ahead: Option<Peek>,
    /// Completions whose interrupt coalescing holds back (feature 08h).
    coalesce: Coalescer,
    inline: bool,
    /// A CQ may hold a wrong-phase entry to rewrite (fault injection); recomputed by
    /// [`Controller::service`].
    phase_holds: bool,
    /// Thread mode: work for the device thread.
    pub(crate) kick: bool,
    pub(crate) created: Instant,
    /// The shadow doorbell and EventIdx buffers (bus addresses) of Doorbell Buffer Config
    /// (§5.8), until the next reset.
    pub(crate) dbbuf: Option<(u64, u64)>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("cc", &self.cc)
            .field("rdy", &self.rdy)
            .field("cfs", &self.cfs)
            .field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

impl Controller {
    pub(crate) fn new(
        cfg: SimConfig,
        namespaces: Vec<Namespace>,
        dma: Arc<DmaSpace>,
        irq: Arc<IrqCore>,
    ) -> Self {
        let cap = Cap::build(cfg.mqes_z, true, cfg.cap_to, cfg.dstrd, true, 0x01, 0, 4);
        let nq = usize::from(cfg.max_io_queues) + 1;
        let max = cfg.max_io_queues;
        let inline = cfg.mode == crate::SimMode::Inline;
        Self {
            feat: Features::defaults(&cfg),
            cap,
            cc: Cc(0),
            rdy: false,
            cfs: false,
            shst: shst::NORMAL,
            nssro: false,
            intms: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            rdy_change: None,
            shutdown_done_at: None,
            shutdown_clean: true,
            sqs: (0..nq).map(|_| None).collect(),
            sq_end: 0,
            cqs: (0..nq).map(|_| None).collect(),
            granted: (max, max),
            io_queues_created: false,
            aer: AerState::default(),
            error_log: VecDeque::new(),
            error_count: 0,
            health: Health {
                temperature: DEFAULT_TEMPERATURE,
                ..Health::default()
            },
            namespaces,
            held: Vec::new(),
            violations: Vec::new(),
            stats: SimStats::default(),
            op_counts: Box::new([[0; 256]; 2]),
            faults: FaultState::default(),
            dma: DeviceDma::new(dma),
            irq,
            pending_irqs: Vec::new(),
            batch_cids: BatchCids::new(),
            segs: Vec::new(),
            scratch: Vec::new(),
            sgl_pieces: Vec::new(),
            read_ahead: None,
            coalesce: Coalescer::new(cfg.msix_vectors),
            inline,
            phase_holds: false,
            kick: false,
            dbbuf: None,
            created: Instant::now(),
            cfg,
        }
    }

    // ---------------------------------------------------------------- bookkeeping

    /// Records a host protocol violation (strict mode only).
    pub(crate) fn violation(&mut self, kind: ViolationKind, detail: impl Into<String>) {
        if self.cfg.strict {
            self.violations.push(Violation {
                kind,
                detail: detail.into(),
            });
        }
    }

    pub(crate) fn prp_violation(&mut self, e: PrpError) -> Status {
        self.violation(e.kind, e.detail);
        e.status
    }

    /// Memory page size from CC.MPS (§3.1.4.5).
    pub(crate) fn page_size(&self) -> usize {
        4096usize << self.cc.mps()
    }

    /// MDTS in bytes (Identify Controller MDTS, units of CAP.MPSMIN = 4 KiB), `None` for no
    /// limit.
    pub(crate) fn max_transfer(&self) -> Option<usize> {
        (self.cfg.mdts != 0).then(|| 4096usize << self.cfg.mdts)
    }

    fn stride(&self) -> usize {
        4usize << self.cfg.dstrd
    }

    /// Controller Fatal Status (§3.1.4.6 CSTS.CFS, §9.5): processing stops until reset.
    pub(crate) fn set_fatal(&mut self, why: &str) {
        let _ = why;
        self.cfs = true;
    }

    /// RDY, not shutting down, not fatal, not removed: doorbells are accepted.
    fn operational(&self) -> bool {
        self.cc.en()
            && self.rdy
            && !self.cfs
            && self.shst == shst::NORMAL
            && self.cc.shn() == 0
            && !self.faults.removed
    }

    /// Raises the interrupts collected while posting (after the entries were written), as
    /// interrupt coalescing allows (`crate::coalesce`).
    #[inline(always)]
    pub(crate) fn raise_interrupts(&mut self) {
        if !self.pending_irqs.is_empty() {
            self.raise_pending_interrupts();
        }
    }

    /// [`Controller::raise_interrupts`] with interrupts collected.
    #[inline(never)]
    fn raise_pending_interrupts(&mut self) {
        if crate::coalesce::coalesces(self.feat.irq_coalescing) {
            let v = self.coalesce.admit(
                &self.pending_irqs,
                self.feat.irq_coalescing,
                &self.feat.irq_vector_cd,
                Instant::now(),
            );
            self.pending_irqs.clear();
            self.pending_irqs.extend(v);
        } else if self.pending_irqs.len() > 1 {
            // No coalescing (the default): no clock read, no allocation.
            self.pending_irqs.sort_unstable();
            self.pending_irqs.dedup();
        }
        for &vector in &self.pending_irqs {
            if self.irq.raise(vector) {
                self.stats.interrupts_raised += 1;
            }
        }
        // Cleared, not replaced: the capacity is reused by the next commands.
        self.pending_irqs.clear();
    }

    // ---------------------------------------------------------------- timers

    /// True if a timed event may be pending (so that register accesses, doorbells and
    /// interrupt polls read the clock only when something waits for it).
    fn timers_armed(&self) -> bool {
        self.rdy_change.is_some()
            || self.shutdown_done_at.is_some()
            || !self.held.is_empty()
            || self.phase_holds
            || self.coalesce.holding()
    }

    /// [`Controller::service`] at the current time, if a timed event may be pending.
    pub(crate) fn service_now(&mut self) -> Option<Duration> {
        if self.timers_armed() {
            self.service(Instant::now())
        } else {
            None
        }
    }

    /// Applies every timed transition that is due: RDY following EN, shutdown completing,
    /// delayed completions. Returns the time to the next timed event.
    pub(crate) fn service(&mut self, now: Instant) -> Option<Duration> {
        if let Some((at, v)) = self.rdy_change {
            if now >= at {
                self.rdy = v;
                self.rdy_change = None;
            }
        }
        if let Some(at) = self.shutdown_done_at {
            if now >= at {
                self.shst = shst::COMPLETE;
                self.shutdown_done_at = None;
                self.shutdown_clean = true;
            }
        }
        if self.held.iter().any(|h| h.due.is_some_and(|d| now >= d)) {
            let (due, keep): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
                .into_iter()
                .partition(|h| h.due.is_some_and(|d| now >= d));
            self.held = keep;
            for h in due {
                self.post(h.sqid, h.cid, h.done);
            }
            self.raise_interrupts();
        }
        for vector in self.coalesce.due(self.feat.irq_coalescing, now) {
            if self.irq.raise(vector) {
                self.stats.interrupts_raised += 1;
            }
        }
        let phase_due: Vec<u16> = self
            .cqs
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                c.as_ref()
                    .is_some_and(|c| c.phase_hold.is_some_and(|t| now >= t))
            })
            .map(|(i, _)| i as u16)
            .collect();
        for cqid in phase_due {
            self.drain_cq(cqid);
            self.work();
        }
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| {
            next = Some(next.map_or(t, |n| n.min(t)));
        };
        if let Some((at, _)) = self.rdy_change {
            consider(at);
        }
        if let Some(at) = self.shutdown_done_at {
            consider(at);
        }
        for h in &self.held {
            if let Some(d) = h.due {
                consider(d);
            }
        }
        let mut holds = false;
        for t in self.cqs.iter().flatten().filter_map(|c| c.phase_hold) {
            consider(t);
            holds = true;
        }
        self.phase_holds = holds;
        if let Some(t) = self.coalesce.next_due(self.feat.irq_coalescing) {
            consider(t);
        }
        next.map(|t| t.saturating_duration_since(now))
    }

    // ---------------------------------------------------------------- registers

    /// A 32-bit register read (§3.1.4). Unknown offsets read 0; a misaligned or
    /// out-of-range access, or any read after surprise removal, reads all-ones.
    pub(crate) fn read32(&mut self, off: usize) -> u32 {
        if self.faults.removed || off % 4 != 0 || off + 4 > BAR_SIZE {
            return u32::MAX;
        }
        self.service_now();
        match off {
            offset::CAP => self.cap.0 as u32,
            0x04 => (self.cap.0 >> 32) as u32,
            // VS: NVMe 2.0.0 (§3.1.4.2).
            offset::VS => 0x0002_0000,
            offset::INTMS | offset::INTMC => self.intms,
            offset::CC => self.cc.0,
            offset::CSTS => Csts::build(self.rdy, self.cfs, self.shst, self.nssro).0,
            offset::AQA => self.aqa,
            offset::ASQ => self.asq as u32,
            0x2C => (self.asq >> 32) as u32,
            offset::ACQ => self.acq as u32,
            0x34 => (self.acq >> 32) as u32,
            _ => 0,
        }
    }

    /// A 32-bit register or doorbell write.
    pub(crate) fn write32(&mut self, off: usize, v: u32) {
        if self.faults.removed {
            return;
        }
        if off % 4 != 0 || off + 4 > BAR_SIZE {
            self.violation(
                ViolationKind::UndefinedRegister,
                format!("write of {v:#x} at BAR offset {off:#x} (misaligned or outside BAR0)"),
            );
            return;
        }
        self.service_now();
        match off {
            offset::INTMS => self.intms |= v,
            offset::INTMC => self.intms &= !v,
            offset::CC => self.write_cc(Cc(v), Instant::now()),
            // CSTS.NSSRO is RW1C (§3.1.4.6); the other bits are read-only.
            offset::CSTS if v & 0x10 != 0 => self.nssro = false,
            offset::NSSR if v == NSSR_RESET && self.cap.nssrs() => {
                self.subsystem_reset(Instant::now());
            }
            offset::AQA | offset::ASQ | 0x2C | offset::ACQ | 0x34 => {
                if self.cc.en() {
                    self.violation(
                        ViolationKind::ConfigChangedWhileEnabled,
                        format!("admin queue register {off:#x} written while CC.EN = 1"),
                    );
                    return;
                }
                match off {
                    offset::AQA => self.aqa = v,
                    offset::ASQ => self.asq = (self.asq & !0xFFFF_FFFF) | u64::from(v),
                    0x2C => self.asq = (self.asq & 0xFFFF_FFFF) | u64::from(v) << 32,
                    offset::ACQ => self.acq = (self.acq & !0xFFFF_FFFF) | u64::from(v),
                    _ => self.acq = (self.acq & 0xFFFF_FFFF) | u64::from(v) << 32,
                }
            }
            o if o >= offset::DBS => self.doorbell(o, v),
            // CAP, VS and reserved offsets: writes are ignored.
            _ => {}
        }
        self.raise_interrupts();
    }

    /// NVM Subsystem Reset (§3.1.4.7, §3.7.1): a controller reset with CSTS.NSSRO set.
    fn subsystem_reset(&mut self, now: Instant) {
        self.reset(now);
        self.cc = Cc(0);
        self.rdy = false;
        self.rdy_change = None;
        self.nssro = true;
    }

    /// CC write: the enable/disable/shutdown state machine (§3.1.4.5, §3.5.1 "Memory-based
    /// Controller Initialization", §3.6.1 "Memory-based Controller Shutdown", §3.7.2
    /// "Controller Reset").
    fn write_cc(&mut self, new: Cc, now: Instant) {
        let old = self.cc;
        if new.en() != old.en() && old.en() != self.rdy {
            self.violation(
                ViolationKind::EnableWhileTransitioning,
                format!(
                    "CC.EN written {} while CC.EN = {} and CSTS.RDY = {} (§3.5.1: wait for RDY to follow EN)",
                    new.en() as u8,
                    old.en() as u8,
                    self.rdy as u8
                ),
            );
        }
        let mut cc = new;
        if old.en() && new.en() {
            let frozen = |c: Cc| (c.css(), c.mps(), c.ams());
            if frozen(old) != frozen(new) {
                self.violation(
                    ViolationKind::ConfigChangedWhileEnabled,
                    format!(
                        "CC.CSS/MPS/AMS changed while enabled: {:#x} -> {:#x}",
                        old.0, new.0
                    ),
                );
                cc = cc
                    .with_css(old.css())
                    .with_mps(old.mps())
                    .with_ams(old.ams());
            }
        }
        self.cc = cc;
        // Shutdown notification (§3.6.1): flush, SHST 01b, then 10b.
        if new.shn() != 0 && old.shn() == 0 {
            for ns in &mut self.namespaces {
                let _ = ns.flush();
            }
            if self.cfg.ready_delay.is_zero() {
                self.shst = shst::COMPLETE;
                self.shutdown_clean = true;
            } else {
                self.shst = shst::OCCURRING;
                self.shutdown_done_at = Some(now + self.cfg.ready_delay);
            }
        }
        match (old.en(), new.en()) {
            (false, true) => self.enable(now),
            (true, false) => {
                self.reset(now);
                self.schedule_rdy(now, false);
            }
            _ => {}
        }
    }

    fn schedule_rdy(&mut self, now: Instant, to: bool) {
        if self.cfg.ready_delay.is_zero() {
            self.rdy = to;
            self.rdy_change = None;
        } else {
            self.rdy_change = Some((now + self.cfg.ready_delay, to));
        }
    }

    /// CC.EN 0 → 1: check the admin queue configuration and CC, then create the admin
    /// queues; RDY rises after `ready_delay`. An invalid configuration sets CSTS.CFS
    /// (§3.5.1; the spec leaves the reaction open, a fatal status is what QEMU and real
    /// controllers do).
    fn enable(&mut self, now: Instant) {
        let ps = self.page_size() as u64;
        let aqa = Aqa(self.aqa);
        let mut problems = Vec::new();
        if self.cc.mps() < self.cap.mpsmin() || self.cc.mps() > self.cap.mpsmax() {
            problems.push(format!(
                "CC.MPS {} outside CAP.MPSMIN..MPSMAX {}..{}",
                self.cc.mps(),
                self.cap.mpsmin(),
                self.cap.mpsmax()
            ));
        }
        // CAP.CSS = NVM only: CC.CSS must be 000b (§3.1.4.5).
        if self.cc.css() != nvme_core::spec::regs::css::NVM {
            problems.push(format!(
                "CC.CSS {:#b} not supported by CAP.CSS {:#x}",
                self.cc.css(),
                self.cap.css()
            ));
        }
        // CAP.AMS = 0: round robin only.
        if self.cc.ams() != 0 {
            problems.push(format!(
                "CC.AMS {:#b} not supported (CAP.AMS = 0)",
                self.cc.ams()
            ));
        }
        if aqa.asqs_z() == 0 || aqa.acqs_z() == 0 {
            problems.push(format!(
                "AQA {:#x}: admin queue sizes must be at least 2 entries",
                self.aqa
            ));
        }
        if self.asq % ps != 0 || self.asq == 0 {
            problems.push(format!(
                "ASQ {:#x} not aligned to the memory page size",
                self.asq
            ));
        }
        if self.acq % ps != 0 || self.acq == 0 {
            problems.push(format!(
                "ACQ {:#x} not aligned to the memory page size",
                self.acq
            ));
        }
        if (self.cc.iosqes() != 0 && self.cc.iosqes() != 6)
            || (self.cc.iocqes() != 0 && self.cc.iocqes() != 4)
        {
            problems.push(format!(
                "CC.IOSQES {} / IOCQES {}: Identify SQES/CQES allow only 6 / 4",
                self.cc.iosqes(),
                self.cc.iocqes()
            ));
        }
        if problems.is_empty() && (self.cc.iosqes() == 0 || self.cc.iocqes() == 0) {
            // §3.5.1 step 3 has the host set IOSQES/IOCQES before enabling. A value of 0 is
            // legal until an I/O queue is created, so the model enables; but controllers such
            // as QEMU's refuse to enable without them, so strict mode records it.
            self.violation(
                ViolationKind::QueueEntrySize,
                format!(
                    "CC.EN = 1 with CC.IOSQES {} / IOCQES {} unset (§3.5.1: set 6 / 4 before enabling)",
                    self.cc.iosqes(),
                    self.cc.iocqes()
                ),
            );
        }
        self.shst = shst::NORMAL;
        self.shutdown_done_at = None;
        self.shutdown_clean = false;
        if !problems.is_empty() {
            let kind = if problems
                .iter()
                .any(|p| p.contains("ASQ") || p.contains("ACQ"))
            {
                ViolationKind::MisalignedQueueBase
            } else if problems.iter().any(|p| p.contains("IOSQES")) {
                ViolationKind::QueueEntrySize
            } else {
                ViolationKind::InvalidEnableConfig
            };
            self.violation(kind, format!("CC.EN = 1 refused: {}", problems.join("; ")));
            self.set_fatal("invalid configuration at enable");
            return;
        }
        self.sq_end = self.sq_end.max(1);
        let (asqs, acqs) = (u32::from(aqa.asqs_z()) + 1, u32::from(aqa.acqs_z()) + 1);
        self.sqs[0] = Some(Sq {
            base: self.asq,
            size: asqs,
            head: 0,
            tail: 0,
            cqid: 0,
            outstanding: CidSet::new(),
            abort_on_fetch: HashSet::new(),
            pin: self.dma.pin(self.asq, asqs as usize * SQE_SIZE),
        });
        self.cqs[0] = Some(Cq {
            base: self.acq,
            size: acqs,
            tail: 0,
            head: 0,
            phase: true,
            ien: true,
            iv: 0,
            backlog: VecDeque::new(),
            phase_hold: None,
            head_from_shadow: false,
            pin: self.dma.pin(self.acq, acqs as usize * CQE_SIZE),
        });
        if self.rdy {
            // EN toggled back on before RDY fell: the transition starts over.
            self.rdy = false;
        }
        self.schedule_rdy(now, true);
    }

    /// Controller Level Reset (§3.7.2): every queue is deleted, outstanding commands are
    /// dropped, features return to their defaults, CFS clears. The media and the volatile
    /// write cache are kept (the device stays powered).
    fn reset(&mut self, _now: Instant) {
        for q in &mut self.sqs {
            *q = None;
        }
        self.sq_end = 0;
        for q in &mut self.cqs {
            *q = None;
        }
        self.held.clear();
        self.dbbuf = None;
        self.aer = AerState::default();
        self.feat = Features::defaults(&self.cfg);
        self.granted = (self.cfg.max_io_queues, self.cfg.max_io_queues);
        self.io_queues_created = false;
        self.cfs = false;
        self.pending_irqs.clear();
        self.coalesce.clear();
        self.irq.clear_pending();
        self.stats.resets += 1;
    }

    /// Power off and on (clean: the cache is written back; otherwise it is lost).
    pub(crate) fn power_cycle(&mut self, clean: bool) {
        let now = Instant::now();
        self.service(now);
        if !self.shutdown_clean {
            self.health.unsafe_shutdowns += 1;
        }
        self.health.power_cycles += 1;
        for ns in &mut self.namespaces {
            if clean {
                let _ = ns.flush();
            } else {
                ns.lose_cache();
            }
        }
        self.reset(now);
        self.faults.removed = false;
        self.cc = Cc(0);
        self.rdy = false;
        self.rdy_change = None;
        self.shst = shst::NORMAL;
        self.shutdown_done_at = None;
        self.shutdown_clean = true;
        self.nssro = false;
        self.intms = 0;
        self.aqa = 0;
        self.asq = 0;
        self.acq = 0;
    }

    // ---------------------------------------------------------------- doorbells

    /// An asynchronous event of type error for a bad doorbell write (§5.1.2.1, §3.1.4
    /// doorbell registers: "Invalid Doorbell Write Value" / "Write to Invalid Doorbell
    /// Register").
    fn doorbell_event(&mut self, info: u8) {
        self.raise_event(AsyncEvent {
            event_type: event_type::ERROR,
            info,
            log_page: lid::ERROR_INFO,
        });
    }

    /// SQ y Tail / CQ y Head doorbell write (§3.1.4, NVMe over PCIe doorbells at
    /// `1000h + (2y [+1]) × (4 << CAP.DSTRD)`; invalid writes per §3.3.1.2 / §5.1.2.1).
    fn doorbell(&mut self, off: usize, v: u32) {
        self.stats.doorbell_writes += 1;
        let rel = off - offset::DBS;
        // The stride is a power of two: a mask and a shift, not a division.
        let shift = 2 + u32::from(self.cfg.dstrd);
        if rel & ((1 << shift) - 1) != 0 {
            self.violation(
                ViolationKind::UndefinedRegister,
                format!(
                    "write at {off:#x} between doorbells (stride {})",
                    self.stride()
                ),
            );
            return;
        }
        let idx = rel >> shift;
        let qid = idx / 2;
        let is_cq = idx % 2 == 1;
        if !self.operational() {
            let name = if is_cq { "CQ" } else { "SQ" };
            self.violation(
                ViolationKind::DoorbellWhileNotReady,
                format!(
                    "{name} {qid} doorbell written with {v} while the controller is not ready (CC.EN {}, RDY {}, CFS {}, SHST {})",
                    self.cc.en() as u8, self.rdy as u8, self.cfs as u8, self.shst
                ),
            );
            return;
        }
        let exists = if is_cq {
            self.cqs.get(qid).is_some_and(|q| q.is_some())
        } else {
            self.sqs.get(qid).is_some_and(|q| q.is_some())
        };
        if !exists {
            let name = if is_cq { "CQ" } else { "SQ" };
            self.violation(
                ViolationKind::DoorbellNonexistentQueue,
                format!("{name} {qid} doorbell written with {v}, but the queue does not exist"),
            );
            self.doorbell_event(error_event::INVALID_DOORBELL_REGISTER);
            return;
        }
        if is_cq {
            self.cq_doorbell(qid, v);
        } else {
            self.sq_doorbell(qid, v);
        }
    }

    fn sq_doorbell(&mut self, qid: usize, v: u32) {
        let Some(sq) = self.sqs[qid].as_ref() else {
            return;
        };
        let (size, head, tail, base) = (sq.size, sq.head, sq.tail, sq.base);
        if v >= size {
            self.violation(
                ViolationKind::DoorbellValueOutOfRange,
                format!("SQ {qid} tail {v} is beyond the queue size {size}"),
            );
            self.doorbell_event(error_event::INVALID_DOORBELL_VALUE);
            return;
        }
        if v == tail {
            self.violation(
                ViolationKind::DoorbellNoProgress,
                format!("SQ {qid} tail {v} written again with nothing new"),
            );
            return;
        }
        let added = (v + size - tail) % size;
        let used = (tail + size - head) % size;
        if added > size - 1 - used {
            self.violation(
                ViolationKind::SqOverflow,
                format!(
                    "SQ {qid} tail {tail} -> {v} adds {added} entries, but only {} of {size} slots are free (head {head})",
                    size - 1 - used
                ),
            );
            self.doorbell_event(error_event::INVALID_DOORBELL_VALUE);
            return;
        }
        // CIDs must be unique among the commands outstanding on one SQ (§4.1): look for a
        // duplicate within the new batch (one outstanding at fetch is caught there; a batch
        // of one entry has none). The controller's batch set is left empty again afterwards.
        let batch = &mut self.batch_cids;
        // The whole queue through one translation (dwords 0-1 of entry `i` are word
        // `8 i`); entry by entry if it is not one mapped region.
        let dups = if added < 2 {
            0
        } else {
            match self.dma.with_words(base, size as usize * SQE_SIZE, |ws| {
                batch_duplicates(batch, tail, v, size, |i| {
                    let b = ws[i as usize * (SQE_SIZE / 8)]
                        .load(std::sync::atomic::Ordering::Relaxed)
                        .to_ne_bytes();
                    Some(u16::from_le_bytes([b[2], b[3]]))
                })
            }) {
                Ok(dups) => dups,
                Err(_) => {
                    let view = &self.dma;
                    batch_duplicates(batch, tail, v, size, |i| sqe_cid(view, base, i))
                }
            }
        };
        if dups > 0 {
            // Rare: find the slots again for the report.
            let mut seen = HashSet::new();
            let mut i = tail;
            while i != v {
                let cid = sqe_cid(&self.dma, base, i);
                if let Some(cid) = cid {
                    if !seen.insert(cid) {
                        self.violation(
                            ViolationKind::CidConflict,
                            format!("SQ {qid}: CID {cid} submitted twice in one batch (slot {i})"),
                        );
                    }
                }
                i = (i + 1) % size;
            }
        }
        if self.faults.may_lose_doorbell() {
            let mut new = Vec::new();
            let mut i = tail;
            while i != v {
                let mut raw = [0u8; SQE_SIZE];
                if self
                    .dma
                    .read(base + u64::from(i) * SQE_SIZE as u64, &mut raw)
                    .is_ok()
                {
                    new.push(Command::from_le_bytes(&raw));
                }
                i = (i + 1) % size;
            }
            if self.faults.lose_doorbell(qid as u16, &new) {
                // Injected: the write never reached the controller. Not a host violation.
                return;
            }
        }
        if let Some(sq) = self.sqs[qid].as_mut() {
            sq.tail = v;
        }
        // Shadow doorbells: ask to be told of every new tail (the register write is what
        // makes this model process the queue).
        self.set_event_idx(qid, false, v);
        self.work();
    }

    /// The byte offset of queue `qid`'s SQ tail (`cq`: CQ head) entry in the shadow doorbell
    /// and EventIdx buffers: the doorbell register layout from `1000h` (§5.8).
    fn dbbuf_offset(&self, qid: usize, cq: bool) -> u64 {
        ((2 * qid + usize::from(cq)) * self.stride()) as u64
    }

    /// Writes EventIdx for an I/O queue when the host configured a doorbell buffer (§5.8):
    /// the host writes the doorbell register once its shadow value moves past `v`.
    #[inline]
    pub(crate) fn set_event_idx(&mut self, qid: usize, cq: bool, v: u32) {
        let Some((_, eis)) = self.dbbuf else {
            return;
        };
        if qid == 0 {
            return;
        }
        self.write_event_idx(eis, qid, cq, v);
    }

    /// [`Controller::set_event_idx`] with a doorbell buffer configured.
    fn write_event_idx(&mut self, eis: u64, qid: usize, cq: bool, v: u32) {
        let at = eis + self.dbbuf_offset(qid, cq);
        if self.dma.write(at, &v.to_le_bytes()).is_err() {
            self.violation(
                ViolationKind::UnmappedDma,
                format!(
                    "EventIdx of {} {qid}: unmapped",
                    if cq { "CQ" } else { "SQ" }
                ),
            );
        }
    }

    /// A full CQ with a doorbell buffer (§5.8): the host may have consumed entries and
    /// updated only its shadow CQ head doorbell. Takes a valid new head from there; if the
    /// CQ is still full, sets EventIdx to the head so that the host's next update writes
    /// the register (and looks once more, in case the host updated the shadow meanwhile).
    /// True if the head moved.
    fn cq_head_from_shadow(&mut self, cqid: u16) -> bool {
        let Some((dbs, _)) = self.dbbuf else {
            return false;
        };
        let qid = usize::from(cqid);
        if qid == 0 {
            return false;
        }
        let at = dbs + self.dbbuf_offset(qid, true);
        for attempt in 0..2 {
            let mut b = [0u8; 4];
            if self.dma.read(at, &mut b).is_err() {
                return false;
            }
            let v = u32::from_le_bytes(b);
            let Some(cq) = self.cqs.get_mut(qid).and_then(|c| c.as_mut()) else {
                return false;
            };
            let (size, head, tail) = (cq.size, cq.head, cq.tail);
            if v != head {
                let consumed = (v + size - head) % size;
                let available = (tail + size - head) % size;
                if v >= size || consumed > available {
                    self.violation(
                        ViolationKind::DoorbellValueOutOfRange,
                        format!("CQ {qid} shadow head {v} (head {head}, tail {tail}, size {size})"),
                    );
                    return false;
                }
                cq.head = v;
                cq.head_from_shadow = true;
                self.stats.shadow_cq_heads += 1;
                return true;
            }
            if attempt == 0 {
                self.set_event_idx(qid, true, head);
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            }
        }
        false
    }

    fn cq_doorbell(&mut self, qid: usize, v: u32) {
        let Some(cq) = self.cqs[qid].as_ref() else {
            return;
        };
        let (size, head, tail) = (cq.size, cq.head, cq.tail);
        if v >= size {
            self.violation(
                ViolationKind::DoorbellValueOutOfRange,
                format!("CQ {qid} head {v} is beyond the queue size {size}"),
            );
            self.doorbell_event(error_event::INVALID_DOORBELL_VALUE);
            return;
        }
        let from_shadow = std::mem::replace(
            &mut self.cqs[qid]
                .as_mut()
                .expect("checked above")
                .head_from_shadow,
            false,
        );
        if v == head {
            if from_shadow {
                // The register catching up with the shadow value the controller already
                // took: no new entry consumed, and none claimed.
                return;
            }
            self.violation(
                ViolationKind::DoorbellNoProgress,
                format!("CQ {qid} head {v} written again without consuming an entry"),
            );
            return;
        }
        let consumed = (v + size - head) % size;
        let available = (tail + size - head) % size;
        if consumed > available {
            self.violation(
                ViolationKind::CqConsumeFromEmpty,
                format!(
                    "CQ {qid} head {head} -> {v} consumes {consumed} entries, only {available} were posted"
                ),
            );
            self.doorbell_event(error_event::INVALID_DOORBELL_VALUE);
            return;
        }
        let stalled = {
            let cq = self.cqs[qid].as_mut().expect("checked above");
            cq.head = v;
            !cq.backlog.is_empty()
        };
        // Shadow doorbells: no register write needed until the CQ fills again
        // (`cq_head_from_shadow`).
        self.set_event_idx(qid, true, v.wrapping_sub(1) & 0xFFFF);
        if stalled {
            self.drain_cq(qid as u16);
            self.work();
        }
    }

    /// New work: process it now (inline) or wake the device thread.
    fn work(&mut self) {
        if self.inline {
            self.process();
        } else {
            self.kick = true;
        }
    }

    // ---------------------------------------------------------------- processing

    /// Fetches and executes commands until every SQ is empty or stalled: round robin, one
    /// command per SQ per round, the admin queue first (§3.4.1 "Round Robin Arbitration").
    /// An SQ whose CQ has completions waiting for room is not fetched from.
    ///
    /// A round that executed a command from one I/O SQ alone is followed by a burst on that
    /// SQ: executing an I/O command makes no other SQ ready (only a doorbell write moves a
    /// tail, and only a CQ head doorbell or the timer service empties a CQ backlog), so each
    /// following round would again find that SQ alone ready. The burst fetches from it
    /// while it stays ready and the controller is not fatal (the only state of
    /// [`Controller::operational`] a command can change), without scanning the other
    /// queues each time: the same commands in the same order as those rounds. When that SQ
    /// is no longer ready, no SQ is, and processing ends without another (idle) round.
    pub(crate) fn process(&mut self) {
        loop {
            match self.round() {
                Round::Idle => break,
                Round::Sole(qid) if qid != 0 => {
                    while !self.cfs && self.sq_ready(usize::from(qid)) {
                        self.fetch_and_execute(qid);
                    }
                    // The other SQs are still not ready: the next round would be idle.
                    break;
                }
                _ => {}
            }
        }
        self.raise_interrupts();
    }

    /// True if SQ `qid` exists, has an entry to fetch and its CQ has no completions
    /// waiting for room.
    #[inline(always)]
    fn sq_ready(&self, qid: usize) -> bool {
        match &self.sqs[qid] {
            Some(sq) if sq.head != sq.tail => self
                .cqs
                .get(usize::from(sq.cqid))
                .and_then(|c| c.as_ref())
                .is_some_and(|cq| cq.backlog.is_empty()),
            _ => false,
        }
    }

    /// One arbitration round of [`Controller::process`]: at most one command from each SQ
    /// that has one and may be fetched from. Returns whether a command was executed. The
    /// device thread runs one round per hold of the controller lock, so doorbell writes of
    /// other queues are not held up for a whole batch.
    pub(crate) fn process_round(&mut self) -> bool {
        self.round() != Round::Idle
    }

    /// [`Controller::process_round`], telling which SQs it executed a command from.
    fn round(&mut self) -> Round {
        self.dma.release_freed();
        if !self.operational() {
            return Round::Idle;
        }
        let mut r = Round::Idle;
        for qid in 0..self.sq_end.min(self.sqs.len()) {
            if self.sq_ready(qid) {
                self.fetch_and_execute(qid as u16);
                r = match r {
                    Round::Idle => Round::Sole(qid as u16),
                    _ => Round::Many,
                };
            }
        }
        r
    }

    fn fetch_and_execute(&mut self, sqid: u16) {
        let Some(sq) = self.sqs[usize::from(sqid)].as_mut() else {
            return;
        };
        let mut cmd = Command::new(0);
        if !sq
            .pin
            .as_ref()
            .is_some_and(|p| p.read_sqe_into(sq.head, &mut cmd))
        {
            // Not pinned, or freed by the host since: the translated fetch (a freed
            // region's memory goes back to the allocator once nothing holds it).
            sq.pin = None;
            let addr = sq.base + u64::from(sq.head) * SQE_SIZE as u64;
            if let Err(f) = self.dma.read_sqe_into(addr, &mut cmd) {
                self.violation(
                    ViolationKind::UnmappedDma,
                    format!("SQ {sqid} entry fetch: {f}"),
                );
                // The controller cannot fetch: it is broken until reset.
                self.set_fatal("SQ entry fetch failed");
                return;
            }
        }
        sq.head = if sq.head + 1 == sq.size {
            0
        } else {
            sq.head + 1
        };
        // Read-ahead: a look at the next queued entry of an I/O SQ (never the admin SQ).
        self.read_ahead = None;
        if sqid != 0 && sq.head != sq.tail {
            if let Some(next) = sq.pin.as_ref().and_then(|p| p.peek_sqe(sq.head)) {
                if next.opcode == nvme_core::spec::opcode::NvmOpcode::READ.0 {
                    self.read_ahead = Some(next);
                }
            }
        }
        let cid = cmd.cid();
        let opcode = cmd.opcode();
        self.op_counts[usize::from(sqid != 0)][usize::from(opcode)] += 1;

        if sq.outstanding.contains(cid) {
            self.violation(
                ViolationKind::CidConflict,
                format!("SQ {sqid}: CID {cid} reused while a command with it is outstanding"),
            );
            self.post_unchecked(sqid, cid, Status::generic(generic::CID_CONFLICT, true));
            return;
        }
        sq.outstanding.insert(cid);
        if !sq.abort_on_fetch.is_empty() && sq.abort_on_fetch.remove(&cid) {
            self.post(
                sqid,
                cid,
                done_status(Status::generic(generic::ABORT_REQUESTED, false)),
            );
            return;
        }
        let fault = self.faults.take_completion_fault(sqid, &cmd);
        match fault {
            Some(CompletionFault::Status(s)) => {
                self.post(sqid, cid, done_status(s));
                return;
            }
            Some(CompletionFault::UnmappedDma) => {
                // The transfer targets an IOVA nothing maps: the translation fails before
                // any byte moves (as an IOMMU fault would), so no memory is touched.
                debug_assert!(!self.dma.is_mapped(UNMAPPED_IOVA, 1));
                let moved = self.dma.write(UNMAPPED_IOVA, &[0u8; 4]).is_ok();
                debug_assert!(!moved);
                self.post(
                    sqid,
                    cid,
                    done_status(Status::generic(generic::DATA_TRANSFER_ERROR, false)),
                );
                return;
            }
            _ => {}
        }
        let outcome = if sqid == 0 {
            self.admin(&cmd, cid)
        } else {
            self.io(sqid, &cmd)
        };
        let Outcome::Done(done) = outcome else {
            return;
        };
        match fault {
            Some(CompletionFault::Delay(d)) => self.held.push(Held {
                sqid,
                cid,
                opcode,
                due: Some(Instant::now() + d),
                done,
            }),
            Some(CompletionFault::Drop) => self.held.push(Held {
                sqid,
                cid,
                opcode,
                due: None,
                done,
            }),
            Some(CompletionFault::WrongCid) => {
                let bogus = self.unused_cid(sqid, cid);
                self.held.push(Held {
                    sqid,
                    cid,
                    opcode,
                    due: None,
                    done,
                });
                self.post(sqid, bogus, done);
            }
            Some(CompletionFault::DuplicateCid) => {
                self.post_faulty(sqid, cid, done, PostFault::Duplicate);
            }
            Some(CompletionFault::WrongPhase(d)) => {
                self.post_faulty(sqid, cid, done, PostFault::WrongPhase(d));
            }
            _ => self.post_with(sqid, cid, done, PostFault::None),
        }
    }

    /// A CID that no command outstanding on `sqid` has (nor `cid` itself).
    fn unused_cid(&self, sqid: u16, cid: u16) -> u16 {
        let out = self.sqs[usize::from(sqid)].as_ref().map(|s| &s.outstanding);
        (1..=u16::MAX)
            .map(|k| cid ^ 0x8000u16.wrapping_add(k - 1))
            .find(|c| *c != cid && !out.is_some_and(|o| o.contains(*c)))
            .unwrap_or(cid.wrapping_add(1))
    }

    /// Posts `n` events back to back on outstanding Asynchronous Event Requests, bypassing
    /// the per-type masking (fault injection: an AER storm). Returns how many were posted.
    /// Completes Asynchronous Event Request `cid` with event `ev` (§5.1.2, DW0).
    fn post_event(&mut self, cid: u16, ev: AsyncEvent) {
        self.post(
            0,
            cid,
            Done {
                dw0: ev.to_dw0(),
                dw1: 0,
                status: Status::SUCCESS,
                nsid: 0,
                lba: None,
            },
        );
    }

    pub(crate) fn aer_storm(&mut self, n: usize, ev: AsyncEvent) -> usize {
        let mut k = 0;
        while k < n {
            let Some(cid) = self.aer.outstanding.pop_front() else {
                break;
            };
            self.post_event(cid, ev);
            k += 1;
        }
        k
    }

    /// Queues a completion for `sqid`'s CQ and records failed commands in the Error
    /// Information log (§5.1.12.1.2).
    #[inline(never)]
    pub(crate) fn post(&mut self, sqid: u16, cid: u16, done: Done) {
        self.post_with(sqid, cid, done, PostFault::None);
    }

    /// [`Controller::post_with`] out of line (fault injection).
    #[inline(never)]
    fn post_faulty(&mut self, sqid: u16, cid: u16, done: Done, fault: PostFault) {
        self.post_with(sqid, cid, done, fault);
    }

    /// [`Controller::post`] with an injected posting fault; inlined into the command loop.
    #[inline(always)]
    fn post_with(&mut self, sqid: u16, cid: u16, done: Done, fault: PostFault) {
        let st = done.status;
        if !st.is_success() {
            self.log_error(sqid, cid, &done);
        }
        // Disjoint borrows of the queues and the DMA handle: each queue looked up once.
        let Self { sqs, cqs, dma, .. } = self;
        let Some(sq) = sqs.get_mut(usize::from(sqid)).and_then(|s| s.as_mut()) else {
            return;
        };
        let cqid = sq.cqid;
        let Some(cq) = cqs.get_mut(usize::from(cqid)).and_then(|c| c.as_mut()) else {
            return;
        };
        let p = PendingCqe {
            sqid,
            cid,
            dw0: done.dw0,
            dw1: done.dw1,
            status: st,
            fault,
        };
        if fault == PostFault::None
            && cq.backlog.is_empty()
            && cq.phase_hold.is_none()
            && !cq.full()
        {
            // Room now and nothing ahead of it: what `drain_cq` would do with a backlog of
            // this one entry, without queueing it.
            let r = put_entry(dma, cq, Some(sq), p);
            self.entry_written(cqid, r);
            return;
        }
        cq.backlog.push_back(p);
        self.drain_cq(cqid);
    }

    /// Records a failed command in the Error Information log (§5.1.12.1.2), unless it was
    /// aborted (Command Abort Requested, Command Aborted due to SQ Deletion).
    #[cold]
    #[inline(never)]
    fn log_error(&mut self, sqid: u16, cid: u16, done: &Done) {
        let st = done.status;
        if st.is(
            nvme_core::spec::StatusCodeType::GENERIC,
            generic::ABORT_REQUESTED,
        ) || st.is(
            nvme_core::spec::StatusCodeType::GENERIC,
            generic::ABORTED_SQ_DELETION,
        ) {
            return;
        }
        self.error_count += 1;
        self.error_log.push_front(ErrorLogEntry {
            error_count: self.error_count,
            sqid,
            cid,
            status_field: st.bits() << 1,
            param_error_location: 0xFFFF,
            lba: done.lba.unwrap_or(0),
            nsid: done.nsid,
            ..Default::default()
        });
        self.error_log.truncate(ERROR_LOG_ENTRIES);
    }

    /// Posts a completion for a command that is not tracked as outstanding (CID conflict).
    fn post_unchecked(&mut self, sqid: u16, cid: u16, status: Status) {
        self.post(sqid, cid, done_status(status));
    }

    /// Writes backlogged completions while the CQ has room (never past the host's head,
    /// §4.2.4 "a Completion Queue is full when Head = Tail + 1"), with the phase tag and
    /// the SQ head at posting time (§4.2.1 SQHD).
    fn drain_cq(&mut self, cqid: u16) {
        loop {
            let Some(cq) = self.cqs.get_mut(usize::from(cqid)).and_then(|c| c.as_mut()) else {
                return;
            };
            if cq.full() {
                if self.cq_head_from_shadow(cqid) {
                    continue;
                }
                return;
            }
            if let Some(t) = cq.phase_hold {
                if Instant::now() < t {
                    return;
                }
                cq.phase_hold = None;
            }
            let Some(mut p) = cq.backlog.pop_front() else {
                return;
            };
            let addr = cq.base + u64::from(cq.tail) * CQE_SIZE as u64;
            let phase = cq.phase;
            match p.fault {
                PostFault::None => {}
                PostFault::Duplicate => {
                    // The same entry again, in the next slot.
                    cq.backlog.push_front(PendingCqe {
                        fault: PostFault::None,
                        ..p
                    });
                    p.fault = PostFault::None;
                }
                PostFault::WrongPhase(d) => {
                    // The entry with the previous pass's phase tag (§4.2.4): to the host the
                    // slot still holds an old entry. The right one is written at `t`.
                    let sqhd = self
                        .sqs
                        .get(usize::from(p.sqid))
                        .and_then(|s| s.as_ref())
                        .map_or(0, |s| s.head as u16);
                    let stale =
                        Completion::new(p.dw0, p.dw1, sqhd, p.sqid, p.cid, !phase, p.status);
                    if self.dma.write_cqe(addr, &stale.to_le_bytes()).is_err() {
                        self.violation(
                            ViolationKind::UnmappedDma,
                            format!("CQ {cqid} entry post: unmapped"),
                        );
                        self.set_fatal("CQ entry post failed");
                        return;
                    }
                    let cq = self.cqs[usize::from(cqid)].as_mut().expect("exists");
                    cq.phase_hold = Some(Instant::now() + d);
                    self.phase_holds = true;
                    cq.backlog.push_front(PendingCqe {
                        fault: PostFault::None,
                        ..p
                    });
                    return;
                }
            }
            if !self.write_completion(cqid, p) {
                return;
            }
        }
    }

    /// Writes completion `p` into the next slot of CQ `cqid` (which exists and has room),
    /// with the CQ's phase tag and the SQ head now (§4.2.1 SQHD), and advances the tail;
    /// the command is no longer outstanding. False (and the controller fatal) if the CQ
    /// memory is not mapped.
    #[inline]
    fn write_completion(&mut self, cqid: u16, p: PendingCqe) -> bool {
        // Disjoint borrows of the queues and the DMA handle: each looked up once.
        let Self { cqs, sqs, dma, .. } = self;
        let cq = cqs[usize::from(cqid)].as_mut().expect("exists");
        let sq = sqs.get_mut(usize::from(p.sqid)).and_then(|s| s.as_mut());
        let r = put_entry(dma, cq, sq, p);
        self.entry_written(cqid, r)
    }

    /// Accounts for a completion [`put_entry`] wrote into CQ `cqid` (its interrupt vector
    /// queued when the CQ has interrupts enabled), or reports the unmapped CQ memory and
    /// makes the controller fatal. True if the entry was written.
    #[inline(always)]
    fn entry_written(&mut self, cqid: u16, r: Result<Option<u16>, DmaFault>) -> bool {
        match r {
            Ok(irq) => {
                self.stats.completions_posted += 1;
                if let Some(iv) = irq {
                    self.pending_irqs.push(iv);
                }
                true
            }
            Err(f) => {
                self.violation(
                    ViolationKind::UnmappedDma,
                    format!("CQ {cqid} entry post: {f}"),
                );
                self.set_fatal("CQ entry post failed");
                false
            }
        }
    }

    // ---------------------------------------------------------------- data transfer

    /// Controller-to-host transfer of `data` through the command's PRPs.
    pub(crate) fn transfer_to_host(&mut self, cmd: &Command, data: &[u8]) -> Result<(), Status> {
        if cmd.psdt() != 0 {
            return self.sgl_to_host(cmd, data);
        }
        let ps = self.page_size();
        let mut segs = std::mem::take(&mut self.segs);
        let v = &self.dma;
        let r = prp::walk(v, cmd.prp1(), cmd.prp2(), data.len(), ps, &mut segs)
            .and_then(|()| prp::Scatter::new(v, &segs).put(data));
        self.segs = segs;
        r.map_err(|e| self.prp_violation(e))
    }

    /// Host-to-controller transfer of `len` bytes through the command's PRPs.
    pub(crate) fn transfer_from_host(
        &mut self,
        cmd: &Command,
        len: usize,
    ) -> Result<Vec<u8>, Status> {
        let mut out = vec![0u8; len];
        self.gather_from_host(cmd, &mut out)?;
        Ok(out)
    }

    /// Host-to-controller transfer of `out.len()` bytes through the command's PRPs into
    /// `out`.
    pub(crate) fn gather_from_host(&mut self, cmd: &Command, out: &mut [u8]) -> Result<(), Status> {
        if cmd.psdt() != 0 {
            // SGLs (`crate::sgl`): every descriptor checked, then the data gathered.
            let mut pieces = std::mem::take(&mut self.sgl_pieces);
            let r = sgl::walk_into(
                &self.dma,
                Sgls(self.cfg.sgls),
                sgl1(cmd),
                out.len(),
                false,
                &mut pieces,
            )
            .and_then(|()| sgl::gather(&self.dma, &pieces, out));
            self.sgl_pieces = pieces;
            return r.map_err(|e| self.prp_violation(e));
        }
        let ps = self.page_size();
        let mut segs = std::mem::take(&mut self.segs);
        let v = &self.dma;
        let r = prp::walk(v, cmd.prp1(), cmd.prp2(), out.len(), ps, &mut segs)
            .and_then(|()| prp::gather(v, &segs, out));
        self.segs = segs;
        r.map_err(|e| self.prp_violation(e))
    }

    /// Read (NVM Command Set §3.3.4) data path: `nlb` blocks at `slba` of namespace `i`
    /// straight from the medium and the write cache into the host memory the command's
    /// PRPs describe, in one pass (no intermediate buffer for a memory medium). The PRPs are
    /// walked and every segment checked to be mapped before any byte moves.
    /// `len` is the transfer's size in bytes (`nlb` blocks of the namespace's LBA size).
    /// The read-ahead hint for a transfer: the first bytes (at most [`crate::dma::AHEAD_MAX`])
    /// of the medium under `next`, a Read queued behind the command being executed, when
    /// they are in memory ([`Namespace::ahead`]); empty otherwise. `next` comes straight
    /// from host memory and is not checked yet: a bad NSID or range gives no hint, never a
    /// panic, and nothing but a prefetch depends on it.
    fn read_ahead_hint(namespaces: &[Namespace], next: Option<Peek>) -> &[u8] {
        let Some(next) = next else {
            return &[];
        };
        let Some(ns) = (next.nsid as usize)
            .checked_sub(1)
            .and_then(|i| namespaces.get(i))
        else {
            return &[];
        };
        ns.ahead(next.slba, u64::from(next.nlb_z) + 1)
    }

    pub(crate) fn read_to_host(
        &mut self,
        i: usize,
        slba: u64,
        nlb: u64,
        len: usize,
        cmd: &Command,
    ) -> Result<(), ReadFailure> {
        debug_assert_eq!(len, nlb as usize * self.namespaces[i].lba_size() as usize);
        self.namespaces[i].cache_range(slba, nlb);
        let next = self.read_ahead.take();
        if cmd.psdt() != 0 {
            // SGLs (`crate::sgl`): the descriptors are walked and checked first, then the
            // blocks go straight from the medium into the pieces they describe.
            let Self {
                dma,
                namespaces,
                scratch,
                sgl_pieces: pieces,
                cfg,
                stats,
                ..
            } = self;
            let ns = &namespaces[i];
            let ahead = Self::read_ahead_hint(namespaces, next);
            return sgl::walk_into(dma, Sgls(cfg.sgls), sgl1(cmd), len, true, pieces)
                .map_err(ReadFailure::Prp)
                .and_then(|()| {
                    let mut out = sgl::Scatter::new(dma, pieces).with_ahead(ahead);
                    let r = ns.read_with(
                        slba,
                        nlb,
                        scratch,
                        #[inline(always)]
                        |piece| out.put(piece),
                    );
                    stats.read_ahead_bytes += (ahead.len() - out.ahead_left()) as u64;
                    r.map_err(ReadFailure::from)
                });
        }
        let ps = self.page_size();
        let mut segs = std::mem::take(&mut self.segs);
        let ns = &self.namespaces[i];
        let ahead = Self::read_ahead_hint(&self.namespaces, next);
        let scratch = &mut self.scratch;
        let v = &self.dma;
        let r = prp::walk(v, cmd.prp1(), cmd.prp2(), len, ps, &mut segs)
            .map_err(ReadFailure::Prp)
            .and_then(|()| {
                let mut out = prp::Scatter::new(v, &segs).with_ahead(ahead);
                let r = ns.read_with(
                    slba,
                    nlb,
                    scratch,
                    #[inline(always)]
                    |piece| out.put(piece),
                );
                self.stats.read_ahead_bytes += (ahead.len() - out.ahead_left()) as u64;
                r.map_err(ReadFailure::from)
            });
        self.segs = segs;
        r
    }

    /// Write (NVM Command Set §3.3.6) data path: the host's data through the command's PRPs
    /// into the controller's reusable staging buffer, then into the write cache or the
    /// medium. Nothing is written if a PRP is invalid.
    pub(crate) fn write_from_host(
        &mut self,
        i: usize,
        slba: u64,
        len: usize,
        cached: bool,
        cmd: &Command,
    ) -> Result<Result<(), std::io::Error>, Status> {
        let mut scratch = std::mem::take(&mut self.scratch);
        if scratch.len() < len {
            scratch.resize(len, 0);
        }
        let r = self
            .gather_from_host(cmd, &mut scratch[..len])
            .map(|()| self.namespaces[i].write(slba, &scratch[..len], cached));
        self.scratch = scratch;
        r
    }

    /// Controller-to-host transfer through the command's SGL (`crate::sgl`).
    fn sgl_to_host(&mut self, cmd: &Command, data: &[u8]) -> Result<(), Status> {
        let mut pieces = std::mem::take(&mut self.sgl_pieces);
        let r = sgl::walk_into(
            &self.dma,
            Sgls(self.cfg.sgls),
            sgl1(cmd),
            data.len(),
            true,
            &mut pieces,
        )
        .and_then(|()| sgl::Scatter::new(&self.dma, &pieces).put(data));
        self.sgl_pieces = pieces;
        r.map_err(|e| self.prp_violation(e))
    }

    // ---------------------------------------------------------------- events

    /// Generates an asynchronous event (§5.1.2): reported to an outstanding Asynchronous
    /// Event Request unless its type is masked (reported before and its log page not yet
    /// read with RAE = 0); otherwise kept until one is.
    pub(crate) fn raise_event(&mut self, ev: AsyncEvent) {
        let t = usize::from(ev.event_type & 7);
        if self.aer.masked[t]
            || self
                .aer
                .pending
                .iter()
                .any(|p| p.event_type == ev.event_type)
        {
            return;
        }
        self.aer.pending.push_back(ev);
        self.dispatch_events();
    }

    fn dispatch_events(&mut self) {
        while let Some(&cid) = self.aer.outstanding.front() {
            let Some(pos) = self
                .aer
                .pending
                .iter()
                .position(|e| !self.aer.masked[usize::from(e.event_type & 7)])
            else {
                return;
            };
            let ev = self.aer.pending.remove(pos).expect("position is valid");
            self.aer.outstanding.pop_front();
            self.aer.masked[usize::from(ev.event_type & 7)] = true;
            self.post_event(cid, ev);
        }
    }

    /// A log page was read with RAE = 0: the event types it reports are unmasked (§5.1.2,
    /// §5.1.12 RAE).
    pub(crate) fn log_read(&mut self, log: u8) {
        let types: &[u8] = match log {
            lid::ERROR_INFO => &[event_type::ERROR],
            lid::SMART => &[event_type::SMART],
            _ => &[],
        };
        for &t in types {
            self.aer.masked[usize::from(t)] = false;
        }
        self.dispatch_events();
    }

    /// The composite temperature changed (fault injection) or a threshold changed: update
    /// the SMART critical warning bit 1 and raise a SMART event if feature 0Bh enables it
    /// (§5.1.12.1.3, §5.1.25.2.x Temperature Threshold).
    pub(crate) fn check_temperature(&mut self) {
        let t = self.health.temperature;
        let over =
            t > self.feat.temp_over || (self.feat.temp_under != 0 && t < self.feat.temp_under);
        if over && self.feat.async_event_config & 0x02 != 0 {
            self.raise_event(AsyncEvent {
                event_type: event_type::SMART,
                info: 0x01,
                log_page: lid::SMART,
            });
        }
        self.raise_interrupts();
    }

    pub(crate) fn set_temperature(&mut self, kelvin: u16) {
        self.health.temperature = kelvin;
        self.check_temperature();
    }

    /// SMART critical warning byte: bit 1 temperature.
    pub(crate) fn critical_warning(&self) -> u8 {
        let t = self.health.temperature;
        let over =
            t > self.feat.temp_over || (self.feat.temp_under != 0 && t < self.feat.temp_under);
        if over {
            0x02
        } else {
            0
        }
    }

    pub(crate) fn error_log(&self) -> impl Iterator<Item = &ErrorLogEntry> {
        self.error_log.iter()
    }

    /// The counters, with the per-opcode command counts folded in.
    pub(crate) fn stats(&self) -> SimStats {
        let mut s = self.stats.clone();
        for (map, counts) in [
            (&mut s.admin_commands, &self.op_counts[0]),
            (&mut s.io_commands, &self.op_counts[1]),
        ] {
            for (op, &n) in counts.iter().enumerate() {
                if n > 0 {
                    map.insert(op as u8, n);
                }
            }
        }
        s
    }

    pub(crate) fn error_count(&self) -> u64 {
        self.error_count
    }

    /// Namespace index of an active NSID, else Invalid Namespace or Format (§4.2.3.1).
    pub(crate) fn ns_index(&self, nsid: u32) -> Result<usize, Status> {
        if nsid == 0 || nsid as usize > self.namespaces.len() {
            return Err(Status::generic(generic::INVALID_NAMESPACE, true));
        }
        Ok(nsid as usize - 1)
    }
}

/// Counts the entries of slots `tail .. v` (modulo `size`) whose CID (`cid_at`, `None` for
/// an unreadable entry) an earlier entry of the range has too.
#[inline(always)]
fn batch_duplicates(
    batch: &mut BatchCids,
    tail: u32,
    v: u32,
    size: u32,
    cid_at: impl Fn(u32) -> Option<u16>,
) -> usize {
    batch.begin();
    let mut dups = 0usize;
    let mut i = tail;
    while i != v {
        if let Some(cid) = cid_at(i) {
            if !batch.insert(cid) {
                dups += 1;
            }
        }
        i = if i + 1 == size { 0 } else { i + 1 };
    }
    dups
}

/// A set of CIDs for one batch at a time: each CID's slot holds the number of the last
/// batch that had it, so starting a new batch empties the set without touching it (a
/// full clear once every 65,535 batches, when the number wraps).
struct BatchCids {
    stamps: Box<[u16; 1 << 16]>,
    batch: u16,
}

impl BatchCids {
    fn new() -> Self {
        let stamps = vec![0u16; 1 << 16]
            .into_boxed_slice()
            .try_into()
            .expect("one stamp per CID");
        Self { stamps, batch: 0 }
    }

    /// Empties the set.
    fn begin(&mut self) {
        self.batch = self.batch.wrapping_add(1);
        if self.batch == 0 {
            self.stamps.fill(0);
            self.batch = 1;
        }
    }

    /// Adds `cid`; false if it was already in.
    #[inline(always)]
    fn insert(&mut self, cid: u16) -> bool {
        let s = &mut self.stamps[usize::from(cid)];
        if *s == self.batch {
            return false;
        }
        *s = self.batch;
        true
    }
}

impl std::fmt::Debug for BatchCids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchCids")
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

/// The CID of the submission queue entry in slot `i` of the SQ at `base`, if mapped.
fn sqe_cid(dma: &DeviceDma, base: u64, i: u32) -> Option<u16> {
    // Dwords 0 and 1 in one word load (the base is page aligned).
    dma.read_array::<8>(base + u64::from(i) * SQE_SIZE as u64)
        .ok()
        .map(|b| u16::from_le_bytes([b[2], b[3]]))
}

/// Writes completion `p` into the next slot of `cq` (which has room), with the CQ's phase
/// tag and the head of `sq`, the entry's SQ, now (§4.2.1 SQHD), and advances the tail
/// (§4.2.4: the phase tag inverts at each wrap); the command is no longer outstanding on
/// `sq`. Returns the interrupt vector to raise if the CQ has interrupts enabled; a fault
/// (nothing changed) if the CQ memory is not mapped.
#[inline(always)]
fn put_entry(
    dma: &DeviceDma,
    cq: &mut Cq,
    mut sq: Option<&mut Sq>,
    p: PendingCqe,
) -> Result<Option<u16>, DmaFault> {
    let sqhd = sq.as_ref().map_or(0, |s| s.head as u16);
    let cqe = Completion::new(p.dw0, p.dw1, sqhd, p.sqid, p.cid, cq.phase, p.status);
    if !cq
        .pin
        .as_ref()
        .is_some_and(|pin| pin.write_cqe_dwords(cq.tail, cqe.dwords()))
    {
        // Not pinned, or freed by the host since: the translated store.
        cq.pin = None;
        let addr = cq.base + u64::from(cq.tail) * CQE_SIZE as u64;
        dma.write_cqe_dwords(addr, cqe.dwords())?;
    }
    if let Some(sq) = sq.as_mut() {
        sq.outstanding.remove(p.cid);
    }
    cq.tail += 1;
    if cq.tail == cq.size {
        cq.tail = 0;
        cq.phase = !cq.phase;
    }
    Ok(cq.ien.then_some(cq.iv))
}

/// What one arbitration round ([`Controller::process_round`]) executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// No command: every SQ is empty or stalled, or the controller is not operational.
    Idle,
    /// One command, from this SQ alone.
    Sole(u16),
    /// Commands from more than one SQ.
    Many,
}

pub(crate) fn done_status(status: Status) -> Done {
    Done {
        dw0: 0,
        dw1: 0,
        status,
        nsid: 0,
        lba: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots `0 .. cids.len()` of a ring of `size` entries holding `cids`.
    fn dups(batch: &mut BatchCids, cids: &[u16], size: u32) -> usize {
        batch_duplicates(batch, 0, cids.len() as u32, size, |i| {
            Some(cids[i as usize])
        })
    }

    #[test]
    fn batch_duplicates_are_counted_within_one_batch_only() {
        let mut b = BatchCids::new();
        assert_eq!(dups(&mut b, &[1, 2, 3, 2, 1, 2], 8), 3);
        // A new batch starts empty: the CIDs of the last one are no duplicates.
        assert_eq!(dups(&mut b, &[1, 2, 3], 8), 0);
        // Across the batch number's wrap the set is emptied too.
        b.batch = u16::MAX - 1;
        assert_eq!(dups(&mut b, &[7, 9], 8), 0);
        assert_eq!(b.batch, u16::MAX);
        assert_eq!(dups(&mut b, &[7, 9, 7], 8), 1);
        assert_eq!(b.batch, 1);
        assert_eq!(dups(&mut b, &[7, 9, 0xFFFF, 0xFFFF], 8), 1);
    }

    /// When the batch number wraps, the stamps are cleared: a CID seen in the old batch 1
    /// is no duplicate in the new batch 1.
    #[test]
    fn a_wrapped_batch_number_does_not_revive_old_cids() {
        let mut b = BatchCids::new();
        assert_eq!(dups(&mut b, &[42], 8), 0);
        assert_eq!(b.batch, 1);
        b.batch = u16::MAX;
        assert_eq!(dups(&mut b, &[42], 8), 0);
        assert_eq!(b.batch, 1);
    }

    #[test]
    fn batch_duplicates_follow_the_ring_around_its_end() {
        let mut b = BatchCids::new();
        let ring = [5u16, 6, 7, 5];
        // Slots 2, 3, 0: CIDs 7, 5, 5.
        assert_eq!(
            batch_duplicates(&mut b, 2, 1, 4, |i| Some(ring[i as usize])),
            1
        );
        // An unreadable entry counts as no CID.
        assert_eq!(
            batch_duplicates(&mut b, 0, 3, 4, |i| (i != 0).then_some(6)),
            1
        );
    }
}

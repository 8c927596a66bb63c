//! I/O queue pairs and the safe I/O API (NVM Command Set Specification §3).
//!
//! An [`IoQueuePair`] owns one SQ and its CQ. It is `Send`: give each thread its own pair.
//! Buffers move into the pair with a command and come back with its completion, so memory the
//! device may write can never be freed or reused by safe code. Once the pair exists, nothing
//! is heap-allocated per command: the slot table, PRP list pages and the parking space for
//! completions are sized at creation.
//!
//! Three styles:
//! - asynchronous: [`IoQueuePair::submit_read`] (and friends) queue commands without writing
//!   the doorbell, [`IoQueuePair::ring`] writes it once for the batch, [`IoQueuePair::poll`]
//!   or [`IoQueuePair::wait`] deliver [`IoCompletion`]s;
//! - asynchronous on registered buffers (the leanest path, see `fixed`):
//!   [`IoQueuePair::register_buffer`] once, then [`IoQueuePair::submit_read_fixed`],
//!   [`IoQueuePair::ring`] and [`IoQueuePair::poll_fixed`] with small [`FixedCompletion`]s;
//! - blocking: [`IoQueuePair::read`], [`IoQueuePair::write`], ... submit one command and wait
//!   for it (completions of other commands that arrive meanwhile are parked, not lost).
//!
//! A single command larger than the controller's MDTS (or the configured maximum) is refused
//! with [`Error::TransferTooLarge`]. Transfers of any length go through
//! [`Namespace::read_at`], [`Namespace::write_at`] and friends, which split them and keep
//! several commands in flight.
//!
//! Every command's data length comes from the command itself (see [`crate::spec::transfer`])
//! and the namespace handle's current format; a buffer that does not fit it is refused before
//! anything reaches the device, and PRPs name exactly that many bytes of it.
//!
//! Deadlines: submitting reads no clock. A command's deadline is the last clock reading
//! before its submission plus the I/O timeout, so it comes at most 1/16 of the timeout early;
//! after a pause in polling longer than that, the next reading re-dates the commands
//! submitted during the pause from itself. Each [`IoQueuePair::poll`] (and each turn of a
//! blocking wait) with commands outstanding reads the clock once and reports every command
//! past its deadline as [`Error::Timeout`], whatever else the poll reaped.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;
use core::time::Duration;

use crate::dma::DmaBuffer;
use crate::engine::{Engine, Expiry, Reaped, Transfer};
use crate::error::{Error, Result};
use crate::hw::{Bar, Clock, InterruptSource, Platform};
use crate::namespace::Namespace;
use crate::queue::QueueStats;
use crate::recovery::{PairRecord, RecoveryPolicy};
use crate::shared::Shared;
use crate::spec::status::generic;
use crate::spec::transfer::{io_data_length, DataLength};
use crate::spec::{Command, Completion, NvmOpcode, Status, StatusCodeType, PAGE_SIZE};

mod blockio;
mod fixed;
pub use blockio::{STAGING_BUFFERS, STAGING_CHUNK};
use fixed::{AsIo, Deliver, FixedTable, NOT_FIXED};
pub use fixed::{FixedBuf, FixedCompletion, MAX_FIXED_BUFFERS};

/// The blocks a buffer of `len` bytes holds in `ns`'s format: a whole number that fits NLB's
/// counter width, else [`Error::BufferSize`].
#[inline(always)]
fn blocks_of(ns: &Namespace, len: usize) -> Result<u32> {
    let bpb = ns.bytes_per_block() as usize;
    // Blocks of a power-of-two size (every format without interleaved metadata) by mask
    // and shift; others (extended LBAs) by division.
    let (whole, blocks) = if bpb.is_power_of_two() {
        (len & (bpb - 1) == 0, len >> bpb.trailing_zeros())
    } else {
        (len % bpb == 0, len / bpb)
    };
    if !whole || blocks > u32::MAX as usize {
        return Err(Error::BufferSize {
            need: len.div_ceil(bpb) * bpb,
            have: len,
        });
    }
    Ok(blocks as u32)
}

/// Checks that `ns` is a current handle of the controller behind `shared` and that `nlb`
/// blocks at `slba` lie inside it (NVM §3.3.4: SLBA and NLB, 0's based, at most 65,536
/// blocks). `dead` and `generation` are the pair's, to report a reset before a stale handle.
#[inline(always)]
fn lba_check<P: Platform>(
    shared: &Shared<P>,
    dead: bool,
    generation: u32,
    ns: &Namespace,
    slba: u64,
    nlb: u32,
) -> Result<()> {
    let (owner, epoch) = ns.origin();
    if owner != shared.id {
        return Err(Error::ForeignObject {
            what: "the namespace handle",
        });
    }
    // Acquire: pairs with the AcqRel increment when the namespaces change.
    if epoch != shared.ns_epoch.load(Ordering::Acquire) {
        // After a reset the pair itself is dead: say that first.
        if dead || shared.reclaim.generation() != generation {
            return Err(Error::ControllerReset);
        }
        return Err(Error::StaleNamespace { nsid: ns.nsid() });
    }
    if nlb == 0 || nlb > 65536 {
        return Err(Error::InvalidArgument(
            "the number of logical blocks must be 1..=65536 per command",
        ));
    }
    let Some(end) = slba.checked_add(nlb as u64) else {
        return Err(Error::LbaOutOfRange {
            nsid: ns.nsid(),
            slba,
            end: u64::MAX,
            nsze: ns.blocks(),
        });
    };
    if end > ns.blocks() {
        return Err(Error::LbaOutOfRange {
            nsid: ns.nsid(),
            slba,
            end,
            nsze: ns.blocks(),
        });
    }
    Ok(())
}

/// The owned buffer of the request slot `cid` names, taken out.
#[inline(always)]
fn take_buf<P: Platform>(
    bufs: &mut [Option<DmaBuffer<P>>],
    codec: crate::queue::CidCodec,
    cid: u16,
) -> Option<DmaBuffer<P>> {
    bufs.get_mut(codec.decode(cid).0 as usize)
        .and_then(Option::take)
}

/// One request's state inside a queue slot. Its owned buffer, if any, waits beside the slot
/// (`IoQueuePair::bufs`), so that the request stays small to move.
pub(crate) struct IoReq<P: Platform> {
    tag: u64,
    /// The caller was already given this request's outcome ([`Error::Timeout`]): it must not
    /// be reported again, only its buffer freed once the device lets go.
    timed_out: bool,
    /// Offset and length of the transfer in the buffer (length 0: no data).
    xfer: (usize, usize),
    /// Resubmissions so far.
    retries: u8,
    /// The blocking call waiting for this request (0: none).
    sync: u64,
    /// The registered buffer the command uses, or [`NOT_FIXED`].
    fixed: u16,
    _p: core::marker::PhantomData<fn() -> P>,
}

impl<P: Platform> core::fmt::Debug for IoReq<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IoReq")
            .field("tag", &self.tag)
            .field("fixed", &self.fixed)
            .finish()
    }
}

impl<P: Platform> IoReq<P> {
    /// A request as submitted.
    #[inline(always)]
    fn new(tag: u64, xfer: (usize, usize), sync: u64, fixed: u16) -> Self {
        Self {
            tag,
            timed_out: false,
            xfer,
            retries: 0,
            sync,
            fixed,
            _p: core::marker::PhantomData,
        }
    }
    /// The request ends with `result` (not from a device completion), `buffer` (its own)
    /// handed back as it is (the caller decides whether the device can still reach it).
    fn end(self, cid: u16, result: Result<()>, buffer: Option<DmaBuffer<P>>) -> IoCompletion<P> {
        IoCompletion {
            tag: self.tag,
            cid,
            result,
            dw0: 0,
            buffer,
            sync: self.sync,
            fixed: self.fixed,
        }
    }
    /// The request ended and the device can no longer reach its buffer: a registered
    /// buffer is free again; an owned one travels on with the request.
    fn released(self, fixed: &mut FixedTable<P>) -> Self {
        if self.fixed != NOT_FIXED {
            fixed.release(self.fixed);
        }
        self
    }
    /// Retires the buffer, `buffer` or the registered one (the device may still use it; see
    /// `crate::reclaim`).
    pub(crate) fn retire(
        self,
        buffer: Option<DmaBuffer<P>>,
        shared: &Shared<P>,
        generation: u32,
        fixed: &mut FixedTable<P>,
    ) {
        if self.fixed != NOT_FIXED {
            fixed.retire(self.fixed, shared, generation);
        }
        if let Some(b) = buffer {
            shared
                .reclaim
                .retire(&*shared.platform, b.into_region(), generation);
        }
    }
}

/// The outcome of one I/O command.
pub struct IoCompletion<P: Platform> {
    /// The caller's tag given at submission.
    pub tag: u64,
    /// The command ID used.
    pub cid: u16,
    /// `Ok` for Successful Completion; [`Error::Command`] with the status otherwise;
    /// [`Error::Timeout`] if the deadline passed (then `buffer` is `None`: it stays with the
    /// queue until the device lets go of it).
    pub result: Result<()>,
    /// Completion DW0.
    pub dw0: u32,
    /// The buffer given at submission, back in the caller's hands.
    pub buffer: Option<DmaBuffer<P>>,
    /// The blocking call this completion belongs to (0: an asynchronous submission).
    sync: u64,
    /// The registered buffer of the request ([`NOT_FIXED`]: none).
    fixed: u16,
}

impl<P: Platform> IoCompletion<P> {
    /// The registered buffer of a command submitted on one ([`IoQueuePair::submit_read_fixed`];
    /// it stays registered, so `buffer` is `None`).
    pub fn fixed_buffer(&self) -> Option<FixedBuf> {
        (self.fixed != NOT_FIXED).then_some(FixedBuf(self.fixed))
    }
}

impl<P: Platform> core::fmt::Debug for IoCompletion<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IoCompletion")
            .field("tag", &self.tag)
            .field("cid", &self.cid)
            .field("result", &self.result)
            .finish()
    }
}

/// A failed submission or blocking I/O: the error, and the buffer when it is safe to give
/// back (always, unless the command timed out).
pub struct IoError<P: Platform> {
    /// What went wrong.
    pub error: Error,
    /// The buffer, if the device can no longer touch it.
    pub buffer: Option<DmaBuffer<P>>,
}

impl<P: Platform> core::fmt::Debug for IoError<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IoError")
            .field("error", &self.error)
            .field("buffer", &self.buffer.is_some())
            .finish()
    }
}

impl<P: Platform> core::fmt::Display for IoError<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(&self.error, f)
    }
}

impl<P: Platform> core::error::Error for IoError<P> {}

impl<P: Platform> From<IoError<P>> for Error {
    fn from(e: IoError<P>) -> Self {
        e.error
    }
}

/// One DSM range (NVM Command Set §3.3.3, Figure "Dataset Management – Range Definition"):
/// 16 bytes: context attributes, length in logical blocks, starting LBA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DsmRange {
    /// Starting LBA.
    pub slba: u64,
    /// Length in logical blocks.
    pub nlb: u32,
    /// Context attributes.
    pub attributes: u32,
}

/// An I/O submission/completion queue pair.
pub struct IoQueuePair<P: Platform> {
    shared: Arc<Shared<P>>,
    engine: Engine<IoReq<P>>,
    vector: Option<u16>,
    max_transfer: usize,
    generation: u32,
    /// Completions reaped by a blocking call on behalf of other requests.
    parked: VecDeque<IoCompletion<P>>,
    dead: bool,
    /// `generation` while the pair lives, [`u64::MAX`] once it is dead: the controller's
    /// generation (a `u32`) equals it exactly when the pair may go on, one comparison on
    /// every submission, ring and poll.
    alive_in: u64,
    released: bool,
    /// The controller's view of this pair, to re-create it after a reset (`None` for a
    /// detached pair).
    record: Option<Arc<PairRecord>>,
    policy: RecoveryPolicy,
    /// Requests to resubmit, each with its command and buffer (capacity: every slot,
    /// allocated once).
    retry: alloc::vec::Vec<(IoReq<P>, Command, Option<DmaBuffer<P>>)>,
    /// The owned buffer of each request slot's command, while the command is outstanding.
    bufs: alloc::vec::Vec<Option<DmaBuffer<P>>>,
    /// The last blocking call's identifier.
    sync_seq: u64,
    /// The identifier the next submission carries (a blocking call in progress), else 0.
    next_sync: u64,
    /// Revived after a reset: the SQ holds resubmitted commands to ring as soon as the
    /// controller re-created the queues.
    awaiting_queues: bool,
    /// Staging buffers of [`Namespace::read_at`] and friends (allocated on first use).
    staging: alloc::vec::Vec<DmaBuffer<P>>,
    /// Registered buffers (`fixed`).
    fixed: FixedTable<P>,
    /// The clock reading the last completion processing took, if it took one (a blocking
    /// wait uses it instead of reading the clock again).
    clock_read_ns: Option<u64>,
}

impl<P: Platform> core::fmt::Debug for IoQueuePair<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IoQueuePair")
            .field("qid", &self.qid())
            .field("outstanding", &self.outstanding())
            .field("vector", &self.vector)
            .finish()
    }
}

/// The tag of completions of blocking calls (they are matched by a private identifier, never
/// by this tag, so asynchronous callers may use any tag).
const SYNC_TAG: u64 = u64::MAX;

impl<P: Platform> IoQueuePair<P> {
    pub(crate) fn new(
        shared: Arc<Shared<P>>,
        engine: Engine<IoReq<P>>,
        vector: Option<u16>,
        max_transfer: usize,
        generation: u32,
        record: Option<Arc<PairRecord>>,
    ) -> Self {
        let cap = engine.capacity();
        let policy = shared.policy;
        Self {
            shared,
            engine,
            vector,
            max_transfer,
            generation,
            parked: VecDeque::with_capacity(cap),
            dead: false,
            alive_in: u64::from(generation),
            released: false,
            record,
            policy,
            retry: alloc::vec::Vec::with_capacity(cap),
            bufs: (0..cap).map(|_| None).collect(),
            sync_seq: 0,
            next_sync: 0,
            awaiting_queues: false,
            staging: alloc::vec::Vec::new(),
            fixed: FixedTable::new(),
            clock_read_ns: None,
        }
    }
    /// True if the device has this pair's queues in reset generation `g`.
    pub(crate) fn is_on_device(&self, g: u32) -> bool {
        self.generation == g
            && self
                .record
                .as_ref()
                .is_none_or(|r| r.ready.load(Ordering::Acquire) == g)
    }
    /// True if this pair was created by the controller that owns `shared`.
    pub(crate) fn belongs_to(&self, shared: &Arc<Shared<P>>) -> bool {
        Arc::ptr_eq(&self.shared, shared)
    }
    /// Tears the pair down after `Controller::delete_io_queue_pair`: if both deletions
    /// succeeded the device holds no reference and everything is freed now; otherwise it all
    /// is retired until the next controller disable (`crate::reclaim`).
    pub(crate) fn release(&mut self, deleted: bool) {
        if let Some(r) = self.record.take() {
            self.shared
                .mailbox
                .pairs
                .lock()
                .retain(|x| !Arc::ptr_eq(x, &r));
        }
        let shared = self.shared.clone();
        let generation = self.generation;
        let p = &*shared.platform;
        let (fixed, bufs) = (&mut self.fixed, &mut self.bufs);
        let codec = self.engine.codec();
        if deleted {
            self.engine.take_all(|cid, req, _| {
                drop(take_buf(bufs, codec, cid));
                req.released(fixed);
            });
            for m in self.engine.regions() {
                // SAFETY: the SQ and the CQ were deleted (§5.2.3, §5.2.4): the controller no
                // longer refers to the rings or the PRP lists.
                unsafe { shared.reclaim.released(p, m.region()) };
            }
        } else {
            self.engine.take_all(|cid, req, _| {
                req.retire(take_buf(bufs, codec, cid), &shared, generation, fixed)
            });
            // Busy registered buffers whose request already ended (timed out) as well.
            fixed.retire_busy(&shared, generation);
            for m in self.engine.regions() {
                shared.reclaim.retire(p, m.region(), generation);
            }
        }
        self.released = true;
    }
    /// The queue ID (SQ and CQ share it).
    pub fn qid(&self) -> u16 {
        self.engine.qid()
    }
    /// Commands outstanding (including timed-out ones the device has not released).
    pub fn outstanding(&self) -> usize {
        self.engine.outstanding()
    }
    /// Most commands that can be outstanding at once (queue entries − 1).
    pub fn depth(&self) -> usize {
        self.engine.capacity()
    }
    /// True while command `cid` is outstanding (in flight, or timed out and not yet released
    /// by the device).
    pub fn is_outstanding(&self, cid: u16) -> bool {
        self.engine.is_in_flight(cid).is_some()
    }
    /// The MSI-X vector of the CQ, or `None` when polled.
    pub fn vector(&self) -> Option<u16> {
        self.vector
    }
    /// Bytes one command may transfer.
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }
    /// True if Read, Write and Compare on this pair describe their data with an SGL Data
    /// Block descriptor rather than PRPs (see [`crate::sgl`]).
    pub fn uses_sgl(&self) -> bool {
        self.engine.sgl.enabled()
    }
    /// Counters, including what the device did wrong.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// qp.read(&ns, 0, ctrl.alloc_buffer(512)?)?;
    /// let s = qp.stats();
    /// assert_eq!((s.submitted, s.completed, s.timeouts), (1, 1, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> QueueStats {
        self.engine.stats
    }
    /// Allocates a DMA buffer on this pair's platform.
    ///
    /// # Errors
    /// [`Error::Dma`].
    pub fn alloc_buffer(&self, len: usize) -> Result<DmaBuffer<P>> {
        DmaBuffer::new(&self.shared.platform, len)
    }

    /// Follows a controller reset: with a recovery policy that resets, the pair revives
    /// (its rings start over and its retryable commands wait in the SQ until the controller
    /// re-creates the queues); otherwise it dies, failing everything outstanding.
    #[inline]
    fn check_alive(&mut self) -> Result<()> {
        if u64::from(self.shared.reclaim.generation()) == self.alive_in {
            return Ok(());
        }
        self.after_reset()
    }

    /// The slow half of [`IoQueuePair::check_alive`].
    #[cold]
    #[inline(never)]
    fn after_reset(&mut self) -> Result<()> {
        if self.dead {
            return Err(Error::ControllerReset);
        }
        let g = self.shared.reclaim.generation();
        let revivable = self.policy.reset
            && self
                .record
                .as_ref()
                .is_some_and(|r| !r.failed.load(Ordering::Acquire));
        if revivable {
            self.revive(g);
            Ok(())
        } else {
            self.die();
            Err(Error::ControllerReset)
        }
    }

    /// The controller was reset and will not re-create this pair: every command was
    /// discarded and the device holds no reference to any buffer; fail them all, giving the
    /// buffers back. A request already reported as timed out was finished for the caller:
    /// its buffer is freed here (the device can no longer reach it), not reported again.
    fn die(&mut self) {
        self.dead = true;
        self.alive_in = u64::MAX;
        let (parked, engine, fixed) = (&mut self.parked, &mut self.engine, &mut self.fixed);
        let (bufs, codec) = (&mut self.bufs, engine.codec());
        engine.take_all(|cid, req, _| {
            let (req, buffer) = (req.released(fixed), take_buf(bufs, codec, cid));
            if !req.timed_out {
                parked.push_back(req.end(cid, Err(Error::ControllerReset), buffer));
            }
        });
    }

    /// After a reset (generation `g`): the rings start over, every request not yet reported
    /// goes back into the SQ while it has retries left (the rest fail with their buffers,
    /// which the disabled device can no longer reach), and the pair declares itself ready
    /// for the controller to re-create its queues (`crate::recovery`).
    fn revive(&mut self, g: u32) {
        let max = self.policy.retries;
        let (parked, retry, engine) = (&mut self.parked, &mut self.retry, &mut self.engine);
        let (codec, fixed) = (engine.codec(), &mut self.fixed);
        let bufs = &mut self.bufs;
        engine.reinit(|cid, mut req, cmd| {
            let buffer = take_buf(bufs, codec, cid);
            if req.timed_out {
                req.released(fixed);
                return;
            }
            if req.retries < max {
                req.retries += 1;
                retry.push((req, crate::engine::bare(cmd), buffer));
            } else {
                let req = req.released(fixed);
                parked.push_back(req.end(cid, Err(Error::ControllerReset), buffer));
            }
        });
        self.engine.set_shadow(None, false);
        self.generation = g;
        self.alive_in = u64::from(g);
        self.resubmit();
        self.awaiting_queues = true;
        if let Some(r) = &self.record {
            // Release: the zeroed CQ and the new SQ entries are written before the controller
            // re-creates the queues on them.
            r.quiesced.store(g, Ordering::Release);
        }
    }

    /// Puts the requests in `retry` back into the SQ (not rung); one that cannot be placed
    /// fails with its buffer.
    fn resubmit(&mut self) -> bool {
        let mut any = false;
        let (parked, retry, engine) = (&mut self.parked, &mut self.retry, &mut self.engine);
        let (fixed, bufs) = (&mut self.fixed, &mut self.bufs);
        for (req, cmd, buffer) in retry.drain(..) {
            let mem = match (&buffer, req.fixed) {
                (Some(b), _) => Some(b.mem()),
                (None, NOT_FIXED) => None,
                (None, i) => match fixed.busy_mem(i) {
                    Some(m) => Some(m),
                    None => {
                        let e = Error::Backend("a registered buffer left the table mid-command");
                        parked.push_back(req.released(fixed).end(0, Err(e), buffer));
                        continue;
                    }
                },
            };
            let data = match (mem, req.xfer) {
                (Some(mem), (offset, len)) if len > 0 => Some(Transfer { mem, offset, len }),
                _ => None,
            };
            match engine.submit(cmd, data, req, None) {
                Ok(cid) => {
                    let i = engine.codec().decode(cid).0 as usize;
                    if let Some(b) = bufs.get_mut(i) {
                        *b = buffer;
                    }
                    engine.stats.retried += 1;
                    any = true;
                }
                Err((error, req)) => {
                    parked.push_back(req.released(fixed).end(0, Err(error), buffer))
                }
            }
        }
        any
    }

    /// Submits any I/O command the core knows (raw passthrough, like `nvme io-passthru`).
    /// The transfer length is derived from the command itself (NLB × the namespace's bytes
    /// per block for Read, Write and Compare; NR for Dataset Management; none for Flush,
    /// Write Zeroes, Verify, Write Uncorrectable: see [`crate::spec::transfer`]) and must fit
    /// the buffer; PRPs are built for exactly that length from the buffer, so the device can
    /// reach nothing else. The doorbell is not written until [`IoQueuePair::ring`] (or a
    /// blocking call). Returns the command ID.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// use nvme_core::spec::{Command, NvmOpcode};
    /// // Read 8 blocks (NLB 7, 0's based): the core derives 8 × 512 bytes and checks the buffer.
    /// let cmd = Command::rw(NvmOpcode::READ, ns.nsid(), 0, 7, false);
    /// qp.submit(cmd, Some(ctrl.alloc_buffer(4096)?), 1).map_err(|e| e.error)?;
    /// // A buffer too small for what the command says is refused, and comes back.
    /// let e = qp.submit(cmd, Some(ctrl.alloc_buffer(512)?), 2).unwrap_err();
    /// assert!(e.buffer.is_some());
    /// qp.ring();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::UnknownTransfer`] for an opcode the core does not know (see
    /// [`IoQueuePair::submit_unchecked`]), [`Error::TransferMismatch`] if the command's own
    /// fields describe another length than the buffer, [`Error::ForeignObject`] for a
    /// buffer of another controller, [`Error::QueueFull`], [`Error::ControllerReset`], PRP
    /// errors; the buffer comes back in the error.
    pub fn submit(
        &mut self,
        cmd: Command,
        buffer: Option<DmaBuffer<P>>,
        tag: u64,
    ) -> core::result::Result<u16, IoError<P>> {
        self.submit_range(cmd, buffer, 0, None, tag)
    }

    /// As [`IoQueuePair::submit`], for the bytes of the buffer from `offset` (dword aligned,
    /// §4.3.1); `len`, if given, must equal the length the command describes.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// use nvme_core::spec::{Command, NvmOpcode};
    /// // One block read into bytes 512..1024 of a 4 KiB buffer.
    /// let buf = ctrl.alloc_buffer(4096)?;
    /// let cmd = Command::rw(NvmOpcode::READ, ns.nsid(), 0, 0, false);
    /// qp.submit_range(cmd, Some(buf), 512, Some(512), 1).map_err(|e| e.error)?;
    /// qp.ring();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`IoQueuePair::submit`].
    pub fn submit_range(
        &mut self,
        cmd: Command,
        buffer: Option<DmaBuffer<P>>,
        offset: usize,
        len: Option<usize>,
        tag: u64,
    ) -> core::result::Result<u16, IoError<P>> {
        let mut cmd = cmd;
        crate::dma::sanitize_pointers(&mut cmd);
        if buffer.is_none() {
            // No data pointer (PRPs zero, a bus address no allocator hands out): the device
            // can reach no memory whatever the command says, so any command may be sent, to
            // see how the controller answers it.
            if len.is_some_and(|l| l > 0) {
                return Err(IoError {
                    error: Error::InvalidArgument("a transfer length without a buffer"),
                    buffer,
                });
            }
            return self.submit_bytes(cmd, None, 0, 0, tag);
        }
        let described = match self.described_length(&cmd) {
            Ok(d) => d,
            Err(error) => return Err(IoError { error, buffer }),
        };
        let given = match &buffer {
            Some(b) => len.unwrap_or(b.len().saturating_sub(offset)),
            None => 0,
        };
        // A buffer may be longer than the transfer (only `described` bytes are named to the
        // device), never shorter; an explicit `len` must say the same as the command.
        if described > given
            || (len.is_some() && described != given)
            || (buffer.is_some() && described == 0)
        {
            return Err(IoError {
                error: Error::TransferMismatch {
                    opcode: cmd.opcode(),
                    opcode_name: NvmOpcode(cmd.opcode()).name().unwrap_or("I/O command"),
                    described,
                    given,
                },
                buffer,
            });
        }
        self.submit_bytes(cmd, buffer, offset, described, tag)
    }

    /// Submits any I/O command, with PRPs built for `len` bytes of `buffer` from `offset`,
    /// without deriving the length from the command: for vendor-specific and other opcodes
    /// the core does not know.
    ///
    /// # Safety
    /// The command must make the device transfer at most `len` bytes through its data
    /// pointer and must not name any other memory (metadata pointers and SGLs are cleared,
    /// PRPs are rebuilt, but the core cannot read the command's own length fields). A command
    /// that transfers more makes the device follow PRP entries past the buffer: for a
    /// transfer of two pages or more, into memory named by the buffer's own contents.
    ///
    /// # Errors
    /// As [`IoQueuePair::submit`].
    pub unsafe fn submit_unchecked(
        &mut self,
        cmd: Command,
        buffer: Option<DmaBuffer<P>>,
        offset: usize,
        len: usize,
        tag: u64,
    ) -> core::result::Result<u16, IoError<P>> {
        let mut cmd = cmd;
        crate::dma::sanitize_pointers(&mut cmd);
        self.submit_bytes(cmd, buffer, offset, len, tag)
    }

    /// The bytes `cmd` transfers by its own fields, for the namespace it names.
    fn described_length(&self, cmd: &Command) -> Result<usize> {
        match io_data_length(cmd) {
            DataLength::None => Ok(0),
            DataLength::Bytes(n) => Ok(n),
            DataLength::Blocks(n) => {
                let f = self.shared.format(cmd.nsid())?;
                Ok(n as usize * f.bytes_per_block as usize)
            }
            DataLength::Unknown | DataLength::Managed => Err(Error::UnknownTransfer {
                opcode: cmd.opcode(),
            }),
        }
    }

    /// Places a command whose transfer is `len` bytes of `buffer` from `offset`. The
    /// command's pointers are already clear (`crate::dma::sanitize_pointers` for a command the
    /// caller built, none set for one the core built).
    #[inline(always)]
    fn submit_bytes(
        &mut self,
        cmd: Command,
        buffer: Option<DmaBuffer<P>>,
        offset: usize,
        len: usize,
        tag: u64,
    ) -> core::result::Result<u16, IoError<P>> {
        debug_assert_eq!(cmd.prp1() | cmd.prp2() | cmd.mptr(), 0);
        if let Err(error) = self.check_alive() {
            return Err(IoError { error, buffer });
        }
        let data = match &buffer {
            Some(b) if !b.is_on(&self.shared.platform) => {
                // Its IOVA names other memory (or nothing) in this controller's address space.
                return Err(IoError {
                    error: Error::ForeignObject {
                        what: "the DMA buffer",
                    },
                    buffer,
                });
            }
            Some(b) => {
                if offset.checked_add(len).is_none_or(|e| e > b.len()) {
                    return Err(IoError {
                        error: Error::BufferSize {
                            need: offset.saturating_add(len),
                            have: b.len(),
                        },
                        buffer,
                    });
                }
                if len > self.max_transfer {
                    return Err(IoError {
                        error: Error::TransferTooLarge {
                            bytes: len as u64,
                            max: self.max_transfer as u64,
                        },
                        buffer,
                    });
                }
                Some(Transfer {
                    mem: b.mem(),
                    offset,
                    len,
                })
            }
            None => None,
        };
        let sync = core::mem::take(&mut self.next_sync);
        let xfer = (offset, if data.is_some() { len } else { 0 });
        let req = IoReq::new(tag, xfer, sync, NOT_FIXED);
        match self.engine.submit(cmd, data, req, None) {
            Ok(cid) => {
                self.keep(cid, buffer);
                Ok(cid)
            }
            Err((error, _)) => Err(IoError { error, buffer }),
        }
    }

    /// Places `cmd` with the data pointer the caller built into it (the raw SGL door,
    /// `crate::sgl::raw`): `buffer` moves into the request like any other and comes back
    /// with the completion.
    #[cfg(feature = "raw-access")]
    pub(crate) fn submit_prebuilt(
        &mut self,
        cmd: Command,
        buffer: DmaBuffer<P>,
        tag: u64,
    ) -> core::result::Result<u16, IoError<P>> {
        if let Err(error) = self.check_alive() {
            return Err(IoError {
                error,
                buffer: Some(buffer),
            });
        }
        if !buffer.is_on(&self.shared.platform) {
            return Err(IoError {
                error: Error::ForeignObject {
                    what: "the DMA buffer",
                },
                buffer: Some(buffer),
            });
        }
        let sync = core::mem::take(&mut self.next_sync);
        let req = IoReq::new(tag, (0, 0), sync, NOT_FIXED);
        match self.engine.submit(cmd, None, req, None) {
            Ok(cid) => {
                // Kept for resubmission after a reset, as every command is.
                self.keep(cid, Some(buffer));
                Ok(cid)
            }
            Err((error, _)) => Err(IoError {
                error,
                buffer: Some(buffer),
            }),
        }
    }

    /// Keeps the buffer of the command just placed as `cid` beside its slot (the engine
    /// keeps the command itself, for resubmission: `crate::recovery`).
    #[inline(always)]
    fn keep(&mut self, cid: u16, buffer: Option<DmaBuffer<P>>) {
        let i = self.engine.codec().decode(cid).0 as usize;
        if let Some(b) = self.bufs.get_mut(i) {
            debug_assert!(b.is_none(), "a free slot holds no buffer");
            *b = buffer;
        }
    }

    /// Writes the SQ tail doorbell for everything submitted since the last ring. After a
    /// controller reset, not before the controller re-created this pair's queues
    /// ([`crate::Controller::recover`]): until then the entries wait in the SQ.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// qp.submit_read(&ns, 0, ctrl.alloc_buffer(512)?, 0).map_err(|e| e.error)?;
    /// qp.submit_read(&ns, 1, ctrl.alloc_buffer(512)?, 1).map_err(|e| e.error)?;
    /// qp.ring(); // one SQ tail doorbell write for both
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn ring(&mut self) {
        if self.check_alive().is_err() {
            return;
        }
        // Only a pair revived after a reset waits for its queues: once they exist again
        // nothing changes until the next reset, which `check_alive` notices first.
        if self.awaiting_queues && !self.queues_back() {
            return;
        }
        self.engine.ring(self.shared.platform.bar());
    }

    /// After a revival: true once the controller re-created this pair's queues (the pair
    /// then rings again); dies if the controller could not.
    #[cold]
    #[inline(never)]
    fn queues_back(&mut self) -> bool {
        if let Some(r) = &self.record {
            // Acquire: pairs with the controller's Release once the queues exist again.
            if r.ready.load(Ordering::Acquire) != self.generation {
                if r.failed.load(Ordering::Acquire) {
                    self.die();
                }
                return false;
            }
        }
        // The queues exist again, in a controller that may or may not have its doorbell
        // buffer (§5.8) configured this time.
        self.engine
            .set_shadow(self.shared.shadow_doorbells(), false);
        self.awaiting_queues = false;
        true
    }

    /// Checks that `ns` is a current handle of this controller and that `nlb` blocks at
    /// `slba` lie inside it.
    #[inline(always)]
    fn lba_check(&self, ns: &Namespace, slba: u64, nlb: u32) -> Result<()> {
        lba_check(&self.shared, self.dead, self.generation, ns, slba, nlb)
    }

    #[inline(always)]
    fn data_cmd(
        &mut self,
        op: NvmOpcode,
        ns: &Namespace,
        slba: u64,
        buffer: DmaBuffer<P>,
        tag: u64,
        fua: bool,
    ) -> core::result::Result<u16, IoError<P>> {
        let len = buffer.len();
        let nlb = match blocks_of(ns, len) {
            Ok(n) => n,
            Err(error) => {
                return Err(IoError {
                    error,
                    buffer: Some(buffer),
                })
            }
        };
        if let Err(error) = self.lba_check(ns, slba, nlb) {
            return Err(IoError {
                error,
                buffer: Some(buffer),
            });
        }
        let cmd = Command::rw(op, ns.nsid(), slba, (nlb - 1) as u16, fua);
        // The length is NLB × bytes per block by construction, from a current handle.
        self.submit_bytes(cmd, Some(buffer), 0, len, tag)
    }

    /// Queues a Read (NVM §3.3.4) of `buffer.len() / lba_size` blocks at `slba` into
    /// `buffer` (its length must be a multiple of the LBA size).
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// for i in 0..4u64 {
    ///     // Queued, not yet rung: one doorbell write for the batch.
    ///     qp.submit_read(&ns, i * 8, ctrl.alloc_buffer(4096)?, i).map_err(|e| e.error)?;
    /// }
    /// qp.ring();
    /// let mut tags = Vec::new();
    /// while tags.len() < 4 {
    ///     qp.poll(|c| tags.push(c.tag))?;
    /// }
    /// tags.sort();
    /// assert_eq!(tags, [0, 1, 2, 3]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::LbaOutOfRange`], [`Error::TransferTooLarge`], [`Error::BufferSize`],
    /// [`Error::QueueFull`]; the buffer comes back in the error.
    pub fn submit_read(
        &mut self,
        ns: &Namespace,
        slba: u64,
        buffer: DmaBuffer<P>,
        tag: u64,
    ) -> core::result::Result<u16, IoError<P>> {
        self.data_cmd(NvmOpcode::READ, ns, slba, buffer, tag, false)
    }

    /// Queues a Write (NVM §3.3.6) of `buffer` at `slba`.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// let mut buf = ctrl.alloc_buffer(4096)?;
    /// buf.fill(0xa5);
    /// qp.submit_write(&ns, 64, buf, 7).map_err(|e| e.error)?;
    /// qp.ring();
    /// qp.wait(std::time::Duration::from_secs(1), |c| {
    ///     assert_eq!(c.tag, 7);
    ///     assert!(c.result.is_ok());
    ///     let _buffer_back = c.buffer;
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`IoQueuePair::submit_read`].
    pub fn submit_write(
        &mut self,
        ns: &Namespace,
        slba: u64,
        buffer: DmaBuffer<P>,
        tag: u64,
    ) -> core::result::Result<u16, IoError<P>> {
        self.data_cmd(NvmOpcode::WRITE, ns, slba, buffer, tag, false)
    }

    /// Queues a Compare (NVM §3.3.1) of `buffer` against the blocks at `slba`. A mismatch
    /// completes with Compare Failure (SCT 2h, SC 85h).
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// let mut b = ctrl.alloc_buffer(512)?;
    /// b.fill(9);
    /// let b = qp.write(&ns, 5, b)?;
    /// qp.submit_compare(&ns, 5, b, 1).map_err(|e| e.error)?;
    /// qp.ring();
    /// qp.wait(std::time::Duration::from_secs(1), |c| assert!(c.result.is_ok()))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`IoQueuePair::submit_read`].
    pub fn submit_compare(
        &mut self,
        ns: &Namespace,
        slba: u64,
        buffer: DmaBuffer<P>,
        tag: u64,
    ) -> core::result::Result<u16, IoError<P>> {
        self.data_cmd(NvmOpcode::COMPARE, ns, slba, buffer, tag, false)
    }

    /// Processes completions that have arrived, without waiting, handing each to `f`, and
    /// handles requests whose deadline passed: by the recovery policy, an Abort is requested
    /// from the controller ([`crate::Controller::recover`]) or the request is reported as
    /// [`Error::Timeout`]. A command the controller aborted on request is resubmitted while
    /// retries remain. Returns how many completions were delivered.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// qp.submit_read(&ns, 0, ctrl.alloc_buffer(512)?, 42).map_err(|e| e.error)?;
    /// qp.ring();
    /// let mut got = None;
    /// while got.is_none() {
    ///     qp.poll(|c| got = Some((c.tag, c.result.is_ok(), c.buffer)))?;
    /// }
    /// assert_eq!(got.as_ref().map(|g| (g.0, g.1)), Some((42, true)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// None today; the result leaves room for device errors.
    #[inline]
    pub fn poll(&mut self, f: impl FnMut(IoCompletion<P>)) -> Result<usize> {
        self.poll_into(&mut AsIo(f))
    }

    /// [`IoQueuePair::poll`] delivering to `d`.
    #[inline]
    fn poll_into<D: Deliver<P>>(&mut self, d: &mut D) -> Result<usize> {
        let mut n = 0;
        if !self.parked.is_empty() {
            n += self.deliver_parked(d);
        }
        if self.check_alive().is_err() {
            n += self.deliver_parked(d);
            return Ok(n);
        }
        n += self.service(d);
        if !self.parked.is_empty() {
            n += self.deliver_parked(d);
        }
        Ok(n)
    }

    /// Offers every parked completion to `d` once (what it does not take stays parked).
    fn deliver_parked<D: Deliver<P>>(&mut self, d: &mut D) -> usize {
        let mut n = 0;
        for _ in 0..self.parked.len() {
            let Some(c) = self.parked.pop_front() else {
                break;
            };
            n += usize::from(d.completion(c, &mut self.parked));
        }
        n
    }

    /// One round of completion processing: reap (resubmitting what recovery aborted), then
    /// deadlines with one clock reading. Delivers to `d`; returns how many.
    #[inline]
    fn service<D: Deliver<P>>(&mut self, d: &mut D) -> usize {
        let mut n = 0;
        self.clock_read_ns = None;
        if self.awaiting_queues {
            // Rings what was resubmitted after the reset once the queues exist again.
            self.ring();
        }
        let bar = self.shared.platform.bar();
        let max = self.policy.retries;
        let (retry, engine) = (&mut self.retry, &mut self.engine);
        let (fixed, parked, bufs) = (&mut self.fixed, &mut self.parked, &mut self.bufs);
        engine.reap(bar, usize::MAX, |r| {
            let st = r.completion.status();
            // Command Abort Requested (§5.1.1, SCT 0h SC 07h) after a timeout: resubmit while
            // retries remain, never with DNR set (§4.2.3).
            if !r.payload.timed_out
                && st.is(StatusCodeType::GENERIC, generic::ABORT_REQUESTED)
                && !st.dnr()
                && r.payload.retries < max
            {
                let mut req = r.payload;
                req.retries += 1;
                retry.push((
                    req,
                    crate::engine::bare(r.cmd),
                    bufs.get_mut(r.slot as usize).and_then(Option::take),
                ));
                return;
            }
            if r.payload.fixed != NOT_FIXED {
                // The device is done with the registered buffer.
                fixed.release(r.payload.fixed);
                if !r.payload.timed_out {
                    n += usize::from(d.fixed(FixedCompletion {
                        tag: r.payload.tag,
                        dw0: r.completion.dw0(),
                        cid: r.cid,
                        buffer: FixedBuf(r.payload.fixed),
                        result: Self::result_of(&r.completion, r.opcode),
                    }));
                }
                return;
            }
            // The buffer comes back with the completion (or, for a request already
            // reported as timed out, is freed: the device is done with it).
            let buffer = bufs.get_mut(r.slot as usize).and_then(Option::take);
            if let Some(c) = Self::to_completion(r, buffer) {
                n += usize::from(d.completion(c, parked));
            }
        });
        if !self.retry.is_empty() && self.resubmit() {
            self.ring();
        }
        // Deadlines are checked on every poll, whatever was reaped: one clock reading per
        // call (none when idle), none per command.
        if self.engine.outstanding() > 0 {
            let now = self.shared.now_ns();
            self.clock_read_ns = Some(now);
            if self.engine.due(now) && self.device_is_gone() {
                // A deadline passed because the device is gone (§3.1.4: all-ones): say that,
                // not a timeout.
                self.gone();
                n += self.deliver_parked(d);
                return n;
            }
            let qid = self.qid();
            let waited_ms = self.shared.io_timeout_ns / 1_000_000;
            let policy = self.policy;
            let abort_ns = policy
                .abort
                .then(|| u64::try_from(policy.abort_timeout.as_nanos()).unwrap_or(u64::MAX));
            let mailbox = &self.shared.mailbox;
            let parked = &mut self.parked;
            self.engine.expire(now, abort_ns, |e| match e {
                Expiry::Abort { cid } => mailbox.request_abort(qid, cid),
                Expiry::Timeout {
                    cid,
                    opcode,
                    payload,
                } => {
                    if policy.reset {
                        mailbox.request_reset();
                    }
                    payload.timed_out = true;
                    let c = IoCompletion {
                        tag: payload.tag,
                        cid,
                        result: Err(Error::Timeout {
                            qid,
                            cid,
                            opcode,
                            waited_ms,
                        }),
                        dw0: 0,
                        buffer: None,
                        sync: payload.sync,
                        fixed: payload.fixed,
                    };
                    n += usize::from(d.completion(c, parked));
                }
            });
        }
        n
    }

    #[inline(always)]
    fn to_completion(r: Reaped<IoReq<P>>, buffer: Option<DmaBuffer<P>>) -> Option<IoCompletion<P>> {
        if r.payload.timed_out {
            // Already reported as timed out; the device is done with the buffer now, so it
            // is freed here.
            return None;
        }
        Some(IoCompletion {
            tag: r.payload.tag,
            cid: r.cid,
            result: Self::result_of(&r.completion, r.opcode),
            dw0: r.completion.dw0(),
            buffer,
            sync: r.payload.sync,
            fixed: NOT_FIXED,
        })
    }

    /// The result a device completion of an `opcode` command reports (§4.2.3).
    #[inline(always)]
    fn result_of(c: &Completion, opcode: u8) -> Result<()> {
        let st: Status = c.status();
        if st.is_success() {
            Ok(())
        } else {
            Err(Error::Command {
                opcode,
                opcode_name: NvmOpcode(opcode).name().unwrap_or("I/O command"),
                status: st,
                dw0: c.dw0(),
            })
        }
    }

    /// Waits until at least one completion (or timeout report) is delivered, or `timeout`
    /// passes; uses the CQ's interrupt vector when there is one, else polls. Reads the clock
    /// once per turn: the poll's reading when it took one, else one of its own.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// use std::time::Duration;
    /// qp.submit_read(&ns, 0, ctrl.alloc_buffer(512)?, 0).map_err(|e| e.error)?;
    /// qp.ring();
    /// // Sleeps on the queue's MSI-X vector if it has one, else polls.
    /// let n = qp.wait(Duration::from_secs(1), |c| assert!(c.result.is_ok()))?;
    /// assert_eq!(n, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::DeviceGone`] (everything outstanding is failed the same way first).
    pub fn wait(&mut self, timeout: Duration, f: impl FnMut(IoCompletion<P>)) -> Result<usize> {
        self.wait_into(timeout, &mut AsIo(f))
    }

    /// [`IoQueuePair::wait`] delivering to `d`.
    fn wait_into<D: Deliver<P>>(&mut self, timeout: Duration, d: &mut D) -> Result<usize> {
        let p = self.shared.platform.clone();
        let deadline = crate::hw::Deadline::after(p.clock(), timeout);
        let spin = self.spin_phase();
        let mut spins: u32 = 0;
        loop {
            self.clock_read_ns = None;
            let n = self.poll_into(d)?;
            if n > 0 || self.dead {
                return Ok(n);
            }
            let now = match self.clock_read_ns {
                Some(t) => t,
                None => p.clock().now_ns(),
            };
            if deadline.expired_at(now) {
                return Ok(0);
            }
            spins = spins.wrapping_add(1);
            if spins % 256 == 0 {
                if let Err(e) = self.check_device() {
                    self.deliver_parked(d);
                    return Err(e);
                }
            }
            match self.vector {
                Some(_) if spin.spinning(p.clock()) => p.clock().relax(),
                Some(v) => {
                    p.irq()
                        .wait(v, deadline.remaining_at(now).min(Duration::from_millis(10)));
                }
                None => p.clock().relax(),
            }
        }
    }

    /// The spin phase of a hybrid wait on this pair's vector (`crate::interrupts`); none
    /// when polled.
    fn spin_phase(&self) -> crate::interrupts::Spin {
        let ns = match self.vector {
            Some(_) => self.shared.irq_spin_ns.load(Ordering::Relaxed),
            None => 0,
        };
        crate::interrupts::Spin::start(self.shared.platform.clock(), ns)
    }

    /// Reads CSTS while waiting. All-ones: the device is gone (§3.1.4): every outstanding
    /// request fails with [`Error::DeviceGone`] and keeps its buffer retired (a device that
    /// is somehow still there could write it), and the pair is dead. CSTS.CFS (§9.5): the
    /// controller is asked for a reset when the policy allows, else reported.
    fn check_device(&mut self) -> Result<()> {
        let csts = crate::spec::Csts(
            self.shared
                .platform
                .bar()
                .read32(crate::spec::regs::offset::CSTS),
        );
        if csts.is_all_ones() {
            self.gone();
            return Err(Error::DeviceGone);
        }
        if csts.cfs() {
            if self.policy.reset {
                self.shared.mailbox.request_reset();
                return Ok(());
            }
            return Err(Error::ControllerFatal);
        }
        Ok(())
    }

    /// CSTS reads all-ones: the device is gone (surprise removal, §3.1.4).
    fn device_is_gone(&self) -> bool {
        crate::spec::Csts(
            self.shared
                .platform
                .bar()
                .read32(crate::spec::regs::offset::CSTS),
        )
        .is_all_ones()
    }

    /// Surprise removal: everything outstanding fails with [`Error::DeviceGone`]; buffers are
    /// retired (freed only if the controller is ever disabled), never handed back.
    fn gone(&mut self) {
        if self.dead {
            return;
        }
        self.dead = true;
        self.alive_in = u64::MAX;
        let (shared, generation) = (self.shared.clone(), self.generation);
        let (parked, engine, fixed) = (&mut self.parked, &mut self.engine, &mut self.fixed);
        let (bufs, codec) = (&mut self.bufs, engine.codec());
        engine.take_all(|cid, req, _| {
            let (tag, sync, reported, fixed_id) = (req.tag, req.sync, req.timed_out, req.fixed);
            req.retire(take_buf(bufs, codec, cid), &shared, generation, fixed);
            if !reported {
                parked.push_back(IoCompletion {
                    tag,
                    cid,
                    result: Err(Error::DeviceGone),
                    dw0: 0,
                    buffer: None,
                    sync,
                    fixed: fixed_id,
                });
            }
        });
    }

    /// Submits, rings and waits for one command; other completions are parked for the next
    /// [`IoQueuePair::poll`]. The request is followed by its blocking-call identifier `id`
    /// across resubmissions (its CID may change).
    fn run(
        &mut self,
        id: u64,
        submitted: core::result::Result<u16, IoError<P>>,
    ) -> core::result::Result<(u32, Option<DmaBuffer<P>>), IoError<P>> {
        self.next_sync = 0;
        submitted?;
        self.ring();
        let p = self.shared.platform.clone();
        let spin = self.spin_phase();
        let mut spins: u32 = 0;
        loop {
            if let Err(error) = self.check_alive() {
                // Our request was among those failed by the reset: it's in `parked`.
                let buffer = self.take_parked(id).and_then(|c| c.buffer);
                return Err(IoError { error, buffer });
            }
            let mut mine: Option<IoCompletion<P>> = None;
            let mut parked = core::mem::take(&mut self.parked);
            self.service(&mut AsIo(|c: IoCompletion<P>| {
                if c.sync == id && mine.is_none() {
                    mine = Some(c);
                } else {
                    parked.push_back(c);
                }
            }));
            // Completions `service` failed on its own (resubmissions that could not be placed)
            // went to `self.parked`; ours may be among them.
            parked.extend(self.parked.drain(..));
            self.parked = parked;
            if mine.is_none() {
                mine = self.take_parked(id);
            }
            if let Some(c) = mine {
                return match c.result {
                    Ok(()) => Ok((c.dw0, c.buffer)),
                    Err(error) => Err(IoError {
                        error,
                        buffer: c.buffer,
                    }),
                };
            }
            spins = spins.wrapping_add(1);
            if spins % 256 == 0 {
                if let Err(error) = self.check_device() {
                    let buffer = self.take_parked(id).and_then(|c| c.buffer);
                    return Err(IoError { error, buffer });
                }
            }
            match self.vector {
                Some(_) if spin.spinning(p.clock()) => p.clock().relax(),
                Some(v) => {
                    p.irq().wait(v, Duration::from_millis(10));
                }
                None => p.clock().relax(),
            }
        }
    }

    /// Starts a blocking call: the next submission carries identifier `id`.
    fn begin_sync(&mut self) -> u64 {
        self.sync_seq += 1;
        self.next_sync = self.sync_seq;
        self.sync_seq
    }

    fn with_buffer(
        (_, b): (u32, Option<DmaBuffer<P>>),
    ) -> core::result::Result<DmaBuffer<P>, IoError<P>> {
        b.ok_or(IoError {
            error: Error::Backend("a data command lost its buffer"),
            buffer: None,
        })
    }

    fn take_parked(&mut self, id: u64) -> Option<IoCompletion<P>> {
        let i = self.parked.iter().position(|c| c.sync == id)?;
        self.parked.remove(i)
    }

    /// Reads `buffer.len() / lba_size` blocks at `slba` and waits. The buffer comes back
    /// filled.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// let buf = qp.read(&ns, 0, ctrl.alloc_buffer(8192)?)?; // 16 blocks of 512 bytes
    /// assert_eq!(buf.len(), 8192);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Validation errors before submission; [`Error::Command`] with the device's status;
    /// [`Error::Timeout`] (then the buffer stays with the queue).
    pub fn read(
        &mut self,
        ns: &Namespace,
        slba: u64,
        buffer: DmaBuffer<P>,
    ) -> core::result::Result<DmaBuffer<P>, IoError<P>> {
        let id = self.begin_sync();
        let s = self.submit_read(ns, slba, buffer, SYNC_TAG);
        self.run(id, s).and_then(Self::with_buffer)
    }

    /// Writes `buffer` at `slba` and waits.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// let mut buf = ctrl.alloc_buffer(512)?;
    /// buf.write(0, b"block zero")?;
    /// let buf = qp.write(&ns, 0, buf)?; // the buffer comes back for reuse
    /// assert_eq!(&qp.read(&ns, 0, buf)?.to_vec()[..10], b"block zero");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`IoQueuePair::read`].
    pub fn write(
        &mut self,
        ns: &Namespace,
        slba: u64,
        buffer: DmaBuffer<P>,
    ) -> core::result::Result<DmaBuffer<P>, IoError<P>> {
        let id = self.begin_sync();
        let s = self.submit_write(ns, slba, buffer, SYNC_TAG);
        self.run(id, s).and_then(Self::with_buffer)
    }

    /// Compares `buffer` with the blocks at `slba` and waits; `Ok(false)` on Compare
    /// Failure.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// let mut buf = ctrl.alloc_buffer(512)?;
    /// buf.fill(3);
    /// let buf = qp.write(&ns, 9, buf)?;
    /// let (same, mut buf) = qp.compare(&ns, 9, buf)?;
    /// assert!(same);
    /// buf.fill(4);
    /// assert!(!qp.compare(&ns, 9, buf)?.0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`IoQueuePair::read`], except that Compare Failure is `Ok((false, buffer))`.
    pub fn compare(
        &mut self,
        ns: &Namespace,
        slba: u64,
        buffer: DmaBuffer<P>,
    ) -> core::result::Result<(bool, DmaBuffer<P>), IoError<P>> {
        let id = self.begin_sync();
        let s = self.submit_compare(ns, slba, buffer, SYNC_TAG);
        match self.run(id, s) {
            Ok(r) => Self::with_buffer(r).map(|b| (true, b)),
            Err(IoError {
                error: Error::Command { status, .. },
                buffer: Some(b),
            }) if status.is(
                crate::spec::StatusCodeType::MEDIA,
                crate::spec::status::media::COMPARE_FAILURE,
            ) =>
            {
                Ok((false, b))
            }
            Err(e) => Err(e),
        }
    }

    /// Flush (NVM §3.3.2): commits the volatile write cache of namespace `nsid`
    /// (`0xFFFF_FFFF` for all namespaces).
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// qp.write(&ns, 0, ctrl.alloc_buffer(512)?)?;
    /// qp.flush(ns.nsid())?; // on non-volatile media now
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`IoQueuePair::read`].
    pub fn flush(&mut self, nsid: u32) -> Result<()> {
        let id = self.begin_sync();
        let s = self.submit(Command::flush(nsid), None, SYNC_TAG);
        self.run(id, s).map(|_| ()).map_err(Error::from)
    }

    /// Write Zeroes (NVM §3.3.8) of `nlb` blocks at `slba`; `deallocate` sets DEAC.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// qp.write_zeroes(&ns, 0, 128, false)?;
    /// assert!(qp.read(&ns, 0, ctrl.alloc_buffer(512)?)?.to_vec().iter().all(|&b| b == 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`IoQueuePair::read`].
    pub fn write_zeroes(
        &mut self,
        ns: &Namespace,
        slba: u64,
        nlb: u32,
        deallocate: bool,
    ) -> Result<()> {
        self.lba_check(ns, slba, nlb)?;
        let id = self.begin_sync();
        let s = self.submit(
            Command::write_zeroes(ns.nsid(), slba, (nlb - 1) as u16, deallocate),
            None,
            SYNC_TAG,
        );
        self.run(id, s).map(|_| ()).map_err(Error::from)
    }

    /// Verify (NVM §3.3.7) of `nlb` blocks at `slba`: the controller checks the data without
    /// transferring it.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// qp.verify(&ns, 0, 64)?; // the controller checks the blocks; nothing is transferred
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`IoQueuePair::read`].
    pub fn verify(&mut self, ns: &Namespace, slba: u64, nlb: u32) -> Result<()> {
        self.lba_check(ns, slba, nlb)?;
        let id = self.begin_sync();
        let s = self.submit(
            Command::verify(ns.nsid(), slba, (nlb - 1) as u16),
            None,
            SYNC_TAG,
        );
        self.run(id, s).map(|_| ()).map_err(Error::from)
    }

    /// Dataset Management with the Deallocate attribute (NVM §3.3.3): up to 256 ranges.
    /// The range list is built in a buffer allocated for the call.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// use nvme_core::DsmRange;
    /// qp.deallocate(&ns, &[DsmRange { slba: 0, nlb: 1024, attributes: 0 }])?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for 0 or more than 256 ranges, [`Error::LbaOutOfRange`],
    /// and as [`IoQueuePair::read`].
    pub fn deallocate(&mut self, ns: &Namespace, ranges: &[DsmRange]) -> Result<()> {
        if ranges.is_empty() || ranges.len() > 256 {
            return Err(Error::InvalidArgument(
                "Dataset Management takes 1..=256 ranges",
            ));
        }
        // A range names up to 2^32 - 1 blocks (NVM Command Set §3.3.3), not the 65,536 of NLB.
        for r in ranges {
            self.check_extent(ns, r.slba, r.nlb as u64)?;
        }
        let mut buf = self.alloc_buffer(PAGE_SIZE)?;
        for (i, r) in ranges.iter().enumerate() {
            let mut e = [0u8; 16];
            e[0..4].copy_from_slice(&r.attributes.to_le_bytes());
            e[4..8].copy_from_slice(&r.nlb.to_le_bytes());
            e[8..16].copy_from_slice(&r.slba.to_le_bytes());
            buf.write(i * 16, &e)?;
        }
        let cmd = Command::dataset_management(ns.nsid(), (ranges.len() - 1) as u8, true);
        let id = self.begin_sync();
        let s = self.submit_range(cmd, Some(buf), 0, Some(ranges.len() * 16), SYNC_TAG);
        self.run(id, s).map(|_| ()).map_err(Error::from)
    }

    /// Runs any I/O command the core knows and waits; returns the completion DW0 and the
    /// buffer. The transfer length comes from the command (see [`IoQueuePair::submit`]).
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// use nvme_core::spec::{Command, NvmOpcode};
    /// let cmd = Command::rw(NvmOpcode::READ, ns.nsid(), 0, 0, false);
    /// let (_dw0, buf) = qp.passthrough(cmd, Some(ctrl.alloc_buffer(512)?)).map_err(|e| e.error)?;
    /// assert!(buf.is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`IoQueuePair::submit`] and [`IoQueuePair::read`].
    pub fn passthrough(
        &mut self,
        cmd: Command,
        buffer: Option<DmaBuffer<P>>,
    ) -> core::result::Result<(u32, Option<DmaBuffer<P>>), IoError<P>> {
        let id = self.begin_sync();
        let s = self.submit(cmd, buffer, SYNC_TAG);
        self.run(id, s)
    }

    /// Runs any I/O command and waits, with PRPs for the whole buffer: for opcodes the core
    /// does not know (vendor-specific commands).
    ///
    /// # Safety
    /// As [`IoQueuePair::submit_unchecked`], with `len` the buffer's length.
    ///
    /// # Errors
    /// As [`IoQueuePair::read`].
    pub unsafe fn passthrough_unchecked(
        &mut self,
        cmd: Command,
        buffer: Option<DmaBuffer<P>>,
    ) -> core::result::Result<(u32, Option<DmaBuffer<P>>), IoError<P>> {
        let len = buffer.as_ref().map_or(0, DmaBuffer::len);
        let id = self.begin_sync();
        // SAFETY: forwarded from this function's contract.
        let s = unsafe { self.submit_unchecked(cmd, buffer, 0, len, SYNC_TAG) };
        self.run(id, s)
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl<P: Platform> IoQueuePair<P> {
    /// A queue pair attached to no controller, for driving the completion path against a
    /// fake (hostile) device in fuzzers: the caller plays the device, reading SQ entries at
    /// [`IoQueuePair::sq_iova`] and writing completions at [`IoQueuePair::cq_iova`]. No admin
    /// command is sent. Only with the `fuzzing` feature.
    ///
    /// # Errors
    /// DMA allocation failures.
    pub fn detached(
        platform: Arc<P>,
        qid: u16,
        entries: u16,
        max_transfer: usize,
        io_timeout: Duration,
    ) -> Result<Self> {
        use crate::queue::{CompQueue, SubQueue};
        let entries = entries.max(2);
        let timeout_ns = u64::try_from(io_timeout.as_nanos()).unwrap_or(u64::MAX);
        let shared = Arc::new(Shared::new(
            platform.clone(),
            0,
            timeout_ns,
            RecoveryPolicy::REPORT_ONLY,
        ));
        let lists_per_slot = crate::prp::max_list_pages(max_transfer, PAGE_SIZE);
        let (sq, cq, lists) = crate::reclaim::allocate_rings(&*platform, entries, lists_per_slot)?;
        let engine = Engine::new(
            SubQueue::new(sq, qid, entries, 0),
            CompQueue::new(cq, qid, entries, 0),
            lists,
            lists_per_slot,
            Some(timeout_ns),
        );
        Ok(Self::new(shared, engine, None, max_transfer, 0, None))
    }
    /// Declares namespace `nsid` with `blocks` logical blocks of `lba_size` bytes on the fake
    /// device and returns its handle (a detached pair has no controller to identify it).
    pub fn detached_namespace(&mut self, nsid: u32, blocks: u64, lba_size: u32) -> Namespace {
        let mut id = crate::spec::IdentifyNamespace {
            nsze: blocks,
            ncap: blocks,
            nuse: blocks,
            nlbaf_z: 0,
            flbas: 0,
            ..Default::default()
        };
        id.lbaf[0] = crate::spec::LbaFormat {
            ms: 0,
            lbads: lba_size.max(512).trailing_zeros() as u8,
            rp: 0,
        };
        let epoch = self.shared.ns_epoch.load(Ordering::Acquire);
        let ns = Namespace::from_identify(nsid, id, self.shared.id, epoch)
            .unwrap_or_else(|_| unreachable!("LBADS is at least 9"));
        let mut f = self.shared.formats.lock();
        f.retain(|x| x.nsid != nsid);
        f.push(ns.format());
        ns
    }
    /// Bus address of the SQ ring.
    pub fn sq_iova(&self) -> u64 {
        self.engine.sq.mem().iova()
    }
    /// Bus address of the CQ ring.
    pub fn cq_iova(&self) -> u64 {
        self.engine.cq.mem().iova()
    }
    /// Declares the fake device stopped (as a controller disable would): everything
    /// outstanding is failed and handed back, and the rings are freed on drop.
    pub fn detach_device(&mut self) {
        self.shared.reclaim.device_stopped(&*self.shared.platform);
    }
}

impl<P: Platform> Drop for IoQueuePair<P> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // A pair dropped without `Controller::delete_io_queue_pair`: the device may still
        // own its rings and buffers, so they go to the graveyard (freed at the next disable),
        // or are freed now if a reset already cut the device off.
        self.release(false);
    }
}

#[cfg(test)]
mod tests {
    //! Regression tests for defects found by `fuzz/` (target `hostile_device`), on a
    //! detached queue pair with heap DMA memory; the test plays the device.
    use super::*;
    use std::vec::Vec;

    use crate::testing::TestPlatform;

    fn poll_all(qp: &mut IoQueuePair<TestPlatform>) -> Vec<(u64, Result<()>, bool)> {
        let mut out = Vec::new();
        qp.poll(|c| out.push((c.tag, c.result, c.buffer.is_some())))
            .unwrap();
        out
    }

    /// Found by `fuzz/` (hostile_device): a request reported as timed out was reported a
    /// second time, as `ControllerReset` with its buffer, once the controller was reset.
    #[test]
    fn timed_out_request_is_not_reported_again_after_reset() {
        let p = Arc::new(TestPlatform::default());
        let mut qp =
            IoQueuePair::detached(p.clone(), 1, 4, 4096, Duration::from_millis(1)).unwrap();
        let ns = qp.detached_namespace(1, 64, 512);
        let buf = qp.alloc_buffer(4096).unwrap();
        qp.submit_read(&ns, 0, buf, 7).unwrap();
        qp.ring();
        // The first poll dates the command (deadlines cost no clock reading at submission).
        assert!(poll_all(&mut qp).is_empty());
        p.clock.0.store(2_000_000, Ordering::SeqCst);
        let first = poll_all(&mut qp);
        assert_eq!(first.len(), 1);
        assert!(matches!(first[0], (7, Err(Error::Timeout { .. }), false)));
        qp.detach_device();
        assert!(
            poll_all(&mut qp).is_empty(),
            "the request was already finished"
        );
        assert_eq!(qp.outstanding(), 0);
        drop(qp);
        assert!(p.dma.live() == 0, "buffer or rings leaked");
    }

    /// Deadlines come from the last clock reading: never more than 1/16 of the timeout
    /// early while polls are frequent, and re-dated from a fresh reading after a pause in
    /// polling (a command submitted after an idle hour does not time out at once).
    #[test]
    fn deadlines_are_dated_from_recent_clock_readings() {
        let p = Arc::new(TestPlatform::default());
        let ms = 1_000_000u64;
        let set = |t: u64| p.clock.0.store(t, core::sync::atomic::Ordering::Relaxed);
        set(1_000 * ms);
        let mut qp =
            IoQueuePair::detached(p.clone(), 1, 8, 4096, Duration::from_millis(1600)).unwrap();
        qp.detached_namespace(1, 64, 512);
        let read = |qp: &mut IoQueuePair<TestPlatform>, tag| {
            let buf = qp.alloc_buffer(512).unwrap();
            qp.submit(Command::rw(NvmOpcode::READ, 1, 0, 0, false), Some(buf), tag)
                .unwrap();
        };
        // Submitted before any reading: dated by the first poll (t = 1 s).
        read(&mut qp, 1);
        assert!(poll_all(&mut qp).is_empty());
        // An hour without polls, then a submission: the reading before it is stale, so the
        // next poll re-dates it from itself.
        set(3_600_000 * ms);
        read(&mut qp, 2);
        let done = poll_all(&mut qp);
        assert_eq!(done.len(), 1, "only the first command is past its deadline");
        assert!(matches!(done[0], (1, Err(Error::Timeout { .. }), false)));
        // Frequent polls (50 ms apart, under 1600 / 16 = 100 ms): a command takes the last
        // reading, here 30 ms before its submission, so it is due 1570 ms after it.
        let t = 3_600_000 * ms;
        set(t + 50 * ms);
        assert!(poll_all(&mut qp).is_empty());
        set(t + 80 * ms);
        read(&mut qp, 3);
        set(t + 100 * ms);
        assert!(poll_all(&mut qp).is_empty());
        set(t + 1_599 * ms);
        assert!(
            poll_all(&mut qp).is_empty(),
            "command 2 is due at t + 1600 ms"
        );
        set(t + 1_610 * ms);
        let done = poll_all(&mut qp);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, 2);
        set(t + 1_649 * ms);
        assert!(
            poll_all(&mut qp).is_empty(),
            "command 3 is due at t + 1650 ms"
        );
        set(t + 1_650 * ms);
        let done = poll_all(&mut qp);
        assert_eq!(done.len(), 1, "30 ms early: within 1/16 of the timeout");
        assert_eq!(done[0].0, 3);
        qp.detach_device();
        drop(qp);
        assert!(p.dma.live() == 0);
    }

    /// The test plays the device: writes completion entry `c` at CQ slot `idx`.
    fn post(qp: &IoQueuePair<TestPlatform>, idx: usize, c: crate::spec::Completion) {
        let p = (qp.cq_iova() as usize + idx * 16) as *mut u8;
        let b = c.to_le_bytes();
        // SAFETY: the test platform's IOVA is the CPU address; slot `idx` lies inside the CQ
        // ring, which is live while `qp` is; nothing else accesses it during the copy.
        unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), p, 16) };
    }

    /// The test plays the device: reads SQ entry `idx`.
    fn fetch(qp: &IoQueuePair<TestPlatform>, idx: usize) -> Command {
        let p = (qp.sq_iova() as usize + idx * 64) as *const [u8; 64];
        // SAFETY: the test platform's IOVA is the CPU address; entry `idx` lies inside the SQ
        // ring, which is live while `qp` is; the queue pair writes it only on submission.
        Command::from_le_bytes(unsafe { &p.read_volatile() })
    }

    /// A command the device asks to be resubmitted (Command Abort Requested, NVMe Base
    /// §5.1.1) goes back into the SQ from the copy its slot kept: same command, a fresh CID,
    /// the data pointer placed again for the same buffer; the buffer comes back once, with
    /// the second completion.
    #[test]
    fn abort_requested_command_is_resubmitted_from_its_slot() {
        let p = Arc::new(TestPlatform::default());
        let mut qp = IoQueuePair::detached(p.clone(), 1, 4, 8192, Duration::from_secs(1)).unwrap();
        qp.policy.retries = 1;
        let ns = qp.detached_namespace(1, 64, 512);
        let buf = qp.alloc_buffer(8192).unwrap();
        let iova = buf.mem().iova();
        let cid = qp.submit_read(&ns, 5, buf, 9).unwrap();
        qp.ring();
        let first = fetch(&qp, 0);
        assert_eq!((first.cid(), first.prp1(), first.psdt()), (cid, iova, 0));
        let abort = Status::generic(generic::ABORT_REQUESTED, false);
        post(&qp, 0, Completion::new(0, 0, 1, 1, cid, true, abort));
        assert!(poll_all(&mut qp).is_empty(), "resubmitted, not reported");
        assert_eq!(qp.stats().retried, 1);
        let again = fetch(&qp, 1);
        assert_ne!(again.cid(), cid, "a fresh CID");
        assert_eq!(
            (again.opcode(), again.nsid(), again.cdw10(), again.cdw12()),
            (NvmOpcode::READ.0, 1, 5, 15),
            "the same Read: SLBA 5, 16 blocks"
        );
        assert_eq!(
            (again.prp1(), again.prp2(), again.psdt()),
            (iova, iova + 4096, 0)
        );
        qp.ring();
        let ok = Status::SUCCESS;
        post(&qp, 1, Completion::new(0, 0, 2, 1, again.cid(), true, ok));
        let done = poll_all(&mut qp);
        assert_eq!(done.len(), 1);
        assert!(matches!(done[0], (9, Ok(()), true)));
        assert_eq!(qp.outstanding(), 0);
        qp.detach_device();
        drop(qp);
        assert!(p.dma.live() == 0);
    }

    /// Found by `fuzz/` (hostile_device): a completion naming a command whose SQ entry was
    /// not yet covered by a doorbell was accepted, handing back a buffer the device would
    /// reach as soon as the doorbell was written.
    #[test]
    fn completion_for_a_command_behind_the_doorbell_is_rejected() {
        let p = Arc::new(TestPlatform::default());
        let mut qp = IoQueuePair::detached(p.clone(), 1, 4, 4096, Duration::from_secs(1)).unwrap();
        qp.detached_namespace(1, 64, 512);
        let buf = qp.alloc_buffer(4096).unwrap();
        let cid = qp
            .submit(Command::rw(NvmOpcode::READ, 1, 0, 7, false), Some(buf), 1)
            .unwrap();
        let ok = |phase| crate::spec::Completion::new(0, 0, 1, 1, cid, phase, Status::SUCCESS);
        post(&qp, 0, ok(true));
        assert!(
            poll_all(&mut qp).is_empty(),
            "completed before the doorbell"
        );
        assert_eq!(qp.stats().bad_cid, 1);
        assert!(qp.is_outstanding(cid));
        qp.ring();
        post(&qp, 1, ok(true));
        let done = poll_all(&mut qp);
        assert_eq!(done.len(), 1);
        assert!(matches!(done[0], (1, Ok(()), true)));
        qp.detach_device();
        drop(qp);
        assert!(p.dma.live() == 0);
    }
}

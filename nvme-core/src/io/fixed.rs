//! Registered ("fixed") buffers: DMA buffers that stay with a queue pair and are named by an
//! index in each command, instead of moving into the request and back out with its
//! completion.
//!
//! A buffer is registered once ([`IoQueuePair::register_buffer`]); commands on it
//! ([`IoQueuePair::submit_read_fixed`], [`IoQueuePair::submit_write_fixed`]) carry its
//! [`FixedBuf`] index, and [`IoQueuePair::poll_fixed`] delivers a small [`FixedCompletion`]
//! (tag, CID, DW0, index, result). This is the leanest path through the core: no buffer
//! ownership moves per command and no 120-byte [`IoCompletion`] per completion.
//!
//! Safety is kept by the table, not by ownership: while a command on a registered buffer is
//! outstanding the buffer is *busy*, and [`IoQueuePair::fixed_buffer`],
//! [`IoQueuePair::fixed_buffer_mut`] and [`IoQueuePair::unregister_buffer`] refuse it; a
//! second command on a busy buffer is refused. A buffer becomes free again when the device
//! completes the command, or when the device can no longer reach it (the queues were deleted
//! or the controller was reset and its queues discarded). A command that timed out keeps its
//! buffer busy until the device's late completion or such a teardown; where the device might
//! still write it forever (surprise removal, a pair dropped without deleting its queues), the
//! buffer leaves the table and is retired (`crate::reclaim`), never handed back.
//!
//! Completions of owned-buffer requests reaped by [`IoQueuePair::poll_fixed`] are parked for
//! the next [`IoQueuePair::poll`]; completions of registered-buffer requests reaped by
//! [`IoQueuePair::poll`] or [`IoQueuePair::wait`] come as an [`IoCompletion`] with `buffer:
//! None` (the buffer stays registered and is free again).

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::time::Duration;

use super::{IoCompletion, IoQueuePair, IoReq};
use crate::dma::DmaBuffer;
use crate::engine::Transfer;
use crate::error::{Error, Result};
use crate::hw::Platform;
use crate::namespace::Namespace;
use crate::shared::Shared;
use crate::spec::{Command, NvmOpcode};

/// The index of a buffer registered with one queue pair ([`IoQueuePair::register_buffer`]).
/// It means nothing to another pair (there it names that pair's own buffer of the same
/// index, if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FixedBuf(pub(crate) u16);

impl FixedBuf {
    /// The index in the pair's table.
    pub const fn index(self) -> u16 {
        self.0
    }
}

/// `IoReq::fixed` and `IoCompletion::fixed` of a request that owns its buffer (or has none).
pub(crate) const NOT_FIXED: u16 = u16::MAX;

/// Most buffers one pair can register.
pub const MAX_FIXED_BUFFERS: usize = NOT_FIXED as usize;

/// The outcome of a command on a registered buffer.
#[derive(Debug)]
pub struct FixedCompletion {
    /// The caller's tag given at submission.
    pub tag: u64,
    /// Completion DW0.
    pub dw0: u32,
    /// The command ID used.
    pub cid: u16,
    /// The registered buffer the command used. It is free again unless `result` is
    /// [`Error::Timeout`] (then it stays busy until the device lets go of it).
    pub buffer: FixedBuf,
    /// `Ok` for Successful Completion; [`Error::Command`] with the status otherwise;
    /// [`Error::Timeout`], [`Error::ControllerReset`] or [`Error::DeviceGone`] as for
    /// [`IoCompletion::result`].
    pub result: Result<()>,
}

impl FixedCompletion {
    /// The completion of a registered-buffer request that ended off the fast path (parked
    /// as an [`IoCompletion`]).
    pub(crate) fn from_parked<P: Platform>(c: IoCompletion<P>) -> Self {
        Self {
            tag: c.tag,
            dw0: c.dw0,
            cid: c.cid,
            buffer: FixedBuf(c.fixed),
            result: c.result,
        }
    }
    /// As an [`IoCompletion`] (for [`IoQueuePair::poll`]): no buffer, the index recorded.
    pub(crate) fn into_io<P: Platform>(self, sync: u64) -> IoCompletion<P> {
        IoCompletion {
            tag: self.tag,
            cid: self.cid,
            result: self.result,
            dw0: self.dw0,
            buffer: None,
            sync,
            fixed: self.buffer.0,
        }
    }
}

#[derive(Debug)]
enum Entry<P: Platform> {
    /// No buffer at this index.
    Vacant,
    /// Registered; `busy` while a command on it is outstanding.
    Buffer { buf: DmaBuffer<P>, busy: bool },
}

/// A queue pair's registered buffers.
pub(crate) struct FixedTable<P: Platform> {
    entries: Vec<Entry<P>>,
}

impl<P: Platform> FixedTable<P> {
    pub(crate) const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// The buffer at `i` if it is registered and not busy.
    fn idle(&self, i: u16) -> Option<&DmaBuffer<P>> {
        match self.entries.get(i as usize) {
            Some(Entry::Buffer { buf, busy: false }) => Some(buf),
            _ => None,
        }
    }

    /// The memory of the busy buffer at `i` (a command on it is resubmitted).
    pub(crate) fn busy_mem(&self, i: u16) -> Option<crate::dma::Mem> {
        match self.entries.get(i as usize) {
            Some(Entry::Buffer { buf, busy: true }) => Some(buf.mem()),
            _ => None,
        }
    }

    /// Marks `i` busy for a command, returning what the command transfers; refuses an
    /// unknown or busy index.
    #[inline(always)]
    fn claim(&mut self, i: u16) -> Result<(&mut bool, &DmaBuffer<P>)> {
        match self.entries.get_mut(i as usize) {
            Some(Entry::Buffer { buf, busy }) if !*busy => Ok((busy, buf)),
            Some(Entry::Buffer { .. }) => Err(Error::FixedBuffer {
                index: i,
                problem: "a command on it is still outstanding",
            }),
            _ => Err(Error::FixedBuffer {
                index: i,
                problem: "no buffer is registered at this index",
            }),
        }
    }

    /// The command on `i` ended and the device can no longer reach the buffer.
    #[inline(always)]
    pub(crate) fn release(&mut self, i: u16) {
        if let Some(Entry::Buffer { busy, .. }) = self.entries.get_mut(i as usize) {
            *busy = false;
        }
    }

    /// The command on `i` ended but the device may still write the buffer: it leaves the
    /// table and is retired (freed only once the controller is disabled, `crate::reclaim`).
    pub(crate) fn retire(&mut self, i: u16, shared: &Shared<P>, generation: u32) {
        if let Some(e) = self.entries.get_mut(i as usize) {
            if let Entry::Buffer { buf, .. } = core::mem::replace(e, Entry::Vacant) {
                shared
                    .reclaim
                    .retire(&*shared.platform, buf.into_region(), generation);
            }
        }
    }

    /// Retires every busy buffer (the pair is torn down while the device may still own its
    /// commands).
    pub(crate) fn retire_busy(&mut self, shared: &Shared<P>, generation: u32) {
        for i in 0..self.entries.len() {
            if matches!(self.entries[i], Entry::Buffer { busy: true, .. }) {
                self.retire(i as u16, shared, generation);
            }
        }
    }
}

/// Where completion processing delivers what it reaps (`IoQueuePair::service`).
pub(crate) trait Deliver<P: Platform> {
    /// A completion in the general form (an owned-buffer request, or any request that ended
    /// off the device's completion path). True if it was delivered to the caller.
    fn completion(&mut self, c: IoCompletion<P>, parked: &mut VecDeque<IoCompletion<P>>) -> bool;
    /// The device's completion of a registered-buffer request (its buffer already free).
    fn fixed(&mut self, c: FixedCompletion) -> bool;
}

/// Every completion to one closure as an [`IoCompletion`] ([`IoQueuePair::poll`]).
pub(crate) struct AsIo<F>(pub(crate) F);

impl<P: Platform, F: FnMut(IoCompletion<P>)> Deliver<P> for AsIo<F> {
    #[inline(always)]
    fn completion(&mut self, c: IoCompletion<P>, _: &mut VecDeque<IoCompletion<P>>) -> bool {
        (self.0)(c);
        true
    }
    #[inline(always)]
    fn fixed(&mut self, c: FixedCompletion) -> bool {
        (self.0)(c.into_io(0));
        true
    }
}

/// Registered-buffer completions to one closure; the others parked
/// ([`IoQueuePair::poll_fixed`]).
struct AsFixed<G>(G);

impl<P: Platform, G: FnMut(FixedCompletion)> Deliver<P> for AsFixed<G> {
    #[inline(always)]
    fn completion(&mut self, c: IoCompletion<P>, parked: &mut VecDeque<IoCompletion<P>>) -> bool {
        if c.fixed == NOT_FIXED {
            parked.push_back(c);
            return false;
        }
        (self.0)(FixedCompletion::from_parked(c));
        true
    }
    #[inline(always)]
    fn fixed(&mut self, c: FixedCompletion) -> bool {
        (self.0)(c);
        true
    }
}

impl<P: Platform> IoQueuePair<P> {
    /// Registers `buffer` with this pair and returns its index. It stays here until
    /// [`IoQueuePair::unregister_buffer`] (or the pair's end, when it is freed with the
    /// pair, or retired if the device may still write it). Registering allocates (the table
    /// grows); submitting on it never does.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(64)?;
    /// let mut b = ctrl.alloc_buffer(4096)?;
    /// b.fill(0x5a);
    /// let id = qp.register_buffer(b).map_err(|e| e.error)?;
    /// qp.submit_write_fixed(&ns, 8, id, 1)?;
    /// qp.ring();
    /// let mut done = 0;
    /// while done == 0 {
    ///     done += qp.poll_fixed(|c| assert!(c.result.is_ok() && c.buffer == id))?;
    /// }
    /// let back = qp.unregister_buffer(id)?;
    /// assert_eq!(back.to_vec()[0], 0x5a);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ForeignObject`] for a buffer of another controller, [`Error::FixedBuffer`]
    /// when [`MAX_FIXED_BUFFERS`] are registered; the buffer comes back in the error.
    pub fn register_buffer(
        &mut self,
        buffer: DmaBuffer<P>,
    ) -> core::result::Result<FixedBuf, super::IoError<P>> {
        if !buffer.is_on(&self.shared.platform) {
            return Err(super::IoError {
                error: Error::ForeignObject {
                    what: "the DMA buffer",
                },
                buffer: Some(buffer),
            });
        }
        let t = &mut self.fixed.entries;
        let i = match t.iter().position(|e| matches!(e, Entry::Vacant)) {
            Some(i) => i,
            None if t.len() < MAX_FIXED_BUFFERS => {
                t.push(Entry::Vacant);
                t.len() - 1
            }
            None => {
                return Err(super::IoError {
                    error: Error::FixedBuffer {
                        index: NOT_FIXED,
                        problem: "the table is full",
                    },
                    buffer: Some(buffer),
                })
            }
        };
        t[i] = Entry::Buffer {
            buf: buffer,
            busy: false,
        };
        Ok(FixedBuf(i as u16))
    }

    /// Takes a registered buffer back.
    ///
    /// # Errors
    /// [`Error::FixedBuffer`] if no buffer is registered at `id` or a command on it is
    /// outstanding (including one that timed out and that the device has not completed).
    pub fn unregister_buffer(&mut self, id: FixedBuf) -> Result<DmaBuffer<P>> {
        self.fixed.claim(id.0)?;
        match core::mem::replace(&mut self.fixed.entries[id.0 as usize], Entry::Vacant) {
            Entry::Buffer { buf, .. } => Ok(buf),
            Entry::Vacant => Err(Error::FixedBuffer {
                index: id.0,
                problem: "no buffer is registered at this index",
            }),
        }
    }

    /// The registered buffer `id`, unless a command on it is outstanding.
    pub fn fixed_buffer(&self, id: FixedBuf) -> Option<&DmaBuffer<P>> {
        self.fixed.idle(id.0)
    }

    /// The registered buffer `id` to fill or read, unless a command on it is outstanding.
    pub fn fixed_buffer_mut(&mut self, id: FixedBuf) -> Option<&mut DmaBuffer<P>> {
        match self.fixed.entries.get_mut(id.0 as usize) {
            Some(Entry::Buffer { buf, busy: false }) => Some(buf),
            _ => None,
        }
    }

    /// Queues a Read (NVM §3.3.4) of the whole registered buffer `id` (its length a multiple
    /// of the LBA size) from `slba`. The buffer is busy until the completion.
    ///
    /// # Errors
    /// [`Error::FixedBuffer`] (unknown or busy), [`Error::LbaOutOfRange`],
    /// [`Error::TransferTooLarge`], [`Error::BufferSize`], [`Error::QueueFull`],
    /// [`Error::StaleNamespace`], [`Error::ForeignObject`], [`Error::ControllerReset`].
    #[inline]
    pub fn submit_read_fixed(
        &mut self,
        ns: &Namespace,
        slba: u64,
        id: FixedBuf,
        tag: u64,
    ) -> Result<u16> {
        self.fixed_cmd(NvmOpcode::READ, ns, slba, id, tag)
    }

    /// Queues a Write (NVM §3.3.6) of the whole registered buffer `id` at `slba`.
    ///
    /// # Errors
    /// As [`IoQueuePair::submit_read_fixed`].
    #[inline]
    pub fn submit_write_fixed(
        &mut self,
        ns: &Namespace,
        slba: u64,
        id: FixedBuf,
        tag: u64,
    ) -> Result<u16> {
        self.fixed_cmd(NvmOpcode::WRITE, ns, slba, id, tag)
    }

    #[inline(always)]
    fn fixed_cmd(
        &mut self,
        op: NvmOpcode,
        ns: &Namespace,
        slba: u64,
        id: FixedBuf,
        tag: u64,
    ) -> Result<u16> {
        self.check_alive()?;
        let (busy, buf) = self.fixed.claim(id.0)?;
        let len = buf.len();
        let nlb = super::blocks_of(ns, len)?;
        super::lba_check(&self.shared, self.dead, self.generation, ns, slba, nlb)?;
        if len > self.max_transfer {
            return Err(Error::TransferTooLarge {
                bytes: len as u64,
                max: self.max_transfer as u64,
            });
        }
        let cmd = Command::rw(op, ns.nsid(), slba, (nlb - 1) as u16, false);
        let data = Transfer {
            mem: buf.mem(),
            offset: 0,
            len,
        };
        let req = IoReq::new(tag, (0, len), 0, id.0);
        match self.engine.submit(cmd, Some(data), req, None) {
            Ok(cid) => {
                *busy = true;
                Ok(cid)
            }
            Err((error, _)) => Err(error),
        }
    }

    /// Processes completions that have arrived, without waiting, as [`IoQueuePair::poll`]
    /// does, delivering those of registered-buffer commands to `f`; completions of
    /// owned-buffer commands are parked for the next [`IoQueuePair::poll`]. Returns how many
    /// were delivered to `f`.
    ///
    /// # Errors
    /// None today; the result leaves room for device errors.
    ///
    /// Always inlined: the completion loop is compiled into the caller's own loop, where the
    /// pair's fields and the closure's captures stay in registers (about 45 instructions per
    /// poll fewer at QD1 in `scripts/iocost.sh`), at the price of the loop's code at each
    /// call site.
    #[inline(always)]
    pub fn poll_fixed(&mut self, f: impl FnMut(FixedCompletion)) -> Result<usize> {
        self.poll_into(&mut AsFixed(f))
    }

    /// Waits as [`IoQueuePair::wait`] does until at least one registered-buffer completion
    /// was delivered to `f`, or `timeout` passes.
    ///
    /// # Errors
    /// [`Error::DeviceGone`] (everything outstanding is failed the same way first).
    pub fn wait_fixed(
        &mut self,
        timeout: Duration,
        f: impl FnMut(FixedCompletion),
    ) -> Result<usize> {
        self.wait_into(timeout, &mut AsFixed(f))
    }
}

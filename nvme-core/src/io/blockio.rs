//! Transfers of any length on a namespace: [`Namespace::read_at`], [`Namespace::write_at`],
//! [`Namespace::write_zeroes`], [`Namespace::deallocate`], [`Namespace::flush`].
//!
//! The caller chooses the queue pair; the transfer is split into commands of at most the
//! controller's maximum transfer size (MDTS, NVMe Base §5.1.13.1 Identify Controller) and at
//! most 65,536 logical blocks (the 16-bit NLB field, NVM Command Set §3.3.4), and up to
//! [`STAGING_BUFFERS`] commands are kept in flight at once (bounded by the pair's free
//! slots). Data moves through staging buffers the pair allocates once, on first use, and keeps:
//! the caller's slices are ordinary memory the device never sees. (For zero-copy I/O, submit
//! [`DmaBuffer`]s with [`IoQueuePair::submit_read`] and friends.)
//!
//! Commands of the pair's own callers that complete meanwhile are parked for their next
//! [`IoQueuePair::poll`], never lost. If a command fails, the commands already in flight are
//! waited for (their staging buffers come back), no further command is issued, and the first
//! error is returned: the blocks before it were transferred, those after it may or may not
//! have been.

use alloc::vec::Vec;
use core::time::Duration;

use super::{DsmRange, IoCompletion, IoQueuePair};
use crate::error::{Error, Result};
use crate::hw::{Clock, InterruptSource, Platform};
use crate::namespace::Namespace;
use crate::spec::{Command, NvmOpcode, PAGE_SIZE};

/// Staging buffers a queue pair keeps for [`Namespace::read_at`] and friends: the most
/// commands one such call keeps in flight.
pub const STAGING_BUFFERS: usize = 8;

/// Largest staging buffer (bytes): a command moves at most this much (and at most MDTS).
pub const STAGING_CHUNK: usize = 256 * 1024;

/// The most logical blocks one Read, Write or Write Zeroes names (NLB is a 0's based 16-bit
/// field, NVM Command Set §3.3.4, §3.3.6, §3.3.8).
const MAX_NLB: u64 = 1 << 16;

/// The most blocks one Dataset Management range names (NVM Command Set §3.3.3, Figure
/// "Dataset Management – Range Definition": a 32-bit length).
const MAX_RANGE_BLOCKS: u64 = u32::MAX as u64;

/// Ranges in one Dataset Management command (NR is 0's based 8-bit, §3.3.3).
const MAX_RANGES: usize = 256;

/// The data side of a pipelined transfer.
enum Data<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
    None,
}

/// One pipelined operation: what each command is.
#[derive(Clone, Copy)]
enum Op {
    Read,
    Write { fua: bool },
    WriteZeroes { deallocate: bool },
}

impl Namespace {
    /// Reads `buf.len()` bytes (a whole number of blocks of
    /// [`Namespace::bytes_per_block`]) starting at block `slba`, on `qp`: split at MDTS and
    /// the 65,536-block NLB limit, several commands in flight (NVM Command Set §3.3.4).
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// let ns = ctrl.namespace(1)?.clone();
    /// let mut qp = ctrl.create_io_queue_pair(64)?;
    /// let data = vec![0x5a; 3 << 20]; // larger than MDTS: split inside
    /// ns.write_at(&mut qp, 100, &data)?;
    /// let mut back = vec![0; data.len()];
    /// ns.read_at(&mut qp, 100, &mut back)?;
    /// assert_eq!(back, data);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::BufferSize`] if the length is not a whole number of blocks,
    /// [`Error::LbaOutOfRange`] (checked before anything is sent),
    /// [`Error::StaleNamespace`]/[`Error::ForeignObject`] for a handle that is not current on
    /// this pair's controller, [`Error::Dma`] if the staging buffers cannot be allocated, and
    /// the first command's error ([`Error::Command`], [`Error::Timeout`],
    /// [`Error::ControllerReset`], ...).
    pub fn read_at<P: Platform>(
        &self,
        qp: &mut IoQueuePair<P>,
        slba: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        qp.pipeline(self, slba, Op::Read, Data::Read(buf))
    }

    /// Writes `buf` (a whole number of blocks) starting at block `slba` (NVM Command Set
    /// §3.3.6); as [`Namespace::read_at`]. Completion means the controller took the data, not
    /// that it reached non-volatile media if a volatile write cache is on: see
    /// [`Namespace::write_fua_at`] and [`Namespace::flush`].
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(16)?;
    /// ns.write_at(&mut qp, 0, &[0xab; 4096])?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Namespace::read_at`].
    pub fn write_at<P: Platform>(
        &self,
        qp: &mut IoQueuePair<P>,
        slba: u64,
        buf: &[u8],
    ) -> Result<()> {
        qp.pipeline(self, slba, Op::Write { fua: false }, Data::Write(buf))
    }

    /// As [`Namespace::write_at`], each command with Force Unit Access (NVM Command Set
    /// §3.3.6, CDW12 bit 30): the data is on non-volatile media when this returns.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(16)?;
    /// ns.write_fua_at(&mut qp, 8, &[1; 512])?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Namespace::read_at`].
    pub fn write_fua_at<P: Platform>(
        &self,
        qp: &mut IoQueuePair<P>,
        slba: u64,
        buf: &[u8],
    ) -> Result<()> {
        qp.pipeline(self, slba, Op::Write { fua: true }, Data::Write(buf))
    }

    /// Write Zeroes (NVM Command Set §3.3.8) of `blocks` blocks from `slba`, split at the
    /// 65,536-block NLB limit, several commands in flight. `deallocate` sets DEAC (the
    /// controller may deallocate the blocks instead of writing zeroes; reads return zeroes
    /// either way).
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(16)?;
    /// ns.write_zeroes(&mut qp, 0, 100_000, false)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::LbaOutOfRange`], and as [`Namespace::read_at`].
    pub fn write_zeroes<P: Platform>(
        &self,
        qp: &mut IoQueuePair<P>,
        slba: u64,
        blocks: u64,
        deallocate: bool,
    ) -> Result<()> {
        qp.pipeline_blocks(
            self,
            slba,
            blocks,
            Op::WriteZeroes { deallocate },
            Data::None,
        )
    }

    /// Deallocates (trims) `blocks` blocks from `slba` with Dataset Management (NVM Command
    /// Set §3.3.3, attribute AD): ranges of up to 2³²−1 blocks, 256 ranges per command.
    /// Deallocation is advisory: what a read of those blocks returns afterwards depends on
    /// DLFEAT (NVM Command Set §4.1.5.1).
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(16)?;
    /// ns.deallocate(&mut qp, 1024, 4096)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::LbaOutOfRange`], and as [`Namespace::read_at`].
    pub fn deallocate<P: Platform>(
        &self,
        qp: &mut IoQueuePair<P>,
        slba: u64,
        blocks: u64,
    ) -> Result<()> {
        qp.check_extent(self, slba, blocks)?;
        let mut ranges: Vec<DsmRange> = Vec::with_capacity(MAX_RANGES);
        let (mut at, end) = (slba, slba + blocks);
        while at < end {
            let n = (end - at).min(MAX_RANGE_BLOCKS);
            ranges.push(DsmRange {
                slba: at,
                nlb: n as u32,
                attributes: 0,
            });
            at += n;
            if ranges.len() == MAX_RANGES || at == end {
                qp.deallocate(self, &ranges)?;
                ranges.clear();
            }
        }
        Ok(())
    }

    /// Flush (NVM Command Set §3.3.2) of this namespace: everything written before is on
    /// non-volatile media when this returns.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// # let mut qp = ctrl.create_io_queue_pair(16)?;
    /// ns.write_at(&mut qp, 0, &[7; 512])?;
    /// ns.flush(&mut qp)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::StaleNamespace`]/[`Error::ForeignObject`], and as [`IoQueuePair::flush`].
    pub fn flush<P: Platform>(&self, qp: &mut IoQueuePair<P>) -> Result<()> {
        qp.check_extent(self, 0, 0)?;
        qp.flush(self.nsid())
    }
}

impl<P: Platform> IoQueuePair<P> {
    /// Checks that `ns` is current on this pair's controller and that `blocks` blocks from
    /// `slba` lie inside it (0 blocks: the handle only).
    pub(crate) fn check_extent(&self, ns: &Namespace, slba: u64, blocks: u64) -> Result<()> {
        // The handle (owner, epoch) and the first block.
        self.lba_check(ns, slba.min(ns.blocks().saturating_sub(1)), 1)?;
        let end = slba.checked_add(blocks);
        match end {
            Some(end) if end <= ns.blocks() && slba <= ns.blocks() => Ok(()),
            _ => Err(Error::LbaOutOfRange {
                nsid: ns.nsid(),
                slba,
                end: end.unwrap_or(u64::MAX),
                nsze: ns.blocks(),
            }),
        }
    }

    /// A data transfer: the length must be a whole number of blocks.
    fn pipeline(&mut self, ns: &Namespace, slba: u64, op: Op, data: Data<'_>) -> Result<()> {
        let bpb = ns.bytes_per_block() as usize;
        let len = match &data {
            Data::Read(b) => b.len(),
            Data::Write(b) => b.len(),
            Data::None => 0,
        };
        if len % bpb != 0 {
            return Err(Error::BufferSize {
                need: len.div_ceil(bpb) * bpb,
                have: len,
            });
        }
        self.pipeline_blocks(ns, slba, (len / bpb) as u64, op, data)
    }

    /// Issues `op` over `blocks` blocks from `slba`, split into commands, with up to
    /// [`STAGING_BUFFERS`] in flight; waits for all of them.
    fn pipeline_blocks(
        &mut self,
        ns: &Namespace,
        slba: u64,
        blocks: u64,
        op: Op,
        mut data: Data<'_>,
    ) -> Result<()> {
        self.check_extent(ns, slba, blocks)?;
        if blocks == 0 {
            return Ok(());
        }
        let bpb = ns.bytes_per_block() as u64;
        let has_data = !matches!(data, Data::None);
        let chunk_bytes = self.staging_len();
        let per_cmd = if has_data {
            (chunk_bytes as u64 / bpb).min(MAX_NLB)
        } else {
            MAX_NLB
        };
        if per_cmd == 0 {
            return Err(Error::TransferTooLarge {
                bytes: bpb,
                max: chunk_bytes as u64,
            });
        }
        // The staging pool leaves the pair for the call (the completion handler fills it
        // while the pair is borrowed), and comes back whatever happens.
        let mut pool = core::mem::take(&mut self.staging);
        let free = self.depth().saturating_sub(self.outstanding()).max(1);
        let window = STAGING_BUFFERS.min(free);
        let id = self.begin_sync();
        let mut next = 0u64; // blocks issued
        let mut inflight = 0usize;
        let mut first_err: Option<Error> = None;
        let result = loop {
            while first_err.is_none() && next < blocks && inflight < window {
                let nlb = (blocks - next).min(per_cmd);
                let lba = slba + next;
                let cmd = match op {
                    Op::Read => {
                        Command::rw(NvmOpcode::READ, ns.nsid(), lba, (nlb - 1) as u16, false)
                    }
                    Op::Write { fua } => {
                        Command::rw(NvmOpcode::WRITE, ns.nsid(), lba, (nlb - 1) as u16, fua)
                    }
                    Op::WriteZeroes { deallocate } => {
                        Command::write_zeroes(ns.nsid(), lba, (nlb - 1) as u16, deallocate)
                    }
                };
                let buffer = if has_data {
                    let mut b = match pool.pop() {
                        Some(b) => b,
                        None => match self.alloc_buffer(chunk_bytes) {
                            Ok(b) => b,
                            Err(e) => {
                                first_err = Some(e);
                                break;
                            }
                        },
                    };
                    if let Data::Write(src) = &data {
                        let at = (next * bpb) as usize;
                        let n = (nlb * bpb) as usize;
                        if let Err(e) = b.write(0, &src[at..at + n]) {
                            pool.push(b);
                            first_err = Some(e);
                            break;
                        }
                    }
                    Some(b)
                } else {
                    None
                };
                let len = if has_data {
                    Some((nlb * bpb) as usize)
                } else {
                    None
                };
                self.next_sync = id;
                match self.submit_range(cmd, buffer, 0, len, next) {
                    Ok(_) => {
                        inflight += 1;
                        next += nlb;
                    }
                    Err(e) => {
                        if let Some(b) = e.buffer {
                            pool.push(b);
                        }
                        // A full queue with our own commands in flight: wait for them.
                        if !(matches!(e.error, Error::QueueFull { .. }) && inflight > 0) {
                            first_err = Some(e.error);
                        }
                        break;
                    }
                }
            }
            self.next_sync = 0;
            if inflight == 0 {
                break first_err.map_or(Ok(()), Err);
            }
            self.ring();
            let reaped = self.reap_sync(id, &mut |c: IoCompletion<P>| {
                inflight -= 1;
                match c.result {
                    Ok(()) => {
                        if let (Data::Read(dst), Some(b)) = (&mut data, &c.buffer) {
                            let at = (c.tag * bpb) as usize;
                            let n = ((blocks - c.tag).min(per_cmd) * bpb) as usize;
                            if let Err(e) = b.read(0, &mut dst[at..at + n]) {
                                first_err.get_or_insert(e);
                            }
                        }
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
                // A timed-out command's buffer stays with the queue until the device lets
                // go (then it is freed); the pool allocates a new one when needed.
                if let Some(b) = c.buffer {
                    pool.push(b);
                }
            });
            if let Err(e) = reaped {
                // The pair cannot deliver the rest (device gone, fatal status without a
                // reset policy): they stay with the queue; report why.
                break Err(first_err.unwrap_or(e));
            }
        };
        self.staging = pool;
        result
    }

    /// Length of each staging buffer: MDTS (or the configured maximum), at most
    /// [`STAGING_CHUNK`], whole pages.
    fn staging_len(&self) -> usize {
        let l = self.max_transfer.min(STAGING_CHUNK);
        (l / PAGE_SIZE).max(1) * PAGE_SIZE
    }

    /// Waits until at least one completion of blocking call `id` arrives and hands each
    /// to `f`; completions of other requests are parked. Returns how many were handed over.
    fn reap_sync(&mut self, id: u64, f: &mut impl FnMut(IoCompletion<P>)) -> Result<usize> {
        let p = self.shared.platform.clone();
        let mut spins: u32 = 0;
        loop {
            let alive = self.check_alive();
            let mut n = 0;
            if alive.is_ok() {
                let mut parked = core::mem::take(&mut self.parked);
                self.service(&mut super::AsIo(|c: IoCompletion<P>| {
                    if c.sync == id {
                        f(c);
                        n += 1;
                    } else {
                        parked.push_back(c);
                    }
                }));
                parked.extend(self.parked.drain(..));
                self.parked = parked;
            }
            while let Some(c) = self.take_parked(id) {
                f(c);
                n += 1;
            }
            if n > 0 {
                return Ok(n);
            }
            alive?;
            spins = spins.wrapping_add(1);
            if spins % 256 == 0 {
                if let Err(e) = self.check_device() {
                    // Surprise removal fails everything outstanding: deliver ours.
                    while let Some(c) = self.take_parked(id) {
                        f(c);
                        n += 1;
                    }
                    return if n > 0 { Ok(n) } else { Err(e) };
                }
            }
            match self.vector {
                Some(v) => {
                    p.irq().wait(v, Duration::from_millis(10));
                }
                None => p.clock().relax(),
            }
        }
    }
}

//! Raw queue creation and raw SQ/CQ entry access, for conformance tests of queue topologies
//! the queue pair API cannot express. The public calls exist only with the `raw-access`
//! feature (see [`crate::raw`]); the bookkeeping (memory kept until deletion or disable) is
//! always there.

use super::*;

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
pub(super) struct RawQueue<P: Platform> {
    pub(super) qid: u16,
    pub(super) is_sq: bool,
    pub(super) region: crate::hw::DmaRegion,
    /// Byte offset of the queue base inside `region` (`base_offset` of the create call).
    #[cfg_attr(not(feature = "raw-access"), allow(dead_code))]
    pub(super) base: usize,
    /// Data buffers of commands written into this (SQ) queue: the device may use them until
    /// the queue is deleted or the controller disabled.
    pub(super) held: Vec<DmaBuffer<P>>,
}

impl<P: Platform> Controller<P> {
    #[cfg(feature = "raw-access")]
    /// Sends Create I/O Completion Queue with exactly these parameters and returns the
    /// completion, whatever its status. On success the core keeps the queue memory until
    /// [`Controller::delete_queue_raw`] deletes it, or the controller is reset.
    ///
    /// # Errors
    /// Transport failures and DMA allocation.
    pub fn create_cq_raw(&mut self, params: CreateCq) -> Result<Completion> {
        let len = (params.qsize_z as usize + 1) * 16 + params.base_offset as usize;
        let region = reclaim::allocate(&*self.shared.platform, len)?;
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

    #[cfg(feature = "raw-access")]
    /// Sends Create I/O Submission Queue with exactly these parameters (see
    /// [`Controller::create_cq_raw`]).
    ///
    /// # Errors
    /// Transport failures and DMA allocation.
    pub fn create_sq_raw(&mut self, params: CreateSq) -> Result<Completion> {
        let len = (params.qsize_z as usize + 1) * 64 + params.base_offset as usize;
        let region = reclaim::allocate(&*self.shared.platform, len)?;
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

    #[cfg(feature = "raw-access")]
    pub(super) fn raw_create(
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
                    unsafe { self.shared.reclaim.released(&*self.shared.platform, region) };
                }
                Ok(c)
            }
            Err(e) => {
                self.shared
                    .reclaim
                    .retire(&*self.shared.platform, region, self.generation());
                Err(e)
            }
        }
    }

    #[cfg(feature = "raw-access")]
    /// Sends Delete I/O SQ (`sq = true`) or CQ with this QID and returns the completion,
    /// whatever its status; frees the memory of a queue created with the raw calls once its
    /// deletion succeeds.
    ///
    /// # Errors
    /// Transport failures.
    pub fn delete_queue_raw(&mut self, qid: u16, sq: bool) -> Result<Completion> {
        self.delete_raw_queue(qid, sq)
    }

    /// Deletes a queue by QID (see `delete_queue_raw`); shutdown uses it for raw queues.
    pub(super) fn delete_raw_queue(&mut self, qid: u16, sq: bool) -> Result<Completion> {
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
                unsafe {
                    self.shared
                        .reclaim
                        .released(&*self.shared.platform, q.region)
                };
                // Deleting an SQ completes or aborts every command in it (§5.2.4): their
                // buffers are the caller's again.
                self.released_raw
                    .extend(q.held.into_iter().map(|b| (qid, b)));
            }
        }
        Ok(c)
    }

    #[cfg(feature = "raw-access")]
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

    #[cfg(feature = "raw-access")]
    /// The buffers given to [`Controller::raw_sq_write`] for SQ `qid`, once that SQ was
    /// deleted, in the order they were written.
    pub fn take_raw_buffers(&mut self, qid: u16) -> Vec<DmaBuffer<P>> {
        let (mine, rest): (Vec<_>, Vec<_>) =
            self.released_raw.drain(..).partition(|(q, _)| *q == qid);
        self.released_raw = rest;
        mine.into_iter().map(|(_, b)| b).collect()
    }

    #[cfg(feature = "raw-access")]
    /// Reads entry `index` of the CQ `qid` created with [`Controller::create_cq_raw`]: DW3
    /// (with the phase tag) first with `Acquire` ordering (as part of dwords 2 and 3), then
    /// the rest. The caller checks
    /// the phase tag, tracks its head and writes the CQ head doorbell itself.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if no such raw CQ exists or `index` is beyond it.
    pub fn raw_cq_entry(&self, qid: u16, index: u16) -> Result<Completion> {
        let (region, off) = self.raw_queue(qid, false, index as usize, crate::spec::CQE_SIZE)?;
        let mem = Mem::new(region);
        // Dwords 2 and 3 with one 64-bit `Acquire` load (as `CompQueue::pop`).
        let dw3 = (mem.load_acquire_u64(off + 8).unwrap_or(0) >> 32) as u32;
        let mut dw = [0u32; 4];
        for (i, d) in dw.iter_mut().take(3).enumerate() {
            *d = mem.read_u32(off + 4 * i).unwrap_or(0);
        }
        dw[3] = dw3;
        Ok(Completion::from_dwords(dw))
    }

    #[cfg(feature = "raw-access")]
    /// The region of a raw queue and the byte offset of its entry `index`.
    pub(super) fn raw_queue(
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
}

//! I/O queue pair lifecycle: Create I/O CQ/SQ and Delete I/O SQ/CQ (NVMe Base §5.2.1–§5.2.4).

use super::*;
use crate::recovery::PairRecord;
use core::sync::atomic::{AtomicBool, AtomicU32};

impl<P: Platform> Controller<P> {
    // ---- I/O queues ----

    /// Creates an I/O queue pair (one CQ, then one SQ bound to it: §3.5.1 step 7) with
    /// `entries` slots (capped by CAP.MQES + 1), using the next free queue ID.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// let ns = ctrl.namespace(1)?.clone();
    /// let mut qp = ctrl.create_io_queue_pair(256)?; // clamped to CAP.MQES
    /// let buf = qp.read(&ns, 0, ctrl.alloc_buffer(4096)?)?;
    /// assert_eq!(buf.len(), 4096);
    /// // Pairs are `Send`: move each to the thread that uses it.
    /// let h = std::thread::spawn(move || qp);
    /// let qp = h.join().unwrap();
    /// ctrl.delete_io_queue_pair(qp)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
        let sgl = crate::sgl::SglUse::resolve(
            self.config.transfer_mode,
            crate::spec::sgl::Sgls(self.identify.sgls),
        )?;
        let entries = entries.clamp(2, self.cap.mqes_z().saturating_add(1).max(2));
        let p = self.shared.platform.clone();
        let lists_per_slot = crate::prp::max_list_pages(self.max_transfer, PAGE_SIZE);
        let (sq_mem, cq_mem, lists) = reclaim::allocate_rings(&*p, entries, lists_per_slot)?;
        let regions = [Some(sq_mem), Some(cq_mem), lists];
        let vectors = self.vectors();
        let (ien, iv) = if vectors > 1 {
            (true, 1 + (qid - 1) % (vectors - 1))
        } else if vectors == 1 {
            (true, 0)
        } else {
            (false, 0)
        };
        let shared = self.shared.clone();
        let free_all = |regions: [Option<Mem>; 3]| {
            for m in regions.into_iter().flatten() {
                // SAFETY: the controller refused the queue, or deleted it: it holds no
                // reference to the region (§5.2.1, §5.2.2, §5.2.3).
                unsafe { shared.reclaim.released(&*p, m.region()) };
            }
        };
        // Shadow doorbells (§5.8): the new queue's entries start at 0.
        let dbbuf = self.shared.shadow_doorbells();
        self.clear_shadow_entries(qid);
        let create_cq = Command::create_io_cq(qid, entries - 1, cq_mem.iova(), ien, iv);
        let create_sq = Command::create_io_sq(qid, entries - 1, sq_mem.iova(), qid, 0);
        for (cmd, is_sq) in [(create_cq, false), (create_sq, true)] {
            let c = match self.admin_no_data(cmd) {
                Ok(c) => c,
                Err(e) => {
                    // Unknown outcome: the device may have the queue; keep the memory until
                    // the next disable.
                    self.retire_all(regions.into_iter().flatten());
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
                    free_all(regions);
                } else {
                    self.retire_all(regions.into_iter().flatten());
                }
                return Err(e);
            }
        }
        self.qids_in_use[qid as usize] = true;
        self.io_queues_created = true;
        let dstrd = self.shared.dstrd;
        let mut engine = Engine::new(
            SubQueue::new(sq_mem, qid, entries, dstrd),
            CompQueue::new(cq_mem, qid, entries, dstrd),
            lists,
            lists_per_slot,
            Some(self.shared.io_timeout_ns),
        );
        engine.sgl = sgl;
        engine.set_shadow(dbbuf, false);
        let vector = if ien { Some(iv) } else { None };
        let generation = self.generation();
        let record = Arc::new(PairRecord {
            qid,
            entries,
            sq: sq_mem,
            cq: cq_mem,
            vector,
            quiesced: AtomicU32::new(generation),
            ready: AtomicU32::new(generation),
            failed: AtomicBool::new(false),
        });
        self.shared.mailbox.pairs.lock().push(record.clone());
        Ok(IoQueuePair::new(
            self.shared.clone(),
            engine,
            vector,
            self.max_transfer,
            generation,
            Some(record),
        ))
    }

    /// Deletes an I/O queue pair: Delete I/O SQ (which aborts what is outstanding), then
    /// Delete I/O CQ (§3.6.1, §5.2.3, §5.2.4). The memory is freed once both succeed;
    /// otherwise it waits for the next controller disable.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// let qp = ctrl.create_io_queue_pair(16)?;
    /// ctrl.delete_io_queue_pair(qp)?; // Delete I/O SQ, then CQ; its memory is freed
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Command failures (the pair is consumed either way).
    pub fn delete_io_queue_pair(&mut self, mut qp: IoQueuePair<P>) -> Result<()> {
        if !qp.belongs_to(&self.shared) {
            // Nothing is sent: this controller's queue `qid` is another queue. The pair goes
            // back to its own controller's reclaim rules as it drops (retired until that
            // controller's next disable).
            return Err(Error::ForeignObject {
                what: "the I/O queue pair",
            });
        }
        let qid = qp.qid();
        if !qp.is_on_device(self.generation()) {
            // From before a reset, or not re-created since: the device does not know it.
            drop(qp);
            if let Some(u) = self.qids_in_use.get_mut(qid as usize) {
                *u = false;
            }
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
}

//! The controller's half of recovery (see [`crate::recovery`]): Aborts for timed-out
//! commands (NVMe Base §5.1.1), a reset when they do not help or the controller failed
//! (§3.7.2, §9.5), and the re-creation of queue pairs after a reset (§5.2.1, §5.2.2).

use super::*;
use crate::recovery::PairRecord;

/// What one [`Controller::recover`] call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Abort commands sent.
    pub aborts: u32,
    /// Aborts the controller reported as done (Completion DW0 bit 0 cleared).
    pub aborted: u32,
    /// Controller resets performed.
    pub resets: u32,
    /// Queue pairs whose queues were re-created.
    pub recreated: u32,
    /// Queue pairs that could not be re-created (they fail their requests).
    pub failed: u32,
}

impl<P: Platform> Controller<P> {
    /// Drives recovery; call it periodically from the thread that owns the controller (as
    /// SPDK applications poll admin completions). It processes admin completions
    /// (re-posting Asynchronous Event Requests), resets the controller when a queue pair asked
    /// for it (an Abort did not resolve a timeout, CSTS.CFS) or when an admin command timed
    /// out or CSTS.CFS is set (with [`crate::RecoveryPolicy::reset`]), sends the Aborts queue
    /// pairs asked for (at most ACL + 1, Identify Controller, §5.1.1), and re-creates the
    /// queues of every pair that has seen the last reset.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// // The controller's owner calls this periodically while other threads do I/O.
    /// let report = ctrl.recover()?;
    /// assert_eq!(report.resets, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::DeviceGone`] when the registers read all-ones (surprise removal); reset
    /// failures.
    pub fn recover(&mut self) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let policy = self.shared.policy;
        let csts = self.csts();
        if csts.is_all_ones() {
            self.needs_reset = Some("the device is gone");
            return Err(Error::DeviceGone);
        }
        let asked = self
            .shared
            .mailbox
            .reset_needed
            .swap(false, Ordering::Relaxed);
        let must_reset = asked || csts.cfs() || self.needs_reset.is_some();
        if must_reset && policy.reset && !self.shut_down {
            self.shared.mailbox.aborts.lock().clear();
            self.reset()?;
            report.resets += 1;
        } else {
            self.process_admin_completions();
            if policy.abort && self.check_usable().is_ok() {
                self.send_aborts(&mut report)?;
            }
        }
        self.recreate_pairs(&mut report);
        Ok(report)
    }

    /// Sends the Aborts queue pairs asked for, at most ACL + 1 per call; the rest wait.
    fn send_aborts(&mut self, report: &mut RecoveryReport) -> Result<()> {
        let limit = self.identify.acl as usize + 1;
        let pending: Vec<(u16, u16)> = {
            let mut q = self.shared.mailbox.aborts.lock();
            let n = q.len().min(limit);
            q.drain(..n).collect()
        };
        for (sqid, cid) in pending {
            report.aborts += 1;
            match self.abort(sqid, cid) {
                Ok(true) => report.aborted += 1,
                Ok(false) => {}
                // Abort Command Limit Exceeded or similar: the pair's second deadline will
                // escalate to a reset if the command stays stuck.
                Err(Error::Command { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Re-creates the CQ and SQ of every pair that reinitialized its rings for the current
    /// reset generation, with the same memory, QID and vector.
    fn recreate_pairs(&mut self, report: &mut RecoveryReport) {
        let g = self.generation();
        let todo: Vec<Arc<PairRecord>> = self
            .shared
            .mailbox
            .pairs
            .lock()
            .iter()
            .filter(|r| {
                // Acquire: pairs with the pair's Release after it zeroed its CQ.
                r.quiesced.load(Ordering::Acquire) == g
                    && r.ready.load(Ordering::Acquire) != g
                    && !r.failed.load(Ordering::Acquire)
            })
            .cloned()
            .collect();
        for r in todo {
            if self.check_usable().is_err() {
                return;
            }
            match self.recreate(&r) {
                Ok(()) => {
                    // Release: the queues exist before the pair may write its doorbell.
                    r.ready.store(g, Ordering::Release);
                    report.recreated += 1;
                }
                Err(_) => {
                    r.failed.store(true, Ordering::Release);
                    report.failed += 1;
                }
            }
        }
    }

    fn recreate(&mut self, r: &PairRecord) -> Result<()> {
        let (ien, iv) = match r.vector {
            Some(v) => (true, v),
            None => (false, 0),
        };
        self.clear_shadow_entries(r.qid);
        let cq = Command::create_io_cq(r.qid, r.entries - 1, r.cq.iova(), ien, iv);
        let c = self.admin_no_data(cq)?;
        Self::check_status(cq.opcode(), &c)?;
        let sq = Command::create_io_sq(r.qid, r.entries - 1, r.sq.iova(), r.qid, 0);
        let c = self.admin_no_data(sq)?;
        if let Err(e) = Self::check_status(sq.opcode(), &c) {
            let _ = self.admin_no_data(Command::delete_io_cq(r.qid));
            return Err(e);
        }
        Ok(())
    }
}

//! Shadow doorbells (NVMe Base §5.8, Doorbell Buffer Config; Identify Controller OACS bit 8).
//!
//! The host keeps a copy of every doorbell in a page of host memory (the shadow doorbell
//! buffer) and the controller keeps, in a second page (the EventIdx buffer), the value past
//! which it wants the doorbell register written. On each ring the queue updates the shadow
//! doorbell and writes the register only when the update moved past EventIdx
//! (`crate::queue::need_event`): an emulated controller, which pays for every register write
//! with a trap, can then read the doorbells from memory instead.
//!
//! The two pages are allocated once, at the first configuration, kept across resets (zeroed
//! while the controller is disabled, then configured again) and freed only when the
//! controller is dropped, through the same reclaim rule as the admin rings: after the
//! controller is disabled, or never if it could not be.
//!
//! The admin queue updates its shadow doorbells too but always writes the registers as well
//! (controllers differ on whether the buffers cover the admin queue); the I/O queues rely on
//! EventIdx.

use super::Controller;
use crate::error::Result;
use crate::hw::Platform;
use crate::queue::Shadow;
use crate::reclaim;
use crate::spec::identify::oacs;
use crate::spec::regs::{cq_head_doorbell, offset, sq_tail_doorbell};
use crate::spec::{Command, PAGE_SIZE};

impl<P: Platform> Controller<P> {
    /// Zeroes queue `qid`'s shadow doorbell and EventIdx entries, if the controller has a
    /// doorbell buffer: called before its CQ and SQ are created or re-created, so the
    /// controller finds head and tail 0 (§4.1) there, not a value a deleted queue with this
    /// QID (or, after a reset, the pair's last ring of the previous generation) left.
    pub(super) fn clear_shadow_entries(&self, qid: u16) {
        let Some((db, ei)) = self.shared.shadow_doorbells() else {
            return;
        };
        let dstrd = self.shared.dstrd;
        for off in [sq_tail_doorbell(qid, dstrd), cq_head_doorbell(qid, dstrd)] {
            if let Some(s) = Shadow::new(db, ei, off, None, false) {
                s.clear();
            }
        }
    }

    /// After bring-up (and after each reset): issues Doorbell Buffer Config when the
    /// configuration asks for shadow doorbells, the controller supports them (OACS bit 8)
    /// and every granted queue's doorbell fits one memory page. A controller that refuses the
    /// command is driven through its registers alone, as before.
    ///
    /// # Errors
    /// [`crate::Error::Dma`] if the two pages cannot be allocated; admin command failures
    /// (timeout, device gone).
    pub(super) fn configure_shadow_doorbells(&mut self) -> Result<()> {
        *self.shared.dbbuf.lock() = None;
        self.admin.set_shadow(None, true);
        if !self.config.shadow_doorbells || self.identify.oacs & oacs::DOORBELL_BUFFER_CONFIG == 0 {
            return Ok(());
        }
        let max_qid = self.qids_in_use.len().saturating_sub(1) as u16;
        if cq_head_doorbell(max_qid, self.shared.dstrd) - offset::DBS + 4 > PAGE_SIZE {
            return Ok(());
        }
        let (db, ei) = match self.dbbuf_pages {
            Some(pages) => pages,
            None => {
                let [db, ei] = reclaim::allocate_all(&*self.shared.platform, [PAGE_SIZE; 2])?;
                let (Some(db), Some(ei)) = (db, ei) else {
                    return Ok(());
                };
                self.dbbuf_pages = Some((db, ei));
                (db, ei)
            }
        };
        // The controller has no doorbell buffer at this point (it was just enabled), so
        // nothing else reads or writes the pages: every queue starts with head and tail 0
        // (§4.1) and EventIdx 0.
        db.fill(0, db.len(), 0);
        ei.fill(0, ei.len(), 0);
        let cmd = Command::doorbell_buffer_config(db.iova(), ei.iova());
        let c = self.admin_no_data(cmd)?;
        if c.status().is_success() {
            *self.shared.dbbuf.lock() = Some((db, ei));
            self.admin.set_shadow(Some((db, ei)), true);
            self.stats.shadow_doorbells = true;
        } else {
            self.stats.shadow_doorbells = false;
        }
        Ok(())
    }
}

//! Fault injection: faults wrap the model's behaviour (smoltcp's `FaultInjector` idea), they
//! are not a fork of it. Every fault is applied at one well-defined point of the normal
//! command path.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use nvme_core::spec::Status;

use crate::Shared;

/// Which submission queue a command fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueMatch {
    /// The admin queue (SQ 0): the opcode is an admin opcode.
    Admin,
    /// Any I/O submission queue: the opcode is an I/O opcode.
    AnyIo,
    /// One submission queue (0 is the admin queue).
    Sq(u16),
}

/// Selects the next command a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandMatch {
    /// The queue.
    pub queue: QueueMatch,
    /// The opcode (admin or I/O according to the queue), or `None` for any.
    pub opcode: Option<u8>,
}

impl CommandMatch {
    /// The next admin command with `opcode`.
    pub const fn admin(opcode: u8) -> Self {
        Self {
            queue: QueueMatch::Admin,
            opcode: Some(opcode),
        }
    }
    /// The next I/O command with `opcode` on any I/O queue.
    pub const fn io(opcode: u8) -> Self {
        Self {
            queue: QueueMatch::AnyIo,
            opcode: Some(opcode),
        }
    }
    /// The next command with `opcode` on submission queue `sqid`.
    pub const fn on_queue(sqid: u16, opcode: u8) -> Self {
        Self {
            queue: QueueMatch::Sq(sqid),
            opcode: Some(opcode),
        }
    }
    /// The next command of any opcode on any I/O queue.
    pub const fn any_io() -> Self {
        Self {
            queue: QueueMatch::AnyIo,
            opcode: None,
        }
    }

    pub(crate) fn matches(&self, sqid: u16, opcode: u8) -> bool {
        let q = match self.queue {
            QueueMatch::Admin => sqid == 0,
            QueueMatch::AnyIo => sqid != 0,
            QueueMatch::Sq(s) => s == sqid,
        };
        q && self.opcode.is_none_or(|o| o == opcode)
    }
}

/// What happens to the completion of a matched command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompletionFault {
    /// Executed, completion posted after the delay.
    Delay(Duration),
    /// Executed, completion never posted (the command hangs in the device until an Abort,
    /// a queue deletion or a reset).
    Drop,
    /// Not executed: completed at once with this status.
    Status(Status),
}

/// Fault state inside the controller.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultState {
    pub(crate) completion: Vec<(CommandMatch, CompletionFault)>,
    pub(crate) media_errors: Vec<(u32, Range<u64>)>,
    pub(crate) removed: bool,
}

impl FaultState {
    /// Takes the first one-shot completion fault matching the command.
    pub(crate) fn take_completion_fault(
        &mut self,
        sqid: u16,
        opcode: u8,
    ) -> Option<CompletionFault> {
        let i = self
            .completion
            .iter()
            .position(|(m, _)| m.matches(sqid, opcode))?;
        Some(self.completion.remove(i).1)
    }

    /// True if any LBA of `slba .. slba + nlb` of `nsid` has an injected media error.
    pub(crate) fn media_error(&self, nsid: u32, slba: u64, nlb: u64) -> Option<u64> {
        let end = slba.saturating_add(nlb);
        self.media_errors
            .iter()
            .filter(|(n, r)| *n == nsid && r.start < end && slba < r.end)
            .map(|(_, r)| r.start.max(slba))
            .min()
    }
}

/// Injects faults into a running simulator (from [`crate::Simulator::faults`]).
///
/// Command faults are one-shot: each applies to the next command that matches and is then
/// forgotten. Several may be queued; the oldest matching one wins.
#[derive(Clone)]
pub struct FaultInjector {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for FaultInjector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultInjector").finish_non_exhaustive()
    }
}

impl FaultInjector {
    fn push(&self, m: CommandMatch, f: CompletionFault) {
        self.shared.with_ctrl(|c| c.faults.completion.push((m, f)));
    }

    /// The next command matching `m` executes normally, but its completion is posted only
    /// after `delay`. In [`crate::SimMode::Inline`] the delayed completion is posted at the
    /// first register access or interrupt wait/poll after the delay (or by
    /// [`crate::Simulator::service`]).
    pub fn delay_completion(&self, m: CommandMatch, delay: Duration) {
        self.push(m, CompletionFault::Delay(delay));
    }

    /// The next command matching `m` executes, but its completion is never posted: it stays
    /// outstanding until the host aborts it (Abort completes it with Command Abort
    /// Requested), deletes its queue, or resets the controller.
    pub fn drop_completion(&self, m: CommandMatch) {
        self.push(m, CompletionFault::Drop);
    }

    /// The next command matching `m` is not executed and completes with `status` (DNR and
    /// More as given in `status`).
    pub fn force_status(&self, m: CommandMatch, status: Status) {
        self.push(m, CompletionFault::Status(status));
    }

    /// Controller Fatal Status: CSTS.CFS becomes 1 and the controller stops processing
    /// commands until a reset (CC.EN 1 → 0) or power cycle (NVMe Base §9.5).
    pub fn controller_fatal(&self) {
        self.shared
            .with_ctrl(|c| c.set_fatal("injected controller fatal status"));
    }

    /// Surprise removal: from now on every register read returns all-ones, every register
    /// and doorbell write is ignored and nothing is processed, until
    /// [`crate::Simulator::power_cycle`] (re-insertion).
    pub fn surprise_removal(&self) {
        self.shared.with_ctrl(|c| c.faults.removed = true);
    }

    /// Reads (and Verify, Compare) of any LBA in `lbas` of namespace `nsid` fail with
    /// Unrecovered Read Error (SCT 2h, SC 81h). Persistent until
    /// [`clear_media_errors`](Self::clear_media_errors).
    pub fn media_error(&self, nsid: u32, lbas: Range<u64>) {
        self.shared
            .with_ctrl(|c| c.faults.media_errors.push((nsid, lbas)));
    }

    /// Removes every injected media error.
    pub fn clear_media_errors(&self) {
        self.shared.with_ctrl(|c| c.faults.media_errors.clear());
    }

    /// Sets the composite temperature (kelvin) the SMART log reports; crossing a threshold
    /// of feature 04h raises the temperature critical warning and, if enabled by feature 0Bh,
    /// an asynchronous event.
    pub fn set_temperature(&self, kelvin: u16) {
        self.shared.with_ctrl(|c| c.set_temperature(kelvin));
    }

    /// Power loss: unflushed writes in the volatile write cache are lost (same as
    /// [`crate::Simulator::power_loss`]).
    pub fn power_loss(&self) {
        self.shared.power(false);
    }

    /// Forgets every pending one-shot command fault.
    pub fn clear(&self) {
        self.shared.with_ctrl(|c| c.faults.completion.clear());
    }
}

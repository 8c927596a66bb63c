//! Fault injection: faults wrap the model's behaviour (smoltcp's `FaultInjector` idea), they
//! are not a fork of it. Every fault is applied at one well-defined point of the normal
//! command path: the SQ tail doorbell (lost doorbell), command fetch (every completion fault
//! and the unmapped-DMA fault), the data path (media errors) and CQ entry posting (wrong CID,
//! duplicate CID, wrong phase). Faults the simulator makes on purpose are the device's doing:
//! they never count as host protocol violations.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use nvme_core::spec::opcode::NvmOpcode;
use nvme_core::spec::{AsyncEvent, Command, Status};

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

/// Selects the command a fault applies to: a queue, an opcode, optionally an LBA range the
/// command must touch and which occurrence of such a command it is.
///
/// ```
/// use nvme_core::spec::NvmOpcode;
/// use sim_backend::CommandMatch;
/// // The 3rd Read on SQ 2 touching any LBA of 100..200.
/// let m = CommandMatch::on_queue(2, NvmOpcode::READ.0).lba(100..200).nth(3);
/// assert_eq!(m.occurrence(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandMatch {
    /// The queue.
    pub queue: QueueMatch,
    /// The opcode (admin or I/O according to the queue), or `None` for any.
    pub opcode: Option<u8>,
    lba: Option<Range<u64>>,
    nth: u32,
}

/// I/O opcodes whose CDW10/11 is an SLBA and CDW12 15:0 an NLB (NVM Command Set §3.3).
fn has_slba(opcode: u8) -> bool {
    matches!(
        NvmOpcode(opcode),
        NvmOpcode::READ
            | NvmOpcode::WRITE
            | NvmOpcode::COMPARE
            | NvmOpcode::WRITE_ZEROES
            | NvmOpcode::VERIFY
            | NvmOpcode::WRITE_UNCORRECTABLE
    )
}

impl CommandMatch {
    const fn new(queue: QueueMatch, opcode: Option<u8>) -> Self {
        Self {
            queue,
            opcode,
            lba: None,
            nth: 1,
        }
    }
    /// The next admin command with `opcode`.
    pub const fn admin(opcode: u8) -> Self {
        Self::new(QueueMatch::Admin, Some(opcode))
    }
    /// The next I/O command with `opcode` on any I/O queue.
    pub const fn io(opcode: u8) -> Self {
        Self::new(QueueMatch::AnyIo, Some(opcode))
    }
    /// The next command with `opcode` on submission queue `sqid`.
    pub const fn on_queue(sqid: u16, opcode: u8) -> Self {
        Self::new(QueueMatch::Sq(sqid), Some(opcode))
    }
    /// The next command of any opcode on any I/O queue.
    pub const fn any_io() -> Self {
        Self::new(QueueMatch::AnyIo, None)
    }
    /// The next command of any opcode on submission queue `sqid`.
    pub const fn any_on_queue(sqid: u16) -> Self {
        Self::new(QueueMatch::Sq(sqid), None)
    }
    /// Only I/O commands with an SLBA (Read, Write, Compare, Write Zeroes, Verify, Write
    /// Uncorrectable) whose blocks `SLBA ..= SLBA + NLB` overlap `lbas` match.
    #[must_use]
    pub fn lba(mut self, lbas: Range<u64>) -> Self {
        self.lba = Some(lbas);
        self
    }
    /// The `n`th matching command from when the fault is armed (1 = the next one, the
    /// default; 0 is taken as 1). The earlier matches pass untouched.
    #[must_use]
    pub fn nth(mut self, n: u32) -> Self {
        self.nth = n.max(1);
        self
    }
    /// The occurrence this match fires on (1 = the next matching command).
    pub fn occurrence(&self) -> u32 {
        self.nth
    }
    /// The LBA range, if any.
    pub fn lba_range(&self) -> Option<&Range<u64>> {
        self.lba.as_ref()
    }

    /// True if the command `cmd` on `sqid` is one this match selects (occurrence aside).
    pub(crate) fn matches(&self, sqid: u16, cmd: &Command) -> bool {
        let opcode = cmd.opcode();
        let q = match self.queue {
            QueueMatch::Admin => sqid == 0,
            QueueMatch::AnyIo => sqid != 0,
            QueueMatch::Sq(s) => s == sqid,
        };
        if !q || self.opcode.is_some_and(|o| o != opcode) {
            return false;
        }
        match &self.lba {
            None => true,
            Some(r) => {
                if sqid == 0 || !has_slba(opcode) {
                    return false;
                }
                let slba = cmd.slba();
                let end = slba.saturating_add(u64::from(cmd.nlb_z()) + 1);
                r.start < end && slba < r.end
            }
        }
    }
}

impl From<&CommandMatch> for CommandMatch {
    fn from(m: &CommandMatch) -> Self {
        m.clone()
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
    /// Executed; the completion is posted with a CID no outstanding command has, and the
    /// real completion is never posted (held like [`CompletionFault::Drop`]).
    WrongCid,
    /// Executed; the completion entry is posted twice.
    DuplicateCid,
    /// Executed; the entry is first written with the wrong phase tag, and rewritten with the
    /// right one after the duration (the CQ posts nothing else meanwhile).
    WrongPhase(Duration),
    /// Not executed: the data transfer goes to an IOVA nothing maps; Data Transfer Error.
    UnmappedDma,
}

/// A fault the random mode may inject (see [`FaultInjector::random`]). Each is recoverable:
/// the host sees a late, failed or missing completion, never corrupted memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomFault {
    /// The completion is dropped (the command stays outstanding until Abort or reset).
    Drop,
    /// The completion is posted after the duration (make it longer than the host's I/O
    /// timeout to exercise late completions of timed-out commands).
    Delay(Duration),
    /// A Read, Compare or Verify fails with Unrecovered Read Error (02h/81h), a Write or Write
    /// Zeroes with Write Fault (02h/80h); the command is not executed.
    MediaError,
    /// The SQ tail doorbell write is ignored (the commands it would make visible wait for the
    /// next doorbell write).
    LostDoorbell,
}

/// An armed one-shot command fault.
#[derive(Debug, Clone)]
pub(crate) struct Armed<F> {
    pub(crate) m: CommandMatch,
    pub(crate) fault: F,
    /// Matching commands seen since arming.
    pub(crate) seen: u32,
}

/// The random mode's state: a seeded generator (xorshift64*, one draw per I/O command fetched
/// and one per I/O SQ doorbell write), deterministic for a given seed and command sequence.
#[derive(Debug, Clone)]
pub(crate) struct RandomState {
    rng: u64,
    rate_per_million: u32,
    kinds: Vec<RandomFault>,
}

impl RandomState {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Draws: `Some(kind)` at the configured rate, among `allowed` kinds.
    fn draw(&mut self, allowed: impl Fn(&RandomFault) -> bool) -> Option<RandomFault> {
        let r = self.next();
        if (r % 1_000_000) as u32 >= self.rate_per_million {
            return None;
        }
        let kinds: Vec<RandomFault> = self.kinds.iter().copied().filter(allowed).collect();
        if kinds.is_empty() {
            return None;
        }
        Some(kinds[((r >> 32) % kinds.len() as u64) as usize])
    }
}

/// Fault state inside the controller.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultState {
    pub(crate) completion: Vec<Armed<CompletionFault>>,
    pub(crate) lost_doorbell: Vec<Armed<()>>,
    pub(crate) media_errors: Vec<(u32, Range<u64>)>,
    pub(crate) removed: bool,
    pub(crate) random: Option<RandomState>,
    /// Faults applied (one-shot command faults that fired, random faults, AER storm events).
    pub(crate) injected: u64,
}

/// Finds the first armed fault whose match selects `cmd` and whose occurrence has come,
/// counting the occurrence on every armed fault it matches; removes and returns it.
fn take_armed<F>(list: &mut Vec<Armed<F>>, sqid: u16, cmd: &Command) -> Option<F> {
    let mut fire = None;
    for (i, a) in list.iter_mut().enumerate() {
        if a.m.matches(sqid, cmd) {
            a.seen += 1;
            if fire.is_none() && a.seen >= a.m.nth {
                fire = Some(i);
            }
        }
    }
    fire.map(|i| list.remove(i).fault)
}

impl FaultState {
    /// Takes the completion fault for a command being fetched: a one-shot fault whose match
    /// selects it, else (I/O commands) a random draw.
    #[inline]
    pub(crate) fn take_completion_fault(
        &mut self,
        sqid: u16,
        cmd: &Command,
    ) -> Option<CompletionFault> {
        // Nothing armed and no random faults (the common case): one check per command.
        if self.completion.is_empty() && self.random.is_none() {
            return None;
        }
        self.draw_completion_fault(sqid, cmd)
    }

    fn draw_completion_fault(&mut self, sqid: u16, cmd: &Command) -> Option<CompletionFault> {
        if let Some(f) = take_armed(&mut self.completion, sqid, cmd) {
            self.injected += 1;
            return Some(f);
        }
        if sqid == 0 {
            return None;
        }
        let rs = self.random.as_mut()?;
        let f = match rs.draw(|k| !matches!(k, RandomFault::LostDoorbell))? {
            RandomFault::Drop => CompletionFault::Drop,
            RandomFault::Delay(d) => CompletionFault::Delay(d),
            RandomFault::MediaError => {
                let op = NvmOpcode(cmd.opcode());
                let st = if matches!(
                    op,
                    NvmOpcode::WRITE | NvmOpcode::WRITE_ZEROES | NvmOpcode::WRITE_UNCORRECTABLE
                ) {
                    Status::media(nvme_core::spec::status::media::WRITE_FAULT, false)
                } else if has_slba(op.0) {
                    Status::media(
                        nvme_core::spec::status::media::UNRECOVERED_READ_ERROR,
                        false,
                    )
                } else {
                    return None;
                };
                CompletionFault::Status(st)
            }
            RandomFault::LostDoorbell => return None,
        };
        self.injected += 1;
        Some(f)
    }

    /// True if a doorbell write may be lost (an armed lost doorbell or the random mode).
    pub(crate) fn may_lose_doorbell(&self) -> bool {
        !self.lost_doorbell.is_empty()
            || self
                .random
                .as_ref()
                .is_some_and(|r| r.kinds.contains(&RandomFault::LostDoorbell))
    }

    /// True if the SQ tail doorbell write that makes `new` (the commands between the old and
    /// the new tail) visible must be ignored.
    pub(crate) fn lose_doorbell(&mut self, sqid: u16, new: &[Command]) -> bool {
        let mut lost = false;
        for cmd in new {
            if take_armed(&mut self.lost_doorbell, sqid, cmd).is_some() {
                lost = true;
                break;
            }
        }
        if !lost && sqid != 0 {
            if let Some(rs) = self.random.as_mut() {
                lost = rs
                    .draw(|k| matches!(k, RandomFault::LostDoorbell))
                    .is_some();
            }
        }
        if lost {
            self.injected += 1;
        }
        lost
    }

    /// True if any LBA of `slba .. slba + nlb` of `nsid` has an injected media error.
    #[inline]
    pub(crate) fn media_error(&self, nsid: u32, slba: u64, nlb: u64) -> Option<u64> {
        if self.media_errors.is_empty() {
            return None;
        }
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
/// Command faults are one-shot: each applies to the command its [`CommandMatch`] selects
/// (by queue, opcode, LBA range and occurrence) and is then forgotten. Several may be armed;
/// the oldest one whose occurrence has come wins. Every command fault accepts a
/// `CommandMatch` or a `&CommandMatch`.
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
    fn push(&self, m: impl Into<CommandMatch>, fault: CompletionFault) {
        let m = m.into();
        self.shared.with_ctrl(|c| {
            c.faults.completion.push(Armed { m, fault, seen: 0 });
        });
    }

    /// The command matching `m` executes normally, but its completion is posted only after
    /// `delay`, even if the host has meanwhile timed the command out (a late completion, the
    /// case NVMe Base §3.3.1.1 leaves the host to handle: the CID stays in use until then). In
    /// [`crate::SimMode::Inline`] the delayed completion is posted at the first register
    /// access or interrupt wait/poll after the delay (or by [`crate::Simulator::service`]).
    pub fn delay_completion(&self, m: impl Into<CommandMatch>, delay: Duration) {
        self.push(m, CompletionFault::Delay(delay));
    }

    /// The command matching `m` executes, but its completion is never posted: it stays
    /// outstanding until the host aborts it (Abort completes it with Command Abort
    /// Requested), deletes its queue, or resets the controller.
    pub fn drop_completion(&self, m: impl Into<CommandMatch>) {
        self.push(m, CompletionFault::Drop);
    }

    /// The command matching `m` is not executed and completes with `status` (DNR and
    /// More as given in `status`).
    pub fn force_status(&self, m: impl Into<CommandMatch>, status: Status) {
        self.push(m, CompletionFault::Status(status));
    }

    /// Breaks the CID field of the completion entry (NVMe Base §4.2.1, DW3 15:0: the
    /// identifier of the command being completed): the command matching `m` executes, and a
    /// completion entry is posted with a CID no command outstanding on its SQ has. The real
    /// completion is never posted (the command stays outstanding as with
    /// [`drop_completion`](Self::drop_completion)).
    pub fn wrong_cid(&self, m: impl Into<CommandMatch>) {
        self.push(m, CompletionFault::WrongCid);
    }

    /// Breaks the uniqueness of completions (NVMe Base §4.2.1 CID, §4.1: one completion per
    /// command): the command matching `m` executes and its completion entry is posted twice,
    /// in two consecutive CQ slots.
    pub fn duplicate_cid(&self, m: impl Into<CommandMatch>) {
        self.push(m, CompletionFault::DuplicateCid);
    }

    /// Breaks the phase tag protocol (NVMe Base §4.2.4: the host tells a new entry by its
    /// phase tag): the completion of the command matching `m` is first written with the
    /// wrong (old) phase tag, and only after `after` rewritten with the right one. Until then
    /// the CQ posts nothing else, so the host sees no new entry.
    pub fn wrong_phase(&self, m: impl Into<CommandMatch>, after: Duration) {
        self.push(m, CompletionFault::WrongPhase(after));
    }

    /// Models a lost posted write to a doorbell (NVMe Base §3.3.1 / §3.1.4 SQyTDBL: the tail
    /// doorbell is what makes entries visible to the controller): the SQ tail doorbell write
    /// that would make the command matching `m` visible is ignored once. The entries become
    /// visible with the next tail doorbell write of that SQ. Counted in the doorbell
    /// statistics, never a host violation.
    pub fn lose_doorbell(&self, m: impl Into<CommandMatch>) {
        let m = m.into();
        self.shared.with_ctrl(|c| {
            c.faults.lost_doorbell.push(Armed {
                m,
                fault: (),
                seen: 0,
            });
        });
    }

    /// Models a DMA to an address nothing maps (NVMe Base §4.2.3 Data Transfer Error, as an
    /// IOMMU would report it): the command matching `m` transfers its data to (or from) an
    /// IOVA outside every mapping, so no host memory is touched, and it completes with Data
    /// Transfer Error (00h/04h). The medium is not changed.
    pub fn unmapped_dma(&self, m: impl Into<CommandMatch>) {
        self.push(m, CompletionFault::UnmappedDma);
    }

    /// An asynchronous event storm (NVMe Base §5.1.2 Asynchronous Event Request): up to `n`
    /// events `event` are posted back to back, one per Asynchronous Event Request the host
    /// has outstanding (the controller can report no more than that), bypassing the
    /// per-type masking that normally waits for the log page to be read. Returns how many
    /// were posted.
    pub fn aer_storm(&self, n: usize, event: AsyncEvent) -> usize {
        self.shared.with_ctrl(|c| {
            let k = c.aer_storm(n, event);
            c.faults.injected += k as u64;
            k
        })
    }

    /// Random mode, for soak tests: from now on, each I/O command fetched draws once whether
    /// it gets one of the completion-side `kinds` ([`RandomFault::Drop`],
    /// [`RandomFault::Delay`], [`RandomFault::MediaError`]), and each I/O SQ tail doorbell
    /// write draws once whether it is lost ([`RandomFault::LostDoorbell`]), each with
    /// probability `rate_per_million` / 1 000 000. Deterministic: the same seed and the same
    /// command sequence give the same faults. What was injected is counted by
    /// [`injected`](Self::injected). A rate of 0 or no kinds turns the mode off.
    pub fn random(&self, seed: u64, rate_per_million: u32, kinds: &[RandomFault]) {
        let st = (rate_per_million > 0 && !kinds.is_empty()).then(|| RandomState {
            // xorshift must not start at 0.
            rng: seed ^ 0x9E37_79B9_7F4A_7C15 | 1,
            rate_per_million: rate_per_million.min(1_000_000),
            kinds: kinds.to_vec(),
        });
        self.shared.with_ctrl(|c| c.faults.random = st);
    }

    /// Faults injected so far: one-shot command faults that fired, random faults, events
    /// posted by [`aer_storm`](Self::aer_storm).
    pub fn injected(&self) -> u64 {
        self.shared.with_ctrl(|c| c.faults.injected)
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
    /// [`crate::Simulator::power_loss`]); blocks flushed or written with FUA are kept.
    pub fn power_loss(&self) {
        self.shared.power(false);
    }

    /// Forgets every pending one-shot command fault (completion faults and lost doorbells)
    /// and turns the random mode off.
    pub fn clear(&self) {
        self.shared.with_ctrl(|c| {
            c.faults.completion.clear();
            c.faults.lost_doorbell.clear();
            c.faults.random = None;
        });
    }
}

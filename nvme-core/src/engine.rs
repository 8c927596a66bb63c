//! The request engine shared by the admin queue and the I/O queue pairs: one SQ, one CQ, a
//! fixed table of request slots (allocated once, at queue creation: no heap allocation per
//! command), PRP list pages per slot, deadlines, and validation of every completion.

use alloc::vec::Vec;

use crate::dma::Mem;
use crate::error::Error;
use crate::hw::Bar;
use crate::prp::{self, PrpError, PrpListPages};
use crate::queue::{CidCodec, CompQueue, QueueStats, Rung, Shadow, SubQueue};
use crate::spec::{Command, Completion, PAGE_SIZE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    InFlight,
    /// Past its deadline; an Abort was requested and the command gets a second deadline
    /// before the controller is reset (`crate::recovery`). Not reported yet.
    Aborting,
    /// The caller was told the request timed out; the payload stays here until the device
    /// completes it or the queue is torn down.
    TimedOut,
}

#[derive(Debug)]
struct Slot<T> {
    state: SlotState,
    generation: u16,
    /// The next free slot while this one is free ([`NO_SLOT`]: none): the free list runs
    /// through the slots, so freeing one is two stores.
    next_free: u16,
    deadline_ns: u64,
    /// The command as last placed in the SQ from this slot (its CID and data pointer
    /// included), kept for resubmission after an Abort or a reset: written here once and
    /// copied into the SQ entry from here.
    cmd: Command,
    payload: Option<T>,
    /// Position of this command in the engine's submission sequence: the SQ doorbell has
    /// covered it once `seq < Engine::rung_seq`; only then can the device have fetched it,
    /// and only then can a completion for it be genuine.
    seq: u64,
    /// Qwords of this slot's PRP list pages written by earlier commands (a prefix, in
    /// list order): a shorter list zeroes the rest, so no entry beyond the current command's
    /// ever names memory of an earlier command.
    list_len: u32,
}

/// `cmd` as its submitter built it: without the data pointer and PSDT the engine placed
/// (NVMe Base §4.1.2, CDW0 bits 15:14 and DPTR), which a resubmission places again for the
/// buffer it has then.
pub(crate) fn bare(cmd: &Command) -> Command {
    let mut c = *cmd;
    c.set_prps(0, 0).set_psdt(0);
    c
}

/// The end of the free list.
const NO_SLOT: u16 = u16::MAX;

/// `Slot::deadline_ns` of a command submitted before the engine's first clock reading: its
/// deadline is set at that reading.
const UNDATED: u64 = u64::MAX - 1;

/// Commands submitted without a deadline take the last clock reading plus the timeout, so
/// their deadline comes early by the time between that reading and their submission. A
/// reading that follows the previous one by more than `timeout / STALE_DIVISOR` re-dates the
/// commands submitted in between from itself instead, so a deadline never comes more than
/// 1/16 of the timeout early.
const STALE_DIVISOR: u64 = 16;

/// A completion matched to its request.
#[derive(Debug)]
pub(crate) struct Reaped<'a, T> {
    pub(crate) cid: u16,
    /// The request's slot (the CID's slot index).
    pub(crate) slot: u16,
    pub(crate) completion: Completion,
    pub(crate) payload: T,
    /// Opcode of the request.
    pub(crate) opcode: u8,
    /// The request had already been reported as timed out.
    pub(crate) late: bool,
    /// The command as submitted (for a resubmission).
    pub(crate) cmd: &'a Command,
}

/// What [`Engine::expire`] found.
#[derive(Debug)]
pub(crate) enum Expiry<'a, T> {
    /// Past its deadline: ask for an Abort.
    Abort { cid: u16 },
    /// Past its deadline with no Abort policy, or past the second deadline after an Abort:
    /// report it (and, by the policy, ask for a reset).
    Timeout {
        cid: u16,
        opcode: u8,
        payload: &'a mut T,
    },
}

/// A data transfer for [`Engine::submit`]: bytes `offset .. offset + len` of `mem`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transfer {
    pub(crate) mem: Mem,
    pub(crate) offset: usize,
    pub(crate) len: usize,
}

struct SlotLists<'a> {
    mem: Mem,
    first: usize,
    count: usize,
    _p: core::marker::PhantomData<&'a ()>,
}

impl SlotLists<'_> {
    /// Zeroes qwords `from .. to` of the slot's list pages (list order).
    fn clear(&self, from: usize, to: usize) {
        let per = PAGE_SIZE / 8;
        for q in from..to {
            self.mem
                .write_u64((self.first + q / per) * PAGE_SIZE + (q % per) * 8, 0);
        }
    }
}

impl PrpListPages for SlotLists<'_> {
    fn count(&self) -> usize {
        self.count
    }
    fn iova(&self, i: usize) -> u64 {
        self.mem.iova() + ((self.first + i) * PAGE_SIZE) as u64
    }
    fn write(&mut self, page: usize, index: usize, value: u64) {
        self.mem
            .write_u64((self.first + page) * PAGE_SIZE + index * 8, value);
    }
}

#[derive(Debug)]
pub(crate) struct Engine<T> {
    pub(crate) sq: SubQueue,
    pub(crate) cq: CompQueue,
    codec: CidCodec,
    slots: Vec<Slot<T>>,
    /// The first free slot ([`NO_SLOT`]: none), the rest linked by `Slot::next_free`.
    free_head: u16,
    /// Slots not free.
    live: usize,
    /// Commands placed in the SQ so far (the next command's `Slot::seq`); 64 bits never wrap.
    pushed: u64,
    /// `pushed` at the last SQ doorbell: every command with a smaller `seq` is covered.
    rung_seq: u64,
    lists: Option<Mem>,
    lists_per_slot: usize,
    pub(crate) stats: QueueStats,
    next_deadline_ns: u64,
    /// Relative deadline of commands submitted without one.
    timeout_ns: u64,
    /// The last clock reading ([`Engine::expire`]), if any.
    clock_ns: Option<u64>,
    /// The deadline of commands submitted without one: `clock_ns + timeout_ns` ([`UNDATED`]
    /// before the first reading).
    auto_deadline_ns: u64,
    /// `pushed` at the last clock reading: commands from here on were dated from it.
    dated_seq: u64,
    /// Whether data transfers may use an SGL instead of PRPs (`crate::sgl`).
    pub(crate) sgl: crate::sgl::SglUse,
}

impl<T> Engine<T> {
    /// `lists` holds `slots × lists_per_slot` pages of PRP lists (or is `None` when no
    /// transfer needs a list). Commands submitted without a deadline get `timeout_ns` from
    /// the last clock reading before their submission ([`Engine::expire`], see
    /// [`STALE_DIVISOR`]), so submitting reads no clock.
    pub(crate) fn new(
        sq: SubQueue,
        cq: CompQueue,
        lists: Option<Mem>,
        lists_per_slot: usize,
        timeout_ns: Option<u64>,
    ) -> Self {
        // One SQ entry always stays empty, so at most entries - 1 commands are outstanding.
        let nslots = sq.entries() - 1;
        let mut slots = Vec::with_capacity(nslots as usize);
        for i in 0..nslots {
            slots.push(Slot {
                state: SlotState::Free,
                generation: 0,
                next_free: if i + 1 < nslots { i + 1 } else { NO_SLOT },
                deadline_ns: u64::MAX,
                cmd: Command::default(),
                payload: None,
                seq: 0,
                list_len: 0,
            });
        }
        Self {
            sq,
            cq,
            codec: CidCodec::new(nslots),
            slots,
            free_head: if nslots > 0 { 0 } else { NO_SLOT },
            live: 0,
            pushed: 0,
            rung_seq: 0,
            lists,
            lists_per_slot,
            stats: QueueStats::default(),
            next_deadline_ns: u64::MAX,
            timeout_ns: timeout_ns.unwrap_or(u64::MAX),
            clock_ns: None,
            auto_deadline_ns: UNDATED,
            dated_seq: 0,
            sgl: crate::sgl::SglUse::default(),
        }
    }

    /// The PRP list pages, if any.
    pub(crate) fn lists(&self) -> Option<Mem> {
        self.lists
    }

    pub(crate) fn qid(&self) -> u16 {
        self.sq.qid()
    }
    /// Uses shadow doorbells from the buffers `db` (shadow doorbells) and `ei` (EventIdx) of
    /// Doorbell Buffer Config (NVMe Base §5.8), or stops using them (`None`). With
    /// `always_mmio` the registers are written on every ring as well. Only where both entries
    /// fit the buffers; otherwise the queue keeps to the registers alone.
    pub(crate) fn set_shadow(&mut self, bufs: Option<(Mem, Mem)>, always_mmio: bool) {
        let (sq, cq) = match bufs {
            Some((db, ei)) => match (
                Shadow::new(
                    db,
                    ei,
                    self.sq.doorbell(),
                    Some(self.cq.doorbell()),
                    always_mmio,
                ),
                Shadow::new(
                    db,
                    ei,
                    self.cq.doorbell(),
                    Some(self.sq.doorbell()),
                    always_mmio,
                ),
            ) {
                (Some(s), Some(c)) => (Some(s), Some(c)),
                _ => (None, None),
            },
            None => (None, None),
        };
        self.sq.set_shadow(sq);
        self.cq.set_shadow(cq);
    }

    /// The CID codec (slot index and generation of a CID).
    pub(crate) fn codec(&self) -> CidCodec {
        self.codec
    }
    pub(crate) fn outstanding(&self) -> usize {
        self.live
    }
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }
    pub(crate) fn has_free_slot(&self) -> bool {
        self.free_head != NO_SLOT && !self.sq.is_full()
    }

    /// Places `cmd` in the SQ with a fresh CID and PRPs for `data`. The doorbell is not
    /// written (see [`Engine::ring`]). `deadline_ns: None` takes the engine's timeout from
    /// the last clock reading (see [`STALE_DIVISOR`]). On error the payload is handed back
    /// untouched.
    #[inline(always)]
    pub(crate) fn submit(
        &mut self,
        mut cmd: Command,
        data: Option<Transfer>,
        payload: T,
        deadline_ns: Option<u64>,
    ) -> Result<u16, (Error, T)> {
        let slot_idx = self.free_head;
        if slot_idx == NO_SLOT || self.sq.is_full() {
            return Err((
                Error::QueueFull {
                    qid: self.qid(),
                    depth: self.outstanding() as u16,
                },
                payload,
            ));
        };
        let slot = &mut self.slots[slot_idx as usize];
        // An SGL Data Block descriptor instead of PRPs when the policy picks one
        // (`crate::sgl`); then no PRP list is used and the slot's old list is cleared below.
        let sgl = self.sgl;
        let data = data.filter(|t| {
            t.offset
                .checked_add(t.len)
                .is_none_or(|end| end > t.mem.len())
                || !sgl.apply(&mut cmd, t.mem.iova() + t.offset as u64, t.len)
        });
        if let Some(t) = data {
            if t.offset
                .checked_add(t.len)
                .is_none_or(|end| end > t.mem.len())
            {
                return Err((
                    Error::BufferSize {
                        need: t.len,
                        have: t.mem.len().saturating_sub(t.offset),
                    },
                    payload,
                ));
            }
            let lists = || SlotLists {
                mem: self.lists.unwrap_or(t.mem),
                first: slot_idx as usize * self.lists_per_slot,
                count: if self.lists.is_some() {
                    self.lists_per_slot
                } else {
                    0
                },
                _p: core::marker::PhantomData,
            };
            // `offset + len` fits the region (checked above), so the sum does not overflow.
            let addr = t.mem.iova() + t.offset as u64;
            // One or two pages (the common case) need no list and cannot fail.
            let p = match prp::build_small(addr, t.len) {
                Some(p) => p,
                None => match prp::build(addr, t.len, PAGE_SIZE, &mut lists()) {
                    Ok(p) => p,
                    Err(e) => {
                        let error = match e {
                            PrpError::Misaligned => Error::Misaligned { offset: t.offset },
                            PrpError::TooLong { .. } => Error::TransferTooLarge {
                                bytes: t.len as u64,
                                max: (self.lists_per_slot * (PAGE_SIZE / 8 - 1) * PAGE_SIZE) as u64,
                            },
                            PrpError::Empty => Error::InvalidArgument("zero-length transfer"),
                            PrpError::Invalid => {
                                Error::InvalidArgument("transfer address overflows")
                            }
                        };
                        return Err((error, payload));
                    }
                },
            };
            cmd.set_prps(p.prp1, p.prp2);
            let old = slot.list_len as usize;
            // Usually both 0: one comparison.
            if old > p.list_len {
                // Stale entries of an earlier, longer list are zeroed (only an engine with
                // list pages ever wrote a list).
                if self.lists.is_some() {
                    lists().clear(p.list_len, old);
                }
                slot.list_len = p.list_len as u32;
            } else if old < p.list_len {
                slot.list_len = p.list_len as u32;
            }
        }
        if data.is_none() && slot.list_len > 0 {
            // Only a slot of an engine with list pages has a list.
            if let Some(mem) = self.lists {
                let lists = SlotLists {
                    mem,
                    first: slot_idx as usize * self.lists_per_slot,
                    count: self.lists_per_slot,
                    _p: core::marker::PhantomData,
                };
                lists.clear(0, slot.list_len as usize);
            }
            slot.list_len = 0;
        }
        self.free_head = slot.next_free;
        self.live += 1;
        let cid = self.codec.encode(slot_idx, slot.generation);
        cmd.set_cid(cid);
        slot.cmd = cmd;
        slot.state = SlotState::InFlight;
        slot.payload = Some(payload);
        slot.seq = self.pushed;
        self.pushed += 1;
        let d = deadline_ns.unwrap_or(self.auto_deadline_ns);
        slot.deadline_ns = d;
        self.next_deadline_ns = self.next_deadline_ns.min(d);
        // `is_full` above saw room in the ring, and nothing was pushed since.
        self.sq.push_not_full(&slot.cmd);
        self.stats.submitted += 1;
        Ok(cid)
    }

    /// Writes the SQ tail doorbell if anything was submitted since the last ring.
    pub(crate) fn ring<B: Bar + ?Sized>(&mut self, bar: &B) {
        match self.sq.ring(bar, self.cq.published()) {
            Rung::Mmio => self.stats.sq_doorbells += 1,
            Rung::ShadowOnly => self.stats.shadow_only_doorbells += 1,
            Rung::Nothing => {}
        }
        // Every command pushed so far is now behind the doorbell.
        self.rung_seq = self.pushed;
    }

    /// Consumes every posted completion, validating SQID, SQHD and CID, and hands each matched
    /// request to `f`. Writes the CQ head doorbell once at the end. Returns how many entries
    /// were consumed (matched or not). Inlined into its callers, so that the callback's
    /// captures stay in registers.
    #[inline(always)]
    pub(crate) fn reap<B: Bar + ?Sized>(
        &mut self,
        bar: &B,
        max: usize,
        mut f: impl FnMut(Reaped<T>),
    ) -> usize {
        let mut n = 0;
        while n < max {
            let Some(c) = self.cq.pop() else { break };
            n += 1;
            if c.sqid() != self.qid() {
                // §4.2.1: SQID identifies the SQ the command came from; this CQ serves one SQ.
                self.stats.bad_sqid += 1;
                continue;
            }
            if !self.sq.update_head(c.sqhd()) {
                self.stats.bad_sqhd += 1;
            }
            let (idx, generation) = self.codec.decode(c.cid());
            let Some(slot) = self.slots.get_mut(idx as usize) else {
                self.stats.bad_cid += 1;
                continue;
            };
            if slot.state == SlotState::Free
                || slot.generation != generation
                || slot.seq >= self.rung_seq
            {
                // `seq >= rung_seq`: the device never saw this command (its SQ entry is still
                // behind the doorbell), so this cannot be its completion; accepting it would
                // hand back a buffer the device will reach once the doorbell is written.
                // Unknown, duplicate or stale: logged and survived (never trusted).
                self.stats.bad_cid += 1;
                continue;
            }
            let late = slot.state == SlotState::TimedOut;
            let Some(payload) = slot.payload.take() else {
                self.stats.bad_cid += 1;
                continue;
            };
            slot.state = SlotState::Free;
            slot.generation = self.codec.next_generation(slot.generation);
            slot.next_free = self.free_head;
            self.free_head = idx;
            self.live -= 1;
            if late {
                self.stats.late += 1;
            } else {
                self.stats.completed += 1;
            }
            f(Reaped {
                cid: c.cid(),
                slot: idx,
                completion: c,
                payload,
                opcode: slot.cmd.opcode(),
                late,
                cmd: &slot.cmd,
            });
        }
        match self.cq.ring(bar, self.sq.published()) {
            Rung::Mmio => self.stats.cq_doorbells += 1,
            Rung::ShadowOnly => self.stats.shadow_only_doorbells += 1,
            Rung::Nothing => {}
        }
        n
    }

    /// True if a dated deadline has passed at `now_ns` (the next [`Engine::expire`] will
    /// report something).
    pub(crate) fn due(&self, now_ns: u64) -> bool {
        now_ns >= self.next_deadline_ns
    }

    /// Takes the clock reading `now_ns` for the commands submitted from now on (re-dating
    /// those submitted since the previous reading if it is stale, see [`STALE_DIVISOR`]),
    /// then handles every request whose deadline passed, reporting each to `f`: with
    /// `abort_ns`, an in-flight request becomes [`Expiry::Abort`] (it gets `abort_ns` more)
    /// and an aborting one [`Expiry::Timeout`]; without, an in-flight request becomes
    /// [`Expiry::Timeout`] at once. O(1) when nothing expired and the previous reading is
    /// recent; called with one clock reading per poll. Returns how many events were reported.
    pub(crate) fn expire(
        &mut self,
        now_ns: u64,
        abort_ns: Option<u64>,
        mut f: impl FnMut(Expiry<'_, T>),
    ) -> usize {
        let (old_auto, stale_from) = (self.auto_deadline_ns, self.dated_seq);
        let stale = self
            .clock_ns
            .is_none_or(|t| now_ns.saturating_sub(t) > self.timeout_ns / STALE_DIVISOR);
        let at = now_ns.saturating_add(self.timeout_ns).min(UNDATED - 1);
        self.clock_ns = Some(now_ns);
        self.auto_deadline_ns = at;
        self.dated_seq = self.pushed;
        if stale && self.pushed > stale_from {
            // Dated from a reading long before their submission (or from none): they take
            // this reading instead. Rare: only after a pause in polling.
            for s in self.slots.iter_mut() {
                if s.state == SlotState::InFlight
                    && s.deadline_ns == old_auto
                    && s.seq >= stale_from
                {
                    s.deadline_ns = at;
                }
            }
            self.next_deadline_ns = self.next_deadline_ns.min(at);
        }
        if now_ns < self.next_deadline_ns {
            return 0;
        }
        let mut next = u64::MAX;
        let mut n = 0;
        for (i, s) in self.slots.iter_mut().enumerate() {
            let live = matches!(s.state, SlotState::InFlight | SlotState::Aborting);
            if !live || s.deadline_ns == UNDATED {
                continue;
            }
            if s.deadline_ns > now_ns {
                next = next.min(s.deadline_ns);
                continue;
            }
            let cid = self.codec.encode(i as u16, s.generation);
            let Some(p) = s.payload.as_mut() else {
                continue;
            };
            n += 1;
            match (s.state, abort_ns) {
                (SlotState::InFlight, Some(extra)) => {
                    s.state = SlotState::Aborting;
                    s.deadline_ns = now_ns.saturating_add(extra).min(UNDATED - 1);
                    next = next.min(s.deadline_ns);
                    f(Expiry::Abort { cid });
                }
                // In flight without an Abort policy, or aborting past the second deadline.
                _ => {
                    s.state = SlotState::TimedOut;
                    self.stats.timeouts += 1;
                    f(Expiry::Timeout {
                        cid,
                        opcode: s.cmd.opcode(),
                        payload: p,
                    });
                }
            }
        }
        self.next_deadline_ns = next;
        n
    }

    /// The state of a CID: `Some(true)` in flight, `Some(false)` timed out, `None` free or
    /// unknown.
    pub(crate) fn is_in_flight(&self, cid: u16) -> Option<bool> {
        let (idx, generation) = self.codec.decode(cid);
        let s = self.slots.get(idx as usize)?;
        if s.generation != generation {
            return None;
        }
        match s.state {
            SlotState::InFlight | SlotState::Aborting => Some(true),
            SlotState::TimedOut => Some(false),
            SlotState::Free => None,
        }
    }

    /// Takes every outstanding payload (in flight or timed out) with its CID and command,
    /// resetting the
    /// slots. Only for when the device can no longer touch them (queue deleted, controller
    /// disabled).
    pub(crate) fn take_all(&mut self, mut f: impl FnMut(u16, T, &Command)) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.state != SlotState::Free {
                let cid = self.codec.encode(i as u16, s.generation);
                s.state = SlotState::Free;
                s.generation = self.codec.next_generation(s.generation);
                if let Some(p) = s.payload.take() {
                    f(cid, p, &s.cmd);
                }
                s.next_free = self.free_head;
                self.free_head = i as u16;
                self.live -= 1;
            }
        }
        self.next_deadline_ns = u64::MAX;
    }

    /// After a controller reset, before the queues are re-created: the rings start over
    /// (SQ tail and head 0, CQ head 0 with phase 1 and every entry zeroed, §4.2.4) and every
    /// outstanding payload is handed to `f` with its old CID. Only while the device has no
    /// queue on these rings.
    pub(crate) fn reinit(&mut self, f: impl FnMut(u16, T, &Command)) {
        self.take_all(f);
        self.sq.restart();
        self.cq.restart();
    }

    /// The regions this engine owns (rings and PRP lists), for teardown.
    pub(crate) fn regions(&self) -> impl Iterator<Item = Mem> {
        [Some(self.sq.mem()), Some(self.cq.mem()), self.lists]
            .into_iter()
            .flatten()
    }
}

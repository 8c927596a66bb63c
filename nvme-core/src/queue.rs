//! Submission and completion rings (NVMe Base §3.3.1 "Memory-based Transport Queue Model",
//! §4.1 and §4.2), command-ID allocation, and the memory ordering of the doorbell protocol.
//!
//! # Ordering
//! - Host → device: the host writes a submission entry with volatile stores, then issues the
//!   barrier of the `barrier` module (a `Release` fence plus, on aarch64, `dmb oshst`), then
//!   writes the SQ tail doorbell. The fence orders the entry (and the
//!   data buffer and PRP list the host filled earlier) before the doorbell, so the device
//!   never fetches a stale entry. Volatile stores alone do not order normal memory against
//!   MMIO on weakly ordered CPUs.
//! - Device → host: the host reads the completion dword that carries the phase tag with an
//!   `Acquire` load; only if the phase matches does it read the other dwords, after a read
//!   barrier (`dmb oshld` on aarch64), so they are at least as new. After consuming entries it writes the CQ head doorbell once per batch
//!   (§3.3.1.2), which releases those entries back to the device.
//! - Nothing in an entry the device wrote is trusted: SQHD, SQID and CID are checked, and a
//!   bad value is counted, never a panic.

use crate::dma::Mem;
use crate::hw::Bar;
use crate::spec::regs::{cq_head_doorbell, sq_tail_doorbell};
use crate::spec::{Command, Completion, CQE_SIZE, SQE_SIZE};

/// The shadow doorbell buffer protocol's test (NVMe Base §5.8, Doorbell Buffer Config: the
/// host updates the shadow doorbell, then reads the EventIdx the controller wrote, and writes
/// the doorbell register only if the update moved the value past EventIdx): true if going from
/// `old` to `new` crosses `event_idx`, i.e. `event_idx` lies in `old .. new` (the half-open
/// window of values just published), computed in wrapping 16-bit arithmetic so that it holds
/// across wrap-around of the values.
#[inline]
pub(crate) fn need_event(event_idx: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
}

/// One queue's doorbell in the shadow doorbell buffer and its EventIdx entry (NVMe Base §5.8,
/// Doorbell Buffer Config): both buffers have the layout of the doorbell registers from
/// `1000h` (SQ y tail at `2y × (4 << CAP.DSTRD)`, CQ y head at `(2y + 1) × (4 << CAP.DSTRD)`).
///
/// Entries are accessed as 8-aligned 64-bit words, like every location the core and the
/// device may access at the same time (`crate::dma`): with `CAP.DSTRD = 0` a queue pair's SQ
/// tail (low half) and CQ head (high half) share one word, which the pair writes whole; with a
/// larger stride each entry starts its own word and the other half is reserved (written 0).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shadow {
    db: Mem,
    ei: Mem,
    /// Byte offset of the 8-aligned word holding the entry.
    word: usize,
    /// The entry is the word's high half (the CQ head of a pair sharing the word).
    hi: bool,
    /// The word's other half is the partner queue's entry (else reserved).
    paired: bool,
    /// Write the doorbell register on every update as well (the admin queue: controllers
    /// differ on whether shadow doorbells cover it).
    always_mmio: bool,
}

impl Shadow {
    /// The entries of the doorbell at register offset `doorbell` (`1000h` or above), if they
    /// fit both buffers; `partner` is the register offset of the other queue of the pair
    /// (the CQ head for an SQ tail and the other way round).
    pub(crate) fn new(
        db: Mem,
        ei: Mem,
        doorbell: usize,
        partner: Option<usize>,
        always_mmio: bool,
    ) -> Option<Self> {
        let off = doorbell.checked_sub(crate::spec::regs::offset::DBS)?;
        let word = off & !7;
        let fits = |m: &Mem| off % 4 == 0 && word + 8 <= m.len();
        let paired = partner.is_some_and(|p| p & !7 == doorbell & !7 && p != doorbell);
        (fits(&db) && fits(&ei)).then_some(Self {
            db,
            ei,
            word,
            hi: off & 4 != 0,
            paired,
            always_mmio,
        })
    }
    /// Clears the doorbell and EventIdx words (before the queue is created: a new queue's
    /// head and tail are 0, §4.1, and no stale value of an earlier queue may remain). With
    /// `CAP.DSTRD = 0` this clears the partner queue's entries too: the pair is created
    /// together.
    pub(crate) fn clear(&self) {
        self.db.store_u64(self.word, 0);
        self.ei.store_u64(self.word, 0);
    }
    /// Publishes `new` in the shadow doorbell (with `partner`, the partner queue's last
    /// published value, when it shares the word); true if the doorbell register must be
    /// written too (the EventIdx test, or `always_mmio`). The caller has already ordered the
    /// queue entries before this store (`crate::barrier::before_doorbell`).
    #[inline]
    fn update(&self, old: u16, new: u16, partner: u16) -> bool {
        let other = if self.paired { u64::from(partner) } else { 0 };
        let v = if self.hi {
            other | u64::from(new) << 32
        } else {
            u64::from(new) | other << 32
        };
        self.db.store_u64(self.word, v);
        // The shadow store is visible to the device before the EventIdx load (Linux's `mb()`
        // in the same place): otherwise the device could set EventIdx after our read and
        // then miss this update.
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        match self.ei.load_acquire_u64(self.word) {
            Some(w) => {
                let ei = if self.hi { (w >> 32) as u16 } else { w as u16 };
                self.always_mmio || need_event(ei, new, old)
            }
            None => true,
        }
    }
}

/// What a ring did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rung {
    /// Nothing new since the last ring.
    Nothing,
    /// The doorbell register was written.
    Mmio,
    /// Only the shadow doorbell was updated (the controller's EventIdx did not ask for the
    /// register write).
    ShadowOnly,
}

/// A submission queue ring in DMA memory.
#[derive(Debug)]
pub(crate) struct SubQueue {
    mem: Mem,
    qid: u16,
    entries: u16,
    tail: u16,
    /// Head as last reported by the controller in SQHD.
    head: u16,
    /// Entries from `head` to `tail` (placed and not yet consumed by the controller, as far
    /// as SQHD told).
    used: u16,
    /// Tail value last written to the doorbell.
    rung: u16,
    doorbell: usize,
    /// The shadow doorbell, when the controller has a doorbell buffer.
    shadow: Option<Shadow>,
}

impl SubQueue {
    pub(crate) fn new(mem: Mem, qid: u16, entries: u16, dstrd: u8) -> Self {
        Self {
            mem,
            qid,
            entries,
            tail: 0,
            head: 0,
            used: 0,
            rung: 0,
            doorbell: sq_tail_doorbell(qid, dstrd),
            shadow: None,
        }
    }
    /// The register offset of the tail doorbell.
    pub(crate) fn doorbell(&self) -> usize {
        self.doorbell
    }
    /// The tail last published to the controller (doorbell register or shadow).
    pub(crate) fn published(&self) -> u16 {
        self.rung
    }
    /// Uses (or stops using) a shadow doorbell.
    pub(crate) fn set_shadow(&mut self, shadow: Option<Shadow>) {
        self.shadow = shadow;
    }
    pub(crate) fn entries(&self) -> u16 {
        self.entries
    }
    pub(crate) fn mem(&self) -> Mem {
        self.mem
    }
    /// The state of a newly created queue (§4.1: head and tail 0), for a re-creation.
    pub(crate) fn restart(&mut self) {
        self.tail = 0;
        self.head = 0;
        self.used = 0;
        self.rung = 0;
    }
    /// True when no entry is free: one slot always stays empty so that full and empty
    /// differ (§4.1.1: the queue is full when tail + 1 == head).
    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.used == self.entries - 1
    }
    /// Writes `cmd` at the tail and advances it. The doorbell is not written: see
    /// [`SubQueue::ring`].
    /// For a caller that has just seen [`SubQueue::is_full`] false.
    #[inline(always)]
    pub(crate) fn push_not_full(&mut self, cmd: &Command) {
        debug_assert!(!self.is_full());
        // One bounds check for the whole 64-byte entry (`Mem::write_dwords`).
        self.mem
            .write_dwords(self.tail as usize * SQE_SIZE, cmd.dwords_ref());
        self.tail = wrap_inc(self.tail, self.entries);
        self.used += 1;
    }
    /// Writes the tail doorbell if the tail moved since the last ring (batched doorbells:
    /// several pushes, one MMIO write). With a shadow doorbell, updates it and writes the
    /// register only if the controller's EventIdx asks for it.
    /// `cq_head` is the CQ's last published head (its shadow entry may share a word with
    /// this one).
    pub(crate) fn ring<B: Bar + ?Sized>(&mut self, bar: &B, cq_head: u16) -> Rung {
        if self.tail == self.rung {
            return Rung::Nothing;
        }
        // The entries, PRP lists and write buffers stored before this point are visible to
        // the device before it sees the new tail (`dma_wmb` in Linux's `writel`).
        crate::barrier::before_doorbell();
        if let Some(s) = &self.shadow {
            if !s.update(self.rung, self.tail, cq_head) {
                self.rung = self.tail;
                return Rung::ShadowOnly;
            }
        }
        // SAFETY: the doorbell publishes only entries this queue wrote (`push`), each naming
        // memory its request slot keeps alive until the completion is consumed or the
        // controller is disabled (`crate::engine`, `crate::reclaim`).
        unsafe { bar.write32(self.doorbell, self.tail as u32) };
        self.rung = self.tail;
        Rung::Mmio
    }
    /// Applies an SQHD value from a completion. Valid values lie in the consumed window
    /// `head ..= rung` (circularly); others are rejected and the caller counts them.
    #[inline]
    pub(crate) fn update_head(&mut self, sqhd: u16) -> bool {
        if sqhd >= self.entries {
            return false;
        }
        let outstanding = ring_distance(self.head, self.rung, self.entries);
        let advance = ring_distance(self.head, sqhd, self.entries);
        if advance > outstanding {
            return false;
        }
        self.head = sqhd;
        // `advance <= outstanding <= used`: the rung tail lies between head and tail.
        self.used = self.used.saturating_sub(advance);
        true
    }
    pub(crate) fn qid(&self) -> u16 {
        self.qid
    }
}

/// Steps from `from` forward to `to` in a ring of `entries` slots (both below `entries`).
/// Compare and wrap, no division; computed in `u32`: with up to 65535 entries, `to + entries`
/// does not fit a `u16`.
#[inline(always)]
fn ring_distance(from: u16, to: u16, entries: u16) -> u16 {
    if to >= from {
        to - from
    } else {
        (to as u32 + entries as u32 - from as u32) as u16
    }
}

/// `i + 1` in a ring of `entries` slots (`i < entries`).
#[inline(always)]
fn wrap_inc(i: u16, entries: u16) -> u16 {
    let n = i.wrapping_add(1);
    if n >= entries {
        0
    } else {
        n
    }
}

/// A completion queue ring in DMA memory.
#[derive(Debug)]
pub(crate) struct CompQueue {
    mem: Mem,
    entries: u16,
    head: u16,
    phase: bool,
    /// Head value last written to the doorbell.
    rung: u16,
    doorbell: usize,
    /// The shadow doorbell, when the controller has a doorbell buffer.
    shadow: Option<Shadow>,
}

impl CompQueue {
    pub(crate) fn new(mem: Mem, qid: u16, entries: u16, dstrd: u8) -> Self {
        // §4.2.4: the phase tag of every entry is 0 after creation (the memory is zeroed by
        // the allocator contract), and the controller posts its first pass with phase 1.
        Self {
            mem,
            entries,
            head: 0,
            phase: true,
            rung: 0,
            doorbell: cq_head_doorbell(qid, dstrd),
            shadow: None,
        }
    }
    /// The register offset of the head doorbell.
    pub(crate) fn doorbell(&self) -> usize {
        self.doorbell
    }
    /// The head last published to the controller (doorbell register or shadow).
    pub(crate) fn published(&self) -> u16 {
        self.rung
    }
    /// Uses (or stops using) a shadow doorbell.
    pub(crate) fn set_shadow(&mut self, shadow: Option<Shadow>) {
        self.shadow = shadow;
    }
    pub(crate) fn mem(&self) -> Mem {
        self.mem
    }
    /// The state of a newly created queue: head 0, phase 1, every entry's phase tag 0
    /// (§4.2.4), for a re-creation.
    pub(crate) fn restart(&mut self) {
        self.mem.fill(0, self.mem.len(), 0);
        self.head = 0;
        self.phase = true;
        self.rung = 0;
    }
    /// Takes the next completion if the device has posted one (its phase tag matches).
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Completion> {
        let base = self.head as usize * CQE_SIZE;
        // Acquire on the dword holding the phase tag, then, only if the phase says the entry
        // is new, the other dwords after a read barrier (`dma_rmb`); see the module docs.
        // One bounds check for the whole entry.
        let dw = self.mem.read_entry_after_phase(base, self.phase)?;
        self.head += 1;
        if self.head == self.entries {
            self.head = 0;
            self.phase = !self.phase;
        }
        Some(Completion::from_dwords(dw))
    }
    /// Writes the head doorbell if entries were consumed since the last write (with a
    /// shadow doorbell: as [`SubQueue::ring`]).
    /// `sq_tail` is the SQ's last published tail (its shadow entry may share a word with
    /// this one).
    pub(crate) fn ring<B: Bar + ?Sized>(&mut self, bar: &B, sq_tail: u16) -> Rung {
        if self.head == self.rung {
            return Rung::Nothing;
        }
        // Our reads of the consumed entries happen before the device may reuse them.
        crate::barrier::before_doorbell();
        if let Some(s) = &self.shadow {
            if !s.update(self.rung, self.head, sq_tail) {
                self.rung = self.head;
                return Rung::ShadowOnly;
            }
        }
        // SAFETY: the head doorbell hands back CQ entries this queue consumed; it names no
        // other memory.
        unsafe { bar.write32(self.doorbell, self.head as u32) };
        self.rung = self.head;
        Rung::Mmio
    }
}

/// Command identifiers: slot index in the low bits, a generation in the high bits, so a stale
/// or duplicated completion for a reused slot is detected (the generation moves on every
/// reuse).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CidCodec {
    slot_bits: u32,
    /// Low `slot_bits` bits set.
    slot_mask: u16,
    /// The generation bits that fit above the slot index.
    gen_mask: u16,
}

impl CidCodec {
    pub(crate) fn new(slots: u16) -> Self {
        // Up to 16 bits: a queue of more than 32768 slots needs them all for the slot index
        // (and then has no generation bits left).
        let slot_bits = (u16::BITS - (slots.max(2) - 1).leading_zeros()).min(16);
        Self {
            slot_bits,
            slot_mask: ((1u32 << slot_bits) - 1) as u16,
            gen_mask: ((1u32 << (16 - slot_bits)) - 1) as u16,
        }
    }
    #[inline]
    pub(crate) fn encode(&self, slot: u16, generation: u16) -> u16 {
        (slot as u32 | (((generation & self.gen_mask) as u32) << self.slot_bits)) as u16
    }
    /// Returns (slot, generation).
    #[inline]
    pub(crate) fn decode(&self, cid: u16) -> (u16, u16) {
        (cid & self.slot_mask, (cid as u32 >> self.slot_bits) as u16)
    }
    #[inline]
    pub(crate) fn next_generation(&self, generation: u16) -> u16 {
        generation.wrapping_add(1) & self.gen_mask
    }
}

/// Counters of what the device did wrong on one queue (the core survives all of these).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Commands submitted.
    pub submitted: u64,
    /// Completions matched to a request.
    pub completed: u64,
    /// SQ doorbell writes.
    pub sq_doorbells: u64,
    /// CQ doorbell writes.
    pub cq_doorbells: u64,
    /// Doorbell updates (SQ or CQ) written only to the shadow doorbell buffer: the
    /// controller's EventIdx did not ask for the register write (NVMe Base §5.8).
    pub shadow_only_doorbells: u64,
    /// Completions whose CID matched no outstanding request (unknown, duplicate or stale).
    pub bad_cid: u64,
    /// Completions naming another SQ.
    pub bad_sqid: u64,
    /// Completions with an SQHD outside the consumed window.
    pub bad_sqhd: u64,
    /// Completions that arrived after their request timed out.
    pub late: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Requests resubmitted by the recovery policy (after an Abort or a reset).
    pub retried: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    /// The EventIdx test against its definition: the register is written exactly when
    /// EventIdx is one of the values stepped over, `old + 1 ..= new` shifted by one, i.e.
    /// EventIdx ∈ {old, old + 1, …, new − 1} (mod 2^16): the controller asked to be told once
    /// the value moves past EventIdx.
    fn need_event_by_walking(event_idx: u16, new: u16, old: u16) -> bool {
        let mut v = old;
        while v != new {
            if v == event_idx {
                return true;
            }
            v = v.wrapping_add(1);
        }
        false
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 8 } else { 2048 },
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn need_event_is_the_wrapping_window_test(
            old in any::<u16>(),
            step in prop_oneof![0u16..64, any::<u16>()],
            back in prop_oneof![0u16..64, any::<u16>()],
        ) {
            let new = old.wrapping_add(step);
            let event_idx = new.wrapping_sub(back);
            prop_assert_eq!(need_event(event_idx, new, old), need_event_by_walking(event_idx, new, old));
        }
    }

    #[test]
    fn need_event_fixed_cases() {
        // Nothing published: never.
        assert!(!need_event(5, 5, 5));
        // The controller waits for the value to pass its last seen tail: every step does.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 9, 5));
        // EventIdx already passed by the previous update: no write.
        assert!(!need_event(4, 9, 5));
        // Across the 16-bit wrap.
        assert!(need_event(0xFFFF, 2, 0xFFFE));
        assert!(need_event(1, 2, 0xFFFE));
        assert!(!need_event(2, 2, 0xFFFE));
        assert!(!need_event(0xFFFD, 2, 0xFFFE));
    }

    #[test]
    fn cid_codec() {
        let c = CidCodec::new(256);
        assert_eq!(c.slot_bits, 8);
        let cid = c.encode(5, 3);
        assert_eq!(c.decode(cid), (5, 3));
        assert_eq!(c.next_generation(255), 0);
        let c = CidCodec::new(31);
        assert_eq!(c.slot_bits, 5);
        assert_eq!(c.decode(c.encode(30, 0x7FF)), (30, 0x7FF));
        // 65535 slots need all 16 bits (found by `fuzz/` hostile_device: with 15, slot 0x8000
        // decoded as slot 0 and a completion went to the wrong request).
        let c = CidCodec::new(u16::MAX);
        assert_eq!(c.slot_bits, 16);
        assert_eq!(c.decode(c.encode(0xFFFE, 1)), (0xFFFE, 0));
        let c = CidCodec::new(32769);
        assert_eq!(c.decode(c.encode(32768, 0)), (32768, 0));
        assert_ne!(c.encode(32768, 0), c.encode(0, 1));
    }

    /// Shadow doorbell entries are 64-bit words: with a 4-byte doorbell stride a pair's SQ
    /// tail (low half) and CQ head (high half) share one, and each update writes the
    /// partner's last value back unchanged; with a wider stride each entry has its own word.
    /// EventIdx is read from the matching half.
    #[test]
    fn shadow_entries_are_whole_words_shared_by_a_pair() {
        let mut db = alloc::vec![0u64; 512];
        let mut ei = alloc::vec![0u64; 512];
        let (dbp, eip) = (db.as_mut_ptr(), ei.as_mut_ptr());
        let mem = |p: *mut u64| {
            let p = core::ptr::NonNull::new(p as *mut u8).unwrap();
            Mem::new(crate::hw::DmaRegion::new(p, 0x1000, 4096, 0x1000))
        };
        let (dbm, eim) = (mem(dbp), mem(eip));
        // SAFETY: in bounds of the vectors, which outlive every access; no reference into
        // them is alive while `Mem` writes through the raw pointers.
        let word = |p: *mut u64, i: usize| unsafe { p.add(i).read_volatile() };
        // SAFETY: as for `word`.
        let set = |p: *mut u64, i: usize, v: u64| unsafe { p.add(i).write_volatile(v) };
        let dbs = crate::spec::regs::offset::DBS;
        // Stride 4: queue 1's SQ tail at 8, its CQ head at 12 (one word, index 1).
        let sq = Shadow::new(dbm, eim, dbs + 8, Some(dbs + 12), false).unwrap();
        let cq = Shadow::new(dbm, eim, dbs + 12, Some(dbs + 8), false).unwrap();
        set(eip, 1, 5 | 7 << 32);
        assert!(sq.update(0, 6, 3), "SQ EventIdx 5 lies in 0..6");
        assert_eq!(word(dbp, 1), 6 | 3 << 32);
        assert!(!cq.update(3, 4, 6), "CQ EventIdx 7 is not in 3..4");
        assert_eq!(word(dbp, 1), 6 | 4 << 32);
        assert!(cq.update(4, 9, 6));
        assert_eq!(word(dbp, 1), 6 | 9 << 32);
        // Stride 8: queue 1's SQ tail at 16 (word 2), its CQ head at 24 (word 3).
        let sq = Shadow::new(dbm, eim, dbs + 16, Some(dbs + 24), false).unwrap();
        let cq = Shadow::new(dbm, eim, dbs + 24, Some(dbs + 16), false).unwrap();
        set(eip, 2, 1);
        set(eip, 3, 1);
        assert!(sq.update(0, 2, 40));
        assert!(cq.update(0, 3, 2));
        assert_eq!(
            (word(dbp, 2), word(dbp, 3)),
            (2, 3),
            "no partner in the other half"
        );
        cq.clear();
        assert_eq!((word(dbp, 3), word(eip, 3)), (0, 0));
        drop((db, ei));
    }

    /// Found by `fuzz/` (hostile_device): with more than 32768 entries, `tail + entries`
    /// overflowed `u16` (a panic in debug builds, a wrong free count in release).
    #[test]
    fn ring_arithmetic_on_the_largest_queue() {
        let region = crate::hw::DmaRegion::new(core::ptr::NonNull::dangling(), 0, 0, 0);
        let mut sq = SubQueue::new(Mem::new(region), 1, u16::MAX, 0);
        (sq.tail, sq.used) = (u16::MAX - 1, u16::MAX - 1);
        assert!(sq.is_full());
        (sq.tail, sq.used) = (40_001, 40_001);
        assert!(!sq.is_full());
        sq.rung = 40_000;
        assert!(sq.update_head(39_999));
        assert_eq!(
            sq.used, 2,
            "SQHD 39,999 leaves 39,999 and 40,000 in the ring"
        );
        assert!(!sq.update_head(40_001));
        assert!(!sq.update_head(u16::MAX), "beyond the ring");
        assert_eq!(ring_distance(65_000, 3, u16::MAX), 538);
    }
}

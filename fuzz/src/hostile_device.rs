//! `hostile_device`: the real driver's I/O path ([`IoQueuePair::detached`]) against a device
//! played by the harness, which fetches commands at each SQ doorbell, moves data through the
//! PRPs, and posts arbitrary completion entries: correct ones, wrong phase, unknown,
//! duplicate and stale CIDs, wrong SQID, SQHD outside the window, completions for idle or
//! not-yet-submitted slots. The input also drives submissions, polls, clock jumps past the
//! I/O timeout and the detach of the device.
//!
//! The harness keeps a reference model of the queue pair (NVMe Base §3.3.1, §4.2: phase
//! tags, SQHD window, CIDs) and checks after every step:
//! - each request finishes exactly once: with its completion, as timed out, or with an
//!   error; never twice;
//! - a buffer comes back only with a valid completion of its command, with an error before
//!   the device saw it, or after the device was detached; the allocator panics if the driver
//!   frees memory the device may still access, or frees anything twice;
//! - the data the device reads through the PRPs is the caller's, and what it writes lands in
//!   the caller's buffer;
//! - the counters (`completed`, `bad_cid`, `bad_sqid`, `bad_sqhd`, `late`, `timeouts`,
//!   doorbells) match the model exactly;
//! - once the clock has passed the timeout and the device is detached, every request has
//!   finished, and dropping the pair leaks no DMA memory.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use nvme_core::hw::Clock;
use nvme_core::spec::{Command, Completion, NvmOpcode, Status};
use nvme_core::{DmaBuffer, Error, IoCompletion, IoQueuePair, Namespace};

use crate::platform::{FuzzPlatform, DMA_PAGE};

type Buf = DmaBuffer<FuzzPlatform>;

/// Which CID an injected entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Arbitrary)]
pub enum CidSel {
    /// Any value.
    Raw(u16),
    /// The CID of some outstanding request (fetched by the device or not).
    Outstanding(u16),
    /// A CID that was completed before (duplicate or stale).
    Recent(u8),
}

/// Which SQHD an injected entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Arbitrary)]
pub enum SqhdSel {
    /// Any value.
    Raw(u16),
    /// The device's real fetch position.
    Current,
    /// The fetch position plus a small offset (modulo nothing: may leave the ring).
    Near(i8),
}

/// An entry the device writes into the CQ.
#[derive(Debug, Clone, Copy, PartialEq, Arbitrary)]
pub struct Injected {
    /// CID.
    pub cid: CidSel,
    /// SQID: `None` for the right one.
    pub sqid: Option<u16>,
    /// SQHD.
    pub sqhd: SqhdSel,
    /// False: the phase tag is the previous pass's, so the entry is not posted.
    pub phase_ok: bool,
    /// Status field.
    pub status: Status,
    /// DW0.
    pub dw0: u32,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Arbitrary)]
pub enum Action {
    /// `submit_read` of `blocks` blocks; `reuse` takes a returned buffer if one fits.
    Read {
        /// Blocks (0 is refused by the driver).
        blocks: u8,
        /// Starting LBA.
        slba: u16,
        /// Reuse a returned buffer.
        reuse: bool,
    },
    /// `submit_write`.
    Write {
        /// Blocks.
        blocks: u8,
        /// Starting LBA.
        slba: u16,
        /// Reuse a returned buffer.
        reuse: bool,
    },
    /// `submit_range` of any command over a buffer of `pages` pages (none for 0).
    Raw {
        /// The command (CID and PRPs are the driver's).
        cmd: Command,
        /// Buffer pages.
        pages: u8,
        /// Byte offset in the buffer (need not be dword aligned).
        offset: u16,
        /// Transfer length; `None` for the rest of the buffer.
        len: Option<u32>,
    },
    /// Many Flush commands.
    Burst {
        /// How many (stops at the first refusal).
        count: u16,
    },
    /// SQ doorbell.
    Ring,
    /// `poll`.
    Poll,
    /// Moves the clock.
    Advance {
        /// Milliseconds.
        ms: u16,
    },
    /// Moves the clock past the I/O timeout.
    PastTimeout,
    /// The device completes a fetched command correctly.
    Complete {
        /// Which one.
        pick: u16,
        /// With this status.
        status: Status,
        /// And DW0.
        dw0: u32,
    },
    /// The device completes every fetched command with `status`.
    CompleteAll {
        /// Status.
        status: Status,
    },
    /// The device writes an entry of its choosing.
    Inject(Injected),
    /// The device is stopped (controller disabled).
    Detach,
    /// Buffer allocations fail after `after` more.
    FailAllocations {
        /// Allocations that still succeed.
        after: u8,
    },
}

/// One input.
#[derive(Debug, PartialEq, Arbitrary)]
pub struct HostileDeviceInput {
    /// Queue ID.
    pub qid: u16,
    /// Queue size: values below 0xFF00 give 2..=65 entries, 0xFF00.. give 66..=321 entries.
    /// Only the dedicated deep-queue inputs ([`crate::seeds::deep_queue_inputs`]) get the huge
    /// queues instead: 0xFF00.. give 32769 + 128k entries, 0xFFFF gives 65535.
    pub entries: u16,
    /// 4 KiB blocks instead of 512 B.
    pub lba_4k: bool,
    /// Maximum transfer selector.
    pub max_transfer: u8,
    /// I/O timeout in milliseconds (at least 1).
    pub timeout_ms: u16,
    /// The steps.
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqState {
    InFlight,
    TimedOut,
}

#[derive(Debug)]
struct Req {
    cid: u16,
    cmd: Command,
    /// (iova, len) of the buffer region and the transfer within it.
    buffer: Option<(u64, usize)>,
    xfer: Option<(usize, usize)>,
    fetched: bool,
    /// Data pages the device found through the PRPs, in order (bus addresses).
    pages: Vec<u64>,
    state: ReqState,
    /// Set by the first poll after submission (the driver reads no clock when submitting).
    deadline: Option<u64>,
    /// The device wrote its pattern into the transfer range.
    device_wrote: bool,
}

/// What a finished request must look like when the driver hands it back.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Success,
    Failed(Status),
    TimedOut,
    Reset,
}

#[derive(Debug, PartialEq, Eq)]
struct Expected {
    tag: u64,
    outcome: Outcome,
    dw0: u32,
    buffer: Option<u64>,
}

struct Harness {
    p: Arc<FuzzPlatform>,
    qp: Option<IoQueuePair<FuzzPlatform>>,
    ns: Namespace,
    qid: u16,
    n: u16,
    timeout_ns: u64,
    max_transfer: usize,
    sq_iova: u64,
    cq_iova: u64,
    sq_db: usize,
    cq_db: usize,
    // Driver-side view the model mirrors.
    next_tag: u64,
    reqs: BTreeMap<u64, Req>,
    by_cid: HashMap<u16, u64>,
    /// Tags pushed into the SQ and not yet fetched, in ring order.
    pushed: VecDeque<u64>,
    sq_tail: u16,
    sq_head: u16,
    sq_rung: u16,
    // Device side.
    cq_tail: u16,
    cq_phase: bool,
    cq_head_db: u16,
    posted: Vec<Completion>,
    recent_cids: Vec<u16>,
    list_regions: HashSet<u64>,
    detached: bool,
    // Bookkeeping.
    finished: HashSet<u64>,
    submitted_tags: HashSet<u64>,
    stats: nvme_core::queue::QueueStats,
    pool: Vec<Buf>,
    /// Transfers the device wrote (read data) and whose completion is expected.
    wrote: HashMap<u64, (usize, usize)>,
    /// Work done (entries, pages, scans): the run stops taking actions past [`WORK_LIMIT`],
    /// so no input is slow, whatever it asks for.
    work: u64,
}

/// Work budget of one input: enough for the largest queue filled once.
const WORK_LIMIT: u64 = 120_000;

/// The queue size `input` gets. Mostly small queues (2..=65 entries); the top 256 `entries`
/// values give larger ones (66..=321), cheap enough that the fuzzer runs about a thousand
/// inputs a second. The huge queues (more than 32768 slots, up to the 65535 entries a u16
/// holds) take tens of milliseconds per input to fill, so only `dedicated` inputs (see
/// [`Dedicated`]) get them: they run at every replay and at the start of every fuzzing run,
/// without the fuzzer's mutations of them (hundreds of slow inputs in the corpus) dragging it
/// down.
fn queue_entries(input: &HostileDeviceInput, dedicated: Dedicated) -> u16 {
    match input.entries {
        0..=0xFEFF => 2 + input.entries % 64,
        e if dedicated == Dedicated::No => 66 + (e - 0xFF00),
        0xFFFF => u16::MAX,
        e => 0x8001 + (e - 0xFF00) * 128,
    }
}

/// Whether an input is one of the dedicated deep-queue inputs
/// ([`crate::seeds::deep_queue_inputs`]), the only ones that get huge queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dedicated {
    No,
    Yes,
}

impl Dedicated {
    /// A structured input (seeds, tests): dedicated if equal to one.
    fn of_input(input: &HostileDeviceInput) -> Self {
        if input.entries >= 0xFF00 && crate::seeds::deep_queue_inputs().contains(input) {
            Self::Yes
        } else {
            Self::No
        }
    }

    /// Fuzzer bytes: dedicated only if byte for byte the encoding of one, so that mutations
    /// that change only bits the decoding ignores (and so decode to the same input) are
    /// capped like any other.
    fn of_bytes(input: &HostileDeviceInput, data: &[u8]) -> Self {
        if input.entries >= 0xFF00
            && crate::seeds::deep_queue_encodings()
                .iter()
                .any(|e| e == data)
        {
            Self::Yes
        } else {
            Self::No
        }
    }
}

/// How a submission reaches the driver.
enum Via {
    Range(Option<usize>),
    Read(u64),
    Write(u64),
}

fn pattern(tag: u64, i: usize, device: bool) -> u8 {
    let b = (tag as u8).wrapping_mul(31) ^ (i as u8).wrapping_mul(7) ^ ((i >> 8) as u8);
    if device {
        b ^ 0xA5
    } else {
        b
    }
}

impl Harness {
    fn qp(&mut self) -> &mut IoQueuePair<FuzzPlatform> {
        self.qp.as_mut().expect("the pair lives until teardown")
    }

    /// Applies the doorbell writes the driver made: the device fetches commands at the SQ
    /// doorbell and learns the CQ head at the CQ doorbell.
    fn doorbells(&mut self) {
        for (off, value) in self.p.bar.take_writes() {
            if off == self.sq_db {
                assert!(
                    !self.detached,
                    "SQ doorbell written after the device was detached"
                );
                assert!(
                    value < self.n as u32,
                    "SQ tail doorbell {value} outside the ring"
                );
                let new = value as u16;
                assert_ne!(new, self.sq_rung, "SQ doorbell written without a new entry");
                self.stats.sq_doorbells += 1;
                let mut pos = self.sq_rung;
                while pos != new {
                    self.fetch(pos);
                    pos = (pos + 1) % self.n;
                }
                self.sq_rung = new;
            } else if off == self.cq_db {
                assert!(
                    value < self.n as u32,
                    "CQ head doorbell {value} outside the ring"
                );
                self.stats.cq_doorbells += 1;
                assert_eq!(
                    value as u16, self.cq_tail,
                    "CQ head doorbell must release exactly the consumed entries"
                );
                self.cq_head_db = value as u16;
            } else {
                panic!("the driver wrote {value:#x} to BAR offset {off:#x}, not its doorbells");
            }
        }
    }

    /// The device fetches the SQ entry at `pos` and checks it against what was submitted.
    fn fetch(&mut self, pos: u16) {
        self.work += 1;
        let mut b = [0u8; 64];
        self.p
            .dma
            .read(self.sq_iova + pos as u64 * 64, &mut b)
            .expect("SQ ring unmapped");
        let sqe = Command::from_le_bytes(&b);
        let tag = self
            .pushed
            .pop_front()
            .expect("the SQ doorbell covers more entries than were submitted");
        let req = self
            .reqs
            .get_mut(&tag)
            .expect("a pushed request is outstanding");
        assert_eq!(sqe.cid(), req.cid, "SQE at {pos} carries the wrong CID");
        // Apart from the CID and the pointers the entry is the caller's command: the driver
        // clears PSDT, MPTR and the PRPs of caller-built commands (only the request's own
        // buffer may be named), then fills the PRPs from that buffer.
        let mut expect = req.cmd;
        expect
            .set_cid(req.cid)
            .set_psdt(0)
            .set_cdw(4, 0)
            .set_cdw(5, 0)
            .set_prps(0, 0);
        if req.xfer.is_some() {
            expect.set_prps(sqe.prp1(), sqe.prp2());
        }
        assert_eq!(
            sqe.dwords(),
            expect.dwords(),
            "SQE differs from the submitted command"
        );
        req.fetched = true;
        let (Some((iova, _)), Some((off, len))) = (req.buffer, req.xfer) else {
            return;
        };
        // Walk the PRPs as a controller does (§4.3.1).
        let first = sqe.prp1();
        assert_eq!(
            first,
            iova + off as u64,
            "PRP1 is not the buffer address + offset"
        );
        let pg = DMA_PAGE as u64;
        let entries = ((first % pg) as usize + len).div_ceil(DMA_PAGE);
        let mut pages = vec![first];
        if entries == 2 {
            pages.push(sqe.prp2());
        } else if entries > 2 {
            let mut at = sqe.prp2();
            assert_eq!(at % 8, 0, "PRP list pointer not qword aligned");
            self.list_regions.insert(at);
            self.p.dma.set_device_owned(at, true);
            while pages.len() < entries {
                let mut e = [0u8; 8];
                self.p
                    .dma
                    .read(at, &mut e)
                    .expect("PRP list entry unmapped");
                let v = u64::from_le_bytes(e);
                if at % pg == pg - 8 && entries - pages.len() > 1 {
                    // The last entry of a list page points to the next list page.
                    assert_eq!(v % pg, 0, "PRP list chain pointer not page aligned");
                    at = v;
                    self.list_regions.insert(at);
                    self.p.dma.set_device_owned(at, true);
                    continue;
                }
                pages.push(v);
                at += 8;
            }
        }
        for (i, &a) in pages.iter().enumerate().skip(1) {
            assert_eq!(
                a,
                (first & !(pg - 1)) + i as u64 * pg,
                "PRP entry {i} is not the next page of the buffer"
            );
        }
        // What the device reads is what the caller wrote.
        let mut data = vec![0u8; len];
        self.p
            .dma
            .read(first, &mut data)
            .expect("data buffer unmapped");
        for (i, &d) in data.iter().enumerate() {
            assert_eq!(
                d,
                pattern(tag, off + i, false),
                "device read wrong data at {i}"
            );
        }
        req.pages = pages;
    }

    fn alloc(&mut self, len: usize, reuse: bool) -> Option<Buf> {
        if reuse {
            if let Some(i) = self.pool.iter().position(|b| b.len() == len) {
                return Some(self.pool.swap_remove(i));
            }
        }
        match self.qp().alloc_buffer(len) {
            Ok(b) => Some(b),
            Err(Error::Dma { .. }) | Err(Error::InvalidArgument(_)) => None,
            Err(e) => panic!("unexpected allocation error {e:?}"),
        }
    }

    fn outstanding(&self) -> usize {
        self.reqs.len()
    }

    /// The error the driver must give for a submission, if any (in the driver's documented
    /// order of checks), or `None` if it must be accepted.
    fn predict_refusal(
        &self,
        buffer: Option<(usize, usize, usize)>, // (buffer len, offset, transfer len)
    ) -> Option<&'static str> {
        if self.detached {
            return Some("reset");
        }
        if let Some((blen, off, len)) = buffer {
            if off.checked_add(len).is_none_or(|e| e > blen) {
                return Some("size");
            }
            if len > self.max_transfer {
                return Some("too large");
            }
        }
        let n = self.n as u32;
        let used = (self.sq_tail as u32 + n - self.sq_head as u32) % n;
        if self.outstanding() >= (n - 1) as usize || used == n - 1 {
            return Some("full");
        }
        if let Some((_, off, len)) = buffer {
            if len == 0 {
                return Some("empty");
            }
            if off % 4 != 0 {
                return Some("misaligned");
            }
        }
        None
    }

    fn submit(&mut self, cmd: Command, mut buf: Option<Buf>, off: usize, via: Via) {
        let len = match via {
            Via::Range(l) => l,
            _ => None,
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        self.work += 1 + buf.as_ref().map_or(0, |b| b.len() as u64 / 1024);
        let shape = buf.as_ref().map(|b| {
            let l = len.unwrap_or(b.len().saturating_sub(off));
            (b.len(), off, l)
        });
        if let Some(b) = buf.as_mut() {
            let data: Vec<u8> = (0..b.len()).map(|i| pattern(tag, i, false)).collect();
            b.write(0, &data).expect("fill");
        }
        let region = buf.as_ref().map(|b| (b.iova(), b.len()));
        let refusal = self.predict_refusal(shape);
        let ns = self.ns.clone();
        let qp = self.qp();
        let r = match via {
            Via::Range(_) => {
                let l = shape.map_or(0, |(_, _, l)| l);
                // SAFETY: the device is this harness, which transfers exactly the `l` bytes
                // the PRPs describe (`xfer`), whatever the command's own fields say.
                unsafe { qp.submit_unchecked(cmd, buf, off, l, tag) }
            }
            Via::Read(slba) => qp.submit_read(&ns, slba, buf.expect("data"), tag),
            Via::Write(slba) => qp.submit_write(&ns, slba, buf.expect("data"), tag),
        };
        self.doorbells();
        match (r, refusal) {
            (Ok(cid), None) => {
                assert!(
                    !self.by_cid.contains_key(&cid),
                    "CID {cid:#x} given to two outstanding requests"
                );
                self.stats.submitted += 1;
                self.submitted_tags.insert(tag);
                if let Some((iova, _)) = region {
                    self.p.dma.set_device_owned(iova, true);
                }
                self.by_cid.insert(cid, tag);
                self.pushed.push_back(tag);
                self.sq_tail = (self.sq_tail + 1) % self.n;
                self.reqs.insert(
                    tag,
                    Req {
                        cid,
                        cmd,
                        buffer: region,
                        xfer: shape.map(|(_, o, l)| (o, l)),
                        fetched: false,
                        pages: Vec::new(),
                        state: ReqState::InFlight,
                        deadline: None,
                        device_wrote: false,
                    },
                );
            }
            (Err(e), Some(why)) => {
                let ok = matches!(
                    (&e.error, why),
                    (Error::ControllerReset, "reset")
                        | (Error::BufferSize { .. }, "size")
                        | (Error::TransferTooLarge { .. }, "too large")
                        | (Error::QueueFull { .. }, "full")
                        | (Error::Misaligned { .. }, "misaligned")
                        | (Error::InvalidArgument(_), "empty")
                );
                assert!(ok, "submission refused with {:?}, expected {why}", e.error);
                // A refused submission hands the buffer back untouched.
                assert_eq!(e.buffer.as_ref().map(|b| (b.iova(), b.len())), region);
                if let Some(b) = e.buffer {
                    self.pool.push(b);
                }
            }
            (Ok(cid), Some(why)) => panic!("submission accepted (cid {cid:#x}), expected {why}"),
            (Err(e), None) => panic!("submission refused with {:?}", e.error),
        }
    }

    fn submit_rw(&mut self, write: bool, blocks: u8, slba: u16, reuse: bool) {
        let lba = self.ns.lba_size() as usize;
        let nlb = (blocks as usize).max(1);
        let Some(buf) = self.alloc(nlb * lba, reuse) else {
            return;
        };
        // Blocks beyond the namespace are refused before anything else is looked at.
        if slba as u64 + nlb as u64 > self.ns.blocks() {
            let ns = self.ns.clone();
            let r = if write {
                self.qp().submit_write(&ns, slba as u64, buf, 0)
            } else {
                self.qp().submit_read(&ns, slba as u64, buf, 0)
            };
            let e = r.expect_err("LBA range outside the namespace accepted");
            assert!(
                matches!(e.error, Error::LbaOutOfRange { .. }),
                "{:?}",
                e.error
            );
            self.pool.extend(e.buffer);
            self.doorbells();
            return;
        }
        let op = if write {
            NvmOpcode::WRITE
        } else {
            NvmOpcode::READ
        };
        // What NVM §3.3.4 / §3.3.6 say the command looks like; the fetch compares.
        let cmd = Command::rw(op, self.ns.nsid(), slba as u64, (nlb - 1) as u16, false);
        let via = if write {
            Via::Write(slba as u64)
        } else {
            Via::Read(slba as u64)
        };
        self.submit(cmd, Some(buf), 0, via);
    }

    /// The device posts `c` at its CQ tail, if the CQ has room.
    fn post(&mut self, c: Completion, phase_ok: bool) {
        if self.detached {
            return;
        }
        let n = self.n as u32;
        let used = (self.cq_tail as u32 + n - self.cq_head_db as u32) % n;
        if used == n - 1 {
            return; // CQ full: the device holds the entry back.
        }
        let dw = c.dwords();
        let phase = if phase_ok {
            self.cq_phase
        } else {
            !self.cq_phase
        };
        let dw3 = (dw[3] & !(1 << 16)) | (phase as u32) << 16;
        let e = Completion::from_dwords([dw[0], dw[1], dw[2], dw3]);
        self.p
            .dma
            .write(self.cq_iova + self.cq_tail as u64 * 16, &e.to_le_bytes())
            .expect("CQ ring unmapped");
        if phase_ok {
            self.posted.push(e);
            self.cq_tail = (self.cq_tail + 1) % self.n;
            if self.cq_tail == 0 {
                self.cq_phase = !self.cq_phase;
            }
        }
    }

    fn fetched_tags(&mut self) -> Vec<u64> {
        self.work += self.reqs.len() as u64;
        self.reqs
            .iter()
            .filter(|(_, r)| r.fetched)
            .map(|(t, _)| *t)
            .collect()
    }

    /// The device completes fetched request `tag` properly (writing read data first).
    fn complete(&mut self, tag: u64, status: Status, dw0: u32) {
        if self.detached {
            return;
        }
        let req = self.reqs.get_mut(&tag).expect("outstanding");
        if NvmOpcode(req.cmd.opcode()).data_direction()
            == nvme_core::spec::DataDirection::ControllerToHost
            && status.is_success()
        {
            if let Some((off, len)) = req.xfer {
                let data: Vec<u8> = (0..len).map(|i| pattern(tag, off + i, true)).collect();
                let first = req.pages[0];
                self.p
                    .dma
                    .write(first, &data)
                    .expect("data buffer unmapped");
                req.device_wrote = true;
            }
        }
        let c = Completion::new(dw0, 0, self.sq_rung, self.qid, req.cid, true, status);
        self.post(c, true);
    }

    fn inject(&mut self, i: Injected) {
        let cid = match i.cid {
            CidSel::Raw(c) => c,
            CidSel::Outstanding(k) => {
                if self.reqs.is_empty() {
                    k
                } else {
                    let tags: Vec<u64> = self.reqs.keys().copied().collect();
                    self.reqs[&tags[k as usize % tags.len()]].cid
                }
            }
            CidSel::Recent(k) => {
                if self.recent_cids.is_empty() {
                    k as u16
                } else {
                    self.recent_cids
                        [self.recent_cids.len() - 1 - k as usize % self.recent_cids.len()]
                }
            }
        };
        let sqhd = match i.sqhd {
            SqhdSel::Raw(v) => v,
            SqhdSel::Current => self.sq_rung,
            SqhdSel::Near(d) => (self.sq_rung as i32 + d as i32) as u16,
        };
        let c = Completion::new(
            i.dw0,
            0,
            sqhd,
            i.sqid.unwrap_or(self.qid),
            cid,
            true,
            i.status,
        );
        self.post(c, i.phase_ok);
    }

    /// Model of one reap: which posted entries are accepted, in order.
    fn predict_reap(&mut self) -> Vec<Expected> {
        let mut out = Vec::new();
        for c in std::mem::take(&mut self.posted) {
            if c.sqid() != self.qid {
                self.stats.bad_sqid += 1;
                continue;
            }
            // SQHD must lie in the window head ..= last doorbell value (§4.2.1, §4.1.2).
            let n = self.n as u32;
            let (h, r, s) = (self.sq_head as u32, self.sq_rung as u32, c.sqhd() as u32);
            if s < n && (s + n - h) % n <= (r + n - h) % n {
                self.sq_head = c.sqhd();
            } else {
                self.stats.bad_sqhd += 1;
            }
            let Some(&tag) = self.by_cid.get(&c.cid()) else {
                self.stats.bad_cid += 1;
                continue;
            };
            if !self.reqs[&tag].fetched {
                // The device never saw this command: the entry cannot be its completion.
                self.stats.bad_cid += 1;
                continue;
            }
            let req = self.reqs.remove(&tag).expect("outstanding");
            self.by_cid.remove(&c.cid());
            self.recent_cids.push(c.cid());
            if let Some((iova, _)) = req.buffer {
                // The device let go of the buffer with this completion.
                self.p.dma.set_device_owned(iova, false);
            }
            match req.state {
                ReqState::TimedOut => self.stats.late += 1,
                ReqState::InFlight => {
                    self.stats.completed += 1;
                    let st = c.status();
                    out.push(Expected {
                        tag,
                        outcome: if st.is_success() {
                            Outcome::Success
                        } else {
                            Outcome::Failed(st)
                        },
                        dw0: c.dw0(),
                        buffer: req.buffer.map(|b| b.0),
                    });
                    // Keep what the device wrote for the data check.
                    if req.device_wrote && st.is_success() {
                        self.wrote.insert(tag, req.xfer.expect("transfer"));
                    }
                }
            }
        }
        out
    }

    fn poll(&mut self) {
        self.work += 1 + self.posted.len() as u64 + self.reqs.len() as u64;
        let mut expected = Vec::new();
        let mut timeouts = Vec::new();
        if self.detached {
            // The first poll after the device stopped fails everything still outstanding.
            for (tag, req) in std::mem::take(&mut self.reqs) {
                if req.state == ReqState::InFlight {
                    expected.push(Expected {
                        tag,
                        outcome: Outcome::Reset,
                        dw0: 0,
                        buffer: req.buffer.map(|b| b.0),
                    });
                }
            }
            self.by_cid.clear();
            self.pushed.clear();
        } else {
            expected = self.predict_reap();
            // Every poll with requests outstanding reads the clock once: it dates the requests
            // submitted since the last poll, then times out those past their deadline.
            if !self.reqs.is_empty() {
                let now = self.p.clock.now_ns();
                for (tag, req) in self.reqs.iter_mut() {
                    if req.state != ReqState::InFlight {
                        continue;
                    }
                    let deadline = *req
                        .deadline
                        .get_or_insert(now.saturating_add(self.timeout_ns));
                    if deadline <= now {
                        req.state = ReqState::TimedOut;
                        self.stats.timeouts += 1;
                        timeouts.push(*tag);
                    }
                }
            }
        }
        let mut got: Vec<IoCompletion<FuzzPlatform>> = Vec::new();
        let r = self.qp().poll(|c| got.push(c));
        let n = r.expect("poll fails only for a removed device");
        assert!(n >= got.len());
        self.doorbells();
        let mut reaped = Vec::new();
        let mut timed = Vec::new();
        for c in got {
            assert!(
                self.submitted_tags.contains(&c.tag),
                "completion for tag {} that was never submitted",
                c.tag
            );
            assert!(
                self.finished.insert(c.tag),
                "request {} completed twice ({:?})",
                c.tag,
                c.result
            );
            let outcome = match &c.result {
                Ok(()) => Outcome::Success,
                Err(Error::Command { status, opcode, .. }) => {
                    let _ = opcode;
                    Outcome::Failed(*status)
                }
                Err(Error::Timeout { .. }) => Outcome::TimedOut,
                Err(Error::ControllerReset) => Outcome::Reset,
                Err(e) => panic!("unexpected completion error {e:?}"),
            };
            if outcome == Outcome::TimedOut {
                assert!(
                    c.buffer.is_none(),
                    "a timed-out request handed its buffer back"
                );
                timed.push(c.tag);
                continue;
            }
            if let Some(b) = &c.buffer {
                if let Some((off, len)) = self.wrote.remove(&c.tag) {
                    let data = b.to_vec();
                    for (i, &d) in data.iter().enumerate() {
                        let inside = (off..off + len).contains(&i);
                        assert_eq!(
                            d,
                            pattern(c.tag, i, inside),
                            "read data did not land in the caller's buffer at {i}"
                        );
                    }
                }
            }
            reaped.push(Expected {
                tag: c.tag,
                outcome,
                dw0: c.dw0,
                buffer: c.buffer.as_ref().map(|b| b.iova()),
            });
            self.pool.extend(c.buffer);
        }
        if self.detached {
            reaped.sort_by_key(|e| e.tag);
            expected.sort_by_key(|e| e.tag);
        }
        assert_eq!(reaped, expected, "completions differ from the model");
        timed.sort_unstable();
        assert_eq!(timed, timeouts, "timeouts differ from the model");
        self.check_stats();
        // Keep the pool small.
        if self.pool.len() > 8 {
            self.pool.drain(..4);
        }
    }

    fn check_stats(&mut self) {
        let s = self.qp().stats();
        assert_eq!(s, self.stats, "driver counters differ from the model");
    }

    fn detach(&mut self) {
        if self.detached {
            return;
        }
        self.qp().detach_device();
        self.detached = true;
        // The device can no longer touch anything.
        for (_, r) in self.reqs.iter() {
            if let Some((iova, _)) = r.buffer {
                self.p.dma.set_device_owned(iova, false);
            }
        }
        for l in std::mem::take(&mut self.list_regions) {
            if self.p.dma.is_live(l) {
                self.p.dma.set_device_owned(l, false);
            }
        }
        self.p.dma.set_device_owned(self.sq_iova, false);
        self.p.dma.set_device_owned(self.cq_iova, false);
        self.posted.clear();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // An assertion failed: let the driver drop without a second panic.
            self.p.dma.disarm();
        }
    }
}

impl Harness {
    fn new(input: &HostileDeviceInput, dedicated: Dedicated) -> Option<Self> {
        let n = queue_entries(input, dedicated);
        // Queues over 65 entries get the smallest transfer size, so no PRP list memory is
        // needed (the driver preallocates the worst-case list pages for every slot).
        let max_transfer = if n > 65 {
            DMA_PAGE
        } else {
            match input.max_transfer % 5 {
                0 => DMA_PAGE,
                1 => 2 * DMA_PAGE,
                2 => 8 * DMA_PAGE,
                3 => 128 * 1024,
                _ => 1024 * 1024,
            }
        };
        let timeout_ms = (input.timeout_ms as u64).max(1);
        let p = FuzzPlatform::new();
        let mut qp = IoQueuePair::detached(
            p.clone(),
            input.qid,
            n,
            max_transfer,
            Duration::from_millis(timeout_ms),
        )
        .ok()?;
        let lba_size: u32 = if input.lba_4k { 4096 } else { 512 };
        let ns = qp.detached_namespace(1, 0x8000, lba_size);
        let (sq_iova, cq_iova) = (qp.sq_iova(), qp.cq_iova());
        assert_ne!(sq_iova, cq_iova);
        p.dma.set_device_owned(sq_iova, true);
        p.dma.set_device_owned(cq_iova, true);
        assert_eq!(qp.depth(), n as usize - 1);
        assert_eq!(qp.qid(), input.qid);
        Some(Self {
            p,
            qp: Some(qp),
            ns,
            qid: input.qid,
            n,
            timeout_ns: timeout_ms * 1_000_000,
            max_transfer,
            sq_iova,
            cq_iova,
            sq_db: 0x1000 + 8 * input.qid as usize,
            cq_db: 0x1000 + 8 * input.qid as usize + 4,
            next_tag: 1,
            reqs: BTreeMap::new(),
            by_cid: HashMap::new(),
            pushed: VecDeque::new(),
            sq_tail: 0,
            sq_head: 0,
            sq_rung: 0,
            cq_tail: 0,
            cq_phase: true,
            cq_head_db: 0,
            posted: Vec::new(),
            recent_cids: Vec::new(),
            list_regions: HashSet::new(),
            detached: false,
            finished: HashSet::new(),
            submitted_tags: HashSet::new(),
            stats: Default::default(),
            pool: Vec::new(),
            wrote: HashMap::new(),
            work: 0,
        })
    }

    fn step(&mut self, a: &Action) {
        match a {
            Action::Read {
                blocks,
                slba,
                reuse,
            } => self.submit_rw(false, *blocks, *slba, *reuse),
            Action::Write {
                blocks,
                slba,
                reuse,
            } => self.submit_rw(true, *blocks, *slba, *reuse),
            Action::Raw {
                cmd,
                pages,
                offset,
                len,
            } => {
                let buf = if *pages == 0 {
                    None
                } else {
                    match self.alloc(*pages as usize * DMA_PAGE, false) {
                        Some(b) => Some(b),
                        None => return,
                    }
                };
                let (off, len) = if buf.is_some() {
                    (*offset as usize, len.map(|l| l as usize))
                } else {
                    (0, None)
                };
                self.submit(*cmd, buf, off, Via::Range(len));
            }
            Action::Burst { count } => {
                for _ in 0..*count {
                    let before = self.stats.submitted;
                    self.submit(Command::flush(1), None, 0, Via::Range(None));
                    if self.stats.submitted == before {
                        break;
                    }
                }
            }
            Action::Ring => {
                self.qp().ring();
                self.doorbells();
                self.check_stats();
            }
            Action::Poll => self.poll(),
            Action::Advance { ms } => self.p.clock.advance(*ms as u64 * 1_000_000),
            Action::PastTimeout => self.p.clock.advance(self.timeout_ns + 1),
            Action::Complete { pick, status, dw0 } => {
                let tags = self.fetched_tags();
                if !tags.is_empty() {
                    self.complete(tags[*pick as usize % tags.len()], *status, *dw0);
                }
            }
            Action::CompleteAll { status } => {
                for t in self.fetched_tags() {
                    self.complete(t, *status, t as u32);
                }
            }
            Action::Inject(i) => self.inject(*i),
            Action::Detach => self.detach(),
            Action::FailAllocations { after } => self.p.dma.fail_after(*after as u64),
        }
    }

    /// Time runs out, the device is stopped, and every request must have finished.
    fn teardown(mut self) {
        if !self.detached {
            self.poll(); // consumes what is posted, dates what is new
            self.p.clock.advance(self.timeout_ns + 1);
            self.poll(); // everything in flight times out
            self.detach();
        }
        self.poll(); // everything still outstanding fails with ControllerReset
        self.poll(); // and nothing more comes
        assert_eq!(self.qp().outstanding(), 0, "requests left after detach");
        for t in &self.submitted_tags {
            assert!(self.finished.contains(t), "request {t} was lost");
        }
        // After the stop, submissions are refused with the buffer handed back.
        self.submit(Command::flush(1), None, 0, Via::Range(None));
        self.check_stats();
        self.pool.clear();
        drop(self.qp.take());
        assert_eq!(
            self.p.dma.live_regions(),
            0,
            "DMA memory leaked after the pair and all buffers were dropped"
        );
    }
}

/// The fuzz target body.
pub fn run_hostile_device(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(input) = HostileDeviceInput::arbitrary(&mut u) else {
        return;
    };
    run(&input, Dedicated::of_bytes(&input, data));
}

/// Runs one structured input (also used by the seed generator).
pub fn run_hostile_device_input(input: &HostileDeviceInput) {
    run(input, Dedicated::of_input(input));
}

fn run(input: &HostileDeviceInput, dedicated: Dedicated) {
    let Some(mut h) = Harness::new(input, dedicated) else {
        return;
    };
    for a in input.actions.iter().take(4096) {
        if h.work > WORK_LIMIT {
            break;
        }
        h.step(a);
    }
    h.teardown();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> HostileDeviceInput {
        HostileDeviceInput::arbitrary(&mut Unstructured::new(bytes)).expect("decodes")
    }

    /// Huge queues (over 32768 slots) only for the dedicated inputs, which the checked-in
    /// regressions still decode to; any other input, including a one-action change of a
    /// dedicated one, gets at most 321 entries and no PRP list pages.
    #[test]
    fn only_dedicated_inputs_get_deep_queues() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
        for name in ["queue-65535", "queue-over-32768-slots"] {
            let bytes = std::fs::read(root.join("hostile_device").join(name)).expect("kept");
            let input = decode(&bytes);
            assert_eq!(
                Dedicated::of_bytes(&input, &bytes),
                Dedicated::Yes,
                "{name}"
            );
            assert_eq!(Dedicated::of_input(&input), Dedicated::Yes, "{name}");
            assert!(queue_entries(&input, Dedicated::Yes) > 0x8000, "{name}");
            // A bit the decoding ignores changed (the last byte is the "no more actions" flag,
            // read as `byte & 1`): the same input, but not the dedicated bytes.
            let mut other = bytes.clone();
            let k = other.len() - 1;
            other[k] ^= 0x80;
            assert_eq!(decode(&other), input, "{name}");
            assert_eq!(Dedicated::of_bytes(&input, &other), Dedicated::No, "{name}");
        }
        for mut input in crate::seeds::deep_queue_inputs() {
            input.actions.push(Action::Poll);
            let d = Dedicated::of_input(&input);
            assert_eq!(d, Dedicated::No);
            assert_eq!(queue_entries(&input, d), 66 + (input.entries - 0xFF00));
            assert_eq!(
                Harness::new(&input, d).expect("pair").max_transfer,
                DMA_PAGE
            );
        }
        let small = |entries| HostileDeviceInput {
            qid: 1,
            entries,
            lba_4k: false,
            max_transfer: 4,
            timeout_ms: 1,
            actions: Vec::new(),
        };
        assert_eq!(queue_entries(&small(0), Dedicated::No), 2);
        assert_eq!(queue_entries(&small(0xFEFF), Dedicated::Yes), 65);
        assert_eq!(queue_entries(&small(0xFFFF), Dedicated::No), 321);
        assert_eq!(
            Harness::new(&small(63), Dedicated::No)
                .expect("pair")
                .max_transfer,
            1 << 20
        );
    }
}

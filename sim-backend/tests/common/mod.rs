//! A tiny test-only host: raw register writes and hand-built submission entries through the
//! `Platform` traits, memory through `SimDma`'s safe host accessors. No driver logic beyond
//! what a test needs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_core::hw::{Bar, DmaAllocator, DmaRegion, InterruptSource, Platform};
use nvme_core::spec::regs::{cq_head_doorbell, offset, sq_tail_doorbell, Aqa, Cap, Cc, Csts};
use nvme_core::spec::{Command, Completion, Status, CQE_SIZE, SQE_SIZE};
use sim_backend::{SimConfig, SimPlatform, Simulator};

pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct HostSq {
    pub region: DmaRegion,
    pub size: u16,
    pub tail: u16,
}

#[derive(Debug)]
pub struct HostCq {
    pub region: DmaRegion,
    pub size: u16,
    pub head: u16,
    pub phase: bool,
}

pub struct Host {
    pub sim: Simulator,
    pub p: Arc<SimPlatform>,
    pub sqs: HashMap<u16, HostSq>,
    pub cqs: HashMap<u16, HostCq>,
    pub next_cid: u16,
    pub dstrd: u8,
}

pub fn cfg() -> SimConfig {
    SimConfig {
        ready_delay: Duration::from_millis(1),
        ..SimConfig::default()
    }
}

impl Host {
    pub fn new(cfg: SimConfig) -> Self {
        let sim = Simulator::new(cfg).expect("simulator");
        let p = sim.platform();
        let dstrd = Cap(p.bar().read64(offset::CAP)).dstrd();
        Self {
            sim,
            p,
            sqs: HashMap::new(),
            cqs: HashMap::new(),
            next_cid: 1,
            dstrd,
        }
    }

    /// A host with the controller enabled (admin queues of 32 entries).
    pub fn enabled(cfg: SimConfig) -> Self {
        let mut h = Self::new(cfg);
        h.enable(32);
        h
    }

    pub fn bar(&self) -> &sim_backend::SimBar {
        self.p.bar()
    }

    pub fn alloc(&self, len: usize) -> DmaRegion {
        self.p.dma().allocate(len).expect("dma")
    }

    pub fn write_mem(&self, iova: u64, data: &[u8]) {
        assert!(
            self.p.dma().host_write(iova, data),
            "host write to {iova:#x}"
        );
    }

    pub fn read_mem(&self, iova: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        assert!(
            self.p.dma().host_read(iova, &mut b),
            "host read at {iova:#x}"
        );
        b
    }

    pub fn csts(&self) -> Csts {
        Csts(self.bar().read32(offset::CSTS))
    }

    /// Waits (with a deadline) until `f(CSTS)`.
    pub fn wait_csts(&self, f: impl Fn(Csts) -> bool) -> Csts {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let c = self.csts();
            if f(c) {
                return c;
            }
            assert!(Instant::now() < deadline, "CSTS wait timed out: {c:?}");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Tracks SQ `qid`, created on `region` with `size` entries (tail 0).
    pub fn track_sq(&mut self, qid: u16, region: DmaRegion, size: u16) {
        self.sqs.insert(
            qid,
            HostSq {
                region,
                size,
                tail: 0,
            },
        );
    }

    /// Tracks CQ `qid`, created on `region` with `size` entries (head 0, phase tag 1).
    pub fn track_cq(&mut self, qid: u16, region: DmaRegion, size: u16) {
        self.cqs.insert(
            qid,
            HostCq {
                region,
                size,
                head: 0,
                phase: true,
            },
        );
    }

    /// Programs admin queues of `entries` entries and sets CC.EN, without waiting.
    pub fn start_enable(&mut self, entries: u16) {
        let asq = self.alloc(usize::from(entries) * SQE_SIZE);
        let acq = self.alloc(usize::from(entries) * CQE_SIZE);
        self.bar()
            .write32(offset::AQA, Aqa::new(entries - 1, entries - 1).0);
        self.bar().write64(offset::ASQ, asq.iova());
        self.bar().write64(offset::ACQ, acq.iova());
        self.track_sq(0, asq, entries);
        self.track_cq(0, acq, entries);
        let cc = Cc(0).with_iosqes(6).with_iocqes(4).with_en(true);
        self.bar().write32(offset::CC, cc.0);
    }

    pub fn enable(&mut self, entries: u16) {
        self.start_enable(entries);
        let c = self.wait_csts(|c| c.rdy() || c.cfs());
        assert!(!c.cfs(), "controller fatal at enable");
    }

    pub fn disable(&mut self) {
        let cc = Cc(self.bar().read32(offset::CC)).with_en(false);
        self.bar().write32(offset::CC, cc.0);
        self.wait_csts(|c| !c.rdy());
        self.sqs.clear();
        self.cqs.clear();
    }

    pub fn cid(&mut self) -> u16 {
        let c = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        c
    }

    /// Writes `cmd` (with its CID as given) into SQ `qid` without ringing.
    pub fn push(&mut self, qid: u16, cmd: &Command) {
        let sq = self.sqs.get_mut(&qid).expect("sq");
        let addr = sq.region.iova() + u64::from(sq.tail) * SQE_SIZE as u64;
        sq.tail = (sq.tail + 1) % sq.size;
        let bytes = cmd.to_le_bytes();
        assert!(self.p.dma().host_write(addr, &bytes));
    }

    pub fn ring_sq(&self, qid: u16) {
        let tail = self.sqs[&qid].tail;
        self.bar()
            .write32(sq_tail_doorbell(qid, self.dstrd), u32::from(tail));
    }

    pub fn ring_cq(&self, qid: u16) {
        let head = self.cqs[&qid].head;
        self.bar()
            .write32(cq_head_doorbell(qid, self.dstrd), u32::from(head));
    }

    /// Takes the next completion of CQ `qid` if its phase says it is new (no doorbell).
    pub fn poll(&mut self, qid: u16) -> Option<Completion> {
        let cq = self.cqs.get_mut(&qid).expect("cq");
        let addr = cq.region.iova() + u64::from(cq.head) * CQE_SIZE as u64;
        let mut b = [0u8; 16];
        assert!(self.p.dma().host_read(addr, &mut b));
        let c = Completion::from_le_bytes(&b);
        if c.phase() != cq.phase {
            return None;
        }
        cq.head = (cq.head + 1) % cq.size;
        if cq.head == 0 {
            cq.phase = !cq.phase;
        }
        Some(c)
    }

    /// Waits for the next completion on CQ `qid` (deadline), then rings its head doorbell.
    pub fn wait(&mut self, qid: u16) -> Completion {
        let c = self.wait_no_ring(qid);
        self.ring_cq(qid);
        c
    }

    pub fn wait_no_ring(&mut self, qid: u16) -> Completion {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(c) = self.poll(qid) {
                return c;
            }
            assert!(Instant::now() < deadline, "no completion on CQ {qid}");
            self.sim.service();
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Submits on SQ `sqid` (CID assigned here), rings, waits on `cqid`.
    pub fn exec_on(&mut self, sqid: u16, cqid: u16, mut cmd: Command) -> Completion {
        let cid = self.cid();
        cmd.set_cid(cid);
        self.push(sqid, &cmd);
        self.ring_sq(sqid);
        let c = self.wait(cqid);
        assert_eq!(c.cid(), cid, "completion for another command: {c:?}");
        assert_eq!(c.sqid(), sqid);
        assert_eq!(c.sqhd(), self.sqs[&sqid].tail, "SQHD");
        c
    }

    pub fn admin(&mut self, cmd: Command) -> Completion {
        self.exec_on(0, 0, cmd)
    }

    pub fn admin_ok(&mut self, cmd: Command) -> Completion {
        let c = self.admin(cmd);
        assert!(c.status().is_success(), "{cmd:?} failed: {}", c.status());
        c
    }

    /// Admin command transferring `len` bytes into a fresh buffer; returns (cqe, data).
    pub fn admin_read(&mut self, mut cmd: Command, len: usize) -> (Completion, Vec<u8>) {
        let buf = self.alloc(len.max(4096));
        cmd.set_prps(buf.iova(), 0);
        let c = self.admin(cmd);
        let data = self.read_mem(buf.iova(), len);
        (c, data)
    }

    /// Sets Number of Queues and creates I/O CQ `qid` + SQ `qid` with `entries` entries
    /// (CQ interrupts on vector `qid` if `ien`).
    pub fn create_pair(&mut self, qid: u16, entries: u16, ien: bool) {
        let cq = self.alloc(usize::from(entries) * CQE_SIZE);
        let sq = self.alloc(usize::from(entries) * SQE_SIZE);
        self.admin_ok(Command::create_io_cq(qid, entries - 1, cq.iova(), ien, qid));
        self.admin_ok(Command::create_io_sq(qid, entries - 1, sq.iova(), qid, 0));
        self.track_cq(qid, cq, entries);
        self.track_sq(qid, sq, entries);
    }

    pub fn io(&mut self, qid: u16, cmd: Command) -> Completion {
        self.exec_on(qid, qid, cmd)
    }

    /// Enables MSI-X vectors on the platform.
    pub fn enable_irqs(&self, n: u16) -> u16 {
        self.p.irq().enable(n).expect("irq")
    }
}

pub fn sc(c: &Completion) -> (u8, u8) {
    let s: Status = c.status();
    (s.sct().0, s.sc())
}

/// A two-page data buffer with `data` written at its start, PRP1 = first page and PRP2 =
/// second page (used by transfers above 4 KiB, ignored by the controller otherwise).
pub fn two_page_prps(h: &Host, cmd: &mut Command, data: &[u8]) -> DmaRegion {
    assert!(data.len() <= 8192);
    let buf = h.alloc(8192);
    if !data.is_empty() {
        h.write_mem(buf.iova(), data);
    }
    cmd.set_prps(buf.iova(), buf.iova() + 4096);
    buf
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

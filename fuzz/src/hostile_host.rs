//! `hostile_host`: the simulator ([`sim_backend::Simulator`], inline mode, strict checking)
//! against a host that writes anything: register writes (CC, AQA, ASQ, ACQ, INTMS/INTMC,
//! NSSR, undefined offsets, misaligned ones), doorbells in and out of range, submission
//! entries of any content in the rings it set up (or anywhere), PRPs and PRP lists pointing
//! inside, across and outside mapped memory, regions freed while queues still name them,
//! power events.
//!
//! Properties: no panic; no hang (every loop here is bounded, and an inline doorbell write
//! must return); the simulator never touches memory outside what is mapped to it: the
//! harness keeps canary regions that no input can name and checks they stay zero, checks
//! that the device never maps or unmaps anything (the mapped-region count is the host's),
//! and that freed IOVAs stay unmapped; every recorded violation is printable.

use arbitrary::{Arbitrary, Unstructured};
use nvme_core::hw::{DmaAllocator, DmaRegion, Platform};
use nvme_core::spec::regs::offset;
use nvme_core::spec::{AdminOpcode, Command};
use sim_backend::{NamespaceConfig, SimConfig, SimMode, SimPlatform, Simulator};
use std::sync::Arc;
use std::time::Duration;

/// A bus address chosen by the input.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Addr {
    /// Inside (or past the end of) one of the host's regions.
    Region {
        /// Region index (modulo the live regions).
        idx: u8,
        /// Byte offset.
        offset: u32,
    },
    /// Any value (canary regions excluded by the harness).
    Raw(u64),
}

/// A register to write.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Reg {
    /// CC.
    Cc,
    /// AQA.
    Aqa,
    /// INTMS.
    Intms,
    /// INTMC.
    Intmc,
    /// NSSR.
    Nssr,
    /// CSTS (read-only: the write must be ignored).
    Csts,
    /// Any offset in (or past) the BAR, aligned or not.
    Raw(u16),
}

/// One step of the host.
#[derive(Debug, Clone, Arbitrary)]
pub enum HostAction {
    /// A correct bring-up with regions 0 and 1 as the admin rings.
    Bringup {
        /// Admin queue entries, 0's based.
        entries_z: u8,
    },
    /// A 32-bit register write.
    Write {
        /// Where.
        reg: Reg,
        /// What.
        value: u32,
    },
    /// ASQ (`acq` false) or ACQ, 64-bit.
    Base {
        /// ACQ instead of ASQ.
        acq: bool,
        /// The base address.
        addr: Addr,
    },
    /// A 32-bit read anywhere.
    Read {
        /// Offset.
        offset: u16,
    },
    /// An admin command at the admin SQ tail the host keeps, then (optionally) the doorbell.
    Admin {
        /// The command (its PRPs replaced by `prp1`/`prp2`).
        cmd: Command,
        /// PRP1.
        prp1: Addr,
        /// PRP2.
        prp2: Addr,
        /// Write the doorbell.
        ring: bool,
    },
    /// Create I/O CQ + SQ `qid` on regions, through admin commands.
    CreatePair {
        /// Queue ID.
        qid: u8,
        /// Entries, 0's based.
        size_z: u8,
        /// Region of the SQ.
        sq: u8,
        /// Region of the CQ.
        cq: u8,
    },
    /// An I/O command at the tail of a queue created with `CreatePair`, then the doorbell.
    Io {
        /// Which created pair.
        pair: u8,
        /// The command.
        cmd: Command,
        /// PRP1.
        prp1: Addr,
        /// PRP2.
        prp2: Addr,
    },
    /// A raw doorbell write: index `idx` (2×QID for SQ tails, 2×QID+1 for CQ heads).
    Doorbell {
        /// Doorbell index.
        idx: u16,
        /// Value.
        value: u32,
    },
    /// The host consumes the completions of queue pair `pair` (0: admin) and rings its CQ
    /// head doorbell.
    Consume {
        /// 0 for admin, else a created pair.
        pair: u8,
    },
    /// Host memory write (PRP lists, SQ entries anywhere).
    Mem {
        /// Where.
        addr: Addr,
        /// Bytes (repeated `len` times as u64 PRP entries when `prp_list`).
        words: [u64; 4],
        /// Number of words written.
        len: u8,
    },
    /// A new region.
    Alloc {
        /// Pages.
        pages: u8,
    },
    /// Frees a region (queues or commands may still name it).
    Free {
        /// Region index.
        idx: u8,
    },
    /// Timed events.
    Service,
    /// Power cycle or power loss.
    Power {
        /// Loss instead of an orderly cycle.
        loss: bool,
    },
}

/// One input.
#[derive(Debug, Arbitrary)]
pub struct HostileHostInput {
    /// CAP.MQES, 0's based (at least 1).
    pub mqes_z: u8,
    /// CAP.DSTRD (0..=3 used).
    pub dstrd: u8,
    /// MDTS.
    pub mdts: u8,
    /// I/O queue pairs granted.
    pub max_io_queues: u8,
    /// The steps.
    pub actions: Vec<HostAction>,
}

struct Pair {
    qid: u16,
    sq: u64,
    cq: u64,
    entries: u16,
    tail: u16,
    head: u16,
    phase: bool,
}

struct Host {
    sim: Simulator,
    p: Arc<SimPlatform>,
    dstrd: u8,
    regions: Vec<DmaRegion>,
    canaries: Vec<DmaRegion>,
    freed: Vec<u64>,
    /// Admin ring as the host set it up (base, entries), and its CQ.
    admin: Pair,
    pairs: Vec<Pair>,
}

const CANARY_PAGES: usize = 2;

impl Host {
    fn addr(&self, a: Addr) -> u64 {
        let v = match a {
            Addr::Region { idx, offset } => match self.regions.len() {
                0 => offset as u64,
                n => self.regions[idx as usize % n]
                    .iova()
                    .wrapping_add(offset as u64),
            },
            Addr::Raw(v) => v,
        };
        self.unname_canary(v)
    }

    /// True if `at .. at + len` overlaps a canary region or the guard page after it.
    fn touches_canary(&self, at: u64, len: usize) -> bool {
        let end = at.saturating_add(len as u64);
        self.canaries.iter().any(|c| {
            let (start, stop) = (c.iova(), c.iova() + c.len() as u64 + 4096);
            at < stop && start < end
        })
    }

    /// Canary regions are never named by the host, so the device has no business there: an
    /// address the input aims into one (or its guard page) gets its top bit flipped, which
    /// lands it in unmapped space.
    fn unname_canary(&self, v: u64) -> u64 {
        if self.touches_canary(v, 1) {
            v ^ 0x8000_0000_0000_0000
        } else {
            v
        }
    }

    /// Every host write to memory goes through here. Only base addresses are sanitized by
    /// [`Host::addr`]; a ring entry at `base + slot × 64` or a multi-word write can still
    /// run from unnamed space into a canary, and such a write is refused (it goes nowhere,
    /// like a write to unmapped memory), so the canaries only ever show what the device
    /// wrote.
    fn write_mem(&self, at: u64, bytes: &[u8]) -> bool {
        !self.touches_canary(at, bytes.len()) && self.p.dma().host_write(at, bytes)
    }

    fn doorbell(&self, idx: u32) -> usize {
        0x1000 + idx as usize * (4usize << self.dstrd)
    }

    fn region_base(&self, idx: u8) -> u64 {
        match self.regions.len() {
            0 => 0,
            n => self.regions[idx as usize % n].iova(),
        }
    }

    fn alloc(&mut self, pages: usize) {
        if self.regions.len() >= 12 {
            return;
        }
        if let Ok(r) = self.p.dma().allocate(pages.clamp(1, 16) * 4096) {
            self.regions.push(r);
        }
    }

    fn submit(&mut self, pair: Option<usize>, mut cmd: Command, prp1: u64, prp2: u64) -> bool {
        cmd.set_prps(prp1, prp2);
        let q = match pair {
            None => &mut self.admin,
            Some(i) => &mut self.pairs[i],
        };
        if q.entries == 0 {
            return false;
        }
        let at = q.sq.wrapping_add(q.tail as u64 * 64);
        q.tail = (q.tail + 1) % q.entries;
        let (qid, tail) = (q.qid, q.tail);
        // Unmapped ring memory: the write goes nowhere (a host bug the device then meets).
        let _ = self.write_mem(at, &cmd.to_le_bytes());
        self.p
            .bar()
            .write32(self.doorbell(2 * qid as u32), tail as u32);
        true
    }

    fn consume(&mut self, pair: Option<usize>) {
        let dma_ok = {
            let q = match pair {
                None => &mut self.admin,
                Some(i) => &mut self.pairs[i],
            };
            if q.entries == 0 {
                return;
            }
            let mut moved = false;
            // At most one pass over the ring.
            for _ in 0..q.entries {
                let mut e = [0u8; 16];
                if !self
                    .p
                    .dma()
                    .host_read(q.cq.wrapping_add(q.head as u64 * 16), &mut e)
                {
                    break;
                }
                if (e[14] & 1 == 1) != q.phase {
                    break;
                }
                q.head = (q.head + 1) % q.entries;
                if q.head == 0 {
                    q.phase = !q.phase;
                }
                moved = true;
            }
            moved.then_some((q.qid, q.head))
        };
        if let Some((qid, head)) = dma_ok {
            self.p
                .bar()
                .write32(self.doorbell(2 * qid as u32 + 1), head as u32);
        }
    }

    fn bringup(&mut self, entries_z: u8) {
        while self.regions.len() < 2 {
            let before = self.regions.len();
            self.alloc(1);
            if self.regions.len() == before {
                return;
            }
        }
        let bar = self.p.bar();
        bar.write32(offset::CC, 0);
        for _ in 0..64 {
            if bar.read32(offset::CSTS) & 1 == 0 {
                break;
            }
            self.sim.service();
        }
        let n = (entries_z as u16 % 64).max(1) + 1;
        let (sq, cq) = (self.regions[0].iova(), self.regions[1].iova());
        bar.write32(offset::AQA, (n as u32 - 1) | ((n as u32 - 1) << 16));
        bar.write64(offset::ASQ, sq);
        bar.write64(offset::ACQ, cq);
        // EN, CSS NVM, MPS 4 KiB, IOSQES 6, IOCQES 4.
        bar.write32(offset::CC, 1 | (6 << 16) | (4 << 20));
        for _ in 0..64 {
            if bar.read32(offset::CSTS) & 1 == 1 {
                break;
            }
            self.sim.service();
        }
        self.admin = Pair {
            qid: 0,
            sq,
            cq,
            entries: n,
            tail: 0,
            head: 0,
            phase: true,
        };
        self.pairs.clear();
    }

    fn step(&mut self, a: &HostAction) {
        let bar = self.p.bar();
        match *a {
            HostAction::Bringup { entries_z } => self.bringup(entries_z),
            HostAction::Write { reg, value } => {
                let off = match reg {
                    Reg::Cc => offset::CC,
                    Reg::Aqa => offset::AQA,
                    Reg::Intms => offset::INTMS,
                    Reg::Intmc => offset::INTMC,
                    Reg::Nssr => offset::NSSR,
                    Reg::Csts => offset::CSTS,
                    Reg::Raw(o) => o as usize,
                };
                bar.write32(off, value);
                if off == offset::AQA {
                    self.admin.entries = ((value & 0xFFF) as u16 + 1).max(2);
                }
            }
            HostAction::Base { acq, addr } => {
                let v = self.addr(addr);
                if acq {
                    bar.write64(offset::ACQ, v);
                    self.admin.cq = v;
                } else {
                    bar.write64(offset::ASQ, v);
                    self.admin.sq = v;
                }
            }
            HostAction::Read { offset } => {
                let _ = bar.read32(offset as usize);
            }
            HostAction::Admin {
                cmd,
                prp1,
                prp2,
                ring,
            } => {
                let (p1, p2) = (self.addr(prp1), self.addr(prp2));
                if ring {
                    self.submit(None, cmd, p1, p2);
                } else if self.admin.entries > 0 {
                    let mut c = cmd;
                    c.set_prps(p1, p2);
                    let at = self.admin.sq.wrapping_add(self.admin.tail as u64 * 64);
                    let _ = self.write_mem(at, &c.to_le_bytes());
                }
            }
            HostAction::CreatePair {
                qid,
                size_z,
                sq,
                cq,
            } => {
                let qid = qid as u16 % 16 + 1;
                let size_z = (size_z as u16 % 64).max(1);
                let (sqb, cqb) = (self.region_base(sq), self.region_base(cq));
                self.submit(
                    None,
                    Command::create_io_cq(qid, size_z, cqb, false, 0),
                    cqb,
                    0,
                );
                self.submit(
                    None,
                    Command::create_io_sq(qid, size_z, sqb, qid, 0),
                    sqb,
                    0,
                );
                self.consume(None);
                if self.pairs.len() < 8 {
                    self.pairs.push(Pair {
                        qid,
                        sq: sqb,
                        cq: cqb,
                        entries: size_z + 1,
                        tail: 0,
                        head: 0,
                        phase: true,
                    });
                }
            }
            HostAction::Io {
                pair,
                cmd,
                prp1,
                prp2,
            } => {
                if !self.pairs.is_empty() {
                    let i = pair as usize % self.pairs.len();
                    let (p1, p2) = (self.addr(prp1), self.addr(prp2));
                    self.submit(Some(i), cmd, p1, p2);
                }
            }
            HostAction::Doorbell { idx, value } => {
                bar.write32(self.doorbell(idx as u32), value);
            }
            HostAction::Consume { pair } => {
                if pair == 0 || self.pairs.is_empty() {
                    self.consume(None)
                } else {
                    let i = pair as usize % self.pairs.len();
                    self.consume(Some(i))
                }
            }
            HostAction::Mem { addr, words, len } => {
                let at = self.addr(addr);
                let n = (len as usize % 4) + 1;
                let mut b = Vec::with_capacity(8 * n);
                for &w in &words[..n] {
                    // A PRP entry is an address the host names: never a canary.
                    b.extend_from_slice(&self.unname_canary(w).to_le_bytes());
                }
                let _ = self.write_mem(at, &b);
            }
            HostAction::Alloc { pages } => self.alloc(pages as usize),
            HostAction::Free { idx } => {
                if !self.regions.is_empty() {
                    let r = self.regions.remove(idx as usize % self.regions.len());
                    // SAFETY: the simulator's allocator translates every device access
                    // through its IOVA map, so a region freed while the device still names it
                    // is the host bug the simulator must detect (an unmapped access), not a
                    // dangling pointer; the harness keeps no pointer into the region.
                    unsafe { self.p.dma().free(r) };
                    self.freed.push(r.iova());
                }
            }
            HostAction::Service => {
                let _ = self.sim.service();
            }
            HostAction::Power { loss } => {
                if loss {
                    self.sim.power_loss()
                } else {
                    self.sim.power_cycle()
                }
            }
        }
    }

    /// The memory-safety properties, after every step.
    fn check(&self) {
        let dma = self.p.dma();
        assert_eq!(
            dma.mapped_regions(),
            self.regions.len() + self.canaries.len(),
            "the device mapped or unmapped memory"
        );
        for c in &self.canaries {
            let mut b = vec![0u8; c.len()];
            assert!(dma.host_read(c.iova(), &mut b), "canary unmapped");
            assert!(
                b.iter().all(|&x| x == 0),
                "the device wrote into a region nothing named"
            );
        }
        for &f in &self.freed {
            let mut b = [0u8; 8];
            assert!(!dma.host_read(f, &mut b), "a freed IOVA is mapped again");
        }
    }
}

/// The fuzz target body.
pub fn run_hostile_host(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(input) = HostileHostInput::arbitrary(&mut u) else {
        return;
    };
    run_hostile_host_input(&input);
}

/// Runs one structured input.
pub fn run_hostile_host_input(input: &HostileHostInput) {
    let Some(mut host) = Host::new(input) else {
        return;
    };
    for a in input.actions.iter().take(256) {
        host.step(a);
        host.check();
    }
    let (sim, p) = (&host.sim, &host.p);
    // Every register still reads; violations print.
    for off in (0..0x40).step_by(4) {
        let _ = p.bar().read32(off);
    }
    for v in sim.violations() {
        assert!(!format!("{v}").is_empty());
    }
    let _ = (sim.stats(), AdminOpcode::IDENTIFY);
    if std::env::var_os("NVME_FUZZ_DEBUG").is_some() {
        eprintln!("{:?}\n{:?}", sim.stats(), sim.violations());
    }
}

impl Host {
    /// The simulator configured by `input` (its actions are not run), with canaries before,
    /// between and after two 4-page host regions.
    fn new(input: &HostileHostInput) -> Option<Host> {
        let config = SimConfig {
            mqes_z: (input.mqes_z as u16).max(1),
            mdts: input.mdts % 8,
            max_io_queues: (input.max_io_queues as u16 % 16).max(1),
            msix_vectors: 2,
            dstrd: input.dstrd % 4,
            ready_delay: Duration::ZERO,
            namespaces: vec![
                NamespaceConfig::memory(512, 1 << 20),
                NamespaceConfig::memory(4096, 1 << 20),
            ],
            mode: SimMode::Inline,
            strict: true,
            ..SimConfig::default()
        };
        let sim = Simulator::new(config).ok()?;
        let p = sim.platform();
        let mut host = Host {
            sim,
            p: p.clone(),
            dstrd: input.dstrd % 4,
            regions: Vec::new(),
            canaries: Vec::new(),
            freed: Vec::new(),
            admin: Pair {
                qid: 0,
                sq: 0,
                cq: 0,
                entries: 0,
                tail: 0,
                head: 0,
                phase: true,
            },
            pairs: Vec::new(),
        };
        // Canaries before, between and after the host's regions.
        for i in 0..3 {
            if let Ok(c) = p.dma().allocate(CANARY_PAGES * 4096) {
                host.canaries.push(c);
            }
            if i < 2 {
                host.alloc(4);
            }
        }
        Some(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host::new(&HostileHostInput {
            mqes_z: 255,
            dstrd: 0,
            mdts: 0,
            max_io_queues: 4,
            actions: Vec::new(),
        })
        .expect("simulator")
    }

    /// Found by `fuzz/` (hostile_host): with every region freed, `Base` set the host's ASQ to
    /// a raw offset (`0xFFFF_FFFF`, just below the first canary); only that base was kept
    /// off the canaries, so the second admin entry the host wrote at `base + 1 × 64` landed
    /// in canary 0 and the check blamed the device (which had faulted on its freed admin SQ
    /// and written nothing). Host writes that would reach a canary now go nowhere.
    #[test]
    fn host_ring_entries_past_an_unnamed_base_never_reach_a_canary() {
        let mut h = host();
        let c0 = h.canaries[0].iova();
        h.admin = Pair {
            qid: 0,
            sq: c0 - 1,
            cq: c0 - 1,
            entries: 38,
            tail: 0,
            head: 0,
            phase: true,
        };
        for _ in 0..3 {
            h.submit(None, Command::create_io_sq(1, 1, 0, 1, 0), 0, 0);
        }
        h.check();
        // Multi-word writes straddling into a canary (or its guard page) are refused too.
        assert!(!h.write_mem(c0 - 8, &[1; 16]));
        assert!(!h.write_mem(h.canaries[1].iova() - 8, &[1; 16]));
        h.check();
        // A host region stays writable.
        assert!(h.write_mem(h.regions[0].iova(), &[1; 16]));
    }

    /// PRP entries the host writes with `Mem` never name a canary (the property's premise:
    /// no input can name one).
    #[test]
    fn mem_words_never_name_a_canary() {
        let mut h = host();
        let c1 = h.canaries[1].iova();
        let r = h.regions[0].iova();
        h.step(&HostAction::Mem {
            addr: Addr::Region { idx: 0, offset: 0 },
            words: [c1, c1 + 0x10, r, 0],
            len: 2,
        });
        let mut b = [0u8; 24];
        assert!(h.p.dma().host_read(r, &mut b));
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!(w(0), c1 ^ 0x8000_0000_0000_0000);
        assert_eq!(w(1), (c1 + 0x10) ^ 0x8000_0000_0000_0000);
        assert_eq!(w(2), r);
    }
}

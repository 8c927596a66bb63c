//! Interrupts (NVMe Base §5.2.1 Create I/O Completion Queue: IEN and IV; NVMe over PCIe
//! MSI-X): every completion posted to a CQ created with interrupts enabled is followed by an
//! interrupt on the CQ's vector, and a CQ created with IEN = 0 raises none. The cases drive
//! raw queues (the queue pair API consumes interrupts itself) and observe the vectors through
//! the platform's [`InterruptSource`]: the simulator's lines, or VFIO's eventfds. On the
//! simulator, its per-vector counters ([`sim_backend::Simulator::interrupts_on`]) add a
//! second witness.
//!
//! Also here: a completion queue that fills up (§4.2.4), which shares the raw-queue plumbing.

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use nvme_core::controller::{CreateCq, CreateSq};
use nvme_core::hw::{InterruptSource, Platform};
use nvme_core::raw::RawRegisters;
use nvme_core::spec::regs::{cq_head_doorbell, sq_tail_doorbell};
use nvme_core::spec::{Command, Completion, NvmOpcode};
use nvme_core::{Controller, DmaBuffer};

use super::helpers::namespace;
use crate::backend::Backend;
use crate::case;
use crate::runner::{Case, Ctx, Verdict};

/// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!("IRQ-01", Interrupts, "§5.2.1", "every completion posted to an I/O CQ with IEN=1, through two wraps of the queue, is followed by an interrupt on its vector", each_completion_signalled::<B>),
        case!("IRQ-02", Interrupts, "§5.2.1", "an I/O CQ created with IEN=0 raises no interrupt on any vector while its completions arrive", ien_zero_silent::<B>),
        case!("IRQ-03", Interrupts, "§5.2.1", "a completion with an error status (LBA Out of Range) is signalled like a success", error_signalled::<B>),
        case!("IRQ-04", Interrupts, "§5.2.1", "two I/O CQs created with the same vector both signal it", shared_vector::<B>),
        case!("IRQ-05", Interrupts, "§5.2.1", "when the interrupt arrives the completion entry it signals is already visible with the new phase tag", entry_before_interrupt::<B>),
        case!("QM-30", Queues, "§4.2.4", "a full I/O CQ is not overwritten: further completions wait until the host frees entries, then all arrive once", cq_full::<B>),
        case!("QM-31", Queues, "§4.2.1", "CIDs from across the whole range (0000h, 0001h, 7FFFh, 8000h, ABCDh, FFFEh) come back exactly, with the SQ's ID", cid_range::<B>),
        case!("QM-32", Queues, "§4.2.1", "each completion's SQ Head Pointer counts the entries the controller consumed, through two wraps of the SQ", sqhd_tracks::<B>),
        case!("QM-33", Queues, "§5.2.1", "a queue pair of two entries (QSIZE 1, the minimum) carries commands through many wraps", minimal_queues::<B>),
        case!("QM-34", Queues, "§5.2.4", "an SQ and CQ deleted in order can be created again with the same QIDs and carry commands", recreate_same_qids::<B>),
        case!("QM-35", Queues, "§3.7.2", "a Controller Level Reset deletes every I/O queue: the same QIDs can be created again after it", reset_deletes_queues::<B>),
    ]
}

/// A raw I/O queue pair (SQ `qid` on CQ `cqid`), driven entry by entry: the case decides
/// when to ring, when to consume and when to free CQ entries.
pub(crate) struct RawPair {
    qid: u16,
    cqid: u16,
    sq_entries: u16,
    cq_entries: u16,
    sq_tail: u16,
    cq_head: u16,
    phase: bool,
    dstrd: u8,
    next_cid: u16,
}

impl RawPair {
    /// Creates CQ `cqid` (`cq_z` entries, 0's based; IEN and IV as given) unless `cq_exists`,
    /// then SQ `qid` (`sq_z`) on it.
    pub(crate) fn create<P: Platform>(
        c: &mut Controller<P>,
        qid: u16,
        cqid: u16,
        sq_z: u16,
        cq_z: u16,
        irq: Option<u16>,
        cq_exists: bool,
    ) -> anyhow::Result<Self> {
        if !cq_exists {
            let r = c.create_cq_raw(CreateCq {
                qid: cqid,
                qsize_z: cq_z,
                pc: true,
                ien: irq.is_some(),
                iv: irq.unwrap_or(0),
                base_offset: 0,
            })?;
            ensure!(
                r.status().is_success(),
                "Create I/O CQ {cqid} ({} entries, IEN {}, IV {}) failed: {}",
                cq_z + 1,
                irq.is_some() as u8,
                irq.unwrap_or(0),
                r.status()
            );
        }
        let r = c.create_sq_raw(CreateSq {
            qid,
            qsize_z: sq_z,
            pc: true,
            cqid,
            qprio: 0,
            base_offset: 0,
        })?;
        ensure!(
            r.status().is_success(),
            "Create I/O SQ {qid} on CQ {cqid} failed: {}",
            r.status()
        );
        Ok(Self {
            qid,
            cqid,
            sq_entries: sq_z + 1,
            cq_entries: cq_z + 1,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            dstrd: c.cap().dstrd(),
            next_cid: 0x100 * qid,
        })
    }

    /// Writes `cmd` (with a fresh CID, returned) at the SQ tail and rings the doorbell.
    pub(crate) fn submit<P: Platform>(
        &mut self,
        c: &mut Controller<P>,
        cmd: Command,
        buffer: Option<DmaBuffer<P>>,
    ) -> anyhow::Result<u16> {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        self.submit_cid(c, cmd, buffer, cid)
    }

    /// Writes `cmd` with CID `cid` at the SQ tail and rings the doorbell.
    pub(crate) fn submit_cid<P: Platform>(
        &mut self,
        c: &mut Controller<P>,
        mut cmd: Command,
        buffer: Option<DmaBuffer<P>>,
        cid: u16,
    ) -> anyhow::Result<u16> {
        cmd.set_cid(cid);
        c.raw_sq_write(self.qid, self.sq_tail, &cmd, buffer)?;
        self.sq_tail = (self.sq_tail + 1) % self.sq_entries;
        fence(Ordering::Release);
        RawRegisters::new(c.platform().bar()).write32(
            sq_tail_doorbell(self.qid, self.dstrd),
            u32::from(self.sq_tail),
        );
        Ok(cid)
    }

    /// The entry at the CQ head if it is new (its phase tag is the current one).
    pub(crate) fn peek<P: Platform>(
        &self,
        c: &Controller<P>,
    ) -> anyhow::Result<Option<Completion>> {
        let e = c.raw_cq_entry(self.cqid, self.cq_head)?;
        Ok((e.phase() == self.phase).then_some(e))
    }

    /// Waits up to 5 s for the entry at the CQ head and consumes it (without writing the CQ
    /// head doorbell: see [`RawPair::release`]).
    pub(crate) fn next<P: Platform>(&mut self, c: &Controller<P>) -> anyhow::Result<Completion> {
        let start = Instant::now();
        loop {
            if let Some(e) = self.peek(c)? {
                self.cq_head = (self.cq_head + 1) % self.cq_entries;
                if self.cq_head == 0 {
                    self.phase = !self.phase;
                }
                return Ok(e);
            }
            ensure!(
                start.elapsed() < Duration::from_secs(5),
                "no completion in CQ {} slot {} within 5 s",
                self.cqid,
                self.cq_head
            );
            std::thread::yield_now();
        }
    }

    /// Writes the CQ head doorbell: the consumed entries are free again.
    pub(crate) fn release<P: Platform>(&self, c: &Controller<P>) {
        RawRegisters::new(c.platform().bar()).write32(
            cq_head_doorbell(self.cqid, self.dstrd),
            u32::from(self.cq_head),
        );
    }

    /// Deletes the SQ, then the CQ unless `keep_cq`; returns the SQ's buffers.
    pub(crate) fn delete<P: Platform>(
        self,
        c: &mut Controller<P>,
        keep_cq: bool,
    ) -> anyhow::Result<Vec<DmaBuffer<P>>> {
        let r = c.delete_queue_raw(self.qid, true)?;
        ensure!(
            r.status().is_success(),
            "Delete I/O SQ {}: {}",
            self.qid,
            r.status()
        );
        if !keep_cq {
            let r = c.delete_queue_raw(self.cqid, false)?;
            ensure!(
                r.status().is_success(),
                "Delete I/O CQ {}: {}",
                self.cqid,
                r.status()
            );
        }
        Ok(c.take_raw_buffers(self.qid))
    }
}

/// The vector the cases give their CQs: the last one enabled (no queue pair uses it, since the
/// cases create none), or `Skip` in polled mode.
fn test_vector<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Result<u16, Verdict>> {
    if !cx.backend.interrupts() {
        return Ok(Err(Verdict::Skip(
            "polled mode: no MSI-X vector is enabled".into(),
        )));
    }
    let c = cx.ctrl()?;
    match c.vectors() {
        0 => Ok(Err(Verdict::Skip(
            "the platform enabled no MSI-X vector".into(),
        ))),
        n => Ok(Ok(n - 1)),
    }
}

/// Consumes whatever is pending on `v`.
fn drain<P: Platform>(p: &P, v: u16) {
    while p.irq().poll(v) {}
}

/// Entries of the raw queues: 16, or CAP.MQES + 1 if smaller.
fn entries_z<P: Platform>(c: &Controller<P>) -> u16 {
    c.cap().mqes_z().min(15)
}

fn each_completion_signalled<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let v = match test_vector(cx)? {
        Ok(v) => v,
        Err(skip) => return Ok(skip),
    };
    let sim = cx.backend.simulator();
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let z = entries_z(c);
    let p = c.platform().clone();
    let mut q = RawPair::create(c, 1, 1, z, z, Some(v), false)?;
    let total = 2 * (u32::from(z) + 1) + 1;
    let r = (|| -> anyhow::Result<()> {
        for k in 0..total {
            drain(&*p, v);
            let before = sim.as_ref().map(|s| s.interrupts_on(v));
            q.submit(c, Command::flush(ns.nsid()), None)?;
            let e = q.next(c)?;
            ensure!(e.status().is_success(), "Flush {k} failed: {}", e.status());
            ensure!(
                p.irq().wait(v, Duration::from_secs(2)),
                "completion {k} of {total} was posted to CQ 1 (IEN=1, IV={v}) but vector {v} did not fire within 2 s"
            );
            if let (Some(s), Some(b)) = (&sim, before) {
                ensure!(
                    s.interrupts_on(v) > b,
                    "completion {k}: the simulator counted no interrupt on vector {v}"
                );
            }
            q.release(c);
        }
        Ok(())
    })();
    q.delete(c, false)?;
    r?;
    Ok(Verdict::Pass)
}

fn ien_zero_silent<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let v = match test_vector(cx)? {
        Ok(v) => v,
        Err(skip) => return Ok(skip),
    };
    let sim = cx.backend.simulator();
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let z = entries_z(c);
    let p = c.platform().clone();
    let n = c.vectors();
    // IV names a vector that exists, so only IEN decides (§5.2.1: IV is ignored when IEN=0).
    let mut q = RawPair::create(c, 1, 1, z, z, None, false)?;
    let r = (|| -> anyhow::Result<()> {
        // Vector 0 serves the admin CQ, and the admin queue is idle during the check.
        for w in 0..n {
            drain(&*p, w);
        }
        let before: Vec<u64> = (0..n)
            .map(|w| sim.as_ref().map_or(0, |s| s.interrupts_on(w)))
            .collect();
        let total = 2 * (u32::from(z) + 1) + 1;
        for k in 0..total {
            q.submit(c, Command::flush(ns.nsid()), None)?;
            let e = q.next(c)?;
            ensure!(e.status().is_success(), "Flush {k} failed: {}", e.status());
            q.release(c);
        }
        for w in 0..n {
            ensure!(
                !p.irq().wait(w, Duration::from_millis(50)),
                "vector {w} fired while only CQ 1, created with IEN=0 (IV {v}), received completions"
            );
            if let Some(s) = &sim {
                ensure!(
                    s.interrupts_on(w) == before[usize::from(w)],
                    "the simulator raised vector {w} {} time(s) for a CQ with IEN=0",
                    s.interrupts_on(w) - before[usize::from(w)]
                );
            }
        }
        Ok(())
    })();
    q.delete(c, false)?;
    r?;
    Ok(Verdict::Pass)
}

fn error_signalled<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let v = match test_vector(cx)? {
        Ok(v) => v,
        Err(skip) => return Ok(skip),
    };
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    if bs > 8192 {
        return Ok(Verdict::Skip(format!(
            "LBA size {bs}: a raw command carries at most two pages"
        )));
    }
    let z = entries_z(c);
    let p = c.platform().clone();
    let buf = c.alloc_buffer(bs)?;
    let mut q = RawPair::create(c, 1, 1, z, z, Some(v), false)?;
    let r = (|| -> anyhow::Result<()> {
        drain(&*p, v);
        q.submit(
            c,
            Command::rw(NvmOpcode::READ, ns.nsid(), ns.blocks(), 0, false),
            Some(buf),
        )?;
        let e = q.next(c)?;
        ensure!(
            e.status().sct().0 == 0 && e.status().sc() == 0x80,
            "a Read at LBA NSZE completed with {} (expected LBA Out of Range)",
            e.status()
        );
        ensure!(
            p.irq().wait(v, Duration::from_secs(2)),
            "the failed Read's completion was not followed by an interrupt on vector {v}"
        );
        q.release(c);
        Ok(())
    })();
    q.delete(c, false)?;
    r?;
    Ok(Verdict::Pass)
}

fn shared_vector<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let v = match test_vector(cx)? {
        Ok(v) => v,
        Err(skip) => return Ok(skip),
    };
    let c = cx.ctrl()?;
    let a = c.queues_allocated();
    if a.nsq_z < 1 || a.ncq_z < 1 {
        return Ok(Verdict::Skip(
            "one I/O queue pair allocated: needs two CQs".into(),
        ));
    }
    let ns = namespace(c, None)?;
    let z = entries_z(c);
    let p = c.platform().clone();
    let mut q1 = RawPair::create(c, 1, 1, z, z, Some(v), false)?;
    let mut q2 = match RawPair::create(c, 2, 2, z, z, Some(v), false) {
        Ok(q) => q,
        Err(e) => {
            q1.delete(c, false)?;
            return Err(e);
        }
    };
    let r = (|| -> anyhow::Result<()> {
        for round in 0..3 {
            for q in [&mut q1, &mut q2] {
                drain(&*p, v);
                q.submit(c, Command::flush(ns.nsid()), None)?;
                let e = q.next(c)?;
                ensure!(e.status().is_success(), "Flush failed: {}", e.status());
                ensure!(
                    p.irq().wait(v, Duration::from_secs(2)),
                    "round {round}: a completion on CQ {} (IV {v}, shared) did not fire vector {v}",
                    q.cqid
                );
                q.release(c);
            }
        }
        Ok(())
    })();
    q2.delete(c, false)?;
    q1.delete(c, false)?;
    r?;
    Ok(Verdict::Pass)
}

fn entry_before_interrupt<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let v = match test_vector(cx)? {
        Ok(v) => v,
        Err(skip) => return Ok(skip),
    };
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let z = entries_z(c);
    let p = c.platform().clone();
    let mut q = RawPair::create(c, 1, 1, z, z, Some(v), false)?;
    let r = (|| -> anyhow::Result<()> {
        for k in 0..(u32::from(z) + 2) {
            drain(&*p, v);
            q.submit(c, Command::flush(ns.nsid()), None)?;
            ensure!(
                p.irq().wait(v, Duration::from_secs(2)),
                "Flush {k}: no interrupt on vector {v} within 2 s"
            );
            ensure!(
                q.peek(c)?.is_some(),
                "Flush {k}: vector {v} fired but CQ 1 slot {} holds no new entry",
                q.cq_head
            );
            q.next(c)?;
            q.release(c);
        }
        Ok(())
    })();
    q.delete(c, false)?;
    r?;
    Ok(Verdict::Pass)
}

fn cq_full<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let mqes = c.cap().mqes_z();
    // A CQ of at most 4 entries (one fewer usable, §4.2.4) behind an SQ with room for more
    // commands.
    let cq_z = 3u16.min(mqes.saturating_sub(1)).max(1);
    let sq_z = mqes.min(15);
    if sq_z <= cq_z {
        return Ok(Verdict::Skip(format!(
            "CAP.MQES {mqes} (0's based): no SQ can hold more commands than a {}-entry CQ has room for",
            cq_z + 1
        )));
    }
    let room = cq_z; // entries the CQ holds before it is full
    let n = (room + 3).min(sq_z);
    let ns = namespace(c, None)?;
    let mut q = RawPair::create(c, 1, 1, sq_z, cq_z, None, false)?;
    let r = (|| -> anyhow::Result<()> {
        let mut cids = Vec::new();
        for _ in 0..n {
            cids.push(q.submit(c, Command::flush(ns.nsid()), None)?);
        }
        let mut seen = Vec::new();
        for _ in 0..room {
            seen.push(q.next(c)?);
        }
        // The CQ is full (head 0, tail = room): nothing more may be written until the host
        // moves the head, in particular not over the entries it has not freed.
        std::thread::sleep(Duration::from_millis(200));
        ensure!(
            q.peek(c)?.is_none(),
            "CQ 1 ({} entries) is full, yet the controller wrote slot {} (the host's head is 0)",
            cq_z + 1,
            room
        );
        for (i, e) in seen.iter().enumerate() {
            let again = c.raw_cq_entry(1, i as u16)?;
            ensure!(
                again.cid() == e.cid() && again.phase() == e.phase(),
                "slot {i} of the full CQ was overwritten (CID {:#x} -> {:#x}) before the host freed it",
                e.cid(),
                again.cid()
            );
        }
        q.release(c);
        while seen.len() < usize::from(n) {
            let e = q.next(c)?;
            seen.push(e);
            q.release(c);
        }
        let mut got: Vec<u16> = seen.iter().map(|e| e.cid()).collect();
        got.sort_unstable();
        cids.sort_unstable();
        ensure!(
            got == cids,
            "completions {got:#x?} do not match the commands {cids:#x?}"
        );
        for e in &seen {
            ensure!(e.status().is_success(), "a Flush failed: {}", e.status());
        }
        Ok(())
    })();
    q.delete(c, false).context("deleting the queues")?;
    r?;
    Ok(Verdict::Pass)
}

fn cid_range<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let z = entries_z(c);
    let mut q = RawPair::create(c, 1, 1, z, z, None, false)?;
    let r = (|| -> anyhow::Result<()> {
        for cid in [0x0000u16, 0x0001, 0x7FFF, 0x8000, 0xABCD, 0xFFFE] {
            q.submit_cid(c, Command::flush(ns.nsid()), None, cid)?;
            let e = q.next(c)?;
            q.release(c);
            ensure!(
                e.cid() == cid && e.sqid() == 1,
                "a Flush with CID {cid:#06x} on SQ 1 completed as CID {:#06x} on SQ {}",
                e.cid(),
                e.sqid()
            );
            ensure!(
                e.status().is_success(),
                "Flush CID {cid:#06x}: {}",
                e.status()
            );
        }
        Ok(())
    })();
    q.delete(c, false)?;
    r?;
    Ok(Verdict::Pass)
}

fn sqhd_tracks<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let z = entries_z(c);
    let mut q = RawPair::create(c, 1, 1, z, z, None, false)?;
    let entries = u32::from(z) + 1;
    let r = (|| -> anyhow::Result<()> {
        for k in 0..2 * entries + 1 {
            q.submit(c, Command::flush(ns.nsid()), None)?;
            let e = q.next(c)?;
            q.release(c);
            // One command at a time: when its completion is posted the controller has
            // consumed it, so the head is just past it (§4.2.1: SQHD may lag only for
            // entries not yet fetched, and there are none).
            let want = ((k + 1) % entries) as u16;
            ensure!(
                e.sqhd() == want,
                "command {k} on a {entries}-entry SQ: SQHD {} (expected {want})",
                e.sqhd()
            );
        }
        Ok(())
    })();
    q.delete(c, false)?;
    r?;
    Ok(Verdict::Pass)
}

fn minimal_queues<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let mut q = RawPair::create(c, 1, 1, 1, 1, None, false)?;
    let r = (|| -> anyhow::Result<()> {
        for k in 0..9 {
            let cid = q.submit(c, Command::flush(ns.nsid()), None)?;
            let e = q.next(c)?;
            q.release(c);
            ensure!(
                e.cid() == cid && e.status().is_success(),
                "Flush {k} on the 2-entry queues completed as CID {:#x} with {}",
                e.cid(),
                e.status()
            );
        }
        Ok(())
    })();
    q.delete(c, false)?;
    r?;
    Ok(Verdict::Pass)
}

/// Three Flushes through `q`, each must complete successfully with its CID.
fn three_flushes<P: Platform>(
    c: &mut Controller<P>,
    q: &mut RawPair,
    nsid: u32,
) -> anyhow::Result<()> {
    for _ in 0..3 {
        let cid = q.submit(c, Command::flush(nsid), None)?;
        let e = q.next(c)?;
        q.release(c);
        ensure!(
            e.cid() == cid && e.status().is_success(),
            "Flush CID {cid:#x} completed as CID {:#x} with {}",
            e.cid(),
            e.status()
        );
    }
    Ok(())
}

fn recreate_same_qids<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let z = entries_z(c);
    for round in 0..3 {
        let mut q = RawPair::create(c, 1, 1, z, z, None, false)
            .with_context(|| format!("creating QID 1 for the {}. time", round + 1))?;
        let r = three_flushes(c, &mut q, ns.nsid());
        q.delete(c, false)?;
        r?;
    }
    Ok(Verdict::Pass)
}

fn reset_deletes_queues<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let z = entries_z(c);
    let mut q = RawPair::create(c, 1, 1, z, z, None, false)?;
    three_flushes(c, &mut q, ns.nsid())?;
    c.reset().context("controller reset")?;
    // The reset deleted SQ 1 and CQ 1 (§3.7.2): creating them again must succeed.
    let mut q = RawPair::create(c, 1, 1, z, z, None, false)
        .context("creating QID 1 again after the reset")?;
    let r = three_flushes(c, &mut q, ns.nsid());
    q.delete(c, false)?;
    r?;
    Ok(Verdict::Pass)
}

//! Queue management (NVMe Base §5.2.1 Create I/O Completion Queue, §5.2.2 Create I/O
//! Submission Queue, §5.2.3/§5.2.4 deletion).

use nvme_core::raw::RawRegisters;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use nvme_core::controller::{CreateCq, CreateSq};
use nvme_core::hw::{InterruptSource, Platform};
use nvme_core::spec::regs::{cq_head_doorbell, sq_tail_doorbell};
use nvme_core::spec::{Cap, Command, Completion, NvmOpcode};
use nvme_core::{Controller, Error};

use super::helpers::{buffer_with, namespace, pattern, scratch_lba, write_split};
use crate::backend::Backend;
use crate::case;
use crate::runner::{Case, Ctx, Verdict};

/// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!("QM-01", Queues, "§5.2.1", "an I/O queue pair is created, carries I/O and is deleted", pair_lifecycle::<B>),
        case!("QM-02", Queues, "§5.2.1", "Create I/O CQ with QID 0 fails with Invalid Queue Identifier", cq_qid_zero::<B>),
        case!("QM-03", Queues, "§5.2.1", "Create I/O CQ with a QID above the allocated count fails with Invalid Queue Identifier", cq_qid_above::<B>),
        case!("QM-04", Queues, "§5.2.1", "Create I/O CQ with QSIZE 0 fails with Invalid Queue Size", cq_qsize_zero::<B>),
        case!("QM-05", Queues, "§5.2.1", "Create I/O CQ with QSIZE above CAP.MQES fails with Invalid Queue Size", cq_qsize_above_mqes::<B>),
        case!("QM-06", Queues, "§5.2.1", "Create I/O CQ with a QID already in use fails with Invalid Queue Identifier", cq_twice::<B>, violates),
        case!("QM-07", Queues, "§5.2.2", "Create I/O SQ naming CQID 0 fails with Invalid Queue Identifier", sq_cqid_zero::<B>),
        case!("QM-08", Queues, "§5.2.2", "Create I/O SQ naming a CQID above the allocated count fails with Invalid Queue Identifier", sq_cqid_above::<B>),
        case!("QM-09", Queues, "§5.2.2", "Create I/O SQ naming an in-range CQ that does not exist fails with Completion Queue Invalid", sq_cq_missing::<B>),
        case!("QM-10", Queues, "§5.2.3", "Delete I/O CQ while an SQ uses it fails with Invalid Queue Deletion and DNR", delete_cq_in_use::<B>),
        case!("QM-11", Queues, "§5.2.3", "Delete I/O CQ with an invalid QID fails with Invalid Queue Identifier", delete_cq_invalid::<B>),
        case!("QM-12", Queues, "§5.2.1", "Create I/O CQ with an interrupt vector beyond the function's vectors fails with Invalid Interrupt Vector", cq_bad_vector::<B>),
        case!("QM-13", Queues, "§5.2.1", "Create I/O CQ with PC=0 when CAP.CQR=1 fails with Invalid Field", cq_not_contiguous::<B>),
        case!("QM-14", Queues, "§4.1.1", "a 4-entry queue pair wraps around 50 times with every I/O intact", wrap_around::<B>),
        case!("QM-15", Queues, "§5.2.2", "Create I/O SQ with QID 0 fails with Invalid Queue Identifier", sq_qid_zero::<B>),
        case!("QM-16", Queues, "§5.2.2", "Create I/O SQ with a QID above the allocated count fails with Invalid Queue Identifier", sq_qid_above::<B>),
        case!("QM-17", Queues, "§5.2.2", "Create I/O SQ with QSIZE 0 fails with Invalid Queue Size", sq_qsize_zero::<B>),
        case!("QM-18", Queues, "§5.2.2", "Create I/O SQ with QSIZE above CAP.MQES fails with Invalid Queue Size", sq_qsize_above_mqes::<B>),
        case!("QM-19", Queues, "§5.2.2", "Create I/O SQ with a QID already in use fails with Invalid Queue Identifier", sq_twice::<B>, violates),
        case!("QM-20", Queues, "§5.2.4", "Delete I/O SQ of a queue that does not exist, in range or above the allocated count, fails with Invalid Queue Identifier", delete_sq_invalid::<B>),
        case!("QM-21", Queues, "§5.2.4", "Delete I/O SQ with QID 0 (the admin queue) fails with Invalid Queue Identifier", delete_sq_zero::<B>),
        case!("QM-22", Queues, "§5.2.3", "Delete I/O CQ with QID 0 (the admin queue) fails with Invalid Queue Identifier", delete_cq_zero::<B>),
        case!("QM-23", Queues, "§5.2.1", "Create I/O CQ with a base address that is not page aligned fails (PRP Offset Invalid or Invalid Field)", cq_misaligned::<B>, violates),
        case!("QM-24", Queues, "§5.2.2", "Create I/O SQ with a base address that is not page aligned fails (PRP Offset Invalid or Invalid Field)", sq_misaligned::<B>, violates),
        case!("QM-25", Queues, "§5.1.25.1.7", "every allocated I/O queue pair (up to 256) can exist at once and carries I/O", all_pairs::<B>),
        case!("QM-26", Queues, "§5.2.1", "a queue pair of CAP.MQES + 1 entries (up to 4096) is filled completely, twice", max_size::<B>),
        case!("QM-27", Queues, "§3.3.1", "two I/O SQs sharing one CQ: completions of both arrive on it with their SQID, SQHD and CID", shared_cq::<B>),
        case!("QM-28", Queues, "§4.1.1", "a 64-entry queue pair kept full wraps around 30 times with every read intact", large_wrap::<B>),
        case!("QM-29", Queues, "§5.2.1", "each I/O CQ signals the interrupt vector it was created with, and no other", vector_per_cq::<B>),
    ]
}

fn cq(qid: u16, qsize_z: u16) -> CreateCq {
    CreateCq {
        qid,
        qsize_z,
        pc: true,
        ien: false,
        iv: 0,
        base_offset: 0,
    }
}
fn sq(qid: u16, cqid: u16, qsize_z: u16) -> CreateSq {
    CreateSq {
        qid,
        qsize_z,
        pc: true,
        cqid,
        qprio: 0,
        base_offset: 0,
    }
}

/// The QSIZE (0's based) of the small queues the raw cases create: 16 entries, or fewer when
/// CAP.MQES is smaller (§3.1.4.1).
fn small<P: Platform>(c: &Controller<P>) -> u16 {
    c.cap().mqes_z().min(15)
}

/// One past the highest QID the controller allocated.
fn qid_above<P: Platform>(c: &Controller<P>) -> u16 {
    let a = c.queues_allocated();
    a.ncq_z.max(a.nsq_z).saturating_add(2)
}

fn ok(c: &Completion, what: &str) -> anyhow::Result<()> {
    ensure!(c.status().is_success(), "{what} failed: {}", c.status());
    Ok(())
}

fn pair_lifecycle<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let mut qp = c.create_io_queue_pair(64)?;
    ensure!(qp.qid() >= 1, "I/O queue got QID 0");
    let n = super::helpers::fit(c, &ns, 4) as usize;
    let data = pattern(0x11, 0, ns.lba_size() as usize * n, ns.lba_size() as usize);
    let lba = super::helpers::scratch_lba(&ns, 4);
    qp.write(&ns, lba, buffer_with(c, &data)?)?;
    let back = qp.read(&ns, lba, c.alloc_buffer(data.len())?)?;
    ensure!(
        back.to_vec() == data,
        "read back differs from what was written"
    );
    c.delete_io_queue_pair(qp)?;
    Ok(Verdict::Pass)
}

fn cq_qid_zero<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let r = {
        let c = cx.ctrl()?;
        c.create_cq_raw(cq(0, small(c)))?
    };
    cx.expect_status("Create I/O CQ QID 0", r.status(), &[(1, 0x01)])
}

fn cq_qid_above<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let qid = qid_above(c);
    let r = c.create_cq_raw(cq(qid, small(c)))?;
    cx.expect_status(
        "Create I/O CQ above the allocated count",
        r.status(),
        &[(1, 0x01)],
    )
}

fn cq_qsize_zero<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let r = {
        let c = cx.ctrl()?;
        c.create_cq_raw(cq(1, 0))?
    };
    cx.expect_status("Create I/O CQ QSIZE 0", r.status(), &[(1, 0x02)])
}

fn cq_qsize_above_mqes<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let mqes = c.cap().mqes_z();
    if mqes == u16::MAX {
        return Ok(Verdict::Skip(
            "CAP.MQES is the largest encodable size".into(),
        ));
    }
    let r = c.create_cq_raw(cq(1, mqes + 1))?;
    cx.expect_status("Create I/O CQ QSIZE MQES+1", r.status(), &[(1, 0x02)])
}

fn cq_twice<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    ok(
        &c.create_cq_raw(cq(1, small(c)))?,
        "the first Create I/O CQ",
    )?;
    let r = c.create_cq_raw(cq(1, small(c)))?;
    ok(&c.delete_queue_raw(1, false)?, "Delete I/O CQ")?;
    cx.expect_status(
        "the second Create I/O CQ with the same QID",
        r.status(),
        &[(1, 0x01)],
    )
}

fn sq_cqid_zero<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let r = {
        let c = cx.ctrl()?;
        c.create_sq_raw(sq(1, 0, small(c)))?
    };
    cx.expect_status("Create I/O SQ with CQID 0", r.status(), &[(1, 0x01)])
}

fn sq_cqid_above<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let qid = qid_above(c);
    let r = c.create_sq_raw(sq(1, qid, small(c)))?;
    cx.expect_status(
        "Create I/O SQ naming a CQID above the allocated count",
        r.status(),
        &[(1, 0x01)],
    )
}

fn sq_cq_missing<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let r = {
        let c = cx.ctrl()?;
        c.create_sq_raw(sq(1, 1, small(c)))?
    };
    cx.expect_status(
        "Create I/O SQ naming CQ 1, which does not exist",
        r.status(),
        &[(1, 0x00)],
    )
}

fn delete_cq_in_use<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    ok(&c.create_cq_raw(cq(1, small(c)))?, "Create I/O CQ")?;
    ok(&c.create_sq_raw(sq(1, 1, small(c)))?, "Create I/O SQ")?;
    let r = c.delete_queue_raw(1, false)?;
    ok(&c.delete_queue_raw(1, true)?, "Delete I/O SQ")?;
    ok(&c.delete_queue_raw(1, false)?, "Delete I/O CQ after its SQ")?;
    cx.expect_status_dnr(
        "Delete I/O CQ with an SQ attached",
        r.status(),
        &[(1, 0x0C)],
    )
}

fn delete_cq_invalid<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let qid = qid_above(c);
    let r = c.delete_queue_raw(qid, false)?;
    cx.expect_status(
        "Delete I/O CQ with a QID above the allocated count",
        r.status(),
        &[(1, 0x01)],
    )
}

fn cq_bad_vector<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let r = {
        let c = cx.ctrl()?;
        c.create_cq_raw(CreateCq {
            ien: true,
            iv: 0x7FF,
            ..cq(1, small(c))
        })?
    };
    cx.expect_status("Create I/O CQ with IV 7FFh", r.status(), &[(1, 0x08)])
}

fn cq_not_contiguous<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if !Cap(c.cap().0).cqr() {
        return Ok(Verdict::Skip(
            "CAP.CQR is 0: non-contiguous queues are allowed".into(),
        ));
    }
    let r = c.create_cq_raw(CreateCq {
        pc: false,
        ..cq(1, small(c))
    })?;
    cx.expect_status("Create I/O CQ with PC=0", r.status(), &[(0, 0x02)])
}

fn wrap_around<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let mut qp = c.create_io_queue_pair(4).context("a 4-entry queue pair")?;
    ensure!(
        qp.depth() == 3,
        "a 4-entry queue holds 3 commands, not {}",
        qp.depth()
    );
    let lba = super::helpers::scratch_lba(&ns, 8);
    let bs = ns.lba_size() as usize;
    for round in 0..100u64 {
        let data = pattern(round as u8, lba + round % 8, bs, bs);
        qp.write(&ns, lba + round % 8, buffer_with(c, &data)?)?;
        let back = qp.read(&ns, lba + round % 8, c.alloc_buffer(bs)?)?;
        ensure!(back.to_vec() == data, "round {round}: data differs");
    }
    c.delete_io_queue_pair(qp)?;
    Ok(Verdict::Pass)
}

/// Creates CQ 1 (16 entries) for the SQ cases, so that the SQ's own fields are what fails.
fn with_cq1<P: Platform>(c: &mut Controller<P>) -> anyhow::Result<()> {
    ok(&c.create_cq_raw(cq(1, small(c)))?, "Create I/O CQ 1")
}

fn sq_qid_zero<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    with_cq1(c)?;
    let r = c.create_sq_raw(sq(0, 1, small(c)))?;
    cx.expect_status("Create I/O SQ QID 0", r.status(), &[(1, 0x01)])
}

fn sq_qid_above<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    with_cq1(c)?;
    let qid = c.queues_allocated().nsq_z.saturating_add(2);
    let r = c.create_sq_raw(sq(qid, 1, small(c)))?;
    cx.expect_status(
        &format!("Create I/O SQ QID {qid} (above the allocated count)"),
        r.status(),
        &[(1, 0x01)],
    )
}

fn sq_qsize_zero<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    with_cq1(c)?;
    let r = c.create_sq_raw(sq(1, 1, 0))?;
    cx.expect_status("Create I/O SQ QSIZE 0", r.status(), &[(1, 0x02)])
}

fn sq_qsize_above_mqes<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let mqes = c.cap().mqes_z();
    if mqes == u16::MAX {
        return Ok(Verdict::Skip(
            "CAP.MQES is the largest encodable size".into(),
        ));
    }
    with_cq1(c)?;
    let r = c.create_sq_raw(sq(1, 1, mqes + 1))?;
    cx.expect_status("Create I/O SQ QSIZE MQES+1", r.status(), &[(1, 0x02)])
}

fn sq_twice<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    with_cq1(c)?;
    ok(
        &c.create_sq_raw(sq(1, 1, small(c)))?,
        "the first Create I/O SQ",
    )?;
    let r = c.create_sq_raw(sq(1, 1, small(c)))?;
    cx.expect_status(
        "the second Create I/O SQ with the same QID",
        r.status(),
        &[(1, 0x01)],
    )
}

fn delete_sq_invalid<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let above = c.queues_allocated().nsq_z.saturating_add(2);
    let missing = c.delete_queue_raw(1, true)?;
    let beyond = c.delete_queue_raw(above, true)?;
    let v1 = cx.expect_status(
        "Delete I/O SQ 1, which was never created",
        missing.status(),
        &[(1, 0x01)],
    )?;
    let v2 = cx.expect_status(
        &format!("Delete I/O SQ {above} (above the allocated count)"),
        beyond.status(),
        &[(1, 0x01)],
    )?;
    Ok(super::helpers::fold([v1, v2]))
}

fn delete_sq_zero<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let r = cx.ctrl()?.delete_queue_raw(0, true)?;
    cx.expect_status("Delete I/O SQ QID 0", r.status(), &[(1, 0x01)])
}

fn delete_cq_zero<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let r = cx.ctrl()?.delete_queue_raw(0, false)?;
    cx.expect_status("Delete I/O CQ QID 0", r.status(), &[(1, 0x01)])
}

/// A queue base 256 bytes into a page: entry aligned, not page aligned.
const MISALIGN: u32 = 0x100;

fn cq_misaligned<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let r = {
        let c = cx.ctrl()?;
        c.create_cq_raw(CreateCq {
            base_offset: MISALIGN,
            ..cq(1, small(c))
        })?
    };
    if r.status().is_success() {
        bail!("Create I/O CQ with its base 100h bytes into a page succeeded");
    }
    cx.expect_status(
        "Create I/O CQ with a misaligned base",
        r.status(),
        &[(0, 0x13), (0, 0x02)],
    )
}

fn sq_misaligned<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    with_cq1(c)?;
    let r = c.create_sq_raw(CreateSq {
        base_offset: MISALIGN,
        ..sq(1, 1, small(c))
    })?;
    if r.status().is_success() {
        bail!("Create I/O SQ with its base 100h bytes into a page succeeded");
    }
    cx.expect_status(
        "Create I/O SQ with a misaligned base",
        r.status(),
        &[(0, 0x13), (0, 0x02)],
    )
}

fn all_pairs<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let mut cfg = cx.config();
    cfg.io_queue_pairs = 256;
    cfg.max_transfer = 4096;
    let c = cx.bring_up(cfg)?;
    let a = c.queues_allocated();
    let want = (a.nsq_z.min(a.ncq_z) as usize + 1).min(256);
    let ns = namespace(c, None)?;
    let mut pairs = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        loop {
            match c.create_io_queue_pair(4) {
                Ok(qp) => pairs.push(qp),
                Err(Error::NoQueueAvailable { .. }) => break,
                Err(e) => bail!("creating queue pair {}: {e}", pairs.len() + 1),
            }
        }
        ensure!(
            pairs.len() == want,
            "{} queue pairs could be created, the controller allocated {want}",
            pairs.len()
        );
        for qp in pairs.iter_mut() {
            let (st, _) =
                super::helpers::submit_wait(qp, Command::flush(ns.nsid()), None, 0, None)?;
            ensure!(st.is_success(), "Flush on QID {}: {st}", qp.qid());
        }
        Ok(())
    })();
    for qp in pairs {
        c.delete_io_queue_pair(qp)?;
    }
    result?;
    Ok(Verdict::Pass)
}

/// Submits `count` Flushes (tags 0..count), rings once and collects every completion.
fn flush_batch<P: Platform>(
    qp: &mut nvme_core::IoQueuePair<P>,
    nsid: u32,
    count: usize,
) -> anyhow::Result<()> {
    for t in 0..count {
        qp.submit(Command::flush(nsid), None, t as u64)
            .map_err(|e| anyhow::anyhow!("submitting Flush {t}: {}", e.error))?;
    }
    qp.ring();
    let mut seen = vec![false; count];
    let mut n = 0;
    let mut failed = None;
    let start = Instant::now();
    while n < count && start.elapsed() < Duration::from_secs(20) {
        qp.wait(Duration::from_millis(100), |comp| {
            if let Some(s) = seen.get_mut(comp.tag as usize) {
                if !*s {
                    *s = true;
                    n += 1;
                }
            }
            if let Err(e) = comp.result {
                failed.get_or_insert(e);
            }
        })?;
    }
    if let Some(e) = failed {
        bail!("a Flush failed: {e}");
    }
    ensure!(n == count, "{n} of {count} Flushes completed");
    Ok(())
}

fn max_size<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let mut cfg = cx.config();
    // One-page transfers need no PRP lists: keeps a 4096-entry queue small.
    cfg.max_transfer = 4096;
    let c = cx.bring_up(cfg)?;
    let entries = (c.cap().mqes_z() as u32 + 1).min(4096) as u16;
    let ns = namespace(c, None)?;
    let mut qp = c.create_io_queue_pair(entries)?;
    let depth = qp.depth();
    let r = (|| -> anyhow::Result<()> {
        ensure!(
            depth == entries as usize - 1,
            "a {entries}-entry queue holds {depth} commands"
        );
        flush_batch(&mut qp, ns.nsid(), depth)?;
        flush_batch(&mut qp, ns.nsid(), depth)
    })();
    c.delete_io_queue_pair(qp)?;
    r?;
    Ok(Verdict::Pass)
}

/// Waits for the entry at `head` of raw CQ `qid` to carry `phase`.
fn raw_completion<P: Platform>(
    c: &Controller<P>,
    qid: u16,
    head: u16,
    phase: bool,
) -> anyhow::Result<Completion> {
    let start = Instant::now();
    loop {
        let e = c.raw_cq_entry(qid, head)?;
        if e.phase() == phase {
            return Ok(e);
        }
        ensure!(
            start.elapsed() < Duration::from_secs(5),
            "no completion in CQ {qid} slot {head} within 5 s"
        );
        std::thread::yield_now();
    }
}

fn shared_cq<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if c.queues_allocated().nsq_z < 1 {
        return Ok(Verdict::Skip(
            "the controller allocated a single I/O submission queue".into(),
        ));
    }
    if c.cap().mqes_z() < 3 {
        return Ok(Verdict::Skip(format!(
            "CAP.MQES {} (0's based): the shared CQ needs four entries",
            c.cap().mqes_z()
        )));
    }
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    if bs > 4096 {
        return Ok(Verdict::Skip("LBA size above one page".into()));
    }
    let dstrd = c.cap().dstrd();
    let cq_size = small(c) + 1;
    let lba = scratch_lba(&ns, 1);
    let data = pattern(0x5C, lba, bs, bs);
    let wbuf = buffer_with(c, &data)?;
    let rbuf = c.alloc_buffer(bs)?;
    with_cq1(c)?;
    ok(
        &c.create_sq_raw(sq(1, 1, small(c)))?,
        "Create I/O SQ 1 on CQ 1",
    )?;
    ok(
        &c.create_sq_raw(sq(2, 1, small(c)))?,
        "Create I/O SQ 2 on CQ 1",
    )?;
    let bar = c.platform().clone();
    let ring = |qid: u16, tail: u32| {
        fence(Ordering::Release);
        RawRegisters::new(bar.bar()).write32(sq_tail_doorbell(qid, dstrd), tail);
    };
    // SQ 1: a Write; SQ 2: a Read of the same block. One at a time: the read sees the write.
    let mut w = Command::rw(NvmOpcode::WRITE, ns.nsid(), lba, 0, false);
    w.set_cid(0x101);
    c.raw_sq_write(1, 0, &w, Some(wbuf))?;
    ring(1, 1);
    let e = raw_completion(c, 1, 0, true)?;
    let mut r = Command::rw(NvmOpcode::READ, ns.nsid(), lba, 0, false);
    r.set_cid(0x202);
    c.raw_sq_write(2, 0, &r, Some(rbuf))?;
    ring(2, 1);
    let f = raw_completion(c, 1, 1, true)?;
    // Both consumed: room for two more however small the CQ is.
    RawRegisters::new(c.platform().bar()).write32(cq_head_doorbell(1, dstrd), 2);
    // Both at once: a Flush on each SQ.
    let mut f1 = Command::flush(ns.nsid());
    f1.set_cid(0x103);
    let mut f2 = Command::flush(ns.nsid());
    f2.set_cid(0x204);
    c.raw_sq_write(1, 1, &f1, None)?;
    c.raw_sq_write(2, 1, &f2, None)?;
    ring(1, 2);
    ring(2, 2);
    let g = raw_completion(c, 1, 2, true)?;
    let h = raw_completion(c, 1, 3, true)?;
    RawRegisters::new(c.platform().bar())
        .write32(cq_head_doorbell(1, dstrd), u32::from(4 % cq_size));
    for q in [(1, true), (2, true), (1, false)] {
        ok(
            &c.delete_queue_raw(q.0, q.1)?,
            "deleting the shared-CQ queues",
        )?;
    }
    for (e, sqid, cid, sqhd) in [(e, 1, 0x101, 1), (f, 2, 0x202, 1)] {
        ensure!(
            e.status().is_success(),
            "the command on SQ {sqid} failed: {}",
            e.status()
        );
        ensure!(
            (e.sqid(), e.cid(), e.sqhd()) == (sqid, cid, sqhd),
            "completion names SQ {} CID {:#x} SQHD {}, expected SQ {sqid} CID {cid:#x} SQHD {sqhd}",
            e.sqid(),
            e.cid(),
            e.sqhd()
        );
    }
    let mut both = [(g.sqid(), g.cid(), g.sqhd()), (h.sqid(), h.cid(), h.sqhd())];
    both.sort_unstable();
    ensure!(
        both == [(1, 0x103, 2), (2, 0x204, 2)],
        "the concurrent Flushes completed as {both:x?}"
    );
    ensure!(
        g.status().is_success() && h.status().is_success(),
        "a Flush failed: {} / {}",
        g.status(),
        h.status()
    );
    let read_back = c.take_raw_buffers(2);
    ensure!(
        read_back.len() == 1,
        "SQ 2's buffer did not come back after its deletion"
    );
    ensure!(
        read_back[0].to_vec() == data,
        "the Read on SQ 2 did not return what the Write on SQ 1 wrote"
    );
    Ok(Verdict::Pass)
}

fn large_wrap<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    let mut qp = c.create_io_queue_pair(64)?;
    let depth = qp.depth();
    let lba = scratch_lba(&ns, depth as u64);
    let data = pattern(0x77, lba, depth * bs, bs);
    let r = (|| -> anyhow::Result<()> {
        write_split(c, &mut qp, &ns, lba, &data)?;
        let mut bufs: Vec<_> = (0..depth)
            .map(|_| c.alloc_buffer(bs))
            .collect::<Result<_, _>>()?;
        for round in 0..30 {
            for (i, b) in bufs.drain(..).enumerate() {
                qp.submit_read(&ns, lba + i as u64, b, i as u64)
                    .map_err(|e| anyhow::anyhow!("round {round}: {}", e.error))?;
            }
            qp.ring();
            let mut back: Vec<Option<nvme_core::DmaBuffer<B::P>>> =
                (0..depth).map(|_| None).collect();
            let mut n = 0;
            let start = Instant::now();
            let mut failed = None;
            while n < depth && start.elapsed() < Duration::from_secs(10) {
                qp.wait(Duration::from_millis(100), |comp| {
                    if let Err(e) = comp.result {
                        failed.get_or_insert(e);
                    }
                    if let Some(slot) = back.get_mut(comp.tag as usize) {
                        *slot = comp.buffer;
                        n += 1;
                    }
                })?;
            }
            if let Some(e) = failed {
                bail!("round {round}: a read failed: {e}");
            }
            ensure!(n == depth, "round {round}: {n} of {depth} reads completed");
            for (i, b) in back.into_iter().enumerate() {
                let b = b.context("a buffer was not handed back")?;
                ensure!(
                    b.to_vec() == data[i * bs..(i + 1) * bs],
                    "round {round}: block {i} read back different"
                );
                bufs.push(b);
            }
        }
        Ok(())
    })();
    c.delete_io_queue_pair(qp)?;
    r?;
    Ok(Verdict::Pass)
}

fn vector_per_cq<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if c.vectors() < 3 {
        return Ok(Verdict::Skip(format!(
            "{} MSI-X vectors in use: needs three (admin and two I/O CQs)",
            c.vectors()
        )));
    }
    if c.granted_queue_pairs() < 2 {
        return Ok(Verdict::Skip(format!(
            "{} I/O queue pair granted: needs two CQs to tell their vectors apart",
            c.granted_queue_pairs()
        )));
    }
    let ns = namespace(c, None)?;
    let mut a = c.create_io_queue_pair(8)?;
    let mut b = c.create_io_queue_pair(8)?;
    let p = c.platform().clone();
    let r = (|| -> anyhow::Result<()> {
        let (va, vb) = (
            a.vector().context("no vector")?,
            b.vector().context("no vector")?,
        );
        ensure!(va != vb, "both CQs were given vector {va}");
        for (qp, mine, other) in [(&mut a, va, vb), (&mut b, vb, va)] {
            p.irq().poll(mine);
            p.irq().poll(other);
            qp.submit(Command::flush(ns.nsid()), None, 1)
                .map_err(|e| anyhow::anyhow!("{}", e.error))?;
            qp.ring();
            ensure!(
                p.irq().wait(mine, Duration::from_secs(2)),
                "QID {}: no interrupt on its vector {mine}",
                qp.qid()
            );
            ensure!(
                !p.irq().poll(other),
                "QID {}: its completion also signalled vector {other}",
                qp.qid()
            );
            let mut done = false;
            let start = Instant::now();
            while !done && start.elapsed() < Duration::from_secs(2) {
                qp.poll(|comp| done |= comp.tag == 1)?;
            }
            ensure!(done, "QID {}: the Flush did not complete", qp.qid());
        }
        Ok(())
    })();
    c.delete_io_queue_pair(a)?;
    c.delete_io_queue_pair(b)?;
    r?;
    Ok(Verdict::Pass)
}

//! Queue management (NVMe Base §5.2.1 Create I/O Completion Queue, §5.2.2 Create I/O
//! Submission Queue, §5.2.3/§5.2.4 deletion).

use anyhow::{ensure, Context as _};
use nvme_core::controller::{CreateCq, CreateSq};
use nvme_core::hw::Platform;
use nvme_core::spec::{Cap, Completion};
use nvme_core::Controller;

use super::helpers::{buffer_with, namespace, pattern};
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
    let data = pattern(0x11, 0, ns.lba_size as usize * 4, ns.lba_size as usize);
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
    let r = cx.ctrl()?.create_cq_raw(cq(0, 15))?;
    cx.expect_status("Create I/O CQ QID 0", r.status(), &[(1, 0x01)])
}

fn cq_qid_above<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let qid = qid_above(c);
    let r = c.create_cq_raw(cq(qid, 15))?;
    cx.expect_status(
        "Create I/O CQ above the allocated count",
        r.status(),
        &[(1, 0x01)],
    )
}

fn cq_qsize_zero<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let r = cx.ctrl()?.create_cq_raw(cq(1, 0))?;
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
    ok(&c.create_cq_raw(cq(1, 15))?, "the first Create I/O CQ")?;
    let r = c.create_cq_raw(cq(1, 15))?;
    ok(&c.delete_queue_raw(1, false)?, "Delete I/O CQ")?;
    cx.expect_status(
        "the second Create I/O CQ with the same QID",
        r.status(),
        &[(1, 0x01)],
    )
}

fn sq_cqid_zero<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let r = cx.ctrl()?.create_sq_raw(sq(1, 0, 15))?;
    cx.expect_status("Create I/O SQ with CQID 0", r.status(), &[(1, 0x01)])
}

fn sq_cqid_above<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let qid = qid_above(c);
    let r = c.create_sq_raw(sq(1, qid, 15))?;
    cx.expect_status(
        "Create I/O SQ naming a CQID above the allocated count",
        r.status(),
        &[(1, 0x01)],
    )
}

fn sq_cq_missing<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let r = cx.ctrl()?.create_sq_raw(sq(1, 1, 15))?;
    cx.expect_status(
        "Create I/O SQ naming CQ 1, which does not exist",
        r.status(),
        &[(1, 0x00)],
    )
}

fn delete_cq_in_use<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    ok(&c.create_cq_raw(cq(1, 15))?, "Create I/O CQ")?;
    ok(&c.create_sq_raw(sq(1, 1, 15))?, "Create I/O SQ")?;
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
    let r = cx.ctrl()?.create_cq_raw(CreateCq {
        ien: true,
        iv: 0x7FF,
        ..cq(1, 15)
    })?;
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
        ..cq(1, 15)
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
    let bs = ns.lba_size as usize;
    for round in 0..100u64 {
        let data = pattern(round as u8, lba + round % 8, bs, bs);
        qp.write(&ns, lba + round % 8, buffer_with(c, &data)?)?;
        let back = qp.read(&ns, lba + round % 8, c.alloc_buffer(bs)?)?;
        ensure!(back.to_vec() == data, "round {round}: data differs");
    }
    c.delete_io_queue_pair(qp)?;
    Ok(Verdict::Pass)
}

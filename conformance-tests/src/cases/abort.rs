//! Abort (NVMe Base §5.1.1). Aborting is best effort: a controller may report any command
//! "not aborted" (DW0 bit 0 = 1). The cases check that what it reports is consistent with
//! what happens to the command, and only require an abort where the simulator holds the
//! command on purpose (fault injection).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use nvme_core::spec::{Command, NvmOpcode, Status};
use sim_backend::CommandMatch;

use super::helpers::{namespace, submit_wait};
use crate::backend::Backend;
use crate::case;
use crate::runner::{Case, Ctx, Verdict};

/// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!("AB-01", Abort, "§5.1.1", "Abort of a command that already completed reports it not aborted (DW0 bit 0 = 1)", completed::<B>),
        case!("AB-02", Abort, "§5.1.1", "Abort of an outstanding AER either aborts it (it completes, without an event) or leaves it outstanding, as DW0 says", abort_aer::<B>),
        case!("AB-03", Abort, "§5.1.1", "Abort naming a submission queue that does not exist aborts nothing", no_such_queue::<B>),
        case!("AB-04", Abort, "§5.1.1", "Abort of a command the controller holds completes it with Command Abort Requested and the buffer back", held_command::<B>, sim_only),
        case!("AB-05", Abort, "§5.1.1", "Abort of an in-flight read: the read completes exactly once, with Abort Requested exactly when DW0 says aborted", in_flight::<B>),
    ]
}

fn completed<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let mut qp = c.create_io_queue_pair(8)?;
    let cid = qp
        .submit(Command::flush(ns.nsid()), None, 1)
        .map_err(|e| anyhow::anyhow!("{}", e.error))?;
    qp.ring();
    let mut done = false;
    let start = Instant::now();
    while !done && start.elapsed() < Duration::from_secs(10) {
        qp.wait(Duration::from_millis(100), |comp| done |= comp.cid == cid)?;
    }
    ensure!(done, "the Flush did not complete");
    let r = c.abort(qp.qid(), cid);
    c.delete_io_queue_pair(qp)?;
    let aborted = r?;
    ensure!(
        !aborted,
        "Abort of CID {cid}, which had completed, reports it aborted"
    );
    Ok(Verdict::Pass)
}

fn abort_aer<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let mut cfg = cx.config();
    cfg.async_events = 0;
    let c = cx.bring_up(cfg)?;
    let cid = c.post_aer()?;
    let aborted = c.abort(0, cid)?;
    let start = Instant::now();
    while c.aers_outstanding() > 0 && start.elapsed() < Duration::from_millis(500) {
        c.process_admin_completions();
        std::thread::sleep(Duration::from_millis(1));
    }
    ensure!(
        c.take_async_event().is_none(),
        "the AER completed successfully (as an event) after the Abort"
    );
    if aborted {
        ensure!(
            c.aers_outstanding() == 0,
            "the Abort reports the AER aborted, but it did not complete"
        );
    } else {
        ensure!(
            c.aers_outstanding() == 1,
            "the Abort reports the AER not aborted, but it completed"
        );
    }
    Ok(Verdict::Pass)
}

fn no_such_queue<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let a = c.queues_allocated();
    let sqid = a.nsq_z.saturating_add(2);
    let r = c.admin_command(Command::abort(sqid, 0))?;
    let st = r.status();
    if st.is_success() {
        ensure!(
            r.dw0() & 1 == 1,
            "Abort of a command on SQ {sqid}, which does not exist, reports it aborted"
        );
        return Ok(Verdict::Pass);
    }
    // The spec does not name an error for this; a field or queue identifier error is a
    // reasonable refusal.
    cx.expect_status(
        &format!("Abort naming SQ {sqid}"),
        st,
        &[(0, 0x02), (1, 0x01)],
    )
}

fn held_command<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let sim = cx.backend.simulator().context("simulator")?;
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let mut qp = c.create_io_queue_pair(8)?;
    sim.faults()
        .drop_completion(CommandMatch::io(NvmOpcode::READ.0));
    let buf = c.alloc_buffer(ns.lba_size() as usize)?;
    let cid = qp
        .submit_read(&ns, 0, buf, 9)
        .map_err(|e| anyhow::anyhow!("{}", e.error))?;
    qp.ring();
    let aborted = c.abort(qp.qid(), cid)?;
    let mut got = None;
    let start = Instant::now();
    while got.is_none() && start.elapsed() < Duration::from_secs(2) {
        qp.wait(Duration::from_millis(100), |comp| {
            if comp.tag == 9 {
                got = Some(comp)
            }
        })?;
    }
    c.delete_io_queue_pair(qp)?;
    ensure!(aborted, "the Abort of a held read reports it not aborted");
    let comp = got.context("the aborted read never completed")?;
    let st = comp
        .result
        .err()
        .and_then(|e| e.status())
        .unwrap_or(Status::SUCCESS);
    ensure!(
        st.sct().0 == 0 && st.sc() == 0x07,
        "the aborted read completed with {st}, not Command Abort Requested"
    );
    ensure!(
        comp.buffer.is_some(),
        "the buffer of the aborted read was not handed back"
    );
    Ok(Verdict::Pass)
}

fn in_flight<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    let len = (c.max_transfer() / bs).clamp(1, 256) * bs;
    let mut qp = c.create_io_queue_pair(8)?;
    let cid = qp
        .submit_read(&ns, 0, c.alloc_buffer(len)?, 5)
        .map_err(|e| anyhow::anyhow!("{}", e.error))?;
    qp.ring();
    let aborted = c.abort(qp.qid(), cid)?;
    let mut results = Vec::new();
    let start = Instant::now();
    while results.is_empty() && start.elapsed() < Duration::from_secs(10) {
        qp.wait(Duration::from_millis(50), |comp| {
            if comp.tag == 5 {
                results.push(comp.result.err().and_then(|e| e.status()))
            }
        })?;
    }
    // One more look for a duplicate completion.
    qp.poll(|comp| {
        if comp.tag == 5 {
            results.push(comp.result.err().and_then(|e| e.status()))
        }
    })?;
    let _ = submit_wait(&mut qp, Command::flush(ns.nsid()), None, 0, None)?;
    c.delete_io_queue_pair(qp)?;
    if results.len() != 1 {
        bail!("the read completed {} times", results.len());
    }
    let st = results[0].unwrap_or(Status::SUCCESS);
    if aborted {
        ensure!(
            st.sct().0 == 0 && st.sc() == 0x07,
            "the Abort reports the read aborted, but it completed with {st}"
        );
    } else {
        ensure!(
            st.is_success(),
            "the Abort reports the read not aborted, but it completed with {st}"
        );
    }
    Ok(Verdict::Pass)
}

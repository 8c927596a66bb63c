//! The driver's error handling against injected faults (simulator only): no request waits
//! forever, a dead or fatal controller is reported, and a reset recovers (NVMe Base §3.7.2,
//! §9.5; architecture "fault injection").

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use nvme_core::spec::{AdminOpcode, NvmOpcode};
use nvme_core::Error;
use sim_backend::CommandMatch;

use super::helpers::{buffer_with, namespace, pattern};
use crate::backend::Backend;
use crate::case;
use crate::runner::{Case, Ctx, Verdict};

/// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!(
            "RC-01",
            Recovery,
            "§3.7.2",
            "a lost I/O completion times out, and a controller reset brings I/O back",
            lost_io_completion::<B>,
            sim_only
        ),
        case!(
            "RC-02",
            Recovery,
            "§3.1.4.6",
            "surprise removal (all-ones registers) is reported as device gone, without hanging",
            surprise_removal::<B>,
            sim_only
        ),
        case!(
            "RC-03",
            Recovery,
            "§9.5",
            "Controller Fatal Status fails the waiting admin command; a reset recovers",
            fatal_status::<B>,
            sim_only
        ),
        case!(
            "RC-04",
            Recovery,
            "NVM §3.3.4",
            "a media error on read returns Unrecovered Read Error with the buffer back",
            media_error::<B>,
            sim_only
        ),
        case!(
            "RC-05",
            Recovery,
            "§5.1.1",
            "a lost admin completion times out and the controller asks for a reset",
            lost_admin_completion::<B>,
            sim_only
        ),
    ]
}

fn short_timeouts<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<()> {
    let mut cfg = cx.config();
    cfg.io_timeout = Duration::from_millis(300);
    cfg.admin_timeout = Duration::from_millis(500);
    cx.bring_up(cfg)?;
    Ok(())
}

fn lost_io_completion<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    short_timeouts(cx)?;
    let sim = cx.backend.simulator().context("simulator")?;
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let mut qp = c.create_io_queue_pair(8)?;
    sim.faults()
        .drop_completion(CommandMatch::io(NvmOpcode::READ.0));
    let start = Instant::now();
    let r = qp.read(&ns, 0, c.alloc_buffer(ns.lba_size() as usize)?);
    let waited = start.elapsed();
    match r {
        Err(e) => {
            ensure!(
                matches!(e.error, Error::Timeout { .. }),
                "expected a timeout, got {}",
                e.error
            );
            ensure!(e.buffer.is_none(), "the buffer of a timed-out command was handed back while the device may still write it");
        }
        Ok(_) => bail!("a read whose completion was dropped succeeded"),
    }
    ensure!(
        waited < Duration::from_secs(5),
        "the timeout took {waited:?}"
    );
    ensure!(
        qp.outstanding() == 1,
        "the timed-out command should still hold its slot"
    );
    c.reset()?;
    // The old pair is dead: its operations fail with ControllerReset.
    let dead = qp.read(&ns, 0, c.alloc_buffer(ns.lba_size() as usize)?);
    ensure!(
        matches!(dead, Err(ref e) if matches!(e.error, Error::ControllerReset)),
        "a pair from before the reset still works"
    );
    drop(qp);
    // Namespace handles from before the reset are stale too: take a fresh one.
    let ns = namespace(c, None)?;
    let mut qp = c.create_io_queue_pair(8)?;
    let bs = ns.lba_size() as usize;
    let data = pattern(5, 1, bs, bs);
    qp.write(&ns, 1, buffer_with(c, &data)?)?;
    ensure!(
        qp.read(&ns, 1, c.alloc_buffer(bs)?)?.to_vec() == data,
        "I/O after reset returned different data"
    );
    c.delete_io_queue_pair(qp)?;
    Ok(Verdict::Pass)
}

fn surprise_removal<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    short_timeouts(cx)?;
    let sim = cx.backend.simulator().context("simulator")?;
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let mut qp = c.create_io_queue_pair(8)?;
    sim.faults().surprise_removal();
    let start = Instant::now();
    let r = qp.read(&ns, 0, c.alloc_buffer(ns.lba_size() as usize)?);
    ensure!(r.is_err(), "I/O to a removed device succeeded");
    let e = c.get_feature(nvme_core::spec::FeatureId::NUMBER_OF_QUEUES);
    ensure!(
        matches!(e, Err(Error::DeviceGone) | Err(Error::Timeout { .. })),
        "admin command to a removed device: {e:?}"
    );
    ensure!(
        start.elapsed() < Duration::from_secs(5),
        "detecting removal took {:?}",
        start.elapsed()
    );
    drop(qp);
    let c = cx.take_ctrl().context("controller")?;
    match c.shutdown() {
        Err(Error::DeviceGone) => Ok(Verdict::Pass),
        other => bail!("shutdown of a removed device: {other:?}"),
    }
}

fn fatal_status<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    short_timeouts(cx)?;
    let sim = cx.backend.simulator().context("simulator")?;
    let c = cx.ctrl()?;
    sim.faults().controller_fatal();
    let r = c.get_feature(nvme_core::spec::FeatureId::NUMBER_OF_QUEUES);
    ensure!(
        matches!(r, Err(Error::ControllerFatal) | Err(Error::Timeout { .. })),
        "admin command with CSTS.CFS=1: {r:?}"
    );
    ensure!(c.csts().cfs(), "CSTS.CFS is not set");
    sim.faults().clear();
    c.reset()?;
    ensure!(!c.csts().cfs(), "CFS still set after reset");
    c.get_feature(nvme_core::spec::FeatureId::NUMBER_OF_QUEUES)?;
    Ok(Verdict::Pass)
}

fn media_error<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let sim = cx.backend.simulator().context("simulator")?;
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    sim.faults().media_error(ns.nsid(), 10..12);
    let n = super::helpers::fit(c, &ns, 4) as usize;
    let mut qp = c.create_io_queue_pair(8)?;
    let r = qp.read(&ns, 10, c.alloc_buffer(n * ns.lba_size() as usize)?);
    let ok = qp.read(&ns, 0, c.alloc_buffer(n * ns.lba_size() as usize)?);
    c.delete_io_queue_pair(qp)?;
    ok.map_err(|e| anyhow::anyhow!("a read outside the bad range failed: {e}"))?;
    match r {
        Err(e) => {
            let st = e.error.status().context("a status")?;
            ensure!(
                st.sct().0 == 2 && st.sc() == 0x81,
                "expected Unrecovered Read Error, got {st}"
            );
            ensure!(
                e.buffer.is_some(),
                "the buffer of a completed command was not handed back"
            );
            Ok(Verdict::Pass)
        }
        Ok(_) => bail!("a read over a media error succeeded"),
    }
}

fn lost_admin_completion<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    short_timeouts(cx)?;
    let sim = cx.backend.simulator().context("simulator")?;
    let c = cx.ctrl()?;
    sim.faults()
        .drop_completion(CommandMatch::admin(AdminOpcode::GET_FEATURES.0));
    let r = c.get_feature(nvme_core::spec::FeatureId::NUMBER_OF_QUEUES);
    ensure!(
        matches!(r, Err(Error::Timeout { qid: 0, .. })),
        "expected an admin timeout, got {r:?}"
    );
    let again = c.get_feature(nvme_core::spec::FeatureId::NUMBER_OF_QUEUES);
    ensure!(
        matches!(again, Err(Error::NeedsReset(_))),
        "after an admin timeout the next command should ask for a reset, got {again:?}"
    );
    c.reset()?;
    c.get_feature(nvme_core::spec::FeatureId::NUMBER_OF_QUEUES)?;
    Ok(Verdict::Pass)
}

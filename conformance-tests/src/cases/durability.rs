//! Durability: what a completed write promises across a power loss (NVM Command Set §3.3.6
//! FUA, NVMe Base §7.1 Flush, §5.1.25.1.6 Volatile Write Cache, §3.6.1 shutdown). With a
//! volatile write cache, a write completed with FUA, or followed by a completed Flush, is on
//! non-volatile media; an unflushed write may be lost but never tears another block; with the
//! cache disabled every completed write is durable.
//!
//! Power loss can only be injected on the simulator ([`sim_backend::Simulator::power_loss`]);
//! those cases skip elsewhere with that reason. The cases that need no power loss (Flush and
//! FUA complete, the cache can be turned off and on) run everywhere.

use anyhow::{ensure, Context as _};
use nvme_core::hw::Platform;
use nvme_core::spec::{Command, FeatureId, NvmOpcode};
use nvme_core::{Controller, IoQueuePair, Namespace};

use super::helpers::{buffer_with, namespace, pattern, read_split, require_oncs, scratch_lba};
use crate::backend::Backend;
use crate::case;
use crate::runner::{Case, Ctx, Verdict};

/// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!("DUR-01", Durability, "NVM §3.3.6", "with a volatile write cache, a Write completed with FUA survives a power loss", fua_survives::<B>),
        case!("DUR-02", Durability, "§7.1", "with a volatile write cache, a Write followed by a completed Flush survives a power loss", flush_survives::<B>),
        case!("DUR-03", Durability, "§5.1.25.1.6", "an unflushed Write is kept or lost whole at a power loss, and the blocks around it keep their flushed data", unflushed_no_tear::<B>),
        case!("DUR-04", Durability, "§5.1.25.1.6", "with the volatile write cache disabled (or absent), every completed Write survives a power loss", cache_off_survives::<B>),
        case!("DUR-05", Durability, "NVM §3.3.8", "Write Zeroes completed with FUA survives a power loss", zeroes_fua_survives::<B>),
        case!("DUR-06", Durability, "§3.6.1", "an orderly shutdown (CC.SHN) writes the cache back: unflushed data survives a power loss after it", shutdown_writes_back::<B>),
        case!("DUR-07", Durability, "§5.1.12.1.3", "a power loss without shutdown counts one Power Cycle and one Unsafe Shutdown in SMART", smart_counts_power_loss::<B>),
        case!("DUR-08", Durability, "§7.1", "Flush of every active namespace completes successfully after writes, and the data reads back", flush_each_namespace::<B>),
        case!("DUR-09", Durability, "§5.1.25.1.6", "with the volatile write cache disabled, Write, FUA Write and Flush complete; enabling it again is reported", cache_off_io::<B>),
    ]
}

/// `Skip` unless this is the simulator (the only backend that can lose power on request).
fn need_power_loss<B: Backend>(cx: &Ctx<'_, B>) -> Option<Verdict> {
    (!cx.backend.is_sim())
        .then(|| Verdict::Skip("power loss can be injected only on the simulator".into()))
}

/// `Skip` when Identify VWC bit 0 is clear: no volatile write cache, nothing to lose.
fn need_cache<P: Platform>(c: &Controller<P>) -> Option<Verdict> {
    (c.identify().vwc & 1 == 0)
        .then(|| Verdict::Skip("Identify VWC bit 0 is clear: no volatile write cache".into()))
}

/// Sets the Volatile Write Cache feature (WCE) and checks Get reports it.
fn set_cache<P: Platform>(c: &mut Controller<P>, on: bool) -> anyhow::Result<()> {
    c.set_features(FeatureId::VOLATILE_WRITE_CACHE, u32::from(on), false)
        .with_context(|| format!("Set Features Volatile Write Cache WCE={}", on as u8))?;
    let got = c.get_feature(FeatureId::VOLATILE_WRITE_CACHE)? & 1 != 0;
    ensure!(
        got == on,
        "Get Features Volatile Write Cache reports WCE={} after setting {}",
        got as u8,
        on as u8
    );
    Ok(())
}

/// One Write of `data` at `lba`, with or without FUA.
fn write<P: Platform>(
    c: &Controller<P>,
    qp: &mut IoQueuePair<P>,
    ns: &Namespace,
    lba: u64,
    data: &[u8],
    fua: bool,
) -> anyhow::Result<()> {
    let nlb = data.len() / ns.lba_size() as usize;
    let cmd = Command::rw(NvmOpcode::WRITE, ns.nsid(), lba, (nlb - 1) as u16, fua);
    qp.passthrough(cmd, Some(buffer_with(c, data)?))
        .map_err(|e| anyhow::anyhow!("Write at LBA {lba} (FUA {}): {}", fua as u8, e.error))?;
    Ok(())
}

/// Power loss on the simulator while the controller is enabled, then a fresh bring-up. The
/// old driver instance is dropped after the power loss: its shutdown writes reach a
/// controller that just powered on, which is not something the driver did wrong, so
/// what the simulator recorded for them is forgotten.
fn power_loss_and_reopen<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<()> {
    let sim = cx.backend.simulator().context("simulator")?;
    sim.power_loss();
    drop(cx.take_ctrl());
    cx.backend.clear_violations();
    let cfg = cx.config();
    cx.bring_up(cfg).context("bring-up after the power loss")?;
    Ok(())
}

/// Reads `len` bytes at `lba` of namespace `nsid` through a new queue pair.
fn read_back<B: Backend>(
    cx: &mut Ctx<'_, B>,
    nsid: u32,
    lba: u64,
    len: usize,
) -> anyhow::Result<Vec<u8>> {
    let c = cx.ctrl()?;
    let ns = c.namespace(nsid)?.clone();
    let mut qp = c.create_io_queue_pair(8)?;
    let r = read_split(c, &mut qp, &ns, lba, len);
    c.delete_io_queue_pair(qp)?;
    r
}

/// The common prefix of the power-loss cases: simulator, cache present and enabled, a
/// namespace and a scratch LBA for `blocks` blocks, a queue pair.
type Setup<P> = (Namespace, u64, IoQueuePair<P>);

fn setup<B: Backend>(
    cx: &mut Ctx<'_, B>,
    blocks: u64,
    cache: Option<bool>,
) -> anyhow::Result<Result<Setup<B::P>, Verdict>> {
    if let Some(v) = need_power_loss(cx) {
        return Ok(Err(v));
    }
    let c = cx.ctrl()?;
    if let Some(on) = cache {
        if let Some(v) = need_cache(c) {
            return Ok(Err(v));
        }
        set_cache(c, on)?;
    }
    let ns = namespace(c, None)?;
    let lba = scratch_lba(&ns, blocks);
    let qp = c.create_io_queue_pair(8)?;
    Ok(Ok((ns, lba, qp)))
}

fn fua_survives<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let (ns, lba, mut qp) = match setup(cx, 4, Some(true))? {
        Ok(s) => s,
        Err(v) => return Ok(v),
    };
    let c = cx.ctrl()?;
    let bs = ns.lba_size() as usize;
    let data = pattern(0xD1, lba, 4 * bs, bs);
    write(c, &mut qp, &ns, lba, &data, true)?;
    c.delete_io_queue_pair(qp)?;
    power_loss_and_reopen(cx)?;
    let back = read_back(cx, ns.nsid(), lba, data.len())?;
    ensure!(
        back == data,
        "the Write completed with FUA did not survive the power loss"
    );
    Ok(Verdict::Pass)
}

fn flush_survives<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let (ns, lba, mut qp) = match setup(cx, 4, Some(true))? {
        Ok(s) => s,
        Err(v) => return Ok(v),
    };
    let c = cx.ctrl()?;
    let bs = ns.lba_size() as usize;
    let data = pattern(0xD2, lba, 4 * bs, bs);
    write(c, &mut qp, &ns, lba, &data, false)?;
    qp.flush(ns.nsid()).context("Flush")?;
    c.delete_io_queue_pair(qp)?;
    power_loss_and_reopen(cx)?;
    let back = read_back(cx, ns.nsid(), lba, data.len())?;
    ensure!(
        back == data,
        "a Write followed by a completed Flush did not survive the power loss"
    );
    Ok(Verdict::Pass)
}

fn unflushed_no_tear<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let (ns, lba, mut qp) = match setup(cx, 4, Some(true))? {
        Ok(s) => s,
        Err(v) => return Ok(v),
    };
    let c = cx.ctrl()?;
    let bs = ns.lba_size() as usize;
    let old = pattern(0xD3, lba, 4 * bs, bs);
    write(c, &mut qp, &ns, lba, &old, false)?;
    qp.flush(ns.nsid()).context("Flush")?;
    let new = pattern(0x3D, lba + 1, 2 * bs, bs);
    write(c, &mut qp, &ns, lba + 1, &new, false)?;
    c.delete_io_queue_pair(qp)?;
    power_loss_and_reopen(cx)?;
    let back = read_back(cx, ns.nsid(), lba, old.len())?;
    for (i, got) in back.chunks(bs).enumerate() {
        let was = &old[i * bs..(i + 1) * bs];
        if i == 1 || i == 2 {
            let written = &new[(i - 1) * bs..i * bs];
            ensure!(
                got == was || got == written,
                "LBA {}: after the power loss it holds neither its flushed data nor the unflushed write (torn)",
                lba + i as u64
            );
        } else {
            ensure!(
                got == was,
                "LBA {}: an unflushed write to its neighbour changed it across the power loss",
                lba + i as u64
            );
        }
    }
    Ok(Verdict::Pass)
}

fn cache_off_survives<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    if let Some(v) = need_power_loss(cx) {
        return Ok(v);
    }
    let c = cx.ctrl()?;
    if c.identify().vwc & 1 != 0 {
        set_cache(c, false)?;
    }
    let ns = namespace(c, None)?;
    let lba = scratch_lba(&ns, 8);
    let bs = ns.lba_size() as usize;
    let mut qp = c.create_io_queue_pair(8)?;
    let data = pattern(0xD4, lba, 8 * bs, bs);
    for k in 0..8 {
        write(
            c,
            &mut qp,
            &ns,
            lba + k as u64,
            &data[k * bs..(k + 1) * bs],
            false,
        )?;
    }
    c.delete_io_queue_pair(qp)?;
    power_loss_and_reopen(cx)?;
    let back = read_back(cx, ns.nsid(), lba, data.len())?;
    for (k, got) in back.chunks(bs).enumerate() {
        ensure!(
            got == &data[k * bs..(k + 1) * bs],
            "LBA {}: a Write completed with the volatile write cache disabled was lost at the power loss",
            lba + k as u64
        );
    }
    Ok(Verdict::Pass)
}

fn zeroes_fua_survives<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    if let Some(v) = need_power_loss(cx) {
        return Ok(v);
    }
    if let Some(v) = require_oncs(cx.ctrl()?, 1 << 3, "bit 3 (Write Zeroes)") {
        return Ok(v);
    }
    let (ns, lba, mut qp) = match setup(cx, 4, Some(true))? {
        Ok(s) => s,
        Err(v) => return Ok(v),
    };
    let c = cx.ctrl()?;
    let bs = ns.lba_size() as usize;
    let data = pattern(0xD5, lba, 4 * bs, bs);
    write(c, &mut qp, &ns, lba, &data, false)?;
    qp.flush(ns.nsid()).context("Flush")?;
    let mut wz = Command::write_zeroes(ns.nsid(), lba + 1, 1, false);
    let cdw12 = wz.cdw(12).unwrap_or(0);
    wz.set_cdw(12, cdw12 | 1 << 30);
    qp.passthrough(wz, None)
        .map_err(|e| anyhow::anyhow!("Write Zeroes with FUA: {}", e.error))?;
    c.delete_io_queue_pair(qp)?;
    power_loss_and_reopen(cx)?;
    let back = read_back(cx, ns.nsid(), lba, data.len())?;
    ensure!(
        back[bs..3 * bs].iter().all(|&b| b == 0),
        "blocks zeroed by Write Zeroes with FUA came back non-zero after the power loss"
    );
    ensure!(
        back[..bs] == data[..bs] && back[3 * bs..] == data[3 * bs..],
        "the blocks around the Write Zeroes range changed"
    );
    Ok(Verdict::Pass)
}

fn shutdown_writes_back<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let (ns, lba, mut qp) = match setup(cx, 4, Some(true))? {
        Ok(s) => s,
        Err(v) => return Ok(v),
    };
    let c = cx.ctrl()?;
    let bs = ns.lba_size() as usize;
    let data = pattern(0xD6, lba, 4 * bs, bs);
    write(c, &mut qp, &ns, lba, &data, false)?;
    c.delete_io_queue_pair(qp)?;
    cx.take_ctrl()
        .context("controller")?
        .shutdown()
        .context("orderly shutdown")?;
    let sim = cx.backend.simulator().context("simulator")?;
    sim.power_loss();
    let cfg = cx.config();
    cx.bring_up(cfg).context("bring-up after the power loss")?;
    let back = read_back(cx, ns.nsid(), lba, data.len())?;
    ensure!(
        back == data,
        "data written before an orderly shutdown was lost at a later power loss"
    );
    Ok(Verdict::Pass)
}

fn smart_counts_power_loss<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    if let Some(v) = need_power_loss(cx) {
        return Ok(v);
    }
    let before = cx.ctrl()?.smart_log()?;
    power_loss_and_reopen(cx)?;
    let after = cx.ctrl()?.smart_log()?;
    ensure!(
        after.power_cycles == before.power_cycles + 1,
        "SMART Power Cycles went from {} to {} across one power loss",
        before.power_cycles,
        after.power_cycles
    );
    ensure!(
        after.unsafe_shutdowns == before.unsafe_shutdowns + 1,
        "SMART Unsafe Shutdowns went from {} to {} across a power loss without shutdown",
        before.unsafe_shutdowns,
        after.unsafe_shutdowns
    );
    Ok(Verdict::Pass)
}

fn flush_each_namespace<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let all: Vec<Namespace> = c.namespaces().to_vec();
    let mut qp = c.create_io_queue_pair(8)?;
    let r = (|| -> anyhow::Result<()> {
        for ns in &all {
            let bs = ns.lba_size() as usize;
            let lba = scratch_lba(ns, 2);
            let data = pattern(0xD8 ^ ns.nsid() as u8, lba, 2 * bs, bs);
            write(c, &mut qp, ns, lba, &data, false)?;
            qp.flush(ns.nsid())
                .with_context(|| format!("Flush of namespace {}", ns.nsid()))?;
            let back = read_split(c, &mut qp, ns, lba, data.len())?;
            ensure!(
                back == data,
                "namespace {}: data read after Flush differs",
                ns.nsid()
            );
        }
        Ok(())
    })();
    c.delete_io_queue_pair(qp)?;
    r?;
    Ok(Verdict::Pass)
}

fn cache_off_io<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if let Some(v) = need_cache(c) {
        return Ok(v);
    }
    set_cache(c, false)?;
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    let lba = scratch_lba(&ns, 2);
    let data = pattern(0xD9, lba, 2 * bs, bs);
    let mut qp = c.create_io_queue_pair(8)?;
    let r = (|| -> anyhow::Result<()> {
        write(c, &mut qp, &ns, lba, &data[..bs], false)?;
        write(c, &mut qp, &ns, lba + 1, &data[bs..], true)?;
        qp.flush(ns.nsid())
            .context("Flush with the cache disabled")?;
        let back = read_split(c, &mut qp, &ns, lba, data.len())?;
        ensure!(
            back == data,
            "data written with the cache disabled reads back differently"
        );
        Ok(())
    })();
    c.delete_io_queue_pair(qp)?;
    r?;
    set_cache(c, true)?;
    Ok(Verdict::Pass)
}

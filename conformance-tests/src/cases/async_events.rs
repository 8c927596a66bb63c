//! Asynchronous Event Requests (NVMe Base §5.1.2): the request limit, error events for invalid
//! doorbell writes (§3.1.4 doorbell registers), masking until the log page is read (§5.1.12
//! RAE), and SMART events from the Temperature Threshold (§5.1.25.1.4).
//!
//! The doorbell triggers are the two QEMU 7.2 also reports (qemu-nvme-peer.md): a write to the
//! doorbell of a queue that does not exist, and a value at or beyond the queue size. They are
//! host protocol violations on purpose: those cases are marked `violates`.

use nvme_core::raw::RawRegisters;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use nvme_core::hw::Platform;
use nvme_core::spec::log::{event_type, lid};
use nvme_core::spec::regs::{cq_head_doorbell, sq_tail_doorbell};
use nvme_core::spec::{AsyncEvent, Command};
use nvme_core::Controller;

use crate::backend::Backend;
use crate::case;
use crate::runner::{Case, Ctx, Verdict};

/// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!("AE-01", AsyncEvents, "§5.1.2", "AERL + 2 outstanding requests: the extra one is completed (AER Limit Exceeded), the others stay outstanding", aer_limit::<B>),
        case!("AE-02", AsyncEvents, "§5.1.2.1", "a doorbell write for a queue that does not exist raises an error event naming the Error Information log", nonexistent_queue_doorbell::<B>, violates),
        case!("AE-03", AsyncEvents, "§5.1.2", "an error event is masked until its log is read with RAE=0 (RAE=1 keeps it masked), then recurs", masked_until_log_read::<B>, violates),
        case!("AE-04", AsyncEvents, "§5.1.2.1", "a CQ head doorbell value at the queue size raises Invalid Doorbell Write Value", cq_head_beyond_size::<B>, violates),
        case!("AE-05", AsyncEvents, "§5.1.2.1", "an SQ tail doorbell value at the queue size raises Invalid Doorbell Write Value", sq_tail_beyond_size::<B>, violates),
        case!("AE-06", AsyncEvents, "§5.1.25.1.4", "an over-temperature threshold below the composite temperature raises a SMART temperature event and critical warning", temperature_event::<B>),
    ]
}

/// Reads the Error Information log with RAE=0 (§5.1.12: this clears the error event type's
/// mask). A controller may keep an event type masked across a Controller Level Reset (QEMU 7.2
/// does), so each case starts from an unmasked state instead of depending on the one before.
fn unmask_error_events<P: Platform>(c: &mut Controller<P>) -> anyhow::Result<()> {
    c.get_log_page(lid::ERROR_INFO, 0, 0, 64, false)?;
    Ok(())
}

fn bad_doorbell<P: Platform>(c: &Controller<P>, offset: usize, value: u32) {
    RawRegisters::new(c.platform().bar()).write32(offset, value);
}

fn expect_error_event(ev: Option<AsyncEvent>, infos: &[u8], what: &str) -> anyhow::Result<()> {
    let ev = ev.with_context(|| format!("no asynchronous event within 2 s after {what}"))?;
    ensure!(
        ev.event_type == event_type::ERROR,
        "{what}: event type {} (expected 0, error status)",
        ev.event_type
    );
    ensure!(
        infos.contains(&ev.info),
        "{what}: event information {:02x}h, expected one of {infos:02x?}",
        ev.info
    );
    ensure!(
        ev.log_page == lid::ERROR_INFO,
        "{what}: the event names log page {:02x}h, not the Error Information log",
        ev.log_page
    );
    Ok(())
}

fn aer_limit<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let mut cfg = cx.config();
    cfg.async_events = 0;
    let c = cx.bring_up(cfg.clone())?;
    let limit = c.identify().aerl as usize + 1;
    if limit + 1 + 4 > c.config().admin_queue_entries as usize {
        cfg.admin_queue_entries = (limit + 8).min(4096) as u16;
        cx.bring_up(cfg)?;
    }
    let c = cx.ctrl()?;
    // The admin queue holds at most CAP.MQES commands at once (§3.1.4.1, §4.1.3).
    if usize::from(c.cap().mqes_z()) < limit + 1 {
        return Ok(Verdict::Skip(format!(
            "CAP.MQES {} (0's based): the admin queue cannot hold AERL + 2 = {} requests",
            c.cap().mqes_z(),
            limit + 1
        )));
    }
    for _ in 0..limit + 1 {
        c.post_aer()?;
    }
    let start = Instant::now();
    while (c.aers_outstanding() as usize) > limit && start.elapsed() < Duration::from_secs(2) {
        c.process_admin_completions();
        std::thread::sleep(Duration::from_millis(1));
    }
    ensure!(
        c.aers_outstanding() as usize == limit,
        "{} requests outstanding after posting AERL + 2 = {}: the controller should complete the one beyond AERL + 1 with AER Limit Exceeded",
        c.aers_outstanding(),
        limit + 1
    );
    ensure!(
        c.take_async_event().is_none(),
        "the request beyond the limit completed successfully, as an event"
    );
    // The others stay outstanding: no completion without an event.
    std::thread::sleep(Duration::from_millis(100));
    c.process_admin_completions();
    ensure!(
        c.aers_outstanding() as usize == limit,
        "outstanding requests completed without an event"
    );
    let stats = c.stats();
    ensure!(
        stats.aer_failures == 1,
        "{} requests failed, expected exactly the one beyond the limit",
        stats.aer_failures
    );
    let st = stats
        .last_aer_failure
        .context("the failed request's status")?;
    cx.expect_status("the AER beyond AERL + 1", st, &[(1, 0x05)])
}

/// The CQ head doorbell of QID 1 while no I/O queue exists.
fn nonexistent_cq<P: Platform>(c: &Controller<P>) -> usize {
    cq_head_doorbell(1, c.cap().dstrd())
}

fn nonexistent_queue_doorbell<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    unmask_error_events(c)?;
    ensure!(
        c.aers_outstanding() >= 1,
        "no AER outstanding after bring-up"
    );
    bad_doorbell(c, nonexistent_cq(c), 0);
    // §5.1.2.1 names 00h for a write to an invalid doorbell register; some controllers report
    // it as an invalid value (01h).
    expect_error_event(
        c.wait_async_event(Duration::from_secs(2)),
        &[0x00, 0x01],
        "a write to the CQ 1 head doorbell with no CQ 1",
    )?;
    Ok(Verdict::Pass)
}

fn masked_until_log_read<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    unmask_error_events(c)?;
    let db = nonexistent_cq(c);
    bad_doorbell(c, db, 0);
    expect_error_event(
        c.wait_async_event(Duration::from_secs(2)),
        &[0x00, 0x01],
        "the first invalid doorbell write",
    )?;
    c.post_aer()?;
    bad_doorbell(c, db, 0);
    ensure!(
        c.wait_async_event(Duration::from_millis(150)).is_none(),
        "a second error event was reported before the Error Information log was read"
    );
    let entries = (c.identify().elpe as usize + 1).min(1024);
    c.get_log_page(lid::ERROR_INFO, 0, 0, entries * 64, true)?;
    ensure!(
        c.wait_async_event(Duration::from_millis(150)).is_none(),
        "reading the log with RAE=1 unmasked the error event"
    );
    c.get_log_page(lid::ERROR_INFO, 0, 0, entries * 64, false)?;
    // The event of the second write may have been retained and arrive now; otherwise a new
    // invalid write must be reported.
    let ev = match c.wait_async_event(Duration::from_millis(150)) {
        Some(ev) => Some(ev),
        None => {
            bad_doorbell(c, db, 0);
            c.wait_async_event(Duration::from_secs(2))
        }
    };
    expect_error_event(
        ev,
        &[0x00, 0x01],
        "an invalid doorbell write after the log was read with RAE=0",
    )?;
    Ok(Verdict::Pass)
}

fn cq_head_beyond_size<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    unmask_error_events(c)?;
    let qp = c.create_io_queue_pair(8)?;
    let db = cq_head_doorbell(qp.qid(), c.cap().dstrd());
    bad_doorbell(c, db, 8);
    let ev = c.wait_async_event(Duration::from_secs(2));
    c.delete_io_queue_pair(qp)?;
    expect_error_event(ev, &[0x01], "CQ head doorbell = 8 on an 8-entry CQ")?;
    Ok(Verdict::Pass)
}

fn sq_tail_beyond_size<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    unmask_error_events(c)?;
    let qp = c.create_io_queue_pair(8)?;
    let db = sq_tail_doorbell(qp.qid(), c.cap().dstrd());
    bad_doorbell(c, db, 8);
    let ev = c.wait_async_event(Duration::from_secs(2));
    c.delete_io_queue_pair(qp)?;
    expect_error_event(ev, &[0x01], "SQ tail doorbell = 8 on an 8-entry SQ")?;
    Ok(Verdict::Pass)
}

fn temperature_event<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let temp = c.smart_log()?.composite_temperature;
    if temp < 20 {
        return Ok(Verdict::Skip(
            "the SMART log reports no composite temperature".into(),
        ));
    }
    let get = |c: &mut Controller<B::P>, fid: u8, cdw11: u32| -> anyhow::Result<u32> {
        let r = c.admin_command(Command::get_features(fid, 0, 0, cdw11))?;
        ensure!(
            r.status().is_success(),
            "Get Features {fid:02x}h: {}",
            r.status()
        );
        Ok(r.dw0())
    };
    let aec = get(c, 0x0B, 0)?;
    c.set_features(nvme_core::spec::FeatureId(0x0B), aec | 0x02, false)?;
    let over0 = get(c, 0x04, 0)? & 0xFFFF;
    let low = u32::from(temp) - 10;
    c.set_features(nvme_core::spec::FeatureId(0x04), low, false)?;
    let ev = c.wait_async_event(Duration::from_secs(2));
    let smart = c.smart_log();
    let restored = c.set_features(nvme_core::spec::FeatureId(0x04), over0, false);
    let ev = ev.context(
        "no event within 2 s after setting the over-temperature threshold below the temperature",
    )?;
    ensure!(
        ev.event_type == event_type::SMART && ev.info == 0x01 && ev.log_page == lid::SMART,
        "expected a SMART event (type 1) with information 01h (temperature threshold) naming log 02h, got {ev:?}"
    );
    let smart = smart?;
    ensure!(
        smart.critical_warning & 0x02 != 0,
        "critical warning {:#x}: bit 1 (temperature) clear while {} K is above the {low} K threshold",
        smart.critical_warning,
        temp
    );
    restored?;
    Ok(Verdict::Pass)
}

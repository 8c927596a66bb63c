//! Get Log Page (NVMe Base §5.1.12).

use anyhow::ensure;
use nvme_core::spec::log::lid;
use nvme_core::spec::{Command, SmartLog};

use super::helpers::{buffer_with, namespace, pattern, scratch_lba};
use crate::backend::Backend;
use crate::case;
use crate::runner::{Case, Ctx, Verdict};

/// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!(
            "LOG-01",
            LogPages,
            "§5.1.12.1.3",
            "the SMART / Health log reads, with a sane temperature and spare",
            smart::<B>
        ),
        case!(
            "LOG-02",
            LogPages,
            "§5.1.12.1.3",
            "SMART host read/write command counters move after I/O",
            smart_counters_move::<B>
        ),
        case!(
            "LOG-03",
            LogPages,
            "§5.1.12.1.4",
            "the Firmware Slot log names an active slot holding a revision",
            firmware_slot::<B>
        ),
        case!(
            "LOG-04",
            LogPages,
            "§5.1.12",
            "Get Log Page with an unsupported LID fails with Invalid Log Page",
            unsupported_lid::<B>
        ),
        case!(
            "LOG-05",
            LogPages,
            "§5.1.12.1.2",
            "the Error Information log reads (all entries of ELPE + 1)",
            error_log::<B>
        ),
    ]
}

fn smart<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let s = cx.ctrl()?.smart_log()?;
    // 0 K means "not reported"; anything reported must be a plausible device temperature.
    ensure!(
        s.composite_temperature == 0 || (200..400).contains(&s.composite_temperature),
        "composite temperature {} K",
        s.composite_temperature
    );
    ensure!(
        s.available_spare <= 100 && s.available_spare_threshold <= 100,
        "spare {}% threshold {}%",
        s.available_spare,
        s.available_spare_threshold
    );
    Ok(Verdict::Pass)
}

fn smart_counters_move<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let before = c.smart_log()?;
    let ns = namespace(c, None)?;
    let bs = ns.lba_size as usize;
    let lba = scratch_lba(&ns, 4);
    let mut qp = c.create_io_queue_pair(8)?;
    for _ in 0..4 {
        qp.write(&ns, lba, buffer_with(c, &pattern(2, lba, 4 * bs, bs))?)?;
        qp.read(&ns, lba, c.alloc_buffer(4 * bs)?)?;
    }
    c.delete_io_queue_pair(qp)?;
    let after: SmartLog = c.smart_log()?;
    ensure!(
        after.host_write_commands >= before.host_write_commands + 4,
        "host write commands {} -> {}",
        before.host_write_commands,
        after.host_write_commands
    );
    ensure!(
        after.host_read_commands >= before.host_read_commands + 4,
        "host read commands {} -> {}",
        before.host_read_commands,
        after.host_read_commands
    );
    Ok(Verdict::Pass)
}

fn firmware_slot<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let f = c.firmware_slot_log()?;
    let slot = f.active_slot();
    ensure!((1..=7).contains(&slot), "AFI names slot {slot}");
    let fr = c.identify().fr;
    let in_slot = f.frs[slot as usize - 1];
    ensure!(
        !in_slot.as_str().is_empty(),
        "the active slot {slot} holds no revision"
    );
    if in_slot.as_str() != fr.as_str() {
        // §5.1.13.2.1: FR is the revision of the active firmware, so it matches the active slot.
        return cx.deviation(format!(
            "active slot {slot} holds {:?}, Identify FR is {:?}",
            in_slot.as_str(),
            fr.as_str()
        ));
    }
    Ok(Verdict::Pass)
}

fn unsupported_lid<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    // 0x7F is in the reserved range of log page identifiers.
    let (r, _) = cx.ctrl()?.admin_read(
        Command::get_log_page(0x7F, 0xFFFF_FFFF, 128, 0, 0, false),
        512,
    )?;
    cx.expect_status("Get Log Page LID 7Fh", r.status(), &[(1, 0x09)])
}

fn error_log<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let n = c.identify().elpe as usize + 1;
    let bytes = c.get_log_page(lid::ERROR_INFO, 0, 0, (n * 64).min(64 * 1024), false)?;
    ensure!(bytes.len() == (n * 64).min(64 * 1024), "short error log");
    Ok(Verdict::Pass)
}

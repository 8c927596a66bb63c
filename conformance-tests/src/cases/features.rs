//! Get Features and Set Features (NVMe Base §5.1.11, §5.1.25; the feature table of §5.1.25.1).

use anyhow::{bail, ensure};
use nvme_core::hw::Platform;
use nvme_core::spec::features::select;
use nvme_core::spec::identify::oncs;
use nvme_core::spec::{Command, Completion};
use nvme_core::Controller;

use super::helpers::fold;
use crate::backend::Backend;
use crate::case;
use crate::runner::{Case, Ctx, Verdict};

/// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!("FEAT-01", Features, "§5.1.11", "every mandatory feature reads with SEL 000b, with values consistent with Identify and the queue grant", current_values::<B>),
        case!("FEAT-02", Features, "§5.1.11", "SEL 001b returns each default; a feature that is not saveable and was not set since reset is at its default", default_values::<B>),
        case!("FEAT-03", Features, "§5.1.11", "SEL 010b returns the saved value, which is the default for a feature that is not saveable", saved_values::<B>),
        case!("FEAT-04", Features, "§5.1.11", "SEL 011b capabilities have reserved bits clear; Number of Queues is not namespace specific", capabilities::<B>),
        case!("FEAT-05", Features, "§5.1.25.1.4", "Temperature Threshold over and under values round-trip through Set and Get", temperature_roundtrip::<B>),
        case!("FEAT-06", Features, "§5.1.25.1.7", "Set Features Number of Queues with NSQR or NCQR of FFFFh fails with Invalid Field", queues_ffff::<B>),
        case!("FEAT-07", Features, "§5.1.25.1.7", "Set Features Number of Queues after an I/O queue exists fails with Command Sequence Error", queues_after_creation::<B>, violates),
        case!("FEAT-08", Features, "§5.1.25.1.7", "Get Features Number of Queues returns the counts Set Features allocated", queues_get::<B>),
        case!("FEAT-09", Features, "§5.1.11", "Get and Set Features of the reserved FID 00h fail with Invalid Field", unsupported_fid::<B>),
        case!("FEAT-10", Features, "§5.1.25", "Set Features with SV=1 on a feature that is not saveable fails with Feature Identifier Not Saveable", save_not_saveable::<B>),
        case!("FEAT-11", Features, "§5.1.25.1.1", "Set Features Arbitration with its current value succeeds", set_arbitration::<B>),
        case!("FEAT-12", Features, "§5.1.25.1.2", "Set Features Power Management with its current value succeeds", set_power::<B>),
        case!("FEAT-13", Features, "§5.1.25.1.8", "Set Features Interrupt Coalescing with its current value succeeds", set_coalescing::<B>),
        case!("FEAT-14", Features, "§5.1.25.1.9", "Set Features Interrupt Vector Configuration with its current value succeeds", set_vector_config::<B>),
        case!("FEAT-15", Features, "§5.1.25.1.10", "Set Features Write Atomicity Normal with its current value succeeds", set_atomicity::<B>),
        case!("FEAT-16", Features, "§5.1.25.1.11", "Asynchronous Event Configuration round-trips through Set and Get", aec_roundtrip::<B>),
        case!("FEAT-17", Features, "§5.1.25", "Set Features of a controller-scope feature naming a namespace fails with Feature Identifier Not Namespace Specific", not_ns_specific::<B>),
        case!("FEAT-18", Features, "§5.1.25.1.6", "Volatile Write Cache can be disabled and enabled, and Get reports each", vwc_roundtrip::<B>),
        case!("FEAT-19", Features, "§5.1.25.1.2", "Set Features Power Management with PS above NPSS fails with Invalid Field", power_state_above_npss::<B>),
        case!("FEAT-20", Features, "§5.1.25.1.9", "Get Features Interrupt Vector Configuration for a vector that does not exist fails with Invalid Field", vector_config_invalid::<B>),
    ]
}

/// The mandatory features of an I/O controller with the CDW11 to read them with: Temperature
/// Threshold selects the composite sensor's over threshold, Interrupt Vector Configuration
/// vector 1. Volatile Write Cache is added when Identify VWC says one is present.
fn mandatory<P: Platform>(c: &Controller<P>) -> Vec<(u8, u32)> {
    let mut v = vec![
        (0x01, 0),
        (0x02, 0),
        (0x04, 0),
        (0x05, 0),
        (0x07, 0),
        (0x08, 0),
        (0x09, 1),
        (0x0A, 0),
        (0x0B, 0),
    ];
    if c.identify().vwc & 1 != 0 {
        v.push((0x06, 0));
    }
    v
}

/// Features whose value the driver does not set at bring-up and that hold no per-vector or
/// grant data: their current value after a reset is the default (or the saved value).
const UNTOUCHED: [u8; 6] = [0x01, 0x02, 0x04, 0x05, 0x08, 0x0A];

fn first_nsid<P: Platform>(c: &Controller<P>) -> u32 {
    c.namespaces().first().map(|n| n.nsid()).unwrap_or(1)
}

/// Get Features with NSID 0. A namespace-specific feature (Error Recovery is, on controllers
/// with DULBE) may refuse NSID 0 with Invalid Namespace or Format: then it is read for the
/// first active namespace. Returns the completion and whether the NSID was needed.
fn get<P: Platform>(
    c: &mut Controller<P>,
    fid: u8,
    sel: u8,
    cdw11: u32,
) -> anyhow::Result<(Completion, bool)> {
    let r = c.admin_command(Command::get_features(fid, sel, 0, cdw11))?;
    let st = r.status();
    if st.sct().0 == 0 && st.sc() == 0x0B {
        let ns = first_nsid(c);
        return Ok((
            c.admin_command(Command::get_features(fid, sel, ns, cdw11))?,
            true,
        ));
    }
    Ok((r, false))
}

/// As [`get`], failing unless the command succeeds; returns DW0.
fn get_ok<P: Platform>(c: &mut Controller<P>, fid: u8, sel: u8, cdw11: u32) -> anyhow::Result<u32> {
    let (r, _) = get(c, fid, sel, cdw11)?;
    ensure!(
        r.status().is_success(),
        "Get Features FID {fid:02x}h SEL {sel:03b}b failed: {}",
        r.status()
    );
    Ok(r.dw0())
}

fn set<P: Platform>(
    c: &mut Controller<P>,
    fid: u8,
    save: bool,
    nsid: u32,
    value: u32,
) -> anyhow::Result<Completion> {
    Ok(c.admin_command(Command::set_features(fid, save, nsid, value))?)
}

fn supports_select<P: Platform>(c: &Controller<P>) -> bool {
    c.identify().supports(oncs::SAVE_SELECT)
}

fn no_select() -> Verdict {
    Verdict::Skip("ONCS bit 4 is clear: the Select field of Get Features is not supported".into())
}

fn current_values<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    for (fid, cdw11) in mandatory(c) {
        let dw0 = get_ok(c, fid, select::CURRENT, cdw11)?;
        match fid {
            0x02 => ensure!(
                dw0 & 0x1F <= c.identify().npss as u32,
                "Power Management PS {} above NPSS {}",
                dw0 & 0x1F,
                c.identify().npss
            ),
            0x07 => {
                let a = c.queues_allocated().to_dword();
                ensure!(
                    dw0 == a,
                    "Number of Queues reads {dw0:#x}, Set Features allocated {a:#x}"
                );
            }
            0x09 => ensure!(
                dw0 & 0xFFFF == cdw11,
                "Interrupt Vector Configuration for vector {cdw11} reports vector {}",
                dw0 & 0xFFFF
            ),
            _ => {}
        }
    }
    Ok(Verdict::Pass)
}

/// SEL 011b bit 0: saveable.
fn saveable<P: Platform>(c: &mut Controller<P>, fid: u8, cdw11: u32) -> anyhow::Result<bool> {
    Ok(get_ok(c, fid, select::SUPPORTED_CAPABILITIES, cdw11)? & 1 != 0)
}

fn default_values<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if !supports_select(c) {
        return Ok(no_select());
    }
    for (fid, cdw11) in mandatory(c) {
        let default = get_ok(c, fid, select::DEFAULT, cdw11)?;
        if UNTOUCHED.contains(&fid) && !saveable(c, fid, cdw11)? {
            let current = get_ok(c, fid, select::CURRENT, cdw11)?;
            ensure!(
                current == default,
                "FID {fid:02x}h is not saveable and was not set since the reset, but reads {current:#x} with default {default:#x}"
            );
        }
    }
    Ok(Verdict::Pass)
}

fn saved_values<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if !supports_select(c) {
        return Ok(no_select());
    }
    for (fid, cdw11) in mandatory(c) {
        let saved = get_ok(c, fid, select::SAVED, cdw11)?;
        if fid != 0x07 && fid != 0x09 && !saveable(c, fid, cdw11)? {
            let default = get_ok(c, fid, select::DEFAULT, cdw11)?;
            ensure!(
                saved == default,
                "FID {fid:02x}h is not saveable: SEL 010b returned {saved:#x}, the default is {default:#x}"
            );
        }
    }
    Ok(Verdict::Pass)
}

fn capabilities<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if !supports_select(c) {
        return Ok(no_select());
    }
    for (fid, cdw11) in mandatory(c) {
        let (r, needed_nsid) = get(c, fid, select::SUPPORTED_CAPABILITIES, cdw11)?;
        ensure!(
            r.status().is_success(),
            "SEL 011b for FID {fid:02x}h failed: {}",
            r.status()
        );
        let caps = r.dw0();
        ensure!(
            caps >> 3 == 0,
            "FID {fid:02x}h capabilities {caps:#x} set reserved bits 31:3"
        );
        if needed_nsid {
            ensure!(
                caps & 2 != 0,
                "FID {fid:02x}h refused NSID 0 as an invalid namespace but is not namespace specific ({caps:#x})"
            );
        }
        if fid == 0x07 {
            ensure!(
                caps & 2 == 0,
                "Number of Queues reported namespace specific ({caps:#x})"
            );
        }
    }
    Ok(Verdict::Pass)
}

fn temperature_roundtrip<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    const UNDER: u32 = 1 << 20;
    let c = cx.ctrl()?;
    let over0 = get_ok(c, 0x04, select::CURRENT, 0)? & 0xFFFF;
    let under0 = get_ok(c, 0x04, select::CURRENT, UNDER)? & 0xFFFF;
    // Raising the over threshold and setting the under threshold to 1 K cannot cross the
    // current temperature, so no SMART warning results.
    let over1 = if over0 < 0xFFFF { over0 + 1 } else { over0 - 1 };
    let under1 = if under0 == 1 { 2 } else { 1 };
    for (thsel, new, old) in [(0, over1, over0), (UNDER, under1, under0)] {
        let r = set(c, 0x04, false, 0, thsel | new)?;
        ensure!(
            r.status().is_success(),
            "Set Temperature Threshold {:#x}: {}",
            thsel | new,
            r.status()
        );
        let back = get_ok(c, 0x04, select::CURRENT, thsel)? & 0xFFFF;
        let restored = set(c, 0x04, false, 0, thsel | old)?;
        ensure!(
            back == new,
            "threshold (THSEL {}) set to {new} K reads back {back} K",
            thsel >> 20
        );
        ensure!(
            restored.status().is_success(),
            "restoring the threshold: {}",
            restored.status()
        );
    }
    Ok(Verdict::Pass)
}

fn queues_ffff<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let a = set(c, 0x07, false, 0, 0x0000_FFFF)?;
    let b = set(c, 0x07, false, 0, 0xFFFF_0000)?;
    let v1 = cx.expect_status("Number of Queues NSQR FFFFh", a.status(), &[(0, 0x02)])?;
    let v2 = cx.expect_status("Number of Queues NCQR FFFFh", b.status(), &[(0, 0x02)])?;
    Ok(fold([v1, v2]))
}

fn queues_after_creation<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let qp = c.create_io_queue_pair(8)?;
    let value = c.queues_allocated().to_dword();
    let r = set(c, 0x07, false, 0, value)?;
    c.delete_io_queue_pair(qp)?;
    cx.expect_status(
        "Number of Queues after creating an I/O queue pair",
        r.status(),
        &[(0, 0x0C)],
    )
}

fn queues_get<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let dw0 = get_ok(c, 0x07, select::CURRENT, 0)?;
    let a = c.queues_allocated();
    ensure!(
        dw0 == a.to_dword(),
        "Get Features Number of Queues: NSQA {} NCQA {}, Set Features allocated NSQA {} NCQA {}",
        dw0 & 0xFFFF,
        dw0 >> 16,
        a.nsq_z,
        a.ncq_z
    );
    // Creating a queue pair does not change the allocation.
    let qp = c.create_io_queue_pair(8)?;
    let again = get_ok(c, 0x07, select::CURRENT, 0);
    c.delete_io_queue_pair(qp)?;
    ensure!(
        again? == dw0,
        "Number of Queues changed after creating a queue pair"
    );
    Ok(Verdict::Pass)
}

fn unsupported_fid<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let g = c.admin_command(Command::get_features(0x00, select::CURRENT, 0, 0))?;
    let s = set(c, 0x00, false, 0, 0)?;
    let v1 = cx.expect_status("Get Features FID 00h", g.status(), &[(0, 0x02)])?;
    let v2 = cx.expect_status("Set Features FID 00h", s.status(), &[(0, 0x02)])?;
    Ok(fold([v1, v2]))
}

fn save_not_saveable<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    // Controllers without the Save field (ONCS bit 4 clear) may treat SV=1 as an invalid
    // field; with it, the feature must be changeable and not saveable.
    let candidates: [(u8, u32); 2] = [(0x0B, 0), (0x04, 0)];
    let mut pick = None;
    for (fid, cdw11) in candidates {
        if !supports_select(c) {
            pick = Some((fid, cdw11));
            break;
        }
        let caps = get_ok(c, fid, select::SUPPORTED_CAPABILITIES, cdw11)?;
        if caps & 1 == 0 && caps & 4 != 0 {
            pick = Some((fid, cdw11));
            break;
        }
    }
    let Some((fid, cdw11)) = pick else {
        return Ok(Verdict::Skip(
            "Asynchronous Event Configuration and Temperature Threshold are both saveable or not changeable"
                .into(),
        ));
    };
    let current = get_ok(c, fid, select::CURRENT, cdw11)?;
    let value = if fid == 0x04 {
        current & 0xFFFF
    } else {
        current
    };
    let r = set(c, fid, true, 0, value)?;
    cx.expect_status(
        "Set Features with SV=1 on a feature that is not saveable",
        r.status(),
        &[(1, 0x0D), (0, 0x02)],
    )
}

fn set_current<B: Backend>(cx: &mut Ctx<'_, B>, fid: u8, cdw11: u32) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let current = get_ok(c, fid, select::CURRENT, cdw11)?;
    let value = match fid {
        // Interrupt Vector Configuration: IV 15:0 and CD bit 16.
        0x09 => current & 0x1_FFFF,
        // Power Management: PS 4:0 and WH 7:5.
        0x02 => current & 0xFF,
        _ => current,
    };
    let r = set(c, fid, false, 0, value)?;
    let name = nvme_core::spec::FeatureId(fid).name().unwrap_or("feature");
    let v = cx.expect_status(
        &format!("Set Features {name} = {value:#x}"),
        r.status(),
        &[(0, 0)],
    )?;
    if v == Verdict::Pass {
        let c = cx.ctrl()?;
        let back = get_ok(c, fid, select::CURRENT, cdw11)?;
        ensure!(
            back == current,
            "{name} reads {back:#x} after setting it to its current value {current:#x}"
        );
    }
    Ok(v)
}

fn set_arbitration<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    set_current(cx, 0x01, 0)
}
fn set_power<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    set_current(cx, 0x02, 0)
}
fn set_coalescing<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    set_current(cx, 0x08, 0)
}
fn set_vector_config<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    set_current(cx, 0x09, 1)
}
fn set_atomicity<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    set_current(cx, 0x0A, 0)
}

fn aec_roundtrip<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let orig = get_ok(c, 0x0B, select::CURRENT, 0)?;
    // Bit 1 (temperature) alone: a standard SMART critical warning every controller knows.
    for value in [0x02, orig] {
        let r = set(c, 0x0B, false, 0, value)?;
        ensure!(
            r.status().is_success(),
            "Set Asynchronous Event Configuration {value:#x}: {}",
            r.status()
        );
        let back = get_ok(c, 0x0B, select::CURRENT, 0)?;
        ensure!(
            back == value,
            "Asynchronous Event Configuration set to {value:#x} reads back {back:#x}"
        );
    }
    Ok(Verdict::Pass)
}

fn not_ns_specific<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let current = get_ok(c, 0x0B, select::CURRENT, 0)?;
    let ns = first_nsid(c);
    let r = set(c, 0x0B, false, ns, current)?;
    cx.expect_status(
        &format!("Set Features Asynchronous Event Configuration with NSID {ns}"),
        r.status(),
        &[(1, 0x0F)],
    )
}

fn vwc_roundtrip<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if c.identify().vwc & 1 == 0 {
        return Ok(Verdict::Skip(
            "Identify VWC bit 0 is clear: no volatile write cache".into(),
        ));
    }
    let orig = get_ok(c, 0x06, select::CURRENT, 0)? & 1;
    for wce in [orig ^ 1, orig] {
        let r = set(c, 0x06, false, 0, wce)?;
        ensure!(
            r.status().is_success(),
            "Set Volatile Write Cache WCE={wce}: {}",
            r.status()
        );
        let back = get_ok(c, 0x06, select::CURRENT, 0)? & 1;
        ensure!(back == wce, "WCE set to {wce} reads back {back}");
    }
    Ok(Verdict::Pass)
}

fn power_state_above_npss<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let npss = c.identify().npss as u32;
    if npss >= 31 {
        return Ok(Verdict::Skip(
            "NPSS is 31: every PS value names a power state".into(),
        ));
    }
    let r = set(c, 0x02, false, 0, npss + 1)?;
    let st = r.status();
    if st.is_success() {
        // Put the controller back in a power state it has before failing the case.
        let _ = set(c, 0x02, false, 0, 0);
    }
    cx.expect_status("Power Management PS = NPSS + 1", st, &[(0, 0x02)])
}

fn vector_config_invalid<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    // An MSI-X table has at most 2048 entries: vector FFFFh exists on no function.
    let (r, _) = get(c, 0x09, select::CURRENT, 0xFFFF)?;
    if r.status().is_success() {
        bail!(
            "Interrupt Vector Configuration for vector FFFFh succeeded ({:#x})",
            r.dw0()
        );
    }
    cx.expect_status(
        "Interrupt Vector Configuration for vector FFFFh",
        r.status(),
        &[(0, 0x02)],
    )
}

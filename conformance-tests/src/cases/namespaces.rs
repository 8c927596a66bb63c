//! Namespace attachment (NVMe Base §5.1.20 Namespace Attachment, §5.1.13.2 Identify CNS 10h
//! allocated namespace list, 12h attached controller list, 13h controller list, §5.1.2
//! Namespace Attribute Changed notice, §5.1.12.1.5 Changed Namespace List log). The cases
//! need a controller that supports namespace management (OACS bit 3) and, for attach and
//! detach, an allocated namespace that is not attached (QEMU: `cargo xtask hil
//! --detached-namespaces 1`); otherwise they skip and say which.
//!
//! The simulator has no namespace management: OACS bit 3 is clear, and the cases skip there.

use std::time::Duration;

use anyhow::{ensure, Context as _};
use nvme_core::hw::Platform;
use nvme_core::spec::identify::{cns, oacs};
use nvme_core::spec::log::event_type;
use nvme_core::spec::{AdminOpcode, Command, FeatureId, NamespaceList};
use nvme_core::Controller;

use super::helpers::{buffer_with, pattern, read_split, scratch_lba, write_split};
use crate::backend::Backend;
use crate::case;
use crate::runner::{Case, Ctx, Verdict};

/// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!("NS-01", Namespaces, "§5.1.20", "a detached namespace is attached, carries I/O and is detached; the active list and the attached-controller list (CNS 12h) follow", attach_io_detach::<B>),
        case!("NS-02", Namespaces, "§5.1.2.1", "attaching a namespace raises a Namespace Attribute Changed notice, and the Changed Namespace List names it", attach_event::<B>),
        case!("NS-03", Namespaces, "§5.1.13.2.1", "the controller list (CNS 13h) names this controller, and the allocated list (CNS 10h) holds every active namespace", lists::<B>),
        case!("NS-04", Namespaces, "§5.1.20", "attaching a namespace that is already attached fails with Namespace Already Attached", already_attached::<B>),
        case!("NS-05", Namespaces, "§5.1.20", "detaching a namespace that is not attached fails with Namespace Not Attached", not_attached::<B>),
        case!("NS-06", Namespaces, "§5.1.20", "a controller list naming a controller that does not exist fails with Controller List Invalid", bad_controller_list::<B>),
    ]
}

/// Log page 04h, Changed Namespace List (§5.1.12.1.5).
const CHANGED_NS_LOG: u8 = 0x04;

/// `Skip` unless OACS bit 3 (Namespace Management and Attachment) is set.
fn need_mgmt<P: Platform>(c: &Controller<P>) -> Option<Verdict> {
    (c.identify().oacs & oacs::NS_MANAGEMENT == 0).then(|| {
        Verdict::Skip(
            "OACS bit 3 is clear: namespace management and attachment are not supported".into(),
        )
    })
}

/// The NSIDs of an Identify namespace list (CNS 02h, 10h) above `start`.
fn ns_list<P: Platform>(c: &mut Controller<P>, cns: u8) -> anyhow::Result<Vec<u32>> {
    Ok(NamespaceList::parse(&c.identify_raw(cns, 0)?)
        .ids()
        .to_vec())
}

/// A controller list (§5.1.13.2.x Figure "Controller List"): number of entries, then IDs.
fn ctrl_list(page: &[u8]) -> Vec<u16> {
    let n = usize::from(u16::from_le_bytes([page[0], page[1]])).min(2047);
    (0..n)
        .map(|i| u16::from_le_bytes([page[2 + 2 * i], page[3 + 2 * i]]))
        .collect()
}

/// Identify with CNS `cns`, NSID `nsid` and CNTID 0, whatever the status.
fn identify_cntid<P: Platform>(
    c: &mut Controller<P>,
    cns: u8,
    nsid: u32,
) -> anyhow::Result<Vec<u16>> {
    let (r, page) = c.admin_read(Command::identify(cns, nsid, 0, 0), 4096)?;
    ensure!(
        r.status().is_success(),
        "Identify CNS {cns:02x}h NSID {nsid}: {}",
        r.status()
    );
    Ok(ctrl_list(&page))
}

/// Namespace Attachment (SEL 0h attach, 1h detach) of `nsid` for the controllers `ids`.
fn attachment<P: Platform>(
    c: &mut Controller<P>,
    nsid: u32,
    detach: bool,
    ids: &[u16],
) -> anyhow::Result<nvme_core::spec::Status> {
    let mut list = vec![0u8; 4096];
    list[..2].copy_from_slice(&(ids.len() as u16).to_le_bytes());
    for (i, id) in ids.iter().enumerate() {
        list[2 + 2 * i..4 + 2 * i].copy_from_slice(&id.to_le_bytes());
    }
    let mut cmd = Command::new(AdminOpcode::NAMESPACE_ATTACHMENT.0);
    cmd.set_nsid(nsid).set_cdw(10, u32::from(detach));
    let buf = buffer_with(c, &list)?;
    let (r, _) = c.admin_passthrough(cmd, Some(buf), None)?;
    c.rescan_namespaces()?;
    Ok(r.status())
}

/// An allocated namespace that is not attached to this controller, or why none is found.
fn detached<P: Platform>(c: &mut Controller<P>) -> anyhow::Result<Result<u32, Verdict>> {
    let allocated = ns_list(c, cns::ALLOCATED_NS_LIST)?;
    let active = ns_list(c, cns::ACTIVE_NS_LIST)?;
    Ok(allocated
        .into_iter()
        .find(|n| !active.contains(n))
        .ok_or_else(|| {
            Verdict::Skip(
                "every allocated namespace is attached (QEMU: --detached-namespaces 1)".into(),
            )
        }))
}

fn attach_io_detach<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if let Some(v) = need_mgmt(c) {
        return Ok(v);
    }
    let nsid = match detached(c)? {
        Ok(n) => n,
        Err(v) => return Ok(v),
    };
    let me = c.identify().cntlid;
    let st = attachment(c, nsid, false, &[me])?;
    ensure!(st.is_success(), "attaching namespace {nsid}: {st}");
    let r = (|| -> anyhow::Result<()> {
        ensure!(
            ns_list(c, cns::ACTIVE_NS_LIST)?.contains(&nsid),
            "namespace {nsid} is not in the active list after it was attached"
        );
        let ctrls = identify_cntid(c, cns::NS_ATTACHED_CTRLS, nsid)?;
        ensure!(
            ctrls.contains(&me),
            "CNS 12h for namespace {nsid} lists controllers {ctrls:?}, not this one ({me})"
        );
        let ns = c
            .namespace(nsid)
            .context("the driver's namespace list")?
            .clone();
        let bs = ns.lba_size() as usize;
        let lba = scratch_lba(&ns, 4);
        let data = pattern(0xA7, lba, 4 * bs, bs);
        let mut qp = c.create_io_queue_pair(8)?;
        let io = (|| -> anyhow::Result<()> {
            write_split(c, &mut qp, &ns, lba, &data)?;
            let back = read_split(c, &mut qp, &ns, lba, data.len())?;
            ensure!(back == data, "namespace {nsid}: data read back differs");
            Ok(())
        })();
        c.delete_io_queue_pair(qp)?;
        io
    })();
    let st = attachment(c, nsid, true, &[me])?;
    r?;
    ensure!(st.is_success(), "detaching namespace {nsid}: {st}");
    ensure!(
        !ns_list(c, cns::ACTIVE_NS_LIST)?.contains(&nsid),
        "namespace {nsid} is still in the active list after it was detached"
    );
    let ctrls = identify_cntid(c, cns::NS_ATTACHED_CTRLS, nsid)?;
    ensure!(
        !ctrls.contains(&me),
        "CNS 12h for namespace {nsid} still lists this controller ({me}) after the detach"
    );
    ensure!(
        c.identify_namespace(nsid)?.is_inactive(),
        "Identify Namespace of the detached namespace {nsid} is not zero-filled"
    );
    Ok(Verdict::Pass)
}

fn attach_event<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if let Some(v) = need_mgmt(c) {
        return Ok(v);
    }
    if c.identify().oaes & (1 << 8) == 0 {
        return Ok(Verdict::Skip(
            "OAES bit 8 is clear: no Namespace Attribute Notices".into(),
        ));
    }
    let nsid = match detached(c)? {
        Ok(n) => n,
        Err(v) => return Ok(v),
    };
    // Notices are sent only when enabled (§5.1.25.1.5 bit 8); reading the log with RAE=0
    // clears what an earlier change left masked.
    let aec = c.get_feature(FeatureId::ASYNC_EVENT_CONFIG)?;
    c.set_features(FeatureId::ASYNC_EVENT_CONFIG, aec | 1 << 8, false)?;
    c.get_log_page(CHANGED_NS_LOG, 0, 0, 4096, false)?;
    while c.take_async_event().is_some() {}
    let me = c.identify().cntlid;
    let st = attachment(c, nsid, false, &[me])?;
    ensure!(st.is_success(), "attaching namespace {nsid}: {st}");
    let ev = c.wait_async_event(Duration::from_secs(2));
    let log = c.get_log_page(CHANGED_NS_LOG, 0, 0, 4096, false);
    let st = attachment(c, nsid, true, &[me])?;
    c.get_log_page(CHANGED_NS_LOG, 0, 0, 4096, false)?;
    ensure!(st.is_success(), "detaching namespace {nsid}: {st}");
    let ev = ev.context("no asynchronous event within 2 s of the attach")?;
    ensure!(
        (ev.event_type, ev.info, ev.log_page) == (event_type::NOTICE, 0x00, CHANGED_NS_LOG),
        "the event after the attach is type {} info {:02x}h log {:02x}h, expected a notice (2), Namespace Attribute Changed (00h), log 04h",
        ev.event_type,
        ev.info,
        ev.log_page
    );
    let ids = NamespaceList::parse(&log?).ids().to_vec();
    ensure!(
        ids.contains(&nsid) || ids.first() == Some(&0xFFFF_FFFF),
        "the Changed Namespace List {ids:?} does not name namespace {nsid}"
    );
    Ok(Verdict::Pass)
}

fn lists<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if let Some(v) = need_mgmt(c) {
        return Ok(v);
    }
    let me = c.identify().cntlid;
    let (r, page) = c.admin_read(Command::identify(cns::CTRL_LIST, 0, 0, 0), 4096)?;
    if !r.status().is_success() {
        return cx.deviation(format!(
            "OACS bit 3 is set, but Identify CNS 13h (controller list) failed: {}",
            r.status()
        ));
    }
    let ctrls = ctrl_list(&page);
    ensure!(
        ctrls.contains(&me),
        "the controller list (CNS 13h) {ctrls:?} does not name this controller ({me})"
    );
    let allocated = ns_list(c, cns::ALLOCATED_NS_LIST)?;
    let active = ns_list(c, cns::ACTIVE_NS_LIST)?;
    for n in &active {
        ensure!(
            allocated.contains(n),
            "active namespace {n} is missing from the allocated list {allocated:?}"
        );
        let attached = identify_cntid(c, cns::NS_ATTACHED_CTRLS, *n)?;
        ensure!(
            attached.contains(&me),
            "CNS 12h of active namespace {n} lists {attached:?}, not this controller ({me})"
        );
    }
    Ok(Verdict::Pass)
}

fn already_attached<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if let Some(v) = need_mgmt(c) {
        return Ok(v);
    }
    let Some(nsid) = c.namespaces().iter().map(|n| n.nsid()).max() else {
        return Ok(Verdict::Skip("no active namespace".into()));
    };
    let me = c.identify().cntlid;
    let st = attachment(c, nsid, false, &[me])?;
    cx.expect_status(
        &format!("attaching the attached namespace {nsid}"),
        st,
        &[(1, 0x18)],
    )
}

fn not_attached<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if let Some(v) = need_mgmt(c) {
        return Ok(v);
    }
    let nsid = match detached(c)? {
        Ok(n) => n,
        Err(v) => return Ok(v),
    };
    let me = c.identify().cntlid;
    let st = attachment(c, nsid, true, &[me])?;
    cx.expect_status(
        &format!("detaching the detached namespace {nsid}"),
        st,
        &[(1, 0x1A)],
    )
}

fn bad_controller_list<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if let Some(v) = need_mgmt(c) {
        return Ok(v);
    }
    let nsid = match detached(c)? {
        Ok(n) => n,
        Err(v) => return Ok(v),
    };
    let known = identify_cntid(c, cns::CTRL_LIST, 0)?;
    let Some(bogus) = (1..0xFFEFu16).find(|id| !known.contains(id)) else {
        return Ok(Verdict::Skip("every controller ID is in use".into()));
    };
    let st = attachment(c, nsid, false, &[bogus])?;
    if st.is_success() {
        let _ = attachment(c, nsid, true, &[bogus]);
    }
    cx.expect_status(
        &format!("attaching namespace {nsid} to the unknown controller {bogus}"),
        st,
        &[(1, 0x1C)],
    )
}

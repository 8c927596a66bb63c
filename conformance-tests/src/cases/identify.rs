//! Identify (NVMe Base §5.1.13).

use anyhow::{bail, ensure};
use nvme_core::spec::identify::cns;
use nvme_core::spec::{Command, IdentifyNamespace, NamespaceList};

use crate::backend::Backend;
use crate::case;
use crate::runner::{Case, Ctx, Verdict};

/// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!("ID-01", Identify, "§5.1.13.2.1", "Identify Controller reports usable entry sizes, namespaces and printable strings", controller::<B>),
        case!("ID-02", Identify, "§5.1.13.2.2", "the active namespace list is increasing and every entry identifies with a valid format", active_list::<B>),
        case!("ID-03", Identify, "§5.1.13.2.1", "Identify Namespace for an NSID above NN fails with Invalid Namespace or Format", nsid_above_nn::<B>),
        case!("ID-04", Identify, "§5.1.13.1", "a reserved CNS value fails with Invalid Field in Command", reserved_cns::<B>),
        case!("ID-05", Identify, "§5.1.13.2.3", "the Namespace Identification Descriptor list (CNS 03h) is well formed and matches Identify Namespace", descriptors::<B>),
        case!("ID-06", Identify, "§5.1.13.2.2", "the active namespace list with a starting NSID holds exactly the active NSIDs above it", active_list_from::<B>),
        case!("ID-07", Identify, "§5.1.13.2.1", "Identify Namespace of an inactive NSID not above NN returns a zero-filled structure", inactive_nsid::<B>),
        case!("ID-08", Identify, "§5.1.13.2.1", "Identify Namespace with NSID FFFFFFFFh returns the common capabilities or fails with Invalid Namespace", broadcast_nsid::<B>),
        case!("ID-09", Identify, "§5.1.13.2.1", "Identify Controller returns the same data twice", controller_stable::<B>),
        case!("ID-10", Identify, "§5.1.13.1", "a CNTID given with CNS 01h, where it is not used, is ignored (or refused as an invalid field)", cntid_ignored::<B>),
        case!("ID-11", Identify, "§5.1.13.2.1", "Identify Namespace with NSID 0 fails with Invalid Namespace or Format", nsid_zero::<B>),
        case!("ID-12", Identify, "§5.1.13.2.2", "the active namespace list starting at FFFFFFFEh or FFFFFFFFh fails with Invalid Namespace or Format", list_from_broadcast::<B>),
    ]
}

fn controller<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let id = cx.ctrl()?.identify_controller()?;
    ensure!(
        id.sqes & 0xF <= 6 && id.sqes >> 4 >= 6,
        "SQES {:#x} excludes 64-byte entries",
        id.sqes
    );
    ensure!(
        id.cqes & 0xF <= 4 && id.cqes >> 4 >= 4,
        "CQES {:#x} excludes 16-byte entries",
        id.cqes
    );
    ensure!(id.nn >= 1, "NN is 0");
    for (name, s) in [
        ("SN", &id.sn.0[..]),
        ("MN", &id.mn.0[..]),
        ("FR", &id.fr.0[..]),
    ] {
        ensure!(
            s.iter().all(|c| (0x20..0x7F).contains(c)),
            "{name} holds non-printable bytes: {s:?}"
        );
    }
    ensure!(!id.mn.as_str().is_empty(), "MN is blank");
    Ok(Verdict::Pass)
}

fn active_list<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let nn = c.identify().nn;
    let page = c.identify_raw(cns::ACTIVE_NS_LIST, 0)?;
    ensure!(
        NamespaceList::well_formed(&page),
        "the list is not increasing, or has entries after a zero"
    );
    let ids = NamespaceList::parse(&page).ids().to_vec();
    ensure!(!ids.is_empty(), "no active namespace");
    for nsid in ids {
        ensure!(nsid <= nn, "NSID {nsid} above NN {nn}");
        let ns = IdentifyNamespace::parse(&c.identify_raw(cns::NAMESPACE, nsid)?)?;
        ensure!(
            ns.nsze > 0 && ns.ncap <= ns.nsze && ns.nuse <= ns.ncap,
            "NSID {nsid}: NSZE {} NCAP {} NUSE {}",
            ns.nsze,
            ns.ncap,
            ns.nuse
        );
        ensure!(
            ns.format_index() <= ns.nlbaf_z as usize,
            "NSID {nsid}: FLBAS names format {} of {}",
            ns.format_index(),
            ns.nlbaf_z as usize + 1
        );
        ensure!(
            ns.lba_size().is_some(),
            "NSID {nsid}: the format in use has LBADS {}",
            ns.current_format().lbads
        );
    }
    Ok(Verdict::Pass)
}

fn nsid_above_nn<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let nn = c.identify().nn;
    let (st, _) = c.admin_read(
        Command::identify(cns::NAMESPACE, nn.saturating_add(1), 0, 0),
        4096,
    )?;
    let st = st.status();
    cx.expect_status("Identify Namespace NSID NN+1", st, &[(0, 0x0B)])
}

fn reserved_cns<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let (st, _) = c.admin_read(Command::identify(0x7F, 0, 0, 0), 4096)?;
    let st = st.status();
    cx.expect_status("Identify CNS 7Fh", st, &[(0, 0x02)])
}

fn descriptors<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let nsid = c.namespaces().first().map(|n| n.nsid()).unwrap_or(1);
    let id = IdentifyNamespace::parse(&c.identify_raw(cns::NAMESPACE, nsid)?)?;
    let page = c.identify_raw(cns::NS_DESCRIPTORS, nsid)?;
    let mut off = 0;
    let mut seen = Vec::new();
    while off + 4 <= page.len() {
        let (nidt, nidl) = (page[off], page[off + 1] as usize);
        if nidt == 0 {
            ensure!(nidl == 0, "a descriptor with type 0 has length {nidl}");
            break;
        }
        let expected = match nidt {
            1 => Some(8),
            2 | 3 => Some(16),
            4 => Some(1),
            _ => None,
        };
        if let Some(len) = expected {
            ensure!(
                nidl == len,
                "descriptor type {nidt} at offset {off} has length {nidl}, not {len}"
            );
        }
        ensure!(
            off + 4 + nidl <= page.len(),
            "descriptor type {nidt} at offset {off} runs past the page"
        );
        ensure!(
            !seen.contains(&nidt),
            "descriptor type {nidt} appears twice"
        );
        seen.push(nidt);
        let value = &page[off + 4..off + 4 + nidl];
        match nidt {
            1 if id.eui64 != [0; 8] => ensure!(
                value == id.eui64,
                "the EUI-64 descriptor differs from Identify Namespace EUI64"
            ),
            2 if id.nguid != [0; 16] => ensure!(
                value == id.nguid,
                "the NGUID descriptor differs from Identify Namespace NGUID"
            ),
            4 => ensure!(
                value[0] == 0,
                "NSID {nsid} reports command set {}",
                value[0]
            ),
            _ => {}
        }
        off += 4 + nidl;
    }
    ensure!(!seen.is_empty(), "the descriptor list is empty");
    Ok(Verdict::Pass)
}

fn active_list_from<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let all = c.active_namespace_ids(0)?;
    ensure!(!all.is_empty(), "no active namespace");
    for &start in [all[0], *all.last().unwrap_or(&all[0])].iter() {
        let got = c.active_namespace_ids(start)?;
        let want: Vec<u32> = all.iter().copied().filter(|&n| n > start).collect();
        // A full list (1024 entries) may go on beyond the first page.
        let n = want.len().min(got.len()).min(1024);
        ensure!(
            got[..n] == want[..n] && (got.len() == want.len() || all.len() >= 1024),
            "the list from NSID {start} is {got:?}, expected {want:?}"
        );
    }
    Ok(Verdict::Pass)
}

fn inactive_nsid<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let nn = c.identify().nn;
    let active = c.active_namespace_ids(0)?;
    let Some(nsid) = (1..=nn.min(4096)).find(|n| !active.contains(n)) else {
        return Ok(Verdict::Skip(format!(
            "every NSID up to NN = {nn} is active"
        )));
    };
    let page = c.identify_raw(cns::NAMESPACE, nsid)?;
    if let Some(i) = page.iter().position(|&b| b != 0) {
        bail!("Identify Namespace of inactive NSID {nsid} has a non-zero byte at offset {i}");
    }
    Ok(Verdict::Pass)
}

fn broadcast_nsid<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let (r, _) = cx
        .ctrl()?
        .admin_read(Command::identify(cns::NAMESPACE, 0xFFFF_FFFF, 0, 0), 4096)?;
    cx.expect_status(
        "Identify Namespace NSID FFFFFFFFh",
        r.status(),
        &[(0, 0), (0, 0x0B)],
    )
}

fn controller_stable<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let a = c.identify_raw(cns::CONTROLLER, 0)?;
    let b = c.identify_raw(cns::CONTROLLER, 0)?;
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        bail!("two reads of Identify Controller differ at byte {i}");
    }
    Ok(Verdict::Pass)
}

fn cntid_ignored<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let plain = c.identify_raw(cns::CONTROLLER, 0)?;
    let (r, page) = c.admin_read(Command::identify(cns::CONTROLLER, 0, 0xABCD, 0), 4096)?;
    if r.status().is_success() {
        ensure!(
            page == plain,
            "Identify Controller with CNTID ABCDh returned different data"
        );
        return Ok(Verdict::Pass);
    }
    cx.expect_status(
        "Identify Controller with CNTID ABCDh",
        r.status(),
        &[(0, 0x02)],
    )
}

fn nsid_zero<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let (r, _) = cx
        .ctrl()?
        .admin_read(Command::identify(cns::NAMESPACE, 0, 0, 0), 4096)?;
    cx.expect_status("Identify Namespace NSID 0", r.status(), &[(0, 0x0B)])
}

fn list_from_broadcast<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let (a, _) = c.admin_read(
        Command::identify(cns::ACTIVE_NS_LIST, 0xFFFF_FFFE, 0, 0),
        4096,
    )?;
    let (b, _) = c.admin_read(
        Command::identify(cns::ACTIVE_NS_LIST, 0xFFFF_FFFF, 0, 0),
        4096,
    )?;
    let v1 = cx.expect_status("active list from FFFFFFFEh", a.status(), &[(0, 0x0B)])?;
    let v2 = cx.expect_status("active list from FFFFFFFFh", b.status(), &[(0, 0x0B)])?;
    Ok(super::helpers::fold([v1, v2]))
}

//! Identify (NVMe Base §5.1.13).

use anyhow::ensure;
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

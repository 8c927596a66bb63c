//! Format NVM (NVMe Base §5.1.10, NVM Command Set §4.1 / §5.1.10.x): changing the LBA format
//! changes what Identify Namespace reports and the size I/O moves; Secure Erase Settings
//! erase user data; invalid requests are refused with the statuses the spec names.
//!
//! The cases format the namespace with the highest NSID (a scratch namespace where there are
//! several) and put its original LBA format back. A namespace listed in
//! `NVME_TEST_PRESERVE_NS` (comma-separated NSIDs; the hardware-in-the-loop guest lists the
//! one whose data it checks after the suite) is never formatted: with only such namespaces
//! the cases skip and say so.

use anyhow::{ensure, Context as _};
use nvme_core::hw::Platform;
use nvme_core::spec::identify::oacs;
use nvme_core::spec::{Command, IdentifyNamespace};
use nvme_core::Controller;

use super::helpers::{admin_status, pattern, read_split, scratch_lba, write_split};
use crate::backend::Backend;
use crate::case;
use crate::runner::{Case, Ctx, Verdict};

/// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!("FMT-01", Format, "§5.1.10", "Format NVM to the other of 512 and 4096-byte LBA formats updates Identify Namespace and I/O moves the new block size; formatting back restores it", switch_format::<B>),
        case!("FMT-02", Format, "§5.1.10", "Format NVM with SES=1 (User Data Erase) succeeds and the data written before is gone", user_data_erase::<B>),
        case!("FMT-03", Format, "§5.1.10", "Format NVM with an LBA format index above NLBAF fails with Invalid Format", lbaf_above_nlbaf::<B>),
        case!("FMT-04", Format, "§5.1.10", "Format NVM with a reserved Secure Erase Setting (SES=7) fails with Invalid Field", ses_reserved::<B>),
        case!("FMT-05", Format, "§5.1.10", "Format NVM of an NSID above NN fails with Invalid Namespace or Format", inactive_nsid::<B>),
        case!("FMT-06", Format, "§5.1.10", "Format NVM with SES=2 (Cryptographic Erase) succeeds when FNA bit 2 says it is supported, else fails with Invalid Field", crypto_erase::<B>),
        case!("FMT-07", Format, "§5.1.10", "Format NVM asking for protection information (PI=1) on a format without metadata fails with Invalid Format", pi_without_metadata::<B>),
    ]
}

/// The LBA format index in use (FLBAS bits 3:0, and bits 6:5 above 16 formats).
fn format_index(id: &IdentifyNamespace) -> u8 {
    (id.flbas & 0xF) | ((id.flbas >> 5) & 3) << 4
}

/// The namespace the cases may format, or why there is none.
fn target<P: Platform>(c: &Controller<P>) -> Result<u32, Verdict> {
    if c.identify().oacs & oacs::FORMAT_NVM == 0 {
        return Err(Verdict::Skip(
            "OACS bit 1 is clear: Format NVM is not supported".into(),
        ));
    }
    let keep: Vec<u32> = std::env::var("NVME_TEST_PRESERVE_NS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    c.namespaces()
        .iter()
        .map(|n| n.nsid())
        .filter(|n| !keep.contains(n))
        .max()
        .ok_or_else(|| {
            Verdict::Skip(format!(
                "every active namespace holds data the run checks later (NVME_TEST_PRESERVE_NS={keep:?})"
            ))
        })
}

/// Writes a pattern to `nsid` at a scratch LBA, reads it back; returns (LBA, data).
fn write_pattern<P: Platform>(
    c: &mut Controller<P>,
    nsid: u32,
    seed: u8,
) -> anyhow::Result<(u64, Vec<u8>)> {
    let ns = c.namespace(nsid)?.clone();
    let bs = ns.lba_size() as usize;
    let lba = scratch_lba(&ns, 4);
    let data = pattern(seed, lba, 4 * bs, bs);
    let mut qp = c.create_io_queue_pair(8)?;
    let r = (|| -> anyhow::Result<()> {
        write_split(c, &mut qp, &ns, lba, &data)?;
        let back = read_split(c, &mut qp, &ns, lba, data.len())?;
        ensure!(back == data, "namespace {nsid}: data read back differs");
        Ok(())
    })();
    c.delete_io_queue_pair(qp)?;
    r?;
    Ok((lba, data))
}

fn read_blocks<P: Platform>(
    c: &mut Controller<P>,
    nsid: u32,
    lba: u64,
    len: usize,
) -> anyhow::Result<Vec<u8>> {
    let ns = c.namespace(nsid)?.clone();
    let mut qp = c.create_io_queue_pair(8)?;
    let r = read_split(c, &mut qp, &ns, lba, len);
    c.delete_io_queue_pair(qp)?;
    r
}

/// Formats `nsid` to `lbaf` and checks Identify Namespace and the driver's handle follow.
fn format_to<P: Platform>(c: &mut Controller<P>, nsid: u32, lbaf: u8) -> anyhow::Result<()> {
    c.format_nvm(nsid, lbaf, 0)
        .with_context(|| format!("Format NVM of namespace {nsid} to LBA format {lbaf}"))?;
    let id = c.identify_namespace(nsid)?;
    ensure!(
        format_index(&id) == lbaf,
        "after Format NVM to LBA format {lbaf}, FLBAS names format {}",
        format_index(&id)
    );
    let size = id
        .lba_size()
        .context("Identify Namespace reports an invalid LBA data size")?;
    let want = 1u32 << id.lbaf[usize::from(lbaf)].lbads;
    ensure!(
        size == want,
        "after Format NVM to LBA format {lbaf} the LBA size is {size}, the format says {want}"
    );
    ensure!(
        c.namespace(nsid)?.lba_size() == size,
        "the driver's namespace {nsid} still has {}-byte blocks after the format",
        c.namespace(nsid)?.lba_size()
    );
    ensure!(id.nsze > 0, "NSZE is 0 after the format");
    Ok(())
}

fn switch_format<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let nsid = match target(c) {
        Ok(n) => n,
        Err(v) => return Ok(v),
    };
    let id = c.identify_namespace(nsid)?;
    let orig = format_index(&id);
    let cur = id.current_format();
    let other = (0..=id.nlbaf_z).find(|&j| {
        let f = id.lbaf[usize::from(j)];
        f.ms == 0 && (f.lbads == 9 || f.lbads == 12) && f.lbads != cur.lbads
    });
    let Some(other) = other else {
        return Ok(Verdict::Skip(format!(
            "namespace {nsid} offers no other LBA format of 512 or 4096 bytes without metadata"
        )));
    };
    let r = (|| -> anyhow::Result<()> {
        format_to(c, nsid, other)?;
        let bs = c.namespace(nsid)?.lba_size() as usize;
        let (lba, data) = write_pattern(c, nsid, 0xF1)?;
        ensure!(data.len() == 4 * bs, "pattern size");
        let back = read_blocks(c, nsid, lba, data.len())?;
        ensure!(
            back == data,
            "with {bs}-byte blocks the data read back differs"
        );
        Ok(())
    })();
    let back = format_to(c, nsid, orig).context("formatting back to the original LBA format");
    r?;
    back?;
    write_pattern(c, nsid, 0xF2)?;
    Ok(Verdict::Pass)
}

fn user_data_erase<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let nsid = match target(c) {
        Ok(n) => n,
        Err(v) => return Ok(v),
    };
    let lbaf = format_index(&c.identify_namespace(nsid)?);
    let (lba, data) = write_pattern(c, nsid, 0xF3)?;
    c.format_nvm(nsid, lbaf, 1)
        .context("Format NVM with SES=1")?;
    let after = read_blocks(c, nsid, lba, data.len())?;
    let bs = c.namespace(nsid)?.lba_size() as usize;
    for (k, (got, was)) in after.chunks(bs).zip(data.chunks(bs)).enumerate() {
        ensure!(
            got != was,
            "LBA {}: still holds the data written before the User Data Erase",
            lba + k as u64
        );
    }
    Ok(Verdict::Pass)
}

fn lbaf_above_nlbaf<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let nsid = match target(c) {
        Ok(n) => n,
        Err(v) => return Ok(v),
    };
    let id = c.identify_namespace(nsid)?;
    if id.nlbaf_z >= 63 {
        return Ok(Verdict::Skip("all 64 LBA formats are reported".into()));
    }
    let bad = id.nlbaf_z + 1;
    let st = admin_status(c.format_nvm(nsid, bad, 0))?;
    let v = cx.expect_status(
        &format!("Format NVM to LBA format {bad} (NLBAF {})", id.nlbaf_z),
        st,
        &[(1, 0x0A)],
    )?;
    Ok(v)
}

fn ses_reserved<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let nsid = match target(c) {
        Ok(n) => n,
        Err(v) => return Ok(v),
    };
    let lbaf = format_index(&c.identify_namespace(nsid)?);
    let st = admin_status(c.format_nvm(nsid, lbaf, 7))?;
    cx.expect_status("Format NVM with SES=7", st, &[(0, 0x02)])
}

fn inactive_nsid<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if let Err(v) = target(c) {
        return Ok(v);
    }
    let nn = c.identify().nn;
    if nn >= 0xFFFF_FFFE {
        return Ok(Verdict::Skip(format!(
            "NN is {nn:#x}: no NSID above it is short of the broadcast value"
        )));
    }
    let nsid = nn + 1;
    let st = admin_status(c.format_nvm(nsid, 0, 0))?;
    cx.expect_status(
        &format!("Format NVM of NSID {nsid} (NN {nn})"),
        st,
        &[(0, 0x0B)],
    )
}

fn crypto_erase<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let nsid = match target(c) {
        Ok(n) => n,
        Err(v) => return Ok(v),
    };
    let lbaf = format_index(&c.identify_namespace(nsid)?);
    let supported = c.identify().fna & 0x04 != 0;
    let st = admin_status(c.format_nvm(nsid, lbaf, 2))?;
    if supported {
        cx.expect_status("Format NVM with SES=2 (FNA bit 2 set)", st, &[(0, 0x00)])
    } else {
        cx.expect_status("Format NVM with SES=2 (FNA bit 2 clear)", st, &[(0, 0x02)])
    }
}

fn pi_without_metadata<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let nsid = match target(c) {
        Ok(n) => n,
        Err(v) => return Ok(v),
    };
    let id = c.identify_namespace(nsid)?;
    let lbaf = format_index(&id);
    if id.current_format().ms != 0 {
        return Ok(Verdict::Skip(format!(
            "namespace {nsid}'s LBA format carries metadata"
        )));
    }
    let mut cmd = Command::format_nvm(nsid, lbaf, 0);
    let cdw10 = cmd.cdw(10).unwrap_or(0);
    cmd.set_cdw(10, cdw10 | 1 << 5);
    let r = c.admin_command(cmd)?;
    if r.status().is_success() {
        // Put the namespace back as it was before reporting the defect.
        let _ = c.format_nvm(nsid, lbaf, 0);
    }
    cx.expect_status(
        "Format NVM with PI=1 on a format without metadata",
        r.status(),
        &[(1, 0x0A)],
    )
}

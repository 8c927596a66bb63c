//! PRP edge cases (NVMe Base §4.3.1): PRP1 with an offset, PRP2 as the second page, PRP lists,
//! a list that fills its page exactly, chained lists, and a transfer of exactly MDTS. Each
//! case writes a pattern through one data layout and reads it back through another, so a
//! controller that walks the PRPs wrongly returns the wrong bytes.

use anyhow::{ensure, Context as _};
use nvme_core::spec::{Command, NvmOpcode};

use super::helpers::{namespace, pattern, scratch_lba, submit_wait};
use crate::backend::Backend;
use crate::case;
use crate::runner::{Case, Ctx, Verdict};

/// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!("PRP-01", Prp, "§4.3.1", "a one-page transfer at a dword offset straddles two pages (PRP1 with offset, PRP2 the second page)", one_page_straddling::<B>),
        case!("PRP-02", Prp, "§4.3.1", "a page-aligned two-page transfer (PRP2 is the second page, no list)", two_pages::<B>),
        case!("PRP-03", Prp, "§4.3.1", "a page-aligned three-page transfer (PRP2 points to a two-entry list)", three_pages::<B>),
        case!("PRP-04", Prp, "§4.3.1", "two pages of data at a dword offset touch three pages (list after an offset PRP1)", two_pages_offset::<B>),
        case!("PRP-05", Prp, "§4.3.1", "sub-page transfers at offsets ending at, and crossing, a page boundary", sub_page_offsets::<B>),
        case!("PRP-06", Prp, "§5.1.13.2.1", "a transfer of exactly MDTS (at most 8 MiB) reads back intact", exactly_mdts::<B>),
        case!("PRP-07", Prp, "§4.3.1", "513 pages: a PRP list that fills its page exactly, without chaining", list_fills_page::<B>),
        case!("PRP-08", Prp, "§4.3.1", "514 pages: a chained PRP list (the last entry of the first list page points to the next)", chained_list::<B>),
    ]
}

/// Writes `len` bytes from `woff` in one buffer at a scratch LBA, reads them into `roff` of
/// another, and compares. `max_transfer` > 0 brings the controller up with that bound first.
fn layout<B: Backend>(
    cx: &mut Ctx<'_, B>,
    len: usize,
    woff: usize,
    roff: usize,
    max_transfer: usize,
) -> anyhow::Result<Verdict> {
    if max_transfer > 0 {
        let mut cfg = cx.config();
        cfg.max_transfer = max_transfer;
        cx.bring_up(cfg)?;
    }
    let c = cx.ctrl()?;
    let ns = namespace(c, Some(512))?;
    let bs = ns.lba_size() as usize;
    if len % bs != 0 {
        return Ok(Verdict::Skip(format!(
            "{len} bytes is not a whole number of {bs}-byte blocks"
        )));
    }
    if len > c.max_transfer() {
        return Ok(Verdict::Skip(format!(
            "the transfer of {len} bytes is above MDTS ({} bytes)",
            c.max_transfer()
        )));
    }
    let n = len / bs;
    if n > 65536 || n as u64 + 64 > ns.blocks() {
        return Ok(Verdict::Skip(format!(
            "{n} blocks do not fit one command on this namespace"
        )));
    }
    let lba = scratch_lba(&ns, n as u64);
    let data = pattern((len / 512) as u8 ^ woff as u8, lba, len, bs);
    let mut wbuf = c.alloc_buffer(woff + len)?;
    wbuf.write(woff, &data)?;
    let mut qp = c.create_io_queue_pair(4)?;
    let r = (|| -> anyhow::Result<Vec<u8>> {
        let cmd = Command::rw(NvmOpcode::WRITE, ns.nsid(), lba, (n - 1) as u16, false);
        let (st, _) = submit_wait(&mut qp, cmd, Some(wbuf), woff, Some(len))?;
        ensure!(
            st.is_success(),
            "Write of {len} bytes from offset {woff:#x}: {st}"
        );
        let cmd = Command::rw(NvmOpcode::READ, ns.nsid(), lba, (n - 1) as u16, false);
        let rbuf = c.alloc_buffer(roff + len)?;
        let (st, rbuf) = submit_wait(&mut qp, cmd, Some(rbuf), roff, Some(len))?;
        ensure!(
            st.is_success(),
            "Read of {len} bytes into offset {roff:#x}: {st}"
        );
        let mut back = vec![0u8; len];
        rbuf.context("the read buffer was not handed back")?
            .read(roff, &mut back)?;
        Ok(back)
    })();
    c.delete_io_queue_pair(qp)?;
    let back = r?;
    if let Some(i) = back.iter().zip(&data).position(|(a, b)| a != b) {
        anyhow::bail!(
            "{len} bytes written from offset {woff:#x} and read into offset {roff:#x} differ first at byte {i} (page {} of the read)",
            (roff + i) / 4096
        );
    }
    Ok(Verdict::Pass)
}

fn one_page_straddling<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    layout(cx, 4096, 0x800, 0xC04, 0)
}
fn two_pages<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    layout(cx, 8192, 0, 0, 0)
}
fn three_pages<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    layout(cx, 12288, 0, 0, 0)
}
fn two_pages_offset<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    layout(cx, 8192, 4, 0xFFC, 0)
}

fn sub_page_offsets<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let bs = namespace(c, Some(512))?.lba_size() as usize;
    if bs > 2048 {
        return Ok(Verdict::Skip(format!(
            "{bs}-byte blocks: no sub-page transfer"
        )));
    }
    // Ends exactly at the page end; crosses it by half a block; crosses it after 4 bytes.
    for (w, r) in [
        (4096 - bs, 0),
        (4096 - bs / 2, 4096 - bs),
        (4092, 4096 - bs / 2),
    ] {
        let v = layout(cx, bs, w, r, 0)?;
        if v != Verdict::Pass {
            return Ok(v);
        }
    }
    Ok(Verdict::Pass)
}

fn mdts_bytes<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Option<usize>> {
    let c = cx.ctrl()?;
    Ok(c.identify()
        .max_transfer_bytes(c.cap().mpsmin())
        .map(|m| m as usize))
}

fn exactly_mdts<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let Some(mdts) = mdts_bytes(cx)? else {
        return Ok(Verdict::Skip(
            "MDTS is 0: no transfer limit to reach".into(),
        ));
    };
    if mdts > 8 << 20 {
        return Ok(Verdict::Skip(format!(
            "MDTS is {mdts} bytes, above the 8 MiB this case transfers"
        )));
    }
    layout(cx, mdts, 0, 0, mdts)
}

fn needs<B: Backend>(cx: &mut Ctx<'_, B>, len: usize) -> anyhow::Result<Option<Verdict>> {
    match mdts_bytes(cx)? {
        Some(m) if m < len => Ok(Some(Verdict::Skip(format!(
            "MDTS is {m} bytes, below the {len} bytes this layout needs"
        )))),
        _ => Ok(None),
    }
}

fn list_fills_page<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let len = 513 * 4096;
    if let Some(v) = needs(cx, len)? {
        return Ok(v);
    }
    layout(cx, len, 0, 0, len)
}

fn chained_list<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let len = 514 * 4096;
    if let Some(v) = needs(cx, len)? {
        return Ok(v);
    }
    layout(cx, len, 0, 4, len + 4096)
}

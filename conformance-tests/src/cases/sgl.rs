//! SGL cases (NVMe Base §4.3.2 "Scatter Gather List (SGL)", status codes of §4.2.3): the
//! driver's one-descriptor SGLs, hand-built segment chains and Bit Buckets, and descriptors a
//! controller must refuse. Each case skips, saying why, on a controller whose Identify
//! Controller SGLS (§5.1.13.2.1) does not advertise what it checks. Hand-built SGLs go
//! through the `raw-access` door ([`nvme_core::sgl::raw`]); every address they name lies in
//! the request's own buffer.

use anyhow::{ensure, Context as _};
use nvme_core::hw::Platform;
use nvme_core::sgl::raw::{RawSgl, RawSglEntry};
use nvme_core::spec::sgl::{SglSupport, Sgls};
use nvme_core::spec::status::generic;
use nvme_core::spec::{Command, NvmOpcode, Status};
use nvme_core::{Controller, DmaBuffer, IoQueuePair, TransferMode};

use super::helpers::{namespace, pattern, scratch_lba, submit_wait};
use crate::backend::Backend;
use crate::case;
use crate::runner::{Case, Ctx, Verdict};

/// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!("SGL-01", Sgl, "§4.3.2.1", "Read and Write through one SGL Data Block descriptor (the driver's SGL path), at page-aligned and unaligned buffer offsets", data_block::<B>),
        case!("SGL-02", Sgl, "§4.3.2.3", "a segment chain (SGL1 a Segment, then a Last Segment) scatters a Write and a Read over four uneven Data Blocks", segment_chain::<B>),
        case!("SGL-03", Sgl, "§4.3.2.2", "a Read with a Bit Bucket descriptor discards the bytes it covers (SGLS bit 16)", bit_bucket_read::<B>),
        case!("SGL-04", Sgl, "§4.2.3", "a reserved SGL descriptor type in a segment is refused with SGL Descriptor Type Invalid (00h/11h)", reserved_type::<B>, violates),
        case!("SGL-05", Sgl, "§4.2.3", "an SGL shorter than the transfer is refused with Data SGL Length Invalid (00h/0Fh)", too_short::<B>, violates),
        case!("SGL-06", Sgl, "§4.2.3", "a Bit Bucket descriptor where SGLS bit 16 is clear is refused with SGL Descriptor Type Invalid (00h/11h)", bit_bucket_unsupported::<B>, violates),
    ]
}

/// SGLS of the controller, brought up with the suite's configuration and `mode`.
fn bring_up<B: Backend>(cx: &mut Ctx<'_, B>, mode: TransferMode) -> anyhow::Result<Sgls> {
    let mut cfg = cx.config();
    cfg.transfer_mode = mode;
    let c = cx.bring_up(cfg)?;
    Ok(Sgls(c.identify().sgls))
}

/// Skips unless SGLs are supported for the NVM Command Set.
fn need_sgls(sgls: Sgls) -> Option<Verdict> {
    (!sgls.supported()).then(|| {
        Verdict::Skip(format!(
            "Identify Controller SGLS = {:#x}: no SGL support for the NVM Command Set",
            sgls.0
        ))
    })
}

/// Runs `cmd` with the hand-built `sgl` in `buffer`, rings and waits up to 10 s.
fn run_raw<P: Platform>(
    qp: &mut IoQueuePair<P>,
    cmd: Command,
    buffer: DmaBuffer<P>,
    sgl: &RawSgl,
) -> anyhow::Result<(Status, DmaBuffer<P>)> {
    const TAG: u64 = 0x5617;
    qp.submit_sgl_raw(cmd, buffer, sgl, TAG)
        .map_err(|e| anyhow::anyhow!("the driver refused the hand-built SGL: {}", e.error))?;
    qp.ring();
    let (st, b) = super::helpers::await_tag(qp, TAG)?;
    Ok((st, b.context("the buffer was not handed back")?))
}

/// Runs `body` on a fresh queue pair of `c`, deleting the pair on every path.
fn with_pair<P: Platform, T>(
    c: &mut Controller<P>,
    body: impl FnOnce(&mut Controller<P>, &mut IoQueuePair<P>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut qp = c.create_io_queue_pair(4)?;
    let r = body(c, &mut qp);
    c.delete_io_queue_pair(qp)?;
    r
}

fn data_block<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let sgls = bring_up(cx, TransferMode::Auto)?;
    if let Some(v) = need_sgls(sgls) {
        return Ok(v);
    }
    let c = cx.ctrl()?;
    let ns = namespace(c, Some(512))?;
    let bs = ns.lba_size() as usize;
    let len = (3 * 4096usize).div_ceil(bs) * bs;
    if len > c.max_transfer() {
        return Ok(Verdict::Skip(format!(
            "{len} bytes are above the maximum transfer ({} bytes)",
            c.max_transfer()
        )));
    }
    let n = len / bs;
    let lba = scratch_lba(&ns, n as u64);
    // Byte granularity (SGLS 01b) also takes a buffer offset PRPs cannot (not dword aligned).
    let odd = if sgls.support() == SglSupport::Byte {
        0x203
    } else {
        0x204
    };
    with_pair(c, |c, qp| {
        ensure!(
            qp.uses_sgl(),
            "SGLS = {:#x} supports SGLs but the queue pair uses PRPs",
            sgls.0
        );
        for (i, (woff, roff)) in [(0usize, odd), (odd, 0), (0, 0)].into_iter().enumerate() {
            let data = pattern(0x51 + i as u8, lba, len, bs);
            let mut wbuf = c.alloc_buffer(woff + len)?;
            wbuf.write(woff, &data)?;
            let w = Command::rw(NvmOpcode::WRITE, ns.nsid(), lba, (n - 1) as u16, false);
            let (st, _) = submit_wait(qp, w, Some(wbuf), woff, Some(len))?;
            ensure!(st.is_success(), "Write from buffer offset {woff:#x}: {st}");
            let r = Command::rw(NvmOpcode::READ, ns.nsid(), lba, (n - 1) as u16, false);
            let rbuf = c.alloc_buffer(roff + len)?;
            let (st, rbuf) = submit_wait(qp, r, Some(rbuf), roff, Some(len))?;
            ensure!(st.is_success(), "Read into buffer offset {roff:#x}: {st}");
            let mut back = vec![0u8; len];
            rbuf.context("the read buffer was not handed back")?
                .read(roff, &mut back)?;
            if let Some(p) = back.iter().zip(&data).position(|(a, b)| a != b) {
                anyhow::bail!(
                    "written from offset {woff:#x}, read into offset {roff:#x}: first difference at byte {p}"
                );
            }
        }
        Ok(Verdict::Pass)
    })
}

/// Four pieces of uneven, dword-multiple lengths (8192 bytes in all) at scattered buffer
/// offsets, and where the segments go.
const PIECES: [(usize, u32); 4] = [(0x0, 1000), (0x2004, 3100), (0x4008, 2052), (0x600C, 2040)];
const SEGMENT_AREA: usize = 0x8000;
const CHAIN_LEN: usize = 8192;

fn chain() -> RawSgl {
    let d = |(offset, len): (usize, u32)| RawSglEntry::Data { offset, len };
    RawSgl {
        sgl1: RawSglEntry::Segment { index: 0 },
        segments: vec![
            vec![
                d(PIECES[0]),
                d(PIECES[1]),
                RawSglEntry::LastSegment { index: 1 },
            ],
            vec![d(PIECES[2]), d(PIECES[3])],
        ],
        segment_area: SEGMENT_AREA,
    }
}

fn segment_chain<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let sgls = bring_up(cx, TransferMode::Prp)?;
    if let Some(v) = need_sgls(sgls) {
        return Ok(v);
    }
    let c = cx.ctrl()?;
    let ns = namespace(c, Some(512))?;
    let bs = ns.lba_size() as usize;
    if CHAIN_LEN % bs != 0 || CHAIN_LEN > c.max_transfer() {
        return Ok(Verdict::Skip(format!(
            "{CHAIN_LEN} bytes are not whole {bs}-byte blocks within the maximum transfer ({} bytes)",
            c.max_transfer()
        )));
    }
    let n = CHAIN_LEN / bs;
    let lba = scratch_lba(&ns, n as u64);
    let data = pattern(0x5C, lba, CHAIN_LEN, bs);
    let sgl = chain();
    with_pair(c, |c, qp| {
        // Write through the chain: the pieces, in order, are the data.
        let mut wbuf = c.alloc_buffer(SEGMENT_AREA + 4096)?;
        let mut at = 0;
        for (off, l) in PIECES {
            wbuf.write(off, &data[at..at + l as usize])?;
            at += l as usize;
        }
        let w = Command::rw(NvmOpcode::WRITE, ns.nsid(), lba, (n - 1) as u16, false);
        let (st, _) = run_raw(qp, w, wbuf, &sgl)?;
        ensure!(st.is_success(), "Write through a segment chain: {st}");
        // Read it back with PRPs, then through the chain into a zeroed buffer.
        let r = Command::rw(NvmOpcode::READ, ns.nsid(), lba, (n - 1) as u16, false);
        let (st, rbuf) = submit_wait(qp, r, Some(c.alloc_buffer(CHAIN_LEN)?), 0, None)?;
        ensure!(st.is_success(), "Read with PRPs: {st}");
        let back = rbuf
            .context("the read buffer was not handed back")?
            .to_vec();
        if let Some(p) = back[..CHAIN_LEN]
            .iter()
            .zip(&data)
            .position(|(a, b)| a != b)
        {
            anyhow::bail!(
                "the Write through the segment chain landed wrong: first difference at byte {p}"
            );
        }
        let (st, rbuf) = run_raw(qp, r, c.alloc_buffer(SEGMENT_AREA + 4096)?, &sgl)?;
        ensure!(st.is_success(), "Read through a segment chain: {st}");
        let mut at = 0;
        for (off, l) in PIECES {
            let mut got = vec![0u8; l as usize];
            rbuf.read(off, &mut got)?;
            ensure!(
                got == data[at..at + l as usize],
                "the Read through the segment chain put wrong bytes in the Data Block at buffer offset {off:#x}"
            );
            at += l as usize;
        }
        Ok(Verdict::Pass)
    })
}

fn bit_bucket_read<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let sgls = bring_up(cx, TransferMode::Prp)?;
    if let Some(v) = need_sgls(sgls) {
        return Ok(v);
    }
    if !sgls.bit_bucket() {
        return Ok(Verdict::Skip(format!(
            "Identify Controller SGLS = {:#x}: bit 16 (Bit Bucket descriptors) is clear",
            sgls.0
        )));
    }
    let c = cx.ctrl()?;
    let ns = namespace(c, Some(512))?;
    let bs = ns.lba_size() as usize;
    let len = 4 * bs;
    if len > c.max_transfer() {
        return Ok(Verdict::Skip(
            "four blocks are above the maximum transfer".into(),
        ));
    }
    let lba = scratch_lba(&ns, 4);
    let data = pattern(0xBB, lba, len, bs);
    // Keep block 0 at offset 0, discard blocks 1 and 2, keep block 3 at offset 2 × bs; the
    // bytes between stay as they were (0xEE).
    let sgl = RawSgl {
        sgl1: RawSglEntry::LastSegment { index: 0 },
        segments: vec![vec![
            RawSglEntry::Data {
                offset: 0,
                len: bs as u32,
            },
            RawSglEntry::BitBucket { len: 2 * bs as u32 },
            RawSglEntry::Data {
                offset: 2 * bs,
                len: bs as u32,
            },
        ]],
        segment_area: 4 * bs,
    };
    with_pair(c, |c, qp| {
        let mut wbuf = c.alloc_buffer(len)?;
        wbuf.write(0, &data)?;
        let w = Command::rw(NvmOpcode::WRITE, ns.nsid(), lba, 3, false);
        let (st, _) = submit_wait(qp, w, Some(wbuf), 0, None)?;
        ensure!(st.is_success(), "Write: {st}");
        let mut rbuf = c.alloc_buffer(4 * bs + 4096)?;
        rbuf.fill(0xEE);
        let r = Command::rw(NvmOpcode::READ, ns.nsid(), lba, 3, false);
        let (st, rbuf) = run_raw(qp, r, rbuf, &sgl)?;
        ensure!(st.is_success(), "Read with a Bit Bucket: {st}");
        let got = rbuf.to_vec();
        ensure!(
            got[..bs] == data[..bs],
            "block 0 (first Data Block) is wrong"
        );
        ensure!(
            got[2 * bs..3 * bs] == data[3 * bs..4 * bs],
            "block 3 (the Data Block after the Bit Bucket) is wrong"
        );
        ensure!(
            got[bs..2 * bs].iter().all(|&b| b == 0xEE),
            "bytes no Data Block names were written"
        );
        Ok(Verdict::Pass)
    })
}

/// Sends a one-block Read with `sgl` (in a buffer of two pages) and returns the status.
fn read_with<B: Backend>(cx: &mut Ctx<'_, B>, sgl: &RawSgl) -> anyhow::Result<Status> {
    let c = cx.ctrl()?;
    let ns = namespace(c, Some(512))?;
    let lba = scratch_lba(&ns, 2);
    let nlb_z = (1024 / ns.lba_size()).max(1) as u16 - 1;
    with_pair(c, |c, qp| {
        let r = Command::rw(NvmOpcode::READ, ns.nsid(), lba, nlb_z, false);
        let (st, _) = run_raw(qp, r, c.alloc_buffer(8192)?, sgl)?;
        Ok(st)
    })
}

fn reserved_type<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let sgls = bring_up(cx, TransferMode::Prp)?;
    if let Some(v) = need_sgls(sgls) {
        return Ok(v);
    }
    let bs = namespace(cx.ctrl()?, Some(512))?.lba_size();
    let len = bs.max(1024);
    // A descriptor of reserved type 6h first, a valid Data Block last.
    let sgl = RawSgl {
        sgl1: RawSglEntry::LastSegment { index: 0 },
        segments: vec![vec![
            RawSglEntry::Typed {
                id: 0x60,
                offset: 0,
                len: 512,
            },
            RawSglEntry::Data { offset: 0, len },
        ]],
        segment_area: 4096 + 2048,
    };
    let st = read_with(cx, &sgl)?;
    cx.expect_status_dnr(
        "a Read whose SGL holds a descriptor of reserved type 6h",
        st,
        &[(0, generic::SGL_DESCRIPTOR_TYPE_INVALID)],
    )
}

fn too_short<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let sgls = bring_up(cx, TransferMode::Prp)?;
    if let Some(v) = need_sgls(sgls) {
        return Ok(v);
    }
    let bs = namespace(cx.ctrl()?, Some(512))?.lba_size();
    let len = bs.max(1024);
    // One Data Block of half the transfer.
    let sgl = RawSgl {
        sgl1: RawSglEntry::Data {
            offset: 0,
            len: len / 2,
        },
        segments: vec![],
        segment_area: 0,
    };
    let st = read_with(cx, &sgl)?;
    cx.expect_status_dnr(
        &format!("a Read of {len} bytes whose SGL describes {}", len / 2),
        st,
        &[(0, generic::DATA_SGL_LENGTH_INVALID)],
    )
}

fn bit_bucket_unsupported<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let sgls = bring_up(cx, TransferMode::Prp)?;
    if let Some(v) = need_sgls(sgls) {
        return Ok(v);
    }
    if sgls.bit_bucket() {
        return Ok(Verdict::Skip(format!(
            "Identify Controller SGLS = {:#x}: Bit Bucket descriptors are supported (SGL-03 checks them)",
            sgls.0
        )));
    }
    let bs = namespace(cx.ctrl()?, Some(512))?.lba_size();
    let len = bs.max(1024);
    let sgl = RawSgl {
        sgl1: RawSglEntry::LastSegment { index: 0 },
        segments: vec![vec![
            RawSglEntry::BitBucket { len: 512 },
            RawSglEntry::Data {
                offset: 0,
                len: len - 512,
            },
        ]],
        segment_area: 4096 + 2048,
    };
    let st = read_with(cx, &sgl)?;
    cx.expect_status_dnr(
        "a Read whose SGL holds a Bit Bucket descriptor",
        st,
        &[(0, generic::SGL_DESCRIPTOR_TYPE_INVALID)],
    )
}

//! NVM I/O commands (NVM Command Set Specification §3.3): data correctness and error cases.

use anyhow::{bail, ensure, Context as _};
use nvme_core::spec::identify::oncs;
use nvme_core::spec::{Command, NvmOpcode};
use nvme_core::{DsmRange, Error};

use nvme_core::spec::Status;

use super::helpers::{
    buffer_with, dealloc_block_ok, namespace, pattern, read_split, require_oncs, scratch_lba,
    submit_wait, write_split,
};
use crate::backend::Backend;
use crate::case;
use crate::runner::{Case, Ctx, Verdict};

/// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!(
            "IO-01",
            NvmIo,
            "NVM §3.3.6",
            "Write then Read returns the data on a 512-byte-LBA namespace",
            roundtrip_512::<B>
        ),
        case!(
            "IO-02",
            NvmIo,
            "NVM §3.3.6",
            "Write then Read returns the data on a 4096-byte-LBA namespace",
            roundtrip_4k::<B>
        ),
        case!(
            "IO-03",
            NvmIo,
            "NVM §3.3.4",
            "a Read past the last LBA fails with LBA Out of Range",
            lba_out_of_range::<B>
        ),
        case!(
            "IO-04",
            NvmIo,
            "NVM §3.3.4",
            "the driver refuses an out-of-range LBA before submitting it",
            driver_refuses_range::<B>
        ),
        case!(
            "IO-05",
            NvmIo,
            "NVM §3.3.4",
            "a Read on an inactive namespace fails with Invalid Namespace or Format",
            invalid_namespace::<B>
        ),
        case!(
            "IO-06",
            NvmIo,
            "NVM §3.3.2",
            "Flush completes successfully",
            flush::<B>
        ),
        case!(
            "IO-07",
            NvmIo,
            "NVM §3.3.8",
            "Write Zeroes makes the range read as zeroes",
            write_zeroes::<B>
        ),
        case!(
            "IO-08",
            NvmIo,
            "NVM §3.3.3",
            "Dataset Management deallocate succeeds; each block reads as written or as DLFEAT promises",
            deallocate::<B>
        ),
        case!(
            "IO-09",
            NvmIo,
            "NVM §3.3.1",
            "Compare succeeds on equal data and fails with Compare Failure on different data",
            compare::<B>
        ),
        case!(
            "IO-10",
            NvmIo,
            "§5.1.13.2.1 MDTS",
            "a Read above MDTS fails with Invalid Field, and the driver refuses it up front",
            above_mdts::<B>
        ),
        case!(
            "IO-11",
            NvmIo,
            "NVM §3.3.7",
            "Verify of written blocks succeeds",
            verify::<B>
        ),
        case!("IO-12", NvmIo, "NVM §3.3.6", "the first and the last LBA can be written and read back", first_and_last::<B>),
        case!("IO-13", NvmIo, "NVM §3.3.6", "a Write with FUA completes and reads back", fua_write::<B>),
        case!("IO-14", NvmIo, "NVM §3.3.4", "transfers of 1, 2, 7, 8, 9 and 31 blocks read back intact", multi_block::<B>),
        case!("IO-15", NvmIo, "NVM §3.3.8", "Write Zeroes with DEAC reads back as zeroes and leaves neighbours alone", write_zeroes_deac::<B>),
        case!("IO-16", NvmIo, "NVM §3.3.3", "Dataset Management with three ranges deallocates only those ranges", dsm_ranges::<B>),
        case!("IO-17", NvmIo, "NVM §3.3.1", "a Compare that differs in the last byte fails with Compare Failure (02h/85h)", compare_failure::<B>),
        case!("IO-18", NvmIo, "NVM §3.3.7", "Verify at LBA NSZE fails with LBA Out of Range", verify_out_of_range::<B>),
        case!("IO-19", NvmIo, "NVM §3.3.6", "a Write at LBA NSZE fails with LBA Out of Range", write_at_nsze::<B>),
        case!("IO-20", NvmIo, "NVM §3.3.8", "Write Zeroes running past the last LBA fails with LBA Out of Range", write_zeroes_past_end::<B>),
        case!("IO-21", NvmIo, "NVM §3.3.4", "a Read starting at the last LBA and running past it fails with LBA Out of Range", read_past_end::<B>),
        case!("IO-22", NvmIo, "NVM §3.3.2", "Flush with NSID FFFFFFFFh succeeds or fails with Invalid Namespace as Identify VWC bits 2:1 say", flush_broadcast::<B>),
        case!("IO-23", NvmIo, "§3.3.2", "an unassigned I/O opcode fails with Invalid Command Opcode", invalid_opcode::<B>),
        case!("IO-24", NvmIo, "NVM §3.3.4", "a Read with NSID 0 fails with Invalid Namespace or Format", nsid_zero::<B>),
        case!("IO-25", NvmIo, "NVM §3.3.6", "data written from and read into buffers at dword (not page) offsets is intact", unaligned_buffers::<B>),
        case!("IO-26", NvmIo, "NVM §3.3.6", "a Write to one namespace leaves the same LBAs of every other namespace unchanged", namespace_isolation::<B>),
        case!("IO-27", NvmIo, "NVM §3.3.3", "Dataset Management with attributes only (AD=0) succeeds and leaves the data intact", dsm_hints_only::<B>),
        case!("IO-28", NvmIo, "NVM §3.3.4", "a Write completed on one I/O queue pair is read back through another", cross_queue_visibility::<B>),
    ]
}

fn roundtrip<B: Backend>(cx: &mut Ctx<'_, B>, lba_size: u32) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let Some(ns) = c
        .namespaces()
        .iter()
        .find(|n| n.lba_size() == lba_size)
        .cloned()
    else {
        return Ok(Verdict::Skip(format!(
            "no namespace is formatted with {lba_size}-byte LBAs"
        )));
    };
    let mut qp = c.create_io_queue_pair(32)?;
    let bs = lba_size as usize;
    let blocks = (c.max_transfer() / bs).clamp(1, 64);
    let lba = scratch_lba(&ns, blocks as u64);
    let data = pattern(0xA5, lba, blocks * bs, bs);
    qp.write(&ns, lba, buffer_with(c, &data)?)?;
    let back = qp.read(&ns, lba, c.alloc_buffer(data.len())?)?;
    c.delete_io_queue_pair(qp)?;
    ensure!(
        back.to_vec() == data,
        "{blocks} blocks at LBA {lba} read back different"
    );
    Ok(Verdict::Pass)
}

fn roundtrip_512<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    roundtrip(cx, 512)
}
fn roundtrip_4k<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    roundtrip(cx, 4096)
}

fn lba_out_of_range<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let mut qp = c.create_io_queue_pair(8)?;
    let buf = c.alloc_buffer(ns.lba_size() as usize)?;
    let cmd = Command::rw(NvmOpcode::READ, ns.nsid(), ns.blocks(), 0, false);
    let r = qp.passthrough(cmd, Some(buf));
    c.delete_io_queue_pair(qp)?;
    match r {
        Err(e) => match e.error.status() {
            Some(st) => cx.expect_status("Read at LBA NSZE", st, &[(0, 0x80)]),
            None => bail!("Read at LBA NSZE: {}", e.error),
        },
        Ok(_) => cx.expect_status(
            "Read at LBA NSZE",
            nvme_core::spec::Status::SUCCESS,
            &[(0, 0x80)],
        ),
    }
}

fn driver_refuses_range<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let mut qp = c.create_io_queue_pair(8)?;
    let buf = c.alloc_buffer(ns.lba_size() as usize * 2)?;
    let r = qp.read(&ns, ns.blocks() - 1, buf);
    let submitted = qp.stats().submitted;
    c.delete_io_queue_pair(qp)?;
    match r {
        Err(e) => {
            ensure!(
                matches!(e.error, Error::LbaOutOfRange { .. }),
                "expected LbaOutOfRange, got {}",
                e.error
            );
            ensure!(e.buffer.is_some(), "the buffer was not handed back");
            ensure!(submitted == 0, "the command reached the device");
            Ok(Verdict::Pass)
        }
        Ok(_) => bail!("a read of the last LBA plus one succeeded"),
    }
}

fn invalid_namespace<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let nn = c.identify().nn;
    let mut qp = c.create_io_queue_pair(8)?;
    // No data pointer: the core cannot size a transfer for a namespace it does not know, and
    // the controller must refuse the NSID before transferring anything.
    let cmd = Command::rw(NvmOpcode::READ, nn.saturating_add(1), 0, 0, false);
    let r = qp.passthrough(cmd, None);
    c.delete_io_queue_pair(qp)?;
    let st = match r {
        Err(e) => e
            .error
            .status()
            .ok_or_else(|| anyhow::anyhow!("{}", e.error))?,
        Ok(_) => nvme_core::spec::Status::SUCCESS,
    };
    cx.expect_status("Read on NSID NN+1", st, &[(0, 0x0B)])
}

fn flush<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let mut qp = c.create_io_queue_pair(8)?;
    let r = qp.flush(ns.nsid());
    c.delete_io_queue_pair(qp)?;
    r?;
    Ok(Verdict::Pass)
}

fn write_zeroes<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if let Some(skip) = require_oncs(c, oncs::WRITE_ZEROES, "bit 3 (Write Zeroes)") {
        return Ok(skip);
    }
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    let lba = scratch_lba(&ns, 8);
    let mut qp = c.create_io_queue_pair(8)?;
    write_split(c, &mut qp, &ns, lba, &pattern(7, lba, 8 * bs, bs))?;
    qp.write_zeroes(&ns, lba + 2, 4, false)?;
    let back = read_split(c, &mut qp, &ns, lba, 8 * bs)?;
    c.delete_io_queue_pair(qp)?;
    let expect = pattern(7, lba, 8 * bs, bs);
    ensure!(
        back[..2 * bs] == expect[..2 * bs] && back[6 * bs..] == expect[6 * bs..],
        "blocks outside the range changed"
    );
    ensure!(
        back[2 * bs..6 * bs].iter().all(|&b| b == 0),
        "the zeroed range holds data"
    );
    Ok(Verdict::Pass)
}

fn deallocate<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if let Some(skip) = require_oncs(c, oncs::DATASET_MANAGEMENT, "bit 2 (Dataset Management)") {
        return Ok(skip);
    }
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    let lba = scratch_lba(&ns, 8);
    let mut qp = c.create_io_queue_pair(8)?;
    write_split(c, &mut qp, &ns, lba, &pattern(9, lba, 8 * bs, bs))?;
    qp.deallocate(
        &ns,
        &[DsmRange {
            slba: lba,
            nlb: 8,
            attributes: 0,
        }],
    )?;
    let back = read_split(c, &mut qp, &ns, lba, 8 * bs)?;
    c.delete_io_queue_pair(qp)?;
    let written = pattern(9, lba, 8 * bs, bs);
    for (i, (got, old)) in back.chunks(bs).zip(written.chunks(bs)).enumerate() {
        ensure!(dealloc_block_ok(got, old, ns.identify().dlfeat), "block {} after deallocate holds neither the written data nor what DLFEAT {:#x} promises", lba + i as u64, ns.identify().dlfeat);
    }
    Ok(Verdict::Pass)
}

fn compare<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if let Some(skip) = require_oncs(c, oncs::COMPARE, "bit 0 (Compare)") {
        return Ok(skip);
    }
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    let lba = scratch_lba(&ns, 2);
    let data = pattern(3, lba, 2 * bs, bs);
    let mut qp = c.create_io_queue_pair(8)?;
    qp.write(&ns, lba, buffer_with(c, &data)?)?;
    let (same, _) = qp.compare(&ns, lba, buffer_with(c, &data)?)?;
    let mut other = data.clone();
    other[bs + 7] ^= 0xFF;
    let (differs, _) = qp.compare(&ns, lba, buffer_with(c, &other)?)?;
    c.delete_io_queue_pair(qp)?;
    ensure!(same, "Compare of identical data failed");
    ensure!(!differs, "Compare of different data succeeded");
    Ok(Verdict::Pass)
}

fn above_mdts<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let Some(mdts) = c.identify().max_transfer_bytes(c.cap().mpsmin()) else {
        return Ok(Verdict::Skip("MDTS is 0: no transfer size limit".into()));
    };
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as u64;
    let nlb = mdts / bs + 1;
    if nlb > 65536 || nlb > ns.blocks() {
        return Ok(Verdict::Skip(
            "MDTS is above what one command can address".into(),
        ));
    }
    let mut qp = c.create_io_queue_pair(8)?;
    // The driver refuses it before it reaches the device.
    let big = c.alloc_buffer((nlb * bs) as usize)?;
    let refused =
        matches!(qp.read(&ns, 0, big), Err(e) if matches!(e.error, Error::TransferTooLarge { .. }));
    // The controller refuses a command whose NLB exceeds MDTS before transferring anything;
    // it gets no data pointer (the core refuses a buffer shorter than the NLB describes).
    let cmd = Command::rw(NvmOpcode::READ, ns.nsid(), 0, (nlb - 1) as u16, false);
    let r = qp.submit_range(cmd, None, 0, None, 1);
    let st = match r {
        Ok(_) => {
            qp.ring();
            let mut st = None;
            qp.wait(std::time::Duration::from_secs(5), |comp| {
                st = Some(
                    comp.result
                        .as_ref()
                        .err()
                        .and_then(|e| e.status())
                        .unwrap_or_default(),
                )
            })?;
            st
        }
        Err(e) => bail!("submission refused: {}", e.error),
    };
    c.delete_io_queue_pair(qp)?;
    ensure!(refused, "the driver let a transfer above MDTS through");
    let st = st.ok_or_else(|| anyhow::anyhow!("no completion"))?;
    cx.expect_status("Read of MDTS + 1 block", st, &[(0, 0x02)])
}

fn verify<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if let Some(skip) = require_oncs(c, oncs::VERIFY, "bit 7 (Verify)") {
        return Ok(skip);
    }
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    let lba = scratch_lba(&ns, 4);
    let mut qp = c.create_io_queue_pair(8)?;
    write_split(c, &mut qp, &ns, lba, &pattern(1, lba, 4 * bs, bs))?;
    let r = qp.verify(&ns, lba, 4);
    c.delete_io_queue_pair(qp)?;
    r?;
    Ok(Verdict::Pass)
}

fn check_status<B: Backend>(
    cx: &mut Ctx<'_, B>,
    what: &str,
    st: Status,
    legal: &[(u8, u8)],
) -> anyhow::Result<Verdict> {
    if st.is_success() && !legal.contains(&(0, 0)) {
        bail!("{what} succeeded");
    }
    cx.expect_status(what, st, legal)
}

fn first_and_last<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    let mut qp = c.create_io_queue_pair(8)?;
    let r = (|| -> anyhow::Result<()> {
        for (seed, lba) in [(0x31, 0), (0x32, ns.blocks() - 1)] {
            let data = pattern(seed, lba, bs, bs);
            qp.write(&ns, lba, buffer_with(c, &data)?)
                .map_err(|e| anyhow::anyhow!("Write LBA {lba}: {}", e.error))?;
            let back = qp
                .read(&ns, lba, c.alloc_buffer(bs)?)
                .map_err(|e| anyhow::anyhow!("Read LBA {lba}: {}", e.error))?;
            ensure!(back.to_vec() == data, "LBA {lba} read back different");
        }
        Ok(())
    })();
    c.delete_io_queue_pair(qp)?;
    r?;
    Ok(Verdict::Pass)
}

fn fua_write<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    let lba = scratch_lba(&ns, 4);
    let n = super::helpers::fit(c, &ns, 4) as usize;
    let data = pattern(0x46, lba, n * bs, bs);
    let mut qp = c.create_io_queue_pair(8)?;
    let cmd = Command::rw(NvmOpcode::WRITE, ns.nsid(), lba, (n - 1) as u16, true);
    let r = submit_wait(&mut qp, cmd, Some(buffer_with(c, &data)?), 0, None);
    let back = qp.read(&ns, lba, c.alloc_buffer(n * bs)?);
    c.delete_io_queue_pair(qp)?;
    let (st, _) = r?;
    ensure!(st.is_success(), "Write with FUA: {st}");
    let back = back.map_err(|e| anyhow::anyhow!("{}", e.error))?;
    ensure!(back.to_vec() == data, "the FUA write read back different");
    Ok(Verdict::Pass)
}

fn multi_block<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, Some(4096))?;
    let bs = ns.lba_size() as usize;
    let max = c.max_transfer() / bs;
    let mut qp = c.create_io_queue_pair(8)?;
    let base = scratch_lba(&ns, 64);
    let r = (|| -> anyhow::Result<()> {
        let mut lba = base;
        for n in [1usize, 2, 7, 8, 9, 31].into_iter().filter(|&n| n <= max) {
            let data = pattern(n as u8, lba, n * bs, bs);
            qp.write(&ns, lba, buffer_with(c, &data)?)
                .map_err(|e| anyhow::anyhow!("Write of {n} blocks: {}", e.error))?;
            let back = qp
                .read(&ns, lba, c.alloc_buffer(n * bs)?)
                .map_err(|e| anyhow::anyhow!("Read of {n} blocks: {}", e.error))?;
            ensure!(
                back.to_vec() == data,
                "{n} blocks at LBA {lba} read back different"
            );
            lba += n as u64;
        }
        Ok(())
    })();
    c.delete_io_queue_pair(qp)?;
    r?;
    Ok(Verdict::Pass)
}

fn write_zeroes_deac<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if let Some(skip) = require_oncs(c, oncs::WRITE_ZEROES, "bit 3 (Write Zeroes)") {
        return Ok(skip);
    }
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    let lba = scratch_lba(&ns, 8);
    let data = pattern(0x2E, lba, 8 * bs, bs);
    let mut qp = c.create_io_queue_pair(8)?;
    let r = (|| -> anyhow::Result<Vec<u8>> {
        write_split(c, &mut qp, &ns, lba, &data)?;
        qp.write_zeroes(&ns, lba + 1, 6, true)?;
        read_split(c, &mut qp, &ns, lba, 8 * bs)
    })();
    c.delete_io_queue_pair(qp)?;
    let back = r?;
    ensure!(
        back[..bs] == data[..bs] && back[7 * bs..] == data[7 * bs..],
        "blocks next to the zeroed range changed"
    );
    ensure!(
        back[bs..7 * bs].iter().all(|&b| b == 0),
        "Write Zeroes with DEAC left data in the range"
    );
    Ok(Verdict::Pass)
}

fn dsm_ranges<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if let Some(skip) = require_oncs(c, oncs::DATASET_MANAGEMENT, "bit 2 (Dataset Management)") {
        return Ok(skip);
    }
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    let lba = scratch_lba(&ns, 16);
    let data = pattern(0xD5, lba, 16 * bs, bs);
    let ranges = [(1u64, 2u32), (5, 3), (12, 1)];
    let mut qp = c.create_io_queue_pair(8)?;
    let r = (|| -> anyhow::Result<Vec<u8>> {
        write_split(c, &mut qp, &ns, lba, &data)?;
        let list: Vec<DsmRange> = ranges
            .iter()
            .map(|&(o, n)| DsmRange {
                slba: lba + o,
                nlb: n,
                attributes: 0,
            })
            .collect();
        qp.deallocate(&ns, &list)?;
        read_split(c, &mut qp, &ns, lba, 16 * bs)
    })();
    c.delete_io_queue_pair(qp)?;
    let back = r?;
    for i in 0..16usize {
        let inside = ranges
            .iter()
            .any(|&(o, n)| (i as u64) >= o && (i as u64) < o + n as u64);
        let (blk, old) = (&back[i * bs..(i + 1) * bs], &data[i * bs..(i + 1) * bs]);
        if inside {
            ensure!(dealloc_block_ok(blk, old, ns.identify().dlfeat), "block {i} in a deallocated range holds neither the written data nor what DLFEAT {:#x} promises", ns.identify().dlfeat);
        } else {
            ensure!(blk == old, "block {i}, outside every range, changed");
        }
    }
    Ok(Verdict::Pass)
}

fn compare_failure<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if let Some(skip) = require_oncs(c, oncs::COMPARE, "bit 0 (Compare)") {
        return Ok(skip);
    }
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    let lba = scratch_lba(&ns, 2);
    let data = pattern(0xC3, lba, 2 * bs, bs);
    let mut other = data.clone();
    *other.last_mut().context("empty")? ^= 0x01;
    let mut qp = c.create_io_queue_pair(8)?;
    let w = qp.write(&ns, lba, buffer_with(c, &data)?).map(|_| ());
    let cmd = Command::rw(NvmOpcode::COMPARE, ns.nsid(), lba, 1, false);
    let r = submit_wait(&mut qp, cmd, Some(buffer_with(c, &other)?), 0, None);
    c.delete_io_queue_pair(qp)?;
    w.map_err(|e| anyhow::anyhow!("{}", e.error))?;
    let (st, _) = r?;
    check_status(cx, "Compare differing in the last byte", st, &[(2, 0x85)])
}

fn out_of_range<B: Backend>(
    cx: &mut Ctx<'_, B>,
    what: &str,
    make: impl Fn(&nvme_core::Namespace) -> (Command, usize),
) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let (cmd, bytes) = make(&ns);
    let mut qp = c.create_io_queue_pair(8)?;
    let buf = if bytes > 0 {
        Some(c.alloc_buffer(bytes)?)
    } else {
        None
    };
    let r = submit_wait(&mut qp, cmd, buf, 0, None);
    c.delete_io_queue_pair(qp)?;
    let (st, _) = r?;
    check_status(cx, what, st, &[(0, 0x80)])
}

fn verify_out_of_range<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    if let Some(skip) = require_oncs(cx.ctrl()?, oncs::VERIFY, "bit 7 (Verify)") {
        return Ok(skip);
    }
    out_of_range(cx, "Verify at LBA NSZE", |ns| {
        (Command::verify(ns.nsid(), ns.blocks(), 0), 0)
    })
}

fn write_at_nsze<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    out_of_range(cx, "Write at LBA NSZE", |ns| {
        (
            Command::rw(NvmOpcode::WRITE, ns.nsid(), ns.blocks(), 0, false),
            ns.lba_size() as usize,
        )
    })
}

fn write_zeroes_past_end<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    if let Some(skip) = require_oncs(cx.ctrl()?, oncs::WRITE_ZEROES, "bit 3 (Write Zeroes)") {
        return Ok(skip);
    }
    out_of_range(cx, "Write Zeroes of 2 blocks at the last LBA", |ns| {
        (
            Command::write_zeroes(ns.nsid(), ns.blocks() - 1, 1, false),
            0,
        )
    })
}

fn read_past_end<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    out_of_range(cx, "Read of 2 blocks at the last LBA", |ns| {
        (
            Command::rw(NvmOpcode::READ, ns.nsid(), ns.blocks() - 1, 1, false),
            2 * ns.lba_size() as usize,
        )
    })
}

fn flush_broadcast<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let vwc = c.identify().vwc;
    let mut qp = c.create_io_queue_pair(8)?;
    let r = submit_wait(&mut qp, Command::flush(0xFFFF_FFFF), None, 0, None);
    c.delete_io_queue_pair(qp)?;
    let (st, _) = r?;
    // VWC bits 2:1: 11b Flush with NSID FFFFFFFFh is supported, 10b it is not, 00b not
    // reported (either outcome), 01b reserved.
    let legal: &[(u8, u8)] = match (vwc & 1, (vwc >> 1) & 3) {
        (1, 0b11) => &[(0, 0)],
        (1, 0b10) => &[(0, 0x0B)],
        _ => &[(0, 0), (0, 0x0B)],
    };
    cx.expect_status(
        &format!("Flush NSID FFFFFFFFh with VWC {vwc:#05b}"),
        st,
        legal,
    )
}

fn invalid_opcode<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let mut qp = c.create_io_queue_pair(8)?;
    // 03h is assigned to no command of the NVM command set.
    let mut cmd = Command::new(0x03);
    cmd.set_nsid(ns.nsid());
    let r = submit_wait(&mut qp, cmd, None, 0, None);
    c.delete_io_queue_pair(qp)?;
    let (st, _) = r?;
    check_status(cx, "I/O opcode 03h", st, &[(0, 0x01)])
}

fn nsid_zero<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let mut qp = c.create_io_queue_pair(8)?;
    // No data pointer: NSID 0 names no format the core could size a transfer by.
    let cmd = Command::rw(NvmOpcode::READ, 0, 0, 0, false);
    let r = submit_wait(&mut qp, cmd, None, 0, None);
    c.delete_io_queue_pair(qp)?;
    let (st, _) = r?;
    check_status(cx, "Read with NSID 0", st, &[(0, 0x0B)])
}

fn unaligned_buffers<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, Some(4096))?;
    let bs = ns.lba_size() as usize;
    let n = (c.max_transfer() / bs).clamp(1, 8);
    let len = n * bs;
    let lba = scratch_lba(&ns, n as u64);
    let data = pattern(0x9A, lba, len, bs);
    let (woff, roff) = (0x204usize, 0x10usize);
    let mut wbuf = c.alloc_buffer(len + woff)?;
    wbuf.write(woff, &data)?;
    let mut qp = c.create_io_queue_pair(8)?;
    let r = (|| -> anyhow::Result<Vec<u8>> {
        let cmd = Command::rw(NvmOpcode::WRITE, ns.nsid(), lba, (n - 1) as u16, false);
        let (st, _) = submit_wait(&mut qp, cmd, Some(wbuf), woff, Some(len))?;
        ensure!(st.is_success(), "Write from offset {woff:#x}: {st}");
        let cmd = Command::rw(NvmOpcode::READ, ns.nsid(), lba, (n - 1) as u16, false);
        let (st, buf) = submit_wait(
            &mut qp,
            cmd,
            Some(c.alloc_buffer(len + roff)?),
            roff,
            Some(len),
        )?;
        ensure!(st.is_success(), "Read into offset {roff:#x}: {st}");
        let mut back = vec![0u8; len];
        buf.context("buffer")?.read(roff, &mut back)?;
        let aligned = qp
            .read(&ns, lba, c.alloc_buffer(len)?)
            .map_err(|e| anyhow::anyhow!("{}", e.error))?;
        ensure!(
            aligned.to_vec() == data,
            "the data written from offset {woff:#x} reads back different (page-aligned read)"
        );
        Ok(back)
    })();
    c.delete_io_queue_pair(qp)?;
    ensure!(
        r? == data,
        "{n} blocks read into offset {roff:#x} differ from what was written"
    );
    Ok(Verdict::Pass)
}

fn namespace_isolation<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let all = c.namespaces().to_vec();
    if all.len() < 2 {
        return Ok(Verdict::Skip(format!(
            "{} active namespace: needs two",
            all.len()
        )));
    }
    let mut qp = c.create_io_queue_pair(8)?;
    let r = (|| -> anyhow::Result<()> {
        // The same LBA in every namespace (inside the smallest), each with its own pattern.
        let lba = all.iter().map(|n| scratch_lba(n, 2)).min().unwrap_or(0);
        for n in &all {
            let bs = n.lba_size() as usize;
            write_split(
                c,
                &mut qp,
                n,
                lba,
                &pattern(n.nsid() as u8, lba, 2 * bs, bs),
            )?;
        }
        let first = &all[0];
        let bs = first.lba_size() as usize;
        write_split(c, &mut qp, first, lba, &pattern(0xEE, lba, 2 * bs, bs))?;
        for n in &all[1..] {
            let bs = n.lba_size() as usize;
            let back = read_split(c, &mut qp, n, lba, 2 * bs)?;
            ensure!(
                back == pattern(n.nsid() as u8, lba, 2 * bs, bs),
                "namespace {}: LBA {lba} changed after a Write to namespace {}",
                n.nsid(),
                first.nsid()
            );
        }
        Ok(())
    })();
    c.delete_io_queue_pair(qp)?;
    r?;
    Ok(Verdict::Pass)
}

fn dsm_hints_only<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if let Some(skip) = require_oncs(c, oncs::DATASET_MANAGEMENT, "bit 2 (Dataset Management)") {
        return Ok(skip);
    }
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    let lba = scratch_lba(&ns, 4);
    let data = pattern(0x4D, lba, 4 * bs, bs);
    let mut qp = c.create_io_queue_pair(8)?;
    let r = (|| -> anyhow::Result<Vec<u8>> {
        write_split(c, &mut qp, &ns, lba, &data)?;
        // One range with context attributes (access frequency: frequent reads), AD=0.
        let mut range = [0u8; 16];
        range[0] = 0x05;
        range[4..8].copy_from_slice(&4u32.to_le_bytes());
        range[8..16].copy_from_slice(&lba.to_le_bytes());
        let mut buf = qp.alloc_buffer(4096)?;
        buf.write(0, &range)?;
        let cmd = Command::dataset_management(ns.nsid(), 0, false);
        let (st, _) = submit_wait(&mut qp, cmd, Some(buf), 0, Some(16))?;
        ensure!(st.is_success(), "Dataset Management with AD=0: {st}");
        read_split(c, &mut qp, &ns, lba, data.len())
    })();
    c.delete_io_queue_pair(qp)?;
    ensure!(
        r? == data,
        "data changed after a Dataset Management command with only hints (AD=0)"
    );
    Ok(Verdict::Pass)
}

fn cross_queue_visibility<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if c.granted_queue_pairs() < 2 {
        return Ok(Verdict::Skip(format!(
            "{} I/O queue pair granted: needs two",
            c.granted_queue_pairs()
        )));
    }
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    let lba = scratch_lba(&ns, 2);
    let mut a = c.create_io_queue_pair(8)?;
    let mut b = c.create_io_queue_pair(8)?;
    let r = (|| -> anyhow::Result<()> {
        for round in 0..4u8 {
            let data = pattern(0x60 + round, lba, 2 * bs, bs);
            let (w, rd) = if round % 2 == 0 {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            write_split(c, w, &ns, lba, &data)?;
            let back = read_split(c, rd, &ns, lba, data.len())?;
            ensure!(
                back == data,
                "round {round}: a Read on QID {} does not see the Write completed on QID {}",
                rd.qid(),
                w.qid()
            );
        }
        Ok(())
    })();
    c.delete_io_queue_pair(a)?;
    c.delete_io_queue_pair(b)?;
    r?;
    Ok(Verdict::Pass)
}

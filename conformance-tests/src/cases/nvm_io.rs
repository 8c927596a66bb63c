//! NVM I/O commands (NVM Command Set Specification §3.3): data correctness and error cases.

use anyhow::{bail, ensure};
use nvme_core::spec::identify::oncs;
use nvme_core::spec::{Command, NvmOpcode};
use nvme_core::{DsmRange, Error};

use super::helpers::{buffer_with, namespace, pattern, scratch_lba};
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
    ]
}

fn roundtrip<B: Backend>(cx: &mut Ctx<'_, B>, lba_size: u32) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let Some(ns) = c
        .namespaces()
        .iter()
        .find(|n| n.lba_size == lba_size)
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
    let buf = c.alloc_buffer(ns.lba_size as usize)?;
    let cmd = Command::rw(NvmOpcode::READ, ns.nsid, ns.blocks, 0, false);
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
    let buf = c.alloc_buffer(ns.lba_size as usize * 2)?;
    let r = qp.read(&ns, ns.blocks - 1, buf);
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
    let buf = c.alloc_buffer(4096)?;
    let cmd = Command::rw(NvmOpcode::READ, nn.saturating_add(1), 0, 0, false);
    let r = qp.passthrough(cmd, Some(buf));
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
    let r = qp.flush(ns.nsid);
    c.delete_io_queue_pair(qp)?;
    r?;
    Ok(Verdict::Pass)
}

fn write_zeroes<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if !c.identify().supports(oncs::WRITE_ZEROES) {
        return Ok(Verdict::Skip("ONCS bit 3 (Write Zeroes) is clear".into()));
    }
    let ns = namespace(c, None)?;
    let bs = ns.lba_size as usize;
    let lba = scratch_lba(&ns, 8);
    let mut qp = c.create_io_queue_pair(8)?;
    qp.write(&ns, lba, buffer_with(c, &pattern(7, lba, 8 * bs, bs))?)?;
    qp.write_zeroes(&ns, lba + 2, 4, false)?;
    let back = qp.read(&ns, lba, c.alloc_buffer(8 * bs)?)?.to_vec();
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
    if !c.identify().supports(oncs::DATASET_MANAGEMENT) {
        return Ok(Verdict::Skip(
            "ONCS bit 2 (Dataset Management) is clear".into(),
        ));
    }
    let ns = namespace(c, None)?;
    let bs = ns.lba_size as usize;
    let lba = scratch_lba(&ns, 8);
    let mut qp = c.create_io_queue_pair(8)?;
    qp.write(&ns, lba, buffer_with(c, &pattern(9, lba, 8 * bs, bs))?)?;
    qp.deallocate(
        &ns,
        &[DsmRange {
            slba: lba,
            nlb: 8,
            attributes: 0,
        }],
    )?;
    let back = qp.read(&ns, lba, c.alloc_buffer(8 * bs)?)?.to_vec();
    c.delete_io_queue_pair(qp)?;
    // Deallocation is advisory (NVM §3.3.3: the controller "may" deallocate the ranges). Each
    // block therefore reads either as it was written (not deallocated) or as DLFEAT bits 2:0
    // promise for deallocated blocks (001b: zeroes, 010b: all ones; 000b: not reported).
    let written = pattern(9, lba, 8 * bs, bs);
    for (i, (got, old)) in back.chunks(bs).zip(written.chunks(bs)).enumerate() {
        let kept = got == old;
        let dealloc_ok = match ns.identify.dlfeat & 7 {
            1 => got.iter().all(|&b| b == 0),
            2 => got.iter().all(|&b| b == 0xFF),
            _ => true,
        };
        ensure!(kept || dealloc_ok, "block {} after deallocate holds neither the written data nor what DLFEAT {:#x} promises", lba + i as u64, ns.identify.dlfeat);
    }
    Ok(Verdict::Pass)
}

fn compare<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if !c.identify().supports(oncs::COMPARE) {
        return Ok(Verdict::Skip("ONCS bit 0 (Compare) is clear".into()));
    }
    let ns = namespace(c, None)?;
    let bs = ns.lba_size as usize;
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
    let bs = ns.lba_size as u64;
    let nlb = mdts / bs + 1;
    if nlb > 65536 || nlb > ns.blocks {
        return Ok(Verdict::Skip(
            "MDTS is above what one command can address".into(),
        ));
    }
    let mut qp = c.create_io_queue_pair(8)?;
    // The driver refuses it before it reaches the device.
    let big = c.alloc_buffer((nlb * bs) as usize)?;
    let refused =
        matches!(qp.read(&ns, 0, big), Err(e) if matches!(e.error, Error::TransferTooLarge { .. }));
    // The controller refuses a command whose NLB exceeds MDTS; the data pointer covers only
    // MDTS bytes, which the controller must not reach (it checks NLB first).
    let buf = c.alloc_buffer(mdts as usize)?;
    let cmd = Command::rw(NvmOpcode::READ, ns.nsid, 0, (nlb - 1) as u16, false);
    let r = qp.submit_range(cmd, Some(buf), 0, None, 1);
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
    if !c.identify().supports(oncs::VERIFY) {
        return Ok(Verdict::Skip("ONCS bit 7 (Verify) is clear".into()));
    }
    let ns = namespace(c, None)?;
    let bs = ns.lba_size as usize;
    let lba = scratch_lba(&ns, 4);
    let mut qp = c.create_io_queue_pair(8)?;
    qp.write(&ns, lba, buffer_with(c, &pattern(1, lba, 4 * bs, bs))?)?;
    let r = qp.verify(&ns, lba, 4);
    c.delete_io_queue_pair(qp)?;
    r?;
    Ok(Verdict::Pass)
}

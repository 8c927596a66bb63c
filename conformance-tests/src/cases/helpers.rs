//! Small helpers shared by cases.

use anyhow::{ensure, Context as _};
use nvme_core::hw::Platform;
use nvme_core::{Controller, DmaBuffer, IoQueuePair, Namespace};

/// A deterministic pattern: byte `i` of block `lba` for `seed`.
pub fn pattern(seed: u8, lba: u64, len: usize, lba_size: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let block = lba + (i / lba_size) as u64;
            let x = (block.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) as u8;
            x ^ (i as u8).wrapping_mul(31) ^ seed
        })
        .collect()
}

/// The first active namespace whose LBA size is `lba_size`, or the first one at all.
///
/// # Errors
/// No active namespace.
pub fn namespace<P: Platform>(
    c: &Controller<P>,
    lba_size: Option<u32>,
) -> anyhow::Result<Namespace> {
    let ns = c.namespaces();
    ensure!(!ns.is_empty(), "the controller reports no active namespace");
    Ok(match lba_size {
        Some(s) => ns
            .iter()
            .find(|n| n.lba_size() == s)
            .unwrap_or(&ns[0])
            .clone(),
        None => ns[0].clone(),
    })
}

/// A buffer holding `data`.
///
/// # Errors
/// DMA allocation.
pub fn buffer_with<P: Platform>(c: &Controller<P>, data: &[u8]) -> anyhow::Result<DmaBuffer<P>> {
    let mut b = c
        .alloc_buffer(data.len())
        .context("allocating a DMA buffer")?;
    b.write(0, data)?;
    Ok(b)
}

/// An LBA near the end of the namespace that `blocks` blocks fit before (tests stay away from
/// LBA 0, which a real SSD's owner may care about less than the end... both are scratch).
/// Writes `data` at `lba` in commands no larger than the controller's maximum transfer
/// (MDTS), so a case sized by the data works on a controller of any MDTS.
pub fn write_split<P: Platform>(
    c: &Controller<P>,
    qp: &mut IoQueuePair<P>,
    ns: &Namespace,
    lba: u64,
    data: &[u8],
) -> anyhow::Result<()> {
    let bs = ns.lba_size() as usize;
    let step = (c.max_transfer() / bs).max(1) * bs;
    for (i, chunk) in data.chunks(step).enumerate() {
        let at = lba + (i * step / bs) as u64;
        qp.write(ns, at, buffer_with(c, chunk)?)
            .map_err(|e| anyhow::anyhow!("Write at LBA {at}: {}", e.error))?;
    }
    Ok(())
}

/// Reads `len` bytes at `lba` in commands no larger than the maximum transfer.
pub fn read_split<P: Platform>(
    c: &Controller<P>,
    qp: &mut IoQueuePair<P>,
    ns: &Namespace,
    lba: u64,
    len: usize,
) -> anyhow::Result<Vec<u8>> {
    let bs = ns.lba_size() as usize;
    let step = (c.max_transfer() / bs).max(1) * bs;
    let mut out = Vec::with_capacity(len);
    let mut done = 0;
    while done < len {
        let n = step.min(len - done);
        let at = lba + (done / bs) as u64;
        let b = qp
            .read(ns, at, c.alloc_buffer(n)?)
            .map_err(|e| anyhow::anyhow!("Read at LBA {at}: {}", e.error))?;
        out.extend_from_slice(&b.to_vec());
        done += n;
    }
    Ok(out)
}

pub fn scratch_lba(ns: &Namespace, blocks: u64) -> u64 {
    ns.blocks().saturating_sub(blocks + 64)
}

/// `want` blocks, or fewer if one command of `want` blocks would exceed the maximum data
/// transfer size (MDTS, §5.1.13.2.1): at least one block.
pub fn fit<P: Platform>(c: &Controller<P>, ns: &Namespace, want: u64) -> u64 {
    want.min((c.max_transfer() as u64 / u64::from(ns.lba_size())).max(1))
}

/// The status an I/O command completed with: success, or the controller's status from the
/// error. Transport failures (timeout, device gone, refused by the driver) are errors.
///
/// # Errors
/// The command did not complete with a status.
pub fn io_status<T, P: Platform>(
    r: Result<T, nvme_core::IoError<P>>,
) -> anyhow::Result<nvme_core::spec::Status> {
    match r {
        Ok(_) => Ok(nvme_core::spec::Status::SUCCESS),
        Err(e) => e
            .error
            .status()
            .ok_or_else(|| anyhow::anyhow!("the command did not complete: {}", e.error)),
    }
}

/// The status of an admin call that returns `Result<_, nvme_core::Error>`: success, or the
/// controller's status from [`nvme_core::Error::Command`].
///
/// # Errors
/// Transport failures.
pub fn admin_status<T>(r: Result<T, nvme_core::Error>) -> anyhow::Result<nvme_core::spec::Status> {
    match r {
        Ok(_) => Ok(nvme_core::spec::Status::SUCCESS),
        Err(e) => e
            .status()
            .ok_or_else(|| anyhow::anyhow!("the admin command did not complete: {e}")),
    }
}

/// Folds the verdicts of several checks of one case: any allowance makes the case allowed
/// (the first one is named).
pub fn fold(verdicts: impl IntoIterator<Item = crate::runner::Verdict>) -> crate::runner::Verdict {
    let mut out = crate::runner::Verdict::Pass;
    for v in verdicts {
        if let crate::runner::Verdict::Allowed(a) = v {
            if out == crate::runner::Verdict::Pass {
                out = crate::runner::Verdict::Allowed(a);
            }
        }
    }
    out
}

/// Submits `cmd` with `len` bytes of `buffer` at `offset` (PRPs built by the driver), rings,
/// and waits up to 10 s for its completion. Returns the status and the buffer.
///
/// # Errors
/// Submission refused, no completion, or a transport failure.
pub fn submit_wait<P: Platform>(
    qp: &mut nvme_core::IoQueuePair<P>,
    cmd: nvme_core::spec::Command,
    buffer: Option<DmaBuffer<P>>,
    offset: usize,
    len: Option<usize>,
) -> anyhow::Result<(nvme_core::spec::Status, Option<DmaBuffer<P>>)> {
    const TAG: u64 = 0xC0F0;
    qp.submit_range(cmd, buffer, offset, len, TAG)
        .map_err(|e| anyhow::anyhow!("the driver refused the submission: {}", e.error))?;
    qp.ring();
    await_tag(qp, TAG)
}

/// Waits up to 10 s for the completion of the command submitted with `tag` (the doorbell
/// already written); other completions are dropped. Returns its status and its buffer.
///
/// # Errors
/// No completion in time, a completion without a status (timed out or failed by the driver),
/// or a transport failure.
pub fn await_tag<P: Platform>(
    qp: &mut nvme_core::IoQueuePair<P>,
    tag: u64,
) -> anyhow::Result<(nvme_core::spec::Status, Option<DmaBuffer<P>>)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut got = None;
        qp.wait(std::time::Duration::from_millis(200), |comp| {
            if comp.tag == tag {
                got = Some(comp);
            }
        })?;
        if let Some(comp) = got {
            let st = match comp.result {
                Ok(()) => nvme_core::spec::Status::SUCCESS,
                Err(e) => e
                    .status()
                    .ok_or_else(|| anyhow::anyhow!("the command did not complete: {e}"))?,
            };
            return Ok((st, comp.buffer));
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no completion within 10 s"
        );
    }
}

/// Whether a block read after Dataset Management deallocate is legal. Deallocation is
/// advisory (NVM §3.3.3: the controller "may" deallocate), so a block reads either as it was
/// written (not deallocated) or as DLFEAT bits 2:0 promise for deallocated blocks (001b:
/// zeroes, 010b: all ones; 000b: not reported, anything).
pub fn dealloc_block_ok(got: &[u8], written: &[u8], dlfeat: u8) -> bool {
    got == written
        || match dlfeat & 7 {
            1 => got.iter().all(|&b| b == 0),
            2 => got.iter().all(|&b| b == 0xFF),
            _ => true,
        }
}

/// `Some(Skip)` when Identify ONCS lacks `bit`: the optional NVM command a case checks is not
/// advertised (`what` names the bit, e.g. "bit 3 (Write Zeroes)").
pub fn require_oncs<P: Platform>(
    c: &Controller<P>,
    bit: u16,
    what: &str,
) -> Option<crate::runner::Verdict> {
    (!c.identify().supports(bit))
        .then(|| crate::runner::Verdict::Skip(format!("ONCS {what} is clear")))
}

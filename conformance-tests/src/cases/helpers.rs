//! Small helpers shared by cases.

use anyhow::{ensure, Context as _};
use nvme_core::hw::Platform;
use nvme_core::{Controller, DmaBuffer, Namespace};

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
            .find(|n| n.lba_size == s)
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
pub fn scratch_lba(ns: &Namespace, blocks: u64) -> u64 {
    ns.blocks.saturating_sub(blocks + 64)
}

//! BAR0 of the controller, mmapped from the VFIO device fd (linux/vfio.h
//! `VFIO_REGION_INFO_FLAG_MMAP`), as an [`nvme_core::hw::Bar`].
//!
//! # Safety
//! BAR0 is device memory. It is only ever touched through the one helper below, with
//! volatile accesses of the register's width through raw pointers, after a bounds and
//! alignment check. No Rust reference (`&u32`, `&[u8]`) into it ever exists: a reference
//! would let the compiler assume plain memory (merging, splitting, speculating or eliding
//! accesses), which is undefined behaviour for MMIO.

use std::sync::atomic::{AtomicU64, Ordering};

use nvme_core::hw::Bar;

use crate::sys::Mapping;

/// BAR0 mapped into this process.
///
/// Out-of-range or misaligned accesses do not reach the device: a read returns all-ones (what
/// a PCIe read of a missing device returns), a write is dropped, and both are counted
/// ([`bad_accesses`](Self::bad_accesses)).
#[derive(Debug)]
pub struct VfioBar {
    map: Mapping,
    bad: AtomicU64,
}

impl VfioBar {
    pub(crate) fn new(map: Mapping) -> Self {
        Self {
            map,
            bad: AtomicU64::new(0),
        }
    }

    /// How many accesses were refused (out of range or misaligned) so far.
    pub fn bad_accesses(&self) -> u64 {
        self.bad.load(Ordering::Relaxed)
    }

    /// The register at `offset` of width `W`, if in bounds and naturally aligned.
    fn reg<W>(&self, offset: usize) -> Option<*mut W> {
        let w = size_of::<W>();
        let in_bounds = offset
            .checked_add(w)
            .is_some_and(|end| end <= self.map.len());
        if !in_bounds || offset % w != 0 {
            // Relaxed: a statistics counter, it orders nothing.
            self.bad.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // The mapping is page-aligned, so `offset % w == 0` makes the address aligned too.
        // `wrapping_add` keeps this free of `unsafe`; the bound was checked above.
        Some(self.map.ptr().as_ptr().wrapping_add(offset).cast::<W>())
    }

    /// A 64-bit access split in two dwords must be dword-aligned and wholly in range (so
    /// that half of it never reaches the device); counts a refusal.
    fn split_ok(&self, offset: usize) -> bool {
        let ok = offset % 4 == 0 && offset.checked_add(8).is_some_and(|e| e <= self.map.len());
        if !ok {
            // Relaxed: a statistics counter.
            self.bad.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    fn read<W: Copy>(&self, offset: usize, all_ones: W) -> W {
        match self.reg::<W>(offset) {
            // SAFETY: `p` lies inside the live BAR mapping (bounds checked in `reg`), is
            // aligned for `W`, and is accessed only through this volatile read (no reference).
            Some(p) => unsafe { p.read_volatile() },
            None => all_ones,
        }
    }

    fn write<W: Copy>(&self, offset: usize, value: W) {
        if let Some(p) = self.reg::<W>(offset) {
            // SAFETY: as in `read`: in bounds, aligned, volatile, no reference. The mapping
            // is writable (PROT_WRITE, MAP_SHARED on the device fd).
            unsafe { p.write_volatile(value) }
        }
    }
}

impl Bar for VfioBar {
    fn size(&self) -> usize {
        self.map.len()
    }
    /// NVMe registers are little-endian (NVMe Base §3.1.4), whatever the host's byte order.
    fn read32(&self, offset: usize) -> u32 {
        u32::from_le(self.read::<u32>(offset, u32::MAX))
    }
    unsafe fn write32(&self, offset: usize, value: u32) {
        self.write::<u32>(offset, value.to_le());
    }
    /// One 64-bit volatile load if `offset` is 8-byte aligned on a 64-bit target (NVMe Base
    /// §3.1.4: CAP, ASQ, ACQ may be read as one 64-bit access), otherwise low then high
    /// dword.
    fn read64(&self, offset: usize) -> u64 {
        if cfg!(target_pointer_width = "64") && offset % 8 == 0 {
            u64::from_le(self.read::<u64>(offset, u64::MAX))
        } else if self.split_ok(offset) {
            let lo = self.read32(offset) as u64;
            let hi = self.read32(offset + 4) as u64;
            lo | (hi << 32)
        } else {
            u64::MAX
        }
    }
    /// One 64-bit volatile store if aligned on a 64-bit target, otherwise low then high dword
    /// (which §3.1.4 allows for ASQ and ACQ).
    unsafe fn write64(&self, offset: usize, value: u64) {
        if cfg!(target_pointer_width = "64") && offset % 8 == 0 {
            self.write::<u64>(offset, value.to_le());
        } else if self.split_ok(offset) {
            // SAFETY: the caller's contract covers both halves of the register.
            unsafe {
                self.write32(offset, value as u32);
                self.write32(offset + 4, (value >> 32) as u32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar() -> VfioBar {
        VfioBar::new(Mapping::anonymous(0x4000, false).unwrap())
    }

    #[test]
    fn reads_back_writes() {
        let b = bar();
        assert_eq!(b.size(), 0x4000);
        // SAFETY: an anonymous mapping, not a device: no DMA can follow.
        unsafe {
            b.write32(0x14, 0x0046_0001);
        }
        assert_eq!(b.read32(0x14), 0x0046_0001);
        // SAFETY: an anonymous mapping, not a device: no DMA can follow.
        unsafe {
            b.write64(0x28, 0x1234_5678_9abc_d000);
        }
        assert_eq!(b.read64(0x28), 0x1234_5678_9abc_d000);
        assert_eq!(b.read32(0x28), 0x9abc_d000);
        assert_eq!(b.read32(0x2c), 0x1234_5678);
        // SAFETY: an anonymous mapping, not a device: no DMA can follow.
        unsafe {
            b.write32(0x3ffc, 7);
        }
        assert_eq!(b.read32(0x3ffc), 7);
        assert_eq!(b.bad_accesses(), 0);
    }

    #[test]
    fn out_of_range_and_misaligned_are_all_ones_and_dropped() {
        let b = bar();
        assert_eq!(b.read32(0x4000), u32::MAX);
        assert_eq!(b.read32(0x3ffe), u32::MAX);
        assert_eq!(b.read32(usize::MAX - 1), u32::MAX);
        assert_eq!(b.read32(0x2), u32::MAX);
        assert_eq!(b.read64(0x3ffc), u64::MAX);
        assert_eq!(b.read64(usize::MAX), u64::MAX);
        // SAFETY: an anonymous mapping, not a device: no DMA can follow.
        unsafe {
            b.write32(0x4000, 1);
        }
        // SAFETY: an anonymous mapping, not a device: no DMA can follow.
        unsafe {
            b.write32(0x1, 1);
        }
        // SAFETY: an anonymous mapping, not a device: no DMA can follow.
        unsafe {
            b.write64(0x3ff8 + 8, 1);
        }
        assert_eq!(b.read32(0), 0, "misaligned write at 1 must not land at 0");
        assert_eq!(b.bad_accesses(), 9);
        // A 4-aligned 64-bit access is split into two dwords (both in range).
        // SAFETY: an anonymous mapping, not a device: no DMA can follow.
        unsafe {
            b.write64(0x24, 0xaaaa_bbbb_cccc_dddd);
        }
        assert_eq!(b.read32(0x24), 0xcccc_dddd);
        assert_eq!(b.read64(0x24), 0xaaaa_bbbb_cccc_dddd);
    }
}

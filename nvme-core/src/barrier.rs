//! Memory barriers between the CPU and the device, for every supported CPU.
//!
//! `core::sync::atomic::fence` orders memory for other CPUs (the inner-shareable domain on
//! aarch64: `dmb ish`), not for a device behind the PCIe root complex. Linux orders descriptor
//! writes before a doorbell with `dma_wmb()` (inside `writel`) and reads completion entries
//! after the phase check with `dma_rmb()`; on aarch64 those are `dmb oshst` and `dmb oshld`,
//! barriers to the outer-shareable domain, which is where a DMA master observes memory. These
//! functions are the core's equivalents.
//!
//! - x86_64: stores are not reordered with other stores (including uncached MMIO writes)
//!   and loads not with other loads, so a compiler barrier is all that is needed.
//! - aarch64: the outer-shareable data memory barriers above, in inline assembly.
//! - anything else: a sequentially consistent fence (the strongest the language offers).

use core::sync::atomic::{compiler_fence, fence, Ordering};

/// Makes every store to DMA memory issued so far (queue entries, PRP lists, data the host
/// filled) visible to the device before any MMIO write that follows (the doorbell).
#[inline(always)]
pub(crate) fn before_doorbell() {
    // Release for the Rust memory model (other threads, Miri), and the hardware barrier.
    fence(Ordering::Release);
    #[cfg(all(target_arch = "aarch64", not(miri)))]
    // SAFETY: `dmb oshst` only orders memory accesses; it reads and writes no memory or
    // register the compiler tracks.
    unsafe {
        core::arch::asm!("dmb oshst", options(nostack, preserves_flags))
    };
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    fence(Ordering::SeqCst);
    compiler_fence(Ordering::SeqCst);
}

/// Orders the reads of a completion entry's other dwords after the read of the dword whose
/// phase tag said the entry is new (NVMe Base §4.2.4).
#[inline(always)]
pub(crate) fn after_phase_check() {
    #[cfg(all(target_arch = "aarch64", not(miri)))]
    // SAFETY: `dmb oshld` only orders memory accesses (loads before it against loads and
    // stores after it); it touches no memory or register the compiler tracks.
    unsafe {
        core::arch::asm!("dmb oshld", options(nostack, preserves_flags))
    };
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    fence(Ordering::SeqCst);
    compiler_fence(Ordering::SeqCst);
}

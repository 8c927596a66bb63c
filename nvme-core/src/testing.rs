//! Test doubles for the hardware traits: heap DMA memory that checks every free, a BAR that
//! ignores writes, a clock moved by hand. For unit tests (`cfg(test)`) and, with the
//! `test-utils` feature, for other crates' tests. Not for production: the "device" behind
//! these is the test itself.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::vec::Vec;

use crate::hw::{
    Bar, Clock, DmaAllocator, DmaError, DmaErrorKind, DmaRegion, NoInterrupts, Platform,
};

/// The allocation error of [`HeapDma`].
#[derive(Debug, Clone, Copy)]
pub struct NoMem;

impl core::fmt::Display for NoMem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("out of memory")
    }
}
impl core::error::Error for NoMem {}
impl DmaError for NoMem {
    fn kind(&self) -> DmaErrorKind {
        DmaErrorKind::OutOfMemory
    }
}

/// Heap memory as DMA memory, with IOVA = CPU address. Counts live regions and panics on a
/// double free or a free of an unknown region, so a test sees every ownership mistake.
/// Like a real backend tearing down its IOMMU mappings, it frees what is still live when it
/// is dropped (memory the core leaked on purpose because the device could not be stopped).
#[derive(Debug, Default)]
pub struct HeapDma {
    live: Mutex<Vec<(usize, usize)>>,
}

impl HeapDma {
    /// Regions allocated and not yet freed.
    pub fn live(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

// SAFETY: regions are zeroed whole pages from the global allocator with 4096-byte alignment,
// never shared between allocations, and valid until `free`; IOVA equals the CPU address, which
// is what the test "device" uses.
unsafe impl DmaAllocator for HeapDma {
    type Error = NoMem;
    fn page_size(&self) -> usize {
        4096
    }
    fn allocate(&self, len: usize) -> Result<DmaRegion, NoMem> {
        let len = len.max(1).div_ceil(4096) * 4096;
        let layout = Layout::from_size_align(len, 4096).map_err(|_| NoMem)?;
        // SAFETY: the layout has a non-zero size.
        let p = core::ptr::NonNull::new(unsafe { alloc_zeroed(layout) }).ok_or(NoMem)?;
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((p.as_ptr() as usize, len));
        Ok(DmaRegion::new(p, p.as_ptr() as u64, len, 0))
    }
    unsafe fn free(&self, region: DmaRegion) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = live
            .iter()
            .position(|&(a, _)| a == region.ptr().as_ptr() as usize)
        else {
            panic!(
                "free of a region that is not live (double free?) at {:#x}",
                region.iova()
            );
        };
        live.swap_remove(i);
        let Ok(layout) = Layout::from_size_align(region.len(), 4096) else {
            panic!("free with a length no allocation had");
        };
        // SAFETY: allocated above with this layout and not freed before (checked).
        unsafe { dealloc(region.ptr().as_ptr(), layout) };
    }
}

impl Drop for HeapDma {
    fn drop(&mut self) {
        let live = self.live.get_mut().unwrap_or_else(|e| e.into_inner());
        for (addr, len) in live.drain(..) {
            if let (Some(p), Ok(layout)) = (
                core::ptr::NonNull::new(addr as *mut u8),
                Layout::from_size_align(len, 4096),
            ) {
                // SAFETY: allocated by `allocate` with this layout and never freed (it is still
                // in `live`); the platform, and with it any "device", is gone.
                unsafe { dealloc(p.as_ptr(), layout) };
            }
        }
    }
}

/// A BAR that reads zero and ignores writes.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullBar;

impl Bar for NullBar {
    fn size(&self) -> usize {
        0x2000
    }
    fn read32(&self, _offset: usize) -> u32 {
        0
    }
    unsafe fn write32(&self, _offset: usize, _value: u32) {}
}

/// A clock moved by hand (`store` nanoseconds).
#[derive(Debug, Default)]
pub struct HandClock(pub AtomicU64);

impl Clock for HandClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A clock that moves 1 ms every time it is read: deadlines expire quickly and
/// deterministically in polling loops.
#[derive(Debug, Default)]
pub struct StepClock(pub AtomicU64);

impl Clock for StepClock {
    fn now_ns(&self) -> u64 {
        self.0.fetch_add(1_000_000, Ordering::SeqCst)
    }
}

/// A platform with a [`NullBar`], [`HeapDma`], no interrupts and a [`HandClock`].
#[derive(Debug, Default)]
pub struct TestPlatform {
    /// The DMA memory.
    pub dma: HeapDma,
    /// The clock.
    pub clock: HandClock,
    irq: NoInterrupts,
}

impl Platform for TestPlatform {
    type Bar = NullBar;
    type Dma = HeapDma;
    type Irq = NoInterrupts;
    type Clock = HandClock;
    fn bar(&self) -> &NullBar {
        &NullBar
    }
    fn dma(&self) -> &HeapDma {
        &self.dma
    }
    fn irq(&self) -> &NoInterrupts {
        &self.irq
    }
    fn clock(&self) -> &HandClock {
        &self.clock
    }
    fn name(&self) -> &str {
        "test"
    }
}

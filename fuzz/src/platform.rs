//! A platform for driving the real driver without hardware: heap DMA memory with bus
//! addresses that differ from the CPU pointers (and are never reused), a BAR that records
//! every write, and a clock the harness moves by hand.
//!
//! The allocator is also the memory-safety oracle: it panics on a free of anything that is
//! not a live region, on a double free, and on a free of a region the harness has marked as
//! still reachable by the device.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nvme_core::hw::{
    Bar, Clock, DmaAllocator, DmaError, DmaErrorKind, DmaRegion, NoInterrupts, Platform,
};

/// Page size and alignment of every region.
pub const DMA_PAGE: usize = 4096;
/// Bus address of the first region; far from any heap pointer.
const IOVA_BASE: u64 = 0x0000_7e00_0000_0000;

/// Allocation failure (only for requests the allocator refuses).
#[derive(Debug, Clone, Copy)]
pub struct FuzzDmaError(pub DmaErrorKind);

impl fmt::Display for FuzzDmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fuzz DMA allocation failed: {:?}", self.0)
    }
}
impl std::error::Error for FuzzDmaError {}
impl DmaError for FuzzDmaError {
    fn kind(&self) -> DmaErrorKind {
        self.0
    }
}

#[derive(Debug)]
struct Live {
    ptr: NonNull<u8>,
    len: usize,
    cookie: u64,
}

/// The allocator's books.
#[derive(Debug, Default)]
pub struct DmaBooks {
    live: BTreeMap<u64, Live>,
    next_iova: u64,
    next_cookie: u64,
    /// Regions (by IOVA) the device may still access: freeing one is a driver bug.
    device_owned: BTreeSet<u64>,
    /// Allocations refused on purpose from this count on (`u64::MAX`: never).
    fail_after: u64,
    allocations: u64,
    frees: u64,
    /// Checks off: a harness assertion already failed and the harness is unwinding.
    disarmed: bool,
}

/// Heap-backed DMA memory.
#[derive(Debug)]
pub struct FuzzDma {
    books: Mutex<DmaBooks>,
}

// SAFETY: the books are behind a mutex; the regions they describe are owned by whoever the
// allocator handed them to, and only raw pointers to them are ever created.
unsafe impl Send for FuzzDma {}
// SAFETY: as above.
unsafe impl Sync for FuzzDma {}

impl Default for FuzzDma {
    fn default() -> Self {
        Self {
            books: Mutex::new(DmaBooks {
                next_iova: IOVA_BASE,
                fail_after: u64::MAX,
                ..Default::default()
            }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside the harness already failed the run; keep going to report it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FuzzDma {
    /// Number of live regions.
    pub fn live_regions(&self) -> usize {
        lock(&self.books).live.len()
    }
    /// (allocations, frees) so far.
    pub fn counts(&self) -> (u64, u64) {
        let b = lock(&self.books);
        (b.allocations, b.frees)
    }
    /// Refuses every allocation after `n` more have succeeded.
    pub fn fail_after(&self, n: u64) {
        let mut b = lock(&self.books);
        b.fail_after = b.allocations.saturating_add(n);
    }
    /// Turns the device-ownership check off (when the harness unwinds from a failed
    /// assertion, so that dropping the driver does not panic a second time).
    pub fn disarm(&self) {
        lock(&self.books).disarmed = true;
    }
    /// Marks the region holding `iova` as reachable by the device (or not).
    pub fn set_device_owned(&self, iova: u64, owned: bool) {
        let mut b = lock(&self.books);
        let start = Self::region_start(&b, iova).expect("device ownership of an unmapped IOVA");
        if owned {
            b.device_owned.insert(start);
        } else {
            b.device_owned.remove(&start);
        }
    }
    /// True if the region holding `iova` is still allocated.
    pub fn is_live(&self, iova: u64) -> bool {
        Self::region_start(&lock(&self.books), iova).is_some()
    }
    fn region_start(b: &DmaBooks, iova: u64) -> Option<u64> {
        let (&start, r) = b.live.range(..=iova).next_back()?;
        (iova - start < r.len as u64).then_some(start)
    }
    /// Translates `iova .. iova + len` to a CPU pointer if it lies inside one live region.
    fn translate(&self, iova: u64, len: usize) -> Option<*mut u8> {
        let b = lock(&self.books);
        let start = Self::region_start(&b, iova)?;
        let r = &b.live[&start];
        let off = (iova - start) as usize;
        if off.checked_add(len)? > r.len {
            return None;
        }
        Some(r.ptr.as_ptr().wrapping_add(off))
    }
    /// Device read of bus memory; `None` if any byte is unmapped.
    pub fn read(&self, iova: u64, dst: &mut [u8]) -> Option<()> {
        let p = self.translate(iova, dst.len())?;
        // SAFETY: `p .. p + len` lies inside a live region (checked under the lock). The
        // harness is single-threaded, so no driver access races this copy, and no Rust
        // reference into the region exists (the core only uses raw pointers).
        unsafe { std::ptr::copy_nonoverlapping(p as *const u8, dst.as_mut_ptr(), dst.len()) };
        Some(())
    }
    /// Device write of bus memory; `None` (and nothing written) if any byte is unmapped.
    pub fn write(&self, iova: u64, src: &[u8]) -> Option<()> {
        let p = self.translate(iova, src.len())?;
        // SAFETY: as in `read`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        Some(())
    }
}

// SAFETY: regions come from `alloc_zeroed` with page alignment and a page-multiple length,
// stay valid until `free`, never overlap (distinct heap blocks), and their IOVAs are unique
// (never reused) page-aligned bus addresses translated by `read`/`write` above.
unsafe impl DmaAllocator for FuzzDma {
    type Error = FuzzDmaError;
    fn page_size(&self) -> usize {
        DMA_PAGE
    }
    fn allocate(&self, len: usize) -> Result<DmaRegion, Self::Error> {
        let mut b = lock(&self.books);
        if b.allocations >= b.fail_after {
            return Err(FuzzDmaError(DmaErrorKind::OutOfMemory));
        }
        if len == 0 {
            return Err(FuzzDmaError(DmaErrorKind::InvalidRequest));
        }
        // Cap what a fuzz input can ask for (64 MiB).
        let size = len
            .checked_next_multiple_of(DMA_PAGE)
            .filter(|&s| s <= 64 << 20)
            .ok_or(FuzzDmaError(DmaErrorKind::OutOfMemory))?;
        let layout = Layout::from_size_align(size, DMA_PAGE)
            .map_err(|_| FuzzDmaError(DmaErrorKind::InvalidRequest))?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })
            .ok_or(FuzzDmaError(DmaErrorKind::OutOfMemory))?;
        let iova = b.next_iova;
        // A guard page between regions, so an overrun is an unmapped access.
        b.next_iova += (size + DMA_PAGE) as u64;
        b.next_cookie += 1;
        let cookie = b.next_cookie;
        b.live.insert(
            iova,
            Live {
                ptr,
                len: size,
                cookie,
            },
        );
        b.allocations += 1;
        Ok(DmaRegion::new(ptr, iova, size, cookie))
    }
    unsafe fn free(&self, region: DmaRegion) {
        let mut b = lock(&self.books);
        let Some(live) = b.live.get(&region.iova()) else {
            panic!(
                "DMA free of {:#x}, which is not a live region (double free or foreign region)",
                region.iova()
            );
        };
        assert!(
            live.ptr == region.ptr() && live.len == region.len() && live.cookie == region.cookie(),
            "DMA free of {:#x} with a region description that does not match the allocation",
            region.iova()
        );
        assert!(
            b.disarmed || !b.device_owned.contains(&region.iova()),
            "DMA region {:#x} freed while the device may still access it",
            region.iova()
        );
        let live = b.live.remove(&region.iova()).expect("checked above");
        b.frees += 1;
        drop(b);
        let layout = Layout::from_size_align(live.len, DMA_PAGE).expect("valid at allocation");
        // SAFETY: allocated by `alloc_zeroed` with this layout and not freed before (it was
        // still in `live`).
        unsafe { dealloc(live.ptr.as_ptr(), layout) };
    }
}

impl Drop for FuzzDma {
    fn drop(&mut self) {
        let b = self.books.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, live) in std::mem::take(&mut b.live) {
            let layout = Layout::from_size_align(live.len, DMA_PAGE).expect("valid");
            // SAFETY: still allocated; the platform (and so every user) is gone.
            unsafe { dealloc(live.ptr.as_ptr(), layout) };
        }
    }
}

/// A BAR that records writes and answers reads from a small register file.
#[derive(Debug, Default)]
pub struct FuzzBar {
    writes: Mutex<Vec<(usize, u32)>>,
    /// What CSTS reads as.
    pub csts: AtomicU64,
}

impl FuzzBar {
    /// Takes the writes recorded since the last call, in order.
    pub fn take_writes(&self) -> Vec<(usize, u32)> {
        std::mem::take(&mut *lock(&self.writes))
    }
}

impl Bar for FuzzBar {
    fn size(&self) -> usize {
        // Room for the doorbells of every queue ID with DSTRD = 0.
        0x1000 + 8 * 65536
    }
    fn read32(&self, offset: usize) -> u32 {
        if offset == nvme_core::spec::regs::offset::CSTS {
            self.csts.load(Ordering::Relaxed) as u32
        } else {
            0
        }
    }
    unsafe fn write32(&self, offset: usize, value: u32) {
        lock(&self.writes).push((offset, value));
    }
}

/// A clock that only moves when the harness says so (and a little on every `relax`, so that
/// no polling loop can spin forever).
#[derive(Debug, Default)]
pub struct FuzzClock {
    now: AtomicU64,
}

impl FuzzClock {
    /// Moves time forward.
    pub fn advance(&self, ns: u64) {
        let now = self.now.load(Ordering::Relaxed);
        self.now.store(now.saturating_add(ns), Ordering::Relaxed);
    }
}

impl Clock for FuzzClock {
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }
    fn relax(&self) {
        self.advance(1_000);
    }
}

/// The platform.
#[derive(Debug, Default)]
pub struct FuzzPlatform {
    /// BAR0.
    pub bar: FuzzBar,
    /// DMA memory.
    pub dma: FuzzDma,
    /// Time.
    pub clock: FuzzClock,
    irq: NoInterrupts,
}

impl FuzzPlatform {
    /// A new platform in an `Arc`, as the core wants it.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

impl Platform for FuzzPlatform {
    type Bar = FuzzBar;
    type Dma = FuzzDma;
    type Irq = NoInterrupts;
    type Clock = FuzzClock;
    fn bar(&self) -> &FuzzBar {
        &self.bar
    }
    fn dma(&self) -> &FuzzDma {
        &self.dma
    }
    fn irq(&self) -> &NoInterrupts {
        &self.irq
    }
    fn clock(&self) -> &FuzzClock {
        &self.clock
    }
    fn name(&self) -> &str {
        "fuzz0"
    }
}

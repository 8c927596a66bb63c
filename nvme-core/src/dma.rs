//! The one audited module that touches DMA memory, and [`DmaBuffer`], the owning, safe handle
//! to a device-visible buffer.
//!
//! # Rules
//! - No Rust reference (`&T`, `&[u8]`) ever points into DMA memory: the device may write it
//!   at any time, which a reference's aliasing guarantees forbid. Every access goes through
//!   raw pointers in the crate-private `Mem` type, bounds- and alignment-checked.
//! - Queue entries are read and written with volatile dword accesses; the completion dwords
//!   that carry the phase tag (2 and 3) are read with an `Acquire` 64-bit atomic load
//!   (`Mem::load_acquire_u64`).
//! - Every access to memory the device may write at the same time (completion dwords 2 and 3,
//!   shadow doorbell pairs, EventIdx) is a 64-bit atomic on an 8-aligned word, so a device
//!   model written against Rust's memory model may hold DMA memory as 64-bit atomic words.
//! - A [`DmaBuffer`] exists only while the host owns the memory: while a command may use it,
//!   the buffer is moved into the queue's request slot, so safe code cannot free or reuse it.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;
use crate::hw::{DmaRegion, Platform};

/// A bounds-checked view of a [`DmaRegion`] for the core's own accesses.
///
/// Holding a `Mem` grants nothing by itself; each owner (queue, buffer) decides who may access
/// which bytes when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mem {
    region: DmaRegion,
}

impl Mem {
    pub(crate) const fn new(region: DmaRegion) -> Self {
        Self { region }
    }
    pub(crate) const fn region(&self) -> DmaRegion {
        self.region
    }
    pub(crate) const fn iova(&self) -> u64 {
        self.region.iova()
    }
    pub(crate) const fn len(&self) -> usize {
        self.region.len()
    }

    /// Pointer to byte `off` if `off + size` fits and `off` is `align`-aligned.
    #[inline(always)]
    fn ptr(&self, off: usize, size: usize, align: usize) -> Option<*mut u8> {
        let end = off.checked_add(size)?;
        if end > self.region.len() || off % align != 0 {
            return None;
        }
        // `wrapping_add` keeps this safe; the bounds check above keeps it in the region.
        Some(self.region.ptr().as_ptr().wrapping_add(off))
    }

    /// Volatile 32-bit read; `None` if out of bounds or misaligned.
    #[cfg_attr(not(feature = "raw-access"), allow(dead_code))]
    pub(crate) fn read_u32(&self, off: usize) -> Option<u32> {
        let p = self.ptr(off, 4, 4)? as *const u32;
        // SAFETY: `p` is in bounds and 4-byte aligned (checked by `ptr`; the region itself is
        // page aligned by the DmaAllocator contract) and valid for reads for as long as the
        // region is allocated, which the owner of this `Mem` guarantees.
        Some(u32::from_le(unsafe { p.read_volatile() }))
    }

    /// Volatile 32-bit write; ignored if out of bounds or misaligned.
    pub(crate) fn write_u32(&self, off: usize, v: u32) {
        if let Some(p) = self.ptr(off, 4, 4) {
            // SAFETY: in bounds, aligned, valid for writes (see `read_u32`).
            unsafe { (p as *mut u32).write_volatile(v.to_le()) }
        }
    }

    /// Volatile writes of `dw.len()` dwords (little-endian) from byte `off`, with one bounds
    /// and alignment check for the whole run (a 64-byte submission entry); nothing is written
    /// if it does not fit.
    #[inline(always)]
    pub(crate) fn write_dwords(&self, off: usize, dw: &[u32; 16]) {
        if let Some(p) = self.ptr(off, 64, 4) {
            #[cfg(target_endian = "big")]
            let dw = &dw.map(u32::to_le);
            // SAFETY: `p .. p + 64` is in bounds and 4-byte aligned (checked by `ptr`), valid
            // for writes (see `read_u32`), and cannot overlap `dw`, which is host memory. A
            // plain copy (four 16-byte stores on x86_64) suffices: the device reads the entry
            // only after the doorbell, and `crate::barrier::before_doorbell` orders every
            // store before it, for the compiler and for the CPU.
            unsafe { core::ptr::copy_nonoverlapping(dw.as_ptr() as *const u8, p, 64) }
        }
    }

    /// Reads the 16-byte completion entry at `off` if its phase tag (bit 16 of dword 3,
    /// NVMe Base §4.2.4) equals `phase`: dword 3 with an `Acquire` load first, then, after
    /// the read barrier of `crate::barrier`, the other three with volatile reads, so they are
    /// at least as new as the phase tag. One bounds check for the entry; `None` if the entry
    /// is not new or does not fit.
    #[inline]
    pub(crate) fn read_entry_after_phase(&self, off: usize, phase: bool) -> Option<[u32; 4]> {
        let p = self.ptr(off, 16, 16)? as *mut u32;
        // SAFETY: `p .. p + 16` is in bounds and 16-byte aligned (checked by `ptr`), valid
        // for the region's lifetime; dwords 2 and 3 form an 8-aligned u64, AtomicU64 has the
        // size and alignment of u64, and the memory is only ever accessed through raw
        // pointers (see `load_acquire_u64`). 64 bits wide, like every access the core makes to
        // DMA memory the device may write at the same time (a device model may then copy
        // data in 64-bit words).
        let hi = u64::from_le(
            unsafe { AtomicU64::from_ptr(p.add(2) as *mut u64) }.load(Ordering::Acquire),
        );
        let dw3 = (hi >> 32) as u32;
        if (dw3 & (1 << 16) != 0) != phase {
            return None;
        }
        crate::barrier::after_phase_check();
        // SAFETY: in bounds, aligned and valid for reads (checked above).
        let (dw0, dw1, dw2) = unsafe {
            (
                u32::from_le(p.read_volatile()),
                u32::from_le(p.add(1).read_volatile()),
                u32::from_le(p.add(2).read_volatile()),
            )
        };
        Some([dw0, dw1, dw2, dw3])
    }

    /// Atomic 64-bit store (`Relaxed`; the caller orders it with fences), for a pair of
    /// shadow doorbells the device may read at any time. Ignored if out of bounds or
    /// misaligned.
    #[inline]
    pub(crate) fn store_u64(&self, off: usize, v: u64) {
        if let Some(p) = self.ptr(off, 8, 8) {
            // SAFETY: in bounds, 8-byte aligned and valid for the region's lifetime; the
            // memory is only ever accessed through raw pointers (see `load_acquire_u64`).
            unsafe { AtomicU64::from_ptr(p as *mut u64) }.store(v.to_le(), Ordering::Relaxed);
        }
    }

    /// Atomic 64-bit load (`Acquire`), for the completion dwords carrying the phase tag and
    /// for EventIdx entries, which the device writes at any time; `None` if out of bounds or
    /// misaligned.
    #[inline]
    pub(crate) fn load_acquire_u64(&self, off: usize) -> Option<u64> {
        let p = self.ptr(off, 8, 8)? as *mut u64;
        // SAFETY: `p` is in bounds, 8-byte aligned and valid for the region's lifetime;
        // AtomicU64 has the same size and alignment as u64. The memory is only ever accessed
        // through raw pointers (never a Rust reference), so an atomic view is sound.
        Some(u64::from_le(
            unsafe { AtomicU64::from_ptr(p) }.load(Ordering::Acquire),
        ))
    }

    /// Volatile 64-bit write as two dwords (PRP list entries).
    pub(crate) fn write_u64(&self, off: usize, v: u64) {
        self.write_u32(off, v as u32);
        self.write_u32(off + 4, (v >> 32) as u32);
    }

    /// Copies `src` into the region at `off`. Returns `false` (and copies nothing) if out of
    /// bounds.
    pub(crate) fn copy_in(&self, off: usize, src: &[u8]) -> bool {
        match self.ptr(off, src.len(), 1) {
            Some(p) => {
                // SAFETY: `p .. p + src.len()` is inside the region (checked), valid for
                // writes, and cannot overlap `src`, which is ordinary host memory.
                unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
                true
            }
            None => false,
        }
    }

    /// Copies from the region at `off` into `dst`. Returns `false` if out of bounds.
    pub(crate) fn copy_out(&self, off: usize, dst: &mut [u8]) -> bool {
        match self.ptr(off, dst.len(), 1) {
            Some(p) => {
                // SAFETY: as in `copy_in`, reading instead of writing.
                unsafe {
                    core::ptr::copy_nonoverlapping(p as *const u8, dst.as_mut_ptr(), dst.len())
                };
                true
            }
            None => false,
        }
    }

    /// Fills `off .. off + len` with `byte`.
    pub(crate) fn fill(&self, off: usize, len: usize, byte: u8) -> bool {
        match self.ptr(off, len, 1) {
            Some(p) => {
                // SAFETY: in bounds and valid for writes (checked).
                unsafe { core::ptr::write_bytes(p, byte, len) };
                true
            }
            None => false,
        }
    }
}

/// Clears every pointer a caller-built command could use to aim the device at memory: PSDT
/// (PRPs only, never SGLs), MPTR, PRP1 and PRP2. The queue then fills the PRPs from the buffer
/// that moves into the request, so the device can only reach memory the request owns.
pub(crate) fn sanitize_pointers(cmd: &mut crate::spec::Command) {
    cmd.set_psdt(0).set_cdw(4, 0).set_cdw(5, 0).set_prps(0, 0);
}

pub(crate) use crate::reclaim::allocate;

/// An owned buffer of device-visible memory.
///
/// The memory is freed when the buffer is dropped. While a command uses it, the buffer is
/// moved into the queue and handed back with the completion, so no safe code can free or
/// touch memory the device may still write. Its contents are reached through copies
/// ([`read`](Self::read), [`write`](Self::write)), never through references into DMA memory.
pub struct DmaBuffer<P: Platform> {
    platform: Arc<P>,
    mem: Mem,
    len: usize,
    /// False once the region was retired (see `crate::reclaim`): then Drop must not free it.
    owned: bool,
}

impl<P: Platform> core::fmt::Debug for DmaBuffer<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaBuffer")
            .field("iova", &format_args!("{:#x}", self.mem.iova()))
            .field("len", &self.len)
            .finish()
    }
}

impl<P: Platform> DmaBuffer<P> {
    /// Allocates a zeroed buffer of `len` bytes (rounded up to the allocator's page size
    /// underneath; [`len`](Self::len) reports `len`).
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// use nvme_core::DmaBuffer;
    /// let buf = DmaBuffer::new(&sim.platform(), 4096)?; // or ctrl.alloc_buffer(4096)
    /// assert!(buf.to_vec().iter().all(|&b| b == 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Dma`] if the allocator fails; [`Error::InvalidArgument`] for `len == 0`.
    pub fn new(platform: &Arc<P>, len: usize) -> Result<Self, Error> {
        if len == 0 {
            return Err(Error::InvalidArgument(
                "a DMA buffer needs at least one byte",
            ));
        }
        let region = allocate(&**platform, len)?;
        if region.len() < len
            || region.iova() % 4096 != 0
            || region.ptr().as_ptr() as usize % 4096 != 0
        {
            // The allocator broke its contract; do not use the region.
            // SAFETY: the region came from this allocator and was never given to the device.
            unsafe { crate::reclaim::free_unreachable(&**platform, region) };
            return Err(Error::Backend(
                "DMA allocator returned a short or misaligned region",
            ));
        }
        Ok(Self {
            platform: platform.clone(),
            mem: Mem::new(region),
            len,
            owned: true,
        })
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True if the length is zero (never, for a constructed buffer).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Bus address of the first byte.
    pub fn iova(&self) -> u64 {
        self.mem.iova()
    }
    /// Copies `dst.len()` bytes starting at `offset` out of the buffer.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// let mut buf = ctrl.alloc_buffer(4096)?;
    /// buf.write(100, b"abc")?;
    /// let mut out = [0u8; 3];
    /// buf.read(100, &mut out)?;
    /// assert_eq!(&out, b"abc");
    /// assert!(buf.read(4095, &mut out).is_err()); // out of bounds: an error, never a panic
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the range is outside the buffer.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), Error> {
        self.check(offset, dst.len())?;
        self.mem.copy_out(offset, dst);
        Ok(())
    }
    /// Copies `src` into the buffer at `offset`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the range is outside the buffer.
    pub fn write(&mut self, offset: usize, src: &[u8]) -> Result<(), Error> {
        self.check(offset, src.len())?;
        self.mem.copy_in(offset, src);
        Ok(())
    }
    /// Fills the whole buffer with `byte`.
    pub fn fill(&mut self, byte: u8) {
        self.mem.fill(0, self.len, byte);
    }
    /// The whole buffer as a vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = alloc::vec![0u8; self.len];
        self.mem.copy_out(0, &mut v);
        v
    }
    fn check(&self, offset: usize, len: usize) -> Result<(), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::InvalidArgument("range outside the DMA buffer")),
        }
    }
    pub(crate) fn mem(&self) -> Mem {
        self.mem
    }
    /// True if the buffer was allocated on `platform` (its IOVA names this memory only in
    /// that platform's address space).
    pub(crate) fn is_on(&self, platform: &Arc<P>) -> bool {
        Arc::ptr_eq(&self.platform, platform)
    }
    /// Gives up ownership of the memory without freeing it (to retire it, see `crate::reclaim`).
    pub(crate) fn into_region(mut self) -> DmaRegion {
        self.owned = false;
        self.mem.region()
    }
}

impl<P: Platform> Drop for DmaBuffer<P> {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // SAFETY: a DmaBuffer is only reachable by safe code while no command uses it: it is
        // moved into a request slot for the duration of a command (see `crate::io`), and slots
        // that may still be in use by the device retire their regions (`crate::reclaim`)
        // instead of dropping the buffer.
        unsafe { crate::reclaim::free_unreachable(&*self.platform, self.mem.region()) }
    }
}

//! The one rule for device-visible memory: it is freed only when the device can no longer
//! reach it. Every free of DMA memory in the core goes through this module.
//!
//! Memory handed to the device (a queue ring, a PRP list, a command's data buffer) may be
//! freed when one of these holds:
//! - it was never handed over: a [`Fresh`] guard frees it on drop until
//!   [`Fresh::hand_over`] is called;
//! - the device confirmed it let go: the command that named it completed, the command that
//!   would have used it was refused, or the queue that used it was deleted (NVMe Base §5.2.3,
//!   §5.2.4: deleting an SQ completes or aborts every command in it) — [`Reclaim::released`];
//! - the controller was disabled since it was handed over (§3.7.2: clearing CC.EN deletes
//!   every I/O queue and aborts every outstanding command) — [`Reclaim::retire`] frees it at
//!   once if the reset generation moved, and [`Reclaim::device_stopped`] frees everything
//!   parked.
//!
//! Anything else is *retired*: parked until the next disable. If the controller can never be
//! disabled (it stopped answering), the memory is leaked rather than freed: a leak is
//! recoverable, a device writing into reused memory is not.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::dma::Mem;
use crate::error::Error;
use crate::hw::{DmaAllocator, DmaRegion, Platform};

/// Frees `region` now.
///
/// # Safety
/// `region` came from `p`'s allocator, was not freed before, and the device can no longer
/// reach it (one of the cases in the module docs).
pub(crate) unsafe fn free_unreachable<P: Platform>(p: &P, region: DmaRegion) {
    // SAFETY: forwarded from this function's contract, which is DmaAllocator::free's.
    unsafe { p.dma().free(region) }
}

/// Allocates a region, mapping the backend's error into [`Error::Dma`].
pub(crate) fn allocate<P: Platform>(p: &P, len: usize) -> Result<DmaRegion, Error> {
    use crate::hw::DmaError;
    p.dma().allocate(len).map_err(|e| Error::Dma {
        kind: e.kind(),
        len,
        source: alloc::boxed::Box::new(e),
    })
}

/// Freshly allocated device-visible memory that the device has not been told about yet: freed
/// on drop (on every early return of a set-up path) until [`Fresh::hand_over`].
pub(crate) struct Fresh<'a, P: Platform> {
    p: &'a P,
    region: Option<DmaRegion>,
}

impl<'a, P: Platform> Fresh<'a, P> {
    /// Allocates `len` zeroed bytes.
    pub(crate) fn allocate(p: &'a P, len: usize) -> Result<Self, Error> {
        Ok(Self {
            p,
            region: Some(allocate(p, len)?),
        })
    }
    /// The memory is about to be named to the device: from now on its owner frees it through
    /// [`Reclaim`].
    pub(crate) fn hand_over(mut self) -> Option<Mem> {
        self.region.take().map(Mem::new)
    }
}

impl<P: Platform> Drop for Fresh<'_, P> {
    fn drop(&mut self) {
        if let Some(r) = self.region.take() {
            // SAFETY: never handed to the device.
            unsafe { free_unreachable(self.p, r) };
        }
    }
}

/// Allocates the regions of `lens` (zero lengths are skipped and give `None`), all or none.
pub(crate) fn allocate_all<P: Platform, const N: usize>(
    p: &P,
    lens: [usize; N],
) -> Result<[Option<Mem>; N], Error> {
    let mut fresh: [Option<Fresh<'_, P>>; N] = [const { None }; N];
    for (slot, len) in fresh.iter_mut().zip(lens) {
        if len > 0 {
            *slot = Some(Fresh::allocate(p, len)?);
        }
    }
    Ok(fresh.map(|f| f.and_then(Fresh::hand_over)))
}

/// The memory of one queue pair: SQ ring (64-byte entries), CQ ring (16-byte entries) and
/// `lists_per_slot` PRP list pages for each of its `entries - 1` slots (none if 0).
pub(crate) fn allocate_rings<P: Platform>(
    p: &P,
    entries: u16,
    lists_per_slot: usize,
) -> Result<(Mem, Mem, Option<Mem>), Error> {
    let n = entries as usize;
    let [sq, cq, lists] = allocate_all(
        p,
        [
            n * crate::spec::SQE_SIZE,
            n * crate::spec::CQE_SIZE,
            n.saturating_sub(1) * lists_per_slot * crate::spec::PAGE_SIZE,
        ],
    )?;
    match (sq, cq) {
        (Some(sq), Some(cq)) => Ok((sq, cq, lists)),
        _ => Err(Error::InvalidArgument("a queue needs at least one entry")),
    }
}

#[derive(Debug, Default)]
struct Graveyard {
    regions: Vec<DmaRegion>,
    /// Set while the controller is disabled: regions retired then are freed immediately.
    disabled: bool,
}

/// The reset generation and the memory waiting for the next disable, shared by a controller
/// and its queue pairs.
#[derive(Debug, Default)]
pub(crate) struct Reclaim {
    /// Moves on every controller disable; memory handed over in an older generation is no
    /// longer reachable by the device.
    generation: AtomicU32,
    graveyard: spin::Mutex<Graveyard>,
}

impl Reclaim {
    /// The current reset generation.
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        // Acquire: pairs with the AcqRel increment in `device_stopped`, so a pair that sees
        // the new generation also sees the disable that preceded it.
        self.generation.load(Ordering::Acquire)
    }

    /// True while the controller is disabled.
    pub(crate) fn is_stopped(&self) -> bool {
        self.graveyard.lock().disabled
    }

    /// The device confirmed it let go of `region` (see the module docs): freed now.
    ///
    /// # Safety
    /// `region` came from `p`'s allocator, was not freed before, and the device confirmed it
    /// no longer refers to it (its queue was deleted, its command completed or was refused).
    pub(crate) unsafe fn released<P: Platform>(&self, p: &P, region: DmaRegion) {
        // SAFETY: forwarded from this function's contract.
        unsafe { free_unreachable(p, region) }
    }

    /// Memory that was handed to the device in reset generation `generation` and whose
    /// release the device never confirmed: freed now if the controller was disabled since,
    /// otherwise parked until the next disable.
    pub(crate) fn retire<P: Platform>(&self, p: &P, region: DmaRegion, generation: u32) {
        let mut g = self.graveyard.lock();
        if g.disabled || generation != self.generation() {
            drop(g);
            // SAFETY: the controller was disabled since the region was handed over, so no
            // queue or command refers to it (§3.7.2).
            unsafe { free_unreachable(p, region) };
        } else {
            g.regions.push(region);
        }
    }

    /// The controller was disabled (CSTS.RDY read 0 after CC.EN was cleared): the generation
    /// moves on and everything parked is freed.
    pub(crate) fn device_stopped<P: Platform>(&self, p: &P) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut g = self.graveyard.lock();
        g.disabled = true;
        for r in g.regions.drain(..) {
            // SAFETY: the controller is disabled; nothing it knew of survives (§3.7.2).
            unsafe { free_unreachable(p, r) };
        }
    }

    /// The controller was enabled again: retired memory waits for the next disable.
    pub(crate) fn device_started(&self) {
        self.graveyard.lock().disabled = false;
    }
}

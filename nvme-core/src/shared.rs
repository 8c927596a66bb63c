//! State shared by a controller and its I/O queue pairs.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::dma::Graveyard;
use crate::hw::{Clock, DmaAllocator, Platform};

/// State shared by the controller and its I/O queue pairs.
pub(crate) struct Shared<P: Platform> {
    pub(crate) platform: Arc<P>,
    pub(crate) dstrd: u8,
    /// Moves on every controller reset/disable; a queue pair from an older generation is dead.
    pub(crate) generation: AtomicU32,
    pub(crate) graveyard: spin::Mutex<Graveyard>,
    pub(crate) io_timeout_ns: u64,
    pub(crate) vectors: core::sync::atomic::AtomicU16,
}

impl<P: Platform> Shared<P> {
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn detached(platform: Arc<P>, io_timeout: core::time::Duration) -> Self {
        Self {
            platform,
            dstrd: 0,
            generation: AtomicU32::new(0),
            graveyard: spin::Mutex::new(Graveyard::default()),
            io_timeout_ns: u64::try_from(io_timeout.as_nanos()).unwrap_or(u64::MAX),
            vectors: core::sync::atomic::AtomicU16::new(0),
        }
    }
    /// Frees `region` now if the device can no longer reach it, otherwise parks it until the
    /// controller is disabled.
    pub(crate) fn retire(&self, region: crate::hw::DmaRegion, generation: u32) {
        let mut g = self.graveyard.lock();
        if g.controller_disabled || generation != self.generation.load(Ordering::Acquire) {
            drop(g);
            // SAFETY: the controller was disabled (or reset) since the region was last given
            // to the device, so no queue or command refers to it any more (§3.7.2: a reset
            // deletes all I/O queues and aborts every command).
            unsafe { self.platform.dma().free(region) };
        } else {
            g.regions.push(region);
        }
    }
    pub(crate) fn now_ns(&self) -> u64 {
        self.platform.clock().now_ns()
    }
}

//! The raw-access door (cargo feature `raw-access`, off by default): safe wrappers for what a
//! conformance suite needs and an application must never do.
//!
//! With this feature, safe code can write any controller register ([`RawRegisters`]) and
//! create queues and write queue entries by hand ([`crate::Controller::create_sq_raw`],
//! [`crate::Controller::raw_sq_write`] and friends). A doorbell written past the entries a
//! caller wrote replays stale entries, whose PRPs name buffers handed back long ago; a CC or
//! ASQ write can hand the controller memory the core will free. So enabling the feature gives
//! up the core's central promise, that no safe code can make the device reach memory safe code
//! owns, for the whole program. It exists for test suites that own the controller under test
//! (the conformance suite, the simulator's own tests), never for production builds.
//!
//! Without the feature, [`crate::hw::Bar`] writes are `unsafe` and the raw queue calls do not
//! exist.

use crate::hw::Bar;

/// Raw register writes through any [`Bar`], for test suites (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct RawRegisters<'a, B: Bar + ?Sized> {
    bar: &'a B,
}

impl<'a, B: Bar + ?Sized> RawRegisters<'a, B> {
    /// Opens the door on `bar`.
    pub fn new(bar: &'a B) -> Self {
        Self { bar }
    }
    /// Size of the BAR in bytes.
    pub fn size(&self) -> usize {
        self.bar.size()
    }
    /// Reads the 32-bit register at `offset`.
    pub fn read32(&self, offset: usize) -> u32 {
        self.bar.read32(offset)
    }
    /// Reads the 64-bit register at `offset`.
    pub fn read64(&self, offset: usize) -> u64 {
        self.bar.read64(offset)
    }
    /// Writes the 32-bit register at `offset`.
    pub fn write32(&self, offset: usize, value: u32) {
        // SAFETY: not guaranteed: this is the documented door of the `raw-access` feature,
        // which a program enables only to test a controller it owns (module docs).
        unsafe { self.bar.write32(offset, value) }
    }
    /// Writes the 64-bit register at `offset`.
    pub fn write64(&self, offset: usize, value: u64) {
        // SAFETY: as in `write32`.
        unsafe { self.bar.write64(offset, value) }
    }
}

//! The hardware boundary: the only way the core reaches registers, DMA memory, interrupts and
//! time.
//!
//! # For driver authors
//! The core is generic over one [`Platform`], which bundles the four capabilities below. A
//! backend (VFIO, the simulator, a mock in a unit test) implements each small trait and hands
//! the core an `Arc` of its platform. Nothing else crosses the boundary.
//!
//! # For backend authors
//! Every trait documents its contract: who owns what, alignment, and memory ordering. The core
//! relies on these contracts for memory safety, so [`DmaAllocator`] is an `unsafe trait`.

use core::fmt;
use core::ptr::NonNull;
use core::time::Duration;

/// BAR0 of an NVMe controller: the register file (NVMe Base §3.1.4) and the doorbells
/// (§3.1.4.x, at `1000h`).
///
/// # Contract
/// - Accesses are at byte offsets from the start of BAR0. The core only issues naturally
///   aligned 32-bit accesses, and 64-bit accesses at the 64-bit registers (CAP, ASQ, ACQ).
/// - Values are host integers: the backend converts from and to the registers' little-endian
///   layout (§3.1.4), so the core is right on a big-endian host too.
/// - Infallible and uncached: every call reaches the device. NVMe registers have no read side
///   effects, so reading is safe and the core may read a register any number of times.
/// - An access outside the BAR, or misaligned, must not be undefined behaviour: a read returns
///   all-ones (what a PCIe read of a missing device returns) and a write is dropped. A backend
///   may log or count it.
/// - A write is ordered after every memory access the calling thread made before the call
///   **only if the caller issued a barrier**; the core issues one before each doorbell write
///   (see [`crate::queue`]). Backends must not reorder two register writes of one thread.
///
/// # Why writes are `unsafe`
/// A register write can start DMA: a doorbell makes the device fetch queue entries and follow
/// the PRPs in them, ASQ/ACQ and CC.EN give it rings to use. A doorbell value past what was
/// written, for instance, replays stale entries whose buffers were handed back to safe code.
/// The core writes registers only for the queues and memory it owns; any other writer takes
/// on that duty. (Conformance tests that need raw writes use the `raw-access` feature's
/// door.)
pub trait Bar: Send + Sync {
    /// Size of the BAR in bytes.
    fn size(&self) -> usize;
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset`.
    ///
    /// # Safety
    /// The write must not make the device access memory the caller does not own for as long
    /// as the device may use it: a doorbell may only publish entries the caller wrote, naming
    /// memory kept alive until their completions are consumed; queue base and controller
    /// configuration writes may only name memory kept alive while the controller is enabled.
    unsafe fn write32(&self, offset: usize, value: u32);
    /// Reads the 64-bit register at `offset`. The default reads the low dword, then the high
    /// one, which the spec allows for CAP, ASQ and ACQ (§3.1.4).
    fn read64(&self, offset: usize) -> u64 {
        let lo = self.read32(offset) as u64;
        let hi = self.read32(offset + 4) as u64;
        lo | (hi << 32)
    }
    /// Writes the 64-bit register at `offset`. The default writes the low dword, then the
    /// high one (§3.1.4 allows two 32-bit writes to ASQ and ACQ).
    ///
    /// # Safety
    /// As [`Bar::write32`].
    unsafe fn write64(&self, offset: usize, value: u64) {
        // SAFETY: the caller's contract covers both halves of the register.
        unsafe {
            self.write32(offset, value as u32);
            self.write32(offset + 4, (value >> 32) as u32);
        }
    }
}

/// What went wrong in a DMA allocation, independent of the backend (embedded-hal style).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DmaErrorKind {
    /// No memory could be had (no hugepages, pinning limit, out of memory).
    OutOfMemory,
    /// No free I/O virtual address range large enough.
    NoIovaSpace,
    /// The IOMMU refused the mapping.
    MapFailed,
    /// The request itself is invalid (zero length, size overflow).
    InvalidRequest,
    /// Anything else.
    Other,
}

/// The error type of a [`DmaAllocator`].
pub trait DmaError: core::error::Error + Send + Sync + 'static {
    /// The backend-independent kind of this error.
    fn kind(&self) -> DmaErrorKind;
}

/// One region of device-visible memory: a CPU pointer and the bus address (IOVA) the device
/// uses for the same bytes.
///
/// A `DmaRegion` is a plain description, not an owner: it is handed out by
/// [`DmaAllocator::allocate`] and must be given back to [`DmaAllocator::free`] of the same
/// allocator. The core wraps it in owning types ([`crate::dma::DmaBuffer`]) that do that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaRegion {
    ptr: NonNull<u8>,
    iova: u64,
    len: usize,
    cookie: u64,
}

// SAFETY: a DmaRegion is only an address range description; access to the memory is governed
// by the owning types in `crate::dma`, which are themselves Send.
unsafe impl Send for DmaRegion {}
// SAFETY: as above: shared references to the description grant no access to the memory.
unsafe impl Sync for DmaRegion {}

impl DmaRegion {
    /// Describes a region. `cookie` is the backend's own tag (an index, a mapping id), given
    /// back unchanged in [`DmaAllocator::free`].
    pub const fn new(ptr: NonNull<u8>, iova: u64, len: usize, cookie: u64) -> Self {
        Self {
            ptr,
            iova,
            len,
            cookie,
        }
    }
    /// CPU address of the first byte.
    pub const fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }
    /// Bus address (IOVA) of the first byte, as the device sees it.
    pub const fn iova(&self) -> u64 {
        self.iova
    }
    /// Length in bytes.
    pub const fn len(&self) -> usize {
        self.len
    }
    /// True if the region has no bytes (never true for a region from an allocator).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The backend's tag.
    pub const fn cookie(&self) -> u64 {
        self.cookie
    }
}

/// Hands out memory the device can read and write.
///
/// # Safety
/// For backend authors:
/// An implementation must guarantee, for every region returned by [`allocate`](Self::allocate)
/// until it is passed to [`free`](Self::free):
/// - `ptr` is valid for reads and writes of `len` bytes through raw pointers, by any thread,
///   and no other allocation overlaps it;
/// - `ptr` and `iova` are both aligned to [`page_size`](Self::page_size), `len` is a non-zero
///   multiple of it and at least the requested length;
/// - the device sees the same bytes at `iova .. iova + len` (coherent DMA: no cache
///   maintenance is needed on the supported targets; a non-coherent platform must map it
///   uncached);
/// - the memory is zeroed when handed out;
/// - no region contains bus address 0: the core sends commands without a data buffer with
///   PRP1 = PRP2 = 0, which must name nothing the device could reach.
///
/// The core, for its part, never creates a Rust reference into a region; it reads and writes
/// through raw pointers (see [`crate::dma`]) and frees a region only once the device can no
/// longer access it.
pub unsafe trait DmaAllocator: Send + Sync {
    /// Why an allocation failed.
    type Error: DmaError;
    /// The allocation granule and alignment: at least 4096 and a power of two. The core sets
    /// CC.MPS to 4 KiB, so PRP entries never need more than 4 KiB alignment.
    fn page_size(&self) -> usize;
    /// Allocates at least `len` zeroed bytes of device-visible memory.
    ///
    /// # Errors
    /// Out of memory, out of IOVA space, or a refused IOMMU mapping.
    fn allocate(&self, len: usize) -> Result<DmaRegion, Self::Error>;
    /// Frees a region.
    ///
    /// # Safety
    /// `region` came from this allocator's `allocate`, was not freed before, and the device can
    /// no longer access it (no outstanding command or queue refers to it, or the controller was
    /// reset since).
    unsafe fn free(&self, region: DmaRegion);
}

/// The error of an [`InterruptSource`].
pub trait InterruptError: core::error::Error + Send + Sync + 'static {}

/// MSI-X vectors of the controller (NVMe over PCIe uses one vector per completion queue, or
/// shares them; vector 0 serves the admin queue).
///
/// # Contract
/// - A vector fires after the device has written the completion entries it signals; a
///   backend's `wait`/`poll` returning `true` is an Acquire point: entries written before the
///   interrupt are visible after it.
/// - Interrupts are edge-like events: each `poll` or `wait` consumes what is pending.
/// - Polled mode needs no interrupts at all; [`NoInterrupts`] implements it.
pub trait InterruptSource: Send + Sync {
    /// Why enabling vectors failed.
    type Error: InterruptError;
    /// How many vectors the device offers (0 for none).
    fn max_vectors(&self) -> u16;
    /// Enables vectors `0 .. count` and routes them to this source. Returns how many were
    /// enabled (at most `count`, at most [`max_vectors`](Self::max_vectors)).
    ///
    /// # Errors
    /// The platform refused (no eventfds, the ioctl failed).
    fn enable(&self, count: u16) -> Result<u16, Self::Error>;
    /// Disables all vectors. Idempotent.
    fn disable(&self);
    /// How many vectors are enabled now.
    fn enabled(&self) -> u16;
    /// Consumes a pending interrupt on `vector` without blocking; `true` if one was pending.
    fn poll(&self, vector: u16) -> bool;
    /// Blocks until `vector` fires or `timeout` passes; `true` if it fired. An unknown or
    /// disabled vector returns `false` after at most `timeout`.
    fn wait(&self, vector: u16, timeout: Duration) -> bool;
    /// What the backend counted since it was created, over all vectors, or `None` if it
    /// counts nothing (the default). For benchmarks: interrupts per I/O (see
    /// [`crate::interrupts`]).
    fn counts(&self) -> Option<InterruptCounts> {
        None
    }
}

/// Interrupt counters of an [`InterruptSource`] ([`InterruptSource::counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterruptCounts {
    /// Interrupts the device signalled (with VFIO: the sum of the eventfd counter values
    /// read; one read can cover several interrupts that fired while nobody was waiting).
    pub fired: u64,
    /// `poll` or `wait` calls that found an interrupt pending: the wake-ups a waiter paid.
    pub wakeups: u64,
}

impl InterruptCounts {
    /// The counts since `earlier` (a reading of the same source).
    pub const fn since(self, earlier: Self) -> Self {
        Self {
            fired: self.fired.saturating_sub(earlier.fired),
            wakeups: self.wakeups.saturating_sub(earlier.wakeups),
        }
    }
}

/// A monotonic clock, so that every wait has a deadline in a `no_std` core.
pub trait Clock: Send + Sync {
    /// Nanoseconds since an arbitrary, fixed epoch. Never goes backwards.
    fn now_ns(&self) -> u64;
    /// Called on every iteration of a polling loop. The default spins; a hosted backend may
    /// yield or sleep briefly. It must return.
    fn relax(&self) {
        core::hint::spin_loop();
    }
}

/// The whole platform the core runs on: one value per controller, shared by the controller
/// and all of its queue pairs through an `Arc`.
pub trait Platform: Send + Sync + 'static {
    /// Register access.
    type Bar: Bar;
    /// DMA memory.
    type Dma: DmaAllocator;
    /// MSI-X vectors.
    type Irq: InterruptSource;
    /// Time.
    type Clock: Clock;
    /// BAR0.
    fn bar(&self) -> &Self::Bar;
    /// The DMA allocator.
    fn dma(&self) -> &Self::Dma;
    /// The interrupt source.
    fn irq(&self) -> &Self::Irq;
    /// The clock.
    fn clock(&self) -> &Self::Clock;
    /// A human-readable name of the device (`"0000:03:00.0"`, `"sim0"`), for error messages.
    fn name(&self) -> &str;
}

/// An [`InterruptSource`] with no vectors: polled mode.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoInterrupts;

/// The error of [`NoInterrupts`] (never returned).
#[derive(Debug, Clone, Copy)]
pub struct NoInterruptsError;

impl fmt::Display for NoInterruptsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupts are not available")
    }
}
impl core::error::Error for NoInterruptsError {}
impl InterruptError for NoInterruptsError {}

impl InterruptSource for NoInterrupts {
    type Error = NoInterruptsError;
    fn max_vectors(&self) -> u16 {
        0
    }
    fn enable(&self, _count: u16) -> Result<u16, Self::Error> {
        Ok(0)
    }
    fn disable(&self) {}
    fn enabled(&self) -> u16 {
        0
    }
    fn poll(&self, _vector: u16) -> bool {
        false
    }
    fn wait(&self, _vector: u16, _timeout: Duration) -> bool {
        false
    }
}

/// A deadline on a [`Clock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at_ns: u64,
}

impl Deadline {
    /// `timeout` from now.
    pub fn after<C: Clock + ?Sized>(clock: &C, timeout: Duration) -> Self {
        let ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        Self {
            at_ns: clock.now_ns().saturating_add(ns),
        }
    }
    /// True once the deadline has passed.
    pub fn expired<C: Clock + ?Sized>(&self, clock: &C) -> bool {
        clock.now_ns() >= self.at_ns
    }
    /// Time left, zero once expired.
    pub fn remaining<C: Clock + ?Sized>(&self, clock: &C) -> Duration {
        self.remaining_at(clock.now_ns())
    }
    /// True once the deadline has passed at `now_ns`, a reading of the clock the deadline
    /// was set with (for a loop that reads the clock once per turn).
    pub fn expired_at(&self, now_ns: u64) -> bool {
        now_ns >= self.at_ns
    }
    /// Time left at `now_ns`, zero once expired.
    pub fn remaining_at(&self, now_ns: u64) -> Duration {
        Duration::from_nanos(self.at_ns.saturating_sub(now_ns))
    }
}

//! A `#![no_std]` binary that links nvme-core with its own panic handler and allocator.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::sync::Arc;
use core::alloc::{GlobalAlloc, Layout};
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};
use core::time::Duration;

use nvme_core::hw::{Bar, Clock, DmaAllocator, DmaError, DmaErrorKind, DmaRegion, NoInterrupts, Platform};
use nvme_core::spec::{Completion, IdentifyController};
use nvme_core::{Controller, ControllerConfig};

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// The precompiled `core` and `alloc` of the host target were built for unwinding and refer
/// to this symbol; with `panic = "abort"` it is never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// A bump allocator over a static arena: enough for linking, never freed.
struct Bump;
static mut ARENA: [u8; 1 << 20] = [0; 1 << 20];
static NEXT: AtomicUsize = AtomicUsize::new(0);

// SAFETY: hands out disjoint, aligned slices of ARENA and never reuses them.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = core::ptr::addr_of_mut!(ARENA) as *mut u8 as usize;
        let mut cur = NEXT.load(Ordering::Relaxed);
        loop {
            let start = (base + cur).next_multiple_of(layout.align()) - base;
            let end = start + layout.size();
            if end > 1 << 20 {
                return core::ptr::null_mut();
            }
            match NEXT.compare_exchange(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return (base + start) as *mut u8,
                Err(c) => cur = c,
            }
        }
    }
    unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
}

#[global_allocator]
static ALLOC: Bump = Bump;

struct DeadBar;
impl Bar for DeadBar {
    fn size(&self) -> usize {
        0x4000
    }
    fn read32(&self, _: usize) -> u32 {
        u32::MAX
    }
    unsafe fn write32(&self, _: usize, _: u32) {}
}

#[derive(Debug)]
struct NoMem;
impl fmt::Display for NoMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no memory")
    }
}
impl core::error::Error for NoMem {}
impl DmaError for NoMem {
    fn kind(&self) -> DmaErrorKind {
        DmaErrorKind::OutOfMemory
    }
}

struct NoDma;
// SAFETY: never hands out a region.
unsafe impl DmaAllocator for NoDma {
    type Error = NoMem;
    fn page_size(&self) -> usize {
        4096
    }
    fn allocate(&self, _: usize) -> Result<DmaRegion, NoMem> {
        Err(NoMem)
    }
    unsafe fn free(&self, _: DmaRegion) {}
}

struct Ticks(AtomicUsize);
impl Clock for Ticks {
    fn now_ns(&self) -> u64 {
        self.0.fetch_add(1000, Ordering::Relaxed) as u64
    }
}

struct P {
    bar: DeadBar,
    dma: NoDma,
    irq: NoInterrupts,
    clock: Ticks,
}
impl Platform for P {
    type Bar = DeadBar;
    type Dma = NoDma;
    type Irq = NoInterrupts;
    type Clock = Ticks;
    fn bar(&self) -> &DeadBar {
        &self.bar
    }
    fn dma(&self) -> &NoDma {
        &self.dma
    }
    fn irq(&self) -> &NoInterrupts {
        &self.irq
    }
    fn clock(&self) -> &Ticks {
        &self.clock
    }
    fn name(&self) -> &str {
        "nostd"
    }
}

/// Entry point: instantiate the whole driver so all of it is compiled and linked.
#[no_mangle]
pub extern "C" fn _start() -> ! {
    let p = Arc::new(P { bar: DeadBar, dma: NoDma, irq: NoInterrupts, clock: Ticks(AtomicUsize::new(0)) });
    let cfg = ControllerConfig { admin_timeout: Duration::from_millis(1), ..ControllerConfig::default() };
    let r = Controller::new(p, cfg);
    core::hint::black_box(&r);
    let c = Completion::from_le_bytes(&core::hint::black_box([0u8; 16]));
    core::hint::black_box(c.status().name());
    let _ = core::hint::black_box(IdentifyController::parse(&[0u8; 4096]).map(|i| i.mdts));
    loop {
        core::hint::spin_loop();
    }
}

//! A minimal end-to-end check of the VFIO backend on a real (or QEMU-emulated) controller:
//! admin queues in DMA memory, controller enable, one Identify Controller command, its
//! completion by MSI-X vector 0 (or by polling with `--polled`), then teardown.
//!
//! ```text
//! vfio-smoke 0000:00:04.0 [--polled]
//! ```
//! Without an address, `NVME_VFIO_ADDR` is used. Prints `VFIO-SMOKE PASS` or
//! `VFIO-SMOKE FAIL: reason`.

use std::process::ExitCode;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use nvme_core::hw::{Bar, DmaAllocator, DmaRegion, InterruptSource, Platform};
use nvme_core::spec::regs::{cq_head_doorbell, offset, sq_tail_doorbell, Aqa, Cap, Cc, Csts};
use vfio_backend::{IrqMode, VfioOptions, VfioPlatform};

const QDEPTH: u16 = 16;

fn write_u32(r: &DmaRegion, byte: usize, v: u32) {
    assert!(byte + 4 <= r.len() && byte % 4 == 0);
    // SAFETY: in bounds and aligned inside a live DMA region we own; volatile, no reference.
    unsafe {
        r.ptr()
            .as_ptr()
            .add(byte)
            .cast::<u32>()
            .write_volatile(v.to_le())
    }
}

fn read_u32(r: &DmaRegion, byte: usize) -> u32 {
    assert!(byte + 4 <= r.len() && byte % 4 == 0);
    // SAFETY: as in `write_u32`; the device may write this memory, so volatile only.
    u32::from_le(unsafe { r.ptr().as_ptr().add(byte).cast::<u32>().read_volatile() })
}

fn run(addr: &str, opts: &VfioOptions) -> Result<String, String> {
    let p = VfioPlatform::open(addr, opts).map_err(|e| e.to_string())?;
    let (bar, dma, irq) = (p.bar(), p.dma(), p.irq());
    let cap = Cap(bar.read64(offset::CAP));
    let dstrd = cap.dstrd();
    let vectors = irq.enable(1).map_err(|e| e.to_string())?;
    let asq = dma
        .allocate(64 * QDEPTH as usize)
        .map_err(|e| e.to_string())?;
    let acq = dma
        .allocate(16 * QDEPTH as usize)
        .map_err(|e| e.to_string())?;
    let data = dma.allocate(4096).map_err(|e| e.to_string())?;
    // SAFETY: the admin rings stay allocated until the controller is disabled below.
    unsafe {
        bar.write32(offset::AQA, Aqa::new(QDEPTH - 1, QDEPTH - 1).0);
        bar.write64(offset::ASQ, asq.iova());
        bar.write64(offset::ACQ, acq.iova());
    }
    let cc = Cc(0)
        .with_iosqes(6)
        .with_iocqes(4)
        .with_mps(0)
        .with_en(true);
    // SAFETY: enabling hands the controller the rings above (zeroed, kept alive).
    unsafe { bar.write32(offset::CC, cc.0) };
    let deadline = Instant::now() + Duration::from_millis(cap.timeout_ms().max(500));
    loop {
        let s = Csts(bar.read32(offset::CSTS));
        if s.is_all_ones() || s.cfs() {
            return Err(format!("CSTS {:#x} after enable", s.0));
        }
        if s.rdy() {
            break;
        }
        if Instant::now() > deadline {
            return Err("CSTS.RDY did not become 1 within CAP.TO".into());
        }
        std::thread::yield_now();
    }
    // Identify Controller (NVMe Base §5.1.13): opcode 06h, CID 0x1234, PRP1, CNS = 01h.
    write_u32(&asq, 0, 0x06 | (0x1234 << 16));
    write_u32(&asq, 24, data.iova() as u32);
    write_u32(&asq, 28, (data.iova() >> 32) as u32);
    write_u32(&asq, 40, 1);
    // Release: the SQE is in memory before the doorbell write makes the device fetch it.
    fence(Ordering::Release);
    // SAFETY: publishes the one entry written above, whose data page lives until teardown.
    unsafe { bar.write32(sq_tail_doorbell(0, dstrd), 1) };
    let t0 = Instant::now();
    let mut by_irq = false;
    loop {
        if vectors > 0 && irq.wait(0, Duration::from_millis(100)) {
            by_irq = true;
        }
        let dw3 = read_u32(&acq, 12);
        if dw3 >> 16 & 1 == 1 {
            // Acquire: the phase bit is seen before the rest of the entry and the data.
            fence(Ordering::Acquire);
            let status = (dw3 >> 17) & 0x7fff;
            let cid = dw3 & 0xffff;
            if status != 0 || cid != 0x1234 {
                return Err(format!("completion status {status:#x} cid {cid:#x}"));
            }
            break;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return Err("no completion within 10 s".into());
        }
        if vectors == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // SAFETY: hands back the consumed completion entry; names no memory.
    unsafe { bar.write32(cq_head_doorbell(0, dstrd), 1) };
    let vid = read_u32(&data, 0) & 0xffff;
    let mut model = Vec::new();
    for i in (24..64).step_by(4) {
        model.extend_from_slice(&read_u32(&data, i).to_le_bytes());
    }
    let model = String::from_utf8_lossy(&model).trim().to_string();
    // Disable before freeing the memory the controller knows about.
    // SAFETY: disabling stops all device access.
    unsafe { bar.write32(offset::CC, 0) };
    let deadline = Instant::now() + Duration::from_millis(cap.timeout_ms().max(500));
    while Csts(bar.read32(offset::CSTS)).rdy() && Instant::now() < deadline {
        std::thread::yield_now();
    }
    // SAFETY: the controller is disabled (CC.EN = 0, RDY = 0): it no longer accesses these.
    unsafe {
        dma.free(asq);
        dma.free(acq);
        dma.free(data);
    }
    let stats = dma.stats();
    Ok(format!(
        "vid {vid:#06x} model {model:?}, completion by {}, msix vectors {vectors}, {stats:?}",
        if by_irq { "MSI-X" } else { "polling" }
    ))
}

fn main() -> ExitCode {
    let mut opts = VfioOptions::default();
    let mut addr = std::env::var("NVME_VFIO_ADDR").ok();
    for a in std::env::args().skip(1) {
        if a == "--polled" {
            opts.interrupts = IrqMode::Polled;
        } else {
            addr = Some(a);
        }
    }
    let Some(addr) = addr else {
        eprintln!("usage: vfio-smoke ADDR [--polled] (or NVME_VFIO_ADDR)");
        return ExitCode::from(2);
    };
    match run(&addr, &opts) {
        Ok(s) => {
            println!("VFIO-SMOKE PASS: {s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("VFIO-SMOKE FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}

//! Opens an NVMe controller bound to vfio-pci, prints what VFIO and the controller report,
//! and tears everything down again. For diagnosis (also inside the QEMU guest).
//!
//! ```text
//! vfio-info 0000:00:04.0 [--polled] [--no-hugepages | --require-hugepages]
//! ```
//! Without an address, `NVME_VFIO_ADDR` is used.

use std::process::ExitCode;

use nvme_core::hw::{Bar, DmaAllocator, InterruptSource, Platform};
use nvme_core::spec::regs::{offset, Cap, Cc, Csts, Vs};
use vfio_backend::iommu::usable_iova_ranges;
use vfio_backend::{HugePagePolicy, IrqMode, VfioOptions, VfioPlatform};

const REGION_NAMES: [&str; 9] = [
    "BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA",
];
const IRQ_NAMES: [&str; 5] = ["INTx", "MSI", "MSI-X", "ERR", "REQ"];

fn main() -> ExitCode {
    let mut opts = VfioOptions::default();
    let mut addr = std::env::var("NVME_VFIO_ADDR").ok();
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--polled" => opts.interrupts = IrqMode::Polled,
            "--no-hugepages" => opts.hugepages = HugePagePolicy::Never,
            "--require-hugepages" => opts.hugepages = HugePagePolicy::Require,
            "-h" | "--help" => {
                println!("usage: vfio-info ADDR [--polled] [--no-hugepages | --require-hugepages]");
                return ExitCode::SUCCESS;
            }
            _ => addr = Some(a),
        }
    }
    let Some(addr) = addr else {
        eprintln!("usage: vfio-info ADDR (e.g. 0000:00:04.0), or set NVME_VFIO_ADDR");
        return ExitCode::from(2);
    };
    let p = match VfioPlatform::open(&addr, &opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vfio-info: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = p.report();
    println!("device      {}", p.name());
    println!(
        "id          {:04x}:{:04x} class {:#08x} driver {}",
        r.vendor.unwrap_or(0),
        r.device.unwrap_or(0),
        r.class,
        r.driver.as_deref().unwrap_or("-")
    );
    println!("iommu group {}", p.iommu_group());
    for m in &r.group_members {
        println!("  member    {m}");
    }
    println!("flags       {:#x}", p.device_flags());
    for reg in p.regions() {
        if reg.size == 0 {
            continue;
        }
        let name = REGION_NAMES.get(reg.index as usize).unwrap_or(&"?");
        println!(
            "region {} {:<6} size {:#x} offset {:#x} flags {:#x}",
            reg.index, name, reg.size, reg.offset, reg.flags
        );
    }
    for irq in p.irq_infos() {
        let name = IRQ_NAMES.get(irq.index as usize).unwrap_or(&"?");
        println!(
            "irq {} {:<5} count {} flags {:#x}",
            irq.index, name, irq.count, irq.flags
        );
    }
    let info = p.iommu_info();
    println!("iommu pgsizes {:#x}", info.pgsizes);
    match &info.iova_ranges {
        Some(v) => {
            for (s, e) in v {
                println!("iova range (kernel) {s:#x}-{e:#x}");
            }
        }
        None => println!("iova range (kernel) none reported: conservative default in use"),
    }
    let (usable, _) = usable_iova_ranges(info, &r.reserved_regions, p.dma().page_size() as u64);
    for (s, e) in usable {
        println!("iova range (used)   {s:#x}-{e:#x}");
    }
    let bar = p.bar();
    let cap = Cap(bar.read64(offset::CAP));
    let vs = Vs(bar.read32(offset::VS));
    let csts = Csts(bar.read32(offset::CSTS));
    let cc = Cc(bar.read32(offset::CC));
    println!(
        "CAP  {:#018x} (MQES {} entries, TO {} ms, DSTRD {}, CSS {:#x}, MPSMIN {}, MPSMAX {})",
        cap.0,
        cap.mqes_z() as u32 + 1,
        cap.timeout_ms(),
        cap.dstrd(),
        cap.css(),
        cap.mpsmin(),
        cap.mpsmax()
    );
    println!("VS   {:#010x} (NVMe {vs})", vs.0);
    println!("CC   {:#010x} (EN {})", cc.0, cc.en() as u8);
    println!(
        "CSTS {:#010x} (RDY {}, CFS {}, SHST {})",
        csts.0,
        csts.rdy() as u8,
        csts.cfs() as u8,
        csts.shst()
    );
    println!("msix vectors offered {}", p.irq().max_vectors());
    // One DMA allocation round trip.
    match p.dma().allocate(4096) {
        Ok(region) => {
            println!(
                "dma  4 KiB at iova {:#x} (granule {:#x}, {:?})",
                region.iova(),
                p.dma().page_size(),
                p.dma().stats()
            );
            // SAFETY: the region came from this allocator, is freed once, and the device was
            // never told about it.
            unsafe { p.dma().free(region) };
        }
        Err(e) => println!("dma  allocation failed: {e}"),
    }
    println!("bar bad accesses {}", bar.bad_accesses());
    drop(p);
    println!("teardown done");
    ExitCode::SUCCESS
}

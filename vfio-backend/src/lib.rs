//! # vfio-backend
//!
//! The hardware traits of [`nvme_core::hw`] on Linux VFIO, for an NVMe SSD bound to
//! `vfio-pci`:
//!
//! - [`VfioPlatform::open`] checks the device in sysfs, then sets up the VFIO container, group
//!   and device (linux/vfio.h; Documentation/driver-api/vfio.rst);
//! - [`VfioBar`] is BAR0 mmapped, reached only through bounds- and alignment-checked volatile
//!   accesses ([`nvme_core::hw::Bar`]);
//! - [`VfioDma`] hands out zeroed memory mapped through the type1 IOMMU at IOVAs inside the
//!   usable ranges the kernel reports, carved out of 2 MiB hugepages when there are some
//!   ([`nvme_core::hw::DmaAllocator`]);
//! - [`VfioIrq`] routes MSI-X vectors to eventfds ([`nvme_core::hw::InterruptSource`]), or
//!   offers none in polled mode;
//! - [`MonotonicClock`] gives the core its deadlines ([`nvme_core::hw::Clock`]).
//!
//! ```no_run
//! use vfio_backend::{VfioOptions, VfioPlatform};
//! use nvme_core::hw::{Bar, Platform};
//!
//! let platform = VfioPlatform::open("0000:03:00.0", &VfioOptions::default())?;
//! let vs = platform.bar().read32(nvme_core::spec::regs::offset::VS);
//! println!("{}: NVMe {}", platform.name(), nvme_core::spec::regs::Vs(vs));
//! # Ok::<(), vfio_backend::VfioError>(())
//! ```
//!
//! Every failure is a [`VfioError`] whose message names the device and says how to fix it
//! (bind to vfio-pci, enable the IOMMU, reserve hugepages, raise the locked-memory limit, ...).
//!
//! Architecture-neutral: nothing here is x86-specific (VT-d, AMD-Vi and ARM SMMU all go
//! through type1); ordering uses `std::sync::atomic::fence`.
//!
//! ## Unsafe code
//! The system calls live in one private module (`sys`), each `unsafe` block with its own
//! `// SAFETY:` comment. Besides it, only the volatile MMIO helper of [`VfioBar`] and the
//! zeroing of fresh DMA memory in [`VfioDma`] use `unsafe`.

#![warn(missing_docs)]

use std::path::PathBuf;

pub mod addr;
pub mod bar;
pub mod clock;
pub mod config;
pub mod dma;
pub mod error;
pub mod iommu;
pub mod irq;
pub mod platform;
mod range;
mod sys;
pub mod sysfs;

pub use addr::PciAddress;
pub use bar::VfioBar;
pub use clock::MonotonicClock;
pub use dma::{DmaStats, VfioDma};
pub use error::{PciFunction, VfioError};
pub use irq::VfioIrq;
pub use platform::{disable_controller, DisableOutcome, IrqInfo, RegionInfo, VfioPlatform};

/// Whether DMA memory comes from 2 MiB hugepages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HugePagePolicy {
    /// Use hugepages if the kernel has some reserved; otherwise fall back to 4 KiB pages and
    /// say so once in a warning (`log` crate).
    #[default]
    Auto,
    /// Never use hugepages.
    Never,
    /// Fail to open (with instructions) if no hugepage can be had.
    Require,
}

/// How the controller signals completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IrqMode {
    /// No interrupts: the core polls the completion queues. Nothing is enabled.
    Polled,
    /// MSI-X through eventfds, as many vectors as the core asks for (up to what the device
    /// offers).
    #[default]
    Msix,
}

/// How [`VfioPlatform::open`] finds and sets up the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioOptions {
    /// Where sysfs is mounted (`/sys`). Tests point this at a fake tree.
    pub sysfs_root: PathBuf,
    /// The VFIO device directory (`/dev/vfio`, holding `vfio` and one node per group).
    pub dev_vfio: PathBuf,
    /// Hugepage use for DMA memory.
    pub hugepages: HugePagePolicy,
    /// Interrupt mode.
    pub interrupts: IrqMode,
}

impl Default for VfioOptions {
    fn default() -> Self {
        Self {
            sysfs_root: PathBuf::from("/sys"),
            dev_vfio: PathBuf::from("/dev/vfio"),
            hugepages: HugePagePolicy::Auto,
            interrupts: IrqMode::Msix,
        }
    }
}

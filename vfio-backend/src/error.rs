//! [`VfioError`]: every message names the device and says how to fix the problem.

use std::fmt::{self, Write as _};
use std::io;
use std::path::PathBuf;

use nvme_core::hw::{DmaError, DmaErrorKind, InterruptError};

/// A PCI function and the driver bound to it, as sysfs shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    /// The address, `DDDD:BB:DD.F`.
    pub addr: String,
    /// The bound driver (`driver` symlink), `None` if unbound.
    pub driver: Option<String>,
}

impl fmt::Display for PciFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.driver {
            Some(d) => write!(f, "{} (driver: {d})", self.addr),
            None => write!(f, "{} (no driver)", self.addr),
        }
    }
}

/// The commands that hand a device to vfio-pci (the kernel's driver_override interface,
/// Documentation/ABI/testing/sysfs-bus-pci).
fn rebind_commands(sysfs: &str, addr: &str, unbind: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "    modprobe vfio-pci");
    if unbind {
        let _ = writeln!(
            s,
            "    echo {addr} > {sysfs}/bus/pci/devices/{addr}/driver/unbind"
        );
    }
    let _ = writeln!(
        s,
        "    echo vfio-pci > {sysfs}/bus/pci/devices/{addr}/driver_override"
    );
    let _ = writeln!(s, "    echo {addr} > {sysfs}/bus/pci/drivers_probe");
    let _ = write!(
        s,
        "  or, with driverctl (persistent across reboots): driverctl set-override {addr} vfio-pci"
    );
    s
}

fn nvme_warning(driver: &str) -> &'static str {
    if driver == "nvme" {
        " WARNING: unbinding `nvme` removes its block devices (/dev/nvme*): unmount everything \
         on it first and make sure it is not the disk this system runs from."
    } else {
        ""
    }
}

fn list_functions(v: &[PciFunction]) -> String {
    if v.is_empty() {
        return "    (none)".to_string();
    }
    v.iter()
        .map(|m| format!("    {m}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Why opening or using a VFIO device failed. Every variant names the device (PCI address)
/// and its message ends with what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VfioError {
    /// The PCI address is not of the form `DDDD:BB:DD.F` / `BB:DD.F`.
    #[error(
        "`{given}` is not a PCI address ({reason}): expected DDDD:BB:DD.F (domain:bus:device.function \
         in hex, as in /sys/bus/pci/devices, e.g. 0000:03:00.0) or BB:DD.F for domain 0000; \
         `lspci -D -d ::0108` lists NVMe controllers"
    )]
    MalformedAddress {
        /// What was given.
        given: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// No such PCI device in sysfs.
    #[error(
        "{addr}: no such PCI device ({sysfs}/bus/pci/devices/{addr} does not exist). \
         NVMe controllers (class 0x010802) on this machine:\n{}\n  \
         check the address with `lspci -D -d ::0108`",
        list_functions(.nvme_devices)
    )]
    NoSuchDevice {
        /// The address asked for.
        addr: String,
        /// The sysfs root that was searched.
        sysfs: String,
        /// The NVMe-class functions that do exist.
        nvme_devices: Vec<PciFunction>,
    },

    /// The device is not an NVMe controller.
    #[error(
        "{addr}: not an NVMe controller: PCI class {class:#08x}, expected 0x010802 (mass storage / \
         non-volatile memory / NVM Express, PCI Code and ID Assignment §1.2); check the address \
         with `lspci -D -d ::0108`"
    )]
    NotNvme {
        /// The device.
        addr: String,
        /// Its class code (`class` in sysfs).
        class: u32,
    },

    /// The device is bound to a driver other than vfio-pci.
    #[error(
        "{addr}: bound to the `{driver}` driver, not vfio-pci; userspace can drive it only through \
         vfio-pci.{warning}\n  To hand it to vfio-pci, as root:\n{}",
        rebind_commands(.sysfs, .addr, true),
        warning = nvme_warning(.driver)
    )]
    BoundToDriver {
        /// The device.
        addr: String,
        /// The driver it is bound to.
        driver: String,
        /// The sysfs root (for the commands).
        sysfs: String,
    },

    /// The device is bound to no driver at all.
    #[error(
        "{addr}: not bound to any driver; it must be bound to vfio-pci. As root:\n{}",
        rebind_commands(.sysfs, .addr, false)
    )]
    NotBound {
        /// The device.
        addr: String,
        /// The sysfs root (for the commands).
        sysfs: String,
    },

    /// The device has no IOMMU group: no IOMMU is active, so vfio-pci cannot take it (its
    /// probe fails with EINVAL), whatever driver the device is bound to.
    #[error(
        "{addr}: no IOMMU: the device has no IOMMU group ({path} is missing), so vfio-pci cannot \
         take it (its probe fails: `dmesg | grep vfio-pci` shows \"failed with error -22\") and \
         binding it again will not help. Enable the IOMMU: the SMMU (Arm) or VT-d / AMD-Vi in \
         the firmware, and on x86 `intel_iommu=on` on the kernel command line (AMD: on by \
         default); `dmesg | grep -i -e DMAR -e IOMMU -e SMMU` shows whether one came up. \
         `iommu.passthrough=1` does not help here: it only selects identity mappings on an IOMMU \
         that exists. VFIO's no-IOMMU mode (a kernel built with CONFIG_VFIO_NOIOMMU and \
         `vfio.enable_unsafe_noiommu_mode=1`; not in Debian's kernels) lets the device DMA \
         anywhere in memory, unchecked, and taints the kernel; this driver does not use it"
    )]
    NoIommuGroup {
        /// The device.
        addr: String,
        /// The missing `iommu_group` link.
        path: PathBuf,
    },

    /// Another member of the IOMMU group is bound to a host driver.
    #[error(
        "{addr}: IOMMU group {group} is not viable: every device in a group must be bound to \
         vfio-pci (or pci-stub, or be a bridge on pcieport) before any of them can be used. \
         Members:\n{}\n  Bind each member that has another driver to vfio-pci the same way \
         (echo ADDR > /sys/bus/pci/devices/ADDR/driver/unbind; echo vfio-pci > \
         /sys/bus/pci/devices/ADDR/driver_override; echo ADDR > /sys/bus/pci/drivers_probe), \
         or move the SSD to a slot with its own group (`ls /sys/kernel/iommu_groups/*/devices`)",
        list_functions(.members)
    )]
    GroupNotViable {
        /// The device.
        addr: String,
        /// The IOMMU group number.
        group: u32,
        /// Every member of the group with its driver.
        members: Vec<PciFunction>,
    },

    /// `/dev/vfio/vfio` is missing.
    #[error(
        "{addr}: {path} does not exist: the VFIO driver is not loaded. Run `modprobe vfio-pci` \
         (it loads vfio and vfio_iommu_type1) as root"
    )]
    VfioMissing {
        /// The device.
        addr: String,
        /// The container node.
        path: PathBuf,
    },

    /// `/dev/vfio/N` is missing although sysfs shows the group.
    #[error(
        "{addr}: {path} (IOMMU group {group}) does not exist: the group has no VFIO node, so the \
         device is not bound to vfio-pci yet (or devtmpfs is not mounted on /dev). Bind it: \
         `echo vfio-pci > /sys/bus/pci/devices/{addr}/driver_override; \
         echo {addr} > /sys/bus/pci/drivers_probe`"
    )]
    GroupNodeMissing {
        /// The device.
        addr: String,
        /// The group number.
        group: u32,
        /// The missing node.
        path: PathBuf,
    },

    /// Opening a VFIO node was refused.
    #[error(
        "{addr}: permission denied opening {path}: run as root, or give your user the group node \
         (`chown $USER {path}`) and enough locked memory for DMA (`ulimit -l unlimited`, or \
         `memlock` in /etc/security/limits.conf); a non-root user also needs read-write access \
         to /dev/vfio/vfio"
    )]
    PermissionDenied {
        /// The device.
        addr: String,
        /// The node.
        path: PathBuf,
        /// The errno.
        #[source]
        source: io::Error,
    },

    /// The group node is already open elsewhere.
    #[error(
        "{addr}: {path} (IOMMU group {group}) is busy: another process (another instance of this \
         driver, QEMU, SPDK, DPDK) has the group open. Stop it (`fuser -v {path}`) and retry"
    )]
    GroupInUse {
        /// The device.
        addr: String,
        /// The group number.
        group: u32,
        /// The node.
        path: PathBuf,
    },

    /// The container speaks an unknown VFIO API version or lacks type1v2.
    #[error(
        "{addr}: the VFIO container does not offer what this driver needs: {what}. A kernel \
         ≥ 4.x with `vfio_iommu_type1` loaded (`modprobe vfio_iommu_type1`) provides \
         VFIO_API_VERSION 0 and VFIO_TYPE1v2_IOMMU"
    )]
    Unsupported {
        /// The device.
        addr: String,
        /// What is missing.
        what: String,
    },

    /// `VFIO_SET_IOMMU` was refused with EPERM: no interrupt remapping.
    #[error(
        "{addr}: VFIO_SET_IOMMU refused with EPERM for IOMMU group {group}: the platform has no \
         interrupt remapping, so vfio_iommu_type1 will not let a device be assigned (it could \
         forge MSI writes). Fix: enable interrupt remapping (VT-d / AMD-Vi with IR in the firmware; \
         `intel_iommu=on` and no `intremap=off` / `nointremap` on the kernel command line; in a \
         QEMU guest `-device intel-iommu,intremap=on` with `-machine kernel-irqchip=split`). \
         Or, accepting that a malicious or broken device can then inject arbitrary interrupts \
         into the host: `modprobe -r vfio_iommu_type1 && modprobe vfio_iommu_type1 \
         allow_unsafe_interrupts=1`; `dmesg | grep -i remapping` shows the kernel's reason"
    )]
    NoInterruptRemapping {
        /// The device.
        addr: String,
        /// The group.
        group: u32,
        /// The errno.
        #[source]
        source: io::Error,
    },

    /// The IOMMU domain could not be attached: EBUSY (ARM SMMU default domain in use).
    #[error(
        "{addr}: {op} failed with EBUSY for IOMMU group {group}: the group is still attached to \
         another IOMMU domain (on ARM SMMU: the kernel's default DMA domain, or a domain of \
         another container). Make sure no host driver ever probed a member of the group after \
         boot (bind them to vfio-pci early, e.g. `vfio-pci.ids=VENDOR:DEVICE` on the kernel \
         command line), that no other VFIO user holds the group, and check \
         `dmesg | grep -i smmu`; `iommu.passthrough=0` keeps DMA domains consistent"
    )]
    IommuDomainBusy {
        /// The device.
        addr: String,
        /// The group.
        group: u32,
        /// Which ioctl.
        op: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },

    /// An ioctl failed for another reason.
    #[error("{addr}: {op} failed: {source}; `dmesg | tail` usually shows the kernel's reason")]
    Ioctl {
        /// The device.
        addr: String,
        /// The ioctl.
        op: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },

    /// A region (BAR0, config space) is missing or unusable.
    #[error("{addr}: {what}")]
    Region {
        /// The device.
        addr: String,
        /// What is wrong, with the fix.
        what: String,
    },

    /// Reading or writing PCI config space failed (pread/pwrite on the config region).
    #[error(
        "{addr}: PCI config space {op} of {len} bytes at {offset:#x} failed: {source}; the device \
         may have been removed or be in a low-power state (`lspci -vvs {addr}`)"
    )]
    Config {
        /// The device.
        addr: String,
        /// `read` or `write`.
        op: &'static str,
        /// Offset in config space.
        offset: u64,
        /// Access width.
        len: usize,
        /// The errno or short transfer.
        #[source]
        source: io::Error,
    },

    /// `VFIO_DEVICE_RESET` failed.
    #[error(
        "{addr}: VFIO_DEVICE_RESET (function-level reset) failed: {source}; another function of \
         the same device or slot may be in use, or the device does not support FLR \
         (`lspci -vvs {addr} | grep FLReset`)"
    )]
    Reset {
        /// The device.
        addr: String,
        /// The errno.
        #[source]
        source: io::Error,
    },

    /// Mapping memory (BAR or DMA memory) failed.
    #[error("{addr}: mmap of {what} ({len:#x} bytes) failed: {source}; {hint}")]
    Mmap {
        /// The device.
        addr: String,
        /// What was mapped.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The errno.
        #[source]
        source: io::Error,
        /// How to fix it.
        hint: &'static str,
    },

    /// 2 MiB hugepages are required but none could be had.
    #[error(
        "{addr}: 2 MiB hugepages are required (HugePagePolicy::Require) but none could be mapped \
         ({source}). Reserve some as root: `echo 64 > /proc/sys/vm/nr_hugepages` (64 × 2 MiB; \
         check HugePages_Free in /proc/meminfo), or `hugepages=64` on the kernel command line; \
         or allow 4 KiB pages with HugePagePolicy::Auto"
    )]
    HugePagesRequired {
        /// The device.
        addr: String,
        /// The mmap errno.
        #[source]
        source: io::Error,
    },

    /// Pinning DMA memory exceeded RLIMIT_MEMLOCK.
    #[error(
        "{addr}: VFIO_IOMMU_MAP_DMA of {len:#x} bytes failed with ENOMEM: the locked-memory limit \
         is exhausted (RLIMIT_MEMLOCK {limit}). Run as root, or raise it: `ulimit -l unlimited` \
         in the shell that starts the driver, or `memlock` in /etc/security/limits.conf, or \
         LimitMEMLOCK=infinity for a systemd service"
    )]
    MemlockLimit {
        /// The device.
        addr: String,
        /// The mapping length.
        len: u64,
        /// The limit as text.
        limit: String,
        /// The errno.
        #[source]
        source: io::Error,
    },

    /// `VFIO_IOMMU_MAP_DMA` failed for another reason.
    #[error(
        "{addr}: VFIO_IOMMU_MAP_DMA of {len:#x} bytes at IOVA {iova:#x} failed: {source}; \
         `dmesg | tail` shows the IOMMU's reason (an IOVA outside the usable ranges is EINVAL, \
         an existing mapping EEXIST)"
    )]
    DmaMap {
        /// The device.
        addr: String,
        /// The IOVA.
        iova: u64,
        /// The length.
        len: u64,
        /// The errno.
        #[source]
        source: io::Error,
    },

    /// No usable IOVA range large enough.
    #[error(
        "{addr}: no free I/O virtual address range of {len:#x} bytes: usable ranges {ranges}. \
         Free DMA buffers that are no longer needed; if the ranges are empty the IOMMU reports no \
         usable space for this group (check /sys/kernel/iommu_groups/*/reserved_regions)"
    )]
    NoIovaSpace {
        /// The device.
        addr: String,
        /// The request.
        len: u64,
        /// The usable ranges, as text.
        ranges: String,
    },

    /// An invalid DMA request (zero length, overflow).
    #[error("{addr}: invalid DMA allocation of {len} bytes: a length must be non-zero and fit the address space")]
    InvalidDmaRequest {
        /// The device.
        addr: String,
        /// The request.
        len: usize,
    },

    /// Setting up MSI-X failed.
    #[error(
        "{addr}: enabling {count} MSI-X vectors failed during {op}: {source}; use \
         IrqMode::Polled to run without interrupts, check the fd limit (`ulimit -n`) and \
         `dmesg | tail` (interrupt remapping table full, no vectors left)"
    )]
    Irq {
        /// The device.
        addr: String,
        /// How many vectors were asked for.
        count: u16,
        /// `eventfd` or `VFIO_DEVICE_SET_IRQS`.
        op: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },

    /// Reading sysfs failed unexpectedly.
    #[error("{addr}: reading {path} failed: {source}; is sysfs mounted at the configured root?")]
    Sysfs {
        /// The device.
        addr: String,
        /// The file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: io::Error,
    },
}

impl VfioError {
    /// The errno behind this error, if it came from a system call.
    pub fn raw_os_error(&self) -> Option<i32> {
        use std::error::Error as _;
        self.source()
            .and_then(|s| s.downcast_ref::<io::Error>())
            .and_then(io::Error::raw_os_error)
    }
}

impl DmaError for VfioError {
    fn kind(&self) -> DmaErrorKind {
        match self {
            VfioError::HugePagesRequired { .. }
            | VfioError::MemlockLimit { .. }
            | VfioError::Mmap { .. } => DmaErrorKind::OutOfMemory,
            VfioError::NoIovaSpace { .. } => DmaErrorKind::NoIovaSpace,
            VfioError::DmaMap { .. } => DmaErrorKind::MapFailed,
            VfioError::InvalidDmaRequest { .. } => DmaErrorKind::InvalidRequest,
            _ => DmaErrorKind::Other,
        }
    }
}

impl InterruptError for VfioError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let e = VfioError::NoIovaSpace {
            addr: "0000:01:00.0".into(),
            len: 4096,
            ranges: "none".into(),
        };
        assert_eq!(e.kind(), DmaErrorKind::NoIovaSpace);
        let e = VfioError::MemlockLimit {
            addr: "0000:01:00.0".into(),
            len: 4096,
            limit: "64 KiB".into(),
            source: io::Error::from_raw_os_error(libc::ENOMEM),
        };
        assert_eq!(e.kind(), DmaErrorKind::OutOfMemory);
        assert_eq!(e.raw_os_error(), Some(libc::ENOMEM));
        assert!(e.to_string().contains("ulimit -l unlimited"));
    }

    #[test]
    fn eperm_message_names_remapping_and_the_risk() {
        let e = VfioError::NoInterruptRemapping {
            addr: "0000:00:04.0".into(),
            group: 3,
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        let m = e.to_string();
        assert!(m.starts_with("0000:00:04.0: "));
        assert!(m.contains("intremap"));
        assert!(m.contains("allow_unsafe_interrupts=1"));
        assert!(m.contains("inject arbitrary interrupts"));
    }
}

//! What sysfs says about a PCI function before any VFIO node is opened: it exists, its class
//! (NVMe is `0x010802`), its driver, its IOMMU group and the group's other members
//! (Documentation/ABI/testing/sysfs-bus-pci, sysfs-kernel-iommu_groups).
//!
//! Only reads files under the configured root; never writes, binds or unbinds anything.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::addr::PciAddress;
use crate::error::{PciFunction, VfioError};
use crate::iommu::parse_reserved_regions;

/// PCI class code of an NVM Express controller: base class 01h (mass storage), subclass 08h
/// (non-volatile memory), programming interface 02h (NVM Express) (PCI Code and ID Assignment
/// Specification §1.2; NVMe over PCIe Transport §3.1.1 "CC").
pub const NVME_CLASS: u32 = 0x01_08_02;

/// Everything sysfs tells about a function, gathered in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReport {
    /// The function.
    pub addr: PciAddress,
    /// Class code (`class`).
    pub class: u32,
    /// Vendor ID (`vendor`), if readable.
    pub vendor: Option<u16>,
    /// Device ID (`device`), if readable.
    pub device: Option<u16>,
    /// The bound driver (`driver` symlink), `None` if unbound.
    pub driver: Option<String>,
    /// The IOMMU group (`iommu_group` symlink), `None` without an active IOMMU.
    pub iommu_group: Option<u32>,
    /// All members of the group (this function included) with their drivers.
    pub group_members: Vec<PciFunction>,
    /// The group's `reserved_regions` (`(start, last)`), empty if unreadable.
    pub reserved_regions: Vec<(u64, u64)>,
}

fn devices_dir(root: &Path) -> PathBuf {
    root.join("bus/pci/devices")
}

fn link_name(path: &Path) -> Option<String> {
    let target = fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

fn read_hex(path: &Path) -> io::Result<u64> {
    let t = fs::read_to_string(path)?;
    u64::from_str_radix(t.trim().trim_start_matches("0x"), 16)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The driver bound to `addr`, as the `driver` symlink names it.
pub fn driver_of(root: &Path, addr: &str) -> Option<String> {
    link_name(&devices_dir(root).join(addr).join("driver"))
}

/// Every PCI function of class [`NVME_CLASS`] under `root`, sorted, with its driver.
pub fn nvme_devices(root: &Path) -> Vec<PciFunction> {
    let Ok(rd) = fs::read_dir(devices_dir(root)) else {
        return Vec::new();
    };
    let mut v: Vec<PciFunction> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let class = read_hex(&e.path().join("class")).ok()?;
            (class as u32 == NVME_CLASS).then(|| PciFunction {
                driver: driver_of(root, &name),
                addr: name,
            })
        })
        .collect();
    v.sort_by(|a, b| a.addr.cmp(&b.addr));
    v
}

/// Gathers the [`DeviceReport`] of `addr`.
///
/// # Errors
/// [`VfioError::NoSuchDevice`] (listing the NVMe controllers that exist) if the function is
/// not in sysfs, [`VfioError::Sysfs`] if its `class` cannot be read.
pub fn inspect(root: &Path, addr: &PciAddress) -> Result<DeviceReport, VfioError> {
    let name = addr.to_string();
    let dir = devices_dir(root).join(&name);
    if !dir.exists() {
        return Err(VfioError::NoSuchDevice {
            addr: name,
            sysfs: root.display().to_string(),
            nvme_devices: nvme_devices(root),
        });
    }
    let class_path = dir.join("class");
    let class = read_hex(&class_path).map_err(|source| VfioError::Sysfs {
        addr: name.clone(),
        path: class_path,
        source,
    })? as u32;
    let vendor = read_hex(&dir.join("vendor")).ok().map(|v| v as u16);
    let device = read_hex(&dir.join("device")).ok().map(|v| v as u16);
    let driver = driver_of(root, &name);
    let iommu_group: Option<u32> = link_name(&dir.join("iommu_group")).and_then(|g| g.parse().ok());
    let mut group_members = Vec::new();
    let mut reserved_regions = Vec::new();
    if let Some(g) = iommu_group {
        let gdir = root.join("kernel/iommu_groups").join(g.to_string());
        if let Ok(rd) = fs::read_dir(gdir.join("devices")) {
            for e in rd.filter_map(|e| e.ok()) {
                let m = e.file_name().to_string_lossy().into_owned();
                let driver = driver_of(root, &m).or_else(|| link_name(&e.path().join("driver")));
                group_members.push(PciFunction { addr: m, driver });
            }
        }
        group_members.sort_by(|a, b| a.addr.cmp(&b.addr));
        if let Ok(t) = fs::read_to_string(gdir.join("reserved_regions")) {
            reserved_regions = parse_reserved_regions(&t);
        }
    }
    Ok(DeviceReport {
        addr: *addr,
        class,
        vendor,
        device,
        driver,
        iommu_group,
        group_members,
        reserved_regions,
    })
}

/// True for the drivers that leave a group usable by VFIO: vfio-pci and its variant drivers,
/// pci-stub, and pcieport (bridges; "driver_managed_dma" since Linux 5.19).
pub fn driver_allows_vfio(driver: Option<&str>) -> bool {
    match driver {
        None => true,
        Some(d) => d == "pci-stub" || d == "pcieport" || is_vfio_driver(d),
    }
}

fn is_vfio_driver(d: &str) -> bool {
    d == "vfio-pci" || d.contains("vfio")
}

impl DeviceReport {
    /// Checks the report: NVMe class, in an IOMMU group (checked before the driver: without an
    /// IOMMU vfio-pci cannot bind), bound to vfio-pci, with every other group member usable by
    /// VFIO. Logs a warning (`log` crate) about an NVM-subclass device with another
    /// programming interface.
    ///
    /// # Errors
    /// [`VfioError::NotNvme`], [`VfioError::NoIommuGroup`], [`VfioError::BoundToDriver`],
    /// [`VfioError::NotBound`], [`VfioError::GroupNotViable`].
    pub fn check(&self, root: &Path) -> Result<u32, VfioError> {
        let addr = self.addr.to_string();
        if self.class != NVME_CLASS {
            if self.class >> 8 == NVME_CLASS >> 8 {
                log::warn!(
                    "{addr}: class {:#08x} is a non-volatile memory controller \
                     but not NVM Express (programming interface {:#04x}, expected 0x02); trying anyway",
                    self.class,
                    self.class & 0xff
                );
            } else {
                return Err(VfioError::NotNvme {
                    addr,
                    class: self.class,
                });
            }
        }
        // The group first: without an IOMMU vfio-pci's probe fails, so "bind it to vfio-pci"
        // (what the driver checks below would say) is the wrong advice.
        let Some(group) = self.iommu_group else {
            return Err(VfioError::NoIommuGroup {
                path: devices_dir(root).join(&addr).join("iommu_group"),
                addr,
            });
        };
        let sysfs = root.display().to_string();
        match self.driver.as_deref() {
            Some(d) if is_vfio_driver(d) => {}
            Some(d) => {
                return Err(VfioError::BoundToDriver {
                    addr,
                    driver: d.to_string(),
                    sysfs,
                })
            }
            None => return Err(VfioError::NotBound { addr, sysfs }),
        }
        if self
            .group_members
            .iter()
            .any(|m| !driver_allows_vfio(m.driver.as_deref()))
        {
            return Err(VfioError::GroupNotViable {
                addr,
                group,
                members: self.group_members.clone(),
            });
        }
        Ok(group)
    }
}

/// The NUMA node of `addr` (`numa_node`; `None` when absent or -1, "no node").
pub fn numa_node(root: &Path, addr: &str) -> Option<u32> {
    let t = fs::read_to_string(devices_dir(root).join(addr).join("numa_node")).ok()?;
    t.trim()
        .parse::<i64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
}

/// The block devices the kernel's nvme driver made for controller `addr`: each namespace
/// (`nvme/nvmeX/nvmeXnY`) and its partitions (`nvmeXnYpZ`), by name.
pub fn block_devices(root: &Path, addr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(ctrls) = fs::read_dir(devices_dir(root).join(addr).join("nvme")) else {
        return out;
    };
    for ctrl in ctrls.filter_map(|e| e.ok()) {
        let cname = ctrl.file_name().to_string_lossy().into_owned();
        let Ok(nss) = fs::read_dir(ctrl.path()) else {
            continue;
        };
        for ns in nss.filter_map(|e| e.ok()) {
            let name = ns.file_name().to_string_lossy().into_owned();
            // Namespaces are `nvme0n1` (or `nvme0c0n1` behind native multipath).
            if !name.starts_with(&cname) || !name[cname.len()..].contains('n') {
                continue;
            }
            out.push(name.clone());
            if let Ok(parts) = fs::read_dir(ns.path()) {
                for part in parts.filter_map(|e| e.ok()) {
                    let pn = part.file_name().to_string_lossy().into_owned();
                    if pn.starts_with(&name) && pn[name.len()..].starts_with('p') {
                        out.push(pn);
                    }
                }
            }
        }
    }
    out.sort();
    out
}

/// The holders of block device `name` (`class/block/NAME/holders/*`: device-mapper, md,
/// bcache, ... stacked on it).
pub fn block_holders(root: &Path, name: &str) -> Vec<String> {
    let Ok(rd) = fs::read_dir(root.join("class/block").join(name).join("holders")) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A fake sysfs tree in a directory, for tests (never the real `/sys`).
#[cfg(any(test, feature = "test-utils"))]
pub mod fake {
    use std::fs;
    use std::io;
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A temporary directory removed on drop.
    #[derive(Debug)]
    pub struct TempDir(PathBuf);

    impl TempDir {
        /// A fresh directory under the system temp dir.
        pub fn new(tag: &str) -> io::Result<Self> {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "vfio-backend-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p)?;
            Ok(Self(p))
        }
        /// Its path.
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Builds `bus/pci/devices/*`, `bus/pci/drivers/*` and `kernel/iommu_groups/*` under a
    /// root, shaped like the real sysfs as far as this crate reads it.
    #[derive(Debug)]
    pub struct FakeSysfs {
        root: TempDir,
    }

    impl FakeSysfs {
        /// An empty tree.
        pub fn new() -> io::Result<Self> {
            let root = TempDir::new("sysfs")?;
            fs::create_dir_all(root.path().join("bus/pci/devices"))?;
            fs::create_dir_all(root.path().join("kernel/iommu_groups"))?;
            Ok(Self { root })
        }

        /// The root to put in `VfioOptions::sysfs_root`.
        pub fn root(&self) -> &Path {
            self.root.path()
        }

        /// Adds a function with its class, driver (or none) and IOMMU group (or none).
        pub fn add_device(
            &self,
            addr: &str,
            class: u32,
            driver: Option<&str>,
            group: Option<u32>,
        ) -> io::Result<()> {
            let r = self.root();
            let dev = r.join("devices/pci0000:00").join(addr);
            fs::create_dir_all(&dev)?;
            fs::write(dev.join("class"), format!("{class:#08x}\n"))?;
            fs::write(dev.join("vendor"), "0x1b36\n")?;
            fs::write(dev.join("device"), "0x0010\n")?;
            symlink(&dev, r.join("bus/pci/devices").join(addr))?;
            if let Some(d) = driver {
                let ddir = r.join("bus/pci/drivers").join(d);
                fs::create_dir_all(&ddir)?;
                symlink(&ddir, dev.join("driver"))?;
            }
            fs::write(dev.join("numa_node"), "-1\n")?;
            if let Some(g) = group {
                let gdir = r.join("kernel/iommu_groups").join(g.to_string());
                fs::create_dir_all(gdir.join("devices"))?;
                if !gdir.join("reserved_regions").exists() {
                    fs::write(
                        gdir.join("reserved_regions"),
                        "0x00000000fee00000 0x00000000feefffff msi\n",
                    )?;
                }
                symlink(&gdir, dev.join("iommu_group"))?;
                symlink(&dev, gdir.join("devices").join(addr))?;
            }
            Ok(())
        }

        /// Gives the function at `addr` a kernel namespace block device `nvmeXnY` (under
        /// `nvme/nvmeX/`, linked from `class/block/`), with the partitions and holders named.
        pub fn add_block_device(
            &self,
            addr: &str,
            name: &str,
            partitions: &[&str],
            holders: &[&str],
        ) -> io::Result<()> {
            let r = self.root();
            let ctrl = name.split('n').take(2).collect::<Vec<_>>().join("n");
            let dev = r
                .join("bus/pci/devices")
                .join(addr)
                .join("nvme")
                .join(&ctrl);
            let ns = dev.join(name);
            fs::create_dir_all(ns.join("holders"))?;
            fs::create_dir_all(r.join("class/block"))?;
            symlink(&ns, r.join("class/block").join(name))?;
            for h in holders {
                fs::create_dir_all(ns.join("holders").join(h))?;
            }
            for p in partitions {
                fs::create_dir_all(ns.join(p).join("holders"))?;
                symlink(ns.join(p), r.join("class/block").join(p))?;
            }
            Ok(())
        }

        /// Makes `bus/pci/drivers/NAME` exist (a loaded driver).
        pub fn add_driver(&self, name: &str) -> io::Result<()> {
            fs::create_dir_all(self.root().join("bus/pci/drivers").join(name))
        }

        /// Sets the `numa_node` of `addr`.
        pub fn set_numa_node(&self, addr: &str, node: i32) -> io::Result<()> {
            fs::write(
                self.root()
                    .join("bus/pci/devices")
                    .join(addr)
                    .join("numa_node"),
                format!("{node}\n"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeSysfs;
    use super::*;

    #[test]
    fn block_devices_numa_and_holders() {
        let fs = FakeSysfs::new().unwrap();
        fs.add_device("0000:00:04.0", NVME_CLASS, Some("nvme"), Some(3))
            .unwrap();
        assert_eq!(numa_node(fs.root(), "0000:00:04.0"), None, "-1 is no node");
        fs.set_numa_node("0000:00:04.0", 1).unwrap();
        assert_eq!(numa_node(fs.root(), "0000:00:04.0"), Some(1));
        assert!(block_devices(fs.root(), "0000:00:04.0").is_empty());
        fs.add_block_device("0000:00:04.0", "nvme0n1", &["nvme0n1p1"], &["dm-0"])
            .unwrap();
        assert_eq!(
            block_devices(fs.root(), "0000:00:04.0"),
            vec!["nvme0n1".to_string(), "nvme0n1p1".to_string()]
        );
        assert_eq!(
            block_holders(fs.root(), "nvme0n1"),
            vec!["dm-0".to_string()]
        );
        assert!(block_holders(fs.root(), "nvme0n1p1").is_empty());
    }

    fn addr(s: &str) -> PciAddress {
        PciAddress::parse(s).unwrap()
    }

    #[test]
    fn healthy_device_passes() {
        let fs = FakeSysfs::new().unwrap();
        fs.add_device("0000:00:04.0", NVME_CLASS, Some("vfio-pci"), Some(7))
            .unwrap();
        let r = inspect(fs.root(), &addr("00:04.0")).unwrap();
        assert_eq!(r.driver.as_deref(), Some("vfio-pci"));
        assert_eq!(r.iommu_group, Some(7));
        assert_eq!(r.vendor, Some(0x1b36));
        assert_eq!(r.reserved_regions, vec![(0xfee0_0000, 0xfeef_ffff)]);
        assert_eq!(r.check(fs.root()).unwrap(), 7);
    }

    #[test]
    fn missing_device_lists_nvme_controllers() {
        let fs = FakeSysfs::new().unwrap();
        fs.add_device("0000:01:00.0", NVME_CLASS, Some("nvme"), Some(1))
            .unwrap();
        fs.add_device("0000:02:00.0", NVME_CLASS, None, Some(2))
            .unwrap();
        fs.add_device("0000:03:00.0", 0x020000, Some("e1000e"), Some(3))
            .unwrap();
        let e = inspect(fs.root(), &addr("0000:09:00.0")).unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("0000:09:00.0: no such PCI device"), "{m}");
        assert!(m.contains("0000:01:00.0 (driver: nvme)"), "{m}");
        assert!(m.contains("0000:02:00.0 (no driver)"), "{m}");
        assert!(!m.contains("0000:03:00.0"), "{m}");
        assert!(m.contains("lspci"), "{m}");
    }

    #[test]
    fn bound_to_nvme_prints_the_rebind_commands() {
        let fs = FakeSysfs::new().unwrap();
        fs.add_device("0000:01:00.0", NVME_CLASS, Some("nvme"), Some(1))
            .unwrap();
        let e = inspect(fs.root(), &addr("01:00.0"))
            .unwrap()
            .check(fs.root())
            .unwrap_err();
        assert!(matches!(e, VfioError::BoundToDriver { .. }));
        let m = e.to_string();
        let root = fs.root().display();
        assert!(
            m.starts_with("0000:01:00.0: bound to the `nvme` driver"),
            "{m}"
        );
        assert!(m.contains("WARNING"), "{m}");
        assert!(
            m.contains(&format!(
                "echo 0000:01:00.0 > {root}/bus/pci/devices/0000:01:00.0/driver/unbind"
            )),
            "{m}"
        );
        assert!(
            m.contains(&format!(
                "echo vfio-pci > {root}/bus/pci/devices/0000:01:00.0/driver_override"
            )),
            "{m}"
        );
        assert!(
            m.contains(&format!("echo 0000:01:00.0 > {root}/bus/pci/drivers_probe")),
            "{m}"
        );
        assert!(
            m.contains("driverctl set-override 0000:01:00.0 vfio-pci"),
            "{m}"
        );
    }

    #[test]
    fn other_driver_and_unbound() {
        let fs = FakeSysfs::new().unwrap();
        fs.add_device("0000:01:00.0", NVME_CLASS, Some("pci-stub"), Some(1))
            .unwrap();
        fs.add_device("0000:02:00.0", NVME_CLASS, None, Some(2))
            .unwrap();
        let m = inspect(fs.root(), &addr("01:00.0"))
            .unwrap()
            .check(fs.root())
            .unwrap_err()
            .to_string();
        assert!(m.contains("bound to the `pci-stub` driver"), "{m}");
        assert!(!m.contains("WARNING"), "{m}");
        let e = inspect(fs.root(), &addr("02:00.0"))
            .unwrap()
            .check(fs.root())
            .unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, VfioError::NotBound { .. }), "{m}");
        assert!(m.contains("not bound to any driver"), "{m}");
        assert!(!m.contains("driver/unbind"), "{m}");
        assert!(m.contains("drivers_probe"), "{m}");
    }

    #[test]
    fn group_member_bound_elsewhere() {
        let fs = FakeSysfs::new().unwrap();
        fs.add_device("0000:05:00.0", NVME_CLASS, Some("vfio-pci"), Some(12))
            .unwrap();
        fs.add_device("0000:05:00.1", 0x0c0330, Some("xhci_hcd"), Some(12))
            .unwrap();
        fs.add_device("0000:00:1c.0", 0x060400, Some("pcieport"), Some(12))
            .unwrap();
        let e = inspect(fs.root(), &addr("0000:05:00.0"))
            .unwrap()
            .check(fs.root())
            .unwrap_err();
        let m = e.to_string();
        assert!(
            matches!(e, VfioError::GroupNotViable { group: 12, .. }),
            "{m}"
        );
        assert!(
            m.starts_with("0000:05:00.0: IOMMU group 12 is not viable"),
            "{m}"
        );
        assert!(m.contains("0000:05:00.1 (driver: xhci_hcd)"), "{m}");
        assert!(m.contains("0000:05:00.0 (driver: vfio-pci)"), "{m}");
        assert!(m.contains("0000:00:1c.0 (driver: pcieport)"), "{m}");
    }

    /// A guest without an SMMU (arm-hil-recipe.md): vfio-pci's probe failed, so the device is
    /// on no driver and has no `iommu_group`. The diagnosis is "no IOMMU", not "bind it".
    #[test]
    fn unbound_without_iommu_group_says_no_iommu() {
        let fs = FakeSysfs::new().unwrap();
        fs.add_device("0000:00:01.0", NVME_CLASS, None, None)
            .unwrap();
        fs.add_device("0000:00:02.0", NVME_CLASS, Some("nvme"), None)
            .unwrap();
        for a in ["00:01.0", "00:02.0"] {
            let e = inspect(fs.root(), &addr(a))
                .unwrap()
                .check(fs.root())
                .unwrap_err();
            let m = e.to_string();
            assert!(matches!(e, VfioError::NoIommuGroup { .. }), "{m}");
            assert!(
                m.contains(": no IOMMU: the device has no IOMMU group"),
                "{m}"
            );
            assert!(m.contains("SMMU (Arm)") && m.contains("firmware"), "{m}");
            assert!(m.contains("`iommu.passthrough=1` does not help"), "{m}");
            assert!(
                m.contains("no-IOMMU mode") && m.contains("taints the kernel"),
                "{m}"
            );
            assert!(!m.contains("must be bound to vfio-pci"), "{m}");
            assert!(!m.contains("driver_override"), "{m}");
        }
    }

    #[test]
    fn no_group_and_not_nvme() {
        let fs = FakeSysfs::new().unwrap();
        fs.add_device("0000:01:00.0", NVME_CLASS, Some("vfio-pci"), None)
            .unwrap();
        fs.add_device("0000:02:00.0", 0x020000, Some("vfio-pci"), Some(2))
            .unwrap();
        fs.add_device("0000:03:00.0", 0x010801, Some("vfio-pci"), Some(3))
            .unwrap();
        let m = inspect(fs.root(), &addr("01:00.0"))
            .unwrap()
            .check(fs.root())
            .unwrap_err()
            .to_string();
        assert!(m.contains("has no IOMMU group"), "{m}");
        assert!(m.contains("intel_iommu=on"), "{m}");
        let m = inspect(fs.root(), &addr("02:00.0"))
            .unwrap()
            .check(fs.root())
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("not an NVMe controller: PCI class 0x020000"),
            "{m}"
        );
        // Same subclass, other programming interface: a warning only.
        assert_eq!(
            inspect(fs.root(), &addr("03:00.0"))
                .unwrap()
                .check(fs.root())
                .unwrap(),
            3
        );
    }
}

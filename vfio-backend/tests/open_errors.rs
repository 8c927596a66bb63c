//! `VfioPlatform::open` end to end against a fake sysfs tree and a fake `/dev/vfio` in a
//! temporary directory: every refusal names the device and the fix. Nothing here touches the
//! host's `/sys/bus/pci` or `/dev/vfio`.

use std::fs;

use vfio_backend::sysfs::fake::{FakeSysfs, TempDir};
use vfio_backend::sysfs::NVME_CLASS;
use vfio_backend::{HugePagePolicy, IrqMode, VfioError, VfioOptions, VfioPlatform};

fn options(sysfs: &FakeSysfs, dev: &TempDir) -> VfioOptions {
    VfioOptions {
        sysfs_root: sysfs.root().to_path_buf(),
        dev_vfio: dev.path().to_path_buf(),
        hugepages: HugePagePolicy::Never,
        interrupts: IrqMode::Polled,
    }
}

fn open_err(addr: &str, opts: &VfioOptions) -> VfioError {
    match VfioPlatform::open(addr, opts) {
        Ok(_) => panic!("{addr}: opened on a fake tree"),
        Err(e) => e,
    }
}

#[test]
fn malformed_address() {
    let sysfs = FakeSysfs::new().unwrap();
    let dev = TempDir::new("dev").unwrap();
    let e = open_err("nvme0n1", &options(&sysfs, &dev));
    assert!(matches!(e, VfioError::MalformedAddress { .. }));
    let m = e.to_string();
    assert!(m.starts_with("`nvme0n1` is not a PCI address"), "{m}");
    assert!(m.contains("expected DDDD:BB:DD.F"), "{m}");
}

#[test]
fn missing_device_lists_what_exists() {
    let sysfs = FakeSysfs::new().unwrap();
    sysfs
        .add_device("0000:00:04.0", NVME_CLASS, Some("vfio-pci"), Some(4))
        .unwrap();
    let dev = TempDir::new("dev").unwrap();
    let m = open_err("00:05.0", &options(&sysfs, &dev)).to_string();
    assert!(m.starts_with("0000:00:05.0: no such PCI device"), "{m}");
    assert!(m.contains("0000:00:04.0 (driver: vfio-pci)"), "{m}");
}

#[test]
fn bound_to_nvme() {
    let sysfs = FakeSysfs::new().unwrap();
    sysfs
        .add_device("0000:01:00.0", NVME_CLASS, Some("nvme"), Some(1))
        .unwrap();
    let dev = TempDir::new("dev").unwrap();
    let m = open_err("0000:01:00.0", &options(&sysfs, &dev)).to_string();
    assert!(m.contains("bound to the `nvme` driver"), "{m}");
    assert!(
        m.contains("/bus/pci/devices/0000:01:00.0/driver/unbind"),
        "{m}"
    );
    assert!(
        m.contains("driverctl set-override 0000:01:00.0 vfio-pci"),
        "{m}"
    );
}

#[test]
fn group_member_bound_elsewhere() {
    let sysfs = FakeSysfs::new().unwrap();
    sysfs
        .add_device("0000:02:00.0", NVME_CLASS, Some("vfio-pci"), Some(9))
        .unwrap();
    sysfs
        .add_device("0000:02:00.1", 0x020000, Some("igb"), Some(9))
        .unwrap();
    let dev = TempDir::new("dev").unwrap();
    let e = open_err("0000:02:00.0", &options(&sysfs, &dev));
    let m = e.to_string();
    assert!(
        matches!(e, VfioError::GroupNotViable { group: 9, .. }),
        "{m}"
    );
    assert!(m.contains("0000:02:00.1 (driver: igb)"), "{m}");
}

#[test]
fn vfio_module_not_loaded() {
    let sysfs = FakeSysfs::new().unwrap();
    sysfs
        .add_device("0000:00:04.0", NVME_CLASS, Some("vfio-pci"), Some(4))
        .unwrap();
    let dev = TempDir::new("dev").unwrap();
    let e = open_err("0000:00:04.0", &options(&sysfs, &dev));
    let m = e.to_string();
    assert!(matches!(e, VfioError::VfioMissing { .. }), "{m}");
    assert!(m.starts_with("0000:00:04.0: "), "{m}");
    assert!(m.contains("modprobe vfio-pci"), "{m}");
}

/// A `vfio` node that is not the VFIO character device: the first ioctl fails and the error
/// says which one, with its errno.
#[test]
fn container_node_is_not_vfio() {
    let sysfs = FakeSysfs::new().unwrap();
    sysfs
        .add_device("0000:00:04.0", NVME_CLASS, Some("vfio-pci"), Some(4))
        .unwrap();
    let dev = TempDir::new("dev").unwrap();
    fs::write(dev.path().join("vfio"), b"").unwrap();
    let e = open_err("0000:00:04.0", &options(&sysfs, &dev));
    let m = e.to_string();
    assert!(
        m.starts_with("0000:00:04.0: VFIO_GET_API_VERSION failed"),
        "{m}"
    );
    assert_eq!(e.raw_os_error(), Some(libc_enotty()), "{m}");
}

fn libc_enotty() -> i32 {
    25 // ENOTTY on every Linux architecture
}

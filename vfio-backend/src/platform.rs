//! [`VfioPlatform`]: one NVMe controller opened through VFIO (container → group → device,
//! linux/vfio.h and Documentation/driver-api/vfio.rst "VFIO Usage Example"), and its
//! teardown.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nvme_core::hw::{Bar, Clock, Deadline, InterruptSource, Platform};
use nvme_core::spec::regs::{offset, Cap, Cc, Csts};
use vfio_bindings::bindings::vfio as b;

use crate::addr::PciAddress;
use crate::bar::VfioBar;
use crate::clock::MonotonicClock;
use crate::config::{self, VfioConfig};
use crate::dma::{ContainerMapper, VfioDma};
use crate::error::VfioError;
use crate::iommu::{self, IommuInfo};
use crate::irq::{MsixControl, VfioIrq};
use crate::sys::{self, Mapping};
use crate::sysfs::{self, DeviceReport};
use crate::{IrqMode, VfioOptions};

/// A region of the device (`VFIO_DEVICE_GET_REGION_INFO`): BARs 0–5, ROM (6), config (7),
/// VGA (8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    /// Region index.
    pub index: u32,
    /// `VFIO_REGION_INFO_FLAG_*` (READ 1, WRITE 2, MMAP 4, CAPS 8).
    pub flags: u32,
    /// Size in bytes (0: absent).
    pub size: u64,
    /// Offset of the region in the device fd (for pread/pwrite/mmap).
    pub offset: u64,
}

/// An interrupt index of the device (`VFIO_DEVICE_GET_IRQ_INFO`): INTx (0), MSI (1),
/// MSI-X (2), ERR (3), REQ (4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    /// IRQ index.
    pub index: u32,
    /// `VFIO_IRQ_INFO_*` (EVENTFD 1, MASKABLE 2, AUTOMASKED 4, NORESIZE 8).
    pub flags: u32,
    /// Number of vectors.
    pub count: u32,
}

/// What disabling the controller found (NVMe Base §3.5.2 "Controller Reset" by CC.EN = 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisableOutcome {
    /// CC.EN and CSTS.RDY were already 0.
    AlreadyDisabled,
    /// CC.EN was cleared and CSTS.RDY went to 0 in time.
    Disabled,
    /// CSTS read all-ones: the device is gone (or memory space is off).
    Gone,
    /// CSTS.RDY stayed 1 past CAP.TO.
    TimedOut {
        /// The last CSTS value.
        csts: u32,
    },
}

/// Disables the controller: waits for a pending enable to finish (CSTS.RDY = 1 or CFS),
/// clears CC.EN, waits for CSTS.RDY = 0; each wait is bounded by CAP.TO (§3.1.4.1, at least
/// 500 ms). An all-ones register means the device is gone.
pub fn disable_controller<B: Bar + ?Sized, C: Clock + ?Sized>(
    bar: &B,
    clock: &C,
) -> DisableOutcome {
    let csts = Csts(bar.read32(offset::CSTS));
    if csts.is_all_ones() {
        return DisableOutcome::Gone;
    }
    let cap = Cap(bar.read64(offset::CAP));
    if cap.0 == u64::MAX {
        return DisableOutcome::Gone;
    }
    let cc = Cc(bar.read32(offset::CC));
    if !cc.en() && !csts.rdy() {
        return DisableOutcome::AlreadyDisabled;
    }
    let timeout = Duration::from_millis(cap.timeout_ms().max(500));
    if cc.en() && !csts.rdy() && !csts.cfs() {
        // An enable is in progress: clearing EN now is undefined on some controllers (Linux
        // NVME_QUIRK_DELAY_BEFORE_CHK_RDY); let it finish first, within CAP.TO.
        let d = Deadline::after(clock, timeout);
        loop {
            let s = Csts(bar.read32(offset::CSTS));
            if s.is_all_ones() {
                return DisableOutcome::Gone;
            }
            if s.rdy() || s.cfs() || d.expired(clock) {
                break;
            }
            clock.relax();
        }
    }
    if cc.en() {
        // SAFETY: clearing CC.EN stops the controller from using any memory (NVMe Base
        // §3.7.2); this runs at teardown, before the DMA mappings are removed.
        unsafe { bar.write32(offset::CC, cc.with_en(false).0) };
    }
    let d = Deadline::after(clock, timeout);
    loop {
        let s = Csts(bar.read32(offset::CSTS));
        if s.is_all_ones() {
            return DisableOutcome::Gone;
        }
        if !s.rdy() {
            return DisableOutcome::Disabled;
        }
        if d.expired(clock) {
            return DisableOutcome::TimedOut { csts: s.0 };
        }
        clock.relax();
    }
}

/// One NVMe controller behind VFIO: BAR0, DMA through the IOMMU, MSI-X, a clock.
///
/// Dropping it tears everything down in order: controller disabled (CC.EN = 0, CSTS.RDY = 0
/// within CAP.TO), MSI-X off, bus mastering off, every DMA mapping unmapped, BAR0 unmapped,
/// device, group and container fds closed. A failed [`open`](Self::open) does the same for
/// whatever it had set up.
#[derive(Debug)]
pub struct VfioPlatform {
    name: String,
    report: DeviceReport,
    group: u32,
    device_flags: u32,
    regions: Vec<RegionInfo>,
    irqs: Vec<IrqInfo>,
    iommu: IommuInfo,
    iova_defaulted: bool,
    // Drop order below matters: users of the fds first, then the fds.
    bar: VfioBar,
    irq: VfioIrq,
    dma: VfioDma,
    config: VfioConfig,
    clock: MonotonicClock,
    device: Arc<OwnedFd>,
    /// Held open for the device's lifetime; closing it detaches the group from the container.
    _group_fd: OwnedFd,
    /// Held open for the device's lifetime (the DMA mapper holds a clone).
    _container: Arc<OwnedFd>,
}

fn open_node(addr: &str, path: &Path) -> Result<OwnedFd, (io::Error, VfioError)> {
    sys::open_rw(path).map_err(|e| {
        let err = match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => VfioError::PermissionDenied {
                addr: addr.to_string(),
                path: path.to_path_buf(),
                source: io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EACCES)),
            },
            _ => VfioError::Ioctl {
                addr: addr.to_string(),
                op: "open",
                source: io::Error::new(e.kind(), format!("{}: {e}", path.display())),
            },
        };
        (e, err)
    })
}

impl VfioPlatform {
    /// Opens the NVMe controller at `pci_addr` (`DDDD:BB:DD.F` or `BB:DD.F`), which must be
    /// bound to vfio-pci.
    ///
    /// Steps: sysfs checks (exists, NVMe class, driver, IOMMU group and its members);
    /// container (`VFIO_GET_API_VERSION`, `VFIO_CHECK_EXTENSION(VFIO_TYPE1v2_IOMMU)`); group
    /// (`VFIO_GROUP_GET_STATUS` viable, `VFIO_GROUP_SET_CONTAINER`); `VFIO_SET_IOMMU`;
    /// `VFIO_GROUP_GET_DEVICE_FD`; device, region and IRQ info; BAR0 mmap; IOMMU info (page
    /// sizes, usable IOVA ranges); `VFIO_DEVICE_RESET` if supported (a failure is a warning);
    /// COMMAND: memory space on, INTx off; controller disabled; bus master on; one DMA chunk
    /// made ready (deciding hugepages).
    ///
    /// # Errors
    /// A [`VfioError`] naming the device and the fix; everything set up so far is torn down.
    pub fn open(pci_addr: &str, opts: &VfioOptions) -> Result<Arc<Self>, VfioError> {
        let addr = PciAddress::parse(pci_addr)?;
        let name = addr.to_string();
        let report = sysfs::inspect(&opts.sysfs_root, &addr)?;
        let group = report.check(&opts.sysfs_root)?;
        let ioctl_err = |op: &'static str| {
            let name = name.clone();
            move |source: io::Error| VfioError::Ioctl {
                addr: name,
                op,
                source,
            }
        };

        // Container.
        let cpath = opts.dev_vfio.join("vfio");
        let container = open_node(&name, &cpath).map_err(|(e, err)| {
            if e.kind() == io::ErrorKind::NotFound {
                VfioError::VfioMissing {
                    addr: name.clone(),
                    path: cpath.clone(),
                }
            } else {
                err
            }
        })?;
        let version =
            sys::get_api_version(container.as_fd()).map_err(ioctl_err("VFIO_GET_API_VERSION"))?;
        if version != b::VFIO_API_VERSION as i32 {
            return Err(VfioError::Unsupported {
                addr: name,
                what: format!(
                    "VFIO API version {version}, expected {}",
                    b::VFIO_API_VERSION
                ),
            });
        }
        if !sys::check_extension(container.as_fd(), b::VFIO_TYPE1v2_IOMMU)
            .map_err(ioctl_err("VFIO_CHECK_EXTENSION"))?
        {
            return Err(VfioError::Unsupported {
                addr: name,
                what: "no VFIO_TYPE1v2_IOMMU extension".to_string(),
            });
        }
        let container = Arc::new(container);

        // Group.
        let gpath = opts.dev_vfio.join(group.to_string());
        let group_fd = open_node(&name, &gpath).map_err(|(e, err)| match e.raw_os_error() {
            Some(libc::ENOENT) => VfioError::GroupNodeMissing {
                addr: name.clone(),
                group,
                path: gpath.clone(),
            },
            Some(libc::EBUSY) => VfioError::GroupInUse {
                addr: name.clone(),
                group,
                path: gpath.clone(),
            },
            _ => err,
        })?;
        let status =
            sys::group_get_status(group_fd.as_fd()).map_err(ioctl_err("VFIO_GROUP_GET_STATUS"))?;
        if status & b::VFIO_GROUP_FLAGS_VIABLE == 0 {
            // Re-read the members: sysfs may have changed since the check.
            let members = sysfs::inspect(&opts.sysfs_root, &addr)
                .map(|r| r.group_members)
                .unwrap_or(report.group_members.clone());
            return Err(VfioError::GroupNotViable {
                addr: name,
                group,
                members,
            });
        }
        let busy = |op: &'static str, source: io::Error| {
            if source.raw_os_error() == Some(libc::EBUSY) {
                VfioError::IommuDomainBusy {
                    addr: name.clone(),
                    group,
                    op,
                    source,
                }
            } else {
                VfioError::Ioctl {
                    addr: name.clone(),
                    op,
                    source,
                }
            }
        };
        sys::group_set_container(group_fd.as_fd(), container.as_fd())
            .map_err(|e| busy("VFIO_GROUP_SET_CONTAINER", e))?;
        sys::set_iommu(container.as_fd(), b::VFIO_TYPE1v2_IOMMU).map_err(|e| {
            if e.raw_os_error() == Some(libc::EPERM) {
                VfioError::NoInterruptRemapping {
                    addr: name.clone(),
                    group,
                    source: e,
                }
            } else {
                busy("VFIO_SET_IOMMU", e)
            }
        })?;

        // Device.
        let device = Arc::new(
            sys::group_get_device_fd(group_fd.as_fd(), &name)
                .map_err(|e| busy("VFIO_GROUP_GET_DEVICE_FD", e))?,
        );
        let dinfo =
            sys::device_get_info(device.as_fd()).map_err(ioctl_err("VFIO_DEVICE_GET_INFO"))?;
        if dinfo.flags & b::VFIO_DEVICE_FLAGS_PCI == 0
            || dinfo.num_regions <= b::VFIO_PCI_CONFIG_REGION_INDEX
        {
            return Err(VfioError::Unsupported {
                addr: name,
                what: format!(
                    "not a vfio-pci device (flags {:#x}, {} regions)",
                    dinfo.flags, dinfo.num_regions
                ),
            });
        }
        let mut regions = Vec::new();
        for index in 0..dinfo.num_regions.min(b::VFIO_PCI_NUM_REGIONS) {
            match sys::device_get_region_info(device.as_fd(), index) {
                Ok(r) => regions.push(RegionInfo {
                    index,
                    flags: r.flags,
                    size: r.size,
                    offset: r.offset,
                }),
                // Absent optional regions (VGA) answer EINVAL.
                Err(e) if index != 0 && index != b::VFIO_PCI_CONFIG_REGION_INDEX => {
                    let _ = e;
                }
                Err(e) => return Err(ioctl_err("VFIO_DEVICE_GET_REGION_INFO")(e)),
            }
        }
        let mut irqs = Vec::new();
        for index in 0..dinfo.num_irqs.min(b::VFIO_PCI_NUM_IRQS) {
            if let Ok(i) = sys::device_get_irq_info(device.as_fd(), index) {
                irqs.push(IrqInfo {
                    index,
                    flags: i.flags,
                    count: i.count,
                });
            }
        }

        // BAR0.
        let bar0 = regions
            .iter()
            .find(|r| r.index == b::VFIO_PCI_BAR0_REGION_INDEX)
            .copied()
            .unwrap_or(RegionInfo {
                index: 0,
                flags: 0,
                size: 0,
                offset: 0,
            });
        let min_bar = (offset::DBS + 8) as u64;
        if bar0.size < min_bar {
            return Err(VfioError::Region {
                addr: name,
                what: format!(
                    "BAR0 is {:#x} bytes, smaller than the NVMe register file plus the admin \
                     doorbells ({min_bar:#x}); is this really an NVMe controller \
                     (`lspci -vvs ADDR`)?",
                    bar0.size
                ),
            });
        }
        if bar0.flags & b::VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(VfioError::Region {
                addr: name,
                what: format!(
                    "VFIO does not allow mmap of BAR0 (region flags {:#x}); a BAR smaller than \
                     the host page size ({} bytes) cannot be mapped, and kernels before 4.16 \
                     refuse BARs holding the MSI-X table: use a newer kernel",
                    bar0.flags,
                    sys::host_page_size()
                ),
            });
        }
        let bar_len = usize::try_from(bar0.size).unwrap_or(usize::MAX);
        let bar_map = Mapping::device(device.as_fd(), bar_len, bar0.offset).map_err(|source| {
            VfioError::Mmap {
                addr: name.clone(),
                what: "BAR0",
                len: bar_len,
                source,
                hint: "check that memory space can be enabled (`lspci -vvs ADDR`) and see \
                       `dmesg | tail`",
            }
        })?;
        let bar = VfioBar::new(bar_map);

        // Config space.
        let cfg = regions
            .iter()
            .find(|r| r.index == b::VFIO_PCI_CONFIG_REGION_INDEX)
            .copied()
            .filter(|r| r.size >= 64)
            .ok_or_else(|| VfioError::Region {
                addr: name.clone(),
                what: "the PCI config region (index 7) is missing or smaller than the 64-byte \
                       header; the vfio-pci module looks broken (`dmesg | tail`)"
                    .to_string(),
            })?;
        let config = VfioConfig {
            device: device.clone(),
            region_offset: cfg.offset,
            size: cfg.size,
        };

        // IOMMU: page sizes and usable IOVA ranges.
        let iommu_bytes =
            sys::iommu_get_info(container.as_fd()).map_err(ioctl_err("VFIO_IOMMU_GET_INFO"))?;
        let iommu = IommuInfo::parse(&iommu_bytes);
        let granule = iommu::dma_granule(&iommu, sys::host_page_size());
        let (space, iova_defaulted) =
            iommu::usable_iova_space(&iommu, &report.reserved_regions, granule);
        if iova_defaulted {
            log::warn!(
                "{name}: the kernel reports no usable IOVA ranges \
                 (VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE needs Linux 5.4); using the conservative \
                 default {:#x}-{:#x} minus the MSI windows and the group's reserved regions",
                iommu::DEFAULT_IOVA_RANGE.0,
                iommu::DEFAULT_IOVA_RANGE.1
            );
        }
        if space.free_bytes() < crate::dma::HUGE_PAGE as u64 {
            return Err(VfioError::NoIovaSpace {
                addr: name,
                len: crate::dma::HUGE_PAGE as u64,
                ranges: format!("{:?}", iommu.iova_ranges),
            });
        }
        let dma = VfioDma::new(
            &name,
            Arc::new(ContainerMapper(container.clone())),
            opts.hugepages,
            granule,
            space,
        );

        let irq = match opts.interrupts {
            IrqMode::Polled => VfioIrq::polled(&name),
            IrqMode::Msix => {
                let msix = irqs
                    .iter()
                    .find(|i| i.index == b::VFIO_PCI_MSIX_IRQ_INDEX)
                    .filter(|i| i.flags & b::VFIO_IRQ_INFO_EVENTFD != 0)
                    .map_or(0, |i| u16::try_from(i.count).unwrap_or(u16::MAX));
                VfioIrq::new(&name, Some(Arc::new(MsixControl(device.clone()))), msix)
            }
        };

        // From here on, Drop tears down whatever happens.
        let p = Self {
            name,
            report,
            group,
            device_flags: dinfo.flags,
            regions,
            irqs,
            iommu,
            iova_defaulted,
            bar,
            irq,
            dma,
            config,
            clock: MonotonicClock::new(),
            device,
            _group_fd: group_fd,
            _container: container,
        };
        if p.device_flags & b::VFIO_DEVICE_FLAGS_RESET != 0 {
            if let Err(e) = p.reset() {
                log::warn!("{e}; continuing with a controller reset (CC.EN = 0)");
            }
        }
        config::update_command(
            &p.config,
            &p.name,
            config::CMD_MEMORY_SPACE | config::CMD_INTX_DISABLE,
            0,
        )?;
        // A previous user may have left the controller running: stop it before it may DMA.
        match disable_controller(&p.bar, &p.clock) {
            DisableOutcome::Gone => {
                return Err(VfioError::Region {
                    addr: p.name.clone(),
                    what: "BAR0 reads all-ones: the device does not answer (removed, powered \
                           down, or memory space refused); check `lspci -vvs ADDR` and dmesg"
                        .to_string(),
                })
            }
            DisableOutcome::TimedOut { csts } => log::warn!(
                "{}: CSTS.RDY still 1 ({csts:#x}) after CAP.TO with \
                 CC.EN = 0",
                p.name
            ),
            _ => {}
        }
        config::update_command(&p.config, &p.name, config::CMD_BUS_MASTER, 0)?;
        p.dma.prime()?;
        Ok(Arc::new(p))
    }

    /// `VFIO_DEVICE_RESET`: function-level reset (or the reset method the kernel chose for the
    /// device). Only when [`device_flags`](Self::device_flags) has `VFIO_DEVICE_FLAGS_RESET`.
    ///
    /// # Errors
    /// [`VfioError::Reset`] with the errno.
    pub fn reset(&self) -> Result<(), VfioError> {
        sys::device_reset(self.device.as_fd()).map_err(|source| VfioError::Reset {
            addr: self.name.clone(),
            source,
        })
    }

    /// The PCI address.
    pub fn addr(&self) -> &str {
        &self.name
    }
    /// The IOMMU group number.
    pub fn iommu_group(&self) -> u32 {
        self.group
    }
    /// What sysfs said at open.
    pub fn report(&self) -> &DeviceReport {
        &self.report
    }
    /// `vfio_device_info.flags` (`VFIO_DEVICE_FLAGS_RESET` = 1, `_PCI` = 2, ...).
    pub fn device_flags(&self) -> u32 {
        self.device_flags
    }
    /// The regions the device reported.
    pub fn regions(&self) -> &[RegionInfo] {
        &self.regions
    }
    /// The interrupt indexes the device reported.
    pub fn irq_infos(&self) -> &[IrqInfo] {
        &self.irqs
    }
    /// The IOMMU's page sizes and usable IOVA ranges as the kernel reported them.
    pub fn iommu_info(&self) -> &IommuInfo {
        &self.iommu
    }
    /// True if the kernel reported no IOVA ranges and the conservative default is in use.
    pub fn iova_defaulted(&self) -> bool {
        self.iova_defaulted
    }
    /// Reads a 16-bit PCI config register (checked pread on region 7).
    ///
    /// # Errors
    /// [`VfioError::Config`].
    pub fn config_read16(&self, offset: u64) -> Result<u16, VfioError> {
        config::read16(&self.config, &self.name, offset)
    }

    fn teardown(&self) {
        match disable_controller(&self.bar, &self.clock) {
            DisableOutcome::TimedOut { csts } => log::warn!(
                "{}: teardown: CSTS.RDY still 1 ({csts:#x}) after CAP.TO with CC.EN = 0",
                self.name
            ),
            DisableOutcome::Gone => {}
            _ => {}
        }
        self.irq.disable();
        if let Err(e) = config::update_command(&self.config, &self.name, 0, config::CMD_BUS_MASTER)
        {
            log::warn!("teardown: {e}");
        }
        self.dma.teardown();
        // BAR0 munmap and the fds (device, group, container) follow as the fields drop.
    }
}

impl Drop for VfioPlatform {
    fn drop(&mut self) {
        self.teardown();
    }
}

impl Platform for VfioPlatform {
    type Bar = VfioBar;
    type Dma = VfioDma;
    type Irq = VfioIrq;
    type Clock = MonotonicClock;
    fn bar(&self) -> &VfioBar {
        &self.bar
    }
    fn dma(&self) -> &VfioDma {
        &self.dma
    }
    fn irq(&self) -> &VfioIrq {
        &self.irq
    }
    fn clock(&self) -> &MonotonicClock {
        &self.clock
    }
    fn name(&self) -> &str {
        &self.name
    }
}

// `InterruptSource` is used through the trait by the core; keep the import meaningful.
const _: fn(&VfioIrq) -> u16 = <VfioIrq as InterruptSource>::max_vectors;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    /// A controller register model just deep enough for the disable sequence: RDY follows EN
    /// after `lag` reads of CSTS.
    #[derive(Debug)]
    struct FakeCtrl {
        cap: u64,
        cc: AtomicU32,
        rdy: AtomicU32,
        lag: u32,
        reads: AtomicU32,
        stuck: bool,
        gone: bool,
    }

    impl FakeCtrl {
        fn new(en: bool, rdy: bool) -> Self {
            Self {
                cap: Cap::build(63, true, 2, 0, false, 1, 0, 0).0,
                cc: AtomicU32::new(en as u32),
                rdy: AtomicU32::new(rdy as u32),
                lag: 3,
                reads: AtomicU32::new(0),
                stuck: false,
                gone: false,
            }
        }
    }

    impl Bar for FakeCtrl {
        fn size(&self) -> usize {
            0x4000
        }
        fn read32(&self, off: usize) -> u32 {
            if self.gone {
                return u32::MAX;
            }
            match off {
                0 => self.cap as u32,
                4 => (self.cap >> 32) as u32,
                0x14 => self.cc.load(Ordering::SeqCst),
                0x1c => {
                    let n = self.reads.fetch_add(1, Ordering::SeqCst);
                    let en = self.cc.load(Ordering::SeqCst) & 1;
                    if n >= self.lag && !self.stuck {
                        self.rdy.store(en, Ordering::SeqCst);
                    }
                    self.rdy.load(Ordering::SeqCst)
                }
                _ => 0,
            }
        }
        unsafe fn write32(&self, off: usize, v: u32) {
            if off == 0x14 {
                self.cc.store(v, Ordering::SeqCst);
                self.reads.store(0, Ordering::SeqCst);
            }
        }
    }

    /// A clock that advances 1 ms per relax.
    #[derive(Debug, Default)]
    struct StepClock(AtomicU64);
    impl Clock for StepClock {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
        fn relax(&self) {
            self.0.fetch_add(1_000_000, Ordering::SeqCst);
        }
    }

    #[test]
    fn disable_sequences() {
        let c = StepClock::default();
        assert_eq!(
            disable_controller(&FakeCtrl::new(false, false), &c),
            DisableOutcome::AlreadyDisabled
        );
        let f = FakeCtrl::new(true, true);
        assert_eq!(disable_controller(&f, &c), DisableOutcome::Disabled);
        assert_eq!(f.cc.load(Ordering::SeqCst) & 1, 0);
        // Enable in progress: waits for RDY = 1, then clears EN.
        let f = FakeCtrl::new(true, false);
        assert_eq!(disable_controller(&f, &c), DisableOutcome::Disabled);
        assert_eq!(f.cc.load(Ordering::SeqCst) & 1, 0);
        let f = FakeCtrl {
            gone: true,
            ..FakeCtrl::new(true, true)
        };
        assert_eq!(disable_controller(&f, &c), DisableOutcome::Gone);
        // Stuck RDY: gives up after CAP.TO (2 × 500 ms) on the step clock.
        let c = StepClock::default();
        let f = FakeCtrl {
            stuck: true,
            ..FakeCtrl::new(true, true)
        };
        assert_eq!(
            disable_controller(&f, &c),
            DisableOutcome::TimedOut { csts: 1 }
        );
        let waited_ms = c.now_ns() / 1_000_000;
        assert!((1000..=1002).contains(&waited_ms), "{waited_ms}");
    }
}

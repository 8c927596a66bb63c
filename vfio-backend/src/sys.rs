//! Every system call of this crate that needs `unsafe`: the VFIO ioctls (linux/vfio.h),
//! `mmap`/`munmap`, `pread`/`pwrite` on the device fd, eventfds and `poll(2)`.
//!
//! Each function is safe to call: it checks its arguments, passes the kernel only memory it
//! owns for the duration of the call, and turns `-1` into [`io::Error::last_os_error`] (the
//! errno is never dropped, unlike `vfio-ioctls`' `region_read`/`reset`). Each `unsafe`
//! block carries its own `// SAFETY:` comment.
//!
//! The ioctl numbers follow linux/vfio.h: `_IO(VFIO_TYPE, VFIO_BASE + n)`, with the struct
//! passed by pointer and its size in `argsz` (the VFIO convention, not the `_IOW` size bits).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;

use vfio_bindings::bindings::vfio as b;

/// `_IO(type, nr)` of asm-generic/ioctl.h (x86, arm64, riscv, loongarch, s390): direction
/// "none" is 0 at bit 30.
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
const IOC_NONE: u32 = 0;
/// `_IO(type, nr)` on powerpc, mips and sparc: direction "none" is 1 at bit 29.
#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
const IOC_NONE: u32 = 1 << 29;

const fn vfio_io(n: u32) -> u32 {
    IOC_NONE | ((b::VFIO_TYPE as u32) << 8) | (b::VFIO_BASE + n)
}

/// The VFIO ioctl request numbers (linux/vfio.h).
pub(crate) mod nr {
    use super::vfio_io;
    /// `VFIO_GET_API_VERSION`, on the container.
    pub const GET_API_VERSION: u32 = vfio_io(0);
    /// `VFIO_CHECK_EXTENSION`, on the container.
    pub const CHECK_EXTENSION: u32 = vfio_io(1);
    /// `VFIO_SET_IOMMU`, on the container.
    pub const SET_IOMMU: u32 = vfio_io(2);
    /// `VFIO_GROUP_GET_STATUS`, on a group.
    pub const GROUP_GET_STATUS: u32 = vfio_io(3);
    /// `VFIO_GROUP_SET_CONTAINER`, on a group.
    pub const GROUP_SET_CONTAINER: u32 = vfio_io(4);
    /// `VFIO_GROUP_UNSET_CONTAINER`, on a group (not used: closing the group fd unsets).
    #[allow(dead_code)]
    pub const GROUP_UNSET_CONTAINER: u32 = vfio_io(5);
    /// `VFIO_GROUP_GET_DEVICE_FD`, on a group.
    pub const GROUP_GET_DEVICE_FD: u32 = vfio_io(6);
    /// `VFIO_DEVICE_GET_INFO`, on the device.
    pub const DEVICE_GET_INFO: u32 = vfio_io(7);
    /// `VFIO_DEVICE_GET_REGION_INFO`, on the device.
    pub const DEVICE_GET_REGION_INFO: u32 = vfio_io(8);
    /// `VFIO_DEVICE_GET_IRQ_INFO`, on the device.
    pub const DEVICE_GET_IRQ_INFO: u32 = vfio_io(9);
    /// `VFIO_DEVICE_SET_IRQS`, on the device.
    pub const DEVICE_SET_IRQS: u32 = vfio_io(10);
    /// `VFIO_DEVICE_RESET`, on the device.
    pub const DEVICE_RESET: u32 = vfio_io(11);
    /// `VFIO_IOMMU_GET_INFO`, on the container (type1).
    pub const IOMMU_GET_INFO: u32 = vfio_io(12);
    /// `VFIO_IOMMU_MAP_DMA`, on the container (type1).
    pub const IOMMU_MAP_DMA: u32 = vfio_io(13);
    /// `VFIO_IOMMU_UNMAP_DMA`, on the container (type1).
    pub const IOMMU_UNMAP_DMA: u32 = vfio_io(14);
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An ioctl whose argument is a plain integer (or nothing).
fn ioctl_val(fd: BorrowedFd<'_>, request: u32, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the requests passed here (GET_API_VERSION, CHECK_EXTENSION, SET_IOMMU,
    // DEVICE_RESET) take their argument by value and touch no memory of
    // ours; `fd` is a valid open descriptor for the duration of the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::Ioctl, arg) };
    cvt(ret)
}

/// An ioctl whose argument points to `T`, which the kernel reads and may write back.
///
/// `T` must be a `#[repr(C)]` VFIO structure (or a buffer starting with one) whose layout is
/// the one `request` expects, with `argsz` not larger than `size_of_val(arg)`.
fn ioctl_ptr<T: ?Sized>(fd: BorrowedFd<'_>, request: u32, arg: &mut T) -> io::Result<libc::c_int> {
    let ptr: *mut T = arg;
    // SAFETY: `arg` is an exclusive borrow of memory we own, valid for reads and writes of its
    // whole size for the duration of the call. The kernel accesses at most what `request`
    // defines: for the structs with `argsz` every caller in this module sets it to at most
    // `size_of_val(arg)` (VFIO copies `argsz` bytes at most, linux/vfio.h); SET_CONTAINER
    // reads one `int`; GET_DEVICE_FD reads a NUL-terminated string that `arg` holds whole.
    // `fd` is open for the duration of the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::Ioctl, ptr.cast::<u8>()) };
    cvt(ret)
}

/// Opens `path` read-write with `O_CLOEXEC`.
pub(crate) fn open_rw(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: `open` just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `VFIO_GET_API_VERSION`: the container's API version (`VFIO_API_VERSION`, 0).
pub(crate) fn get_api_version(container: BorrowedFd<'_>) -> io::Result<i32> {
    ioctl_val(container, nr::GET_API_VERSION, 0)
}

/// `VFIO_CHECK_EXTENSION`: whether the container supports IOMMU type `ext` (> 0 if so).
pub(crate) fn check_extension(container: BorrowedFd<'_>, ext: u32) -> io::Result<bool> {
    Ok(ioctl_val(container, nr::CHECK_EXTENSION, ext as libc::c_ulong)? > 0)
}

/// `VFIO_SET_IOMMU`: selects the IOMMU model of the container (`VFIO_TYPE1v2_IOMMU`).
pub(crate) fn set_iommu(container: BorrowedFd<'_>, kind: u32) -> io::Result<()> {
    ioctl_val(container, nr::SET_IOMMU, kind as libc::c_ulong).map(drop)
}

/// `VFIO_GROUP_GET_STATUS`: the group's flags (`VFIO_GROUP_FLAGS_VIABLE`,
/// `VFIO_GROUP_FLAGS_CONTAINER_SET`).
pub(crate) fn group_get_status(group: BorrowedFd<'_>) -> io::Result<u32> {
    let mut st = b::vfio_group_status {
        argsz: size_of::<b::vfio_group_status>() as u32,
        flags: 0,
    };
    ioctl_ptr(group, nr::GROUP_GET_STATUS, &mut st)?;
    Ok(st.flags)
}

/// `VFIO_GROUP_SET_CONTAINER`: attaches the group to the container (argument: a pointer to
/// the container fd).
pub(crate) fn group_set_container(
    group: BorrowedFd<'_>,
    container: BorrowedFd<'_>,
) -> io::Result<()> {
    let mut fd: libc::c_int = container.as_raw_fd();
    ioctl_ptr(group, nr::GROUP_SET_CONTAINER, &mut fd).map(drop)
}

/// `VFIO_GROUP_GET_DEVICE_FD`: a device fd for the device named `name` (the PCI address).
pub(crate) fn group_get_device_fd(group: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let mut c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))?
        .into_bytes_with_nul();
    let fd = ioctl_ptr(group, nr::GROUP_GET_DEVICE_FD, c.as_mut_slice())?;
    // SAFETY: the ioctl returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `VFIO_DEVICE_GET_INFO`.
pub(crate) fn device_get_info(device: BorrowedFd<'_>) -> io::Result<b::vfio_device_info> {
    let mut info = b::vfio_device_info {
        argsz: size_of::<b::vfio_device_info>() as u32,
        ..Default::default()
    };
    ioctl_ptr(device, nr::DEVICE_GET_INFO, &mut info)?;
    Ok(info)
}

/// `VFIO_DEVICE_GET_REGION_INFO` for region `index` (capabilities not requested).
pub(crate) fn device_get_region_info(
    device: BorrowedFd<'_>,
    index: u32,
) -> io::Result<b::vfio_region_info> {
    let mut info = b::vfio_region_info {
        argsz: size_of::<b::vfio_region_info>() as u32,
        index,
        ..Default::default()
    };
    ioctl_ptr(device, nr::DEVICE_GET_REGION_INFO, &mut info)?;
    Ok(info)
}

/// `VFIO_DEVICE_GET_IRQ_INFO` for IRQ index `index`.
pub(crate) fn device_get_irq_info(
    device: BorrowedFd<'_>,
    index: u32,
) -> io::Result<b::vfio_irq_info> {
    let mut info = b::vfio_irq_info {
        argsz: size_of::<b::vfio_irq_info>() as u32,
        index,
        ..Default::default()
    };
    ioctl_ptr(device, nr::DEVICE_GET_IRQ_INFO, &mut info)?;
    Ok(info)
}

// The word layout of `struct vfio_irq_set` used below: argsz, flags, index, start, count, data.
const _: () = assert!(size_of::<b::vfio_irq_set>() == 20);
const _: () = assert!(std::mem::offset_of!(b::vfio_irq_set, count) == 16);

/// `VFIO_DEVICE_SET_IRQS` with `VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER`:
/// routes vectors `0 .. fds.len()` of IRQ index `index` to the eventfds.
pub(crate) fn device_set_irq_eventfds(
    device: BorrowedFd<'_>,
    index: u32,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let count = u32::try_from(fds.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many vectors"))?;
    let mut words: Vec<u32> = Vec::with_capacity(5 + fds.len());
    let argsz = (20 + 4 * fds.len()) as u32;
    words.extend_from_slice(&[
        argsz,
        b::VFIO_IRQ_SET_DATA_EVENTFD | b::VFIO_IRQ_SET_ACTION_TRIGGER,
        index,
        0,
        count,
    ]);
    // The data is an array of `__s32` fds (linux/vfio.h, VFIO_DEVICE_SET_IRQS).
    words.extend(fds.iter().map(|fd| fd.as_raw_fd() as u32));
    ioctl_ptr(device, nr::DEVICE_SET_IRQS, words.as_mut_slice()).map(drop)
}

/// `VFIO_DEVICE_SET_IRQS` with `VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER`,
/// `count = 0`: disables every vector of IRQ index `index`.
pub(crate) fn device_disable_irqs(device: BorrowedFd<'_>, index: u32) -> io::Result<()> {
    let mut words: [u32; 5] = [
        20,
        b::VFIO_IRQ_SET_DATA_NONE | b::VFIO_IRQ_SET_ACTION_TRIGGER,
        index,
        0,
        0,
    ];
    ioctl_ptr(device, nr::DEVICE_SET_IRQS, &mut words).map(drop)
}

/// `VFIO_DEVICE_RESET`: a function-level (or other device-specific) reset.
pub(crate) fn device_reset(device: BorrowedFd<'_>) -> io::Result<()> {
    ioctl_val(device, nr::DEVICE_RESET, 0).map(drop)
}

/// `VFIO_IOMMU_GET_INFO` with its capability chain: the raw bytes of `struct
/// vfio_iommu_type1_info` followed by its capabilities, to be parsed by
/// [`crate::iommu::IommuInfo::parse`].
pub(crate) fn iommu_get_info(container: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    const HDR: usize = size_of::<b::vfio_iommu_type1_info>();
    let mut argsz = HDR;
    // Twice at most: the first call tells how much room the capabilities need (argsz grows).
    for _ in 0..3 {
        // u64 words keep the buffer 8-byte aligned like the struct.
        let mut buf = vec![0u64; argsz.div_ceil(8)];
        let bytes_len = buf.len() * 8;
        write_u32_ne(&mut buf, 0, argsz as u32);
        ioctl_ptr(container, nr::IOMMU_GET_INFO, buf.as_mut_slice())?;
        let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let reported = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if reported <= bytes_len {
            return Ok(bytes);
        }
        argsz = reported;
    }
    Err(io::Error::other(
        "VFIO_IOMMU_GET_INFO kept growing its argsz",
    ))
}

fn write_u32_ne(words: &mut [u64], byte_off: usize, v: u32) {
    let w = byte_off / 8;
    let mut bytes = words[w].to_ne_bytes();
    let o = byte_off % 8;
    bytes[o..o + 4].copy_from_slice(&v.to_ne_bytes());
    words[w] = u64::from_ne_bytes(bytes);
}

/// `VFIO_IOMMU_MAP_DMA` read|write: makes `len` bytes at `vaddr` visible to the device at
/// `iova` (and pins them).
pub(crate) fn iommu_map_dma(
    container: BorrowedFd<'_>,
    vaddr: u64,
    iova: u64,
    len: u64,
) -> io::Result<()> {
    let mut m = b::vfio_iommu_type1_dma_map {
        argsz: size_of::<b::vfio_iommu_type1_dma_map>() as u32,
        flags: b::VFIO_DMA_MAP_FLAG_READ | b::VFIO_DMA_MAP_FLAG_WRITE,
        vaddr,
        iova,
        size: len,
    };
    ioctl_ptr(container, nr::IOMMU_MAP_DMA, &mut m).map(drop)
}

/// `VFIO_IOMMU_UNMAP_DMA` of exactly one earlier mapping; returns the bytes unmapped.
pub(crate) fn iommu_unmap_dma(container: BorrowedFd<'_>, iova: u64, len: u64) -> io::Result<u64> {
    let mut u = b::vfio_iommu_type1_dma_unmap {
        argsz: size_of::<b::vfio_iommu_type1_dma_unmap>() as u32,
        flags: 0,
        iova,
        size: len,
        data: Default::default(),
    };
    ioctl_ptr(container, nr::IOMMU_UNMAP_DMA, &mut u)?;
    Ok(u.size)
}

/// `pread(2)` of exactly `buf.len()` bytes at `offset`; a short read is an error.
pub(crate) fn pread_exact(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let off = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("short read: {n} of {} bytes", buf.len()),
        ));
    }
    Ok(())
}

/// `pwrite(2)` of exactly `buf.len()` bytes at `offset`; a short write is an error.
pub(crate) fn pwrite_all(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<()> {
    let off = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), off) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {n} of {} bytes", buf.len()),
        ));
    }
    Ok(())
}

/// `MAP_HUGE_2MB` (`21 << MAP_HUGE_SHIFT`, linux/mman.h): the 2 MiB hugepage size
/// explicitly, so that a kernel whose default hugepage size differs (arm64 with 64 KiB base
/// pages: 512 MiB) fails instead of handing out a different size.
const MAP_HUGE_2MB: libc::c_int = 21 << 26;

/// An owned memory mapping, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is an address range owned by this process; who may access the bytes is
// decided by the types that hold it (VfioBar, VfioDma), which synchronise their users.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only exposes the address and the length.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Anonymous private read-write memory of `len` bytes (zeroed by the kernel), backed by
    /// 2 MiB hugepages if `huge`, populated up front.
    pub(crate) fn anonymous(len: usize, huge: bool) -> io::Result<Self> {
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        if huge {
            flags |= libc::MAP_HUGETLB | MAP_HUGE_2MB;
        }
        Self::mmap(len, flags, None, 0)
    }

    /// A shared read-write mapping of `len` bytes of `fd` at `offset` (a VFIO region).
    pub(crate) fn device(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<Self> {
        Self::mmap(len, libc::MAP_SHARED, Some(fd), offset)
    }

    fn mmap(
        len: usize,
        flags: libc::c_int,
        fd: Option<BorrowedFd<'_>>,
        offset: u64,
    ) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "zero-length mapping",
            ));
        }
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let raw_fd = fd.map_or(-1, |f| f.as_raw_fd());
        // SAFETY: a fresh mapping at an address the kernel chooses (no MAP_FIXED), so no
        // existing memory is affected; `raw_fd` is -1 or a descriptor open for the call.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw_fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Self { ptr, len })
    }

    /// The first byte.
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr .. ptr + len` is exactly the mapping this value owns; after drop
        // nothing refers to it (the owners drop their users first).
        let r = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        if r != 0 {
            log::warn!(
                "munmap({:p}, {:#x}) failed: {}",
                self.ptr,
                self.len,
                io::Error::last_os_error()
            );
        }
    }
}

/// A non-blocking, close-on-exec eventfd (eventfd(2)), counter 0.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads (and so resets) an eventfd's counter without blocking: `Ok(0)` if nothing was
/// pending.
pub(crate) fn eventfd_consume(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut v = [0u8; 8];
    // SAFETY: `v` is valid for writes of 8 bytes for the duration of the call.
    let n = unsafe { libc::read(fd.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(0)
        } else {
            Err(e)
        };
    }
    if n != 8 {
        return Err(io::Error::other("short eventfd read"));
    }
    Ok(u64::from_ne_bytes(v))
}

/// Adds `v` to an eventfd's counter (what the kernel does when a vector fires; used by tests).
#[cfg(test)]
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>, v: u64) -> io::Result<()> {
    let bytes = v.to_ne_bytes();
    // SAFETY: `bytes` is valid for reads of 8 bytes for the duration of the call.
    let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), 8) };
    if n != 8 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `poll(2)` one descriptor for input for at most `timeout_ms`; `true` if readable.
/// `EINTR` is reported as not-ready (the caller loops against its own deadline).
pub(crate) fn poll_in(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call, and we pass nfds = 1.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(n > 0 && p.revents & libc::POLLIN != 0)
}

/// The soft `RLIMIT_MEMLOCK` in bytes (`None` for unlimited).
pub(crate) fn memlock_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit for the kernel to fill.
    let ret = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) };
    if ret != 0 || r.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        // `rlim_t` is 32 bits wide on some 32-bit targets.
        #[allow(clippy::unnecessary_cast)]
        Some(r.rlim_cur as u64)
    }
}

/// The size of a base page of this process.
pub(crate) fn host_page_size() -> usize {
    // SAFETY: sysconf takes no pointers.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v <= 0 {
        4096
    } else {
        v as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request numbers of linux/vfio.h on asm-generic targets (`_IO(';', 100 + n)`).
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn ioctl_numbers_match_linux() {
        assert_eq!(nr::GET_API_VERSION, 0x3b64);
        assert_eq!(nr::CHECK_EXTENSION, 0x3b65);
        assert_eq!(nr::SET_IOMMU, 0x3b66);
        assert_eq!(nr::GROUP_GET_STATUS, 0x3b67);
        assert_eq!(nr::GROUP_SET_CONTAINER, 0x3b68);
        assert_eq!(nr::GROUP_UNSET_CONTAINER, 0x3b69);
        assert_eq!(nr::GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(nr::DEVICE_GET_INFO, 0x3b6b);
        assert_eq!(nr::DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(nr::DEVICE_GET_IRQ_INFO, 0x3b6d);
        assert_eq!(nr::DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(nr::DEVICE_RESET, 0x3b6f);
        assert_eq!(nr::IOMMU_GET_INFO, 0x3b70);
        assert_eq!(nr::IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(nr::IOMMU_UNMAP_DMA, 0x3b72);
    }

    #[test]
    fn eventfd_roundtrip_and_poll() {
        use std::os::fd::AsFd;
        let fd = eventfd().unwrap();
        assert_eq!(eventfd_consume(fd.as_fd()).unwrap(), 0);
        assert!(!poll_in(fd.as_fd(), 0).unwrap());
        eventfd_signal(fd.as_fd(), 2).unwrap();
        assert!(poll_in(fd.as_fd(), 0).unwrap());
        assert_eq!(eventfd_consume(fd.as_fd()).unwrap(), 2);
        assert!(!poll_in(fd.as_fd(), 0).unwrap());
    }

    #[test]
    fn anonymous_mapping_is_zeroed() {
        let m = Mapping::anonymous(8192, false).unwrap();
        assert_eq!(m.len(), 8192);
        let p = m.ptr().as_ptr();
        for i in (0..8192).step_by(512) {
            // SAFETY: in bounds of the live mapping; no reference is created.
            assert_eq!(unsafe { p.add(i).read_volatile() }, 0);
        }
    }
}

//! [`VfioDma`]: device-visible memory mapped through the type1 IOMMU
//! (`VFIO_IOMMU_MAP_DMA` / `VFIO_IOMMU_UNMAP_DMA`, linux/vfio.h).
//!
//! Memory comes in chunks of 2 MiB: one 2 MiB hugepage each (`MAP_HUGETLB | MAP_HUGE_2MB`)
//! when available, 4 KiB pages otherwise. Each chunk reserves a 2 MiB-aligned window of IOVA
//! space inside the IOMMU's usable ranges; small allocations are carved out of a chunk at the
//! same offset in both spaces. Larger ones get a chunk of their own. Every allocation is
//! mapped in the IOMMU on allocation and unmapped on free, so a device that touches freed
//! memory faults instead of corrupting the next user of it. What is still mapped at teardown
//! is unmapped then.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use nvme_core::hw::{DmaAllocator, DmaRegion};

use crate::error::VfioError;
use crate::range::RangeAllocator;
use crate::sys::{self, Mapping};
use crate::HugePagePolicy;

/// The hugepage size used, and the chunk size of the arena.
pub const HUGE_PAGE: usize = 2 << 20;

/// IOMMU map/unmap (the container side, mockable in tests).
pub(crate) trait IommuMapper: Send + Sync + fmt::Debug {
    fn map(&self, vaddr: u64, iova: u64, len: u64) -> io::Result<()>;
    fn unmap(&self, iova: u64, len: u64) -> io::Result<()>;
}

/// The real mapper: type1 ioctls on the container fd.
#[derive(Debug)]
pub(crate) struct ContainerMapper(pub(crate) Arc<OwnedFd>);

impl IommuMapper for ContainerMapper {
    fn map(&self, vaddr: u64, iova: u64, len: u64) -> io::Result<()> {
        sys::iommu_map_dma(self.0.as_fd(), vaddr, iova, len)
    }
    fn unmap(&self, iova: u64, len: u64) -> io::Result<()> {
        let n = sys::iommu_unmap_dma(self.0.as_fd(), iova, len)?;
        if n != len {
            return Err(io::Error::other(format!(
                "unmapped {n:#x} bytes instead of {len:#x}"
            )));
        }
        Ok(())
    }
}

/// A piece of host memory with an IOVA window of the same size.
#[derive(Debug)]
struct Backing {
    map: Mapping,
    /// Offset of the first usable (granule-aligned) byte in `map`.
    start: usize,
    len: usize,
    iova: u64,
    huge: bool,
}

impl Backing {
    fn base(&self) -> *mut u8 {
        self.map.ptr().as_ptr().wrapping_add(self.start)
    }
}

#[derive(Debug)]
struct Chunk {
    backing: Backing,
    /// Free offsets inside the chunk.
    space: RangeAllocator,
    live: usize,
}

#[derive(Debug, Clone, Copy)]
struct Alloc {
    chunk: u64,
    offset: u64,
    len: u64,
    ptr: usize,
    iova: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Huge {
    Untried,
    Yes,
    No,
}

#[derive(Debug)]
struct State {
    iova: RangeAllocator,
    chunks: BTreeMap<u64, Chunk>,
    allocs: HashMap<u64, Alloc>,
    next_id: u64,
    huge: Huge,
    torn_down: bool,
}

/// DMA memory of one VFIO container, as an [`nvme_core::hw::DmaAllocator`].
pub struct VfioDma {
    addr: String,
    mapper: Arc<dyn IommuMapper>,
    policy: HugePagePolicy,
    granule: usize,
    chunk_len: usize,
    host_page: usize,
    ranges_text: String,
    state: Mutex<State>,
}

impl fmt::Debug for VfioDma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("VfioDma")
            .field("addr", &self.addr)
            .field("granule", &self.granule)
            .field("policy", &self.policy)
            .field("hugepages", &(st.huge == Huge::Yes))
            .field("chunks", &st.chunks.len())
            .field("allocations", &st.allocs.len())
            .finish()
    }
}

/// Snapshot of the allocator, for diagnostics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaStats {
    /// Chunks (2 MiB or larger) held.
    pub chunks: usize,
    /// Live allocations.
    pub allocations: usize,
    /// Whether new chunks are backed by 2 MiB hugepages.
    pub hugepages: bool,
    /// How many of the chunks held are hugepage-backed.
    pub huge_chunks: usize,
    /// Free IOVA space in bytes (saturating).
    pub free_iova: u64,
}

impl VfioDma {
    /// An allocator handing out `granule`-aligned memory inside `iova_space`.
    pub(crate) fn new(
        addr: &str,
        mapper: Arc<dyn IommuMapper>,
        policy: HugePagePolicy,
        granule: u64,
        iova_space: RangeAllocator,
    ) -> Self {
        let granule = granule.max(4096) as usize;
        let ranges_text = describe_ranges(&iova_space);
        let huge = match policy {
            HugePagePolicy::Never => Huge::No,
            // A granule above 2 MiB cannot be served from 2 MiB pages.
            _ if granule > HUGE_PAGE => Huge::No,
            _ => Huge::Untried,
        };
        Self {
            addr: addr.to_string(),
            mapper,
            policy,
            granule,
            chunk_len: HUGE_PAGE.max(granule),
            host_page: sys::host_page_size(),
            ranges_text,
            state: Mutex::new(State {
                iova: iova_space,
                chunks: BTreeMap::new(),
                allocs: HashMap::new(),
                next_id: 1,
                huge,
                torn_down: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes one chunk ready (without mapping anything in the IOMMU), so that hugepage
    /// availability is decided, and reported, at open rather than at the first allocation.
    ///
    /// # Errors
    /// [`VfioError::HugePagesRequired`] under [`HugePagePolicy::Require`] without hugepages;
    /// out of memory or IOVA space.
    pub(crate) fn prime(&self) -> Result<(), VfioError> {
        let mut st = self.lock();
        if st.chunks.is_empty() {
            let chunk_len = self.chunk_len;
            self.new_chunk(&mut st, chunk_len)?;
        }
        Ok(())
    }

    /// Current numbers.
    pub fn stats(&self) -> DmaStats {
        let st = self.lock();
        DmaStats {
            chunks: st.chunks.len(),
            allocations: st.allocs.len(),
            hugepages: st.huge == Huge::Yes,
            huge_chunks: st.chunks.values().filter(|c| c.backing.huge).count(),
            free_iova: st.iova.free_bytes(),
        }
    }

    /// The usable IOVA ranges this allocator draws from, as text.
    pub fn iova_ranges(&self) -> &str {
        &self.ranges_text
    }

    /// Host memory for a new chunk of `len` bytes (a multiple of `chunk_len`).
    fn host_memory(&self, st: &mut State, len: usize) -> Result<(Mapping, usize, bool), VfioError> {
        if st.huge != Huge::No {
            match Mapping::anonymous(len, true) {
                Ok(m) => {
                    st.huge = Huge::Yes;
                    return Ok((m, 0, true));
                }
                Err(e) if self.policy == HugePagePolicy::Require => {
                    return Err(VfioError::HugePagesRequired {
                        addr: self.addr.clone(),
                        source: e,
                    })
                }
                Err(e) if st.huge == Huge::Untried => {
                    st.huge = Huge::No;
                    log::warn!(
                        "{}: no 2 MiB hugepages available ({e}); falling back to \
                         4 KiB pages (slower: more IOMMU entries and TLB misses). To use \
                         hugepages, reserve some as root: `echo 64 > /proc/sys/vm/nr_hugepages` \
                         (or `hugepages=64` on the kernel command line)",
                        self.addr
                    );
                }
                Err(_) => {
                    // Hugepages ran out after some were had: use base pages from now on, but
                    // try again for the next chunk only if this one was the first failure.
                }
            }
        }
        // Over-allocate so that a granule larger than the host page can be aligned.
        let slack = self.granule.saturating_sub(self.host_page);
        let total = len.checked_add(slack).ok_or_else(|| self.invalid(len))?;
        let m = Mapping::anonymous(total, false).map_err(|source| VfioError::Mmap {
            addr: self.addr.clone(),
            what: "DMA memory",
            len: total,
            source,
            hint: "out of memory, or the address-space limit (`ulimit -v`) is too low",
        })?;
        let p = m.ptr().as_ptr() as usize;
        let start = p.next_multiple_of(self.granule) - p;
        Ok((m, start, false))
    }

    fn new_chunk(&self, st: &mut State, len: usize) -> Result<u64, VfioError> {
        let (map, start, huge) = self.host_memory(st, len)?;
        // 2 MiB-aligned IOVA where possible (so the IOMMU can use large pages), otherwise
        // granule-aligned.
        let iova = st
            .iova
            .alloc(len as u64, HUGE_PAGE.max(self.granule) as u64)
            .or_else(|| st.iova.alloc(len as u64, self.granule as u64))
            .ok_or_else(|| VfioError::NoIovaSpace {
                addr: self.addr.clone(),
                len: len as u64,
                ranges: self.ranges_text.clone(),
            })?;
        let id = st.next_id;
        st.next_id += 1;
        st.chunks.insert(
            id,
            Chunk {
                backing: Backing {
                    map,
                    start,
                    len,
                    iova,
                    huge,
                },
                space: RangeAllocator::with_range(0, len as u64 - 1),
                live: 0,
            },
        );
        Ok(id)
    }

    fn invalid(&self, len: usize) -> VfioError {
        VfioError::InvalidDmaRequest {
            addr: self.addr.clone(),
            len,
        }
    }

    /// Releases a chunk with no live allocation: its IOVA window and its memory.
    fn release_chunk(st: &mut State, id: u64) {
        if let Some(c) = st.chunks.remove(&id) {
            let _ = st.iova.free(c.backing.iova, c.backing.len as u64);
            drop(c); // munmap
        }
    }

    fn map_error(&self, iova: u64, len: u64, source: io::Error) -> VfioError {
        if source.raw_os_error() == Some(libc::ENOMEM) {
            VfioError::MemlockLimit {
                addr: self.addr.clone(),
                len,
                limit: match sys::memlock_limit() {
                    Some(l) => format!("{} KiB", l / 1024),
                    None => "unlimited: then the system is out of memory".to_string(),
                },
                source,
            }
        } else {
            VfioError::DmaMap {
                addr: self.addr.clone(),
                iova,
                len,
                source,
            }
        }
    }

    /// Unmaps and releases everything. Called by the platform's teardown once the controller
    /// is disabled and bus mastering is off; idempotent.
    pub(crate) fn teardown(&self) {
        let mut st = self.lock();
        let allocs: Vec<Alloc> = st.allocs.drain().map(|(_, a)| a).collect();
        let mut leaked = Vec::new();
        for a in allocs {
            if let Err(e) = self.mapper.unmap(a.iova, a.len) {
                log::warn!(
                    "{}: teardown: VFIO_IOMMU_UNMAP_DMA iova {:#x} len {:#x}: {e}; \
                     keeping its memory",
                    self.addr,
                    a.iova,
                    a.len
                );
                leaked.push(a.chunk);
            }
        }
        let ids: Vec<u64> = st.chunks.keys().copied().collect();
        for id in ids {
            if leaked.contains(&id) {
                // Still mapped in the IOMMU: never give the pages back to the system.
                if let Some(c) = st.chunks.remove(&id) {
                    std::mem::forget(c);
                }
            } else {
                Self::release_chunk(&mut st, id);
            }
        }
        st.torn_down = true;
    }
}

fn describe_ranges(space: &RangeAllocator) -> String {
    let v: Vec<String> = space
        .intervals()
        .map(|(s, e)| format!("{s:#x}-{e:#x}"))
        .collect();
    if v.is_empty() {
        "(none)".to_string()
    } else {
        v.join(", ")
    }
}

// SAFETY: for every region from `allocate` until its `free`:
// - `ptr .. ptr + len` lies inside one live anonymous mapping owned by a chunk (which is only
//   unmapped once no allocation in it is live, or at teardown), and the chunk's range
//   allocator never hands out overlapping offsets, so regions never overlap;
// - `ptr` is granule-aligned (the usable start of each chunk is, and offsets are multiples of
//   the granule), the IOVA too (IOVA windows and offsets are granule multiples), and `len` is
//   a non-zero granule multiple ≥ the request; `page_size()` returns the granule (≥ 4096, a
//   power of two: the max of 4096, the host page and the smallest IOMMU page);
// - `VFIO_IOMMU_MAP_DMA` maps exactly `iova .. iova + len` to those pages (pinned), coherent
//   on the supported targets (x86 and arm64 SMMU with coherent PCIe);
// - the bytes are zeroed before being handed out.
unsafe impl DmaAllocator for VfioDma {
    type Error = VfioError;

    fn page_size(&self) -> usize {
        self.granule
    }

    fn allocate(&self, len: usize) -> Result<DmaRegion, VfioError> {
        if len == 0 {
            return Err(self.invalid(len));
        }
        let size = len
            .checked_next_multiple_of(self.granule)
            .ok_or_else(|| self.invalid(len))?;
        let mut st = self.lock();
        if st.torn_down {
            return Err(self.invalid(len));
        }
        let g = self.granule as u64;
        // First fit among the chunks (small requests), else a new chunk sized for it.
        let mut found = None;
        if size <= self.chunk_len {
            for (&id, c) in st.chunks.iter_mut() {
                if let Some(off) = c.space.alloc(size as u64, g) {
                    found = Some((id, off));
                    break;
                }
            }
        }
        let (id, off) = match found {
            Some(f) => f,
            None => {
                let clen = size
                    .checked_next_multiple_of(self.chunk_len)
                    .ok_or_else(|| self.invalid(len))?;
                let id = self.new_chunk(&mut st, clen)?;
                let c = st.chunks.get_mut(&id).expect("just inserted");
                let off = c.space.alloc(size as u64, g).expect("fresh chunk fits");
                (id, off)
            }
        };
        let (ptr, iova) = {
            let c = st.chunks.get(&id).expect("chunk exists");
            (
                c.backing.base().wrapping_add(off as usize),
                c.backing.iova + off,
            )
        };
        // SAFETY: `ptr .. ptr + size` is inside the chunk's live mapping (the offset came
        // from the chunk's allocator over `0 .. chunk len`), nobody else holds it (it was
        // free), and the device cannot reach it (it was unmapped from the IOMMU at its last
        // free and is mapped again only below). Raw-pointer write, no reference.
        unsafe { std::ptr::write_bytes(ptr, 0, size) };
        if let Err(source) = self.mapper.map(ptr as u64, iova, size as u64) {
            let c = st.chunks.get_mut(&id).expect("chunk exists");
            let _ = c.space.free(off, size as u64);
            if c.live == 0 && st.chunks.len() > 1 {
                Self::release_chunk(&mut st, id);
            }
            return Err(self.map_error(iova, size as u64, source));
        }
        if let Some(c) = st.chunks.get_mut(&id) {
            c.live += 1;
        }
        let cookie = st.next_id;
        st.next_id += 1;
        st.allocs.insert(
            cookie,
            Alloc {
                chunk: id,
                offset: off,
                len: size as u64,
                ptr: ptr as usize,
                iova,
            },
        );
        let ptr = NonNull::new(ptr).expect("mapping is never at address 0");
        Ok(DmaRegion::new(ptr, iova, size, cookie))
    }

    unsafe fn free(&self, region: DmaRegion) {
        let mut st = self.lock();
        let Some(a) = st.allocs.get(&region.cookie()).copied() else {
            log::warn!(
                "{}: free of an unknown DMA region (iova {:#x}); ignored",
                self.addr,
                region.iova()
            );
            return;
        };
        if a.ptr != region.ptr().as_ptr() as usize
            || a.iova != region.iova()
            || a.len != region.len() as u64
        {
            log::warn!(
                "{}: free of a DMA region that does not match its allocation \
                 (iova {:#x} vs {:#x}); ignored",
                self.addr,
                region.iova(),
                a.iova
            );
            return;
        }
        st.allocs.remove(&region.cookie());
        if let Err(e) = self.mapper.unmap(a.iova, a.len) {
            // Still visible to the device: never reuse it.
            log::warn!(
                "{}: VFIO_IOMMU_UNMAP_DMA iova {:#x} len {:#x}: {e}; the memory is \
                 kept out of use",
                self.addr,
                a.iova,
                a.len
            );
            return;
        }
        let empty_others = st
            .chunks
            .iter()
            .filter(|(&id, c)| id != a.chunk && c.live == 0)
            .count();
        let Some(c) = st.chunks.get_mut(&a.chunk) else {
            return;
        };
        let _ = c.space.free(a.offset, a.len);
        c.live -= 1;
        // Keep one empty chunk for the next allocation; give back the others. Oversized
        // chunks (larger than the arena chunk) go back at once.
        if c.live == 0 && (empty_others > 0 || c.backing.len > self.chunk_len) {
            Self::release_chunk(&mut st, a.chunk);
        }
    }
}

impl Drop for VfioDma {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use nvme_core::hw::{DmaError, DmaErrorKind};

    /// Records the IOMMU mappings like type1 would, refusing overlaps.
    #[derive(Debug, Default)]
    pub(crate) struct FakeMapper {
        pub(crate) maps: Mutex<BTreeMap<u64, (u64, u64)>>, // iova -> (len, vaddr)
        pub(crate) fail_with: Option<i32>,
        pub(crate) calls: Mutex<Vec<String>>,
    }

    impl IommuMapper for FakeMapper {
        fn map(&self, vaddr: u64, iova: u64, len: u64) -> io::Result<()> {
            if let Some(e) = self.fail_with {
                return Err(io::Error::from_raw_os_error(e));
            }
            let mut m = self.maps.lock().unwrap();
            let overlap = m
                .range(..iova + len)
                .next_back()
                .is_some_and(|(&s, &(l, _))| s + l > iova);
            if overlap || iova % 4096 != 0 || len % 4096 != 0 || vaddr % 4096 != 0 {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            m.insert(iova, (len, vaddr));
            self.calls
                .lock()
                .unwrap()
                .push(format!("map {iova:#x}+{len:#x}"));
            Ok(())
        }
        fn unmap(&self, iova: u64, len: u64) -> io::Result<()> {
            let mut m = self.maps.lock().unwrap();
            match m.remove(&iova) {
                Some((l, _)) if l == len => {
                    self.calls
                        .lock()
                        .unwrap()
                        .push(format!("unmap {iova:#x}+{len:#x}"));
                    Ok(())
                }
                _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
            }
        }
    }

    fn space() -> RangeAllocator {
        let info = crate::iommu::IommuInfo {
            pgsizes: 0x4020_1000,
            iova_ranges: Some(vec![(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)]),
        };
        crate::iommu::usable_iova_space(&info, &[], 4096).0
    }

    fn dma(mapper: Arc<FakeMapper>, policy: HugePagePolicy) -> VfioDma {
        VfioDma::new("0000:00:04.0", mapper, policy, 4096, space())
    }

    fn read(r: &DmaRegion, i: usize) -> u8 {
        assert!(i < r.len());
        // SAFETY: in bounds of a live region; raw volatile read, no reference.
        unsafe { r.ptr().as_ptr().add(i).read_volatile() }
    }
    fn fill(r: &DmaRegion, v: u8) {
        // SAFETY: the whole region is ours until freed.
        unsafe { std::ptr::write_bytes(r.ptr().as_ptr(), v, r.len()) }
    }

    #[test]
    fn small_allocations_share_one_chunk_and_are_mapped_each() {
        let m = Arc::new(FakeMapper::default());
        let d = dma(m.clone(), HugePagePolicy::Never);
        d.prime().unwrap();
        assert_eq!(d.stats().chunks, 1);
        assert!(m.maps.lock().unwrap().is_empty(), "priming maps nothing");
        let regs: Vec<DmaRegion> = (0..16).map(|_| d.allocate(100).unwrap()).collect();
        assert_eq!(
            d.stats().chunks,
            1,
            "16 small allocations carved from one chunk"
        );
        assert_eq!(m.maps.lock().unwrap().len(), 16);
        for r in &regs {
            assert_eq!(r.len(), 4096);
            assert_eq!(r.ptr().as_ptr() as usize % 4096, 0);
            assert_eq!(r.iova() % 4096, 0);
            assert!(r.iova() >= 0x10_0000);
            assert!(!(0xfee0_0000..=0xfeef_ffff).contains(&r.iova()));
            assert_eq!(read(r, 0), 0);
            fill(r, 0xa5);
        }
        // The same offsets in both spaces: pointer and IOVA deltas agree within the chunk.
        let d0 = regs[1].ptr().as_ptr() as i64 - regs[0].ptr().as_ptr() as i64;
        assert_eq!(d0, regs[1].iova() as i64 - regs[0].iova() as i64);
        for r in regs {
            // SAFETY: from this allocator, freed once, no device.
            unsafe { d.free(r) };
        }
        assert!(m.maps.lock().unwrap().is_empty(), "every free unmapped");
        assert_eq!(d.stats().allocations, 0);
        assert_eq!(d.stats().chunks, 1, "one empty chunk is kept");
        // Reused memory is zeroed again.
        let r = d.allocate(4096).unwrap();
        assert!((0..4096).all(|i| read(&r, i) == 0));
        // SAFETY: as above.
        unsafe { d.free(r) };
    }

    #[test]
    fn large_allocation_gets_its_own_chunk_released_on_free() {
        let m = Arc::new(FakeMapper::default());
        let d = dma(m.clone(), HugePagePolicy::Never);
        let small = d.allocate(8192).unwrap();
        let big = d.allocate(3 << 20).unwrap();
        assert_eq!(big.len(), 3 << 20);
        assert_eq!(
            big.iova() % HUGE_PAGE as u64,
            0,
            "2 MiB-aligned IOVA window"
        );
        assert_eq!(d.stats().chunks, 2);
        assert_eq!(read(&big, (3 << 20) - 1), 0);
        // SAFETY: from this allocator, once.
        unsafe { d.free(big) };
        assert_eq!(d.stats().chunks, 1);
        // SAFETY: as above.
        unsafe { d.free(small) };
    }

    #[test]
    fn full_chunk_spills_into_a_new_one_and_teardown_unmaps_everything() {
        let m = Arc::new(FakeMapper::default());
        let d = dma(m.clone(), HugePagePolicy::Never);
        let regs: Vec<DmaRegion> = (0..3).map(|_| d.allocate(1 << 20).unwrap()).collect();
        assert_eq!(d.stats().chunks, 2);
        let mut iovas: Vec<u64> = regs.iter().map(|r| r.iova()).collect();
        iovas.sort();
        iovas.dedup();
        assert_eq!(iovas.len(), 3);
        assert_eq!(m.maps.lock().unwrap().len(), 3);
        d.teardown();
        assert!(
            m.maps.lock().unwrap().is_empty(),
            "teardown unmaps what is still mapped"
        );
        assert_eq!(d.stats().chunks, 0);
        let e = d.allocate(4096).unwrap_err();
        assert_eq!(e.kind(), DmaErrorKind::InvalidRequest);
    }

    #[test]
    fn errors_have_kinds_and_name_the_fix() {
        let m = Arc::new(FakeMapper::default());
        let d = dma(m.clone(), HugePagePolicy::Never);
        assert_eq!(
            d.allocate(0).unwrap_err().kind(),
            DmaErrorKind::InvalidRequest
        );
        assert_eq!(
            d.allocate(usize::MAX).unwrap_err().kind(),
            DmaErrorKind::InvalidRequest
        );
        let m = Arc::new(FakeMapper {
            fail_with: Some(libc::ENOMEM),
            ..Default::default()
        });
        let d = dma(m, HugePagePolicy::Never);
        let e = d.allocate(4096).unwrap_err();
        assert_eq!(e.kind(), DmaErrorKind::OutOfMemory);
        let msg = e.to_string();
        assert!(msg.starts_with("0000:00:04.0: VFIO_IOMMU_MAP_DMA"), "{msg}");
        assert!(msg.contains("ulimit -l unlimited"), "{msg}");
        let m = Arc::new(FakeMapper {
            fail_with: Some(libc::EINVAL),
            ..Default::default()
        });
        let d = dma(m, HugePagePolicy::Never);
        assert_eq!(
            d.allocate(4096).unwrap_err().kind(),
            DmaErrorKind::MapFailed
        );
        // A tiny IOVA space runs out.
        let tiny = RangeAllocator::with_range(0x20_0000, 0x3f_ffff);
        let d = VfioDma::new(
            "0000:00:04.0",
            Arc::new(FakeMapper::default()),
            HugePagePolicy::Never,
            4096,
            tiny,
        );
        let a = d.allocate(4096).unwrap();
        let e = d.allocate(4 << 20).unwrap_err();
        assert_eq!(e.kind(), DmaErrorKind::NoIovaSpace);
        assert!(e.to_string().contains("0x200000-0x3fffff"), "{e}");
        // SAFETY: from this allocator, once.
        unsafe { d.free(a) };
    }

    #[test]
    fn bogus_free_is_ignored() {
        let m = Arc::new(FakeMapper::default());
        let d = dma(m.clone(), HugePagePolicy::Never);
        let r = d.allocate(4096).unwrap();
        let fake = DmaRegion::new(r.ptr(), r.iova() + 4096, 4096, r.cookie());
        // SAFETY: deliberately wrong; the allocator must detect it and ignore it.
        unsafe { d.free(fake) };
        assert_eq!(d.stats().allocations, 1);
        // SAFETY: the genuine region, once.
        unsafe { d.free(r) };
        assert_eq!(d.stats().allocations, 0);
    }

    #[test]
    fn hugepage_policy() {
        let have_huge = Mapping::anonymous(HUGE_PAGE, true).is_ok();
        let m = Arc::new(FakeMapper::default());
        let d = dma(m.clone(), HugePagePolicy::Require);
        let r = d.prime();
        if have_huge {
            r.unwrap();
            assert!(d.stats().hugepages);
        } else {
            let e = r.unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("echo 64 > /proc/sys/vm/nr_hugepages"), "{msg}");
            assert_eq!(e.kind(), DmaErrorKind::OutOfMemory);
        }
        let d = dma(m, HugePagePolicy::Auto);
        d.prime().unwrap();
        assert_eq!(d.stats().hugepages, have_huge);
        let r = d.allocate(4096).unwrap();
        // SAFETY: once.
        unsafe { d.free(r) };
    }

    /// Many threads allocate and free concurrently: regions never overlap.
    #[test]
    fn concurrent_allocations_do_not_overlap() {
        let m = Arc::new(FakeMapper::default());
        let d = Arc::new(dma(m.clone(), HugePagePolicy::Never));
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let d = d.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let r = d.allocate(4096 * (1 + (i + t) % 4)).unwrap();
                        fill(&r, t as u8 + 1);
                        assert!((0..r.len())
                            .step_by(512)
                            .all(|j| read(&r, j) == t as u8 + 1));
                        // SAFETY: ours, once, no device.
                        unsafe { d.free(r) };
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert!(m.maps.lock().unwrap().is_empty());
    }
}

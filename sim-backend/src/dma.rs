//! Device-visible memory without `unsafe`: the simulator's IOMMU.
//!
//! Each region handed out by [`SimDma`] is a heap chunk of [`AtomicU64`], over-allocated by
//! one page so that the CPU pointer can be 4096-aligned. The host writes through the raw
//! pointer (the atomics' interior mutability makes that legal); the device side translates an
//! IOVA to its chunk and reads or writes with atomic loads and stores of whole 64-bit words.
//! 64 bits, because that is the width of every access the driver core makes to memory the
//! device may access at the same time (completion dwords 2 and 3 with one `Acquire` load,
//! shadow doorbell pairs and EventIdx words: `nvme_core::dma`), and racing accesses of
//! different sizes to the same bytes, one of them a store, are not allowed by Rust's memory
//! model. A device write of part of a word (a 4-byte EventIdx entry, a byte-granular SGL
//! buffer's edges) merges into it with an atomic read-modify-write. IOVAs come from the
//! simulator's own space, starting at [`IOVA_BASE`], page aligned, never reused, with an
//! unmapped guard page after every region: an access by the device to an unmapped or freed
//! IOVA fails (a Data Transfer Error for the command, NVMe Base §9.3), just as an IOMMU
//! fault would. Regions are kept in IOVA order (a lookup is a binary search under the
//! space's read lock); the controller reaches them through a [`DeviceDma`], whose cache of
//! recent translations makes an access to the queues and buffers in use lock-free.
//!
//! The bulk copies are loops of Relaxed word loads and stores over fixed-size groups of 32
//! words, which compile to one plain load and one plain store per 8 bytes (no read-modify-
//! write, no fence); only a partial word at either end of an access is merged with an
//! atomic read-modify-write, so the bytes around it (which the host may own) are kept.
//!
//! A device write can carry a read-ahead hint ([`DeviceDma::write_ahead`]): the first bytes
//! of the data the controller will copy next (the medium under the next queued Read). The
//! copy loop issues one cache prefetch per 64 bytes of the hint for every 64 bytes it
//! stores, so the next command's data arrives from the outer caches or memory while this
//! one is copied, as a controller's fetch engine overlaps a data transfer with the next
//! command's media read. The hint never changes what is copied.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use nvme_core::hw::{DmaAllocator, DmaError, DmaErrorKind, DmaRegion};
use nvme_core::spec::{Command, SQE_SIZE};

/// The first IOVA the simulator hands out. Far from any heap address, so a host that puts a
/// CPU pointer where an IOVA belongs is caught.
pub const IOVA_BASE: u64 = 0x1_0000_0000;
/// The default allocation granule and alignment of [`SimDma`] (4 KiB pages, as on x86_64 and
/// most ARM64 distributions); [`crate::SimConfig::dma_granule`] can make it 64 KiB, as on ARM64
/// servers running 64 KiB-page kernels.
pub const DMA_PAGE: usize = 4096;
/// The most memory one simulator maps at once (the allocator fails beyond it, like a
/// pinning limit).
pub const DMA_LIMIT: usize = 2 << 30;

/// Bytes per backing word.
const WORD: usize = 8;

/// The block size in which a device write to host memory touches its source before copying
/// it (see `copy_in`).
const BLOCK: usize = 4096;

/// Bytes of a cache line, the unit of [`prefetch_line`].
const LINE: usize = 64;

/// The most bytes of read-ahead hint a copy takes (see [`DeviceDma::write_ahead`]): one
/// page of the next transfer. Past its first page a sequential transfer is found by the
/// hardware's own stream prefetcher.
pub(crate) const AHEAD_MAX: usize = 4096;

/// Asks the CPU to start loading the cache line holding `byte` into all cache levels: a
/// hint with no effect on memory or on what any load returns. x86 and x86_64 have the
/// instruction (SSE's `prefetcht0`, always present on x86_64), through `safe_arch`'s safe
/// wrapper; elsewhere this does nothing.
#[inline(always)]
fn prefetch_line(byte: &u8) {
    #[cfg(all(
        any(target_arch = "x86", target_arch = "x86_64"),
        target_feature = "sse"
    ))]
    safe_arch::prefetch_t0(byte);
    #[cfg(not(all(
        any(target_arch = "x86", target_arch = "x86_64"),
        target_feature = "sse"
    )))]
    let _ = byte;
}

/// Prefetches the lines of the first `n` bytes of `ahead` (all of it if shorter) and drops
/// them from it: the read-ahead hint's share of `n` bytes copied.
#[inline(always)]
fn prefetch_some(ahead: &mut &[u8], n: usize) {
    if ahead.is_empty() {
        return;
    }
    let (now, rest) = ahead.split_at(n.min(ahead.len()));
    for line in now.chunks(LINE) {
        prefetch_line(&line[0]);
    }
    *ahead = rest;
}

/// Why an access by the device to host memory failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DmaFault {
    /// The first address of the failed access.
    pub iova: u64,
    /// Its length.
    pub len: usize,
}

impl fmt::Display for DmaFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "device access to unmapped IOVA range {:#x}..{:#x}",
            self.iova,
            self.iova.saturating_add(self.len as u64)
        )
    }
}

struct Mapping {
    len: usize,
    /// A `Vec`, not a `Box<[_]>`: the host holds a raw pointer into these words, and moving
    /// a `Box` (into the map) asserts unique access to its contents, which the host's later
    /// writes through that pointer would contradict (Miri reports it); a `Vec` asserts
    /// nothing when moved.
    words: Vec<AtomicU64>,
    first_word: usize,
    /// Set when the host frees the region: a device handle that still holds the mapping in
    /// its cache ([`DeviceDma`]) treats it as gone from then on.
    unmapped: AtomicBool,
}

#[derive(Default)]
struct SpaceInner {
    /// Mapped regions by first IOVA, in IOVA order (IOVAs only grow, so a new region is
    /// pushed at the end): a lookup is a binary search over contiguous memory.
    regions: Vec<(u64, Arc<Mapping>)>,
    next_iova: u64,
    mapped: usize,
    /// Allocation granule and alignment (a power of two, at least 4 KiB).
    granule: usize,
}

/// The IOVA space of one simulator, shared by the allocator (host side) and the controller
/// (device side).
pub(crate) struct DmaSpace {
    inner: RwLock<SpaceInner>,
    /// Regions freed so far: a [`DeviceDma`] that sees it change lets go of the freed
    /// regions it still caches.
    frees: AtomicU64,
}

impl fmt::Debug for DmaSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("DmaSpace")
            .field("regions", &g.regions.len())
            .field("mapped", &g.mapped)
            .finish()
    }
}

impl DmaSpace {
    /// An empty space whose allocations are `granule`-sized and aligned (a power of two of
    /// at least 4 KiB; [`IOVA_BASE`] is aligned to any such granule up to 4 GiB).
    pub(crate) fn new(granule: usize) -> Self {
        Self {
            inner: RwLock::new(SpaceInner {
                next_iova: IOVA_BASE,
                granule: granule.max(DMA_PAGE).next_power_of_two(),
                ..Default::default()
            }),
            frees: AtomicU64::new(0),
        }
    }

    /// The allocation granule.
    pub(crate) fn granule(&self) -> usize {
        self.read_lock().granule
    }

    fn read_lock(&self) -> std::sync::RwLockReadGuard<'_, SpaceInner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the mapping holding `iova .. iova + len` and the word/byte position of
    /// `iova` in it.
    fn with_mapping<R>(
        &self,
        iova: u64,
        len: usize,
        f: impl FnOnce(&Mapping, usize) -> R,
    ) -> Result<R, DmaFault> {
        let g = self.read_lock();
        let (m, off) = lookup(&g, iova, len)?;
        Ok(f(m, off))
    }

    /// Host-side read of host memory (see [`SimDma::host_read`]).
    pub(crate) fn read_ordered(
        &self,
        iova: u64,
        buf: &mut [u8],
        order: Ordering,
    ) -> Result<(), DmaFault> {
        self.with_mapping(iova, buf.len(), |m, off| copy_out(m, off, buf, order))
    }

    /// Host-side write of host memory (see [`SimDma::host_write`]).
    pub(crate) fn write_ordered(
        &self,
        iova: u64,
        data: &[u8],
        order: Ordering,
    ) -> Result<(), DmaFault> {
        self.with_mapping(iova, data.len(), |m, off| {
            copy_in(m, off, data, order, &mut &[][..]);
        })
    }

    fn allocate(&self, len: usize) -> Result<DmaRegion, SimDmaError> {
        if len == 0 {
            return Err(SimDmaError::new(
                DmaErrorKind::InvalidRequest,
                "zero-length allocation",
            ));
        }
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let page = g.granule;
        let rounded = len.checked_next_multiple_of(page).ok_or(SimDmaError::new(
            DmaErrorKind::InvalidRequest,
            "length overflows",
        ))?;
        if g.mapped.saturating_add(rounded) > DMA_LIMIT {
            return Err(SimDmaError::new(
                DmaErrorKind::OutOfMemory,
                "simulated DMA limit reached",
            ));
        }
        // One extra page so that the CPU pointer can be aligned to a page.
        let nwords = (rounded + page) / WORD;
        let words: Vec<AtomicU64> = (0..nwords).map(|_| AtomicU64::new(0)).collect();
        let base = words.as_ptr() as *mut u8;
        let misalign = base as usize % page;
        let pad = (page - misalign) % page;
        // `pad` is a multiple of 8 (AtomicU64 is 8-aligned), so the aligned pointer starts at
        // a word boundary, and it stays inside the chunk (pad < one page of slack).
        let first_word = pad / WORD;
        let ptr = NonNull::new(base.wrapping_add(pad))
            .ok_or(SimDmaError::new(DmaErrorKind::Other, "null allocation"))?;
        let iova = g.next_iova;
        // A guard page after each region, and IOVAs are never reused: a stale or
        // overrunning device access always faults.
        let next = iova
            .checked_add(rounded as u64 + page as u64)
            .ok_or(SimDmaError::new(
                DmaErrorKind::NoIovaSpace,
                "IOVA space exhausted",
            ))?;
        g.next_iova = next;
        g.mapped += rounded;
        debug_assert!(g.regions.last().is_none_or(|(last, _)| *last < iova));
        g.regions.push((
            iova,
            Arc::new(Mapping {
                len: rounded,
                words,
                first_word,
                unmapped: AtomicBool::new(false),
            }),
        ));
        Ok(DmaRegion::new(ptr, iova, rounded, iova))
    }

    fn free(&self, region: DmaRegion) -> bool {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let Ok(i) = g
            .regions
            .binary_search_by_key(&region.cookie(), |(s, _)| *s)
        else {
            return false;
        };
        let m = &g.regions[i].1;
        if m.len != region.len() || region.iova() != region.cookie() {
            return false;
        }
        let len = m.len;
        // Release: a device handle that sees the flag also sees everything before the free.
        m.unmapped.store(true, Ordering::Release);
        g.regions.remove(i);
        g.mapped -= len;
        self.frees.fetch_add(1, Ordering::Release);
        true
    }

    /// Number of mapped regions.
    pub(crate) fn regions(&self) -> usize {
        self.read_lock().regions.len()
    }
}

/// Stores a completion entry at byte `off` (16-byte aligned) of `m`: dwords 0–1 Relaxed,
/// then dwords 2–3, which hold the phase tag, with Release (see [`DeviceDma::write_cqe`]).
#[inline(always)]
fn store_cqe(m: &Mapping, off: usize, bytes: &[u8; 16]) {
    let w = m.first_word + off / WORD;
    let ws = &m.words[w..w + 2];
    // Relaxed: ordered before the Release store below.
    ws[0].store(word_of(&bytes[..WORD]), Ordering::Relaxed);
    // Release: the phase tag is in this word; it publishes the entry.
    ws[1].store(word_of(&bytes[WORD..]), Ordering::Release);
}

/// The `len` bytes at byte `off` of a mapping, as words.
struct Split {
    /// A partial first word: (word, first byte in it, bytes).
    head: Option<(usize, usize, usize)>,
    /// The whole words.
    whole: std::ops::Range<usize>,
    /// A partial last word: (word, bytes from its start).
    tail: Option<(usize, usize)>,
}

fn split(m: &Mapping, off: usize, len: usize) -> Split {
    let w0 = m.first_word + off / WORD;
    let in_word = off % WORD;
    let head_len = if in_word == 0 {
        0
    } else {
        (WORD - in_word).min(len)
    };
    let first = if head_len > 0 { w0 + 1 } else { w0 };
    let rest = len - head_len;
    let whole = first..first + rest / WORD;
    Split {
        head: (head_len > 0).then_some((w0, in_word, head_len)),
        tail: (rest % WORD > 0).then_some((whole.end, rest % WORD)),
        whole,
    }
}

/// The mapping holding `iova .. iova + len`, and the byte offset of `iova` in it.
fn lookup(inner: &SpaceInner, iova: u64, len: usize) -> Result<(&Arc<Mapping>, usize), DmaFault> {
    let fault = DmaFault { iova, len };
    let i = inner.regions.partition_point(|(s, _)| *s <= iova);
    let (start, m) = i.checked_sub(1).map(|i| &inner.regions[i]).ok_or(fault)?;
    let off = usize::try_from(iova - start).map_err(|_| fault)?;
    let end = off.checked_add(len).ok_or(fault)?;
    if end > m.len {
        return Err(fault);
    }
    Ok((m, off))
}

/// Copies the `buf.len()` bytes at byte `off` of `m` into `buf`, one atomic word load each.
fn copy_out(m: &Mapping, off: usize, buf: &mut [u8], order: Ordering) {
    if off % WORD == 0 && buf.len() % WORD == 0 {
        // Whole words (SQ entries, PRP lists, SGL segments, word-aligned buffers): no
        // head or tail to merge.
        let w = m.first_word + off / WORD;
        let words = &m.words[w..w + buf.len() / WORD];
        match order {
            Ordering::Relaxed => load_words::<false>(words, buf),
            Ordering::Acquire => load_words::<true>(words, buf),
            _ => load_words_any(words, buf, order),
        }
        return;
    }
    let Split { head, whole, tail } = split(m, off, buf.len());
    let mut pos = 0;
    if let Some((w, in_word, n)) = head {
        let v = m.words[w].load(order).to_ne_bytes();
        buf[..n].copy_from_slice(&v[in_word..in_word + n]);
        pos = n;
    }
    let body = &mut buf[pos..pos + whole.len() * WORD];
    let words = &m.words[whole];
    // One branch on the ordering per access, not per load.
    match order {
        Ordering::Relaxed => load_words::<false>(words, body),
        Ordering::Acquire => load_words::<true>(words, body),
        _ => load_words_any(words, body, order),
    }
    if let Some((w, n)) = tail {
        let v = m.words[w].load(order).to_ne_bytes();
        let at = buf.len() - n;
        buf[at..].copy_from_slice(&v[..n]);
    }
}

/// Copies `data` to the bytes at byte `off` of `m`, one atomic word store each; a partial
/// word is merged (one atomic read-modify-write), so bytes of the word outside this access
/// (which the host may own) are preserved. Prefetches `ahead` (a read-ahead hint, see
/// [`DeviceDma::write_ahead`]) as it goes, one line per line stored, and drops what it
/// prefetched from it.
fn copy_in(m: &Mapping, off: usize, data: &[u8], order: Ordering, ahead: &mut &[u8]) {
    if off % WORD == 0 && data.len() % WORD == 0 {
        // Whole words (every block-sized transfer to a word-aligned buffer): nothing to merge.
        let w = m.first_word + off / WORD;
        store_blocks(&m.words[w..w + data.len() / WORD], data, order, ahead);
        return;
    }
    let load = if order == Ordering::Release {
        Ordering::Relaxed
    } else {
        order
    };
    let merge = |word: &AtomicU64, in_word: usize, bytes: &[u8]| {
        let _ = word.fetch_update(order, load, |old| {
            let mut b = old.to_ne_bytes();
            b[in_word..in_word + bytes.len()].copy_from_slice(bytes);
            Some(u64::from_ne_bytes(b))
        });
    };
    let Split { head, whole, tail } = split(m, off, data.len());
    let mut pos = 0;
    if let Some((w, in_word, n)) = head {
        merge(&m.words[w], in_word, &data[..n]);
        pos = n;
    }
    store_blocks(
        &m.words[whole.clone()],
        &data[pos..pos + whole.len() * WORD],
        order,
        ahead,
    );
    if let Some((w, n)) = tail {
        merge(&m.words[w], 0, &data[data.len() - n..]);
    }
}

/// Stores `src` into `ws` (`src.len() == 8 * ws.len()`) block by block: first one load per
/// cache line of the source block (independent loads, so their misses overlap: the source
/// is usually cold, a random block of the medium), then the word stores, whose loads now
/// hit the L1 cache. A plain word loop over cold memory would keep far fewer misses in
/// flight than memcpy does. `ahead` is prefetched along the way (see [`copy_in`]).
#[inline(always)]
fn store_blocks(ws: &[AtomicU64], src: &[u8], order: Ordering, ahead: &mut &[u8]) {
    let mut blocks = src.chunks_exact(BLOCK);
    let mut words = ws.chunks_exact(BLOCK / WORD);
    for (src, ws) in (&mut blocks).zip(&mut words) {
        let src: &[u8; BLOCK] = src.try_into().expect("a whole block");
        touch_block(src);
        store_ordered(ws, src, order, ahead);
    }
    let (src, ws) = (blocks.remainder(), words.remainder());
    if !src.is_empty() {
        let mut touch = 0u8;
        for line in src.chunks(LINE) {
            touch ^= line[0];
        }
        std::hint::black_box(touch);
        store_ordered(ws, src, order, ahead);
    }
}

/// One load per cache line of a whole source block (see [`store_blocks`]): a fixed count,
/// so the loop unrolls into 64 loads.
#[inline(always)]
fn touch_block(src: &[u8; BLOCK]) {
    let mut touch = 0u8;
    for k in 0..BLOCK / LINE {
        touch ^= src[k * LINE];
    }
    std::hint::black_box(touch);
}

/// [`store_words`] with the ordering as a constant where it can be (one branch per block).
#[inline(always)]
fn store_ordered(ws: &[AtomicU64], src: &[u8], order: Ordering, ahead: &mut &[u8]) {
    // One test of the hint per access: the loop without it has no prefetch step at all.
    match (order, ahead.is_empty()) {
        (Ordering::Relaxed, true) => store_words::<false, false>(ws, src, ahead),
        (Ordering::Relaxed, false) => store_words::<false, true>(ws, src, ahead),
        (Ordering::Release, _) => store_words::<true, false>(ws, src, ahead),
        _ => {
            prefetch_some(ahead, src.len());
            for (w, d) in ws.iter().zip(src.chunks_exact(WORD)) {
                w.store(word_of(d), order);
            }
        }
    }
}

/// Words per iteration of the copy loops: the inner loop over a fixed-size array unrolls
/// into one load and one store per word, with no bounds check, and one counter update and
/// branch per 256 bytes (per 512 in [`store_words`], two runs per iteration).
const UNROLL: usize = 32;

/// The native-endian word in the first 8 bytes of `d` (`d.len() >= 8`).
#[inline(always)]
fn word_of(d: &[u8]) -> u64 {
    u64::from_ne_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// [`load_words`] for an ordering that is not a constant (SeqCst; never used by the data
/// path).
fn load_words_any(ws: &[AtomicU64], out: &mut [u8], order: Ordering) {
    for (w, out) in ws.iter().zip(out.chunks_exact_mut(WORD)) {
        out.copy_from_slice(&w.load(order).to_ne_bytes());
    }
}

/// Loads `ws` into `out` (`out.len() == 8 * ws.len()`), one atomic load per word;
/// `ACQUIRE`: Acquire loads, else Relaxed (a constant, so the loop holds plain loads).
#[inline(always)]
fn load_words<const ACQUIRE: bool>(ws: &[AtomicU64], out: &mut [u8]) {
    let order = if ACQUIRE {
        Ordering::Acquire
    } else {
        Ordering::Relaxed
    };
    let mut src = ws.chunks_exact(UNROLL);
    let mut dst = out.chunks_exact_mut(UNROLL * WORD);
    for (ws, o) in (&mut src).zip(&mut dst) {
        let ws: &[AtomicU64; UNROLL] = ws.try_into().expect("UNROLL words");
        let o: &mut [u8; UNROLL * WORD] = o.try_into().expect("UNROLL words");
        for k in 0..UNROLL {
            o[k * WORD..(k + 1) * WORD].copy_from_slice(&ws[k].load(order).to_ne_bytes());
        }
    }
    for (w, o) in src
        .remainder()
        .iter()
        .zip(dst.into_remainder().chunks_exact_mut(WORD))
    {
        o.copy_from_slice(&w.load(order).to_ne_bytes());
    }
}

/// Stores `src` into `ws` (`src.len() == 8 * ws.len()`), one atomic store per word;
/// `RELEASE`: Release stores, else Relaxed (a constant, so that the loop holds plain
/// moves and nothing else: on x86_64 two instructions per 8 bytes). `AHEAD`: each 512
/// bytes stored first prefetch the next 512 bytes of `ahead`, so the prefetches spread over
/// the copy instead of filling the CPU's miss buffers at once; else `ahead` is left alone.
#[inline(always)]
fn store_words<const RELEASE: bool, const AHEAD: bool>(
    ws: &[AtomicU64],
    src: &[u8],
    ahead: &mut &[u8],
) {
    let order = if RELEASE {
        Ordering::Release
    } else {
        Ordering::Relaxed
    };
    // Two unrolled runs per iteration: one counter update and branch per 512 bytes.
    let mut dst = ws.chunks_exact(2 * UNROLL);
    let mut from = src.chunks_exact(2 * UNROLL * WORD);
    for (ws, d) in (&mut dst).zip(&mut from) {
        let (w0, w1) = ws.split_at(UNROLL);
        let (d0, d1) = d.split_at(UNROLL * WORD);
        if AHEAD {
            prefetch_some(ahead, 2 * UNROLL * WORD);
        }
        store_run(w0, d0, order);
        store_run(w1, d1, order);
    }
    let mut dst = dst.remainder().chunks_exact(UNROLL);
    let mut from = from.remainder().chunks_exact(UNROLL * WORD);
    if AHEAD {
        prefetch_some(ahead, from.len() * UNROLL * WORD + from.remainder().len());
    }
    for (ws, d) in (&mut dst).zip(&mut from) {
        store_run(ws, d, order);
    }
    for (w, b) in dst
        .remainder()
        .iter()
        .zip(from.remainder().chunks_exact(WORD))
    {
        w.store(word_of(b), order);
    }
}

/// One unrolled run of [`store_words`]: `UNROLL` words from `d` (`UNROLL * 8` bytes) into
/// `ws` (`UNROLL` words), one load and one store each.
#[inline(always)]
fn store_run(ws: &[AtomicU64], d: &[u8], order: Ordering) {
    let ws: &[AtomicU64; UNROLL] = ws.try_into().expect("UNROLL words");
    let d: &[u8; UNROLL * WORD] = d.try_into().expect("UNROLL words");
    for k in 0..UNROLL {
        ws[k].store(word_of(&d[k * WORD..]), order);
    }
}

/// Slots of the [`DeviceDma`] cache: one per 4 KiB page number modulo this, so the queues
/// and the 4 KiB buffers of 128 outstanding commands (a page and a guard page each) stay
/// cached together.
const CACHE_SLOTS: usize = 256;

/// A cached translation: a mapping's first IOVA and the mapping.
type Cached = Option<(u64, Arc<Mapping>)>;

/// The controller's handle on the IOVA space: every device access goes through it. It
/// remembers the mappings it found (a small direct-mapped cache, by page number), so an
/// access to a recently used region takes no lock and no search: one bounds check and one
/// load of the region's `unmapped` flag, which the host's free sets. A miss takes the
/// space's read lock and searches as before. The cache holds a reference to the mapping,
/// so its memory stays valid even if the host frees it during the access (a host that frees
/// a buffer a command is still using breaks the `free` contract; the device then writes
/// memory nobody reads, never memory that was reused); every access that starts after the
/// free fails as an unmapped one. Not `Sync`: one controller uses it, under its lock.
pub(crate) struct DeviceDma {
    space: Arc<DmaSpace>,
    cache: RefCell<Box<[Cached; CACHE_SLOTS]>>,
    /// [`DmaSpace::frees`] when the cache last let go of freed regions.
    frees_seen: Cell<u64>,
}

impl fmt::Debug for DeviceDma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceDma")
            .field("space", &self.space)
            .finish_non_exhaustive()
    }
}

impl DeviceDma {
    pub(crate) fn new(space: Arc<DmaSpace>) -> Self {
        Self {
            space,
            cache: RefCell::new(Box::new(std::array::from_fn(|_| None))),
            frees_seen: Cell::new(0),
        }
    }

    /// Drops the cached regions the host has freed since the last call, so that their memory
    /// goes back to the allocator; one atomic load when nothing was freed. The controller
    /// calls it once per arbitration round.
    pub(crate) fn release_freed(&self) {
        let frees = self.space.frees.load(Ordering::Acquire);
        if frees == self.frees_seen.get() {
            return;
        }
        self.frees_seen.set(frees);
        for slot in self.cache.borrow_mut().iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|(_, m)| m.unmapped.load(Ordering::Relaxed))
            {
                *slot = None;
            }
        }
    }

    /// Runs `f` on the mapping holding `iova .. iova + len` and the byte offset of `iova` in
    /// it; a fault if no live mapping holds the whole range. The hit is inlined into every
    /// access; the miss is out of line.
    #[inline(always)]
    fn access<R>(
        &self,
        iova: u64,
        len: usize,
        f: impl FnOnce(&Mapping, usize) -> R,
    ) -> Result<R, DmaFault> {
        let slot = (iova / DMA_PAGE as u64) as usize % CACHE_SLOTS;
        {
            let cache = self.cache.borrow();
            if let Some((start, m)) = &cache[slot] {
                // Relaxed: the host's free happens before any later doorbell write (a
                // lock), so an access caused by one sees the flag.
                if let Some(off) = iova.checked_sub(*start) {
                    if off < m.len as u64
                        && len <= m.len - off as usize
                        && !m.unmapped.load(Ordering::Relaxed)
                    {
                        return Ok(f(m, off as usize));
                    }
                }
            }
        }
        self.access_miss(slot, iova, len, f)
    }

    /// [`Self::access`] when the cache slot does not hold the range: the space's read lock
    /// and a search, and the slot remembers what was found.
    #[cold]
    #[inline(never)]
    fn access_miss<R>(
        &self,
        slot: usize,
        iova: u64,
        len: usize,
        f: impl FnOnce(&Mapping, usize) -> R,
    ) -> Result<R, DmaFault> {
        let mut cache = self.cache.borrow_mut();
        let g = self.space.read_lock();
        match lookup(&g, iova, len) {
            Ok((m, off)) => {
                let m = Arc::clone(m);
                drop(g);
                let r = f(&m, off);
                cache[slot] = Some((iova - off as u64, m));
                Ok(r)
            }
            Err(fault) => {
                // Let go of a freed region the slot may still hold.
                if cache[slot]
                    .as_ref()
                    .is_some_and(|(_, m)| m.unmapped.load(Ordering::Relaxed))
                {
                    cache[slot] = None;
                }
                Err(fault)
            }
        }
    }

    /// True if `iova .. iova + len` lies in one mapped region.
    #[inline]
    pub(crate) fn is_mapped(&self, iova: u64, len: usize) -> bool {
        self.access(iova, len, |_, _| ()).is_ok()
    }

    /// Device read of host memory. Relaxed: the data's visibility is ordered by the
    /// doorbell write (a lock in this model) that made the device look at it.
    #[inline]
    pub(crate) fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        self.access(iova, buf.len(), |m, off| {
            copy_out(m, off, buf, Ordering::Relaxed);
        })
    }

    /// Runs `f` on the words of the word-aligned range `iova .. iova + len` (a whole
    /// queue): one translation for many entry reads. A fault if the range is not word
    /// aligned or not inside one live mapping. `f` must not access device memory.
    pub(crate) fn with_words<R>(
        &self,
        iova: u64,
        len: usize,
        f: impl FnOnce(&[AtomicU64]) -> R,
    ) -> Result<R, DmaFault> {
        if iova % WORD as u64 != 0 || len % WORD != 0 {
            return Err(DmaFault { iova, len });
        }
        self.access(iova, len, |m, off| {
            let w = m.first_word + off / WORD;
            f(&m.words[w..w + len / WORD])
        })
    }

    /// [`Self::read_sqe_into`] returning the command.
    #[cfg(test)]
    pub(crate) fn read_sqe(&self, iova: u64) -> Result<Command, DmaFault> {
        let mut cmd = Command::new(0);
        self.read_sqe_into(iova, &mut cmd)?;
        Ok(cmd)
    }

    /// Fetches the 64-byte submission queue entry at `iova` (Relaxed, as [`Self::read`])
    /// into `cmd` (left as it was on a fault): at a word-aligned address (every queue base
    /// is page aligned) eight word loads straight into the command's dwords, the low half of
    /// each word first (the entry is little endian, NVMe Base §4.1), stored where the caller
    /// keeps the command, not moved there from a returned value.
    #[inline(always)]
    pub(crate) fn read_sqe_into(&self, iova: u64, cmd: &mut Command) -> Result<(), DmaFault> {
        if iova % WORD as u64 != 0 {
            let b: [u8; SQE_SIZE] = self.read_array(iova)?;
            *cmd = Command::from_le_bytes(&b);
            return Ok(());
        }
        self.access(
            iova,
            SQE_SIZE,
            #[inline(always)]
            |m, off| {
                let w = m.first_word + off / WORD;
                let ws: &[AtomicU64; SQE_SIZE / WORD] = m.words[w..w + SQE_SIZE / WORD]
                    .try_into()
                    .expect("one entry of words");
                for (k, word) in ws.iter().enumerate() {
                    let b = word.load(Ordering::Relaxed).to_ne_bytes();
                    cmd.set_cdw(2 * k, u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                    cmd.set_cdw(2 * k + 1, u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
                }
            },
        )
    }

    /// Device read of `N` bytes of host memory into an array (Relaxed, as [`Self::read`]):
    /// a submission queue entry, the first dwords of one. At a word-aligned `iova`, with
    /// `N` a multiple of 8, it is `N / 8` word loads of a fixed count, no length checks.
    #[inline]
    pub(crate) fn read_array<const N: usize>(&self, iova: u64) -> Result<[u8; N], DmaFault> {
        let mut out = [0u8; N];
        if iova % WORD as u64 != 0 || N % WORD != 0 {
            self.read(iova, &mut out)?;
            return Ok(out);
        }
        self.access(iova, N, |m, off| {
            let w = m.first_word + off / WORD;
            for (o, word) in out.chunks_exact_mut(WORD).zip(&m.words[w..w + N / WORD]) {
                o.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
            }
        })?;
        Ok(out)
    }

    /// Device write of host memory. Relaxed: published to the host by the Release store of
    /// the completion's phase dword (or the interrupt) that follows.
    #[inline]
    pub(crate) fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaFault> {
        self.write_ahead(iova, data, &mut &[][..])
    }

    /// [`Self::write`] with a read-ahead hint: `ahead` holds the bytes the controller will
    /// copy next (at most [`AHEAD_MAX`] of them, the first of the next queued Read's data on
    /// the medium). One cache line of it is prefetched per line written, and what was
    /// prefetched is dropped from `ahead`, so a transfer in several pieces spreads the
    /// hint over them. The hint changes only timing, never what is written (see the
    /// module's documentation).
    #[inline]
    pub(crate) fn write_ahead(
        &self,
        iova: u64,
        data: &[u8],
        ahead: &mut &[u8],
    ) -> Result<(), DmaFault> {
        self.access(iova, data.len(), |m, off| {
            copy_in(m, off, data, Ordering::Relaxed, ahead);
        })
    }

    /// Writes a 16-byte completion queue entry at a 16-byte aligned `iova`: dwords 0–1 first,
    /// then dwords 2–3 (dword 3 holds the phase tag, bit 16) last, with Release ordering, so
    /// a host that reads dwords 2–3 with Acquire sees the whole entry (NVMe Base §4.2.1,
    /// §4.2.4). One atomic store per 8 bytes, as wide as the host's load.
    #[inline(always)]
    pub(crate) fn write_cqe(&self, iova: u64, bytes: &[u8; 16]) -> Result<(), DmaFault> {
        if iova % 16 != 0 {
            return Err(DmaFault { iova, len: 16 });
        }
        self.access(
            iova,
            16,
            #[inline(always)]
            |m, off| store_cqe(m, off, bytes),
        )
    }

    /// [`Self::write_cqe`] from the entry's four dwords (dword `2k` in the low half of
    /// word `k`, as the little-endian bytes are laid out).
    #[inline(always)]
    pub(crate) fn write_cqe_dwords(&self, iova: u64, dw: [u32; 4]) -> Result<(), DmaFault> {
        let mut b = [0u8; 16];
        for (o, d) in b.chunks_exact_mut(4).zip(dw) {
            o.copy_from_slice(&d.to_le_bytes());
        }
        self.write_cqe(iova, &b)
    }
}

/// Where a queued, not yet fetched, command's data is: [`Pinned::peek_sqe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peek {
    pub opcode: u8,
    pub nsid: u32,
    pub slba: u64,
    /// Number of logical blocks, 0's based.
    pub nlb_z: u16,
}

/// A queue's memory held by the controller from the queue's creation: one translation
/// then, and each access after it checks only that the host has not freed the region
/// since (the IOVA space never maps an IOVA again once freed, so an access that finds the
/// region freed is one the translation would refuse; the caller then takes the translated
/// path, which reports the fault). Holding the mapping keeps its memory valid, as the
/// [`DeviceDma`] cache does.
pub(crate) struct Pinned {
    m: Arc<Mapping>,
    /// The word of the region's first byte in `m.words`.
    word: usize,
    /// The region's length in words.
    words: usize,
}

impl fmt::Debug for Pinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pinned")
            .field("words", &self.words)
            .finish_non_exhaustive()
    }
}

impl Pinned {
    /// The region's words, unless the host freed it.
    #[inline(always)]
    fn live_words(&self) -> Option<&[AtomicU64]> {
        // Relaxed: as the cache's check in [`DeviceDma::access`].
        if self.m.unmapped.load(Ordering::Relaxed) {
            return None;
        }
        self.m.words.get(self.word..self.word + self.words)
    }

    /// [`DeviceDma::read_sqe_into`] of entry `i` of the pinned SQ; false (nothing read) if
    /// the region was freed or has no entry `i`.
    #[inline(always)]
    pub(crate) fn read_sqe_into(&self, i: u32, cmd: &mut Command) -> bool {
        const N: usize = SQE_SIZE / WORD;
        let at = i as usize * N;
        let Some(ws) = self.live_words().and_then(|ws| ws.get(at..at + N)) else {
            return false;
        };
        let ws: &[AtomicU64; N] = ws.try_into().expect("one entry of words");
        for (k, word) in ws.iter().enumerate() {
            let b = word.load(Ordering::Relaxed).to_ne_bytes();
            cmd.set_cdw(2 * k, u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            cmd.set_cdw(2 * k + 1, u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
        }
        true
    }

    /// The fields of entry `i` of the pinned SQ that say where its data is on the medium
    /// (three word loads: dwords 0–1, 10–11 and 12–13), for a read-ahead hint; `None` if
    /// the region was freed or has no entry `i`. Nothing else is read, and nothing depends
    /// on the values but a prefetch: the entry is fetched and checked as usual when its
    /// turn comes.
    #[inline(always)]
    pub(crate) fn peek_sqe(&self, i: u32) -> Option<Peek> {
        const N: usize = SQE_SIZE / WORD;
        let at = i as usize * N;
        let ws = self.live_words()?.get(at..at + N)?;
        let w0 = ws[0].load(Ordering::Relaxed);
        let w5 = ws[5].load(Ordering::Relaxed);
        let w6 = ws[6].load(Ordering::Relaxed);
        // Little-endian dwords: CDW0 byte 0 is the opcode, CDW1 the NSID, CDW11:10 the
        // SLBA, CDW12 bits 15:0 the NLB (NVMe Base §4.1, NVM Command Set §3.2.4).
        Some(Peek {
            opcode: u64::from_le(w0) as u8,
            nsid: (u64::from_le(w0) >> 32) as u32,
            slba: u64::from_le(w5),
            nlb_z: u64::from_le(w6) as u16,
        })
    }

    /// [`DeviceDma::write_cqe_dwords`] into entry `i` of the pinned CQ (the same stores:
    /// dwords 0–1, then dwords 2–3 with the phase tag, Release); false (nothing written)
    /// if the region was freed or has no entry `i`.
    #[inline(always)]
    pub(crate) fn write_cqe_dwords(&self, i: u32, dw: [u32; 4]) -> bool {
        let at = i as usize * 2;
        let Some(ws) = self.live_words().and_then(|ws| ws.get(at..at + 2)) else {
            return false;
        };
        let mut b = [0u8; 16];
        for (o, d) in b.chunks_exact_mut(4).zip(dw) {
            o.copy_from_slice(&d.to_le_bytes());
        }
        // Relaxed: ordered before the Release store below.
        ws[0].store(word_of(&b[..WORD]), Ordering::Relaxed);
        // Release: the phase tag is in this word; it publishes the entry.
        ws[1].store(word_of(&b[WORD..]), Ordering::Release);
        true
    }
}

impl DeviceDma {
    /// Pins the word-aligned range `iova .. iova + len` (a queue) if one live mapping holds
    /// it all.
    pub(crate) fn pin(&self, iova: u64, len: usize) -> Option<Pinned> {
        if iova % WORD as u64 != 0 || len % WORD != 0 {
            return None;
        }
        let g = self.space.read_lock();
        let (m, off) = lookup(&g, iova, len).ok()?;
        if m.unmapped.load(Ordering::Relaxed) {
            return None;
        }
        Some(Pinned {
            m: Arc::clone(m),
            word: m.first_word + off / WORD,
            words: len / WORD,
        })
    }
}

/// The error of [`SimDma`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("simulated DMA allocation failed: {msg}")]
pub struct SimDmaError {
    kind: DmaErrorKind,
    msg: &'static str,
}

impl SimDmaError {
    const fn new(kind: DmaErrorKind, msg: &'static str) -> Self {
        Self { kind, msg }
    }
}

impl DmaError for SimDmaError {
    fn kind(&self) -> DmaErrorKind {
        self.kind
    }
}

/// The simulator's [`DmaAllocator`]: zeroed, page-aligned regions with IOVAs from the
/// simulator's own space (see the module documentation).
#[derive(Debug, Clone)]
pub struct SimDma {
    space: Arc<DmaSpace>,
}

impl SimDma {
    pub(crate) fn new(space: Arc<DmaSpace>) -> Self {
        Self { space }
    }
    /// Number of regions currently mapped (for leak checks in tests).
    pub fn mapped_regions(&self) -> usize {
        self.space.regions()
    }

    /// Host-side write of `data` at bus address `iova`, without a raw pointer: a safe back
    /// door for tests and fuzzers that play the host. Release ordering: everything written
    /// before is visible to a device that sees these bytes. Returns `false` (and writes
    /// nothing) if the range is not inside one mapped region.
    pub fn host_write(&self, iova: u64, data: &[u8]) -> bool {
        self.space
            .write_ordered(iova, data, Ordering::Release)
            .is_ok()
    }

    /// Host-side read of `buf.len()` bytes at bus address `iova` (Acquire ordering, so a
    /// completion entry read this way is complete once its phase tag is seen). Returns
    /// `false` if the range is not inside one mapped region.
    pub fn host_read(&self, iova: u64, buf: &mut [u8]) -> bool {
        self.space
            .read_ordered(iova, buf, Ordering::Acquire)
            .is_ok()
    }
}

// SAFETY: the contract of `DmaAllocator` holds:
// - every region is a distinct heap chunk of `AtomicU64` owned by the space's map until
//   `free` (a `Vec` in an `Arc`, whose moves assert no unique access to the words; the
//   device's translation cache may keep it alive a little longer, never hand it out again), so
//   `ptr .. ptr + len` is valid for raw reads and writes by any thread (the atomics'
//   `UnsafeCell` makes writes through a pointer derived from a shared borrow legal) and
//   overlaps no other allocation; the chunk has one page of slack, so the page-aligned
//   pointer plus the page-rounded `len` stays inside it;
// - `ptr` is aligned to the granule (4 KiB or more, `page_size`) by construction, `iova` is a
//   multiple of it (IOVA_BASE and every increment are), `len` is a non-zero multiple of it and
//   at least the request;
// - the device reads and writes exactly these words when it accesses `iova .. iova + len`;
// - the chunk is created from `AtomicU64::new(0)`: zeroed.
// A `free` of a region this allocator did not hand out, or of one already freed, is ignored
// (the map lookup fails), so it cannot release memory that is still in use.
#[allow(unsafe_code)]
unsafe impl DmaAllocator for SimDma {
    type Error = SimDmaError;

    fn page_size(&self) -> usize {
        self.space.granule()
    }

    fn allocate(&self, len: usize) -> Result<DmaRegion, Self::Error> {
        self.space.allocate(len)
    }

    unsafe fn free(&self, region: DmaRegion) {
        let _ = self.space.free(region);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ARM64 hosts with 64 KiB pages: every region is granule-aligned and granule-sized on
    /// both sides (CPU pointer and IOVA), however small the request.
    #[test]
    fn a_64k_granule_aligns_and_rounds_every_region() {
        let space = Arc::new(DmaSpace::new(65536));
        let dma = SimDma::new(space.clone());
        let dev = DeviceDma::new(space.clone());
        assert_eq!(dma.page_size(), 65536);
        let a = dma.allocate(512).unwrap();
        let b = dma.allocate(65537).unwrap();
        for r in [a, b] {
            assert_eq!(r.ptr().as_ptr() as usize % 65536, 0);
            assert_eq!(r.iova() % 65536, 0);
            assert_eq!(r.len() % 65536, 0);
        }
        assert_eq!((a.len(), b.len()), (65536, 131072));
        // The guard granule after `a` is unmapped.
        assert!(!dev.is_mapped(a.iova() + 65536, 4));
    }

    #[test]
    fn regions_are_aligned_zeroed_and_translated() {
        let space = Arc::new(DmaSpace::new(DMA_PAGE));
        let dma = SimDma::new(space.clone());
        let dev = DeviceDma::new(space.clone());
        let r = dma.allocate(100).unwrap();
        assert_eq!(r.len(), 4096);
        assert_eq!(r.ptr().as_ptr() as usize % 4096, 0);
        assert_eq!(r.iova() % 4096, 0);
        assert!(r.iova() >= IOVA_BASE);
        assert_ne!(r.iova(), r.ptr().as_ptr() as u64);
        let mut buf = [0xAAu8; 4096];
        dev.read(r.iova(), &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        dev.write(r.iova() + 3, &[1, 2, 3, 4, 5, 6, 7, 8, 9])
            .unwrap();
        let mut b = [0u8; 12];
        dev.read(r.iova(), &mut b).unwrap();
        assert_eq!(b, [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        // The guard page after the region is unmapped.
        assert!(dev.read(r.iova() + 4096, &mut b).is_err());
        assert!(dev.read(r.iova() + 4090, &mut b).is_err());
        let r2 = dma.allocate(8192).unwrap();
        let mut r2b = [0u8; 4];
        dev.read(r2.iova() + 4096, &mut r2b).unwrap();
        assert!(r2.iova() >= r.iova() + 8192);
        assert_eq!(dma.mapped_regions(), 2);
        let fake = DmaRegion::new(r.ptr(), r.iova() + 4096, 4096, r.iova() + 4096);
        assert!(!space.free(fake));
        assert!(space.free(r));
        assert!(!space.free(r));
        // The device's cached translations of a freed region fail too (`r` was read
        // through `dev` above, so its translation was cached), and so do those of a region
        // freed after its last use.
        assert!(dev.read(r.iova(), &mut b).is_err());
        assert!(!dev.is_mapped(r.iova() + 8, 4));
        assert!(space.free(r2));
        assert!(dev.write(r2.iova() + 4096, &[1]).is_err());
        assert!(dev.write_cqe(r2.iova() + 4096, &[0; 16]).is_err());
        // The cache lets go of freed regions (their memory returns to the allocator) on the
        // next `release_freed`, and only then.
        let cached = |dev: &DeviceDma| dev.cache.borrow().iter().flatten().count();
        let r3 = dma.allocate(4096).unwrap();
        dev.read(r3.iova(), &mut r2b).unwrap();
        dev.release_freed();
        assert_eq!(cached(&dev), 1, "only the live region stays cached");
        assert!(space.free(r3));
        assert_eq!(cached(&dev), 1);
        dev.release_freed();
        assert_eq!(cached(&dev), 0);
        assert!(dma.allocate(0).is_err());
        assert_eq!(
            dma.allocate(usize::MAX).unwrap_err().kind(),
            DmaErrorKind::InvalidRequest
        );
    }

    /// A pinned queue reads and writes the same entries as the translated accesses, and
    /// once the host frees its memory every access through it fails, as the translated
    /// ones do.
    #[test]
    fn pinned_queue_accesses_match_the_translated_ones_until_freed() {
        let space = Arc::new(DmaSpace::new(DMA_PAGE));
        let dma = SimDma::new(space.clone());
        let dev = DeviceDma::new(space.clone());
        let r = dma.allocate(2 * 4096).unwrap();
        // Not word aligned, past the region, or unmapped: nothing to pin.
        assert!(dev.pin(r.iova() + 4, 64).is_none());
        assert!(dev.pin(r.iova(), 3 * 4096).is_none());
        assert!(dev.pin(0x10, 64).is_none());
        let sq = dev
            .pin(r.iova(), 4096)
            .expect("one mapping holds the queue");
        let raw: Vec<u8> = (0..4096).map(|i| (i * 13 % 253) as u8).collect();
        dev.write(r.iova(), &raw).unwrap();
        for i in [0u32, 1, 63] {
            let mut cmd = Command::new(0);
            assert!(sq.read_sqe_into(i, &mut cmd));
            assert_eq!(cmd, dev.read_sqe(r.iova() + u64::from(i) * 64).unwrap());
        }
        // The peek decodes the same fields as the fetch.
        for i in [0u32, 1, 63] {
            let mut cmd = Command::new(0);
            assert!(sq.read_sqe_into(i, &mut cmd));
            let p = sq.peek_sqe(i).expect("entry in the pinned queue");
            assert_eq!(
                (p.opcode, p.nsid, p.slba, p.nlb_z),
                (cmd.opcode(), cmd.nsid(), cmd.slba(), cmd.nlb_z())
            );
        }
        // Entry 64 is past the 4 KiB pinned.
        assert!(!sq.read_sqe_into(64, &mut Command::new(0)));
        assert!(sq.peek_sqe(64).is_none());
        // A CQ entry through the pin lands where the translated store puts it.
        let cq = dev.pin(r.iova() + 4096, 4096).unwrap();
        let dw = [0x0403_0201, 0x0807_0605, 0x0c0b_0a09, 0x100f_0e0d];
        assert!(cq.write_cqe_dwords(3, dw));
        dev.write_cqe_dwords(r.iova() + 4096 + 5 * 16, dw).unwrap();
        let mut back = [0u8; 6 * 16];
        dev.read(r.iova() + 4096, &mut back).unwrap();
        assert_eq!(back[3 * 16..4 * 16], (1..=16).collect::<Vec<u8>>()[..]);
        assert_eq!(back[3 * 16..4 * 16], back[5 * 16..]);
        assert!(!cq.write_cqe_dwords(256, dw));
        // Freed: the pins refuse, as the translation does.
        assert!(space.free(r));
        assert!(!sq.read_sqe_into(0, &mut Command::new(0)));
        assert!(sq.peek_sqe(0).is_none());
        assert!(!cq.write_cqe_dwords(0, dw));
        assert!(dev.read_sqe(r.iova()).is_err());
    }

    /// The whole-word paths (a word-aligned access of whole words: whole blocks plus a
    /// partial block, and fixed-size entry reads) move the same bytes as the merging path,
    /// and an unmapped or overrunning access fails the same way.
    #[test]
    fn whole_word_paths_match_the_byte_paths() {
        let space = Arc::new(DmaSpace::new(DMA_PAGE));
        let dma = SimDma::new(space.clone());
        let dev = DeviceDma::new(space.clone());
        let r = dma.allocate(4 * 4096).unwrap();
        let len = 3 * 4096 + 512 + 8;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        dev.write(r.iova() + 8, &data).unwrap();
        let mut back = vec![0u8; len + 16];
        dev.read(r.iova(), &mut back).unwrap();
        assert_eq!(back[..8], [0; 8]);
        assert_eq!(back[8..8 + len], data[..]);
        assert_eq!(back[8 + len..], [0; 8]);
        // Entry reads: aligned (word loads) and not (the byte path) agree with `read`.
        let a: [u8; 64] = dev.read_array(r.iova() + 64).unwrap();
        assert_eq!(a[..], back[64..128]);
        let b: [u8; 12] = dev.read_array(r.iova() + 3).unwrap();
        assert_eq!(b[..], back[3..15]);
        assert!(dev.read_array::<64>(r.iova() + 4 * 4096 - 32).is_err());
        // An SQ entry: the word-aligned fetch and the byte path decode the same command.
        let want = Command::from_le_bytes(&a);
        assert_eq!(dev.read_sqe(r.iova() + 64).unwrap(), want);
        let odd: [u8; 64] = dev.read_array(r.iova() + 68).unwrap();
        assert_eq!(
            dev.read_sqe(r.iova() + 68).unwrap(),
            Command::from_le_bytes(&odd)
        );
        assert!(dev.read_sqe(r.iova() + 4 * 4096 - 32).is_err());
        // A completion from dwords lands as its little-endian bytes.
        dev.write_cqe_dwords(
            r.iova() + 15360,
            [0x0403_0201, 0x0807_0605, 0x0C0B_0A09, 0x100F_0E0D],
        )
        .unwrap();
        let mut cqe = [0u8; 16];
        dev.read(r.iova() + 15360, &mut cqe).unwrap();
        assert_eq!(cqe, std::array::from_fn(|i| i as u8 + 1));
        assert!(dev.write(r.iova() + 4 * 4096 - 8, &[0; 16]).is_err());
        let mut host = vec![0u8; len];
        assert!(dma.host_read(r.iova() + 8, &mut host));
        assert!(host == data, "host view differs");
    }

    /// A read-ahead hint changes nothing that is written, whatever its length against the
    /// write's, aligned or not, and each write takes one byte of hint per byte written
    /// (so a transfer in pieces spreads it over them) until it runs out.
    #[test]
    fn a_read_ahead_hint_is_consumed_as_the_write_goes_and_changes_no_byte() {
        let space = Arc::new(DmaSpace::new(DMA_PAGE));
        let dma = SimDma::new(space.clone());
        let dev = DeviceDma::new(space.clone());
        let r = dma.allocate(4 * 4096).unwrap();
        let hint: Vec<u8> = (0..AHEAD_MAX).map(|i| (i % 7) as u8).collect();
        for (at, len) in [
            (0u64, 4096usize),
            (8, 512),
            (3, 1000),
            (0, 3 * 4096 + 8),
            (5, 1),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 253) as u8 + 1).collect();
            let mut want = vec![0u8; 4 * 4096];
            dev.read(r.iova(), &mut want).unwrap();
            want[at as usize..at as usize + len].copy_from_slice(&data);
            let mut ahead = &hint[..];
            dev.write_ahead(r.iova() + at, &data, &mut ahead).unwrap();
            let mut back = vec![0u8; 4 * 4096];
            dev.read(r.iova(), &mut back).unwrap();
            assert!(
                back == want,
                "write_ahead of {len} bytes at +{at} changed other bytes"
            );
            let taken = AHEAD_MAX - ahead.len();
            // Whole words are stored with the hint, a partial word at either end without.
            assert!(
                taken <= len && taken + 2 * WORD >= len.min(AHEAD_MAX),
                "{len} bytes took {taken}"
            );
            assert_eq!(ahead, &hint[taken..]);
        }
        // Two pieces share one hint.
        let mut ahead = &hint[..];
        dev.write_ahead(r.iova(), &[1; 1024], &mut ahead).unwrap();
        dev.write_ahead(r.iova() + 8192, &[2; 1024], &mut ahead)
            .unwrap();
        assert_eq!(ahead.len(), AHEAD_MAX - 2048);
        // A failed access takes none.
        let mut ahead = &hint[..];
        assert!(dev
            .write_ahead(r.iova() + 4 * 4096 - 8, &[0; 16], &mut ahead)
            .is_err());
        assert_eq!(ahead.len(), AHEAD_MAX);
    }

    /// The driver core's accesses to memory the device may touch at the same time are 64-bit
    /// atomics (completion dwords 2–3 with one `Acquire` load, shadow doorbell and EventIdx
    /// words), so the device's atomics are 64 bits too: atomic accesses of different sizes to
    /// the same bytes are not allowed by Rust's memory model (nor by Miri). A completion entry
    /// is two word stores covering exactly its 16 bytes, and a partial write keeps the other
    /// bytes of its words.
    #[test]
    fn device_accesses_are_as_wide_as_the_cores() {
        let space = Arc::new(DmaSpace::new(DMA_PAGE));
        let dma = SimDma::new(space.clone());
        let dev = DeviceDma::new(space.clone());
        let r = dma.allocate(4096).unwrap();
        {
            let g = space.read_lock();
            let (_, m) = g.regions.iter().find(|(s, _)| *s == r.iova()).unwrap();
            assert_eq!(std::mem::size_of_val(&m.words[0]), 8);
            assert_eq!(m.words.len(), 2 * 4096 / 8);
        }
        let cqe: [u8; 16] = std::array::from_fn(|i| i as u8 + 1);
        dev.write_cqe(r.iova() + 16, &cqe).unwrap();
        let mut b = [0u8; 48];
        dev.read(r.iova(), &mut b).unwrap();
        assert_eq!(b[..16], [0; 16]);
        assert_eq!(b[16..32], cqe);
        assert_eq!(b[32..], [0; 16]);
        assert!(dev.write_cqe(r.iova() + 8, &cqe).is_err());
        assert!(dev.write_cqe(r.iova() + 4096, &cqe).is_err());
        // 2 bytes in the middle of word 2 (bytes 17..19): bytes 16 and 19 are kept.
        dev.write(r.iova() + 17, &[0xAA, 0xBB]).unwrap();
        let mut d = [0u8; 4];
        assert!(dma.host_read(r.iova() + 16, &mut d));
        assert_eq!(d, [1, 0xAA, 0xBB, 4]);
        // A 4-byte entry in the high half of a word (an EventIdx entry) keeps the low half.
        dev.write(r.iova() + 20, &[9, 9, 9, 9]).unwrap();
        let mut e = [0u8; 8];
        assert!(dma.host_read(r.iova() + 16, &mut e));
        assert_eq!(e, [1, 0xAA, 0xBB, 4, 9, 9, 9, 9]);
        // Every split of a short access: head, whole words, tail, within and across words.
        let bytes: Vec<u8> = (0..64u8).map(|i| i ^ 0x5A).collect();
        for off in 0..17u64 {
            for len in 0..48 {
                dev.write(r.iova() + 1024, &[0; 64]).unwrap();
                dev.write(r.iova() + 1024 + off, &bytes[..len]).unwrap();
                let mut all = [0xFFu8; 64];
                dev.read(r.iova() + 1024, &mut all).unwrap();
                let mut want = [0u8; 64];
                want[off as usize..off as usize + len].copy_from_slice(&bytes[..len]);
                assert_eq!(all, want, "write at +{off}, {len} bytes");
                let mut part = vec![0u8; len];
                dev.read(r.iova() + 1024 + off, &mut part).unwrap();
                assert_eq!(part, bytes[..len], "read at +{off}, {len} bytes");
            }
        }
    }
}

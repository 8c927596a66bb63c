//! A namespace's medium (memory or a raw image file), its per-LBA allocation state and its
//! volatile write cache (NVM Command Set §4.1.5.1 DLFEAT, NVMe Base §5.1.25.2.x "Volatile
//! Write Cache").

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::unix::fs::FileExt;

use bitvec::vec::BitVec;

use crate::config::{Backing, NamespaceConfig};

/// The LBA formats offered (LBADS values, NVM Command Set §4.1.5.1 LBAF0..): 512 B, 1 KiB,
/// 2 KiB and 4 KiB, no metadata. LBAF index = position in this table.
pub(crate) const LBA_FORMATS: [u8; 4] = [9, 10, 11, 12];

/// Relative performance (Identify Namespace LBAF RP) of each format: 4 KiB best.
pub(crate) const LBA_FORMAT_RP: [u8; 4] = [2, 2, 1, 0];

/// Unflushed data beyond this is written back, as a real cache would evict.
const CACHE_LIMIT: usize = 16 << 20;

const CHUNK: usize = 64 << 10;

/// What never-written memory and zeroed blocks read as, without a buffer to fill.
static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// Why [`Namespace::read_with`] failed.
#[derive(Debug)]
pub(crate) enum ReadError<E> {
    /// The backing file could not be read.
    Medium,
    /// The consumer of the data refused it.
    Sink(E),
}

enum Storage {
    /// Sparse: chunks never written (`None`) read as zeroes. Indexed by chunk number: a
    /// lookup is an index, one pointer per 64 KiB of capacity.
    Memory(Vec<Option<Box<[u8]>>>),
    File(File),
}

/// Sets the bits of `r` to `v`: one bit (a one-block command) directly, a range through
/// the word-wise fill.
#[inline]
fn fill_bits(bits: &mut BitVec, r: std::ops::Range<usize>, v: bool) {
    if r.len() == 1 {
        bits.set(r.start, v);
    } else {
        bits[r].fill(v);
    }
}

/// Chunk `idx` of a memory medium, if it was ever written.
fn chunk(chunks: &[Option<Box<[u8]>>], idx: u64) -> Option<&[u8]> {
    chunks.get(idx as usize).and_then(|c| c.as_deref())
}

struct Medium {
    storage: Storage,
    len: u64,
}

impl Medium {
    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        match &self.storage {
            Storage::File(f) => f.read_exact_at(buf, off),
            Storage::Memory(chunks) => {
                let mut pos = 0usize;
                while pos < buf.len() {
                    let abs = off + pos as u64;
                    let idx = abs / CHUNK as u64;
                    let in_chunk = (abs % CHUNK as u64) as usize;
                    let n = (CHUNK - in_chunk).min(buf.len() - pos);
                    match chunk(chunks, idx) {
                        Some(c) => buf[pos..pos + n].copy_from_slice(&c[in_chunk..in_chunk + n]),
                        None => buf[pos..pos + n].fill(0),
                    }
                    pos += n;
                }
                Ok(())
            }
        }
    }

    /// The bytes `off .. off + len` of a memory medium, in order, as slices of its chunks
    /// (or of [`ZEROS`] where nothing was written), handed to `sink`: no copy, no buffer.
    #[inline(always)]
    fn memory_pieces<E>(
        chunks: &[Option<Box<[u8]>>],
        off: u64,
        len: usize,
        sink: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut pos = 0usize;
        while pos < len {
            let abs = off + pos as u64;
            let idx = abs / CHUNK as u64;
            let in_chunk = (abs % CHUNK as u64) as usize;
            let n = (CHUNK - in_chunk).min(len - pos);
            // One call site: the sink is inlined here.
            let piece = match chunk(chunks, idx) {
                Some(c) => &c[in_chunk..in_chunk + n],
                None => &ZEROS[..n],
            };
            sink(piece)?;
            pos += n;
        }
        Ok(())
    }

    fn write(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        match &mut self.storage {
            Storage::File(f) => f.write_all_at(data, off),
            Storage::Memory(chunks) => {
                let mut pos = 0usize;
                while pos < data.len() {
                    let abs = off + pos as u64;
                    let idx = abs / CHUNK as u64;
                    let in_chunk = (abs % CHUNK as u64) as usize;
                    let n = (CHUNK - in_chunk).min(data.len() - pos);
                    let c = chunks[idx as usize]
                        .get_or_insert_with(|| vec![0u8; CHUNK].into_boxed_slice());
                    c[in_chunk..in_chunk + n].copy_from_slice(&data[pos..pos + n]);
                    pos += n;
                }
                Ok(())
            }
        }
    }

    fn zero(&mut self, off: u64, len: u64) -> io::Result<()> {
        match &mut self.storage {
            Storage::File(f) => {
                let mut pos = 0u64;
                while pos < len {
                    let n = (len - pos).min(CHUNK as u64) as usize;
                    f.write_all_at(&ZEROS[..n], off + pos)?;
                    pos += n as u64;
                }
                Ok(())
            }
            Storage::Memory(chunks) => {
                let mut pos = 0u64;
                while pos < len {
                    let abs = off + pos;
                    let idx = abs / CHUNK as u64;
                    let in_chunk = (abs % CHUNK as u64) as usize;
                    let n = ((CHUNK - in_chunk) as u64).min(len - pos) as usize;
                    if in_chunk == 0 && n == CHUNK {
                        chunks[idx as usize] = None;
                    } else if let Some(c) = chunks[idx as usize].as_mut() {
                        c[in_chunk..in_chunk + n].fill(0);
                    }
                    pos += n as u64;
                }
                Ok(())
            }
        }
    }

    fn clear(&mut self) -> io::Result<()> {
        match &mut self.storage {
            Storage::Memory(chunks) => {
                chunks.iter_mut().for_each(|c| *c = None);
                Ok(())
            }
            Storage::File(f) => {
                f.set_len(0)?;
                f.set_len(self.len)
            }
        }
    }
}

/// A block in the volatile write cache.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Written data: the block at this index of the cache's slab.
    Data(u32),
    /// Written with zeroes (Write Zeroes, or deallocated).
    Zero { dealloc: bool },
}

/// A hasher for LBAs (a multiplicative hash of one `u64`): the write cache is looked up
/// once per block of every I/O, where SipHash's resistance to chosen keys buys nothing.
#[derive(Default)]
struct LbaHasher(u64);

impl Hasher for LbaHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 ^ u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        let h = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
}

/// The volatile write cache: the newest contents of every LBA written but not yet on the
/// medium. Data blocks live in one slab whose slots are reused, so caching a block
/// allocates nothing once the slab, the map and the free list have grown to the cache's
/// working size (they keep their capacity across flushes).
struct WriteCache {
    bs: usize,
    map: HashMap<u64, Slot, BuildHasherDefault<LbaHasher>>,
    /// Which LBAs are in `map` (finds the cached blocks of a range without a lookup per
    /// block).
    present: BitVec,
    slab: Vec<u8>,
    free: Vec<u32>,
    /// Bytes of data blocks held.
    data_bytes: usize,
    /// Reused by flushes: the entries in LBA order, a run of blocks to write.
    order: Vec<(u64, Slot)>,
    run: Vec<u8>,
}

impl WriteCache {
    fn new(bs: usize, blocks: usize) -> Self {
        Self {
            bs,
            map: HashMap::default(),
            present: BitVec::repeat(false, blocks),
            slab: Vec::new(),
            free: Vec::new(),
            data_bytes: 0,
            order: Vec::new(),
            run: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    /// The first cached LBA in `lba .. end`.
    fn next_cached(&self, lba: u64, end: u64) -> Option<u64> {
        if self.map.is_empty() {
            return None;
        }
        self.present[lba as usize..end as usize]
            .first_one()
            .map(|i| lba + i as u64)
    }

    /// The contents of cached LBA `lba`.
    fn block(&self, lba: u64) -> &[u8] {
        match self.map.get(&lba) {
            Some(Slot::Data(s)) => {
                let at = *s as usize * self.bs;
                &self.slab[at..at + self.bs]
            }
            _ => &ZEROS[..self.bs],
        }
    }

    fn put_data(&mut self, lba: u64, data: &[u8]) {
        let bs = self.bs;
        let slot = match self.map.get(&lba) {
            Some(Slot::Data(s)) => *s,
            _ => {
                let s = match self.free.pop() {
                    Some(s) => s,
                    None => {
                        let s = (self.slab.len() / bs) as u32;
                        self.slab.resize(self.slab.len() + bs, 0);
                        s
                    }
                };
                self.map.insert(lba, Slot::Data(s));
                self.present.set(lba as usize, true);
                self.data_bytes += bs;
                s
            }
        };
        let at = slot as usize * bs;
        self.slab[at..at + bs].copy_from_slice(data);
    }

    fn put_zero(&mut self, lba: u64, dealloc: bool) {
        if let Some(Slot::Data(s)) = self.map.insert(lba, Slot::Zero { dealloc }) {
            self.free.push(s);
            self.data_bytes -= self.bs;
        }
        self.present.set(lba as usize, true);
    }

    /// Drops the cached blocks of `slba .. slba + nlb`.
    fn remove_range(&mut self, slba: u64, nlb: u64) {
        let end = slba + nlb;
        let mut pos = slba;
        while let Some(lba) = self.next_cached(pos, end) {
            if let Some(Slot::Data(s)) = self.map.remove(&lba) {
                self.free.push(s);
                self.data_bytes -= self.bs;
            }
            self.present.set(lba as usize, false);
            pos = lba + 1;
        }
    }

    /// Empties the cache (its memory is kept for reuse).
    fn clear(&mut self) {
        for (&lba, _) in self.map.iter() {
            self.present.set(lba as usize, false);
        }
        self.map.clear();
        self.free.clear();
        self.free
            .extend((0..(self.slab.len() / self.bs) as u32).rev());
        self.data_bytes = 0;
    }

    /// Empties the cache for a new block size and LBA count.
    fn reset(&mut self, bs: usize, blocks: usize) {
        *self = Self::new(bs, blocks);
    }
}

/// One namespace.
pub(crate) struct Namespace {
    pub(crate) nsid: u32,
    /// Index into [`LBA_FORMATS`].
    pub(crate) lbaf: usize,
    /// `LBA_FORMATS[lbaf]`: log2 of the LBA data size, kept with `lbaf` so that the data
    /// path reads it without an index check.
    lba_shift: u32,
    pub(crate) blocks: u64,
    medium: Medium,
    /// Allocation state as the host sees it (cache included).
    alloc: BitVec,
    /// Allocation state on the medium.
    persist_alloc: BitVec,
    uncorrectable: BitVec,
    /// False while no LBA was ever made uncorrectable (since creation or the last format):
    /// a read then skips the scan of `uncorrectable`.
    any_uncorrectable: bool,
    cache: WriteCache,
    /// The image behind the namespace, if opened by [`crate::ImageFile`] (Format NVM records
    /// the new LBA size next to it).
    image: Option<crate::ImageFile>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("nsid", &self.nsid)
            .field("lba_size", &self.lba_size())
            .field("blocks", &self.blocks)
            .field("cached_lbas", &self.cache.len())
            .finish()
    }
}

impl Namespace {
    pub(crate) fn open(nsid: u32, cfg: &NamespaceConfig) -> Result<Self, String> {
        let lbaf = LBA_FORMATS
            .iter()
            .position(|&d| 1u32 << d == cfg.lba_size)
            .ok_or_else(|| {
                format!(
                    "namespace {nsid}: LBA size {} is not one of 512, 1024, 2048, 4096",
                    cfg.lba_size
                )
            })?;
        if cfg.blocks == 0 {
            return Err(format!("namespace {nsid}: zero blocks"));
        }
        let len = cfg
            .blocks
            .checked_mul(u64::from(cfg.lba_size))
            .ok_or_else(|| format!("namespace {nsid}: size overflows"))?;
        let nbits = usize::try_from(cfg.blocks)
            .map_err(|_| format!("namespace {nsid}: too many blocks"))?;
        let (storage, allocated) = match &cfg.backing {
            Backing::Memory => {
                let n = usize::try_from(len.div_ceil(CHUNK as u64))
                    .map_err(|_| format!("namespace {nsid}: too large"))?;
                (Storage::Memory((0..n).map(|_| None).collect()), false)
            }
            Backing::File(path) => {
                let existed = path.exists();
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(|e| format!("namespace {nsid}: {}: {e}", path.display()))?;
                let cur = f
                    .metadata()
                    .map_err(|e| format!("namespace {nsid}: {}: {e}", path.display()))?
                    .len();
                if cur < len {
                    f.set_len(len)
                        .map_err(|e| format!("namespace {nsid}: {}: {e}", path.display()))?;
                }
                // An existing image may hold data anywhere: every LBA counts as allocated.
                (Storage::File(f), existed && cur > 0)
            }
            Backing::Image(img) if img.len() < len => {
                return Err(format!("namespace {nsid}: {} holds {} bytes, the namespace needs {len}; an image is never resized", img.path().display(), img.len()))
            }
            Backing::Image(img) => (Storage::File(img.file().map_err(|e| format!("namespace {nsid}: {}: {e}", img.path().display()))?), true),
        };
        let image = match &cfg.backing {
            Backing::Image(img) => Some(img.clone()),
            _ => None,
        };
        let alloc = BitVec::repeat(allocated, nbits);
        Ok(Self {
            nsid,
            lbaf,
            lba_shift: u32::from(LBA_FORMATS[lbaf]),
            blocks: cfg.blocks,
            medium: Medium { storage, len },
            persist_alloc: alloc.clone(),
            alloc,
            uncorrectable: BitVec::repeat(false, nbits),
            any_uncorrectable: false,
            cache: WriteCache::new(cfg.lba_size as usize, nbits),
            image,
        })
    }

    /// True if the medium is a read-only image: the namespace is write protected.
    pub(crate) fn write_protected(&self) -> bool {
        self.image.as_ref().is_some_and(crate::ImageFile::read_only)
    }

    pub(crate) fn lba_size(&self) -> u32 {
        1u32 << self.lba_shift
    }

    /// NUSE: allocated LBAs.
    pub(crate) fn nuse(&self) -> u64 {
        self.alloc.count_ones() as u64
    }

    fn range(&self, slba: u64, nlb: u64) -> std::ops::Range<usize> {
        slba as usize..(slba + nlb) as usize
    }

    /// True if any LBA of the range was made uncorrectable (Write Uncorrectable).
    #[inline]
    pub(crate) fn first_uncorrectable(&self, slba: u64, nlb: u64) -> Option<u64> {
        if !self.any_uncorrectable {
            return None;
        }
        self.uncorrectable[self.range(slba, nlb)]
            .first_one()
            .map(|i| slba + i as u64)
    }

    /// Overwrites the blocks of `out` (the range at `slba`) that the cache holds.
    fn overlay(&self, slba: u64, nlb: u64, out: &mut [u8]) {
        let bs = self.lba_size() as usize;
        let end = slba + nlb;
        let mut pos = slba;
        while let Some(lba) = self.cache.next_cached(pos, end) {
            let off = (lba - slba) as usize * bs;
            out[off..off + bs].copy_from_slice(self.cache.block(lba));
            pos = lba + 1;
        }
    }

    /// Reads `nlb` blocks at `slba` as the host sees them (cache first). The range must be
    /// valid.
    pub(crate) fn read(&self, slba: u64, nlb: u64, out: &mut [u8]) -> io::Result<()> {
        let bs = u64::from(self.lba_size());
        self.medium.read(slba * bs, out)?;
        self.overlay(slba, nlb, out);
        Ok(())
    }

    /// The first bytes (at most [`crate::dma::AHEAD_MAX`], within one chunk) of the medium
    /// under blocks `slba .. slba + nlb`, for a read-ahead hint: a memory medium's own
    /// bytes, where that range was written; empty for an image file, for never-written
    /// chunks (they read as zeroes) and for a range outside the namespace. The volatile
    /// write cache is not looked at: the hint only warms caches, it is never read as data.
    pub(crate) fn ahead(&self, slba: u64, nlb: u64) -> &[u8] {
        let Storage::Memory(chunks) = &self.medium.storage else {
            return &[];
        };
        let end = slba.checked_add(nlb);
        if end.is_none_or(|e| e > self.blocks) {
            return &[];
        }
        let off = slba << self.lba_shift;
        let len = (nlb << self.lba_shift).min(crate::dma::AHEAD_MAX as u64) as usize;
        let in_chunk = (off % CHUNK as u64) as usize;
        chunk(chunks, off / CHUNK as u64).map_or(&[], |c| &c[in_chunk..(in_chunk + len).min(CHUNK)])
    }

    /// Reads `nlb` blocks at `slba` as the host sees them (cache first), handing the bytes
    /// to `sink` in order, in pieces: straight from the memory medium and the cache, or, for
    /// an image file, through `scratch` (grown as needed, never shrunk, so a read allocates
    /// nothing once it is as large as the largest transfer). The range must be valid.
    #[inline(always)]
    pub(crate) fn read_with<E>(
        &self,
        slba: u64,
        nlb: u64,
        scratch: &mut Vec<u8>,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), ReadError<E>> {
        let bs = self.lba_size() as usize;
        let len = nlb as usize * bs;
        match &self.medium.storage {
            Storage::File(f) => {
                if scratch.len() < len {
                    scratch.resize(len, 0);
                }
                let buf = &mut scratch[..len];
                f.read_exact_at(buf, slba * bs as u64)
                    .map_err(|_| ReadError::Medium)?;
                self.overlay(slba, nlb, buf);
                sink(buf).map_err(ReadError::Sink)
            }
            Storage::Memory(chunks) if self.cache.is_empty() => {
                // Nothing cached: the medium's pieces of the whole range, in one pass.
                Medium::memory_pieces(chunks, slba * bs as u64, len, &mut sink)
                    .map_err(ReadError::Sink)
            }
            Storage::Memory(chunks) => {
                let end = slba + nlb;
                let mut lba = slba;
                while lba < end {
                    let cached = self.cache.next_cached(lba, end).unwrap_or(end);
                    if cached > lba {
                        let n = (cached - lba) as usize * bs;
                        Medium::memory_pieces(chunks, lba * bs as u64, n, &mut sink)
                            .map_err(ReadError::Sink)?;
                        lba = cached;
                    }
                    if lba < end {
                        sink(self.cache.block(lba)).map_err(ReadError::Sink)?;
                        lba += 1;
                    }
                }
                Ok(())
            }
        }
    }

    /// Writes whole blocks. `cached`: into the volatile write cache; else through to the
    /// medium (FUA, or no cache).
    pub(crate) fn write(&mut self, slba: u64, data: &[u8], cached: bool) -> io::Result<()> {
        let bs = self.lba_size() as usize;
        let nlb = (data.len() / bs) as u64;
        let r = self.range(slba, nlb);
        // No LBA was ever made uncorrectable: every bit is already clear.
        if self.any_uncorrectable {
            self.uncorrectable[r.clone()].fill(false);
        }
        fill_bits(&mut self.alloc, r.clone(), true);
        if cached {
            for (i, blk) in data.chunks_exact(bs).enumerate() {
                self.cache.put_data(slba + i as u64, blk);
            }
            if self.cache.data_bytes > CACHE_LIMIT {
                self.flush()?;
            }
            Ok(())
        } else {
            self.cache.remove_range(slba, nlb);
            fill_bits(&mut self.persist_alloc, r, true);
            self.medium.write(slba * bs as u64, data)
        }
    }

    /// Write Zeroes / deallocate: the blocks read as zeroes afterwards.
    pub(crate) fn zero(
        &mut self,
        slba: u64,
        nlb: u64,
        dealloc: bool,
        cached: bool,
    ) -> io::Result<()> {
        let r = self.range(slba, nlb);
        self.uncorrectable[r.clone()].fill(false);
        self.alloc[r.clone()].fill(!dealloc);
        if cached {
            for lba in slba..slba + nlb {
                self.cache.put_zero(lba, dealloc);
            }
            Ok(())
        } else {
            self.cache.remove_range(slba, nlb);
            self.persist_alloc[r].fill(!dealloc);
            let bs = u64::from(self.lba_size());
            self.medium.zero(slba * bs, nlb * bs)
        }
    }

    /// Write Uncorrectable: reads of these blocks fail until they are written.
    pub(crate) fn mark_uncorrectable(&mut self, slba: u64, nlb: u64) {
        let r = self.range(slba, nlb);
        self.uncorrectable[r.clone()].fill(true);
        self.any_uncorrectable |= !r.is_empty();
        self.alloc[r].fill(true);
    }

    /// Writes the volatile write cache back to the medium, in LBA order, a run of
    /// consecutive data blocks in one medium write.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if self.cache.is_empty() {
            return Ok(());
        }
        let bs = self.lba_size() as usize;
        let mut order = std::mem::take(&mut self.cache.order);
        let mut run = std::mem::take(&mut self.cache.run);
        order.clear();
        order.extend(self.cache.map.iter().map(|(&l, &s)| (l, s)));
        order.sort_unstable_by_key(|&(l, _)| l);
        let mut result = Ok(());
        let mut i = 0;
        while i < order.len() && result.is_ok() {
            let (lba, slot) = order[i];
            match slot {
                Slot::Data(_) => {
                    run.clear();
                    let mut next = lba;
                    while let Some(&(l, Slot::Data(s))) = order.get(i) {
                        if l != next {
                            break;
                        }
                        let at = s as usize * bs;
                        run.extend_from_slice(&self.cache.slab[at..at + bs]);
                        next += 1;
                        i += 1;
                    }
                    self.persist_alloc[lba as usize..next as usize].fill(true);
                    result = self.medium.write(lba * bs as u64, &run);
                }
                Slot::Zero { dealloc } => {
                    self.persist_alloc.set(lba as usize, !dealloc);
                    result = self.medium.zero(lba * bs as u64, bs as u64);
                    i += 1;
                }
            }
        }
        // As before a failed write-back: the cache is emptied either way.
        self.cache.clear();
        self.cache.order = order;
        self.cache.run = run;
        result
    }

    /// Power loss: the cache is gone, the medium is what remains.
    pub(crate) fn lose_cache(&mut self) {
        self.cache.clear();
        self.alloc = self.persist_alloc.clone();
    }

    /// Format NVM to LBA format `lbaf`: all data erased, all blocks deallocated, the
    /// capacity in bytes kept.
    pub(crate) fn format(&mut self, lbaf: usize) -> io::Result<()> {
        let bytes = self.blocks * u64::from(self.lba_size());
        self.lbaf = lbaf;
        self.lba_shift = u32::from(LBA_FORMATS[lbaf]);
        self.blocks = bytes / u64::from(self.lba_size());
        let n = self.blocks as usize;
        self.cache.reset(self.lba_size() as usize, n);
        self.medium.clear()?;
        self.alloc = BitVec::repeat(false, n);
        self.persist_alloc = self.alloc.clone();
        self.uncorrectable = BitVec::repeat(false, n);
        self.any_uncorrectable = false;
        match &self.image {
            Some(img) => img.save_lba_size(self.lba_size()),
            None => Ok(()),
        }
    }

    /// Test back door: writes bytes straight to the medium at `lba`, bypassing the cache.
    pub(crate) fn backdoor_write(&mut self, lba: u64, data: &[u8]) -> io::Result<()> {
        let bs = u64::from(self.lba_size());
        let nlb = (data.len() as u64).div_ceil(bs);
        self.cache.remove_range(lba, nlb);
        let r = self.range(lba, nlb);
        self.alloc[r.clone()].fill(true);
        self.persist_alloc[r].fill(true);
        self.medium.write(lba * bs, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_flush_and_loss() {
        let mut ns = Namespace::open(1, &NamespaceConfig::memory(512, 1 << 20)).unwrap();
        assert_eq!(ns.blocks, 2048);
        ns.write(10, &[7u8; 1024], true).unwrap();
        let mut b = vec![0u8; 1024];
        ns.read(10, 2, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 7));
        assert_eq!(ns.nuse(), 2);
        ns.lose_cache();
        ns.read(10, 2, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        assert_eq!(ns.nuse(), 0);
        ns.write(10, &[7u8; 1024], true).unwrap();
        ns.write(12, &[8u8; 512], true).unwrap();
        ns.flush().unwrap();
        ns.lose_cache();
        let mut b = vec![0u8; 1536];
        ns.read(10, 3, &mut b).unwrap();
        assert!(b[..1024].iter().all(|&x| x == 7));
        assert!(b[1024..].iter().all(|&x| x == 8));
        ns.zero(11, 1, true, false).unwrap();
        ns.read(10, 3, &mut b).unwrap();
        assert!(b[512..1024].iter().all(|&x| x == 0));
        assert_eq!(ns.nuse(), 2);
        ns.format(3).unwrap();
        assert_eq!((ns.lba_size(), ns.blocks), (4096, 256));
        assert_eq!(ns.nuse(), 0);
    }

    /// The pieces `read_with` hands out, joined, are what `read` returns, for memory and
    /// image media, with cached data, cached zeroes and never-written blocks in the range;
    /// and the cache reuses its slab slots instead of growing.
    #[test]
    fn read_with_matches_read_and_cache_slots_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("ns.img");
        for cfg in [
            NamespaceConfig::memory(512, 1 << 20),
            NamespaceConfig::file(512, 1 << 20, &img),
        ] {
            let mut ns = Namespace::open(1, &cfg).unwrap();
            let pat: Vec<u8> = (0..CHUNK * 2).map(|i| (i % 251) as u8 + 1).collect();
            ns.write(100, &pat, false).unwrap();
            ns.write(130, &[9u8; 1024], true).unwrap();
            ns.zero(140, 3, false, true).unwrap();
            ns.write(141, &[8u8; 512], true).unwrap();
            let (slba, nlb) = (90u64, 300u64);
            let mut want = vec![0u8; nlb as usize * 512];
            ns.read(slba, nlb, &mut want).unwrap();
            assert_eq!(want[(130 - 90) * 512], 9);
            assert_eq!(want[(140 - 90) * 512], 0);
            assert_eq!(want[(141 - 90) * 512], 8);
            assert_eq!(want[0], 0, "never written");
            let mut got = Vec::new();
            let mut scratch = Vec::new();
            ns.read_with(slba, nlb, &mut scratch, |p| {
                got.extend_from_slice(p);
                Ok::<(), ()>(())
            })
            .unwrap();
            assert_eq!(got, want);
            // Rewriting cached blocks, and caching others after a flush, reuses the slab.
            let slab = ns.cache.slab.len();
            ns.write(130, &[7u8; 1024], true).unwrap();
            assert_eq!(ns.cache.slab.len(), slab);
            ns.flush().unwrap();
            assert!(ns.cache.is_empty());
            // Nothing cached: the medium alone, in pieces, matches a plain read.
            ns.read(slba, nlb, &mut want).unwrap();
            let mut got = Vec::new();
            ns.read_with(slba, nlb, &mut scratch, |p| {
                got.extend_from_slice(p);
                Ok::<(), ()>(())
            })
            .unwrap();
            assert_eq!(got, want);
            assert_eq!(got[(130 - 90) * 512], 7, "flushed from the cache");
            ns.write(500, &[6u8; 1536], true).unwrap();
            assert_eq!(ns.cache.slab.len(), slab);
            ns.lose_cache();
            let mut b = vec![0u8; 512];
            ns.read(130, 1, &mut b).unwrap();
            assert!(b.iter().all(|&x| x == 7), "flushed");
            ns.read(500, 1, &mut b).unwrap();
            assert!(b.iter().all(|&x| x == 0), "lost with the cache");
            // A refused sink stops the read.
            let r = ns.read_with(0, 4, &mut scratch, |_| Err::<(), u8>(5));
            assert!(matches!(r, Err(ReadError::Sink(5))));
        }
    }

    #[test]
    fn bad_config() {
        assert!(Namespace::open(1, &NamespaceConfig::memory(520, 1 << 20)).is_err());
        assert!(Namespace::open(1, &NamespaceConfig::memory(512, 0)).is_err());
    }
}

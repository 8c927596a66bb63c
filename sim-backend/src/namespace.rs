//! A namespace's medium (memory or a raw image file, with the image's read cache), its
//! per-LBA allocation state and its volatile write cache (NVM Command Set §4.1.5.1 DLFEAT,
//! NVMe Base §5.1.25.2.x "Volatile Write Cache").

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
    /// A raw image, and the chunks of it read so far. The cache is filled before a read
    /// ([`Namespace::cache_range`], with `&mut`), so the read itself, and a read-ahead hint
    /// into the cache ([`Namespace::ahead`]), see it through `&self`.
    File { file: File, cache: ChunkCache },
}

/// The read cache of an image-backed medium ([`NamespaceConfig::read_cache`]): copies of
/// whole `CHUNK`-byte chunks of the file, in the memory medium's representation (a boxed
/// chunk each), so that a read of cached chunks takes the memory medium's path
/// ([`Medium::pieces`]).
///
/// Coherent by construction: every change to the file goes through [`Medium`], which writes
/// the file and then the cached chunks it touches (or drops them if the file write failed,
/// its outcome then being unknown), and no one else writes the file: an image opened by
/// [`crate::ImageFile`] holds an exclusive `flock` (a read-only one a shared lock, which
/// keeps writers out), and a [`Backing::File`] image is documented as the simulator's alone
/// while it runs. A reopened namespace starts with an empty cache.
///
/// Bounded: at most `max_chunks` chunks; a miss is cached while they fit, and read from the
/// file without caching once they do not (nothing is evicted).
struct ChunkCache {
    chunks: HashMap<u64, Box<[u8]>, BuildHasherDefault<LbaHasher>>,
    max_chunks: usize,
}

impl ChunkCache {
    /// A cache of at most `budget` bytes (whole chunks).
    fn new(budget: u64) -> Self {
        Self {
            chunks: HashMap::default(),
            max_chunks: usize::try_from(budget / CHUNK as u64).unwrap_or(usize::MAX),
        }
    }

    /// Chunk `idx` (`CHUNK` bytes), if cached.
    #[inline(always)]
    fn get(&self, idx: u64) -> Option<&[u8]> {
        self.chunks.get(&idx).map(|c| &c[..])
    }

    /// Caches every chunk of the bytes `off .. off + len` of `file`, a medium of `medium_len`
    /// bytes, that is not cached yet: each with one read of the whole chunk (clipped at the
    /// medium's end). `Ok(false)`, with nothing read, if the missing chunks do not fit the
    /// budget. A chunk that starts beyond the medium's end, or a file shorter than the
    /// medium, is an error (the chunks read before it stay cached: they are the file's).
    fn fill(&mut self, file: &File, medium_len: u64, off: u64, len: usize) -> io::Result<bool> {
        if len == 0 {
            return Ok(true);
        }
        let first = off / CHUNK as u64;
        let last = (off + len as u64 - 1) / CHUNK as u64;
        let missing = (first..=last)
            .filter(|i| !self.chunks.contains_key(i))
            .count();
        if missing == 0 {
            return Ok(true);
        }
        if self.chunks.len() + missing > self.max_chunks {
            return Ok(false);
        }
        for idx in first..=last {
            if self.chunks.contains_key(&idx) {
                continue;
            }
            let start = idx * CHUNK as u64;
            let n = medium_len
                .checked_sub(start)
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("chunk at byte {start} is beyond the medium's {medium_len} bytes"),
                    )
                })?;
            let n = n.min(CHUNK as u64) as usize;
            let mut c = vec![0u8; CHUNK].into_boxed_slice();
            file.read_exact_at(&mut c[..n], start)?;
            self.chunks.insert(idx, c);
        }
        Ok(true)
    }

    /// Whether every chunk the bytes `off .. off + len` touch is cached.
    #[inline(always)]
    fn covers(&self, off: u64, len: usize) -> bool {
        if len == 0 {
            return true;
        }
        let (first, last) = (off / CHUNK as u64, (off + len as u64 - 1) / CHUNK as u64);
        (first..=last).all(|i| self.chunks.contains_key(&i))
    }

    /// Calls `f(chunk, offset in it, offset in the range, length)` for each cached chunk
    /// that the bytes `off .. off + len` touch.
    fn each_cached(
        &mut self,
        off: u64,
        len: u64,
        mut f: impl FnMut(&mut Box<[u8]>, usize, usize, usize),
    ) {
        if self.chunks.is_empty() {
            return;
        }
        let mut pos = 0u64;
        while pos < len {
            let abs = off + pos;
            let in_chunk = (abs % CHUNK as u64) as usize;
            let n = ((CHUNK - in_chunk) as u64).min(len - pos) as usize;
            if let Some(c) = self.chunks.get_mut(&(abs / CHUNK as u64)) {
                f(c, in_chunk, pos as usize, n);
            }
            pos += n as u64;
        }
    }

    /// The file's bytes at `off` are now `data`.
    fn write(&mut self, off: u64, data: &[u8]) {
        self.each_cached(off, data.len() as u64, |c, at, pos, n| {
            c[at..at + n].copy_from_slice(&data[pos..pos + n]);
        });
    }

    /// The file's bytes `off .. off + len` are now zeroes.
    fn zero(&mut self, off: u64, len: u64) {
        self.each_cached(off, len, |c, at, _, n| c[at..at + n].fill(0));
    }

    /// The file's bytes `off .. off + len` are unknown (a failed write): their chunks are
    /// dropped, to be read again.
    fn forget(&mut self, off: u64, len: u64) {
        if self.chunks.is_empty() || len == 0 {
            return;
        }
        let (first, last) = (off / CHUNK as u64, (off + len - 1) / CHUNK as u64);
        self.chunks.retain(|&i, _| i < first || i > last);
    }

    fn clear(&mut self) {
        self.chunks.clear();
    }
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

impl Storage {
    /// An image medium with a read cache of `budget` bytes.
    fn file(file: File, budget: u64) -> Self {
        Self::File {
            file,
            cache: ChunkCache::new(budget),
        }
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
            Storage::File { file, .. } => file.read_exact_at(buf, off),
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

    /// The bytes `off .. off + len` of a medium held in `CHUNK`-byte chunks (the memory
    /// medium's, or an image's cached ones), in order, as slices of the chunks `chunk_at`
    /// returns by chunk number (or of [`ZEROS`] where it returns none: never written), handed
    /// to `sink`: no copy, no buffer.
    #[inline(always)]
    fn pieces<'a, E>(
        chunk_at: impl Fn(u64) -> Option<&'a [u8]>,
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
            let piece = match chunk_at(idx) {
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
            Storage::File { file, cache } => {
                let r = file.write_all_at(data, off);
                match r {
                    Ok(()) => cache.write(off, data),
                    Err(_) => cache.forget(off, data.len() as u64),
                }
                r
            }
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
            Storage::File { file, cache } => {
                let mut pos = 0u64;
                let mut r = Ok(());
                while pos < len && r.is_ok() {
                    let n = (len - pos).min(CHUNK as u64) as usize;
                    r = file.write_all_at(&ZEROS[..n], off + pos);
                    pos += n as u64;
                }
                match r {
                    Ok(()) => cache.zero(off, len),
                    Err(_) => cache.forget(off, len),
                }
                r
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
            Storage::File { file, cache } => {
                cache.clear();
                file.set_len(0)?;
                file.set_len(self.len)
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
                (Storage::file(f, cfg.read_cache), existed && cur > 0)
            }
            Backing::Image(img) if img.len() < len => {
                return Err(format!("namespace {nsid}: {} holds {} bytes, the namespace needs {len}; an image is never resized", img.path().display(), img.len()))
            }
            Backing::Image(img) => (Storage::file(img.file().map_err(|e| format!("namespace {nsid}: {}: {e}", img.path().display()))?, cfg.read_cache), true),
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
    /// bytes where that range was written, an image's where its read cache holds them;
    /// empty elsewhere (never-written chunks read as zeroes, the rest of an image through
    /// the file) and for a range outside the namespace. The volatile write cache is not
    /// looked at: the hint only warms caches, it is never read as data.
    pub(crate) fn ahead(&self, slba: u64, nlb: u64) -> &[u8] {
        let end = slba.checked_add(nlb);
        if end.is_none_or(|e| e > self.blocks) {
            return &[];
        }
        let off = slba << self.lba_shift;
        let len = (nlb << self.lba_shift).min(crate::dma::AHEAD_MAX as u64) as usize;
        let (idx, in_chunk) = (off / CHUNK as u64, (off % CHUNK as u64) as usize);
        let c = match &self.medium.storage {
            Storage::Memory(chunks) => chunk(chunks, idx),
            Storage::File { cache, .. } => cache.get(idx),
        };
        c.map_or(&[], |c| &c[in_chunk..(in_chunk + len).min(CHUNK)])
    }

    /// Brings the chunks of an image under blocks `slba .. slba + nlb` into its read cache
    /// (those not there yet, each with one read of the whole chunk), if they fit its
    /// budget; a memory medium has nothing to do. Called before [`Self::read_with`], which
    /// then serves the range from the cache. A failed read of the file caches nothing of
    /// what it could not read, and is not reported here: `read_with` then reads the file
    /// itself and reports it. The range must be valid.
    #[inline]
    pub(crate) fn cache_range(&mut self, slba: u64, nlb: u64) {
        if let Storage::File { file, cache } = &mut self.medium.storage {
            let off = slba << self.lba_shift;
            let _ = cache.fill(file, self.medium.len, off, (nlb << self.lba_shift) as usize);
        }
    }

    /// Reads `nlb` blocks at `slba` as the host sees them (cache first), handing the bytes
    /// to `sink` in order, in pieces: straight from the memory medium, or the image's read
    /// cache when it holds the range's chunks ([`Self::cache_range`] fills it), and the
    /// write cache; or, for an image whose read cache does not hold them (full or off),
    /// through `scratch` (grown as needed, never shrunk, so a read allocates nothing once it
    /// is as large as the largest transfer). The range must be valid.
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
            Storage::Memory(chunks) => self
                .chunk_pieces(|i| chunk(chunks, i), slba, nlb, &mut sink)
                .map_err(ReadError::Sink),
            Storage::File { file, cache } => {
                let off = slba * bs as u64;
                if cache.covers(off, len) {
                    // Every chunk of the range is cached: `get` finds each one.
                    return self
                        .chunk_pieces(|i| cache.get(i), slba, nlb, &mut sink)
                        .map_err(ReadError::Sink);
                }
                if scratch.len() < len {
                    scratch.resize(len, 0);
                }
                let buf = &mut scratch[..len];
                file.read_exact_at(buf, off)
                    .map_err(|_| ReadError::Medium)?;
                self.overlay(slba, nlb, buf);
                sink(buf).map_err(ReadError::Sink)
            }
        }
    }

    /// `nlb` blocks at `slba` as the host sees them, handed to `sink` in pieces: the
    /// medium's chunks by number from `chunk_at` (see [`Medium::pieces`]), overlaid with
    /// the write cache's blocks.
    #[inline(always)]
    fn chunk_pieces<'a, E>(
        &self,
        chunk_at: impl Fn(u64) -> Option<&'a [u8]> + Copy,
        slba: u64,
        nlb: u64,
        sink: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let bs = self.lba_size() as usize;
        if self.cache.is_empty() {
            // Nothing cached: the medium's pieces of the whole range, in one pass.
            return Medium::pieces(chunk_at, slba * bs as u64, nlb as usize * bs, sink);
        }
        let end = slba + nlb;
        let mut lba = slba;
        while lba < end {
            let cached = self.cache.next_cached(lba, end).unwrap_or(end);
            if cached > lba {
                let n = (cached - lba) as usize * bs;
                Medium::pieces(chunk_at, lba * bs as u64, n, sink)?;
                lba = cached;
            }
            if lba < end {
                sink(self.cache.block(lba))?;
                lba += 1;
            }
        }
        Ok(())
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

    /// Image contents that differ in every block and chunk.
    fn image_bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed | 1)
            .collect()
    }

    /// A 1 MiB image of [`image_bytes`] (`seed`) in a new temporary directory: the
    /// directory (dropping it deletes the image), the image's path and its bytes.
    fn image_file(seed: u8) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns.img");
        let bytes = image_bytes(1 << 20, seed);
        std::fs::write(&path, &bytes).unwrap();
        (dir, path, bytes)
    }

    /// `nlb` blocks at `slba` through `read_with` (the Read command's path).
    fn read_all(ns: &mut Namespace, slba: u64, nlb: u64) -> Result<Vec<u8>, ReadError<()>> {
        ns.cache_range(slba, nlb);
        let mut got = Vec::new();
        let mut scratch = Vec::new();
        ns.read_with(slba, nlb, &mut scratch, |p| {
            got.extend_from_slice(p);
            Ok(())
        })?;
        Ok(got)
    }

    impl Namespace {
        /// Chunks held by the image's read cache.
        fn read_cache_chunks(&self) -> usize {
            match &self.medium.storage {
                Storage::File { cache, .. } => cache.chunks.len(),
                Storage::Memory(_) => 0,
            }
        }
    }

    /// Reads fill the read cache with whole chunks and are then served from it: the file
    /// changed behind the namespace's back (which the documentation rules out for a
    /// `Backing::File` image) shows through a plain `pread`, not through `read_with`.
    #[test]
    fn image_reads_are_served_from_the_read_cache() {
        let (_dir, path, bytes) = image_file(0);
        let mut ns = Namespace::open(1, &NamespaceConfig::file(512, 1 << 20, &path)).unwrap();
        assert_eq!(ns.read_cache_chunks(), 0);
        // Blocks 100..300 span chunks 0..=2 (128 blocks per chunk).
        let got = read_all(&mut ns, 100, 200).unwrap();
        assert_eq!(got, &bytes[100 * 512..300 * 512]);
        assert_eq!(ns.read_cache_chunks(), 3);
        // A hit reads nothing more.
        assert_eq!(read_all(&mut ns, 0, 384).unwrap(), &bytes[..384 * 512]);
        assert_eq!(ns.read_cache_chunks(), 3);
        let other = File::options().write(true).open(&path).unwrap();
        other.write_all_at(&[0xEE; 512], 200 * 512).unwrap();
        let mut direct = vec![0u8; 512];
        ns.read(200, 1, &mut direct).unwrap();
        assert_eq!(direct, [0xEE; 512]);
        assert_eq!(
            read_all(&mut ns, 200, 1).unwrap(),
            &bytes[200 * 512..201 * 512]
        );
    }

    /// Every path that changes the medium changes the cached chunks too: cached and FUA
    /// writes, the write cache's flush, Write Zeroes and deallocation (cached or not), the
    /// back door and Format NVM. After each, a read (of a range whose chunks are all cached)
    /// returns what the host wrote, and the file holds it once flushed.
    #[test]
    fn image_read_cache_is_coherent_with_every_write() {
        let (_dir, path, bytes) = image_file(0);
        let mut ns = Namespace::open(1, &NamespaceConfig::file(512, 1 << 20, &path)).unwrap();
        let mut model = bytes.clone();
        let check = |ns: &mut Namespace, model: &[u8], what: &str| {
            let got = read_all(ns, 0, 2048).unwrap();
            let bad = got.iter().zip(model).position(|(a, b)| a != b);
            assert_eq!(bad, None, "{what}: first wrong byte");
            assert_eq!(ns.read_cache_chunks(), 16, "{what}: every chunk cached");
        };
        check(&mut ns, &model, "initial");
        let put = |model: &mut Vec<u8>, lba: usize, d: &[u8]| {
            model[lba * 512..lba * 512 + d.len()].copy_from_slice(d)
        };
        // Write, FUA (through to the medium), across a chunk boundary.
        let d = image_bytes(4096, 1);
        ns.write(124, &d, false).unwrap();
        put(&mut model, 124, &d);
        check(&mut ns, &model, "FUA write");
        assert_eq!(std::fs::read(&path).unwrap(), model, "FUA write on file");
        // Write into the volatile write cache: the read overlays it; the flush writes it
        // to the file and the chunks.
        let d = image_bytes(3 * 512, 2);
        ns.write(300, &d, true).unwrap();
        put(&mut model, 300, &d);
        check(&mut ns, &model, "cached write");
        assert_ne!(std::fs::read(&path).unwrap(), model, "not yet on the file");
        ns.flush().unwrap();
        ns.lose_cache();
        check(&mut ns, &model, "flushed write");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            model,
            "flushed write on file"
        );
        // Write Zeroes and deallocation, through and cached (then flushed).
        ns.zero(250, 20, false, false).unwrap();
        put(&mut model, 250, &[0; 20 * 512]);
        check(&mut ns, &model, "Write Zeroes");
        ns.zero(600, 3, true, false).unwrap();
        put(&mut model, 600, &[0; 3 * 512]);
        check(&mut ns, &model, "deallocate");
        ns.zero(700, 200, true, true).unwrap();
        put(&mut model, 700, &[0; 200 * 512]);
        check(&mut ns, &model, "cached deallocate");
        ns.flush().unwrap();
        ns.lose_cache();
        check(&mut ns, &model, "flushed deallocate");
        assert_eq!(std::fs::read(&path).unwrap(), model, "zeroes on file");
        // The test back door.
        ns.backdoor_write(1000, &[0x5A; 700]).unwrap();
        put(&mut model, 1000, &[0x5A; 700]);
        check(&mut ns, &model, "back door");
        // Format NVM: all zeroes, in the new block size; the cache is emptied.
        ns.format(3).unwrap();
        assert_eq!(ns.read_cache_chunks(), 0);
        assert!(read_all(&mut ns, 0, 256).unwrap().iter().all(|&b| b == 0));
        assert_eq!(ns.read_cache_chunks(), 16);
    }

    /// The budget bounds the cached chunks (rounded down to whole chunks); reads beyond it
    /// are still right; a budget of 0 caches nothing.
    #[test]
    fn image_read_cache_respects_its_budget() {
        let (_dir, path, bytes) = image_file(0);
        for (budget, max) in [(3 * CHUNK as u64 + 100, 3), (CHUNK as u64 - 1, 0), (0, 0)] {
            let cfg = NamespaceConfig::file(4096, 1 << 20, &path).with_read_cache(budget);
            let mut ns = Namespace::open(1, &cfg).unwrap();
            // One block of every chunk, then every block, then ranges across chunks.
            for chunk in 0..16u64 {
                let lba = chunk * 16 + 5;
                let at = lba as usize * 4096;
                assert_eq!(read_all(&mut ns, lba, 1).unwrap(), &bytes[at..at + 4096]);
                assert_eq!(ns.read_cache_chunks(), max.min(chunk as usize + 1));
            }
            for lba in 0..256 {
                let at = lba as usize * 4096;
                assert_eq!(read_all(&mut ns, lba, 1).unwrap(), &bytes[at..at + 4096]);
            }
            // 32 blocks from block 40: chunks 2, 3 and 4, some cached, some not.
            assert_eq!(
                read_all(&mut ns, 40, 32).unwrap(),
                &bytes[40 * 4096..72 * 4096]
            );
            assert_eq!(ns.read_cache_chunks(), max);
        }
    }

    /// A read-only image (locked by `ImageFile`) is read through the cache too; a write to
    /// it fails and drops the chunks it touched, and the data read stays the file's. An
    /// image reopened starts with an empty cache and reads what the last one wrote.
    #[test]
    fn read_only_and_reopened_images_read_through_the_cache() {
        let (_dir, path, bytes) = image_file(7);
        {
            let img = crate::ImageFile::open(&path, None, false).unwrap();
            let mut ns = Namespace::open(1, &img.namespace().unwrap()).unwrap();
            assert_eq!(read_all(&mut ns, 0, 2048).unwrap(), bytes);
            ns.write(2000, &[0x11; 512], false).unwrap();
            ns.write(10, &[0x22; 512], true).unwrap();
            ns.flush().unwrap();
        }
        let mut want = bytes.clone();
        want[2000 * 512..2001 * 512].fill(0x11);
        want[10 * 512..11 * 512].fill(0x22);
        let img = crate::ImageFile::open(&path, None, true).unwrap();
        let mut ns = Namespace::open(1, &img.namespace().unwrap()).unwrap();
        assert!(ns.write_protected());
        assert_eq!(ns.read_cache_chunks(), 0);
        assert_eq!(read_all(&mut ns, 0, 2048).unwrap(), want);
        assert_eq!(ns.read_cache_chunks(), 16);
        assert!(ns.backdoor_write(130, &[0x33; 512]).is_err());
        assert_eq!(ns.read_cache_chunks(), 15, "the chunk written is dropped");
        assert_eq!(read_all(&mut ns, 0, 2048).unwrap(), want);
        assert_eq!(ns.read_cache_chunks(), 16);
    }

    /// A namespace that ends inside a chunk (of an image longer than it) caches the chunk
    /// up to its end; a file cut short under the namespace is a medium error, not a panic,
    /// and caches nothing of what it could not read.
    #[test]
    fn image_read_cache_at_the_end_of_the_medium() {
        let (dir, path, bytes) = image_file(9);
        // 300 blocks of 512 bytes: chunk 2 holds 22 KiB of the namespace.
        let mut ns = Namespace::open(1, &NamespaceConfig::file(512, 300 * 512, &path)).unwrap();
        assert_eq!(
            read_all(&mut ns, 290, 10).unwrap(),
            &bytes[290 * 512..300 * 512]
        );
        assert_eq!(read_all(&mut ns, 0, 300).unwrap(), &bytes[..300 * 512]);
        assert_eq!(ns.read_cache_chunks(), 3);
        drop(ns);
        // An image exactly as long as the namespace.
        let exact = dir.path().join("exact.img");
        let mut ns = Namespace::open(1, &NamespaceConfig::file(512, 300 * 512, &exact)).unwrap();
        assert_eq!(std::fs::metadata(&exact).unwrap().len(), 300 * 512);
        ns.write(0, &bytes[..300 * 512], false).unwrap();
        assert_eq!(
            read_all(&mut ns, 299, 1).unwrap(),
            &bytes[299 * 512..300 * 512]
        );
        assert_eq!(read_all(&mut ns, 0, 300).unwrap(), &bytes[..300 * 512]);
        assert_eq!(ns.read_cache_chunks(), 3);
        drop(ns);
        let mut ns = Namespace::open(1, &NamespaceConfig::file(512, 1 << 20, &path)).unwrap();
        assert_eq!(read_all(&mut ns, 0, 1).unwrap(), &bytes[..512]);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(150 * 512)
            .unwrap();
        assert!(matches!(read_all(&mut ns, 140, 20), Err(ReadError::Medium)));
        assert!(matches!(read_all(&mut ns, 1000, 1), Err(ReadError::Medium)));
        assert_eq!(ns.read_cache_chunks(), 1);
        assert_eq!(read_all(&mut ns, 0, 1).unwrap(), &bytes[..512]);
    }

    #[test]
    fn bad_config() {
        assert!(Namespace::open(1, &NamespaceConfig::memory(520, 1 << 20)).is_err());
        assert!(Namespace::open(1, &NamespaceConfig::memory(512, 0)).is_err());
    }
}

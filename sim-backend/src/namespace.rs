//! A namespace's medium (memory or a raw image file), its per-LBA allocation state and its
//! volatile write cache (NVM Command Set §4.1.5.1 DLFEAT, NVMe Base §5.1.25.2.x "Volatile
//! Write Cache").

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
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

enum Storage {
    /// Sparse: chunks never written read as zeroes.
    Memory(BTreeMap<u64, Box<[u8]>>),
    File(File),
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
                    match chunks.get(&idx) {
                        Some(c) => buf[pos..pos + n].copy_from_slice(&c[in_chunk..in_chunk + n]),
                        None => buf[pos..pos + n].fill(0),
                    }
                    pos += n;
                }
                Ok(())
            }
        }
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
                    let c = chunks
                        .entry(idx)
                        .or_insert_with(|| vec![0u8; CHUNK].into_boxed_slice());
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
                let zeros = vec![0u8; CHUNK];
                let mut pos = 0u64;
                while pos < len {
                    let n = (len - pos).min(CHUNK as u64) as usize;
                    f.write_all_at(&zeros[..n], off + pos)?;
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
                        chunks.remove(&idx);
                    } else if let Some(c) = chunks.get_mut(&idx) {
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
                chunks.clear();
                Ok(())
            }
            Storage::File(f) => {
                f.set_len(0)?;
                f.set_len(self.len)
            }
        }
    }
}

#[derive(Debug, Clone)]
enum CacheEntry {
    Data(Box<[u8]>),
    Zero { dealloc: bool },
}

/// One namespace.
pub(crate) struct Namespace {
    pub(crate) nsid: u32,
    /// Index into [`LBA_FORMATS`].
    pub(crate) lbaf: usize,
    pub(crate) blocks: u64,
    medium: Medium,
    /// Allocation state as the host sees it (cache included).
    alloc: BitVec,
    /// Allocation state on the medium.
    persist_alloc: BitVec,
    uncorrectable: BitVec,
    cache: BTreeMap<u64, CacheEntry>,
    cache_bytes: usize,
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
            Backing::Memory => (Storage::Memory(BTreeMap::new()), false),
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
            blocks: cfg.blocks,
            medium: Medium { storage, len },
            persist_alloc: alloc.clone(),
            alloc,
            uncorrectable: BitVec::repeat(false, nbits),
            cache: BTreeMap::new(),
            cache_bytes: 0,
            image,
        })
    }

    /// True if the medium is a read-only image: the namespace is write protected.
    pub(crate) fn write_protected(&self) -> bool {
        self.image.as_ref().is_some_and(crate::ImageFile::read_only)
    }

    pub(crate) fn lba_size(&self) -> u32 {
        1u32 << LBA_FORMATS[self.lbaf]
    }

    /// NUSE: allocated LBAs.
    pub(crate) fn nuse(&self) -> u64 {
        self.alloc.count_ones() as u64
    }

    fn range(&self, slba: u64, nlb: u64) -> std::ops::Range<usize> {
        slba as usize..(slba + nlb) as usize
    }

    /// True if any LBA of the range was made uncorrectable (Write Uncorrectable).
    pub(crate) fn first_uncorrectable(&self, slba: u64, nlb: u64) -> Option<u64> {
        self.uncorrectable[self.range(slba, nlb)]
            .first_one()
            .map(|i| slba + i as u64)
    }

    /// Reads `nlb` blocks at `slba` as the host sees them (cache first). The range must be
    /// valid.
    pub(crate) fn read(&self, slba: u64, nlb: u64, out: &mut [u8]) -> io::Result<()> {
        let bs = u64::from(self.lba_size());
        self.medium.read(slba * bs, out)?;
        for (lba, e) in self.cache.range(slba..slba + nlb) {
            let off = ((lba - slba) * bs) as usize;
            let dst = &mut out[off..off + bs as usize];
            match e {
                CacheEntry::Data(d) => dst.copy_from_slice(d),
                CacheEntry::Zero { .. } => dst.fill(0),
            }
        }
        Ok(())
    }

    fn uncache(&mut self, slba: u64, nlb: u64) {
        let bs = self.lba_size() as usize;
        let keys: Vec<u64> = self
            .cache
            .range(slba..slba + nlb)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(CacheEntry::Data(_)) = self.cache.remove(&k) {
                self.cache_bytes -= bs;
            }
        }
    }

    /// Writes whole blocks. `cached`: into the volatile write cache; else through to the
    /// medium (FUA, or no cache).
    pub(crate) fn write(&mut self, slba: u64, data: &[u8], cached: bool) -> io::Result<()> {
        let bs = self.lba_size() as usize;
        let nlb = (data.len() / bs) as u64;
        let r = self.range(slba, nlb);
        self.uncorrectable[r.clone()].fill(false);
        self.alloc[r.clone()].fill(true);
        if cached {
            for (i, blk) in data.chunks_exact(bs).enumerate() {
                let old = self
                    .cache
                    .insert(slba + i as u64, CacheEntry::Data(blk.into()));
                if !matches!(old, Some(CacheEntry::Data(_))) {
                    self.cache_bytes += bs;
                }
            }
            if self.cache_bytes > CACHE_LIMIT {
                self.flush()?;
            }
            Ok(())
        } else {
            self.uncache(slba, nlb);
            self.persist_alloc[r].fill(true);
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
            self.uncache(slba, nlb);
            for lba in slba..slba + nlb {
                self.cache.insert(lba, CacheEntry::Zero { dealloc });
            }
            Ok(())
        } else {
            self.uncache(slba, nlb);
            self.persist_alloc[r].fill(!dealloc);
            let bs = u64::from(self.lba_size());
            self.medium.zero(slba * bs, nlb * bs)
        }
    }

    /// Write Uncorrectable: reads of these blocks fail until they are written.
    pub(crate) fn mark_uncorrectable(&mut self, slba: u64, nlb: u64) {
        let r = self.range(slba, nlb);
        self.uncorrectable[r.clone()].fill(true);
        self.alloc[r].fill(true);
    }

    /// Writes the volatile write cache back to the medium.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        let bs = u64::from(self.lba_size());
        let cache = std::mem::take(&mut self.cache);
        self.cache_bytes = 0;
        let mut it = cache.into_iter().peekable();
        while let Some((lba, e)) = it.next() {
            match e {
                CacheEntry::Data(d) => {
                    // Coalesce a run of consecutive data blocks into one medium write.
                    let mut buf = d.into_vec();
                    let mut next = lba + 1;
                    while let Some((l, CacheEntry::Data(_))) = it.peek() {
                        if *l != next {
                            break;
                        }
                        if let Some((_, CacheEntry::Data(d2))) = it.next() {
                            buf.extend_from_slice(&d2);
                        }
                        next += 1;
                    }
                    self.persist_alloc[lba as usize..next as usize].fill(true);
                    self.medium.write(lba * bs, &buf)?;
                }
                CacheEntry::Zero { dealloc } => {
                    self.persist_alloc.set(lba as usize, !dealloc);
                    self.medium.zero(lba * bs, bs)?;
                }
            }
        }
        Ok(())
    }

    /// Power loss: the cache is gone, the medium is what remains.
    pub(crate) fn lose_cache(&mut self) {
        self.cache.clear();
        self.cache_bytes = 0;
        self.alloc = self.persist_alloc.clone();
    }

    /// Format NVM to LBA format `lbaf`: all data erased, all blocks deallocated, the
    /// capacity in bytes kept.
    pub(crate) fn format(&mut self, lbaf: usize) -> io::Result<()> {
        let bytes = self.blocks * u64::from(self.lba_size());
        self.lbaf = lbaf;
        self.blocks = bytes / u64::from(self.lba_size());
        self.cache.clear();
        self.cache_bytes = 0;
        self.medium.clear()?;
        let n = self.blocks as usize;
        self.alloc = BitVec::repeat(false, n);
        self.persist_alloc = self.alloc.clone();
        self.uncorrectable = BitVec::repeat(false, n);
        match &self.image {
            Some(img) => img.save_lba_size(self.lba_size()),
            None => Ok(()),
        }
    }

    /// Test back door: writes bytes straight to the medium at `lba`, bypassing the cache.
    pub(crate) fn backdoor_write(&mut self, lba: u64, data: &[u8]) -> io::Result<()> {
        let bs = u64::from(self.lba_size());
        let nlb = (data.len() as u64).div_ceil(bs);
        self.uncache(lba, nlb);
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

    #[test]
    fn bad_config() {
        assert!(Namespace::open(1, &NamespaceConfig::memory(520, 1 << 20)).is_err());
        assert!(Namespace::open(1, &NamespaceConfig::memory(512, 0)).is_err());
    }
}

//! Configuration of a simulated controller.

use std::path::PathBuf;
use std::time::Duration;

/// How the simulated controller runs its command processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimMode {
    /// The SQ tail doorbell write processes the new commands synchronously, inside
    /// [`nvme_core::hw::Bar::write32`]. Deterministic: for tests and fuzzing.
    #[default]
    Inline,
    /// A device thread, woken by doorbell writes, processes the commands (like a real
    /// device). The thread is joined when the last handle to the simulator is dropped.
    Thread,
}

/// Where a namespace keeps its logical blocks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backing {
    /// Sparse heap memory, lost when the simulator is dropped.
    #[default]
    Memory,
    /// A raw image file, byte-compatible with `qemu-img create -f raw`: LBA `n` is at byte
    /// `n × lba_size`. Created (or extended) to `blocks × lba_size` bytes if it is missing
    /// or shorter.
    ///
    /// Reads are served from an in-memory cache of the file's chunks
    /// ([`NamespaceConfig::read_cache`]): up to that many bytes of heap (256 MiB by
    /// default, never more than the namespace's size), taken as the image is read. The file
    /// is not locked: a change made to it by another process while the simulator runs is
    /// not seen by the chunks already cached (use [`Backing::Image`], which locks it, or a
    /// `read_cache` of 0).
    File(PathBuf),
    /// An image opened by [`crate::ImageFile::open`] (created only on request, locked, maybe
    /// read-only). Never resized: the namespace must fit in it.
    ///
    /// Reads are served from an in-memory cache of the image's chunks, read-only images
    /// included ([`NamespaceConfig::read_cache`]): up to that many bytes of heap (256 MiB by
    /// default, never more than the namespace's size), taken as the image is read.
    Image(crate::ImageFile),
}

/// One namespace of the simulated controller. Namespace IDs are given in order: the first
/// entry of [`SimConfig::namespaces`] is NSID 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceConfig {
    /// Logical block size in bytes: 512, 1024, 2048 or 4096 (the LBA formats the
    /// simulator offers; Format NVM can switch between them).
    pub lba_size: u32,
    /// Number of logical blocks (NSZE = NCAP).
    pub blocks: u64,
    /// The medium.
    pub backing: Backing,
    /// Read cache of an image-backed namespace ([`Backing::File`], [`Backing::Image`]), in
    /// bytes of heap memory; 0 turns it off. Ignored for [`Backing::Memory`].
    ///
    /// The cache holds whole 64 KiB chunks of the image (the budget is rounded down to whole
    /// chunks). A Read whose chunks are all cached moves its data straight from them into
    /// host memory, as a memory-backed namespace does; a miss reads the missing chunks
    /// whole from the file (one `pread` of 64 KiB each, so a cold 4 KiB read costs a 64 KiB
    /// one) and keeps them while the budget allows. Once the budget is used up, reads of
    /// chunks not cached go to the file as if there were no cache: nothing is evicted, the
    /// memory is held until the simulator is dropped (or the namespace formatted, which
    /// empties the cache). Every write to the medium (Write, Write Zeroes, Dataset
    /// Management deallocation, write cache flushes, Format NVM, the test back door) goes
    /// to the file and to the cached chunks it touches, so a read never sees stale data.
    ///
    /// The constructors set [`DEFAULT_READ_CACHE`] (256 MiB): it holds the whole of the
    /// namespaces tests and examples use (64 MiB by default), while a large image costs at
    /// most 256 MiB of memory, and only as much of it as is actually read.
    pub read_cache: u64,
}

/// The default [`NamespaceConfig::read_cache`]: 256 MiB (less for a smaller namespace, whose
/// chunks all fit in less).
pub const DEFAULT_READ_CACHE: u64 = 256 << 20;

impl NamespaceConfig {
    /// A memory-backed namespace of `bytes` bytes with `lba_size`-byte blocks.
    pub fn memory(lba_size: u32, bytes: u64) -> Self {
        Self {
            lba_size,
            blocks: bytes / u64::from(lba_size.max(1)),
            backing: Backing::Memory,
            read_cache: DEFAULT_READ_CACHE,
        }
    }
    /// A file-backed namespace (raw image) of `bytes` bytes with `lba_size`-byte blocks.
    pub fn file(lba_size: u32, bytes: u64, path: impl Into<PathBuf>) -> Self {
        Self {
            lba_size,
            blocks: bytes / u64::from(lba_size.max(1)),
            backing: Backing::File(path.into()),
            read_cache: DEFAULT_READ_CACHE,
        }
    }
    /// The same namespace with a read cache of `bytes` bytes (0: none); see
    /// [`read_cache`](Self::read_cache).
    #[must_use]
    pub fn with_read_cache(mut self, bytes: u64) -> Self {
        self.read_cache = bytes;
        self
    }
}

/// The simulated controller's capabilities and behaviour. [`Default`] is a sensible
/// controller: 1024-entry queues, 128 KiB MDTS, 8 I/O queue pairs, 9 MSI-X vectors, two
/// namespaces (512 B and 4 KiB blocks, 64 MiB each), a volatile write cache, strict checking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// CAP.MQES, maximum queue entries, 0's based (NVMe Base §3.1.4.1). At least 1.
    pub mqes_z: u16,
    /// Identify Controller MDTS: maximum transfer `2^mdts` minimum pages (0: no limit).
    pub mdts: u8,
    /// Maximum number of I/O submission/completion queue pairs granted by Set Features
    /// Number of Queues (§5.1.25.2.1). At least 1.
    pub max_io_queues: u16,
    /// Number of MSI-X vectors the function offers.
    pub msix_vectors: u16,
    /// CAP.DSTRD, doorbell stride `4 << dstrd` bytes (0..=8 here, so the doorbells of every
    /// queue fit in the 16 KiB BAR).
    pub dstrd: u8,
    /// CAP.TO in units of 500 ms.
    pub cap_to: u8,
    /// How long CSTS.RDY takes to follow CC.EN (and CSTS.SHST to reach "complete"). RDY is
    /// never 1 right after EN=1 unless this is zero.
    pub ready_delay: Duration,
    /// Identify Controller AERL, 0's based.
    pub aerl: u8,
    /// Identify Controller ACL, 0's based.
    pub acl: u8,
    /// Serial number (Identify Controller SN, up to 20 ASCII characters).
    pub serial: String,
    /// Model number (MN, up to 40 characters).
    pub model: String,
    /// Firmware revision (FR, up to 8 characters).
    pub firmware: String,
    /// The namespaces, NSID 1 first.
    pub namespaces: Vec<NamespaceConfig>,
    /// Inline or threaded processing.
    pub mode: SimMode,
    /// Record host protocol violations.
    pub strict: bool,
    /// Whether the controller has a volatile write cache (Identify Controller VWC bit 0,
    /// feature 06h).
    pub volatile_write_cache: bool,
    /// The DMA allocator's granule and alignment ([`nvme_core::hw::DmaAllocator::page_size`]):
    /// 4096 (the default), or 65536 to behave like an ARM64 host with 64 KiB pages. PRPs stay
    /// 4 KiB (CC.MPS); every allocation, however small, costs a whole granule.
    pub dma_granule: usize,
    /// Identify Controller SGLS (NVMe Base §5.1.13.2.1; see `crate::sgl` for what the
    /// simulator implements): bits 1:0 SGL support (00b none, 01b byte, 10b dword
    /// granularity), bit 16 Bit Bucket descriptors, bit 18 SGLs longer than the transfer.
    /// Default `0x1_0001`: SGLs with byte granularity and Bit Buckets.
    pub sgls: u32,
    /// Whether the controller supports Doorbell Buffer Config (NVMe Base §5.8, Identify
    /// Controller OACS bit 8): shadow doorbells for the I/O queues.
    pub doorbell_buffer: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            mqes_z: 1023,
            mdts: 5,
            max_io_queues: 8,
            msix_vectors: 9,
            dstrd: 0,
            cap_to: 2,
            ready_delay: Duration::from_millis(1),
            aerl: 3,
            acl: 3,
            serial: "SIM0000000001".into(),
            model: "nvme-sim controller model".into(),
            firmware: "1.0".into(),
            namespaces: vec![
                NamespaceConfig::memory(512, 64 << 20),
                NamespaceConfig::memory(4096, 64 << 20),
            ],
            mode: SimMode::Inline,
            strict: true,
            volatile_write_cache: true,
            dma_granule: crate::dma::DMA_PAGE,
            sgls: 0x1_0001,
            doorbell_buffer: true,
        }
    }
}

impl SimConfig {
    /// The default configuration in [`SimMode::Thread`].
    pub fn threaded() -> Self {
        Self {
            mode: SimMode::Thread,
            ..Self::default()
        }
    }
}

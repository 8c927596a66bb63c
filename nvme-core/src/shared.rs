//! State shared by a controller and its I/O queue pairs, and the identity that ties queue
//! pairs, buffers and namespace handles to one controller.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::error::{Error, Result};
use crate::hw::{Clock, Platform};
use crate::reclaim::Reclaim;
use crate::recovery::{Mailbox, RecoveryPolicy};

/// The LBA format of one active namespace, as the queue pairs need it to derive transfer
/// lengths from a command (NVM Command Set §4.1.5.1, Identify Namespace FLBAS and LBAF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NsFormat {
    pub(crate) nsid: u32,
    /// NSZE in logical blocks.
    pub(crate) blocks: u64,
    /// Bytes the host transfers per logical block through the data pointer: the LBA data
    /// size, plus the metadata size when the metadata is interleaved (extended LBA, FLBAS
    /// bit 4).
    pub(crate) bytes_per_block: u32,
}

/// State shared by the controller and its I/O queue pairs.
pub(crate) struct Shared<P: Platform> {
    pub(crate) platform: Arc<P>,
    /// Unique per controller in this process: namespace handles carry it.
    pub(crate) id: usize,
    pub(crate) dstrd: u8,
    pub(crate) reclaim: Reclaim,
    pub(crate) io_timeout_ns: u64,
    pub(crate) vectors: AtomicU16,
    /// Moves whenever the namespaces may have changed (Format NVM, namespace management,
    /// reset): namespace handles from an older epoch are refused.
    pub(crate) ns_epoch: AtomicU32,
    /// The active namespaces' formats, for commands built by the caller (passthrough).
    pub(crate) formats: spin::Mutex<Vec<NsFormat>>,
    /// What to do on timeouts and failures.
    pub(crate) policy: RecoveryPolicy,
    /// Requests from queue pairs to the controller thread, and the live pairs.
    pub(crate) mailbox: Mailbox,
    /// The spin phase of a hybrid completion wait (`crate::interrupts`), in nanoseconds.
    pub(crate) irq_spin_ns: AtomicU64,
    /// The shadow doorbell and EventIdx pages while the controller has them configured
    /// (Doorbell Buffer Config, NVMe Base §5.8); `None` otherwise.
    pub(crate) dbbuf: spin::Mutex<Option<(crate::dma::Mem, crate::dma::Mem)>>,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

impl<P: Platform> Shared<P> {
    pub(crate) fn new(
        platform: Arc<P>,
        dstrd: u8,
        io_timeout_ns: u64,
        policy: RecoveryPolicy,
    ) -> Self {
        Self {
            platform,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            dstrd,
            reclaim: Reclaim::default(),
            io_timeout_ns,
            vectors: AtomicU16::new(0),
            ns_epoch: AtomicU32::new(0),
            formats: spin::Mutex::new(Vec::new()),
            policy,
            mailbox: Mailbox::default(),
            irq_spin_ns: AtomicU64::new(0),
            dbbuf: spin::Mutex::new(None),
        }
    }
    /// The doorbell buffer pages, if the controller uses them now.
    pub(crate) fn shadow_doorbells(&self) -> Option<(crate::dma::Mem, crate::dma::Mem)> {
        *self.dbbuf.lock()
    }
    pub(crate) fn now_ns(&self) -> u64 {
        self.platform.clock().now_ns()
    }
    /// The format of namespace `nsid`, if it is active.
    pub(crate) fn format(&self, nsid: u32) -> Result<NsFormat> {
        self.formats
            .lock()
            .iter()
            .find(|f| f.nsid == nsid)
            .copied()
            .ok_or(Error::InvalidNamespace { nsid })
    }
}

/// Platforms driven by a live controller, by address: a second controller on the same
/// platform would reset the device under the first one's queues.
static CLAIMED: spin::Mutex<Vec<usize>> = spin::Mutex::new(Vec::new());

/// The claim of one platform by one controller, released on drop.
#[derive(Debug)]
pub(crate) struct Claim(usize);

impl Claim {
    pub(crate) fn new<P: Platform>(platform: &Arc<P>) -> Result<Self> {
        let key = Arc::as_ptr(platform) as *const u8 as usize;
        let mut c = CLAIMED.lock();
        if c.contains(&key) {
            return Err(Error::InvalidArgument(
                "this platform is already driven by a live Controller; drop or shut it down first",
            ));
        }
        c.push(key);
        Ok(Self(key))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        CLAIMED.lock().retain(|&k| k != self.0);
    }
}

//! `std::io::{Read, Write, Seek}` over a namespace, at byte offsets.

use std::io::{self, Read, Seek, SeekFrom, Write};

use nvme_core::hw::Platform;
use nvme_core::{Error, IoQueuePair, Namespace};

/// A namespace as a byte stream: a position, and reads and writes at any byte offset and of
/// any length, on the queue pair the caller chose.
///
/// - Whole blocks move straight between the caller's slice and the device through
///   [`Namespace::read_at`] / [`Namespace::write_at`] (split at MDTS, several commands in
///   flight).
/// - A write that covers part of a block is a read-modify-write of that block: the block is
///   read, the bytes changed, the block written. It is not atomic: another writer of the same
///   block between the read and the write loses its change, and a power loss in between
///   leaves the old block (NVM Command Set §2.1.4.1 Atomic Operation guarantees only whole
///   blocks up to AWUN/NAWUN).
/// - The size is fixed: reads at or past the end return 0 bytes (end of file); a write
///   starting at or past the end fails with [`io::ErrorKind::WriteZero`]; one that crosses
///   it is cut short at the end (a short write, as `Write` allows).
/// - [`Write::flush`] sends an NVMe Flush (NVM Command Set §3.3.2): the data written so far
///   is on non-volatile media when it returns.
/// - Namespaces whose metadata is interleaved with the data (extended LBAs, FLBAS bit 4) are
///   refused: their byte stream is not the data alone.
///
/// ```
/// use std::io::{Read, Seek, SeekFrom, Write};
/// # use sim_backend::{Simulator, SimConfig};
/// # use nvme_core::{Controller, ControllerConfig};
/// # let sim = Simulator::new(SimConfig::default())?;
/// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
/// let ns = ctrl.namespace(1)?.clone();
/// let mut qp = ctrl.create_io_queue_pair(64)?;
/// let mut dev = nvme_blk::NamespaceIo::new(&ns, &mut qp)?;
/// dev.seek(SeekFrom::Start(1000))?;
/// dev.write_all(b"hello, block device")?; // inside block 1 and 2: read-modify-write
/// dev.flush()?;
/// dev.seek(SeekFrom::Start(1007))?;
/// let mut word = [0u8; 5];
/// dev.read_exact(&mut word)?;
/// assert_eq!(&word, b"block");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct NamespaceIo<'q, P: Platform> {
    ns: Namespace,
    qp: &'q mut IoQueuePair<P>,
    pos: u64,
    size: u64,
    block: u64,
    /// One block, for partial reads and read-modify-writes.
    scratch: Vec<u8>,
}

impl<P: Platform> std::fmt::Debug for NamespaceIo<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceIo")
            .field("nsid", &self.ns.nsid())
            .field("pos", &self.pos)
            .field("size", &self.size)
            .finish()
    }
}

/// The `io::Error` for a driver error, with a kind a caller can act on.
pub fn io_error(e: Error) -> io::Error {
    let kind = match &e {
        Error::LbaOutOfRange { .. }
        | Error::BufferSize { .. }
        | Error::InvalidArgument(_)
        | Error::TransferTooLarge { .. } => io::ErrorKind::InvalidInput,
        Error::Timeout { .. } => io::ErrorKind::TimedOut,
        Error::DeviceGone => io::ErrorKind::NotConnected,
        Error::ControllerReset => io::ErrorKind::Interrupted,
        Error::StaleNamespace { .. } | Error::ForeignObject { .. } => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl<'q, P: Platform> NamespaceIo<'q, P> {
    /// A stream over `ns` at position 0, doing its I/O on `qp`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a namespace with interleaved metadata.
    pub fn new(ns: &Namespace, qp: &'q mut IoQueuePair<P>) -> Result<Self, Error> {
        if ns.bytes_per_block() != ns.lba_size() {
            return Err(Error::InvalidArgument(
                "the namespace interleaves metadata with its data (extended LBA): not a byte stream",
            ));
        }
        let block = ns.lba_size() as u64;
        Ok(Self {
            size: ns.size_bytes(),
            ns: ns.clone(),
            qp,
            pos: 0,
            block,
            scratch: vec![0; block as usize],
        })
    }

    /// The namespace's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The current position.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The namespace handle.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// Bytes from `pos` that fit before the end, at most `want`.
    fn clamp(&self, want: usize) -> usize {
        (self.size.saturating_sub(self.pos)).min(want as u64) as usize
    }
}

impl<P: Platform> Read for NamespaceIo<'_, P> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.clamp(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let (lba, off) = (self.pos / self.block, (self.pos % self.block) as usize);
        let bs = self.block as usize;
        let done = if off != 0 || n < bs {
            // A part of one block.
            self.ns
                .read_at(self.qp, lba, &mut self.scratch)
                .map_err(io_error)?;
            let k = n.min(bs - off);
            buf[..k].copy_from_slice(&self.scratch[off..off + k]);
            k
        } else {
            let k = n / bs * bs;
            self.ns
                .read_at(self.qp, lba, &mut buf[..k])
                .map_err(io_error)?;
            k
        };
        self.pos += done as u64;
        Ok(done)
    }
}

impl<P: Platform> Write for NamespaceIo<'_, P> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.clamp(buf.len());
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "write at byte {} is past the end of namespace {} ({} bytes)",
                    self.pos,
                    self.ns.nsid(),
                    self.size
                ),
            ));
        }
        let (lba, off) = (self.pos / self.block, (self.pos % self.block) as usize);
        let bs = self.block as usize;
        let done = if off != 0 || n < bs {
            // Read-modify-write of one block.
            let k = n.min(bs - off);
            self.ns
                .read_at(self.qp, lba, &mut self.scratch)
                .map_err(io_error)?;
            self.scratch[off..off + k].copy_from_slice(&buf[..k]);
            self.ns
                .write_at(self.qp, lba, &self.scratch)
                .map_err(io_error)?;
            k
        } else {
            let k = n / bs * bs;
            self.ns
                .write_at(self.qp, lba, &buf[..k])
                .map_err(io_error)?;
            k
        };
        self.pos += done as u64;
        Ok(done)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.ns.flush(self.qp).map_err(io_error)
    }
}

impl<P: Platform> Seek for NamespaceIo<'_, P> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )),
        }
    }
}

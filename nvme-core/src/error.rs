//! Typed errors of the core. Every variant says what failed and, where the caller can act,
//! what to do. Command failures carry the full status (SCT, SC, CRD, M, DNR).

use alloc::boxed::Box;

use crate::hw::DmaErrorKind;
use crate::spec::Status;

/// An error of the NVMe core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Every register read returns all-ones: the device is gone (surprise removal, link down,
    /// or a BAR that is not mapped).
    #[error(
        "the controller reads as all-ones: the device is gone (surprise removal or dead link)"
    )]
    DeviceGone,
    /// CSTS.CFS is set (§9.5): the controller hit a fatal error and needs a reset.
    #[error("the controller reports Controller Fatal Status (CSTS.CFS=1); it must be reset")]
    ControllerFatal,
    /// CSTS.RDY did not reach the expected value within CAP.TO (§3.5.1).
    #[error("CSTS.RDY did not become {expected} within {waited_ms} ms (CAP.TO); the controller is not responding")]
    ReadyTimeout {
        /// The RDY value waited for.
        expected: bool,
        /// How long the core waited.
        waited_ms: u64,
    },
    /// Shutdown did not complete within the allowed time (§3.6.1).
    #[error("shutdown did not complete within {waited_ms} ms (CSTS.SHST never reached 10b)")]
    ShutdownTimeout {
        /// How long the core waited.
        waited_ms: u64,
    },
    /// The controller completed a command with an error status.
    #[error("{opcode_name} (opcode {opcode:#04x}) failed: {status}")]
    Command {
        /// Opcode of the failed command.
        opcode: u8,
        /// Its name.
        opcode_name: &'static str,
        /// The status the controller returned.
        status: Status,
        /// Completion DW0 (some failures carry detail there).
        dw0: u32,
    },
    /// A command did not complete within its timeout. Its buffer stays with the queue until
    /// the device completes it or the controller is reset.
    #[error("command {cid:#06x} on queue {qid} (opcode {opcode:#04x}) did not complete within {waited_ms} ms; abort it or reset the controller")]
    Timeout {
        /// Queue ID.
        qid: u16,
        /// Command ID.
        cid: u16,
        /// Opcode.
        opcode: u8,
        /// How long the core waited.
        waited_ms: u64,
    },
    /// A DMA allocation failed.
    #[error("DMA allocation of {len} bytes failed ({kind:?}): {source}")]
    Dma {
        /// The backend-independent kind.
        kind: DmaErrorKind,
        /// Bytes requested.
        len: usize,
        /// The backend's error.
        source: Box<dyn core::error::Error + Send + Sync>,
    },
    /// The interrupt source failed.
    #[error("interrupt setup failed: {0}")]
    Interrupt(Box<dyn core::error::Error + Send + Sync>),
    /// The backend broke its contract.
    #[error("backend error: {0}")]
    Backend(&'static str),
    /// An argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A registered buffer ([`crate::io::FixedBuf`]) cannot be used as asked.
    #[error("registered buffer {index}: {problem}")]
    FixedBuffer {
        /// Its index in the queue pair's table.
        index: u16,
        /// Why not.
        problem: &'static str,
    },
    /// The controller lacks something the core needs.
    #[error("unsupported by this controller: {0}")]
    Unsupported(&'static str),
    /// The LBA range is outside the namespace.
    #[error("LBA range {slba}..{end} is outside namespace {nsid}, which has {nsze} blocks")]
    LbaOutOfRange {
        /// Namespace.
        nsid: u32,
        /// First LBA.
        slba: u64,
        /// One past the last LBA.
        end: u64,
        /// Namespace size in blocks.
        nsze: u64,
    },
    /// The transfer exceeds the controller's maximum data transfer size (MDTS) or the
    /// core's configured maximum. The core does not split commands: split the I/O.
    #[error("transfer of {bytes} bytes exceeds the maximum of {max} bytes per command (MDTS); split the I/O")]
    TransferTooLarge {
        /// Bytes requested.
        bytes: u64,
        /// Maximum per command.
        max: u64,
    },
    /// The buffer does not match the transfer.
    #[error("buffer of {have} bytes does not fit a transfer of {need} bytes")]
    BufferSize {
        /// Bytes the command transfers.
        need: usize,
        /// Bytes in the buffer.
        have: usize,
    },
    /// The buffer offset is not dword aligned (PRP1 offsets must be, §4.3.1).
    #[error("buffer offset {offset} is not a multiple of 4 (PRP entries must be dword aligned)")]
    Misaligned {
        /// The offset.
        offset: usize,
    },
    /// The command's own fields describe a transfer that differs from the buffer given
    /// (NVM Command Set §3.3: the transfer length of Read, Write and Compare is NLB + 1 logical
    /// blocks; of Dataset Management, NR + 1 ranges of 16 bytes).
    #[error("{opcode_name} (opcode {opcode:#04x}) transfers {described} bytes by its own fields, but {given} bytes of buffer were given")]
    TransferMismatch {
        /// Opcode.
        opcode: u8,
        /// Its name.
        opcode_name: &'static str,
        /// Bytes the command describes (NLB, NUMD, NR...).
        described: usize,
        /// Bytes of buffer given for it.
        given: usize,
    },
    /// A command whose data length the core cannot derive was given a buffer through the
    /// safe API.
    #[error("opcode {opcode:#04x} is unknown to the core, which cannot tell how many bytes it transfers; use the unsafe passthrough_unchecked and vouch for the length")]
    UnknownTransfer {
        /// Opcode.
        opcode: u8,
    },
    /// A queue pair, buffer or namespace handle of another controller (or of another
    /// platform) was given to this one.
    #[error(
        "{what} belongs to another controller; use it only with the controller that created it"
    )]
    ForeignObject {
        /// What was given.
        what: &'static str,
    },
    /// A namespace handle taken before the namespaces changed (Format NVM, namespace
    /// management, reset).
    #[error("the handle of namespace {nsid} is stale: the namespace was formatted, changed or the controller reset since; get a fresh one from Controller::namespace")]
    StaleNamespace {
        /// NSID of the handle.
        nsid: u32,
    },
    /// No such namespace on this controller.
    #[error("namespace {nsid} is not active on this controller")]
    InvalidNamespace {
        /// The NSID asked for.
        nsid: u32,
    },
    /// Every slot of the queue is in use.
    #[error("queue {qid} is full ({depth} commands outstanding); poll for completions first")]
    QueueFull {
        /// Queue ID.
        qid: u16,
        /// Outstanding commands.
        depth: u16,
    },
    /// No more I/O queues can be created.
    #[error("all {granted} I/O queue pairs granted by the controller are in use")]
    NoQueueAvailable {
        /// Pairs granted by Set Features Number of Queues.
        granted: u16,
    },
    /// The controller was reset (or disabled) while the request was outstanding.
    #[error("the controller was reset; outstanding commands were discarded")]
    ControllerReset,
    /// A previous failure left the controller in a state that needs [`crate::controller::Controller::reset`].
    #[error("the controller needs a reset after an earlier failure: {0}")]
    NeedsReset(&'static str),
    /// Data written by the device makes no sense.
    #[error("the device returned invalid data: {0}")]
    DeviceProtocol(&'static str),
    /// A page from the device was too short.
    #[error(transparent)]
    ShortPage(#[from] crate::spec::ShortPage),
}

impl Error {
    /// The status, if this is a command failure.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Command { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Result with the core's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;

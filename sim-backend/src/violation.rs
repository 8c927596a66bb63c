//! Host protocol violations the strict checker records, and the statistics counters.

use std::collections::BTreeMap;
use std::fmt;

/// What rule of the spec the host broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ViolationKind {
    /// A doorbell value at or beyond the queue size (§3.1.4 SQyTDBL/CQyHDBL, Asynchronous
    /// Event "Invalid Doorbell Write Value").
    DoorbellValueOutOfRange,
    /// An SQ tail written again with nothing new, or a CQ head written without moving.
    DoorbellNoProgress,
    /// A CQ head moved past entries the controller had not posted (consuming from an empty
    /// CQ).
    CqConsumeFromEmpty,
    /// An SQ tail moved past the head: more entries submitted than free slots.
    SqOverflow,
    /// A write to the doorbell of a queue that does not exist (Asynchronous Event "Write to
    /// Invalid Doorbell Register").
    DoorbellNonexistentQueue,
    /// A doorbell written while the controller is not ready (CSTS.RDY = 0, shutting down, or
    /// fatal).
    DoorbellWhileNotReady,
    /// A write to an offset of BAR0 that is no register, or a misaligned access.
    UndefinedRegister,
    /// A command identifier reused while a command with it is outstanding on the same SQ
    /// (§4.1: CID unique per SQ among outstanding commands).
    CidConflict,
    /// A queue base address (ASQ, ACQ or PRP1 of Create I/O SQ/CQ) not aligned to CC.MPS.
    MisalignedQueueBase,
    /// A PRP entry with an invalid offset (§4.3.1).
    MisalignedPrp,
    /// A PRP list pointer not qword aligned, or otherwise malformed.
    MalformedPrpList,
    /// CC.IOSQES / CC.IOCQES unset or not 6 / 4 when an I/O queue is created (or wrong at
    /// enable).
    QueueEntrySize,
    /// Create I/O SQ/CQ for a QID that is already in use.
    QueueCreatedTwice,
    /// Set Features Number of Queues after I/O queues were created (§5.1.25.2.1).
    NumberOfQueuesAfterCreation,
    /// CC.EN changed while CSTS.RDY had not yet followed the previous change (§3.5.1).
    EnableWhileTransitioning,
    /// CC.EN set with an invalid configuration (AQA, ASQ, ACQ, MPS, CSS, AMS).
    InvalidEnableConfig,
    /// CC fields other than EN and SHN changed while EN = 1.
    ConfigChangedWhileEnabled,
    /// PSDT ≠ 0: SGLs on an admin command (never allowed on PCIe) or on an I/O command
    /// (Identify SGLS = 0).
    Psdt,
    /// An SGL the controller refuses (§4.3.2): a descriptor type or sub type it does not
    /// support, a malformed segment, a length that does not match the transfer.
    InvalidSgl,
    /// A command with FUSE bits set (fused operations are not supported: Identify FUSES = 0).
    FusedCommand,
    /// A device access to an IOVA that is not mapped (freed, never allocated, or past the
    /// end of a region).
    UnmappedDma,
    /// A command sent while the command sequence makes it invalid (e.g. an I/O command on a
    /// queue the host is deleting).
    CommandSequence,
}

/// One recorded violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule.
    pub kind: ViolationKind,
    /// What happened, with the values involved.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.detail)
    }
}

/// Counters of what the simulated controller did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Admin commands processed, per opcode.
    pub admin_commands: BTreeMap<u8, u64>,
    /// I/O commands processed, per opcode.
    pub io_commands: BTreeMap<u8, u64>,
    /// Doorbell writes (valid or not).
    pub doorbell_writes: u64,
    /// CQ heads taken from the host's shadow doorbell buffer instead of a register write
    /// (Doorbell Buffer Config, NVMe Base §5.8).
    pub shadow_cq_heads: u64,
    /// Completion entries posted.
    pub completions_posted: u64,
    /// Interrupts raised (on enabled vectors).
    pub interrupts_raised: u64,
    /// Controller resets (CC.EN 1 → 0).
    pub resets: u64,
    /// Bytes of a memory medium prefetched into the CPU's caches, during a Read's data
    /// transfer, for the Read queued behind it in the same SQ (read-ahead: a speed hint,
    /// never read as data).
    pub read_ahead_bytes: u64,
}

impl SimStats {
    /// Admin commands processed with `opcode`.
    pub fn admin(&self, opcode: u8) -> u64 {
        self.admin_commands.get(&opcode).copied().unwrap_or(0)
    }
    /// I/O commands processed with `opcode`.
    pub fn io(&self, opcode: u8) -> u64 {
        self.io_commands.get(&opcode).copied().unwrap_or(0)
    }
}

//! NVMe wire and register types, shared by the driver and the simulator. No `unsafe`.
//!
//! Section numbers refer to the NVMe Base Specification 2.1 and the NVM Command Set
//! Specification 1.1 unless noted.

mod bytes;
pub mod cmd;
pub mod features;
pub mod identify;
pub mod log;
pub mod opcode;
pub mod regs;
pub mod sgl;
pub mod status;
pub mod transfer;

pub use bytes::AsciiField;
pub use cmd::{Command, Completion};
pub use features::{FeatureId, NumberOfQueues};
pub use identify::{IdentifyController, IdentifyNamespace, LbaFormat, NamespaceList, ShortPage};
pub use log::{AsyncEvent, ErrorLogEntry, FirmwareSlotLog, SmartLog};
pub use opcode::{AdminOpcode, DataDirection, NvmOpcode};
pub use regs::{Aqa, Cap, Cc, Csts, Vs};
pub use status::{Status, StatusCodeType};
pub use transfer::DataLength;

/// Size of a submission queue entry (IOSQES = 6).
pub const SQE_SIZE: usize = 64;
/// Size of a completion queue entry (IOCQES = 4).
pub const CQE_SIZE: usize = 16;
/// The memory page size the core configures (CC.MPS = 0, 4 KiB; every controller supports
/// it since MPSMIN is at most 4 KiB on all known devices, and the core checks CAP.MPSMIN).
pub const PAGE_SIZE: usize = 4096;

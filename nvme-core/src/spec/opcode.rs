//! Opcodes as open types: any byte decodes, known values have names (§5 admin, NVM Command
//! Set Specification §3 I/O).

use core::fmt;

/// An admin command opcode (NVMe Base §5, Figure "Opcodes for Admin Commands").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct AdminOpcode(pub u8);

impl AdminOpcode {
    /// Delete I/O Submission Queue (§5.2.x).
    pub const DELETE_IO_SQ: Self = Self(0x00);
    /// Create I/O Submission Queue.
    pub const CREATE_IO_SQ: Self = Self(0x01);
    /// Get Log Page.
    pub const GET_LOG_PAGE: Self = Self(0x02);
    /// Delete I/O Completion Queue.
    pub const DELETE_IO_CQ: Self = Self(0x04);
    /// Create I/O Completion Queue.
    pub const CREATE_IO_CQ: Self = Self(0x05);
    /// Identify.
    pub const IDENTIFY: Self = Self(0x06);
    /// Abort.
    pub const ABORT: Self = Self(0x08);
    /// Set Features.
    pub const SET_FEATURES: Self = Self(0x09);
    /// Get Features.
    pub const GET_FEATURES: Self = Self(0x0A);
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT_REQUEST: Self = Self(0x0C);
    /// Namespace Management.
    pub const NAMESPACE_MANAGEMENT: Self = Self(0x0D);
    /// Firmware Commit.
    pub const FIRMWARE_COMMIT: Self = Self(0x10);
    /// Firmware Image Download.
    pub const FIRMWARE_DOWNLOAD: Self = Self(0x11);
    /// Device Self-test.
    pub const DEVICE_SELF_TEST: Self = Self(0x14);
    /// Namespace Attachment.
    pub const NAMESPACE_ATTACHMENT: Self = Self(0x15);
    /// Keep Alive.
    pub const KEEP_ALIVE: Self = Self(0x18);
    /// Doorbell Buffer Config.
    pub const DOORBELL_BUFFER_CONFIG: Self = Self(0x7C);
    /// Format NVM.
    pub const FORMAT_NVM: Self = Self(0x80);
    /// Sanitize.
    pub const SANITIZE: Self = Self(0x84);

    /// The spec's name, if this opcode is one the core knows.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x00 => "Delete I/O Submission Queue",
            0x01 => "Create I/O Submission Queue",
            0x02 => "Get Log Page",
            0x04 => "Delete I/O Completion Queue",
            0x05 => "Create I/O Completion Queue",
            0x06 => "Identify",
            0x08 => "Abort",
            0x09 => "Set Features",
            0x0A => "Get Features",
            0x0C => "Asynchronous Event Request",
            0x0D => "Namespace Management",
            0x10 => "Firmware Commit",
            0x11 => "Firmware Image Download",
            0x14 => "Device Self-test",
            0x15 => "Namespace Attachment",
            0x18 => "Keep Alive",
            0x7C => "Doorbell Buffer Config",
            0x80 => "Format NVM",
            0x84 => "Sanitize",
            _ => return None,
        })
    }
}

/// An NVM command set I/O opcode (NVM Command Set Specification §3, Figure "Opcodes for NVM
/// Commands").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct NvmOpcode(pub u8);

impl NvmOpcode {
    /// Flush.
    pub const FLUSH: Self = Self(0x00);
    /// Write.
    pub const WRITE: Self = Self(0x01);
    /// Read.
    pub const READ: Self = Self(0x02);
    /// Write Uncorrectable.
    pub const WRITE_UNCORRECTABLE: Self = Self(0x04);
    /// Compare.
    pub const COMPARE: Self = Self(0x05);
    /// Write Zeroes.
    pub const WRITE_ZEROES: Self = Self(0x08);
    /// Dataset Management.
    pub const DATASET_MANAGEMENT: Self = Self(0x09);
    /// Verify.
    pub const VERIFY: Self = Self(0x0C);
    /// Copy.
    pub const COPY: Self = Self(0x19);

    /// The spec's name, if known.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x00 => "Flush",
            0x01 => "Write",
            0x02 => "Read",
            0x04 => "Write Uncorrectable",
            0x05 => "Compare",
            0x08 => "Write Zeroes",
            0x09 => "Dataset Management",
            0x0C => "Verify",
            0x19 => "Copy",
            _ => return None,
        })
    }

    /// Data transfer direction, bits 1:0 of the opcode (§5 "Opcodes"): 01b host to
    /// controller, 10b controller to host.
    pub const fn data_direction(self) -> DataDirection {
        DataDirection::from_opcode(self.0)
    }
}

/// Data transfer direction of a command, from bits 1:0 of its opcode (§3.3 and Figure
/// "Opcodes for Admin Commands").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirection {
    /// 00b: no data.
    None,
    /// 01b: host to controller (the device reads host memory).
    HostToController,
    /// 10b: controller to host (the device writes host memory).
    ControllerToHost,
    /// 11b: bidirectional.
    Bidirectional,
}

impl DataDirection {
    /// Decodes bits 1:0 of an opcode.
    pub const fn from_opcode(op: u8) -> Self {
        match op & 3 {
            0 => Self::None,
            1 => Self::HostToController,
            2 => Self::ControllerToHost,
            _ => Self::Bidirectional,
        }
    }
}

impl fmt::Debug for AdminOpcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({:#04x})", self.0),
            None => write!(f, "AdminOpcode({:#04x})", self.0),
        }
    }
}
impl fmt::Display for AdminOpcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
impl fmt::Debug for NvmOpcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({:#04x})", self.0),
            None => write!(f, "NvmOpcode({:#04x})", self.0),
        }
    }
}
impl fmt::Display for NvmOpcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn every_value_decodes() {
        for v in 0..=255u8 {
            let _ = AdminOpcode(v).name();
            let _ = NvmOpcode(v).name();
            let _ = NvmOpcode(v).data_direction();
        }
        assert_eq!(
            NvmOpcode::READ.data_direction(),
            DataDirection::ControllerToHost
        );
        assert_eq!(
            NvmOpcode::WRITE.data_direction(),
            DataDirection::HostToController
        );
        assert_eq!(AdminOpcode(0x06).name(), Some("Identify"));
        assert_eq!(AdminOpcode(0xC3).name(), None);
    }
}

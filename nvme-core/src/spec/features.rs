//! Feature identifiers and the values of the features the core uses (NVMe Base §5.1.25,
//! Figure "Feature Identifiers").

/// A feature identifier: an open type (any byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FeatureId(pub u8);

impl FeatureId {
    /// 01h Arbitration.
    pub const ARBITRATION: Self = Self(0x01);
    /// 02h Power Management.
    pub const POWER_MANAGEMENT: Self = Self(0x02);
    /// 04h Temperature Threshold.
    pub const TEMPERATURE_THRESHOLD: Self = Self(0x04);
    /// 05h Error Recovery.
    pub const ERROR_RECOVERY: Self = Self(0x05);
    /// 06h Volatile Write Cache.
    pub const VOLATILE_WRITE_CACHE: Self = Self(0x06);
    /// 07h Number of Queues.
    pub const NUMBER_OF_QUEUES: Self = Self(0x07);
    /// 08h Interrupt Coalescing.
    pub const INTERRUPT_COALESCING: Self = Self(0x08);
    /// 09h Interrupt Vector Configuration.
    pub const INTERRUPT_VECTOR_CONFIG: Self = Self(0x09);
    /// 0Ah Write Atomicity Normal.
    pub const WRITE_ATOMICITY: Self = Self(0x0A);
    /// 0Bh Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CONFIG: Self = Self(0x0B);
    /// 0Fh Keep Alive Timer.
    pub const KEEP_ALIVE_TIMER: Self = Self(0x0F);
    /// 0Eh Timestamp.
    pub const TIMESTAMP: Self = Self(0x0E);

    /// The spec's name, if known.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x01 => "Arbitration",
            0x02 => "Power Management",
            0x04 => "Temperature Threshold",
            0x05 => "Error Recovery",
            0x06 => "Volatile Write Cache",
            0x07 => "Number of Queues",
            0x08 => "Interrupt Coalescing",
            0x09 => "Interrupt Vector Configuration",
            0x0A => "Write Atomicity Normal",
            0x0B => "Asynchronous Event Configuration",
            0x0E => "Timestamp",
            0x0F => "Keep Alive Timer",
            _ => return None,
        })
    }
}

/// Get Features SEL values (§5.1.11, Figure "Select"): CDW10 bits 10:8.
pub mod select {
    /// 000b current.
    pub const CURRENT: u8 = 0;
    /// 001b default.
    pub const DEFAULT: u8 = 1;
    /// 010b saved.
    pub const SAVED: u8 = 2;
    /// 011b supported capabilities: DW0 bit 0 saveable, bit 1 namespace specific, bit 2
    /// changeable.
    pub const SUPPORTED_CAPABILITIES: u8 = 3;
}

/// Number of Queues (§5.1.25.2.1, feature 07h): counts are 0's based in both CDW11 (NSQR
/// 15:0, NCQR 31:16) and the completion DW0 (NSQA 15:0, NCQA 31:16). `FFFFh` is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumberOfQueues {
    /// Number of I/O submission queues, 0's based.
    pub nsq_z: u16,
    /// Number of I/O completion queues, 0's based.
    pub ncq_z: u16,
}

impl NumberOfQueues {
    /// From a dword (CDW11 or completion DW0).
    pub const fn from_dword(d: u32) -> Self {
        Self {
            nsq_z: d as u16,
            ncq_z: (d >> 16) as u16,
        }
    }
    /// To a dword.
    pub const fn to_dword(self) -> u32 {
        self.nsq_z as u32 | (self.ncq_z as u32) << 16
    }
}

/// Asynchronous Event Configuration bits (feature 0Bh, §5.1.25.2.x): bits 7:0 SMART/health
/// critical warnings, bit 8 namespace attribute notices, bit 9 firmware activation notices.
pub mod aec {
    /// All SMART critical warnings.
    pub const SMART_ALL: u32 = 0xFF;
    /// Namespace Attribute Notices.
    pub const NS_ATTRIBUTE: u32 = 1 << 8;
    /// Firmware Activation Notices.
    pub const FW_ACTIVATION: u32 = 1 << 9;
}

//! Log pages (NVMe Base §5.1.12): Error Information (01h), SMART / Health Information (02h),
//! Firmware Slot Information (03h), and the asynchronous event completion (§5.1.2).

use super::bytes::{array_at, put, u128_at, u16_at, u32_at, u64_at, u8_at, AsciiField};
use super::identify::ShortPage;
use super::status::Status;

/// Log page identifiers (§5.1.12, Figure "Log Page Identifiers").
pub mod lid {
    /// 01h Error Information.
    pub const ERROR_INFO: u8 = 0x01;
    /// 02h SMART / Health Information.
    pub const SMART: u8 = 0x02;
    /// 03h Firmware Slot Information.
    pub const FIRMWARE_SLOT: u8 = 0x03;
    /// 04h Changed Namespace List.
    pub const CHANGED_NS_LIST: u8 = 0x04;
    /// 05h Commands Supported and Effects.
    pub const COMMAND_EFFECTS: u8 = 0x05;
    /// 06h Device Self-test.
    pub const SELF_TEST: u8 = 0x06;
}

/// One Error Information log entry (§5.1.12.1.2, 64 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorLogEntry {
    /// Bytes 7:0 Error Count: a unique, increasing identifier (0: entry unused).
    pub error_count: u64,
    /// Bytes 9:8 SQID.
    pub sqid: u16,
    /// Bytes 11:10 CID.
    pub cid: u16,
    /// Bytes 13:12 Status Field: bits 15:1 the status, bit 0 the phase tag.
    pub status_field: u16,
    /// Bytes 15:14 Parameter Error Location: byte 7:0, bit 10:8 in the command.
    pub param_error_location: u16,
    /// Bytes 23:16 LBA.
    pub lba: u64,
    /// Bytes 27:24 NSID.
    pub nsid: u32,
    /// Byte 28 Vendor Specific Information Available.
    pub vs: u8,
    /// Byte 29 Transport Type.
    pub trtype: u8,
    /// Bytes 39:32 Command Specific Information.
    pub cs: u64,
}

impl ErrorLogEntry {
    /// Size of one entry.
    pub const LEN: usize = 64;
    /// Parses an entry; short input reads as zero.
    pub fn parse(b: &[u8]) -> Self {
        Self {
            error_count: u64_at(b, 0),
            sqid: u16_at(b, 8),
            cid: u16_at(b, 10),
            status_field: u16_at(b, 12),
            param_error_location: u16_at(b, 14),
            lba: u64_at(b, 16),
            nsid: u32_at(b, 24),
            vs: u8_at(b, 28),
            trtype: u8_at(b, 29),
            cs: u64_at(b, 32),
        }
    }
    /// Encodes into 64 bytes.
    pub fn encode(&self, b: &mut [u8]) {
        put(b, 0, &self.error_count.to_le_bytes());
        put(b, 8, &self.sqid.to_le_bytes());
        put(b, 10, &self.cid.to_le_bytes());
        put(b, 12, &self.status_field.to_le_bytes());
        put(b, 14, &self.param_error_location.to_le_bytes());
        put(b, 16, &self.lba.to_le_bytes());
        put(b, 24, &self.nsid.to_le_bytes());
        put(b, 28, &[self.vs, self.trtype]);
        put(b, 32, &self.cs.to_le_bytes());
    }
    /// The status recorded in the entry.
    pub fn status(&self) -> Status {
        Status::from_bits(self.status_field >> 1)
    }
}

/// SMART / Health Information (§5.1.12.1.3, 512 bytes). Counters are 128-bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SmartLog {
    /// Byte 0 Critical Warning.
    pub critical_warning: u8,
    /// Bytes 2:1 Composite Temperature, kelvin.
    pub composite_temperature: u16,
    /// Byte 3 Available Spare, percent.
    pub available_spare: u8,
    /// Byte 4 Available Spare Threshold, percent.
    pub available_spare_threshold: u8,
    /// Byte 5 Percentage Used.
    pub percentage_used: u8,
    /// Bytes 47:32 Data Units Read, thousands of 512-byte units (rounded up).
    pub data_units_read: u128,
    /// Bytes 63:48 Data Units Written.
    pub data_units_written: u128,
    /// Bytes 79:64 Host Read Commands.
    pub host_read_commands: u128,
    /// Bytes 95:80 Host Write Commands.
    pub host_write_commands: u128,
    /// Bytes 111:96 Controller Busy Time, minutes.
    pub controller_busy_time: u128,
    /// Bytes 127:112 Power Cycles.
    pub power_cycles: u128,
    /// Bytes 143:128 Power On Hours.
    pub power_on_hours: u128,
    /// Bytes 159:144 Unsafe Shutdowns.
    pub unsafe_shutdowns: u128,
    /// Bytes 175:160 Media and Data Integrity Errors.
    pub media_errors: u128,
    /// Bytes 191:176 Number of Error Information Log Entries.
    pub num_error_log_entries: u128,
}

impl SmartLog {
    /// Size of the page.
    pub const LEN: usize = 512;
    /// Parses the page.
    ///
    /// # Errors
    /// [`ShortPage`] below 512 bytes.
    pub fn parse(b: &[u8]) -> Result<Self, ShortPage> {
        if b.len() < Self::LEN {
            return Err(ShortPage {
                what: "SMART / Health log",
                got: b.len(),
                need: Self::LEN,
            });
        }
        Ok(Self {
            critical_warning: u8_at(b, 0),
            composite_temperature: u16_at(b, 1),
            available_spare: u8_at(b, 3),
            available_spare_threshold: u8_at(b, 4),
            percentage_used: u8_at(b, 5),
            data_units_read: u128_at(b, 32),
            data_units_written: u128_at(b, 48),
            host_read_commands: u128_at(b, 64),
            host_write_commands: u128_at(b, 80),
            controller_busy_time: u128_at(b, 96),
            power_cycles: u128_at(b, 112),
            power_on_hours: u128_at(b, 128),
            unsafe_shutdowns: u128_at(b, 144),
            media_errors: u128_at(b, 160),
            num_error_log_entries: u128_at(b, 176),
        })
    }
    /// Encodes into a page of at least 512 bytes.
    pub fn encode(&self, b: &mut [u8]) {
        put(b, 0, &[self.critical_warning]);
        put(b, 1, &self.composite_temperature.to_le_bytes());
        put(
            b,
            3,
            &[
                self.available_spare,
                self.available_spare_threshold,
                self.percentage_used,
            ],
        );
        put(b, 32, &self.data_units_read.to_le_bytes());
        put(b, 48, &self.data_units_written.to_le_bytes());
        put(b, 64, &self.host_read_commands.to_le_bytes());
        put(b, 80, &self.host_write_commands.to_le_bytes());
        put(b, 96, &self.controller_busy_time.to_le_bytes());
        put(b, 112, &self.power_cycles.to_le_bytes());
        put(b, 128, &self.power_on_hours.to_le_bytes());
        put(b, 144, &self.unsafe_shutdowns.to_le_bytes());
        put(b, 160, &self.media_errors.to_le_bytes());
        put(b, 176, &self.num_error_log_entries.to_le_bytes());
    }
}

/// Firmware Slot Information (§5.1.12.1.4, 512 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FirmwareSlotLog {
    /// Byte 0 AFI: bits 2:0 the active slot, bits 6:4 the slot activated at the next reset.
    pub afi: u8,
    /// Bytes 63:8 FRS1..FRS7, the revision in each slot (blank if empty).
    pub frs: [AsciiField<8>; 7],
}

impl FirmwareSlotLog {
    /// Size of the page.
    pub const LEN: usize = 512;
    /// Parses the page.
    ///
    /// # Errors
    /// [`ShortPage`] below 512 bytes.
    pub fn parse(b: &[u8]) -> Result<Self, ShortPage> {
        if b.len() < Self::LEN {
            return Err(ShortPage {
                what: "Firmware Slot log",
                got: b.len(),
                need: Self::LEN,
            });
        }
        let mut frs = [AsciiField([0; 8]); 7];
        for (i, f) in frs.iter_mut().enumerate() {
            *f = AsciiField(array_at(b, 8 + 8 * i));
        }
        Ok(Self {
            afi: u8_at(b, 0),
            frs,
        })
    }
    /// Encodes into a page of at least 512 bytes.
    pub fn encode(&self, b: &mut [u8]) {
        put(b, 0, &[self.afi]);
        for (i, f) in self.frs.iter().enumerate() {
            put(b, 8 + 8 * i, &f.0);
        }
    }
    /// The active slot (1..=7; 0 is invalid).
    pub fn active_slot(&self) -> u8 {
        self.afi & 7
    }
}

/// Asynchronous event types (§5.1.2.1, completion DW0 bits 2:0).
pub mod event_type {
    /// 0h Error status.
    pub const ERROR: u8 = 0;
    /// 1h SMART / health status.
    pub const SMART: u8 = 1;
    /// 2h Notice.
    pub const NOTICE: u8 = 2;
    /// 6h I/O command set specific.
    pub const IO_COMMAND_SET: u8 = 6;
    /// 7h Vendor specific.
    pub const VENDOR: u8 = 7;
}

/// Asynchronous event information for the error type (§5.1.2.1, Figure "Error Status").
pub mod error_event {
    /// 00h Write to Invalid Doorbell Register.
    pub const INVALID_DOORBELL_REGISTER: u8 = 0x00;
    /// 01h Invalid Doorbell Write Value.
    pub const INVALID_DOORBELL_VALUE: u8 = 0x01;
    /// 02h Diagnostic Failure.
    pub const DIAGNOSTIC_FAILURE: u8 = 0x02;
    /// 03h Persistent Internal Error.
    pub const PERSISTENT_INTERNAL_ERROR: u8 = 0x03;
    /// 04h Transient Internal Error.
    pub const TRANSIENT_INTERNAL_ERROR: u8 = 0x04;
    /// 05h Firmware Image Load Error.
    pub const FIRMWARE_IMAGE_LOAD_ERROR: u8 = 0x05;
}

/// The DW0 of an Asynchronous Event Request completion (§5.1.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncEvent {
    /// Bits 2:0 Asynchronous Event Type.
    pub event_type: u8,
    /// Bits 15:8 Asynchronous Event Information.
    pub info: u8,
    /// Bits 23:16 Log Page Identifier to read to clear the event.
    pub log_page: u8,
}

impl AsyncEvent {
    /// Decodes DW0.
    pub const fn from_dw0(dw0: u32) -> Self {
        Self {
            event_type: (dw0 & 7) as u8,
            info: (dw0 >> 8) as u8,
            log_page: (dw0 >> 16) as u8,
        }
    }
    /// Encodes DW0.
    pub const fn to_dw0(self) -> u32 {
        (self.event_type as u32 & 7) | (self.info as u32) << 8 | (self.log_page as u32) << 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn smart_offsets() {
        let s = SmartLog {
            composite_temperature: 310,
            host_write_commands: 7,
            data_units_read: 1 << 70,
            ..Default::default()
        };
        let mut b = [0u8; 512];
        s.encode(&mut b);
        assert_eq!(&b[1..3], &310u16.to_le_bytes());
        assert_eq!(b[80], 7);
        assert_eq!(SmartLog::parse(&b).unwrap(), s);
        assert!(SmartLog::parse(&b[..511]).is_err());
    }
    #[test]
    fn error_entry_and_event() {
        let e = ErrorLogEntry {
            error_count: 3,
            sqid: 1,
            cid: 9,
            status_field: (Status::generic(0x80, true).bits() << 1) | 1,
            lba: 77,
            nsid: 1,
            ..Default::default()
        };
        let mut b = [0u8; 64];
        e.encode(&mut b);
        let p = ErrorLogEntry::parse(&b);
        assert_eq!(p, e);
        assert_eq!(p.status().sc(), 0x80);
        let ev = AsyncEvent {
            event_type: 0,
            info: 1,
            log_page: 1,
        };
        assert_eq!(AsyncEvent::from_dw0(ev.to_dw0()), ev);
        assert_eq!(ev.to_dw0(), 0x0001_0100);
    }
    #[test]
    fn fw_slot() {
        let mut f = FirmwareSlotLog {
            afi: 1,
            ..Default::default()
        };
        f.frs[0] = AsciiField::from_str_padded("1.0");
        let mut b = [0u8; 512];
        f.encode(&mut b);
        assert_eq!(&b[8..11], b"1.0");
        let p = FirmwareSlotLog::parse(&b).unwrap();
        assert_eq!(p.active_slot(), 1);
        assert_eq!(p.frs[0].as_str(), "1.0");
    }
}

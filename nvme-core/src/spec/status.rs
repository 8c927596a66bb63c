//! Completion status (NVMe Base §4.2.3 "Status Field Definition"): status code type, status
//! code, Command Retry Delay, More and Do Not Retry. Open types: every value decodes.

use core::fmt;

/// SCT, Status Code Type (§4.2.3, Figure "Status Code Type Values").
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct StatusCodeType(pub u8);

impl StatusCodeType {
    /// 0h: Generic Command Status.
    pub const GENERIC: Self = Self(0);
    /// 1h: Command Specific Status.
    pub const COMMAND_SPECIFIC: Self = Self(1);
    /// 2h: Media and Data Integrity Errors.
    pub const MEDIA: Self = Self(2);
    /// 3h: Path Related Status.
    pub const PATH: Self = Self(3);
    /// 7h: Vendor Specific.
    pub const VENDOR: Self = Self(7);

    /// The spec's name.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "Generic Command Status",
            1 => "Command Specific Status",
            2 => "Media and Data Integrity Error",
            3 => "Path Related Status",
            7 => "Vendor Specific",
            _ => "Reserved",
        }
    }
}

impl fmt::Debug for StatusCodeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}h ({})", self.0, self.name())
    }
}

/// A status: the 15 bits 31:17 of completion dword 3 (§4.2.3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(u16);

/// Only the 15 bits of the field: a derived impl would also produce bit 15, a value no
/// completion can carry (it would not survive `Completion::new` and `status()`).
#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Status {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self::from_bits(u16::arbitrary(u)?))
    }
    fn size_hint(depth: usize) -> (usize, Option<usize>) {
        <u16 as arbitrary::Arbitrary>::size_hint(depth)
    }
}

/// Named generic (SCT 0h) status codes (§4.2.3.1).
pub mod generic {
    /// 00h Successful Completion.
    pub const SUCCESS: u8 = 0x00;
    /// 01h Invalid Command Opcode.
    pub const INVALID_OPCODE: u8 = 0x01;
    /// 02h Invalid Field in Command.
    pub const INVALID_FIELD: u8 = 0x02;
    /// 03h Command ID Conflict.
    pub const CID_CONFLICT: u8 = 0x03;
    /// 04h Data Transfer Error.
    pub const DATA_TRANSFER_ERROR: u8 = 0x04;
    /// 05h Commands Aborted due to Power Loss Notification.
    pub const ABORTED_POWER_LOSS: u8 = 0x05;
    /// 06h Internal Error.
    pub const INTERNAL_ERROR: u8 = 0x06;
    /// 07h Command Abort Requested.
    pub const ABORT_REQUESTED: u8 = 0x07;
    /// 08h Command Aborted due to SQ Deletion.
    pub const ABORTED_SQ_DELETION: u8 = 0x08;
    /// 09h Command Aborted due to Failed Fused Command.
    pub const ABORTED_FAILED_FUSED: u8 = 0x09;
    /// 0Ah Command Aborted due to Missing Fused Command.
    pub const ABORTED_MISSING_FUSED: u8 = 0x0A;
    /// 0Bh Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: u8 = 0x0B;
    /// 0Ch Command Sequence Error.
    pub const COMMAND_SEQUENCE_ERROR: u8 = 0x0C;
    /// 0Dh Invalid SGL Segment Descriptor.
    pub const INVALID_SGL_DESCRIPTOR: u8 = 0x0D;
    /// 0Eh Invalid Number of SGL Descriptors.
    pub const INVALID_SGL_DESCRIPTOR_COUNT: u8 = 0x0E;
    /// 0Fh Data SGL Length Invalid.
    pub const DATA_SGL_LENGTH_INVALID: u8 = 0x0F;
    /// 11h SGL Descriptor Type Invalid.
    pub const SGL_DESCRIPTOR_TYPE_INVALID: u8 = 0x11;
    /// 13h PRP Offset Invalid.
    pub const PRP_OFFSET_INVALID: u8 = 0x13;
    /// 15h Operation Denied.
    pub const OPERATION_DENIED: u8 = 0x15;
    /// 16h SGL Offset Invalid.
    pub const SGL_OFFSET_INVALID: u8 = 0x16;
    /// 20h Namespace is Write Protected: a write-type command to a write protected namespace
    /// (NVMe Base 2.1 chapter 8, "Namespace Write Protection").
    pub const NAMESPACE_WRITE_PROTECTED: u8 = 0x20;
    /// 80h LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
    /// 81h Capacity Exceeded.
    pub const CAPACITY_EXCEEDED: u8 = 0x81;
    /// 82h Namespace Not Ready.
    pub const NAMESPACE_NOT_READY: u8 = 0x82;
    /// 83h Reservation Conflict.
    pub const RESERVATION_CONFLICT: u8 = 0x83;
    /// 84h Format In Progress.
    pub const FORMAT_IN_PROGRESS: u8 = 0x84;
}

/// Named command specific (SCT 1h) status codes (§4.2.3.2).
pub mod specific {
    /// 00h Completion Queue Invalid.
    pub const COMPLETION_QUEUE_INVALID: u8 = 0x00;
    /// 01h Invalid Queue Identifier.
    pub const INVALID_QUEUE_IDENTIFIER: u8 = 0x01;
    /// 02h Invalid Queue Size.
    pub const INVALID_QUEUE_SIZE: u8 = 0x02;
    /// 03h Abort Command Limit Exceeded.
    pub const ABORT_LIMIT_EXCEEDED: u8 = 0x03;
    /// 05h Asynchronous Event Request Limit Exceeded.
    pub const AER_LIMIT_EXCEEDED: u8 = 0x05;
    /// 06h Invalid Firmware Slot.
    pub const INVALID_FIRMWARE_SLOT: u8 = 0x06;
    /// 07h Invalid Firmware Image.
    pub const INVALID_FIRMWARE_IMAGE: u8 = 0x07;
    /// 08h Invalid Interrupt Vector.
    pub const INVALID_INTERRUPT_VECTOR: u8 = 0x08;
    /// 09h Invalid Log Page.
    pub const INVALID_LOG_PAGE: u8 = 0x09;
    /// 0Ah Invalid Format.
    pub const INVALID_FORMAT: u8 = 0x0A;
    /// 0Ch Invalid Queue Deletion.
    pub const INVALID_QUEUE_DELETION: u8 = 0x0C;
    /// 0Dh Feature Identifier Not Saveable.
    pub const FEATURE_NOT_SAVEABLE: u8 = 0x0D;
    /// 0Eh Feature Not Changeable.
    pub const FEATURE_NOT_CHANGEABLE: u8 = 0x0E;
    /// 0Fh Feature Not Namespace Specific.
    pub const FEATURE_NOT_NAMESPACE_SPECIFIC: u8 = 0x0F;
    /// 80h Conflicting Attributes (NVM command set).
    pub const CONFLICTING_ATTRIBUTES: u8 = 0x80;
    /// 81h Invalid Protection Information (NVM command set).
    pub const INVALID_PROTECTION_INFO: u8 = 0x81;
}

/// Named media and data integrity (SCT 2h) status codes (§4.2.3.3).
pub mod media {
    /// 80h Write Fault.
    pub const WRITE_FAULT: u8 = 0x80;
    /// 81h Unrecovered Read Error.
    pub const UNRECOVERED_READ_ERROR: u8 = 0x81;
    /// 85h Compare Failure.
    pub const COMPARE_FAILURE: u8 = 0x85;
    /// 86h Access Denied.
    pub const ACCESS_DENIED: u8 = 0x86;
    /// 87h Deallocated or Unwritten Logical Block.
    pub const DEALLOCATED_OR_UNWRITTEN: u8 = 0x87;
}

impl Status {
    /// Successful completion.
    pub const SUCCESS: Status = Status(0);

    /// From the 15 status bits (completion dword 3 bits 31:17 shifted down to 14:0).
    pub const fn from_bits(bits: u16) -> Self {
        Status(bits & 0x7FFF)
    }
    /// The 15 status bits.
    pub const fn bits(self) -> u16 {
        self.0
    }
    /// Builds a status from its type and code, CRD 0, M 0, with DNR as given.
    pub const fn new(sct: StatusCodeType, sc: u8, dnr: bool) -> Self {
        Status((sc as u16) | ((sct.0 as u16 & 7) << 8) | ((dnr as u16) << 14))
    }
    /// A generic status (SCT 0h) with the given code.
    pub const fn generic(sc: u8, dnr: bool) -> Self {
        Self::new(StatusCodeType::GENERIC, sc, dnr)
    }
    /// A command specific status (SCT 1h).
    pub const fn specific(sc: u8, dnr: bool) -> Self {
        Self::new(StatusCodeType::COMMAND_SPECIFIC, sc, dnr)
    }
    /// A media status (SCT 2h).
    pub const fn media(sc: u8, dnr: bool) -> Self {
        Self::new(StatusCodeType::MEDIA, sc, dnr)
    }
    /// SC, Status Code (bits 7:0 of the field).
    pub const fn sc(self) -> u8 {
        self.0 as u8
    }
    /// SCT, Status Code Type (bits 10:8).
    pub const fn sct(self) -> StatusCodeType {
        StatusCodeType(((self.0 >> 8) & 7) as u8)
    }
    /// CRD, Command Retry Delay (bits 12:11).
    pub const fn crd(self) -> u8 {
        ((self.0 >> 11) & 3) as u8
    }
    /// M, More (bit 13): more status in the Error Information log.
    pub const fn more(self) -> bool {
        self.0 & (1 << 13) != 0
    }
    /// DNR, Do Not Retry (bit 14).
    pub const fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// True for Successful Completion (SCT 0h, SC 00h), whatever CRD, M and DNR say.
    pub const fn is_success(self) -> bool {
        self.sct().0 == 0 && self.sc() == 0
    }
    /// True if the type and code equal `(sct, sc)`, ignoring CRD, M and DNR.
    pub const fn is(self, sct: StatusCodeType, sc: u8) -> bool {
        self.sct().0 == sct.0 && self.sc() == sc
    }
    /// The spec's name of the status code, if known.
    pub const fn name(self) -> Option<&'static str> {
        Some(match (self.sct().0, self.sc()) {
            (0, 0x00) => "Successful Completion",
            (0, 0x01) => "Invalid Command Opcode",
            (0, 0x02) => "Invalid Field in Command",
            (0, 0x03) => "Command ID Conflict",
            (0, 0x04) => "Data Transfer Error",
            (0, 0x05) => "Commands Aborted due to Power Loss Notification",
            (0, 0x06) => "Internal Error",
            (0, 0x07) => "Command Abort Requested",
            (0, 0x08) => "Command Aborted due to SQ Deletion",
            (0, 0x09) => "Command Aborted due to Failed Fused Command",
            (0, 0x0A) => "Command Aborted due to Missing Fused Command",
            (0, 0x0B) => "Invalid Namespace or Format",
            (0, 0x0C) => "Command Sequence Error",
            (0, 0x0D) => "Invalid SGL Segment Descriptor",
            (0, 0x0E) => "Invalid Number of SGL Descriptors",
            (0, 0x0F) => "Data SGL Length Invalid",
            (0, 0x11) => "SGL Descriptor Type Invalid",
            (0, 0x13) => "PRP Offset Invalid",
            (0, 0x15) => "Operation Denied",
            (0, 0x80) => "LBA Out of Range",
            (0, 0x81) => "Capacity Exceeded",
            (0, 0x82) => "Namespace Not Ready",
            (0, 0x83) => "Reservation Conflict",
            (0, 0x84) => "Format In Progress",
            (0, 0x20) => "Namespace is Write Protected",
            (1, 0x00) => "Completion Queue Invalid",
            (1, 0x01) => "Invalid Queue Identifier",
            (1, 0x02) => "Invalid Queue Size",
            (1, 0x03) => "Abort Command Limit Exceeded",
            (1, 0x05) => "Asynchronous Event Request Limit Exceeded",
            (1, 0x06) => "Invalid Firmware Slot",
            (1, 0x07) => "Invalid Firmware Image",
            (1, 0x08) => "Invalid Interrupt Vector",
            (1, 0x09) => "Invalid Log Page",
            (1, 0x0A) => "Invalid Format",
            (1, 0x0C) => "Invalid Queue Deletion",
            (1, 0x0D) => "Feature Identifier Not Saveable",
            (1, 0x0E) => "Feature Not Changeable",
            (1, 0x0F) => "Feature Not Namespace Specific",
            (1, 0x80) => "Conflicting Attributes",
            (1, 0x81) => "Invalid Protection Information",
            (2, 0x80) => "Write Fault",
            (2, 0x81) => "Unrecovered Read Error",
            (2, 0x85) => "Compare Failure",
            (2, 0x86) => "Access Denied",
            (2, 0x87) => "Deallocated or Unwritten Logical Block",
            _ => return None,
        })
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SCT {:x}h SC {:02x}h", self.sct().0, self.sc())?;
        if let Some(n) = self.name() {
            write!(f, " ({n})")?;
        }
        if self.dnr() {
            f.write_str(" DNR")?;
        }
        if self.more() {
            f.write_str(" M")?;
        }
        if self.crd() != 0 {
            write!(f, " CRD{}", self.crd())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `fuzz/` (target `completion`): the derived `Arbitrary` produced statuses with
    /// bit 15 set. Run with `--features arbitrary`.
    #[cfg(feature = "arbitrary")]
    #[test]
    fn arbitrary_status_has_15_bits() {
        use arbitrary::{Arbitrary, Unstructured};
        let s = Status::arbitrary(&mut Unstructured::new(&[0xFF, 0xFF])).unwrap();
        assert_eq!(s.bits(), 0x7FFF);
        let c = crate::spec::Completion::new(0, 0, 0, 0, 0, true, s);
        assert_eq!(c.status(), s);
    }
    #[test]
    fn fields() {
        let s = Status::from_bits(0x7FFF);
        assert_eq!(s.sc(), 0xFF);
        assert_eq!(s.sct().0, 7);
        assert_eq!(s.crd(), 3);
        assert!(s.more() && s.dnr());
        let s = Status::specific(specific::INVALID_QUEUE_DELETION, true);
        assert!(s.is(StatusCodeType::COMMAND_SPECIFIC, 0x0C));
        assert!(s.dnr());
        assert_eq!(s.name(), Some("Invalid Queue Deletion"));
        assert!(Status::SUCCESS.is_success());
        for b in 0..=0x7FFFu16 {
            let s = Status::from_bits(b);
            assert_eq!(s.bits(), b);
            let _ = s.name();
        }
    }
}

//! Scatter Gather Lists (NVMe Base 2.1 §4.3.2 "Scatter Gather List (SGL)"), the PSDT field
//! of CDW0 (§4.1, Figure "Command Dword 0") and the Identify Controller SGLS field
//! (§5.1.13.2.1, bytes 539:536).
//!
//! An SGL descriptor is 16 bytes: Address (bytes 7:0), Length (bytes 11:8), reserved bytes
//! 14:12, and the SGL Identifier in byte 15 (Descriptor Type in bits 7:4, Descriptor Sub Type
//! in bits 3:0). In an NVMe over PCIe command with PSDT = 01b or 10b, the first descriptor
//! (SGL1) occupies the Data Pointer, CDW9:6; if it is a Segment or Last Segment descriptor it
//! points to an SGL segment: an array of descriptors in host memory, of which only the last
//! may be a (Last) Segment descriptor.

use super::cmd::Command;

/// Size of one SGL descriptor.
pub const DESCRIPTOR_LEN: usize = 16;

/// PSDT values, CDW0 bits 15:14 (§4.1).
pub mod psdt {
    /// 00b: PRPs are used for the data transfer.
    pub const PRP: u8 = 0b00;
    /// 01b: SGLs; MPTR holds the address of a contiguous metadata buffer.
    pub const SGL_MPTR_BUFFER: u8 = 0b01;
    /// 10b: SGLs; MPTR holds the address of an SGL segment for the metadata.
    pub const SGL_MPTR_SGL: u8 = 0b10;
}

/// SGL Descriptor Types, SGL Identifier bits 7:4 (§4.3.2, Figure "SGL Descriptor Type").
pub mod desc_type {
    /// 0h SGL Data Block.
    pub const DATA_BLOCK: u8 = 0x0;
    /// 1h SGL Bit Bucket.
    pub const BIT_BUCKET: u8 = 0x1;
    /// 2h SGL Segment.
    pub const SEGMENT: u8 = 0x2;
    /// 3h SGL Last Segment.
    pub const LAST_SEGMENT: u8 = 0x3;
    /// 4h Keyed SGL Data Block.
    pub const KEYED_DATA_BLOCK: u8 = 0x4;
    /// 5h Transport SGL Data Block.
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5;
    /// Fh Vendor specific.
    pub const VENDOR_SPECIFIC: u8 = 0xF;
}

/// SGL Descriptor Sub Types, SGL Identifier bits 3:0 (§4.3.2, Figure "SGL Descriptor Sub
/// Type").
pub mod sub_type {
    /// 0h Address: the Address field is a memory address.
    pub const ADDRESS: u8 = 0x0;
    /// 1h Offset: the Address field is an offset (SGLS bit 20).
    pub const OFFSET: u8 = 0x1;
}

/// One SGL descriptor (§4.3.2, Figure "Generic SGL Descriptor Format").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SglDescriptor {
    /// Address, bytes 7:0 (a bus address for the Address sub type).
    pub address: u64,
    /// Length in bytes, bytes 11:8.
    pub length: u32,
    /// SGL Identifier, byte 15: type in bits 7:4, sub type in bits 3:0.
    pub id: u8,
}

impl SglDescriptor {
    /// A descriptor of `kind` (a [`desc_type`] value) and `sub` ([`sub_type`]).
    pub const fn new(kind: u8, sub: u8, address: u64, length: u32) -> Self {
        Self {
            address,
            length,
            id: (kind & 0xF) << 4 | (sub & 0xF),
        }
    }
    /// An SGL Data Block descriptor (§4.3.2.1): `length` bytes of data at `address`.
    pub const fn data_block(address: u64, length: u32) -> Self {
        Self::new(desc_type::DATA_BLOCK, sub_type::ADDRESS, address, length)
    }
    /// An SGL Bit Bucket descriptor (§4.3.2.2): `length` bytes of controller-to-host data to
    /// discard. The Address field is reserved.
    pub const fn bit_bucket(length: u32) -> Self {
        Self::new(desc_type::BIT_BUCKET, sub_type::ADDRESS, 0, length)
    }
    /// An SGL Segment descriptor (§4.3.2.3): the next segment, `length` bytes of descriptors
    /// at `address`, which is not the last.
    pub const fn segment(address: u64, length: u32) -> Self {
        Self::new(desc_type::SEGMENT, sub_type::ADDRESS, address, length)
    }
    /// An SGL Last Segment descriptor (§4.3.2.4): the last segment, which contains no
    /// (Last) Segment descriptor.
    pub const fn last_segment(address: u64, length: u32) -> Self {
        Self::new(desc_type::LAST_SEGMENT, sub_type::ADDRESS, address, length)
    }
    /// Descriptor Type, SGL Identifier bits 7:4.
    pub const fn kind(&self) -> u8 {
        self.id >> 4
    }
    /// Descriptor Sub Type, SGL Identifier bits 3:0.
    pub const fn sub(&self) -> u8 {
        self.id & 0xF
    }
    /// The wire form (little-endian).
    pub fn to_le_bytes(&self) -> [u8; DESCRIPTOR_LEN] {
        let mut b = [0u8; DESCRIPTOR_LEN];
        b[0..8].copy_from_slice(&self.address.to_le_bytes());
        b[8..12].copy_from_slice(&self.length.to_le_bytes());
        b[15] = self.id;
        b
    }
    /// Decodes the wire form. Reserved bytes 14:12 are ignored.
    pub fn from_le_bytes(b: &[u8; DESCRIPTOR_LEN]) -> Self {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[0..8]);
        Self {
            address: u64::from_le_bytes(a),
            length: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            id: b[15],
        }
    }
    /// The descriptor as the two qwords of the Data Pointer (CDW7:6 and CDW9:8).
    pub const fn to_dptr(&self) -> (u64, u64) {
        (self.address, self.length as u64 | (self.id as u64) << 56)
    }
    /// The descriptor held by a Data Pointer (CDW7:6, CDW9:8).
    pub const fn from_dptr(lo: u64, hi: u64) -> Self {
        Self {
            address: lo,
            length: hi as u32,
            id: (hi >> 56) as u8,
        }
    }
}

/// Places `sgl1` in the command's Data Pointer and sets PSDT to 01b (SGL, no metadata SGL);
/// MPTR is left as it is (the core clears it).
pub fn set_sgl1(cmd: &mut Command, sgl1: SglDescriptor) {
    let (lo, hi) = sgl1.to_dptr();
    cmd.set_psdt(psdt::SGL_MPTR_BUFFER).set_prps(lo, hi);
}

/// SGL1 of a command whose PSDT selects SGLs.
pub const fn sgl1(cmd: &Command) -> SglDescriptor {
    SglDescriptor::from_dptr(cmd.prp1(), cmd.prp2())
}

/// SGL Support, SGLS bits 1:0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SglSupport {
    /// 00b: SGLs are not supported for the NVM Command Set.
    None,
    /// 01b: supported, no alignment or granularity requirement for Data Blocks.
    Byte,
    /// 10b: supported, Dword alignment and granularity: the Address and Length of every Data
    /// Block descriptor have bits 1:0 cleared.
    Dword,
    /// 11b: reserved (treated as unsupported).
    Reserved,
}

/// The Identify Controller SGLS field (§5.1.13.2.1, Figure "Identify Controller Data
/// Structure", bytes 539:536).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sgls(pub u32);

impl Sgls {
    /// Bits 1:0, SGL Support.
    pub const fn support(self) -> SglSupport {
        match self.0 & 3 {
            0 => SglSupport::None,
            1 => SglSupport::Byte,
            2 => SglSupport::Dword,
            _ => SglSupport::Reserved,
        }
    }
    /// True if SGLs are supported for the NVM Command Set (bits 1:0 are 01b or 10b).
    pub const fn supported(self) -> bool {
        matches!(self.support(), SglSupport::Byte | SglSupport::Dword)
    }
    /// Bit 2: Keyed SGL Data Block descriptors.
    pub const fn keyed(self) -> bool {
        self.0 & (1 << 2) != 0
    }
    /// Bit 16: SGL Bit Bucket descriptors.
    pub const fn bit_bucket(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Bit 17: a byte-aligned contiguous buffer in MPTR (PSDT 01b).
    pub const fn mptr_byte_aligned(self) -> bool {
        self.0 & (1 << 17) != 0
    }
    /// Bit 18: commands whose data or metadata SGL is longer than the transfer are
    /// accepted (otherwise such a command fails with Data SGL Length Invalid).
    pub const fn excess_length(self) -> bool {
        self.0 & (1 << 18) != 0
    }
    /// Bit 19: MPTR may hold a single SGL descriptor (PSDT 10b).
    pub const fn mptr_sgl(self) -> bool {
        self.0 & (1 << 19) != 0
    }
    /// Bit 20: the Address field of Data Block, Segment and Last Segment descriptors may be
    /// an offset (sub type 1h).
    pub const fn offset(self) -> bool {
        self.0 & (1 << 20) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::NvmOpcode;

    #[test]
    fn descriptor_wire_form() {
        let d = SglDescriptor::data_block(0x1122_3344_5566_7788, 0x1000);
        let b = d.to_le_bytes();
        assert_eq!(&b[0..8], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[8..12], &0x1000u32.to_le_bytes());
        assert_eq!(b[15], 0x00);
        assert_eq!(SglDescriptor::from_le_bytes(&b), d);
        let s = SglDescriptor::last_segment(0x2000, 32);
        assert_eq!(s.to_le_bytes()[15], 0x30);
        assert_eq!((s.kind(), s.sub()), (desc_type::LAST_SEGMENT, 0));
        assert_eq!(SglDescriptor::bit_bucket(512).to_le_bytes()[15], 0x10);
        assert_eq!(SglDescriptor::segment(0, 16).id, 0x20);
    }

    /// SGL1 lands in bytes 39:24 of the entry (CDW6..CDW9) with its identifier in byte 39,
    /// and PSDT (CDW0 bits 15:14) reads 01b.
    #[test]
    fn sgl1_in_the_command() {
        let mut c = Command::rw(NvmOpcode::READ, 1, 0, 7, false);
        let d = SglDescriptor::new(desc_type::DATA_BLOCK, 0, 0xABCD_0004, 4096);
        set_sgl1(&mut c, d);
        assert_eq!(c.psdt(), 1);
        let b = c.to_le_bytes();
        assert_eq!(&b[24..40], &d.to_le_bytes());
        assert_eq!(sgl1(&c), d);
    }

    #[test]
    fn sgls_bits() {
        assert_eq!(Sgls(0).support(), SglSupport::None);
        assert!(!Sgls(3).supported());
        assert_eq!(Sgls(2).support(), SglSupport::Dword);
        let s = Sgls(1 | 1 << 16 | 1 << 18 | 1 << 20);
        assert!(s.supported() && s.bit_bucket() && s.excess_length() && s.offset());
        assert!(!s.keyed() && !s.mptr_sgl() && !s.mptr_byte_aligned());
    }
}

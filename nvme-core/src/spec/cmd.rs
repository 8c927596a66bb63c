//! The 64-byte submission queue entry (NVMe Base §4.1 "Submission Queue Entry") and the
//! 16-byte completion queue entry (§4.2.1 "Completion Queue Entry"), with constructors for
//! every command the core issues.
//!
//! Both are arrays of dwords holding native values; [`Command::to_le_bytes`] and
//! [`Completion::from_le_bytes`] are the only places the wire byte order appears.

use super::opcode::{AdminOpcode, NvmOpcode};
use super::status::Status;

/// A submission queue entry (§4.1, Figure "Common Command Format").
#[derive(Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(C)]
pub struct Command {
    cdw: [u32; 16],
}

const _: () = assert!(core::mem::size_of::<Command>() == 64);

/// FUSE values, CDW0 bits 9:8 (§4.1).
pub mod fuse {
    /// Normal operation.
    pub const NORMAL: u8 = 0b00;
    /// First command of a fused operation.
    pub const FIRST: u8 = 0b01;
    /// Second command of a fused operation.
    pub const SECOND: u8 = 0b10;
}

impl core::fmt::Debug for Command {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Command")
            .field("opcode", &format_args!("{:#04x}", self.opcode()))
            .field("cid", &self.cid())
            .field("nsid", &self.nsid())
            .field("prp1", &format_args!("{:#x}", self.prp1()))
            .field("prp2", &format_args!("{:#x}", self.prp2()))
            .field("cdw10", &format_args!("{:#x}", self.cdw10()))
            .field("cdw11", &format_args!("{:#x}", self.cdw11()))
            .field("cdw12", &format_args!("{:#x}", self.cdw12()))
            .finish()
    }
}

impl Command {
    /// An entry with `opcode`, everything else zero.
    pub const fn new(opcode: u8) -> Self {
        let mut cdw = [0u32; 16];
        cdw[0] = opcode as u32;
        Self { cdw }
    }
    /// From the 16 dwords (native values).
    pub const fn from_dwords(cdw: [u32; 16]) -> Self {
        Self { cdw }
    }
    /// The 16 dwords.
    pub const fn dwords(&self) -> [u32; 16] {
        self.cdw
    }
    /// The 16 dwords, borrowed (no copy).
    #[inline]
    pub const fn dwords_ref(&self) -> &[u32; 16] {
        &self.cdw
    }
    /// Decodes the wire form (little-endian dwords).
    pub fn from_le_bytes(b: &[u8; 64]) -> Self {
        let mut cdw = [0u32; 16];
        for (i, d) in cdw.iter_mut().enumerate() {
            *d = u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        }
        Self { cdw }
    }
    /// Encodes the wire form.
    pub fn to_le_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        for (i, d) in self.cdw.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&d.to_le_bytes());
        }
        b
    }

    /// OPC, CDW0 bits 7:0.
    pub const fn opcode(&self) -> u8 {
        self.cdw[0] as u8
    }
    /// FUSE, CDW0 bits 9:8.
    pub const fn fuse(&self) -> u8 {
        ((self.cdw[0] >> 8) & 3) as u8
    }
    /// PSDT, CDW0 bits 15:14: 00b PRPs, 01b/10b SGLs.
    pub const fn psdt(&self) -> u8 {
        ((self.cdw[0] >> 14) & 3) as u8
    }
    /// CID, CDW0 bits 31:16.
    pub const fn cid(&self) -> u16 {
        (self.cdw[0] >> 16) as u16
    }
    /// NSID, CDW1.
    pub const fn nsid(&self) -> u32 {
        self.cdw[1]
    }
    /// CDW2.
    pub const fn cdw2(&self) -> u32 {
        self.cdw[2]
    }
    /// CDW3.
    pub const fn cdw3(&self) -> u32 {
        self.cdw[3]
    }
    /// MPTR, CDW5:4.
    pub const fn mptr(&self) -> u64 {
        self.cdw[4] as u64 | (self.cdw[5] as u64) << 32
    }
    /// PRP1, CDW7:6 (the first half of DPTR).
    pub const fn prp1(&self) -> u64 {
        self.cdw[6] as u64 | (self.cdw[7] as u64) << 32
    }
    /// PRP2, CDW9:8.
    pub const fn prp2(&self) -> u64 {
        self.cdw[8] as u64 | (self.cdw[9] as u64) << 32
    }
    /// CDW10.
    pub const fn cdw10(&self) -> u32 {
        self.cdw[10]
    }
    /// CDW11.
    pub const fn cdw11(&self) -> u32 {
        self.cdw[11]
    }
    /// CDW12.
    pub const fn cdw12(&self) -> u32 {
        self.cdw[12]
    }
    /// CDW13.
    pub const fn cdw13(&self) -> u32 {
        self.cdw[13]
    }
    /// CDW14.
    pub const fn cdw14(&self) -> u32 {
        self.cdw[14]
    }
    /// CDW15.
    pub const fn cdw15(&self) -> u32 {
        self.cdw[15]
    }
    /// Dword `i` (0..16); `None` beyond.
    pub fn cdw(&self, i: usize) -> Option<u32> {
        self.cdw.get(i).copied()
    }

    /// Sets the CID.
    pub fn set_cid(&mut self, cid: u16) -> &mut Self {
        self.cdw[0] = (self.cdw[0] & 0xFFFF) | (cid as u32) << 16;
        self
    }
    /// Sets FUSE.
    pub fn set_fuse(&mut self, fuse: u8) -> &mut Self {
        self.cdw[0] = (self.cdw[0] & !(3 << 8)) | ((fuse as u32 & 3) << 8);
        self
    }
    /// Sets PSDT.
    pub fn set_psdt(&mut self, psdt: u8) -> &mut Self {
        self.cdw[0] = (self.cdw[0] & !(3 << 14)) | ((psdt as u32 & 3) << 14);
        self
    }
    /// Sets NSID.
    pub fn set_nsid(&mut self, nsid: u32) -> &mut Self {
        self.cdw[1] = nsid;
        self
    }
    /// Sets PRP1 and PRP2.
    pub fn set_prps(&mut self, prp1: u64, prp2: u64) -> &mut Self {
        self.cdw[6] = prp1 as u32;
        self.cdw[7] = (prp1 >> 32) as u32;
        self.cdw[8] = prp2 as u32;
        self.cdw[9] = (prp2 >> 32) as u32;
        self
    }
    /// Sets dword `i` (2..=15 are command specific; 0, 1 and 6..=9 have setters of their
    /// own). Out-of-range indices are ignored.
    pub fn set_cdw(&mut self, i: usize, value: u32) -> &mut Self {
        if let Some(d) = self.cdw.get_mut(i) {
            *d = value;
        }
        self
    }

    // ---- Admin commands (§5) ----

    /// Identify (§5.1.13): CNS in CDW10 7:0, CNTID in CDW10 31:16, CNS specific identifier
    /// in CDW11 15:0, CSI in CDW11 31:24. Transfers 4096 bytes to the host.
    pub fn identify(cns: u8, nsid: u32, cntid: u16, csi: u8) -> Self {
        let mut c = Self::new(AdminOpcode::IDENTIFY.0);
        c.set_nsid(nsid)
            .set_cdw(10, cns as u32 | (cntid as u32) << 16)
            .set_cdw(11, (csi as u32) << 24);
        c
    }

    /// Get Log Page (§5.1.12): LID CDW10 7:0, LSP 14:8, RAE 15, NUMDL 31:16; NUMDU CDW11
    /// 15:0, LSI 31:16; LPOL/LPOU CDW12/13 (byte offset, dword aligned); CSI CDW14 31:24.
    /// `numd` is the number of dwords to transfer (not 0's based).
    pub fn get_log_page(lid: u8, nsid: u32, numd: u32, offset: u64, lsp: u8, rae: bool) -> Self {
        let numd_z = numd.saturating_sub(1);
        let mut c = Self::new(AdminOpcode::GET_LOG_PAGE.0);
        c.set_nsid(nsid)
            .set_cdw(
                10,
                lid as u32
                    | ((lsp as u32 & 0x7F) << 8)
                    | (rae as u32) << 15
                    | (numd_z & 0xFFFF) << 16,
            )
            .set_cdw(11, numd_z >> 16)
            .set_cdw(12, offset as u32)
            .set_cdw(13, (offset >> 32) as u32);
        c
    }

    /// Get Features (§5.1.11): FID CDW10 7:0, SEL 10:8; CDW11 feature specific.
    pub fn get_features(fid: u8, sel: u8, nsid: u32, cdw11: u32) -> Self {
        let mut c = Self::new(AdminOpcode::GET_FEATURES.0);
        c.set_nsid(nsid)
            .set_cdw(10, fid as u32 | ((sel as u32 & 7) << 8))
            .set_cdw(11, cdw11);
        c
    }

    /// Set Features (§5.1.25): FID CDW10 7:0, SV bit 31; CDW11.. feature specific.
    pub fn set_features(fid: u8, save: bool, nsid: u32, cdw11: u32) -> Self {
        let mut c = Self::new(AdminOpcode::SET_FEATURES.0);
        c.set_nsid(nsid)
            .set_cdw(10, fid as u32 | (save as u32) << 31)
            .set_cdw(11, cdw11);
        c
    }

    /// Create I/O Completion Queue (§5.2.1): QID CDW10 15:0, QSIZE 31:16 (0's based); PC
    /// CDW11 bit 0, IEN bit 1, IV 31:16; PRP1 the queue base.
    pub fn create_io_cq(qid: u16, qsize_z: u16, base: u64, ien: bool, iv: u16) -> Self {
        let mut c = Self::new(AdminOpcode::CREATE_IO_CQ.0);
        c.set_prps(base, 0)
            .set_cdw(10, qid as u32 | (qsize_z as u32) << 16)
            .set_cdw(11, 1 | (ien as u32) << 1 | (iv as u32) << 16);
        c
    }

    /// Create I/O Submission Queue (§5.2.2): QID CDW10 15:0, QSIZE 31:16; PC CDW11 bit 0,
    /// QPRIO 2:1, CQID 31:16; PRP1 the queue base.
    pub fn create_io_sq(qid: u16, qsize_z: u16, base: u64, cqid: u16, qprio: u8) -> Self {
        let mut c = Self::new(AdminOpcode::CREATE_IO_SQ.0);
        c.set_prps(base, 0)
            .set_cdw(10, qid as u32 | (qsize_z as u32) << 16)
            .set_cdw(11, 1 | ((qprio as u32 & 3) << 1) | (cqid as u32) << 16);
        c
    }

    /// Doorbell Buffer Config (§5.8): PRP1 the shadow doorbell buffer, PRP2 the EventIdx
    /// buffer, each one memory page, page aligned.
    pub fn doorbell_buffer_config(shadow_doorbells: u64, event_idx: u64) -> Self {
        let mut c = Self::new(AdminOpcode::DOORBELL_BUFFER_CONFIG.0);
        c.set_prps(shadow_doorbells, event_idx);
        c
    }

    /// Delete I/O Submission Queue (§5.2.4): QID CDW10 15:0.
    pub fn delete_io_sq(qid: u16) -> Self {
        let mut c = Self::new(AdminOpcode::DELETE_IO_SQ.0);
        c.set_cdw(10, qid as u32);
        c
    }

    /// Delete I/O Completion Queue (§5.2.3): QID CDW10 15:0.
    pub fn delete_io_cq(qid: u16) -> Self {
        let mut c = Self::new(AdminOpcode::DELETE_IO_CQ.0);
        c.set_cdw(10, qid as u32);
        c
    }

    /// Abort (§5.1.1): SQID CDW10 15:0, CID 31:16.
    pub fn abort(sqid: u16, cid: u16) -> Self {
        let mut c = Self::new(AdminOpcode::ABORT.0);
        c.set_cdw(10, sqid as u32 | (cid as u32) << 16);
        c
    }

    /// Asynchronous Event Request (§5.1.2): no fields.
    pub fn async_event_request() -> Self {
        Self::new(AdminOpcode::ASYNC_EVENT_REQUEST.0)
    }

    /// Format NVM (§5.1.10 / NVM Command Set §4.1): LBAF CDW10 3:0 (and LBAFU 13:12), MSET
    /// 4, PI 7:5, PIL 8, SES 11:9.
    pub fn format_nvm(nsid: u32, lbaf: u8, ses: u8) -> Self {
        let mut c = Self::new(AdminOpcode::FORMAT_NVM.0);
        c.set_nsid(nsid).set_cdw(
            10,
            (lbaf as u32 & 0xF) | ((ses as u32 & 7) << 9) | (((lbaf as u32 >> 4) & 3) << 12),
        );
        c
    }

    // ---- NVM commands (NVM Command Set Specification §3) ----

    /// Read or Write (NVM §3.3.4 / §3.3.6): SLBA CDW11:10, NLB CDW12 15:0 (0's based),
    /// FUA bit 30, LR bit 31.
    pub fn rw(opcode: NvmOpcode, nsid: u32, slba: u64, nlb_z: u16, fua: bool) -> Self {
        let mut c = Self::new(opcode.0);
        c.set_nsid(nsid)
            .set_cdw(10, slba as u32)
            .set_cdw(11, (slba >> 32) as u32)
            .set_cdw(12, nlb_z as u32 | (fua as u32) << 30);
        c
    }

    /// Flush (NVM §3.3.2): NSID only.
    pub fn flush(nsid: u32) -> Self {
        let mut c = Self::new(NvmOpcode::FLUSH.0);
        c.set_nsid(nsid);
        c
    }

    /// Write Zeroes (NVM §3.3.8): SLBA, NLB (0's based), DEAC CDW12 bit 25.
    pub fn write_zeroes(nsid: u32, slba: u64, nlb_z: u16, deac: bool) -> Self {
        let mut c = Self::rw(NvmOpcode::WRITE_ZEROES, nsid, slba, nlb_z, false);
        c.set_cdw(12, nlb_z as u32 | (deac as u32) << 25);
        c
    }

    /// Verify (NVM §3.3.7): SLBA, NLB (0's based); no data transfer.
    pub fn verify(nsid: u32, slba: u64, nlb_z: u16) -> Self {
        Self::rw(NvmOpcode::VERIFY, nsid, slba, nlb_z, false)
    }

    /// Dataset Management (NVM §3.3.3): NR CDW10 7:0 (0's based number of ranges); CDW11
    /// IDR bit 0, IDW bit 1, AD bit 2. The data is `nr_z + 1` 16-byte range entries.
    pub fn dataset_management(nsid: u32, nr_z: u8, deallocate: bool) -> Self {
        let mut c = Self::new(NvmOpcode::DATASET_MANAGEMENT.0);
        c.set_nsid(nsid)
            .set_cdw(10, nr_z as u32)
            .set_cdw(11, (deallocate as u32) << 2);
        c
    }

    // ---- decoding helpers shared by the simulator ----

    /// CDW10 bits 15:0 (QID of the queue commands, SQID of Abort).
    pub const fn cdw10_lo(&self) -> u16 {
        self.cdw[10] as u16
    }
    /// CDW10 bits 31:16 (QSIZE, CID of Abort, NUMDL).
    pub const fn cdw10_hi(&self) -> u16 {
        (self.cdw[10] >> 16) as u16
    }
    /// SLBA of an NVM command, CDW11:10.
    pub const fn slba(&self) -> u64 {
        self.cdw[10] as u64 | (self.cdw[11] as u64) << 32
    }
    /// NLB of an NVM command, CDW12 15:0 (0's based).
    pub const fn nlb_z(&self) -> u16 {
        self.cdw[12] as u16
    }
}

/// A completion queue entry (§4.2.1, Figure "Common Completion Queue Entry Layout").
#[derive(Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(C)]
pub struct Completion {
    dw: [u32; 4],
}

const _: () = assert!(core::mem::size_of::<Completion>() == 16);

impl core::fmt::Debug for Completion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Completion")
            .field("dw0", &format_args!("{:#x}", self.dw0()))
            .field("dw1", &format_args!("{:#x}", self.dw1()))
            .field("sqhd", &self.sqhd())
            .field("sqid", &self.sqid())
            .field("cid", &self.cid())
            .field("phase", &self.phase())
            .field("status", &self.status())
            .finish()
    }
}

impl Completion {
    /// Builds an entry.
    pub const fn new(
        dw0: u32,
        dw1: u32,
        sqhd: u16,
        sqid: u16,
        cid: u16,
        phase: bool,
        status: Status,
    ) -> Self {
        Self {
            dw: [
                dw0,
                dw1,
                sqhd as u32 | (sqid as u32) << 16,
                cid as u32 | (phase as u32) << 16 | (status.bits() as u32) << 17,
            ],
        }
    }
    /// From the four dwords (native values).
    pub const fn from_dwords(dw: [u32; 4]) -> Self {
        Self { dw }
    }
    /// The four dwords.
    pub const fn dwords(&self) -> [u32; 4] {
        self.dw
    }
    /// Decodes the wire form. Any 16 bytes decode.
    pub fn from_le_bytes(b: &[u8; 16]) -> Self {
        let mut dw = [0u32; 4];
        for (i, d) in dw.iter_mut().enumerate() {
            *d = u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        }
        Self { dw }
    }
    /// Encodes the wire form.
    pub fn to_le_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        for (i, d) in self.dw.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&d.to_le_bytes());
        }
        b
    }
    /// DW0, command specific.
    pub const fn dw0(&self) -> u32 {
        self.dw[0]
    }
    /// DW1, command specific.
    pub const fn dw1(&self) -> u32 {
        self.dw[1]
    }
    /// SQHD, DW2 15:0: the SQ head pointer as the controller last consumed it.
    pub const fn sqhd(&self) -> u16 {
        self.dw[2] as u16
    }
    /// SQID, DW2 31:16.
    pub const fn sqid(&self) -> u16 {
        (self.dw[2] >> 16) as u16
    }
    /// CID, DW3 15:0.
    pub const fn cid(&self) -> u16 {
        self.dw[3] as u16
    }
    /// P, DW3 bit 16: the phase tag.
    pub const fn phase(&self) -> bool {
        self.dw[3] & (1 << 16) != 0
    }
    /// Status, DW3 31:17.
    pub const fn status(&self) -> Status {
        Status::from_bits((self.dw[3] >> 17) as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_fields_roundtrip() {
        let mut c = Command::rw(NvmOpcode::WRITE, 7, 0x1_2345_6789, 255, true);
        c.set_cid(0xBEEF)
            .set_prps(0xAAAA_0000_1000, 0xBBBB_0000_2000);
        let b = c.to_le_bytes();
        assert_eq!(b[0], 0x01);
        assert_eq!(&b[2..4], &0xBEEFu16.to_le_bytes());
        assert_eq!(&b[4..8], &7u32.to_le_bytes());
        assert_eq!(&b[24..32], &0xAAAA_0000_1000u64.to_le_bytes());
        assert_eq!(&b[32..40], &0xBBBB_0000_2000u64.to_le_bytes());
        assert_eq!(&b[40..48], &0x1_2345_6789u64.to_le_bytes());
        let d = Command::from_le_bytes(&b);
        assert_eq!(d, c);
        assert_eq!(d.slba(), 0x1_2345_6789);
        assert_eq!(d.nlb_z(), 255);
        assert_eq!(d.cdw12() >> 30 & 1, 1);
        assert_eq!(d.cid(), 0xBEEF);
    }

    #[test]
    fn completion_fields() {
        let s = Status::generic(0x80, true);
        let c = Completion::new(1, 2, 17, 3, 0x1234, true, s);
        let d = Completion::from_le_bytes(&c.to_le_bytes());
        assert_eq!(d, c);
        assert_eq!(
            (d.sqhd(), d.sqid(), d.cid(), d.phase()),
            (17, 3, 0x1234, true)
        );
        assert_eq!(d.status(), s);
        // Linux: status is le16 at byte 14, phase its bit 0.
        let b = c.to_le_bytes();
        let st = u16::from_le_bytes([b[14], b[15]]);
        assert_eq!(st & 1, 1);
        assert_eq!(st >> 1, s.bits());
    }

    #[test]
    fn log_page_numd() {
        let c = Command::get_log_page(2, 0xFFFF_FFFF, 128, 0, 0, false);
        assert_eq!(c.cdw10() >> 16, 127);
        assert_eq!(c.cdw10() & 0xFF, 2);
        let c = Command::get_log_page(1, 0, 0x2_0000, 8, 0, true);
        assert_eq!(c.cdw10() >> 16, 0xFFFF);
        assert_eq!(c.cdw11(), 1);
        assert_eq!(c.cdw12(), 8);
        assert_eq!((c.cdw10() >> 15) & 1, 1);
    }
}

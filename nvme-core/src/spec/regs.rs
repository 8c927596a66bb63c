//! Controller registers (NVMe Base Specification 2.1, §3.1.4 "Controller Properties", and the
//! PCIe transport's doorbells, §3.1.4 / NVMe over PCIe §3.1.2).
//!
//! Each register is a typed value over its raw bits, with one getter per field named as in the
//! spec. Fields that are 0's based carry a `_z` suffix.

/// Byte offsets of the registers in BAR0 (§3.1.4, Figure 35). Names follow Linux's
/// `NVME_REG_*`.
pub mod offset {
    /// Controller Capabilities, 64-bit.
    pub const CAP: usize = 0x00;
    /// Version.
    pub const VS: usize = 0x08;
    /// Interrupt Mask Set.
    pub const INTMS: usize = 0x0C;
    /// Interrupt Mask Clear.
    pub const INTMC: usize = 0x10;
    /// Controller Configuration.
    pub const CC: usize = 0x14;
    /// Controller Status.
    pub const CSTS: usize = 0x1C;
    /// NVM Subsystem Reset.
    pub const NSSR: usize = 0x20;
    /// Admin Queue Attributes.
    pub const AQA: usize = 0x24;
    /// Admin Submission Queue Base Address, 64-bit.
    pub const ASQ: usize = 0x28;
    /// Admin Completion Queue Base Address, 64-bit.
    pub const ACQ: usize = 0x30;
    /// Controller Memory Buffer Location.
    pub const CMBLOC: usize = 0x38;
    /// Controller Memory Buffer Size.
    pub const CMBSZ: usize = 0x3C;
    /// First doorbell (SQ 0 tail).
    pub const DBS: usize = 0x1000;
}

/// The value written to NSSR to start an NVM Subsystem Reset: "NVMe" in ASCII (§3.1.4.6).
pub const NSSR_RESET: u32 = 0x4E56_4D65;

/// The doorbell of submission queue `qid`: its tail (§3.1.4.x "SQyTDBL"):
/// `1000h + (2y × (4 << CAP.DSTRD))`.
pub const fn sq_tail_doorbell(qid: u16, dstrd: u8) -> usize {
    offset::DBS + (2 * qid as usize) * (4usize << dstrd)
}

/// The doorbell of completion queue `qid`: its head (§3.1.4.x "CQyHDBL"):
/// `1000h + ((2y + 1) × (4 << CAP.DSTRD))`.
pub const fn cq_head_doorbell(qid: u16, dstrd: u8) -> usize {
    offset::DBS + (2 * qid as usize + 1) * (4usize << dstrd)
}

const fn bits64(v: u64, lo: u32, hi: u32) -> u64 {
    (v >> lo) & ((1u64 << (hi - lo + 1)) - 1)
}
const fn bits32(v: u32, lo: u32, hi: u32) -> u32 {
    ((v as u64 >> lo) & ((1u64 << (hi - lo + 1)) - 1)) as u32
}

/// CAP, Controller Capabilities (§3.1.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cap(pub u64);

impl Cap {
    /// MQES, bits 15:0: Maximum Queue Entries Supported, 0's based (a value of 0 is invalid).
    pub const fn mqes_z(self) -> u16 {
        bits64(self.0, 0, 15) as u16
    }
    /// CQR, bit 16: Contiguous Queues Required.
    pub const fn cqr(self) -> bool {
        bits64(self.0, 16, 16) != 0
    }
    /// AMS, bits 18:17: Arbitration Mechanism Supported (bit 0: weighted round robin with
    /// urgent, bit 1: vendor specific).
    pub const fn ams(self) -> u8 {
        bits64(self.0, 17, 18) as u8
    }
    /// TO, bits 31:24: worst-case time for CSTS.RDY to change after CC.EN changes, in units
    /// of 500 ms.
    pub const fn to(self) -> u8 {
        bits64(self.0, 24, 31) as u8
    }
    /// TO as milliseconds.
    pub const fn timeout_ms(self) -> u64 {
        self.to() as u64 * 500
    }
    /// DSTRD, bits 35:32: doorbell stride, `4 << DSTRD` bytes.
    pub const fn dstrd(self) -> u8 {
        bits64(self.0, 32, 35) as u8
    }
    /// NSSRS, bit 36: NVM Subsystem Reset Supported.
    pub const fn nssrs(self) -> bool {
        bits64(self.0, 36, 36) != 0
    }
    /// CSS, bits 44:37: Command Sets Supported.
    pub const fn css(self) -> u8 {
        bits64(self.0, 37, 44) as u8
    }
    /// CSS bit 0: the NVM command set.
    pub const fn css_nvm(self) -> bool {
        self.css() & 0x01 != 0
    }
    /// CSS bit 6: one or more I/O command sets (select with CC.CSS = 110b).
    pub const fn css_io_sets(self) -> bool {
        self.css() & 0x40 != 0
    }
    /// CSS bit 7: no I/O command set (admin only).
    pub const fn css_admin_only(self) -> bool {
        self.css() & 0x80 != 0
    }
    /// BPS, bit 45: Boot Partition Support.
    pub const fn bps(self) -> bool {
        bits64(self.0, 45, 45) != 0
    }
    /// MPSMIN, bits 51:48: minimum memory page size is `2 ^ (12 + MPSMIN)`.
    pub const fn mpsmin(self) -> u8 {
        bits64(self.0, 48, 51) as u8
    }
    /// MPSMAX, bits 55:52: maximum memory page size is `2 ^ (12 + MPSMAX)`.
    pub const fn mpsmax(self) -> u8 {
        bits64(self.0, 52, 55) as u8
    }
    /// PMRS, bit 56: Persistent Memory Region Supported.
    pub const fn pmrs(self) -> bool {
        bits64(self.0, 56, 56) != 0
    }
    /// CMBS, bit 57: Controller Memory Buffer Supported.
    pub const fn cmbs(self) -> bool {
        bits64(self.0, 57, 57) != 0
    }
    /// Builds a CAP value from its fields (used by the simulator).
    #[allow(clippy::too_many_arguments)]
    pub const fn build(
        mqes_z: u16,
        cqr: bool,
        to: u8,
        dstrd: u8,
        nssrs: bool,
        css: u8,
        mpsmin: u8,
        mpsmax: u8,
    ) -> Self {
        Cap(mqes_z as u64
            | (cqr as u64) << 16
            | (to as u64) << 24
            | ((dstrd & 0xF) as u64) << 32
            | (nssrs as u64) << 36
            | (css as u64) << 37
            | ((mpsmin & 0xF) as u64) << 48
            | ((mpsmax & 0xF) as u64) << 52)
    }
}

/// VS, Version (§3.1.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vs(pub u32);

impl Vs {
    /// MJR, bits 31:16.
    pub const fn mjr(self) -> u16 {
        bits32(self.0, 16, 31) as u16
    }
    /// MNR, bits 15:8.
    pub const fn mnr(self) -> u8 {
        bits32(self.0, 8, 15) as u8
    }
    /// TER, bits 7:0.
    pub const fn ter(self) -> u8 {
        bits32(self.0, 0, 7) as u8
    }
    /// Builds a version value.
    pub const fn new(mjr: u16, mnr: u8, ter: u8) -> Self {
        Vs((mjr as u32) << 16 | (mnr as u32) << 8 | ter as u32)
    }
}

impl core::fmt::Display for Vs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}.{}", self.mjr(), self.mnr(), self.ter())
    }
}

/// CC.CSS values (§3.1.4.5).
pub mod css {
    /// 000b: NVM command set.
    pub const NVM: u8 = 0b000;
    /// 110b: all supported I/O command sets.
    pub const ALL_IO: u8 = 0b110;
    /// 111b: admin command set only.
    pub const ADMIN_ONLY: u8 = 0b111;
}

/// CC.SHN values (§3.1.4.5).
pub mod shn {
    /// 00b: no notification.
    pub const NONE: u8 = 0b00;
    /// 01b: normal shutdown.
    pub const NORMAL: u8 = 0b01;
    /// 10b: abrupt shutdown.
    pub const ABRUPT: u8 = 0b10;
}

/// CC, Controller Configuration (§3.1.4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cc(pub u32);

impl Cc {
    /// EN, bit 0: Enable.
    pub const fn en(self) -> bool {
        self.0 & 1 != 0
    }
    /// CSS, bits 6:4: I/O Command Set Selected.
    pub const fn css(self) -> u8 {
        bits32(self.0, 4, 6) as u8
    }
    /// MPS, bits 10:7: memory page size is `2 ^ (12 + MPS)`.
    pub const fn mps(self) -> u8 {
        bits32(self.0, 7, 10) as u8
    }
    /// AMS, bits 13:11: Arbitration Mechanism Selected (000b round robin).
    pub const fn ams(self) -> u8 {
        bits32(self.0, 11, 13) as u8
    }
    /// SHN, bits 15:14: Shutdown Notification.
    pub const fn shn(self) -> u8 {
        bits32(self.0, 14, 15) as u8
    }
    /// IOSQES, bits 19:16: I/O submission queue entry size, `2 ^ n` bytes (6 for 64 bytes).
    pub const fn iosqes(self) -> u8 {
        bits32(self.0, 16, 19) as u8
    }
    /// IOCQES, bits 23:20: I/O completion queue entry size, `2 ^ n` bytes (4 for 16 bytes).
    pub const fn iocqes(self) -> u8 {
        bits32(self.0, 20, 23) as u8
    }
    /// Returns a copy with EN set to `en`.
    pub const fn with_en(self, en: bool) -> Self {
        Cc((self.0 & !1) | en as u32)
    }
    /// Returns a copy with CSS set.
    pub const fn with_css(self, v: u8) -> Self {
        Cc((self.0 & !(0x7 << 4)) | ((v as u32 & 0x7) << 4))
    }
    /// Returns a copy with MPS set.
    pub const fn with_mps(self, v: u8) -> Self {
        Cc((self.0 & !(0xF << 7)) | ((v as u32 & 0xF) << 7))
    }
    /// Returns a copy with AMS set.
    pub const fn with_ams(self, v: u8) -> Self {
        Cc((self.0 & !(0x7 << 11)) | ((v as u32 & 0x7) << 11))
    }
    /// Returns a copy with SHN set.
    pub const fn with_shn(self, v: u8) -> Self {
        Cc((self.0 & !(0x3 << 14)) | ((v as u32 & 0x3) << 14))
    }
    /// Returns a copy with IOSQES set.
    pub const fn with_iosqes(self, v: u8) -> Self {
        Cc((self.0 & !(0xF << 16)) | ((v as u32 & 0xF) << 16))
    }
    /// Returns a copy with IOCQES set.
    pub const fn with_iocqes(self, v: u8) -> Self {
        Cc((self.0 & !(0xF << 20)) | ((v as u32 & 0xF) << 20))
    }
}

/// CSTS.SHST values (§3.1.4.6).
pub mod shst {
    /// 00b: normal operation.
    pub const NORMAL: u8 = 0b00;
    /// 01b: shutdown processing occurring.
    pub const OCCURRING: u8 = 0b01;
    /// 10b: shutdown processing complete.
    pub const COMPLETE: u8 = 0b10;
}

/// CSTS, Controller Status (§3.1.4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Csts(pub u32);

impl Csts {
    /// The value a read returns when the device is gone (surprise removal, dead link).
    pub const ALL_ONES: u32 = 0xFFFF_FFFF;
    /// RDY, bit 0: Ready.
    pub const fn rdy(self) -> bool {
        self.0 & 1 != 0
    }
    /// CFS, bit 1: Controller Fatal Status.
    pub const fn cfs(self) -> bool {
        self.0 & 2 != 0
    }
    /// SHST, bits 3:2: Shutdown Status.
    pub const fn shst(self) -> u8 {
        bits32(self.0, 2, 3) as u8
    }
    /// NSSRO, bit 4: NVM Subsystem Reset Occurred (RW1C).
    pub const fn nssro(self) -> bool {
        self.0 & 0x10 != 0
    }
    /// PP, bit 5: Processing Paused.
    pub const fn pp(self) -> bool {
        self.0 & 0x20 != 0
    }
    /// True if the read returned all-ones: the device is gone.
    pub const fn is_all_ones(self) -> bool {
        self.0 == Self::ALL_ONES
    }
    /// Builds a CSTS value.
    pub const fn build(rdy: bool, cfs: bool, shst: u8, nssro: bool) -> Self {
        Csts(rdy as u32 | (cfs as u32) << 1 | ((shst as u32 & 3) << 2) | (nssro as u32) << 4)
    }
}

/// AQA, Admin Queue Attributes (§3.1.4.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Aqa(pub u32);

impl Aqa {
    /// ASQS, bits 11:0: admin submission queue size, 0's based.
    pub const fn asqs_z(self) -> u16 {
        bits32(self.0, 0, 11) as u16
    }
    /// ACQS, bits 27:16: admin completion queue size, 0's based.
    pub const fn acqs_z(self) -> u16 {
        bits32(self.0, 16, 27) as u16
    }
    /// Builds AQA from 0's based sizes (each at most 4095).
    pub const fn new(asqs_z: u16, acqs_z: u16) -> Self {
        Aqa((asqs_z as u32 & 0xFFF) | ((acqs_z as u32 & 0xFFF) << 16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets and field positions of Linux's `include/linux/nvme.h` (`NVME_REG_*`,
    /// `NVME_CAP_*`, `NVME_CC_*`, `NVME_CSTS_*`), written here as plain numbers so that one
    /// misreading of the spec cannot pass on both the driver and the simulator.
    #[test]
    fn register_offsets_match_linux() {
        assert_eq!(offset::CAP, 0x0000); // NVME_REG_CAP
        assert_eq!(offset::VS, 0x0008); // NVME_REG_VS
        assert_eq!(offset::INTMS, 0x000c); // NVME_REG_INTMS
        assert_eq!(offset::INTMC, 0x0010); // NVME_REG_INTMC
        assert_eq!(offset::CC, 0x0014); // NVME_REG_CC
        assert_eq!(offset::CSTS, 0x001c); // NVME_REG_CSTS
        assert_eq!(offset::NSSR, 0x0020); // NVME_REG_NSSR
        assert_eq!(offset::AQA, 0x0024); // NVME_REG_AQA
        assert_eq!(offset::ASQ, 0x0028); // NVME_REG_ASQ
        assert_eq!(offset::ACQ, 0x0030); // NVME_REG_ACQ
        assert_eq!(offset::CMBLOC, 0x0038); // NVME_REG_CMBLOC
        assert_eq!(offset::CMBSZ, 0x003c); // NVME_REG_CMBSZ
        assert_eq!(offset::DBS, 0x1000); // NVME_REG_DBS
        assert_eq!(NSSR_RESET, 0x4E564D65); // "NVMe"
    }

    #[test]
    fn field_positions_match_linux() {
        // NVME_CAP_MQES(cap) ((cap) & 0xffff), NVME_CAP_TIMEOUT ((cap >> 24) & 0xff),
        // NVME_CAP_STRIDE ((cap >> 32) & 0xf), NVME_CAP_NSSRC ((cap >> 36) & 0x1),
        // NVME_CAP_CSS ((cap >> 37) & 0xff), NVME_CAP_MPSMIN ((cap >> 48) & 0xf),
        // NVME_CAP_MPSMAX ((cap >> 52) & 0xf), NVME_CAP_CMBS (1ULL << 57).
        let cap = Cap(0x004018200f0107ff);
        assert_eq!(cap.mqes_z(), 0x7ff);
        assert!(cap.cqr());
        assert_eq!(cap.to(), 0x0f);
        assert_eq!(cap.timeout_ms(), 7500);
        assert_eq!(cap.dstrd(), 0);
        assert!(!cap.nssrs());
        assert_eq!(cap.css(), 0xC1);
        assert!(cap.css_nvm() && cap.css_io_sets() && cap.css_admin_only());
        assert_eq!(cap.mpsmin(), 0);
        assert_eq!(cap.mpsmax(), 4);
        let all = Cap(u64::MAX);
        assert_eq!(all.dstrd(), 0xf);
        assert_eq!(all.css(), 0xff);
        assert!(all.cmbs() && all.pmrs() && all.bps());
        // NVME_CC_ENABLE 1 << 0, NVME_CC_CSS_SHIFT 4, NVME_CC_MPS_SHIFT 7,
        // NVME_CC_AMS_SHIFT 11, NVME_CC_SHN_SHIFT 14, NVME_CC_IOSQES_SHIFT 16,
        // NVME_CC_IOCQES_SHIFT 20.
        let cc = Cc(0)
            .with_en(true)
            .with_css(css::ALL_IO)
            .with_mps(0)
            .with_shn(shn::NORMAL)
            .with_iosqes(6)
            .with_iocqes(4);
        assert_eq!(cc.0, 1 | (6 << 4) | (1 << 14) | (6 << 16) | (4 << 20));
        assert_eq!(Cc(0x3 << 14).shn(), 3);
        assert_eq!(Cc(0xF << 7).mps(), 0xF);
        // NVME_CSTS_RDY 1, NVME_CSTS_CFS 2, NVME_CSTS_NSSRO 0x10, NVME_CSTS_PP 0x20,
        // NVME_CSTS_SHST_CMPLT 0x8.
        assert!(Csts(1).rdy());
        assert!(Csts(2).cfs());
        assert!(Csts(0x10).nssro());
        assert!(Csts(0x20).pp());
        assert_eq!(Csts(0x8).shst(), shst::COMPLETE);
        assert_eq!(Csts::build(true, false, shst::COMPLETE, false).0, 0x9);
        assert!(Csts(u32::MAX).is_all_ones());
        let aqa = Aqa::new(31, 63);
        assert_eq!(aqa.0, 31 | (63 << 16));
        assert_eq!((aqa.asqs_z(), aqa.acqs_z()), (31, 63));
        assert_eq!(Vs::new(1, 4, 0).0, 0x10400);
        assert_eq!(Cap::build(0x7ff, true, 0xf, 0, false, 0xC1, 0, 4), cap);
    }

    #[test]
    fn doorbell_offsets() {
        // NVMe over PCIe: with DSTRD 0 the doorbells are 4 bytes apart.
        assert_eq!(sq_tail_doorbell(0, 0), 0x1000);
        assert_eq!(cq_head_doorbell(0, 0), 0x1004);
        assert_eq!(sq_tail_doorbell(1, 0), 0x1008);
        assert_eq!(cq_head_doorbell(1, 0), 0x100c);
        // DSTRD 2: 16-byte stride.
        assert_eq!(sq_tail_doorbell(3, 2), 0x1000 + 6 * 16);
        assert_eq!(cq_head_doorbell(3, 2), 0x1000 + 7 * 16);
    }
}

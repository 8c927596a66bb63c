//! Identify data structures (NVMe Base §5.1.13 and NVM Command Set §4.1.5): Identify
//! Controller (CNS 01h), Identify Namespace (CNS 00h), the active namespace ID list (CNS
//! 02h). Each parses from a page of any length without panicking and encodes back (the
//! simulator builds its pages with the same code).

use super::bytes::{array_at, put, u16_at, u32_at, u64_at, u8_at, AsciiField};

/// Size of every Identify data structure.
pub const IDENTIFY_LEN: usize = 4096;

/// CNS values (§5.1.13.1, Figure "CNS Values").
pub mod cns {
    /// 00h: Identify Namespace data structure for NSID.
    pub const NAMESPACE: u8 = 0x00;
    /// 01h: Identify Controller data structure.
    pub const CONTROLLER: u8 = 0x01;
    /// 02h: active namespace ID list.
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    /// 03h: namespace identification descriptor list.
    pub const NS_DESCRIPTORS: u8 = 0x03;
    /// 05h: I/O command set specific Identify Namespace.
    pub const CSI_NAMESPACE: u8 = 0x05;
    /// 06h: I/O command set specific Identify Controller.
    pub const CSI_CONTROLLER: u8 = 0x06;
    /// 07h: I/O command set specific active namespace ID list.
    pub const CSI_ACTIVE_NS_LIST: u8 = 0x07;
    /// 10h: allocated namespace ID list.
    pub const ALLOCATED_NS_LIST: u8 = 0x10;
    /// 11h: Identify Namespace for an allocated NSID.
    pub const ALLOCATED_NAMESPACE: u8 = 0x11;
    /// 12h: controllers attached to NSID.
    pub const NS_ATTACHED_CTRLS: u8 = 0x12;
    /// 13h: controllers in the subsystem.
    pub const CTRL_LIST: u8 = 0x13;
}

/// ONCS bits, Optional NVM Command Support (Identify Controller bytes 521:520).
pub mod oncs {
    /// Bit 0: Compare.
    pub const COMPARE: u16 = 1 << 0;
    /// Bit 1: Write Uncorrectable.
    pub const WRITE_UNCORRECTABLE: u16 = 1 << 1;
    /// Bit 2: Dataset Management.
    pub const DATASET_MANAGEMENT: u16 = 1 << 2;
    /// Bit 3: Write Zeroes.
    pub const WRITE_ZEROES: u16 = 1 << 3;
    /// Bit 4: Save field in Set/Get Features.
    pub const SAVE_SELECT: u16 = 1 << 4;
    /// Bit 5: Reservations.
    pub const RESERVATIONS: u16 = 1 << 5;
    /// Bit 6: Timestamp.
    pub const TIMESTAMP: u16 = 1 << 6;
    /// Bit 7: Verify.
    pub const VERIFY: u16 = 1 << 7;
    /// Bit 8: Copy.
    pub const COPY: u16 = 1 << 8;
}

/// OACS bits, Optional Admin Command Support (bytes 257:256).
pub mod oacs {
    /// Bit 0: Security Send/Receive.
    pub const SECURITY: u16 = 1 << 0;
    /// Bit 1: Format NVM.
    pub const FORMAT_NVM: u16 = 1 << 1;
    /// Bit 2: Firmware Commit / Image Download.
    pub const FIRMWARE: u16 = 1 << 2;
    /// Bit 3: Namespace Management.
    pub const NS_MANAGEMENT: u16 = 1 << 3;
    /// Bit 4: Device Self-test.
    pub const SELF_TEST: u16 = 1 << 4;
    /// Bit 8: Doorbell Buffer Config.
    pub const DOORBELL_BUFFER_CONFIG: u16 = 1 << 8;
}

/// Identify Controller data structure (§5.1.13.2.1, Figure "Identify Controller Data
/// Structure"). The fields a host driver and a person need; the rest of the page is kept in
/// the simulator's encoding as zero.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentifyController {
    /// Bytes 1:0 VID, PCI vendor ID.
    pub vid: u16,
    /// Bytes 3:2 SSVID, PCI subsystem vendor ID.
    pub ssvid: u16,
    /// Bytes 23:4 SN, serial number.
    pub sn: AsciiField<20>,
    /// Bytes 63:24 MN, model number.
    pub mn: AsciiField<40>,
    /// Bytes 71:64 FR, firmware revision.
    pub fr: AsciiField<8>,
    /// Byte 72 RAB, recommended arbitration burst.
    pub rab: u8,
    /// Bytes 75:73 IEEE OUI.
    pub ieee: [u8; 3],
    /// Byte 76 CMIC.
    pub cmic: u8,
    /// Byte 77 MDTS, maximum data transfer size as a power of two in units of CAP.MPSMIN
    /// (0: no limit).
    pub mdts: u8,
    /// Bytes 79:78 CNTLID.
    pub cntlid: u16,
    /// Bytes 83:80 VER, same encoding as the VS register.
    pub ver: u32,
    /// Bytes 87:84 RTD3R, RTD3 resume latency, µs.
    pub rtd3r: u32,
    /// Bytes 91:88 RTD3E, RTD3 entry latency, µs (bounds the shutdown wait, §3.6.1).
    pub rtd3e: u32,
    /// Bytes 95:92 OAES, optional asynchronous events supported.
    pub oaes: u32,
    /// Bytes 99:96 CTRATT.
    pub ctratt: u32,
    /// Byte 111 CNTRLTYPE (1 I/O, 2 discovery, 3 admin).
    pub cntrltype: u8,
    /// Bytes 257:256 OACS.
    pub oacs: u16,
    /// Byte 258 ACL, abort command limit, 0's based.
    pub acl: u8,
    /// Byte 259 AERL, asynchronous event request limit, 0's based.
    pub aerl: u8,
    /// Byte 260 FRMW, firmware updates: bit 0 slot 1 read-only, bits 3:1 number of slots.
    pub frmw: u8,
    /// Byte 261 LPA, log page attributes.
    pub lpa: u8,
    /// Byte 262 ELPE, error log page entries, 0's based.
    pub elpe: u8,
    /// Byte 263 NPSS, number of power states, 0's based.
    pub npss: u8,
    /// Bytes 267:266 WCTEMP, warning composite temperature threshold, kelvin.
    pub wctemp: u16,
    /// Bytes 269:268 CCTEMP, critical composite temperature threshold, kelvin.
    pub cctemp: u16,
    /// Byte 512 SQES: bits 3:0 required, 7:4 maximum submission entry size (log2).
    pub sqes: u8,
    /// Byte 513 CQES: bits 3:0 required, 7:4 maximum completion entry size (log2).
    pub cqes: u8,
    /// Bytes 515:514 MAXCMD.
    pub maxcmd: u16,
    /// Bytes 519:516 NN, number of namespaces (the highest valid NSID).
    pub nn: u32,
    /// Bytes 521:520 ONCS, see [`oncs`].
    pub oncs: u16,
    /// Bytes 523:522 FUSES.
    pub fuses: u16,
    /// Byte 524 FNA, format NVM attributes.
    pub fna: u8,
    /// Byte 525 VWC, volatile write cache: bit 0 present.
    pub vwc: u8,
    /// Bytes 527:526 AWUN.
    pub awun: u16,
    /// Bytes 529:528 AWUPF.
    pub awupf: u16,
    /// Bytes 539:536 SGLS.
    pub sgls: u32,
    /// Bytes 1023:768 SUBNQN (the first 64 bytes are kept).
    pub subnqn: AsciiField<64>,
}

/// Why a page could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what}: the page is {got} bytes, at least {need} are required")]
pub struct ShortPage {
    /// What was being parsed.
    pub what: &'static str,
    /// Bytes given.
    pub got: usize,
    /// Bytes required.
    pub need: usize,
}

impl IdentifyController {
    /// Parses a 4096-byte page. Any content is accepted; only a short page is refused.
    ///
    /// # Errors
    /// [`ShortPage`] if `b` is shorter than 4096 bytes.
    pub fn parse(b: &[u8]) -> Result<Self, ShortPage> {
        if b.len() < IDENTIFY_LEN {
            return Err(ShortPage {
                what: "Identify Controller",
                got: b.len(),
                need: IDENTIFY_LEN,
            });
        }
        Ok(Self {
            vid: u16_at(b, 0),
            ssvid: u16_at(b, 2),
            sn: AsciiField(array_at(b, 4)),
            mn: AsciiField(array_at(b, 24)),
            fr: AsciiField(array_at(b, 64)),
            rab: u8_at(b, 72),
            ieee: array_at(b, 73),
            cmic: u8_at(b, 76),
            mdts: u8_at(b, 77),
            cntlid: u16_at(b, 78),
            ver: u32_at(b, 80),
            rtd3r: u32_at(b, 84),
            rtd3e: u32_at(b, 88),
            oaes: u32_at(b, 92),
            ctratt: u32_at(b, 96),
            cntrltype: u8_at(b, 111),
            oacs: u16_at(b, 256),
            acl: u8_at(b, 258),
            aerl: u8_at(b, 259),
            frmw: u8_at(b, 260),
            lpa: u8_at(b, 261),
            elpe: u8_at(b, 262),
            npss: u8_at(b, 263),
            wctemp: u16_at(b, 266),
            cctemp: u16_at(b, 268),
            sqes: u8_at(b, 512),
            cqes: u8_at(b, 513),
            maxcmd: u16_at(b, 514),
            nn: u32_at(b, 516),
            oncs: u16_at(b, 520),
            fuses: u16_at(b, 522),
            fna: u8_at(b, 524),
            vwc: u8_at(b, 525),
            awun: u16_at(b, 526),
            awupf: u16_at(b, 528),
            sgls: u32_at(b, 536),
            subnqn: AsciiField(array_at(b, 768)),
        })
    }

    /// Encodes into a page (at least 4096 bytes; other bytes are left as they are).
    pub fn encode(&self, b: &mut [u8]) {
        put(b, 0, &self.vid.to_le_bytes());
        put(b, 2, &self.ssvid.to_le_bytes());
        put(b, 4, &self.sn.0);
        put(b, 24, &self.mn.0);
        put(b, 64, &self.fr.0);
        put(b, 72, &[self.rab]);
        put(b, 73, &self.ieee);
        put(b, 76, &[self.cmic, self.mdts]);
        put(b, 78, &self.cntlid.to_le_bytes());
        put(b, 80, &self.ver.to_le_bytes());
        put(b, 84, &self.rtd3r.to_le_bytes());
        put(b, 88, &self.rtd3e.to_le_bytes());
        put(b, 92, &self.oaes.to_le_bytes());
        put(b, 96, &self.ctratt.to_le_bytes());
        put(b, 111, &[self.cntrltype]);
        put(b, 256, &self.oacs.to_le_bytes());
        put(
            b,
            258,
            &[
                self.acl, self.aerl, self.frmw, self.lpa, self.elpe, self.npss,
            ],
        );
        put(b, 266, &self.wctemp.to_le_bytes());
        put(b, 268, &self.cctemp.to_le_bytes());
        put(b, 512, &[self.sqes, self.cqes]);
        put(b, 514, &self.maxcmd.to_le_bytes());
        put(b, 516, &self.nn.to_le_bytes());
        put(b, 520, &self.oncs.to_le_bytes());
        put(b, 522, &self.fuses.to_le_bytes());
        put(b, 524, &[self.fna, self.vwc]);
        put(b, 526, &self.awun.to_le_bytes());
        put(b, 528, &self.awupf.to_le_bytes());
        put(b, 536, &self.sgls.to_le_bytes());
        put(b, 768, &self.subnqn.0);
    }

    /// The maximum data transfer size in bytes for a minimum page size of
    /// `2^(12 + mpsmin)`, or `None` for no limit (MDTS = 0). Saturates on absurd values.
    pub fn max_transfer_bytes(&self, mpsmin: u8) -> Option<u64> {
        if self.mdts == 0 {
            return None;
        }
        let shift = 12u32 + mpsmin as u32 + self.mdts as u32;
        Some(if shift >= 63 { u64::MAX } else { 1u64 << shift })
    }

    /// True if ONCS advertises `bit` (see [`oncs`]).
    pub fn supports(&self, bit: u16) -> bool {
        self.oncs & bit != 0
    }
}

/// One LBA format (NVM Command Set §4.1.5.1, Figure "LBA Format Data Structure").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LbaFormat {
    /// MS, bits 15:0: metadata bytes per LBA.
    pub ms: u16,
    /// LBADS, bits 23:16: LBA data size as a power of two (9 for 512 B, 12 for 4 KiB). A
    /// value below 9 means the format is not supported.
    pub lbads: u8,
    /// RP, bits 25:24: relative performance (0 best).
    pub rp: u8,
}

impl LbaFormat {
    /// Decodes the dword.
    pub const fn from_dword(d: u32) -> Self {
        Self {
            ms: d as u16,
            lbads: (d >> 16) as u8,
            rp: ((d >> 24) & 3) as u8,
        }
    }
    /// Encodes the dword.
    pub const fn to_dword(self) -> u32 {
        self.ms as u32 | (self.lbads as u32) << 16 | ((self.rp as u32 & 3) << 24)
    }
    /// LBA data size in bytes, or `None` if LBADS is below 9 (unsupported) or absurd.
    pub const fn data_size(self) -> Option<u32> {
        if self.lbads < 9 || self.lbads > 31 {
            None
        } else {
            Some(1u32 << self.lbads)
        }
    }
}

/// Identify Namespace data structure for the NVM command set (NVM Command Set §4.1.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Bytes 7:0 NSZE, namespace size in LBAs.
    pub nsze: u64,
    /// Bytes 15:8 NCAP, namespace capacity in LBAs.
    pub ncap: u64,
    /// Bytes 23:16 NUSE, namespace utilization in LBAs.
    pub nuse: u64,
    /// Byte 24 NSFEAT.
    pub nsfeat: u8,
    /// Byte 25 NLBAF, number of LBA formats, 0's based.
    pub nlbaf_z: u8,
    /// Byte 26 FLBAS, formatted LBA size: bits 3:0 and 6:5 the format index, bit 4 extended
    /// metadata.
    pub flbas: u8,
    /// Byte 27 MC, metadata capabilities.
    pub mc: u8,
    /// Byte 28 DPC.
    pub dpc: u8,
    /// Byte 29 DPS.
    pub dps: u8,
    /// Byte 30 NMIC.
    pub nmic: u8,
    /// Byte 33 DLFEAT, deallocate logical block features: bits 2:0 what a deallocated block
    /// reads as (001b zeroes), bit 3 Write Zeroes may deallocate.
    pub dlfeat: u8,
    /// Bytes 119:104 NGUID.
    pub nguid: [u8; 16],
    /// Bytes 127:120 EUI64.
    pub eui64: [u8; 8],
    /// Bytes 383:128 LBAF0..LBAF63.
    pub lbaf: [LbaFormat; 64],
}

impl Default for IdentifyNamespace {
    fn default() -> Self {
        Self {
            nsze: 0,
            ncap: 0,
            nuse: 0,
            nsfeat: 0,
            nlbaf_z: 0,
            flbas: 0,
            mc: 0,
            dpc: 0,
            dps: 0,
            nmic: 0,
            dlfeat: 0,
            nguid: [0; 16],
            eui64: [0; 8],
            lbaf: [LbaFormat::default(); 64],
        }
    }
}

impl IdentifyNamespace {
    /// Parses a 4096-byte page. An inactive namespace reads as all zeroes, which parses.
    ///
    /// # Errors
    /// [`ShortPage`] if `b` is shorter than 4096 bytes.
    pub fn parse(b: &[u8]) -> Result<Self, ShortPage> {
        if b.len() < IDENTIFY_LEN {
            return Err(ShortPage {
                what: "Identify Namespace",
                got: b.len(),
                need: IDENTIFY_LEN,
            });
        }
        let mut lbaf = [LbaFormat::default(); 64];
        for (i, f) in lbaf.iter_mut().enumerate() {
            *f = LbaFormat::from_dword(u32_at(b, 128 + 4 * i));
        }
        Ok(Self {
            nsze: u64_at(b, 0),
            ncap: u64_at(b, 8),
            nuse: u64_at(b, 16),
            nsfeat: u8_at(b, 24),
            nlbaf_z: u8_at(b, 25),
            flbas: u8_at(b, 26),
            mc: u8_at(b, 27),
            dpc: u8_at(b, 28),
            dps: u8_at(b, 29),
            nmic: u8_at(b, 30),
            dlfeat: u8_at(b, 33),
            nguid: array_at(b, 104),
            eui64: array_at(b, 120),
            lbaf,
        })
    }

    /// Encodes into a page of at least 4096 bytes.
    pub fn encode(&self, b: &mut [u8]) {
        put(b, 0, &self.nsze.to_le_bytes());
        put(b, 8, &self.ncap.to_le_bytes());
        put(b, 16, &self.nuse.to_le_bytes());
        put(
            b,
            24,
            &[
                self.nsfeat,
                self.nlbaf_z,
                self.flbas,
                self.mc,
                self.dpc,
                self.dps,
                self.nmic,
            ],
        );
        put(b, 33, &[self.dlfeat]);
        put(b, 104, &self.nguid);
        put(b, 120, &self.eui64);
        for (i, f) in self.lbaf.iter().enumerate() {
            put(b, 128 + 4 * i, &f.to_dword().to_le_bytes());
        }
    }

    /// The index of the LBA format in use (FLBAS bits 3:0, plus bits 6:5 as the high bits
    /// when more than 16 formats exist).
    pub fn format_index(&self) -> usize {
        let lo = (self.flbas & 0xF) as usize;
        if self.nlbaf_z >= 16 {
            lo | (((self.flbas >> 5) & 3) as usize) << 4
        } else {
            lo
        }
    }

    /// The LBA format in use.
    pub fn current_format(&self) -> LbaFormat {
        self.lbaf
            .get(self.format_index())
            .copied()
            .unwrap_or_default()
    }

    /// LBA data size in bytes of the format in use, or `None` if it is invalid.
    pub fn lba_size(&self) -> Option<u32> {
        self.current_format().data_size()
    }

    /// True if every field is zero (what an inactive NSID returns, §5.1.13.2.1).
    pub fn is_inactive(&self) -> bool {
        self.nsze == 0
            && self.ncap == 0
            && self.nuse == 0
            && self.lbaf.iter().all(|f| f.to_dword() == 0)
    }
}

/// The active namespace ID list (CNS 02h, §5.1.13.2.2): up to 1024 NSIDs in increasing
/// order, the rest zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceList {
    ids: [u32; 1024],
    len: usize,
}

impl NamespaceList {
    /// Parses the list; it ends at the first zero entry. Entries that do not increase are a
    /// device error and end the list there too (reported by [`NamespaceList::well_formed`]).
    pub fn parse(b: &[u8]) -> Self {
        let mut ids = [0u32; 1024];
        let mut len = 0;
        let mut prev = 0;
        for i in 0..1024 {
            let id = u32_at(b, 4 * i);
            if id == 0 || id <= prev {
                break;
            }
            ids[len] = id;
            len += 1;
            prev = id;
        }
        Self { ids, len }
    }
    /// True if the page had increasing IDs followed only by zeroes.
    pub fn well_formed(b: &[u8]) -> bool {
        let mut prev = 0;
        let mut ended = false;
        for i in 0..1024 {
            let id = u32_at(b, 4 * i);
            if ended && id != 0 {
                return false;
            }
            if id == 0 {
                ended = true;
            } else if id <= prev || id == 0xFFFF_FFFF {
                return false;
            }
            prev = id;
        }
        true
    }
    /// Encodes `ids` (sorted by the caller) into a page.
    pub fn encode(ids: &[u32], b: &mut [u8]) {
        for (i, id) in ids.iter().take(1024).enumerate() {
            put(b, 4 * i, &id.to_le_bytes());
        }
    }
    /// The NSIDs.
    pub fn ids(&self) -> &[u32] {
        &self.ids[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_roundtrip_and_offsets() {
        let id = IdentifyController {
            vid: 0x1b36,
            sn: AsciiField::from_str_padded("SIM0001"),
            mn: AsciiField::from_str_padded("Model"),
            fr: AsciiField::from_str_padded("1.0"),
            mdts: 5,
            ver: 0x0002_0000,
            nn: 4,
            oncs: 0x8d,
            sqes: 0x66,
            cqes: 0x44,
            ..Default::default()
        };
        let mut page = [0u8; 4096];
        id.encode(&mut page);
        assert_eq!(&page[0..2], &[0x36, 0x1b]);
        assert_eq!(page[77], 5);
        assert_eq!(&page[516..520], &4u32.to_le_bytes());
        assert_eq!(page[512], 0x66);
        assert_eq!(IdentifyController::parse(&page).unwrap(), id);
        assert_eq!(id.sn.as_str(), "SIM0001");
        assert_eq!(id.max_transfer_bytes(0), Some(128 * 1024));
        assert!(IdentifyController::parse(&page[..100]).is_err());
    }

    #[test]
    fn namespace_format() {
        let mut ns = IdentifyNamespace {
            nsze: 100,
            ncap: 100,
            nlbaf_z: 1,
            flbas: 1,
            ..Default::default()
        };
        ns.lbaf[0] = LbaFormat {
            ms: 0,
            lbads: 9,
            rp: 0,
        };
        ns.lbaf[1] = LbaFormat {
            ms: 0,
            lbads: 12,
            rp: 0,
        };
        let mut page = [0u8; 4096];
        ns.encode(&mut page);
        assert_eq!(page[26], 1);
        assert_eq!(&page[132..136], &(12u32 << 16).to_le_bytes());
        let p = IdentifyNamespace::parse(&page).unwrap();
        assert_eq!(p, ns);
        assert_eq!(p.lba_size(), Some(4096));
        assert!(IdentifyNamespace::parse(&[0u8; 4096])
            .unwrap()
            .is_inactive());
        assert_eq!(LbaFormat::from_dword(0x0003_0000).data_size(), None);
    }

    #[test]
    fn ns_list() {
        let mut page = [0u8; 4096];
        NamespaceList::encode(&[1, 2, 5], &mut page);
        assert_eq!(NamespaceList::parse(&page).ids(), &[1, 2, 5]);
        assert!(NamespaceList::well_formed(&page));
        page[100] = 1;
        assert!(!NamespaceList::well_formed(&page));
        assert_eq!(NamespaceList::parse(&page).ids(), &[1, 2, 5]);
    }
}

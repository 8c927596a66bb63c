//! `identify`: every page the device can return for Identify (Controller, Namespace, active
//! namespace list) and Get Log Page (Error Information, SMART / Health, Firmware Slot) parses
//! from any number of bytes without panicking; short pages are refused exactly when they are
//! short; what parses re-encodes to the same bytes (reserved bits aside) and re-parses to the
//! same value; the derived sizes (LBA size, MDTS, namespace bytes, PRP list pages) never
//! overflow.
//!
//! Input layout: byte 0 selects the page (bits 2:0) and whether to zero-pad the rest of the
//! input to a full page (bit 7); byte 1 is an MPSMIN value; the rest is the page.

use nvme_core::prp;
use nvme_core::spec::identify::IDENTIFY_LEN;
use nvme_core::spec::{
    AsciiField, ErrorLogEntry, FirmwareSlotLog, IdentifyController, IdentifyNamespace, LbaFormat,
    NamespaceList, ShortPage, SmartLog, PAGE_SIZE,
};

/// Which structure the page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// Identify Controller (CNS 01h).
    Controller,
    /// Identify Namespace (CNS 00h).
    Namespace,
    /// Active namespace ID list (CNS 02h).
    NamespaceList,
    /// SMART / Health Information (LID 02h).
    Smart,
    /// Error Information (LID 01h), any number of entries.
    ErrorLog,
    /// Firmware Slot Information (LID 03h).
    FirmwareSlot,
}

impl PageKind {
    /// From the selector byte.
    pub fn from_selector(b: u8) -> Self {
        match b & 7 {
            0 | 6 => Self::Controller,
            1 | 7 => Self::Namespace,
            2 => Self::NamespaceList,
            3 => Self::Smart,
            4 => Self::ErrorLog,
            _ => Self::FirmwareSlot,
        }
    }
    /// The selector byte for this kind.
    pub fn selector(self) -> u8 {
        match self {
            Self::Controller => 0,
            Self::Namespace => 1,
            Self::NamespaceList => 2,
            Self::Smart => 3,
            Self::ErrorLog => 4,
            Self::FirmwareSlot => 5,
        }
    }
    /// Bytes a full page has.
    pub fn full_len(self) -> usize {
        match self {
            Self::Controller | Self::Namespace | Self::NamespaceList => IDENTIFY_LEN,
            Self::Smart | Self::FirmwareSlot => 512,
            Self::ErrorLog => 4 * ErrorLogEntry::LEN,
        }
    }
}

fn check_ascii<const N: usize>(f: &AsciiField<N>) {
    let s = f.as_str();
    assert!(s.len() <= N);
    assert!(
        s.bytes().all(|c| (0x20..0x7F).contains(&c)),
        "non-printable byte in {s:?}"
    );
    assert!(!s.ends_with(' '));
    assert_eq!(s.as_bytes(), &f.0[..s.len()], "as_str must be a prefix");
    assert_eq!(format!("{f}"), s);
    let _ = format!("{f:?}");
}

/// Byte comparison that names the first difference instead of printing whole pages.
fn same_bytes(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: byte {i} is {:#04x}, expected {:#04x}",
            got[i], want[i]
        );
    }
}

fn check_short(e: ShortPage, got: usize, need: usize) {
    assert_eq!((e.got, e.need), (got, need));
    assert!(got < need);
    let msg = format!("{e}");
    assert!(msg.contains(&got.to_string()) && msg.contains(&need.to_string()));
}

/// MDTS helper against an independent computation in u128.
fn check_mdts(id: &IdentifyController, mpsmin: u8) {
    let got = id.max_transfer_bytes(mpsmin);
    if id.mdts == 0 {
        assert_eq!(got, None);
        return;
    }
    let shift = 12u32 + mpsmin as u32 + id.mdts as u32;
    let exact: Option<u64> = if shift < 64 {
        u64::try_from(1u128 << shift).ok()
    } else {
        None
    };
    let v = got.expect("MDTS > 0 is a limit");
    match exact {
        // Exact where it fits (the helper saturates from 2^63 on, which is no real limit).
        Some(e) if shift < 63 => assert_eq!(v, e),
        _ => assert_eq!(v, u64::MAX),
    }
    // What the controller derives from it never overflows either.
    let max_transfer = (2u64 * 1024 * 1024).min(v).max(PAGE_SIZE as u64) as usize;
    let lists = prp::max_list_pages(max_transfer, PAGE_SIZE);
    let worst = prp::page_count(PAGE_SIZE as u64 - 4, max_transfer, PAGE_SIZE);
    assert_eq!(lists, prp::list_pages_needed(worst, PAGE_SIZE));
    let _ = prp::max_list_pages(v.min(usize::MAX as u64) as usize, PAGE_SIZE);
}

fn check_controller(page: &[u8], mpsmin: u8) {
    let parsed = IdentifyController::parse(page);
    if page.len() < IDENTIFY_LEN {
        check_short(
            parsed.expect_err("short page parsed"),
            page.len(),
            IDENTIFY_LEN,
        );
        return;
    }
    let id = parsed.expect("a full page always parses");
    // Encoding over the original bytes changes nothing: parse and encode use the same offsets.
    let mut again = page.to_vec();
    id.encode(&mut again);
    same_bytes(&again, page, "encode(parse(page)) over the page");
    // Encoding into a blank page re-parses to the same value.
    let mut blank = vec![0u8; IDENTIFY_LEN];
    id.encode(&mut blank);
    assert_eq!(IdentifyController::parse(&blank).unwrap(), id);
    // A short destination is not an error and does not panic.
    id.encode(&mut blank[..page.len() % IDENTIFY_LEN]);
    check_ascii(&id.sn);
    check_ascii(&id.mn);
    check_ascii(&id.fr);
    check_ascii(&id.subnqn);
    for m in [0, 1, 4, 15, mpsmin] {
        check_mdts(&id, m);
    }
    for bit in 0..16 {
        assert_eq!(id.supports(1 << bit), id.oncs & (1 << bit) != 0);
    }
    let _ = format!("{id:?}");
}

fn check_lbaf(f: LbaFormat, dword: u32) {
    assert_eq!(f.ms, dword as u16);
    assert_eq!(f.lbads, (dword >> 16) as u8);
    assert_eq!(f.rp, ((dword >> 24) & 3) as u8);
    // Bits 31:26 are reserved: the only bits a round trip may lose.
    assert_eq!(f.to_dword(), dword & 0x03FF_FFFF);
    match f.data_size() {
        Some(s) => {
            assert!((9..=31).contains(&f.lbads));
            assert_eq!(s, 1u32 << f.lbads);
        }
        None => assert!(f.lbads < 9 || f.lbads > 31),
    }
}

fn check_namespace(page: &[u8], mpsmin: u8) {
    let parsed = IdentifyNamespace::parse(page);
    if page.len() < IDENTIFY_LEN {
        check_short(
            parsed.expect_err("short page parsed"),
            page.len(),
            IDENTIFY_LEN,
        );
        return;
    }
    let ns = parsed.expect("a full page always parses");
    for (i, f) in ns.lbaf.iter().enumerate() {
        let off = 128 + 4 * i;
        check_lbaf(
            *f,
            u32::from_le_bytes([page[off], page[off + 1], page[off + 2], page[off + 3]]),
        );
    }
    // Encoding over the original only clears the reserved bits 31:26 of each LBA format.
    let mut again = page.to_vec();
    ns.encode(&mut again);
    let mut expect = page.to_vec();
    for i in 0..64 {
        expect[128 + 4 * i + 3] &= 0x03;
    }
    same_bytes(
        &again,
        &expect,
        "encode(parse(page)) beyond the reserved bits",
    );
    let mut blank = vec![0u8; IDENTIFY_LEN];
    ns.encode(&mut blank);
    assert_eq!(IdentifyNamespace::parse(&blank).unwrap(), ns);
    ns.encode(&mut blank[..page.len() % IDENTIFY_LEN]);
    // Format index and LBA size: never out of the table, never overflowing.
    let idx = ns.format_index();
    assert!(idx < 64);
    if ns.nlbaf_z < 16 {
        assert_eq!(idx, (ns.flbas & 0xF) as usize);
    }
    assert_eq!(ns.current_format(), ns.lbaf[idx]);
    assert_eq!(ns.lba_size(), ns.lbaf[idx].data_size());
    assert_eq!(
        ns.is_inactive(),
        ns.nsze == 0 && ns.ncap == 0 && ns.nuse == 0 && ns.lbaf.iter().all(|f| f.to_dword() == 0)
    );
    let _ = (format!("{ns:?}"), mpsmin);
}

fn check_ns_list(page: &[u8]) {
    let list = NamespaceList::parse(page);
    let ids = list.ids();
    assert!(ids.len() <= 1024);
    assert!(ids.len() <= page.len() / 4, "ids beyond the page");
    assert!(ids.iter().all(|&id| id != 0));
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing");
    for (i, id) in ids.iter().enumerate() {
        let off = 4 * i;
        assert_eq!(
            *id,
            u32::from_le_bytes([page[off], page[off + 1], page[off + 2], page[off + 3]])
        );
    }
    let mut blank = vec![0u8; IDENTIFY_LEN];
    NamespaceList::encode(ids, &mut blank);
    assert_eq!(NamespaceList::parse(&blank).ids(), ids);
    if NamespaceList::well_formed(page) {
        // A well-formed page is its ids followed by zeroes (within the 4096 bytes; a trailing
        // partial dword is not an entry and reads as zero).
        let mut full = page[..page.len() / 4 * 4].to_vec();
        full.resize(IDENTIFY_LEN.max(full.len()), 0);
        same_bytes(
            &blank,
            &full[..IDENTIFY_LEN],
            "encode(ids) of a well-formed list",
        );
        assert!(!ids.contains(&0xFFFF_FFFF));
    }
    let _ = format!("{list:?}");
}

fn check_smart(page: &[u8]) {
    let parsed = SmartLog::parse(page);
    if page.len() < SmartLog::LEN {
        check_short(
            parsed.expect_err("short page parsed"),
            page.len(),
            SmartLog::LEN,
        );
        return;
    }
    let s = parsed.expect("a full page always parses");
    let mut again = page.to_vec();
    s.encode(&mut again);
    same_bytes(&again, page, "SMART encode(parse(page))");
    let mut blank = [0u8; SmartLog::LEN];
    s.encode(&mut blank);
    assert_eq!(SmartLog::parse(&blank).unwrap(), s);
    // Data units are thousands of 512-byte units: the byte count saturates, never wraps.
    let _ = s.data_units_read.saturating_mul(512_000);
    let _ = format!("{s:?}");
}

fn check_error_log(page: &[u8]) {
    // Entries are 64 bytes; a trailing partial entry reads as zero past the end.
    for chunk in page.chunks(ErrorLogEntry::LEN) {
        let e = ErrorLogEntry::parse(chunk);
        let mut full = chunk.to_vec();
        full.resize(ErrorLogEntry::LEN, 0);
        if chunk.len() < ErrorLogEntry::LEN {
            // A truncated entry: a field cut by the end reads as zero, whole fields as they
            // are (the documented "short input reads as zero").
            let p = ErrorLogEntry::parse(&full);
            let fits = |end: usize| chunk.len() >= end;
            assert_eq!(e.error_count, if fits(8) { p.error_count } else { 0 });
            assert_eq!(e.cs, if fits(40) { p.cs } else { 0 });
            continue;
        }
        let mut again = full.clone();
        e.encode(&mut again);
        same_bytes(&again, &full, "error entry encode(parse(entry))");
        let mut blank = [0u8; ErrorLogEntry::LEN];
        e.encode(&mut blank);
        assert_eq!(ErrorLogEntry::parse(&blank), e);
        assert_eq!(e.status().bits(), e.status_field >> 1);
        let _ = format!("{e:?} {}", e.status());
    }
    let _ = ErrorLogEntry::parse(&[]);
}

fn check_fw_slot(page: &[u8]) {
    let parsed = FirmwareSlotLog::parse(page);
    if page.len() < FirmwareSlotLog::LEN {
        check_short(
            parsed.expect_err("short page parsed"),
            page.len(),
            FirmwareSlotLog::LEN,
        );
        return;
    }
    let f = parsed.expect("a full page always parses");
    let mut again = page.to_vec();
    f.encode(&mut again);
    same_bytes(&again, page, "firmware slot encode(parse(page))");
    let mut blank = [0u8; FirmwareSlotLog::LEN];
    f.encode(&mut blank);
    assert_eq!(FirmwareSlotLog::parse(&blank).unwrap(), f);
    assert!(f.active_slot() <= 7);
    for r in &f.frs {
        check_ascii(r);
    }
}

/// The fuzz target body.
pub fn run_identify(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (mpsmin, rest) = rest.split_first().map_or((0, rest), |(m, r)| (*m, r));
    let kind = PageKind::from_selector(sel);
    let mut page = rest.to_vec();
    if sel & 0x80 != 0 && page.len() < kind.full_len() {
        page.resize(kind.full_len(), 0);
    }
    match kind {
        PageKind::Controller => check_controller(&page, mpsmin),
        PageKind::Namespace => check_namespace(&page, mpsmin),
        PageKind::NamespaceList => check_ns_list(&page),
        PageKind::Smart => check_smart(&page),
        PageKind::ErrorLog => check_error_log(&page),
        PageKind::FirmwareSlot => check_fw_slot(&page),
    }
}

//! What the type1 IOMMU of a container allows: page sizes and usable I/O virtual address
//! ranges (`VFIO_IOMMU_GET_INFO`, linux/vfio.h: `struct vfio_iommu_type1_info`, capability
//! `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`, kernel ≥ 5.4).

use crate::range::RangeAllocator;

/// The x86 MSI address window (`0xFEE0_0000 ..= 0xFEEF_FFFF`, Intel SDM Vol. 3 §11.11.1 /
/// AMD IOMMU spec): a DMA write there is an interrupt, never memory. Excluded always, even if
/// a kernel's range list were to include it.
pub const MSI_WINDOW: (u64, u64) = (0xFEE0_0000, 0xFEEF_FFFF);

/// The software MSI window the Linux SMMU drivers reserve on arm64 (`MSI_IOVA_BASE`,
/// `0x0800_0000`, 1 MiB): excluded from the conservative default used when the kernel does
/// not report IOVA ranges.
pub const ARM_SW_MSI_WINDOW: (u64, u64) = (0x0800_0000, 0x080F_FFFF);

/// Nothing is placed below 1 MiB: IOVA 0 would make an uninitialised queue base or PRP entry
/// point at valid memory and hide the bug.
pub const IOVA_FLOOR: u64 = 0x10_0000;

/// The conservative default when the IOVA-range capability is absent: 1 MiB up to just below
/// 4 GiB (what every IOMMU and every 32-bit-capable device can address), minus the MSI
/// windows above.
pub const DEFAULT_IOVA_RANGE: (u64, u64) = (IOVA_FLOOR, 0xFFFF_FFFF);

/// Parsed `VFIO_IOMMU_GET_INFO` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IommuInfo {
    /// `iova_pgsizes`: bitmap of supported IOMMU page sizes (bit n set: 2^n bytes). 0 if the
    /// kernel did not set `VFIO_IOMMU_INFO_PGSIZES`.
    pub pgsizes: u64,
    /// The usable IOVA ranges `(start, last)` (inclusive) of the IOVA-range capability, or
    /// `None` if the capability is absent.
    pub iova_ranges: Option<Vec<(u64, u64)>>,
}

const INFO_HDR: usize = 24; // sizeof(struct vfio_iommu_type1_info)
const _: () =
    assert!(size_of::<vfio_bindings::bindings::vfio::vfio_iommu_type1_info>() == INFO_HDR);

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}
fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

impl IommuInfo {
    /// Parses the bytes the kernel wrote: the 24-byte header (`argsz`, `flags`,
    /// `iova_pgsizes`, `cap_offset`, `pad`), then the capability chain (each capability starts
    /// with `struct vfio_info_cap_header { u16 id; u16 version; u32 next; }`, `next` an offset
    /// from the start of the buffer, 0 at the end). Malformed chains end the walk; this never
    /// panics.
    pub fn parse(buf: &[u8]) -> Self {
        use vfio_bindings::bindings::vfio as b;
        let flags = u32_at(buf, 4).unwrap_or(0);
        let pgsizes = if flags & b::VFIO_IOMMU_INFO_PGSIZES != 0 {
            u64_at(buf, 8).unwrap_or(0)
        } else {
            0
        };
        let mut iova_ranges = None;
        if flags & b::VFIO_IOMMU_INFO_CAPS != 0 {
            let mut off = u32_at(buf, 16).unwrap_or(0) as usize;
            let mut hops = 0;
            while off >= INFO_HDR && off < buf.len() && hops < 64 {
                hops += 1;
                let (Some(id), Some(next)) = (u16_at(buf, off), u32_at(buf, off + 4)) else {
                    break;
                };
                if u32::from(id) == b::VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
                    // struct vfio_iommu_type1_info_cap_iova_range: header, u32 nr_iovas,
                    // u32 reserved, then { u64 start; u64 end; } [nr_iovas].
                    let n = u32_at(buf, off + 8).unwrap_or(0) as usize;
                    let mut v = Vec::new();
                    for i in 0..n.min(4096) {
                        let at = off + 16 + i * 16;
                        match (u64_at(buf, at), u64_at(buf, at + 8)) {
                            (Some(s), Some(e)) if s <= e => v.push((s, e)),
                            (Some(_), Some(_)) => {}
                            _ => break,
                        }
                    }
                    iova_ranges = Some(v);
                }
                let next = next as usize;
                if next <= off {
                    break;
                }
                off = next;
            }
        }
        Self {
            pgsizes,
            iova_ranges,
        }
    }

    /// The smallest IOMMU page size (the lowest set bit of `pgsizes`), 4096 if unknown.
    pub fn min_page_size(&self) -> u64 {
        if self.pgsizes == 0 {
            4096
        } else {
            1u64 << self.pgsizes.trailing_zeros()
        }
    }
}

/// The DMA granule: the larger of 4 KiB, the host's base page and the smallest IOMMU page.
pub fn dma_granule(info: &IommuInfo, host_page: usize) -> u64 {
    info.min_page_size().max(host_page as u64).max(4096)
}

/// The IOVA space the allocator may hand out: the kernel's usable ranges (or
/// [`DEFAULT_IOVA_RANGE`] if absent; the boolean says a default was used), minus
/// [`MSI_WINDOW`], minus everything below [`IOVA_FLOOR`], minus the extra `reserved`
/// windows (for instance from sysfs `reserved_regions`), and with each range trimmed to whole
/// `granule`s.
pub(crate) fn usable_iova_space(
    info: &IommuInfo,
    reserved: &[(u64, u64)],
    granule: u64,
) -> (RangeAllocator, bool) {
    let mut space = RangeAllocator::new();
    let defaulted = info.iova_ranges.is_none();
    match &info.iova_ranges {
        Some(ranges) => {
            for &(s, e) in ranges {
                space.add(s, e);
            }
        }
        None => {
            space.add(DEFAULT_IOVA_RANGE.0, DEFAULT_IOVA_RANGE.1);
            space.remove(ARM_SW_MSI_WINDOW.0, ARM_SW_MSI_WINDOW.1);
        }
    }
    space.remove(MSI_WINDOW.0, MSI_WINDOW.1);
    space.remove(0, IOVA_FLOOR - 1);
    for &(s, e) in reserved {
        space.remove(s, e);
    }
    // Trim to whole granules so every allocation is granule-aligned.
    let mut trimmed = RangeAllocator::new();
    for (s, e) in space.intervals() {
        let Some(start) = s.checked_next_multiple_of(granule) else {
            continue;
        };
        let end_excl = e.saturating_add(1) / granule * granule;
        // A range ending at u64::MAX loses its last granule here; that costs nothing.
        if end_excl > start {
            trimmed.add(start, end_excl - 1);
        }
    }
    (trimmed, defaulted)
}

/// The IOVA ranges `(start, last)` the DMA allocator of a platform with this `info` draws
/// from, and whether the default was used: the kernel's usable ranges (or
/// [`DEFAULT_IOVA_RANGE`] if absent), minus [`MSI_WINDOW`], minus everything below
/// [`IOVA_FLOOR`], minus the `reserved` windows, trimmed to whole `granule`s.
pub fn usable_iova_ranges(
    info: &IommuInfo,
    reserved: &[(u64, u64)],
    granule: u64,
) -> (Vec<(u64, u64)>, bool) {
    let (space, defaulted) = usable_iova_space(info, reserved, granule);
    (space.intervals().collect(), defaulted)
}

/// Parses sysfs `/sys/kernel/iommu_groups/N/reserved_regions` ("0x00000000fee00000
/// 0x00000000feefffff msi" per line) into `(start, last)` pairs; unreadable lines are skipped.
pub fn parse_reserved_regions(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let s = u64::from_str_radix(it.next()?.trim_start_matches("0x"), 16).ok()?;
            let e = u64::from_str_radix(it.next()?.trim_start_matches("0x"), 16).ok()?;
            (s <= e).then_some((s, e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds what the kernel writes for the guest of hil-recipe.md: page sizes 0x40201000,
    /// ranges 0–0xfedfffff and 0xfef00000–0x7fffffffff.
    fn guest_info_bytes() -> Vec<u8> {
        let mut b = vec![0u8; 24 + 16 + 2 * 16];
        let argsz = b.len() as u32;
        b[0..4].copy_from_slice(&argsz.to_ne_bytes());
        b[4..8].copy_from_slice(&3u32.to_ne_bytes()); // PGSIZES | CAPS
        b[8..16].copy_from_slice(&0x4020_1000u64.to_ne_bytes());
        b[16..20].copy_from_slice(&24u32.to_ne_bytes());
        b[24..26].copy_from_slice(&1u16.to_ne_bytes()); // IOVA_RANGE
        b[26..28].copy_from_slice(&1u16.to_ne_bytes());
        b[28..32].copy_from_slice(&0u32.to_ne_bytes());
        b[32..36].copy_from_slice(&2u32.to_ne_bytes());
        let r = [(0u64, 0xfedf_ffffu64), (0xfef0_0000, 0x7f_ffff_ffff)];
        for (i, (s, e)) in r.iter().enumerate() {
            let at = 40 + i * 16;
            b[at..at + 8].copy_from_slice(&s.to_ne_bytes());
            b[at + 8..at + 16].copy_from_slice(&e.to_ne_bytes());
        }
        b
    }

    #[test]
    fn parses_the_guest_info() {
        let info = IommuInfo::parse(&guest_info_bytes());
        assert_eq!(info.pgsizes, 0x4020_1000);
        assert_eq!(info.min_page_size(), 4096);
        assert_eq!(
            info.iova_ranges,
            Some(vec![(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)])
        );
        assert_eq!(dma_granule(&info, 4096), 4096);
        assert_eq!(dma_granule(&info, 65536), 65536);
        let (space, defaulted) = usable_iova_space(&info, &[], 4096);
        assert!(!defaulted);
        let iv: Vec<_> = space.intervals().collect();
        assert_eq!(
            iv,
            vec![(0x10_0000, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)]
        );
    }

    #[test]
    fn msi_window_excluded_even_if_reported_usable() {
        let info = IommuInfo {
            pgsizes: 0x1000,
            iova_ranges: Some(vec![(0, u64::MAX)]),
        };
        let (space, _) = usable_iova_space(&info, &[], 4096);
        assert!(!space.is_free(MSI_WINDOW.0, MSI_WINDOW.0));
        assert!(!space.is_free(MSI_WINDOW.1, MSI_WINDOW.1));
        assert!(space.is_free(0xfef0_0000, 0xfef0_0fff));
        assert!(!space.is_free(0, 0xfff));
    }

    #[test]
    fn absent_capability_uses_conservative_default() {
        let info = IommuInfo::parse(
            &guest_info_bytes()[..24]
                .iter()
                .enumerate()
                .map(|(i, &v)| if i == 4 { 1 } else { v })
                .collect::<Vec<_>>(),
        );
        assert_eq!(info.iova_ranges, None);
        let (space, defaulted) = usable_iova_space(&info, &[(0x4000_0000, 0x4fff_ffff)], 4096);
        assert!(defaulted);
        let iv: Vec<_> = space.intervals().collect();
        assert_eq!(
            iv,
            vec![
                (0x10_0000, 0x07ff_ffff),
                (0x0810_0000, 0x3fff_ffff),
                (0x5000_0000, 0xfedf_ffff),
                (0xfef0_0000, 0xffff_ffff)
            ]
        );
    }

    #[test]
    fn granule_trims_ranges_and_malformed_chains_do_not_panic() {
        let info = IommuInfo {
            pgsizes: 0x1_0000,
            iova_ranges: Some(vec![(0x10_1000, 0x12_0fff)]),
        };
        let (space, _) = usable_iova_space(&info, &[], 0x1_0000);
        assert_eq!(
            space.intervals().collect::<Vec<_>>(),
            vec![(0x11_0000, 0x11_ffff)]
        );
        // Truncated and looping chains.
        let mut b = guest_info_bytes();
        for n in 0..b.len() {
            let _ = IommuInfo::parse(&b[..n]);
        }
        b[28..32].copy_from_slice(&24u32.to_ne_bytes()); // next points at itself
        let _ = IommuInfo::parse(&b);
        b[32..36].copy_from_slice(&u32::MAX.to_ne_bytes()); // absurd nr_iovas
        let _ = IommuInfo::parse(&b);
    }

    #[test]
    fn reserved_regions_file() {
        let t = "0x00000000fee00000 0x00000000feefffff msi\n0x0000000008000000 0x00000000080fffff msi\ngarbage\n";
        assert_eq!(
            parse_reserved_regions(t),
            vec![(0xfee0_0000, 0xfeef_ffff), (0x0800_0000, 0x080f_ffff)]
        );
    }
}

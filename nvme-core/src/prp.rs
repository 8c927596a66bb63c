//! Physical Region Page entries and lists (NVMe Base §4.3.1 "Physical Region Page Entry and
//! List").
//!
//! - PRP1 holds the first page address and may carry a byte offset, which must be dword
//!   aligned (§4.3.1: "bits 1:0 shall be cleared to 00b").
//! - If the transfer ends within the page after PRP1's, PRP2 is that page's address (offset 0).
//! - Otherwise PRP2 points to a PRP list: qword entries with offset 0, one per page. When more
//!   entries are needed than fit in one list page, the last entry of a list page points to the
//!   next list page (chaining).
//! - Lists are minimally sized: no more list pages than the entries need.
//!
//! [`build`] is a pure function over a [`PrpListPages`] sink, so the same code serves the
//! queues (DMA memory) and the property tests (plain vectors).

/// Where PRP list pages live. Page `i` has bus address `iova(i)`, page aligned.
pub trait PrpListPages {
    /// Number of list pages available.
    fn count(&self) -> usize;
    /// Bus address of list page `i` (`i < count()`).
    fn iova(&self, i: usize) -> u64;
    /// Writes entry `index` of list page `page`.
    fn write(&mut self, page: usize, index: usize, value: u64);
}

/// No list pages: transfers of at most two memory pages only.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoListPages;

impl PrpListPages for NoListPages {
    fn count(&self) -> usize {
        0
    }
    fn iova(&self, _: usize) -> u64 {
        0
    }
    fn write(&mut self, _: usize, _: usize, _: u64) {}
}

/// The PRP fields of a command, as built by [`build`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prps {
    /// PRP1 (the first data pointer, with offset).
    pub prp1: u64,
    /// PRP2: 0, the second page, or a list pointer.
    pub prp2: u64,
    /// How many list pages were used.
    pub list_pages: usize,
    /// Qwords written to the list pages, in list order (page 0 entry 0 first, chain
    /// pointers included): the list occupies a prefix of this length.
    pub list_len: usize,
}

/// Why PRPs could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrpError {
    /// Zero-length transfer.
    Empty,
    /// The buffer address is not dword aligned.
    Misaligned,
    /// Not enough list pages for the transfer.
    TooLong {
        /// List pages needed.
        needed: usize,
        /// List pages available.
        available: usize,
    },
    /// The page size is not a power of two of at least 4 KiB... or the address overflows.
    Invalid,
}

/// Number of memory pages the transfer touches: one PRP entry each.
#[inline]
pub fn page_count(addr: u64, len: usize, page: usize) -> usize {
    if len == 0 || page == 0 {
        return 0;
    }
    let off = (addr % page as u64) as usize;
    off.saturating_add(len).div_ceil(page)
}

/// Number of list pages a transfer of `entries` PRP entries needs (§4.3.1): none for one or
/// two entries, else the minimal chain where every list page but the last spends its final
/// entry on the pointer to the next.
pub fn list_pages_needed(entries: usize, page: usize) -> usize {
    if entries <= 2 {
        return 0;
    }
    let per = page / 8;
    let n = entries - 1; // PRP1 is not in the list
    if n <= per {
        1
    } else {
        1 + (n - per).div_ceil(per - 1)
    }
}

/// List pages needed by the worst transfer of `max_len` bytes at a dword-aligned offset.
pub fn max_list_pages(max_len: usize, page: usize) -> usize {
    // The worst case starts 4 bytes before a page boundary.
    list_pages_needed(page_count(page as u64 - 4, max_len, page), page)
}

/// Builds PRP1/PRP2 and, if needed, the PRP list for `len` bytes at bus address `addr`, with
/// memory page size `page` (CC.MPS).
///
/// # Errors
/// [`PrpError`] for an empty or misaligned transfer, or too few list pages.
///
/// Inlined, so that with a constant `page` (the core's [`crate::spec::PAGE_SIZE`]) the page
/// arithmetic becomes masks and shifts and the checks of `page` vanish.
#[inline]
pub fn build<L: PrpListPages + ?Sized>(
    addr: u64,
    len: usize,
    page: usize,
    lists: &mut L,
) -> Result<Prps, PrpError> {
    if len == 0 {
        return Err(PrpError::Empty);
    }
    if page < 4096 || !page.is_power_of_two() {
        return Err(PrpError::Invalid);
    }
    if addr & 3 != 0 {
        return Err(PrpError::Misaligned);
    }
    if addr.checked_add(len as u64).is_none() {
        return Err(PrpError::Invalid);
    }
    let pg = page as u64;
    let entries = page_count(addr, len, page);
    let first_page = addr & !(pg - 1);
    match entries {
        1 => {
            return Ok(Prps {
                prp1: addr,
                prp2: 0,
                list_pages: 0,
                list_len: 0,
            })
        }
        2 => {
            return Ok(Prps {
                prp1: addr,
                prp2: first_page + pg,
                list_pages: 0,
                list_len: 0,
            })
        }
        _ => {}
    }
    let needed = list_pages_needed(entries, page);
    if needed > lists.count() {
        return Err(PrpError::TooLong {
            needed,
            available: lists.count(),
        });
    }
    let per = page / 8;
    let mut list_page = 0;
    let mut index = 0;
    for e in 1..entries {
        let remaining = entries - e; // entries still to place, this one included
        if index == per - 1 && remaining > 1 {
            // Last slot of a list page with more than one entry left: chain (§4.3.1).
            lists.write(list_page, index, lists.iova(list_page + 1));
            list_page += 1;
            index = 0;
        }
        lists.write(list_page, index, first_page + e as u64 * pg);
        index += 1;
    }
    Ok(Prps {
        prp1: addr,
        prp2: lists.iova(0),
        list_pages: list_page + 1,
        list_len: list_page * per + index,
    })
}

/// The common case of [`build`] for the core's memory page size ([`crate::spec::PAGE_SIZE`]):
/// a valid transfer that touches one or two memory pages needs no list (§4.3.1: PRP2 is 0 or
/// the second page's address), computed inline with masks. `None` for everything else (lists,
/// and every error), which [`build`] handles; where this returns `Some`, it is what [`build`]
/// returns.
#[inline(always)]
pub(crate) fn build_small(addr: u64, len: usize) -> Option<Prps> {
    const PG: u64 = crate::spec::PAGE_SIZE as u64;
    let span = (addr & (PG - 1)).wrapping_add(len as u64);
    if len == 0 || addr & 3 != 0 || span > 2 * PG || addr.checked_add(len as u64).is_none() {
        return None;
    }
    Some(Prps {
        prp1: addr,
        prp2: if span <= PG {
            0
        } else {
            (addr & !(PG - 1)) + PG
        },
        list_pages: 0,
        list_len: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    const PAGE: usize = 4096;

    struct VecLists {
        base: u64,
        pages: Vec<Vec<u64>>,
    }
    impl VecLists {
        fn new(n: usize) -> Self {
            Self {
                base: 0x10_0000_0000,
                pages: vec![vec![0; PAGE / 8]; n],
            }
        }
    }
    impl PrpListPages for VecLists {
        fn count(&self) -> usize {
            self.pages.len()
        }
        fn iova(&self, i: usize) -> u64 {
            self.base + (i * PAGE) as u64
        }
        fn write(&mut self, page: usize, index: usize, value: u64) {
            self.pages[page][index] = value;
        }
    }

    /// Walks the PRPs as a controller would and returns the data entries in order.
    fn walk(p: &Prps, addr: u64, len: usize, lists: &VecLists) -> Vec<u64> {
        let entries = page_count(addr, len, PAGE);
        let mut out = vec![p.prp1];
        if entries == 2 {
            out.push(p.prp2);
        } else if entries > 2 {
            let mut page = ((p.prp2 - lists.base) / PAGE as u64) as usize;
            let mut idx = 0;
            while out.len() < entries {
                let v = lists.pages[page][idx];
                if idx == PAGE / 8 - 1 && entries - out.len() > 1 {
                    page = ((v - lists.base) / PAGE as u64) as usize;
                    idx = 0;
                    continue;
                }
                out.push(v);
                idx += 1;
            }
        }
        out
    }

    /// `list_len` counts every qword written, chain pointers included: 600 pages need 599
    /// list entries, 511 plus a chain pointer on the first list page and 88 on the second.
    #[test]
    fn list_len_counts_the_written_prefix() {
        let mut l = VecLists::new(4);
        assert_eq!(build(0x1000, 3 * PAGE, PAGE, &mut l).unwrap().list_len, 2);
        let p = build(0x1000, 600 * PAGE, PAGE, &mut l).unwrap();
        assert_eq!((p.list_pages, p.list_len), (2, 512 + 88));
    }

    #[test]
    fn small_cases() {
        let mut l = VecLists::new(4);
        assert_eq!(
            build(0x1000, 4096, PAGE, &mut l).unwrap(),
            Prps {
                prp1: 0x1000,
                prp2: 0,
                list_pages: 0,
                list_len: 0
            }
        );
        assert_eq!(
            build(0x1004, 4096, PAGE, &mut l).unwrap(),
            Prps {
                prp1: 0x1004,
                prp2: 0x2000,
                list_pages: 0,
                list_len: 0
            }
        );
        assert_eq!(build(0x1000, 8192, PAGE, &mut l).unwrap().prp2, 0x2000);
        let p = build(0x1000, 12288, PAGE, &mut l).unwrap();
        assert_eq!(p.prp2, l.iova(0));
        assert_eq!(&l.pages[0][..2], &[0x2000, 0x3000]);
        assert_eq!(build(0x1002, 16, PAGE, &mut l), Err(PrpError::Misaligned));
        assert_eq!(build(0x1000, 0, PAGE, &mut l), Err(PrpError::Empty));
    }

    #[test]
    fn chaining_boundaries() {
        // 513 data entries: PRP1 + 512 in the list => exactly one full list page.
        assert_eq!(list_pages_needed(513, PAGE), 1);
        // 514: the list needs 513 entries => two pages (511 + pointer, then 2).
        assert_eq!(list_pages_needed(514, PAGE), 2);
        let mut l = VecLists::new(3);
        let len = 513 * PAGE;
        let p = build(0x20_0000, len, PAGE, &mut l).unwrap();
        assert_eq!(p.list_pages, 1);
        let len = 514 * PAGE;
        let p = build(0x20_0000, len, PAGE, &mut l).unwrap();
        assert_eq!(p.list_pages, 2);
        assert_eq!(l.pages[0][511], l.iova(1));
        assert_eq!(walk(&p, 0x20_0000, len, &l).len(), 514);
        let mut small = VecLists::new(1);
        assert_eq!(
            build(0x20_0000, len, PAGE, &mut small),
            Err(PrpError::TooLong {
                needed: 2,
                available: 1
            })
        );
    }

    /// Under Miri (no file system, every step interpreted) a handful of cases, no persistence.
    fn config() -> ProptestConfig {
        if cfg!(miri) {
            ProptestConfig {
                cases: 4,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        } else {
            ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]
        /// The inline one- and two-page path agrees with the general builder everywhere,
        /// including misaligned, empty, overflowing and list-needing transfers.
        #[test]
        fn small_path_agrees_with_build(
            addr in prop_oneof![any::<u64>(), (0u64..64).prop_map(|x| u64::MAX - x * 4), 0u64..0x10_0000],
            len in prop_oneof![0usize..(3 * PAGE), any::<usize>()],
        ) {
            let mut l = VecLists::new(2);
            let full = build(addr, len, PAGE, &mut l);
            match build_small(addr, len) {
                Some(p) => prop_assert_eq!(Ok(p), full),
                // Only lists and errors are left to `build`.
                None => prop_assert!(full.is_err() || full.is_ok_and(|p| p.list_pages > 0)),
            }
        }

        #[test]
        fn prps_cover_the_buffer(page_idx in 1u64..1_000_000, off_dw in 0u64..1024, len in 1usize..(3 * 1024 * 1024)) {
            let addr = page_idx * PAGE as u64 + off_dw * 4;
            let mut l = VecLists::new(max_list_pages(3 * 1024 * 1024, PAGE));
            let p = build(addr, len, PAGE, &mut l).unwrap();
            let entries = walk(&p, addr, len, &l);
            // One entry per page touched, PRP1 is the buffer start with its offset.
            prop_assert_eq!(entries.len(), page_count(addr, len, PAGE));
            prop_assert_eq!(entries[0], addr);
            // Every other entry is page aligned and the pages are consecutive.
            for (i, e) in entries.iter().enumerate().skip(1) {
                prop_assert_eq!(e % PAGE as u64, 0);
                prop_assert_eq!(*e, (addr & !(PAGE as u64 - 1)) + (i * PAGE) as u64);
            }
            // Minimal list: exactly the pages needed.
            prop_assert_eq!(p.list_pages, list_pages_needed(entries.len(), PAGE));
            if entries.len() <= 2 {
                prop_assert_eq!(p.list_pages, 0);
            } else {
                prop_assert_eq!(p.prp2 % 8, 0);
            }
            // The bytes covered equal the transfer: first page partial, last page partial.
            let first = PAGE - (addr % PAGE as u64) as usize;
            let covered = first + (entries.len() - 1) * PAGE;
            prop_assert!(covered >= len && covered - len < PAGE);
        }
    }
}

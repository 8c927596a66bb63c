//! `prp`: [`nvme_core::prp::build`] for any address, length, page size and number of list
//! pages, checked against the rules of NVMe Base §4.3.1 by walking the result as a controller
//! would:
//! - PRP1 is the buffer address including its offset, which must be dword aligned;
//! - every other entry is page aligned (offset 0) and the pages are consecutive;
//! - one or two pages need no list (PRP2 is 0 or the second page); more pages put a list
//!   pointer in PRP2;
//! - a list page spends its last entry on a pointer to the next list page only when more than
//!   one entry remains; lists are minimal;
//! - `TooLong` exactly when the available list pages do not suffice; nothing is written
//!   outside the entries the walk reads.

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use nvme_core::prp::{self, PrpError, PrpListPages, Prps};

/// One input.
#[derive(Debug, Arbitrary)]
pub struct PrpInput {
    /// Buffer bus address.
    pub addr: u64,
    /// Transfer length: low 24 bits usually, sometimes the full value.
    pub len: u64,
    /// Page size selector: 0..=15 gives `4096 << n`; other values give odd sizes.
    pub page_sel: u8,
    /// List pages available.
    pub list_pages: u8,
    /// Seed for the (non-contiguous) list page addresses.
    pub list_seed: u64,
}

/// List pages with scattered, page-aligned addresses; records every write.
struct Lists {
    page: usize,
    iovas: Vec<u64>,
    written: HashMap<(usize, usize), u64>,
}

impl PrpListPages for Lists {
    fn count(&self) -> usize {
        self.iovas.len()
    }
    fn iova(&self, i: usize) -> u64 {
        self.iovas[i]
    }
    fn write(&mut self, page: usize, index: usize, value: u64) {
        assert!(
            page < self.iovas.len(),
            "write to list page {page} of {}",
            self.iovas.len()
        );
        assert!(index < self.page / 8, "write past the end of a list page");
        assert!(
            self.written.insert((page, index), value).is_none(),
            "entry {page}/{index} written twice"
        );
    }
}

fn page_size(sel: u8) -> usize {
    match sel {
        0..=15 => 4096usize << sel,
        16..=19 => 4096 - 4 * (sel as usize - 15), // below the minimum
        20..=23 => 4096 * 3 + (sel as usize - 20), // not a power of two
        24 => 0,
        25 => 2048,
        _ => 4096,
    }
}

/// Minimal number of list pages for `n` list entries, from the chaining rule: `p` pages hold
/// `p * per - (p - 1)` entries (every page but the last gives one entry to the chain), so the
/// least `p` with `p * (per - 1) >= n - 1`.
fn minimal_list_pages(n: usize, per: usize) -> usize {
    (n.saturating_sub(1)).div_ceil(per - 1).max(1)
}

/// Walks PRPs as a controller would; returns the data page addresses after PRP1.
fn walk(p: &Prps, entries: usize, lists: &Lists) -> Vec<u64> {
    let per = lists.page / 8;
    let mut out = Vec::with_capacity(entries);
    match entries {
        1 => assert_eq!(p.prp2, 0, "one page: PRP2 must be 0"),
        2 => out.push(p.prp2),
        _ => {
            assert_eq!(p.prp2 % 8, 0, "a PRP list pointer is qword aligned");
            let mut page = lists
                .iovas
                .iter()
                .position(|&a| a == p.prp2)
                .expect("PRP2 points at a list page");
            assert_eq!(page, 0, "the list starts in the first list page");
            let mut used = 1;
            let mut idx = 0;
            while out.len() < entries - 1 {
                let v = *lists
                    .written
                    .get(&(page, idx))
                    .unwrap_or_else(|| panic!("list entry {page}/{idx} read but never written"));
                let left = entries - 1 - out.len();
                if idx == per - 1 && left > 1 {
                    // Chain pointer: the last entry of a full list page (§4.3.1).
                    assert_eq!(
                        v,
                        lists.iovas[page + 1],
                        "chain must point at the next list page"
                    );
                    page += 1;
                    used += 1;
                    idx = 0;
                    continue;
                }
                out.push(v);
                idx += 1;
            }
            assert_eq!(used, p.list_pages, "list_pages must count the pages walked");
            // Nothing written beyond what the walk read.
            let read = (used - 1) * per + idx;
            assert_eq!(lists.written.len(), read, "entries written beyond the list");
        }
    }
    out
}

/// The fuzz target body.
pub fn run_prp(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(input) = PrpInput::arbitrary(&mut u) else {
        return;
    };
    let page = page_size(input.page_sel);
    // Mostly lengths up to 16 MiB; sometimes anything.
    let len = if input.len >> 63 == 1 {
        input.len as usize
    } else {
        (input.len & 0xFF_FFFF) as usize
    };
    let addr = input.addr;
    let valid_page = page >= 4096 && page.is_power_of_two();
    let mut seed = input.list_seed | 1;
    let iovas: Vec<u64> = (0..input.list_pages as usize % 64)
        .map(|_| {
            // xorshift: scattered list page addresses, page aligned.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if valid_page {
                seed & !(page as u64 - 1)
            } else {
                seed & !4095
            }
        })
        .collect();
    // Keep accepted transfers walkable: skip inputs whose list would hold more than 2^17
    // entries (they are still checked for TooLong when the list pages do not suffice).
    if valid_page && len != 0 {
        let pg = page as u128;
        let n = ((addr as u128 % pg) + len as u128).div_ceil(pg);
        let capacity = iovas.len() as u128 * (pg / 8);
        if n > 1 << 17 && n <= capacity + 1 {
            return;
        }
    }
    let mut lists = Lists {
        page: page.max(8),
        iovas,
        written: HashMap::new(),
    };
    let result = prp::build(addr, len, page, &mut lists);

    // Helpers agree with each other.
    let entries = prp::page_count(addr, len, page);
    if page == 0 || len == 0 {
        assert_eq!(entries, 0);
    }

    let r = match result {
        Err(PrpError::Empty) => {
            assert_eq!(len, 0);
            assert!(lists.written.is_empty());
            return;
        }
        Err(PrpError::Invalid) => {
            assert!(len != 0);
            assert!(
                !valid_page || (addr & 3 == 0 && addr.checked_add(len as u64).is_none()),
                "Invalid for a valid page size and an address that does not overflow"
            );
            assert!(lists.written.is_empty());
            return;
        }
        Err(PrpError::Misaligned) => {
            assert!(len != 0 && valid_page);
            assert_ne!(addr & 3, 0, "Misaligned for a dword-aligned address");
            assert!(lists.written.is_empty());
            return;
        }
        Err(PrpError::TooLong { needed, available }) => {
            assert!(len != 0 && valid_page && addr & 3 == 0);
            assert!(entries > 2);
            assert_eq!(available, lists.iovas.len());
            assert_eq!(needed, minimal_list_pages(entries - 1, page / 8));
            assert!(
                needed > available,
                "TooLong although the list pages suffice"
            );
            assert!(
                lists.written.is_empty(),
                "TooLong after writing list entries"
            );
            return;
        }
        Ok(r) => r,
    };
    // Accepted: the inputs were valid.
    assert!(len != 0 && valid_page && addr & 3 == 0);
    assert!(addr.checked_add(len as u64).is_some());
    let pg = page as u64;
    let off = addr % pg;
    assert_eq!(entries as u64, (off + len as u64).div_ceil(pg));
    assert_eq!(r.prp1, addr, "PRP1 is the buffer address with its offset");
    let needed = if entries <= 2 {
        0
    } else {
        minimal_list_pages(entries - 1, page / 8)
    };
    assert_eq!(prp::list_pages_needed(entries, page), needed);
    assert!(needed <= lists.iovas.len());
    assert_eq!(r.list_pages, needed, "list not minimal");
    let rest = walk(&r, entries, &lists);
    assert_eq!(rest.len(), entries - 1);
    let first = addr - off;
    for (i, e) in rest.iter().enumerate() {
        assert_eq!(e % pg, 0, "entry {} not page aligned", i + 1);
        assert_eq!(
            *e,
            first + (i as u64 + 1) * pg,
            "entry {} not consecutive",
            i + 1
        );
    }
    // The pages cover the transfer and nothing more than its last page.
    let covered = (pg - off) + rest.len() as u64 * pg;
    assert!(covered >= len as u64 && covered - (len as u64) < pg);
    // The worst-case sizing used for queue creation covers this transfer.
    if page == 4096 {
        assert!(prp::max_list_pages(len, page) >= needed);
    }
}

//! Physical Region Page entries and lists, walked as a controller does (NVMe Base §4.3.1
//! "Physical Region Page Entry and List").
//!
//! - PRP1 may carry an offset into its page, which must be dword aligned (bits 1:0 = 0).
//! - If the transfer ends within PRP1's page, PRP2 is not used.
//! - If it ends within the next page, PRP2 is that page's address (offset 0).
//! - Otherwise PRP2 points to a PRP list (qword aligned; it may start inside a page). Every
//!   list entry is a page address with offset 0. When more entries are needed than remain in
//!   the list's page, the last entry of that page points to the next list page (§4.3.1,
//!   Figure "PRP List Layout"): lists are chained.
//!
//! A malformed list is refused with PRP Offset Invalid (00h/13h) and an unmapped address
//! with Data Transfer Error (00h/04h); both are also host violations.

use nvme_core::spec::status::generic;
use nvme_core::spec::Status;

use crate::dma::{DeviceDma, DmaFault};
use crate::violation::ViolationKind;

/// Why a PRP walk failed: the status for the command and the violation for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PrpError {
    pub(crate) status: Status,
    pub(crate) kind: ViolationKind,
    pub(crate) detail: String,
}

fn offset_invalid(kind: ViolationKind, detail: String) -> PrpError {
    PrpError {
        status: Status::generic(generic::PRP_OFFSET_INVALID, true),
        kind,
        detail,
    }
}

fn unmapped(detail: String) -> PrpError {
    PrpError {
        status: Status::generic(generic::DATA_TRANSFER_ERROR, true),
        kind: ViolationKind::UnmappedDma,
        detail,
    }
}

/// The host memory segments of a `len`-byte transfer described by `prp1`/`prp2` with memory
/// page size `ps` (CC.MPS), into `segs` (cleared first; its capacity is reused, so a walk
/// allocates nothing once `segs` has grown to the largest transfer). Every segment is checked
/// to be mapped before any data moves.
pub(crate) fn walk(
    dma: &DeviceDma,
    prp1: u64,
    prp2: u64,
    len: usize,
    ps: usize,
    segs: &mut Vec<(u64, usize)>,
) -> Result<(), PrpError> {
    segs.clear();
    if len == 0 {
        return Ok(());
    }
    let ps64 = ps as u64;
    if prp1 & 3 != 0 {
        return Err(offset_invalid(
            ViolationKind::MisalignedPrp,
            format!("PRP1 {prp1:#x} is not dword aligned"),
        ));
    }
    let first = len.min(ps - (prp1 % ps64) as usize);
    segs.push((prp1, first));
    let mut rem = len - first;
    if rem > 0 && rem <= ps {
        if prp2 % ps64 != 0 {
            return Err(offset_invalid(
                ViolationKind::MisalignedPrp,
                format!("PRP2 {prp2:#x} (second data page) has a non-zero offset"),
            ));
        }
        segs.push((prp2, rem));
        rem = 0;
    }
    if rem > 0 {
        if prp2 & 7 != 0 {
            return Err(offset_invalid(
                ViolationKind::MalformedPrpList,
                format!("PRP list pointer {prp2:#x} is not qword aligned"),
            ));
        }
        let mut needed = rem.div_ceil(ps);
        let mut list = prp2;
        let mut lists = 0usize;
        while needed > 0 {
            lists += 1;
            if lists > 1 + len / ps {
                return Err(offset_invalid(
                    ViolationKind::MalformedPrpList,
                    "PRP list chain longer than the transfer needs".into(),
                ));
            }
            let slots = (ps - (list % ps64) as usize) / 8;
            let chained = needed > slots;
            let count = if chained { slots } else { needed };
            if !dma.is_mapped(list, count * 8) {
                return Err(unmapped(format!(
                    "PRP list at {list:#x}: {}",
                    DmaFault {
                        iova: list,
                        len: count * 8
                    }
                )));
            }
            let entry = |i: usize| -> Result<u64, PrpError> {
                let mut b = [0u8; 8];
                let at = list + 8 * i as u64;
                dma.read(at, &mut b)
                    .map_err(|f| unmapped(format!("PRP list at {list:#x}: {f}")))?;
                Ok(u64::from_le_bytes(b))
            };
            let data_entries = if chained { count - 1 } else { count };
            for i in 0..data_entries {
                let e = entry(i)?;
                if e % ps64 != 0 {
                    return Err(offset_invalid(
                        ViolationKind::MisalignedPrp,
                        format!("PRP list entry {i} at list {list:#x} is {e:#x}: non-zero offset"),
                    ));
                }
                let n = rem.min(ps);
                segs.push((e, n));
                rem -= n;
            }
            needed -= data_entries;
            if chained {
                let next = entry(count - 1)?;
                if next & 7 != 0 || next == 0 {
                    return Err(offset_invalid(
                        ViolationKind::MalformedPrpList,
                        format!("chained PRP list pointer {next:#x} in list {list:#x} is invalid"),
                    ));
                }
                list = next;
            }
        }
    }
    for &(addr, n) in segs.iter() {
        if !dma.is_mapped(addr, n) {
            return Err(unmapped(format!(
                "PRP data segment {addr:#x}+{n:#x} is not mapped"
            )));
        }
    }
    Ok(())
}

/// Copies host memory described by `segs` into `out` (whose length is the transfer's).
pub(crate) fn gather(
    dma: &DeviceDma,
    segs: &[(u64, usize)],
    out: &mut [u8],
) -> Result<(), PrpError> {
    let mut pos = 0;
    for &(addr, n) in segs {
        dma.read(addr, &mut out[pos..pos + n])
            .map_err(|f| unmapped(f.to_string()))?;
        pos += n;
    }
    Ok(())
}

/// A cursor over the host memory segments of a controller-to-host transfer: data handed
/// to [`Scatter::put`] piece by piece lands in the segments in order, so the source never has
/// to be one contiguous buffer.
pub(crate) struct Scatter<'v, 's> {
    dma: &'v DeviceDma,
    segs: &'s [(u64, usize)],
    /// The current segment and the bytes of it already written.
    seg: usize,
    done: usize,
    /// Read-ahead hint not yet prefetched ([`DeviceDma::write_ahead`]).
    ahead: &'s [u8],
}

impl<'v, 's> Scatter<'v, 's> {
    pub(crate) fn new(dma: &'v DeviceDma, segs: &'s [(u64, usize)]) -> Self {
        Self {
            dma,
            segs,
            seg: 0,
            done: 0,
            ahead: &[],
        }
    }

    /// Prefetches `ahead` (the first bytes of the next transfer) while this one is written:
    /// see [`DeviceDma::write_ahead`].
    pub(crate) fn with_ahead(self, ahead: &'s [u8]) -> Self {
        Self { ahead, ..self }
    }

    /// The bytes of the read-ahead hint not prefetched yet.
    pub(crate) fn ahead_left(&self) -> usize {
        self.ahead.len()
    }

    /// Writes the next `data.len()` bytes of the transfer (which must not run past its end).
    pub(crate) fn put(&mut self, mut data: &[u8]) -> Result<(), PrpError> {
        while !data.is_empty() {
            let Some(&(addr, len)) = self.segs.get(self.seg) else {
                return Err(unmapped("transfer longer than its PRPs".into()));
            };
            let n = (len - self.done).min(data.len());
            self.dma
                .write_ahead(addr + self.done as u64, &data[..n], &mut self.ahead)
                .map_err(|f| unmapped(f.to_string()))?;
            data = &data[n..];
            self.done += n;
            if self.done == len {
                self.seg += 1;
                self.done = 0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{PrpError, Scatter};
    use crate::dma::{DeviceDma, DmaSpace, SimDma};
    use crate::violation::ViolationKind;
    use nvme_core::hw::DmaAllocator;
    use std::sync::Arc;

    fn setup() -> (DeviceDma, SimDma) {
        let s = Arc::new(DmaSpace::new(crate::dma::DMA_PAGE));
        (DeviceDma::new(s.clone()), SimDma::new(s))
    }

    fn walk(
        s: &DeviceDma,
        prp1: u64,
        prp2: u64,
        len: usize,
        ps: usize,
    ) -> Result<Vec<(u64, usize)>, PrpError> {
        let mut segs = Vec::new();
        super::walk(s, prp1, prp2, len, ps, &mut segs)?;
        Ok(segs)
    }

    #[test]
    fn one_and_two_pages() {
        let (s, d) = setup();
        let a = d.allocate(8192).unwrap();
        let segs = walk(&s, a.iova() + 8, 0, 100, 4096).unwrap();
        assert_eq!(segs, vec![(a.iova() + 8, 100)]);
        let segs = walk(&s, a.iova() + 4000, a.iova() + 4096, 200, 4096).unwrap();
        assert_eq!(segs, vec![(a.iova() + 4000, 96), (a.iova() + 4096, 104)]);
        let e = walk(&s, a.iova() + 2, 0, 10, 4096).unwrap_err();
        assert_eq!(e.status.sc(), 0x13);
        let e = walk(&s, a.iova(), a.iova() + 4100, 5000, 4096).unwrap_err();
        assert_eq!(e.kind, ViolationKind::MisalignedPrp);
    }

    /// Data put in pieces of any size lands in the segments in order, and a transfer
    /// longer than its segments is refused.
    #[test]
    fn scatter_fills_segments_in_order() {
        let (s, d) = setup();
        let a = d.allocate(8192).unwrap();
        let segs = walk(&s, a.iova() + 4000, a.iova() + 4096, 200, 4096).unwrap();
        let data: Vec<u8> = (0..200u8).collect();
        let mut out = Scatter::new(&s, &segs);
        for piece in data.chunks(7) {
            out.put(piece).unwrap();
        }
        assert!(out.put(&[1]).is_err());
        let mut back = vec![0u8; 200];
        s.read(a.iova() + 4000, &mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn chained_list() {
        let (s, d) = setup();
        // 600 pages of data: the list needs two pages (511 data + pointer, then 88 more).
        let data = d.allocate(600 * 4096).unwrap();
        let l1 = d.allocate(4096).unwrap();
        let l2 = d.allocate(4096).unwrap();
        let mut list1 = Vec::new();
        for i in 1..512u64 {
            list1.extend_from_slice(&(data.iova() + i * 4096).to_le_bytes());
        }
        list1.extend_from_slice(&l2.iova().to_le_bytes());
        s.write(l1.iova(), &list1).unwrap();
        let mut list2 = Vec::new();
        for i in 512..600u64 {
            list2.extend_from_slice(&(data.iova() + i * 4096).to_le_bytes());
        }
        s.write(l2.iova(), &list2).unwrap();
        let segs = walk(&s, data.iova(), l1.iova(), 600 * 4096, 4096).unwrap();
        assert_eq!(segs.len(), 600);
        for (i, &(a, n)) in segs.iter().enumerate() {
            assert_eq!((a, n), (data.iova() + i as u64 * 4096, 4096));
        }
        // A list pointer that is not qword aligned.
        let e = walk(&s, data.iova(), l1.iova() + 4, 600 * 4096, 4096).unwrap_err();
        assert_eq!(e.kind, ViolationKind::MalformedPrpList);
        // A list entry with an offset.
        s.write(l2.iova(), &(data.iova() + 512 * 4096 + 8).to_le_bytes())
            .unwrap();
        let e = walk(&s, data.iova(), l1.iova(), 600 * 4096, 4096).unwrap_err();
        assert_eq!(e.status.sc(), 0x13);
        // Unmapped list.
        let e = walk(&s, data.iova(), 0x10, 3 * 4096, 4096).unwrap_err();
        assert_eq!(e.status.sc(), 0x04);
    }
}

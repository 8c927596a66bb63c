//! Scatter Gather Lists, walked as a controller does (NVMe Base 2.1 §4.3.2 "Scatter Gather
//! List (SGL)"), with the status codes of §4.2.3 (Figure "Generic Command Status Values").
//!
//! What the simulator accepts, by Identify SGLS ([`crate::SimConfig::sgls`]):
//! - SGL Data Block descriptors (type 0h, sub type 0h Address) anywhere; with SGLS bits
//!   1:0 = 10b their Address and Length must be dword aligned (else Invalid Field).
//! - SGL Bit Bucket descriptors (type 1h) when SGLS bit 16 is set, and only for data the
//!   controller transfers to the host (a Bit Bucket means "discard these bytes of the
//!   source data", which only the controller can do); elsewhere SGL Descriptor Type Invalid.
//! - SGL Segment (2h) and Last Segment (3h) descriptors, only as the last descriptor of SGL1
//!   or of a segment; a Segment's segment must itself end in a (Last) Segment descriptor
//!   and a Last Segment's segment contains none. A segment is qword aligned and its length
//!   a non-zero multiple of 16 bytes. Anything else is Invalid SGL Segment Descriptor (0Dh).
//! - Every other type (Keyed and Transport Data Blocks, vendor specific, reserved) and every
//!   sub type but 0h: SGL Descriptor Type Invalid (11h).
//! - The Data Block and Bit Bucket lengths add up to exactly the transfer; less is Data SGL
//!   Length Invalid (0Fh), and so is more unless SGLS bit 18 allows it (then the excess is
//!   not used).
//! - More than [`MAX_DESCRIPTORS`] descriptors: Invalid Number of SGL Descriptors (0Eh), so
//!   a hostile host cannot make the walk endless (a segment chain pointing back at itself).
//! - An unmapped segment or data block: Data Transfer Error (04h).
//!
//! Every refusal is also recorded as a host violation ([`ViolationKind::InvalidSgl`]).

use nvme_core::spec::sgl::{desc_type, sub_type, SglDescriptor, SglSupport, Sgls, DESCRIPTOR_LEN};
use nvme_core::spec::status::generic;
use nvme_core::spec::Status;

use crate::dma::DeviceDma;
use crate::prp::PrpError;
use crate::violation::ViolationKind;

/// Most descriptors one command's SGL may hold (the simulator's limit).
pub const MAX_DESCRIPTORS: usize = 4096;

/// One piece of a transfer: bytes at a bus address, or (`None`) bytes to discard.
pub(crate) type Piece = (Option<u64>, usize);

fn refuse(sc: u8, detail: String) -> PrpError {
    PrpError {
        status: Status::generic(sc, true),
        kind: ViolationKind::InvalidSgl,
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

/// The pieces of a `len`-byte transfer described by `sgl1`; `to_host` is the direction
/// (controller to host for a Read). Every piece is checked before any data moves.
#[cfg(test)]
pub(crate) fn walk(
    dma: &DeviceDma,
    sgls: Sgls,
    sgl1: SglDescriptor,
    len: usize,
    to_host: bool,
) -> Result<Vec<Piece>, PrpError> {
    let mut pieces = Vec::new();
    walk_into(dma, sgls, sgl1, len, to_host, &mut pieces)?;
    Ok(pieces)
}

/// As `walk`, into `pieces` (cleared first; reused by the controller, so the common
/// one-descriptor SGL allocates nothing once it has room). The common SGL's checks are
/// inlined into the caller; any other SGL is walked out of line.
#[inline(always)]
pub(crate) fn walk_into(
    dma: &DeviceDma,
    sgls: Sgls,
    sgl1: SglDescriptor,
    len: usize,
    to_host: bool,
    pieces: &mut Vec<Piece>,
) -> Result<(), PrpError> {
    pieces.clear();
    // The common SGL: SGL1 one Data Block descriptor (sub type Address) covering exactly
    // the transfer (or more, where SGLS bit 18 allows the excess), aligned as SGLS asks.
    // Every check of the walk below applies to it and passes but the mapping one, which
    // is made here the same way; anything else takes the full walk.
    let d = &sgl1;
    if d.kind() == desc_type::DATA_BLOCK
        && d.sub() == sub_type::ADDRESS
        && len > 0
        && (d.length as usize == len || (d.length as usize > len && sgls.excess_length()))
        && (sgls.support() != SglSupport::Dword || (d.address & 3 == 0 && d.length & 3 == 0))
    {
        if !dma.is_mapped(d.address, len) {
            return Err(unmapped(format!(
                "SGL Data Block {:#x}+{len:#x} is not mapped",
                d.address
            )));
        }
        pieces.push((Some(d.address), len));
        return Ok(());
    }
    walk_segments(dma, sgls, sgl1, len, to_host, pieces)
}

/// [`walk_into`] for an SGL other than one Data Block descriptor covering the transfer:
/// every segment and descriptor walked and checked.
#[inline(never)]
fn walk_segments(
    dma: &DeviceDma,
    sgls: Sgls,
    sgl1: SglDescriptor,
    len: usize,
    to_host: bool,
    pieces: &mut Vec<Piece>,
) -> Result<(), PrpError> {
    let mut described: usize = 0;
    let mut count = 0usize;
    // The descriptors of the current segment (SGL1 alone at first: no allocation for the
    // common one-descriptor SGL), and whether it is the last one.
    let mut stored: Option<Vec<SglDescriptor>> = None;
    let mut last = true; // SGL1 alone: nothing may follow a data descriptor
    let mut in_command = true;
    loop {
        let segment: &[SglDescriptor] = match &stored {
            Some(v) => v,
            None => std::slice::from_ref(&sgl1),
        };
        let n = segment.len();
        let mut next: Option<(SglDescriptor, bool)> = None;
        for (i, d) in segment.iter().enumerate() {
            count += 1;
            if count > MAX_DESCRIPTORS {
                return Err(refuse(
                    generic::INVALID_SGL_DESCRIPTOR_COUNT,
                    format!("the SGL has more than {MAX_DESCRIPTORS} descriptors"),
                ));
            }
            let kind = d.kind();
            if d.sub() != sub_type::ADDRESS {
                return Err(refuse(
                    generic::SGL_DESCRIPTOR_TYPE_INVALID,
                    format!(
                        "SGL descriptor {:#04x}: sub type {:#x} is not supported",
                        d.id,
                        d.sub()
                    ),
                ));
            }
            match kind {
                desc_type::DATA_BLOCK => {
                    if sgls.support() == SglSupport::Dword
                        && (d.address & 3 != 0 || d.length & 3 != 0)
                    {
                        return Err(PrpError {
                            status: Status::generic(generic::INVALID_FIELD, true),
                            kind: ViolationKind::InvalidSgl,
                            detail: format!(
                                "SGL Data Block {:#x}+{:#x} is not dword aligned (SGLS = 10b)",
                                d.address, d.length
                            ),
                        });
                    }
                    let take = (d.length as usize).min(len.saturating_sub(described));
                    if take > 0 {
                        if !dma.is_mapped(d.address, take) {
                            return Err(unmapped(format!(
                                "SGL Data Block {:#x}+{take:#x} is not mapped",
                                d.address
                            )));
                        }
                        pieces.push((Some(d.address), take));
                    }
                    described = described.saturating_add(d.length as usize);
                }
                desc_type::BIT_BUCKET if sgls.bit_bucket() && to_host => {
                    let take = (d.length as usize).min(len.saturating_sub(described));
                    if take > 0 {
                        pieces.push((None, take));
                    }
                    described = described.saturating_add(d.length as usize);
                }
                desc_type::BIT_BUCKET => {
                    return Err(refuse(
                        generic::SGL_DESCRIPTOR_TYPE_INVALID,
                        if sgls.bit_bucket() {
                            "an SGL Bit Bucket descriptor for data the host transfers".into()
                        } else {
                            "an SGL Bit Bucket descriptor, Identify SGLS bit 16 = 0".into()
                        },
                    ));
                }
                desc_type::SEGMENT | desc_type::LAST_SEGMENT => {
                    if i + 1 != n {
                        return Err(refuse(
                            generic::INVALID_SGL_DESCRIPTOR,
                            format!("an SGL (Last) Segment descriptor at position {i} of {n}, not last in its segment"),
                        ));
                    }
                    if !in_command && last {
                        return Err(refuse(
                            generic::INVALID_SGL_DESCRIPTOR,
                            "an SGL (Last) Segment descriptor inside the last segment".into(),
                        ));
                    }
                    if d.address & 7 != 0
                        || d.length == 0
                        || d.length as usize % DESCRIPTOR_LEN != 0
                    {
                        return Err(refuse(
                            generic::INVALID_SGL_DESCRIPTOR,
                            format!(
                                "SGL segment {:#x}+{:#x}: not qword aligned or not a non-zero multiple of 16 bytes",
                                d.address, d.length
                            ),
                        ));
                    }
                    next = Some((*d, kind == desc_type::LAST_SEGMENT));
                }
                other => {
                    return Err(refuse(
                        generic::SGL_DESCRIPTOR_TYPE_INVALID,
                        format!("SGL descriptor type {other:#x} is not supported"),
                    ));
                }
            }
        }
        let Some((d, is_last)) = next else {
            if !last {
                return Err(refuse(
                    generic::INVALID_SGL_DESCRIPTOR,
                    "an SGL segment that is not the last ends without a (Last) Segment descriptor"
                        .into(),
                ));
            }
            break;
        };
        let bytes = d.length as usize;
        if count + bytes / DESCRIPTOR_LEN > MAX_DESCRIPTORS {
            return Err(refuse(
                generic::INVALID_SGL_DESCRIPTOR_COUNT,
                format!("the SGL has more than {MAX_DESCRIPTORS} descriptors"),
            ));
        }
        let mut raw = vec![0u8; bytes];
        dma.read(d.address, &mut raw)
            .map_err(|f| unmapped(format!("SGL segment at {:#x}: {f}", d.address)))?;
        stored = Some(
            raw.chunks_exact(DESCRIPTOR_LEN)
                .map(|c| {
                    let mut b = [0u8; DESCRIPTOR_LEN];
                    b.copy_from_slice(c);
                    SglDescriptor::from_le_bytes(&b)
                })
                .collect(),
        );
        last = is_last;
        in_command = false;
    }
    if described < len || (described > len && !sgls.excess_length()) {
        return Err(refuse(
            generic::DATA_SGL_LENGTH_INVALID,
            format!("the SGL describes {described} bytes, the command transfers {len}"),
        ));
    }
    Ok(())
}

/// A cursor that copies data to the host through `pieces` in order, in as many calls as the
/// data comes in (bit buckets discard their bytes).
pub(crate) struct Scatter<'a> {
    dma: &'a DeviceDma,
    pieces: &'a [Piece],
    /// The piece being filled, and the bytes of it already written.
    at: (usize, usize),
    /// Read-ahead hint not yet prefetched ([`DeviceDma::write_ahead`]).
    ahead: &'a [u8],
}

impl<'a> Scatter<'a> {
    pub(crate) fn new(dma: &'a DeviceDma, pieces: &'a [Piece]) -> Self {
        Self {
            dma,
            pieces,
            at: (0, 0),
            ahead: &[],
        }
    }

    /// Prefetches `ahead` (the first bytes of the next transfer) while this one is written:
    /// see [`DeviceDma::write_ahead`].
    pub(crate) fn with_ahead(self, ahead: &'a [u8]) -> Self {
        Self { ahead, ..self }
    }

    /// The bytes of the read-ahead hint not prefetched yet.
    pub(crate) fn ahead_left(&self) -> usize {
        self.ahead.len()
    }

    /// The next bytes of the transfer.
    #[inline(always)]
    pub(crate) fn put(&mut self, mut data: &[u8]) -> Result<(), PrpError> {
        while !data.is_empty() {
            let (i, off) = self.at;
            let Some(&(addr, n)) = self.pieces.get(i) else {
                return Err(unmapped("more data than the SGL describes".to_owned()));
            };
            let k = (n - off).min(data.len());
            if let Some(a) = addr {
                self.dma
                    .write_ahead(a + off as u64, &data[..k], &mut self.ahead)
                    .map_err(|f| unmapped(f.to_string()))?;
            }
            data = &data[k..];
            self.at = if off + k == n {
                (i + 1, 0)
            } else {
                (i, off + k)
            };
        }
        Ok(())
    }
}

/// Copies `data` to the host through `pieces` (bit buckets discard their bytes).
#[cfg(test)]
pub(crate) fn scatter(dma: &DeviceDma, pieces: &[Piece], data: &[u8]) -> Result<(), PrpError> {
    let mut pos = 0;
    for &(addr, n) in pieces {
        if let Some(a) = addr {
            dma.write(a, &data[pos..pos + n])
                .map_err(|f| unmapped(f.to_string()))?;
        }
        pos += n;
    }
    Ok(())
}

/// Gathers `out.len()` bytes from the host through `pieces` (which hold no bit bucket: [`walk_into`]
/// refuses them for this direction).
pub(crate) fn gather(dma: &DeviceDma, pieces: &[Piece], out: &mut [u8]) -> Result<(), PrpError> {
    let mut pos = 0;
    for &(addr, n) in pieces {
        if let Some(a) = addr {
            dma.read(a, &mut out[pos..pos + n])
                .map_err(|f| unmapped(f.to_string()))?;
        }
        pos += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::{DmaSpace, SimDma};
    use nvme_core::hw::DmaAllocator;
    use std::sync::Arc;

    const ALL: Sgls = Sgls(1 | 1 << 16);

    fn setup() -> (DeviceDma, SimDma) {
        let s = Arc::new(DmaSpace::new(crate::dma::DMA_PAGE));
        (DeviceDma::new(s.clone()), SimDma::new(s))
    }

    fn put(s: &DeviceDma, at: u64, ds: &[SglDescriptor]) {
        let b: Vec<u8> = ds.iter().flat_map(|d| d.to_le_bytes()).collect();
        s.write(at, &b).unwrap();
    }

    #[test]
    fn one_data_block() {
        let (s, d) = setup();
        let a = d.allocate(8192).unwrap();
        let p = walk(
            &s,
            ALL,
            SglDescriptor::data_block(a.iova() + 3, 5000),
            5000,
            true,
        )
        .unwrap();
        assert_eq!(p, vec![(Some(a.iova() + 3), 5000)]);
        // Shorter or longer than the transfer.
        let e = walk(
            &s,
            ALL,
            SglDescriptor::data_block(a.iova(), 4096),
            5000,
            true,
        )
        .unwrap_err();
        assert_eq!(e.status.sc(), 0x0F);
        let e = walk(
            &s,
            ALL,
            SglDescriptor::data_block(a.iova(), 8192),
            5000,
            true,
        )
        .unwrap_err();
        assert_eq!(e.status.sc(), 0x0F);
        // Excess allowed by SGLS bit 18: only the transfer is used.
        let p = walk(
            &s,
            Sgls(1 | 1 << 18),
            SglDescriptor::data_block(a.iova(), 8192),
            5000,
            true,
        )
        .unwrap();
        assert_eq!(p, vec![(Some(a.iova()), 5000)]);
        // Dword granularity.
        let e = walk(
            &s,
            Sgls(2),
            SglDescriptor::data_block(a.iova() + 2, 512),
            512,
            true,
        )
        .unwrap_err();
        assert_eq!(e.status.sc(), 0x02);
        // Unmapped.
        let e = walk(&s, ALL, SglDescriptor::data_block(0x10, 512), 512, true).unwrap_err();
        assert_eq!(e.status.sc(), 0x04);
    }

    #[test]
    fn segment_chain_with_bit_bucket() {
        let (s, d) = setup();
        let data = d.allocate(3 * 4096).unwrap();
        let segs = d.allocate(4096).unwrap();
        let (s0, s1) = (segs.iova(), segs.iova() + 256);
        put(
            &s,
            s0,
            &[
                SglDescriptor::data_block(data.iova(), 1024),
                SglDescriptor::bit_bucket(512),
                SglDescriptor::last_segment(s1, 32),
            ],
        );
        put(
            &s,
            s1,
            &[
                SglDescriptor::data_block(data.iova() + 4096, 512),
                SglDescriptor::data_block(data.iova() + 8192, 2048),
            ],
        );
        let p = walk(&s, ALL, SglDescriptor::segment(s0, 48), 4096, true).unwrap();
        assert_eq!(
            p,
            vec![
                (Some(data.iova()), 1024),
                (None, 512),
                (Some(data.iova() + 4096), 512),
                (Some(data.iova() + 8192), 2048)
            ]
        );
        // The data moves around the bit bucket.
        let bytes: Vec<u8> = (0..4096u32).map(|i| (i / 512) as u8 + 1).collect();
        scatter(&s, &p, &bytes).unwrap();
        let mut got = vec![0u8; 1024];
        s.read(data.iova(), &mut got).unwrap();
        assert_eq!(got, bytes[..1024]);
        s.read(data.iova() + 4096, &mut got[..512]).unwrap();
        assert_eq!(got[..512], bytes[1536..2048]);
        // A Segment descriptor whose segment is the last: ends without a Last Segment.
        let e = walk(&s, ALL, SglDescriptor::segment(s1, 32), 2560, true).unwrap_err();
        assert_eq!(e.status.sc(), 0x0D);
        // A bit bucket in a host-to-controller transfer, or where SGLS bit 16 is clear.
        let e = walk(&s, ALL, SglDescriptor::segment(s0, 48), 4096, false).unwrap_err();
        assert_eq!(e.status.sc(), 0x11);
        let e = walk(&s, Sgls(1), SglDescriptor::segment(s0, 48), 4096, true).unwrap_err();
        assert_eq!(e.status.sc(), 0x11);
    }

    #[test]
    fn invalid_descriptors() {
        let (s, d) = setup();
        let segs = d.allocate(4096).unwrap();
        let a = segs.iova();
        // Reserved type 6h, keyed 4h, sub type Offset.
        for id in [0x60, 0x40, 0x01, 0xF0] {
            let bad = SglDescriptor {
                address: a,
                length: 512,
                id,
            };
            assert_eq!(
                walk(&s, ALL, bad, 512, true).unwrap_err().status.sc(),
                0x11,
                "{id:#x}"
            );
        }
        // Segment lengths and alignment.
        for (addr, len) in [(a, 0), (a, 24), (a + 4, 16)] {
            let e = walk(&s, ALL, SglDescriptor::last_segment(addr, len), 512, true).unwrap_err();
            assert_eq!(e.status.sc(), 0x0D);
        }
        // A Segment descriptor that is not last in its segment.
        put(
            &s,
            a,
            &[
                SglDescriptor::last_segment(a + 512, 16),
                SglDescriptor::data_block(a, 512),
            ],
        );
        let e = walk(&s, ALL, SglDescriptor::last_segment(a, 32), 512, true).unwrap_err();
        assert_eq!(e.status.sc(), 0x0D);
        // A segment chain that points at itself ends at the descriptor limit.
        put(&s, a + 1024, &[SglDescriptor::segment(a + 1024, 16)]);
        let e = walk(&s, ALL, SglDescriptor::segment(a + 1024, 16), 512, true).unwrap_err();
        assert_eq!(e.status.sc(), 0x0E);
    }
}

//! The data pointer policy: PRPs (NVMe Base 2.1 §4.3.1) or an SGL (§4.3.2) for each data
//! transfer.
//!
//! A [`crate::DmaBuffer`] is one contiguous range of bus addresses (a [`crate::hw::DmaRegion`]
//! has one IOVA and one length), so one SGL Data Block descriptor in the command's Data
//! Pointer (SGL1, PSDT = 01b) describes a transfer of any length up to MDTS: no PRP list to
//! write, no list page for the device to fetch.
//!
//! # Policy ([`TransferMode`], [`crate::ControllerConfig::transfer_mode`])
//! - [`TransferMode::Auto`] (the default): Read, Write and Compare on an I/O queue use one
//!   Data Block descriptor when Identify Controller SGLS bits 1:0 (§5.1.13.2.1) say the
//!   controller supports SGLs for the NVM Command Set, and the transfer meets the
//!   controller's granularity (SGLS = 10b: the address and the length are dword aligned).
//!   Everything else uses PRPs: every admin command (NVMe over PCIe: admin commands use
//!   PRPs), Dataset Management and the other I/O commands, a controller without SGL support,
//!   and a transfer the dword requirement refuses. With SGLS = 01b (byte granularity) a
//!   buffer offset that is not dword aligned, which PRPs refuse (§4.3.1), works.
//! - [`TransferMode::Prp`]: PRPs for everything.
//! - [`TransferMode::Sgl`]: as `Auto`, but creating an I/O queue pair fails with
//!   [`crate::Error::Unsupported`] on a controller without SGL support, so a caller who
//!   measures or tests SGLs learns it instead of silently getting PRPs.
//!
//! # Safety
//! The descriptor names exactly the bytes the command transfers (its length derived from
//! the command, as for PRPs: see [`crate::spec::transfer`]), at the buffer that moved into
//! the request, never more; MPTR stays cleared. The controller's own length check (Data SGL
//! Length Invalid, §4.2.3) then refuses a command that would move more data than described.

use crate::spec::sgl::{self, SglDescriptor, SglSupport, Sgls};
use crate::spec::{Command, NvmOpcode};

/// How data transfers are described to the controller (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TransferMode {
    /// SGLs for Read, Write and Compare when the controller supports them and the transfer
    /// meets its granularity; PRPs otherwise.
    #[default]
    Auto,
    /// PRPs only.
    Prp,
    /// As `Auto`, and I/O queue pairs refuse to exist on a controller without SGL support.
    Sgl,
}

/// What a queue pair does, resolved once from the mode and Identify SGLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SglUse {
    enabled: bool,
    /// SGLS = 10b: Data Block addresses and lengths must be dword aligned.
    dword: bool,
}

impl SglUse {
    /// Resolves `mode` against the controller's SGLS.
    ///
    /// # Errors
    /// [`crate::Error::Unsupported`] for [`TransferMode::Sgl`] on a controller without SGLs.
    pub(crate) fn resolve(mode: TransferMode, sgls: Sgls) -> crate::Result<Self> {
        let support = sgls.support();
        let supported = matches!(support, SglSupport::Byte | SglSupport::Dword);
        match mode {
            TransferMode::Prp => Ok(Self::default()),
            TransferMode::Sgl if !supported => Err(crate::Error::Unsupported(
                "SGLs were required (TransferMode::Sgl) but Identify Controller SGLS says the \
                 controller has none for the NVM Command Set; use TransferMode::Auto or Prp",
            )),
            TransferMode::Auto | TransferMode::Sgl => Ok(Self {
                enabled: supported,
                dword: support == SglSupport::Dword,
            }),
        }
    }

    /// True if this queue pair may use SGLs.
    pub(crate) fn enabled(self) -> bool {
        self.enabled
    }

    /// If the policy picks an SGL for `len` bytes at bus address `addr` of command `cmd`,
    /// places one Data Block descriptor of exactly that length in SGL1 (PSDT = 01b) and
    /// returns `true`; otherwise leaves the command alone (the caller builds PRPs).
    #[inline]
    pub(crate) fn apply(self, cmd: &mut Command, addr: u64, len: usize) -> bool {
        if !self.enabled {
            return false;
        }
        if !matches!(
            NvmOpcode(cmd.opcode()),
            NvmOpcode::READ | NvmOpcode::WRITE | NvmOpcode::COMPARE
        ) {
            return false;
        }
        let Ok(length) = u32::try_from(len) else {
            return false;
        };
        if length == 0 || addr.checked_add(len as u64).is_none() {
            return false;
        }
        if self.dword && (addr & 3 != 0 || length & 3 != 0) {
            return false;
        }
        sgl::set_sgl1(cmd, SglDescriptor::data_block(addr, length));
        true
    }
}

/// Hand-built SGLs for conformance suites (cargo feature `raw-access`, see [`crate::raw`]):
/// segment chains, Bit Bucket descriptors and deliberately invalid descriptors, every address
/// inside the one buffer that moves into the request.
#[cfg(feature = "raw-access")]
pub mod raw {
    use alloc::vec::Vec;

    use crate::dma::DmaBuffer;
    use crate::error::Error;
    use crate::hw::Platform;
    use crate::io::{IoError, IoQueuePair};
    use crate::spec::sgl::{self, SglDescriptor, DESCRIPTOR_LEN};
    use crate::spec::Command;

    /// One descriptor of a [`RawSgl`]. Offsets are bytes into the request's buffer.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum RawSglEntry {
        /// An SGL Data Block descriptor (§4.3.2.1) for `len` bytes at `offset`.
        Data {
            /// Byte offset in the buffer.
            offset: usize,
            /// Length in bytes.
            len: u32,
        },
        /// An SGL Bit Bucket descriptor (§4.3.2.2) of `len` bytes.
        BitBucket {
            /// Length in bytes.
            len: u32,
        },
        /// An SGL Segment descriptor (§4.3.2.3) pointing at `RawSgl::segments[index]`.
        Segment {
            /// Index of the segment.
            index: usize,
        },
        /// An SGL Last Segment descriptor (§4.3.2.4) pointing at `RawSgl::segments[index]`.
        LastSegment {
            /// Index of the segment.
            index: usize,
        },
        /// Any SGL Identifier (byte 15) with the address of `offset` and length `len`, which
        /// must lie in the buffer: for descriptor types a controller must refuse.
        Typed {
            /// SGL Identifier: type in bits 7:4, sub type in bits 3:0.
            id: u8,
            /// Byte offset in the buffer.
            offset: usize,
            /// Length in bytes.
            len: u32,
        },
    }

    /// A hand-built SGL: SGL1 (the Data Pointer) and the segments (Segment and Last Segment
    /// entries name them by index), written one after another from byte `segment_area` of the
    /// buffer, each 16-byte aligned.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RawSgl {
        /// The descriptor in the command.
        pub sgl1: RawSglEntry,
        /// The SGL segments.
        pub segments: Vec<Vec<RawSglEntry>>,
        /// Where in the buffer the segments go (a multiple of 16).
        pub segment_area: usize,
    }

    impl RawSgl {
        /// The bytes the segments occupy from `segment_area`.
        pub fn segments_len(&self) -> usize {
            self.segments.iter().map(|s| s.len() * DESCRIPTOR_LEN).sum()
        }
    }

    fn inside(offset: usize, len: usize, buffer_len: usize) -> bool {
        offset.checked_add(len).is_some_and(|e| e <= buffer_len)
    }

    /// Encodes `e` for a buffer at bus address `iova` of `buffer_len` bytes whose segments
    /// start at `starts`.
    fn encode(
        e: RawSglEntry,
        sgl: &RawSgl,
        iova: u64,
        buffer_len: usize,
        starts: &[usize],
    ) -> crate::Result<SglDescriptor> {
        let bad = Error::InvalidArgument("an SGL entry names bytes outside the buffer");
        let segment = |index: usize| -> crate::Result<(u64, u32)> {
            let start = starts.get(index).ok_or(Error::InvalidArgument(
                "an SGL entry names a missing segment",
            ))?;
            let len = sgl.segments[index].len() * DESCRIPTOR_LEN;
            Ok((iova + *start as u64, len as u32))
        };
        Ok(match e {
            RawSglEntry::Data { offset, len } => {
                if !inside(offset, len as usize, buffer_len) {
                    return Err(bad);
                }
                SglDescriptor::data_block(iova + offset as u64, len)
            }
            RawSglEntry::BitBucket { len } => SglDescriptor::bit_bucket(len),
            RawSglEntry::Segment { index } => {
                let (a, l) = segment(index)?;
                SglDescriptor::segment(a, l)
            }
            RawSglEntry::LastSegment { index } => {
                let (a, l) = segment(index)?;
                SglDescriptor::last_segment(a, l)
            }
            RawSglEntry::Typed { id, offset, len } => {
                if !inside(offset, len as usize, buffer_len) {
                    return Err(bad);
                }
                SglDescriptor {
                    address: iova + offset as u64,
                    length: len,
                    id,
                }
            }
        })
    }

    impl<P: Platform> IoQueuePair<P> {
        /// Submits `cmd` (not rung: see [`IoQueuePair::ring`]) with the hand-built SGL `sgl`
        /// in `buffer`: the segments are written into the buffer, SGL1 into the Data Pointer,
        /// PSDT = 01b, MPTR cleared. The command's own fields are sent as they are (its
        /// transfer length is not checked against the SGL: that is the controller's job under
        /// test). Every address the SGL names lies inside `buffer`, which moves into the
        /// request and comes back with the completion.
        ///
        /// # Errors
        /// [`Error::InvalidArgument`] for an entry outside the buffer, a missing segment or a
        /// misaligned segment area; as [`IoQueuePair::submit`] otherwise.
        pub fn submit_sgl_raw(
            &mut self,
            mut cmd: Command,
            mut buffer: DmaBuffer<P>,
            sgl: &RawSgl,
            tag: u64,
        ) -> core::result::Result<u16, IoError<P>> {
            let built = (|| -> crate::Result<SglDescriptor> {
                if sgl.segment_area % DESCRIPTOR_LEN != 0
                    || !inside(sgl.segment_area, sgl.segments_len(), buffer.len())
                {
                    return Err(Error::InvalidArgument(
                        "the SGL segments must fit the buffer at a 16-byte aligned offset",
                    ));
                }
                let mut starts = Vec::with_capacity(sgl.segments.len());
                let mut at = sgl.segment_area;
                for s in &sgl.segments {
                    starts.push(at);
                    at += s.len() * DESCRIPTOR_LEN;
                }
                let (iova, len) = (buffer.iova(), buffer.len());
                for (s, start) in sgl.segments.iter().zip(&starts) {
                    for (i, e) in s.iter().enumerate() {
                        let d = encode(*e, sgl, iova, len, &starts)?;
                        buffer.write(start + i * DESCRIPTOR_LEN, &d.to_le_bytes())?;
                    }
                }
                encode(sgl.sgl1, sgl, iova, len, &starts)
            })();
            let sgl1 = match built {
                Ok(d) => d,
                Err(error) => {
                    return Err(IoError {
                        error,
                        buffer: Some(buffer),
                    })
                }
            };
            crate::dma::sanitize_pointers(&mut cmd);
            sgl::set_sgl1(&mut cmd, sgl1);
            self.submit_prebuilt(cmd, buffer, tag)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read() -> Command {
        Command::rw(NvmOpcode::READ, 1, 0, 7, false)
    }

    #[test]
    fn policy() {
        let none = Sgls(0);
        let byte = Sgls(1);
        let dword = Sgls(2);
        assert!(!SglUse::resolve(TransferMode::Auto, none).unwrap().enabled());
        assert!(SglUse::resolve(TransferMode::Sgl, none).is_err());
        assert!(!SglUse::resolve(TransferMode::Prp, byte).unwrap().enabled());
        assert!(SglUse::resolve(TransferMode::Auto, byte).unwrap().enabled());
        assert!(SglUse::resolve(TransferMode::Sgl, dword).unwrap().enabled());
        assert!(!SglUse::resolve(TransferMode::Auto, Sgls(3))
            .unwrap()
            .enabled());
    }

    /// One Data Block descriptor of exactly the transfer, never more.
    #[test]
    fn data_block_names_exactly_the_transfer() {
        let u = SglUse::resolve(TransferMode::Auto, Sgls(1)).unwrap();
        let mut c = read();
        assert!(u.apply(&mut c, 0x10_0003, 4096));
        assert_eq!(c.psdt(), 1);
        assert_eq!(sgl::sgl1(&c), SglDescriptor::data_block(0x10_0003, 4096));
    }

    #[test]
    fn fallbacks() {
        let byte = SglUse::resolve(TransferMode::Auto, Sgls(1)).unwrap();
        let dword = SglUse::resolve(TransferMode::Auto, Sgls(2)).unwrap();
        // Dword granularity refuses an odd address: PRPs (which refuse it too) decide.
        let mut c = read();
        assert!(!dword.apply(&mut c, 0x10_0002, 4096));
        assert_eq!(c, read());
        assert!(dword.apply(&mut c, 0x10_0004, 4096));
        // Not Read/Write/Compare: PRPs.
        let mut dsm = Command::dataset_management(1, 0, true);
        assert!(!byte.apply(&mut dsm, 0x10_0000, 16));
        let mut flush = Command::flush(1);
        assert!(!byte.apply(&mut flush, 0x10_0000, 512));
        // Nothing, or more than a descriptor's length can say.
        assert!(!byte.apply(&mut read(), 0x10_0000, 0));
        assert!(!byte.apply(&mut read(), u64::MAX - 8, 512));
        #[cfg(target_pointer_width = "64")]
        assert!(!byte.apply(&mut read(), 0x10_0000, 1 << 32));
        // Disabled.
        assert!(!SglUse::default().apply(&mut read(), 0x10_0000, 512));
    }
}

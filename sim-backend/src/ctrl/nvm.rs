//! NVM command set I/O commands (NVM Command Set Specification 1.1 §3; Flush, Read and
//! Write per NVMe Base §7).

use nvme_core::spec::opcode::NvmOpcode;
use nvme_core::spec::status::{generic, media};
use nvme_core::spec::{Command, Status};

use super::{Controller, Done, Outcome, ReadFailure};
use crate::violation::ViolationKind;

fn invalid_field() -> Outcome {
    Done::err(Status::generic(generic::INVALID_FIELD, true))
}

fn internal_error() -> Outcome {
    Done::err(Status::generic(generic::INTERNAL_ERROR, false))
}

impl Controller {
    /// Executes an I/O command from SQ `sqid`. Fused operations are not supported (Identify
    /// FUSES = 0): Invalid Field in Command, and a violation; so are SGLs (PSDT ≠ 00b) when
    /// Identify SGLS bits 1:0 say none, and PSDT 10b/11b always (SGLS bit 19 = 0: no
    /// metadata SGL, §4.1). Unknown opcodes are Invalid Command Opcode (00h/01h).
    pub(crate) fn io(&mut self, sqid: u16, cmd: &Command) -> Outcome {
        let op = NvmOpcode(cmd.opcode());
        if cmd.fuse() != 0 {
            self.violation(
                ViolationKind::FusedCommand,
                format!(
                    "SQ {sqid}: {op:?} CID {} has FUSE = {:#b}",
                    cmd.cid(),
                    cmd.fuse()
                ),
            );
            return invalid_field();
        }
        let sgl_ok = cmd.psdt() == nvme_core::spec::sgl::psdt::SGL_MPTR_BUFFER
            && nvme_core::spec::sgl::Sgls(self.cfg.sgls).supported();
        if cmd.psdt() != 0 && !sgl_ok {
            self.violation(
                ViolationKind::Psdt,
                format!(
                    "SQ {sqid}: {op:?} CID {} has PSDT = {:#b}, Identify SGLS = {:#x}",
                    cmd.cid(),
                    cmd.psdt(),
                    self.cfg.sgls
                ),
            );
            return invalid_field();
        }
        match op {
            NvmOpcode::FLUSH => self.flush(cmd),
            NvmOpcode::WRITE
            | NvmOpcode::READ
            | NvmOpcode::COMPARE
            | NvmOpcode::WRITE_ZEROES
            | NvmOpcode::VERIFY
            | NvmOpcode::WRITE_UNCORRECTABLE => self.block_command(op, cmd),
            NvmOpcode::DATASET_MANAGEMENT => self.dataset_management(cmd),
            _ => Done::err(Status::generic(generic::INVALID_OPCODE, true)),
        }
    }

    /// Flush (NVMe Base §7.1): writes the volatile write cache of the namespace back to the
    /// medium. NSID FFFFFFFFh flushes every namespace (Identify VWC bits 2:1 = 11b).
    fn flush(&mut self, cmd: &Command) -> Outcome {
        let nsid = cmd.nsid();
        let targets: Vec<usize> = if nsid == 0xFFFF_FFFF && self.cfg.volatile_write_cache {
            (0..self.namespaces.len()).collect()
        } else {
            match self.ns_index(nsid) {
                Ok(i) => vec![i],
                Err(s) => return Done::err(s),
            }
        };
        for i in targets {
            if self.namespaces[i].flush().is_err() {
                return internal_error();
            }
        }
        Done::ok(0)
    }

    /// Read, Write, Compare, Write Zeroes, Verify, Write Uncorrectable (NVM Command Set
    /// §3.3): SLBA CDW11:10, NLB CDW12 15:0 (0's based), FUA bit 30, DEAC bit 25 (Write
    /// Zeroes). Checks: NSID not active → Invalid Namespace or Format (00h/0Bh); SLBA + NLB
    /// beyond NSZE → LBA Out of Range (00h/80h); a data transfer above MDTS → Invalid Field
    /// (00h/02h). Reads, Verify and Compare of a block with a media error (injected, or made
    /// by Write Uncorrectable) fail with Unrecovered Read Error (02h/81h); a Compare
    /// mismatch is Compare Failure (02h/85h). Writes go to the volatile write cache when it
    /// is enabled and FUA is 0, else straight to the medium.
    fn block_command(&mut self, op: NvmOpcode, cmd: &Command) -> Outcome {
        let nsid = cmd.nsid();
        let i = match self.ns_index(nsid) {
            Ok(i) => i,
            Err(s) => return Done::err(s),
        };
        let slba = cmd.slba();
        let nlb = u64::from(cmd.nlb_z()) + 1;
        let fua = cmd.cdw12() & (1 << 30) != 0;
        let (bs, blocks) = {
            let ns = &self.namespaces[i];
            (u64::from(ns.lba_size()), ns.blocks)
        };
        let fail = |status: Status, lba: Option<u64>| {
            Outcome::Done(Done {
                dw0: 0,
                dw1: 0,
                status,
                nsid,
                lba,
            })
        };
        if slba.checked_add(nlb).is_none_or(|end| end > blocks) {
            return fail(Status::generic(generic::LBA_OUT_OF_RANGE, true), Some(slba));
        }
        let writes = matches!(
            op,
            NvmOpcode::WRITE | NvmOpcode::WRITE_ZEROES | NvmOpcode::WRITE_UNCORRECTABLE
        );
        if writes && self.namespaces[i].write_protected() {
            return fail(
                Status::generic(generic::NAMESPACE_WRITE_PROTECTED, true),
                Some(slba),
            );
        }
        let bytes = (nlb * bs) as usize;
        let transfers = matches!(op, NvmOpcode::READ | NvmOpcode::WRITE | NvmOpcode::COMPARE);
        if transfers && self.max_transfer().is_some_and(|m| bytes > m) {
            return invalid_field();
        }
        let cached = self.feat.vwc && !fua;
        let reads_media = matches!(op, NvmOpcode::READ | NvmOpcode::COMPARE | NvmOpcode::VERIFY);
        if reads_media {
            let bad = self
                .faults
                .media_error(nsid, slba, nlb)
                .or_else(|| self.namespaces[i].first_uncorrectable(slba, nlb));
            if let Some(lba) = bad {
                self.health.media_errors += 1;
                return fail(
                    Status::media(media::UNRECOVERED_READ_ERROR, false),
                    Some(lba),
                );
            }
        }
        match op {
            NvmOpcode::READ => {
                match self.read_to_host(i, slba, nlb, bytes, cmd) {
                    Ok(()) => {}
                    Err(ReadFailure::Prp(e)) => return Done::err(self.prp_violation(e)),
                    Err(ReadFailure::Medium) => return internal_error(),
                }
                self.health.host_reads += 1;
                self.health.bytes_read += bytes as u128;
            }
            NvmOpcode::WRITE => {
                match self.write_from_host(i, slba, bytes, cached, cmd) {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Done::err(Status::media(media::WRITE_FAULT, false)),
                    Err(s) => return Done::err(s),
                }
                self.health.host_writes += 1;
                self.health.bytes_written += bytes as u128;
            }
            NvmOpcode::COMPARE => {
                let host = match self.transfer_from_host(cmd, bytes) {
                    Ok(d) => d,
                    Err(s) => return Done::err(s),
                };
                let mut data = vec![0u8; bytes];
                if self.namespaces[i].read(slba, nlb, &mut data).is_err() {
                    return internal_error();
                }
                self.health.host_reads += 1;
                self.health.bytes_read += bytes as u128;
                if host != data {
                    let first = host
                        .iter()
                        .zip(&data)
                        .position(|(a, b)| a != b)
                        .map(|p| slba + p as u64 / bs);
                    return fail(Status::media(media::COMPARE_FAILURE, false), first);
                }
            }
            NvmOpcode::WRITE_ZEROES => {
                let deac = cmd.cdw12() & (1 << 25) != 0;
                if self.namespaces[i].zero(slba, nlb, deac, cached).is_err() {
                    return Done::err(Status::media(media::WRITE_FAULT, false));
                }
            }
            NvmOpcode::WRITE_UNCORRECTABLE => self.namespaces[i].mark_uncorrectable(slba, nlb),
            // Verify: the blocks were checked for media errors above; nothing moves.
            _ => {}
        }
        Done::ok(0)
    }

    /// Dataset Management (NVM Command Set §3.3.3): NR CDW10 7:0 (0's based ranges), AD
    /// CDW11 bit 2. The data is NR + 1 range entries of 16 bytes (context attributes, length
    /// in blocks, starting LBA). With AD = 1 each range is deallocated (reads as zeroes,
    /// DLFEAT 001b); a range beyond NSZE is LBA Out of Range and nothing is deallocated.
    /// Without AD the attributes are accepted as hints and ignored.
    fn dataset_management(&mut self, cmd: &Command) -> Outcome {
        let i = match self.ns_index(cmd.nsid()) {
            Ok(i) => i,
            Err(s) => return Done::err(s),
        };
        let nr = (cmd.cdw10() & 0xFF) as usize + 1;
        let ad = cmd.cdw11() & (1 << 2) != 0;
        let raw = match self.transfer_from_host(cmd, nr * 16) {
            Ok(d) => d,
            Err(s) => return Done::err(s),
        };
        let blocks = self.namespaces[i].blocks;
        let mut ranges = Vec::with_capacity(nr);
        for r in raw.chunks_exact(16) {
            let len = u64::from(u32::from_le_bytes([r[4], r[5], r[6], r[7]]));
            let mut s = [0u8; 8];
            s.copy_from_slice(&r[8..16]);
            let slba = u64::from_le_bytes(s);
            if slba.checked_add(len).is_none_or(|e| e > blocks) {
                return Done::err(Status::generic(generic::LBA_OUT_OF_RANGE, true));
            }
            ranges.push((slba, len));
        }
        if ad && self.namespaces[i].write_protected() {
            return Done::err(Status::generic(generic::NAMESPACE_WRITE_PROTECTED, true));
        }
        if ad {
            let cached = self.feat.vwc;
            for (slba, len) in ranges {
                if len > 0 && self.namespaces[i].zero(slba, len, true, cached).is_err() {
                    return internal_error();
                }
            }
        }
        Done::ok(0)
    }
}

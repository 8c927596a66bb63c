//! Admin commands (NVMe Base §5.1, §5.2).

use std::collections::{HashSet, VecDeque};

use nvme_core::spec::features::select;
use nvme_core::spec::identify::{cns, oacs, oncs, IDENTIFY_LEN};
use nvme_core::spec::log::lid;
use nvme_core::spec::opcode::AdminOpcode;
use nvme_core::spec::status::{generic, specific};
use nvme_core::spec::{
    AsciiField, Command, ErrorLogEntry, FeatureId, FirmwareSlotLog, IdentifyController,
    IdentifyNamespace, LbaFormat, NamespaceList, SmartLog, Status, CQE_SIZE, SQE_SIZE,
};

use super::{
    done_status, Controller, Cq, Done, Held, Outcome, Sq, CCTEMP, ERROR_LOG_ENTRIES, WCTEMP,
};
use crate::namespace::{LBA_FORMATS, LBA_FORMAT_RP};
use crate::violation::ViolationKind;

fn invalid_field() -> Outcome {
    Done::err(Status::generic(generic::INVALID_FIELD, true))
}

fn specific_err(sc: u8) -> Outcome {
    Done::err(Status::specific(sc, true))
}

/// The ONCS bits this model implements (Identify Controller bytes 521:520): exactly the
/// optional NVM commands of [`super::nvm`], and bit 4 because Get Features implements the
/// Select field and Set Features the Save field (nothing is saveable: SV = 1 is Feature
/// Identifier Not Saveable).
pub(crate) const ONCS: u16 = oncs::COMPARE
    | oncs::WRITE_UNCORRECTABLE
    | oncs::DATASET_MANAGEMENT
    | oncs::WRITE_ZEROES
    | oncs::SAVE_SELECT
    | oncs::VERIFY;

impl Controller {
    /// Executes an admin command. Common checks first: fused operations are not supported
    /// (Identify FUSES = 0) and admin commands on PCIe use PRPs only (§4.3, PSDT = 00b);
    /// both are Invalid Field in Command.
    pub(crate) fn admin(&mut self, cmd: &Command, cid: u16) -> Outcome {
        if cmd.fuse() != 0 {
            self.violation(
                ViolationKind::FusedCommand,
                format!(
                    "admin command {:?} CID {cid} has FUSE = {:#b}",
                    AdminOpcode(cmd.opcode()),
                    cmd.fuse()
                ),
            );
            return invalid_field();
        }
        if cmd.psdt() != 0 {
            self.violation(
                ViolationKind::Psdt,
                format!(
                    "admin command {:?} CID {cid} has PSDT = {:#b}",
                    AdminOpcode(cmd.opcode()),
                    cmd.psdt()
                ),
            );
            return invalid_field();
        }
        match AdminOpcode(cmd.opcode()) {
            AdminOpcode::DELETE_IO_SQ => self.delete_io_sq(cmd),
            AdminOpcode::CREATE_IO_SQ => self.create_io_sq(cmd),
            AdminOpcode::GET_LOG_PAGE => self.get_log_page(cmd),
            AdminOpcode::DELETE_IO_CQ => self.delete_io_cq(cmd),
            AdminOpcode::CREATE_IO_CQ => self.create_io_cq(cmd),
            AdminOpcode::IDENTIFY => self.identify(cmd),
            AdminOpcode::ABORT => self.abort(cmd),
            AdminOpcode::SET_FEATURES => self.set_features(cmd),
            AdminOpcode::GET_FEATURES => self.get_features(cmd),
            AdminOpcode::ASYNC_EVENT_REQUEST => self.async_event_request(cid),
            AdminOpcode::FORMAT_NVM => self.format_nvm(cmd),
            AdminOpcode::DOORBELL_BUFFER_CONFIG if self.cfg.doorbell_buffer => {
                self.doorbell_buffer_config(cmd)
            }
            // §5: an opcode the controller does not support is Invalid Command Opcode.
            _ => Done::err(Status::generic(generic::INVALID_OPCODE, true)),
        }
    }

    // ------------------------------------------------------------------ queues

    /// Doorbell Buffer Config (§5.8): PRP1 the shadow doorbell buffer, PRP2 the EventIdx
    /// buffer, each a memory page. Either not page aligned: Invalid Field in Command; not
    /// mapped: Data Transfer Error. From then on, until a reset, the I/O queues' shadow
    /// doorbells are read when a CQ is full and EventIdx is written: SQ EventIdx is the last
    /// tail seen (every new tail is rung), CQ EventIdx one behind the last head seen (the
    /// host rings a CQ head only when asked to, with a full CQ). The values of existing
    /// queues are published into both buffers.
    fn doorbell_buffer_config(&mut self, cmd: &Command) -> Outcome {
        let (dbs, eis) = (cmd.prp1(), cmd.prp2());
        let page = nvme_core::spec::PAGE_SIZE as u64;
        if dbs % page != 0 || eis % page != 0 || dbs == 0 || eis == 0 {
            return invalid_field();
        }
        if !self.dma.is_mapped(dbs, page as usize) || !self.dma.is_mapped(eis, page as usize) {
            return Done::err(Status::generic(generic::DATA_TRANSFER_ERROR, false));
        }
        self.dbbuf = Some((dbs, eis));
        for qid in 1..self.sqs.len() {
            let sq_tail = self.sqs[qid].as_ref().map(|q| q.tail);
            let cq_head = self.cqs.get(qid).and_then(|c| c.as_ref()).map(|q| q.head);
            if let Some(t) = sq_tail {
                let _ = self
                    .dma
                    .write(dbs + self.dbbuf_offset(qid, false), &t.to_le_bytes());
                self.set_event_idx(qid, false, t);
            }
            if let Some(h) = cq_head {
                let _ = self
                    .dma
                    .write(dbs + self.dbbuf_offset(qid, true), &h.to_le_bytes());
                self.set_event_idx(qid, true, h.wrapping_sub(1) & 0xFFFF);
            }
        }
        Done::ok(0)
    }

    /// Create I/O Completion Queue (§5.2.1). Checks, in this order (the spec lets the
    /// controller pick when several apply, §4.2.3):
    /// - CC.IOCQES must be 4 (16-byte entries, Identify CQES): otherwise Invalid Queue Size
    ///   (01h/02h) and a violation (a host must set IOCQES before creating I/O queues,
    ///   §3.1.4.5);
    /// - QID 0, above the granted Number of Queues, or already in use: Invalid Queue
    ///   Identifier (01h/01h);
    /// - QSIZE 0 or above CAP.MQES: Invalid Queue Size (01h/02h);
    /// - PC = 0 while CAP.CQR = 1: Invalid Field in Command (00h/02h);
    /// - IEN = 1 with an interrupt vector beyond the function's MSI-X vectors: Invalid
    ///   Interrupt Vector (01h/08h) (IV is not checked with IEN = 0);
    /// - PRP1 not aligned to the memory page size: PRP Offset Invalid (00h/13h);
    /// - the queue memory not mapped: Data Transfer Error (00h/04h).
    fn create_io_cq(&mut self, cmd: &Command) -> Outcome {
        let qid = cmd.cdw10_lo();
        let qsize_z = cmd.cdw10_hi();
        let pc = cmd.cdw11() & 1 != 0;
        let ien = cmd.cdw11() & 2 != 0;
        let iv = (cmd.cdw11() >> 16) as u16;
        let base = cmd.prp1();
        if self.cc.iocqes() != 4 {
            self.violation(
                ViolationKind::QueueEntrySize,
                format!(
                    "Create I/O CQ {qid} with CC.IOCQES = {} (must be 4)",
                    self.cc.iocqes()
                ),
            );
            return specific_err(specific::INVALID_QUEUE_SIZE);
        }
        if qid == 0 || qid > self.granted.1 {
            return specific_err(specific::INVALID_QUEUE_IDENTIFIER);
        }
        if self.cqs[usize::from(qid)].is_some() {
            self.violation(
                ViolationKind::QueueCreatedTwice,
                format!("Create I/O CQ {qid}: already exists"),
            );
            return specific_err(specific::INVALID_QUEUE_IDENTIFIER);
        }
        if qsize_z == 0 || qsize_z > self.cap.mqes_z() {
            return specific_err(specific::INVALID_QUEUE_SIZE);
        }
        if !pc && self.cap.cqr() {
            return invalid_field();
        }
        if ien && iv >= self.cfg.msix_vectors {
            return specific_err(specific::INVALID_INTERRUPT_VECTOR);
        }
        if base % self.page_size() as u64 != 0 {
            self.violation(
                ViolationKind::MisalignedQueueBase,
                format!("Create I/O CQ {qid}: base {base:#x} not page aligned"),
            );
            return Done::err(Status::generic(generic::PRP_OFFSET_INVALID, true));
        }
        let size = u32::from(qsize_z) + 1;
        if !self.dma.is_mapped(base, size as usize * CQE_SIZE) {
            self.violation(
                ViolationKind::UnmappedDma,
                format!("Create I/O CQ {qid}: {size} entries at {base:#x} are not mapped"),
            );
            return Done::err(Status::generic(generic::DATA_TRANSFER_ERROR, true));
        }
        self.cqs[usize::from(qid)] = Some(Cq {
            base,
            size,
            tail: 0,
            head: 0,
            phase: true,
            ien,
            iv,
            backlog: VecDeque::new(),
            phase_hold: None,
            head_from_shadow: false,
            pin: self.dma.pin(base, size as usize * CQE_SIZE),
        });
        self.io_queues_created = true;
        Done::ok(0)
    }

    /// Create I/O Submission Queue (§5.2.2). Checks, in this order:
    /// - CC.IOSQES must be 6 (64-byte entries): otherwise Invalid Queue Size (01h/02h) and a
    ///   violation;
    /// - CQID 0 or above the granted number of CQs: Invalid Queue Identifier (01h/01h); an
    ///   in-range CQID whose CQ does not exist: Completion Queue Invalid (01h/00h);
    /// - QID 0, above the granted count, or in use: Invalid Queue Identifier (01h/01h);
    /// - QSIZE 0 or above CAP.MQES: Invalid Queue Size (01h/02h);
    /// - PC = 0 with CAP.CQR = 1: Invalid Field in Command (00h/02h);
    /// - base not page aligned: PRP Offset Invalid (00h/13h); not mapped: Data Transfer
    ///   Error (00h/04h).
    ///
    /// QPRIO is ignored (round robin arbitration only, CAP.AMS = 0).
    fn create_io_sq(&mut self, cmd: &Command) -> Outcome {
        let qid = cmd.cdw10_lo();
        let qsize_z = cmd.cdw10_hi();
        let pc = cmd.cdw11() & 1 != 0;
        let cqid = (cmd.cdw11() >> 16) as u16;
        let base = cmd.prp1();
        if self.cc.iosqes() != 6 {
            self.violation(
                ViolationKind::QueueEntrySize,
                format!(
                    "Create I/O SQ {qid} with CC.IOSQES = {} (must be 6)",
                    self.cc.iosqes()
                ),
            );
            return specific_err(specific::INVALID_QUEUE_SIZE);
        }
        if cqid == 0 || cqid > self.granted.1 {
            return specific_err(specific::INVALID_QUEUE_IDENTIFIER);
        }
        if self.cqs[usize::from(cqid)].is_none() {
            return specific_err(specific::COMPLETION_QUEUE_INVALID);
        }
        if qid == 0 || qid > self.granted.0 {
            return specific_err(specific::INVALID_QUEUE_IDENTIFIER);
        }
        if self.sqs[usize::from(qid)].is_some() {
            self.violation(
                ViolationKind::QueueCreatedTwice,
                format!("Create I/O SQ {qid}: already exists"),
            );
            return specific_err(specific::INVALID_QUEUE_IDENTIFIER);
        }
        if qsize_z == 0 || qsize_z > self.cap.mqes_z() {
            return specific_err(specific::INVALID_QUEUE_SIZE);
        }
        if !pc && self.cap.cqr() {
            return invalid_field();
        }
        if base % self.page_size() as u64 != 0 {
            self.violation(
                ViolationKind::MisalignedQueueBase,
                format!("Create I/O SQ {qid}: base {base:#x} not page aligned"),
            );
            return Done::err(Status::generic(generic::PRP_OFFSET_INVALID, true));
        }
        let size = u32::from(qsize_z) + 1;
        if !self.dma.is_mapped(base, size as usize * SQE_SIZE) {
            self.violation(
                ViolationKind::UnmappedDma,
                format!("Create I/O SQ {qid}: {size} entries at {base:#x} are not mapped"),
            );
            return Done::err(Status::generic(generic::DATA_TRANSFER_ERROR, true));
        }
        self.sq_end = self.sq_end.max(usize::from(qid) + 1);
        self.sqs[usize::from(qid)] = Some(Sq {
            base,
            size,
            head: 0,
            tail: 0,
            cqid,
            outstanding: super::CidSet::new(),
            abort_on_fetch: HashSet::new(),
            pin: self.dma.pin(base, size as usize * SQE_SIZE),
        });
        self.io_queues_created = true;
        Done::ok(0)
    }

    /// Delete I/O Submission Queue (§5.2.4): QID 0 or a queue that does not exist is
    /// Invalid Queue Identifier (01h/01h). Commands of the queue that were fetched but not
    /// completed are completed with Command Aborted due to SQ Deletion (00h/08h) before the
    /// delete completes; entries not yet fetched are discarded.
    fn delete_io_sq(&mut self, cmd: &Command) -> Outcome {
        let qid = cmd.cdw10_lo();
        if qid == 0 || self.sqs.get(usize::from(qid)).is_none_or(|q| q.is_none()) {
            return specific_err(specific::INVALID_QUEUE_IDENTIFIER);
        }
        let (mine, keep): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.sqid == qid);
        self.held = keep;
        for h in mine {
            self.post(
                h.sqid,
                h.cid,
                done_status(Status::generic(generic::ABORTED_SQ_DELETION, false)),
            );
        }
        self.sqs[usize::from(qid)] = None;
        Done::ok(0)
    }

    /// Delete I/O Completion Queue (§5.2.3): QID 0 or a queue that does not exist is
    /// Invalid Queue Identifier (01h/01h); a CQ that still has SQs is Invalid Queue Deletion
    /// (01h/0Ch).
    fn delete_io_cq(&mut self, cmd: &Command) -> Outcome {
        let qid = cmd.cdw10_lo();
        if qid == 0 || self.cqs.get(usize::from(qid)).is_none_or(|q| q.is_none()) {
            return specific_err(specific::INVALID_QUEUE_IDENTIFIER);
        }
        if self.sqs.iter().flatten().any(|sq| sq.cqid == qid) {
            return specific_err(specific::INVALID_QUEUE_DELETION);
        }
        self.cqs[usize::from(qid)] = None;
        Done::ok(0)
    }

    // ------------------------------------------------------------------ identify

    /// Identify (§5.1.13). CNS 00h: Identify Namespace of an active NSID; an NSID in
    /// 1..=NN that is inactive returns zeroes (none is, here: every NSID up to NN is
    /// active); NSID 0 or above NN is Invalid Namespace or Format (00h/0Bh). NSID FFFFFFFFh
    /// asks for the capabilities common to all namespaces, which exists only with
    /// Namespace Management: this controller does not support it (OACS bit 3 = 0), so it
    /// is Invalid Namespace or Format. CNS 01h: Identify Controller. CNS 02h: active NSIDs
    /// above NSID (FFFFFFFEh and FFFFFFFFh are Invalid Namespace or Format). CNS 03h: the
    /// Namespace Identification Descriptor list (EUI-64, NGUID, CSI). CNS 05h/06h/07h with
    /// CSI 00h (NVM): the I/O command set specific structures (zeroes: no NVM specific
    /// features) and the active list. Other CNS values: Invalid Field (00h/02h).
    fn identify(&mut self, cmd: &Command) -> Outcome {
        let cnsv = cmd.cdw10() as u8;
        let nsid = cmd.nsid();
        let csi = (cmd.cdw11() >> 24) as u8;
        let mut page = vec![0u8; IDENTIFY_LEN];
        let nn = self.namespaces.len() as u32;
        match cnsv {
            cns::NAMESPACE => match self.ns_index(nsid) {
                Ok(i) => {
                    self.identify_namespace(i).encode(&mut page);
                    // NSATTR (byte 99) bit 0: write protected (a read-only image).
                    page[99] |= u8::from(self.namespaces[i].write_protected());
                }
                Err(s) => return Done::err(s),
            },
            cns::CONTROLLER => self.identify_controller().encode(&mut page),
            cns::ACTIVE_NS_LIST | cns::CSI_ACTIVE_NS_LIST => {
                if nsid >= 0xFFFF_FFFE {
                    return Done::err(Status::generic(generic::INVALID_NAMESPACE, true));
                }
                if cnsv == cns::CSI_ACTIVE_NS_LIST && csi != 0 {
                    return invalid_field();
                }
                let ids: Vec<u32> = (1..=nn).filter(|&id| id > nsid).collect();
                NamespaceList::encode(&ids, &mut page);
            }
            cns::NS_DESCRIPTORS => {
                let i = match self.ns_index(nsid) {
                    Ok(i) => i,
                    Err(s) => return Done::err(s),
                };
                let id = self.identify_namespace(i);
                // §5.1.13.2.3: NIDT 1h EUI-64 (8 bytes), 2h NGUID (16), 4h CSI (1).
                let mut off = 0;
                for (nidt, val) in [(1u8, &id.eui64[..]), (2, &id.nguid[..]), (4, &[0u8][..])] {
                    page[off] = nidt;
                    page[off + 1] = val.len() as u8;
                    page[off + 4..off + 4 + val.len()].copy_from_slice(val);
                    off += 4 + val.len();
                }
            }
            cns::CSI_NAMESPACE => {
                if csi != 0 {
                    return invalid_field();
                }
                if let Err(s) = self.ns_index(nsid) {
                    return Done::err(s);
                }
            }
            cns::CSI_CONTROLLER => {
                if csi != 0 {
                    return invalid_field();
                }
            }
            _ => return invalid_field(),
        }
        match self.transfer_to_host(cmd, &page) {
            Ok(()) => Done::ok(0),
            Err(s) => Done::err(s),
        }
    }

    /// Identify Controller data (§5.1.13.2.1).
    pub(crate) fn identify_controller(&self) -> IdentifyController {
        IdentifyController {
            // Not a registered vendor: this is a model.
            vid: 0xABCD,
            ssvid: 0xABCD,
            sn: AsciiField::from_str_padded(&self.cfg.serial),
            mn: AsciiField::from_str_padded(&self.cfg.model),
            fr: AsciiField::from_str_padded(&self.cfg.firmware),
            rab: 0,
            ieee: [0; 3],
            cmic: 0,
            mdts: self.cfg.mdts,
            cntlid: 1,
            ver: 0x0002_0000,
            rtd3r: 0,
            rtd3e: 1_000_000,
            oaes: 0,
            ctratt: 0,
            cntrltype: 1,
            oacs: oacs::FORMAT_NVM
                | if self.cfg.doorbell_buffer {
                    oacs::DOORBELL_BUFFER_CONFIG
                } else {
                    0
                },
            acl: self.cfg.acl,
            aerl: self.cfg.aerl,
            // Slot 1 read-only, one slot.
            frmw: 0b0000_0011,
            // LPA bit 2: extended data for Get Log Page (NUMDU, LPOL/LPOU).
            lpa: 0b0000_0100,
            elpe: (ERROR_LOG_ENTRIES - 1) as u8,
            npss: 0,
            wctemp: WCTEMP,
            cctemp: CCTEMP,
            sqes: 0x66,
            cqes: 0x44,
            maxcmd: 0,
            nn: self.namespaces.len() as u32,
            oncs: ONCS,
            fuses: 0,
            fna: 0,
            // VWC bit 0 present; bits 2:1 = 11b: Flush with NSID FFFFFFFFh is supported.
            vwc: if self.cfg.volatile_write_cache {
                0b111
            } else {
                0
            },
            awun: 0,
            awupf: 0,
            sgls: self.cfg.sgls,
            subnqn: AsciiField::from_str_padded(&format!(
                "nqn.2024-01.invalid.nvme-sim:{}",
                self.cfg.serial
            )),
        }
    }

    /// Identify Namespace data (NVM Command Set §4.1.5.1).
    pub(crate) fn identify_namespace(&self, i: usize) -> IdentifyNamespace {
        let ns = &self.namespaces[i];
        let mut id = IdentifyNamespace {
            nsze: ns.blocks,
            ncap: ns.blocks,
            nuse: ns.nuse(),
            // NSFEAT bit 0: thin provisioning (NUSE reports allocated blocks).
            nsfeat: 0x01,
            nlbaf_z: (LBA_FORMATS.len() - 1) as u8,
            flbas: ns.lbaf as u8,
            // DLFEAT: deallocated blocks read as zeroes (001b), Write Zeroes DEAC supported.
            dlfeat: 0x09,
            ..Default::default()
        };
        for (j, (&lbads, &rp)) in LBA_FORMATS.iter().zip(LBA_FORMAT_RP.iter()).enumerate() {
            id.lbaf[j] = LbaFormat { ms: 0, lbads, rp };
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.cfg.serial.bytes().chain(ns.nsid.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        id.eui64 = h.to_be_bytes();
        id.nguid[..8].copy_from_slice(&h.to_be_bytes());
        id.nguid[8..12].copy_from_slice(&ns.nsid.to_be_bytes());
        id.nguid[12..].copy_from_slice(b"nsim");
        id
    }

    // ------------------------------------------------------------------ logs

    /// Get Log Page (§5.1.12): LID CDW10 7:0, RAE bit 15, NUMD (0's based dwords) from
    /// NUMDL CDW10 31:16 and NUMDU CDW11 15:0, byte offset LPOL/LPOU CDW12/13. The offset
    /// must be dword aligned and inside the log (else Invalid Field); bytes past the end of
    /// the log read as zero. Unsupported LIDs are Invalid Log Page (01h/09h). The logs are
    /// controller-wide (LPA bit 0 = 0): an NSID other than 0 or FFFFFFFFh is Invalid Field.
    /// Reading the Error Information or SMART log with RAE = 0 unmasks its asynchronous
    /// event type.
    fn get_log_page(&mut self, cmd: &Command) -> Outcome {
        let log = cmd.cdw10() as u8;
        let rae = cmd.cdw10() & (1 << 15) != 0;
        let numd = ((cmd.cdw11() & 0xFFFF) << 16 | (cmd.cdw10() >> 16)) as usize + 1;
        let off = u64::from(cmd.cdw12()) | u64::from(cmd.cdw13()) << 32;
        let len = numd * 4;
        if self.max_transfer().is_some_and(|m| len > m) {
            return invalid_field();
        }
        let data = match log {
            lid::ERROR_INFO => {
                let mut b = vec![0u8; ERROR_LOG_ENTRIES * ErrorLogEntry::LEN];
                for (i, e) in self.error_log().enumerate() {
                    e.encode(&mut b[i * ErrorLogEntry::LEN..]);
                }
                b
            }
            lid::SMART => {
                let mut b = vec![0u8; SmartLog::LEN];
                self.smart_log().encode(&mut b);
                b
            }
            lid::FIRMWARE_SLOT => {
                let mut f = FirmwareSlotLog {
                    afi: 1,
                    ..Default::default()
                };
                for s in f.frs.iter_mut() {
                    *s = AsciiField([0; 8]);
                }
                f.frs[0] = AsciiField::from_str_padded(&self.cfg.firmware);
                let mut b = vec![0u8; FirmwareSlotLog::LEN];
                f.encode(&mut b);
                b
            }
            _ => return specific_err(specific::INVALID_LOG_PAGE),
        };
        if cmd.nsid() != 0 && cmd.nsid() != 0xFFFF_FFFF {
            return invalid_field();
        }
        if off % 4 != 0 || off >= data.len() as u64 {
            return invalid_field();
        }
        let mut out = vec![0u8; len];
        let start = off as usize;
        let n = (data.len() - start).min(len);
        out[..n].copy_from_slice(&data[start..start + n]);
        if let Err(s) = self.transfer_to_host(cmd, &out) {
            return Done::err(s);
        }
        if !rae {
            self.log_read(log);
        }
        Done::ok(0)
    }

    /// SMART / Health Information (§5.1.12.1.3). Data units are thousands of 512-byte
    /// units, rounded up.
    pub(crate) fn smart_log(&self) -> SmartLog {
        let units = |bytes: u128| (bytes / 512).div_ceil(1000);
        let h = &self.health;
        SmartLog {
            critical_warning: self.critical_warning(),
            composite_temperature: h.temperature,
            available_spare: 100,
            available_spare_threshold: 10,
            percentage_used: 0,
            data_units_read: units(h.bytes_read),
            data_units_written: units(h.bytes_written),
            host_read_commands: h.host_reads,
            host_write_commands: h.host_writes,
            controller_busy_time: 0,
            power_cycles: h.power_cycles,
            power_on_hours: u128::from(self.created.elapsed().as_secs() / 3600),
            unsafe_shutdowns: h.unsafe_shutdowns,
            media_errors: h.media_errors,
            num_error_log_entries: u128::from(self.error_count()),
        }
    }

    // ------------------------------------------------------------------ abort, AER

    /// Abort (§5.1.1): SQID CDW10 15:0, CID 31:16. More than ACL + 1 aborts outstanding is
    /// Abort Command Limit Exceeded (01h/03h). A command whose completion is held in the
    /// controller (an outstanding Asynchronous Event Request, a completion delayed or
    /// dropped by fault injection) or that is still in the SQ unfetched is aborted: it
    /// completes with Command Abort Requested (00h/07h) and Abort's DW0 bit 0 is 0.
    /// Otherwise the command is not aborted and DW0 bit 0 is 1.
    fn abort(&mut self, cmd: &Command) -> Outcome {
        let sqid = cmd.cdw10_lo();
        let cid = cmd.cdw10_hi();
        let outstanding_aborts = self
            .held
            .iter()
            .filter(|h| h.sqid == 0 && h.opcode == AdminOpcode::ABORT.0)
            .count();
        if outstanding_aborts > usize::from(self.cfg.acl) {
            return specific_err(specific::ABORT_LIMIT_EXCEEDED);
        }
        let aborted = Status::generic(generic::ABORT_REQUESTED, false);
        if let Some(i) = self
            .held
            .iter()
            .position(|h| h.sqid == sqid && h.cid == cid)
        {
            let h = self.held.remove(i);
            self.post(h.sqid, h.cid, done_status(aborted));
            return Done::ok(0);
        }
        if sqid == 0 {
            if let Some(i) = self.aer.outstanding.iter().position(|&c| c == cid) {
                self.aer.outstanding.remove(i);
                self.post(0, cid, done_status(aborted));
                return Done::ok(0);
            }
        }
        if let Some(Some(sq)) = self.sqs.get_mut(usize::from(sqid)) {
            let mut i = sq.head;
            let mut found = false;
            while i != sq.tail {
                let mut b = [0u8; 4];
                if self
                    .dma
                    .read(sq.base + u64::from(i) * SQE_SIZE as u64, &mut b)
                    .is_ok()
                    && (u32::from_le_bytes(b) >> 16) as u16 == cid
                {
                    found = true;
                    break;
                }
                i = (i + 1) % sq.size;
            }
            if found {
                sq.abort_on_fetch.insert(cid);
                return Done::ok(0);
            }
        }
        Done::ok(1)
    }

    /// Asynchronous Event Request (§5.1.2): held until an event is reported. More than
    /// AERL + 1 outstanding is Asynchronous Event Request Limit Exceeded (01h/05h).
    fn async_event_request(&mut self, cid: u16) -> Outcome {
        if self.aer.outstanding.len() > usize::from(self.cfg.aerl) {
            return specific_err(specific::AER_LIMIT_EXCEEDED);
        }
        self.aer.outstanding.push_back(cid);
        self.dispatch_events();
        Outcome::Deferred
    }

    // ------------------------------------------------------------------ features

    fn feature_supported(&self, fid: u8) -> bool {
        matches!(fid, 0x01 | 0x02 | 0x04 | 0x05 | 0x07..=0x0B)
            || (fid == 0x06 && self.cfg.volatile_write_cache)
    }

    /// Set Features (§5.1.25). FID CDW10 7:0, SV bit 31 (nothing is saveable: SV = 1 is
    /// Feature Identifier Not Saveable, 01h/0Dh). None of the features is namespace
    /// specific: an NSID other than 0 or FFFFFFFFh is Feature Not Namespace Specific
    /// (01h/0Fh). Unsupported FIDs are Invalid Field (00h/02h). Feature rules:
    /// - 02h Power Management: PS above NPSS (0) is Invalid Field;
    /// - 04h Temperature Threshold: TMPSEL must be 0 (composite), THSEL 00b (over) or 01b
    ///   (under);
    /// - 05h Error Recovery: DULBE is not supported (NSFEAT bit 2 = 0): Invalid Field;
    /// - 06h Volatile Write Cache: disabling writes the cache back first;
    /// - 07h Number of Queues (§5.1.25.2.1): NSQR or NCQR = FFFFh is Invalid Field; after an
    ///   I/O queue was created (since the last reset) it is Command Sequence Error (00h/0Ch);
    ///   grants min(requested, maximum), DW0 the granted counts 0's based;
    /// - 09h Interrupt Vector Configuration: IV beyond the vectors is Invalid Field;
    /// - 08h, 0Ah, 0Bh: stored (interrupt coalescing is accepted but not applied).
    fn set_features(&mut self, cmd: &Command) -> Outcome {
        let fid = cmd.cdw10() as u8;
        let save = cmd.cdw10() & (1 << 31) != 0;
        let v = cmd.cdw11();
        if !self.feature_supported(fid) {
            return invalid_field();
        }
        if save {
            return specific_err(specific::FEATURE_NOT_SAVEABLE);
        }
        if cmd.nsid() != 0 && cmd.nsid() != 0xFFFF_FFFF {
            return specific_err(specific::FEATURE_NOT_NAMESPACE_SPECIFIC);
        }
        match FeatureId(fid) {
            FeatureId::ARBITRATION => self.feat.arbitration = v,
            FeatureId::POWER_MANAGEMENT => {
                if v & 0x1F != 0 {
                    return invalid_field();
                }
                self.feat.power_management = v & 0xFF;
            }
            FeatureId::TEMPERATURE_THRESHOLD => {
                let tmpth = v as u16;
                let tmpsel = (v >> 16) & 0xF;
                let thsel = (v >> 20) & 0x3;
                if tmpsel != 0 {
                    return invalid_field();
                }
                match thsel {
                    0 => self.feat.temp_over = tmpth,
                    1 => self.feat.temp_under = tmpth,
                    _ => return invalid_field(),
                }
                self.check_temperature();
            }
            FeatureId::ERROR_RECOVERY => {
                if v & (1 << 16) != 0 {
                    return invalid_field();
                }
                self.feat.error_recovery = v & 0xFFFF;
            }
            FeatureId::VOLATILE_WRITE_CACHE => {
                let wce = v & 1 != 0;
                if !wce {
                    for ns in &mut self.namespaces {
                        let _ = ns.flush();
                    }
                }
                self.feat.vwc = wce;
            }
            FeatureId::NUMBER_OF_QUEUES => {
                let nsqr = v as u16;
                let ncqr = (v >> 16) as u16;
                if nsqr == 0xFFFF || ncqr == 0xFFFF {
                    return invalid_field();
                }
                if self.io_queues_created {
                    self.violation(
                        ViolationKind::NumberOfQueuesAfterCreation,
                        "Set Features Number of Queues after I/O queues were created",
                    );
                    return Done::err(Status::generic(generic::COMMAND_SEQUENCE_ERROR, true));
                }
                let max = self.cfg.max_io_queues;
                self.granted = ((nsqr + 1).min(max), (ncqr + 1).min(max));
                return Done::ok(self.queues_dw0());
            }
            FeatureId::INTERRUPT_COALESCING => self.feat.irq_coalescing = v & 0xFFFF,
            FeatureId::INTERRUPT_VECTOR_CONFIG => {
                let iv = v as u16;
                match self.feat.irq_vector_cd.get_mut(usize::from(iv)) {
                    Some(cd) => *cd = v & (1 << 16) != 0,
                    None => return invalid_field(),
                }
            }
            FeatureId::WRITE_ATOMICITY => self.feat.write_atomicity = v & 1,
            FeatureId::ASYNC_EVENT_CONFIG => {
                // Only the SMART critical warnings can be reported (OAES = 0).
                self.feat.async_event_config = v & 0xFF;
                self.check_temperature();
            }
            _ => return invalid_field(),
        }
        Done::ok(0)
    }

    fn queues_dw0(&self) -> u32 {
        u32::from(self.granted.0 - 1) | u32::from(self.granted.1 - 1) << 16
    }

    /// Get Features (§5.1.11): SEL CDW10 10:8: 000b current, 001b default, 010b saved
    /// (nothing is saveable, so the default), 011b supported capabilities (every feature
    /// here is changeable, none saveable or namespace specific: DW0 = 100b); 1xxb is
    /// Invalid Field. Temperature Threshold and Interrupt Vector Configuration select with
    /// CDW11 as in Set Features.
    fn get_features(&mut self, cmd: &Command) -> Outcome {
        let fid = cmd.cdw10() as u8;
        let sel = ((cmd.cdw10() >> 8) & 7) as u8;
        let arg = cmd.cdw11();
        if !self.feature_supported(fid) {
            return invalid_field();
        }
        let defaults = super::Features::defaults(&self.cfg);
        let f = match sel {
            select::CURRENT => self.feat.clone(),
            select::DEFAULT | select::SAVED => defaults,
            select::SUPPORTED_CAPABILITIES => return Done::ok(0b100),
            _ => return invalid_field(),
        };
        let dw0 = match FeatureId(fid) {
            FeatureId::ARBITRATION => f.arbitration,
            FeatureId::POWER_MANAGEMENT => f.power_management,
            FeatureId::TEMPERATURE_THRESHOLD => {
                let tmpsel = (arg >> 16) & 0xF;
                let thsel = (arg >> 20) & 0x3;
                if tmpsel != 0 {
                    return invalid_field();
                }
                let t = match thsel {
                    0 => f.temp_over,
                    1 => f.temp_under,
                    _ => return invalid_field(),
                };
                u32::from(t) | thsel << 20
            }
            FeatureId::ERROR_RECOVERY => f.error_recovery,
            FeatureId::VOLATILE_WRITE_CACHE => u32::from(f.vwc),
            FeatureId::NUMBER_OF_QUEUES => {
                if sel == select::CURRENT {
                    self.queues_dw0()
                } else {
                    let m = u32::from(self.cfg.max_io_queues - 1);
                    m | m << 16
                }
            }
            FeatureId::INTERRUPT_COALESCING => f.irq_coalescing,
            FeatureId::INTERRUPT_VECTOR_CONFIG => {
                let iv = arg as u16;
                match f.irq_vector_cd.get(usize::from(iv)) {
                    Some(&cd) => u32::from(iv) | u32::from(cd) << 16,
                    None => return invalid_field(),
                }
            }
            FeatureId::WRITE_ATOMICITY => f.write_atomicity,
            FeatureId::ASYNC_EVENT_CONFIG => f.async_event_config,
            _ => return invalid_field(),
        };
        Done::ok(dw0)
    }

    // ------------------------------------------------------------------ format

    /// Format NVM (§5.1.10, NVM Command Set §4.1.x): LBAF CDW10 3:0 with LBAFU 13:12, MSET
    /// 4, PI 7:5, SES 11:9. NSID FFFFFFFFh formats every namespace; 0 or above NN is Invalid
    /// Namespace or Format. An LBA format index beyond NLBAF, or PI ≠ 0 (no protection
    /// information), is Invalid Format (01h/0Ah). SES 000b (none) and 001b (user data erase)
    /// are supported; 010b (cryptographic erase, FNA bit 2 = 0) and reserved values are
    /// Invalid Field. Every block of the namespace is deallocated (reads zeroes) and NSZE
    /// follows the new block size, the byte capacity unchanged.
    fn format_nvm(&mut self, cmd: &Command) -> Outcome {
        let d = cmd.cdw10();
        let lbaf = (d & 0xF | ((d >> 12) & 3) << 4) as usize;
        let pi = (d >> 5) & 7;
        let ses = (d >> 9) & 7;
        let nsid = cmd.nsid();
        let targets: Vec<usize> = if nsid == 0xFFFF_FFFF {
            (0..self.namespaces.len()).collect()
        } else {
            match self.ns_index(nsid) {
                Ok(i) => vec![i],
                Err(s) => return Done::err(s),
            }
        };
        if lbaf >= LBA_FORMATS.len() || pi != 0 {
            return specific_err(specific::INVALID_FORMAT);
        }
        if ses > 1 {
            return invalid_field();
        }
        if targets
            .iter()
            .any(|&i| self.namespaces[i].write_protected())
        {
            return Done::err(Status::generic(generic::NAMESPACE_WRITE_PROTECTED, true));
        }
        for i in targets {
            if self.namespaces[i].format(lbaf).is_err() {
                return Done::err(Status::generic(generic::INTERNAL_ERROR, false));
            }
        }
        Done::ok(0)
    }
}

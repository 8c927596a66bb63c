//! Known deviations of peer controllers from the spec: the only place where a case may accept
//! an outcome the spec does not allow. Each row names the peer, the case, what the spec expects,
//! what the peer does, and why we accept it. The rows for QEMU come from
//! `shared/docs/qemu-nvme-peer.md` ("Where 7.2 departs from the spec").

use crate::backend::Peer;

/// One allowed deviation.
#[derive(Debug, Clone, Copy)]
pub struct Allowance {
    /// Stable identifier, printed in reports (`QEMU-01`).
    pub id: &'static str,
    /// The controller it applies to.
    pub peer: Peer,
    /// The case ID it applies to.
    pub case: &'static str,
    /// What the spec (and the case) expects.
    pub expected: &'static str,
    /// What the peer does instead, as matched by the case.
    pub observed: Observed,
    /// Why it is accepted.
    pub reason: &'static str,
}

/// What a peer does instead of the spec's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Completes with this (SCT, SC).
    Status(u8, u8),
    /// Completes with the expected (SCT, SC) but without DNR.
    NoDnr,
    /// Completes successfully where the spec asks for an error.
    Success,
    /// The case's behavioural check fails in the documented way (described in `reason`).
    Behaviour,
}

/// The table.
pub static ALLOWANCES: &[Allowance] = &[
    Allowance {
        id: "QEMU-01",
        peer: Peer::Qemu,
        case: "QM-07",
        expected: "Create I/O SQ naming CQID 0: 01h/01h Invalid Queue Identifier",
        observed: Observed::Status(1, 0x00),
        reason: "QEMU 7.2 reports Completion Queue Invalid for a CQID of 0 or out of range (qemu-nvme-peer.md row 1)",
    },
    Allowance {
        id: "QEMU-02",
        peer: Peer::Qemu,
        case: "QM-08",
        expected: "Create I/O SQ naming a CQID above the granted count: 01h/01h",
        observed: Observed::Status(1, 0x00),
        reason: "QEMU 7.2 reports Completion Queue Invalid for an out-of-range CQID (qemu-nvme-peer.md row 1)",
    },
    Allowance {
        id: "QEMU-03",
        peer: Peer::Qemu,
        case: "QM-11",
        expected: "Delete I/O CQ with an invalid QID: 01h/01h Invalid Queue Identifier",
        observed: Observed::Status(1, 0x00),
        reason: "QEMU 7.2 answers Completion Queue Invalid (qemu-nvme-peer.md row 2)",
    },
    Allowance {
        id: "QEMU-04",
        peer: Peer::Qemu,
        case: "QM-10",
        expected: "Delete I/O CQ that still has SQs: 01h/0Ch with DNR",
        observed: Observed::NoDnr,
        reason: "QEMU 7.2 returns Invalid Queue Deletion without DNR (qemu-nvme-peer.md row 3)",
    },
    Allowance {
        id: "QEMU-05",
        peer: Peer::Qemu,
        case: "LOG-04",
        expected: "Get Log Page with an unsupported LID: 01h/09h Invalid Log Page",
        observed: Observed::Status(0, 0x02),
        reason: "QEMU 7.2 answers Invalid Field in Command (qemu-nvme-peer.md row 4)",
    },
    Allowance {
        id: "QEMU-06",
        peer: Peer::Qemu,
        case: "FEAT-11",
        expected: "Set Features Arbitration (01h) with its current value: success",
        observed: Observed::Status(1, 0x0E),
        reason: "QEMU 7.2 reports Arbitration not changeable and refuses every Set with Feature Not Changeable (qemu-nvme-peer.md row 5)",
    },
    Allowance {
        id: "QEMU-07",
        peer: Peer::Qemu,
        case: "FEAT-12",
        expected: "Set Features Power Management (02h) with its current value: success",
        observed: Observed::Status(1, 0x0E),
        reason: "QEMU 7.2 reports Power Management not changeable and refuses every Set with Feature Not Changeable (qemu-nvme-peer.md row 5)",
    },
    Allowance {
        id: "QEMU-08",
        peer: Peer::Qemu,
        case: "FEAT-13",
        expected: "Set Features Interrupt Coalescing (08h) with its current value: success",
        observed: Observed::Status(1, 0x0E),
        reason: "QEMU 7.2 reports Interrupt Coalescing not changeable and refuses every Set with Feature Not Changeable (qemu-nvme-peer.md row 5)",
    },
    Allowance {
        id: "QEMU-09",
        peer: Peer::Qemu,
        case: "FEAT-14",
        expected: "Set Features Interrupt Vector Configuration (09h) with its current value: success",
        observed: Observed::Status(1, 0x0E),
        reason: "QEMU 7.2 reports Interrupt Vector Configuration not changeable and refuses every Set with Feature Not Changeable (qemu-nvme-peer.md row 5)",
    },
    Allowance {
        id: "QEMU-10",
        peer: Peer::Qemu,
        case: "FEAT-15",
        expected: "Set Features Write Atomicity Normal (0Ah) with its current value: success",
        observed: Observed::Status(1, 0x0E),
        reason: "QEMU 7.2 reports Write Atomicity Normal not changeable and refuses every Set with Feature Not Changeable (qemu-nvme-peer.md row 5)",
    },
    Allowance {
        id: "QEMU-11",
        peer: Peer::Qemu,
        case: "FEAT-19",
        expected: "Set Features Power Management with PS above NPSS: 00h/02h Invalid Field",
        observed: Observed::Status(1, 0x0E),
        reason: "QEMU 7.2 refuses every Set of Power Management with Feature Not Changeable before looking at PS (qemu-nvme-peer.md row 5)",
    },
    Allowance {
        id: "QEMU-12",
        peer: Peer::Qemu,
        case: "QM-22",
        expected: "Delete I/O CQ with QID 0: 01h/01h Invalid Queue Identifier",
        observed: Observed::Status(1, 0x00),
        reason: "QEMU 7.2 answers Completion Queue Invalid for any Delete I/O CQ with an invalid QID, 0 included (qemu-nvme-peer.md row 2)",
    },
    Allowance {
        id: "QEMU-13",
        peer: Peer::Qemu,
        case: "LOG-03",
        expected: "the active firmware slot holds the revision Identify FR reports (§5.1.13.2.1: FR is the active firmware's revision)",
        observed: Observed::Behaviour,
        reason: "QEMU 7.2 fills FRS1 of the Firmware Slot log with a fixed \"1.0\" while FR is the QEMU version; found by this suite in the HIL run (not yet a row of qemu-nvme-peer.md)",
    },
    Allowance {
        id: "QEMU-14",
        peer: Peer::Qemu,
        case: "FMT-04",
        expected: "Format NVM with a reserved Secure Erase Setting (SES=7): 00h/02h Invalid Field in Command",
        observed: Observed::Success,
        reason: "QEMU 7.2 does not check SES: a reserved value formats (and erases) like SES=0; found by this suite in the HIL run (not yet a row of qemu-nvme-peer.md)",
    },
    Allowance {
        id: "QEMU-15",
        peer: Peer::Qemu,
        case: "FMT-06",
        expected: "Format NVM with SES=2 while FNA bit 2 (cryptographic erase supported) is clear: 00h/02h Invalid Field in Command",
        observed: Observed::Success,
        reason: "QEMU 7.2 reports FNA bit 2 clear yet completes a Cryptographic Erase request successfully (it erases the user data); found by this suite in the HIL run (not yet a row of qemu-nvme-peer.md)",
    },
    Allowance {
        id: "QEMU-16",
        peer: Peer::Qemu,
        case: "NS-03",
        expected: "OACS bit 3 set: Identify CNS 13h returns the controller list, naming this controller",
        observed: Observed::Behaviour,
        reason: "QEMU 7.2 advertises namespace management (OACS bit 3) on every controller, but without an nvme-subsys refuses CNS 13h with Invalid Field (qemu-nvme-peer.md: Namespace Management not implemented although OACS advertises it)",
    },
    Allowance {
        id: "QEMU-17",
        peer: Peer::Qemu,
        case: "NS-04",
        expected: "attaching an attached namespace: 01h/18h Namespace Already Attached",
        observed: Observed::Status(0, 0x02),
        reason: "QEMU 7.2 advertises OACS bit 3 on every controller, but without an nvme-subsys refuses Namespace Attachment with Invalid Field (qemu-nvme-peer.md: Namespace Management not implemented although OACS advertises it)",
    },
];

/// The allowance for `case` on `peer` that explains `observed`, if any.
pub fn find(peer: Peer, case: &str, observed: Observed) -> Option<&'static Allowance> {
    ALLOWANCES
        .iter()
        .find(|a| a.peer == peer && a.case == case && a.observed == observed)
}

/// Every allowance for `case` on `peer` (for behavioural deviations).
pub fn for_case(peer: Peer, case: &str) -> impl Iterator<Item = &'static Allowance> + '_ {
    ALLOWANCES
        .iter()
        .filter(move |a| a.peer == peer && a.case == case)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ids_are_unique_and_rows_complete() {
        for (i, a) in ALLOWANCES.iter().enumerate() {
            assert!(!a.reason.is_empty() && !a.expected.is_empty());
            assert!(
                ALLOWANCES[i + 1..].iter().all(|b| b.id != a.id),
                "duplicate {}",
                a.id
            );
        }
    }
}

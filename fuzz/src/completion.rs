//! `completion`: every 16-byte completion entry and every 64-byte command decodes, and the
//! decoded fields agree with the wire layout of NVMe Base §4.2.1 (completion) and §4.1
//! (command), checked here against byte offsets rather than against the decoder's own shifts.

use arbitrary::{Arbitrary, Unstructured};
use nvme_core::spec::log::AsyncEvent;
use nvme_core::spec::{
    AdminOpcode, Command, Completion, DataDirection, NvmOpcode, Status, StatusCodeType,
};

/// One input: raw wire bytes, plus typed values (through the core's `Arbitrary` derives) for
/// the constructors and setters.
#[derive(Debug, Arbitrary)]
pub struct CompletionInput {
    /// A completion entry as the device wrote it.
    pub cqe: [u8; 16],
    /// A submission entry.
    pub sqe: [u8; 64],
    /// A completion built by the derive.
    pub completion: Completion,
    /// A command built by the derive.
    pub command: Command,
    /// A status built by the derive.
    pub status: Status,
    /// Values for the setters.
    pub cid: u16,
    /// FUSE / PSDT values (only the low two bits are meaningful).
    pub fuse: u8,
    /// PSDT.
    pub psdt: u8,
    /// PRP1 / PRP2.
    pub prps: (u64, u64),
    /// A dword index for `cdw`/`set_cdw` (out of range included).
    pub dword: u8,
    /// A dword value.
    pub value: u32,
    /// An async event DW0.
    pub aer_dw0: u32,
}

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn le64(b: &[u8], off: usize) -> u64 {
    le32(b, off) as u64 | (le32(b, off + 4) as u64) << 32
}

/// Checks one completion entry against its bytes.
pub fn check_completion(b: &[u8; 16]) {
    let c = Completion::from_le_bytes(b);
    // Round trip, both representations.
    assert_eq!(&c.to_le_bytes(), b, "CQE bytes do not round-trip");
    assert_eq!(Completion::from_dwords(c.dwords()), c);
    // Field positions (§4.2.1, Figure "Common Completion Queue Entry Layout"; Linux
    // `struct nvme_completion`: result @0, sq_head @8, sq_id @10, command_id @12, status @14).
    assert_eq!(c.dw0(), le32(b, 0));
    assert_eq!(c.dw1(), le32(b, 4));
    assert_eq!(c.sqhd(), le16(b, 8));
    assert_eq!(c.sqid(), le16(b, 10));
    assert_eq!(c.cid(), le16(b, 12));
    let status_word = le16(b, 14);
    assert_eq!(
        c.phase(),
        status_word & 1 == 1,
        "phase is bit 0 of the status word"
    );
    assert_eq!(c.status().bits(), status_word >> 1);
    // Rebuilding the entry from its decoded fields gives it back.
    let rebuilt = Completion::new(
        c.dw0(),
        c.dw1(),
        c.sqhd(),
        c.sqid(),
        c.cid(),
        c.phase(),
        c.status(),
    );
    assert_eq!(rebuilt, c, "Completion::new(fields) != decoded entry");
    let _ = format!("{c:?}");
    check_status(c.status());
}

/// Checks the status field decoders (§4.2.3): SC 7:0, SCT 10:8, CRD 12:11, M 13, DNR 14.
pub fn check_status(s: Status) {
    let bits = s.bits();
    assert!(bits <= 0x7FFF, "the status field has 15 bits");
    assert_eq!(Status::from_bits(bits), s);
    assert_eq!(
        Status::from_bits(bits | 0x8000),
        s,
        "bit 15 is not part of the field"
    );
    assert_eq!(s.sc(), (bits & 0xFF) as u8);
    assert_eq!(s.sct().0, ((bits >> 8) & 7) as u8);
    assert_eq!(s.crd(), ((bits >> 11) & 3) as u8);
    assert_eq!(s.more(), bits & (1 << 13) != 0);
    assert_eq!(s.dnr(), bits & (1 << 14) != 0);
    assert_eq!(s.is_success(), s.sct().0 == 0 && s.sc() == 0);
    assert!(s.is(s.sct(), s.sc()));
    assert!(!s.is(StatusCodeType((s.sct().0 + 1) & 7), s.sc()));
    // `new` builds exactly the type/code/DNR part.
    let n = Status::new(s.sct(), s.sc(), s.dnr());
    assert_eq!(n.bits(), bits & !(0b111 << 11));
    // Names are stable under CRD/M/DNR; display names the codes and flags.
    assert_eq!(n.name(), s.name());
    let shown = format!("{s}");
    let mut expect = format!("SCT {:x}h SC {:02x}h", s.sct().0, s.sc());
    if let Some(name) = s.name() {
        assert!(!name.is_empty());
        expect += &format!(" ({name})");
    }
    if s.dnr() {
        expect += " DNR";
    }
    if s.more() {
        expect += " M";
    }
    if s.crd() != 0 {
        expect += &format!(" CRD{}", s.crd());
    }
    assert_eq!(shown, expect);
    assert_eq!(format!("{s:?}"), shown);
    let sct = s.sct();
    let _ = format!("{sct:?}");
    assert!(!sct.name().is_empty());
}

/// Checks one submission entry against its bytes (§4.1, Figure "Common Command Format").
pub fn check_command(b: &[u8; 64]) {
    let c = Command::from_le_bytes(b);
    assert_eq!(&c.to_le_bytes(), b, "SQE bytes do not round-trip");
    assert_eq!(Command::from_dwords(c.dwords()), c);
    assert_eq!(c.opcode(), b[0]);
    assert_eq!(c.fuse(), b[1] & 3);
    assert_eq!(c.psdt(), b[1] >> 6);
    assert_eq!(c.cid(), le16(b, 2));
    assert_eq!(c.nsid(), le32(b, 4));
    assert_eq!(c.cdw2(), le32(b, 8));
    assert_eq!(c.cdw3(), le32(b, 12));
    assert_eq!(c.mptr(), le64(b, 16));
    assert_eq!(c.prp1(), le64(b, 24));
    assert_eq!(c.prp2(), le64(b, 32));
    assert_eq!(c.cdw10(), le32(b, 40));
    assert_eq!(c.cdw11(), le32(b, 44));
    assert_eq!(c.cdw12(), le32(b, 48));
    assert_eq!(c.cdw13(), le32(b, 52));
    assert_eq!(c.cdw14(), le32(b, 56));
    assert_eq!(c.cdw15(), le32(b, 60));
    assert_eq!(c.slba(), le64(b, 40));
    assert_eq!(c.nlb_z(), le16(b, 48));
    assert_eq!(c.cdw10_lo(), le16(b, 40));
    assert_eq!(c.cdw10_hi(), le16(b, 42));
    for i in 0..16 {
        assert_eq!(c.cdw(i), Some(le32(b, 4 * i)));
    }
    assert_eq!(c.cdw(16), None);
    let _ = format!("{c:?}");
    // Opcodes are open: every byte decodes, names are stable, direction is bits 1:0.
    let admin = AdminOpcode(c.opcode());
    let nvm = NvmOpcode(c.opcode());
    let _ = (format!("{admin:?} {admin}"), format!("{nvm:?} {nvm}"));
    if let Some(n) = admin.name() {
        assert!(format!("{admin}").contains(n));
    }
    if let Some(n) = nvm.name() {
        assert!(format!("{nvm}").contains(n));
    }
    let dir = nvm.data_direction();
    assert_eq!(dir, DataDirection::from_opcode(c.opcode()));
    let expect = match c.opcode() & 3 {
        0 => DataDirection::None,
        1 => DataDirection::HostToController,
        2 => DataDirection::ControllerToHost,
        _ => DataDirection::Bidirectional,
    };
    assert_eq!(dir, expect);
}

/// Setters change exactly their own bit ranges.
fn check_setters(input: &CompletionInput) {
    let base = input.command;
    let before = base.to_le_bytes();
    let only_changed = |after: &[u8; 64], ranges: &[(usize, usize)], what: &str| {
        for i in 0..64 {
            if !ranges.iter().any(|&(s, e)| (s..e).contains(&i)) {
                assert_eq!(after[i], before[i], "{what} changed byte {i}");
            }
        }
    };
    let mut c = base;
    c.set_cid(input.cid);
    assert_eq!(c.cid(), input.cid);
    only_changed(&c.to_le_bytes(), &[(2, 4)], "set_cid");

    let mut c = base;
    c.set_fuse(input.fuse);
    assert_eq!(c.fuse(), input.fuse & 3);
    let a = c.to_le_bytes();
    only_changed(&a, &[(1, 2)], "set_fuse");
    assert_eq!(a[1] & !0b11, before[1] & !0b11);

    let mut c = base;
    c.set_psdt(input.psdt);
    assert_eq!(c.psdt(), input.psdt & 3);
    let a = c.to_le_bytes();
    only_changed(&a, &[(1, 2)], "set_psdt");
    assert_eq!(a[1] & 0x3F, before[1] & 0x3F);

    let mut c = base;
    c.set_prps(input.prps.0, input.prps.1);
    assert_eq!((c.prp1(), c.prp2()), input.prps);
    only_changed(&c.to_le_bytes(), &[(24, 40)], "set_prps");

    let mut c = base;
    c.set_nsid(input.value);
    assert_eq!(c.nsid(), input.value);
    only_changed(&c.to_le_bytes(), &[(4, 8)], "set_nsid");

    let i = input.dword as usize % 20;
    let mut c = base;
    c.set_cdw(i, input.value);
    if i < 16 {
        assert_eq!(c.cdw(i), Some(input.value));
        only_changed(&c.to_le_bytes(), &[(4 * i, 4 * i + 4)], "set_cdw");
    } else {
        assert_eq!(c, base, "set_cdw out of range must be ignored");
    }
}

/// The fuzz target body.
pub fn run_completion(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(input) = CompletionInput::arbitrary(&mut u) else {
        return;
    };
    check_completion(&input.cqe);
    check_completion(&input.completion.to_le_bytes());
    check_status(input.status);
    check_command(&input.sqe);
    check_command(&input.command.to_le_bytes());
    check_setters(&input);
    // An entry built from fields decodes back to the same fields.
    let c = Completion::new(
        input.value,
        input.aer_dw0,
        input.prps.0 as u16,
        input.prps.1 as u16,
        input.cid,
        input.fuse & 1 == 1,
        input.status,
    );
    assert_eq!(
        (
            c.dw0(),
            c.dw1(),
            c.sqhd(),
            c.sqid(),
            c.cid(),
            c.phase(),
            c.status()
        ),
        (
            input.value,
            input.aer_dw0,
            input.prps.0 as u16,
            input.prps.1 as u16,
            input.cid,
            input.fuse & 1 == 1,
            input.status
        )
    );
    // Asynchronous event DW0 (§5.1.2.1): type 2:0, info 15:8, log page 23:16.
    let ev = AsyncEvent::from_dw0(input.aer_dw0);
    assert_eq!(ev.event_type, (input.aer_dw0 & 7) as u8);
    assert_eq!(ev.info, (input.aer_dw0 >> 8) as u8);
    assert_eq!(ev.log_page, (input.aer_dw0 >> 16) as u8);
    assert_eq!(ev.to_dw0(), input.aer_dw0 & 0x00FF_FF07);
    assert_eq!(AsyncEvent::from_dw0(ev.to_dw0()), ev);
}

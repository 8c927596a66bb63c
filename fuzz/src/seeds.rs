//! Seed inputs for the checked-in corpora, built from the input types and encoded in the byte
//! format `arbitrary` 1.x decodes (little-endian integers, `u8 & 1` booleans, `Option` as a
//! flag then the value, collections as "continue" flags before each element, enum variants
//! from a `u32` scaled to the variant count). [`check`] decodes every seed back and compares,
//! so a drift in the format shows up at once. `cargo run --example seeds` writes them.

use arbitrary::{Arbitrary, Unstructured};
use nvme_core::spec::{Command, Completion, NvmOpcode, Status};

use crate::completion::CompletionInput;
use crate::hostile_device::{Action, CidSel, HostileDeviceInput, Injected, SqhdSel};
use crate::hostile_host::{Addr, HostAction, HostileHostInput, Reg};
use crate::identify::PageKind;
use crate::prp::PrpInput;

/// Appends the `arbitrary` encoding of a value.
pub trait Encode {
    /// Writes `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

macro_rules! ints {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
ints!(u8, u16, u32, u64);

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self as u8);
    }
}
impl<T: Encode> Encode for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            None => false.encode(out),
            Some(v) => {
                true.encode(out);
                v.encode(out);
            }
        }
    }
}
impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        for v in self {
            true.encode(out);
            v.encode(out);
        }
        false.encode(out);
    }
}
impl<T: Encode, const N: usize> Encode for [T; N] {
    fn encode(&self, out: &mut Vec<u8>) {
        for v in self {
            v.encode(out);
        }
    }
}
impl<A: Encode, B: Encode> Encode for (A, B) {
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
        self.1.encode(out);
    }
}
impl Encode for Status {
    fn encode(&self, out: &mut Vec<u8>) {
        self.bits().encode(out);
    }
}
impl Encode for Command {
    fn encode(&self, out: &mut Vec<u8>) {
        self.dwords().encode(out);
    }
}
impl Encode for Completion {
    fn encode(&self, out: &mut Vec<u8>) {
        self.dwords().encode(out);
    }
}

/// Variant `k` of an enum with `n` variants.
fn variant(k: u32, n: u32, out: &mut Vec<u8>) {
    let tag = ((k as u64) << 32).div_ceil(n as u64) as u32;
    tag.encode(out);
}

impl Encode for CidSel {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            CidSel::Raw(v) => {
                variant(0, 3, out);
                v.encode(out)
            }
            CidSel::Outstanding(v) => {
                variant(1, 3, out);
                v.encode(out)
            }
            CidSel::Recent(v) => {
                variant(2, 3, out);
                v.encode(out)
            }
        }
    }
}
impl Encode for SqhdSel {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            SqhdSel::Raw(v) => {
                variant(0, 3, out);
                v.encode(out)
            }
            SqhdSel::Current => variant(1, 3, out),
            SqhdSel::Near(d) => {
                variant(2, 3, out);
                (*d as u8).encode(out)
            }
        }
    }
}
impl Encode for Injected {
    fn encode(&self, out: &mut Vec<u8>) {
        self.cid.encode(out);
        self.sqid.encode(out);
        self.sqhd.encode(out);
        self.phase_ok.encode(out);
        self.status.encode(out);
        self.dw0.encode(out);
    }
}
impl Encode for Action {
    fn encode(&self, out: &mut Vec<u8>) {
        const N: u32 = 13;
        match self {
            Action::Read {
                blocks,
                slba,
                reuse,
            } => {
                variant(0, N, out);
                (*blocks, *slba).encode(out);
                reuse.encode(out);
            }
            Action::Write {
                blocks,
                slba,
                reuse,
            } => {
                variant(1, N, out);
                (*blocks, *slba).encode(out);
                reuse.encode(out);
            }
            Action::Raw {
                cmd,
                pages,
                offset,
                len,
            } => {
                variant(2, N, out);
                cmd.encode(out);
                pages.encode(out);
                offset.encode(out);
                len.encode(out);
            }
            Action::Burst { count } => {
                variant(3, N, out);
                count.encode(out);
            }
            Action::Ring => variant(4, N, out),
            Action::Poll => variant(5, N, out),
            Action::Advance { ms } => {
                variant(6, N, out);
                ms.encode(out);
            }
            Action::PastTimeout => variant(7, N, out),
            Action::Complete { pick, status, dw0 } => {
                variant(8, N, out);
                pick.encode(out);
                status.encode(out);
                dw0.encode(out);
            }
            Action::CompleteAll { status } => {
                variant(9, N, out);
                status.encode(out);
            }
            Action::Inject(i) => {
                variant(10, N, out);
                i.encode(out);
            }
            Action::Detach => variant(11, N, out),
            Action::FailAllocations { after } => {
                variant(12, N, out);
                after.encode(out);
            }
        }
    }
}
impl Encode for HostileDeviceInput {
    fn encode(&self, out: &mut Vec<u8>) {
        self.qid.encode(out);
        self.entries.encode(out);
        self.lba_4k.encode(out);
        self.max_transfer.encode(out);
        self.timeout_ms.encode(out);
        self.actions.encode(out);
    }
}
impl Encode for PrpInput {
    fn encode(&self, out: &mut Vec<u8>) {
        self.addr.encode(out);
        self.len.encode(out);
        self.page_sel.encode(out);
        self.list_pages.encode(out);
        self.list_seed.encode(out);
    }
}
impl Encode for CompletionInput {
    fn encode(&self, out: &mut Vec<u8>) {
        self.cqe.encode(out);
        self.sqe.encode(out);
        self.completion.encode(out);
        self.command.encode(out);
        self.status.encode(out);
        self.cid.encode(out);
        self.fuse.encode(out);
        self.psdt.encode(out);
        self.prps.encode(out);
        self.dword.encode(out);
        self.value.encode(out);
        self.aer_dw0.encode(out);
    }
}

/// Encodes `v` and checks that it decodes back to the same value.
pub fn check<T: Encode + for<'a> Arbitrary<'a> + std::fmt::Debug>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    v.encode(&mut out);
    let back = T::arbitrary(&mut Unstructured::new(&out)).expect("seed decodes");
    assert_eq!(
        format!("{back:?}"),
        format!("{v:?}"),
        "seed encoding drifted"
    );
    out
}

/// The seeds of every target: (target, file name, bytes).
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut v = Vec::new();
    for (name, s) in completion() {
        v.push(("completion", name.to_string(), check(&s)));
    }
    for (name, bytes) in identify() {
        v.push(("identify", name.to_string(), bytes));
    }
    for (name, s) in prp() {
        v.push(("prp", name.to_string(), check(&s)));
    }
    for (name, s) in hostile_device() {
        v.push(("hostile_device", name.to_string(), check(&s)));
    }
    for (name, s) in hostile_host() {
        v.push(("hostile_host", name.to_string(), check(&s)));
    }
    v
}

fn completion() -> Vec<(&'static str, CompletionInput)> {
    let read = {
        let mut c = Command::rw(NvmOpcode::READ, 1, 0x0012_3456_789A, 7, true);
        c.set_cid(0x0102).set_prps(0x1000, 0x2000);
        c
    };
    let ok = Completion::new(0, 0, 5, 1, 0x0102, true, Status::SUCCESS);
    let bad = Completion::new(
        0xDEAD_BEEF,
        1,
        0xFFFF,
        0xFFFF,
        0xFFFF,
        false,
        Status::from_bits(0x7FFF),
    );
    let media = Completion::new(
        0,
        0,
        0,
        2,
        9,
        true,
        Status::media(nvme_core::spec::status::media::UNRECOVERED_READ_ERROR, true),
    );
    let mk = |cqe: Completion, sqe: Command, status: Status| CompletionInput {
        cqe: cqe.to_le_bytes(),
        sqe: sqe.to_le_bytes(),
        completion: cqe,
        command: sqe,
        status,
        cid: 0xBEEF,
        fuse: 1,
        psdt: 2,
        prps: (0x10_0000, 0x20_0000),
        dword: 12,
        value: 0xFFFF_FFFF,
        aer_dw0: 0x0001_0100,
    };
    vec![
        ("success-read", mk(ok, read, Status::SUCCESS)),
        (
            "all-ones",
            mk(bad, Command::from_dwords([u32::MAX; 16]), bad.status()),
        ),
        ("media-error", mk(media, Command::flush(1), media.status())),
        (
            "identify-cmd",
            mk(
                ok,
                Command::identify(1, 0, 0, 0),
                Status::specific(nvme_core::spec::status::specific::INVALID_LOG_PAGE, false),
            ),
        ),
    ]
}

fn identify() -> Vec<(&'static str, Vec<u8>)> {
    use nvme_core::spec::{
        AsciiField, ErrorLogEntry, FirmwareSlotLog, IdentifyController, IdentifyNamespace,
        LbaFormat, NamespaceList, SmartLog,
    };
    let page = |kind: PageKind, fill: &dyn Fn(&mut [u8]), len: usize| {
        let mut b = vec![kind.selector(), 0];
        let mut p = vec![0u8; len];
        fill(&mut p);
        b.extend_from_slice(&p);
        b
    };
    let ctrl = IdentifyController {
        vid: 0x1b36,
        sn: AsciiField::from_str_padded("SEED0001"),
        mn: AsciiField::from_str_padded("nvme-fuzz seed controller"),
        fr: AsciiField::from_str_padded("1.0"),
        mdts: 5,
        ver: 0x0002_0000,
        nn: 4,
        oncs: 0x8d,
        sqes: 0x66,
        cqes: 0x44,
        ..Default::default()
    };
    let mut ns = IdentifyNamespace {
        nsze: 1 << 20,
        ncap: 1 << 20,
        nuse: 1 << 10,
        nlbaf_z: 1,
        flbas: 1,
        ..Default::default()
    };
    ns.lbaf[0] = LbaFormat {
        ms: 0,
        lbads: 9,
        rp: 0,
    };
    ns.lbaf[1] = LbaFormat {
        ms: 8,
        lbads: 12,
        rp: 1,
    };
    let smart = SmartLog {
        composite_temperature: 310,
        data_units_read: u128::MAX,
        power_on_hours: 1234,
        ..Default::default()
    };
    let err = ErrorLogEntry {
        error_count: 3,
        sqid: 1,
        cid: 9,
        status_field: (Status::generic(0x80, true).bits() << 1) | 1,
        lba: 77,
        nsid: 1,
        ..Default::default()
    };
    let mut fw = FirmwareSlotLog {
        afi: 0x21,
        ..Default::default()
    };
    fw.frs[0] = AsciiField::from_str_padded("1.0");
    fw.frs[1] = AsciiField::from_str_padded("2.0-rc\u{7}");
    let mut padded_ctrl = vec![PageKind::Controller.selector() | 0x80, 0];
    padded_ctrl.extend_from_slice(&[0xFF; 300]);
    vec![
        (
            "controller",
            page(PageKind::Controller, &|b| ctrl.encode(b), 4096),
        ),
        ("controller-padded", padded_ctrl),
        (
            "controller-short",
            page(PageKind::Controller, &|b| ctrl.encode(b), 4095),
        ),
        (
            "namespace",
            page(PageKind::Namespace, &|b| ns.encode(b), 4096),
        ),
        (
            "ns-list",
            page(
                PageKind::NamespaceList,
                &|b| NamespaceList::encode(&[1, 2, 5, 0xFFFF_FFFE], b),
                4096,
            ),
        ),
        ("smart", page(PageKind::Smart, &|b| smart.encode(b), 512)),
        (
            "error-log",
            page(
                PageKind::ErrorLog,
                &|b| {
                    err.encode(&mut b[..64]);
                    err.encode(&mut b[64..128]);
                },
                200,
            ),
        ),
        (
            "fw-slot",
            page(PageKind::FirmwareSlot, &|b| fw.encode(b), 512),
        ),
    ]
}

fn prp() -> Vec<(&'static str, PrpInput)> {
    let p = |addr: u64, len: u64, page_sel: u8, list_pages: u8| PrpInput {
        addr,
        len,
        page_sel,
        list_pages,
        list_seed: 0x1234_5678,
    };
    vec![
        ("one-page", p(0x10_0000, 4096, 0, 0)),
        ("two-pages-offset", p(0x10_0004, 4096, 0, 0)),
        ("three-pages-list", p(0x10_0000, 12288, 0, 1)),
        ("chain-513", p(0x20_0000, 513 * 4096, 0, 2)),
        ("chain-514", p(0x20_0000, 514 * 4096, 0, 2)),
        ("too-long", p(0x20_0ffc, 1024 * 4096, 0, 1)),
        ("misaligned", p(0x10_0002, 16, 0, 1)),
        ("overflow", p(u64::MAX - 3, 4096, 0, 1)),
        ("page-64k", p(0x1_0000_0010, 300_000, 4, 1)),
        ("bad-page", p(0x1000, 4096, 20, 1)),
    ]
}

fn hostile_device() -> Vec<(&'static str, HostileDeviceInput)> {
    use Action::*;
    let ok = Status::SUCCESS;
    let input = |entries: u16, max_transfer: u8, actions: Vec<Action>| HostileDeviceInput {
        qid: 1,
        entries,
        lba_4k: false,
        max_transfer,
        timeout_ms: 10,
        actions,
    };
    let inj = |cid: CidSel, sqid: Option<u16>, sqhd: SqhdSel, phase_ok: bool| {
        Inject(Injected {
            cid,
            sqid,
            sqhd,
            phase_ok,
            status: ok,
            dw0: 0,
        })
    };
    let rw = vec![
        Read {
            blocks: 8,
            slba: 0,
            reuse: false,
        },
        Write {
            blocks: 24,
            slba: 100,
            reuse: false,
        },
        Ring,
        CompleteAll { status: ok },
        Poll,
        Read {
            blocks: 8,
            slba: 8,
            reuse: true,
        },
        Ring,
        Complete {
            pick: 0,
            status: Status::media(0x81, true),
            dw0: 5,
        },
        Poll,
    ];
    let hostile = vec![
        Read {
            blocks: 1,
            slba: 0,
            reuse: false,
        },
        Write {
            blocks: 1,
            slba: 1,
            reuse: false,
        },
        Ring,
        inj(CidSel::Raw(0x7777), None, SqhdSel::Current, true),
        inj(CidSel::Outstanding(0), Some(9), SqhdSel::Current, true),
        inj(CidSel::Outstanding(0), None, SqhdSel::Raw(0xFFFF), true),
        inj(CidSel::Outstanding(1), None, SqhdSel::Near(1), false),
        Poll,
        inj(CidSel::Recent(0), None, SqhdSel::Current, true),
        CompleteAll { status: ok },
        Poll,
    ];
    let timeout = vec![
        Write {
            blocks: 4,
            slba: 0,
            reuse: false,
        },
        Ring,
        PastTimeout,
        Poll,
        Complete {
            pick: 0,
            status: ok,
            dw0: 0,
        },
        Poll,
        Read {
            blocks: 4,
            slba: 0,
            reuse: false,
        },
        Ring,
        PastTimeout,
        Poll,
        Detach,
        Poll,
    ];
    let unrung = vec![
        Read {
            blocks: 2,
            slba: 0,
            reuse: false,
        },
        inj(CidSel::Outstanding(0), None, SqhdSel::Current, true),
        Poll,
        Ring,
        CompleteAll { status: ok },
        Poll,
    ];
    let mut wrap = Vec::new();
    for i in 0..12u8 {
        wrap.push(Write {
            blocks: 1 + i % 3,
            slba: i as u16,
            reuse: true,
        });
        wrap.push(Read {
            blocks: 1,
            slba: i as u16,
            reuse: true,
        });
        wrap.push(Ring);
        wrap.push(CompleteAll { status: ok });
        wrap.push(Poll);
    }
    let big_transfers = vec![
        Raw {
            cmd: Command::rw(NvmOpcode::READ, 1, 0, 255, false),
            pages: 255,
            offset: 4092,
            len: None,
        },
        Raw {
            cmd: Command::rw(NvmOpcode::WRITE, 1, 0, 255, false),
            pages: 200,
            offset: 0,
            len: Some(200 * 4096),
        },
        Raw {
            cmd: Command::from_dwords([0xC1; 16]),
            pages: 3,
            offset: 6,
            len: Some(100),
        },
        Raw {
            cmd: Command::flush(1),
            pages: 1,
            offset: 8,
            len: Some(0),
        },
        Raw {
            cmd: Command::flush(1),
            pages: 0,
            offset: 0,
            len: None,
        },
        Ring,
        CompleteAll { status: ok },
        Poll,
        FailAllocations { after: 1 },
        Read {
            blocks: 1,
            slba: 0,
            reuse: false,
        },
        Read {
            blocks: 1,
            slba: 0,
            reuse: false,
        },
        Read {
            blocks: 200,
            slba: 0x7FFF,
            reuse: false,
        },
    ];
    let full = vec![
        Burst { count: 10 },
        Ring,
        Complete {
            pick: 3,
            status: ok,
            dw0: 1,
        },
        inj(CidSel::Raw(0), None, SqhdSel::Raw(2), true),
        Poll,
        Burst { count: 3 },
        Ring,
        CompleteAll { status: ok },
        Poll,
    ];
    vec![
        ("read-write", input(8, 4, rw)),
        ("hostile-mix", input(4, 0, hostile)),
        ("timeout-late-detach", input(6, 1, timeout)),
        ("completion-before-doorbell", input(4, 0, unrung)),
        ("wrap-around", input(3, 2, wrap)),
        ("big-transfers", input(20, 4, big_transfers)),
        ("queue-full", input(6, 0, full)),
    ]
    .into_iter()
    .chain(deep_queues())
    .collect()
}

fn deep_queues() -> Vec<(&'static str, HostileDeviceInput)> {
    use Action::*;
    let input = |entries: u16, actions: Vec<Action>| HostileDeviceInput {
        qid: 1,
        entries,
        lba_4k: false,
        max_transfer: 0,
        timeout_ms: 10,
        actions,
    };
    vec![
        (
            "queue-65535",
            input(0xFFFF, vec![Burst { count: 3 }, Ring, Poll]),
        ),
        (
            "queue-over-32768-slots",
            input(
                0xFF01,
                vec![
                    Burst { count: 32769 },
                    Ring,
                    Complete {
                        pick: 32768,
                        status: Status::SUCCESS,
                        dw0: 0,
                    },
                    Poll,
                ],
            ),
        ),
    ]
}

/// The `hostile_device` inputs that get huge queues (more than 32768 slots, 65535 entries);
/// every other input's queue has at most 321 entries (see `HostileDeviceInput::entries`).
/// They are seeds and regressions (`regressions/hostile_device/queue-*`).
pub fn deep_queue_inputs() -> Vec<HostileDeviceInput> {
    deep_queues().into_iter().map(|(_, i)| i).collect()
}

/// The byte encodings of [`deep_queue_inputs`] (as in `corpus/` and `regressions/`).
pub fn deep_queue_encodings() -> Vec<Vec<u8>> {
    deep_queues()
        .iter()
        .map(|(_, i)| {
            let mut out = Vec::new();
            i.encode(&mut out);
            out
        })
        .collect()
}

impl Encode for Addr {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Addr::Region { idx, offset } => {
                variant(0, 2, out);
                idx.encode(out);
                offset.encode(out);
            }
            Addr::Raw(v) => {
                variant(1, 2, out);
                v.encode(out);
            }
        }
    }
}
impl Encode for Reg {
    fn encode(&self, out: &mut Vec<u8>) {
        let k = match self {
            Reg::Cc => 0,
            Reg::Aqa => 1,
            Reg::Intms => 2,
            Reg::Intmc => 3,
            Reg::Nssr => 4,
            Reg::Csts => 5,
            Reg::Raw(_) => 6,
        };
        variant(k, 7, out);
        if let Reg::Raw(o) = self {
            o.encode(out);
        }
    }
}
impl Encode for HostAction {
    fn encode(&self, out: &mut Vec<u8>) {
        const N: u32 = 14;
        match self {
            HostAction::Bringup { entries_z } => {
                variant(0, N, out);
                entries_z.encode(out);
            }
            HostAction::Write { reg, value } => {
                variant(1, N, out);
                reg.encode(out);
                value.encode(out);
            }
            HostAction::Base { acq, addr } => {
                variant(2, N, out);
                acq.encode(out);
                addr.encode(out);
            }
            HostAction::Read { offset } => {
                variant(3, N, out);
                offset.encode(out);
            }
            HostAction::Admin {
                cmd,
                prp1,
                prp2,
                ring,
            } => {
                variant(4, N, out);
                cmd.encode(out);
                prp1.encode(out);
                prp2.encode(out);
                ring.encode(out);
            }
            HostAction::CreatePair {
                qid,
                size_z,
                sq,
                cq,
            } => {
                variant(5, N, out);
                [*qid, *size_z, *sq, *cq].encode(out);
            }
            HostAction::Io {
                pair,
                cmd,
                prp1,
                prp2,
            } => {
                variant(6, N, out);
                pair.encode(out);
                cmd.encode(out);
                prp1.encode(out);
                prp2.encode(out);
            }
            HostAction::Doorbell { idx, value } => {
                variant(7, N, out);
                idx.encode(out);
                value.encode(out);
            }
            HostAction::Consume { pair } => {
                variant(8, N, out);
                pair.encode(out);
            }
            HostAction::Mem { addr, words, len } => {
                variant(9, N, out);
                addr.encode(out);
                words.encode(out);
                len.encode(out);
            }
            HostAction::Alloc { pages } => {
                variant(10, N, out);
                pages.encode(out);
            }
            HostAction::Free { idx } => {
                variant(11, N, out);
                idx.encode(out);
            }
            HostAction::Service => variant(12, N, out),
            HostAction::Power { loss } => {
                variant(13, N, out);
                loss.encode(out);
            }
        }
    }
}
impl Encode for HostileHostInput {
    fn encode(&self, out: &mut Vec<u8>) {
        [self.mqes_z, self.dstrd, self.mdts, self.max_io_queues].encode(out);
        self.actions.encode(out);
    }
}

fn hostile_host() -> Vec<(&'static str, HostileHostInput)> {
    use nvme_core::spec::AdminOpcode;
    use HostAction::*;
    let r = |idx: u8, offset: u32| Addr::Region { idx, offset };
    let input = |actions: Vec<HostAction>| HostileHostInput {
        mqes_z: 63,
        dstrd: 0,
        mdts: 5,
        max_io_queues: 4,
        actions,
    };
    let identify = Admin {
        cmd: Command::identify(1, 0, 0, 0),
        prp1: r(2, 0),
        prp2: r(2, 4096),
        ring: true,
    };
    let io = |op: NvmOpcode, prp1: Addr, prp2: Addr| Io {
        pair: 0,
        cmd: Command::rw(op, 1, 0, 15, false),
        prp1,
        prp2,
    };
    vec![
        (
            "bringup-identify",
            input(vec![
                Bringup { entries_z: 7 },
                Alloc { pages: 4 },
                identify.clone(),
                Consume { pair: 0 },
                Admin {
                    cmd: Command::get_log_page(2, 0xFFFF_FFFF, 128, 0, 0, false),
                    prp1: r(2, 8),
                    prp2: Addr::Raw(0),
                    ring: true,
                },
                Consume { pair: 0 },
            ]),
        ),
        (
            "io-with-prp-list",
            input(vec![
                Bringup { entries_z: 7 },
                Alloc { pages: 16 },
                Alloc { pages: 1 },
                CreatePair {
                    qid: 0,
                    size_z: 15,
                    sq: 2,
                    cq: 3,
                },
                Alloc { pages: 16 },
                Mem {
                    addr: r(5, 0),
                    words: [0x1_0000_0000, 0x1_0000_1000, 0xdead_b000, 7],
                    len: 3,
                },
                io(NvmOpcode::WRITE, r(4, 4), r(5, 0)),
                io(NvmOpcode::READ, r(4, 0), r(5, 8)),
                io(NvmOpcode::READ, Addr::Raw(0x42), Addr::Raw(u64::MAX)),
                Consume { pair: 1 },
            ]),
        ),
        (
            "bad-registers",
            input(vec![
                Write {
                    reg: Reg::Aqa,
                    value: 0xFFFF_FFFF,
                },
                Base {
                    acq: false,
                    addr: Addr::Raw(0x123),
                },
                Write {
                    reg: Reg::Cc,
                    value: 0xFFFF_FFFF,
                },
                Write {
                    reg: Reg::Raw(0x3FFF),
                    value: 1,
                },
                Write {
                    reg: Reg::Csts,
                    value: 0,
                },
                Doorbell {
                    idx: 0xFFFF,
                    value: 9,
                },
                Read { offset: 0x4001 },
                Service,
            ]),
        ),
        (
            "freed-queue-memory",
            input(vec![
                Bringup { entries_z: 3 },
                Free { idx: 1 },
                identify,
                Doorbell { idx: 0, value: 3 },
                Doorbell { idx: 1, value: 2 },
                Power { loss: true },
                Bringup { entries_z: 3 },
                Admin {
                    cmd: Command::new(AdminOpcode(0xC0).0),
                    prp1: Addr::Raw(0),
                    prp2: Addr::Raw(0),
                    ring: true,
                },
            ]),
        ),
    ]
}

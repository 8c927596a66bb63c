//! The strict checker: host protocol violations are recorded, spec statuses still returned.

mod common;

use common::*;
use nvme_core::spec::regs::{cq_head_doorbell, sq_tail_doorbell};
use nvme_core::spec::{Command, NvmOpcode};
use sim_backend::{CommandMatch, SimConfig, ViolationKind};

fn kinds(h: &Host) -> Vec<ViolationKind> {
    h.sim.violations().iter().map(|v| v.kind).collect()
}

#[test]
fn bad_doorbell_values() {
    let mut h = Host::enabled(cfg());
    h.create_pair(1, 8, false);
    // Beyond the queue size.
    h.bar().write32(sq_tail_doorbell(1, 0), 8);
    h.bar().write32(cq_head_doorbell(1, 0), 9);
    // The same SQ tail again, a CQ head that does not move.
    h.bar().write32(sq_tail_doorbell(1, 0), 0);
    h.bar().write32(cq_head_doorbell(1, 0), 0);
    // Consuming from an empty CQ.
    h.bar().write32(cq_head_doorbell(1, 0), 3);
    // A queue that does not exist.
    h.bar().write32(sq_tail_doorbell(4, 0), 1);
    h.bar().write32(cq_head_doorbell(4, 0), 1);
    assert_eq!(
        kinds(&h),
        vec![
            ViolationKind::DoorbellValueOutOfRange,
            ViolationKind::DoorbellValueOutOfRange,
            ViolationKind::DoorbellNoProgress,
            ViolationKind::DoorbellNoProgress,
            ViolationKind::CqConsumeFromEmpty,
            ViolationKind::DoorbellNonexistentQueue,
            ViolationKind::DoorbellNonexistentQueue,
        ]
    );
    // The queues still work: nothing was consumed by the bad writes.
    h.sim.clear_violations();
    assert!(h.io(1, Command::flush(1)).status().is_success());
    h.sim.assert_no_violations();
    // A misaligned register write.
    h.bar().write32(0x15, 1);
    assert_eq!(kinds(&h), vec![ViolationKind::UndefinedRegister]);
}

#[test]
fn sq_overflow() {
    let mut h = Host::enabled(cfg());
    // SQ and CQ of 4 entries (3 usable each).
    h.create_pair(1, 4, false);
    let mut cid = 0u16;
    let mut submit = |h: &mut Host, n: usize| {
        for _ in 0..n {
            let mut f = Command::flush(1);
            f.set_cid(cid);
            cid += 1;
            h.push(1, &f);
        }
        h.ring_sq(1);
    };
    // Three complete and fill the CQ; the fourth is fetched and waits for room, so the SQ
    // is not fetched from any more (its head stays at 0).
    submit(&mut h, 3);
    submit(&mut h, 1);
    // Three more fill the SQ (tail 3, head 0): legal.
    submit(&mut h, 3);
    h.sim.assert_no_violations();
    // One more: tail 3 -> 0 would pass the head.
    submit(&mut h, 1);
    assert_eq!(kinds(&h), vec![ViolationKind::SqOverflow]);
}

#[test]
fn cid_reuse_while_outstanding() {
    let mut h = Host::enabled(cfg());
    h.create_pair(1, 16, false);
    h.sim
        .faults()
        .drop_completion(CommandMatch::io(NvmOpcode::FLUSH.0));
    let mut f = Command::flush(1);
    f.set_cid(5);
    h.push(1, &f);
    h.ring_sq(1);
    // CID 5 is outstanding (its completion is held); reuse it.
    h.push(1, &f);
    h.ring_sq(1);
    let c = h.wait(1);
    assert_eq!(c.cid(), 5);
    assert_eq!(sc(&c), (0, 0x03));
    assert_eq!(kinds(&h), vec![ViolationKind::CidConflict]);
    // Two commands with one CID in one batch.
    h.sim.clear_violations();
    let mut a = Command::flush(1);
    a.set_cid(9);
    h.push(1, &a);
    h.push(1, &a);
    h.ring_sq(1);
    assert_eq!(kinds(&h), vec![ViolationKind::CidConflict]);
}

#[test]
fn non_strict_records_nothing() {
    let mut h = Host::enabled(SimConfig {
        strict: false,
        ..cfg()
    });
    h.bar().write32(sq_tail_doorbell(4, 0), 1);
    h.bar().write32(sq_tail_doorbell(0, 0), 999);
    let mut c = Command::identify(1, 0, 0, 0);
    c.set_psdt(1);
    assert_eq!(sc(&h.admin(c)), (0, 0x02));
    assert!(h.sim.violations().is_empty());
}

#[test]
#[should_panic(expected = "host protocol violation")]
fn assert_no_violations_panics() {
    let h = Host::enabled(cfg());
    h.bar().write32(sq_tail_doorbell(3, 0), 1);
    h.sim.assert_no_violations();
}

#[test]
fn bad_admin_queue_memory_is_fatal() {
    let h = Host::new(cfg());
    // Admin queues at unmapped addresses: enable works (the controller does not touch
    // them), the first fetch fails and the controller reports a fatal status.
    h.bar().write32(0x24, 0x0007_0007);
    h.bar().write64(0x28, 0x7000_0000);
    h.bar().write64(0x30, 0x7100_0000);
    h.bar().write32(
        0x14,
        nvme_core::spec::regs::Cc(0)
            .with_iosqes(6)
            .with_iocqes(4)
            .with_en(true)
            .0,
    );
    h.wait_csts(|c| c.rdy());
    h.bar().write32(sq_tail_doorbell(0, 0), 1);
    assert!(h.csts().cfs());
    assert_eq!(kinds(&h), vec![ViolationKind::UnmappedDma]);
}

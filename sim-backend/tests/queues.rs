//! I/O queue creation and deletion rules (NVMe Base §5.2.1–§5.2.4), CQ full, SQHD.

mod common;

use common::*;
use nvme_core::spec::regs::{offset, Cc};
use nvme_core::spec::{Command, NvmOpcode};
use sim_backend::{SimConfig, ViolationKind};

fn host() -> Host {
    let mut h = Host::enabled(cfg());
    // Grant 4 SQs and 4 CQs.
    h.admin_ok(Command::set_features(0x07, false, 0, 0x0003_0003));
    h
}

#[test]
fn create_cq_errors() {
    let mut h = host();
    let mem = h.alloc(1 << 16);
    let base = mem.iova();
    // QID 0, above the granted count.
    assert_eq!(
        sc(&h.admin(Command::create_io_cq(0, 15, base, false, 0))),
        (1, 0x01)
    );
    assert_eq!(
        sc(&h.admin(Command::create_io_cq(5, 15, base, false, 0))),
        (1, 0x01)
    );
    // QSIZE 0, above MQES.
    assert_eq!(
        sc(&h.admin(Command::create_io_cq(1, 0, base, false, 0))),
        (1, 0x02)
    );
    assert_eq!(
        sc(&h.admin(Command::create_io_cq(1, 1024, base, false, 0))),
        (1, 0x02)
    );
    // PC = 0 while CAP.CQR = 1.
    let mut c = Command::create_io_cq(1, 15, base, false, 0);
    c.set_cdw(11, 0);
    assert_eq!(sc(&h.admin(c)), (0, 0x02));
    // Interrupt vector beyond the 9 vectors.
    assert_eq!(
        sc(&h.admin(Command::create_io_cq(1, 15, base, true, 9))),
        (1, 0x08)
    );
    h.sim.assert_no_violations();
    // Base not page aligned: PRP Offset Invalid and a violation.
    assert_eq!(
        sc(&h.admin(Command::create_io_cq(1, 15, base + 64, false, 0))),
        (0, 0x13)
    );
    assert_eq!(
        h.sim.violations()[0].kind,
        ViolationKind::MisalignedQueueBase
    );
    h.sim.clear_violations();
    // Unmapped memory: Data Transfer Error.
    assert_eq!(
        sc(&h.admin(Command::create_io_cq(1, 15, 0x1000, false, 0))),
        (0, 0x04)
    );
    assert_eq!(h.sim.violations()[0].kind, ViolationKind::UnmappedDma);
    h.sim.clear_violations();
    // Valid, then the same QID again.
    h.admin_ok(Command::create_io_cq(1, 15, base, true, 8));
    assert_eq!(
        sc(&h.admin(Command::create_io_cq(1, 15, base, false, 0))),
        (1, 0x01)
    );
    assert_eq!(h.sim.violations()[0].kind, ViolationKind::QueueCreatedTwice);
}

#[test]
fn create_sq_errors() {
    let mut h = host();
    let mem = h.alloc(1 << 16);
    let cqmem = h.alloc(4096);
    let base = mem.iova();
    h.admin_ok(Command::create_io_cq(2, 15, cqmem.iova(), false, 0));
    // CQID 0 or out of range: Invalid Queue Identifier; in range but absent: CQ Invalid.
    assert_eq!(
        sc(&h.admin(Command::create_io_sq(1, 15, base, 0, 0))),
        (1, 0x01)
    );
    assert_eq!(
        sc(&h.admin(Command::create_io_sq(1, 15, base, 9, 0))),
        (1, 0x01)
    );
    assert_eq!(
        sc(&h.admin(Command::create_io_sq(1, 15, base, 1, 0))),
        (1, 0x00)
    );
    // QID 0, above granted.
    assert_eq!(
        sc(&h.admin(Command::create_io_sq(0, 15, base, 2, 0))),
        (1, 0x01)
    );
    assert_eq!(
        sc(&h.admin(Command::create_io_sq(5, 15, base, 2, 0))),
        (1, 0x01)
    );
    // QSIZE.
    assert_eq!(
        sc(&h.admin(Command::create_io_sq(1, 0, base, 2, 0))),
        (1, 0x02)
    );
    assert_eq!(
        sc(&h.admin(Command::create_io_sq(1, 2000, base, 2, 0))),
        (1, 0x02)
    );
    // PC = 0.
    let mut c = Command::create_io_sq(1, 15, base, 2, 0);
    c.set_cdw(11, 2 << 16);
    assert_eq!(sc(&h.admin(c)), (0, 0x02));
    h.sim.assert_no_violations();
    // Misaligned base.
    assert_eq!(
        sc(&h.admin(Command::create_io_sq(1, 15, base + 8, 2, 0))),
        (0, 0x13)
    );
    assert_eq!(
        h.sim.violations()[0].kind,
        ViolationKind::MisalignedQueueBase
    );
    h.sim.clear_violations();
    // Two SQs may share one CQ.
    h.admin_ok(Command::create_io_sq(1, 15, base, 2, 0));
    h.admin_ok(Command::create_io_sq(3, 15, base + 4096, 2, 0));
    assert_eq!(
        sc(&h.admin(Command::create_io_sq(3, 15, base + 8192, 2, 0))),
        (1, 0x01)
    );
    assert_eq!(h.sim.violations()[0].kind, ViolationKind::QueueCreatedTwice);
}

#[test]
fn delete_rules() {
    let mut h = host();
    h.create_pair(1, 16, false);
    // CQ with an SQ: Invalid Queue Deletion.
    assert_eq!(sc(&h.admin(Command::delete_io_cq(1))), (1, 0x0C));
    // Non-existent and QID 0.
    assert_eq!(sc(&h.admin(Command::delete_io_sq(2))), (1, 0x01));
    assert_eq!(sc(&h.admin(Command::delete_io_sq(0))), (1, 0x01));
    assert_eq!(sc(&h.admin(Command::delete_io_cq(2))), (1, 0x01));
    assert_eq!(sc(&h.admin(Command::delete_io_cq(0))), (1, 0x01));
    h.admin_ok(Command::delete_io_sq(1));
    h.admin_ok(Command::delete_io_cq(1));
    assert_eq!(sc(&h.admin(Command::delete_io_sq(1))), (1, 0x01));
    h.sim.assert_no_violations();
}

#[test]
fn iosqes_unset_is_refused() {
    let mut h = Host::new(cfg());
    h.start_enable(16);
    // Re-enable without IOSQES/IOCQES.
    h.wait_csts(|c| c.rdy());
    h.disable();
    let asq = h.alloc(4096);
    let acq = h.alloc(4096);
    h.bar().write64(offset::ASQ, asq.iova());
    h.bar().write64(offset::ACQ, acq.iova());
    h.bar().write32(offset::AQA, 0x000F_000F);
    h.bar().write32(offset::CC, Cc(0).with_en(true).0);
    h.wait_csts(|c| c.rdy());
    // Strict mode records the enable without entry sizes at once.
    let v = h.sim.violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].kind, ViolationKind::QueueEntrySize);
    assert!(v[0].detail.contains("unset"), "{}", v[0].detail);
    h.sim.clear_violations();
    h.track_sq(0, asq, 16);
    h.track_cq(0, acq, 16);
    let mem = h.alloc(4096);
    assert_eq!(
        sc(&h.admin(Command::create_io_cq(1, 15, mem.iova(), false, 0))),
        (1, 0x02)
    );
    assert_eq!(h.sim.violations()[0].kind, ViolationKind::QueueEntrySize);
}

#[test]
fn deleting_an_sq_aborts_its_held_commands() {
    let mut h = host();
    h.create_pair(1, 16, false);
    h.sim
        .faults()
        .drop_completion(sim_backend::CommandMatch::io(NvmOpcode::FLUSH.0));
    let mut f = Command::flush(1);
    f.set_cid(77);
    h.push(1, &f);
    h.ring_sq(1);
    h.admin_ok(Command::delete_io_sq(1));
    let c = h.wait(1);
    assert_eq!(c.cid(), 77);
    assert_eq!(sc(&c), (0, 0x08));
    h.admin_ok(Command::delete_io_cq(1));
    h.sim.assert_no_violations();
}

#[test]
fn cq_full_stalls_until_the_host_frees_entries() {
    let mut h = host();
    // CQ of 4 entries (3 usable), SQ of 16.
    let cq = h.alloc(4096);
    let sq = h.alloc(4096);
    h.admin_ok(Command::create_io_cq(1, 3, cq.iova(), false, 0));
    h.admin_ok(Command::create_io_sq(1, 15, sq.iova(), 1, 0));
    h.track_cq(1, cq, 4);
    h.track_sq(1, sq, 16);
    for cid in 0..8u16 {
        let mut f = Command::flush(1);
        f.set_cid(100 + cid);
        h.push(1, &f);
    }
    h.ring_sq(1);
    // Only 3 completions are posted: the CQ is full.
    let mut got = Vec::new();
    while let Some(c) = h.poll(1) {
        got.push(c);
    }
    assert_eq!(got.len(), 3);
    // The controller never wrote past the head: slot 3 (the 4th) is still zero.
    assert_eq!(h.read_mem(h.cqs[&1].region.iova() + 48, 16), vec![0u8; 16]);
    // SQHD reported in each completion; commands are fetched in order.
    for (i, c) in got.iter().enumerate() {
        assert_eq!(c.cid(), 100 + i as u16);
        assert!(c.sqhd() as usize > i);
    }
    // Free the entries: the rest arrives.
    h.ring_cq(1);
    while got.len() < 8 {
        if let Some(c) = h.poll(1) {
            got.push(c);
        } else {
            h.ring_cq(1);
        }
    }
    let cids: Vec<u16> = got.iter().map(|c| c.cid()).collect();
    assert_eq!(cids, (100..108).collect::<Vec<_>>());
    assert_eq!(got.last().unwrap().sqhd(), 8);
    h.ring_cq(1);
    h.sim.assert_no_violations();
}

#[test]
fn phase_flips_on_wrap() {
    let mut h = Host::enabled(SimConfig::default());
    h.create_pair(1, 4, false);
    for _ in 0..10 {
        let c = h.io(1, Command::flush(1));
        assert!(c.status().is_success());
    }
    h.sim.assert_no_violations();
    assert_eq!(h.sim.stats().io(0x00), 10);
}

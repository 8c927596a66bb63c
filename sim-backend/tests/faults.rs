//! Fault injection.

mod common;

use std::time::Duration;

use common::*;
use nvme_core::hw::Bar;
use nvme_core::spec::log::lid;
use nvme_core::spec::regs::{offset, sq_tail_doorbell};
use nvme_core::spec::{Command, ErrorLogEntry, NvmOpcode, SmartLog, Status};
use sim_backend::{CommandMatch, QueueMatch};

#[test]
fn surprise_removal_reads_all_ones() {
    let mut h = Host::enabled(cfg());
    h.create_pair(1, 8, false);
    h.sim.faults().surprise_removal();
    for off in [
        offset::CAP,
        0x04,
        offset::VS,
        offset::CC,
        offset::CSTS,
        offset::AQA,
        0x1000,
        0x2000,
    ] {
        assert_eq!(h.bar().read32(off), u32::MAX, "offset {off:#x}");
    }
    assert_eq!(h.bar().read64(offset::CAP), u64::MAX);
    assert!(h.csts().is_all_ones());
    // Doorbells are ignored: nothing is processed, no violation is recorded.
    let done_before = h.sim.stats().completions_posted;
    h.push(1, &Command::flush(1));
    h.ring_sq(1);
    assert_eq!(h.sim.stats().completions_posted, done_before);
    assert!(h.poll(1).is_none());
    h.sim.assert_no_violations();
    // Power cycle = re-insertion.
    h.sim.power_cycle();
    assert_eq!(h.bar().read32(offset::VS), 0x0002_0000);
}

#[test]
fn controller_fatal_stops_processing_until_reset() {
    let mut h = Host::enabled(cfg());
    h.create_pair(1, 8, false);
    h.sim.faults().controller_fatal();
    assert!(h.csts().cfs());
    h.push(1, &Command::flush(1));
    h.ring_sq(1);
    assert!(h.poll(1).is_none());
    h.sim.clear_violations();
    h.disable();
    assert!(!h.csts().cfs());
    h.enable(8);
    h.sim.assert_no_violations();
}

#[test]
fn media_errors_on_a_range() {
    let mut h = Host::enabled(cfg());
    h.create_pair(1, 8, false);
    h.sim.faults().media_error(1, 10..12);
    let mut r = Command::rw(NvmOpcode::READ, 1, 8, 7, false);
    let _b = two_page_prps(&h, &mut r, &[]);
    let c = h.io(1, r);
    assert_eq!(sc(&c), (2, 0x81));
    // Outside the range: fine; other namespace: fine.
    let mut r = Command::rw(NvmOpcode::READ, 1, 12, 7, false);
    let _b = two_page_prps(&h, &mut r, &[]);
    assert!(h.io(1, r).status().is_success());
    assert_eq!(sc(&h.io(1, Command::verify(1, 11, 0))), (2, 0x81));
    // The error log has the LBA; SMART counts it.
    let (_, page) = h.admin_read(
        Command::get_log_page(lid::ERROR_INFO, 0, 16, 0, 0, false),
        64,
    );
    let e = ErrorLogEntry::parse(&page);
    assert_eq!((e.nsid, e.lba, e.sqid), (1, 11, 1));
    let (_, page) = h.admin_read(Command::get_log_page(lid::SMART, 0, 128, 0, 0, false), 512);
    assert_eq!(SmartLog::parse(&page).unwrap().media_errors, 2);
    h.sim.faults().clear_media_errors();
    assert!(h.io(1, Command::verify(1, 11, 0)).status().is_success());
    h.sim.assert_no_violations();
}

#[test]
fn forced_status_applies_once_to_the_matching_command() {
    let mut h = Host::enabled(cfg());
    h.create_pair(1, 8, false);
    h.create_pair(2, 8, false);
    let st = Status::generic(0x06, false);
    h.sim.faults().force_status(
        CommandMatch {
            queue: QueueMatch::Sq(2),
            opcode: Some(NvmOpcode::FLUSH.0),
        },
        st,
    );
    assert!(h.io(1, Command::flush(1)).status().is_success());
    assert_eq!(h.io(2, Command::flush(1)).status(), st);
    assert!(h.io(2, Command::flush(1)).status().is_success());
    // Admin opcodes are told apart from I/O ones.
    h.sim
        .faults()
        .force_status(CommandMatch::admin(0x0A), Status::generic(0x02, true));
    assert!(h.io(1, Command::new(0x0A)).status().sc() == 0x01);
    assert_eq!(
        sc(&h.admin(Command::get_features(0x07, 0, 0, 0))),
        (0, 0x02)
    );
    h.sim.assert_no_violations();
}

#[test]
fn delayed_and_dropped_completions() {
    let mut h = Host::enabled(cfg());
    h.create_pair(1, 8, false);
    h.sim.faults().delay_completion(
        CommandMatch::io(NvmOpcode::FLUSH.0),
        Duration::from_millis(30),
    );
    let mut f = Command::flush(1);
    f.set_cid(1);
    h.push(1, &f);
    h.ring_sq(1);
    // It arrives eventually (polled with service, deadline in the helper).
    let c = h.wait(1);
    assert_eq!(c.cid(), 1);
    assert!(c.status().is_success());
    // Dropped: never completes, until a reset drops it for good.
    h.sim.faults().drop_completion(CommandMatch::any_io());
    let mut f = Command::flush(1);
    f.set_cid(2);
    h.push(1, &f);
    h.ring_sq(1);
    h.sim.service();
    assert!(h.poll(1).is_none());
    h.disable();
    h.sim.assert_no_violations();
}

#[test]
fn doorbell_to_removed_device_is_ignored() {
    let h = Host::enabled(cfg());
    h.sim.faults().surprise_removal();
    h.bar().write32(sq_tail_doorbell(7, 0), 3);
    h.sim.assert_no_violations();
}

#[test]
fn power_loss_from_the_injector() {
    let h = Host::enabled(cfg());
    h.sim.write_namespace_bytes(1, 0, &[9; 512]).unwrap();
    h.sim.faults().power_loss();
    assert_eq!(h.sim.namespace_bytes(1, 0, 1).unwrap(), vec![9; 512]);
    assert!(!h.csts().rdy());
}

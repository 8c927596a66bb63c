//! Admin commands: Identify, Get Log Page, features, Abort, Asynchronous Event Request,
//! Format NVM (NVMe Base §5.1).

mod common;

use std::time::Duration;

use common::*;
use nvme_core::spec::identify::oncs;
use nvme_core::spec::log::lid;
use nvme_core::spec::regs::sq_tail_doorbell;
use nvme_core::spec::{
    AsyncEvent, Command, ErrorLogEntry, FirmwareSlotLog, IdentifyController, IdentifyNamespace,
    NamespaceList, NumberOfQueues, NvmOpcode, SmartLog,
};
use sim_backend::{CommandMatch, ViolationKind};

#[test]
fn identify_controller_and_namespaces() {
    let mut h = Host::enabled(cfg());
    let (c, page) = h.admin_read(Command::identify(0x01, 0, 0, 0), 4096);
    assert!(c.status().is_success());
    let id = IdentifyController::parse(&page).unwrap();
    assert_eq!(id.sn.as_str(), "SIM0000000001");
    assert_eq!(id.mdts, 5);
    assert_eq!(id.max_transfer_bytes(0), Some(128 * 1024));
    assert_eq!((id.sqes, id.cqes), (0x66, 0x44));
    assert_eq!(id.nn, 2);
    assert_eq!((id.acl, id.aerl), (3, 3));
    assert_eq!(id.vwc & 1, 1);
    assert_eq!(id.ver, 0x0002_0000);
    assert_eq!(
        id.oncs,
        oncs::COMPARE
            | oncs::WRITE_UNCORRECTABLE
            | oncs::DATASET_MANAGEMENT
            | oncs::WRITE_ZEROES
            | oncs::VERIFY
            // Get Features SEL and Set Features SV are implemented: advertised (bit 4).
            | oncs::SAVE_SELECT
    );

    let (_, page) = h.admin_read(Command::identify(0x02, 0, 0, 0), 4096);
    assert!(NamespaceList::well_formed(&page));
    assert_eq!(NamespaceList::parse(&page).ids(), &[1, 2]);
    let (_, page) = h.admin_read(Command::identify(0x02, 1, 0, 0), 4096);
    assert_eq!(NamespaceList::parse(&page).ids(), &[2]);

    let (_, page) = h.admin_read(Command::identify(0x00, 1, 0, 0), 4096);
    let ns = IdentifyNamespace::parse(&page).unwrap();
    assert_eq!(ns.lba_size(), Some(512));
    assert_eq!(ns.nsze, (64 << 20) / 512);
    assert_eq!(ns.dlfeat & 7, 1);
    let (_, page) = h.admin_read(Command::identify(0x00, 2, 0, 0), 4096);
    let ns2 = IdentifyNamespace::parse(&page).unwrap();
    assert_eq!(ns2.lba_size(), Some(4096));
    assert_ne!(ns.nguid, ns2.nguid);

    // Descriptor list: EUI-64, NGUID, CSI.
    let (c, page) = h.admin_read(Command::identify(0x03, 1, 0, 0), 4096);
    assert!(c.status().is_success());
    assert_eq!((page[0], page[1]), (1, 8));
    assert_eq!(&page[4..12], &ns.eui64);
    assert_eq!((page[12], page[13]), (2, 16));

    // Invalid NSIDs, FFFFFFFFh, reserved CNS.
    for nsid in [0u32, 3, 0xFFFF_FFFF] {
        let (c, _) = h.admin_read(Command::identify(0x00, nsid, 0, 0), 4096);
        assert_eq!(sc(&c), (0, 0x0B), "nsid {nsid:#x}");
    }
    let (c, _) = h.admin_read(Command::identify(0x02, 0xFFFF_FFFE, 0, 0), 4096);
    assert_eq!(sc(&c), (0, 0x0B));
    let (c, _) = h.admin_read(Command::identify(0x04, 0, 0, 0), 4096);
    assert_eq!(sc(&c), (0, 0x02));
    let (c, _) = h.admin_read(Command::identify(0x1F, 0, 0, 0), 4096);
    assert_eq!(sc(&c), (0, 0x02));
    h.sim.assert_no_violations();
}

#[test]
fn unknown_opcode() {
    let mut h = Host::enabled(cfg());
    let c = h.admin(Command::new(0xC3));
    assert_eq!(sc(&c), (0, 0x01));
    assert!(c.status().dnr());
}

#[test]
fn number_of_queues_rules() {
    let mut h = Host::enabled(cfg());
    let c = h.admin(Command::set_features(0x07, false, 0, 0xFFFF_0000));
    assert_eq!(sc(&c), (0, 0x02));
    let c = h.admin(Command::set_features(0x07, false, 0, 0x0000_FFFF));
    assert_eq!(sc(&c), (0, 0x02));
    // Ask for 64 of each: 8 granted.
    let c = h.admin_ok(Command::set_features(0x07, false, 0, 0x003F_003F));
    assert_eq!(
        NumberOfQueues::from_dword(c.dw0()),
        NumberOfQueues { nsq_z: 7, ncq_z: 7 }
    );
    // Ask for 2 SQs / 3 CQs.
    let c = h.admin_ok(Command::set_features(0x07, false, 0, 0x0002_0001));
    assert_eq!(c.dw0(), 0x0002_0001);
    let c = h.admin_ok(Command::get_features(0x07, 0, 0, 0));
    assert_eq!(c.dw0(), 0x0002_0001);
    // Default (SEL 001b) is the maximum.
    let c = h.admin_ok(Command::get_features(0x07, 1, 0, 0));
    assert_eq!(c.dw0(), 0x0007_0007);
    // QID 3 exceeds the 2 SQs granted.
    h.create_pair(1, 8, false);
    let sq = h.alloc(4096);
    let c = h.admin(Command::create_io_sq(3, 7, sq.iova(), 1, 0));
    assert_eq!(sc(&c), (1, 0x01));
    h.sim.assert_no_violations();
    // After queue creation: Command Sequence Error and a violation.
    let c = h.admin(Command::set_features(0x07, false, 0, 0x0001_0001));
    assert_eq!(sc(&c), (0, 0x0C));
    assert_eq!(
        h.sim.violations()[0].kind,
        ViolationKind::NumberOfQueuesAfterCreation
    );
}

#[test]
fn features_get_set_select() {
    let mut h = Host::enabled(cfg());
    // Arbitration round trip, current vs default.
    h.admin_ok(Command::set_features(0x01, false, 0, 0x0302_0103));
    assert_eq!(
        h.admin_ok(Command::get_features(0x01, 0, 0, 0)).dw0(),
        0x0302_0103
    );
    assert_eq!(h.admin_ok(Command::get_features(0x01, 1, 0, 0)).dw0(), 0);
    assert_eq!(h.admin_ok(Command::get_features(0x01, 2, 0, 0)).dw0(), 0);
    // Supported capabilities: changeable, not saveable.
    assert_eq!(
        h.admin_ok(Command::get_features(0x01, 3, 0, 0)).dw0(),
        0b100
    );
    // Saving is not supported.
    let c = h.admin(Command::set_features(0x01, true, 0, 0));
    assert_eq!(sc(&c), (1, 0x0D));
    // Unsupported FIDs.
    for fid in [0x00u8, 0x03, 0x0C, 0x7F, 0xC0] {
        assert_eq!(
            sc(&h.admin(Command::get_features(fid, 0, 0, 0))),
            (0, 0x02),
            "{fid:#x}"
        );
        assert_eq!(
            sc(&h.admin(Command::set_features(fid, false, 0, 0))),
            (0, 0x02),
            "{fid:#x}"
        );
    }
    // Temperature threshold: over (default WCTEMP) and under.
    assert_eq!(
        h.admin_ok(Command::get_features(0x04, 0, 0, 0)).dw0() & 0xFFFF,
        343
    );
    h.admin_ok(Command::set_features(0x04, false, 0, 273 | 1 << 20));
    assert_eq!(
        h.admin_ok(Command::get_features(0x04, 0, 0, 1 << 20)).dw0() & 0xFFFF,
        273
    );
    assert_eq!(
        sc(&h.admin(Command::set_features(0x04, false, 0, 300 | 2 << 20))),
        (0, 0x02)
    );
    // Volatile write cache.
    assert_eq!(h.admin_ok(Command::get_features(0x06, 0, 0, 0)).dw0(), 1);
    h.admin_ok(Command::set_features(0x06, false, 0, 0));
    assert_eq!(h.admin_ok(Command::get_features(0x06, 0, 0, 0)).dw0(), 0);
    // Interrupt vector configuration: a vector beyond the 9 is invalid.
    h.admin_ok(Command::set_features(0x09, false, 0, 3 | 1 << 16));
    assert_eq!(
        h.admin_ok(Command::get_features(0x09, 0, 0, 3)).dw0(),
        3 | 1 << 16
    );
    assert_eq!(
        sc(&h.admin(Command::set_features(0x09, false, 0, 9))),
        (0, 0x02)
    );
    // Power state beyond NPSS.
    assert_eq!(
        sc(&h.admin(Command::set_features(0x02, false, 0, 1))),
        (0, 0x02)
    );
    for fid in [0x05u8, 0x08, 0x0A, 0x0B] {
        h.admin_ok(Command::set_features(fid, false, 0, 1));
        assert_eq!(
            h.admin_ok(Command::get_features(fid, 0, 0, 0)).dw0(),
            1,
            "{fid:#x}"
        );
    }
    // Not namespace specific.
    assert_eq!(
        sc(&h.admin(Command::set_features(0x01, false, 1, 0))),
        (1, 0x0F)
    );
    h.sim.assert_no_violations();
}

#[test]
fn no_vwc_feature_without_cache() {
    let mut h = Host::enabled(sim_backend::SimConfig {
        volatile_write_cache: false,
        ..cfg()
    });
    assert_eq!(
        sc(&h.admin(Command::get_features(0x06, 0, 0, 0))),
        (0, 0x02)
    );
    let (_, page) = h.admin_read(Command::identify(0x01, 0, 0, 0), 4096);
    assert_eq!(IdentifyController::parse(&page).unwrap().vwc, 0);
}

#[test]
fn log_pages() {
    let mut h = Host::enabled(cfg());
    // A failed command lands in the error log.
    let c = h.admin(Command::new(0xC3));
    let failed_cid = c.cid();
    let (c, page) = h.admin_read(
        Command::get_log_page(lid::ERROR_INFO, 0, 1024, 0, 0, false),
        4096,
    );
    assert!(c.status().is_success());
    let e = ErrorLogEntry::parse(&page);
    assert_eq!(e.error_count, 1);
    assert_eq!(e.cid, failed_cid);
    assert_eq!(e.sqid, 0);
    assert_eq!((e.status().sct().0, e.status().sc()), (0, 0x01));
    assert_eq!(ErrorLogEntry::parse(&page[64..]).error_count, 0);

    let (c, page) = h.admin_read(
        Command::get_log_page(lid::SMART, 0xFFFF_FFFF, 128, 0, 0, false),
        512,
    );
    assert!(c.status().is_success());
    let s = SmartLog::parse(&page).unwrap();
    assert_eq!(s.composite_temperature, 310);
    assert_eq!(s.num_error_log_entries, 1);
    assert_eq!(s.available_spare, 100);

    let (c, page) = h.admin_read(
        Command::get_log_page(lid::FIRMWARE_SLOT, 0, 128, 0, 0, false),
        512,
    );
    assert!(c.status().is_success());
    let f = FirmwareSlotLog::parse(&page).unwrap();
    assert_eq!(f.active_slot(), 1);
    assert_eq!(f.frs[0].as_str(), "1.0");

    // Partial read with an offset: bytes 32..48 of SMART (data units read).
    let (c, page) = h.admin_read(Command::get_log_page(lid::SMART, 0, 4, 32, 0, false), 16);
    assert!(c.status().is_success());
    assert_eq!(page, vec![0u8; 16]);
    // Offset beyond the log, misaligned offset, unsupported LID, per-namespace SMART.
    let (c, _) = h.admin_read(Command::get_log_page(lid::SMART, 0, 4, 512, 0, false), 16);
    assert_eq!(sc(&c), (0, 0x02));
    let (c, _) = h.admin_read(Command::get_log_page(lid::SMART, 0, 4, 2, 0, false), 16);
    assert_eq!(sc(&c), (0, 0x02));
    for l in [0x00u8, 0x04, 0x05, 0x80, 0xC0] {
        let (c, _) = h.admin_read(Command::get_log_page(l, 0, 4, 0, 0, false), 16);
        assert_eq!(sc(&c), (1, 0x09), "lid {l:#x}");
    }
    let (c, _) = h.admin_read(Command::get_log_page(lid::SMART, 1, 128, 0, 0, false), 512);
    assert_eq!(sc(&c), (0, 0x02));
    // Reading past the end of a log returns zeroes for the rest.
    let (c, page) = h.admin_read(
        Command::get_log_page(lid::FIRMWARE_SLOT, 0, 1024, 0, 0, false),
        4096,
    );
    assert!(c.status().is_success());
    assert!(page[512..].iter().all(|&b| b == 0));
    h.sim.assert_no_violations();
}

#[test]
fn smart_counters_move_with_io() {
    let mut h = Host::enabled(cfg());
    h.create_pair(1, 16, false);
    let data = pattern(4096, 1);
    for i in 0..3u64 {
        let mut cmd = Command::rw(NvmOpcode::WRITE, 1, i * 8, 7, false);
        let _b = two_page_prps(&h, &mut cmd, &data);
        assert!(h.io(1, cmd).status().is_success());
    }
    let mut cmd = Command::rw(NvmOpcode::READ, 1, 0, 7, false);
    let _b = two_page_prps(&h, &mut cmd, &[]);
    assert!(h.io(1, cmd).status().is_success());
    let (_, page) = h.admin_read(Command::get_log_page(lid::SMART, 0, 128, 0, 0, false), 512);
    let s = SmartLog::parse(&page).unwrap();
    assert_eq!(s.host_write_commands, 3);
    assert_eq!(s.host_read_commands, 1);
    // 24 × 512 bytes written: 1 data unit (thousands, rounded up).
    assert_eq!(s.data_units_written, 1);
    assert_eq!(s.data_units_read, 1);
    h.sim.assert_no_violations();
}

#[test]
fn async_events() {
    let mut h = Host::enabled(cfg());
    // AERL = 3: four may be outstanding, the fifth is refused.
    let mut cids = Vec::new();
    for _ in 0..4 {
        let cid = h.cid();
        let mut c = Command::async_event_request();
        c.set_cid(cid);
        h.push(0, &c);
        cids.push(cid);
    }
    h.ring_sq(0);
    assert!(h.poll(0).is_none());
    let c = h.exec_on(0, 0, Command::async_event_request());
    assert_eq!(sc(&c), (1, 0x05));

    // A doorbell write for a non-existent queue: error event, info 00h, log 01h.
    h.bar().write32(sq_tail_doorbell(5, 0), 1);
    let c = h.wait(0);
    assert_eq!(c.cid(), cids[0]);
    let ev = AsyncEvent::from_dw0(c.dw0());
    assert_eq!((ev.event_type, ev.info, ev.log_page), (0, 0x00, 0x01));
    // The error type is masked until the error log is read: an invalid value is not reported.
    h.bar().write32(sq_tail_doorbell(0, 0), 1000);
    assert!(h.poll(0).is_none());
    h.admin_read(
        Command::get_log_page(lid::ERROR_INFO, 0, 16, 0, 0, false),
        64,
    );
    // Reading the log unmasked the type; the next invalid write (value beyond the size) is
    // reported with info 01h.
    h.bar().write32(sq_tail_doorbell(0, 0), 1000);
    let c = h.wait(0);
    assert_eq!(c.cid(), cids[1]);
    let ev = AsyncEvent::from_dw0(c.dw0());
    assert_eq!((ev.event_type, ev.info, ev.log_page), (0, 0x01, 0x01));

    // SMART temperature: enable the event, then cross the threshold.
    h.admin_ok(Command::set_features(0x0B, false, 0, 0xFF));
    h.sim.faults().set_temperature(350);
    let c = h.wait(0);
    assert_eq!(c.cid(), cids[2]);
    let ev = AsyncEvent::from_dw0(c.dw0());
    assert_eq!((ev.event_type, ev.info, ev.log_page), (1, 0x01, 0x02));
    let (_, page) = h.admin_read(Command::get_log_page(lid::SMART, 0, 128, 0, 0, false), 512);
    assert_eq!(
        SmartLog::parse(&page).unwrap().critical_warning & 0x02,
        0x02
    );
    let kinds: Vec<_> = h.sim.violations().iter().map(|v| v.kind).collect();
    assert_eq!(
        kinds,
        vec![
            ViolationKind::DoorbellNonexistentQueue,
            ViolationKind::DoorbellValueOutOfRange,
            ViolationKind::DoorbellValueOutOfRange
        ]
    );
}

#[test]
fn abort() {
    let mut h = Host::enabled(cfg());
    h.create_pair(1, 16, false);
    // A command whose completion the device holds can be aborted.
    h.sim
        .faults()
        .drop_completion(CommandMatch::io(NvmOpcode::FLUSH.0));
    let cid = h.cid();
    let mut f = Command::flush(1);
    f.set_cid(cid);
    h.push(1, &f);
    h.ring_sq(1);
    assert!(h.poll(1).is_none());
    let c = h.admin_ok(Command::abort(1, cid));
    assert_eq!(c.dw0() & 1, 0, "aborted");
    let c = h.wait(1);
    assert_eq!(c.cid(), cid);
    assert_eq!(sc(&c), (0, 0x07));
    // A command that is not outstanding: not aborted.
    let c = h.admin_ok(Command::abort(1, 999));
    assert_eq!(c.dw0() & 1, 1);
    // An outstanding AER can be aborted.
    let aer_cid = h.cid();
    let mut a = Command::async_event_request();
    a.set_cid(aer_cid);
    h.push(0, &a);
    h.ring_sq(0);
    let abort_cid = h.cid();
    let mut ab = Command::abort(0, aer_cid);
    ab.set_cid(abort_cid);
    h.push(0, &ab);
    h.ring_sq(0);
    let c1 = h.wait(0);
    let c2 = h.wait(0);
    let (aer_c, ab_c) = if c1.cid() == aer_cid {
        (c1, c2)
    } else {
        (c2, c1)
    };
    assert_eq!(sc(&aer_c), (0, 0x07));
    assert_eq!(ab_c.dw0() & 1, 0);
    // ACL = 3: with four aborts held, the fifth is refused.
    for _ in 0..4 {
        h.sim.faults().drop_completion(CommandMatch::admin(0x08));
        let cid = h.cid();
        let mut ab = Command::abort(1, 12345);
        ab.set_cid(cid);
        h.push(0, &ab);
        h.ring_sq(0);
    }
    let c = h.admin(Command::abort(1, 4321));
    assert_eq!(sc(&c), (1, 0x03));
    h.sim.assert_no_violations();
}

#[test]
fn format_nvm() {
    let mut h = Host::enabled(cfg());
    h.create_pair(1, 8, false);
    h.sim.write_namespace_bytes(1, 0, &[0xAB; 512]).unwrap();
    // LBAF 3 = 4096 bytes.
    h.admin_ok(Command::format_nvm(1, 3, 0));
    assert_eq!(h.sim.lba_size(1), Some(4096));
    let (_, page) = h.admin_read(Command::identify(0x00, 1, 0, 0), 4096);
    let ns = IdentifyNamespace::parse(&page).unwrap();
    assert_eq!(ns.lba_size(), Some(4096));
    assert_eq!(ns.nsze, (64 << 20) / 4096);
    assert_eq!(ns.nuse, 0);
    assert!(h
        .sim
        .namespace_bytes(1, 0, 1)
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    // Invalid format index, PI, crypto erase, bad NSID.
    assert_eq!(sc(&h.admin(Command::format_nvm(1, 9, 0))), (1, 0x0A));
    let mut pi = Command::format_nvm(1, 0, 0);
    pi.set_cdw(10, 1 << 5);
    assert_eq!(sc(&h.admin(pi)), (1, 0x0A));
    assert_eq!(sc(&h.admin(Command::format_nvm(1, 0, 2))), (0, 0x02));
    assert_eq!(sc(&h.admin(Command::format_nvm(7, 0, 0))), (0, 0x0B));
    // All namespaces to 1 KiB blocks.
    h.admin_ok(Command::format_nvm(0xFFFF_FFFF, 1, 1));
    assert_eq!(h.sim.lba_size(1), Some(1024));
    assert_eq!(h.sim.lba_size(2), Some(1024));
    h.sim.assert_no_violations();
}

#[test]
fn delayed_completion_arrives_later() {
    let mut h = Host::enabled(cfg());
    h.sim
        .faults()
        .delay_completion(CommandMatch::admin(0x0A), Duration::from_millis(20));
    let c = h.admin_ok(Command::get_features(0x07, 0, 0, 0));
    assert_eq!(c.dw0(), 0x0007_0007);
    h.sim.assert_no_violations();
}

//! Registers and the enable / disable / shutdown state machine (NVMe Base §3.1.4, §3.5.1,
//! §3.6.1, §3.7.2).

mod common;

use std::time::Duration;

use common::*;
use nvme_core::hw::{Bar, Platform};
use nvme_core::spec::regs::{offset, shn, shst, Aqa, Cap, Cc, Vs};
use nvme_core::spec::Command;
use sim_backend::{SimConfig, Simulator, ViolationKind, BAR_SIZE};

#[test]
fn register_defaults_and_offsets() {
    let sim = Simulator::new(SimConfig::default()).unwrap();
    let p = sim.platform();
    let bar = p.bar();
    assert_eq!(p.name(), "sim");
    assert_eq!(bar.size(), 0x4000);
    assert_eq!(BAR_SIZE, 0x4000);
    let cap = Cap(bar.read64(0x0000)); // NVME_REG_CAP
    assert_eq!(cap.mqes_z(), 1023);
    assert!(cap.cqr());
    assert_eq!(cap.to(), 2);
    assert_eq!(cap.dstrd(), 0);
    assert!(cap.css_nvm());
    assert_eq!(cap.mpsmin(), 0);
    assert!(cap.mpsmax() >= cap.mpsmin());
    let vs = Vs(bar.read32(0x0008)); // NVME_REG_VS
    assert_eq!((vs.mjr(), vs.mnr(), vs.ter()), (2, 0, 0));
    assert_eq!(bar.read32(0x0014), 0); // NVME_REG_CC
    assert_eq!(bar.read32(0x001c), 0); // NVME_REG_CSTS
                                       // Unknown offsets read 0; misaligned or outside the BAR read all-ones.
    assert_eq!(bar.read32(0x0040), 0);
    assert_eq!(bar.read32(0x0F00), 0);
    assert_eq!(bar.read32(0x0002), u32::MAX);
    assert_eq!(bar.read32(0x4000), u32::MAX);
    // AQA/ASQ/ACQ are read-write while disabled.
    bar.write32(0x0024, Aqa::new(15, 31).0); // NVME_REG_AQA
    bar.write64(0x0028, 0x1234_5000); // NVME_REG_ASQ
    bar.write64(0x0030, 0xABCD_E000_0000); // NVME_REG_ACQ
    assert_eq!(Aqa(bar.read32(0x24)).acqs_z(), 31);
    assert_eq!(bar.read64(0x28), 0x1234_5000);
    assert_eq!(bar.read64(0x30), 0xABCD_E000_0000);
    // CAP and VS are read-only.
    bar.write32(offset::VS, 0);
    assert_eq!(bar.read32(offset::VS), 0x0002_0000);
    sim.assert_no_violations();
}

#[test]
fn rdy_follows_en_after_the_ready_delay() {
    // A long delay so that "RDY is still 0 right after EN=1" holds on any machine.
    let mut h = Host::new(SimConfig {
        ready_delay: Duration::from_secs(30),
        ..SimConfig::default()
    });
    h.start_enable(8);
    let c = h.csts();
    assert!(!c.rdy(), "RDY must not be 1 immediately after EN=1");
    assert!(!c.cfs());
    h.sim.assert_no_violations();

    // With the default 1 ms delay RDY rises (polled with a deadline).
    let mut h = Host::new(SimConfig::default());
    h.start_enable(8);
    let c = h.wait_csts(|c| c.rdy());
    assert!(!c.cfs());
    assert_eq!(c.shst(), shst::NORMAL);
    h.disable();
    assert!(!h.csts().rdy());
    h.sim.assert_no_violations();
}

#[test]
fn zero_delay_is_immediate() {
    let mut h = Host::new(SimConfig {
        ready_delay: Duration::ZERO,
        ..SimConfig::default()
    });
    h.start_enable(8);
    assert!(h.csts().rdy());
}

#[test]
fn enable_with_bad_configuration_is_fatal() {
    for (what, setup) in [
        ("misaligned ASQ", 0usize),
        ("zero AQA", 1),
        ("MPS above MPSMAX", 2),
        ("unsupported CSS", 3),
        ("unsupported AMS", 4),
        ("IOSQES 5", 5),
    ] {
        let h = Host::new(cfg());
        let asq = h.alloc(4096);
        let acq = h.alloc(4096);
        let bar = h.bar();
        let aqa = if setup == 1 { 0 } else { Aqa::new(7, 7).0 };
        bar.write32(offset::AQA, aqa);
        let asq_addr = if setup == 0 {
            asq.iova() + 64
        } else {
            asq.iova()
        };
        bar.write64(offset::ASQ, asq_addr);
        bar.write64(offset::ACQ, acq.iova());
        let mut cc = Cc(0).with_iosqes(6).with_iocqes(4);
        match setup {
            2 => cc = cc.with_mps(15),
            3 => cc = cc.with_css(0b001),
            4 => cc = cc.with_ams(0b001),
            5 => cc = cc.with_iosqes(5),
            _ => {}
        }
        bar.write32(offset::CC, cc.with_en(true).0);
        let c = h.csts();
        assert!(c.cfs(), "{what}: CFS expected");
        assert!(!c.rdy(), "{what}");
        assert_eq!(
            h.sim.violations().len(),
            1,
            "{what}: {:?}",
            h.sim.violations()
        );
        // A reset clears CFS.
        bar.write32(offset::CC, cc.with_en(false).0);
        assert!(!h.csts().cfs(), "{what}");
    }
}

#[test]
fn disable_resets_queues() {
    let mut h = Host::enabled(cfg());
    h.create_pair(1, 16, false);
    h.disable();
    h.enable(16);
    // The I/O queue is gone after the reset: creating it again succeeds, and Set Features
    // Number of Queues is allowed again.
    h.admin_ok(Command::set_features(0x07, false, 0, 0x0003_0003));
    h.create_pair(1, 16, false);
    // A doorbell of a queue that no longer exists after another reset is a violation.
    h.disable();
    h.enable(16);
    h.bar()
        .write32(nvme_core::spec::regs::sq_tail_doorbell(1, 0), 1);
    let v = h.sim.violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].kind, ViolationKind::DoorbellNonexistentQueue);
}

#[test]
fn shutdown_reports_progress_then_complete() {
    let mut h = Host::enabled(SimConfig {
        ready_delay: Duration::from_millis(5),
        ..SimConfig::default()
    });
    let cc = Cc(h.bar().read32(offset::CC));
    h.bar().write32(offset::CC, cc.with_shn(shn::NORMAL).0);
    let first = h.csts().shst();
    assert!(first == shst::OCCURRING || first == shst::COMPLETE);
    h.wait_csts(|c| c.shst() == shst::COMPLETE);
    // Doorbells after shutdown are violations.
    h.push(0, &Command::identify(1, 0, 0, 0));
    h.ring_sq(0);
    assert_eq!(
        h.sim.violations()[0].kind,
        ViolationKind::DoorbellWhileNotReady
    );
    // Reset and re-enable works; SHST returns to normal.
    h.disable();
    h.sim.clear_violations();
    h.enable(8);
    assert_eq!(h.csts().shst(), shst::NORMAL);
    h.sim.assert_no_violations();
}

#[test]
fn toggling_en_before_rdy_follows_is_a_violation() {
    let mut h = Host::new(SimConfig {
        ready_delay: Duration::from_secs(30),
        ..SimConfig::default()
    });
    h.start_enable(8);
    let cc = Cc(h.bar().read32(offset::CC));
    h.bar().write32(offset::CC, cc.with_en(false).0);
    let v = h.sim.violations();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].kind, ViolationKind::EnableWhileTransitioning);
}

#[test]
fn doorbell_before_ready_is_a_violation() {
    let mut h = Host::new(SimConfig {
        ready_delay: Duration::from_secs(30),
        ..SimConfig::default()
    });
    h.start_enable(8);
    h.push(0, &Command::identify(1, 0, 0, 0));
    h.ring_sq(0);
    let v = h.sim.violations();
    assert_eq!(v[0].kind, ViolationKind::DoorbellWhileNotReady);
}

#[test]
fn doorbell_stride() {
    let mut h = Host::enabled(SimConfig { dstrd: 2, ..cfg() });
    assert_eq!(h.dstrd, 2);
    let (c, page) = h.admin_read(Command::identify(1, 0, 0, 0), 4096);
    assert!(c.status().is_success());
    assert_eq!(&page[512..514], &[0x66, 0x44]);
    // A write between two doorbells of a 16-byte stride is no doorbell.
    h.bar().write32(0x1004, 1);
    assert_eq!(h.sim.violations()[0].kind, ViolationKind::UndefinedRegister);
}

#[test]
fn subsystem_reset() {
    let mut h = Host::enabled(cfg());
    assert!(Cap(h.bar().read64(0)).nssrs());
    h.bar().write32(offset::NSSR, 0x4E56_4D65);
    let c = h.csts();
    assert!(c.nssro());
    assert!(!c.rdy());
    // NSSRO is RW1C.
    h.bar().write32(offset::CSTS, 0x10);
    assert!(!h.csts().nssro());
    h.enable(8);
    h.sim.assert_no_violations();
}

#[test]
fn bad_configs_are_refused() {
    for c in [
        SimConfig {
            mqes_z: 0,
            ..SimConfig::default()
        },
        SimConfig {
            max_io_queues: 0,
            ..SimConfig::default()
        },
        SimConfig {
            max_io_queues: 4000,
            dstrd: 4,
            ..SimConfig::default()
        },
        SimConfig {
            serial: "x".repeat(21),
            ..SimConfig::default()
        },
        SimConfig {
            namespaces: vec![sim_backend::NamespaceConfig::memory(520, 1 << 20)],
            ..SimConfig::default()
        },
    ] {
        assert!(Simulator::new(c).is_err());
    }
}

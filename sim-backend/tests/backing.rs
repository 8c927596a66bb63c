//! Backing images, the volatile write cache and power events.

mod common;

use common::*;
use nvme_core::spec::log::lid;
use nvme_core::spec::regs::{offset, shn, shst, Cc};
use nvme_core::spec::{Command, NvmOpcode, SmartLog};
use sim_backend::{NamespaceConfig, SimConfig};

fn write(h: &mut Host, nsid: u32, slba: u64, data: &[u8], fua: bool) {
    let bs = h.sim.lba_size(nsid).unwrap() as usize;
    let mut cmd = Command::rw(
        NvmOpcode::WRITE,
        nsid,
        slba,
        (data.len() / bs - 1) as u16,
        fua,
    );
    let _b = two_page_prps(h, &mut cmd, data);
    assert!(h.io(1, cmd).status().is_success());
}

fn smart(h: &mut Host) -> SmartLog {
    let (_, page) = h.admin_read(Command::get_log_page(lid::SMART, 0, 128, 0, 0, false), 512);
    SmartLog::parse(&page).unwrap()
}

#[test]
fn file_backing_is_a_raw_image() {
    let dir = tempfile::tempdir().unwrap();
    let p512 = dir.path().join("ns1.raw");
    let p4k = dir.path().join("ns2.raw");
    let config = SimConfig {
        namespaces: vec![
            NamespaceConfig::file(512, 1 << 20, &p512),
            NamespaceConfig::file(4096, 1 << 20, &p4k),
        ],
        ..cfg()
    };
    {
        let mut h = Host::enabled(config.clone());
        h.create_pair(1, 16, false);
        let a = pattern(1024, 1);
        let b = pattern(4096, 2);
        write(&mut h, 1, 3, &a, false);
        write(&mut h, 2, 5, &b, false);
        h.io(1, Command::flush(0xFFFF_FFFF));
        // The files are raw images: LBA n at byte n × lba_size.
        let f1 = std::fs::read(&p512).unwrap();
        assert_eq!(f1.len(), 1 << 20);
        assert_eq!(&f1[3 * 512..5 * 512], &a[..]);
        assert!(f1[..3 * 512].iter().all(|&x| x == 0));
        let f2 = std::fs::read(&p4k).unwrap();
        assert_eq!(&f2[5 * 4096..6 * 4096], &b[..]);
        h.sim.assert_no_violations();
    }
    // Reopened, the data is there.
    let h = Host::enabled(config);
    assert_eq!(h.sim.namespace_bytes(1, 3, 2).unwrap(), pattern(1024, 1));
    assert_eq!(h.sim.namespace_bytes(2, 5, 1).unwrap(), pattern(4096, 2));
    // An existing image is extended, never truncated.
    let bigger = SimConfig {
        namespaces: vec![NamespaceConfig::file(512, 2 << 20, &p512)],
        ..cfg()
    };
    drop(h);
    let h = Host::enabled(bigger);
    assert_eq!(std::fs::metadata(&p512).unwrap().len(), 2 << 20);
    assert_eq!(h.sim.namespace_bytes(1, 3, 2).unwrap(), pattern(1024, 1));
}

#[test]
fn power_loss_discards_unflushed_writes() {
    let mut h = Host::enabled(cfg());
    h.create_pair(1, 16, false);
    let flushed = pattern(512, 1);
    let fua = pattern(512, 2);
    let lost = pattern(512, 3);
    write(&mut h, 1, 0, &flushed, false);
    assert!(h.io(1, Command::flush(1)).status().is_success());
    write(&mut h, 1, 1, &fua, true);
    write(&mut h, 1, 2, &lost, false);
    assert_eq!(h.sim.namespace_bytes(1, 2, 1).unwrap(), lost);
    h.sim.power_loss();
    // The controller is back at power-on: CC and CSTS are zero.
    assert_eq!(h.bar().read32(offset::CC), 0);
    assert!(!h.csts().rdy());
    assert_eq!(h.sim.namespace_bytes(1, 0, 1).unwrap(), flushed);
    assert_eq!(h.sim.namespace_bytes(1, 1, 1).unwrap(), fua);
    assert!(h
        .sim
        .namespace_bytes(1, 2, 1)
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    // SMART counts the power cycle and the unsafe shutdown.
    h.sqs.clear();
    h.cqs.clear();
    h.enable(16);
    let s = smart(&mut h);
    assert_eq!(s.power_cycles, 1);
    assert_eq!(s.unsafe_shutdowns, 1);
    h.sim.assert_no_violations();
}

#[test]
fn shutdown_then_power_loss_is_safe() {
    let mut h = Host::enabled(cfg());
    h.create_pair(1, 16, false);
    let d = pattern(512, 7);
    write(&mut h, 1, 9, &d, false);
    h.admin_ok(Command::delete_io_sq(1));
    h.admin_ok(Command::delete_io_cq(1));
    let cc = Cc(h.bar().read32(offset::CC));
    h.bar().write32(offset::CC, cc.with_shn(shn::NORMAL).0);
    h.wait_csts(|c| c.shst() == shst::COMPLETE);
    h.sim.power_loss();
    assert_eq!(h.sim.namespace_bytes(1, 9, 1).unwrap(), d);
    h.sqs.clear();
    h.cqs.clear();
    h.enable(16);
    let s = smart(&mut h);
    assert_eq!((s.power_cycles, s.unsafe_shutdowns), (1, 0));
    h.sim.assert_no_violations();
}

#[test]
fn power_cycle_keeps_cached_data_and_disabling_the_cache_flushes() {
    let mut h = Host::enabled(cfg());
    h.create_pair(1, 16, false);
    let d = pattern(512, 4);
    write(&mut h, 1, 0, &d, false);
    // Turning the cache off writes it back.
    h.admin_ok(Command::set_features(0x06, false, 0, 0));
    write(&mut h, 1, 1, &d, false);
    h.sim.power_loss();
    assert_eq!(
        h.sim.namespace_bytes(1, 0, 2).unwrap(),
        [d.clone(), d.clone()].concat()
    );
    // An orderly power cycle keeps the cache.
    h.sqs.clear();
    h.cqs.clear();
    h.enable(16);
    h.create_pair(1, 16, false);
    write(&mut h, 1, 5, &d, false);
    h.sim.power_cycle();
    assert_eq!(h.sim.namespace_bytes(1, 5, 1).unwrap(), d);
}

#[test]
fn back_door_range_errors() {
    let h = Host::new(cfg());
    assert!(h.sim.namespace_bytes(3, 0, 1).is_err());
    assert!(h.sim.namespace_bytes(1, (64 << 20) / 512, 1).is_err());
    assert!(h.sim.write_namespace_bytes(0, 0, &[0; 512]).is_err());
    assert!(h
        .sim
        .write_namespace_bytes(2, (64 << 20) / 4096, &[0; 1])
        .is_err());
}

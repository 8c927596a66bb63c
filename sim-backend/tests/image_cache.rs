//! The read cache of image-backed namespaces seen from the host: Read commands return the
//! image's bytes, and what every write path (Write with and without FUA, Flush, Write
//! Zeroes, Dataset Management deallocation, Format NVM, the back door, power loss) left on
//! the medium, never a stale chunk.

mod common;

use common::*;
use nvme_core::spec::{Command, NvmOpcode};
use sim_backend::{ImageFile, NamespaceConfig, SimConfig};

/// Blocks of namespace 1 read by a Read command (at most 8 KiB).
fn read(h: &mut Host, slba: u64, len: usize) -> Vec<u8> {
    let bs = h.sim.lba_size(1).unwrap() as usize;
    let mut cmd = Command::rw(NvmOpcode::READ, 1, slba, (len / bs - 1) as u16, false);
    let b = two_page_prps(h, &mut cmd, &[]);
    let c = h.io(1, cmd);
    assert!(c.status().is_success(), "read {slba}+{len}: {:?}", sc(&c));
    h.read_mem(b.iova(), len)
}

fn write(h: &mut Host, slba: u64, data: &[u8], fua: bool) {
    let nlb_z = (data.len() / 512 - 1) as u16;
    let mut cmd = Command::rw(NvmOpcode::WRITE, 1, slba, nlb_z, fua);
    let _b = two_page_prps(h, &mut cmd, data);
    assert!(h.io(1, cmd).status().is_success());
}

fn ok(h: &mut Host, cmd: Command) {
    let c = h.io(1, cmd);
    assert!(c.status().is_success(), "{:?}", sc(&c));
}

/// The image's bytes of blocks `lba ..` (512-byte blocks), `len` of them.
fn on_file(path: &std::path::Path, lba: usize, len: usize) -> Vec<u8> {
    std::fs::read(path).unwrap()[lba * 512..lba * 512 + len].to_vec()
}

/// Every read below is of blocks 0..16 of a namespace of 512-byte blocks, all in chunk 0,
/// which the first read caches: a write path that left the cached chunk stale fails the
/// comparison that follows it.
#[test]
fn reads_see_every_write_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ns.img");
    let image = pattern(1 << 20, 1);
    std::fs::write(&path, &image).unwrap();
    let config = SimConfig {
        namespaces: vec![NamespaceConfig::file(512, 1 << 20, &path)],
        ..cfg()
    };
    let mut h = Host::enabled(config);
    h.create_pair(1, 16, false);
    let mut want = image[..8192].to_vec();
    assert_eq!(read(&mut h, 0, 8192), want);

    // Write with FUA: through to the file.
    let d = pattern(1024, 2);
    write(&mut h, 2, &d, true);
    want[1024..2048].copy_from_slice(&d);
    assert_eq!(read(&mut h, 0, 8192), want);
    assert_eq!(on_file(&path, 0, 8192), want);

    // Write into the volatile write cache, then Flush.
    let d = pattern(512, 3);
    write(&mut h, 5, &d, false);
    want[2560..3072].copy_from_slice(&d);
    assert_eq!(read(&mut h, 0, 8192), want);
    ok(&mut h, Command::flush(1));
    assert_eq!(on_file(&path, 0, 8192), want);
    assert_eq!(read(&mut h, 0, 8192), want);

    // Write Zeroes.
    ok(&mut h, Command::write_zeroes(1, 6, 1, false));
    want[3072..4096].fill(0);
    ok(&mut h, Command::flush(1));
    assert_eq!(read(&mut h, 0, 8192), want);

    // Dataset Management deallocation (deallocated blocks read as zeroes, DLFEAT).
    let mut range = Vec::new();
    range.extend_from_slice(&0u32.to_le_bytes());
    range.extend_from_slice(&2u32.to_le_bytes());
    range.extend_from_slice(&9u64.to_le_bytes());
    let mut dsm = Command::dataset_management(1, 0, true);
    let _b = two_page_prps(&h, &mut dsm, &range);
    ok(&mut h, dsm);
    want[9 * 512..11 * 512].fill(0);
    ok(&mut h, Command::flush(1));
    assert_eq!(read(&mut h, 0, 8192), want);
    assert_eq!(on_file(&path, 0, 8192), want);

    // The test back door writes the medium.
    h.sim.write_namespace_bytes(1, 12, &[0x77; 512]).unwrap();
    want[12 * 512..13 * 512].fill(0x77);
    assert_eq!(read(&mut h, 0, 8192), want);

    // Power loss: unflushed data is gone, the medium (and the chunk) keep what was written.
    write(&mut h, 13, &[0x88; 512], false);
    h.sim.power_loss();
    h.sqs.clear();
    h.cqs.clear();
    h.enable(16);
    h.create_pair(1, 16, false);
    assert_eq!(read(&mut h, 0, 8192), want);

    // Format NVM (same LBA size): everything reads as zeroes.
    h.admin_ok(Command::format_nvm(1, 0, 0));
    assert!(read(&mut h, 0, 8192).iter().all(|&b| b == 0));
    assert!(on_file(&path, 0, 8192).iter().all(|&b| b == 0));
    h.sim.assert_no_violations();
}

/// A read-only image, and an image reopened after a writer: Read commands return the
/// image's bytes, the ones the writer left included.
#[test]
fn read_only_and_reopened_images() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ns.img");
    let image = pattern(1 << 20, 4);
    std::fs::write(&path, &image).unwrap();
    let d = pattern(4096, 5);
    {
        let img = ImageFile::open(&path, None, false).unwrap();
        let config = SimConfig {
            namespaces: vec![img.namespace().unwrap()],
            ..cfg()
        };
        let mut h = Host::enabled(config);
        h.create_pair(1, 16, false);
        assert_eq!(read(&mut h, 200, 8192), &image[200 * 512..216 * 512]);
        write(&mut h, 204, &d, false);
        ok(&mut h, Command::flush(1));
    }
    let mut want = image[200 * 512..216 * 512].to_vec();
    want[2048..6144].copy_from_slice(&d);
    let img = ImageFile::open(&path, None, true).unwrap();
    let config = SimConfig {
        namespaces: vec![img.namespace().unwrap()],
        ..cfg()
    };
    let mut h = Host::enabled(config);
    h.create_pair(1, 16, false);
    for _ in 0..2 {
        assert_eq!(read(&mut h, 200, 8192), want);
    }
    // A write to the read-only image fails, and the data read does not change.
    let mut cmd = Command::rw(NvmOpcode::WRITE, 1, 204, 0, true);
    let _b = two_page_prps(&h, &mut cmd, &[0x99; 512]);
    assert!(!h.io(1, cmd).status().is_success());
    assert_eq!(read(&mut h, 200, 8192), want);
    h.sim.assert_no_violations();
}

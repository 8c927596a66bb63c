//! NVM commands and PRPs (NVM Command Set §3, NVMe Base §4.3.1).

mod common;

use common::*;
use nvme_core::spec::{Command, NvmOpcode};
use sim_backend::{SimConfig, ViolationKind};

fn host() -> Host {
    let mut h = Host::enabled(cfg());
    h.create_pair(1, 64, false);
    h
}

fn write(h: &mut Host, nsid: u32, slba: u64, data: &[u8]) -> (u8, u8) {
    let bs = h.sim.lba_size(nsid).unwrap() as usize;
    let mut cmd = Command::rw(
        NvmOpcode::WRITE,
        nsid,
        slba,
        (data.len() / bs - 1) as u16,
        false,
    );
    let _b = two_page_prps(h, &mut cmd, data);
    sc(&h.io(1, cmd))
}

fn read(h: &mut Host, nsid: u32, slba: u64, len: usize) -> ((u8, u8), Vec<u8>) {
    let bs = h.sim.lba_size(nsid).unwrap() as usize;
    let mut cmd = Command::rw(NvmOpcode::READ, nsid, slba, (len / bs - 1) as u16, false);
    let b = two_page_prps(h, &mut cmd, &[]);
    let c = h.io(1, cmd);
    (sc(&c), h.read_mem(b.iova(), len))
}

#[test]
fn round_trip_both_namespaces() {
    let mut h = host();
    let data = pattern(8192, 3);
    assert_eq!(write(&mut h, 1, 100, &data), (0, 0));
    let (st, back) = read(&mut h, 1, 100, 8192);
    assert_eq!(st, (0, 0));
    assert_eq!(back, data);
    assert_eq!(h.sim.namespace_bytes(1, 100, 16).unwrap(), data);
    assert_eq!(write(&mut h, 2, 7, &data), (0, 0));
    let (_, back) = read(&mut h, 2, 7, 8192);
    assert_eq!(back, data);
    // Unwritten blocks read as zeroes.
    let (_, z) = read(&mut h, 2, 100, 4096);
    assert!(z.iter().all(|&b| b == 0));
    // The back door writes the medium; the host reads it.
    h.sim.write_namespace_bytes(1, 5, &[0x5A; 512]).unwrap();
    let (_, b) = read(&mut h, 1, 5, 512);
    assert_eq!(b, vec![0x5A; 512]);
    h.sim.assert_no_violations();
}

#[test]
fn prp1_with_offset() {
    let mut h = host();
    let data = pattern(1024, 9);
    let buf = h.alloc(8192);
    // 2 blocks at offset 3584: crosses into the second page.
    h.write_mem(buf.iova() + 3584, &data);
    let mut cmd = Command::rw(NvmOpcode::WRITE, 1, 0, 1, false);
    cmd.set_prps(buf.iova() + 3584, buf.iova() + 4096);
    assert!(h.io(1, cmd).status().is_success());
    assert_eq!(h.sim.namespace_bytes(1, 0, 2).unwrap(), data);
    h.sim.assert_no_violations();
}

#[test]
fn prp_list_chaining() {
    // MDTS 10: 4 MiB transfers, enough for a chained PRP list.
    let mut h = Host::enabled(SimConfig { mdts: 10, ..cfg() });
    h.create_pair(1, 16, false);
    let pages = 600usize;
    let len = pages * 4096;
    let data = pattern(len, 42);
    // Data pages scattered: every other page of a larger region.
    let region = h.alloc(2 * len);
    let page_addr = |i: usize| region.iova() + (2 * i) as u64 * 4096;
    for i in 0..pages {
        h.write_mem(page_addr(i), &data[i * 4096..(i + 1) * 4096]);
    }
    // PRP1 = page 0; list 1 holds pages 1..=511 and a pointer to list 2 (pages 512..600).
    let l1 = h.alloc(4096);
    let l2 = h.alloc(4096);
    let mut e1 = Vec::new();
    for i in 1..512 {
        e1.extend_from_slice(&page_addr(i).to_le_bytes());
    }
    e1.extend_from_slice(&l2.iova().to_le_bytes());
    h.write_mem(l1.iova(), &e1);
    let mut e2 = Vec::new();
    for i in 512..pages {
        e2.extend_from_slice(&page_addr(i).to_le_bytes());
    }
    h.write_mem(l2.iova(), &e2);
    let nlb = (len / 4096) as u16;
    let mut w = Command::rw(NvmOpcode::WRITE, 2, 0, nlb - 1, false);
    w.set_prps(page_addr(0), l1.iova());
    assert!(h.io(1, w).status().is_success());
    assert_eq!(h.sim.namespace_bytes(2, 0, pages as u64).unwrap(), data);

    // Read back into a fresh region through the same list shape.
    let out = h.alloc(len);
    let mut e = Vec::new();
    for i in 1..512 {
        e.extend_from_slice(&(out.iova() + i as u64 * 4096).to_le_bytes());
    }
    e.extend_from_slice(&l2.iova().to_le_bytes());
    h.write_mem(l1.iova(), &e);
    let mut e = Vec::new();
    for i in 512..pages {
        e.extend_from_slice(&(out.iova() + i as u64 * 4096).to_le_bytes());
    }
    h.write_mem(l2.iova(), &e);
    let mut r = Command::rw(NvmOpcode::READ, 2, 0, nlb - 1, false);
    r.set_prps(out.iova(), l1.iova());
    assert!(h.io(1, r).status().is_success());
    assert_eq!(h.read_mem(out.iova(), len), data);

    // A list starting inside a page (qword aligned): 3 pages, list of 2 entries at +8.
    let lst = h.alloc(4096);
    let d = h.alloc(3 * 4096);
    h.write_mem(
        lst.iova() + 8,
        &[
            (d.iova() + 4096).to_le_bytes(),
            (d.iova() + 8192).to_le_bytes(),
        ]
        .concat(),
    );
    let mut r = Command::rw(NvmOpcode::READ, 2, 0, 2, false);
    r.set_prps(d.iova(), lst.iova() + 8);
    assert!(h.io(1, r).status().is_success());
    assert_eq!(h.read_mem(d.iova(), 3 * 4096), data[..3 * 4096].to_vec());
    h.sim.assert_no_violations();
}

#[test]
fn malformed_prps_are_refused_and_recorded() {
    let mut h = host();
    let buf = h.alloc(3 * 4096);
    // PRP1 not dword aligned.
    let mut c = Command::rw(NvmOpcode::READ, 1, 0, 0, false);
    c.set_prps(buf.iova() + 2, 0);
    assert_eq!(sc(&h.io(1, c)), (0, 0x13));
    assert_eq!(h.sim.violations()[0].kind, ViolationKind::MisalignedPrp);
    h.sim.clear_violations();
    // PRP2 (second page) with an offset.
    let mut c = Command::rw(NvmOpcode::READ, 1, 0, 15, false);
    c.set_prps(buf.iova(), buf.iova() + 4096 + 512);
    assert_eq!(sc(&h.io(1, c)), (0, 0x13));
    assert_eq!(h.sim.violations()[0].kind, ViolationKind::MisalignedPrp);
    h.sim.clear_violations();
    // PRP list pointer not qword aligned (12 KiB on 512 B blocks: 3 pages).
    let mut c = Command::rw(NvmOpcode::READ, 1, 0, 23, false);
    c.set_prps(buf.iova(), buf.iova() + 4);
    assert_eq!(sc(&h.io(1, c)), (0, 0x13));
    assert_eq!(h.sim.violations()[0].kind, ViolationKind::MalformedPrpList);
    h.sim.clear_violations();
    // An unmapped data page: Data Transfer Error, nothing written to the medium.
    h.sim.write_namespace_bytes(1, 0, &[1u8; 512]).unwrap();
    let mut c = Command::rw(NvmOpcode::WRITE, 1, 0, 0, false);
    c.set_prps(0xdead_0000, 0);
    assert_eq!(sc(&h.io(1, c)), (0, 0x04));
    assert_eq!(h.sim.violations()[0].kind, ViolationKind::UnmappedDma);
    assert_eq!(h.sim.namespace_bytes(1, 0, 1).unwrap(), vec![1u8; 512]);
    h.sim.clear_violations();
    // The guard page right after a region is unmapped (freeing needs `unsafe`, which these
    // tests do not use; the allocator's unit test covers freed regions).
    let iova = h.alloc(4096).iova();
    let mut c = Command::rw(NvmOpcode::READ, 1, 0, 0, false);
    c.set_prps(iova + 4096, 0);
    assert_eq!(sc(&h.io(1, c)), (0, 0x04));
    assert_eq!(h.sim.violations()[0].kind, ViolationKind::UnmappedDma);
}

#[test]
fn range_namespace_and_mdts_checks() {
    let mut h = host();
    let nsze = (64u64 << 20) / 512;
    let mut c = Command::rw(NvmOpcode::READ, 1, nsze - 1, 1, false);
    let _b = two_page_prps(&h, &mut c, &[]);
    assert_eq!(sc(&h.io(1, c)), (0, 0x80));
    let mut c = Command::rw(NvmOpcode::READ, 1, u64::MAX, 0, false);
    let _b = two_page_prps(&h, &mut c, &[]);
    assert_eq!(sc(&h.io(1, c)), (0, 0x80));
    for nsid in [0u32, 3, 0xFFFF_FFFF] {
        let mut c = Command::rw(NvmOpcode::READ, nsid, 0, 0, false);
        let _b = two_page_prps(&h, &mut c, &[]);
        assert_eq!(sc(&h.io(1, c)), (0, 0x0B), "nsid {nsid:#x}");
    }
    // 257 × 512 B > 128 KiB MDTS.
    let c = Command::rw(NvmOpcode::READ, 1, 0, 256, false);
    assert_eq!(sc(&h.io(1, c)), (0, 0x02));
    // Write Zeroes and Verify are not bound by MDTS.
    assert!(h
        .io(1, Command::write_zeroes(1, 0, 1000, false))
        .status()
        .is_success());
    assert!(h.io(1, Command::verify(1, 0, 1000)).status().is_success());
    // Unknown I/O opcode.
    assert_eq!(sc(&h.io(1, Command::new(0x7E))), (0, 0x01));
    h.sim.assert_no_violations();
}

#[test]
fn write_zeroes_dsm_compare_verify_uncorrectable() {
    let mut h = host();
    let data = pattern(4096, 5);
    assert_eq!(write(&mut h, 1, 0, &data), (0, 0));
    // Compare: match, then mismatch.
    let mut c = Command::rw(NvmOpcode::COMPARE, 1, 0, 7, false);
    let _b = two_page_prps(&h, &mut c, &data);
    assert!(h.io(1, c).status().is_success());
    let mut other = data.clone();
    other[700] ^= 1;
    let mut c = Command::rw(NvmOpcode::COMPARE, 1, 0, 7, false);
    let _b = two_page_prps(&h, &mut c, &other);
    assert_eq!(sc(&h.io(1, c)), (2, 0x85));
    // Write Zeroes (with deallocate).
    assert!(h
        .io(1, Command::write_zeroes(1, 1, 0, true))
        .status()
        .is_success());
    let (_, b) = read(&mut h, 1, 0, 4096);
    assert_eq!(&b[..512], &data[..512]);
    assert!(b[512..1024].iter().all(|&x| x == 0));
    // Dataset Management deallocate of two ranges.
    let ranges = [(2u64, 2u32), (6, 1)];
    let mut raw = Vec::new();
    for (slba, nlb) in ranges {
        raw.extend_from_slice(&0u32.to_le_bytes());
        raw.extend_from_slice(&nlb.to_le_bytes());
        raw.extend_from_slice(&slba.to_le_bytes());
    }
    let mut c = Command::dataset_management(1, 1, true);
    let _b = two_page_prps(&h, &mut c, &raw);
    assert!(h.io(1, c).status().is_success());
    let (_, b) = read(&mut h, 1, 0, 4096);
    for blk in 0..8 {
        let zero = matches!(blk, 1..=3 | 6);
        let got = &b[blk * 512..(blk + 1) * 512];
        if zero {
            assert!(got.iter().all(|&x| x == 0), "block {blk}");
        } else {
            assert_eq!(got, &data[blk * 512..(blk + 1) * 512], "block {blk}");
        }
    }
    // A DSM range beyond the namespace.
    let mut bad = Vec::new();
    bad.extend_from_slice(&0u32.to_le_bytes());
    bad.extend_from_slice(&10u32.to_le_bytes());
    bad.extend_from_slice(&((64u64 << 20) / 512 - 5).to_le_bytes());
    let mut c = Command::dataset_management(1, 0, true);
    let _b = two_page_prps(&h, &mut c, &bad);
    assert_eq!(sc(&h.io(1, c)), (0, 0x80));
    // Write Uncorrectable: reads and verify fail until rewritten.
    let wu = Command::rw(NvmOpcode::WRITE_UNCORRECTABLE, 1, 4, 0, false);
    assert!(h.io(1, wu).status().is_success());
    let (st, _) = read(&mut h, 1, 0, 4096);
    assert_eq!(st, (2, 0x81));
    assert_eq!(sc(&h.io(1, Command::verify(1, 4, 0))), (2, 0x81));
    assert_eq!(write(&mut h, 1, 4, &data[..512]), (0, 0));
    let (st, _) = read(&mut h, 1, 0, 4096);
    assert_eq!(st, (0, 0));
    // Flush: one namespace and all of them.
    assert!(h.io(1, Command::flush(1)).status().is_success());
    assert!(h.io(1, Command::flush(0xFFFF_FFFF)).status().is_success());
    assert_eq!(sc(&h.io(1, Command::flush(0))), (0, 0x0B));
    h.sim.assert_no_violations();
}

#[test]
fn sgl_and_fused_are_refused() {
    let mut h = host();
    // PSDT 10b (a metadata SGL in MPTR) needs SGLS bit 19, which the simulator never sets;
    // PSDT 01b is refused only without SGL support (`sgl_refused_without_support`).
    let mut c = Command::flush(1);
    c.set_psdt(2);
    assert_eq!(sc(&h.io(1, c)), (0, 0x02));
    let mut c = Command::flush(1);
    c.set_fuse(1);
    assert_eq!(sc(&h.io(1, c)), (0, 0x02));
    let mut c = Command::identify(1, 0, 0, 0);
    c.set_psdt(2);
    assert_eq!(sc(&h.admin(c)), (0, 0x02));
    let kinds: Vec<_> = h.sim.violations().iter().map(|v| v.kind).collect();
    assert_eq!(
        kinds,
        vec![
            ViolationKind::Psdt,
            ViolationKind::FusedCommand,
            ViolationKind::Psdt
        ]
    );
}

/// Identify SGLS = 0: a command with PSDT 01b is Invalid Field and a violation (§4.1).
#[test]
fn sgl_refused_without_support() {
    let mut h = Host::enabled(SimConfig { sgls: 0, ..cfg() });
    h.create_pair(1, 64, false);
    let mut c = Command::flush(1);
    c.set_psdt(1);
    assert_eq!(sc(&h.io(1, c)), (0, 0x02));
    let kinds: Vec<_> = h.sim.violations().iter().map(|v| v.kind).collect();
    assert_eq!(kinds, vec![ViolationKind::Psdt]);
}

/// Two SQs on one CQ, both holding commands while the CQ is full: as the host frees
/// entries, the controller takes one command from each ready SQ per round (NVMe Base
/// §3.4.1, round robin), an SQ whose CQ has a completion waiting for room is skipped, and
/// one SQ left alone is served on its own.
#[test]
fn sqs_sharing_a_full_cq_are_served_round_robin() {
    use nvme_core::spec::{CQE_SIZE, SQE_SIZE};
    let mut h = Host::enabled(cfg());
    // CQ 1: 4 slots, 3 entries at most; SQs 1 and 2 post to it.
    let cq = h.alloc(4 * CQE_SIZE);
    h.admin_ok(Command::create_io_cq(1, 3, cq.iova(), false, 0));
    h.track_cq(1, cq, 4);
    for q in [1u16, 2] {
        let sq = h.alloc(16 * SQE_SIZE);
        h.admin_ok(Command::create_io_sq(q, 15, sq.iova(), 1, 0));
        h.track_sq(q, sq, 16);
    }
    let flush = |cid: u16| {
        let mut c = Command::flush(1);
        c.set_cid(cid);
        c
    };
    // 1..=4 on SQ 1: three posted, the fourth executed and waiting for room.
    for cid in 1..=4 {
        h.push(1, &flush(cid));
    }
    h.ring_sq(1);
    // Meanwhile 101, 102 on SQ 2 and 5, 6 on SQ 1: nothing fetched while 4 waits.
    h.push(2, &flush(101));
    h.push(2, &flush(102));
    h.ring_sq(2);
    h.push(1, &flush(5));
    h.push(1, &flush(6));
    h.ring_sq(1);
    let take = |h: &mut Host| {
        let mut got = Vec::new();
        while let Some(c) = h.poll(1) {
            assert_eq!(sc(&c), (0, 0));
            got.push(c.cid());
        }
        if !got.is_empty() {
            h.ring_cq(1);
        }
        got
    };
    assert_eq!(take(&mut h), [1, 2, 3]);
    // 4 goes in; then one round takes 5 from SQ 1 and 101 from SQ 2 (the CQ is full
    // again), the next takes 6 from SQ 1, which waits for room, and SQ 2 is skipped.
    assert_eq!(take(&mut h), [4, 5, 101]);
    // 6 goes in; SQ 2 alone is ready.
    assert_eq!(take(&mut h), [6, 102]);
    assert_eq!(take(&mut h), Vec::<u16>::new());
    h.sim.assert_no_violations();
}

/// Read-ahead: while a Read's data is copied, the simulator prefetches the medium under the
/// Read queued behind it in the same SQ. The hint comes from an entry not fetched yet, so it
/// must never be trusted: a hostile next entry (unknown NSID, a range past the end or
/// wrapping around) gives no hint and no panic, and a Write queued between changes what the
/// Read behind it returns (the hint is never read as data). Every command still completes
/// with its own status and data, through PRPs and through SGLs.
#[test]
fn queued_reads_return_their_own_data_whatever_the_entry_behind_them_holds() {
    use nvme_core::hw::DmaRegion;
    use nvme_core::spec::sgl::{set_sgl1, SglDescriptor};
    let mut h = host();
    let medium = pattern(64 * 4096, 11);
    h.sim.write_namespace_bytes(2, 0, &medium).unwrap();
    let blocks = (64 << 20) / 4096;
    h.sim
        .write_namespace_bytes(2, blocks - 1, &medium[..4096])
        .unwrap();
    let block = |lba: usize, n: usize| medium[lba * 4096..(lba + n) * 4096].to_vec();
    let new = pattern(4096, 77);
    let staged = h.alloc(4096);
    h.write_mem(staged.iova(), &new);
    enum Want {
        Data(Vec<u8>),
        Status(u8, u8),
    }
    let mut cmds: Queued = Vec::new();
    type Queued = Vec<(Command, Option<DmaRegion>, Want)>;
    fn queue_read(
        h: &mut Host,
        cmds: &mut Queued,
        nsid: u32,
        slba: u64,
        nlb: u16,
        sgl: bool,
        want: Want,
    ) {
        let len = usize::from(nlb) * 4096;
        let mut c = Command::rw(NvmOpcode::READ, nsid, slba, nlb.saturating_sub(1), false);
        let b = h.alloc(len.max(4096) + 4096);
        if sgl {
            set_sgl1(&mut c, SglDescriptor::data_block(b.iova() + 8, len as u32));
        } else {
            c.set_prps(b.iova(), b.iova() + 4096);
        }
        cmds.push((c, Some(b), want));
    }
    queue_read(&mut h, &mut cmds, 2, 3, 1, false, Want::Data(block(3, 1)));
    // Behind it: an NSID no namespace has.
    queue_read(
        &mut h,
        &mut cmds,
        0xFFFF_FFFF,
        7,
        1,
        false,
        Want::Status(0, 0x0B),
    );
    queue_read(&mut h, &mut cmds, 2, 7, 2, true, Want::Data(block(7, 2)));
    // Behind it: a range that wraps around the LBA space.
    let mut wrap = Command::rw(NvmOpcode::READ, 2, u64::MAX - 1, 0xFFFF, false);
    wrap.set_prps(staged.iova(), 0);
    cmds.push((wrap, None, Want::Status(0, 0x80)));
    queue_read(&mut h, &mut cmds, 2, 62, 2, false, Want::Data(block(62, 2)));
    // Behind it: the last block and one past the end.
    queue_read(
        &mut h,
        &mut cmds,
        2,
        blocks - 1,
        2,
        false,
        Want::Status(0, 0x80),
    );
    queue_read(&mut h, &mut cmds, 2, 20, 1, true, Want::Data(block(20, 1)));
    // Behind it: a Write of block 21 through to the medium, then a Read of block 21 (its
    // hint, taken while the Write waits, is the old data).
    let mut w = Command::rw(NvmOpcode::WRITE, 2, 21, 0, true);
    w.set_prps(staged.iova(), 0);
    cmds.push((w, None, Want::Status(0, 0)));
    queue_read(&mut h, &mut cmds, 2, 21, 1, false, Want::Data(new.clone()));
    // The same through the volatile write cache.
    let mut w = Command::rw(NvmOpcode::WRITE, 2, 22, 0, false);
    w.set_prps(staged.iova(), 0);
    cmds.push((w, None, Want::Status(0, 0)));
    queue_read(&mut h, &mut cmds, 2, 22, 1, true, Want::Data(new.clone()));
    // Never written: zeroes.
    queue_read(
        &mut h,
        &mut cmds,
        2,
        10_000,
        1,
        false,
        Want::Data(vec![0; 4096]),
    );
    for k in 0..4 {
        queue_read(
            &mut h,
            &mut cmds,
            2,
            30 + 2 * k,
            1,
            k % 2 == 1,
            Want::Data(block(30 + 2 * k as usize, 1)),
        );
    }

    let before = h.sim.stats().read_ahead_bytes;
    let mut cids = Vec::new();
    for (c, _, _) in &mut cmds {
        let cid = h.cid();
        c.set_cid(cid);
        h.push(1, c);
        cids.push(cid);
    }
    h.ring_sq(1);
    let mut got = std::collections::HashMap::new();
    for _ in 0..cmds.len() {
        let c = h.wait(1);
        got.insert(c.cid(), c);
    }
    for ((cmd, buf, want), cid) in cmds.iter().zip(&cids) {
        let c = &got[cid];
        match want {
            Want::Status(sct, sc_) => assert_eq!(sc(c), (*sct, *sc_), "{cmd:?}"),
            Want::Data(data) => {
                assert_eq!(sc(c), (0, 0), "{cmd:?}");
                let b = buf.as_ref().expect("a read buffer");
                let at = if cmd.psdt() != 0 { 8 } else { 0 };
                assert!(
                    h.read_mem(b.iova() + at, data.len()) == *data,
                    "{cmd:?} returned other data"
                );
            }
        }
    }
    // Prefetched for: the never-written block's Read and the first three of the four at the
    // end, one page each (the next Read's first page, on written memory). Nothing for a Read
    // followed by a Write, by an unknown NSID, by a range that wraps or runs past the end (a
    // written block is there, but the Read will be refused), or by an unwritten block.
    let ahead = h.sim.stats().read_ahead_bytes - before;
    assert_eq!(ahead, 4 * 4096, "read-ahead prefetched {ahead} bytes");
    h.sim.assert_no_violations();
}

/// One Read at a time (nothing queued behind it): no read-ahead.
#[test]
fn a_read_alone_in_its_queue_prefetches_nothing() {
    let mut h = host();
    let data = pattern(8192, 5);
    h.sim.write_namespace_bytes(2, 0, &data).unwrap();
    for lba in 0..2 {
        let (st, back) = read(&mut h, 2, lba, 4096);
        assert_eq!(st, (0, 0));
        assert_eq!(back, data[lba as usize * 4096..][..4096]);
    }
    assert_eq!(h.sim.stats().read_ahead_bytes, 0);
}

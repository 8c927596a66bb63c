//! Driver behaviour on the simulator beyond the spec cases: several queue pairs on several
//! threads, batched doorbells, interrupts, and that no DMA memory outlives its use (nothing
//! leaked, nothing freed early) on every teardown path.

use std::thread;
use std::time::Duration;

use nvme_core::hw::Platform;
use nvme_core::spec::NvmOpcode;
use nvme_core::{Controller, ControllerConfig, Error};
use sim_backend::{CommandMatch, SimConfig, SimMode, Simulator};

fn config(interrupts: bool) -> ControllerConfig {
    ControllerConfig {
        io_queue_pairs: 4,
        interrupts,
        io_timeout: Duration::from_millis(300),
        admin_timeout: Duration::from_secs(2),
        ..ControllerConfig::default()
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i ^ seed).wrapping_mul(0x9E37_79B9) >> 11) as u8)
        .collect()
}

#[test]
fn four_queue_pairs_on_four_threads_with_a_device_thread() {
    for interrupts in [false, true] {
        let sim = Simulator::new(SimConfig {
            mode: SimMode::Thread,
            ..SimConfig::default()
        })
        .unwrap();
        let mut c = Controller::new(sim.platform(), config(interrupts)).unwrap();
        let ns = c.namespace(1).unwrap().clone();
        let pairs: Vec<_> = (0..4)
            .map(|_| c.create_io_queue_pair(32).unwrap())
            .collect();
        let qids: Vec<u16> = pairs.iter().map(|q| q.qid()).collect();
        assert_eq!(qids, vec![1, 2, 3, 4]);
        let handles: Vec<_> = pairs
            .into_iter()
            .enumerate()
            .map(|(t, mut qp)| {
                let ns = ns.clone();
                thread::spawn(move || {
                    let bs = ns.lba_size() as usize;
                    for i in 0..50u64 {
                        // Each thread owns a disjoint LBA range.
                        let lba = t as u64 * 1000 + (i % 16) * 8;
                        let data = pattern(t as u64 * 1_000_000 + i, 8 * bs);
                        let mut b = qp.alloc_buffer(8 * bs).unwrap();
                        b.write(0, &data).unwrap();
                        qp.write(&ns, lba, b).unwrap();
                        let back = qp.read(&ns, lba, qp.alloc_buffer(8 * bs).unwrap()).unwrap();
                        assert_eq!(back.to_vec(), data, "thread {t} round {i}");
                    }
                    let s = qp.stats();
                    assert_eq!(
                        (s.bad_cid, s.bad_sqid, s.bad_sqhd, s.timeouts),
                        (0, 0, 0, 0)
                    );
                    qp
                })
            })
            .collect();
        for h in handles {
            let qp = h.join().unwrap();
            c.delete_io_queue_pair(qp).unwrap();
        }
        if interrupts {
            assert!(
                sim.stats().interrupts_raised > 0,
                "MSI-X mode raised no interrupt"
            );
        }
        c.shutdown().unwrap();
        sim.assert_no_violations();
        assert_eq!(
            sim.platform().dma().mapped_regions(),
            0,
            "DMA memory leaked"
        );
    }
}

#[test]
fn a_batch_of_submissions_rings_the_doorbell_once() {
    let sim = Simulator::new(SimConfig::default()).unwrap();
    let mut c = Controller::new(sim.platform(), config(false)).unwrap();
    let ns = c.namespace(1).unwrap().clone();
    let mut qp = c.create_io_queue_pair(64).unwrap();
    let before = sim.stats().doorbell_writes;
    for tag in 0..16u64 {
        let b = c.alloc_buffer(512).unwrap();
        qp.submit_read(&ns, tag, b, tag).unwrap();
    }
    assert_eq!(
        sim.stats().doorbell_writes,
        before,
        "submission alone must not ring"
    );
    qp.ring();
    let mut tags = Vec::new();
    while tags.len() < 16 {
        qp.wait(Duration::from_secs(2), |cpl| {
            assert!(cpl.result.is_ok());
            assert!(cpl.buffer.is_some());
            tags.push(cpl.tag);
        })
        .unwrap();
    }
    tags.sort();
    assert_eq!(
        tags,
        (0..16).collect::<Vec<_>>(),
        "each request completes exactly once"
    );
    let rung = sim.stats().doorbell_writes - before;
    // One SQ doorbell for the batch, and CQ head doorbells once per reaped batch (at most one
    // per completion).
    assert!(
        (2..=17).contains(&rung),
        "{rung} doorbell writes for a batch of 16"
    );
    assert_eq!(qp.stats().sq_doorbells, 1);
    c.delete_io_queue_pair(qp).unwrap();
    c.shutdown().unwrap();
    sim.assert_no_violations();
}

#[test]
fn dropped_pair_and_dropped_controller_leak_nothing() {
    let sim = Simulator::new(SimConfig::default()).unwrap();
    let mut c = Controller::new(sim.platform(), config(true)).unwrap();
    let ns = c.namespace(2).unwrap().clone();
    let mut qp = c.create_io_queue_pair(16).unwrap();
    // Leave a command in flight, then drop the pair without deleting it: its memory must wait
    // (the device still owns the queue) and be freed when the controller is disabled.
    qp.submit_read(&ns, 0, c.alloc_buffer(4096).unwrap(), 1)
        .unwrap();
    let baseline = sim.platform().dma().mapped_regions();
    drop(qp);
    assert_eq!(
        sim.platform().dma().mapped_regions(),
        baseline,
        "a live queue's memory was freed while the device owns it"
    );
    drop(c); // abrupt shutdown and disable
    assert_eq!(
        sim.platform().dma().mapped_regions(),
        0,
        "memory leaked after the controller was dropped"
    );
}

#[test]
fn timed_out_buffer_is_kept_until_reset_then_freed() {
    let sim = Simulator::new(SimConfig::default()).unwrap();
    let mut c = Controller::new(sim.platform(), config(false)).unwrap();
    let ns = c.namespace(1).unwrap().clone();
    let mut qp = c.create_io_queue_pair(16).unwrap();
    sim.faults()
        .drop_completion(CommandMatch::io(NvmOpcode::WRITE.0));
    let before = sim.platform().dma().mapped_regions();
    let e = qp.write(&ns, 0, c.alloc_buffer(512).unwrap()).unwrap_err();
    assert!(matches!(e.error, Error::Timeout { .. }), "{e:?}");
    assert!(e.buffer.is_none());
    // The buffer is still mapped: the device may still write it.
    assert_eq!(sim.platform().dma().mapped_regions(), before + 1);
    c.reset().unwrap();
    drop(qp); // dead pair from before the reset: freed at once
    c.shutdown().unwrap();
    assert_eq!(sim.platform().dma().mapped_regions(), 0);
}

#[test]
fn queue_full_is_reported_and_recovers() {
    let sim = Simulator::new(SimConfig::default()).unwrap();
    let mut c = Controller::new(sim.platform(), config(false)).unwrap();
    let ns = c.namespace(1).unwrap().clone();
    let mut qp = c.create_io_queue_pair(4).unwrap();
    for t in 0..3 {
        qp.submit_read(&ns, t, c.alloc_buffer(512).unwrap(), t)
            .unwrap();
    }
    let e = qp
        .submit_read(&ns, 3, c.alloc_buffer(512).unwrap(), 3)
        .unwrap_err();
    assert!(matches!(e.error, Error::QueueFull { .. }));
    assert!(e.buffer.is_some(), "the refused buffer comes back");
    qp.ring();
    let mut n = 0;
    while n < 3 {
        n += qp.wait(Duration::from_secs(2), |_| {}).unwrap();
    }
    qp.submit_read(&ns, 3, e.buffer.unwrap(), 3).unwrap();
    qp.ring();
    while qp.outstanding() > 0 {
        qp.wait(Duration::from_secs(2), |_| {}).unwrap();
    }
    c.delete_io_queue_pair(qp).unwrap();
    c.shutdown().unwrap();
    sim.assert_no_violations();
}

#[test]
fn io_queue_pair_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<nvme_core::IoQueuePair<sim_backend::SimPlatform>>();
    assert_send::<nvme_core::IoQueuePair<vfio_backend::VfioPlatform>>();
}

#[test]
fn caller_chosen_data_pointers_are_ignored() {
    // A raw command cannot aim the device at memory the request does not own: PRPs come only
    // from the buffer that moves into the request.
    let sim = Simulator::new(SimConfig::default()).unwrap();
    let mut c = Controller::new(sim.platform(), config(false)).unwrap();
    let ns = c.namespace(1).unwrap().clone();
    let mut qp = c.create_io_queue_pair(8).unwrap();
    let mut victim = c.alloc_buffer(512).unwrap();
    victim.fill(0xEE);
    let mut cmd = nvme_core::spec::Command::rw(NvmOpcode::READ, ns.nsid(), 0, 0, false);
    cmd.set_prps(victim.iova(), 0)
        .set_psdt(1)
        .set_cdw(4, victim.iova() as u32);
    let r = qp.passthrough(cmd, None);
    let st = r.unwrap_err().error.status().expect("a command status");
    assert!(
        st.is(nvme_core::spec::StatusCodeType::GENERIC, 0x04),
        "expected Data Transfer Error for a read with no buffer, got {st}"
    );
    assert!(
        victim.to_vec().iter().all(|&b| b == 0xEE),
        "the device wrote memory the command did not own"
    );
    c.delete_io_queue_pair(qp).unwrap();
    c.shutdown().unwrap();
}

//! Registered buffers (`IoQueuePair::register_buffer`, `submit_read_fixed`, `poll_fixed`) on
//! the simulator: data round trips, a busy buffer refused everywhere safe code could reach
//! it, owned-buffer and registered-buffer completions kept apart and never lost, and the
//! buffer's fate when a command is aborted and retried, timed out, failed by a reset, or cut
//! off by a surprise removal.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use nvme_core::spec::NvmOpcode;
use nvme_core::{Controller, ControllerConfig, Error, FixedCompletion, RecoveryPolicy};
use sim_backend::{CommandMatch, SimConfig, SimMode, SimPlatform, Simulator};

fn setup(mode: SimMode, recovery: RecoveryPolicy) -> (Simulator, Controller<SimPlatform>) {
    let sim = Simulator::new(SimConfig {
        mode,
        ..SimConfig::default()
    })
    .unwrap();
    let ctrl = Controller::new(
        sim.platform(),
        ControllerConfig {
            interrupts: false,
            io_timeout: Duration::from_millis(200),
            admin_timeout: Duration::from_secs(2),
            recovery,
            ..ControllerConfig::default()
        },
    )
    .unwrap();
    (sim, ctrl)
}

fn block(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

/// Polls until `n` registered-buffer completions arrived (or 5 s passed).
fn poll_fixed_n(qp: &mut nvme_core::IoQueuePair<SimPlatform>, n: usize) -> Vec<FixedCompletion> {
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < n && start.elapsed() < Duration::from_secs(5) {
        qp.poll_fixed(|c| got.push(c)).unwrap();
    }
    got
}

#[test]
fn registered_buffers_round_trip_and_are_refused_while_busy() {
    for mode in [SimMode::Inline, SimMode::Thread] {
        let (sim, mut c) = setup(mode, RecoveryPolicy::REPORT_ONLY);
        let ns = c.namespace(1).unwrap().clone();
        let bs = ns.lba_size() as usize;
        let mut qp = c.create_io_queue_pair(8).unwrap();
        let mut w = c.alloc_buffer(4 * bs).unwrap();
        w.write(0, &block(7, 4 * bs)).unwrap();
        let w = qp.register_buffer(w).unwrap();
        let r = qp.register_buffer(c.alloc_buffer(4 * bs).unwrap()).unwrap();
        assert_ne!(w, r);

        qp.submit_write_fixed(&ns, 40, w, 1).unwrap();
        // Busy until its completion: no view, no second command, no unregistering.
        assert!(qp.fixed_buffer(w).is_none());
        assert!(qp.fixed_buffer_mut(w).is_none());
        assert!(matches!(
            qp.submit_read_fixed(&ns, 0, w, 9),
            Err(Error::FixedBuffer { .. })
        ));
        assert!(matches!(
            qp.unregister_buffer(w),
            Err(Error::FixedBuffer { .. })
        ));
        qp.ring();
        let done = poll_fixed_n(&mut qp, 1);
        assert_eq!(done.len(), 1, "{mode:?}");
        assert_eq!((done[0].tag, done[0].buffer), (1, w));
        assert!(done[0].result.is_ok(), "{:?}", done[0].result);
        assert_eq!(sim.namespace_bytes(1, 40, 4).unwrap(), block(7, 4 * bs));

        qp.submit_read_fixed(&ns, 40, r, 2).unwrap();
        qp.ring();
        let done = poll_fixed_n(&mut qp, 1);
        assert_eq!((done.len(), done[0].tag), (1, 2));
        assert_eq!(qp.fixed_buffer(r).unwrap().to_vec(), block(7, 4 * bs));
        // Free again: it can be refilled, reused and taken back.
        qp.fixed_buffer_mut(r).unwrap().fill(0);
        let back = qp.unregister_buffer(r).unwrap();
        assert_eq!(back.len(), 4 * bs);
        assert!(qp.fixed_buffer(r).is_none(), "unregistered");
        assert!(matches!(
            qp.submit_read_fixed(&ns, 0, r, 3),
            Err(Error::FixedBuffer { .. })
        ));
        // The index is reused by the next registration.
        assert_eq!(qp.register_buffer(back).unwrap(), r);
        assert_eq!(qp.outstanding(), 0);
        c.delete_io_queue_pair(qp).unwrap();
        sim.assert_no_violations();
        c.shutdown().unwrap();
    }
}

#[test]
fn bad_requests_are_refused_before_anything_is_sent() {
    let (sim, mut c) = setup(SimMode::Inline, RecoveryPolicy::REPORT_ONLY);
    let (_sim2, other) = setup(SimMode::Inline, RecoveryPolicy::REPORT_ONLY);
    let ns = c.namespace(1).unwrap().clone();
    let bs = ns.lba_size() as usize;
    let mut qp = c.create_io_queue_pair(8).unwrap();
    // Another controller's buffer names other memory: refused, handed back.
    let e = qp
        .register_buffer(other.alloc_buffer(bs).unwrap())
        .unwrap_err();
    assert!(matches!(e.error, Error::ForeignObject { .. }));
    assert!(e.buffer.is_some());
    let odd = qp.register_buffer(c.alloc_buffer(bs + 1).unwrap()).unwrap();
    assert!(matches!(
        qp.submit_read_fixed(&ns, 0, odd, 0),
        Err(Error::BufferSize { .. })
    ));
    let one = qp.register_buffer(c.alloc_buffer(bs).unwrap()).unwrap();
    assert!(matches!(
        qp.submit_read_fixed(&ns, ns.blocks(), one, 0),
        Err(Error::LbaOutOfRange { .. })
    ));
    let big = qp
        .register_buffer(c.alloc_buffer(qp.max_transfer() + bs).unwrap())
        .unwrap();
    assert!(matches!(
        qp.submit_write_fixed(&ns, 0, big, 0),
        Err(Error::TransferTooLarge { .. })
    ));
    // Refusals leave the buffers free and nothing outstanding.
    assert!(qp.fixed_buffer(one).is_some() && qp.fixed_buffer(big).is_some());
    assert_eq!((qp.outstanding(), qp.stats().submitted), (0, 0));
    c.delete_io_queue_pair(qp).unwrap();
    sim.assert_no_violations();
    c.shutdown().unwrap();
}

/// `poll_fixed` parks owned-buffer completions for `poll`; `poll` delivers registered-buffer
/// completions as `IoCompletion`s without a buffer. Nothing is lost or delivered twice.
#[test]
fn owned_and_registered_completions_are_kept_apart() {
    let (sim, mut c) = setup(SimMode::Inline, RecoveryPolicy::REPORT_ONLY);
    let ns = c.namespace(1).unwrap().clone();
    let bs = ns.lba_size() as usize;
    let mut qp = c.create_io_queue_pair(16).unwrap();
    let ids: Vec<_> = (0..4)
        .map(|_| qp.register_buffer(c.alloc_buffer(bs).unwrap()).unwrap())
        .collect();
    for (k, id) in ids.iter().enumerate() {
        qp.submit_read_fixed(&ns, k as u64, *id, 100 + k as u64)
            .unwrap();
        qp.submit_read(&ns, k as u64, c.alloc_buffer(bs).unwrap(), 200 + k as u64)
            .unwrap();
    }
    qp.ring();
    let fixed = poll_fixed_n(&mut qp, 4);
    let mut tags: Vec<u64> = fixed.iter().map(|c| c.tag).collect();
    tags.sort();
    assert_eq!(tags, [100, 101, 102, 103]);
    let mut owned = Vec::new();
    qp.poll(|c| owned.push((c.tag, c.buffer.is_some(), c.fixed_buffer())))
        .unwrap();
    owned.sort();
    assert_eq!(
        owned,
        (200..204).map(|t| (t, true, None)).collect::<Vec<_>>()
    );
    // Through `poll`: an IoCompletion naming the registered buffer, which is free again.
    qp.submit_write_fixed(&ns, 9, ids[0], 7).unwrap();
    qp.ring();
    let mut via_poll = Vec::new();
    let start = Instant::now();
    while via_poll.is_empty() && start.elapsed() < Duration::from_secs(5) {
        qp.poll(|c| via_poll.push((c.tag, c.buffer.is_none(), c.fixed_buffer(), c.result)))
            .unwrap();
    }
    assert_eq!(via_poll.len(), 1);
    assert_eq!(via_poll[0].0..via_poll[0].0 + 1, 7..8);
    assert!(via_poll[0].1 && via_poll[0].2 == Some(ids[0]) && via_poll[0].3.is_ok());
    assert!(qp.fixed_buffer(ids[0]).is_some());
    // A blocking call in between parks a registered-buffer completion it reaps.
    qp.submit_read_fixed(&ns, 1, ids[1], 8).unwrap();
    qp.read(&ns, 2, c.alloc_buffer(bs).unwrap()).unwrap();
    let got = poll_fixed_n(&mut qp, 1);
    assert_eq!((got.len(), got[0].tag, got[0].buffer), (1, 8, ids[1]));
    assert_eq!(qp.outstanding(), 0);
    c.delete_io_queue_pair(qp).unwrap();
    sim.assert_no_violations();
    c.shutdown().unwrap();
}

/// A stuck command on a registered buffer is aborted and resubmitted on the same buffer,
/// which stays busy until the one completion.
#[test]
fn an_aborted_command_is_retried_on_its_registered_buffer() {
    let policy = RecoveryPolicy {
        abort_timeout: Duration::from_millis(200),
        ..RecoveryPolicy::default()
    };
    let (sim, mut c) = setup(SimMode::Inline, policy);
    let ns = c.namespace(1).unwrap().clone();
    let bs = ns.lba_size() as usize;
    let mut qp = c.create_io_queue_pair(8).unwrap();
    let mut w = c.alloc_buffer(bs).unwrap();
    w.write(0, &block(3, bs)).unwrap();
    qp.write(&ns, 5, w).unwrap();
    let id = qp.register_buffer(c.alloc_buffer(bs).unwrap()).unwrap();
    sim.faults()
        .drop_completion(CommandMatch::io(NvmOpcode::READ.0));
    qp.submit_read_fixed(&ns, 5, id, 77).unwrap();
    qp.ring();
    let mut done = Vec::new();
    let mut aborts = 0;
    let start = Instant::now();
    while done.is_empty() && start.elapsed() < Duration::from_secs(5) {
        qp.poll_fixed(|cpl| done.push(cpl)).unwrap();
        if done.is_empty() {
            assert!(qp.fixed_buffer(id).is_none(), "busy while outstanding");
        }
        aborts += c.recover().unwrap().aborts;
    }
    assert_eq!((done.len(), aborts), (1, 1));
    assert!(done[0].result.is_ok(), "{:?}", done[0].result);
    assert_eq!(qp.fixed_buffer(id).unwrap().to_vec(), block(3, bs));
    assert_eq!(qp.stats().retried, 1);
    c.delete_io_queue_pair(qp).unwrap();
    sim.assert_no_violations();
    c.shutdown().unwrap();
}

/// A timed-out command keeps its registered buffer busy (the device may still write it)
/// until a reset cuts the device off; a reset without retries fails the rest, freeing their
/// buffers (with a policy that does not reset, the pair stays dead after it).
#[test]
fn timeouts_keep_the_buffer_busy_until_the_device_lets_go() {
    let (sim, mut c) = setup(SimMode::Inline, RecoveryPolicy::REPORT_ONLY);
    let ns = c.namespace(1).unwrap().clone();
    let mut qp = c.create_io_queue_pair(8).unwrap();
    let a = qp.register_buffer(c.alloc_buffer(512).unwrap()).unwrap();
    let b = qp.register_buffer(c.alloc_buffer(512).unwrap()).unwrap();
    sim.faults().drop_completion(CommandMatch::any_io());
    qp.submit_read_fixed(&ns, 0, a, 1).unwrap();
    qp.ring();
    let done = poll_fixed_n(&mut qp, 1);
    assert_eq!(done.len(), 1, "the timeout is reported");
    assert!(matches!(done[0].result, Err(Error::Timeout { .. })));
    assert_eq!(done[0].buffer, a);
    assert!(qp.fixed_buffer(a).is_none(), "still the device's");
    assert!(qp.unregister_buffer(a).is_err());
    // Another command held by the device, then a reset: the device lets go of both.
    sim.faults().drop_completion(CommandMatch::any_io());
    qp.submit_read_fixed(&ns, 1, b, 2).unwrap();
    qp.ring();
    c.reset().unwrap();
    let done = poll_fixed_n(&mut qp, 1);
    assert_eq!((done.len(), done[0].tag), (1, 2));
    assert!(matches!(done[0].result, Err(Error::ControllerReset)));
    assert!(qp.fixed_buffer(a).is_some() && qp.fixed_buffer(b).is_some());
    // Nothing more arrives for the timed-out command.
    assert!(poll_fixed_n(&mut qp, 1).is_empty());
    // Without a reset policy the pair does not come back; its buffers come out whole.
    assert!(matches!(
        qp.submit_read_fixed(&ns, 0, a, 3),
        Err(Error::ControllerReset)
    ));
    assert_eq!(qp.unregister_buffer(a).unwrap().len(), 512);
    assert_eq!(qp.unregister_buffer(b).unwrap().len(), 512);
    drop(qp);
    sim.assert_no_violations();
}

/// Surprise removal: the command fails with `DeviceGone` and its buffer leaves the table
/// (retired: a device that is somehow still there could write it); idle buffers stay.
#[test]
fn surprise_removal_retires_busy_buffers() {
    let (sim, mut c) = setup(SimMode::Inline, RecoveryPolicy::default());
    let ns = c.namespace(1).unwrap().clone();
    let mut qp = c.create_io_queue_pair(8).unwrap();
    let busy = qp.register_buffer(c.alloc_buffer(512).unwrap()).unwrap();
    let idle = qp.register_buffer(c.alloc_buffer(512).unwrap()).unwrap();
    sim.faults().drop_completion(CommandMatch::any_io());
    qp.submit_read_fixed(&ns, 0, busy, 1).unwrap();
    qp.ring();
    sim.faults().surprise_removal();
    let mut done = Vec::new();
    let start = Instant::now();
    while done.is_empty() && start.elapsed() < Duration::from_secs(5) {
        match qp.wait_fixed(Duration::from_millis(50), |cpl| done.push(cpl)) {
            Err(Error::DeviceGone) | Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(done.len(), 1);
    assert!(matches!(done[0].result, Err(Error::DeviceGone)));
    assert!(qp.fixed_buffer(busy).is_none());
    assert!(
        qp.unregister_buffer(busy).is_err(),
        "retired, never handed back"
    );
    assert!(qp.unregister_buffer(idle).is_ok());
    drop(qp);
    drop(c);
}

/// A pair dropped with a command in flight on a registered buffer: the buffer is retired
/// with the rings, the rest freed; the controller carries on.
#[test]
fn dropping_a_pair_with_busy_buffers_is_safe() {
    let (sim, mut c) = setup(SimMode::Thread, RecoveryPolicy::REPORT_ONLY);
    let ns = c.namespace(1).unwrap().clone();
    let mut qp = c.create_io_queue_pair(8).unwrap();
    let id = qp.register_buffer(c.alloc_buffer(4096).unwrap()).unwrap();
    qp.register_buffer(c.alloc_buffer(4096).unwrap()).unwrap();
    sim.faults().drop_completion(CommandMatch::any_io());
    qp.submit_read_fixed(&ns, 0, id, 1).unwrap();
    qp.ring();
    drop(qp);
    let mut qp = c.create_io_queue_pair(8).unwrap();
    qp.read(&ns, 0, c.alloc_buffer(4096).unwrap()).unwrap();
    c.delete_io_queue_pair(qp).unwrap();
    c.shutdown().unwrap();
}

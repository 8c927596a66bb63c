//! The recovery policy on the simulator (NVMe Base §5.1.1 Abort, §3.7.2 reset, §9.5
//! CSTS.CFS): a stuck command is aborted and retried, a failed controller is reset and its
//! queue pairs come back with their commands, a removed device fails everything without
//! handing back memory it could write, and asynchronous event requests are re-posted.
//! Every test checks that no request completes twice, none is lost, and every buffer that
//! comes back holds what the device wrote.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nvme_core::spec::{FeatureId, NvmOpcode};
use nvme_core::{Controller, ControllerConfig, Error, RecoveryPolicy};
use sim_backend::{CommandMatch, SimConfig, SimMode, SimPlatform, Simulator};

fn sim(mode: SimMode) -> Simulator {
    Simulator::new(SimConfig {
        mode,
        ..SimConfig::default()
    })
    .unwrap()
}

fn controller(s: &Simulator, policy: RecoveryPolicy) -> Controller<SimPlatform> {
    Controller::new(
        s.platform(),
        ControllerConfig {
            interrupts: false,
            io_timeout: Duration::from_millis(200),
            admin_timeout: Duration::from_secs(2),
            recovery: policy,
            ..ControllerConfig::default()
        },
    )
    .unwrap()
}

fn policy() -> RecoveryPolicy {
    RecoveryPolicy {
        abort_timeout: Duration::from_millis(200),
        ..RecoveryPolicy::default()
    }
}

fn block(lba: u64, bs: usize) -> Vec<u8> {
    (0..bs)
        .map(|i| (lba as usize * 31 + i * 7) as u8 ^ 0x5A)
        .collect()
}

/// A dropped completion: the pair asks for an Abort instead of reporting a timeout, the
/// controller aborts the command (Command Abort Requested), the pair resubmits it and the
/// read returns the data, once.
#[test]
fn a_stuck_command_is_aborted_and_retried() {
    for mode in [SimMode::Inline, SimMode::Thread] {
        let s = sim(mode);
        let mut c = controller(&s, policy());
        let ns = c.namespace(1).unwrap().clone();
        let bs = ns.lba_size() as usize;
        let mut qp = c.create_io_queue_pair(8).unwrap();
        let mut b = qp.alloc_buffer(bs).unwrap();
        b.write(0, &block(5, bs)).unwrap();
        qp.write(&ns, 5, b).unwrap();
        s.faults()
            .drop_completion(CommandMatch::io(NvmOpcode::READ.0));
        qp.submit_read(&ns, 5, qp.alloc_buffer(bs).unwrap(), 77)
            .unwrap();
        qp.ring();
        let mut done = Vec::new();
        let mut aborts = 0;
        let start = Instant::now();
        while done.is_empty() && start.elapsed() < Duration::from_secs(5) {
            qp.poll(|cpl| done.push(cpl)).unwrap();
            let r = c.recover().unwrap();
            aborts += r.aborts;
            assert_eq!(r.resets, 0, "{mode:?}: an Abort was enough");
        }
        assert_eq!(done.len(), 1, "{mode:?}: exactly one completion");
        let cpl = done.pop().unwrap();
        assert_eq!(cpl.tag, 77);
        assert!(cpl.result.is_ok(), "{mode:?}: {:?}", cpl.result);
        assert_eq!(cpl.buffer.unwrap().to_vec(), block(5, bs));
        assert_eq!(aborts, 1, "{mode:?}: one Abort sent");
        assert_eq!(qp.outstanding(), 0);
        c.delete_io_queue_pair(qp).unwrap();
        s.assert_no_violations();
        c.shutdown().unwrap();
    }
}

/// Controller Fatal Status with commands in flight on two pairs: `recover` resets the
/// controller, each pair re-creates its queues with its commands in them, and every command
/// completes once with the right data.
#[test]
fn a_fatal_controller_is_reset_and_its_pairs_carry_on() {
    for mode in [SimMode::Inline, SimMode::Thread] {
        let s = sim(mode);
        let mut c = controller(&s, policy());
        let ns = c.namespace(1).unwrap().clone();
        let bs = ns.lba_size() as usize;
        let mut pairs = vec![
            c.create_io_queue_pair(16).unwrap(),
            c.create_io_queue_pair(16).unwrap(),
        ];
        for (i, qp) in pairs.iter_mut().enumerate() {
            for k in 0..4u64 {
                let lba = 100 + i as u64 * 10 + k;
                let mut b = qp.alloc_buffer(bs).unwrap();
                b.write(0, &block(lba, bs)).unwrap();
                qp.write(&ns, lba, b).unwrap();
            }
        }
        // Commands the device will hold (dropped completions), then a fatal controller.
        for _ in 0..2 {
            s.faults().drop_completion(CommandMatch::any_io());
        }
        let mut expected = BTreeMap::new();
        for (i, qp) in pairs.iter_mut().enumerate() {
            for k in 0..4u64 {
                let lba = 100 + i as u64 * 10 + k;
                let tag = (i as u64) << 8 | k;
                qp.submit_read(&ns, lba, qp.alloc_buffer(bs).unwrap(), tag)
                    .unwrap();
                expected.insert(tag, lba);
            }
            qp.ring();
        }
        s.faults().controller_fatal();
        let mut got = BTreeMap::new();
        let mut resets = 0;
        let mut recreated = 0;
        let start = Instant::now();
        while got.len() < expected.len() && start.elapsed() < Duration::from_secs(10) {
            for qp in pairs.iter_mut() {
                qp.poll(|cpl| {
                    assert!(
                        got.insert(cpl.tag, cpl).is_none(),
                        "a request completed twice"
                    );
                })
                .unwrap();
            }
            let r = c.recover().unwrap();
            resets += r.resets;
            recreated += r.recreated;
        }
        assert_eq!(resets, 1, "{mode:?}: one reset");
        assert_eq!(recreated, 2, "{mode:?}: both pairs re-created");
        assert_eq!(got.len(), expected.len(), "{mode:?}: requests lost");
        for (tag, lba) in &expected {
            let cpl = got.remove(tag).unwrap();
            assert!(cpl.result.is_ok(), "{mode:?} tag {tag}: {:?}", cpl.result);
            assert_eq!(cpl.buffer.unwrap().to_vec(), block(*lba, bs));
        }
        // The pairs work on: handles are fresh after the reset.
        let ns = c.namespace(1).unwrap().clone();
        for qp in pairs.iter_mut() {
            let back = qp.read(&ns, 100, qp.alloc_buffer(bs).unwrap()).unwrap();
            assert_eq!(back.to_vec(), block(100, bs));
        }
        for qp in pairs {
            c.delete_io_queue_pair(qp).unwrap();
        }
        c.shutdown().unwrap();
    }
}

/// A blocking read on its own thread while the controller thread resets the controller:
/// the read is retried after the re-creation and returns the data.
#[test]
fn a_reset_from_another_thread_during_io_is_invisible_to_a_blocking_read() {
    let s = sim(SimMode::Thread);
    let mut c = controller(&s, policy());
    let ns = c.namespace(1).unwrap().clone();
    let bs = ns.lba_size() as usize;
    let mut qp = c.create_io_queue_pair(8).unwrap();
    let mut b = qp.alloc_buffer(bs).unwrap();
    b.write(0, &block(9, bs)).unwrap();
    qp.write(&ns, 9, b).unwrap();
    s.faults().delay_completion(
        CommandMatch::io(NvmOpcode::READ.0),
        Duration::from_millis(100),
    );
    let reader = std::thread::spawn(move || {
        let r = qp.read(&ns, 9, qp.alloc_buffer(bs).unwrap());
        (r.map(|b| b.to_vec()).map_err(|e| e.error), qp)
    });
    std::thread::sleep(Duration::from_millis(20));
    c.reset().unwrap();
    let start = Instant::now();
    while !reader.is_finished() && start.elapsed() < Duration::from_secs(10) {
        c.recover().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let (r, qp) = reader.join().unwrap();
    assert_eq!(r.unwrap(), block(9, bs));
    c.delete_io_queue_pair(qp).unwrap();
    c.shutdown().unwrap();
}

/// Retries are bounded: with no retries allowed, the commands outstanding at a reset fail
/// with `ControllerReset` and their buffers, once.
#[test]
fn without_retries_a_reset_fails_outstanding_commands_with_their_buffers() {
    let s = sim(SimMode::Inline);
    let mut c = controller(
        &s,
        RecoveryPolicy {
            retries: 0,
            ..policy()
        },
    );
    let ns = c.namespace(1).unwrap().clone();
    let mut qp = c.create_io_queue_pair(8).unwrap();
    s.faults().drop_completion(CommandMatch::any_io());
    qp.submit_read(&ns, 0, qp.alloc_buffer(512).unwrap(), 5)
        .unwrap();
    qp.ring();
    c.reset().unwrap();
    let mut done = Vec::new();
    qp.poll(|cpl| done.push(cpl)).unwrap();
    assert_eq!(done.len(), 1);
    assert!(matches!(done[0].result, Err(Error::ControllerReset)));
    assert!(
        done[0].buffer.is_some(),
        "the disabled device cannot reach it"
    );
    // The pair itself is re-created and works.
    c.recover().unwrap();
    let ns = c.namespace(1).unwrap().clone();
    qp.read(&ns, 0, qp.alloc_buffer(512).unwrap()).unwrap();
    c.delete_io_queue_pair(qp).unwrap();
    c.shutdown().unwrap();
}

/// Surprise removal: every outstanding request fails with `DeviceGone` and no buffer comes
/// back (a device that is somehow still there could write it); `recover` says so too.
#[test]
fn surprise_removal_fails_everything_and_hands_back_nothing() {
    let s = sim(SimMode::Inline);
    let mut c = controller(&s, policy());
    let ns = c.namespace(1).unwrap().clone();
    let mut qp = c.create_io_queue_pair(8).unwrap();
    for _ in 0..3 {
        s.faults().drop_completion(CommandMatch::any_io());
    }
    for t in 0..3 {
        qp.submit_read(&ns, t, qp.alloc_buffer(512).unwrap(), t)
            .unwrap();
    }
    qp.ring();
    s.faults().surprise_removal();
    let mut done = Vec::new();
    let start = Instant::now();
    while done.len() < 3 && start.elapsed() < Duration::from_secs(5) {
        // Found either by the periodic CSTS read of `wait` or when the deadlines pass.
        match qp.wait(Duration::from_millis(50), |cpl| done.push(cpl)) {
            Err(Error::DeviceGone) | Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(done.len(), 3, "every request ends");
    for d in &done {
        assert!(matches!(d.result, Err(Error::DeviceGone)));
        assert!(d.buffer.is_none(), "a buffer came back from a gone device");
    }
    assert!(matches!(c.recover(), Err(Error::DeviceGone)));
    assert_eq!(qp.outstanding(), 0);
    drop(qp);
}

/// Asynchronous Event Requests are re-posted after each event (§5.1.2).
#[test]
fn asynchronous_event_requests_are_reposted() {
    let s = sim(SimMode::Inline);
    let mut c = controller(&s, policy());
    assert_eq!(c.aers_outstanding(), 1);
    let aec = c.get_feature(FeatureId::ASYNC_EVENT_CONFIG).unwrap();
    c.set_features(FeatureId::ASYNC_EVENT_CONFIG, aec | 0x02, false)
        .unwrap();
    for round in 0..3 {
        let temp = c.smart_log().unwrap().composite_temperature;
        c.set_features(FeatureId::TEMPERATURE_THRESHOLD, u32::from(temp) - 5, false)
            .unwrap();
        let ev = c.wait_async_event(Duration::from_secs(2));
        assert!(ev.is_some(), "round {round}: no event");
        assert_eq!(c.aers_outstanding(), 1, "round {round}: not re-posted");
        // Read the SMART log with RAE clear so the controller unmasks the event type, and
        // put the threshold back.
        c.get_log_page(0x02, 0xFFFF_FFFF, 0, 512, false).unwrap();
        c.set_features(
            FeatureId::TEMPERATURE_THRESHOLD,
            u32::from(temp) + 30,
            false,
        )
        .unwrap();
    }
    c.shutdown().unwrap();
}

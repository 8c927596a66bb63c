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

/// How one request ended.
#[derive(Debug)]
struct Ended {
    result: Result<(), Error>,
    buffer: Option<Vec<u8>>,
}

/// Writes known data to LBAs 0..n, arms a fault, reads them back on one pair (polling and
/// calling `recover` as an application would) until every read has ended, and checks the
/// promises every fault must keep: each request ends exactly once, nothing is lost, a
/// successful read returns the data written, and a buffer comes back with every outcome but
/// a timeout or a removed device.
fn reads_under_fault(
    mode: SimMode,
    n: u64,
    arm: impl FnOnce(&Simulator),
) -> (
    BTreeMap<u64, Ended>,
    Simulator,
    nvme_core::queue::QueueStats,
) {
    let s = sim(mode);
    let mut c = controller(&s, policy());
    let ns = c.namespace(1).unwrap().clone();
    let bs = ns.lba_size() as usize;
    let mut qp = c.create_io_queue_pair(16).unwrap();
    for lba in 0..n {
        let mut b = qp.alloc_buffer(bs).unwrap();
        b.write(0, &block(lba, bs)).unwrap();
        qp.write(&ns, lba, b).unwrap();
    }
    arm(&s);
    for lba in 0..n {
        qp.submit_read(&ns, lba, qp.alloc_buffer(bs).unwrap(), lba)
            .unwrap();
    }
    qp.ring();
    let mut ended = BTreeMap::new();
    let start = Instant::now();
    while (ended.len() as u64) < n && start.elapsed() < Duration::from_secs(10) {
        qp.poll(|cpl| {
            let e = Ended {
                result: cpl.result,
                buffer: cpl.buffer.map(|b| b.to_vec()),
            };
            assert!(
                ended.insert(cpl.tag, e).is_none(),
                "{mode:?}: request {} completed twice",
                cpl.tag
            );
        })
        .unwrap();
        c.recover().unwrap();
        // A late completion of a request already reported (and freed) must not come back.
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(ended.len() as u64, n, "{mode:?}: requests lost");
    for (lba, e) in &ended {
        match &e.result {
            Ok(()) => assert_eq!(
                e.buffer.as_deref(),
                Some(&block(*lba, bs)[..]),
                "{mode:?}: read {lba} returned other data"
            ),
            Err(Error::Timeout { .. } | Error::DeviceGone) => {
                assert!(e.buffer.is_none(), "{mode:?}: a buffer the device may hold")
            }
            Err(_) => assert!(
                e.buffer.is_some(),
                "{mode:?}: a failed read kept its buffer"
            ),
        }
    }
    // Nothing stays behind: requests reported as timed out hold their slots only until the
    // device lets go (or the reset the timeout asked for), and nothing ends twice.
    let settle = Instant::now();
    while qp.outstanding() > 0 && settle.elapsed() < Duration::from_secs(5) {
        qp.poll(|cpl| panic!("{mode:?}: request {} ended twice", cpl.tag))
            .unwrap();
        c.recover().unwrap();
    }
    let stats = qp.stats();
    assert_eq!(qp.outstanding(), 0, "{mode:?}");
    c.delete_io_queue_pair(qp).unwrap();
    c.shutdown().unwrap();
    (ended, s, stats)
}

fn all_ok(ended: &BTreeMap<u64, Ended>) -> bool {
    ended.values().all(|e| e.result.is_ok())
}

/// A completion delivered after the deadline: the Abort finds the command still held and
/// the driver retries it; the late completion of the first attempt is not delivered twice.
#[test]
fn a_completion_delayed_past_the_timeout_ends_once() {
    for mode in [SimMode::Inline, SimMode::Thread] {
        let (ended, _, _) = reads_under_fault(mode, 4, |s| {
            s.faults().delay_completion(
                CommandMatch::io(NvmOpcode::READ.0).nth(2),
                Duration::from_millis(300),
            )
        });
        assert!(all_ok(&ended), "{mode:?}: {ended:?}");
    }
}

/// A completion posted with a CID no command has (§4.2.1): counted as a bad CID, the real
/// command recovered through Abort and retry.
#[test]
fn a_wrong_cid_is_survived_and_the_command_recovered() {
    for mode in [SimMode::Inline, SimMode::Thread] {
        let (ended, _, stats) = reads_under_fault(mode, 4, |s| {
            s.faults()
                .wrong_cid(CommandMatch::io(NvmOpcode::READ.0).lba(1..2))
        });
        assert!(all_ok(&ended), "{mode:?}: {ended:?}");
        assert_eq!(stats.bad_cid, 1, "{mode:?}");
    }
}

/// The same completion posted twice: the second is rejected (its slot was freed and its
/// generation moved), the read ends once.
#[test]
fn a_duplicate_completion_is_rejected() {
    for mode in [SimMode::Inline, SimMode::Thread] {
        let (ended, _, stats) = reads_under_fault(mode, 4, |s| {
            s.faults()
                .duplicate_cid(CommandMatch::io(NvmOpcode::READ.0).nth(3))
        });
        assert!(all_ok(&ended), "{mode:?}: {ended:?}");
        assert_eq!(stats.bad_cid, 1, "{mode:?}");
    }
}

/// An entry first written with the old phase tag (§4.2.4) is not consumed until the right
/// phase arrives.
#[test]
fn a_wrong_phase_is_not_taken_for_a_completion() {
    for mode in [SimMode::Inline, SimMode::Thread] {
        let (ended, _, stats) = reads_under_fault(mode, 4, |s| {
            s.faults().wrong_phase(
                CommandMatch::io(NvmOpcode::READ.0).nth(1),
                Duration::from_millis(20),
            )
        });
        assert!(all_ok(&ended), "{mode:?}: {ended:?}");
        assert_eq!((stats.bad_cid, stats.bad_sqid), (0, 0), "{mode:?}");
    }
}

/// A lost SQ tail doorbell write: the commands are never fetched and the Abort cannot find
/// them, so they end as timeouts (without their buffers) and the controller is reset, after
/// which their slots are free and the pair works again.
#[test]
fn a_lost_doorbell_ends_in_timeouts_and_a_reset() {
    for mode in [SimMode::Inline, SimMode::Thread] {
        let (ended, s, _) = reads_under_fault(mode, 4, |s| {
            s.faults()
                .lose_doorbell(CommandMatch::io(NvmOpcode::READ.0))
        });
        assert!(
            ended
                .values()
                .all(|e| matches!(e.result, Ok(()) | Err(Error::Timeout { .. }))),
            "{mode:?}: {ended:?}"
        );
        assert!(s.stats().resets >= 2, "{mode:?}: a reset besides bring-up");
    }
}

/// A media error fails the read cleanly (Unrecovered Read Error, buffer back), others pass.
#[test]
fn a_media_error_fails_cleanly() {
    for mode in [SimMode::Inline, SimMode::Thread] {
        let (ended, _, _) = reads_under_fault(mode, 4, |s| s.faults().media_error(1, 2..3));
        for (lba, e) in &ended {
            if *lba == 2 {
                let st = e.result.as_ref().unwrap_err().status();
                assert_eq!(st.map(|s| (s.sct().0, s.sc())), Some((2, 0x81)), "{mode:?}");
            } else {
                assert!(e.result.is_ok(), "{mode:?}: {e:?}");
            }
        }
    }
}

/// DMA to an unmapped address: a Data Transfer Error (00h/04h) with the buffer back; no
/// memory was written.
#[test]
fn dma_to_an_unmapped_address_fails_cleanly() {
    for mode in [SimMode::Inline, SimMode::Thread] {
        let (ended, s, _) = reads_under_fault(mode, 4, |s| {
            s.faults()
                .unmapped_dma(CommandMatch::io(NvmOpcode::READ.0).lba(3..4))
        });
        let st = ended[&3].result.as_ref().unwrap_err().status();
        assert_eq!(st.map(|s| (s.sct().0, s.sc())), Some((0, 0x04)), "{mode:?}");
        assert!(ended
            .iter()
            .filter(|(l, _)| **l != 3)
            .all(|(_, e)| e.result.is_ok()));
        s.assert_no_violations();
    }
}

/// An AER storm: as many events as requests outstanding, each taken once, the requests
/// re-posted; nothing else breaks.
#[test]
fn an_aer_storm_is_absorbed() {
    let s = sim(SimMode::Inline);
    let mut c = Controller::new(
        s.platform(),
        ControllerConfig {
            interrupts: false,
            async_events: 4,
            recovery: policy(),
            ..ControllerConfig::default()
        },
    )
    .unwrap();
    let wanted = c.aers_outstanding();
    assert!(wanted >= 1);
    let ev = nvme_core::spec::AsyncEvent::from_dw0(0x0001_0001);
    let posted = s.faults().aer_storm(100, ev);
    assert_eq!(
        posted,
        usize::from(wanted),
        "limited by the requests outstanding"
    );
    let mut got = 0;
    while c.take_async_event().is_some() {
        got += 1;
    }
    assert_eq!(got, posted);
    assert_eq!(c.aers_outstanding(), wanted, "re-posted");
    // A second storm is absorbed the same way.
    assert_eq!(s.faults().aer_storm(100, ev), usize::from(wanted));
    c.process_admin_completions();
    assert_eq!(c.aers_outstanding(), wanted);
    c.shutdown().unwrap();
}

/// Power loss with a volatile write cache (NVM §3.3.2 Flush, FUA): a write completed with FUA
/// and a write followed by a completed Flush survive; an unflushed write may be lost but
/// corrupts no other block.
#[test]
fn power_loss_keeps_what_the_spec_promises() {
    let s = sim(SimMode::Inline);
    let mut c = controller(&s, policy());
    let ns = c.namespace(1).unwrap().clone();
    let bs = ns.lba_size() as usize;
    let mut qp = c.create_io_queue_pair(8).unwrap();
    let before: Vec<Vec<u8>> = (0..6)
        .map(|l| s.namespace_bytes(1, l, 1).unwrap())
        .collect();
    let write = |qp: &mut nvme_core::IoQueuePair<SimPlatform>, lba: u64, fua: bool| {
        let mut b = qp.alloc_buffer(bs).unwrap();
        b.write(0, &block(lba + 1000, bs)).unwrap();
        let cmd = nvme_core::spec::Command::rw(NvmOpcode::WRITE, 1, lba, 0, fua);
        qp.passthrough(cmd, Some(b)).unwrap();
    };
    write(&mut qp, 1, false);
    qp.flush(1).unwrap();
    write(&mut qp, 2, true);
    write(&mut qp, 3, false);
    c.delete_io_queue_pair(qp).unwrap();
    c.shutdown().unwrap();
    s.power_loss();
    let after = |l: u64| s.namespace_bytes(1, l, 1).unwrap();
    assert_eq!(after(1), block(1001, bs), "flushed write survives");
    assert_eq!(after(2), block(1002, bs), "FUA write survives");
    assert!(
        after(3) == block(1003, bs) || after(3) == before[3],
        "an unflushed write is lost or kept, never torn"
    );
    for l in [0, 4, 5] {
        assert_eq!(after(l), before[l as usize], "block {l} was never written");
    }
}

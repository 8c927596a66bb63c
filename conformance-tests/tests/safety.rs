//! The driver's safety promise, tried as a hostile user would, through the public API alone:
//! no safe call sequence makes the device reach memory that safe code owns, and every request
//! ends. Each test is a way the promise once broke; each runs with the simulator inline and on
//! its own device thread (like a real device).
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_core::spec::{Command, NvmOpcode};
use nvme_core::{Controller, ControllerConfig, DmaBuffer, Error};
use sim_backend::{CommandMatch, SimConfig, SimMode, SimPlatform, Simulator};

const MARK: u8 = 0xA5;

fn sim(mode: SimMode) -> Simulator {
    Simulator::new(SimConfig {
        mode,
        ..SimConfig::default()
    })
    .unwrap()
}

fn controller(s: &Simulator, io_timeout: Duration) -> Controller<SimPlatform> {
    Controller::new(
        s.platform(),
        ControllerConfig {
            interrupts: false,
            io_timeout,
            admin_timeout: Duration::from_secs(2),
            // Timeouts reported as they happen (recovery has its own tests).
            recovery: nvme_core::RecoveryPolicy::REPORT_ONLY,
            ..ControllerConfig::default()
        },
    )
    .unwrap()
}

fn marked(c: &Controller<SimPlatform>, len: usize) -> DmaBuffer<SimPlatform> {
    let mut b = c.alloc_buffer(len).unwrap();
    b.fill(MARK);
    b
}

fn untouched(b: &DmaBuffer<SimPlatform>) -> bool {
    b.to_vec().iter().all(|&x| x == MARK)
}

const MODES: [SimMode; 2] = [SimMode::Inline, SimMode::Thread];

/// 1. Stale PRP list entries: a Read whose NLB covers 4 blocks of 4 KiB, given a 3-page
///    buffer, once made the device follow the slot's third list entry, still naming the last
///    page of an earlier command's buffer, and overwrite it. The length is now derived from
///    the command and the buffer refused.
#[test]
fn a_command_longer_than_its_buffer_is_refused_and_earlier_buffers_stay_untouched() {
    for mode in MODES {
        let s = sim(mode);
        let mut c = controller(&s, Duration::from_secs(5));
        let ns = c.namespace(2).unwrap().clone();
        assert_eq!(ns.lba_size(), 4096);
        let mut qp = c.create_io_queue_pair(2).unwrap();
        // A 4-page read through the pair's only slot fills its PRP list.
        let b1 = qp.read(&ns, 0, c.alloc_buffer(4 * 4096).unwrap()).unwrap();
        let mut b1 = b1;
        b1.fill(MARK);
        let b2 = c.alloc_buffer(3 * 4096).unwrap();
        let cmd = Command::rw(NvmOpcode::READ, ns.nsid(), 0, 3, false);
        let e = qp.passthrough(cmd, Some(b2)).unwrap_err();
        assert!(
            matches!(
                e.error,
                Error::TransferMismatch {
                    described: 16384,
                    given: 12288,
                    ..
                }
            ),
            "{mode:?}: {}",
            e.error
        );
        assert_eq!(
            e.buffer.map(|b| b.len()),
            Some(3 * 4096),
            "buffer handed back"
        );
        // The same through submit_range with an explicit length that disagrees.
        let b3 = c.alloc_buffer(4 * 4096).unwrap();
        let e = qp
            .submit_range(cmd, Some(b3), 0, Some(3 * 4096), 9)
            .unwrap_err();
        assert!(matches!(e.error, Error::TransferMismatch { .. }));
        // A shorter command on the same slot: the earlier list entries are not followed.
        let one = qp.read(&ns, 1, c.alloc_buffer(4096).unwrap()).unwrap();
        assert_eq!(one.len(), 4096);
        assert!(
            untouched(&b1),
            "{mode:?}: the device wrote the earlier buffer"
        );
        c.delete_io_queue_pair(qp).unwrap();
        s.assert_no_violations();
        c.shutdown().unwrap();
    }
}

/// 2. A buffer from another controller: its IOVA names a different buffer on the other
///    simulator, which the device once overwrote. It is now refused before reaching a device.
#[test]
fn a_buffer_of_another_controller_is_refused() {
    for mode in MODES {
        let (sa, sb) = (sim(mode), sim(mode));
        let (a, mut b) = (
            controller(&sa, Duration::from_secs(5)),
            controller(&sb, Duration::from_secs(5)),
        );
        let victim = marked(&b, 512);
        let foreign = a.alloc_buffer(512).unwrap();
        let ns = b.namespace(1).unwrap().clone();
        let mut qp = b.create_io_queue_pair(8).unwrap();
        let before = sb.stats();
        let e = qp.read(&ns, 0, foreign).unwrap_err();
        assert!(
            matches!(e.error, Error::ForeignObject { .. }),
            "{mode:?}: {}",
            e.error
        );
        assert!(e.buffer.is_some(), "the foreign buffer comes back");
        assert_eq!(before, sb.stats(), "nothing reached the device");
        assert!(untouched(&victim), "{mode:?}: the device wrote B's buffer");
        // The same through passthrough and the admin queue.
        let cmd = Command::rw(NvmOpcode::READ, ns.nsid(), 0, 0, false);
        let e = qp.passthrough(cmd, e.buffer).unwrap_err();
        assert!(matches!(e.error, Error::ForeignObject { .. }));
        let e = b
            .admin_passthrough(
                Command::identify(1, 0, 0, 0),
                Some(a.alloc_buffer(4096).unwrap()),
                None,
            )
            .unwrap_err();
        assert!(matches!(e, Error::ForeignObject { .. }));
        // A namespace handle of A is refused on B's pair too.
        let ns_a = a.namespace(1).unwrap().clone();
        let e = qp.read(&ns_a, 0, b.alloc_buffer(512).unwrap()).unwrap_err();
        assert!(matches!(e.error, Error::ForeignObject { .. }));
        assert!(untouched(&victim));
        b.delete_io_queue_pair(qp).unwrap();
        sa.assert_no_violations();
        sb.assert_no_violations();
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    }
}

/// 3. A pair deleted through the wrong controller: both fresh controllers start at reset
///    generation 0, and B once deleted its own queue 1 with A's pair, freeing A's rings and
///    in-flight buffer while A's device still used them (the device then raised CSTS.CFS).
#[test]
fn a_queue_pair_deleted_through_another_controller_is_refused() {
    for mode in MODES {
        let (sa, sb) = (sim(mode), sim(mode));
        let (mut a, mut b) = (
            controller(&sa, Duration::from_secs(5)),
            controller(&sb, Duration::from_secs(5)),
        );
        let (ns_a, ns_b) = (
            a.namespace(1).unwrap().clone(),
            b.namespace(1).unwrap().clone(),
        );
        let mut qa = a.create_io_queue_pair(8).unwrap();
        let mut qb = b.create_io_queue_pair(8).unwrap();
        assert_eq!((qa.qid(), qb.qid()), (1, 1));
        // A read in flight on A's pair while B is asked to delete it.
        qa.submit_read(&ns_a, 0, a.alloc_buffer(512).unwrap(), 1)
            .unwrap();
        let before = sb.stats();
        let e = b.delete_io_queue_pair(qa).unwrap_err();
        assert!(matches!(e, Error::ForeignObject { .. }), "{mode:?}: {e}");
        assert_eq!(before, sb.stats(), "no admin command reached B");
        // B's own queue 1 still works, and A's device is healthy.
        let data = qb.read(&ns_b, 0, b.alloc_buffer(512).unwrap()).unwrap();
        assert_eq!(data.len(), 512);
        assert!(!a.csts().cfs() && !b.csts().cfs(), "{mode:?}: fatal status");
        let mut qa2 = a.create_io_queue_pair(8).unwrap();
        qa2.write(&ns_a, 8, marked(&a, 512)).unwrap();
        a.delete_io_queue_pair(qa2).unwrap();
        b.delete_io_queue_pair(qb).unwrap();
        sa.assert_no_violations();
        sb.assert_no_violations();
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    }
}

/// 4. A lost completion under traffic: deadlines were checked only when a poll reaped
///    nothing, so continuous Flush traffic hid a dropped read forever. Now every poll checks
///    them.
#[test]
fn a_lost_completion_is_reported_under_continuous_traffic() {
    for mode in MODES {
        let s = sim(mode);
        let mut c = controller(&s, Duration::from_millis(300));
        let ns = c.namespace(1).unwrap().clone();
        let mut qp = c.create_io_queue_pair(16).unwrap();
        s.faults()
            .drop_completion(CommandMatch::io(NvmOpcode::READ.0));
        qp.submit_read(&ns, 0, c.alloc_buffer(512).unwrap(), 7)
            .unwrap();
        qp.ring();
        let start = Instant::now();
        let (mut flushes, mut timeouts) = (0u64, Vec::new());
        let mut next_tag = 100;
        while start.elapsed() < Duration::from_millis(1500) {
            while qp.outstanding() < 8 {
                qp.submit(Command::flush(ns.nsid()), None, next_tag)
                    .unwrap();
                next_tag += 1;
            }
            qp.ring();
            qp.poll(|cpl| match cpl.result {
                Err(Error::Timeout { .. }) => timeouts.push((cpl.tag, cpl.buffer.is_some())),
                Ok(()) => flushes += 1,
                Err(e) => panic!("{e}"),
            })
            .unwrap();
        }
        assert!(flushes > 100, "{mode:?}: traffic kept flowing ({flushes})");
        assert_eq!(
            timeouts,
            vec![(7, false)],
            "{mode:?}: the read times out once, without its buffer (the device may still write it)"
        );
        // Drain the flushes: only the timed-out read still holds its slot.
        let deadline = Instant::now() + Duration::from_secs(5);
        while qp.outstanding() > 1 && Instant::now() < deadline {
            qp.poll(|_| {}).unwrap();
        }
        assert_eq!(qp.outstanding(), 1, "only the timed-out read holds a slot");
        drop(qp);
        c.reset().unwrap();
        c.shutdown().unwrap();
    }
}

/// A namespace handle taken before Format NVM describes the old LBA size: it is refused, and
/// Format NVM itself is refused while queues could carry commands sized for the old format.
#[test]
fn stale_namespace_handles_and_format_under_io_are_refused() {
    let s = sim(SimMode::Inline);
    let mut c = controller(&s, Duration::from_secs(5));
    let old = c.namespace(1).unwrap().clone();
    let qp = c.create_io_queue_pair(8).unwrap();
    assert!(matches!(
        c.format_nvm(1, 3, 0),
        Err(Error::InvalidArgument(_))
    ));
    c.delete_io_queue_pair(qp).unwrap();
    c.format_nvm(1, 3, 0).unwrap();
    let new = c.namespace(1).unwrap().clone();
    assert_eq!((old.lba_size(), new.lba_size()), (512, 4096));
    let mut qp = c.create_io_queue_pair(8).unwrap();
    let e = qp.read(&old, 0, c.alloc_buffer(4096).unwrap()).unwrap_err();
    assert!(
        matches!(e.error, Error::StaleNamespace { nsid: 1 }),
        "{}",
        e.error
    );
    let back = qp.read(&new, 0, c.alloc_buffer(4096).unwrap()).unwrap();
    assert_eq!(back.len(), 4096);
    c.delete_io_queue_pair(qp).unwrap();
    s.assert_no_violations();
    c.shutdown().unwrap();
}

/// Opaque commands: an opcode the core does not know cannot carry a buffer through the safe
/// API (only `unsafe` passthrough_unchecked, whose caller vouches for the length); without a
/// buffer it may be sent (the data pointer is zero, which no allocator hands out).
#[test]
fn unknown_opcodes_with_data_need_the_unsafe_door() {
    let s = sim(SimMode::Inline);
    let mut c = controller(&s, Duration::from_secs(5));
    let mut qp = c.create_io_queue_pair(8).unwrap();
    let mut vendor = Command::new(0x81);
    vendor.set_nsid(1);
    let e = qp.passthrough(vendor, Some(marked(&c, 4096))).unwrap_err();
    assert!(matches!(e.error, Error::UnknownTransfer { opcode: 0x81 }));
    assert!(e.buffer.is_some_and(|b| untouched(&b)));
    let e = qp.passthrough(vendor, None).unwrap_err();
    assert!(
        e.error.status().is_some(),
        "the controller answered: {}",
        e.error
    );
    let e = c
        .admin_passthrough(Command::new(0xC1), Some(marked(&c, 4096)), None)
        .unwrap_err();
    assert!(matches!(e, Error::UnknownTransfer { opcode: 0xC1 }));
    c.delete_io_queue_pair(qp).unwrap();
    c.shutdown().unwrap();
}

/// Two controllers on one platform would reset the device under each other's queues.
#[test]
fn a_platform_is_driven_by_one_controller_at_a_time() {
    let s = sim(SimMode::Inline);
    let c = controller(&s, Duration::from_secs(5));
    let p: Arc<SimPlatform> = s.platform();
    let e = Controller::new(p.clone(), ControllerConfig::default()).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    c.shutdown().unwrap();
    let again = Controller::new(p, ControllerConfig::default()).unwrap();
    again.shutdown().unwrap();
}

//! `Namespace::read_at` and friends on the simulator: splitting at MDTS, the NLB limit and the
//! queue depth, errors before and during a transfer, other commands' completions kept.

use nvme_core::spec::StatusCodeType;
use nvme_core::{Controller, ControllerConfig, Error, RecoveryPolicy};
use sim_backend::{NamespaceConfig, SimConfig, Simulator};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn setup(cfg: SimConfig) -> (Simulator, Controller<sim_backend::SimPlatform>) {
    let sim = Simulator::new(cfg).unwrap();
    let ctrl = Controller::new(
        sim.platform(),
        ControllerConfig {
            recovery: RecoveryPolicy::REPORT_ONLY,
            ..ControllerConfig::default()
        },
    )
    .unwrap();
    (sim, ctrl)
}

#[test]
fn large_transfers_split_at_mdts_and_queue_depth() {
    // MDTS 8 KiB, a 4-entry queue (3 usable slots): 1 MiB takes 128 commands.
    let (sim, mut ctrl) = setup(SimConfig {
        mdts: 1,
        ..SimConfig::default()
    });
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl.create_io_queue_pair(4).unwrap();
    let data = pattern(1 << 20, 3);
    ns.write_at(&mut qp, 77, &data).unwrap();
    // The bytes are where LBA × LBA size says, on the medium itself.
    assert_eq!(sim.namespace_bytes(1, 77, 2048).unwrap(), data);
    let mut back = vec![0u8; data.len()];
    ns.read_at(&mut qp, 77, &mut back).unwrap();
    assert_eq!(back, data);
    let s = qp.stats();
    assert!(
        s.submitted >= 256,
        "1 MiB at 8 KiB per command, twice: {s:?}"
    );
    assert_eq!(qp.outstanding(), 0);
    sim.assert_no_violations();
}

#[test]
fn more_than_65536_blocks_per_call() {
    // No MDTS limit: the 16-bit NLB field is what splits.
    let (sim, mut ctrl) = setup(SimConfig {
        mdts: 0,
        namespaces: vec![NamespaceConfig::memory(512, 96 << 20)],
        ..SimConfig::default()
    });
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl.create_io_queue_pair(32).unwrap();
    ns.write_at(&mut qp, 0, &vec![0xee; 40 << 20]).unwrap();
    ns.write_zeroes(&mut qp, 1, 70_000, false).unwrap();
    let mut back = vec![1u8; 512 * 4];
    ns.read_at(&mut qp, 0, &mut back).unwrap();
    assert!(back[..512].iter().all(|&b| b == 0xee));
    assert!(back[512..].iter().all(|&b| b == 0));
    ns.read_at(&mut qp, 70_000, &mut back).unwrap();
    assert!(
        back[..512].iter().all(|&b| b == 0),
        "block 70000 was zeroed"
    );
    assert!(
        back[512..].iter().all(|&b| b == 0xee),
        "block 70001 was not"
    );
    ns.deallocate(&mut qp, 0, ns.blocks()).unwrap();
    ns.flush(&mut qp).unwrap();
    sim.assert_no_violations();
}

#[test]
fn bad_arguments_are_refused_before_anything_is_sent() {
    let (sim, mut ctrl) = setup(SimConfig::default());
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl.create_io_queue_pair(16).unwrap();
    let before = qp.stats().submitted;
    assert!(matches!(
        ns.write_at(&mut qp, 0, &[0u8; 700]),
        Err(Error::BufferSize {
            need: 1024,
            have: 700
        })
    ));
    let end = ns.blocks();
    assert!(matches!(
        ns.write_at(&mut qp, end - 1, &[0u8; 1024]),
        Err(Error::LbaOutOfRange { .. })
    ));
    let mut b = [0u8; 512];
    assert!(matches!(
        ns.read_at(&mut qp, u64::MAX, &mut b),
        Err(Error::LbaOutOfRange { .. })
    ));
    assert!(matches!(
        ns.write_zeroes(&mut qp, end, 1, false),
        Err(Error::LbaOutOfRange { .. })
    ));
    assert!(matches!(
        ns.deallocate(&mut qp, 5, u64::MAX),
        Err(Error::LbaOutOfRange { .. })
    ));
    // Nothing to do is not an error, and sends nothing.
    ns.read_at(&mut qp, end, &mut []).unwrap();
    assert_eq!(qp.stats().submitted, before);
    sim.assert_no_violations();
}

#[test]
fn a_failing_command_stops_the_transfer_and_keeps_the_staging_buffers() {
    let (sim, mut ctrl) = setup(SimConfig::default());
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl.create_io_queue_pair(64).unwrap();
    let data = pattern(2 << 20, 9);
    ns.write_at(&mut qp, 0, &data).unwrap();
    sim.faults().media_error(1, 2000..2001);
    let mut back = vec![0u8; data.len()];
    match ns.read_at(&mut qp, 0, &mut back) {
        Err(Error::Command { status, .. }) => {
            assert_eq!(status.sct(), StatusCodeType::MEDIA, "{status:?}");
        }
        other => panic!("expected the media error, got {other:?}"),
    }
    assert_eq!(
        qp.outstanding(),
        0,
        "every command in flight was waited for"
    );
    // The pair and the staging pool still work.
    sim.faults().clear_media_errors();
    ns.read_at(&mut qp, 0, &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn other_commands_completions_are_parked_not_lost() {
    let (_sim, mut ctrl) = setup(SimConfig::default());
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl.create_io_queue_pair(16).unwrap();
    let mut b = qp.alloc_buffer(4096).unwrap();
    b.fill(0x42);
    qp.submit_write(&ns, 500, b, 1234).unwrap();
    qp.ring();
    ns.write_at(&mut qp, 0, &pattern(256 << 10, 1)).unwrap();
    let mut got = Vec::new();
    qp.poll(|c| got.push((c.tag, c.result.is_ok(), c.buffer.is_some())))
        .unwrap();
    assert_eq!(got, vec![(1234, true, true)]);
}

#[test]
fn stale_and_foreign_handles_are_refused() {
    let (_sim, mut ctrl) = setup(SimConfig::default());
    let (_sim2, other) = setup(SimConfig::default());
    let ns_other = other.namespace(1).unwrap().clone();
    let mut qp = ctrl.create_io_queue_pair(16).unwrap();
    assert!(matches!(
        ns_other.write_at(&mut qp, 0, &[0u8; 512]),
        Err(Error::ForeignObject { .. })
    ));
    assert!(matches!(
        ns_other.flush(&mut qp),
        Err(Error::ForeignObject { .. })
    ));
}

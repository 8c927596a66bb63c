//! Shadow doorbells (NVMe Base §5.8, Doorbell Buffer Config; Identify Controller OACS bit 8)
//! on the simulator: I/O stays correct with them on, fewer doorbell registers are written per
//! I/O, nothing changes with them off or on a controller without them, and they come back
//! after a reset.

use std::time::Duration;

use nvme_core::{Controller, ControllerConfig, DmaBuffer};
use sim_backend::{SimConfig, SimMode, SimPlatform, Simulator};

fn config(shadow_doorbells: bool) -> ControllerConfig {
    ControllerConfig {
        interrupts: false,
        io_queue_pairs: 2,
        io_timeout: Duration::from_secs(2),
        admin_timeout: Duration::from_secs(2),
        shadow_doorbells,
        ..ControllerConfig::default()
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i ^ seed).wrapping_mul(0x9E37_79B9) >> 11) as u8)
        .collect()
}

/// What one workload saw: register doorbell writes per I/O, shadow-only updates.
struct Run {
    mmio_per_io: f64,
    shadow_only: u64,
    shadow_configured: bool,
}

/// Writes then reads back `rounds` batches of `depth` 4 KiB blocks on a fresh pair of
/// `entries` slots (batched doorbells, polled), checking every byte; counts the register
/// doorbell writes the simulator saw during the I/O.
fn workload(
    sim: &Simulator,
    c: &mut Controller<SimPlatform>,
    entries: u16,
    depth: usize,
    rounds: u64,
) -> Run {
    let ns = c.namespace(2).expect("namespace 2").clone();
    let mut qp = c.create_io_queue_pair(entries).expect("queue pair");
    let mut bufs: Vec<Option<DmaBuffer<SimPlatform>>> = (0..depth)
        .map(|_| Some(c.alloc_buffer(4096).unwrap()))
        .collect();
    let before = sim.stats().doorbell_writes;
    let mut ios = 0u64;
    for round in 0..rounds {
        for write in [true, false] {
            for (i, slot) in bufs.iter_mut().enumerate() {
                let mut b = slot.take().unwrap();
                let lba = round * depth as u64 + i as u64;
                if write {
                    b.write(0, &pattern(lba, 4096)).unwrap();
                    qp.submit_write(&ns, lba, b, i as u64).unwrap();
                } else {
                    b.fill(0);
                    qp.submit_read(&ns, lba, b, i as u64).unwrap();
                }
            }
            qp.ring();
            let mut got = 0;
            while got < depth {
                qp.wait(Duration::from_secs(2), |cpl| {
                    cpl.result.as_ref().expect("I/O");
                    bufs[cpl.tag as usize] = cpl.buffer;
                    got += 1;
                })
                .unwrap();
            }
            ios += depth as u64;
            if !write {
                for (i, b) in bufs.iter().enumerate() {
                    let lba = round * depth as u64 + i as u64;
                    assert_eq!(
                        b.as_ref().unwrap().to_vec(),
                        pattern(lba, 4096),
                        "LBA {lba}"
                    );
                }
            }
        }
    }
    let mmio = sim.stats().doorbell_writes - before;
    let stats = qp.stats();
    assert_eq!(stats.completed, ios);
    c.delete_io_queue_pair(qp).unwrap();
    Run {
        mmio_per_io: mmio as f64 / ios as f64,
        shadow_only: stats.shadow_only_doorbells,
        shadow_configured: c.stats().shadow_doorbells,
    }
}

fn sim(mode: SimMode, doorbell_buffer: bool) -> Simulator {
    Simulator::new(SimConfig {
        mode,
        doorbell_buffer,
        ..SimConfig::default()
    })
    .unwrap()
}

#[test]
fn shadow_doorbells_cut_register_writes_and_keep_io_correct() {
    for mode in [SimMode::Inline, SimMode::Thread] {
        let mut figures = Vec::new();
        for (depth, entries) in [(1usize, 64u16), (16, 64)] {
            let on_sim = sim(mode, true);
            let mut on_c = Controller::new(on_sim.platform(), config(true)).unwrap();
            let on = workload(&on_sim, &mut on_c, entries, depth, 40);
            assert!(on.shadow_configured);
            assert!(
                on.shadow_only > 0,
                "{mode:?} QD{depth}: every update went to a register"
            );
            assert_eq!(on_sim.violations(), vec![], "{mode:?} QD{depth}");
            on_c.shutdown().unwrap();

            let off_sim = sim(mode, true);
            let mut off_c = Controller::new(off_sim.platform(), config(false)).unwrap();
            let off = workload(&off_sim, &mut off_c, entries, depth, 40);
            assert!(!off.shadow_configured);
            assert_eq!(off.shadow_only, 0);
            assert_eq!(off_sim.violations(), vec![], "{mode:?} QD{depth}");
            off_c.shutdown().unwrap();

            assert!(
                on.mmio_per_io < off.mmio_per_io,
                "{mode:?} QD{depth}: {} register doorbell writes per I/O with shadow doorbells, {} without",
                on.mmio_per_io,
                off.mmio_per_io
            );
            figures.push(format!(
                "QD{depth}: {:.3} -> {:.3}",
                off.mmio_per_io, on.mmio_per_io
            ));
        }
        eprintln!(
            "{mode:?}: register doorbell writes per I/O without -> with shadow doorbells: {}",
            figures.join(", ")
        );
    }
}

/// The driver's default (on) against a controller without Doorbell Buffer Config: no
/// command is sent, every update goes to the registers, as before.
#[test]
fn a_controller_without_doorbell_buffers_is_driven_through_registers() {
    let s = sim(SimMode::Inline, false);
    let mut c = Controller::new(s.platform(), config(true)).unwrap();
    let r = workload(&s, &mut c, 64, 8, 10);
    assert!(!r.shadow_configured);
    assert_eq!(r.shadow_only, 0);
    // Two registers per batch of eight: one SQ tail, one CQ head (per direction).
    assert!(r.mmio_per_io > 0.2, "{}", r.mmio_per_io);
    assert_eq!(s.stats().admin_commands.get(&0x7C), None);
    assert_eq!(s.violations(), vec![]);
}

/// A small queue: the host rings no CQ head register for most batches, so after a few
/// batches the controller's own view of the CQ is full; it must take the head from the
/// shadow doorbell (or ask for the register through EventIdx) and go on, or the I/O would
/// stop.
#[test]
fn a_full_completion_queue_takes_its_head_from_the_shadow_doorbell() {
    for mode in [SimMode::Inline, SimMode::Thread] {
        let s = sim(mode, true);
        let mut c = Controller::new(s.platform(), config(true)).unwrap();
        let r = workload(&s, &mut c, 8, 3, 30);
        assert!(r.shadow_configured && r.shadow_only > 0, "{mode:?}");
        assert!(
            s.stats().shadow_cq_heads > 0,
            "{mode:?}: the shadow CQ head was never read"
        );
        assert_eq!(s.violations(), vec![], "{mode:?}");
    }
}

/// After a controller reset the doorbell buffer is configured again (the reset made the
/// controller forget it) and new queues use it.
#[test]
fn shadow_doorbells_are_configured_again_after_a_reset() {
    let s = sim(SimMode::Inline, true);
    let mut c = Controller::new(s.platform(), config(true)).unwrap();
    let before = workload(&s, &mut c, 64, 4, 5);
    assert!(before.shadow_configured && before.shadow_only > 0);
    c.reset().unwrap();
    assert_eq!(s.stats().admin_commands.get(&0x7C), Some(&2));
    let after = workload(&s, &mut c, 64, 4, 5);
    assert!(after.shadow_configured && after.shadow_only > 0);
    assert_eq!(s.violations(), vec![]);
    c.shutdown().unwrap();
}

//! Interrupt coalescing (NVMe Base §5.27.1.8, feature 08h) and per-vector opt-out
//! (§5.27.1.9, feature 09h) as the driver applies them and the simulator honours them,
//! counted through `InterruptSource::counts`; and the hybrid wait's spin phase.

use std::time::Duration;

use nvme_core::hw::{InterruptSource, Platform};
use nvme_core::interrupts::InterruptCoalescing;
use nvme_core::spec::NvmOpcode;
use nvme_core::{Controller, ControllerConfig, IoQueuePair, Namespace};
use sim_backend::{CommandMatch, SimConfig, SimPlatform, Simulator};

fn bring_up(coalescing: Option<InterruptCoalescing>) -> (Simulator, Controller<SimPlatform>) {
    let sim = Simulator::new(SimConfig::default()).unwrap();
    let c = Controller::new(
        sim.platform(),
        ControllerConfig {
            interrupt_coalescing: coalescing,
            ..ControllerConfig::default()
        },
    )
    .unwrap();
    (sim, c)
}

/// Eight 4 KiB reads, each submitted and rung on its own (the inline simulator completes
/// each at its doorbell write), then one wait; returns the interrupts fired meanwhile.
fn eight_reads(
    c: &Controller<SimPlatform>,
    qp: &mut IoQueuePair<SimPlatform>,
    ns: &Namespace,
) -> u64 {
    let before = c.interrupt_counts().unwrap();
    for i in 0..8u64 {
        let b = c.alloc_buffer(4096).unwrap();
        qp.submit_read(ns, i * 8, b, i).unwrap();
        qp.ring();
    }
    let mut done = 0;
    while done < 8 {
        done += qp
            .wait(Duration::from_secs(2), |comp| assert!(comp.result.is_ok()))
            .unwrap();
    }
    c.interrupt_counts().unwrap().since(before).fired
}

#[test]
fn coalescing_cuts_interrupts_per_io() {
    // Per completion without coalescing.
    let (sim, mut c) = bring_up(None);
    let mut qp = c.create_io_queue_pair(16).unwrap();
    let ns = c.namespace(1).unwrap().clone();
    assert_eq!(eight_reads(&c, &mut qp, &ns), 8);
    sim.assert_no_violations();

    // Four completions per interrupt (time limit 10 ms, never reached here).
    let thr4 = InterruptCoalescing {
        threshold: 4,
        time_100us: 100,
    };
    let (sim, mut c) = bring_up(Some(thr4));
    assert_eq!(c.stats().coalescing_refused, None);
    assert_eq!(c.interrupt_coalescing().unwrap(), thr4);
    let mut qp = c.create_io_queue_pair(16).unwrap();
    let ns = c.namespace(1).unwrap().clone();
    assert_eq!(eight_reads(&c, &mut qp, &ns), 2);

    // The vector of a latency-sensitive pair opts out (Coalescing Disable).
    let v = qp.vector().unwrap();
    c.set_vector_coalescing(v, false).unwrap();
    assert_eq!(eight_reads(&c, &mut qp, &ns), 8);
    c.set_vector_coalescing(v, true).unwrap();
    assert_eq!(eight_reads(&c, &mut qp, &ns), 2);
    sim.assert_no_violations();
}

/// A completion below the threshold is signalled when the aggregation time runs out, so
/// a waiter sleeping on the vector is never stranded.
#[test]
fn aggregation_time_bounds_the_delay() {
    let (sim, mut c) = bring_up(Some(InterruptCoalescing {
        threshold: 32,
        time_100us: 5,
    }));
    let mut qp = c.create_io_queue_pair(16).unwrap();
    let ns = c.namespace(1).unwrap().clone();
    let v = qp.vector().unwrap();
    let p = c.platform().clone();
    let b = c.alloc_buffer(4096).unwrap();
    qp.submit_read(&ns, 0, b, 1).unwrap();
    qp.ring();
    assert!(!p.irq().poll(v), "held back below the threshold");
    let t = std::time::Instant::now();
    assert!(
        p.irq().wait(v, Duration::from_secs(2)),
        "signalled after TIME"
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    let mut got = 0;
    while got == 0 {
        got = qp.wait(Duration::from_secs(1), |_| {}).unwrap();
    }
    sim.assert_no_violations();
}

/// One read whose completion the device thread posts 5 ms late: returns the wake-ups the
/// blocking call paid on the vector.
fn late_read_wakeups(spin: Duration) -> u64 {
    let sim = Simulator::new(SimConfig::threaded()).unwrap();
    let mut c = Controller::new(
        sim.platform(),
        ControllerConfig {
            irq_spin: spin,
            ..ControllerConfig::default()
        },
    )
    .unwrap();
    let mut qp = c.create_io_queue_pair(16).unwrap();
    let ns = c.namespace(1).unwrap().clone();
    sim.faults().delay_completion(
        CommandMatch::io(NvmOpcode::READ.0),
        Duration::from_millis(5),
    );
    let before = c.interrupt_counts().unwrap();
    let b = c.alloc_buffer(4096).unwrap();
    qp.read(&ns, 0, b).unwrap();
    let d = c.interrupt_counts().unwrap().since(before);
    assert_eq!(d.fired, 1);
    c.delete_io_queue_pair(qp).unwrap();
    sim.assert_no_violations();
    d.wakeups
}

/// The hybrid wait: a completion that arrives within the spin phase costs no sleep on the
/// vector (no wake-up consumed); without a spin phase the waiter sleeps and is woken.
#[test]
fn hybrid_wait_spins_before_sleeping() {
    assert_eq!(late_read_wakeups(Duration::from_secs(1)), 0);
    assert_eq!(late_read_wakeups(Duration::ZERO), 1);
}

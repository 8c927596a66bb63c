//! The device thread and MSI-X interrupts.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nvme_core::hw::{InterruptSource, Platform};
use nvme_core::spec::{Command, NvmOpcode};
use sim_backend::{SimConfig, SimMode, Simulator};

fn threaded() -> SimConfig {
    SimConfig {
        mode: SimMode::Thread,
        ..cfg()
    }
}

#[test]
fn thread_mode_io_round_trip() {
    let mut h = Host::enabled(threaded());
    h.create_pair(1, 32, false);
    for i in 0..20u64 {
        let data = pattern(4096, i as u8);
        let mut w = Command::rw(NvmOpcode::WRITE, 1, i * 8, 7, false);
        let _b = two_page_prps(&h, &mut w, &data);
        assert!(h.io(1, w).status().is_success());
        let mut r = Command::rw(NvmOpcode::READ, 1, i * 8, 7, false);
        let b = two_page_prps(&h, &mut r, &[]);
        assert!(h.io(1, r).status().is_success());
        assert_eq!(h.read_mem(b.iova(), 4096), data);
    }
    // A batch of commands in one doorbell.
    for cid in 0..16u16 {
        let mut f = Command::flush(1);
        f.set_cid(1000 + cid);
        h.push(1, &f);
    }
    h.ring_sq(1);
    let mut got = Vec::new();
    while got.len() < 16 {
        got.push(h.wait_no_ring(1).cid());
    }
    h.ring_cq(1);
    got.sort_unstable();
    assert_eq!(got, (1000..1016).collect::<Vec<_>>());
    h.sim.assert_no_violations();
}

#[test]
fn interrupts_signal_completions() {
    for mode in [SimMode::Inline, SimMode::Thread] {
        let mut h = Host::new(SimConfig { mode, ..cfg() });
        assert_eq!(h.p.irq().max_vectors(), 9);
        assert_eq!(h.enable_irqs(16), 9);
        h.enable(16);
        h.create_pair(1, 16, true);
        // Drain the interrupts of the admin commands so far.
        while h.p.irq().poll(0) {}
        let mut f = Command::flush(1);
        f.set_cid(3);
        h.push(1, &f);
        h.ring_sq(1);
        assert!(
            h.p.irq().wait(1, TIMEOUT),
            "{mode:?}: vector 1 did not fire"
        );
        let c = h.poll(1).expect("the interrupt came after the entry");
        assert_eq!(c.cid(), 3);
        // The per-vector counter saw it; a vector the function lacks counts nothing.
        let on_1 = h.sim.interrupts_on(1);
        assert!(on_1 >= 1, "{mode:?}: vector 1 counted {on_1}");
        assert_eq!(h.sim.interrupts_on(100), 0);
        h.ring_cq(1);
        assert!(!h.p.irq().poll(1));
        // A disabled vector never fires: wait returns false after the timeout.
        assert!(!h.p.irq().wait(12, Duration::from_millis(1)));
        // A CQ created without IEN raises nothing.
        let cq = h.alloc(4096);
        let sq = h.alloc(4096);
        h.admin_ok(Command::create_io_cq(2, 15, cq.iova(), false, 2));
        h.admin_ok(Command::create_io_sq(2, 15, sq.iova(), 2, 0));
        h.track_cq(2, cq, 16);
        h.track_sq(2, sq, 16);
        let before = h.sim.stats().interrupts_raised;
        let before_2 = h.sim.interrupts_on(2);
        h.io(2, Command::flush(1));
        assert!(!h.p.irq().poll(2));
        assert_eq!(h.sim.stats().interrupts_raised, before);
        assert_eq!(h.sim.interrupts_on(2), before_2);
        assert_eq!(h.sim.interrupts_on(1), on_1);
        h.sim.assert_no_violations();
    }
}

#[test]
fn delayed_completion_wakes_an_interrupt_waiter_in_inline_mode() {
    let mut h = Host::new(cfg());
    h.enable_irqs(2);
    h.enable(8);
    h.create_pair(1, 8, true);
    while h.p.irq().poll(0) {}
    h.sim.faults().delay_completion(
        sim_backend::CommandMatch::io(NvmOpcode::FLUSH.0),
        Duration::from_millis(5),
    );
    h.push(1, &Command::flush(1));
    h.ring_sq(1);
    assert!(h.p.irq().wait(1, TIMEOUT));
    assert!(h.poll(1).is_some());
}

#[test]
fn dropping_the_last_handle_joins_the_thread() {
    let sim = Simulator::new(threaded()).unwrap();
    let p = sim.platform();
    let clone = sim.clone();
    drop(sim);
    drop(p);
    let start = Instant::now();
    drop(clone);
    // Joined, not leaked: the drop returned (bounded by the thread's wake-up).
    assert!(start.elapsed() < TIMEOUT);
}

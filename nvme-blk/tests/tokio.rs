//! The tokio integration on the simulator: interrupt-driven completion (a thread waiting on
//! the vector; an eventfd registered with the reactor), polled mode, and errors.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nvme_blk::{TokioQueue, Wakeup};
use nvme_core::{Controller, ControllerConfig, Error};
use sim_backend::{CommandMatch, SimConfig, Simulator};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// 32 concurrent reads of blocks that hold their own LBA.
async fn reads<P: nvme_core::hw::Platform>(
    tq: &TokioQueue<P>,
    ctrl: &Controller<P>,
    ns: &nvme_core::Namespace,
) {
    let mut tasks = Vec::new();
    for lba in 0..32u64 {
        let f = tq
            .queue()
            .read(ns, lba, ctrl.alloc_buffer(512).unwrap())
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let d = f.await.unwrap();
            let b = d.buffer.unwrap().to_vec();
            assert!(b.iter().all(|&x| x == lba as u8), "block {lba}");
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("a read never completed")
            .unwrap();
    }
}

fn fill(sim: &Simulator) {
    for lba in 0..32u64 {
        sim.write_namespace_bytes(1, lba, &[lba as u8; 512])
            .unwrap();
    }
}

#[test]
fn msix_thread_wakeup_on_the_threaded_simulator() {
    let sim = Simulator::new(SimConfig::threaded()).unwrap();
    fill(&sim);
    let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default()).unwrap();
    let ns = ctrl.namespace(1).unwrap().clone();
    let qp = ctrl.create_io_queue_pair(8).unwrap();
    assert!(qp.vector().is_some());
    rt().block_on(async {
        let tq = TokioQueue::new(qp, Wakeup::Thread(sim.platform())).unwrap();
        reads(&tq, &ctrl, &ns).await;
        let qp = tq.into_inner().await.unwrap();
        ctrl.delete_io_queue_pair(qp).unwrap();
    });
    sim.assert_no_violations();
}

#[test]
fn polled_mode() {
    let sim = Simulator::new(SimConfig::threaded()).unwrap();
    fill(&sim);
    let mut ctrl = Controller::new(
        sim.platform(),
        ControllerConfig {
            interrupts: false,
            ..ControllerConfig::default()
        },
    )
    .unwrap();
    let ns = ctrl.namespace(1).unwrap().clone();
    let qp = ctrl.create_io_queue_pair(8).unwrap();
    assert!(qp.vector().is_none());
    rt().block_on(async {
        // Interrupt wake-ups need a vector.
        let e = TokioQueue::new(qp, Wakeup::Thread(sim.platform())).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    });
    let qp = ctrl.create_io_queue_pair(8).unwrap();
    rt().block_on(async {
        let tq = TokioQueue::new(qp, Wakeup::Polled).unwrap();
        reads(&tq, &ctrl, &ns).await;
    });
}

/// An eventfd registered with the reactor: completions wait for it to be signalled (no busy
/// polling), and a signal wakes them.
#[test]
fn eventfd_wakeup_waits_for_the_signal() {
    let sim = Simulator::new(SimConfig::default()).unwrap();
    fill(&sim);
    let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default()).unwrap();
    let ns = ctrl.namespace(1).unwrap().clone();
    let qp = ctrl.create_io_queue_pair(8).unwrap();
    // SAFETY: eventfd takes no pointers; the new descriptor is owned by nothing else.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(raw >= 0);
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
    rt().block_on(async {
        // No tick during the test: only the eventfd makes the task process completions.
        let tq = TokioQueue::with_tick(qp, Wakeup::EventFd(fd.clone()), Duration::from_secs(3600))
            .unwrap();
        // The completion is held back until the test services the simulator, after the
        // future's own poll found nothing.
        sim.faults()
            .delay_completion(CommandMatch::io(0x01), Duration::from_millis(1));
        let mut b = ctrl.alloc_buffer(512).unwrap();
        b.fill(0x77);
        let f = tq.queue().write(&ns, 3, b, false).unwrap();
        let h = tokio::spawn(f);
        tokio::time::sleep(Duration::from_millis(20)).await;
        sim.service();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Completed by the device, but nothing processed it: no busy polling.
        assert!(!h.is_finished());
        let one = 1u64.to_ne_bytes();
        // SAFETY: `one` is valid for reads of 8 bytes; the descriptor is open.
        assert_eq!(unsafe { libc::write(raw, one.as_ptr().cast(), 8) }, 8);
        let d = tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .expect("the eventfd woke the completion task")
            .unwrap()
            .unwrap();
        assert!(d.buffer.is_some());
        // A bad request is refused before submission, with its buffer.
        let e = tq
            .queue()
            .read(&ns, ns.blocks(), ctrl.alloc_buffer(512).unwrap())
            .unwrap_err();
        assert!(matches!(e.error, Error::LbaOutOfRange { .. }));
        assert!(e.buffer.is_some());
    });
    assert_eq!(sim.namespace_bytes(1, 3, 1).unwrap(), vec![0x77; 512]);
}

//! `nvme_core::aio` futures driven by a minimal executor on the simulator: more futures than
//! slots, completion by the futures' own polls or by `process`, wakers, dropped futures.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use nvme_core::aio::{AsyncQueuePair, Completion};
use nvme_core::{Controller, ControllerConfig, Error};
use sim_backend::{SimConfig, SimPlatform, Simulator};

struct Count(AtomicUsize);
impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

type Fut = Pin<Box<dyn Future<Output = Result<u64, Error>>>>;

/// Polls every future once per round; between rounds calls `between`. Returns the outputs
/// in order and the number of wakes.
fn run_all(mut futs: Vec<Fut>, mut between: impl FnMut()) -> (Vec<Result<u64, Error>>, usize) {
    let wakes = Arc::new(Count(AtomicUsize::new(0)));
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let mut out: Vec<Option<Result<u64, Error>>> = futs.iter().map(|_| None).collect();
    for _round in 0..100_000 {
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                    out[i] = Some(v);
                }
            }
        }
        if out.iter().all(Option::is_some) {
            return (
                out.into_iter().map(Option::unwrap).collect(),
                wakes.0.load(Ordering::SeqCst),
            );
        }
        between();
    }
    panic!("futures did not finish");
}

fn setup() -> (Simulator, Controller<SimPlatform>) {
    let sim = Simulator::new(SimConfig::default()).unwrap();
    let ctrl = Controller::new(sim.platform(), ControllerConfig::default()).unwrap();
    (sim, ctrl)
}

#[test]
fn more_futures_than_slots_all_complete_with_their_data() {
    let (sim, mut ctrl) = setup();
    let ns = ctrl.namespace(1).unwrap().clone();
    // Blocks 0..64 hold their own number.
    for lba in 0..64u64 {
        sim.write_namespace_bytes(1, lba, &[lba as u8; 512])
            .unwrap();
    }
    let q = AsyncQueuePair::new(ctrl.create_io_queue_pair(4).unwrap(), Completion::Polled);
    let futs: Vec<Fut> = (0..64u64)
        .map(|lba| {
            let f = q.read(&ns, lba, ctrl.alloc_buffer(512).unwrap()).unwrap();
            Box::pin(async move {
                let d = f.await.map_err(Error::from)?;
                let b = d.buffer.unwrap().to_vec();
                assert!(b.iter().all(|&x| x == lba as u8), "block {lba}");
                Ok(lba)
            }) as Fut
        })
        .collect();
    let (out, _) = run_all(futs, || {});
    assert_eq!(out.len(), 64);
    assert!(out.iter().all(Result::is_ok));
    assert_eq!(q.outstanding(), 0);
    sim.assert_no_violations();
}

#[test]
fn external_mode_futures_wait_for_process_and_are_woken() {
    let (_sim, mut ctrl) = setup();
    let ns = ctrl.namespace(1).unwrap().clone();
    let q = AsyncQueuePair::new(ctrl.create_io_queue_pair(16).unwrap(), Completion::External);
    let futs: Vec<Fut> = (0..8u64)
        .map(|lba| {
            let mut b = ctrl.alloc_buffer(512).unwrap();
            b.fill(0x11);
            let f = q.write(&ns, lba, b, lba % 2 == 0).unwrap();
            Box::pin(async move { f.await.map(|_| lba).map_err(Error::from) }) as Fut
        })
        .collect();
    let q2 = q.clone();
    let mut processed = 0;
    let (out, wakes) = run_all(futs, || processed += q2.process().unwrap());
    assert!(out.iter().all(Result::is_ok));
    // The inline simulator completes at the doorbell; the futures' own polls took what
    // `process` did not, and every completion `process` delivered woke its future.
    assert!(
        wakes >= processed,
        "{wakes} wakes for {processed} processed"
    );
    let f = q.flush(1);
    let (out, _) = run_all(
        vec![Box::pin(
            async move { f.await.map(|_| 0).map_err(Error::from) },
        )],
        || {},
    );
    assert!(out[0].is_ok());
    // No future and no other handle alive: the pair comes back.
    drop(q2);
    let qp = q.into_inner().unwrap();
    ctrl.delete_io_queue_pair(qp).unwrap();
}

#[test]
fn bad_requests_are_refused_with_the_buffer_and_dropped_futures_free_their_slot() {
    let (sim, mut ctrl) = setup();
    let ns = ctrl.namespace(1).unwrap().clone();
    let q = AsyncQueuePair::new(ctrl.create_io_queue_pair(2).unwrap(), Completion::Polled);
    let e = q
        .read(&ns, ns.blocks(), ctrl.alloc_buffer(512).unwrap())
        .unwrap_err();
    assert!(matches!(e.error, Error::LbaOutOfRange { .. }));
    assert!(e.buffer.is_some());
    let e = q.read(&ns, 0, ctrl.alloc_buffer(700).unwrap()).unwrap_err();
    assert!(matches!(e.error, Error::BufferSize { .. }));
    // A dropped, submitted future: its completion is discarded and the slot reused.
    sim.faults().delay_completion(
        sim_backend::CommandMatch::io(0x02),
        std::time::Duration::from_millis(50),
    );
    let mut f = q.read(&ns, 0, ctrl.alloc_buffer(512).unwrap()).unwrap();
    let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
    assert!(Pin::new(&mut f)
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    assert_eq!(q.outstanding(), 1);
    drop(f);
    sim.faults().clear();
    let g = q.read(&ns, 1, ctrl.alloc_buffer(512).unwrap()).unwrap();
    let (out, _) = run_all(
        vec![Box::pin(
            async move { g.await.map(|_| 1).map_err(Error::from) },
        )],
        || {
            sim.service();
            std::thread::sleep(std::time::Duration::from_millis(1));
        },
    );
    assert!(out[0].is_ok());
    // The abandoned command completes in time and its slot comes back.
    let t = std::time::Instant::now();
    while q.outstanding() > 0 && t.elapsed().as_secs() < 5 {
        // The inline simulator delivers delayed completions when serviced.
        sim.service();
        q.process().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(q.outstanding(), 0);
}

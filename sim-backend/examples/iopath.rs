//! A fixed I/O workload on the inline simulator, for instruction counts under callgrind
//! (`valgrind --tool=callgrind target/release/examples/iopath read 128 200000 [shadow]`): 4 KiB
//! random reads or writes at a given queue depth, polled, batched doorbells, buffers reused;
//! shadow doorbells (Doorbell Buffer Config) only with `shadow`; with `fixed`, the buffers are
//! registered with the queue pair (`IoQueuePair::register_buffer`) and commands name them by
//! index (`submit_read_fixed`, `poll_fixed`) instead of moving them in and out.

use std::sync::Arc;

use nvme_core::{Controller, ControllerConfig, DmaBuffer, FixedBuf, IoQueuePair, Namespace};
use sim_backend::{SimConfig, SimPlatform, Simulator};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let write = args.get(1).is_some_and(|s| s == "write");
    let qd: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let ios: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let extra = args.get(4..).unwrap_or(&[]);
    let shadow_doorbells = extra.iter().any(|s| s == "shadow");
    let fixed = extra.iter().any(|s| s == "fixed");
    let sim = Simulator::new(SimConfig {
        strict: false,
        ..SimConfig::default()
    })
    .expect("simulator");
    let p: Arc<SimPlatform> = sim.platform();
    // IOPATH_TRANSFER=prp measures PRPs; by default the simulator's SGL support makes the
    // driver describe each buffer with one SGL Data Block descriptor (nvme_core::sgl).
    let transfer_mode = match std::env::var("IOPATH_TRANSFER").as_deref() {
        Ok("prp") => nvme_core::TransferMode::Prp,
        Ok("sgl") => nvme_core::TransferMode::Sgl,
        _ => nvme_core::TransferMode::Auto,
    };
    let config = ControllerConfig {
        interrupts: false,
        transfer_mode,
        shadow_doorbells,
        ..Default::default()
    };
    let mut c = Controller::new(p, config).expect("bring-up");
    let ns = c.namespace(2).expect("namespace 2").clone();
    let blocks = ns.blocks();
    let qp = c.create_io_queue_pair((qd + 1) as u16).expect("queue pair");
    let mut bufs: Vec<Option<DmaBuffer<SimPlatform>>> = (0..qd)
        .map(|_| Some(c.alloc_buffer(4096).expect("buffer")))
        .collect();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let next = move || {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % blocks
    };
    let mut w = Workload {
        qp,
        ns,
        write,
        ios,
        next,
    };
    let (qp, completed, kind) = if fixed {
        let ids: Vec<_> = bufs
            .iter_mut()
            .map(|b| {
                let b = b.take().expect("buffer");
                w.qp.register_buffer(b)
                    .map_err(|e| e.error)
                    .expect("register")
            })
            .collect();
        let (qp, n) = registered(w, &ids);
        (qp, n, ", registered buffers")
    } else {
        let (qp, n) = owned(w, &mut bufs);
        (qp, n, "")
    };
    c.delete_io_queue_pair(qp).expect("delete");
    c.shutdown().expect("shutdown");
    println!(
        "iopath: {completed} {} at QD{qd}{kind}",
        if write { "writes" } else { "reads" }
    );
}

/// What both loops run: `ios` I/Os at the LBAs `next` draws, with the queue pair and the
/// namespace handle held by the loop itself, as in an application's I/O loop.
struct Workload<F> {
    qp: IoQueuePair<SimPlatform>,
    ns: Namespace,
    write: bool,
    ios: u64,
    next: F,
}

/// The loop on registered buffers (one per slot of `ids`): each loop is a function of its
/// own, so that the code of one does not change how the other compiles. Returns the pair
/// and the I/Os completed.
#[inline(never)]
fn registered(
    w: Workload<impl FnMut() -> u64>,
    ids: &[FixedBuf],
) -> (IoQueuePair<SimPlatform>, u64) {
    let Workload {
        mut qp,
        ns,
        write,
        ios,
        mut next,
    } = w;
    let mut idle: Vec<bool> = vec![true; ids.len()];
    let (mut submitted, mut completed) = (0u64, 0u64);
    loop {
        for (tag, free) in idle.iter_mut().enumerate() {
            if submitted == ios {
                break;
            }
            if *free {
                let r = if write {
                    qp.submit_write_fixed(&ns, next(), ids[tag], tag as u64)
                } else {
                    qp.submit_read_fixed(&ns, next(), ids[tag], tag as u64)
                };
                r.expect("submit");
                *free = false;
                submitted += 1;
            }
        }
        qp.ring();
        if completed == ios {
            return (qp, completed);
        }
        qp.poll_fixed(|cpl| {
            cpl.result.expect("I/O");
            idle[cpl.tag as usize] = true;
            completed += 1;
        })
        .expect("poll");
    }
}

/// The loop on owned buffers, moved into each command and back out of its completion.
#[inline(never)]
fn owned(
    w: Workload<impl FnMut() -> u64>,
    bufs: &mut [Option<DmaBuffer<SimPlatform>>],
) -> (IoQueuePair<SimPlatform>, u64) {
    let Workload {
        mut qp,
        ns,
        write,
        ios,
        mut next,
    } = w;
    let (mut submitted, mut completed) = (0u64, 0u64);
    loop {
        for (tag, b) in bufs.iter_mut().enumerate() {
            if submitted == ios {
                break;
            }
            if let Some(buf) = b.take() {
                let r = if write {
                    qp.submit_write(&ns, next(), buf, tag as u64)
                } else {
                    qp.submit_read(&ns, next(), buf, tag as u64)
                };
                r.expect("submit");
                submitted += 1;
            }
        }
        qp.ring();
        if completed == ios {
            return (qp, completed);
        }
        qp.poll(|cpl| {
            cpl.result.expect("I/O");
            bufs[cpl.tag as usize] = cpl.buffer;
            completed += 1;
        })
        .expect("poll");
    }
}

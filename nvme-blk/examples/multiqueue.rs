//! Several queue pairs on several threads, each thread its own pair (the model SPDK
//! applications use): no lock is shared between the threads on the I/O path. The thread that
//! owns the controller keeps calling `Controller::recover` (timeouts, aborts, resets), as an
//! SPDK application polls its admin queue.
//!
//! ```text
//! cargo run --release -p nvme-blk --example multiqueue                  # simulator, 2 threads
//! cargo run --release -p nvme-blk --example multiqueue -- sim 4
//! cargo run --release -p nvme-blk --example multiqueue -- 0000:00:04.0 2
//! ```
//! Each thread writes its own stripe of namespace 1 with blocks that name their LBA and
//! thread, reads it back through the same pair and checks every byte.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nvme_core::hw::Platform;
use nvme_core::{Controller, ControllerConfig};

/// Bytes each thread writes and reads back.
const STRIPE: usize = 8 << 20;

fn run<P: Platform>(mut ctrl: Controller<P>, threads: usize) -> Result<()> {
    let ns = ctrl.namespace(1)?.clone();
    let bs = ns.lba_size() as usize;
    let stripe_blocks = (STRIPE / bs) as u64;
    if stripe_blocks * threads as u64 > ns.blocks() {
        bail!("namespace 1 is too small for {threads} stripes of {STRIPE} bytes");
    }
    let granted = ctrl.granted_queue_pairs() as usize;
    if threads > granted {
        bail!(
            "the controller granted {granted} I/O queue pairs; ask for at most that many threads"
        );
    }
    // Pairs are created by the controller's owner and moved to their threads.
    let pairs = (0..threads)
        .map(|_| ctrl.create_io_queue_pair(64))
        .collect::<Result<Vec<_>, _>>()?;
    let t0 = Instant::now();
    let workers: Vec<_> = pairs
        .into_iter()
        .enumerate()
        .map(|(i, mut qp)| {
            let ns = ns.clone();
            std::thread::spawn(move || -> Result<(usize, f64, _)> {
                let slba = i as u64 * stripe_blocks;
                let mut data = vec![0u8; STRIPE];
                for (b, chunk) in data.chunks_mut(bs).enumerate() {
                    let tag = format!("lba {} thread {i};", slba + b as u64);
                    for (dst, src) in chunk.iter_mut().zip(tag.bytes().cycle()) {
                        *dst = src;
                    }
                }
                let t = Instant::now();
                ns.write_at(&mut qp, slba, &data)?;
                let mut back = vec![0u8; STRIPE];
                ns.read_at(&mut qp, slba, &mut back)?;
                let secs = t.elapsed().as_secs_f64();
                if back != data {
                    bail!("thread {i}: the data read back differs from what was written");
                }
                Ok((i, 2.0 * STRIPE as f64 / secs / 1e6, qp))
            })
        })
        .collect();
    // The controller's owner: recovery until the workers are done.
    while !workers.iter().all(|w| w.is_finished()) {
        ctrl.recover()?;
        std::thread::sleep(Duration::from_millis(10));
    }
    for w in workers {
        let (i, mbps, qp) = w
            .join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
        println!(
            "thread {i}: queue {} wrote and verified {STRIPE} bytes at {mbps:.0} MB/s",
            qp.qid()
        );
        ctrl.delete_io_queue_pair(qp)?;
    }
    println!(
        "{threads} threads, {threads} queue pairs: {:.0} MB verified in {:.2} s",
        (threads * STRIPE) as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    ctrl.shutdown()?;
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let device = args.next().unwrap_or_else(|| "sim".into());
    let threads: usize = match args.next() {
        Some(t) => t.parse().context("the thread count must be a number")?,
        None => 2,
    };
    if threads == 0 {
        bail!("at least one thread");
    }
    if device == "sim" {
        // The device thread serves every queue, as a controller serves its SQs.
        let sim = sim_backend::Simulator::new(sim_backend::SimConfig::threaded())?;
        run(
            Controller::new(sim.platform(), ControllerConfig::default())?,
            threads,
        )
    } else {
        let p = vfio_backend::VfioPlatform::open(&device, &vfio_backend::VfioOptions::default())
            .with_context(|| format!("opening {device}"))?;
        run(Controller::new(p, ControllerConfig::default())?, threads)
    }
}

//! 32 concurrent 4 KiB random reads under tokio, on the simulator or a controller bound to
//! vfio-pci, next to the same workload through the callback API at the same queue depth.
//!
//! ```text
//! cargo run --release -p nvme-blk --example tokio_randread               # simulator
//! cargo run --release -p nvme-blk --example tokio_randread -- 0000:00:04.0
//! cargo run --release -p nvme-blk --example tokio_randread -- sim --polled --ops 200000
//! cargo run --release -p nvme-blk --example tokio_randread -- sim --polled --inline
//! ```
//! With MSI-X (the default) the queue's completion task sleeps until the vector fires: on
//! VFIO in epoll on the vector's eventfd, on the simulator in a thread waiting on the vector.
//! `--polled` makes the futures poll the completion queue instead.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use nvme_blk::{TokioQueue, Wakeup};
use nvme_core::hw::Platform;
use nvme_core::{Controller, ControllerConfig, Namespace};

const CONCURRENCY: usize = 32;
const BLOCK: usize = 4096;

struct Args {
    device: String,
    polled: bool,
    /// The simulator processes commands at the doorbell write, on the caller's thread.
    inline: bool,
    ops: u64,
}

fn args() -> Result<Args> {
    let mut a = Args {
        device: "sim".into(),
        polled: false,
        inline: false,
        ops: 100_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--polled" => a.polled = true,
            "--inline" => a.inline = true,
            "--ops" => {
                a.ops = it
                    .next()
                    .context("--ops needs a number")?
                    .parse()
                    .context("--ops needs a number")?
            }
            "-h" | "--help" => {
                println!("usage: tokio_randread [sim | PCI-ADDRESS] [--polled] [--inline (simulator)] [--ops N]");
                std::process::exit(0);
            }
            d if !d.starts_with('-') => a.device = d.into(),
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(a)
}

/// Random 4 KiB-aligned LBAs (xorshift: reproducible, no dependency).
fn lbas(seed: u64, ns: &Namespace) -> impl FnMut() -> u64 {
    let per = (BLOCK as u64 / ns.lba_size() as u64).max(1);
    let slots = ns.blocks() / per;
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % slots) * per
    }
}

/// The tokio run: `CONCURRENCY` tasks, each reading until `ops` reads were issued in all.
async fn tokio_run<P: Platform>(
    ctrl: &mut Controller<P>,
    ns: &Namespace,
    wake: &dyn Fn(Option<u16>) -> Result<Wakeup<P>>,
    ops: u64,
) -> Result<f64> {
    let qp = ctrl.create_io_queue_pair(CONCURRENCY as u16 + 1)?;
    let w = wake(qp.vector())?;
    let tq = TokioQueue::new(qp, w)?;
    let left = Arc::new(std::sync::atomic::AtomicI64::new(ops as i64));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CONCURRENCY {
        let q = tq.queue().clone();
        let (ns, left) = (ns.clone(), left.clone());
        let mut buf = Some(ctrl.alloc_buffer(BLOCK)?);
        let mut next = lbas(0x9e37_79b9 + i as u64, &ns);
        tasks.push(tokio::spawn(async move {
            while left.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) > 0 {
                let b = buf
                    .take()
                    .expect("the buffer comes back with each completion");
                let done = q.read(&ns, next(), b)?.await?;
                buf = done.buffer;
            }
            Ok::<(), nvme_core::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    let qp = tq
        .into_inner()
        .await
        .map_err(|_| anyhow::anyhow!("queue still shared"))?;
    ctrl.delete_io_queue_pair(qp)?;
    Ok(ops as f64 / secs)
}

/// The same workload through the callback API: submit, ring, poll, at the same depth.
fn callback_run<P: Platform>(ctrl: &mut Controller<P>, ns: &Namespace, ops: u64) -> Result<f64> {
    let mut qp = ctrl.create_io_queue_pair(CONCURRENCY as u16 + 1)?;
    let mut next = lbas(0x1234_5678, ns);
    let mut free: Vec<_> = (0..CONCURRENCY)
        .map(|_| ctrl.alloc_buffer(BLOCK))
        .collect::<Result<_, _>>()?;
    let (mut issued, mut done) = (0u64, 0u64);
    let t = Instant::now();
    while done < ops {
        while issued < ops {
            let Some(b) = free.pop() else { break };
            qp.submit_read(ns, next(), b, 0).map_err(|e| e.error)?;
            issued += 1;
        }
        qp.ring();
        let mut err = None;
        qp.wait(std::time::Duration::from_secs(5), |c| {
            done += 1;
            if let Err(e) = c.result {
                err.get_or_insert(e);
            }
            if let Some(b) = c.buffer {
                free.push(b);
            }
        })?;
        if let Some(e) = err {
            return Err(e.into());
        }
    }
    let secs = t.elapsed().as_secs_f64();
    ctrl.delete_io_queue_pair(qp)?;
    Ok(ops as f64 / secs)
}

fn report<P: Platform>(
    mut ctrl: Controller<P>,
    wake: &dyn Fn(Option<u16>) -> Result<Wakeup<P>>,
    what: &str,
    a: &Args,
) -> Result<()> {
    let ns = ctrl.namespace(1)?.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tokio_iops = rt.block_on(tokio_run(&mut ctrl, &ns, wake, a.ops))?;
    let cb_iops = callback_run(&mut ctrl, &ns, a.ops)?;
    println!(
        "{what}: {} random 4 KiB reads, {CONCURRENCY} at a time: tokio {:.0} IOPS, callback API {:.0} IOPS (tokio/callback {:.2})",
        a.ops,
        tokio_iops,
        cb_iops,
        tokio_iops / cb_iops
    );
    ctrl.shutdown()?;
    Ok(())
}

fn main() -> Result<()> {
    let a = args()?;
    let cfg = ControllerConfig {
        interrupts: !a.polled,
        ..ControllerConfig::default()
    };
    if a.device == "sim" {
        let sim = sim_backend::Simulator::new(if a.inline {
            sim_backend::SimConfig::default()
        } else {
            sim_backend::SimConfig::threaded()
        })?;
        let ctrl = Controller::new(sim.platform(), cfg)?;
        let p = sim.platform();
        let wake = move |v: Option<u16>| {
            Ok(match v {
                Some(_) => Wakeup::Thread(p.clone()),
                None => Wakeup::Polled,
            })
        };
        let what = if a.polled {
            "simulator, polled"
        } else {
            "simulator, MSI-X (waiting thread)"
        };
        report(ctrl, &wake, what, &a)
    } else {
        let opts = vfio_backend::VfioOptions::default();
        let p = vfio_backend::VfioPlatform::open(&a.device, &opts)
            .with_context(|| format!("opening {}", a.device))?;
        let ctrl = Controller::new(p.clone(), cfg)?;
        let wake = move |v: Option<u16>| {
            Ok(match v {
                Some(v) => Wakeup::EventFd(
                    p.irq()
                        .eventfd(v)
                        .with_context(|| format!("vector {v} has no eventfd"))?,
                ),
                None => Wakeup::Polled,
            })
        };
        let what = if a.polled {
            "vfio, polled"
        } else {
            "vfio, MSI-X eventfd"
        };
        report(ctrl, &wake, what, &a)
    }
}

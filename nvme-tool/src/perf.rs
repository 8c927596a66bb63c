//! `nvme-tool perf`: a queue-depth-driven load generator in the manner of SPDK's `perf`.
//! One I/O queue pair, `--queue-depth` commands kept in flight, batched doorbells (one SQ
//! doorbell per poll batch, one CQ doorbell per batch of completions), buffers reused (no
//! allocation per I/O), per-I/O latency recorded from submission to completion.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use clap::ValueEnum;
use nvme_core::hw::Platform;
use nvme_core::{Controller, DmaBuffer, IoCompletion, Namespace};

use crate::device::{self, DeviceSpec, Opened};
use crate::Irq;

/// Access pattern.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Workload {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Random mix of reads and writes (`--rwmixread` percent reads).
    Randrw,
}

/// Options of `perf`.
#[derive(clap::Args, Debug, Clone)]
pub struct PerfArgs {
    /// The device: `sim`, `sim:IMAGE`, `pci:0000:03:00.0`.
    device: DeviceSpec,
    /// Interrupt mode.
    #[arg(long, value_enum, default_value = "polled")]
    irq: Irq,
    /// Commands kept in flight.
    #[arg(short = 'q', long = "queue-depth", default_value_t = 32)]
    qd: usize,
    /// Bytes per I/O (a multiple of the LBA size).
    #[arg(short = 'o', long = "io-size", default_value_t = 4096)]
    io_size: usize,
    /// Access pattern.
    #[arg(short = 'w', long = "workload", value_enum, default_value = "randread")]
    workload: Workload,
    /// Percent reads for `randrw`.
    #[arg(short = 'M', long = "rwmixread", default_value_t = 70)]
    mix: u8,
    /// Seconds to run.
    #[arg(short = 't', long = "time", default_value_t = 5.0)]
    seconds: f64,
    /// Namespace ID.
    #[arg(short = 'n', long = "namespace-id", default_value_t = 1)]
    nsid: u32,
    /// Run the simulator on its own device thread (like a real device) instead of inline.
    #[arg(long)]
    sim_thread: bool,
}

/// Runs the benchmark.
///
/// # Errors
/// Device, bring-up or I/O failures.
pub fn run(a: PerfArgs) -> Result<()> {
    ensure!(a.qd >= 1, "--queue-depth must be at least 1");
    ensure!(a.seconds > 0.0, "--time must be positive");
    ensure!(a.mix <= 100, "--rwmixread is a percentage");
    match (&a.device, a.sim_thread) {
        (DeviceSpec::Sim(img), true) => {
            let sim = sim_backend::Simulator::new(device::sim_config(img.as_ref(), true)?)?;
            device::session(sim.platform(), a.irq, |c| bench(c, &a))
        }
        _ => match device::open(&a.device, a.irq)? {
            Opened::Sim(_s, p) => device::session(p, a.irq, |c| bench(c, &a)),
            Opened::Vfio(p) => device::session(p, a.irq, |c| bench(c, &a)),
        },
    }
}

/// A small deterministic generator (xorshift64*) for LBAs and read/write mixes.
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn bench<P: Platform>(c: &mut Controller<P>, a: &PerfArgs) -> Result<()> {
    let ns: Namespace = c.namespace(a.nsid)?.clone();
    let bs = ns.lba_size() as usize;
    if a.io_size % bs != 0 || a.io_size == 0 {
        bail!(
            "--io-size {} is not a multiple of the {bs}-byte LBA size",
            a.io_size
        );
    }
    if a.io_size > c.max_transfer() {
        bail!(
            "--io-size {} exceeds the maximum transfer of {} bytes (MDTS)",
            a.io_size,
            c.max_transfer()
        );
    }
    let blocks = (a.io_size / bs) as u64;
    let slots = ns.blocks() / blocks;
    ensure!(slots > 0, "the namespace is smaller than one I/O");
    let mut qp = c.create_io_queue_pair((a.qd + 1).min(u16::MAX as usize) as u16)?;
    let qd = a.qd.min(qp.depth());
    let mut bufs: Vec<Option<DmaBuffer<P>>> = Vec::with_capacity(qd);
    for _ in 0..qd {
        let mut b = c
            .alloc_buffer(a.io_size)
            .context("allocating I/O buffers")?;
        b.fill(0x5A);
        bufs.push(Some(b));
    }
    let mut start_ns = vec![Instant::now(); qd];
    let mut lat_ns: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut seq = 0u64;
    let (mut reads, mut writes, mut errors) = (0u64, 0u64, 0u64);
    let mut next_lba = |rng: &mut Rng| -> (u64, bool) {
        let write = match a.workload {
            Workload::Read | Workload::Randread => false,
            Workload::Write | Workload::Randwrite => true,
            Workload::Randrw => rng.next() % 100 >= a.mix as u64,
        };
        let slot = match a.workload {
            Workload::Read | Workload::Write => {
                seq = (seq + 1) % slots;
                seq
            }
            _ => rng.next() % slots,
        };
        (slot * blocks, write)
    };
    let submit = |qp: &mut nvme_core::IoQueuePair<P>,
                  tag: usize,
                  buf: DmaBuffer<P>,
                  lba: u64,
                  write: bool|
     -> Result<()> {
        let r = if write {
            qp.submit_write(&ns, lba, buf, tag as u64)
        } else {
            qp.submit_read(&ns, lba, buf, tag as u64)
        };
        r.map(|_| ())
            .map_err(|e| anyhow::anyhow!("submission failed: {}", e.error))
    };
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let t0 = Instant::now();
    for tag in 0..qd {
        let (lba, w) = next_lba(&mut rng);
        let b = bufs[tag].take().context("buffer")?;
        start_ns[tag] = Instant::now();
        submit(&mut qp, tag, b, lba, w)?;
        if w {
            writes += 1
        } else {
            reads += 1
        }
    }
    qp.ring();
    let mut done: Vec<IoCompletion<P>> = Vec::with_capacity(qd);
    let mut draining = false;
    while qp.outstanding() > 0 {
        done.clear();
        if a.irq == Irq::Msix {
            qp.wait(Duration::from_millis(100), |cpl| done.push(cpl))?;
        } else {
            qp.poll(|cpl| done.push(cpl))?;
        }
        if !draining && Instant::now() >= deadline {
            draining = true;
        }
        for cpl in done.drain(..) {
            let tag = cpl.tag as usize;
            let now = Instant::now();
            lat_ns.push(now.duration_since(start_ns[tag]).as_nanos() as u64);
            if let Err(e) = &cpl.result {
                errors += 1;
                if errors == 1 {
                    eprintln!("perf: I/O error: {e}");
                }
            }
            let Some(buf) = cpl.buffer else {
                bail!("a command timed out; the device did not complete it within the I/O timeout");
            };
            if draining {
                bufs[tag] = Some(buf);
                continue;
            }
            let (lba, w) = next_lba(&mut rng);
            start_ns[tag] = Instant::now();
            submit(&mut qp, tag, buf, lba, w)?;
            if w {
                writes += 1
            } else {
                reads += 1
            }
        }
        qp.ring();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    c.delete_io_queue_pair(qp)?;
    lat_ns.sort_unstable();
    let n = lat_ns.len().max(1);
    let pct = |p: f64| {
        lat_ns
            .get(((n as f64 * p) as usize).min(n - 1))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let avg = lat_ns.iter().sum::<u64>() as f64 / n as f64 / 1000.0;
    let iops = lat_ns.len() as f64 / elapsed;
    println!(
        "perf: {:?} {} B, queue depth {qd}, namespace {} ({} B LBAs), {:.1} s, {} mode",
        a.workload,
        a.io_size,
        ns.nsid(),
        bs,
        elapsed,
        if a.irq == Irq::Msix {
            "interrupt"
        } else {
            "polled"
        }
    );
    println!(
        "{:<28} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "Device", "IOPS", "MiB/s", "avg(us)", "min(us)", "p50(us)", "p99(us)", "max(us)"
    );
    println!(
        "{:<28} {:>12.0} {:>10.1} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
        a.device.to_string(),
        iops,
        iops * a.io_size as f64 / (1024.0 * 1024.0),
        avg,
        pct(0.0),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!("commands: {reads} reads, {writes} writes, {errors} errors");
    ensure!(errors == 0, "{errors} I/O commands failed");
    Ok(())
}

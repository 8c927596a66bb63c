//! `nvme-tool perf`: a queue-depth-driven load generator in the manner of SPDK's
//! `spdk_nvme_perf`. `--threads` threads, each with its own I/O queue pair, keep
//! `--queue-depth` commands in flight with batched doorbells (one SQ doorbell per poll batch,
//! one CQ doorbell per batch of completions) and reused buffers (no allocation per I/O).
//!
//! Latency runs from submission to the poll that reaped the completion. The clock is read
//! once per completion batch, not per completion: every completion of a batch gets the
//! batch's time, and the commands submitted in its place get it as their start. The error
//! is the time to process one batch (a few microseconds at most, and the same for every
//! command), so percentiles stay honest while a clock read per I/O is saved. Latencies go into
//! a log-bucket histogram (32 buckets per power of two, about 3 % resolution, bounded memory
//! whatever the run length), one for reads and one for writes.
//!
//! A progress line is printed every second on stderr when it is a terminal (or with
//! `--progress`); Ctrl-C stops the run and prints the summary of what was done. With MSI-X the
//! summary gives the interrupts the device signalled and the wake-ups the waiters paid, per
//! I/O (`Controller::interrupt_counts` before and after the run: eventfd counter values on
//! VFIO, vectors raised on the simulator).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::ValueEnum;
use nvme_core::hw::Platform;
use nvme_core::{Controller, ControllerConfig, DmaBuffer, FixedBuf, IoQueuePair, Namespace};
use serde_json::{json, Value};

use crate::device::{self, DeviceSpec, Opened};
use crate::exit::{DeviceOpen, OutputFormat};
use crate::{usage, Irq};

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
    /// Sequential mix of reads and writes (`--rwmixread` percent reads).
    Rw,
}

/// The longest run `-t` accepts (one year).
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// Options of `perf`.
#[derive(clap::Args, Debug, Clone)]
pub struct PerfArgs {
    /// The device: `sim`, `sim:IMAGE`, `pci:0000:03:00.0`.
    device: DeviceSpec,
    /// Interrupt mode.
    #[arg(long, value_enum, default_value = "polled")]
    irq: Irq,
    /// Commands kept in flight per thread.
    #[arg(short = 'q', long = "queue-depth", default_value_t = 32)]
    qd: usize,
    /// Bytes per I/O (a multiple of the LBA size).
    #[arg(short = 'o', long = "io-size", default_value_t = 4096)]
    io_size: usize,
    /// Access pattern.
    #[arg(short = 'w', long = "workload", value_enum, default_value = "randread")]
    workload: Workload,
    /// Percent reads for `randrw` and `rw`.
    #[arg(short = 'M', long = "rwmixread", default_value_t = 70)]
    mix: u8,
    /// Seconds to run (at most one year).
    #[arg(short = 't', long = "time", default_value_t = 5.0)]
    seconds: f64,
    /// Threads, each with its own I/O queue pair (like SPDK's core mask).
    #[arg(short = 'c', long = "threads", default_value_t = 1)]
    threads: usize,
    /// Namespace ID.
    #[arg(short = 'n', long = "namespace-id", default_value_t = 1)]
    nsid: u32,
    /// Run the simulator on its own device thread (like a real device) instead of inline.
    #[arg(long)]
    sim_thread: bool,
    /// Print the progress line every second even when stderr is not a terminal.
    #[arg(long)]
    progress: bool,
    /// Output format of the summary: normal or json.
    #[arg(long = "output-format", value_enum, default_value = "normal")]
    format: OutputFormat,
    /// Shadow doorbells (Doorbell Buffer Config, NVMe Base §5.8) when the controller offers
    /// them: `on` (the driver's default) or `off` (every doorbell is a register write).
    #[arg(long = "shadow-doorbells", value_enum, default_value = "on")]
    shadow: OnOff,
    /// I/O buffers: `registered` with the queue pair and named by index in each command
    /// (`IoQueuePair::submit_read_fixed`, the leanest path), or `owned`: moved into each
    /// request and back out with its completion (`IoQueuePair::submit_read`).
    #[arg(long = "buffers", value_enum, default_value = "registered")]
    buffers: BufferMode,
}

/// How `perf` hands its I/O buffers to the queue pair.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferMode {
    /// Registered once (`IoQueuePair::register_buffer`).
    Registered,
    /// Moved in and out with every command.
    Owned,
}

/// A worker's buffers, one per tag.
enum Bufs<P: Platform> {
    Owned(Vec<Option<DmaBuffer<P>>>),
    Registered(Vec<FixedBuf>),
}

/// One completion as the worker needs it.
struct Done<P: Platform> {
    tag: usize,
    result: nvme_core::Result<()>,
    /// An owned buffer coming back (`None` for a registered one, or after a timeout).
    buffer: Option<DmaBuffer<P>>,
}

/// A switch.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Set by the SIGINT handler.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Installs the SIGINT handler that ends the run with its summary.
fn catch_sigint() {
    // SAFETY: `on_sigint` is async-signal-safe (one relaxed atomic store); the sigaction
    // structure is zero-initialised and fully set before the call.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
}

/// A log-bucket latency histogram: values below 64 ns exactly, above that 32 buckets per
/// power of two, up to 2^44 ns (about 4.9 hours; larger values land in the last bucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

const SUB: u32 = 32;
const LINEAR: u64 = 64;
const TOP_EXP: u32 = 44;

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram (about 9 KiB).
    pub fn new() -> Self {
        Self {
            buckets: vec![0; Self::index(u64::MAX) + 1],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < LINEAR {
            return v as usize;
        }
        let e = (63 - v.leading_zeros()).min(TOP_EXP);
        let v = v.min((1u64 << (TOP_EXP + 1)) - 1);
        let sub = ((v >> (e - 5)) & u64::from(SUB - 1)) as usize;
        LINEAR as usize + (e as usize - 6) * SUB as usize + sub
    }

    /// The largest value that falls in bucket `i`.
    fn upper(i: usize) -> u64 {
        if i < LINEAR as usize {
            return i as u64;
        }
        let j = i - LINEAR as usize;
        let e = (j / SUB as usize) as u32 + 6;
        let sub = (j % SUB as usize) as u64;
        ((SUB as u64 + sub + 1) << (e - 5)) - 1
    }

    /// Records one value.
    pub fn record(&mut self, ns: u64) {
        self.buckets[Self::index(ns)] += 1;
        self.count += 1;
        self.sum += u128::from(ns);
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a += b;
        }
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean, in ns (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// Smallest and largest value (0, 0 when empty).
    pub fn min_max(&self) -> (u64, u64) {
        if self.count == 0 {
            (0, 0)
        } else {
            (self.min, self.max)
        }
    }

    /// The value at or below which `p` percent of the values lie (bucket upper bound, capped
    /// at the maximum seen).
    pub fn percentile(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        if p <= 0.0 {
            return self.min;
        }
        let want = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Self::upper(i).min(self.max).max(self.min);
            }
        }
        self.max
    }
}

/// The percentile ladder printed (as `spdk_nvme_perf -LL`'s summary).
pub const LADDER: [f64; 11] = [
    1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 99.999, 100.0,
];

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

/// Validates the options before any device is opened.
fn check(a: &PerfArgs) -> Result<()> {
    if a.qd == 0 {
        usage!("--queue-depth must be at least 1");
    }
    if a.threads == 0 || a.threads > 1024 {
        usage!("--threads must be 1..=1024");
    }
    if !a.seconds.is_finite() || a.seconds <= 0.0 || a.seconds > MAX_SECONDS {
        usage!(
            "--time {} is not a number of seconds in (0, {MAX_SECONDS}] (one year)",
            a.seconds
        );
    }
    if a.mix > 100 {
        usage!("--rwmixread is a percentage (0..=100)");
    }
    if a.io_size == 0 {
        usage!("--io-size must be positive");
    }
    Ok(())
}

/// Runs the benchmark.
///
/// # Errors
/// Bad options (exit 2), device or bring-up failures, I/O errors.
pub fn run(a: PerfArgs) -> Result<()> {
    check(&a)?;
    catch_sigint();
    let cfg = ControllerConfig {
        interrupts: a.irq == Irq::Msix,
        io_queue_pairs: u16::try_from(a.threads).unwrap_or(u16::MAX),
        shadow_doorbells: a.shadow == OnOff::On,
        ..ControllerConfig::default()
    };
    match (&a.device, a.sim_thread) {
        (DeviceSpec::Sim(img), true) => {
            let sim = sim_backend::Simulator::new(device::sim_config(img.as_ref(), true)?)
                .context(DeviceOpen("starting the simulator".into()))?;
            session(sim.platform(), cfg, &a)
        }
        _ => match device::open(&a.device, a.irq)? {
            Opened::Sim(_s, p) => session(p, cfg, &a),
            Opened::Vfio(p) => session(p, cfg, &a),
        },
    }
}

fn session<P: Platform>(p: Arc<P>, cfg: ControllerConfig, a: &PerfArgs) -> Result<()> {
    let name = p.name().to_string();
    let mut c = Controller::new(p, cfg)
        .context(DeviceOpen(format!("bringing up the controller at {name}")))?;
    let r = bench(&mut c, a);
    let s = c.shutdown().context("shutting down the controller");
    r.and(s)
}

/// Counts one thread shares with the progress line.
#[derive(Debug, Default)]
struct Live {
    ios: AtomicU64,
    errors: AtomicU64,
}

/// What one thread measured.
struct ThreadResult {
    reads: Histogram,
    writes: Histogram,
    errors: u64,
    first_error: Option<String>,
}

struct Job<'a> {
    ns: &'a Namespace,
    a: &'a PerfArgs,
    blocks: u64,
    slots: u64,
    seed: u64,
    live: &'a Live,
    stop: &'a AtomicBool,
    deadline: Instant,
}

fn worker<P: Platform>(qp: &mut IoQueuePair<P>, j: &Job<'_>) -> Result<ThreadResult> {
    let a = j.a;
    let qd = a.qd.min(qp.depth());
    let mut owned: Vec<Option<DmaBuffer<P>>> = Vec::with_capacity(qd);
    for _ in 0..qd {
        let mut b = qp
            .alloc_buffer(a.io_size)
            .context("allocating I/O buffers")?;
        b.fill(0x5A);
        owned.push(Some(b));
    }
    let mut bufs = match a.buffers {
        BufferMode::Owned => Bufs::Owned(owned),
        BufferMode::Registered => Bufs::Registered(
            owned
                .into_iter()
                .flatten()
                .map(|b| qp.register_buffer(b).map_err(|e| e.error))
                .collect::<nvme_core::Result<_>>()
                .context("registering I/O buffers")?,
        ),
    };
    let mut start = vec![Instant::now(); qd];
    let mut is_write = vec![false; qd];
    let mut res = ThreadResult {
        reads: Histogram::new(),
        writes: Histogram::new(),
        errors: 0,
        first_error: None,
    };
    let mut rng = Rng(j.seed);
    let mut seq = rng.next() % j.slots;
    let mut next = |rng: &mut Rng| -> (u64, bool) {
        let write = match a.workload {
            Workload::Read | Workload::Randread => false,
            Workload::Write | Workload::Randwrite => true,
            Workload::Randrw | Workload::Rw => rng.next() % 100 >= u64::from(a.mix),
        };
        let slot = match a.workload {
            Workload::Read | Workload::Write | Workload::Rw => {
                seq = (seq + 1) % j.slots;
                seq
            }
            _ => rng.next() % j.slots,
        };
        (slot * j.blocks, write)
    };
    let submit = |qp: &mut IoQueuePair<P>, bufs: &mut Bufs<P>, tag: usize, lba: u64, w: bool| {
        let r = match bufs {
            Bufs::Owned(v) => {
                let buf = v[tag].take().context("buffer")?;
                let r = if w {
                    qp.submit_write(j.ns, lba, buf, tag as u64)
                } else {
                    qp.submit_read(j.ns, lba, buf, tag as u64)
                };
                r.map_err(|e| e.error)
            }
            Bufs::Registered(ids) if w => qp.submit_write_fixed(j.ns, lba, ids[tag], tag as u64),
            Bufs::Registered(ids) => qp.submit_read_fixed(j.ns, lba, ids[tag], tag as u64),
        };
        r.map(|_| ())
            .map_err(|e| anyhow::anyhow!("submission failed: {e}"))
    };
    let now = Instant::now();
    for tag in 0..qd {
        let (lba, w) = next(&mut rng);
        start[tag] = now;
        is_write[tag] = w;
        submit(qp, &mut bufs, tag, lba, w)?;
    }
    qp.ring();
    let registered = matches!(bufs, Bufs::Registered(_));
    let mut done: Vec<Done<P>> = Vec::with_capacity(qd);
    let mut draining = false;
    while qp.outstanding() > 0 {
        done.clear();
        let owned_done = |c: nvme_core::IoCompletion<P>| Done {
            tag: c.tag as usize,
            result: c.result,
            buffer: c.buffer,
        };
        let fixed_done = |c: nvme_core::FixedCompletion| Done {
            tag: c.tag as usize,
            result: c.result,
            buffer: None,
        };
        match (a.irq == Irq::Msix, registered) {
            (true, false) => qp.wait(Duration::from_millis(100), |c| done.push(owned_done(c)))?,
            (false, false) => qp.poll(|c| done.push(owned_done(c)))?,
            (true, true) => {
                qp.wait_fixed(Duration::from_millis(100), |c| done.push(fixed_done(c)))?
            }
            (false, true) => qp.poll_fixed(|c| done.push(fixed_done(c)))?,
        };
        if done.is_empty() {
            continue;
        }
        // One clock read per batch (see the module docs).
        let now = Instant::now();
        if !draining && (now >= j.deadline || j.stop.load(Ordering::Relaxed)) {
            draining = true;
        }
        let n = done.len() as u64;
        for cpl in done.drain(..) {
            let tag = cpl.tag;
            let lat = now.duration_since(start[tag]).as_nanos() as u64;
            if is_write[tag] {
                res.writes.record(lat);
            } else {
                res.reads.record(lat);
            }
            if let Err(e) = &cpl.result {
                if matches!(e, nvme_core::Error::Timeout { .. }) {
                    anyhow::bail!(
                        "a command timed out; the device did not complete it within the I/O timeout"
                    );
                }
                res.errors += 1;
                j.live.errors.fetch_add(1, Ordering::Relaxed);
                res.first_error.get_or_insert_with(|| e.to_string());
            }
            if let Bufs::Owned(v) = &mut bufs {
                let Some(buf) = cpl.buffer else {
                    anyhow::bail!("a command ended without its buffer");
                };
                v[tag] = Some(buf);
            }
            if draining {
                continue;
            }
            let (lba, w) = next(&mut rng);
            start[tag] = now;
            is_write[tag] = w;
            submit(qp, &mut bufs, tag, lba, w)?;
        }
        j.live.ios.fetch_add(n, Ordering::Relaxed);
        qp.ring();
    }
    Ok(res)
}

fn bench<P: Platform>(c: &mut Controller<P>, a: &PerfArgs) -> Result<()> {
    let ns: Namespace = c.namespace(a.nsid)?.clone();
    let bs = ns.lba_size() as usize;
    if a.io_size % bs != 0 {
        usage!(
            "--io-size {} is not a multiple of the {bs}-byte LBA size",
            a.io_size
        );
    }
    if a.io_size > c.max_transfer() {
        usage!(
            "--io-size {} exceeds the maximum transfer of {} bytes (MDTS)",
            a.io_size,
            c.max_transfer()
        );
    }
    let granted = usize::from(c.granted_queue_pairs());
    if a.threads > granted {
        usage!(
            "--threads {}: the controller granted {granted} I/O queue pair(s), one per thread",
            a.threads
        );
    }
    let blocks = (a.io_size / bs) as u64;
    let slots = ns.blocks() / blocks;
    if slots == 0 {
        usage!("the namespace is smaller than one I/O");
    }
    let mut pairs = Vec::with_capacity(a.threads);
    for _ in 0..a.threads {
        pairs.push(c.create_io_queue_pair((a.qd + 1).min(u16::MAX as usize) as u16)?);
    }
    let qd = a.qd.min(pairs[0].depth());
    let live: Vec<Live> = (0..a.threads).map(|_| Live::default()).collect();
    let stop = AtomicBool::new(false);
    let show_progress = {
        use std::io::IsTerminal as _;
        a.progress || std::io::stderr().is_terminal()
    };
    let irq0 = c.interrupt_counts();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(a.seconds);
    let results: Vec<Result<ThreadResult>> = std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .iter_mut()
            .enumerate()
            .map(|(i, qp)| {
                let job = Job {
                    ns: &ns,
                    a,
                    blocks,
                    slots,
                    seed: 0x9E37_79B9_7F4A_7C15
                        ^ (i as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F),
                    live: &live[i],
                    stop: &stop,
                    deadline,
                };
                s.spawn(move || worker(qp, &job))
            })
            .collect();
        let mut last = (Instant::now(), 0u64);
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
            if INTERRUPTED.load(Ordering::Relaxed) {
                stop.store(true, Ordering::Relaxed);
            }
            if show_progress && last.0.elapsed() >= Duration::from_secs(1) {
                let ios: u64 = live.iter().map(|l| l.ios.load(Ordering::Relaxed)).sum();
                let errors: u64 = live.iter().map(|l| l.errors.load(Ordering::Relaxed)).sum();
                let dt = last.0.elapsed().as_secs_f64();
                let iops = (ios - last.1) as f64 / dt;
                eprintln!(
                    "perf: {:>6.1} s  {:>12.0} IOPS  {:>10.1} MiB/s  {errors} errors",
                    t0.elapsed().as_secs_f64(),
                    iops,
                    iops * a.io_size as f64 / (1 << 20) as f64
                );
                last = (Instant::now(), ios);
            }
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a perf thread panicked")))
            })
            .collect()
    });
    let elapsed = t0.elapsed().as_secs_f64();
    // Doorbell register (MMIO) writes and shadow-only updates of the I/O queues.
    let mut doorbells = (0u64, 0u64);
    for qp in pairs {
        let st = qp.stats();
        doorbells.0 += st.sq_doorbells + st.cq_doorbells;
        doorbells.1 += st.shadow_only_doorbells;
        c.delete_io_queue_pair(qp)?;
    }
    let mut reads = Histogram::new();
    let mut writes = Histogram::new();
    let mut errors = 0;
    let mut first_error = None;
    for r in results {
        let r = r?;
        reads.merge(&r.reads);
        writes.merge(&r.writes);
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    let interrupted = INTERRUPTED.load(Ordering::Relaxed);
    let irqs = match (a.irq, c.interrupt_counts(), irq0) {
        (Irq::Msix, Some(after), Some(before)) => Some(after.since(before)),
        _ => None,
    };
    let summary = Summary {
        irqs,
        doorbells,
        shadow: c.stats().shadow_doorbells,
        a,
        ns: &ns,
        qd,
        elapsed,
        reads: &reads,
        writes: &writes,
        errors,
        interrupted,
    };
    if a.format == OutputFormat::Json {
        crate::exit::print_json(&summary.json());
    } else {
        summary.print();
    }
    if errors > 0 {
        anyhow::bail!(
            "{errors} I/O commands failed (first: {})",
            first_error.unwrap_or_default()
        );
    }
    if interrupted {
        anyhow::bail!("interrupted (SIGINT); the summary covers the run until then");
    }
    Ok(())
}

struct Summary<'a> {
    a: &'a PerfArgs,
    ns: &'a Namespace,
    qd: usize,
    elapsed: f64,
    reads: &'a Histogram,
    writes: &'a Histogram,
    errors: u64,
    interrupted: bool,
    /// Interrupts during the run (MSI-X mode, when the backend counts them).
    irqs: Option<nvme_core::hw::InterruptCounts>,
    /// Doorbell register writes and shadow-only doorbell updates of the I/O queues.
    doorbells: (u64, u64),
    /// The controller took the shadow doorbell buffers (Doorbell Buffer Config succeeded).
    shadow: bool,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl Summary<'_> {
    fn side(&self, h: &Histogram) -> Value {
        let iops = h.count() as f64 / self.elapsed;
        let (min, max) = h.min_max();
        let pct: serde_json::Map<String, Value> = LADDER
            .iter()
            .map(|&p| (format!("{p}"), Value::from(us(h.percentile(p)))))
            .collect();
        json!({
            "ios": h.count(), "iops": iops,
            "mib_per_s": iops * self.a.io_size as f64 / (1 << 20) as f64,
            "latency_us": { "avg": h.mean() / 1000.0, "min": us(min), "max": us(max), "percentiles": pct },
        })
    }

    fn json(&self) -> Value {
        let mut v = json!({
            "device": self.a.device.to_string(), "workload": format!("{:?}", self.a.workload).to_lowercase(),
            "io_size": self.a.io_size, "queue_depth": self.qd, "threads": self.a.threads,
            "namespace": self.ns.nsid(), "lba_size": self.ns.lba_size(),
            "seconds": self.elapsed, "interrupt_mode": self.a.irq == Irq::Msix,
            "registered_buffers": self.a.buffers == BufferMode::Registered,
            "errors": self.errors, "interrupted": self.interrupted,
        });
        if self.reads.count() > 0 {
            v["read"] = self.side(self.reads);
        }
        if self.writes.count() > 0 {
            v["write"] = self.side(self.writes);
        }
        let mut all = self.reads.clone();
        all.merge(self.writes);
        v["total"] = self.side(&all);
        let ios = all.count().max(1) as f64;
        v["doorbells"] = json!({
            "shadow": self.shadow,
            "register_writes": self.doorbells.0, "shadow_only": self.doorbells.1,
            "register_writes_per_io": self.doorbells.0 as f64 / ios,
        });
        if let Some(i) = self.irqs {
            v["interrupts"] = json!({
                "fired": i.fired, "wakeups": i.wakeups,
                "fired_per_io": i.fired as f64 / ios, "wakeups_per_io": i.wakeups as f64 / ios,
            });
        }
        v
    }

    fn print(&self) {
        let a = self.a;
        println!(
            "perf: {:?} {} B, queue depth {} × {} thread(s), namespace {} ({} B LBAs), {:.1} s, {} mode, {} buffers{}",
            a.workload,
            a.io_size,
            self.qd,
            a.threads,
            self.ns.nsid(),
            self.ns.lba_size(),
            self.elapsed,
            if a.irq == Irq::Msix { "interrupt" } else { "polled" },
            match a.buffers {
                BufferMode::Registered => "registered",
                BufferMode::Owned => "owned",
            },
            if self.interrupted { " (interrupted)" } else { "" }
        );
        println!(
            "{:<28} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "Device", "IOPS", "MiB/s", "avg(us)", "min(us)", "p50(us)", "p99(us)", "max(us)"
        );
        let mut all = self.reads.clone();
        all.merge(self.writes);
        for (label, h) in [
            ("read", self.reads),
            ("write", self.writes),
            ("total", &all),
        ] {
            if h.count() == 0
                || (label == "total" && (self.reads.count() == 0 || self.writes.count() == 0))
            {
                continue;
            }
            let iops = h.count() as f64 / self.elapsed;
            let (min, max) = h.min_max();
            println!(
                "{:<28} {:>12.0} {:>10.1} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                format!("{} {label}", a.device),
                iops,
                iops * a.io_size as f64 / (1 << 20) as f64,
                h.mean() / 1000.0,
                us(min),
                us(h.percentile(50.0)),
                us(h.percentile(99.0)),
                us(max)
            );
        }
        for (label, h) in [("read", self.reads), ("write", self.writes)] {
            if h.count() == 0 {
                continue;
            }
            println!("\nLatency summary ({label}, {} I/Os):", h.count());
            for p in LADDER {
                println!("  {:>10.5}% : {:>12.3} us", p, us(h.percentile(p)));
            }
        }
        println!(
            "\ncommands: {} reads, {} writes, {} errors",
            self.reads.count(),
            self.writes.count(),
            self.errors
        );
        let ios = (self.reads.count() + self.writes.count()).max(1) as f64;
        println!(
            "doorbells: {} register writes ({:.3} per I/O), {} shadow-only updates; shadow doorbells {}",
            self.doorbells.0,
            self.doorbells.0 as f64 / ios,
            self.doorbells.1,
            if self.shadow { "on" } else { "off" }
        );
        if let Some(i) = self.irqs {
            println!(
                "interrupts: {} signalled ({:.3} per I/O), {} wake-ups ({:.3} per I/O)",
                i.fired,
                i.fired as f64 / ios,
                i.wakeups,
                i.wakeups as f64 / ios
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..1_000_000u64).step_by(7).chain([u64::MAX / 2, u64::MAX]) {
            let i = Histogram::index(v);
            assert!(i >= last, "index not monotonic at {v}");
            last = i;
            let up = Histogram::upper(i);
            if v < 1 << 44 {
                assert!(up >= v, "{v} above its bucket's bound {up}");
                // 32 sub-buckets per power of two: the bound is within 1/32 of the value.
                assert!(up - v <= v / 32 + 1, "{v}: bound {up} too loose");
            }
        }
        assert_eq!(
            Histogram::new().buckets.len(),
            Histogram::index(u64::MAX) + 1
        );
    }

    #[test]
    fn percentiles_follow_the_data() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.percentile(50.0);
        assert!((4_900_000..=5_200_000).contains(&p50), "{p50}");
        let p99 = h.percentile(99.0);
        assert!((9_800_000..=10_000_000).contains(&p99), "{p99}");
        assert_eq!(h.percentile(100.0), 10_000_000);
        assert_eq!(h.percentile(0.0), 1000);
        assert_eq!(h.min_max(), (1000, 10_000_000));
        let mut g = Histogram::new();
        g.record(7);
        g.merge(&h);
        assert_eq!(g.count(), 10_001);
        assert_eq!(g.min_max().0, 7);
        assert_eq!(Histogram::new().percentile(50.0), 0);
    }
}

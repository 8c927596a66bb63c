//! `nvme-tool soak`: a long-running data-integrity load. `--threads` threads, each with its
//! own I/O queue pair and its own disjoint share of the namespace, keep `--queue-depth`
//! random reads and writes of `--io-size` bytes in flight. Every block written carries a
//! header (magic, namespace ID, LBA, write generation) and a pattern derived from those three,
//! and every read is checked block by block against what the tool last completed for that LBA.
//!
//! Rules that make the expectations exact:
//! - a thread only touches its own slots, and never has two requests on one slot in flight;
//! - a write that completed successfully sets the slot's generation;
//! - a write that failed or timed out makes the slot uncertain: a read may return the old or
//!   any of the failed generations, until a write to the slot completes successfully;
//! - a slot whose request timed out is not touched again until the device has let go of the
//!   command (its CID is no longer outstanding on the pair), so a late write cannot overtake
//!   a newer one; then the failed request is retried. A command still held one I/O timeout
//!   after its timeout report is aborted (Abort, NVMe Base §5.1.1) by the main thread, which
//!   owns the admin queue; a controller that honours the Abort completes it, and the slot
//!   comes back.
//!
//! Every request must end: one that has neither completed nor failed (a timeout report counts
//! as failing) within the I/O timeout plus a margin is counted as lost. With `--faults RATE` on
//! the simulator the injector's random mode is on: dropped and delayed completions, media
//! errors and lost doorbell writes at RATE per million commands.
//!
//! The run ends with one summary line on stdout:
//! `soak: N I/Os, N verified, N mismatches, N lost, N faults injected, N recovered`, where
//! - *I/Os*: requests submitted, retries included;
//! - *verified*: reads whose every block matched a generation the tool knew for certain
//!   (reads of never-written slots, or of uncertain slots whose old content is unknown, are
//!   not counted);
//! - *mismatches*: reads with at least one block that matched none of the accepted
//!   generations (header or pattern);
//! - *lost*: requests that did not end within the I/O timeout plus the margin;
//! - *faults injected*: what the simulator's injector reports (0 on a PCI device);
//! - *recovered*: requests that failed (an error status or a timeout) and whose retry, on the
//!   same slot, completed successfully; a timed-out request is retried only after the device
//!   gave its slot back, so it counts only if the slot came back *and* the retry succeeded;
//!   plus, with `--recovery driver` (the default), the requests the driver itself resubmitted
//!   after an Abort or a controller reset (`QueueStats::retried`), which the tool never saw
//!   fail.
//!
//! The exit status is 5 (miscompare) on any mismatch, else 1 on a lost request.

use std::collections::VecDeque;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use nvme_core::hw::Platform;
use nvme_core::{
    Controller, ControllerConfig, DmaBuffer, Error, IoCompletion, IoQueuePair, Namespace,
};
use sim_backend::{RandomFault, Simulator};

use crate::device::{self, DeviceSpec, Opened};
use crate::Irq;

/// Options of `soak`.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// The device: `sim`, `sim:IMAGE`, `pci:0000:03:00.0`.
    pub device: DeviceSpec,
    /// Threads, each with its own I/O queue pair and LBA range.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Requests each thread keeps in flight.
    #[arg(short = 'q', long = "queue-depth", default_value_t = 16)]
    pub qd: usize,
    /// Bytes per I/O (a multiple of the LBA size).
    #[arg(short = 'o', long = "io-size", default_value_t = 4096)]
    pub io_size: usize,
    /// Stop after this many new requests (in total, retries not counted).
    #[arg(long)]
    pub ios: Option<u64>,
    /// Stop after this many seconds (default 10 when `--ios` is not given).
    #[arg(short = 't', long = "time")]
    pub seconds: Option<f64>,
    /// Inject recoverable faults at this rate per million commands (simulator only).
    #[arg(long = "faults", value_name = "RATE")]
    pub faults: Option<u32>,
    /// Seed of the workload and of the fault injector.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// I/O timeout in milliseconds.
    #[arg(long = "io-timeout-ms", default_value_t = 1000)]
    pub io_timeout_ms: u64,
    /// Percent writes.
    #[arg(long = "write-percent", default_value_t = 50)]
    pub write_percent: u8,
    /// Namespace ID.
    #[arg(short = 'n', long = "namespace-id", default_value_t = 1)]
    pub nsid: u32,
    /// First block of the region the soak reads and writes (the rest is not touched).
    #[arg(long = "start-block", default_value_t = 0)]
    pub start_block: u64,
    /// Blocks in that region (default: to the end of the namespace).
    #[arg(long = "block-count")]
    pub block_count: Option<u64>,
    /// Interrupt mode.
    #[arg(long, value_enum, default_value = "polled")]
    pub irq: Irq,
    /// Run the simulator on its own device thread (like a real device) instead of inline.
    #[arg(long)]
    pub sim_thread: bool,
    /// Who recovers from timeouts and failures: the driver's recovery policy (Abort, reset,
    /// re-created queue pairs, retries; the main thread calls `Controller::recover`), or the
    /// tool itself on reported timeouts (Aborts only).
    #[arg(long, value_enum, default_value = "driver")]
    pub recovery: RecoveryMode,
}

/// Who recovers (`--recovery`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// nvme-core's recovery policy, with the Abort timeout equal to the I/O timeout.
    Driver,
    /// Timeouts reported as they happen; the tool aborts held commands.
    Report,
}

/// The counts of one run (summed over threads).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Requests submitted, retries included.
    pub ios: u64,
    /// Reads whose blocks all matched a generation known for certain.
    pub verified: u64,
    /// Reads with a block that matched no accepted generation.
    pub mismatches: u64,
    /// Requests that did not end within the I/O timeout plus the margin.
    pub lost: u64,
    /// Faults the simulator injected.
    pub faults: u64,
    /// Failed requests whose retry on the same slot succeeded, plus `retried`.
    pub recovered: u64,
    /// Requests the driver's recovery resubmitted (after an Abort or a reset).
    pub retried: u64,
    /// Requests that completed with an error status.
    pub errors: u64,
    /// Requests reported as timed out.
    pub timeouts: u64,
    /// Queue pairs that died (controller reset).
    pub dead_pairs: u64,
}

impl Summary {
    fn add(&mut self, o: &Summary) {
        self.ios += o.ios;
        self.verified += o.verified;
        self.mismatches += o.mismatches;
        self.lost += o.lost;
        self.recovered += o.recovered;
        self.retried += o.retried;
        self.errors += o.errors;
        self.timeouts += o.timeouts;
        self.dead_pairs += o.dead_pairs;
    }

    /// The summary line.
    pub fn line(&self) -> String {
        format!(
            "soak: {} I/Os, {} verified, {} mismatches, {} lost, {} faults injected, {} recovered",
            self.ios, self.verified, self.mismatches, self.lost, self.faults, self.recovered
        )
    }
}

/// Runs `soak` and prints the summary.
///
/// # Errors
/// Bad options, device or bring-up failures, or a run with mismatches or lost requests.
pub fn run(a: SoakArgs) -> Result<()> {
    let t0 = Instant::now();
    let s = execute(&a)?;
    eprintln!(
        "soak: {:.1} s, {:.0} I/Os per second, {} errors, {} timeouts, {} dead queue pairs",
        t0.elapsed().as_secs_f64(),
        s.ios as f64 / t0.elapsed().as_secs_f64(),
        s.errors,
        s.timeouts,
        s.dead_pairs
    );
    println!("{}", s.line());
    if s.mismatches > 0 {
        return Err(anyhow::Error::new(crate::exit::Miscompare(format!(
            "{} mismatches, {} lost requests",
            s.mismatches, s.lost
        ))));
    }
    ensure!(s.lost == 0, "{} lost requests", s.lost);
    Ok(())
}

/// Runs the soak and returns its counts (without printing the summary line).
///
/// # Errors
/// As [`run`], except that mismatches and lost requests are only counted.
pub fn execute(a: &SoakArgs) -> Result<Summary> {
    ensure!(a.threads >= 1, "--threads must be at least 1");
    ensure!(a.qd >= 1, "--queue-depth must be at least 1");
    ensure!(a.write_percent <= 100, "--write-percent is a percentage");
    ensure!(a.io_timeout_ms >= 1, "--io-timeout-ms must be at least 1");
    if let Some(s) = a.seconds {
        ensure!(s > 0.0, "--time must be positive");
    }
    let io_timeout = Duration::from_millis(a.io_timeout_ms);
    let sim = match &a.device {
        DeviceSpec::Sim(img) if a.sim_thread => Some(
            Simulator::new(device::sim_config(img.as_ref(), true)?)
                .context("starting the simulator")?,
        ),
        DeviceSpec::Sim(_) => match device::open(&a.device, a.irq)? {
            Opened::Sim(s, _) => Some(s),
            Opened::Vfio(_) => None,
        },
        DeviceSpec::Pci(addr) => {
            if a.faults.is_some() {
                bail!("--faults needs the simulator (sim or sim:IMAGE): the device at {addr} cannot inject faults");
            }
            None
        }
    };
    let mut s = match &sim {
        Some(sim) => {
            if let Some(rate) = a.faults {
                sim.faults().random(
                    a.seed,
                    rate,
                    &[
                        RandomFault::Drop,
                        // Longer than the I/O timeout: the host times the command out, then
                        // the late completion gives the slot back.
                        RandomFault::Delay(io_timeout + Duration::from_millis(50)),
                        RandomFault::MediaError,
                        RandomFault::LostDoorbell,
                    ],
                );
            }
            session(sim.platform(), a, io_timeout)?
        }
        None => match device::open(&a.device, a.irq)? {
            Opened::Vfio(p) => session(p, a, io_timeout)?,
            Opened::Sim(_, p) => session(p, a, io_timeout)?,
        },
    };
    if let Some(sim) = &sim {
        s.faults = sim.faults().injected();
        sim.faults().clear();
    }
    Ok(s)
}

fn session<P>(p: Arc<P>, a: &SoakArgs, io_timeout: Duration) -> Result<Summary>
where
    P: Platform + Send + Sync + 'static,
{
    let name = p.name().to_string();
    let recovery = match a.recovery {
        RecoveryMode::Driver => nvme_core::RecoveryPolicy {
            abort_timeout: io_timeout,
            ..nvme_core::RecoveryPolicy::default()
        },
        RecoveryMode::Report => nvme_core::RecoveryPolicy::REPORT_ONLY,
    };
    let cfg = ControllerConfig {
        interrupts: a.irq == Irq::Msix,
        io_queue_pairs: u16::try_from(a.threads).context("too many threads")?,
        io_timeout,
        recovery,
        ..ControllerConfig::default()
    };
    let mut c =
        Controller::new(p, cfg).with_context(|| format!("bringing up the controller at {name}"))?;
    let r = soak(&mut c, a, io_timeout);
    let s = c.shutdown().context("shutting down the controller");
    let r = r?;
    s?;
    Ok(r)
}

fn soak<P>(c: &mut Controller<P>, a: &SoakArgs, io_timeout: Duration) -> Result<Summary>
where
    P: Platform + Send + Sync + 'static,
{
    // One queue pair per thread: never more threads than the controller granted pairs.
    let granted = usize::from(c.granted_queue_pairs());
    if a.threads > granted {
        eprintln!(
            "soak: {granted} thread(s) instead of {}: the controller granted {granted} I/O queue pair(s)",
            a.threads
        );
    }
    let a = &SoakArgs {
        threads: a.threads.min(granted).max(1),
        ..a.clone()
    };
    let ns: Namespace = c.namespace(a.nsid)?.clone();
    let bs = ns.lba_size() as usize;
    ensure!(
        a.io_size > 0 && a.io_size % bs == 0,
        "--io-size {} is not a multiple of the {bs}-byte LBA size",
        a.io_size
    );
    ensure!(
        a.io_size <= c.max_transfer(),
        "--io-size {} exceeds the maximum transfer of {} bytes (MDTS)",
        a.io_size,
        c.max_transfer()
    );
    let per_io = (a.io_size / bs) as u64;
    let region = crate::device::block_range(&ns, a.start_block, a.block_count)?;
    // The region starts on a slot boundary of its own: slot k covers blocks
    // start_block + k * per_io ...
    let slots = region / per_io;
    ensure!(
        slots >= a.threads as u64,
        "the namespace has {slots} I/O-sized slots, fewer than --threads {}",
        a.threads
    );
    // Entries beyond the depth absorb commands the device holds after a timeout.
    let entries = (2 * a.qd + 2).min(usize::from(u16::MAX)) as u16;
    let mut pairs = Vec::with_capacity(a.threads);
    for t in 0..a.threads {
        let qp = c
            .create_io_queue_pair(entries)
            .with_context(|| format!("creating the I/O queue pair of thread {t}"))?;
        pairs.push(qp);
    }
    let deadline = match (a.ios, a.seconds) {
        (Some(_), None) => None,
        (_, s) => Some(Instant::now() + Duration::from_secs_f64(s.unwrap_or(10.0))),
    };
    let budget = a.ios.unwrap_or(u64::MAX);
    let threads = a.threads as u64;
    let (tx, rx) = mpsc::channel::<(u16, u16)>();
    let (mut aborts, mut abort_errors) = (0u64, 0u64);
    let mut driver = DriverRecovery::default();
    let results: Vec<(Summary, IoQueuePair<P>)> = std::thread::scope(|sc| {
        let handles: Vec<_> = pairs
            .into_iter()
            .enumerate()
            .map(|(t, qp)| {
                let t = t as u64;
                let first = slots * t / threads;
                let last = slots * (t + 1) / threads;
                let quota = if budget == u64::MAX {
                    u64::MAX
                } else {
                    budget / threads + u64::from(t < budget % threads)
                };
                let w = Worker::new(
                    qp,
                    ns.clone(),
                    WorkerCfg {
                        thread: t,
                        first_slot: first,
                        base: a.start_block,
                        slots: (last - first) as usize,
                        per_io,
                        qd: a.qd,
                        io_size: a.io_size,
                        quota,
                        deadline,
                        io_timeout,
                        seed: a.seed,
                        write_percent: a.write_percent,
                        wait: a.irq == Irq::Msix,
                    },
                    tx.clone(),
                );
                sc.spawn(move || w.run())
            })
            .collect();
        drop(tx);
        // This thread owns the admin queue: it drives the driver's recovery, or aborts what
        // the workers find stuck.
        while !handles.iter().all(|h| h.is_finished()) {
            if a.recovery == RecoveryMode::Driver {
                match c.recover() {
                    Ok(r) => {
                        driver.aborts += u64::from(r.aborts);
                        driver.aborted += u64::from(r.aborted);
                        driver.resets += u64::from(r.resets);
                        driver.recreated += u64::from(r.recreated);
                        driver.failed += u64::from(r.failed);
                    }
                    Err(e) => {
                        driver.errors += 1;
                        if driver.errors <= 3 {
                            eprintln!("soak: recovery: {e}");
                        }
                    }
                }
                while rx.try_recv().is_ok() {}
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            match rx.recv_timeout(Duration::from_millis(10)) {
                Ok((qid, cid)) => match c.abort(qid, cid) {
                    Ok(_) => aborts += 1,
                    Err(e) => {
                        abort_errors += 1;
                        if abort_errors <= 3 {
                            eprintln!("soak: Abort of CID {cid:#06x} on SQ {qid}: {e}");
                        }
                    }
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
            }
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("soak thread panicked"))
            .collect()
    });
    if aborts + abort_errors > 0 {
        eprintln!("soak: {aborts} Abort commands sent for commands the device held, {abort_errors} failed");
    }
    if driver != DriverRecovery::default() {
        eprintln!(
            "soak: driver recovery: {} Aborts sent ({} aborted), {} resets, {} queue pairs re-created, {} not re-created, {} recovery errors",
            driver.aborts, driver.aborted, driver.resets, driver.recreated, driver.failed, driver.errors
        );
    }
    let mut total = Summary::default();
    for (s, qp) in results {
        total.add(&s);
        // Requests the driver's recovery resubmitted (after an Abort or a reset) and that
        // ended: recovered without the tool seeing a failure.
        total.retried += qp.stats().retried;
        total.recovered += qp.stats().retried;
        let qid = qp.qid();
        if let Err(e) = c.delete_io_queue_pair(qp) {
            eprintln!("soak: deleting I/O queue pair {qid}: {e}");
        }
    }
    Ok(total)
}

/// What the driver's recovery did during a run (`Controller::recover` reports, summed).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct DriverRecovery {
    aborts: u64,
    aborted: u64,
    resets: u64,
    recreated: u64,
    failed: u64,
    errors: u64,
}

/// Header of every block written: magic, namespace ID, LBA, generation (little endian).
const MAGIC: u32 = 0x4B41_4F53; // "SOAK"
const HEADER: usize = 24;

/// The pattern of one block: a header, then a sequence derived from (nsid, lba, gen).
fn fill_block(out: &mut [u8], nsid: u32, lba: u64, gen: u64) {
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&nsid.to_le_bytes());
    out[8..16].copy_from_slice(&lba.to_le_bytes());
    out[16..24].copy_from_slice(&gen.to_le_bytes());
    let mut x = seed_of(nsid, lba, gen);
    for ch in out[HEADER..].chunks_mut(8) {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let b = (x ^ (x >> 29)).to_le_bytes();
        ch.copy_from_slice(&b[..ch.len()]);
    }
}

fn seed_of(nsid: u32, lba: u64, gen: u64) -> u64 {
    let mut z = lba ^ gen.rotate_left(24) ^ u64::from(nsid).rotate_left(52) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generation a block holds, if its header and pattern are intact and name `nsid` and
/// `lba`.
fn block_generation(blk: &[u8], nsid: u32, lba: u64, scratch: &mut [u8]) -> Option<u64> {
    let word = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&blk[r]);
        u64::from_le_bytes(b)
    };
    if word(0..4) != u64::from(MAGIC) || word(4..8) != u64::from(nsid) || word(8..16) != lba {
        return None;
    }
    let gen = word(16..24);
    fill_block(scratch, nsid, lba, gen);
    (scratch[..] == blk[..]).then_some(gen)
}

use crate::perf::Rng;

/// What the tool knows of one slot.
#[derive(Debug, Default, Clone)]
struct Slot {
    /// Generation last written successfully (0: never, content unknown).
    gen: u64,
    /// Generations of writes that failed or timed out since: the slot may hold any of them.
    maybe: Vec<u64>,
    /// A request is in flight, waiting for a retry, or held by the device.
    busy: bool,
}

struct Req {
    slot: usize,
    write: bool,
    gen: u64,
    start: Instant,
    /// Failed attempts before this one.
    tries: u8,
    lost: bool,
}

/// A failed request to run again.
#[derive(Clone, Copy)]
struct Retry {
    slot: usize,
    write: bool,
    tries: u8,
}

/// A timed-out command the device still holds.
struct Held {
    cid: u16,
    since: Instant,
    retry: Retry,
    abort_sent: bool,
}

struct WorkerCfg {
    thread: u64,
    first_slot: u64,
    /// First block of the soak's region.
    base: u64,
    slots: usize,
    per_io: u64,
    qd: usize,
    io_size: usize,
    quota: u64,
    deadline: Option<Instant>,
    io_timeout: Duration,
    seed: u64,
    write_percent: u8,
    wait: bool,
}

/// Most retries of one failed request.
const MAX_TRIES: u8 = 4;

struct Worker<P: Platform> {
    qp: IoQueuePair<P>,
    ns: Namespace,
    cfg: WorkerCfg,
    slots: Vec<Slot>,
    tags: Vec<Option<Req>>,
    bufs: Vec<Option<DmaBuffer<P>>>,
    retries: VecDeque<Retry>,
    held: Vec<Held>,
    rng: Rng,
    next_gen: u64,
    submitted_new: u64,
    s: Summary,
    data: Vec<u8>,
    scratch: Vec<u8>,
    dead: bool,
    mismatch_reports: u32,
    /// Asks the thread that owns the admin queue to abort a held command.
    aborts: mpsc::Sender<(u16, u16)>,
}

impl<P: Platform> Worker<P> {
    fn new(
        qp: IoQueuePair<P>,
        ns: Namespace,
        cfg: WorkerCfg,
        aborts: mpsc::Sender<(u16, u16)>,
    ) -> Self {
        let bs = ns.lba_size() as usize;
        Self {
            qp,
            slots: vec![Slot::default(); cfg.slots],
            tags: (0..cfg.qd).map(|_| None).collect(),
            bufs: (0..cfg.qd).map(|_| None).collect(),
            retries: VecDeque::new(),
            held: Vec::new(),
            rng: Rng((cfg.seed ^ (cfg.thread + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1),
            next_gen: 1,
            submitted_new: 0,
            s: Summary::default(),
            data: vec![0; cfg.io_size],
            scratch: vec![0; bs],
            dead: false,
            mismatch_reports: 0,
            aborts,
            ns,
            cfg,
        }
    }

    fn margin(&self) -> Duration {
        self.cfg.io_timeout.max(Duration::from_secs(2))
    }

    fn producing(&self, now: Instant) -> bool {
        self.submitted_new < self.cfg.quota && self.cfg.deadline.is_none_or(|d| now < d)
    }

    fn run(mut self) -> (Summary, IoQueuePair<P>) {
        let mut done: Vec<IoCompletion<P>> = Vec::with_capacity(self.cfg.qd);
        loop {
            let now = Instant::now();
            let producing = self.producing(now);
            if !self.dead {
                self.release_held(now);
                self.submit_all(producing);
                self.qp.ring();
            }
            let in_flight = self.tags.iter().filter(|t| t.is_some()).count();
            let waiting_held = self
                .held
                .iter()
                .any(|h| now.duration_since(h.since) < self.cfg.io_timeout + self.margin());
            let all_lost = self.tags.iter().flatten().all(|r| r.lost);
            let retry_pending = !self.retries.is_empty() && !self.dead;
            if !producing
                && (in_flight == 0 || all_lost)
                && !retry_pending
                && (!waiting_held || self.dead)
            {
                break;
            }
            if self.dead && in_flight == 0 {
                break;
            }
            if in_flight == 0
                && !self.dead
                && self.qp.outstanding() >= self.qp.depth()
                && !waiting_held
            {
                // Every entry is taken by commands the device holds and will not give back
                // without an Abort or a reset.
                eprintln!(
                    "soak: thread {}: queue pair {} is full of commands the device holds; this thread stops",
                    self.cfg.thread,
                    self.qp.qid()
                );
                self.s.dead_pairs += 1;
                break;
            }
            if self.dead {
                std::thread::sleep(Duration::from_millis(1));
            }
            done.clear();
            let r = if self.cfg.wait || in_flight == 0 {
                self.qp.wait(
                    Duration::from_millis(if in_flight == 0 { 5 } else { 50 }),
                    |c| done.push(c),
                )
            } else {
                self.qp.poll(|c| done.push(c))
            };
            if let Err(e) = r {
                eprintln!(
                    "soak: thread {}: queue pair {}: {e}",
                    self.cfg.thread,
                    self.qp.qid()
                );
                self.kill();
                continue;
            }
            for cpl in done.drain(..) {
                self.complete(cpl);
            }
            self.check_lost(Instant::now());
        }
        (self.s, self.qp)
    }

    /// Marks the pair dead: nothing more is submitted; requests still in flight end as lost
    /// if they never come back.
    fn kill(&mut self) {
        if !self.dead {
            self.dead = true;
            self.s.dead_pairs += 1;
            eprintln!(
                "soak: thread {}: queue pair {} is dead; its requests end here (a later version re-creates the pair after recovery)",
                self.cfg.thread,
                self.qp.qid()
            );
        }
    }

    fn check_lost(&mut self, now: Instant) {
        let limit = self.cfg.io_timeout + self.margin();
        for r in self.tags.iter_mut().flatten() {
            if !r.lost && now.duration_since(r.start) > limit {
                r.lost = true;
                self.s.lost += 1;
                eprintln!(
                    "soak: thread {}: a {} of slot {} neither completed nor failed within {} ms",
                    self.cfg.thread,
                    if r.write { "write" } else { "read" },
                    r.slot,
                    limit.as_millis()
                );
            }
        }
    }

    /// Timed-out commands the device has let go of: their slots are retried. Those still
    /// held one more I/O timeout after they timed out are aborted (§5.1.1), which gives the
    /// slot back on a controller that honours the Abort.
    fn release_held(&mut self, now: Instant) {
        if self.held.is_empty() {
            return;
        }
        let qid = self.qp.qid();
        for h in &mut self.held {
            if !h.abort_sent && now.duration_since(h.since) >= self.cfg.io_timeout {
                h.abort_sent = true;
                let _ = self.aborts.send((qid, h.cid));
            }
        }
        let qp = &self.qp;
        let (gone, keep): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| !qp.is_outstanding(h.cid));
        self.held = keep;
        for h in gone {
            self.retries.push_back(h.retry);
        }
    }

    fn submit_all(&mut self, producing: bool) {
        for tag in 0..self.tags.len() {
            if self.tags[tag].is_some() {
                continue;
            }
            if self.qp.outstanding() >= self.qp.depth() {
                return;
            }
            let (slot, write, tries) = if let Some(r) = self.retries.pop_front() {
                (r.slot, r.write, r.tries)
            } else if producing {
                let Some(slot) = self.pick_slot() else {
                    return;
                };
                let write = self.rng.next() % 100 < u64::from(self.cfg.write_percent);
                self.submitted_new += 1;
                (slot, write, 0)
            } else {
                return;
            };
            if !self.submit(tag, slot, write, tries) {
                return;
            }
        }
    }

    fn pick_slot(&mut self) -> Option<usize> {
        for _ in 0..16 {
            let s = (self.rng.next() % self.slots.len() as u64) as usize;
            if !self.slots[s].busy {
                return Some(s);
            }
        }
        None
    }

    fn lba(&self, slot: usize) -> u64 {
        self.cfg.base + (self.cfg.first_slot + slot as u64) * self.cfg.per_io
    }

    /// Submits one request on `tag`; false if the pair cannot take it now.
    fn submit(&mut self, tag: usize, slot: usize, write: bool, tries: u8) -> bool {
        let mut buf = match self.bufs[tag].take() {
            Some(b) => b,
            None => match self.qp.alloc_buffer(self.cfg.io_size) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("soak: thread {}: allocating a buffer: {e}", self.cfg.thread);
                    self.retries.push_front(Retry { slot, write, tries });
                    return false;
                }
            },
        };
        let lba = self.lba(slot);
        let gen = if write {
            let g = self.next_gen;
            self.next_gen += 1;
            let bs = self.ns.lba_size() as usize;
            let nsid = self.ns.nsid();
            for (i, blk) in self.data.chunks_mut(bs).enumerate() {
                fill_block(blk, nsid, lba + i as u64, g);
            }
            if let Err(e) = buf.write(0, &self.data) {
                eprintln!("soak: thread {}: filling a buffer: {e}", self.cfg.thread);
            }
            g
        } else {
            0
        };
        let r = if write {
            self.qp.submit_write(&self.ns, lba, buf, tag as u64)
        } else {
            self.qp.submit_read(&self.ns, lba, buf, tag as u64)
        };
        match r {
            Ok(_) => {
                self.slots[slot].busy = true;
                self.s.ios += 1;
                self.tags[tag] = Some(Req {
                    slot,
                    write,
                    gen,
                    start: Instant::now(),
                    tries,
                    lost: false,
                });
                true
            }
            Err(e) => {
                self.bufs[tag] = e.buffer;
                match e.error {
                    Error::QueueFull { .. } => {}
                    Error::ControllerReset => self.kill(),
                    other => {
                        eprintln!(
                            "soak: thread {}: submission failed: {other}",
                            self.cfg.thread
                        );
                        self.kill();
                    }
                }
                self.retries.push_front(Retry { slot, write, tries });
                false
            }
        }
    }

    fn complete(&mut self, cpl: IoCompletion<P>) {
        let tag = cpl.tag as usize;
        let Some(req) = self.tags.get_mut(tag).and_then(Option::take) else {
            return;
        };
        let slot = req.slot;
        match cpl.result {
            Ok(()) => {
                if req.tries > 0 {
                    self.s.recovered += 1;
                }
                let buf = cpl.buffer;
                if req.write {
                    let s = &mut self.slots[slot];
                    s.gen = req.gen;
                    s.maybe.clear();
                } else if let Some(b) = &buf {
                    self.verify(slot, b);
                }
                self.slots[slot].busy = false;
                self.bufs[tag] = buf;
            }
            Err(Error::Timeout { cid, .. }) => {
                self.s.timeouts += 1;
                if req.write {
                    self.slots[slot].maybe.push(req.gen);
                }
                let retry = Retry {
                    slot,
                    write: req.write,
                    tries: req.tries + 1,
                };
                if retry.tries <= MAX_TRIES {
                    self.held.push(Held {
                        cid,
                        since: Instant::now(),
                        retry,
                        abort_sent: false,
                    });
                }
                // Else the slot stays busy: never touched again in this run.
            }
            Err(Error::ControllerReset) => {
                self.bufs[tag] = cpl.buffer;
                self.s.errors += 1;
                self.kill();
            }
            Err(e) => {
                self.s.errors += 1;
                if self.s.errors <= 3 {
                    eprintln!("soak: thread {}: {e}", self.cfg.thread);
                }
                self.bufs[tag] = cpl.buffer;
                if req.write {
                    self.slots[slot].maybe.push(req.gen);
                }
                if req.tries < MAX_TRIES {
                    self.retries.push_back(Retry {
                        slot,
                        write: req.write,
                        tries: req.tries + 1,
                    });
                } else {
                    self.slots[slot].busy = false;
                }
            }
        }
    }

    /// Checks a completed read of `slot` against what the slot may hold.
    fn verify(&mut self, slot: usize, b: &DmaBuffer<P>) {
        let s = &self.slots[slot];
        let known = s.gen != 0;
        if !known && s.maybe.is_empty() {
            return; // never written in this run
        }
        if b.read(0, &mut self.data).is_err() {
            return;
        }
        let bs = self.ns.lba_size() as usize;
        let nsid = self.ns.nsid();
        let lba0 = self.lba(slot);
        let mut bad = None;
        for (i, blk) in self.data.chunks(bs).enumerate() {
            let lba = lba0 + i as u64;
            let got = block_generation(blk, nsid, lba, &mut self.scratch);
            let ok = match got {
                Some(g) => g == s.gen || s.maybe.contains(&g),
                // Unknown old content is acceptable only if the slot was never written.
                None => !known,
            };
            if !ok {
                bad = Some((lba, got));
                break;
            }
        }
        match bad {
            None if known => self.s.verified += 1,
            None => {}
            Some((lba, got)) => {
                self.s.mismatches += 1;
                if self.mismatch_reports < 10 {
                    self.mismatch_reports += 1;
                    eprintln!(
                        "soak: thread {}: MISMATCH at LBA {lba} of namespace {nsid}: expected generation {} (or {:?}), found {}",
                        self.cfg.thread,
                        s.gen,
                        s.maybe,
                        got.map_or("a corrupt or foreign block".to_string(), |g| format!("generation {g}"))
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(faults: Option<u32>) -> SoakArgs {
        SoakArgs {
            device: DeviceSpec::Sim(None),
            threads: 2,
            qd: 8,
            io_size: 4096,
            ios: Some(20_000),
            seconds: None,
            faults,
            seed: 5,
            io_timeout_ms: 100,
            write_percent: 50,
            nsid: 1,
            irq: Irq::Polled,
            sim_thread: false,
            recovery: RecoveryMode::Driver,
            start_block: 0,
            block_count: None,
        }
    }

    #[test]
    fn block_pattern_round_trips_and_names_its_block() {
        let mut b = vec![0u8; 512];
        let mut s = vec![0u8; 512];
        fill_block(&mut b, 1, 77, 9);
        assert_eq!(block_generation(&b, 1, 77, &mut s), Some(9));
        assert_eq!(block_generation(&b, 1, 78, &mut s), None);
        assert_eq!(block_generation(&b, 2, 77, &mut s), None);
        b[300] ^= 1;
        assert_eq!(block_generation(&b, 1, 77, &mut s), None);
    }

    #[test]
    fn soak_on_the_simulator_without_faults() {
        let s = execute(&args(None)).unwrap();
        assert_eq!(s.ios, 20_000, "{s:?}");
        assert!(s.verified > 0, "{s:?}");
        assert_eq!((s.mismatches, s.lost, s.faults), (0, 0, 0), "{s:?}");
        assert_eq!((s.errors, s.timeouts, s.recovered), (0, 0, 0), "{s:?}");
        assert!(s.line().starts_with("soak: 20000 I/Os, "));
    }

    #[test]
    fn soak_on_the_simulator_with_faults() {
        let s = execute(&args(Some(2_000))).unwrap();
        assert!(s.verified > 0, "{s:?}");
        assert_eq!((s.mismatches, s.lost), (0, 0), "{s:?}");
        assert!(s.faults > 0, "{s:?}");
        // New requests plus retries.
        assert!(s.ios >= 20_000, "{s:?}");
        assert!(s.recovered > 0, "{s:?}");
        assert!(s.recovered <= s.errors + s.timeouts + s.retried, "{s:?}");
        assert!(s.verified + s.mismatches <= s.ios);
    }

    #[test]
    fn stale_misdirected_or_corrupt_blocks_are_mismatches() {
        use sim_backend::SimConfig;
        let sim = Simulator::new(SimConfig::default()).unwrap();
        let mut c = Controller::new(
            sim.platform(),
            ControllerConfig {
                interrupts: false,
                ..ControllerConfig::default()
            },
        )
        .unwrap();
        let ns = c.namespace(1).unwrap().clone();
        let qp = c.create_io_queue_pair(8).unwrap();
        let (tx, _rx) = mpsc::channel();
        let cfg = WorkerCfg {
            thread: 0,
            first_slot: 0,
            base: 0,
            slots: 4,
            per_io: 8,
            qd: 1,
            io_size: 4096,
            quota: 0,
            deadline: None,
            io_timeout: Duration::from_secs(1),
            seed: 1,
            write_percent: 0,
            wait: false,
        };
        let mut w = Worker::new(qp, ns.clone(), cfg, tx);
        // Slot 1 (LBAs 8..16) as written with generation `gen` for LBAs from `first`.
        let put = |first: u64, gen: u64| {
            let mut d = vec![0u8; 4096];
            for (i, blk) in d.chunks_mut(512).enumerate() {
                fill_block(blk, 1, first + i as u64, gen);
            }
            sim.write_namespace_bytes(1, 8, &d).unwrap();
        };
        let read = |w: &mut Worker<_>| {
            let b = w.qp.alloc_buffer(4096).unwrap();
            let b = w.qp.read(&ns, 8, b).unwrap();
            w.verify(1, &b);
            (w.s.verified, w.s.mismatches)
        };
        // Never written in this run: not checked.
        put(8, 6);
        assert_eq!(read(&mut w), (0, 0));
        // The tool completed generation 7, the medium holds 6 (a lost write).
        w.slots[1].gen = 7;
        assert_eq!(read(&mut w), (0, 1));
        // 6 is acceptable while a failed write of it left the slot uncertain.
        w.slots[1].maybe.push(6);
        assert_eq!(read(&mut w), (1, 1));
        w.slots[1].maybe.clear();
        // The right generation: verified.
        put(8, 7);
        assert_eq!(read(&mut w), (2, 1));
        // Blocks of other LBAs (a misdirected write) with the right generation.
        put(16, 7);
        assert_eq!(read(&mut w), (2, 2));
        // One flipped byte in the pattern.
        put(8, 7);
        let mut blk = sim.namespace_bytes(1, 12, 1).unwrap();
        blk[100] ^= 0x40;
        sim.write_namespace_bytes(1, 12, &blk).unwrap();
        assert_eq!(read(&mut w), (2, 3));
        let qp = w.qp;
        c.delete_io_queue_pair(qp).unwrap();
        c.shutdown().unwrap();
    }

    #[test]
    fn faults_need_the_simulator() {
        let mut a = args(Some(10));
        a.device = "pci:0000:03:00.0".parse().unwrap();
        let e = execute(&a).unwrap_err().to_string();
        assert!(e.contains("--faults needs the simulator"), "{e}");
    }
}

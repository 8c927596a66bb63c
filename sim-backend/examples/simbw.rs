//! Bandwidth of the simulator's data path against plain `memcpy`, in one run:
//!
//! 1. `memcpy` of 4 KiB blocks at random block offsets of a buffer the size of the
//!    namespace, and of 128 KiB sequential chunks of it (the ceiling for a device model
//!    that must copy every byte);
//! 2. the inline simulator with a memory-backed namespace, 4 KiB random reads and 128 KiB
//!    sequential reads through the driver (`nvme_core::IoQueuePair`, polled, QD32), on
//!    registered buffers (`IoQueuePair::register_buffer`, `submit_read_fixed`,
//!    `poll_fixed`: the lean path, no buffer moves in and out per command);
//! 3. the same with an image-backed namespace (a file in `$TMPDIR`, read once beforehand
//!    so the page cache is warm). Its reads are served from the namespace's read cache
//!    (`NamespaceConfig::read_cache`, 256 MiB by default, more than this 64 MiB image),
//!    which the warm-up round fills: the figures are of a warm cache, where an image-backed
//!    read costs what a memory-backed one does. A cold read (a chunk not cached yet) costs
//!    one `pread` of the whole 64 KiB chunk around it from the page cache, 16 times the
//!    bytes of a 4 KiB read, and a read of the disk if the page cache does not hold the
//!    image either; with `read_cache` 0 (or once the cache is full) every read is one
//!    `pread` of its own bytes into a staging buffer, then a copy into host memory;
//! 4. 4 KiB random reads at QD32 with one and with two threads, each thread on its own I/O
//!    queue pair, in inline and in device-thread mode (what queues sharing the controller
//!    cost).
//!
//! Prints GB/s (10^9 bytes per CPU second of the measuring thread: the inline simulator runs
//! on the submitting thread, so this is the cost of the whole data path, and it does not
//! depend on what else the machine runs) and the ratios simulator/memcpy and image/memory.
//! The multi-queue figures are wall-clock I/Os per second (what scaling means).
//!
//! ```sh
//! cargo run --release -p sim-backend --example simbw            # about 15 s
//! cargo run --release -p sim-backend --example simbw -- 0.2     # seconds per slice
//! ```
//!
//! Figures are wall-clock: on a shared machine, run it twice and compare like with like.

use std::hint::black_box;
use std::io::Write as _;
use std::time::{Duration, Instant};

use nvme_core::{Controller, ControllerConfig, FixedBuf, IoQueuePair, Namespace};
use sim_backend::{NamespaceConfig, SimConfig, SimMode, SimPlatform, Simulator};

/// Namespace (and `memcpy` source buffer) size: larger than the last-level cache.
const NS_BYTES: u64 = 64 << 20;
const LBA: u32 = 4096;
const QD: usize = 32;
const SMALL: usize = 4096;
const LARGE: usize = 128 << 10;
/// Interleaved measuring rounds.
const ROUNDS: u64 = 4;

/// xorshift64*: block numbers.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Non-zero, position-dependent contents (so no read is served by a zero fill).
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] | 1)
        .collect()
}

fn gbps(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e9
}

/// CPU time of the calling thread (user and system): on a machine shared with other work,
/// bandwidth per CPU second is what is comparable between runs; wall-clock time is not.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock ID is a constant the kernel knows.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Bytes moved and the CPU time it took.
#[derive(Default, Clone, Copy)]
struct Tally {
    bytes: u64,
    cpu: Duration,
}

impl Tally {
    fn add(&mut self, (bytes, cpu): (u64, Duration)) {
        self.bytes += bytes;
        self.cpu += cpu;
    }
    fn gbps(&self) -> f64 {
        gbps(self.bytes, self.cpu)
    }
}

/// CPU time of the whole process (every thread, the device thread included).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as in `thread_cpu`.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `memcpy` of `io`-byte pieces of `src` into the `QD` rotating destinations `dst`, for
/// `secs`: random pieces, or sequential from piece `seed`. Returns (bytes, CPU time).
fn memcpy_bw(
    src: &[u8],
    dst: &mut [Vec<u8>],
    random: bool,
    seed: u64,
    secs: f64,
) -> (u64, Duration) {
    let io = dst[0].len();
    let slots = (src.len() / io) as u64;
    let mut rng = Rng(seed | 1);
    let mut seq = seed % slots;
    let mut bytes = 0u64;
    let start = Instant::now();
    let cpu = thread_cpu();
    let limit = Duration::from_secs_f64(secs);
    let mut k = 0usize;
    loop {
        for _ in 0..64 {
            let slot = if random {
                rng.next() % slots
            } else {
                seq = (seq + 1) % slots;
                seq
            };
            let off = slot as usize * io;
            let d = &mut dst[k % dst.len()];
            d.copy_from_slice(&src[off..off + io]);
            black_box(d.as_mut_ptr());
            k += 1;
            bytes += io as u64;
        }
        if start.elapsed() >= limit {
            break;
        }
    }
    (bytes, thread_cpu() - cpu)
}

/// What a [`read_load`] did.
struct Load {
    bytes: u64,
    /// CPU time of the submitting thread.
    cpu: Duration,
    ios: u64,
    /// CPU time spent in SQ doorbell writes: in inline mode, the commands are executed
    /// there, under the controller's lock. Estimated from one doorbell write in
    /// [`RING_SAMPLE`].
    ring: Duration,
}

/// One doorbell write in this many is timed for [`Load::ring`]: timing one takes two reads
/// of the thread's CPU clock, each a system call, which would weigh on the bandwidth figures
/// if made for every write.
const RING_SAMPLE: u64 = 8;

/// `QD` buffers of `io` bytes, registered with `qp`.
fn buffers(
    c: &Controller<SimPlatform>,
    qp: &mut IoQueuePair<SimPlatform>,
    io: usize,
) -> Vec<FixedBuf> {
    (0..QD)
        .map(|_| {
            let b = c.alloc_buffer(io).expect("I/O buffer");
            qp.register_buffer(b)
                .map_err(|e| e.error)
                .expect("register")
        })
        .collect()
}

/// Reads of `io` bytes into the registered buffers `bufs` (one command each at a time:
/// QD32) through queue pair `qp` for `secs`: random or sequential slots (sequential from
/// slot `seed`).
fn read_load(
    bufs: &[FixedBuf],
    qp: &mut IoQueuePair<SimPlatform>,
    ns: &Namespace,
    io: usize,
    random: bool,
    seed: u64,
    secs: f64,
) -> Load {
    let bs = ns.lba_size() as usize;
    let per = (io / bs) as u64;
    let slots = ns.blocks() / per;
    let mut rng = Rng(seed | 1);
    let mut seq = seed % slots;
    let mut next = move || {
        let slot = if random {
            rng.next() % slots
        } else {
            seq = (seq + 1) % slots;
            seq
        };
        slot * per
    };
    let mut idle = vec![true; bufs.len()];
    let (mut completed, mut inflight) = (0u64, 0usize);
    let limit = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let cpu = thread_cpu();
    let (mut rings, mut timed, mut ring) = (0u64, 0u64, Duration::ZERO);
    let mut stop = false;
    loop {
        if !stop {
            for (tag, free) in idle.iter_mut().enumerate() {
                if *free {
                    qp.submit_read_fixed(ns, next(), bufs[tag], tag as u64)
                        .expect("submit");
                    *free = false;
                    inflight += 1;
                }
            }
            if rings % RING_SAMPLE == 0 {
                let t = thread_cpu();
                qp.ring();
                ring += thread_cpu() - t;
                timed += 1;
            } else {
                qp.ring();
            }
            rings += 1;
        }
        qp.poll_fixed(|cpl| {
            cpl.result.expect("read");
            idle[cpl.tag as usize] = true;
            completed += 1;
            inflight -= 1;
        })
        .expect("poll");
        if !stop && start.elapsed() >= limit {
            stop = true;
        }
        if stop && inflight == 0 {
            break;
        }
    }
    Load {
        bytes: completed * io as u64,
        cpu: thread_cpu() - cpu,
        ios: completed,
        ring: if timed == 0 {
            Duration::ZERO
        } else {
            ring.mul_f64(rings as f64 / timed as f64)
        },
    }
}

fn bring_up(sim: &Simulator, pairs: u16) -> Controller<SimPlatform> {
    Controller::new(
        sim.platform(),
        ControllerConfig {
            interrupts: false,
            io_queue_pairs: pairs,
            ..ControllerConfig::default()
        },
    )
    .expect("bring-up")
}

fn sim_config(ns: NamespaceConfig, mode: SimMode) -> SimConfig {
    SimConfig {
        namespaces: vec![ns],
        mode,
        ..SimConfig::default()
    }
}

/// One simulator with a driver on it: a queue pair and buffers for both transfer sizes.
struct Rig {
    sim: Simulator,
    c: Controller<SimPlatform>,
    ns: Namespace,
    qp: IoQueuePair<SimPlatform>,
    small: Vec<FixedBuf>,
    large: Vec<FixedBuf>,
    /// CPU time in doorbell writes, and in all, of the 4 KiB and 128 KiB loads.
    ring: Duration,
    busy: Duration,
}

impl Rig {
    fn new(sim: Simulator) -> Self {
        let mut c = bring_up(&sim, 1);
        let ns = c.namespace(1).expect("namespace 1").clone();
        let mut qp = c.create_io_queue_pair(QD as u16 + 1).expect("queue pair");
        let (small, large) = (buffers(&c, &mut qp, SMALL), buffers(&c, &mut qp, LARGE));
        Self {
            sim,
            c,
            ns,
            qp,
            small,
            large,
            ring: Duration::ZERO,
            busy: Duration::ZERO,
        }
    }

    /// 4 KiB random reads (`large`: 128 KiB sequential reads) for `secs`.
    fn run(&mut self, large: bool, seed: u64, secs: f64) -> (u64, Duration) {
        let (bufs, io) = if large {
            (&self.large, LARGE)
        } else {
            (&self.small, SMALL)
        };
        let l = read_load(bufs, &mut self.qp, &self.ns, io, !large, seed, secs);
        self.ring += l.ring;
        self.busy += l.cpu;
        (l.bytes, l.cpu)
    }

    fn finish(mut self) {
        self.c.delete_io_queue_pair(self.qp).expect("delete");
        self.c.shutdown().expect("shutdown");
        self.sim.assert_no_violations();
    }
}

/// 4 KiB random read IOPS with `threads` threads, each on its own queue pair: (I/Os per
/// wall-clock second, I/Os per CPU second of the process).
fn multi_queue(mode: SimMode, threads: usize, secs: f64) -> (f64, f64) {
    let sim = Simulator::new(sim_config(NamespaceConfig::memory(LBA, NS_BYTES), mode))
        .expect("simulator");
    fill_memory(&sim);
    let mut c = bring_up(&sim, threads as u16);
    let ns = c.namespace(1).expect("namespace 1").clone();
    let mut qps: Vec<_> = (0..threads)
        .map(|_| {
            let mut qp = c.create_io_queue_pair(QD as u16 + 1).expect("queue pair");
            let bufs = buffers(&c, &mut qp, SMALL);
            (qp, bufs)
        })
        .collect();
    let (wall, cpu) = (Instant::now(), process_cpu());
    let total: u64 = std::thread::scope(|s| {
        let ns = &ns;
        let hs: Vec<_> = qps
            .iter_mut()
            .enumerate()
            .map(|(i, (qp, bufs))| {
                s.spawn(move || read_load(bufs, qp, ns, SMALL, true, 7 + i as u64, secs).ios)
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("worker")).sum()
    });
    let (wall, cpu) = (wall.elapsed(), process_cpu() - cpu);
    for (qp, _) in qps {
        c.delete_io_queue_pair(qp).expect("delete");
    }
    c.shutdown().expect("shutdown");
    sim.assert_no_violations();
    (
        total as f64 / wall.as_secs_f64(),
        total as f64 / cpu.as_secs_f64(),
    )
}

fn fill_memory(sim: &Simulator) {
    let chunk = pattern(1 << 20);
    for lba in (0..NS_BYTES / u64::from(LBA)).step_by(chunk.len() / LBA as usize) {
        sim.write_namespace_bytes(1, lba, &chunk).expect("fill");
    }
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.4);
    let src = pattern(NS_BYTES as usize);
    let mem = Simulator::new(sim_config(
        NamespaceConfig::memory(LBA, NS_BYTES),
        SimMode::Inline,
    ))
    .expect("simulator");
    fill_memory(&mem);
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("simbw.img");
    {
        let mut f = std::fs::File::create(&path).expect("image");
        for _ in 0..NS_BYTES / (1 << 20) {
            f.write_all(&src[..1 << 20]).expect("image");
        }
        f.sync_all().expect("image");
    }
    // Warm the page cache.
    black_box(std::fs::read(&path).expect("image").len());
    let img = Simulator::new(sim_config(
        NamespaceConfig::file(LBA, NS_BYTES, &path),
        SimMode::Inline,
    ))
    .expect("simulator");
    let (mut mem, mut img) = (Rig::new(mem), Rig::new(img));
    let mut dst_small: Vec<Vec<u8>> = (0..QD).map(|_| vec![0u8; SMALL]).collect();
    let mut dst_large: Vec<Vec<u8>> = (0..QD).map(|_| vec![0u8; LARGE]).collect();
    // Warm-up: first touches of buffers and medium; fills the image's read cache.
    mem.run(false, 1, secs / 4.0);
    img.run(false, 1, secs / 4.0);
    memcpy_bw(&src, &mut dst_small, true, 1, secs / 4.0);
    // Interleaved rounds, so that every figure sees the same share of whatever else the
    // machine is doing (memory bandwidth, caches).
    let [mut m_small, mut m_large, mut s_small, mut s_large, mut i_small, mut i_large] =
        [Tally::default(); 6];
    for round in 0..ROUNDS {
        let seed = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(round + 1);
        m_small.add(memcpy_bw(&src, &mut dst_small, true, seed, secs));
        s_small.add(mem.run(false, seed, secs));
        i_small.add(img.run(false, seed, secs));
        m_large.add(memcpy_bw(&src, &mut dst_large, false, seed, secs));
        s_large.add(mem.run(true, seed, secs));
        i_large.add(img.run(true, seed, secs));
    }
    let serial = mem.ring.as_secs_f64() / mem.busy.as_secs_f64();
    mem.finish();
    img.finish();
    let (ms, ml) = (m_small.gbps(), m_large.gbps());
    let (ss, sl) = (s_small.gbps(), s_large.gbps());
    let (is, il) = (i_small.gbps(), i_large.gbps());
    println!("memcpy      4 KiB random          {ms:6.2} GB/s");
    println!("memcpy      128 KiB sequential    {ml:6.2} GB/s");
    println!(
        "sim memory  4 KiB random QD32     {ss:6.2} GB/s  sim/memcpy {:.2}",
        ss / ms
    );
    println!(
        "sim memory  128 KiB seq QD32      {sl:6.2} GB/s  sim/memcpy {:.2}",
        sl / ml
    );
    println!(
        "sim image   4 KiB random QD32     {is:6.2} GB/s  sim/memcpy {:.2}  image/memory {:.2}",
        is / ms,
        is / ss
    );
    println!(
        "sim image   128 KiB seq QD32      {il:6.2} GB/s  sim/memcpy {:.2}  image/memory {:.2}",
        il / ml,
        il / sl
    );

    println!(
        "inline, memory: {:.0}% of the submitting thread's CPU time is spent under the \
         controller lock (SQ doorbell writes): at most {:.2}x with 2 queue pairs on 2 idle cores",
        serial * 100.0,
        1.0 / (serial + (1.0 - serial) / 2.0)
    );
    let mq = secs * 2.0;
    for (name, mode) in [("inline", SimMode::Inline), ("thread", SimMode::Thread)] {
        let (one, one_cpu) = multi_queue(mode, 1, mq);
        let (two, two_cpu) = multi_queue(mode, 2, mq);
        println!(
            "multi-queue {name:6} 4 KiB random QD32 per pair: 1 pair {one:7.0} IOPS \
             ({one_cpu:7.0} per CPU s), 2 pairs on 2 threads {two:7.0} IOPS ({two_cpu:7.0} per CPU s): {:.2}x",
            two / one
        );
    }
}

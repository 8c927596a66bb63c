//! Bandwidth of the simulator's data path against plain `memcpy`, in one run:
//!
//! 1. `memcpy` of 4 KiB blocks at random block offsets of a buffer the size of the
//!    namespace, and of 128 KiB sequential chunks of it (the ceiling for a device model
//!    that must copy every byte);
//! 2. the inline simulator with a memory-backed namespace, 4 KiB random reads and 128 KiB
//!    sequential reads through the driver (`nvme_core::IoQueuePair`, polled, QD32);
//! 3. the same with an image-backed namespace (a file in `$TMPDIR`, read once beforehand
//!    so the page cache is warm);
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
//! cargo run --release -p sim-backend --example simbw            # about 20 s
//! cargo run --release -p sim-backend --example simbw -- 0.5     # seconds per figure
//! ```
//!
//! Figures are wall-clock: on a shared machine, run it twice and compare like with like.

use std::hint::black_box;
use std::io::Write as _;
use std::time::{Duration, Instant};

use nvme_core::{Controller, ControllerConfig, DmaBuffer, Namespace};
use sim_backend::{NamespaceConfig, SimConfig, SimMode, SimPlatform, Simulator};

/// Namespace (and `memcpy` source buffer) size: larger than the last-level cache.
const NS_BYTES: u64 = 64 << 20;
const LBA: u32 = 4096;
const QD: usize = 32;
const SMALL: usize = 4096;
const LARGE: usize = 128 << 10;

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

/// `memcpy` of `io`-byte pieces of `src` into `QD` rotating destinations, for `secs`.
fn memcpy_bw(src: &[u8], io: usize, random: bool, secs: f64) -> f64 {
    let mut dst: Vec<Vec<u8>> = (0..QD).map(|_| vec![0u8; io]).collect();
    let slots = (src.len() / io) as u64;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut seq = 0u64;
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
            let d = &mut dst[k % QD];
            d.copy_from_slice(&src[off..off + io]);
            black_box(d.as_mut_ptr());
            k += 1;
            bytes += io as u64;
        }
        if start.elapsed() >= limit {
            break;
        }
    }
    gbps(bytes, thread_cpu() - cpu)
}

/// `QD` buffers of `io` bytes.
fn buffers(c: &Controller<SimPlatform>, io: usize) -> Vec<Option<DmaBuffer<SimPlatform>>> {
    (0..QD)
        .map(|_| Some(c.alloc_buffer(io).expect("I/O buffer")))
        .collect()
}

/// Reads of `io` bytes at QD32 through queue pair `qp` for `secs`: random or sequential
/// slots. Returns (GB/s per CPU second of this thread, I/Os).
fn read_load(
    bufs: &mut [Option<DmaBuffer<SimPlatform>>],
    qp: &mut nvme_core::IoQueuePair<SimPlatform>,
    ns: &Namespace,
    io: usize,
    random: bool,
    seed: u64,
    secs: f64,
) -> (f64, u64) {
    let bs = ns.lba_size() as usize;
    let per = (io / bs) as u64;
    let slots = ns.blocks() / per;
    let mut rng = Rng(seed);
    let mut seq = 0u64;
    let mut next = move || {
        let slot = if random {
            rng.next() % slots
        } else {
            seq = (seq + 1) % slots;
            seq
        };
        slot * per
    };
    let mut done = Vec::with_capacity(QD);
    let (mut completed, mut inflight) = (0u64, 0usize);
    let limit = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let cpu = thread_cpu();
    let mut stop = false;
    loop {
        if !stop {
            for (tag, b) in bufs.iter_mut().enumerate() {
                if let Some(buf) = b.take() {
                    qp.submit_read(ns, next(), buf, tag as u64)
                        .map_err(|e| e.error)
                        .expect("submit");
                    inflight += 1;
                }
            }
            qp.ring();
        }
        qp.poll(|cpl| done.push(cpl)).expect("poll");
        for cpl in done.drain(..) {
            cpl.result.expect("read");
            bufs[cpl.tag as usize] = cpl.buffer;
            completed += 1;
            inflight -= 1;
        }
        if !stop && start.elapsed() >= limit {
            stop = true;
        }
        if stop && inflight == 0 {
            break;
        }
    }
    (gbps(completed * io as u64, thread_cpu() - cpu), completed)
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

/// 4 KiB random and 128 KiB sequential read bandwidth of one simulator.
fn sim_bw(sim: &Simulator, secs: f64) -> (f64, f64) {
    let mut c = bring_up(sim, 1);
    let ns = c.namespace(1).expect("namespace 1").clone();
    let mut qp = c.create_io_queue_pair(QD as u16 + 1).expect("queue pair");
    // Warm-up: first touches of the buffers and the medium.
    let (mut b_small, mut b_large) = (buffers(&c, SMALL), buffers(&c, LARGE));
    read_load(&mut b_small, &mut qp, &ns, SMALL, true, 1, secs / 4.0);
    let small = read_load(
        &mut b_small,
        &mut qp,
        &ns,
        SMALL,
        true,
        0x9E37_79B9_7F4A_7C15,
        secs,
    )
    .0;
    let large = read_load(&mut b_large, &mut qp, &ns, LARGE, false, 1, secs).0;
    c.delete_io_queue_pair(qp).expect("delete");
    c.shutdown().expect("shutdown");
    sim.assert_no_violations();
    (small, large)
}

/// 4 KiB random read IOPS with `threads` threads, each on its own queue pair.
fn multi_queue(mode: SimMode, threads: usize, secs: f64) -> f64 {
    let sim = Simulator::new(sim_config(NamespaceConfig::memory(LBA, NS_BYTES), mode))
        .expect("simulator");
    fill_memory(&sim);
    let mut c = bring_up(&sim, threads as u16);
    let ns = c.namespace(1).expect("namespace 1").clone();
    let mut qps: Vec<_> = (0..threads)
        .map(|_| {
            let qp = c.create_io_queue_pair(QD as u16 + 1).expect("queue pair");
            (qp, buffers(&c, SMALL))
        })
        .collect();
    let total: u64 = std::thread::scope(|s| {
        let ns = &ns;
        let hs: Vec<_> = qps
            .iter_mut()
            .enumerate()
            .map(|(i, (qp, bufs))| {
                s.spawn(move || read_load(bufs, qp, ns, SMALL, true, 7 + i as u64, secs).1)
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("worker")).sum()
    });
    for (qp, _) in qps {
        c.delete_io_queue_pair(qp).expect("delete");
    }
    c.shutdown().expect("shutdown");
    sim.assert_no_violations();
    total as f64 / secs
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
        .unwrap_or(1.5);
    let src = pattern(NS_BYTES as usize);
    let m_small = memcpy_bw(&src, SMALL, true, secs);
    let m_large = memcpy_bw(&src, LARGE, false, secs);
    println!("memcpy      4 KiB random     {m_small:6.2} GB/s");
    println!("memcpy      128 KiB seq      {m_large:6.2} GB/s");

    let sim = Simulator::new(sim_config(
        NamespaceConfig::memory(LBA, NS_BYTES),
        SimMode::Inline,
    ))
    .expect("simulator");
    fill_memory(&sim);
    let (s_small, s_large) = sim_bw(&sim, secs);
    drop(sim);
    println!(
        "sim memory  4 KiB rand QD32  {s_small:6.2} GB/s  sim/memcpy {:.2}",
        s_small / m_small
    );
    println!(
        "sim memory  128 KiB seq QD32 {s_large:6.2} GB/s  sim/memcpy {:.2}",
        s_large / m_large
    );

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
    let sim = Simulator::new(sim_config(
        NamespaceConfig::file(LBA, NS_BYTES, &path),
        SimMode::Inline,
    ))
    .expect("simulator");
    let (i_small, i_large) = sim_bw(&sim, secs);
    drop(sim);
    println!(
        "sim image   4 KiB rand QD32  {i_small:6.2} GB/s  sim/memcpy {:.2}  image/memory {:.2}",
        i_small / m_small,
        i_small / s_small
    );
    println!(
        "sim image   128 KiB seq QD32 {i_large:6.2} GB/s  sim/memcpy {:.2}  image/memory {:.2}",
        i_large / m_large,
        i_large / s_large
    );

    let mq = secs / 1.5;
    for (name, mode) in [("inline", SimMode::Inline), ("thread", SimMode::Thread)] {
        let one = multi_queue(mode, 1, mq);
        let two = multi_queue(mode, 2, mq);
        println!(
            "multi-queue {name:6} 4 KiB rand QD32: 1 thread {:7.0} IOPS, 2 threads {:7.0} IOPS ({:.2}x)",
            one,
            two,
            two / one
        );
    }
}

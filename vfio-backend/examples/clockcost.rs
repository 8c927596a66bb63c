//! What one clock read costs on this host, for the deadline clocks of the backends:
//! `CLOCK_MONOTONIC_COARSE` (vfio-backend's `MonotonicClock`) and `CLOCK_MONOTONIC` through
//! `std::time::Instant` (the simulator's `StdClock`).
//! `cargo run --release -p vfio-backend --example clockcost`

use std::hint::black_box;
use std::time::Instant;

use nvme_core::hw::Clock;
use vfio_backend::MonotonicClock;

const READS: u32 = 2_000_000;

/// Nanoseconds per call of `f`, the best of five rounds (the least disturbed by other load).
fn per_read(mut f: impl FnMut() -> u64) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            let mut acc = 0u64;
            for _ in 0..READS {
                acc = acc.wrapping_add(f());
            }
            black_box(acc);
            t.elapsed().as_nanos() as f64 / f64::from(READS)
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let coarse = MonotonicClock::new();
    let epoch = Instant::now();
    let c = per_read(|| black_box(&coarse).now_ns());
    let i = per_read(|| black_box(&epoch).elapsed().as_nanos() as u64);
    let coarse_name = if coarse.clock_id() == libc::CLOCK_MONOTONIC_COARSE {
        "CLOCK_MONOTONIC_COARSE"
    } else {
        "CLOCK_MONOTONIC (no coarse clock)"
    };
    println!("vfio-backend MonotonicClock ({coarse_name}): {c:.1} ns per read");
    println!("std::time::Instant (CLOCK_MONOTONIC, the simulator's StdClock): {i:.1} ns per read");
}

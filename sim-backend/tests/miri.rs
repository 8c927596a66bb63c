//! The driver core and the simulator's device thread on the same DMA memory, small enough
//! for Miri, which checks what plain tests cannot: that the two sides' accesses to the
//! shared words are allowed by Rust's memory model (same-size atomics, no data race, no
//! aliasing violation):
//!
//! ```sh
//! MIRIFLAGS="-Zmiri-disable-isolation -Zmiri-tree-borrows" \
//!     cargo +nightly miri test -p sim-backend --test miri
//! ```
//!
//! (Tree Borrows: `bitvec`, used by the namespaces, fails Stacked Borrows on its own.)

use std::time::Duration;

use nvme_core::{Controller, ControllerConfig};
use sim_backend::{NamespaceConfig, SimConfig, SimMode, Simulator};

/// Bring-up, an I/O queue pair, a write and reads back through the device thread (one alone,
/// two queued together), deletion and shutdown: every kind of access the two sides make to
/// queue entries and data buffers.
#[test]
fn driver_core_and_device_thread_share_dma_memory_soundly() {
    let sim = Simulator::new(SimConfig {
        mode: SimMode::Thread,
        ready_delay: Duration::ZERO,
        max_io_queues: 1,
        namespaces: vec![NamespaceConfig::memory(512, 64 << 10)],
        ..SimConfig::default()
    })
    .unwrap();
    let mut c = Controller::new(
        sim.platform(),
        ControllerConfig {
            io_queue_pairs: 1,
            ..ControllerConfig::default()
        },
    )
    .unwrap();
    let ns = c.namespace(1).unwrap().clone();
    let mut qp = c.create_io_queue_pair(4).unwrap();
    let data: Vec<u8> = (0..512u32).map(|i| (i * 7) as u8).collect();
    let mut w = c.alloc_buffer(512).unwrap();
    w.write(0, &data).unwrap();
    // The read is submitted after the write completed: commands in flight together may
    // execute in any order (NVMe Base §3.4.1).
    qp.submit_write(&ns, 3, w, 1).unwrap();
    qp.ring();
    let one = |qp: &mut nvme_core::IoQueuePair<_>| {
        let mut got = None;
        while got.is_none() {
            qp.wait(Duration::from_secs(600), |cpl| {
                assert!(cpl.result.is_ok(), "{:?}", cpl.result);
                got = Some(cpl.buffer);
            })
            .unwrap();
        }
        got.unwrap()
    };
    one(&mut qp);
    qp.submit_read(&ns, 3, c.alloc_buffer(512).unwrap(), 2)
        .unwrap();
    qp.ring();
    let read = one(&mut qp);
    let mut back = vec![0u8; 512];
    read.expect("read buffer").read(0, &mut back).unwrap();
    assert_eq!(back, data);
    // Two Reads queued together: the first one's transfer prefetches the medium under the
    // second (read-ahead, a cache hint on the device thread's side).
    for tag in [3, 4] {
        qp.submit_read(&ns, 3, c.alloc_buffer(512).unwrap(), tag)
            .unwrap();
    }
    qp.ring();
    let mut reads = Vec::new();
    while reads.len() < 2 {
        qp.wait(Duration::from_secs(600), |cpl| {
            assert!(cpl.result.is_ok(), "{:?}", cpl.result);
            reads.push(cpl.buffer.expect("read buffer"));
        })
        .unwrap();
    }
    for b in reads {
        let mut back = vec![0u8; 512];
        b.read(0, &mut back).unwrap();
        assert_eq!(back, data);
    }
    c.delete_io_queue_pair(qp).unwrap();
    c.shutdown().unwrap();
    sim.assert_no_violations();
}

//! # nvme-blk
//!
//! Block-device adapters over [`nvme_core`], for programs with `std`:
//! - [`NamespaceIo`]: a namespace as a byte stream (`std::io::{Read, Write, Seek}`), at any
//!   byte offset and length, on a queue pair the caller chose;
//! - [`TokioQueue`]: the core's I/O futures ([`nvme_core::aio`]) under tokio, with a
//!   completion task per queue pair woken by the pair's MSI-X eventfd (VFIO), by a thread
//!   waiting on the vector (any platform), or polled.
//!
//! The multi-queue model is the core's: one [`nvme_core::IoQueuePair`] per thread (or per
//! [`TokioQueue`]), no lock shared between queues on the I/O path; the thread that owns the
//! [`nvme_core::Controller`] keeps calling [`nvme_core::Controller::recover`]. See
//! `examples/multiqueue.rs` and `examples/tokio_randread.rs`.

mod stream;
mod tokio_io;

pub use stream::{io_error, NamespaceIo};
pub use tokio_io::{TokioQueue, Wakeup, TICK};

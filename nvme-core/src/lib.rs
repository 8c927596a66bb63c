//! # nvme-core
//!
//! A `no_std` NVMe host driver core. It speaks the NVMe protocol (NVMe Base Specification 2.1,
//! NVM Command Set Specification 1.1, NVMe over PCIe Transport) and reaches hardware only
//! through the traits in [`hw`]: [`hw::Bar`] for registers and doorbells,
//! [`hw::DmaAllocator`] for device-visible memory and [`hw::InterruptSource`] for MSI-X, plus
//! a [`hw::Clock`] for deadlines.
//!
//! Layout:
//! - [`spec`]: registers, submission and completion entries, opcodes, status codes, Identify
//!   and log page structures (`forbid(unsafe_code)`), shared with the simulator;
//! - [`hw`]: the hardware boundary;
//! - [`dma`]: the one audited module that touches DMA memory, and the owning buffer type;
//! - `reclaim`: the one rule for freeing device-visible memory (only once the device can no
//!   longer reach it);
//! - `barrier`: the CPU-to-device memory barriers of each supported CPU;
//! - [`prp`]: PRP entries and lists;
//! - [`queue`]: submission and completion rings (and the request engine behind them);
//! - [`io`]: I/O queue pairs and the safe I/O API, and transfers of any length on a
//!   namespace ([`Namespace::read_at`], [`Namespace::write_at`], ...);
//! - [`aio`]: futures for I/O commands, a waker per command slot, for any executor;
//! - [`namespace`]: namespace handles, tied to one controller and its current formats;
//! - [`controller`]: bring-up and reset, the admin queue, typed admin commands, queue pair
//!   lifecycle;
//! - [`recovery`]: the recovery policy (timeout → Abort → reset → re-created queue pairs);
//! - [`error`]: typed errors;
//! - `raw` (feature `raw-access`, off by default): the labelled door for conformance suites.
//!
//! The dependency graph reads as a line: spec → hw → dma → reclaim → queue/engine → io →
//! controller.
//!
//! # Safety promise
//! No safe call sequence makes the device read or write memory that safe code owns: buffers
//! move into requests and come back with completions; every command's data length is derived
//! from the command and must fit its buffer; buffers, queue pairs and namespace handles are
//! tied to the controller that made them; device memory is freed only when the device can no
//! longer reach it. Register writes ([`hw::Bar::write32`]) are `unsafe`, and so is passthrough
//! of an opcode whose length the core cannot derive.
//!
//! # Example
//! Bring-up, a queue pair, a read (here on the simulator; on hardware the platform is
//! `vfio_backend::VfioPlatform::open("0000:01:00.0", &Default::default())?`):
//! ```
//! use nvme_core::{Controller, ControllerConfig};
//!
//! let sim = sim_backend::Simulator::new(sim_backend::SimConfig::default())?;
//! let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
//! let ns = ctrl.namespace(1)?.clone();
//! let mut qp = ctrl.create_io_queue_pair(64)?;
//!
//! // Zero-copy: a device-visible buffer moves into the queue and comes back with the data.
//! let buf = qp.read(&ns, 0, ctrl.alloc_buffer(4096)?)?;
//! let first = buf.to_vec();
//!
//! // Any length, any block: split at MDTS inside, through the pair's staging buffers.
//! let mut data = vec![0u8; 1 << 20];
//! ns.read_at(&mut qp, 2048, &mut data)?;
//!
//! // Asynchronous: queue several commands, ring once, poll for completions.
//! for i in 0..8 {
//!     qp.submit_read(&ns, i * 8, ctrl.alloc_buffer(4096)?, i)
//!         .map_err(|e| e.error)?;
//! }
//! qp.ring();
//! let mut done = 0;
//! while done < 8 {
//!     qp.poll(|c| {
//!         assert!(c.result.is_ok());
//!         done += 1;
//!     })?;
//! }
//! ctrl.delete_io_queue_pair(qp)?;
//! ctrl.shutdown()?;
//! # let _ = first;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
// Tests, and the `arbitrary` derive (fuzzing only), need std; the driver itself never does.
#[cfg(any(test, feature = "arbitrary", feature = "test-utils"))]
extern crate std;

pub mod aio;
mod barrier;
#[cfg(test)]
mod bringup_tests;
pub mod controller;
pub mod dma;
mod engine;
pub mod error;
pub mod hw;
pub mod interrupts;
pub mod io;
pub mod namespace;
pub mod prp;
pub mod queue;
#[cfg(feature = "raw-access")]
pub mod raw;
mod reclaim;
pub mod recovery;
pub mod sgl;
mod shared;
#[forbid(unsafe_code)]
pub mod spec;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

pub use controller::{Controller, ControllerConfig};
pub use dma::DmaBuffer;
pub use error::{Error, Result};
pub use io::{DsmRange, FixedBuf, FixedCompletion, IoCompletion, IoError, IoQueuePair};
pub use namespace::Namespace;
pub use recovery::RecoveryPolicy;
pub use sgl::TransferMode;

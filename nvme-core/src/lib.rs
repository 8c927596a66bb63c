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
//! - [`prp`]: PRP entries and lists;
//! - [`queue`]: submission and completion rings;
//! - [`controller`]: bring-up, admin commands, shutdown;
//! - [`io`]: I/O queue pairs and the safe I/O API;
//! - [`error`]: typed errors.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
// Tests, and the `arbitrary` derive (fuzzing only), need std; the driver itself never does.
#[cfg(any(test, feature = "arbitrary", feature = "test-utils"))]
extern crate std;

mod barrier;
#[cfg(test)]
mod bringup_tests;
pub mod controller;
pub mod dma;
mod engine;
pub mod error;
pub mod hw;
pub mod io;
pub mod namespace;
pub mod prp;
pub mod queue;
#[cfg(feature = "raw-access")]
pub mod raw;
mod reclaim;
mod shared;
#[forbid(unsafe_code)]
pub mod spec;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

pub use controller::{Controller, ControllerConfig};
pub use dma::DmaBuffer;
pub use error::{Error, Result};
pub use io::{DsmRange, IoCompletion, IoError, IoQueuePair};
pub use namespace::Namespace;

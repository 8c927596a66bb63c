//! # conformance-tests
//!
//! One suite of NVMe conformance cases, each written once against the spec and generic over a
//! [`Backend`]: the simulator (every `cargo test`), QEMU's emulated controller through VFIO in
//! the hardware-in-the-loop guest, or a real SSD bound to `vfio-pci`.
//!
//! - [`backend`]: the backend abstraction and its two implementations;
//! - [`allowances`]: the one table of known, documented deviations of peer controllers;
//! - [`cases`]: the cases, grouped by area, each naming the spec section it checks;
//! - [`runner`]: runs cases, prints the grouped report and writes the markdown table.
//!
//! Run on the simulator: `cargo test -p conformance-tests`. On a device:
//! `NVME_TEST_PCI=0000:03:00.0 cargo test -p conformance-tests` (see the README).

pub mod allowances;
pub mod backend;
pub mod cases;
pub mod runner;

pub use backend::{Backend, Peer, SimBackend, VfioBackend};
pub use runner::{Case, Ctx, Group, Verdict};

//! # nvme-fuzz
//!
//! Fuzz targets for the trust boundaries of the driver (house-style habit 11): everything
//! the device writes (completion entries, Identify and log pages), the driver's queue pair
//! against a hostile device, PRP construction, and the simulator against a hostile host.
//!
//! Each target is one `pub fn run_<target>(data: &[u8])` here, holding all the logic and
//! assertions; `fuzz_targets/<target>.rs` is a thin libFuzzer wrapper around it, and
//! `tests/replay.rs` runs every checked-in corpus and regression input through the same
//! functions on stable Rust.
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod completion;
pub mod hostile_device;
pub mod hostile_host;
pub mod identify;
pub mod platform;
pub mod prp;
pub mod seeds;

pub use completion::run_completion;
pub use hostile_device::run_hostile_device;
pub use hostile_host::run_hostile_host;
pub use identify::run_identify;
pub use prp::run_prp;

/// A target body.
pub type Target = fn(&[u8]);

/// Every target: its name (the directory under `corpus/` and `regressions/`) and its body.
pub const TARGETS: &[(&str, Target)] = &[
    ("completion", run_completion),
    ("identify", run_identify),
    ("prp", run_prp),
    ("hostile_device", run_hostile_device),
    ("hostile_host", run_hostile_host),
];

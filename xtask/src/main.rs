//! Developer tasks for the workspace, run as `cargo xtask <task>`.
//!
//! `cargo xtask hil` boots a QEMU guest whose emulated NVMe controller is bound to
//! `vfio-pci` and runs the workspace's test binaries there (see `shared/docs/hil-recipe.md`
//! and the module docs of [`hil`]).

mod hil;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Workspace automation.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Hardware-in-the-loop run: QEMU guest, emulated NVMe bound to vfio-pci, our binaries inside.
    Hil(hil::HilArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Hil(args) => hil::main(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

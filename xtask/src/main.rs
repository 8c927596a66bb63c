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
    /// Regenerate `docs/conformance.md`: the suite on the simulator (both interrupt modes) and
    /// through VFIO on QEMU's NVMe in the x86_64 HIL matrix and one aarch64 boot (512 B LBAs,
    /// polled and MSI-X), as one table of case × backend.
    ConformanceTable {
        /// Only the simulator columns (no QEMU boot).
        #[arg(long)]
        sim_only: bool,
        /// Leave out the aarch64 boot (its columns are then missing from the table).
        #[arg(long)]
        skip_aarch64: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Hil(args) => hil::main(&args),
        Task::ConformanceTable {
            sim_only,
            skip_aarch64,
        } => conformance_table(sim_only, skip_aarch64),
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

/// Parses `argv` as a `cargo xtask hil` command line.
fn hil_args(argv: &[&str]) -> anyhow::Result<hil::HilArgs> {
    let cli = Cli::try_parse_from(["cargo xtask", "hil"].iter().chain(argv))?;
    let Task::Hil(args) = cli.task else {
        unreachable!("parsed as hil")
    };
    Ok(args)
}

/// Runs the HIL matrix (and one aarch64 boot) collecting per-case results, then the simulator
/// suite, which merges them and writes the markdown table.
fn conformance_table(sim_only: bool, skip_aarch64: bool) -> anyhow::Result<bool> {
    use anyhow::Context as _;
    let ws = hil::workspace_root()?;
    let dir = ws.join(".hil-cache").join("results");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut hil_ok = true;
    if !sim_only {
        let results = dir.to_string_lossy();
        hil_ok = hil::main(&hil_args(&["--matrix", "--results", &results])?)?;
        if !skip_aarch64 {
            let arm = hil::main(&hil_args(&["--arch", "aarch64", "--results", &results])?)?;
            hil_ok = hil_ok && arm;
        }
    }
    let mut merge: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path().to_string_lossy().into_owned())
        .collect();
    merge.sort();
    let out = ws.join("docs").join("conformance.md");
    std::fs::create_dir_all(out.parent().context("docs dir")?)?;
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&ws)
            .args(["test", "-p", "conformance-tests", "--test", "conformance"])
            .env("CONFORMANCE_MERGE", merge.join(","))
            .env("CONFORMANCE_TABLE", &out)
            .status()
            .context("running the conformance suite")?;
    eprintln!("xtask: wrote {}", out.display());
    Ok(hil_ok && status.success())
}

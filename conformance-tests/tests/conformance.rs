//! The conformance harness (`harness = false`): runs every case on the simulator (MSI-X and
//! polled), and on a device bound to `vfio-pci` when `NVME_TEST_PCI` names one.
//!
//! The simulator also runs the PRP cases once more with MDTS 4 MiB (chained PRP lists).
//!
//! Environment:
//! - `NVME_TEST_PCI=0000:03:00.0`: also run on this device (DESTROYS DATA on its namespaces);
//! - `NVME_TEST_IRQ=msix|polled|both` (default both): interrupt modes for the device;
//! - `NVME_TEST_ONLY_VFIO=1`: skip the simulator (used inside the HIL guest);
//! - `CONFORMANCE_RESULTS=path`: also write one `RESULT` line per case and backend there;
//! - `CONFORMANCE_TABLE=path`: write the markdown table of case × backend there, with the
//!   columns of this run plus those of the `RESULT` files listed in `CONFORMANCE_MERGE`
//!   (comma separated; `cargo xtask conformance-table` passes the HIL results).
//!
//! Arguments: an optional substring filter on case IDs and titles (flags are ignored).

use std::process::ExitCode;

use conformance_tests::runner::{counts, markdown, parse_tsv, run_suite, tsv, CaseResult};
use conformance_tests::{cases, Backend, Group, SimBackend, VfioBackend};
use sim_backend::SimConfig;

fn run<B: Backend>(b: &B, filter: Option<&str>, all: &mut Vec<(String, Vec<CaseResult>)>) {
    run_groups(b, None, filter, all);
}

/// Runs the cases of `groups` (all groups for `None`).
fn run_groups<B: Backend>(
    b: &B,
    groups: Option<&[Group]>,
    filter: Option<&str>,
    all: &mut Vec<(String, Vec<CaseResult>)>,
) {
    let cases: Vec<_> = cases::all::<B>()
        .into_iter()
        .filter(|c| groups.is_none_or(|g| g.contains(&c.group)))
        .collect();
    let r = run_suite(b, &cases, filter);
    let (p, a, f, s) = counts(&r);
    println!(
        "{}: {p} passed ({a} through allowances), {f} failed, {s} skipped",
        b.name()
    );
    all.push((b.name(), r));
}

fn main() -> ExitCode {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let filter = filter.as_deref();
    let mut all = Vec::new();
    if std::env::var_os("NVME_TEST_ONLY_VFIO").is_none() {
        run(
            &SimBackend::new(SimConfig::default(), true, "msix"),
            filter,
            &mut all,
        );
        run(
            &SimBackend::new(SimConfig::default(), false, "polled"),
            filter,
            &mut all,
        );
        // MDTS 4 MiB: the PRP layouts that need more than the default 128 KiB (a list that
        // fills its page, a chained list) run here.
        run_groups(
            &SimBackend::new(
                SimConfig {
                    mdts: 10,
                    ..SimConfig::default()
                },
                true,
                "msix-mdts10",
            ),
            Some(&[Group::Prp]),
            filter,
            &mut all,
        );
        // An unusual but legal shape: MDTS 8 KiB, a single I/O queue pair and no SGLs. Every
        // case sizes itself from what the controller reports, or skips with its reason.
        run(
            &SimBackend::new(
                SimConfig {
                    mdts: 1,
                    max_io_queues: 1,
                    sgls: 0,
                    ..SimConfig::default()
                },
                true,
                "msix-mdts1-1pair",
            ),
            filter,
            &mut all,
        );
        // A 64 KiB DMA granule, as on ARM64 servers with 64 KiB-page kernels: every buffer
        // and ring is 64 KiB aligned and rounded, PRPs stay 4 KiB (CC.MPS); SGLs with dword
        // granularity and no Bit Buckets (SGLS = 10b).
        run(
            &SimBackend::new(
                SimConfig {
                    dma_granule: 65536,
                    sgls: 0x2,
                    ..SimConfig::default()
                },
                true,
                "msix-64k",
            ),
            filter,
            &mut all,
        );
    }
    if let Ok(addr) = std::env::var("NVME_TEST_PCI") {
        let modes = std::env::var("NVME_TEST_IRQ").unwrap_or_else(|_| "both".into());
        for (mode, irq) in [("msix", true), ("polled", false)] {
            if modes == "both" || modes == mode {
                run(&VfioBackend::new(&addr, irq), filter, &mut all);
            }
        }
    }
    if let Ok(path) = std::env::var("CONFORMANCE_RESULTS") {
        let text: String = all.iter().map(|(b, r)| tsv(b, r)).collect();
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Ok(path) = std::env::var("CONFORMANCE_TABLE") {
        let mut text: String = all.iter().map(|(b, r)| tsv(b, r)).collect();
        for f in std::env::var("CONFORMANCE_MERGE")
            .unwrap_or_default()
            .split(',')
            .filter(|f| !f.is_empty())
        {
            match std::fs::read_to_string(f) {
                Ok(t) => text.push_str(&t),
                Err(e) => {
                    eprintln!("cannot read {f}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let table = markdown(&cases::all::<SimBackend>(), &parse_tsv(&text));
        if let Err(e) = std::fs::write(&path, table) {
            eprintln!("cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let (mut p, mut a, mut f, mut s) = (0, 0, 0, 0);
    for (_, r) in &all {
        let c = counts(r);
        p += c.0;
        a += c.1;
        f += c.2;
        s += c.3;
    }
    println!("\nallowed deviations: {a}");
    println!("conformance: {p} passed, {f} failed, {s} skipped");
    if f > 0 || p == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

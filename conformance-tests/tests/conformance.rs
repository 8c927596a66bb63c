//! The conformance harness (`harness = false`): runs every case on the simulator (MSI-X and
//! polled), and on a device bound to `vfio-pci` when `NVME_TEST_PCI` names one.
//!
//! The simulator runs several shapes (`sim_shapes`): the default, polled, MDTS 4 MiB (PRP cases
//! only), MDTS 8 KiB with one I/O queue pair, 4-entry queues with two vectors, a 64 KiB granule.
//!
//! Environment:
//! - `NVME_TEST_PCI=0000:03:00.0`: also run on this device (DESTROYS DATA on its namespaces);
//! - `NVME_TEST_IRQ=msix|polled|both` (default both): interrupt modes for the device;
//! - `NVME_TEST_ONLY_VFIO=1`: skip the simulator (used inside the HIL guest);
//! - `NVME_TEST_SIM_SHAPES=msix,polled`: run only these simulator shapes (labels);
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

/// Whether the simulator shape `label` runs: all of them unless `NVME_TEST_SIM_SHAPES` lists
/// some (comma separated, e.g. `msix,polled`).
fn shape(label: &str) -> bool {
    match std::env::var("NVME_TEST_SIM_SHAPES") {
        Ok(list) => list.split(',').any(|s| s.trim() == label),
        Err(_) => true,
    }
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

/// The simulator shapes: (label, MSI-X, configuration, groups to run (`None`: all)).
fn sim_shapes() -> Vec<(&'static str, bool, SimConfig, Option<&'static [Group]>)> {
    vec![
        ("msix", true, SimConfig::default(), None),
        ("polled", false, SimConfig::default(), None),
        // MDTS 4 MiB: the PRP layouts that need more than the default 128 KiB (a list that
        // fills its page, a chained list) run here.
        (
            "msix-mdts10",
            true,
            SimConfig {
                mdts: 10,
                ..SimConfig::default()
            },
            Some(&[Group::Prp]),
        ),
        // An unusual but legal shape: MDTS 8 KiB, a single I/O queue pair and no SGLs. Every
        // case sizes itself from what the controller reports, or skips with its reason.
        (
            "msix-mdts1-1pair",
            true,
            SimConfig {
                mdts: 1,
                max_io_queues: 1,
                sgls: 0,
                ..SimConfig::default()
            },
            None,
        ),
        // Small queues and few vectors: CAP.MQES 3 (4-entry queues), two MSI-X vectors (the
        // admin queue and one I/O vector shared by every I/O CQ), three queue pairs, one
        // namespace of 4 KiB blocks with MDTS 8 KiB (two blocks per command), no volatile
        // write cache.
        (
            "msix-mqes3-2vec",
            true,
            SimConfig {
                mdts: 1,
                mqes_z: 3,
                msix_vectors: 2,
                max_io_queues: 3,
                volatile_write_cache: false,
                namespaces: vec![sim_backend::NamespaceConfig::memory(4096, 16 << 20)],
                ..SimConfig::default()
            },
            None,
        ),
        // A 64 KiB DMA granule, as on ARM64 servers with 64 KiB-page kernels: every buffer
        // and ring is 64 KiB aligned and rounded, PRPs stay 4 KiB (CC.MPS); SGLs with dword
        // granularity and no Bit Buckets (SGLS = 10b).
        (
            "msix-64k",
            true,
            SimConfig {
                dma_granule: 65536,
                sgls: 0x2,
                ..SimConfig::default()
            },
            None,
        ),
    ]
}

fn main() -> ExitCode {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let filter = filter.as_deref();
    let mut all = Vec::new();
    if std::env::var_os("NVME_TEST_ONLY_VFIO").is_none() {
        for (label, irq, config, groups) in sim_shapes() {
            if shape(label) {
                run_groups(
                    &SimBackend::new(config, irq, label),
                    groups,
                    filter,
                    &mut all,
                );
            }
        }
    }
    if let Ok(addr) = std::env::var("NVME_TEST_PCI") {
        let modes = std::env::var("NVME_TEST_IRQ").unwrap_or_else(|_| "both".into());
        for (mode, irq) in [("msix", true), ("polled", false)] {
            if modes == "both" || modes == mode {
                run_groups(&VfioBackend::new(&addr, irq), None, filter, &mut all);
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
        let table = markdown(
            &cases::all::<SimBackend>(),
            &parse_tsv(&text),
            Some(include_str!("../mutants.md")),
        );
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

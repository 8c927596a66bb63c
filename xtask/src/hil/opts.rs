//! Command-line options of `cargo xtask hil` and their validation into boot plans.

use std::fmt;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use super::arch::Arch;

/// `cargo xtask hil` options.
#[derive(Debug, Clone, Args)]
pub struct HilArgs {
    /// Install what the run for `--arch` needs (apt packages, for a foreign architecture also
    /// `dpkg --add-architecture` and the cross linker, and the Rust target) and exit.
    #[arg(long)]
    pub install_deps: bool,

    /// Guest architecture: `x86_64` (q35 + Intel IOMMU) or `aarch64` (virt + GICv3 ITS +
    /// SMMUv3, TCG).
    #[arg(long, value_enum, default_value_t = Arch::X86_64)]
    pub arch: Arch,

    /// Boot without the virtual IOMMU (no SMMUv3 / Intel IOMMU): the controller then has no
    /// IOMMU group, vfio-pci cannot take it, and the run passes only if `vfio-info` and
    /// `nvme-tool` both diagnose exactly that ("no IOMMU").
    #[arg(long, alias = "no-smmu", conflicts_with_all = ["matrix", "iommu_passthrough", "irq", "perf"])]
    pub no_iommu: bool,

    /// Boot the guest kernel with `iommu.passthrough=1` (identity default domain); VFIO still
    /// takes the group over and the whole suite must pass.
    #[arg(long)]
    pub iommu_passthrough: bool,

    /// Also run `nvme-tool perf` (4 KiB random reads, queue depth 32) for this many seconds in
    /// each interrupt mode and report its IOPS (TCG numbers: compare guests, not hardware).
    #[arg(long, value_name = "SECS")]
    pub perf: Option<u32>,

    /// Skip the NBD step (x86_64, first boot of a run): the guest kernel's NBD client on
    /// `nvme-tool nbd`, an ext2 filesystem made, mounted, written and read back through it,
    /// then found intact in the host's image.
    #[arg(long)]
    pub no_nbd: bool,

    /// Number of namespaces on the emulated controller (1..=4), each with its own raw image.
    #[arg(long, default_value_t = 1)]
    pub namespaces: u8,

    /// Logical block size of every namespace: 512 or 4096.
    #[arg(long, conflicts_with = "matrix")]
    pub lba_size: Option<u32>,

    /// Number of I/O queue pairs the controller offers (QEMU `max_ioqpairs`, 1..=256).
    #[arg(long)]
    pub max_ioqpairs: Option<u32>,

    /// Maximum Data Transfer Size as a power of two of 4 KiB pages (QEMU `mdts`, 0 = no limit).
    #[arg(long)]
    pub mdts: Option<u8>,

    /// Interrupt mode of the guest suite; `both` runs the suite once per mode in one boot.
    #[arg(long, value_enum, conflicts_with = "matrix")]
    pub irq: Option<IrqArg>,

    /// Run the standard set: LBA size {512, 4096} x interrupts {polled, msix} (what CI runs).
    #[arg(long)]
    pub matrix: bool,

    /// Keep the per-boot temporary directory (disk images, initramfs) and print its path.
    #[arg(long)]
    pub keep: bool,

    /// Wall-clock limit of one QEMU boot in seconds; QEMU is killed and the run fails past it.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,

    /// Also write each boot's per-case conformance results (`RESULT` lines, backend renamed
    /// to the QEMU configuration) as `<DIR>/<boot>.tsv`, for `cargo xtask conformance-table`.
    #[arg(long)]
    pub results: Option<std::path::PathBuf>,

    /// Stream the guest's serial console to stderr while it runs.
    #[arg(short, long)]
    pub verbose: bool,

    /// Benchmark instead of the suite, in one x86_64 boot: the kernel's nvme driver with fio
    /// (io_uring and libaio), then this driver's `nvme-tool perf` through vfio-pci (polled and
    /// MSI-X), 4 KiB random reads at queue depths 1 and 32; prints one table (see
    /// `xtask/src/hil/bench.rs`).
    #[arg(long, conflicts_with_all = ["matrix", "no_iommu", "perf", "irq", "lba_size"])]
    pub bench: bool,

    /// Seconds per benchmark run (`--bench`).
    #[arg(long, default_value_t = 5)]
    pub bench_secs: u32,

    /// Runs per benchmark configuration (`--bench`).
    #[arg(long, default_value_t = 3)]
    pub bench_reps: u32,

    /// Which guest payload to run: the workspace's binaries (`real`) or xtask's own stand-in
    /// (`standin`, which proves the boot, bind, verdict and image path without the driver).
    #[arg(long, value_enum, default_value_t = PayloadKind::Real)]
    pub payload: PayloadKind,
}

/// The `--irq` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IrqArg {
    /// Completion queues polled, no interrupts.
    Polled,
    /// MSI-X interrupts through VFIO eventfds.
    Msix,
    /// Polled, then MSI-X, in the same boot.
    Both,
}

/// The guest payload to build and run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PayloadKind {
    /// conformance harness, nvme-tool and the vfio-info example from the workspace.
    Real,
    /// xtask's own stand-in binary (for proving the HIL path while the driver is in progress).
    Standin,
}

/// One interrupt mode the guest suite runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IrqMode {
    /// Polled completions.
    Polled,
    /// MSI-X.
    Msix,
}

impl IrqMode {
    /// The spelling used on the guest command lines and in `NVME_TEST_IRQ`.
    pub fn as_str(self) -> &'static str {
        match self {
            IrqMode::Polled => "polled",
            IrqMode::Msix => "msix",
        }
    }
}

impl fmt::Display for IrqMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that defines one QEMU boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// Guest architecture.
    pub arch: Arch,
    /// With the virtual IOMMU (the normal case); without it the boot expects the no-IOMMU
    /// diagnosis instead of running the suite.
    pub iommu: bool,
    /// Guest kernel with `iommu.passthrough=1`.
    pub iommu_passthrough: bool,
    /// Seconds of `nvme-tool perf` per interrupt mode, if any.
    pub perf_secs: Option<u32>,
    /// Logical block size of every namespace.
    pub lba_size: u32,
    /// Interrupt modes the guest suite runs in, in order.
    pub irq_modes: Vec<IrqMode>,
    /// Number of namespaces (1..=4).
    pub namespaces: u8,
    /// QEMU `max_ioqpairs`, or QEMU's default.
    pub max_ioqpairs: Option<u32>,
    /// QEMU `mdts`, or QEMU's default (7).
    pub mdts: Option<u8>,
    /// Run the NBD step (kernel NBD client, filesystem on `nvme-tool nbd`).
    pub nbd: bool,
}

/// QEMU 7.2's default MDTS.
const QEMU_DEFAULT_MDTS: u8 = 7;
/// Blocks the host/guest data checks move, at most (fewer if MDTS forbids it).
pub const CHECK_BLOCKS_MAX: u32 = 8;

impl BootConfig {
    /// A short tag naming this boot in file names and log lines, e.g. `lba512-ns1`,
    /// `aarch64-lba512-ns1-pt`.
    pub fn tag(&self) -> String {
        let mut t = format!(
            "{}lba{}-ns{}",
            self.arch.tag_prefix(),
            self.lba_size,
            self.namespaces
        );
        if let Some(q) = self.max_ioqpairs {
            t.push_str(&format!("-q{q}"));
        }
        if let Some(m) = self.mdts {
            t.push_str(&format!("-mdts{m}"));
        }
        if !self.iommu {
            t.push_str("-noiommu");
        }
        if self.iommu_passthrough {
            t.push_str("-pt");
        }
        t
    }

    /// The number of logical blocks one data check moves: [`CHECK_BLOCKS_MAX`], reduced so a
    /// single command stays within MDTS (CAP.MPSMIN is 4 KiB on QEMU).
    pub fn check_blocks(&self) -> u32 {
        let mdts = self.mdts.unwrap_or(QEMU_DEFAULT_MDTS);
        if mdts == 0 {
            return CHECK_BLOCKS_MAX;
        }
        let max_bytes = 4096u64 << mdts.min(20);
        let fit = (max_bytes / u64::from(self.lba_size)).max(1);
        CHECK_BLOCKS_MAX.min(u32::try_from(fit).unwrap_or(u32::MAX))
    }
}

/// Checks the options and expands them into the list of boots to run.
pub fn plan(args: &HilArgs) -> Result<Vec<BootConfig>> {
    if !(1..=4).contains(&args.namespaces) {
        bail!("--namespaces must be 1..=4, got {}", args.namespaces);
    }
    if let Some(q) = args.max_ioqpairs {
        if !(1..=256).contains(&q) {
            bail!("--max-ioqpairs must be 1..=256, got {q}");
        }
    }
    if let Some(m) = args.mdts {
        if m > 20 {
            bail!("--mdts must be 0..=20 (a power of two of 4 KiB pages), got {m}");
        }
    }
    if args.timeout == 0 {
        bail!("--timeout must be at least 1 second");
    }
    if args.perf == Some(0) {
        bail!("--perf must be at least 1 second");
    }
    let make = |lba_size: u32, irq_modes: Vec<IrqMode>| BootConfig {
        arch: args.arch,
        iommu: !args.no_iommu,
        iommu_passthrough: args.iommu_passthrough,
        perf_secs: args.perf,
        lba_size,
        irq_modes,
        namespaces: args.namespaces,
        max_ioqpairs: args.max_ioqpairs,
        mdts: args.mdts,
        // The x86_64 guest with the real payload; the stand-in has no NBD server.
        nbd: !args.no_nbd
            && !args.no_iommu
            && args.arch == Arch::X86_64
            && args.payload == PayloadKind::Real,
    };
    let both = vec![IrqMode::Polled, IrqMode::Msix];
    if args.matrix {
        if args.lba_size.is_some() || args.irq.is_some() {
            bail!("--matrix sets --lba-size and --irq itself; give one or the other");
        }
        // The NBD step once per run (it takes a few seconds of TCG).
        let mut second = make(4096, both.clone());
        second.nbd = false;
        return Ok(vec![make(512, both), second]);
    }
    let lba_size = args.lba_size.unwrap_or(512);
    if lba_size != 512 && lba_size != 4096 {
        bail!("--lba-size must be 512 or 4096, got {lba_size}");
    }
    let irq_modes = match args.irq.unwrap_or(IrqArg::Both) {
        // Without an IOMMU nothing runs on the device: the boot checks the diagnosis only.
        _ if args.no_iommu => Vec::new(),
        IrqArg::Polled => vec![IrqMode::Polled],
        IrqArg::Msix => vec![IrqMode::Msix],
        IrqArg::Both => both,
    };
    Ok(vec![make(lba_size, irq_modes)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        a: HilArgs,
    }

    fn parse(argv: &[&str]) -> Result<Vec<BootConfig>> {
        let t = T::try_parse_from(std::iter::once("t").chain(argv.iter().copied()))?;
        plan(&t.a)
    }

    #[test]
    fn default_is_one_boot_512_both_modes() {
        let p = parse(&[]).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].lba_size, 512);
        assert_eq!(p[0].irq_modes, vec![IrqMode::Polled, IrqMode::Msix]);
        assert_eq!(p[0].namespaces, 1);
        assert_eq!(p[0].tag(), "lba512-ns1");
    }

    #[test]
    fn matrix_is_two_boots_four_configurations() {
        let p = parse(&["--matrix", "--namespaces", "2"]).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].lba_size, 512);
        assert_eq!(p[1].lba_size, 4096);
        assert!(p
            .iter()
            .all(|b| b.irq_modes.len() == 2 && b.namespaces == 2));
    }

    #[test]
    fn matrix_conflicts_with_lba_and_irq() {
        assert!(parse(&["--matrix", "--lba-size", "4096"]).is_err());
        assert!(parse(&["--matrix", "--irq", "msix"]).is_err());
    }

    #[test]
    fn rejects_out_of_range_values() {
        assert!(parse(&["--namespaces", "0"]).is_err());
        assert!(parse(&["--namespaces", "5"]).is_err());
        assert!(parse(&["--lba-size", "1024"]).is_err());
        assert!(parse(&["--max-ioqpairs", "0"]).is_err());
        assert!(parse(&["--mdts", "21"]).is_err());
        assert!(parse(&["--irq", "legacy"]).is_err());
        assert!(parse(&["--timeout", "0"]).is_err());
    }

    #[test]
    fn accepts_explicit_values() {
        let p = parse(&[
            "--namespaces",
            "4",
            "--lba-size",
            "4096",
            "--max-ioqpairs",
            "4",
            "--mdts",
            "3",
            "--irq",
            "msix",
        ])
        .unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].irq_modes, vec![IrqMode::Msix]);
        assert_eq!(p[0].tag(), "lba4096-ns4-q4-mdts3");
    }

    #[test]
    fn arch_and_iommu_variants() {
        let p = parse(&["--arch", "aarch64"]).unwrap();
        assert_eq!(p[0].arch, Arch::Aarch64);
        assert!(p[0].iommu);
        assert_eq!(p[0].tag(), "aarch64-lba512-ns1");
        assert_eq!(parse(&["--arch", "arm64"]).unwrap()[0].arch, Arch::Aarch64);
        let p = parse(&["--arch", "aarch64", "--no-smmu"]).unwrap();
        assert!(!p[0].iommu && p[0].irq_modes.is_empty());
        assert_eq!(p[0].tag(), "aarch64-lba512-ns1-noiommu");
        let p = parse(&[
            "--arch",
            "aarch64",
            "--iommu-passthrough",
            "--lba-size",
            "4096",
        ])
        .unwrap();
        assert_eq!(p[0].tag(), "aarch64-lba4096-ns1-pt");
        assert_eq!(p[0].irq_modes.len(), 2);
        let p = parse(&["--arch", "aarch64", "--matrix", "--mdts", "3"]).unwrap();
        assert_eq!(p.len(), 2);
        assert!(p
            .iter()
            .all(|b| b.arch == Arch::Aarch64 && b.mdts == Some(3)));
        assert!(parse(&["--no-iommu", "--iommu-passthrough"]).is_err());
        assert!(parse(&["--no-iommu", "--matrix"]).is_err());
        assert!(parse(&["--perf", "0"]).is_err());
        assert_eq!(parse(&["--perf", "3"]).unwrap()[0].perf_secs, Some(3));
        assert_eq!(parse(&[]).unwrap()[0].arch, Arch::X86_64);
    }

    #[test]
    fn check_blocks_respects_mdts() {
        let mut b = parse(&["--lba-size", "4096"]).unwrap().remove(0);
        assert_eq!(b.check_blocks(), 8);
        b.mdts = Some(1); // 8 KiB
        assert_eq!(b.check_blocks(), 2);
        b.mdts = Some(0); // unlimited
        assert_eq!(b.check_blocks(), 8);
        b.lba_size = 512;
        b.mdts = Some(1);
        assert_eq!(b.check_blocks(), 8);
    }

    #[test]
    fn the_nbd_step_runs_once_per_x86_run_with_the_real_payload() {
        assert!(parse(&[]).unwrap()[0].nbd);
        let m = parse(&["--matrix"]).unwrap();
        assert_eq!(m.iter().map(|b| b.nbd).collect::<Vec<_>>(), [true, false]);
        assert!(!parse(&["--no-nbd"]).unwrap()[0].nbd);
        assert!(!parse(&["--arch", "aarch64"]).unwrap()[0].nbd);
        assert!(!parse(&["--payload", "standin"]).unwrap()[0].nbd);
        assert!(!parse(&["--no-iommu"]).unwrap()[0].nbd);
    }
}

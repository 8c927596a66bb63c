//! Command-line options of `cargo xtask hil` and their validation into boot plans.

use std::fmt;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

/// `cargo xtask hil` options.
#[derive(Debug, Clone, Args)]
pub struct HilArgs {
    /// Install the host packages the run needs (apt-get) and exit.
    #[arg(long)]
    pub install_deps: bool,

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
}

/// QEMU 7.2's default MDTS.
const QEMU_DEFAULT_MDTS: u8 = 7;
/// Blocks the host/guest data checks move, at most (fewer if MDTS forbids it).
pub const CHECK_BLOCKS_MAX: u32 = 8;

impl BootConfig {
    /// A short tag naming this boot in file names and log lines, e.g. `lba512-ns1`.
    pub fn tag(&self) -> String {
        let mut t = format!("lba{}-ns{}", self.lba_size, self.namespaces);
        if let Some(q) = self.max_ioqpairs {
            t.push_str(&format!("-q{q}"));
        }
        if let Some(m) = self.mdts {
            t.push_str(&format!("-mdts{m}"));
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
    let make = |lba_size: u32, irq_modes: Vec<IrqMode>| BootConfig {
        lba_size,
        irq_modes,
        namespaces: args.namespaces,
        max_ioqpairs: args.max_ioqpairs,
        mdts: args.mdts,
    };
    let both = vec![IrqMode::Polled, IrqMode::Msix];
    if args.matrix {
        if args.lba_size.is_some() || args.irq.is_some() {
            bail!("--matrix sets --lba-size and --irq itself; give one or the other");
        }
        return Ok(vec![make(512, both.clone()), make(4096, both)]);
    }
    let lba_size = args.lba_size.unwrap_or(512);
    if lba_size != 512 && lba_size != 4096 {
        bail!("--lba-size must be 512 or 4096, got {lba_size}");
    }
    let irq_modes = match args.irq.unwrap_or(IrqArg::Both) {
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
}

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

    /// A property of QEMU's `nvme` controller device, `KEY=VALUE` (repeatable), e.g.
    /// `--nvme-prop mdts=3 --nvme-prop max_ioqpairs=2 --nvme-prop msix_qsize=2`. `mdts` and
    /// `max_ioqpairs` are the same as `--mdts` / `--max-ioqpairs`; `id`, `serial`, `subsys`,
    /// `drive` and `bus` are set by xtask. `qemu-system-x86_64 -device nvme,help` lists them.
    #[arg(long = "nvme-prop", value_name = "KEY=VALUE")]
    pub nvme_prop: Vec<String>,

    /// A property of every QEMU `nvme-ns` namespace device, `KEY=VALUE` (repeatable), e.g.
    /// `--ns-prop lbads=12` (alias: `logical_block_size=4096`, the same as `--lba-size 4096`)
    /// or `--ns-prop eui64-default=on`. `drive`, `bus`, `nsid`, `detached` and
    /// `physical_block_size` are set by xtask. `qemu-system-x86_64 -device nvme-ns,help`
    /// lists them.
    #[arg(long = "ns-prop", value_name = "KEY=VALUE")]
    pub ns_prop: Vec<String>,

    /// Put the controller in an NVM subsystem (`-device nvme-subsys`) and add this many
    /// namespaces created detached (`detached=on`, NSIDs after the `--namespaces` ones), for
    /// the Namespace Attachment cases (0..=2).
    #[arg(long, default_value_t = 0)]
    pub detached_namespaces: u8,

    /// Interrupt mode of the guest suite; `both` runs the suite once per mode in one boot.
    #[arg(long, value_enum, conflicts_with = "matrix")]
    pub irq: Option<IrqArg>,

    /// Run the standard set (what CI runs): LBA size {512, 4096} x interrupts {polled, msix},
    /// plus two unusual shapes with MSI-X: 4 KiB LBAs with MDTS 1 (8 KiB) and one I/O queue
    /// pair; two namespaces and a detached one in an NVM subsystem, two MSI-X vectors (every
    /// I/O CQ shares vector 1) and three I/O queue pairs.
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
    /// Further `nvme` device properties (`--nvme-prop`), in order.
    pub nvme_props: Vec<(String, String)>,
    /// Further `nvme-ns` device properties (`--ns-prop`), for every namespace.
    pub ns_props: Vec<(String, String)>,
    /// Namespaces created detached in an NVM subsystem (after the attached ones).
    pub detached: u8,
}

/// `nvme` properties xtask sets itself.
const NVME_RESERVED: &[&str] = &["id", "serial", "subsys", "drive", "bus"];
/// `nvme-ns` properties xtask sets itself.
const NS_RESERVED: &[&str] = &["drive", "bus", "nsid", "detached", "physical_block_size"];

/// Parses `KEY=VALUE` properties: the key a QEMU property name, the value free of the
/// characters QEMU's option syntax gives a meaning (`,` `=`) and of whitespace.
fn parse_props(list: &[String], flag: &str, reserved: &[&str]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for p in list {
        let Some((k, v)) = p.split_once('=') else {
            bail!("{flag} {p}: expected KEY=VALUE");
        };
        let key_ok = !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c));
        if !key_ok {
            bail!("{flag} {p}: `{k}` is not a QEMU property name");
        }
        if v.is_empty() || v.chars().any(|c| c == ',' || c == '=' || c.is_whitespace()) {
            bail!("{flag} {p}: the value must be non-empty, without `,`, `=` or spaces");
        }
        if reserved.contains(&k) {
            bail!("{flag} {p}: xtask sets `{k}` itself");
        }
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

fn parse_num<T: std::str::FromStr>(flag: &str, k: &str, v: &str) -> Result<T> {
    v.parse()
        .map_err(|_| anyhow::anyhow!("{flag} {k}={v}: not a number"))
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
        for (k, v) in self.nvme_props.iter().chain(&self.ns_props) {
            let kv: String = format!("{k}{v}")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect();
            t.push('-');
            t.push_str(&kv);
        }
        if self.detached > 0 {
            t.push_str(&format!("-det{}", self.detached));
        }
        if !self.iommu {
            t.push_str("-noiommu");
        }
        if self.iommu_passthrough {
            t.push_str("-pt");
        }
        t
    }

    /// One of the standard shapes (only LBA size and interrupt modes chosen): its table
    /// columns are named by LBA size and mode alone.
    pub fn is_standard(&self) -> bool {
        self.namespaces == 1
            && self.max_ioqpairs.is_none()
            && self.mdts.is_none()
            && self.nvme_props.is_empty()
            && self.ns_props.is_empty()
            && self.detached == 0
            && self.iommu
            && !self.iommu_passthrough
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
    if args.detached_namespaces > 2 {
        bail!(
            "--detached-namespaces must be 0..=2, got {}",
            args.detached_namespaces
        );
    }
    let (mut max_ioqpairs, mut mdts) = (args.max_ioqpairs, args.mdts);
    let mut nvme_props = Vec::new();
    for (k, v) in parse_props(&args.nvme_prop, "--nvme-prop", NVME_RESERVED)? {
        match k.as_str() {
            "mdts" => mdts = Some(parse_num("--nvme-prop", &k, &v)?),
            "max_ioqpairs" => max_ioqpairs = Some(parse_num("--nvme-prop", &k, &v)?),
            _ => nvme_props.push((k, v)),
        }
    }
    let mut lba_prop = None;
    let mut ns_props = Vec::new();
    for (k, v) in parse_props(&args.ns_prop, "--ns-prop", NS_RESERVED)? {
        match k.as_str() {
            "lbads" => {
                let l: u32 = parse_num("--ns-prop", &k, &v)?;
                lba_prop = Some(1u32.checked_shl(l).unwrap_or(0));
            }
            "logical_block_size" => lba_prop = Some(parse_num("--ns-prop", &k, &v)?),
            _ => ns_props.push((k, v)),
        }
    }
    if let (Some(q), true) = (max_ioqpairs, args.max_ioqpairs.is_none()) {
        if !(1..=256).contains(&q) {
            bail!("--nvme-prop max_ioqpairs must be 1..=256, got {q}");
        }
    }
    if mdts.is_some_and(|m| m > 20) {
        bail!("--nvme-prop mdts must be 0..=20, got {}", mdts.unwrap_or(0));
    }
    let make = |lba_size: u32, irq_modes: Vec<IrqMode>| BootConfig {
        arch: args.arch,
        iommu: !args.no_iommu,
        iommu_passthrough: args.iommu_passthrough,
        perf_secs: args.perf,
        lba_size,
        irq_modes,
        namespaces: args.namespaces,
        max_ioqpairs,
        mdts,
        nvme_props: nvme_props.clone(),
        ns_props: ns_props.clone(),
        detached: args.detached_namespaces,
        // The x86_64 guest with the real payload; the stand-in has no NBD server.
        nbd: !args.no_nbd
            && !args.no_iommu
            && args.arch == Arch::X86_64
            && args.payload == PayloadKind::Real,
    };
    let both = vec![IrqMode::Polled, IrqMode::Msix];
    if args.matrix {
        if args.lba_size.is_some() || args.irq.is_some() || lba_prop.is_some() {
            bail!("--matrix sets --lba-size and --irq itself; give one or the other");
        }
        // The NBD step once per run (it takes a few seconds of TCG).
        let mut second = make(4096, both.clone());
        second.nbd = false;
        let mut boots = vec![make(512, both), second];
        boots.extend(unusual_shapes(args.arch));
        return Ok(boots);
    }
    if args.lba_size.is_some() && lba_prop.is_some() {
        bail!("give the LBA size once: --lba-size or --ns-prop lbads/logical_block_size");
    }
    let lba_size = args.lba_size.or(lba_prop).unwrap_or(512);
    if lba_size != 512 && lba_size != 4096 {
        bail!("the LBA size must be 512 or 4096 (lbads 9 or 12), got {lba_size}");
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

/// The unusual shapes `--matrix` adds to the standard set, MSI-X only (each costs one guest
/// run of the suite): every case must size itself from what the controller reports.
fn unusual_shapes(arch: Arch) -> Vec<BootConfig> {
    let base = BootConfig {
        arch,
        iommu: true,
        iommu_passthrough: false,
        perf_secs: None,
        lba_size: 4096,
        irq_modes: vec![IrqMode::Msix],
        namespaces: 1,
        max_ioqpairs: Some(1),
        mdts: Some(1),
        nvme_props: Vec::new(),
        ns_props: Vec::new(),
        detached: 0,
        nbd: false,
    };
    vec![
        // 4 KiB LBAs, MDTS 8 KiB (two blocks per command), one I/O queue pair.
        base.clone(),
        // Two namespaces plus a detached one in an NVM subsystem; two MSI-X vectors, so
        // every I/O CQ shares vector 1; three I/O queue pairs.
        BootConfig {
            lba_size: 512,
            namespaces: 2,
            max_ioqpairs: Some(3),
            mdts: None,
            nvme_props: vec![("msix_qsize".into(), "2".into())],
            detached: 1,
            ..base
        },
    ]
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
    fn matrix_is_two_standard_boots_and_two_unusual_shapes() {
        let p = parse(&["--matrix", "--namespaces", "2"]).unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].lba_size, 512);
        assert_eq!(p[1].lba_size, 4096);
        assert!(p[..2]
            .iter()
            .all(|b| b.irq_modes.len() == 2 && b.namespaces == 2));
        assert_eq!(p[2].tag(), "lba4096-ns1-q1-mdts1");
        assert_eq!(p[2].irq_modes, vec![IrqMode::Msix]);
        assert_eq!(p[3].tag(), "lba512-ns2-q3-msixqsize2-det1");
        assert!(p[2..].iter().all(|b| !b.is_standard()));
        assert!(parse(&[]).unwrap()[0].is_standard());
    }

    #[test]
    fn qemu_properties_are_checked_and_mapped() {
        let p = parse(&[
            "--nvme-prop",
            "mdts=3",
            "--nvme-prop",
            "max_ioqpairs=2",
            "--ns-prop",
            "lbads=12",
            "--nvme-prop",
            "msix_qsize=4",
            "--ns-prop",
            "eui64-default=on",
        ])
        .unwrap();
        assert_eq!(p[0].mdts, Some(3));
        assert_eq!(p[0].max_ioqpairs, Some(2));
        assert_eq!(p[0].lba_size, 4096);
        assert_eq!(p[0].nvme_props, vec![("msix_qsize".into(), "4".into())]);
        assert_eq!(p[0].ns_props, vec![("eui64-default".into(), "on".into())]);
        assert_eq!(p[0].tag(), "lba4096-ns1-q2-mdts3-msixqsize4-eui64defaulton");
        assert_eq!(
            parse(&["--ns-prop", "logical_block_size=4096"]).unwrap()[0].lba_size,
            4096
        );
        for bad in [
            &["--nvme-prop", "mdts"][..],
            &["--nvme-prop", "serial=x"],
            &["--nvme-prop", "Foo=1"],
            &["--nvme-prop", "aerl=1,smart_critical_warning=1"],
            &["--nvme-prop", "mdts=x"],
            &["--nvme-prop", "mdts=21"],
            &["--ns-prop", "nsid=3"],
            &["--ns-prop", "lbads=10"],
            &["--ns-prop", "lbads=12", "--lba-size", "4096"],
            &["--matrix", "--ns-prop", "lbads=12"],
            &["--detached-namespaces", "3"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        let p = parse(&["--detached-namespaces", "1"]).unwrap();
        assert_eq!(p[0].detached, 1);
        assert_eq!(p[0].tag(), "lba512-ns1-det1");
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
        assert_eq!(p.len(), 4);
        assert!(p.iter().all(|b| b.arch == Arch::Aarch64));
        assert!(p[..2].iter().all(|b| b.mdts == Some(3)));
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
        assert_eq!(
            m.iter().map(|b| b.nbd).collect::<Vec<_>>(),
            [true, false, false, false]
        );
        assert!(!parse(&["--no-nbd"]).unwrap()[0].nbd);
        assert!(!parse(&["--arch", "aarch64"]).unwrap()[0].nbd);
        assert!(!parse(&["--payload", "standin"]).unwrap()[0].nbd);
        assert!(!parse(&["--no-iommu"]).unwrap()[0].nbd);
    }
}

//! `cargo xtask hil`: hardware-in-the-loop without hardware.
//!
//! One boot per LBA size, for the guest architecture of `--arch` (x86_64 by default, or
//! aarch64; the differences live in [`arch::Arch`]): QEMU (TCG unless a real KVM is there)
//! with a virtual IOMMU (Intel IOMMU, SMMUv3) and an emulated NVMe controller (one raw image per namespace), a Debian kernel, and an initramfs
//! whose `/init` binds the controller to `vfio-pci` and runs the payload: `vfio-info`, the
//! conformance harness and `nvme-tool` read/write checks, once per interrupt mode. The host
//! plants `host.bin` in namespace 1 before boot (the guest reads and compares it) and checks
//! after QEMU exits that the image holds the guest's `guest.bin`. Pass/fail comes only from the
//! serial log's `HIL-*` lines and those image checks. See `shared/docs/hil-recipe.md` and
//! `shared/docs/arm-hil-recipe.md`.

mod arch;
mod bench;
mod initramfs;
mod kernel;
mod opts;
mod payload;
mod qemu;
mod tools;
mod util;
mod verdict;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use arch::Arch;
pub use opts::HilArgs;
use opts::{BootConfig, PayloadKind};
use verdict::ConfigResult;

/// Size of each namespace's raw image.
const IMAGE_BYTES: u64 = 64 << 20;
/// LBA where the host plants `host.bin` before boot.
const HOST_LBA: u64 = 1000;
/// LBA where the first interrupt mode writes `guest.bin`.
const GUEST_LBA: u64 = 2000;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("xtask has no parent directory"))
}

/// Everything shared by the boots of one run.
struct Env<'a> {
    args: &'a HilArgs,
    tools: tools::HostTools,
    kernel: kernel::Kernel,
    busybox: PathBuf,
    payload: Vec<(String, PathBuf)>,
    modules: Vec<String>,
    late_modules: Vec<String>,
    setup_modules: Vec<String>,
    logs: PathBuf,
}

/// Runs `cargo xtask hil`. `Ok(false)` means the suite ran and something failed.
pub fn main(args: &HilArgs) -> Result<bool> {
    let arch = args.arch;
    if args.install_deps {
        tools::install_deps(arch)?;
        let tools = tools::check(arch)?;
        // Fetch the guest kernel and busybox now, so the first run needs no download.
        let cache = workspace_root()?.join(".hil-cache");
        fs::create_dir_all(&cache)?;
        kernel::prepare(&tools, &cache, arch)?;
        kernel::prepare_busybox(&tools, &cache, arch)?;
        eprintln!("xtask: host tools, Rust target and guest kernel for `cargo xtask hil --arch {arch}` are installed");
        return Ok(true);
    }
    if args.bench {
        return bench::run(args);
    }
    let t0 = Instant::now();
    let boots = opts::plan(args)?;
    let tools = tools::check(arch)?;
    let ws = workspace_root()?;
    let cache = ws.join(".hil-cache");
    fs::create_dir_all(&cache)?;
    let kernel = kernel::prepare(&tools, &cache, arch)?;
    let busybox = kernel::prepare_busybox(&tools, &cache, arch)?;
    let t_kernel = t0.elapsed();

    let specs = match args.payload {
        PayloadKind::Real => payload::REAL,
        PayloadKind::Standin => payload::STANDIN,
    };
    let built = payload::build(&ws, specs, arch, env_linker(&tools))?;
    let t_payload = t0.elapsed() - t_kernel;
    let modules = kernel::modules_for(&kernel, &["vfio-pci"])?;
    let late_modules = match args.payload {
        // The stand-in's nvme-tool moves the controller to the kernel's nvme driver for I/O.
        PayloadKind::Standin => kernel::modules_for(&kernel, &["nvme"])?
            .into_iter()
            .filter(|m| !modules.contains(m))
            .collect(),
        PayloadKind::Real => Vec::new(),
    };
    // The x86_64 guest's last step moves the controller between the kernel's nvme driver and
    // vfio-pci with `nvme-tool setup` (the stand-in's nvme-tool has no `setup`).
    let setup_modules = match (args.payload, arch) {
        (PayloadKind::Real, Arch::X86_64) => kernel::modules_for(&kernel, &["nvme"])
            .context("the guest kernel's nvme driver (for the setup-roundtrip step)")?
            .into_iter()
            .filter(|m| !modules.contains(m))
            .collect(),
        _ => Vec::new(),
    };
    let logs = cache.join("logs");
    fs::create_dir_all(&logs)?;
    let env = Env {
        args,
        tools,
        kernel,
        busybox,
        payload: built.into_iter().map(|b| (b.guest_name, b.path)).collect(),
        modules,
        late_modules,
        setup_modules,
        logs,
    };
    eprintln!(
        "xtask: setup done ({arch} kernel {} {:.1} s, payload build {:.1} s); {} boot(s), accel {}",
        env.kernel.package,
        t_kernel.as_secs_f64(),
        t_payload.as_secs_f64(),
        boots.len(),
        if arch.kvm_usable() { "kvm" } else { "tcg" }
    );

    let mut results: Vec<ConfigResult> = Vec::new();
    for boot in &boots {
        results.extend(run_boot(&env, boot)?);
    }
    Ok(summarize(&results, t0.elapsed()))
}

fn summarize(results: &[ConfigResult], wall: Duration) -> bool {
    let passed = results.iter().filter(|r| r.pass()).count();
    let failed = results.len() - passed;
    let per: Vec<String> = results
        .iter()
        .map(|r| {
            let (p, f) = r.counts();
            let conf = match r.conformance {
                Some(c) => format!(
                    ", conformance {}/{} ({} allowed, {} skipped)",
                    c.passed,
                    c.total(),
                    c.allowed,
                    c.skipped
                ),
                None => String::new(),
            };
            format!(
                "{} {} {p} passed {f} failed{conf}",
                r.name,
                if r.pass() { "PASS" } else { "FAIL" }
            )
        })
        .collect();
    let ok = failed == 0 && !results.is_empty();
    println!(
        "HIL-SUMMARY: {} {passed}/{} configurations [{}] wall {:.1} s",
        if ok { "PASS" } else { "FAIL" },
        results.len(),
        per.join("; "),
        wall.as_secs_f64()
    );
    println!("hil: {passed} passed, {failed} failed");
    ok
}

/// Writes `data` at byte `offset` of `image`.
fn write_at(image: &Path, offset: u64, data: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(image)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// Host-side check that `image` holds `want` at byte `offset`.
fn image_holds(image: &Path, offset: u64, want: &[u8]) -> Result<(), String> {
    let mut got = vec![0u8; want.len()];
    let mut f = fs::File::open(image).map_err(|e| format!("open {}: {e}", image.display()))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    f.read_exact(&mut got).map_err(|e| e.to_string())?;
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(_) if got.iter().all(|&b| b == 0) => Err(format!(
            "image is all zeros at byte {offset}: never written"
        )),
        Some(i) => Err(format!(
            "image differs from guest.bin at byte {} (offset {i} in the data)",
            offset + i as u64
        )),
    }
}

/// The guest's `RESULT<TAB>backend<TAB>case<TAB>outcome` lines, with the backend (the guest's
/// `vfio:<bdf>/<mode>`) renamed to the QEMU configuration it ran on.
fn results_tsv(log: &str, boot: &BootConfig) -> String {
    let mut out = String::new();
    for line in log.lines() {
        let Some(rest) = line.split("RESULT\t").nth(1) else {
            continue;
        };
        let f: Vec<&str> = rest.trim_end().split('\t').collect();
        if f.len() != 3 {
            continue;
        }
        let mode = f[0].rsplit('/').next().unwrap_or("?");
        out.push_str(&format!(
            "RESULT\t{}\t{}\t{}\n",
            column(boot, mode),
            f[1],
            f[2]
        ));
    }
    out
}

/// The table column of `boot` in interrupt `mode`: LBA size and mode for a standard shape,
/// plus the boot's tag for any other.
fn column(boot: &BootConfig, mode: &str) -> String {
    let name = boot.arch.table_backend(boot.lba_size, mode);
    if boot.is_standard() {
        name
    } else {
        format!("{name} ({})", boot.tag())
    }
}

fn run_boot(env: &Env<'_>, boot: &BootConfig) -> Result<Vec<ConfigResult>> {
    let tag = boot.tag();
    let tmp = tempfile::Builder::new()
        .prefix(&format!("hil-{tag}-"))
        .tempdir()?;
    let dir = tmp.path().to_path_buf();
    let _keep = if env.args.keep {
        eprintln!("xtask: [{tag}] keeping {}", dir.display());
        let _ = tmp.keep();
        None
    } else {
        Some(tmp)
    };

    let images: Vec<PathBuf> = (1..=boot.namespaces + boot.detached)
        .map(|n| dir.join(format!("ns{n}.img")))
        .collect();
    for img in &images {
        util::run(
            Command::new(&env.tools.qemu_img)
                .args(["create", "-q", "-f", "raw"])
                .arg(img)
                .arg(IMAGE_BYTES.to_string()),
        )?;
    }
    let plan = initramfs::GuestPlan {
        tag: tag.clone(),
        kver: env.kernel.kver.clone(),
        modules: env.modules.clone(),
        late_modules: env.late_modules.clone(),
        irq_modes: boot.irq_modes.clone(),
        lba_size: boot.lba_size,
        blocks: boot.check_blocks(),
        host_lba: HOST_LBA,
        guest_lba: GUEST_LBA,
        expect_no_iommu: !boot.iommu,
        perf_secs: boot.perf_secs,
        expect_identity_domain: boot.iommu_passthrough,
        setup_modules: if boot.iommu {
            env.setup_modules.clone()
        } else {
            Vec::new()
        },
        nbd: None,
        tokio: matches!(env.args.payload, PayloadKind::Real),
    };
    let plan = initramfs::GuestPlan {
        nbd: if boot.nbd {
            Some(nbd_plan(env, &plan)?)
        } else {
            None
        },
        ..plan
    };
    let size = usize::try_from(plan.data_size())?;
    let mut rng = util::TestRng::from_entropy();
    let host_bin = rng.bytes(size);
    let guest_bin = rng.bytes(size);
    let lba = u64::from(boot.lba_size);
    write_at(&images[0], HOST_LBA * lba, &host_bin).context("planting host.bin")?;

    let initrd = dir.join("initramfs.cpio.gz");
    let data: [(&str, &[u8]); 2] = [("host.bin", &host_bin), ("guest.bin", &guest_bin)];
    initramfs::build(
        &env.tools,
        &initramfs::Contents {
            plan: &plan,
            modules_dir: &env.kernel.modules_dir(),
            busybox: &env.busybox,
            payload: &env.payload,
            data: &data,
        },
        &dir.join("initramfs"),
        &initrd,
    )?;

    let qc = qemu::QemuConfig {
        arch: boot.arch,
        iommu: boot.iommu,
        cmdline_extra: if boot.iommu_passthrough {
            vec!["iommu.passthrough=1".to_owned()]
        } else {
            Vec::new()
        },
        kernel: env.kernel.image.clone(),
        initrd: initrd.clone(),
        images: images.clone(),
        lba_size: boot.lba_size,
        max_ioqpairs: boot.max_ioqpairs,
        mdts: boot.mdts,
        nvme_props: boot.nvme_props.clone(),
        ns_props: boot.ns_props.clone(),
        detached: usize::from(boot.detached),
        kvm: boot.arch.kvm_usable(),
    };
    let qargs = qemu::args(&qc);
    let log = env.logs.join(format!("{tag}.log"));
    eprintln!(
        "xtask: [{tag}] booting (initramfs {} KiB, irq {:?}, serial log {})",
        fs::metadata(&initrd)?.len() >> 10,
        boot.irq_modes
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>(),
        log.display()
    );
    if env.args.verbose {
        eprintln!(
            "xtask: [{tag}] {} {}",
            env.tools.qemu.display(),
            qargs.join(" ")
        );
    }
    let t = Instant::now();
    let outcome = qemu::run(
        &env.tools.qemu,
        &qargs,
        &log,
        Duration::from_secs(env.args.timeout),
        env.args.verbose,
    )?;
    let boot_secs = t.elapsed().as_secs_f64();
    let boot_error = match outcome {
        qemu::Outcome::TimedOut => Some(format!(
            "QEMU killed after the {} s timeout",
            env.args.timeout
        )),
        qemu::Outcome::Exited(s) if !s.success() => Some(format!("QEMU exited with {s}")),
        qemu::Outcome::Exited(_) => None,
    };

    let raw_log = fs::read(&log)?;
    if let Some(dir) = &env.args.results {
        fs::create_dir_all(dir)?;
        let tsv = results_tsv(&String::from_utf8_lossy(&raw_log), boot);
        fs::write(dir.join(format!("{tag}.tsv")), tsv)?;
    }
    let report = verdict::parse_log(&raw_log);
    let host_checks: Vec<Result<(), String>> = (0..plan.irq_modes.len())
        .map(|i| image_holds(&images[0], plan.guest_lba_for(i) * lba, &guest_bin))
        .collect();
    let mut results = verdict::judge(&tag, &plan, &report, &host_checks, boot_error.as_deref());
    if let Some(n) = &plan.nbd {
        let r = nbd_image_check(
            &images[0],
            n.start_block * lba,
            n.blocks * lba,
            &dir,
            &[("/dir/guest.bin", &guest_bin), ("/host.bin", &host_bin)],
        );
        if let Err(e) = &r {
            eprintln!("xtask: [{tag}] nbd-image: {e}");
        } else {
            eprintln!("xtask: [{tag}] nbd-image: the guest's ext2 filesystem is in the image, clean, with its files");
        }
        for res in &mut results {
            res.checks.push(verdict::Check {
                name: "nbd-image".into(),
                pass: r.is_ok(),
                detail: r.clone().err().unwrap_or_default(),
            });
        }
    }
    eprintln!(
        "xtask: [{tag}] QEMU ran {boot_secs:.1} s; devices: {:?}",
        report.devices
    );
    if let Some((_, v)) = &report.verdict {
        eprintln!("xtask: [{tag}] guest: HIL-VERDICT: {v}");
    }
    eprintln!("xtask: [{tag}] timings: {}", timings(&report, boot_secs));
    for (mode, iops) in &report.perf {
        eprintln!("xtask: [{tag}] perf[{mode}]: {iops:.0} IOPS (4 KiB random reads, QD 32)");
    }
    let mut any_failed = false;
    for r in &results {
        let (p, f) = r.counts();
        eprintln!(
            "xtask: {} {}: {p} checks passed, {f} failed",
            r.name,
            if r.pass() { "PASS" } else { "FAIL" }
        );
        for c in r.checks.iter().filter(|c| !c.pass) {
            any_failed = true;
            eprintln!("xtask:     FAIL {}: {}", c.name, c.detail);
        }
    }
    if any_failed && !env.args.verbose {
        let text = String::from_utf8_lossy(&fs::read(&log)?).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(60);
        eprintln!(
            "xtask: [{tag}] last {} lines of {}:",
            lines.len() - from,
            log.display()
        );
        for l in &lines[from..] {
            eprintln!("    | {l}");
        }
    }
    Ok(results)
}

/// The NBD step of a boot: the second half of namespace 1 (the soak's region, which no
/// image check reads), through the kernel's `nbd` module, with `ext4` for the mount.
fn nbd_plan(env: &Env<'_>, plan: &initramfs::GuestPlan) -> Result<initramfs::NbdPlan> {
    // Debian builds ext4 (which also mounts ext2) as a module; its softdep names the
    // algorithm alias `crypto-crc32c`, which `crc32c_generic` provides.
    let modules: Vec<String> =
        kernel::modules_for(&env.kernel, &["nbd", "crc32c_generic", "ext4"])?
            .into_iter()
            .filter(|m| !plan.modules.contains(m))
            .collect();
    let start_block = plan.soak_start();
    Ok(initramfs::NbdPlan {
        modules,
        start_block,
        blocks: IMAGE_BYTES / u64::from(plan.lba_size) - start_block,
    })
}

/// A host tool from e2fsprogs (in `/sbin` on Debian, which may not be on `PATH`).
fn e2fs_tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Host-side check of the NBD step: the `len` bytes at `offset` of `image` hold an ext2
/// filesystem that `e2fsck -fn` finds clean, whose `files` (path, content) are what the
/// guest copied onto it.
fn nbd_image_check(
    image: &Path,
    offset: u64,
    len: u64,
    dir: &Path,
    files: &[(&str, &[u8])],
) -> Result<(), String> {
    let mut f = fs::File::open(image).map_err(|e| format!("open {}: {e}", image.display()))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    let mut fsimg = vec![0u8; usize::try_from(len).map_err(|e| e.to_string())?];
    f.read_exact(&mut fsimg).map_err(|e| e.to_string())?;
    let path = dir.join("nbd-fs.img");
    fs::write(&path, &fsimg).map_err(|e| e.to_string())?;
    let fsck = Command::new(e2fs_tool("e2fsck"))
        .args(["-f", "-n"])
        .arg(&path)
        .output()
        .map_err(|e| format!("running e2fsck (e2fsprogs): {e}"))?;
    if !fsck.status.success() {
        return Err(format!(
            "e2fsck -fn on the image's bytes {offset}..{}: {}\n{}",
            offset + len,
            fsck.status,
            String::from_utf8_lossy(&fsck.stdout)
        ));
    }
    for (name, want) in files {
        let out = Command::new(e2fs_tool("debugfs"))
            .args(["-R", &format!("cat {name}")])
            .arg(&path)
            .output()
            .map_err(|e| format!("running debugfs (e2fsprogs): {e}"))?;
        if out.stdout != *want {
            return Err(format!(
                "{name} in the filesystem differs from what the guest wrote ({} bytes read, {} expected)",
                out.stdout.len(),
                want.len()
            ));
        }
    }
    Ok(())
}

fn env_linker(tools: &tools::HostTools) -> Option<&Path> {
    tools.cross_linker.as_deref()
}

/// One line of boot timings: QEMU wall time, guest uptime when `/init` started, and the
/// duration of every conformance and perf step.
fn timings(r: &verdict::GuestReport, qemu_secs: f64) -> String {
    let mut parts = vec![format!("QEMU {qemu_secs:.1} s")];
    if let Some(t) = r.init_at {
        parts.push(format!("/init at guest t={t:.1} s"));
    }
    for (name, end) in &r.steps {
        if name.starts_with("conformance[") || name.starts_with("perf[") || name == "modules" {
            if let Some(d) = end.secs {
                parts.push(format!("{name} {d:.1} s"));
            }
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arch::Arch;

    #[test]
    fn results_are_renamed_to_the_qemu_configuration() {
        let log =
            "noise\r\n\x1b[0mRESULT\tvfio:0000:00:03.0/msix\tQM-07\tallowed:QEMU-01\nRESULT\tbad\n";
        let boot = |arch, lba_size| BootConfig {
            arch,
            iommu: true,
            iommu_passthrough: false,
            perf_secs: None,
            lba_size,
            irq_modes: vec![opts::IrqMode::Msix],
            namespaces: 1,
            max_ioqpairs: None,
            mdts: None,
            nvme_props: vec![],
            ns_props: vec![],
            detached: 0,
            nbd: false,
        };
        assert_eq!(
            results_tsv(log, &boot(Arch::X86_64, 4096)),
            "RESULT\tQEMU 4096 B msix\tQM-07\tallowed:QEMU-01\n"
        );
        assert_eq!(
            results_tsv(log, &boot(Arch::Aarch64, 512)),
            "RESULT\tQEMU aarch64 512 B msix\tQM-07\tallowed:QEMU-01\n"
        );
        let unusual = BootConfig {
            mdts: Some(1),
            ..boot(Arch::X86_64, 4096)
        };
        assert_eq!(
            results_tsv(log, &unusual),
            "RESULT\tQEMU 4096 B msix (lba4096-ns1-mdts1)\tQM-07\tallowed:QEMU-01\n"
        );
    }

    #[test]
    fn image_check_reports_zero_and_mismatch() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("i.img");
        fs::write(&img, vec![0u8; 8192]).unwrap();
        let want = vec![0xA5u8; 512];
        assert!(image_holds(&img, 1024, &want)
            .unwrap_err()
            .contains("never written"));
        write_at(&img, 1024, &want).unwrap();
        assert_eq!(image_holds(&img, 1024, &want), Ok(()));
        let mut other = want.clone();
        other[7] = 0;
        assert!(image_holds(&img, 1024, &other)
            .unwrap_err()
            .contains("byte 1031"));
        assert!(image_holds(&img, 8000, &want).is_err()); // past the end
    }
}

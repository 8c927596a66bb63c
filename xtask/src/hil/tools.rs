//! Host tools the HIL run needs: detection with "install package X" messages, and
//! `--install-deps`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::arch::Arch;
use super::util;

/// The apt packages `--install-deps` installs for every guest architecture (the QEMU system
/// emulator and any cross toolchain come from [`Arch::apt_packages`]).
pub const APT_PACKAGES: &[&str] = &["qemu-utils", "busybox-static", "cpio", "kmod"];

/// Everything `--install-deps` installs for `arch`.
pub fn apt_packages(arch: Arch) -> Vec<&'static str> {
    let mut v = arch.apt_packages().to_vec();
    v.extend_from_slice(APT_PACKAGES);
    v
}

/// Absolute paths of the host tools, once found.
#[derive(Debug, Clone)]
pub struct HostTools {
    /// The QEMU system emulator of the guest architecture (`qemu-system-x86_64`,
    /// `qemu-system-aarch64`).
    pub qemu: PathBuf,
    /// `qemu-img`.
    pub qemu_img: PathBuf,
    /// `cpio`.
    pub cpio: PathBuf,
    /// `gzip`.
    pub gzip: PathBuf,
    /// A statically linked `busybox`.
    pub busybox: PathBuf,
    /// `depmod`.
    pub depmod: PathBuf,
    /// `dpkg-deb`.
    pub dpkg_deb: PathBuf,
    /// `tar`.
    pub tar: PathBuf,
    /// `apt-get`.
    pub apt_get: PathBuf,
    /// `apt-cache`.
    pub apt_cache: PathBuf,
    /// The cross linker for a guest architecture that is not the host's.
    pub cross_linker: Option<PathBuf>,
}

/// Looks `name` up in `PATH` and the sbin directories (which a non-root `PATH` may lack).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether an ELF image has no `PT_INTERP` program header (is statically linked).
/// `None` when `elf` is not a 64-bit little-endian ELF.
pub fn elf_is_static(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let ty = u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)?;
        if ty == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

/// Finds every tool a run for `arch` needs, or fails with one message that names each missing
/// apt package (and the missing Rust target).
pub fn check(arch: Arch) -> Result<HostTools> {
    let mut missing: Vec<String> = Vec::new();
    let mut find = |name: &str, package: &str| -> PathBuf {
        which(name).unwrap_or_else(|| {
            missing.push(format!("`{name}` (apt package {package})"));
            PathBuf::new()
        })
    };
    let (qemu, qemu_pkg) = arch.qemu_binary();
    let cross_linker = arch.linker_env().map(|(_, gcc)| {
        let pkg = arch
            .apt_packages()
            .iter()
            .find(|p| p.starts_with("gcc-"))
            .copied()
            .unwrap_or("a cross gcc");
        find(gcc, pkg)
    });
    let tools = HostTools {
        qemu: find(qemu, qemu_pkg),
        qemu_img: find("qemu-img", "qemu-utils"),
        cpio: find("cpio", "cpio"),
        gzip: find("gzip", "gzip"),
        busybox: find("busybox", "busybox-static"),
        depmod: find("depmod", "kmod"),
        dpkg_deb: find("dpkg-deb", "dpkg"),
        tar: find("tar", "tar"),
        apt_get: find("apt-get", "apt"),
        apt_cache: find("apt-cache", "apt"),
        cross_linker,
    };
    if !rust_target_installed(arch.target_triple()) {
        missing.push(format!(
            "the Rust target {0} (`rustup target add {0}`)",
            arch.target_triple()
        ));
    }
    if !tools.busybox.as_os_str().is_empty() {
        check_static_busybox(&tools.busybox, &mut missing)?;
    }
    if !missing.is_empty() {
        bail!(
            "missing host tools: {}.\nInstall them with `cargo xtask hil --arch {arch} --install-deps` (as root), i.e. \
             `apt-get update && apt-get install -y {}`",
            missing.join(", "),
            apt_packages(arch).join(" ")
        );
    }
    Ok(tools)
}

fn check_static_busybox(path: &Path, missing: &mut Vec<String>) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if elf_is_static(&bytes) != Some(true) {
        missing.push(format!(
            "a statically linked busybox ({} is dynamically linked: apt package busybox-static)",
            path.display()
        ));
    }
    Ok(())
}

/// The `Candidate:` version in `apt-cache policy` output.
pub fn policy_candidate(policy: &str) -> Option<&str> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "(none)")
}

/// Whether `rustup` (or the sysroot of a toolchain without rustup) has the standard library
/// of `triple`.
pub fn rust_target_installed(triple: &str) -> bool {
    if let Ok(out) = util::cmd("rustup", ["target", "list", "--installed"]).output() {
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == triple);
        }
    }
    // No rustup: look into the sysroot.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    util::cmd(&rustc, ["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .is_some_and(|root| Path::new(&root).join("lib/rustlib").join(triple).is_dir())
}

/// `--install-deps`: for a foreign guest architecture `dpkg --add-architecture` (so its
/// kernel and busybox packages can be downloaded); `apt-get update && apt-get install -y ...`;
/// `rustup target add` for the payload's target.
///
/// If the install fails because a newer `qemu-utils` (for instance from backports) breaks the
/// distribution's QEMU system package, it is retried with `qemu-utils` pinned to the version
/// of that package (a downgrade of that one package).
pub fn install_deps(arch: Arch) -> Result<()> {
    let uid = util::output(&mut util::cmd("id", ["-u"]))?;
    if uid.trim() != "0" {
        bail!("--install-deps runs apt-get and needs root (run it as root, e.g. with sudo)");
    }
    if !arch.is_host() {
        let foreign = util::output(&mut util::cmd("dpkg", ["--print-foreign-architectures"]))?;
        if !foreign.lines().any(|l| l.trim() == arch.debian()) {
            eprintln!("xtask: dpkg --add-architecture {}", arch.debian());
            util::run(&mut util::cmd(
                "dpkg",
                ["--add-architecture", arch.debian()],
            ))?;
        }
    }
    let apt = |args: &[&str]| {
        let mut c = util::cmd("apt-get", args);
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    util::run(&mut apt(&["update"]))?;
    let packages = apt_packages(arch);
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend_from_slice(&packages);
    eprintln!("xtask: apt-get {}", args.join(" "));
    if util::run(&mut apt(&args)).is_err() {
        let (_, qemu_pkg) = arch.qemu_binary();
        let policy = util::output(&mut util::cmd("apt-cache", ["policy", qemu_pkg]))?;
        let Some(version) = policy_candidate(&policy) else {
            bail!("apt-get install failed and {qemu_pkg} has no install candidate");
        };
        let pin = format!("qemu-utils={version}");
        let mut retry = vec![
            "install",
            "-y",
            "--no-install-recommends",
            "--allow-downgrades",
        ];
        retry.extend(packages.iter().copied().filter(|p| *p != "qemu-utils"));
        retry.push(&pin);
        eprintln!(
            "xtask: retrying with qemu-utils pinned to {qemu_pkg}'s version: apt-get {}",
            retry.join(" ")
        );
        util::run(&mut apt(&retry))?;
    }
    let triple = arch.target_triple();
    if !rust_target_installed(triple) {
        eprintln!("xtask: rustup target add {triple}");
        util::run(&mut util::cmd("rustup", ["target", "add", triple]))
            .context("adding the Rust target of the guest payload")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_is_parsed_from_policy() {
        let p = "qemu-system-x86:\n  Installed: (none)\n  Candidate: 1:7.2+dfsg-7+deb12u18+b3\n  Version table:\n";
        assert_eq!(policy_candidate(p), Some("1:7.2+dfsg-7+deb12u18+b3"));
        assert_eq!(policy_candidate("x:\n  Candidate: (none)\n"), None);
        assert_eq!(policy_candidate(""), None);
    }

    fn elf_with_phdrs(types: &[u32]) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56 * types.len()];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            e[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
        }
        e
    }

    #[test]
    fn static_detection_looks_for_pt_interp() {
        assert_eq!(elf_is_static(&elf_with_phdrs(&[1, 1, 4])), Some(true));
        assert_eq!(elf_is_static(&elf_with_phdrs(&[6, 3, 1])), Some(false));
        assert_eq!(elf_is_static(b"#!/bin/sh\n"), None);
        // Truncated program header table: not a panic.
        let mut e = elf_with_phdrs(&[1, 3]);
        e.truncate(80);
        assert_eq!(elf_is_static(&e), None);
    }

    #[test]
    fn this_test_binary_is_recognised_as_elf() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(elf_is_static(&exe).is_some());
    }
}

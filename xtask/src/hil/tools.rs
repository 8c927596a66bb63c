//! Host tools the HIL run needs: detection with "install package X" messages, and
//! `--install-deps`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::util;

/// The apt packages `--install-deps` installs.
pub const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-utils",
    "busybox-static",
    "cpio",
    "kmod",
];

/// Absolute paths of the host tools, once found.
#[derive(Debug, Clone)]
pub struct HostTools {
    /// `qemu-system-x86_64`.
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

/// Finds every tool or fails with one message that names each missing apt package.
pub fn check() -> Result<HostTools> {
    let mut missing: Vec<String> = Vec::new();
    let mut find = |name: &str, package: &str| -> PathBuf {
        which(name).unwrap_or_else(|| {
            missing.push(format!("`{name}` (apt package {package})"));
            PathBuf::new()
        })
    };
    let tools = HostTools {
        qemu: find("qemu-system-x86_64", "qemu-system-x86"),
        qemu_img: find("qemu-img", "qemu-utils"),
        cpio: find("cpio", "cpio"),
        gzip: find("gzip", "gzip"),
        busybox: find("busybox", "busybox-static"),
        depmod: find("depmod", "kmod"),
        dpkg_deb: find("dpkg-deb", "dpkg"),
        tar: find("tar", "tar"),
        apt_get: find("apt-get", "apt"),
        apt_cache: find("apt-cache", "apt"),
    };
    if !tools.busybox.as_os_str().is_empty() {
        check_static_busybox(&tools.busybox, &mut missing)?;
    }
    if !missing.is_empty() {
        bail!(
            "missing host tools: {}.\nInstall them with `cargo xtask hil --install-deps` (as root), i.e. \
             `apt-get update && apt-get install -y {}`",
            missing.join(", "),
            APT_PACKAGES.join(" ")
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

/// `--install-deps`: `apt-get update && apt-get install -y ...`.
///
/// If the install fails because a newer `qemu-utils` (for instance from backports) breaks the
/// distribution's `qemu-system-x86`, it is retried with `qemu-utils` pinned to the version of
/// `qemu-system-x86` (a downgrade of that one package).
pub fn install_deps() -> Result<()> {
    let uid = util::output(&mut util::cmd("id", ["-u"]))?;
    if uid.trim() != "0" {
        bail!("--install-deps runs apt-get and needs root (run it as root, e.g. with sudo)");
    }
    let apt = |args: &[&str]| {
        let mut c = util::cmd("apt-get", args);
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    util::run(&mut apt(&["update"]))?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend_from_slice(APT_PACKAGES);
    eprintln!("xtask: apt-get {}", args.join(" "));
    if util::run(&mut apt(&args)).is_ok() {
        return Ok(());
    }
    let policy = util::output(&mut util::cmd("apt-cache", ["policy", "qemu-system-x86"]))?;
    let Some(version) = policy_candidate(&policy) else {
        bail!("apt-get install failed and qemu-system-x86 has no install candidate");
    };
    let pin = format!("qemu-utils={version}");
    let mut retry = vec![
        "install",
        "-y",
        "--no-install-recommends",
        "--allow-downgrades",
    ];
    retry.extend(APT_PACKAGES.iter().copied().filter(|p| *p != "qemu-utils"));
    retry.push(&pin);
    eprintln!(
        "xtask: retrying with qemu-utils pinned to qemu-system-x86's version: apt-get {}",
        retry.join(" ")
    );
    util::run(&mut apt(&retry))
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

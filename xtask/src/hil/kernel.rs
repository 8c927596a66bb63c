//! The guest kernel: Debian's `linux-image-<version>-<amd64|arm64>` package, downloaded (not
//! installed), reduced to the files the guest needs, its module index rebuilt with
//! `depmod -b`, and its image made bootable: on x86_64 the ELF `vmlinux` is unpacked from
//! `vmlinuz` so QEMU boots it directly (PVH) without paying for xz decompression under TCG; on
//! aarch64 `vmlinuz` is a plain `Image` and is booted as is. Everything is cached under
//! `<cache>/kernel/` (`kernel-aarch64/`) with a stamp naming the package and version.
//!
//! The guest's busybox for a foreign architecture (`busybox-static:arm64`) is downloaded the
//! same way ([`prepare_busybox`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use super::arch::{Arch, KernelImage};
use super::tools::{self, HostTools};
use super::util;

/// Members of the `.deb` the guest needs (GNU tar wildcards, `*` crosses `/`).
pub const DEB_MEMBERS: &[&str] = &[
    "./boot/*",
    "./lib/modules/*/modules.*",
    "./lib/modules/*/kernel/drivers/vfio/*",
    "./lib/modules/*/kernel/virt/lib/*",
    // The kernel's own NVMe driver and what it needs (t10-pi, crc64): only the stand-in
    // payload's nvme-tool loads it. Members a package lacks (arm64 builds irqbypass in) are
    // left out of the extraction.
    "./lib/modules/*/kernel/drivers/nvme/host/*",
    "./lib/modules/*/kernel/block/*",
    "./lib/modules/*/kernel/lib/*",
    "./lib/modules/*/kernel/crypto/*",
    // The kernel's NBD client and ext4 (which mounts ext2): the guest's filesystem check
    // through `nvme-tool nbd`.
    "./lib/modules/*/kernel/drivers/block/nbd.ko",
    "./lib/modules/*/kernel/fs/ext4/*",
    "./lib/modules/*/kernel/fs/jbd2/*",
    "./lib/modules/*/kernel/fs/mbcache.ko",
];

/// Bumped whenever [`DEB_MEMBERS`] or the unpacking changes, so old caches are rebuilt.
const CACHE_LAYOUT: u32 = 4;

/// Whether a GNU tar wildcard (`*` matches any run of characters, `/` included) matches `name`.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| wildcard_match(tail, &rest[i..]))
        }
    }
}

/// The members of [`DEB_MEMBERS`] that match at least one entry of `listing` (the paths of
/// `dpkg-deb --fsys-tarfile X.deb | tar -t`): tar fails on a pattern that matches nothing.
pub fn present_members<'a>(listing: &str, members: &[&'a str]) -> Vec<&'a str> {
    members
        .iter()
        .copied()
        .filter(|m| listing.lines().any(|l| wildcard_match(m, l.trim())))
        .collect()
}

/// The xz stream header magic.
pub const XZ_MAGIC: [u8; 6] = [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00];

/// A prepared guest kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The image QEMU boots: the uncompressed ELF `vmlinux` (x86_64) or the arm64 `Image`.
    pub image: PathBuf,
    /// Root holding `lib/modules/<kver>/` (modules and a rebuilt `modules.dep`).
    pub root: PathBuf,
    /// Kernel release, e.g. `6.1.0-56-amd64`.
    pub kver: String,
    /// `<package> <version>` it came from.
    pub package: String,
}

impl Kernel {
    /// `lib/modules/<kver>` under [`Kernel::root`].
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.kver)
    }
}

/// The package the metapackage (`linux-image-amd64`) depends on, from `apt-cache depends`
/// output.
pub fn parse_depends(out: &str) -> Option<&str> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.starts_with('<'))
}

/// Every offset where the xz magic starts in `data`.
pub fn xz_magic_offsets(data: &[u8]) -> Vec<usize> {
    data.windows(XZ_MAGIC.len())
        .enumerate()
        .filter(|(_, w)| *w == XZ_MAGIC)
        .map(|(i, _)| i)
        .collect()
}

/// Decompresses the first xz stream in `vmlinuz` that yields an ELF image into `out`.
/// Returns the offset of that stream. Data after the end of the stream is ignored.
pub fn extract_vmlinux(vmlinuz: &[u8], out: &mut impl Write) -> Result<usize> {
    for off in xz_magic_offsets(vmlinuz) {
        if decompress_elf_stream(&vmlinuz[off..], out)? {
            return Ok(off);
        }
    }
    bail!("no xz stream holding an ELF image found in vmlinuz")
}

/// Decodes one xz stream at the start of `input` into `out` if it begins with an ELF header.
/// `Ok(false)` (nothing written) when the stream is invalid or not an ELF image.
fn decompress_elf_stream(input: &[u8], out: &mut impl Write) -> Result<bool> {
    use xz2::stream::{Action, Status, Stream};
    let Ok(mut dec) = Stream::new_stream_decoder(u64::MAX, 0) else {
        return Ok(false);
    };
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut checked = false;
    let mut head: Vec<u8> = Vec::new();
    loop {
        let consumed = usize::try_from(dec.total_in())?;
        let before = dec.total_out();
        buf.clear();
        let status = match dec.process_vec(&input[consumed..], &mut buf, Action::Run) {
            Ok(s) => s,
            Err(_) if !checked => return Ok(false),
            Err(e) => bail!("the kernel's xz stream is corrupt: {e}"),
        };
        if checked {
            out.write_all(&buf)?;
        } else {
            head.extend_from_slice(&buf);
            if head.len() >= 4 {
                if head[..4] != *b"\x7fELF" {
                    return Ok(false);
                }
                checked = true;
                out.write_all(&head)?;
            }
        }
        match status {
            Status::StreamEnd => return Ok(checked),
            _ if dec.total_out() == before && usize::try_from(dec.total_in())? == consumed => {
                if !checked {
                    return Ok(false);
                }
                bail!("the kernel's xz stream ends early");
            }
            _ => {}
        }
    }
}

/// Module load order for `wanted` from `modules.dep` and `modules.softdep` text: every module
/// after its dependencies, `pre:` soft dependencies before, `post:` ones after, each once.
/// Soft dependencies that are not in the index are skipped (as modprobe does). Returns paths
/// relative to `lib/modules/<kver>/`.
pub fn module_order(modules_dep: &str, softdep: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let norm = |s: &str| s.replace('-', "_");
    let name_of = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        norm(file.split(".ko").next().unwrap_or(file))
    };
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let path = path.trim();
        let d = rest.split_whitespace().map(&name_of).collect();
        deps.insert(name_of(path), (path.to_owned(), d));
    }
    let mut soft: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for line in softdep.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("softdep") {
            continue;
        }
        let Some(module) = words.next() else { continue };
        let entry = soft.entry(norm(module)).or_default();
        let mut post = false;
        for w in words {
            match w {
                "pre:" => post = false,
                "post:" => post = true,
                m if post => entry.1.push(norm(m)),
                m => entry.0.push(norm(m)),
            }
        }
    }
    fn visit(
        m: &str,
        required: bool,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        soft: &BTreeMap<String, (Vec<String>, Vec<String>)>,
        seen: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if seen.iter().any(|s| s == m) {
            return Ok(());
        }
        let Some((path, hard)) = deps.get(m) else {
            if required {
                bail!("module `{m}` is not in modules.dep");
            }
            return Ok(());
        };
        seen.push(m.to_owned());
        let (pre, post) = soft.get(m).cloned().unwrap_or_default();
        for p in &pre {
            visit(p, false, deps, soft, seen, order)?;
        }
        // modules.dep lists dependencies so that the last one loads first.
        for d in hard.iter().rev() {
            visit(d, true, deps, soft, seen, order)?;
        }
        order.push(path.clone());
        for p in &post {
            visit(p, false, deps, soft, seen, order)?;
        }
        Ok(())
    }
    let mut seen = Vec::new();
    let mut order = Vec::new();
    for w in wanted {
        visit(&norm(w), true, &deps, &soft, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// Module paths (relative to `lib/modules/<kver>/`) in load order for `wanted`.
pub fn modules_for(kernel: &Kernel, wanted: &[&str]) -> Result<Vec<String>> {
    let dir = kernel.modules_dir();
    let dep = fs::read_to_string(dir.join("modules.dep")).context("reading modules.dep")?;
    let soft = fs::read_to_string(dir.join("modules.softdep")).unwrap_or_default();
    module_order(&dep, &soft, wanted)
}

/// `(package, version)` from the metapackage's `Depends: linux-image-X (= V)` in
/// `apt-cache show --no-all-versions` output, when the dependency pins a version.
pub fn parse_show_depends(show: &str) -> Option<(&str, &str)> {
    let deps = show.lines().find_map(|l| l.strip_prefix("Depends:"))?;
    deps.split(',').map(str::trim).find_map(|d| {
        let (name, rest) = d.split_once(' ')?;
        let version = rest.trim().strip_prefix("(=")?.strip_suffix(')')?.trim();
        (name.starts_with("linux-image-") && !version.is_empty()).then_some((name, version))
    })
}

/// The kernel package and version the architecture's metapackage (`linux-image-amd64`,
/// `linux-image-arm64`) depends on. One `apt-cache show` (each apt-cache call costs about a
/// second here); `apt-cache depends` + `policy` if the metapackage's dependency carries no
/// version.
fn resolve_package(tools: &HostTools, arch: Arch) -> Result<(String, String)> {
    let meta = arch.apt_name(arch.kernel_meta_package());
    let show =
        util::output(Command::new(&tools.apt_cache).args(["show", "--no-all-versions", &meta]))?;
    if let Some((pkg, version)) = parse_show_depends(&show) {
        return Ok((pkg.to_owned(), version.to_owned()));
    }
    let deps = util::output(Command::new(&tools.apt_cache).args(["depends", &meta]))?;
    let pkg = parse_depends(&deps)
        .ok_or_else(|| anyhow!("`apt-cache depends {meta}` names no linux-image package"))?
        .to_owned();
    let policy =
        util::output(Command::new(&tools.apt_cache).args(["policy", &arch.apt_name(&pkg)]))?;
    let version = tools::policy_candidate(&policy)
        .ok_or_else(|| anyhow!("package {pkg} has no install candidate"))?
        .to_owned();
    Ok((pkg, version))
}

/// Reads `<package> <version> <layout> <kver>` from the stamp as (`<package> <version>
/// <layout>`, `<kver>`).
fn read_stamp(path: &Path) -> Option<(String, String)> {
    let s = fs::read_to_string(path).ok()?;
    let w: Vec<&str> = s.split_whitespace().collect();
    match w.as_slice() {
        [pkg, ver, layout, kver] => Some((format!("{pkg} {ver} {layout}"), (*kver).to_owned())),
        _ => None,
    }
}

/// Returns the cached kernel of `arch`, downloading and unpacking it first if the cache is
/// missing or names another package version.
pub fn prepare(tools: &HostTools, cache: &Path, arch: Arch) -> Result<Kernel> {
    let kdir = cache.join(arch.kernel_cache_dir());
    let stamp = kdir.join("stamp");
    let root = kdir.join("root");
    let vmlinux = kdir.join(match arch.kernel_image() {
        KernelImage::ElfFromXz => "vmlinux",
        KernelImage::AsIs => "Image",
    });
    let cached = read_stamp(&stamp).filter(|(_, kver)| {
        vmlinux.is_file()
            && root
                .join("lib/modules")
                .join(kver)
                .join("modules.dep")
                .is_file()
    });
    let (pkg, version) = match resolve_package(tools, arch) {
        Ok(pv) => pv,
        Err(e) => {
            if let Some((package, kver)) = cached {
                eprintln!("xtask: warning: cannot ask apt for the kernel version ({e:#}); using cached {package}");
                return Ok(Kernel {
                    image: vmlinux,
                    root,
                    kver,
                    package,
                });
            }
            return Err(e.context(
                format!("cannot resolve the {arch} guest kernel package: run `apt-get update` (or `cargo xtask hil --arch {arch} --install-deps`)"),
            ));
        }
    };
    let want = format!("{pkg} {version} layout{CACHE_LAYOUT}");
    if let Some((package, kver)) = cached.filter(|(p, _)| *p == want) {
        eprintln!("xtask: guest kernel {package} (cached)");
        return Ok(Kernel {
            image: vmlinux,
            root,
            kver,
            package,
        });
    }

    eprintln!("xtask: fetching guest kernel {want}");
    let _ = fs::remove_file(&stamp);
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    let dl = kdir.join("download");
    if dl.exists() {
        fs::remove_dir_all(&dl)?;
    }
    fs::create_dir_all(&dl)?;
    fs::create_dir_all(&root)?;
    let deb = download(tools, &dl, &format!("{}={version}", arch.apt_name(&pkg)))?;
    let members = present_members(&deb_listing(tools, &deb)?, DEB_MEMBERS);

    let mut wildcards = vec!["--wildcards".to_owned()];
    wildcards.extend(members.iter().map(|m| (*m).to_owned()));
    extract_deb(tools, &deb, &root, &wildcards)?;

    let kver = fs::read_dir(root.join("lib/modules"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| anyhow!("the kernel package has no lib/modules/<version>"))?;
    util::run(Command::new(&tools.depmod).arg("-b").arg(&root).arg(&kver))?;

    let vmlinuz_path = root.join("boot").join(format!("vmlinuz-{kver}"));
    let how = match arch.kernel_image() {
        KernelImage::ElfFromXz => {
            let vmlinuz = fs::read(&vmlinuz_path)
                .with_context(|| format!("reading {}", vmlinuz_path.display()))?;
            let tmp = kdir.join("vmlinux.tmp");
            let mut out = std::io::BufWriter::new(fs::File::create(&tmp)?);
            let off = extract_vmlinux(&vmlinuz, &mut out)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            fs::rename(&tmp, &vmlinux)?;
            // The compressed kernel is no longer needed.
            let _ = fs::remove_file(&vmlinuz_path);
            format!("vmlinux from xz stream at offset {off:#x}")
        }
        KernelImage::AsIs => {
            let head = fs::read(&vmlinuz_path)
                .with_context(|| format!("reading {}", vmlinuz_path.display()))?;
            if !is_arm64_image(&head) {
                bail!(
                    "{} is not an arm64 Image (no ARM\\x64 magic at byte 56)",
                    vmlinuz_path.display()
                );
            }
            fs::rename(&vmlinuz_path, &vmlinux)?;
            "arm64 Image as shipped".to_owned()
        }
    };
    fs::remove_dir_all(&dl)?;
    fs::write(&stamp, format!("{want} {kver}\n"))?;
    eprintln!(
        "xtask: guest kernel {kver} ready ({how}, {} MB)",
        fs::metadata(&vmlinux)?.len() >> 20
    );
    Ok(Kernel {
        image: vmlinux,
        root,
        kver,
        package: want,
    })
}

/// Whether `data` starts with an arm64 `Image` header (`ARM\x64` at byte 56,
/// Documentation/arch/arm64/booting.rst).
pub fn is_arm64_image(data: &[u8]) -> bool {
    data.get(56..60) == Some(b"ARM\x64")
}

/// `apt-get download SPEC` into the empty directory `dl`; returns the `.deb`.
fn download(tools: &HostTools, dl: &Path, spec: &str) -> Result<PathBuf> {
    util::run(
        Command::new(&tools.apt_get)
            .arg("download")
            .arg(spec)
            .current_dir(dl),
    )?;
    fs::read_dir(dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| anyhow!("apt-get download {spec} left no .deb in {}", dl.display()))
}

/// The member paths of a `.deb`'s data archive (`dpkg-deb --fsys-tarfile X | tar -t`).
fn deb_listing(tools: &HostTools, deb: &Path) -> Result<String> {
    let (mut dpkg, tar_in) = fsys_tarfile(tools, deb)?;
    let out = Command::new(&tools.tar)
        .arg("-t")
        .stdin(tar_in)
        .stderr(Stdio::inherit())
        .output()
        .context("starting tar")?;
    let st = dpkg.wait()?;
    if !st.success() || !out.status.success() {
        bail!(
            "listing {} failed (dpkg-deb: {st}, tar: {})",
            deb.display(),
            out.status
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The guest's static busybox. The host's when the guest architecture is the host's;
/// otherwise `busybox-static:<arch>` is downloaded into `<cache>/busybox-<arch>/` (cached with a
/// stamp naming the version) and its `bin/busybox` used.
pub fn prepare_busybox(tools: &HostTools, cache: &Path, arch: Arch) -> Result<PathBuf> {
    if arch.is_host() {
        return Ok(tools.busybox.clone());
    }
    let dir = cache.join(format!("busybox-{}", arch.name()));
    let bin = dir.join("busybox");
    let stamp = dir.join("stamp");
    let spec = arch.apt_name("busybox-static");
    let cached = fs::read_to_string(&stamp)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|_| bin.is_file());
    let policy = util::output(Command::new(&tools.apt_cache).args(["policy", &spec]));
    let version = match policy.as_deref().map(tools::policy_candidate) {
        Ok(Some(v)) => v.to_owned(),
        _ => {
            if let Some(v) = cached {
                eprintln!("xtask: warning: cannot ask apt about {spec}; using cached {v}");
                return Ok(bin);
            }
            bail!(
                "{spec} has no install candidate: run `cargo xtask hil --arch {arch} --install-deps` \
                 (it runs `dpkg --add-architecture {}` and `apt-get update`)",
                arch.debian()
            );
        }
    };
    if cached.as_deref() == Some(version.as_str()) {
        return Ok(bin);
    }
    eprintln!("xtask: fetching guest busybox {spec} {version}");
    let dl = dir.join("download");
    if dl.exists() {
        fs::remove_dir_all(&dl)?;
    }
    fs::create_dir_all(&dl)?;
    let deb = download(tools, &dl, &format!("{spec}={version}"))?;
    extract_deb(tools, &deb, &dl, &["./bin/busybox".to_owned()])?;
    fs::rename(dl.join("bin/busybox"), &bin)?;
    fs::remove_dir_all(&dl)?;
    fs::write(&stamp, format!("{version}\n"))?;
    Ok(bin)
}

/// Starts `dpkg-deb --fsys-tarfile DEB`; returns the process and its stdout (a tar stream).
fn fsys_tarfile(
    tools: &HostTools,
    deb: &Path,
) -> Result<(std::process::Child, std::process::ChildStdout)> {
    let mut dpkg = Command::new(&tools.dpkg_deb)
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting dpkg-deb")?;
    let out = dpkg
        .stdout
        .take()
        .ok_or_else(|| anyhow!("dpkg-deb has no stdout"))?;
    Ok((dpkg, out))
}

/// `dpkg-deb --fsys-tarfile DEB | tar -x -C DEST ARGS...`: unpacks members of a package.
fn extract_deb(tools: &HostTools, deb: &Path, dest: &Path, args: &[String]) -> Result<()> {
    let (mut dpkg, tar_in) = fsys_tarfile(tools, deb)?;
    let tar_status = Command::new(&tools.tar)
        .arg("-x")
        .arg("-C")
        .arg(dest)
        .args(args)
        .stdin(tar_in)
        .status()
        .context("starting tar")?;
    let dpkg_status = dpkg.wait()?;
    if !dpkg_status.success() || !tar_status.success() {
        bail!(
            "extracting {} failed (dpkg-deb: {dpkg_status}, tar: {tar_status})",
            deb.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_gnu_tar() {
        assert!(wildcard_match(
            "./lib/modules/*/kernel/virt/lib/*",
            "./lib/modules/6.1.0-56-amd64/kernel/virt/lib/irqbypass.ko"
        ));
        assert!(wildcard_match("./boot/*", "./boot/vmlinuz-6.1.0-56-arm64"));
        assert!(!wildcard_match("./boot/*", "./lib/boot/x"));
        assert!(wildcard_match("a", "a") && !wildcard_match("a", "ab"));
        let listing = "./\n./boot/\n./boot/vmlinuz-6.1.0-56-arm64\n./lib/modules/6.1.0-56-arm64/kernel/drivers/vfio/vfio.ko\n";
        assert_eq!(
            present_members(listing, DEB_MEMBERS),
            ["./boot/*", "./lib/modules/*/kernel/drivers/vfio/*"]
        );
    }

    #[test]
    fn arm64_image_magic() {
        let mut h = vec![0u8; 64];
        assert!(!is_arm64_image(&h));
        h[56..60].copy_from_slice(b"ARM\x64");
        assert!(is_arm64_image(&h));
        assert!(!is_arm64_image(&h[..58]));
    }

    #[test]
    fn depends_names_the_versioned_image() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(parse_depends(out), Some("linux-image-6.1.0-56-amd64"));
        let odd = "linux-image-amd64\n |Depends: <linux-image-virtual>\n  Depends: linux-image-6.12.9-amd64\n";
        assert_eq!(parse_depends(odd), Some("linux-image-6.12.9-amd64"));
        assert_eq!(parse_depends("linux-image-amd64\n"), None);
    }

    #[test]
    fn show_depends_gives_package_and_version() {
        let show = "Package: linux-image-amd64\nVersion: 6.1.192-2\n\
Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\nDescription: x\n";
        assert_eq!(
            parse_show_depends(show),
            Some(("linux-image-6.1.0-56-amd64", "6.1.192-2"))
        );
        let two = "Depends: foo (>= 1), linux-image-6.12.9-amd64 (= 6.12.9-1)\n";
        assert_eq!(
            parse_show_depends(two),
            Some(("linux-image-6.12.9-amd64", "6.12.9-1"))
        );
        assert_eq!(
            parse_show_depends("Depends: linux-image-6.1.0-56-amd64\n"),
            None
        );
        assert_eq!(parse_show_depends("Package: x\n"), None);
    }

    #[test]
    fn magic_offsets_finds_every_occurrence() {
        let mut d = vec![0u8; 10];
        d.extend_from_slice(&XZ_MAGIC);
        d.extend_from_slice(&[1, 2, 3]);
        d.extend_from_slice(&XZ_MAGIC);
        assert_eq!(xz_magic_offsets(&d), vec![10, 19]);
        assert!(xz_magic_offsets(&XZ_MAGIC[..5]).is_empty());
        assert_eq!(xz_magic_offsets(&XZ_MAGIC), vec![0]);
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 6);
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn extracts_the_elf_stream_skipping_decoys() {
        let mut elf = b"\x7fELF".to_vec();
        elf.extend((0..100_000u32).map(|i| (i % 251) as u8));
        let mut vmlinuz = b"MZ boot stub".to_vec();
        vmlinuz.extend_from_slice(&XZ_MAGIC); // a bare magic: not a valid stream
        vmlinuz.extend_from_slice(b"junk");
        let decoy_at = vmlinuz.len();
        vmlinuz.extend(xz(b"not an elf image")); // a valid stream without ELF
        let real_at = vmlinuz.len();
        vmlinuz.extend(xz(&elf));
        vmlinuz.extend_from_slice(b"trailing data after the stream");
        assert!(decoy_at < real_at);
        let mut out = Vec::new();
        assert_eq!(extract_vmlinux(&vmlinuz, &mut out).unwrap(), real_at);
        assert_eq!(out, elf);
    }

    #[test]
    fn extract_fails_without_an_elf_stream() {
        let mut out = Vec::new();
        assert!(extract_vmlinux(b"no magic here", &mut out).is_err());
        assert!(extract_vmlinux(&xz(b"text"), &mut out).is_err());
    }

    const DEP: &str = "\
kernel/drivers/nvme/host/nvme-core.ko:
kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko
kernel/drivers/vfio/vfio.ko:
kernel/drivers/vfio/vfio_virqfd.ko:
kernel/drivers/vfio/vfio_iommu_type1.ko: kernel/drivers/vfio/vfio.ko
kernel/drivers/vfio/pci/vfio-pci-core.ko: kernel/virt/lib/irqbypass.ko kernel/drivers/vfio/vfio_virqfd.ko kernel/drivers/vfio/vfio.ko
kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko kernel/virt/lib/irqbypass.ko kernel/drivers/vfio/vfio_virqfd.ko kernel/drivers/vfio/vfio.ko
kernel/virt/lib/irqbypass.ko:
";
    const SOFT: &str = "# Soft dependencies extracted from modules themselves.\n\
softdep vfio post: vfio_iommu_type1 vfio_iommu_spapr_tce\n";

    fn names(order: &[String]) -> Vec<&str> {
        order
            .iter()
            .map(|p| p.rsplit('/').next().unwrap().trim_end_matches(".ko"))
            .collect()
    }

    #[test]
    fn vfio_pci_order_matches_modprobe() {
        let order = module_order(DEP, SOFT, &["vfio-pci"]).unwrap();
        assert_eq!(
            names(&order),
            [
                "vfio",
                "vfio_iommu_type1",
                "vfio_virqfd",
                "irqbypass",
                "vfio-pci-core",
                "vfio-pci"
            ]
        );
        assert_eq!(order[0], "kernel/drivers/vfio/vfio.ko");
    }

    #[test]
    fn order_deduplicates_across_wanted_and_accepts_underscores() {
        let order = module_order(DEP, SOFT, &["vfio_pci", "vfio", "nvme"]).unwrap();
        assert_eq!(names(&order).len(), 8);
        assert_eq!(names(&order)[6..], ["nvme-core", "nvme"]);
    }

    #[test]
    fn unknown_module_is_an_error() {
        assert!(module_order(DEP, SOFT, &["nope"]).is_err());
    }
}

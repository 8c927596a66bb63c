//! The guest payload: static Rust binaries built for the guest's target
//! (`x86_64-unknown-linux-gnu`, `aarch64-unknown-linux-gnu`) with `+crt-static` into
//! `target/hil` (so the host build is not invalidated), described as data. A foreign target is
//! linked with the cross gcc named by [`Arch::linker_env`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use super::arch::Arch;
use super::tools::elf_is_static;
use super::util;

/// One binary to build and where it goes in the guest.
#[derive(Debug, Clone, Copy)]
pub struct PayloadSpec {
    /// Names under `/bin` in the guest (a multi-call binary gets several).
    pub guest_names: &'static [&'static str],
    /// The cargo subcommand and the arguments that select the target.
    pub cargo_args: &'static [&'static str],
    /// A manifest outside the workspace (relative to the workspace root), if any.
    pub manifest: Option<&'static str>,
    /// `target.name` of the compiler artifact that is the executable.
    pub target_name: &'static str,
    /// One of `target.kind` of that artifact (`bin`, `test`, `example`).
    pub target_kind: &'static str,
}

/// The real payload, in the order the guest runs it.
pub const REAL: &[PayloadSpec] = &[
    PayloadSpec {
        guest_names: &["vfio-info"],
        cargo_args: &["build", "-p", "vfio-backend", "--example", "vfio-info"],
        manifest: None,
        target_name: "vfio-info",
        target_kind: "example",
    },
    PayloadSpec {
        guest_names: &["conformance"],
        cargo_args: &[
            "test",
            "-p",
            "conformance-tests",
            "--test",
            "conformance",
            "--no-run",
        ],
        manifest: None,
        target_name: "conformance",
        target_kind: "test",
    },
    PayloadSpec {
        guest_names: &["nvme-tool"],
        cargo_args: &["build", "-p", "nvme-tool", "--bin", "nvme-tool"],
        manifest: None,
        target_name: "nvme-tool",
        target_kind: "bin",
    },
    PayloadSpec {
        guest_names: &["tokio-randread"],
        cargo_args: &["build", "-p", "nvme-blk", "--example", "tokio_randread"],
        manifest: None,
        target_name: "tokio_randread",
        target_kind: "example",
    },
    PayloadSpec {
        guest_names: &["nbd-attach"],
        cargo_args: &["build", "-p", "nvme-tool", "--example", "nbd-attach"],
        manifest: None,
        target_name: "nbd-attach",
        target_kind: "example",
    },
];

/// xtask's stand-in: one multi-call binary playing all three parts (see `xtask/hil-standin`).
pub const STANDIN: &[PayloadSpec] = &[PayloadSpec {
    guest_names: &["vfio-info", "conformance", "nvme-tool"],
    cargo_args: &["build", "--bin", "hil-standin"],
    manifest: Some("xtask/hil-standin/Cargo.toml"),
    target_name: "hil-standin",
    target_kind: "bin",
}];

/// A built payload binary.
#[derive(Debug, Clone)]
pub struct Built {
    /// Name under `/bin` in the guest.
    pub guest_name: String,
    /// Host path of the static executable.
    pub path: PathBuf,
}

/// The `executable` of the compiler artifact named `name` of kind `kind` in cargo's
/// `--message-format=json` output (the last one, if cargo reports it more than once).
pub fn find_executable(json_lines: &str, name: &str, kind: &str) -> Option<PathBuf> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact")
        .filter(|v| v["target"]["name"] == name)
        .filter(|v| {
            v["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|x| x == kind))
        })
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .next_back()
}

fn describe(spec: &PayloadSpec) -> String {
    let mut s = format!("cargo {}", spec.cargo_args.join(" "));
    if let Some(m) = spec.manifest {
        s.push_str(&format!(" --manifest-path {m}"));
    }
    s
}

/// The ELF `e_machine` of `arch` (`EM_X86_64`, `EM_AARCH64`).
fn elf_machine(arch: Arch) -> u16 {
    match arch {
        Arch::X86_64 => 62,
        Arch::Aarch64 => 183,
    }
}

/// Builds every spec as a static release binary for `arch` into `<workspace>/target/hil`,
/// linking with `linker` (the cross gcc) when the target is not the host's.
/// Any failure is an error naming the part: the run never goes on without it.
pub fn build(
    workspace: &Path,
    specs: &[PayloadSpec],
    arch: Arch,
    linker: Option<&Path>,
) -> Result<Vec<Built>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = workspace.join("target/hil");
    // `--target` is required or proc-macro crates break with `+crt-static`.
    let target = arch.target_triple();
    let mut built = Vec::new();
    for spec in specs {
        eprintln!(
            "xtask: building guest payload: {} (static, {target})",
            describe(spec)
        );
        let mut c = Command::new(&cargo);
        c.args(spec.cargo_args)
            .args([
                "--release",
                "--target",
                target,
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(workspace)
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            // Small initramfs: no DWARF, but keep symbols for readable backtraces.
            .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
            .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some((var, default)) = arch.linker_env() {
            c.env(var, linker.unwrap_or(Path::new(default)));
        }
        if let Some(m) = spec.manifest {
            c.arg("--manifest-path").arg(workspace.join(m));
        }
        let shown = util::show(&c);
        let out = c
            .output()
            .with_context(|| format!("cannot start `{shown}`"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let hint = if spec.manifest.is_none() {
                " The HIL run needs every part of the payload; `--payload standin` checks the HIL path alone."
            } else {
                ""
            };
            bail!(
                "building the guest payload `{}` failed ({}; {}).{hint}",
                spec.target_name,
                describe(spec),
                out.status
            );
        }
        let exe =
            find_executable(&stdout, spec.target_name, spec.target_kind).ok_or_else(|| {
                anyhow!(
                    "`{}` reported no executable for {} `{}`",
                    describe(spec),
                    spec.target_kind,
                    spec.target_name
                )
            })?;
        let bytes = std::fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?;
        if elf_is_static(&bytes) != Some(true) {
            bail!(
                "{} is not a static executable (the guest has no libc)",
                exe.display()
            );
        }
        let machine = bytes.get(18..20).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if machine != Some(elf_machine(arch)) {
            bail!(
                "{} is not an {arch} executable (ELF e_machine {machine:?})",
                exe.display()
            );
        }
        for name in spec.guest_names {
            built.push(Built {
                guest_name: (*name).to_owned(),
                path: exe.clone(),
            });
        }
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = r#"{"reason":"compiler-artifact","package_id":"x","target":{"kind":["lib"],"name":"conformance_tests"},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"conformance_tests"},"executable":"/t/deps/conformance_tests-1"}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"conformance"},"executable":"/t/deps/conformance-abc"}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"conformance"},"executable":"/t/release/conformance"}
not json at all
{"reason":"build-finished","success":true}"#;

    #[test]
    fn picks_the_executable_by_name_and_kind() {
        assert_eq!(
            find_executable(OUT, "conformance", "test"),
            Some(PathBuf::from("/t/deps/conformance-abc"))
        );
        assert_eq!(
            find_executable(OUT, "conformance", "bin"),
            Some(PathBuf::from("/t/release/conformance"))
        );
        assert_eq!(find_executable(OUT, "conformance_tests", "lib"), None);
        assert_eq!(find_executable(OUT, "nvme-tool", "bin"), None);
    }

    #[test]
    fn payload_lists_cover_every_guest_program() {
        let names = |specs: &[PayloadSpec]| {
            let mut v: Vec<_> = specs
                .iter()
                .flat_map(|s| s.guest_names.iter().copied())
                .collect();
            v.sort_unstable();
            v
        };
        // The NBD step's helper comes with the real payload only (the stand-in has no
        // NBD server, and its boots skip the step).
        assert_eq!(
            names(REAL),
            [
                "conformance",
                "nbd-attach",
                "nvme-tool",
                "tokio-randread",
                "vfio-info"
            ]
        );
        assert_eq!(names(STANDIN), ["conformance", "nvme-tool", "vfio-info"]);
    }
}

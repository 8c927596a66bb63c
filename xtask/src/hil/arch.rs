//! The guest architectures and everything that differs between them: QEMU binary and machine,
//! serial console, the Debian kernel package and how its image is booted, busybox, the Rust
//! target and its linker. Everything else (initramfs, `/init`, verdict) is shared.
//!
//! aarch64 follows `shared/docs/arm-hil-recipe.md`: `virt` with GICv3 + ITS and an SMMUv3,
//! TCG with `-cpu max`, console `ttyAMA0`, Debian's `linux-image-arm64` whose `vmlinuz` is a
//! plain arm64 `Image` (booted as is), `busybox-static:arm64` downloaded rather than installed,
//! and static payload binaries linked by `aarch64-linux-gnu-gcc`.

use std::fmt;

use clap::ValueEnum;

/// A guest architecture of `cargo xtask hil`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Arch {
    /// x86_64 guest: q35 with an Intel IOMMU (interrupt remapping on). KVM when usable.
    #[default]
    #[value(name = "x86_64", alias = "x86-64", alias = "amd64")]
    X86_64,
    /// aarch64 guest: `virt` with GICv3 + ITS and an SMMUv3, always TCG (`-cpu max`).
    #[value(name = "aarch64", alias = "arm64")]
    Aarch64,
}

/// How the kernel package's `boot/vmlinuz-<kver>` becomes the image QEMU boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelImage {
    /// Unpack the ELF `vmlinux` from the xz stream inside the bzImage (PVH boot, no TCG time
    /// spent on decompression).
    ElfFromXz,
    /// `vmlinuz` is already a bootable, uncompressed image (arm64 `Image`).
    AsIs,
}

impl Arch {
    /// The name used in tags, logs and options.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's architecture name (`dpkg --print-architecture`).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// Whether the host runs this architecture natively (its packages need no `:arch`, its
    /// binaries run here).
    pub fn is_host(self) -> bool {
        matches!(
            (self, std::env::consts::ARCH),
            (Arch::X86_64, "x86_64") | (Arch::Aarch64, "aarch64")
        )
    }

    /// The Rust target triple of the guest payload.
    pub fn target_triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// `(variable, linker)` for cargo when the target is not the host's.
    pub fn linker_env(self) -> Option<(&'static str, &'static str)> {
        if self.is_host() {
            return None;
        }
        Some(match self {
            Arch::X86_64 => (
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
                "x86_64-linux-gnu-gcc",
            ),
            Arch::Aarch64 => (
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                "aarch64-linux-gnu-gcc",
            ),
        })
    }

    /// The QEMU system emulator and the apt package that has it.
    pub fn qemu_binary(self) -> (&'static str, &'static str) {
        match self {
            Arch::X86_64 => ("qemu-system-x86_64", "qemu-system-x86"),
            Arch::Aarch64 => ("qemu-system-aarch64", "qemu-system-arm"),
        }
    }

    /// The apt packages the host needs for this guest, beyond the common ones.
    pub fn apt_packages(self) -> &'static [&'static str] {
        match (self, self.is_host()) {
            (Arch::X86_64, true) => &["qemu-system-x86"],
            (Arch::X86_64, false) => &[
                "qemu-system-x86",
                "gcc-x86-64-linux-gnu",
                "libc6-dev-amd64-cross",
            ],
            (Arch::Aarch64, true) => &["qemu-system-arm"],
            (Arch::Aarch64, false) => &[
                "qemu-system-arm",
                "gcc-aarch64-linux-gnu",
                "libc6-dev-arm64-cross",
            ],
        }
    }

    /// `-machine` (and the accelerator/CPU) for this guest. `iommu` adds the virtual IOMMU
    /// where it is a machine property (the SMMUv3 of `virt`).
    pub fn machine_args(self, kvm: bool, iommu: bool) -> Vec<String> {
        let accel = if kvm { "kvm" } else { "tcg" };
        let machine = match self {
            Arch::X86_64 => format!("q35,accel={accel},kernel-irqchip=split"),
            Arch::Aarch64 => {
                let mut m = "virt,gic-version=3,its=on".to_owned();
                if iommu {
                    m.push_str(",iommu=smmuv3");
                }
                m
            }
        };
        let mut a = vec!["-machine".to_owned(), machine];
        if self == Arch::Aarch64 {
            a.extend(["-accel".to_owned(), accel.to_owned()]);
        }
        a.extend([
            "-cpu".to_owned(),
            if kvm { "host" } else { "max" }.to_owned(),
        ]);
        a
    }

    /// Guest memory: the aarch64 kernel needs more than the x86 one to unpack the initramfs.
    pub fn memory(self) -> &'static str {
        match self {
            Arch::X86_64 => "512M",
            Arch::Aarch64 => "1024M",
        }
    }

    /// The `-device` that adds the IOMMU, if it is a device (it must precede the devices it
    /// translates).
    pub fn iommu_device(self) -> Option<&'static str> {
        match self {
            Arch::X86_64 => Some("intel-iommu,intremap=on"),
            Arch::Aarch64 => None,
        }
    }

    /// The serial console of the guest kernel.
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    /// Kernel parameters that turn the IOMMU on (empty where it is on by default).
    pub fn iommu_cmdline(self) -> &'static str {
        match self {
            Arch::X86_64 => "intel_iommu=on",
            Arch::Aarch64 => "",
        }
    }

    /// The metapackage whose dependency names the current kernel package.
    pub fn kernel_meta_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "linux-image-amd64",
            Arch::Aarch64 => "linux-image-arm64",
        }
    }

    /// `package` as apt must be asked for it on this host (`name:arm64` for a foreign arch).
    pub fn apt_name(self, package: &str) -> String {
        if self.is_host() {
            package.to_owned()
        } else {
            format!("{package}:{}", self.debian())
        }
    }

    /// How the kernel image is made bootable.
    pub fn kernel_image(self) -> KernelImage {
        match self {
            Arch::X86_64 => KernelImage::ElfFromXz,
            Arch::Aarch64 => KernelImage::AsIs,
        }
    }

    /// The cache directory of this architecture's kernel under `.hil-cache`.
    pub fn kernel_cache_dir(self) -> &'static str {
        match self {
            Arch::X86_64 => "kernel",
            Arch::Aarch64 => "kernel-aarch64",
        }
    }

    /// Whether KVM can run this guest on this host.
    pub fn kvm_usable(self) -> bool {
        self == Arch::X86_64 && super::qemu::kvm_usable()
    }

    /// Prefix of the boot tags (empty for the default architecture, so x86 names stay as
    /// they were).
    pub fn tag_prefix(self) -> &'static str {
        match self {
            Arch::X86_64 => "",
            Arch::Aarch64 => "aarch64-",
        }
    }

    /// The name of a QEMU configuration in the conformance table (`QEMU 512 B msix`,
    /// `QEMU aarch64 512 B msix`).
    pub fn table_backend(self, lba_size: u32, mode: &str) -> String {
        match self {
            Arch::X86_64 => format!("QEMU {lba_size} B {mode}"),
            Arch::Aarch64 => format!("QEMU aarch64 {lba_size} B {mode}"),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aarch64_machine_follows_the_recipe() {
        let a = Arch::Aarch64.machine_args(false, true).join(" ");
        assert_eq!(
            a,
            "-machine virt,gic-version=3,its=on,iommu=smmuv3 -accel tcg -cpu max"
        );
        let a = Arch::Aarch64.machine_args(false, false).join(" ");
        assert!(!a.contains("smmuv3"), "{a}");
        assert_eq!(Arch::Aarch64.console(), "ttyAMA0");
        assert_eq!(Arch::Aarch64.iommu_device(), None);
        assert_eq!(Arch::Aarch64.kernel_image(), KernelImage::AsIs);
    }

    #[test]
    fn x86_machine_is_unchanged() {
        assert_eq!(
            Arch::X86_64.machine_args(false, true).join(" "),
            "-machine q35,accel=tcg,kernel-irqchip=split -cpu max"
        );
        assert_eq!(Arch::X86_64.iommu_device(), Some("intel-iommu,intremap=on"));
        assert_eq!(Arch::X86_64.tag_prefix(), "");
        assert_eq!(Arch::X86_64.table_backend(512, "msix"), "QEMU 512 B msix");
    }

    #[test]
    fn cross_build_needs_the_cross_linker() {
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(
                Arch::Aarch64.linker_env(),
                Some((
                    "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                    "aarch64-linux-gnu-gcc"
                ))
            );
            assert_eq!(Arch::X86_64.linker_env(), None);
            assert_eq!(
                Arch::Aarch64.apt_name("busybox-static"),
                "busybox-static:arm64"
            );
            assert!(Arch::Aarch64
                .apt_packages()
                .contains(&"libc6-dev-arm64-cross"));
        }
    }
}

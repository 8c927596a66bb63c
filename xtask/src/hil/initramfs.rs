//! The guest initramfs: static busybox and its applet links, the vfio modules in load order,
//! the payload, the `/data` files, and a generated `/init` that binds every QEMU NVMe
//! controller (1b36:0010) to `vfio-pci`, runs the suite and prints marker lines.
//!
//! Serial-log protocol written by `/init` (the host parses only these, see `verdict.rs`):
//! ```text
//! HIL-BEGIN <tag>
//! HIL-DEVICE <bdf> driver=<driver> iommu_group=<group>
//! HIL-STEP <step> BEGIN t=<guest uptime s>
//! ... output of the step ...
//! HIL-STEP <step> END PASS rc=0 t=<s>    (or: END FAIL rc=<n> t=<s>)
//! HIL-PERF[<mode>] <nvme-tool perf's result line>              (with --perf)
//! HIL-VERDICT: PASS steps=<ok>/<all> conformance[polled]=<passed>/<total> io[polled]=ok ...
//! ```
//!
//! A boot without an IOMMU (`--no-iommu`) runs no suite: its `bind` step expects the device to
//! have no IOMMU group, and the `diagnose-*` steps expect `vfio-info` and `nvme-tool` to fail
//! with the no-IOMMU diagnosis (see [`NO_IOMMU_MARKER`]).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use super::opts::IrqMode;
use super::tools::HostTools;
use super::util;

/// What `/init` does in one boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestPlan {
    /// Names this boot in the log.
    pub tag: String,
    /// Kernel release (`/lib/modules/<kver>`).
    pub kver: String,
    /// Modules loaded before binding, relative to `/lib/modules/<kver>`, in load order.
    pub modules: Vec<String>,
    /// Modules loaded after binding (the stand-in's kernel NVMe driver); may be empty.
    pub late_modules: Vec<String>,
    /// Interrupt modes, each running the whole suite.
    pub irq_modes: Vec<IrqMode>,
    /// Logical block size of the namespaces.
    pub lba_size: u32,
    /// Blocks per data check.
    pub blocks: u32,
    /// LBA the host filled with `/data/host.bin` before boot.
    pub host_lba: u64,
    /// LBA of the first mode's write of `/data/guest.bin`; mode `i` writes at
    /// `guest_lba + i * blocks`.
    pub guest_lba: u64,
    /// The guest has no IOMMU: expect the no-IOMMU diagnosis instead of running the suite.
    pub expect_no_iommu: bool,
    /// Seconds of `nvme-tool perf` per mode (a `perf[<mode>]` step), if any.
    pub perf_secs: Option<u32>,
    /// The guest kernel runs with `iommu.passthrough=1`: the `bind` step requires the group's
    /// default domain to be `identity` (so the run proves the option took effect).
    pub expect_identity_domain: bool,
    /// Modules of the kernel's nvme driver, in load order, for the last step,
    /// `setup-roundtrip`: `nvme-tool setup unbind` hands the controller to the kernel
    /// (`/dev/nvme0n1` appears), `setup bind` takes it back to vfio-pci, `nvme-tool write`
    /// writes `guest.bin` through VFIO, `setup unbind` again, and busybox `dd` + `cmp` read it
    /// back through the kernel's block device. Empty: no such step.
    pub setup_modules: Vec<String>,
    /// The NBD step, after the interrupt modes, if this boot runs it.
    pub nbd: Option<NbdPlan>,
    /// A `tokio[<mode>]` step per mode: `tokio-randread` (nvme-blk's example) runs 32
    /// concurrent random reads under tokio through vfio-pci (the MSI-X mode wakes the queue's
    /// task from the vector's eventfd), then the same through the callback API.
    pub tokio: bool,
}

/// The NBD step: `nvme-tool nbd` serves a block range of namespace 1 (polled) on a Unix
/// socket, the guest kernel's NBD client attaches to it (`nbd-attach`), busybox `mke2fs`
/// makes an ext2 filesystem on `/dev/nbd0`, which is mounted, written (a directory,
/// `/data/guest.bin`, `/data/host.bin`, 4 MiB of random data), unmounted, detached, attached
/// again (a new connection: nothing can come from the first one's caches), mounted
/// read-only and compared; then the server gets SIGTERM and must shut down in order. The
/// host then checks the filesystem in its image (`e2fsck`, `debugfs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdPlan {
    /// The `nbd` and `ext4` modules and what they need, relative to `/lib/modules/<kver>`,
    /// in load order.
    pub modules: Vec<String>,
    /// First block of namespace 1 that the export covers.
    pub start_block: u64,
    /// Blocks exported.
    pub blocks: u64,
}

/// The boot-level step of [`NbdPlan`].
pub const NBD_STEP: &str = "nbd";

/// The last step when [`GuestPlan::setup_modules`] is not empty.
pub const SETUP_STEP: &str = "setup-roundtrip";

/// Boot-level steps, in order.
pub const BOOT_STEPS: &[&str] = &["modules", "bind", "hugepages", "vfio-info"];
/// Boot-level steps of a boot without an IOMMU, in order.
pub const NO_IOMMU_STEPS: &[&str] = &[
    "modules",
    "bind",
    "diagnose-vfio-info",
    "diagnose-nvme-tool",
];
/// Steps run once per interrupt mode, in order (named `<step>[<mode>]`).
pub const MODE_STEPS: &[&str] = &["conformance", "nvme-read", "nvme-cmp", "nvme-write", "soak"];
/// Reads of each `tokio[<mode>]` step (and as many through the callback API).
pub const TOKIO_OPS: u32 = 4000;
/// Seconds of `nvme-tool soak` per mode: verified random reads and writes on several queue
/// pairs, in the second half of the namespace (the image checks use the first).
pub const SOAK_SECS: u32 = 5;
/// The words the driver's diagnosis of a device without an IOMMU group must contain
/// (`VfioError::NoIommuGroup` in vfio-backend).
pub const NO_IOMMU_MARKER: &str = "no IOMMU";
/// What the old diagnosis said instead (wrong without an IOMMU: binding cannot succeed).
pub const WRONG_DIAGNOSIS: &str = "must be bound to vfio-pci";

impl GuestPlan {
    /// First block of the soak's region: the second half of the 64 MiB namespace, away from
    /// the host's and the guest's data checks.
    pub fn soak_start(&self) -> u64 {
        (32u64 << 20) / u64::from(self.lba_size.max(512))
    }

    /// LBA that mode number `i` writes `guest.bin` at.
    pub fn guest_lba_for(&self, i: usize) -> u64 {
        self.guest_lba + i as u64 * u64::from(self.blocks)
    }

    /// Bytes one data check moves.
    pub fn data_size(&self) -> u64 {
        u64::from(self.blocks) * u64::from(self.lba_size)
    }

    /// The per-mode steps, in order (without the `[<mode>]` suffix).
    pub fn mode_steps(&self) -> Vec<&'static str> {
        let mut v = MODE_STEPS.to_vec();
        if self.perf_secs.is_some() {
            v.push("perf");
        }
        if self.tokio {
            v.push("tokio");
        }
        v
    }

    /// Every step the log must report, in order.
    pub fn expected_steps(&self) -> Vec<String> {
        if self.expect_no_iommu {
            return NO_IOMMU_STEPS.iter().map(|s| (*s).to_owned()).collect();
        }
        let mut v: Vec<String> = BOOT_STEPS.iter().map(|s| (*s).to_owned()).collect();
        if !self.late_modules.is_empty() {
            v.insert(3, "late-modules".to_owned());
        }
        for m in &self.irq_modes {
            v.extend(self.mode_steps().iter().map(|s| format!("{s}[{m}]")));
        }
        if self.nbd.is_some() {
            v.push(NBD_STEP.to_owned());
        }
        if !self.setup_modules.is_empty() {
            v.push(SETUP_STEP.to_owned());
        }
        v
    }
}

/// The `/init` shell script (busybox ash).
pub fn init_script(p: &GuestPlan) -> String {
    let mut s = String::new();
    let moddir = format!("/lib/modules/{}", p.kver);
    let _ = write!(
        s,
        r#"#!/bin/sh
# Generated by `cargo xtask hil`: HIL guest init. Prints HIL-* marker lines for the host.
mount -t devtmpfs devtmpfs /dev
exec 0</dev/console 1>/dev/console 2>&1
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/hugepages /tmp
mount -t hugetlbfs hugetlbfs /dev/hugepages
export RUST_BACKTRACE=1
STEPS=0
FAILS=0
TOKENS=""
up() {{ read -r u _ < /proc/uptime; echo "$u"; }}
begin() {{ echo "HIL-STEP $1 BEGIN t=$(up)"; }}
end() {{
  STEPS=$((STEPS + 1))
  if [ "$2" -eq 0 ]; then echo "HIL-STEP $1 END PASS rc=0 t=$(up)"
  else FAILS=$((FAILS + 1)); echo "HIL-STEP $1 END FAIL rc=$2 t=$(up)"; fi
}}
# run STEP CMD...: runs CMD, output to the console and to /tmp/STEP.log
run() {{
  name=$1; shift
  begin "$name"
  {{ "$@"; echo $? > /tmp/rc; }} 2>&1 | tee "/tmp/$name.log"
  r=$(cat /tmp/rc)
  end "$name" "${{r:-127}}"
  return "${{r:-127}}"
}}
echo "HIL-BEGIN {tag}"
begin modules
r=0
"#,
        tag = p.tag
    );
    for m in &p.modules {
        let _ = writeln!(
            s,
            "insmod {moddir}/{m} || {{ echo \"insmod {m} failed\"; r=1; }}"
        );
    }
    let bound_check = if p.expect_no_iommu {
        // No IOMMU: vfio-pci's probe must have failed and the device has no group.
        r#"if [ -n "$(readlink "$d/iommu_group")" ]; then echo "unexpected: $bdf has an IOMMU group"; r=1; fi
  dmesg | grep -a "$bdf" | grep -a -i -e vfio -e probe"#
    } else {
        r#"if [ "$drv" != vfio-pci ] || [ ! -c "/dev/vfio/$grp" ]; then r=1; fi"#
    };
    let domain_check = if p.expect_identity_domain {
        r#"[ "$typ" = identity ] || { echo "iommu.passthrough=1 but the default domain is '$typ'"; r=1; }"#
    } else {
        ""
    };
    let _ = write!(
        s,
        r#"end modules $r
begin bind
r=0
BDF=""
for d in /sys/bus/pci/devices/*; do
  [ "$(cat "$d/vendor")" = 0x1b36 ] && [ "$(cat "$d/device")" = 0x0010 ] || continue
  bdf=${{d##*/}}
  [ -e "$d/driver" ] && echo "$bdf" > "$d/driver/unbind"
  echo vfio-pci > "$d/driver_override"
  echo "$bdf" > /sys/bus/pci/drivers_probe
  drv=$(basename "$(readlink "$d/driver")")
  grp=$(basename "$(readlink "$d/iommu_group")")
  typ=$(cat "$d/iommu_group/type" 2>/dev/null)
  echo "HIL-DEVICE $bdf driver=$drv iommu_group=$grp domain=$typ"
  {bound_check}
  {domain_check}
  [ -n "$BDF" ] || BDF=$bdf
done
[ -n "$BDF" ] || {{ echo "no QEMU NVMe controller (1b36:0010) found"; r=1; }}
end bind $r
"#
    );
    if p.expect_no_iommu {
        let _ = write!(
            s,
            r#"# diagnose NAME CMD...: CMD must fail and say "{NO_IOMMU_MARKER}", not "{WRONG_DIAGNOSIS}"
diagnose() {{
  name=$1; shift
  begin "$name"
  "$@" > "/tmp/$name.log" 2>&1
  rc=$?
  cat "/tmp/$name.log"
  r=0
  if [ "$rc" -eq 0 ]; then echo "HIL-NOTE $name: exit 0 without an IOMMU"; r=1
  elif ! grep -a -q "{NO_IOMMU_MARKER}" "/tmp/$name.log"; then echo "HIL-NOTE $name: no "{NO_IOMMU_MARKER}" diagnosis"; r=1
  elif grep -a -q "{WRONG_DIAGNOSIS}" "/tmp/$name.log"; then echo "HIL-NOTE $name: says "{WRONG_DIAGNOSIS}""; r=1
  fi
  end "$name" $r
}}
diagnose diagnose-vfio-info /bin/vfio-info "$BDF"
diagnose diagnose-nvme-tool /bin/nvme-tool id-ctrl "pci:$BDF"
sync
if [ "$FAILS" -eq 0 ]; then V=PASS; else V=FAIL; fi
echo "HIL-VERDICT: $V steps=$((STEPS - FAILS))/$STEPS no-iommu-diagnosis"
poweroff -f
"#
        );
        return s;
    }
    s.push_str(
        r#"begin hugepages
echo 16 > /proc/sys/vm/nr_hugepages
hp=$(cat /proc/sys/vm/nr_hugepages)
echo "nr_hugepages=$hp"
[ "$hp" -ge 16 ]
end hugepages $?
"#,
    );
    if !p.late_modules.is_empty() {
        s.push_str("begin late-modules\nr=0\n");
        for m in &p.late_modules {
            let _ = writeln!(
                s,
                "insmod {moddir}/{m} || {{ echo \"insmod {m} failed\"; r=1; }}"
            );
        }
        s.push_str("end late-modules $r\n");
    }
    s.push_str(
        r#"export NVME_TEST_PCI="$BDF" NVME_TEST_ONLY_VFIO=1 NVME_TEST_PRESERVE_NS=1
run vfio-info /bin/vfio-info "$BDF"
"#,
    );
    let n_z = p.blocks - 1;
    let size = p.data_size();
    for (i, m) in p.irq_modes.iter().enumerate() {
        let wlba = p.guest_lba_for(i);
        let _ = write!(
            s,
            r#"# ---- interrupt mode {m} ----
export NVME_TEST_IRQ={m} CONFORMANCE_RESULTS=/tmp/results-{m}.tsv
run "conformance[{m}]" /bin/conformance
r=$?
cat /tmp/results-{m}.tsv 2>/dev/null
sum=$(grep -a 'conformance: *[0-9]' "/tmp/conformance[{m}].log" | tail -n 1)
cp=$(echo "$sum" | sed -n 's/.*conformance: *\([0-9][0-9]*\) passed.*/\1/p')
ca=$(grep -a 'allowed deviations: *[0-9]' "/tmp/conformance[{m}].log" | tail -n 1 | sed -n 's/.*allowed deviations: *\([0-9][0-9]*\).*/\1/p')
cf=$(echo "$sum" | sed -n 's/.*[^0-9]\([0-9][0-9]*\) failed.*/\1/p')
cs=$(echo "$sum" | sed -n 's/.*[^0-9]\([0-9][0-9]*\) skipped.*/\1/p')
echo "HIL-CONFORMANCE[{m}] ${{sum:-no summary line}}${{ca:+, $ca allowed}}"
if [ -z "$cp" ] || [ -z "$cf" ]; then
  TOKENS="$TOKENS conformance[{m}]=none"
  if [ "$r" -eq 0 ]; then echo "HIL-NOTE conformance[{m}] printed no summary line"; FAILS=$((FAILS + 1)); fi
else
  TOKENS="$TOKENS conformance[{m}]=$cp/$((cp + cf))"
  [ "${{ca:-0}}" -gt 0 ] && TOKENS="$TOKENS allowed[{m}]=$ca"
  [ "${{cs:-0}}" -gt 0 ] && TOKENS="$TOKENS skipped[{m}]=$cs"
  if [ "$r" -eq 0 ] && {{ [ "$cf" -gt 0 ] || [ "$cp" -eq 0 ]; }}; then
    echo "HIL-NOTE conformance[{m}] exit 0 but summary says otherwise"; FAILS=$((FAILS + 1))
  fi
fi
io=ok
run "nvme-read[{m}]" /bin/nvme-tool read "pci:$BDF" --namespace-id 1 --start-block {hl} --block-count {n_z} --data-size {size} --data /tmp/out-{m}.bin --irq {m} || io=fail
run "nvme-cmp[{m}]" cmp /tmp/out-{m}.bin /data/host.bin || io=fail
run "nvme-write[{m}]" /bin/nvme-tool write "pci:$BDF" --namespace-id 1 --start-block {wlba} --block-count {n_z} --data-size {size} --data /data/guest.bin --irq {m} || io=fail
TOKENS="$TOKENS io[{m}]=$io"
run "soak[{m}]" /bin/nvme-tool soak "pci:$BDF" --irq {m} --threads 2 --time {soak} --start-block {sb}
echo "HIL-SOAK[{m}] $(grep -a '^soak: ' "/tmp/soak[{m}].log" | tail -n 1)"
"#,
            hl = p.host_lba,
            soak = SOAK_SECS,
            sb = p.soak_start(),
        );
        if let Some(secs) = p.perf_secs {
            let _ = write!(
                s,
                r#"run "perf[{m}]" /bin/nvme-tool perf "pci:$BDF" --irq {m} --queue-depth 32 --io-size 4096 --workload randread --time {secs}
echo "HIL-PERF[{m}] $(grep -a '^pci:' "/tmp/perf[{m}].log" | tail -n 1)"
"#
            );
        }
        if p.tokio {
            let polled = if *m == IrqMode::Polled {
                " --polled"
            } else {
                ""
            };
            let _ = write!(
                s,
                r#"run "tokio[{m}]" /bin/tokio-randread "$BDF"{polled} --ops {TOKIO_OPS}
echo "HIL-TOKIO[{m}] $(grep -a 'random 4 KiB reads' "/tmp/tokio[{m}].log" | tail -n 1)"
"#
            );
        }
    }
    if let Some(n) = &p.nbd {
        s.push_str(&nbd_script(n, &moddir));
    }
    if !p.setup_modules.is_empty() {
        setup_step(&mut s, p, &moddir);
    }
    s.push_str(
        r#"sync
if [ "$FAILS" -eq 0 ]; then V=PASS; else V=FAIL; fi
echo "HIL-VERDICT: $V steps=$((STEPS - FAILS))/$STEPS$TOKENS"
poweroff -f
"#,
    );
    s
}

/// The shell of the NBD step (see [`NbdPlan`]).
fn nbd_script(n: &NbdPlan, moddir: &str) -> String {
    format!(
        r#"# ---- NBD: the guest kernel's NBD client on nvme-tool nbd ----
# wait_for WHAT PID CMD...: polls CMD every 0.1 s for 30 s while PID lives.
wait_for() {{
  what=$1; pid=$2; shift 2; i=0
  until "$@"; do
    i=$((i + 1))
    if [ "$i" -gt 300 ] || ! kill -0 "$pid" 2>/dev/null; then echo "$what: not ready"; return 1; fi
    sleep 0.1
  done
}}
nbd_attach() {{
  /bin/nbd-attach /tmp/nbd.sock /dev/nbd0 >> /tmp/nbd-attach.log 2>&1 &
  att=$!
  wait_for nbd-attach "$att" sh -c '[ "$(cat /sys/block/nbd0/size)" -gt 0 ]'
}}
nbd_detach() {{
  /bin/nbd-attach --disconnect /dev/nbd0
  wait "$att"
  att=""
}}
nbd_body() {{
{insmods}  /bin/nvme-tool nbd "pci:$BDF" --socket /tmp/nbd.sock --start-block {start} --block-count {blocks} --connections 1 --queue-depth 32 > /tmp/nbd-server.log 2>&1 &
  srv=$!
  wait_for "nvme-tool nbd" "$srv" grep -q "nbd: serving" /tmp/nbd-server.log || return 1
  nbd_attach || return 1
  mke2fs -b 4096 -L nvme-nbd /dev/nbd0 || return 1
  mkdir -p /mnt
  mount -t ext2 /dev/nbd0 /mnt || return 1
  mkdir /mnt/dir && cp /data/guest.bin /mnt/dir/guest.bin && cp /data/host.bin /mnt/host.bin || return 1
  dd if=/dev/urandom of=/mnt/big.bin bs=65536 count=64 2>/dev/null || return 1
  sha256sum /mnt/big.bin > /tmp/big.sum
  umount /mnt || return 1
  nbd_detach
  echo 3 > /proc/sys/vm/drop_caches
  nbd_attach || return 1
  mount -t ext2 -o ro /dev/nbd0 /mnt || return 1
  ls -lR /mnt
  cmp /mnt/dir/guest.bin /data/guest.bin && cmp /mnt/host.bin /data/host.bin || return 1
  sha256sum -c /tmp/big.sum || return 1
  umount /mnt || return 1
  nbd_detach
  kill -TERM "$srv"
  wait "$srv"
  rc=$?
  srv=""
  [ "$rc" -eq 0 ] && grep -q "controller shut down in order" /tmp/nbd-server.log
}}
# Whatever happened, nothing is left running (a background job holding the step's output
# pipe would stall the boot): unmount, detach, stop the server, show the logs.
nbd_step() {{
  att=""; srv=""
  nbd_body
  r=$?
  umount /mnt 2>/dev/null
  [ -n "$att" ] && nbd_detach
  if [ -n "$srv" ]; then kill -TERM "$srv"; wait "$srv"; r=1; fi
  cat /tmp/nbd-attach.log /tmp/nbd-server.log 2>/dev/null
  return $r
}}
run {step} nbd_step
"#,
        insmods = n
            .modules
            .iter()
            .map(|m| {
                let arg = if m.ends_with("/nbd.ko") {
                    " nbds_max=2"
                } else {
                    ""
                };
                format!(
                    "  insmod {moddir}/{m}{arg} || {{ echo \"insmod {m} failed\"; return 1; }}\n"
                )
            })
            .collect::<String>(),
        start = n.start_block,
        blocks = n.blocks,
        step = NBD_STEP,
    )
}

/// The `setup-roundtrip` step (see [`GuestPlan::setup_modules`]). While the controller is
/// back on vfio-pci it also runs `list` (no device: found in sysfs and identified),
/// `show-regs`, `vfio-info` and `get-log` through real VFIO. It writes `guest.bin` at the slot
/// after the interrupt modes' writes, so the host's image checks are untouched.
fn setup_step(s: &mut String, p: &GuestPlan, moddir: &str) {
    let lba = p.guest_lba_for(p.irq_modes.len());
    let _ = write!(
        s,
        r#"# ---- nvme-tool setup: kernel nvme <-> vfio-pci, data written through VFIO read by the kernel ----
wait_blk() {{
  i=0
  while [ ! -b /dev/nvme0n1 ] && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done
  [ -b /dev/nvme0n1 ] || {{ echo "no /dev/nvme0n1 after setup unbind"; return 1; }}
}}
roundtrip() {{
"#
    );
    for m in &p.setup_modules {
        let _ = writeln!(
            s,
            "  insmod {moddir}/{m} || {{ echo \"insmod {m} failed\"; return 1; }}"
        );
    }
    let _ = write!(
        s,
        r#"  /bin/nvme-tool setup status
  /bin/nvme-tool setup unbind "$BDF" || return 1
  wait_blk || return 1
  /bin/nvme-tool setup status
  /bin/nvme-tool setup bind "$BDF" || return 1
  [ ! -e /dev/nvme0n1 ] || {{ echo "/dev/nvme0n1 still there after setup bind"; return 1; }}
  /bin/nvme-tool list || return 1
  /bin/nvme-tool show-regs "pci:$BDF" -H || return 1
  /bin/nvme-tool vfio-info "pci:$BDF" || return 1
  /bin/nvme-tool get-log "pci:$BDF" --log-id 2 --log-len 512 || return 1
  /bin/nvme-tool write "pci:$BDF" --namespace-id 1 --start-block {lba} --data /data/guest.bin --irq polled || return 1
  /bin/nvme-tool setup unbind "$BDF" || return 1
  wait_blk || return 1
  dd if=/dev/nvme0n1 of=/tmp/roundtrip.bin bs={bs} skip={lba} count={n} || return 1
  cmp /tmp/roundtrip.bin /data/guest.bin && echo "setup-roundtrip: /dev/nvme0n1 holds at LBA {lba} what was written through VFIO"
}}
run {SETUP_STEP} roundtrip
"#,
        bs = p.lba_size,
        n = p.blocks,
    );
}

/// The paths under `root` for `cpio -o`, relative, parents before children, sorted.
pub fn cpio_list(root: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p
                .strip_prefix(root)?
                .to_str()
                .ok_or_else(|| anyhow!("non-UTF-8 path {}", p.display()))?;
            out.push(rel.to_owned());
            if e.file_type()?.is_dir() {
                walk(root, &p, out)?;
            }
        }
        Ok(())
    }
    let mut v = Vec::new();
    walk(root, root, &mut v)?;
    Ok(v)
}

/// Applet paths from `busybox --list-full`, without the one named `busybox` (a link over
/// the binary itself makes `/init` fail with ELOOP).
pub fn applet_links(list_full: &str) -> Vec<&str> {
    list_full
        .lines()
        .map(|l| l.trim().trim_start_matches('/'))
        .filter(|l| !l.is_empty() && l.rsplit('/').next() != Some("busybox"))
        .collect()
}

/// Inputs of one initramfs.
#[derive(Debug)]
pub struct Contents<'a> {
    /// The `/init` plan.
    pub plan: &'a GuestPlan,
    /// `lib/modules/<kver>` on the host.
    pub modules_dir: &'a Path,
    /// The guest's static busybox (the host's for a native guest; its applet list is always
    /// taken from the host's busybox, which runs here).
    pub busybox: &'a Path,
    /// `(name under /bin, host path)` of each payload binary.
    pub payload: &'a [(String, PathBuf)],
    /// `(name under /data, bytes)`.
    pub data: &'a [(&'a str, &'a [u8])],
}

fn copy_exec(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    set_mode(to, 0o755)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Stages the initramfs in `staging` and packs it to `out` (`cpio -H newc -o | gzip`).
pub fn build(tools: &HostTools, c: &Contents<'_>, staging: &Path, out: &Path) -> Result<()> {
    use std::os::unix::fs::symlink;
    if staging.exists() {
        fs::remove_dir_all(staging)?;
    }
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "data",
    ] {
        fs::create_dir_all(staging.join(d))?;
    }
    copy_exec(c.busybox, &staging.join("bin/busybox"))?;
    let list = util::output(Command::new(&tools.busybox).arg("--list-full"))?;
    for applet in applet_links(&list) {
        let link = staging.join(applet);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)?;
        }
        symlink("/bin/busybox", &link)?;
    }
    let moddir = staging.join("lib/modules").join(&c.plan.kver);
    let nbd_modules = c
        .plan
        .nbd
        .as_ref()
        .map(|n| n.modules.as_slice())
        .unwrap_or(&[]);
    for m in c
        .plan
        .modules
        .iter()
        .chain(&c.plan.late_modules)
        .chain(nbd_modules)
        .chain(&c.plan.setup_modules)
    {
        let dst = moddir.join(m);
        fs::create_dir_all(dst.parent().ok_or_else(|| anyhow!("bad module path {m}"))?)?;
        fs::copy(c.modules_dir.join(m), &dst).with_context(|| format!("copying module {m}"))?;
    }
    for (name, path) in c.payload {
        let dst = staging.join("bin").join(name);
        if dst.symlink_metadata().is_ok() {
            fs::remove_file(&dst)?; // a payload binary may shadow an applet link
        }
        copy_exec(path, &dst)?;
    }
    for (name, bytes) in c.data {
        fs::write(staging.join("data").join(name), bytes)?;
    }
    let init = staging.join("init");
    fs::write(&init, init_script(c.plan))?;
    set_mode(&init, 0o755)?;

    pack(tools, staging, out)
}

/// Packs the staged tree `staging` into `out` (`cpio -H newc -o | gzip -1`, owned by root).
pub fn pack(tools: &HostTools, staging: &Path, out: &Path) -> Result<()> {
    let list = cpio_list(staging)?;
    let out_file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut gzip = Command::new(&tools.gzip)
        .args(["-1", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(out_file)
        .spawn()
        .context("starting gzip")?;
    let gz_in = gzip
        .stdin
        .take()
        .ok_or_else(|| anyhow!("gzip has no stdin"))?;
    let mut cpio = Command::new(&tools.cpio)
        .args(["-H", "newc", "-o", "--quiet", "-R", "0:0"])
        .current_dir(staging)
        .stdin(Stdio::piped())
        .stdout(gz_in)
        .spawn()
        .context("starting cpio")?;
    {
        use std::io::Write;
        let mut stdin = cpio
            .stdin
            .take()
            .ok_or_else(|| anyhow!("cpio has no stdin"))?;
        for p in &list {
            writeln!(stdin, "{p}")?;
        }
    }
    let cs = cpio.wait()?;
    let gs = gzip.wait()?;
    if !cs.success() || !gs.success() {
        bail!("packing the initramfs failed (cpio: {cs}, gzip: {gs})");
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `sh -n` accepts `script` (an init script the guest runs as `/init`).
    pub(crate) fn assert_valid_shell(script: &str) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("init");
        fs::write(&f, script).unwrap();
        let st = Command::new("sh").arg("-n").arg(&f).status().unwrap();
        assert!(st.success(), "sh -n rejected the init script:\n{script}");
    }

    fn plan(modes: &[IrqMode], late: bool) -> GuestPlan {
        GuestPlan {
            tag: "lba512-ns1".into(),
            kver: "6.1.0-56-amd64".into(),
            modules: vec![
                "kernel/drivers/vfio/vfio.ko".into(),
                "kernel/drivers/vfio/pci/vfio-pci.ko".into(),
            ],
            late_modules: if late {
                vec!["kernel/drivers/nvme/host/nvme.ko".into()]
            } else {
                vec![]
            },
            irq_modes: modes.to_vec(),
            lba_size: 512,
            blocks: 8,
            host_lba: 100,
            guest_lba: 200,
            expect_no_iommu: false,
            setup_modules: vec![],
            perf_secs: None,
            expect_identity_domain: false,
            nbd: None,
            tokio: false,
        }
    }

    #[test]
    fn the_nbd_step_runs_last_and_is_valid_shell() {
        let mut p = plan(&[IrqMode::Polled, IrqMode::Msix], false);
        p.nbd = Some(NbdPlan {
            modules: vec![
                "kernel/drivers/block/nbd.ko".into(),
                "kernel/fs/jbd2/jbd2.ko".into(),
                "kernel/fs/ext4/ext4.ko".into(),
            ],
            start_block: 65536,
            blocks: 65536,
        });
        let s = init_script(&p);
        let pos = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("missing {needle}"));
        assert!(pos("export NVME_TEST_IRQ=msix") < pos("run nbd nbd_step"));
        assert!(pos("run nbd nbd_step") < pos("HIL-VERDICT"));
        assert!(s.contains(
            "insmod /lib/modules/6.1.0-56-amd64/kernel/drivers/block/nbd.ko nbds_max=2 ||"
        ));
        assert!(s.contains("insmod /lib/modules/6.1.0-56-amd64/kernel/fs/ext4/ext4.ko ||"));
        assert!(s.contains("--start-block 65536 --block-count 65536"));
        assert_eq!(p.expected_steps().last().map(String::as_str), Some("nbd"));
        assert_valid_shell(&s);
    }

    #[test]
    fn passthrough_boot_requires_the_identity_domain() {
        let mut p = plan(&[IrqMode::Polled], false);
        assert!(!init_script(&p).contains("[ \"$typ\" = identity ]"));
        p.expect_identity_domain = true;
        let s = init_script(&p);
        assert!(s.contains("[ \"$typ\" = identity ]"));
        assert!(s.find("typ=$(cat").unwrap() < s.find("end bind").unwrap());
    }

    #[test]
    fn no_iommu_boot_expects_the_diagnosis() {
        let mut p = plan(&[], false);
        p.expect_no_iommu = true;
        let s = init_script(&p);
        assert!(s.contains("diagnose diagnose-vfio-info /bin/vfio-info \"$BDF\""));
        assert!(s.contains("diagnose diagnose-nvme-tool /bin/nvme-tool id-ctrl \"pci:$BDF\""));
        assert!(s.contains("grep -a -q \"no IOMMU\""));
        assert!(!s.contains("conformance"));
        assert!(s.find("end bind").unwrap() < s.find("HIL-VERDICT").unwrap());
        assert_eq!(
            p.expected_steps(),
            [
                "modules",
                "bind",
                "diagnose-vfio-info",
                "diagnose-nvme-tool"
            ]
        );
        assert_valid_shell(&s);
    }

    #[test]
    fn perf_is_a_step_per_mode() {
        let mut p = plan(&[IrqMode::Polled, IrqMode::Msix], false);
        p.perf_secs = Some(3);
        let s = init_script(&p);
        assert!(s.contains("run \"perf[msix]\" /bin/nvme-tool perf \"pci:$BDF\" --irq msix"));
        assert!(s.contains("--time 3"));
        assert!(p.expected_steps().contains(&"perf[polled]".to_owned()));
    }

    #[test]
    fn the_tokio_step_runs_per_mode_with_the_mode_s_wakeup() {
        let mut p = plan(&[IrqMode::Polled, IrqMode::Msix], false);
        assert!(!init_script(&p).contains("tokio-randread"));
        p.tokio = true;
        let s = init_script(&p);
        assert!(s.contains("run \"tokio[polled]\" /bin/tokio-randread \"$BDF\" --polled --ops"));
        assert!(s.contains("run \"tokio[msix]\" /bin/tokio-randread \"$BDF\" --ops"));
        assert!(p.expected_steps().contains(&"tokio[msix]".to_owned()));
    }

    #[test]
    fn init_loads_modules_in_order_then_binds_then_runs_each_mode() {
        let s = init_script(&plan(&[IrqMode::Polled, IrqMode::Msix], false));
        assert!(s.starts_with("#!/bin/sh\n"));
        let pos = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("missing {needle}"));
        assert!(
            pos("insmod /lib/modules/6.1.0-56-amd64/kernel/drivers/vfio/vfio.ko")
                < pos("vfio-pci.ko ||")
        );
        assert!(pos("vfio-pci.ko ||") < pos("driver_override"));
        assert!(pos("driver_override") < pos("echo 16 > /proc/sys/vm/nr_hugepages"));
        assert!(pos("nr_hugepages") < pos("run vfio-info"));
        assert!(pos("run vfio-info") < pos("export NVME_TEST_IRQ=polled"));
        assert!(pos("export NVME_TEST_IRQ=polled") < pos("export NVME_TEST_IRQ=msix"));
        assert!(pos("HIL-VERDICT: ") < pos("poweroff -f"));
        assert!(s.contains("0x1b36") && s.contains("0x0010"));
        assert!(s.contains("NVME_TEST_ONLY_VFIO=1"));
        assert!(!s.contains("late-modules"));
        // 0's based block count, per-mode write LBAs.
        assert!(s.contains(
            "read \"pci:$BDF\" --namespace-id 1 --start-block 100 --block-count 7 --data-size 4096 --data /tmp/out-polled.bin --irq polled"
        ));
        assert!(s.contains("write \"pci:$BDF\" --namespace-id 1 --start-block 200 --block-count 7"));
        assert!(s.contains("write \"pci:$BDF\" --namespace-id 1 --start-block 208 --block-count 7"));
    }

    #[test]
    fn init_is_valid_shell() {
        let s = init_script(&plan(&[IrqMode::Polled, IrqMode::Msix], true));
        assert_valid_shell(&s);
    }

    #[test]
    fn late_modules_are_a_step_after_bind() {
        let p = plan(&[IrqMode::Msix], true);
        let s = init_script(&p);
        assert!(s.find("begin late-modules").unwrap() > s.find("end bind").unwrap());
        assert_eq!(
            p.expected_steps(),
            [
                "modules",
                "bind",
                "hugepages",
                "late-modules",
                "vfio-info",
                "conformance[msix]",
                "nvme-read[msix]",
                "nvme-cmp[msix]",
                "nvme-write[msix]",
                "soak[msix]"
            ]
        );
    }

    #[test]
    fn applet_links_skip_busybox_itself() {
        let l = applet_links("bin/sh\nusr/bin/cmp\nbin/busybox\n\n/sbin/insmod\n");
        assert_eq!(l, ["bin/sh", "usr/bin/cmp", "sbin/insmod"]);
    }

    #[test]
    fn cpio_list_puts_parents_first() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("bin")).unwrap();
        fs::create_dir_all(d.path().join("a/b")).unwrap();
        fs::write(d.path().join("init"), "x").unwrap();
        fs::write(d.path().join("bin/busybox"), "x").unwrap();
        fs::write(d.path().join("a/b/c"), "x").unwrap();
        assert_eq!(
            cpio_list(d.path()).unwrap(),
            ["a", "a/b", "a/b/c", "bin", "bin/busybox", "init"]
        );
    }

    #[test]
    fn setup_roundtrip_is_the_last_step_and_reads_back_through_the_kernel() {
        let mut p = plan(&[IrqMode::Polled, IrqMode::Msix], false);
        assert!(!p.expected_steps().contains(&SETUP_STEP.to_owned()));
        assert!(!init_script(&p).contains("setup-roundtrip"));
        p.setup_modules = vec![
            "kernel/drivers/nvme/host/nvme-core.ko".into(),
            "kernel/drivers/nvme/host/nvme.ko".into(),
        ];
        assert_eq!(
            p.expected_steps().last().map(String::as_str),
            Some(SETUP_STEP)
        );
        let s = init_script(&p);
        let pos = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle} missing"));
        // After both modes' steps, before the verdict; its LBA is past both modes' writes.
        assert!(pos("run \"soak[msix]\"") < pos("run setup-roundtrip roundtrip"));
        assert!(pos("run setup-roundtrip roundtrip") < pos("HIL-VERDICT"));
        assert!(pos("nvme-core.ko") < pos("host/nvme.ko"));
        let unbind = pos("/bin/nvme-tool setup unbind");
        let bind = pos("/bin/nvme-tool setup bind");
        let list = pos("/bin/nvme-tool list ||");
        let write = pos("/bin/nvme-tool write \"pci:$BDF\" --namespace-id 1 --start-block 216");
        let dd = pos("dd if=/dev/nvme0n1 of=/tmp/roundtrip.bin bs=512 skip=216 count=8");
        assert!(
            unbind < bind && bind < list && list < write && write < dd,
            "{s}"
        );
        assert_eq!(p.guest_lba_for(2), 216);
    }
}

//! `nvme-tool setup`: hand NVMe controllers to vfio-pci and back, in the manner of SPDK's
//! `scripts/setup.sh` and `driverctl`, through the kernel's `driver_override` mechanism
//! (Documentation/ABI/testing/sysfs-bus-pci: `driver_override`, `drivers/.../unbind`,
//! `drivers_probe`).
//!
//! - `status`: every controller of class 010802h with its driver, IOMMU group and the
//!   group's other members, NUMA node, kernel block devices, and whether it can be bound.
//! - `bind ADDR...`: `driver_override` = `vfio-pci`, unbind from the current driver,
//!   `drivers_probe`; then checks the result. Refused (unless `--force`) while a kernel block
//!   device of the controller is mounted or held (device-mapper, md, ...), saying which.
//! - `unbind ADDR...`: `driver_override` = `nvme`, unbind from vfio-pci, `drivers_probe`
//!   (like `driverctl set-override ADDR nvme`). Refused (unless `--force`) while a process
//!   holds the controller's VFIO group open (the kernel's unbind would wait for it).
//! - `hugepages N`: reserves N huge pages (`kernel/mm/hugepages/hugepages-SIZE/nr_hugepages`)
//!   and reports how many the kernel granted.
//! - `--dry-run` prints each sysfs write (`echo VALUE > PATH`) and makes none.
//!
//! The sysfs root is `$NVME_TOOL_SYSFS` (default `/sys`) and the proc root `$NVME_TOOL_PROC`
//! (default `/proc`), so tests run against a fake tree in a temporary directory.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use vfio_backend::sysfs;

use crate::exit::{self, DeviceOpen, Out};
use crate::usage;

/// Options of `setup`.
#[derive(clap::Args, Debug, Clone)]
pub struct SetupArgs {
    #[command(subcommand)]
    cmd: SetupCmd,
    /// Print the sysfs writes instead of making them.
    #[arg(long, global = true)]
    dry_run: bool,
    /// Bind or unbind even when the controller is in use (mounted, held, or its VFIO group
    /// open): its users lose the device.
    #[arg(long, global = true)]
    force: bool,
}

#[derive(clap::Subcommand, Debug, Clone)]
enum SetupCmd {
    /// Every NVMe controller: driver, IOMMU group and members, NUMA node, whether it can be
    /// bound to vfio-pci.
    Status {
        #[command(flatten)]
        out: Out,
    },
    /// Bind controllers to vfio-pci.
    Bind {
        /// PCI addresses (DDDD:BB:DD.F or BB:DD.F).
        #[arg(required = true)]
        addrs: Vec<String>,
    },
    /// Give controllers back to the kernel's nvme driver.
    Unbind {
        /// PCI addresses.
        #[arg(required = true)]
        addrs: Vec<String>,
    },
    /// Reserve huge pages for DMA buffers.
    Hugepages {
        /// Number of pages.
        count: u64,
        /// Page size: 2M or 1G.
        #[arg(long, default_value = "2M")]
        size: String,
    },
}

/// Where setup reads and writes.
#[derive(Debug, Clone)]
pub struct Roots {
    /// The sysfs root.
    pub sys: PathBuf,
    /// The proc root.
    pub proc: PathBuf,
}

impl Roots {
    fn from_env() -> Self {
        Self {
            sys: crate::regs::sysfs_root(),
            proc: std::env::var_os("NVME_TOOL_PROC")
                .map_or_else(|| PathBuf::from("/proc"), PathBuf::from),
        }
    }
    fn dev(&self, addr: &str) -> PathBuf {
        self.sys.join("bus/pci/devices").join(addr)
    }
}

/// One sysfs write, made or (dry run) printed.
fn write(path: &Path, value: &str, dry: bool) -> Result<()> {
    println!("echo {value} > {}", path.display());
    if dry {
        return Ok(());
    }
    log::debug!("writing {value:?} to {}", path.display());
    std::fs::write(path, format!("{value}\n"))
        .with_context(|| format!("writing {value:?} to {}", path.display()))
        .context(DeviceOpen("changing the driver binding".into()))
}

/// Why a controller is in use by the kernel: mounted or held block devices.
fn kernel_users(r: &Roots, addr: &str) -> Vec<String> {
    let mounts = std::fs::read_to_string(r.proc.join("self/mounts")).unwrap_or_default();
    let swaps = std::fs::read_to_string(r.proc.join("swaps")).unwrap_or_default();
    let mut why = Vec::new();
    for b in sysfs::block_devices(&r.sys, addr) {
        let dev = format!("/dev/{b}");
        for l in mounts.lines() {
            let mut f = l.split_whitespace();
            if f.next() == Some(dev.as_str()) {
                why.push(format!("{dev} is mounted on {}", f.next().unwrap_or("?")));
            }
        }
        if swaps
            .lines()
            .any(|l| l.split_whitespace().next() == Some(dev.as_str()))
        {
            why.push(format!("{dev} is in use as swap"));
        }
        for h in sysfs::block_holders(&r.sys, &b) {
            why.push(format!("{dev} is held by {h}"));
        }
    }
    why
}

/// Processes that hold `/dev/vfio/GROUP` open.
fn vfio_users(r: &Roots, group: u32) -> Vec<u32> {
    let want = PathBuf::from(format!("/dev/vfio/{group}"));
    let Ok(rd) = std::fs::read_dir(&r.proc) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_dir(r.proc.join(pid.to_string()).join("fd")).is_ok_and(|fds| {
                fds.filter_map(|f| f.ok())
                    .any(|f| std::fs::read_link(f.path()).is_ok_and(|t| t == want))
            })
        })
        .collect();
    pids.sort_unstable();
    pids
}

fn status_json(r: &Roots) -> Value {
    let devs: Vec<Value> = sysfs::nvme_devices(&r.sys)
        .into_iter()
        .map(|f| {
            let rep = vfio_backend::PciAddress::parse(&f.addr)
                .ok()
                .and_then(|a| sysfs::inspect(&r.sys, &a).ok());
            let group = rep.as_ref().and_then(|x| x.iommu_group);
            let members: Vec<String> = rep
                .as_ref()
                .map(|x| {
                    x.group_members
                        .iter()
                        .filter(|m| m.addr != f.addr)
                        .map(|m| m.to_string())
                        .collect()
                })
                .unwrap_or_default();
            let users = kernel_users(r, &f.addr);
            let blockers: Vec<String> = rep
                .as_ref()
                .map(|x| {
                    x.group_members
                        .iter()
                        .filter(|m| {
                            m.addr != f.addr && !sysfs::driver_allows_vfio(m.driver.as_deref())
                        })
                        .map(|m| {
                            format!("group member {m} must be unbound or bound to vfio-pci too")
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut reasons = Vec::new();
            if group.is_none() {
                reasons.push(
                    "no IOMMU group: enable the IOMMU (intel_iommu=on / amd_iommu=on / an SMMU)"
                        .to_string(),
                );
            }
            reasons.extend(users.iter().cloned());
            reasons.extend(blockers);
            json!({
                "address": f.addr,
                "driver": f.driver,
                "iommu_group": group,
                "group_members": members,
                "numa_node": sysfs::numa_node(&r.sys, &f.addr),
                "block_devices": sysfs::block_devices(&r.sys, &f.addr),
                "bindable": reasons.is_empty(),
                "reasons": reasons,
            })
        })
        .collect();
    json!({ "Controllers": devs })
}

fn status(r: &Roots, out: Out) {
    let v = status_json(r);
    if out.json() {
        exit::print_json(&v);
        return;
    }
    let devs = v["Controllers"].as_array().cloned().unwrap_or_default();
    if devs.is_empty() {
        println!(
            "no NVMe controller (PCI class 010802h) under {}",
            r.sys.display()
        );
        return;
    }
    println!(
        "{:<14} {:<10} {:>5} {:>4} {:<24} {:<8} Group members",
        "Address", "Driver", "Group", "NUMA", "Block devices", "Bindable"
    );
    for d in devs {
        let s = |k: &str| d[k].as_str().map(str::to_string);
        let list = |k: &str| {
            d[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|x| !x.is_empty())
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<14} {:<10} {:>5} {:>4} {:<24} {:<8} {}",
            s("address").unwrap_or_default(),
            s("driver").unwrap_or_else(|| "(none)".into()),
            d["iommu_group"]
                .as_u64()
                .map_or("-".into(), |g| g.to_string()),
            d["numa_node"]
                .as_u64()
                .map_or("-".into(), |g| g.to_string()),
            list("block_devices"),
            if d["bindable"] == json!(true) {
                "yes"
            } else {
                "no"
            },
            list("group_members")
        );
        for why in d["reasons"].as_array().into_iter().flatten() {
            println!("    {}", why.as_str().unwrap_or_default());
        }
    }
}

fn canonical(addr: &str) -> Result<String> {
    match vfio_backend::PciAddress::parse(addr) {
        Ok(a) => Ok(a.to_string()),
        Err(e) => usage!("{addr}: {e}"),
    }
}

fn rebind(r: &Roots, addr: &str, target: &str, a: &SetupArgs) -> Result<()> {
    let dev = r.dev(addr);
    if !dev.exists() {
        return Err(anyhow::Error::new(DeviceOpen(format!(
            "{addr}: no such PCI function under {}",
            r.sys.display()
        ))));
    }
    let class = std::fs::read_to_string(dev.join("class")).unwrap_or_default();
    if u32::from_str_radix(class.trim().trim_start_matches("0x"), 16).ok()
        != Some(sysfs::NVME_CLASS)
    {
        usage!(
            "{addr} is not an NVMe controller (class {}); setup only moves class 010802h functions",
            class.trim()
        );
    }
    let current = sysfs::driver_of(&r.sys, addr);
    if current.as_deref() == Some(target) {
        println!("{addr}: already bound to {target}");
        return Ok(());
    }
    if !r.sys.join("bus/pci/drivers").join(target).exists() {
        return Err(anyhow::Error::new(DeviceOpen(format!(
            "{addr}: the {target} driver is not loaded (no {}): modprobe {target}",
            r.sys.join("bus/pci/drivers").join(target).display()
        ))));
    }
    let mut why = Vec::new();
    if target == "vfio-pci" {
        why.extend(kernel_users(r, addr));
    } else if let Some(g) = vfio_backend::PciAddress::parse(addr)
        .ok()
        .and_then(|p| sysfs::inspect(&r.sys, &p).ok())
        .and_then(|x| x.iommu_group)
    {
        why.extend(
            vfio_users(r, g)
                .into_iter()
                .map(|p| format!("process {p} holds /dev/vfio/{g} open")),
        );
    }
    if !why.is_empty() {
        if a.force {
            log::warn!("{addr}: in use ({}); going on (--force)", why.join("; "));
        } else {
            return Err(anyhow::Error::new(DeviceOpen(format!(
                "{addr} is in use: {}; stop using it first, or pass --force (its users lose the device)",
                why.join("; ")
            ))));
        }
    }
    write(&dev.join("driver_override"), target, a.dry_run)?;
    if let Some(d) = &current {
        write(
            &r.sys.join("bus/pci/drivers").join(d).join("unbind"),
            addr,
            a.dry_run,
        )?;
    }
    write(&r.sys.join("bus/pci/drivers_probe"), addr, a.dry_run)?;
    if a.dry_run {
        return Ok(());
    }
    match sysfs::driver_of(&r.sys, addr) {
        Some(d) if d == target => {
            println!("{addr}: bound to {target} (was {})", current.as_deref().unwrap_or("unbound"));
            Ok(())
        }
        other => Err(anyhow::Error::new(DeviceOpen(format!(
            "{addr}: after drivers_probe it is {}, not {target}; see dmesg ({target}'s probe failed)",
            other.map_or("unbound".to_string(), |d| format!("bound to {d}"))
        )))),
    }
}

fn hugepages(r: &Roots, count: u64, size: &str, dry: bool) -> Result<()> {
    let kb = match size.to_ascii_uppercase().as_str() {
        "2M" | "2048K" | "2048KB" => 2048,
        "1G" | "1048576K" | "1048576KB" => 1 << 20,
        _ => usage!("--size {size}: 2M or 1G"),
    };
    let dir = r.sys.join(format!("kernel/mm/hugepages/hugepages-{kb}kB"));
    if !dir.exists() {
        return Err(anyhow::Error::new(DeviceOpen(format!(
            "{}: this kernel has no {size} huge pages",
            dir.display()
        ))));
    }
    let f = dir.join("nr_hugepages");
    write(&f, &count.to_string(), dry)?;
    if !dry {
        let got = std::fs::read_to_string(&f).unwrap_or_default();
        let got: u64 = got.trim().parse().unwrap_or(0);
        println!("hugepages: {got} of {count} {size} pages reserved");
        if got < count {
            anyhow::bail!(
                "the kernel reserved {got} of {count} {size} pages (memory fragmented or short)"
            );
        }
    }
    Ok(())
}

/// Runs `setup`.
///
/// # Errors
/// Bad addresses (2), missing devices or drivers, devices in use, failed writes (3).
pub fn run(a: SetupArgs) -> Result<()> {
    let r = Roots::from_env();
    match &a.cmd {
        SetupCmd::Status { out } => {
            status(&r, *out);
            Ok(())
        }
        SetupCmd::Bind { addrs } | SetupCmd::Unbind { addrs } => {
            let target = if matches!(a.cmd, SetupCmd::Bind { .. }) {
                "vfio-pci"
            } else {
                "nvme"
            };
            let addrs: Vec<String> = addrs.iter().map(|x| canonical(x)).collect::<Result<_>>()?;
            for addr in &addrs {
                rebind(&r, addr, target, &a)?;
            }
            Ok(())
        }
        SetupCmd::Hugepages { count, size } => hugepages(&r, *count, size, a.dry_run),
    }
}

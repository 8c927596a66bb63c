//! Stand-in guest payload for `cargo xtask hil --payload standin`.
//!
//! One static binary, three personalities chosen by the name it is run as:
//! - `vfio-info [BDF]`: prints what the guest sees of the controller bound to vfio-pci.
//! - `conformance`: a harness-shaped run of environment checks (the device bound to vfio-pci,
//!   its IOMMU group, hugepages, the test variables) ending in `conformance: N passed, M failed`.
//! - `nvme-tool read|write pci:BDF ...`: the real tool's command line, carried out through the
//!   guest kernel's own `nvme` driver (the controller is moved to it for the I/O and back to
//!   `vfio-pci` afterwards), which proves the host-image path end to end.
//!
//! It exercises the HIL plumbing only; it is not the driver and tests nothing of it.

use std::fs;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread::sleep;
use std::time::{Duration, Instant};

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().map(String::as_str).unwrap_or("");
    let name = Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let (personality, rest) = match name {
        "vfio-info" | "conformance" | "nvme-tool" => (name, &args[1..]),
        _ => match args.get(1) {
            Some(p) => (p.as_str(), args.get(2..).unwrap_or(&[])),
            None => ("", &args[..0]),
        },
    };
    let result = match personality {
        "vfio-info" => vfio_info(rest),
        "conformance" => Ok(conformance()),
        "nvme-tool" => nvme_tool(rest),
        _ => Err("usage: hil-standin vfio-info|conformance|nvme-tool ...".to_owned()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{personality}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dev_dir(bdf: &str) -> PathBuf {
    Path::new("/sys/bus/pci/devices").join(bdf)
}

fn read_trim(p: impl AsRef<Path>) -> Res<String> {
    let p = p.as_ref();
    fs::read_to_string(p)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("{}: {e}", p.display()))
}

fn link_name(p: impl AsRef<Path>) -> Option<String> {
    fs::read_link(p)
        .ok()?
        .file_name()?
        .to_str()
        .map(str::to_owned)
}

fn write_sysfs(p: impl AsRef<Path>, value: &str) -> Res<()> {
    let p = p.as_ref();
    fs::write(p, value).map_err(|e| format!("writing {value:?} to {}: {e}", p.display()))
}

fn env_bdf(args: &[String]) -> Res<String> {
    args.first()
        .cloned()
        .or_else(|| std::env::var("NVME_TEST_PCI").ok())
        .ok_or_else(|| "no device: give a BDF or set NVME_TEST_PCI".to_owned())
}

/// BAR sizes from the sysfs `resource` file (one `start end flags` line per resource).
fn bar_sizes(bdf: &str) -> Res<Vec<u64>> {
    let text = read_trim(dev_dir(bdf).join("resource"))?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0);
    Ok(text
        .lines()
        .take(6)
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                [s, e, ..] if hex(e) > hex(s) => hex(e) - hex(s) + 1,
                _ => 0,
            }
        })
        .collect())
}

fn vfio_info(args: &[String]) -> Res<bool> {
    let bdf = env_bdf(args)?;
    let d = dev_dir(&bdf);
    println!("vfio-info (stand-in) for {bdf}");
    println!(
        "  id        {}:{}",
        read_trim(d.join("vendor"))?,
        read_trim(d.join("device"))?
    );
    println!("  class     {}", read_trim(d.join("class"))?);
    let driver = link_name(d.join("driver")).unwrap_or_else(|| "(none)".into());
    println!("  driver    {driver}");
    let group = link_name(d.join("iommu_group"));
    println!("  iommu     group {}", group.as_deref().unwrap_or("(none)"));
    for (i, s) in bar_sizes(&bdf)?.iter().enumerate().filter(|(_, s)| **s > 0) {
        println!("  BAR{i}      {s:#x} bytes");
    }
    let entries: Vec<String> = fs::read_dir("/dev/vfio")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    println!("  /dev/vfio {entries:?}");
    Ok(driver == "vfio-pci" && group.is_some_and(|g| Path::new("/dev/vfio").join(g).exists()))
}

fn conformance() -> bool {
    let mut passed = 0;
    let mut failed = 0;
    let mut group = |title: &str, checks: Vec<(&str, Res<()>)>| {
        println!("{title}");
        for (name, r) in checks {
            match r {
                Ok(()) => {
                    passed += 1;
                    println!("  ok    {name}");
                }
                Err(e) => {
                    failed += 1;
                    println!("  FAIL  {name}: {e}");
                }
            }
        }
    };
    let bdf = std::env::var("NVME_TEST_PCI").unwrap_or_default();
    let d = dev_dir(&bdf);
    let expect = |what: &str, got: Res<String>, want: &str| -> Res<()> {
        let got = got?;
        if got == want {
            Ok(())
        } else {
            Err(format!("{what} is {got}, want {want}"))
        }
    };
    let group_id = link_name(d.join("iommu_group"));
    group(
        "device (stand-in harness: checks the HIL environment, not the driver)",
        vec![
            (
                "NVME_TEST_PCI names a PCI function",
                if !bdf.is_empty() && d.exists() {
                    Ok(())
                } else {
                    Err(format!("{bdf:?} not in sysfs"))
                },
            ),
            (
                "vendor is 1b36 (Red Hat/QEMU)",
                expect("vendor", read_trim(d.join("vendor")), "0x1b36"),
            ),
            (
                "device is 0010 (QEMU NVMe)",
                expect("device", read_trim(d.join("device")), "0x0010"),
            ),
            (
                "class is 010802 (NVM Express)",
                expect("class", read_trim(d.join("class")), "0x010802"),
            ),
            (
                "BAR0 is at least 16 KiB",
                match bar_sizes(&bdf) {
                    Ok(b) if b.first().is_some_and(|s| *s >= 0x4000) => Ok(()),
                    Ok(b) => Err(format!("BAR sizes {b:x?}")),
                    Err(e) => Err(e),
                },
            ),
        ],
    );
    group(
        "vfio",
        vec![
            (
                "bound to vfio-pci",
                expect(
                    "driver",
                    link_name(d.join("driver")).ok_or_else(|| "no driver".into()),
                    "vfio-pci",
                ),
            ),
            (
                "has an IOMMU group",
                group_id
                    .as_ref()
                    .map(|_| ())
                    .ok_or_else(|| "no iommu_group link".into()),
            ),
            (
                "alone in its IOMMU group",
                match &group_id {
                    Some(g) => match fs::read_dir(format!("/sys/kernel/iommu_groups/{g}/devices"))
                        .map(Iterator::count)
                    {
                        Ok(1) => Ok(()),
                        Ok(_) => Err("group has other devices".into()),
                        Err(e) => Err(e.to_string()),
                    },
                    None => Err("no group".into()),
                },
            ),
            (
                "group character device opens",
                match &group_id {
                    Some(g) => {
                        let p = Path::new("/dev/vfio").join(g);
                        match fs::metadata(&p) {
                            Ok(m) if m.file_type().is_char_device() => fs::OpenOptions::new()
                                .read(true)
                                .write(true)
                                .open(&p)
                                .map(drop)
                                .map_err(|e| format!("{}: {e}", p.display())),
                            Ok(_) => Err(format!("{} is not a character device", p.display())),
                            Err(e) => Err(format!("{}: {e}", p.display())),
                        }
                    }
                    None => Err("no group".into()),
                },
            ),
            (
                "/dev/vfio/vfio opens",
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/vfio/vfio")
                    .map(drop)
                    .map_err(|e| e.to_string()),
            ),
            (
                "a DMAR IOMMU is present",
                match fs::read_dir("/sys/class/iommu").map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .any(|e| e.file_name().to_string_lossy().starts_with("dmar"))
                }) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err("no dmar unit".into()),
                    Err(e) => Err(e.to_string()),
                },
            ),
        ],
    );
    let irq = std::env::var("NVME_TEST_IRQ").unwrap_or_default();
    group(
        "environment",
        vec![
            (
                "NVME_TEST_IRQ is polled or msix",
                if irq == "polled" || irq == "msix" {
                    Ok(())
                } else {
                    Err(format!("{irq:?}"))
                },
            ),
            (
                "NVME_TEST_ONLY_VFIO=1",
                expect(
                    "NVME_TEST_ONLY_VFIO",
                    std::env::var("NVME_TEST_ONLY_VFIO").map_err(|e| e.to_string()),
                    "1",
                ),
            ),
            (
                "at least 16 hugepages reserved",
                match read_trim("/proc/sys/vm/nr_hugepages").map(|s| s.parse::<u32>()) {
                    Ok(Ok(n)) if n >= 16 => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            ),
            (
                "hugetlbfs mounted at /dev/hugepages",
                match fs::read_to_string("/proc/mounts") {
                    Ok(m)
                        if m.lines().any(|l| {
                            l.split_whitespace().nth(1) == Some("/dev/hugepages")
                                && l.contains("hugetlbfs")
                        }) =>
                    {
                        Ok(())
                    }
                    Ok(_) => Err("not mounted".into()),
                    Err(e) => Err(e.to_string()),
                },
            ),
        ],
    );
    println!("conformance: {passed} passed, {failed} failed");
    failed == 0
}

/// Parsed `nvme-tool read|write` command line.
#[derive(Debug)]
struct IoArgs {
    write: bool,
    bdf: String,
    nsid: u32,
    start: u64,
    count_z: u64,
    data_size: u64,
    data: PathBuf,
}

fn parse_io(args: &[String]) -> Res<IoArgs> {
    let usage = "usage: nvme-tool read|write pci:BDF --namespace-id N --start-block LBA --block-count N-1 --data-size BYTES --data FILE [--irq polled|msix]";
    let write = match args.first().map(String::as_str) {
        Some("read") => false,
        Some("write") => true,
        _ => return Err(usage.into()),
    };
    let bdf = args
        .get(1)
        .and_then(|a| a.strip_prefix("pci:"))
        .ok_or(usage)?
        .to_owned();
    let mut io = IoArgs {
        write,
        bdf,
        nsid: 1,
        start: 0,
        count_z: 0,
        data_size: 0,
        data: PathBuf::new(),
    };
    let mut it = args[2..].iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--namespace-id" => io.nsid = u32::try_from(num(v)?).map_err(|e| e.to_string())?,
            "--start-block" => io.start = num(v)?,
            "--block-count" => io.count_z = num(v)?,
            "--data-size" => io.data_size = num(v)?,
            "--data" => io.data = PathBuf::from(v),
            "--irq" => {} // the kernel driver picks its own interrupts
            _ => return Err(format!("unknown option {flag}\n{usage}")),
        }
    }
    if io.data.as_os_str().is_empty() {
        return Err(format!("--data is required\n{usage}"));
    }
    Ok(io)
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Res<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if t0.elapsed() > timeout {
            return Err(format!("timed out waiting for {what}"));
        }
        sleep(Duration::from_millis(50));
    }
}

fn bind(bdf: &str, driver: &str) -> Res<()> {
    let d = dev_dir(bdf);
    write_sysfs(d.join("driver_override"), driver)?;
    if d.join("driver").exists() {
        write_sysfs(d.join("driver/unbind"), bdf)?;
    }
    write_sysfs("/sys/bus/pci/drivers_probe", bdf)?;
    // nvme probes asynchronously: the driver link shows up a little later.
    wait_for(
        &format!("{bdf} to bind to {driver}"),
        Duration::from_secs(30),
        || (link_name(d.join("driver")).as_deref() == Some(driver)).then_some(()),
    )
}

fn nvme_tool(args: &[String]) -> Res<bool> {
    let io = parse_io(args)?;
    println!("nvme-tool (stand-in via the kernel nvme driver): {io:?}");
    bind(&io.bdf, "nvme")?;
    let result = block_io(&io);
    let back = bind(&io.bdf, "vfio-pci");
    let ok = result?;
    back?;
    Ok(ok)
}

fn block_io(io: &IoArgs) -> Res<bool> {
    let ctrl_dir = dev_dir(&io.bdf).join("nvme");
    let suffix = format!("n{}", io.nsid);
    let ns = wait_for(
        "the namespace block device",
        Duration::from_secs(60),
        || {
            let ctrl = fs::read_dir(&ctrl_dir)
                .ok()?
                .filter_map(|e| e.ok())
                .next()?
                .path();
            let ns = fs::read_dir(&ctrl)
                .ok()?
                .filter_map(|e| e.ok())
                .find_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    (n.starts_with("nvme") && n.ends_with(&suffix)).then_some(n)
                })?;
            Path::new("/dev").join(&ns).exists().then_some(ns)
        },
    )?;
    let lbs: u64 = read_trim(format!("/sys/block/{ns}/queue/logical_block_size"))?
        .parse()
        .map_err(|e| format!("logical_block_size: {e}"))?;
    let bytes = (io.count_z + 1) * lbs;
    if bytes != io.data_size {
        return Err(format!(
            "--data-size {} != (block-count + 1) * {lbs} = {bytes}",
            io.data_size
        ));
    }
    let dev = Path::new("/dev").join(&ns);
    let offset = io.start * lbs;
    let len = usize::try_from(bytes).map_err(|e| e.to_string())?;
    if io.write {
        let data = fs::read(&io.data).map_err(|e| format!("{}: {e}", io.data.display()))?;
        if data.len() != len {
            return Err(format!(
                "{} holds {} bytes, want {len}",
                io.data.display(),
                data.len()
            ));
        }
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&dev)
            .map_err(|e| format!("{}: {e}", dev.display()))?;
        f.write_all_at(&data, offset).map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| e.to_string())?;
    } else {
        let f = fs::File::open(&dev).map_err(|e| format!("{}: {e}", dev.display()))?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)
            .map_err(|e| e.to_string())?;
        fs::write(&io.data, &buf).map_err(|e| format!("{}: {e}", io.data.display()))?;
    }
    println!(
        "{} {len} bytes at LBA {} of {} ({lbs}-byte blocks)",
        if io.write { "wrote" } else { "read" },
        io.start,
        dev.display()
    );
    Ok(true)
}

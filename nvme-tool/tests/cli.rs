//! `nvme-tool` from the command line: exit codes, JSON output, safe simulator images,
//! streaming I/O, passthrough, registers, perf, and `setup` on a fake sysfs tree (never the
//! machine's own devices).

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use vfio_backend::sysfs::fake::FakeSysfs;
use vfio_backend::sysfs::NVME_CLASS;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_env(args: &[&str], env: &[(&str, &Path)], cwd: Option<&Path>) -> Out {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nvme-tool"));
    c.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    let o = c.output().expect("running nvme-tool");
    Out {
        code: o.status.code().expect("exit code"),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn run(args: &[&str]) -> Out {
    run_env(args, &[], None)
}

fn json(o: &Out) -> Value {
    assert_eq!(o.code, 0, "{}", o.stderr);
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", o.stdout))
}

fn img(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn help_documents_exit_codes() {
    let o = run(&["--help"]);
    assert_eq!(o.code, 0);
    for l in [
        "Exit codes:",
        "2  usage error",
        "3  the device",
        "4  a command failed",
        "5  miscompare",
    ] {
        assert!(o.stdout.contains(l), "{l} missing: {}", o.stdout);
    }
}

#[test]
fn exit_codes_distinguish_failures() {
    // Usage: clap's own and the tool's checks after parsing.
    assert_eq!(run(&["id-ctrl"]).code, 2);
    assert_eq!(run(&["get-feature", "sim", "-f", "0x100"]).code, 2);
    assert_eq!(run(&["get-log", "sim", "-i", "2", "-l", "6"]).code, 2);
    // Device: an image that does not exist.
    let d = tempfile::tempdir().unwrap();
    let o = run(&["id-ctrl", &format!("sim:{}", img(d.path(), "none.img"))]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stderr.contains("no such image"), "{}", o.stderr);
    assert!(!d.path().join("none.img").exists());
    // NVMe status: Identify of an inactive namespace, an unsupported log page.
    let o = run(&["id-ns", "sim", "-n", "9"]);
    assert_eq!(o.code, 4, "{}", o.stderr);
    assert!(
        o.stderr.contains("Invalid Namespace or Format"),
        "{}",
        o.stderr
    );
    assert_eq!(run(&["get-log", "sim", "-i", "0x7f", "-l", "16"]).code, 4);
}

#[test]
fn json_uses_nvme_cli_field_names() {
    let v = json(&run(&["id-ctrl", "sim", "-o", "json"]));
    for k in [
        "vid", "ssvid", "sn", "mn", "fr", "mdts", "cntlid", "ver", "oacs", "oncs", "nn",
    ] {
        assert!(v.get(k).is_some(), "id-ctrl lacks {k}: {v}");
    }
    assert_eq!(v["nn"], 2);
    assert_eq!(v["mn"], "nvme-sim controller model");
    let v = json(&run(&["smart-log", "sim", "-o", "json"]));
    for k in [
        "critical_warning",
        "temperature",
        "avail_spare",
        "percent_used",
        "data_units_read",
        "host_write_commands",
    ] {
        assert!(v[k].is_number(), "smart-log lacks {k}: {v}");
    }
    let v = json(&run(&["list", "sim", "-o", "json"]));
    let devs = v["Devices"].as_array().unwrap();
    assert_eq!(devs.len(), 2);
    assert_eq!(devs[1]["SectorSize"], 4096);
    assert_eq!(devs[0]["Volatile"], true, "sim namespaces live in memory");
    let v = json(&run(&["id-ns", "sim", "-n", "2", "-o", "json"]));
    assert_eq!(v["lbafs"][v["flbas"].as_u64().unwrap() as usize]["ds"], 12);
    assert_eq!(v["volatile"], true);
    let v = json(&run(&["show-regs", "sim", "-o", "json", "-H"]));
    assert!(
        v["cap"].is_u64() && v["cc"].as_u64().unwrap() & 1 == 1,
        "{v}"
    );
    assert_eq!(v["cap_fields"]["MQES (max queue entries)"], "1024");
    let v = json(&run(&["vfio-info", "sim", "-o", "json"]));
    assert_eq!(v["simulated"], true);
    assert_eq!(v["regions"][0]["name"], "BAR0");
}

#[test]
fn images_are_created_only_on_request_locked_and_never_resized() {
    let d = tempfile::tempdir().unwrap();
    let p = img(d.path(), "disk.img");
    let o = run(&["id-ctrl", &format!("sim:{p},create=4M")]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 4 << 20);
    let o = run(&["id-ctrl", &format!("sim:{p},create=8M")]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stderr.contains("never resized"), "{}", o.stderr);
    // A second writer (this process holds the lock) is refused with the holder's pid.
    let held = sim_backend::ImageFile::open(Path::new(&p), None, false).unwrap();
    let o = run(&["list", &format!("sim:{p}")]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stderr.contains("in use by"), "{}", o.stderr);
    if Path::new("/proc/locks").exists() {
        assert!(
            o.stderr
                .contains(&format!("process {}", std::process::id())),
            "{}",
            o.stderr
        );
    }
    drop(held);
    // Image namespaces are not volatile; the memory one is.
    let v = json(&run(&["list", &format!("sim:{p}"), "-o", "json"]));
    assert_eq!(v["Devices"][0]["Volatile"], false);
    assert_eq!(v["Devices"][1]["Volatile"], true);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 4 << 20);
}

#[test]
fn read_only_images_identify_but_refuse_writes() {
    let d = tempfile::tempdir().unwrap();
    let p = img(d.path(), "ro.img");
    assert_eq!(run(&["id-ctrl", &format!("sim:{p},create=1M")]).code, 0);
    let data = d.path().join("data");
    std::fs::write(&data, vec![0xAB; 4096]).unwrap();
    let ro = format!("sim:{p},ro");
    assert_eq!(run(&["id-ns", &ro]).code, 0);
    let o = run(&["write", &ro, "-d", data.to_str().unwrap()]);
    assert_eq!(o.code, 4, "{}", o.stderr);
    assert!(
        o.stderr.contains("Namespace is Write Protected"),
        "{}",
        o.stderr
    );
    let o = run(&["format", &ro, "-l", "3"]);
    assert_eq!(o.code, 4, "{}", o.stderr);
    assert!(
        std::fs::read(&p).unwrap().iter().all(|&b| b == 0),
        "nothing was written"
    );
}

#[test]
fn format_is_kept_for_the_next_run() {
    let d = tempfile::tempdir().unwrap();
    let p = img(d.path(), "f.img");
    let dev = format!("sim:{p},create=2M");
    assert_eq!(run(&["id-ns", &dev]).code, 0);
    let o = run(&["format", &format!("sim:{p}"), "-l", "3"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let side = std::fs::read_to_string(format!("{p}.nvme-sim.json")).unwrap();
    assert!(side.contains("4096"), "{side}");
    let v = json(&run(&["id-ns", &format!("sim:{p}"), "-o", "json"]));
    assert_eq!(v["nsze"], 512, "2 MiB of 4 KiB blocks");
    assert_eq!(v["lbafs"][v["flbas"].as_u64().unwrap() as usize]["ds"], 12);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 2 << 20);
}

#[test]
fn streaming_io_round_trips_and_miscompares_exit_5() {
    let d = tempfile::tempdir().unwrap();
    let p = img(d.path(), "s.img");
    let dev = format!("sim:{p},create=8M");
    // 1 MiB + 3 blocks: more than MDTS (128 KiB), not a multiple of it.
    let data: Vec<u8> = (0..(1 << 20) + 1536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let inp = d.path().join("in");
    std::fs::write(&inp, &data).unwrap();
    let o = run(&["write", &dev, "-s", "7", "-d", inp.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("9 commands"), "{}", o.stderr);
    let dev = format!("sim:{p}");
    let back = d.path().join("back");
    let o = run(&[
        "read",
        &dev,
        "-s",
        "7",
        "-z",
        &data.len().to_string(),
        "-d",
        back.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(std::fs::read(&back).unwrap() == data);
    // The image holds it at LBA 7 × 512.
    assert!(std::fs::read(&p).unwrap()[7 * 512..7 * 512 + data.len()] == data[..]);
    assert_eq!(
        run(&["compare", &dev, "-s", "7", "-d", inp.to_str().unwrap()]).code,
        0
    );
    let o = run(&["compare", &dev, "-s", "8", "-d", inp.to_str().unwrap()]);
    assert_eq!(o.code, 5, "{}", o.stderr);
    assert!(o.stderr.contains("Compare Failure"), "{}", o.stderr);
    assert_eq!(run(&["verify", &dev, "-c", "16383"]).code, 0);
    // Bad input loses nothing: a short file and a range past the end are refused first.
    let short = d.path().join("short");
    std::fs::write(&short, [1u8; 512]).unwrap();
    let o = run(&[
        "write",
        &dev,
        "-s",
        "7",
        "-c",
        "3",
        "-d",
        short.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    let o = run(&["write", &dev, "-s", "16383", "-d", inp.to_str().unwrap()]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(std::fs::read(&p).unwrap()[7 * 512..7 * 512 + data.len()] == data[..]);
}

#[test]
fn passthrough_derives_lengths_and_refuses_unknown_opcodes() {
    // Identify Controller: 4 KiB derived from CNS.
    let o = run(&[
        "admin-passthru",
        "sim",
        "--opcode",
        "6",
        "--cdw10",
        "1",
        "-r",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("nvme-sim"), "{}", o.stdout);
    assert!(o.stdout.lines().count() == 256, "4096 bytes, 16 a line");
    // A length that disagrees with the command is refused before sending.
    let o = run(&[
        "admin-passthru",
        "sim",
        "--opcode",
        "6",
        "--cdw10",
        "1",
        "-l",
        "512",
    ]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    // Vendor-specific: refused without the unchecked flag.
    let o = run(&[
        "admin-passthru",
        "sim",
        "--opcode",
        "0xc0",
        "-l",
        "512",
        "-r",
    ]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("--unchecked-data-length"), "{}", o.stderr);
    // With it, the controller answers (Invalid Command Opcode: exit 4).
    let o = run(&[
        "admin-passthru",
        "sim",
        "--opcode",
        "0xc0",
        "-l",
        "512",
        "-r",
        "--unchecked-data-length",
    ]);
    assert_eq!(o.code, 4, "{}", o.stderr);
    assert!(o.stderr.contains("Invalid Command Opcode"), "{}", o.stderr);
    // I/O: a Read of 2 blocks.
    let o = run(&["io-passthru", "sim", "-O", "2", "-n", "1", "--cdw12", "1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.lines().count(), 64);
    // get-log: raw bytes of the SMART log, and from an offset inside it.
    let o = run(&["get-log", "sim", "-i", "2", "-l", "512", "-b"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.len(), 512);
    let o = run(&["get-log", "sim", "-i", "2", "-l", "8", "--lpo", "504"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("offset:504 length:8"), "{}", o.stdout);
}

#[test]
fn perf_reports_reads_and_writes_and_bounds_time() {
    let o = run(&["perf", "sim", "-t", "inf"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert_eq!(run(&["perf", "sim", "-t", "1e300"]).code, 2);
    let v = json(&run(&[
        "perf",
        "sim",
        "-t",
        "0.3",
        "-c",
        "2",
        "-q",
        "4",
        "-w",
        "randrw",
        "-M",
        "50",
        "--output-format",
        "json",
    ]));
    assert_eq!(v["threads"], 2);
    let (r, w) = (&v["read"], &v["write"]);
    assert!(
        r["ios"].as_u64().unwrap() > 0 && w["ios"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(
        v["total"]["ios"].as_u64().unwrap(),
        r["ios"].as_u64().unwrap() + w["ios"].as_u64().unwrap()
    );
    let p = &r["latency_us"]["percentiles"];
    assert!(p["50"].as_f64().unwrap() <= p["99"].as_f64().unwrap());
    assert!(p["99"].as_f64().unwrap() <= r["latency_us"]["max"].as_f64().unwrap());
    let o = run(&["perf", "sim", "-t", "0.2", "-c", "9"]);
    assert_eq!(o.code, 2, "more threads than queue pairs: {}", o.stderr);
    // Polled: no interrupt figures; MSI-X on the device-thread simulator: the controller
    // signals completions, and the summary counts them per I/O.
    assert!(v.get("interrupts").is_none(), "{v}");
    let v = json(&run(&[
        "perf",
        "sim",
        "--sim-thread",
        "--irq",
        "msix",
        "-t",
        "0.3",
        "--output-format",
        "json",
    ]));
    let i = &v["interrupts"];
    assert!(i["fired"].as_u64().unwrap() > 0, "{v}");
    let per_io = i["fired_per_io"].as_f64().unwrap();
    assert!(per_io > 0.0 && per_io <= 1.01, "{v}");
    assert_eq!(v["registered_buffers"], true, "the default: {v}");
}

/// Both buffer modes run every workload to the end without errors, polled and with MSI-X.
#[test]
fn perf_runs_with_owned_and_registered_buffers() {
    for (buffers, irq) in [
        ("owned", "polled"),
        ("registered", "polled"),
        ("owned", "msix"),
        ("registered", "msix"),
    ] {
        let o = run(&[
            "perf",
            "sim",
            "--sim-thread",
            "--irq",
            irq,
            "--buffers",
            buffers,
            "-w",
            "randrw",
            "-q",
            "8",
            "-t",
            "0.3",
            "--output-format",
            "json",
        ]);
        assert_eq!(o.code, 0, "{buffers} {irq}: {}", o.stderr);
        let v = json(&o);
        assert_eq!(v["registered_buffers"], buffers == "registered", "{v}");
        assert_eq!(v["errors"], 0, "{v}");
        assert!(v["read"]["ios"].as_u64().unwrap() > 0, "{v}");
        assert!(v["write"]["ios"].as_u64().unwrap() > 0, "{v}");
    }
    let o = run(&["perf", "sim", "--buffers", "pinned", "-t", "0.1"]);
    assert_eq!(
        o.code, 2,
        "an unknown buffer mode is a usage error: {}",
        o.stderr
    );
}

fn fake() -> FakeSysfs {
    let fs = FakeSysfs::new().unwrap();
    fs.add_device("0000:00:04.0", NVME_CLASS, Some("nvme"), Some(3))
        .unwrap();
    fs.add_device("0000:00:05.0", NVME_CLASS, Some("vfio-pci"), Some(4))
        .unwrap();
    fs.add_device("0000:00:06.0", 0x020000, Some("e1000"), Some(4))
        .unwrap();
    fs.add_driver("vfio-pci").unwrap();
    fs.set_numa_node("0000:00:04.0", 0).unwrap();
    std::fs::write(fs.root().join("bus/pci/drivers_probe"), "").unwrap();
    fs
}

fn setup(fs: &FakeSysfs, proc_root: &Path, args: &[&str]) -> Out {
    let mut a = vec!["setup"];
    a.extend_from_slice(args);
    run_env(
        &a,
        &[
            ("NVME_TOOL_SYSFS", fs.root()),
            ("NVME_TOOL_PROC", proc_root),
        ],
        None,
    )
}

#[test]
fn setup_status_on_a_fake_sysfs() {
    let fs = fake();
    let pr = tempfile::tempdir().unwrap();
    let v = json(&setup(&fs, pr.path(), &["status", "-o", "json"]));
    let c = v["Controllers"].as_array().unwrap();
    assert_eq!(c.len(), 2, "only class 010802h: {v}");
    assert_eq!(c[0]["driver"], "nvme");
    assert_eq!(c[0]["numa_node"], 0);
    assert_eq!(c[0]["bindable"], true);
    assert_eq!(c[1]["iommu_group"], 4);
    assert_eq!(c[1]["bindable"], false, "its group holds a NIC on e1000");
    assert!(
        c[1]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("0000:00:06.0"),
        "{v}"
    );
    // `list` without a device finds both; the kernel-bound one by its driver.
    let o = run_env(
        &["list", "-o", "json"],
        &[("NVME_TOOL_SYSFS", fs.root())],
        None,
    );
    let v = json(&o);
    assert_eq!(v["Devices"][0]["Driver"], "nvme");
    assert!(
        v["Devices"][1]["Error"].is_string(),
        "a fake vfio device cannot open: {v}"
    );
}

#[test]
fn setup_bind_writes_driver_override_unbind_and_probe() {
    let fs = fake();
    let pr = tempfile::tempdir().unwrap();
    let o = setup(&fs, pr.path(), &["bind", "00:04.0", "--dry-run"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r = fs.root().display();
    assert_eq!(
        o.stdout,
        format!(
            "echo vfio-pci > {r}/bus/pci/devices/0000:00:04.0/driver_override\n\
             echo 0000:00:04.0 > {r}/bus/pci/drivers/nvme/unbind\n\
             echo 0000:00:04.0 > {r}/bus/pci/drivers_probe\n"
        )
    );
    assert!(!fs
        .root()
        .join("bus/pci/devices/0000:00:04.0/driver_override")
        .exists());
    // For real (on the fake tree): the writes land; no kernel rebinds, which is reported.
    let o = setup(&fs, pr.path(), &["bind", "0000:00:04.0"]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stderr.contains("not vfio-pci"), "{}", o.stderr);
    let rd = |p: &str| std::fs::read_to_string(fs.root().join(p)).unwrap();
    assert_eq!(
        rd("bus/pci/devices/0000:00:04.0/driver_override"),
        "vfio-pci\n"
    );
    assert_eq!(rd("bus/pci/drivers/nvme/unbind"), "0000:00:04.0\n");
    assert_eq!(rd("bus/pci/drivers_probe"), "0000:00:04.0\n");
    // Already bound: nothing written.
    let o = setup(&fs, pr.path(), &["bind", "0000:00:05.0", "--dry-run"]);
    assert_eq!(
        (o.code, o.stdout.trim()),
        (0, "0000:00:05.0: already bound to vfio-pci")
    );
    // Not NVMe, not an address.
    assert_eq!(setup(&fs, pr.path(), &["bind", "0000:00:06.0"]).code, 2);
    assert_eq!(setup(&fs, pr.path(), &["bind", "nonsense"]).code, 2);
}

#[test]
fn setup_refuses_controllers_in_use_unless_forced() {
    let fs = fake();
    fs.add_block_device("0000:00:04.0", "nvme0n1", &["nvme0n1p1"], &[])
        .unwrap();
    let pr = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(pr.path().join("self")).unwrap();
    std::fs::write(
        pr.path().join("self/mounts"),
        "/dev/nvme0n1p1 /data ext4 rw 0 0\n",
    )
    .unwrap();
    let o = setup(&fs, pr.path(), &["bind", "0000:00:04.0", "--dry-run"]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stderr.contains("/dev/nvme0n1p1 is mounted on /data"),
        "{}",
        o.stderr
    );
    assert!(o.stdout.is_empty(), "nothing written: {}", o.stdout);
    let o = setup(
        &fs,
        pr.path(),
        &["bind", "0000:00:04.0", "--dry-run", "--force"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.lines().count(), 3);
    // Unbind back to nvme while a process holds the VFIO group open.
    fs.add_driver("nvme").unwrap();
    std::fs::create_dir_all(pr.path().join("4242/fd")).unwrap();
    std::os::unix::fs::symlink("/dev/vfio/4", pr.path().join("4242/fd/7")).unwrap();
    let o = setup(&fs, pr.path(), &["unbind", "0000:00:05.0", "--dry-run"]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stderr.contains("process 4242 holds /dev/vfio/4 open"),
        "{}",
        o.stderr
    );
    std::fs::remove_file(pr.path().join("4242/fd/7")).unwrap();
    let o = setup(&fs, pr.path(), &["unbind", "0000:00:05.0", "--dry-run"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with(&format!(
        "echo nvme > {}/bus/pci/devices/0000:00:05.0/driver_override\n",
        fs.root().display()
    )));
}

#[test]
fn setup_hugepages_writes_and_checks() {
    let fs = fake();
    let pr = tempfile::tempdir().unwrap();
    assert_eq!(
        setup(&fs, pr.path(), &["hugepages", "64"]).code,
        3,
        "no hugepages dir"
    );
    let dir = fs.root().join("kernel/mm/hugepages/hugepages-2048kB");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("nr_hugepages"), "0\n").unwrap();
    let o = setup(&fs, pr.path(), &["hugepages", "64", "--dry-run"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.join("nr_hugepages")).unwrap(),
        "0\n"
    );
    let o = setup(&fs, pr.path(), &["hugepages", "64"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("64 of 64"), "{}", o.stdout);
    assert_eq!(
        setup(&fs, pr.path(), &["hugepages", "1", "--size", "3M"]).code,
        2
    );
}

#[test]
fn stdin_streams_need_a_length_and_round_trip() {
    use std::io::Write as _;
    let d = tempfile::tempdir().unwrap();
    let p = img(d.path(), "in.img");
    let dev = format!("sim:{p},create=1M");
    let send = |args: &[&str], data: &[u8]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nvme-tool"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(data).unwrap();
        c.wait_with_output().unwrap()
    };
    let o = send(&["write", &dev, "-d", "-"], &[7u8; 1024]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let o = send(
        &[
            "write",
            &format!("sim:{p}"),
            "-d",
            "-",
            "-c",
            "7",
            "-s",
            "3",
        ],
        &data,
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_nvme-tool"))
        .args(["read", &format!("sim:{p}"), "-s", "3", "-c", "7", "-r"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout == data, "raw binary on stdout");
    // A stream shorter than the range ends the write with a clear error.
    let o = send(
        &["write", &format!("sim:{p}"), "-d", "-", "-c", "15"],
        &data,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("the data ended after 4096 bytes"));
}

#[test]
fn verbosity_and_rust_log_set_the_log_level() {
    let d = tempfile::tempdir().unwrap();
    let quiet = run(&[
        "id-ctrl",
        &format!("sim:{},create=1M", img(d.path(), "a.img")),
    ]);
    assert_eq!(quiet.code, 0, "{}", quiet.stderr);
    assert!(!quiet.stderr.contains("created image"), "{}", quiet.stderr);
    let loud = run(&[
        "-v",
        "id-ctrl",
        &format!("sim:{},create=1M", img(d.path(), "b.img")),
    ]);
    assert!(
        loud.stderr
            .contains("INFO  sim_backend::image: created image"),
        "{}",
        loud.stderr
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_nvme-tool"));
    let o = c
        .args([
            "id-ctrl",
            &format!("sim:{},create=1M", img(d.path(), "c.img")),
        ])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("created image"));
}

#[test]
fn perf_prints_its_summary_on_sigint_and_progress_on_request() {
    let child = Command::new(env!("CARGO_BIN_EXE_nvme-tool"))
        .args(["perf", "sim", "-t", "60", "-q", "4", "--progress"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    // SAFETY: signals the child this test spawned (its pid is live until waited for).
    let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(r, 0);
    let t = std::time::Instant::now();
    let o = child.wait_with_output().unwrap();
    assert!(t.elapsed().as_secs() < 30, "the run stops on SIGINT");
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        out.contains("(interrupted)") && out.contains("Latency summary (read"),
        "{out}"
    );
    assert!(err.contains("interrupted (SIGINT)"), "{err}");
    assert!(err.contains(" IOPS "), "a progress line each second: {err}");
}

//! `show-regs` (the controller registers, NVMe Base 2.1 §3.1.4), `vfio-info` (what VFIO
//! reports of the device, or the simulator's equivalents) and `list` without a device (every
//! NVMe controller in sysfs).

use std::path::PathBuf;

use anyhow::Result;
use nvme_core::hw::{Bar, InterruptSource, Platform};
use nvme_core::spec::regs::{offset, Cap, Cc, Csts, Vs};
use nvme_core::Controller;
use serde_json::{json, Value};

use crate::device::{self, DeviceSpec, Opened};
use crate::exit::{self, Out};
use crate::{with_controller, Dev, Irq};

/// Options of `show-regs`.
#[derive(clap::Args, Debug, Clone)]
pub struct ShowRegsArgs {
    #[command(flatten)]
    dev: Dev,
    #[command(flatten)]
    out: Out,
    /// Decode every register into named fields.
    #[arg(short = 'H', long = "human-readable")]
    human: bool,
}

/// One decoded register: name, value, `(field, value)` pairs.
pub type Decoded = (&'static str, u64, Vec<(&'static str, String)>);

/// The registers, read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regs {
    cap: u64,
    vs: u32,
    intms: u32,
    cc: u32,
    csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    cmbloc: u32,
    cmbsz: u32,
}

impl Regs {
    /// Reads the registers through `bar` (no side effects: NVMe registers have none on read).
    pub fn read<B: Bar + ?Sized>(bar: &B) -> Self {
        Self {
            cap: bar.read64(offset::CAP),
            vs: bar.read32(offset::VS),
            intms: bar.read32(offset::INTMS),
            cc: bar.read32(offset::CC),
            csts: bar.read32(offset::CSTS),
            aqa: bar.read32(offset::AQA),
            asq: bar.read64(offset::ASQ),
            acq: bar.read64(offset::ACQ),
            cmbloc: bar.read32(offset::CMBLOC),
            cmbsz: bar.read32(offset::CMBSZ),
        }
    }

    /// `(register, value, fields)`; fields named as in NVMe Base 2.1 §3.1.4.
    pub fn decoded(&self) -> Vec<Decoded> {
        let cap = Cap(self.cap);
        let cc = Cc(self.cc);
        let csts = Csts(self.csts);
        let vs = Vs(self.vs);
        let b = |v: bool| u8::from(v).to_string();
        // CMBSZ (§3.1.4.13): SZU bits 11:8 (4 KiB × 16^SZU), SZ bits 31:12.
        let szu = (self.cmbsz >> 8) & 0xF;
        let cmb_bytes = u64::from(self.cmbsz >> 12) << (12 + 4 * szu.min(6));
        vec![
            (
                "cap",
                self.cap,
                vec![
                    (
                        "MQES (max queue entries)",
                        (u32::from(cap.mqes_z()) + 1).to_string(),
                    ),
                    ("CQR (contiguous queues required)", b(cap.cqr())),
                    ("AMS (arbitration mechanisms)", format!("{:#x}", cap.ams())),
                    ("TO (timeout)", format!("{} ms", cap.timeout_ms())),
                    (
                        "DSTRD (doorbell stride)",
                        format!("{} bytes", 4u32 << cap.dstrd()),
                    ),
                    ("NSSRS (subsystem reset)", b(cap.nssrs())),
                    ("CSS (command sets)", format!("{:#x}", cap.css())),
                    ("BPS (boot partitions)", b(cap.bps())),
                    ("MPSMIN", format!("{} bytes", 4096u64 << cap.mpsmin())),
                    ("MPSMAX", format!("{} bytes", 4096u64 << cap.mpsmax())),
                    ("PMRS", b(cap.pmrs())),
                    ("CMBS", b(cap.cmbs())),
                ],
            ),
            (
                "version",
                u64::from(self.vs),
                vec![("NVMe", vs.to_string())],
            ),
            ("intms", u64::from(self.intms), vec![]),
            (
                "cc",
                u64::from(self.cc),
                vec![
                    ("EN (enable)", b(cc.en())),
                    ("CSS (command set)", format!("{:#x}", cc.css())),
                    (
                        "MPS (memory page size)",
                        format!("{} bytes", 4096u64 << cc.mps()),
                    ),
                    ("AMS (arbitration)", format!("{:#x}", cc.ams())),
                    ("SHN (shutdown notification)", format!("{:#x}", cc.shn())),
                    ("IOSQES", format!("{} bytes", 1u32 << cc.iosqes())),
                    ("IOCQES", format!("{} bytes", 1u32 << cc.iocqes())),
                ],
            ),
            (
                "csts",
                u64::from(self.csts),
                vec![
                    ("RDY (ready)", b(csts.rdy())),
                    ("CFS (controller fatal status)", b(csts.cfs())),
                    ("SHST (shutdown status)", format!("{:#x}", csts.shst())),
                    ("NSSRO (subsystem reset occurred)", b(csts.nssro())),
                    ("PP (processing paused)", b(csts.pp())),
                ],
            ),
            (
                "aqa",
                u64::from(self.aqa),
                vec![
                    (
                        "ASQS (admin SQ entries)",
                        ((self.aqa & 0xFFF) + 1).to_string(),
                    ),
                    (
                        "ACQS (admin CQ entries)",
                        (((self.aqa >> 16) & 0xFFF) + 1).to_string(),
                    ),
                ],
            ),
            (
                "asq",
                self.asq,
                vec![("ASQB (admin SQ base)", format!("{:#x}", self.asq & !0xFFF))],
            ),
            (
                "acq",
                self.acq,
                vec![("ACQB (admin CQ base)", format!("{:#x}", self.acq & !0xFFF))],
            ),
            (
                "cmbloc",
                u64::from(self.cmbloc),
                vec![
                    ("BIR (BAR indicator)", (self.cmbloc & 7).to_string()),
                    (
                        "OFST (offset, CMBSZ units)",
                        (self.cmbloc >> 12).to_string(),
                    ),
                ],
            ),
            (
                "cmbsz",
                u64::from(self.cmbsz),
                vec![
                    ("SQS/CQS/LISTS/RDS/WDS", format!("{:#x}", self.cmbsz & 0x1F)),
                    (
                        "SZ (size)",
                        if self.cmbsz == 0 {
                            "no CMB".into()
                        } else {
                            format!("{cmb_bytes} bytes")
                        },
                    ),
                ],
            ),
        ]
    }
}

/// Runs `show-regs`.
///
/// # Errors
/// Device and bring-up failures.
pub fn show_regs(a: ShowRegsArgs) -> Result<()> {
    with_controller!(&a.dev.device, a.dev.irq, |c| {
        let r = Regs::read(c.platform().bar());
        print_regs(&r, a.human, a.out);
        Ok(())
    })
}

fn print_regs(r: &Regs, human: bool, out: Out) {
    let d = r.decoded();
    if out.json() {
        let mut m = serde_json::Map::new();
        for (name, v, fields) in &d {
            m.insert((*name).into(), (*v).into());
            if human && !fields.is_empty() {
                let f: serde_json::Map<String, Value> = fields
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), Value::from(v.clone())))
                    .collect();
                m.insert(format!("{name}_fields"), Value::Object(f));
            }
        }
        exit::print_json(&Value::Object(m));
        return;
    }
    for (name, v, fields) in d {
        println!("{name:<8}: {v:x}");
        if human {
            for (k, v) in fields {
                println!("          {k:<36} {v}");
            }
        }
    }
}

/// Options of `vfio-info`.
#[derive(clap::Args, Debug, Clone)]
pub struct VfioInfoArgs {
    #[command(flatten)]
    dev: Dev,
    #[command(flatten)]
    out: Out,
}

const REGION_NAMES: [&str; 9] = [
    "BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA",
];
const IRQ_NAMES: [&str; 5] = ["INTx", "MSI", "MSI-X", "ERR", "REQ"];

/// Runs `vfio-info`: regions, interrupts, the first 256 bytes of PCI config space, the
/// registers; on the simulator the values it simulates (BAR0, MSI-X vectors, registers; it
/// has no config space).
///
/// # Errors
/// Device failures.
pub fn vfio_info(a: VfioInfoArgs) -> Result<()> {
    let v = match device::open(&a.dev.device, a.dev.irq)? {
        Opened::Vfio(p) => {
            let r = p.report();
            let regions: Vec<Value> = p.regions().iter().filter(|r| r.size > 0).map(|g| json!({
                "index": g.index, "name": REGION_NAMES.get(g.index as usize).unwrap_or(&"?"),
                "size": g.size, "offset": g.offset, "flags": g.flags,
            })).collect();
            let irqs: Vec<Value> = p
                .irq_infos()
                .iter()
                .map(|i| {
                    json!({
                        "index": i.index, "name": IRQ_NAMES.get(i.index as usize).unwrap_or(&"?"),
                        "count": i.count, "flags": i.flags,
                    })
                })
                .collect();
            let mut config = Vec::with_capacity(256);
            for off in (0..256u64).step_by(2) {
                match p.config_read16(off) {
                    Ok(w) => config.extend_from_slice(&w.to_le_bytes()),
                    Err(e) => {
                        log::warn!("config space read at {off:#x}: {e}");
                        break;
                    }
                }
            }
            json!({
                "device": p.name(), "simulated": false,
                "vendor": r.vendor, "device_id": r.device, "class": r.class, "driver": r.driver,
                "iommu_group": p.iommu_group(),
                "group_members": r.group_members.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
                "flags": p.device_flags(), "regions": regions, "irqs": irqs,
                "msix_vectors": p.irq().max_vectors(),
                "config": config,
                "regs": regs_json(&Regs::read(p.bar())),
            })
        }
        Opened::Sim(_sim, p) => json!({
            "device": a.dev.device.to_string(), "simulated": true,
            "class": vfio_backend::sysfs::NVME_CLASS,
            "regions": [json!({"index": 0, "name": "BAR0", "size": sim_backend::BAR_SIZE, "offset": 0, "flags": 7})],
            "irqs": [json!({"index": 2, "name": "MSI-X", "count": p.irq().max_vectors(), "flags": 1})],
            "msix_vectors": p.irq().max_vectors(),
            "regs": regs_json(&Regs::read(p.bar())),
        }),
    };
    if a.out.json() {
        exit::print_json(&v);
        return Ok(());
    }
    let sim = v["simulated"] == json!(true);
    println!(
        "device      {}{}",
        v["device"].as_str().unwrap_or("?"),
        if sim { " (simulated values)" } else { "" }
    );
    if !sim {
        println!(
            "id          {:04x}:{:04x} class {:#08x} driver {}",
            v["vendor"].as_u64().unwrap_or(0),
            v["device_id"].as_u64().unwrap_or(0),
            v["class"].as_u64().unwrap_or(0),
            v["driver"].as_str().unwrap_or("-")
        );
        println!("iommu group {}", v["iommu_group"]);
        for m in v["group_members"].as_array().into_iter().flatten() {
            println!("  member    {}", m.as_str().unwrap_or("?"));
        }
        println!("flags       {:#x}", v["flags"].as_u64().unwrap_or(0));
    }
    for r in v["regions"].as_array().into_iter().flatten() {
        println!(
            "region {} {:<6} size {:#x} offset {:#x} flags {:#x}",
            r["index"],
            r["name"].as_str().unwrap_or("?"),
            r["size"].as_u64().unwrap_or(0),
            r["offset"].as_u64().unwrap_or(0),
            r["flags"].as_u64().unwrap_or(0)
        );
    }
    for i in v["irqs"].as_array().into_iter().flatten() {
        println!(
            "irq {} {:<5} count {} flags {:#x}",
            i["index"],
            i["name"].as_str().unwrap_or("?"),
            i["count"],
            i["flags"].as_u64().unwrap_or(0)
        );
    }
    if let Some(cfg) = v["config"].as_array() {
        let bytes: Vec<u8> = cfg.iter().map(|b| b.as_u64().unwrap_or(0) as u8).collect();
        println!("PCI config space ({} bytes):", bytes.len());
        crate::fmt::hexdump(&bytes);
    }
    let regs = &v["regs"];
    for k in [
        "cap", "version", "cc", "csts", "aqa", "asq", "acq", "cmbloc", "cmbsz",
    ] {
        println!("{k:<8}: {:x}", regs[k].as_u64().unwrap_or(0));
    }
    Ok(())
}

fn regs_json(r: &Regs) -> Value {
    Value::Object(
        r.decoded()
            .into_iter()
            .map(|(n, v, _)| (n.to_string(), Value::from(v)))
            .collect(),
    )
}

/// The sysfs root: `$NVME_TOOL_SYSFS` (for tests on a fake tree), else `/sys`.
pub fn sysfs_root() -> PathBuf {
    std::env::var_os("NVME_TOOL_SYSFS").map_or_else(|| PathBuf::from("/sys"), PathBuf::from)
}

/// The VFIO device directory: `$NVME_TOOL_DEV_VFIO`; else, with a fake sysfs
/// (`$NVME_TOOL_SYSFS`), `dev-vfio` inside it, so a fake tree never reaches the machine's
/// VFIO nodes; else `/dev/vfio`.
pub fn dev_vfio() -> PathBuf {
    if let Some(p) = std::env::var_os("NVME_TOOL_DEV_VFIO") {
        return PathBuf::from(p);
    }
    match std::env::var_os("NVME_TOOL_SYSFS") {
        Some(root) => PathBuf::from(root).join("dev-vfio"),
        None => PathBuf::from("/dev/vfio"),
    }
}

fn identify_entries<P: Platform>(c: &Controller<P>, dev: &str) -> Vec<Value> {
    crate::fmt::list_entries(c, dev, &|_| None)
}

/// `list` without a device: every controller of class 010802h in sysfs. Those bound to
/// vfio-pci are opened and identified; a failure to open one is shown on its line, not fatal.
///
/// # Errors
/// None in practice (kept fallible for symmetry).
pub fn list_all(irq: Irq, out: Out) -> Result<()> {
    let root = sysfs_root();
    let mut devices = Vec::new();
    for f in vfio_backend::sysfs::nvme_devices(&root) {
        let vfio = f.driver.as_deref().is_some_and(|d| d.starts_with("vfio"));
        let mut entry = json!({
            "Address": f.addr, "Driver": f.driver,
        });
        if vfio {
            let spec = DeviceSpec::Pci(f.addr.clone());
            let mut found = Vec::new();
            let r: Result<()> = (|| {
                with_controller!(&spec, irq, |c| {
                    found = identify_entries(c, &spec.to_string());
                    Ok(())
                })
            })();
            match r {
                Ok(()) => entry["Namespaces"] = Value::from(found),
                Err(e) => entry["Error"] = format!("{e:#}").into(),
            }
        }
        devices.push(entry);
    }
    if out.json() {
        exit::print_json(&json!({ "Devices": devices }));
        return Ok(());
    }
    if devices.is_empty() {
        println!(
            "no NVMe controller (PCI class 010802h) under {}",
            root.display()
        );
        return Ok(());
    }
    println!(
        "{:<14} {:<10} {:<40} {:<20} {:<8} Namespaces",
        "Address", "Driver", "Model", "SN", "FW Rev"
    );
    for d in &devices {
        let drv = d["Driver"].as_str().unwrap_or("(none)");
        let addr = d["Address"].as_str().unwrap_or("?");
        match (d["Namespaces"].as_array(), d["Error"].as_str()) {
            (Some(ns), _) => {
                let first = ns.first();
                let get = |k: &str| first.and_then(|v| v[k].as_str()).unwrap_or("-").to_string();
                let list: Vec<String> = ns.iter().map(|n| format!("{} ({} B × {})", n["NameSpace"], n["SectorSize"], n["MaximumLBA"])).collect();
                println!("{addr:<14} {drv:<10} {:<40} {:<20} {:<8} {}", get("ModelNumber"), get("SerialNumber"), get("Firmware"), list.join(", "));
            }
            (None, Some(e)) => println!("{addr:<14} {drv:<10} (cannot open: {e})"),
            (None, None) => println!("{addr:<14} {drv:<10} (kernel driver; bind it to vfio-pci to identify it here: nvme-tool setup bind {addr})"),
        }
    }
    Ok(())
}

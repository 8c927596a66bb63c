//! Opening a device (simulator or VFIO), a controller session around a command, chunked
//! block I/O, and the demo.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context as _, Result};
use nvme_core::hw::Platform;
use nvme_core::{Controller, ControllerConfig, Namespace};
use sim_backend::{NamespaceConfig, SimConfig, SimPlatform, Simulator};
use vfio_backend::{IrqMode, VfioOptions, VfioPlatform};

use crate::Irq;

/// Where the controller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The simulator, in memory, or with namespace 1 on a raw image.
    Sim(Option<PathBuf>),
    /// A PCI function bound to vfio-pci.
    Pci(String),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "sim" {
            return Ok(DeviceSpec::Sim(None));
        }
        if let Some(p) = s.strip_prefix("sim:") {
            if p.is_empty() {
                return Err("sim: needs an image path, e.g. sim:disk.img".into());
            }
            return Ok(DeviceSpec::Sim(Some(PathBuf::from(p))));
        }
        let addr = s.strip_prefix("pci:").unwrap_or(s);
        if s.starts_with("/dev/nvme") {
            return Err(format!("{s} is a kernel NVMe device; this tool drives the controller itself: unbind it from the nvme driver, bind it to vfio-pci and pass its PCI address (pci:0000:03:00.0)"));
        }
        vfio_backend::PciAddress::parse(addr)
            .map_err(|e| format!("{e}\n(devices: sim, sim:IMAGE, pci:DDDD:BB:DD.F)"))?;
        Ok(DeviceSpec::Pci(addr.to_string()))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Sim(None) => f.write_str("sim"),
            DeviceSpec::Sim(Some(p)) => write!(f, "sim:{}", p.display()),
            DeviceSpec::Pci(a) => write!(f, "pci:{a}"),
        }
    }
}

/// An opened device.
pub enum Opened {
    /// The simulator (kept alive for the session) and its platform.
    Sim(Simulator, Arc<SimPlatform>),
    /// A VFIO platform.
    Vfio(Arc<VfioPlatform>),
}

/// The simulator configuration for `sim` / `sim:IMAGE`.
pub fn sim_config(image: Option<&Path>, threaded: bool) -> Result<SimConfig> {
    let mut cfg = if threaded {
        SimConfig::threaded()
    } else {
        SimConfig::default()
    };
    if let Some(p) = image {
        let size = match std::fs::metadata(p) {
            Ok(m) if m.len() >= 1 << 20 => m.len() / 512 * 512,
            Ok(m) => bail!(
                "{} is {} bytes; a namespace image needs at least 1 MiB",
                p.display(),
                m.len()
            ),
            Err(_) => 64 << 20,
        };
        cfg.namespaces[0] = NamespaceConfig::file(512, size, p);
    }
    Ok(cfg)
}

/// Opens the device.
///
/// # Errors
/// The simulator or the VFIO device could not be opened (the message says why and what to do).
pub fn open(dev: &DeviceSpec, irq: Irq) -> Result<Opened> {
    match dev {
        DeviceSpec::Sim(image) => {
            let sim = Simulator::new(sim_config(image.as_deref(), false)?)
                .context("starting the simulator")?;
            let p = sim.platform();
            Ok(Opened::Sim(sim, p))
        }
        DeviceSpec::Pci(addr) => {
            let opts = VfioOptions {
                interrupts: if irq == Irq::Msix {
                    IrqMode::Msix
                } else {
                    IrqMode::Polled
                },
                ..VfioOptions::default()
            };
            Ok(Opened::Vfio(VfioPlatform::open(addr, &opts)?))
        }
    }
}

/// The driver configuration the tool uses.
pub fn config(irq: Irq) -> ControllerConfig {
    ControllerConfig {
        interrupts: irq == Irq::Msix,
        io_queue_pairs: 4,
        ..ControllerConfig::default()
    }
}

/// Brings the controller up, runs `f`, shuts the controller down in order.
///
/// # Errors
/// Bring-up, `f`, or shutdown failed.
pub fn session<P: Platform>(
    p: Arc<P>,
    irq: Irq,
    f: impl FnOnce(&mut Controller<P>) -> Result<()>,
) -> Result<()> {
    let name = p.name().to_string();
    let mut c = Controller::new(p, config(irq))
        .with_context(|| format!("bringing up the controller at {name}"))?;
    let r = f(&mut c);
    let s = c.shutdown().context("shutting down the controller");
    r.and(s)
}

/// Runs a block with `$c` bound to a brought-up controller of whichever platform the device
/// is on, and shuts it down afterwards.
#[macro_export]
macro_rules! with_controller {
    ($dev:expr, $irq:expr, |$c:ident| $body:expr) => {{
        match $crate::device::open($dev, $irq)? {
            $crate::device::Opened::Sim(_sim, p) => $crate::device::session(p, $irq, |$c| $body),
            $crate::device::Opened::Vfio(p) => $crate::device::session(p, $irq, |$c| $body),
        }
    }};
}

/// Reads `len` bytes at `slba`, in commands of at most the controller's maximum transfer.
///
/// # Errors
/// Any command failure.
pub fn read_blocks<P: Platform>(
    c: &mut Controller<P>,
    ns: &Namespace,
    slba: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let bs = ns.lba_size() as usize;
    let chunk = (c.max_transfer() / bs).max(1) * bs;
    let mut qp = c.create_io_queue_pair(16)?;
    let mut out = Vec::with_capacity(len);
    let mut buf = c.alloc_buffer(chunk.min(len))?;
    let r = (|| -> Result<()> {
        let mut done = 0;
        while done < len {
            let n = chunk.min(len - done);
            if buf.len() != n {
                buf = c.alloc_buffer(n)?;
            }
            buf = qp.read(ns, slba + (done / bs) as u64, buf).map_err(|e| {
                anyhow::anyhow!("read at LBA {}: {}", slba + (done / bs) as u64, e.error)
            })?;
            out.extend_from_slice(&buf.to_vec());
            done += n;
        }
        Ok(())
    })();
    c.delete_io_queue_pair(qp)?;
    r.map(|()| out)
}

/// Writes `data` at `slba` in commands of at most the maximum transfer.
///
/// # Errors
/// Any command failure.
pub fn write_blocks<P: Platform>(
    c: &mut Controller<P>,
    ns: &Namespace,
    slba: u64,
    data: &[u8],
) -> Result<()> {
    let bs = ns.lba_size() as usize;
    ensure!(
        data.len() % bs == 0,
        "{} bytes is not a whole number of {bs}-byte blocks",
        data.len()
    );
    let chunk = (c.max_transfer() / bs).max(1) * bs;
    let mut qp = c.create_io_queue_pair(16)?;
    let r = (|| -> Result<()> {
        for (i, part) in data.chunks(chunk).enumerate() {
            let mut b = c.alloc_buffer(part.len())?;
            b.write(0, part)?;
            let lba = slba + (i * chunk / bs) as u64;
            qp.write(ns, lba, b)
                .map_err(|e| anyhow::anyhow!("write at LBA {lba}: {}", e.error))?;
        }
        Ok(())
    })();
    c.delete_io_queue_pair(qp)?;
    r
}

/// Reads the data file of a write or compare, checking its size.
///
/// # Errors
/// Missing file, wrong size.
pub fn load_data(path: Option<&Path>, len: usize) -> Result<Vec<u8>> {
    let path = path.context("--data FILE is required")?;
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if data.len() < len {
        bail!(
            "{} holds {} bytes; the command transfers {len}",
            path.display(),
            data.len()
        );
    }
    Ok(data[..len].to_vec())
}

fn size(bytes: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", U[i])
    }
}

/// The README's "run" command: the driver against the built-in simulator.
///
/// # Errors
/// Any failure, with its reason.
pub fn demo(image: Option<PathBuf>, threaded: bool) -> Result<()> {
    let image = image.unwrap_or_else(|| std::env::temp_dir().join("nvme-tool-demo.img"));
    let cfg = sim_config(Some(&image), threaded)?;
    let sim = Simulator::new(cfg).context("starting the simulator")?;
    println!(
        "nvme-tool demo: simulated NVMe controller ({} mode), namespace 1 on {} (raw image)\n",
        if threaded { "device thread" } else { "inline" },
        image.display()
    );
    let t0 = Instant::now();
    let mut c = Controller::new(sim.platform(), config(Irq::Msix))
        .context("bringing up the simulated controller")?;
    let bring_up = t0.elapsed();
    let id = c.identify().clone();
    let cap = c.cap();
    println!("Controller (up in {bring_up:.1?})");
    println!("  Model        {}", id.mn);
    println!("  Serial       {}", id.sn);
    println!("  Firmware     {}", id.fr);
    println!(
        "  Version      {} (VS), PCI vendor {:#06x}",
        c.version(),
        id.vid
    );
    let mdts = id
        .max_transfer_bytes(cap.mpsmin())
        .map(size)
        .unwrap_or_else(|| "no limit".into());
    println!("  MDTS         {mdts} ({})", id.mdts);
    println!(
        "  Queues       {} I/O pairs allocated, up to {} entries each, doorbell stride {} B",
        c.queues_allocated().nsq_z as u32 + 1,
        cap.mqes_z() as u32 + 1,
        4u32 << cap.dstrd()
    );
    println!(
        "  Interrupts   {}",
        if c.vectors() > 0 {
            format!("{} MSI-X vectors", c.vectors())
        } else {
            "polled".into()
        }
    );
    println!("  NVM commands {}", crate::fmt::oncs_names(id.oncs));
    println!(
        "  Write cache  {}",
        if id.vwc & 1 == 1 {
            "volatile write cache present"
        } else {
            "none"
        }
    );
    println!("\nNamespaces");
    for ns in c.namespaces() {
        let f = ns.identify().format_index();
        println!(
            "  nsid {}: {} ({} blocks × {} B, LBA format {f}, {} B metadata)",
            ns.nsid(),
            size(ns.size_bytes()),
            ns.blocks(),
            ns.lba_size(),
            ns.metadata_size()
        );
    }
    println!("\nI/O");
    let namespaces: Vec<Namespace> = c.namespaces().to_vec();
    let mut qp = c.create_io_queue_pair(64)?;
    for ns in &namespaces {
        let bs = ns.lba_size() as usize;
        let len = (1 << 20)
            .min(c.max_transfer() * 8)
            .min(ns.size_bytes() as usize / 2)
            / bs
            * bs;
        let chunk = (c.max_transfer() / bs) * bs;
        let slba = ns.blocks() / 2;
        let data: Vec<u8> = (0..len)
            .map(|i| ((i as u64 * 2654435761) >> 7) as u8 ^ ns.nsid() as u8)
            .collect();
        let t = Instant::now();
        for (i, part) in data.chunks(chunk).enumerate() {
            let mut b = c.alloc_buffer(part.len())?;
            b.write(0, part)?;
            qp.write(ns, slba + (i * chunk / bs) as u64, b)
                .map_err(|e| e.error)?;
        }
        let tw = t.elapsed();
        let t = Instant::now();
        let mut back = Vec::with_capacity(len);
        for (i, part) in data.chunks(chunk).enumerate() {
            let b = qp
                .read(
                    ns,
                    slba + (i * chunk / bs) as u64,
                    c.alloc_buffer(part.len())?,
                )
                .map_err(|e| e.error)?;
            back.extend_from_slice(&b.to_vec());
        }
        let tr = t.elapsed();
        ensure!(
            back == data,
            "namespace {}: data read back differs from what was written",
            ns.nsid()
        );
        qp.flush(ns.nsid())?;
        println!("  nsid {}: wrote {} at LBA {slba} in {} commands ({tw:.1?}), read back and verified ({tr:.1?}), flushed", ns.nsid(), size(len as u64), data.len().div_ceil(chunk), tw = tw, tr = tr);
        if ns.nsid() == 1 {
            // The image is a raw file: LBA n at byte n × LBA size, as qemu-img would read it.
            let mut f = std::fs::File::open(&image)
                .with_context(|| format!("opening {}", image.display()))?;
            use std::io::{Read as _, Seek as _, SeekFrom};
            f.seek(SeekFrom::Start(slba * bs as u64))?;
            let mut raw = vec![0u8; len];
            f.read_exact(&mut raw)?;
            ensure!(
                raw == data,
                "the image file does not hold the written data at byte {}",
                slba * bs as u64
            );
            println!(
                "  image check: {} holds the data at byte offset {} (LBA {slba} × {bs})",
                image.display(),
                slba * bs as u64
            );
        }
    }
    c.delete_io_queue_pair(qp)?;
    let smart = c.smart_log()?;
    println!(
        "\nSMART: {} host writes, {} host reads, {} data units written, temperature {} K",
        smart.host_write_commands,
        smart.host_read_commands,
        smart.data_units_written,
        smart.composite_temperature
    );
    let t = Instant::now();
    c.shutdown().context("orderly shutdown")?;
    println!(
        "Shutdown: complete in {:.1?} (CC.SHN normal, CSTS.SHST = 10b, controller disabled)",
        t.elapsed()
    );
    let v = sim.violations();
    ensure!(
        v.is_empty(),
        "the simulator recorded protocol violations: {v:?}"
    );
    println!("Protocol check: the simulator (strict mode) recorded no host protocol violation");
    Ok(())
}

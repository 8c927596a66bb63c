//! Opening a device (simulator or VFIO), a controller session around a command, chunked
//! block I/O, and the demo.

use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use nvme_core::hw::Platform;
use nvme_core::{Controller, ControllerConfig, Namespace};
use sim_backend::{ImageFile, SimConfig, SimPlatform, Simulator};
use vfio_backend::{IrqMode, VfioOptions, VfioPlatform};

use crate::exit::DeviceOpen;
use crate::Irq;

/// A simulator image: `sim:PATH[,create=SIZE][,ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The raw image file.
    pub path: PathBuf,
    /// Create it with this many bytes if it does not exist (`,create=SIZE`).
    pub create: Option<u64>,
    /// Open it read-only even if writable (`,ro`).
    pub read_only: bool,
}

/// Where the controller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The simulator, in memory, or with namespace 1 on a raw image.
    Sim(Option<ImageSpec>),
    /// A PCI function bound to vfio-pci.
    Pci(String),
}

/// A size: bytes, or with a binary suffix K, M, G, T (`64M` = 64 MiB).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let m = match t[i..]
                .to_ascii_uppercase()
                .trim_end_matches("IB")
                .trim_end_matches('B')
            {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => {
                    return Err(format!(
                        "{s:?}: sizes are N, NK, NM, NG or NT (binary units)"
                    ))
                }
            };
            (&t[..i], m)
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("{s:?} is not a size"))
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "sim" {
            return Ok(DeviceSpec::Sim(None));
        }
        if let Some(p) = s.strip_prefix("sim:") {
            let mut parts = p.split(',');
            let path = parts.next().unwrap_or_default();
            if path.is_empty() {
                return Err(
                    "sim: needs an image path, e.g. sim:disk.img or sim:disk.img,create=64M".into(),
                );
            }
            let mut spec = ImageSpec {
                path: PathBuf::from(path),
                create: None,
                read_only: false,
            };
            for opt in parts {
                match opt.split_once('=') {
                    Some(("create", v)) => spec.create = Some(parse_size(v)?),
                    None if opt == "ro" => spec.read_only = true,
                    _ => return Err(format!("{opt:?}: image options are create=SIZE and ro (sim:IMAGE[,create=SIZE][,ro])")),
                }
            }
            return Ok(DeviceSpec::Sim(Some(spec)));
        }
        let addr = s.strip_prefix("pci:").unwrap_or(s);
        if s.starts_with("/dev/nvme") {
            return Err(format!("{s} is a kernel NVMe device; this tool drives the controller itself: unbind it from the nvme driver, bind it to vfio-pci (nvme-tool setup bind ADDR) and pass its PCI address (pci:0000:03:00.0)"));
        }
        vfio_backend::PciAddress::parse(addr).map_err(|e| {
            format!("{e}\n(devices: sim, sim:IMAGE[,create=SIZE][,ro], pci:DDDD:BB:DD.F)")
        })?;
        Ok(DeviceSpec::Pci(addr.to_string()))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Sim(None) => f.write_str("sim"),
            DeviceSpec::Sim(Some(i)) => write!(f, "sim:{}", i.path.display()),
            DeviceSpec::Pci(a) => write!(f, "pci:{a}"),
        }
    }
}

impl DeviceSpec {
    /// Whether namespace `nsid` lives in memory and is lost when the tool exits: on `sim`
    /// every namespace, on `sim:IMAGE` all but namespace 1; unknown (`None`) on a PCI device.
    pub fn volatile(&self, nsid: u32) -> Option<bool> {
        match self {
            DeviceSpec::Sim(None) => Some(true),
            DeviceSpec::Sim(Some(_)) => Some(nsid != 1),
            DeviceSpec::Pci(_) => None,
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

/// The simulator configuration for `sim` / `sim:IMAGE`: namespace 1 on the image (opened,
/// locked, created only if asked), namespace 2 in memory.
///
/// # Errors
/// The image could not be opened ([`sim_backend::ImageError`]).
pub fn sim_config(image: Option<&ImageSpec>, threaded: bool) -> Result<SimConfig> {
    let mut cfg = if threaded {
        SimConfig::threaded()
    } else {
        SimConfig::default()
    };
    if let Some(spec) = image {
        let img = ImageFile::open(&spec.path, spec.create, spec.read_only)
            .context(DeviceOpen("opening the simulator's image".into()))?;
        if img.read_only() {
            log::warn!(
                "{}: read-only: namespace 1 is write protected",
                spec.path.display()
            );
        }
        cfg.namespaces[0] = img
            .namespace()
            .context(DeviceOpen("opening the simulator's image".into()))?;
    }
    Ok(cfg)
}

/// The number of blocks `--start-block START [--block-count COUNT]` selects on `ns` (COUNT,
/// or to the end), checked to be at least one and to fit.
///
/// # Errors
/// A start past the end, or a count of 0 or that runs past the end.
pub fn block_range(ns: &Namespace, start: u64, count: Option<u64>) -> Result<u64> {
    ensure!(
        start < ns.blocks(),
        "--start-block {start} is past the end of namespace {} ({} blocks)",
        ns.nsid(),
        ns.blocks()
    );
    let room = ns.blocks() - start;
    let n = count.unwrap_or(room);
    ensure!(
        n >= 1 && n <= room,
        "--start-block {start} --block-count {n} does not fit namespace {} ({} blocks)",
        ns.nsid(),
        ns.blocks()
    );
    Ok(n)
}

/// Opens the device.
///
/// # Errors
/// The simulator or the VFIO device could not be opened (the message says why and what to do).
pub fn open(dev: &DeviceSpec, irq: Irq) -> Result<Opened> {
    match dev {
        DeviceSpec::Sim(image) => {
            let sim = Simulator::new(sim_config(image.as_ref(), false)?)
                .context(DeviceOpen("starting the simulator".into()))?;
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
                sysfs_root: crate::regs::sysfs_root(),
                dev_vfio: crate::regs::dev_vfio(),
                ..VfioOptions::default()
            };
            Ok(Opened::Vfio(VfioPlatform::open(addr, &opts).context(
                DeviceOpen(format!("opening {addr} through VFIO")),
            )?))
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
        .context(DeviceOpen(format!("bringing up the controller at {name}")))?;
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

/// What [`transfer`] does with each chunk of blocks.
pub enum Op<'a> {
    /// Read the blocks and write them to the sink.
    Read(&'a mut dyn Write),
    /// Write the blocks with bytes from the source.
    Write(&'a mut dyn Read),
    /// Compare the blocks with bytes from the source (Compare, NVM Command Set 1.1 §3.3.1).
    Compare(&'a mut dyn Read),
    /// Verify the blocks (NVM Command Set 1.1 §3.3.5): the controller reads them and checks their
    /// integrity; nothing is transferred.
    Verify,
}

impl Op<'_> {
    fn name(&self) -> &'static str {
        match self {
            Op::Read(_) => "read",
            Op::Write(_) => "write",
            Op::Compare(_) => "compare",
            Op::Verify => "verify",
        }
    }
}

/// The most bytes [`transfer`] holds in memory at once.
pub const STREAM_BUFFER: usize = 8 << 20;

/// NLB is a 0's based 16-bit field (NVM Command Set 1.1 §3.3.4 Read, §3.3.6 Write, CDW12 bits 15:0): at most 65,536
/// blocks per command.
pub const MAX_BLOCKS_PER_COMMAND: u64 = 1 << 16;

/// Blocks per command for `ns` on a controller whose maximum transfer is `max_transfer` bytes:
/// the smallest of MDTS (as the core reports it), NLB's 65,536 blocks and the
/// [`STREAM_BUFFER`], and at least one block.
pub fn blocks_per_command(max_transfer: usize, lba_size: u32) -> u64 {
    let bs = lba_size.max(1) as usize;
    let by_bytes = (max_transfer.min(STREAM_BUFFER) / bs).max(1) as u64;
    by_bytes.min(MAX_BLOCKS_PER_COMMAND)
}

/// A progress line on stderr, drawn only when stderr is a terminal.
pub struct Progress {
    on: bool,
    what: &'static str,
    total: u64,
    t0: Instant,
    last: Instant,
}

impl Progress {
    /// A progress line for `total` bytes, shown if stderr is a terminal (or `force`).
    pub fn new(what: &'static str, total: u64, force: bool) -> Self {
        use std::io::IsTerminal as _;
        let now = Instant::now();
        Self {
            on: force || std::io::stderr().is_terminal(),
            what,
            total,
            t0: now,
            last: now,
        }
    }
    /// No progress line at all.
    pub fn off() -> Self {
        let mut p = Self::new("", 0, false);
        p.on = false;
        p
    }

    fn update(&mut self, done: u64) {
        if !self.on || (self.last.elapsed() < Duration::from_millis(200) && done < self.total) {
            return;
        }
        self.last = Instant::now();
        let secs = self.t0.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "\r{}: {:>5.1}% {} of {} ({:.1} MiB/s)   ",
            self.what,
            done as f64 * 100.0 / self.total.max(1) as f64,
            size(done),
            size(self.total),
            done as f64 / secs / (1 << 20) as f64
        );
        if done >= self.total {
            eprintln!();
        }
    }
}

/// What [`transfer`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// Blocks done.
    pub blocks: u64,
    /// Commands sent.
    pub commands: u64,
}

/// The one loop that splits a block range into commands: `blocks` blocks from `slba` of `ns`,
/// each command at most [`blocks_per_command`] blocks (MDTS, NLB's 16 bits, the 8 MiB
/// buffer), one DMA buffer reused for every command, data streamed from or to `op`'s
/// source or sink (never more than [`STREAM_BUFFER`] bytes in memory).
///
/// A Compare Failure ends the run with a [`crate::exit::Miscompare`] naming the first block
/// range that differs. A source that ends early ends the run before the command that would
/// need the missing bytes (earlier commands are done).
///
/// # Errors
/// Range errors, command failures (with the LBA of the failed command), source or sink I/O.
pub fn transfer<P: Platform>(
    c: &mut Controller<P>,
    ns: &Namespace,
    slba: u64,
    blocks: u64,
    mut op: Op<'_>,
    progress: &mut Progress,
) -> Result<Transferred> {
    let end = slba.checked_add(blocks).filter(|&e| e <= ns.blocks());
    let Some(end) = end else {
        crate::usage!(
            "LBA range {slba}..{} is outside namespace {}, which has {} blocks",
            slba.saturating_add(blocks),
            ns.nsid(),
            ns.blocks()
        );
    };
    let bs = u64::from(ns.lba_size());
    let per = blocks_per_command(c.max_transfer(), ns.lba_size());
    let mut qp = c.create_io_queue_pair(16)?;
    let what = op.name();
    let mut buf = match op {
        Op::Verify => None,
        _ => Some(c.alloc_buffer((per.min(blocks.max(1)) * bs) as usize)?),
    };
    let mut staging = vec![0u8; buf.as_ref().map_or(0, |b| b.len())];
    let mut done = Transferred::default();
    let r = (|| -> Result<()> {
        let mut lba = slba;
        while lba < end {
            let n = per.min(end - lba);
            let bytes = (n * bs) as usize;
            if let Some(b) = &buf {
                if b.len() != bytes {
                    buf = Some(c.alloc_buffer(bytes)?);
                }
            }
            let fail = |e: nvme_core::Error| {
                anyhow::Error::new(e).context(format!(
                    "{what} of LBAs {lba}..{} (namespace {})",
                    lba + n,
                    ns.nsid()
                ))
            };
            match &mut op {
                Op::Read(sink) => {
                    let b = buf.take().context("the stream buffer")?;
                    let b = qp.read(ns, lba, b).map_err(|e| fail(e.error))?;
                    b.read(0, &mut staging[..bytes])?;
                    buf = Some(b);
                    sink.write_all(&staging[..bytes])
                        .with_context(|| format!("writing the data of LBA {lba}"))?;
                }
                Op::Write(src) | Op::Compare(src) => {
                    read_full(*src, &mut staging[..bytes], (lba - slba) * bs, blocks * bs)?;
                    let mut b = buf.take().context("the stream buffer")?;
                    b.write(0, &staging[..bytes])?;
                    if matches!(op, Op::Write(_)) {
                        buf = Some(qp.write(ns, lba, b).map_err(|e| fail(e.error))?);
                    } else {
                        let (same, b) = qp.compare(ns, lba, b).map_err(|e| fail(e.error))?;
                        buf = Some(b);
                        if !same {
                            return Err(anyhow::Error::new(crate::exit::Miscompare(format!(
                                "compare: LBAs {lba}..{} of namespace {} differ from the data (Compare Failure, SCT 2h SC 85h)",
                                lba + n,
                                ns.nsid()
                            ))));
                        }
                    }
                }
                Op::Verify => qp.verify(ns, lba, n as u32).map_err(fail)?,
            }
            lba += n;
            done.blocks += n;
            done.commands += 1;
            progress.update(done.blocks * bs);
        }
        Ok(())
    })();
    c.delete_io_queue_pair(qp)?;
    r.map(|()| done)
}

/// Fills `buf` from `src`; a source that ends first is an error naming how much it held.
fn read_full(src: &mut dyn Read, buf: &mut [u8], at: u64, total: u64) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => bail!(
                "the data ended after {} bytes; the command range needs {total}",
                at + got as u64
            ),
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading the data"),
        }
    }
    Ok(())
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
    // The demo creates its image (64 MiB) when it is missing; any other command needs
    // `,create=SIZE` for that.
    let spec = ImageSpec {
        create: (!image.exists()).then_some(64 << 20),
        path: image.clone(),
        read_only: false,
    };
    let dev = DeviceSpec::Sim(Some(spec.clone()));
    let cfg = sim_config(Some(&spec), threaded)?;
    let sim = Simulator::new(cfg).context(DeviceOpen("starting the simulator".into()))?;
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
            "  nsid {}: {} ({} blocks × {} B, LBA format {f}, {} B metadata), {}",
            ns.nsid(),
            size(ns.size_bytes()),
            ns.blocks(),
            ns.lba_size(),
            ns.metadata_size(),
            if dev.volatile(ns.nsid()) == Some(true) {
                "volatile (in memory, lost at exit)"
            } else {
                "on the image"
            }
        );
    }
    println!("\nI/O");
    let namespaces: Vec<Namespace> = c.namespaces().to_vec();
    for ns in &namespaces {
        let bs = ns.lba_size() as usize;
        let len = (1 << 20)
            .min(c.max_transfer() * 8)
            .min(ns.size_bytes() as usize / 2)
            / bs
            * bs;
        let blocks = (len / bs) as u64;
        let slba = ns.blocks() / 2;
        let data: Vec<u8> = (0..len)
            .map(|i| ((i as u64 * 2654435761) >> 7) as u8 ^ ns.nsid() as u8)
            .collect();
        let quiet = Progress::off;
        let t = Instant::now();
        let w = transfer(
            &mut c,
            ns,
            slba,
            blocks,
            Op::Write(&mut &data[..]),
            &mut quiet(),
        )?;
        let tw = t.elapsed();
        let t = Instant::now();
        let mut back = Vec::with_capacity(len);
        transfer(&mut c, ns, slba, blocks, Op::Read(&mut back), &mut quiet())?;
        let tr = t.elapsed();
        ensure!(
            back == data,
            "namespace {}: data read back differs from what was written",
            ns.nsid()
        );
        let mut qp = c.create_io_queue_pair(4)?;
        qp.flush(ns.nsid())?;
        c.delete_io_queue_pair(qp)?;
        println!("  nsid {}: wrote {} at LBA {slba} in {} commands ({tw:.1?}), read back and verified ({tr:.1?}), flushed", ns.nsid(), size(len as u64), w.commands, tw = tw, tr = tr);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_at_mdts_nlb_and_the_buffer() {
        // MDTS 128 KiB, 512-byte blocks: 256 blocks a command.
        assert_eq!(blocks_per_command(128 << 10, 512), 256);
        // No MDTS (the core reports a huge maximum), 512-byte blocks: the 8 MiB buffer
        // (16,384 blocks) comes first ...
        assert_eq!(blocks_per_command(usize::MAX, 512), 16_384);
        // ... with 64-byte "blocks" NLB's 65,536 would, and is never exceeded.
        assert_eq!(blocks_per_command(usize::MAX, 64), MAX_BLOCKS_PER_COMMAND);
        // A maximum below one block still moves one block.
        assert_eq!(blocks_per_command(256, 4096), 1);
    }

    #[test]
    fn device_specs_and_sizes_parse() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999T").is_err());
        let d: DeviceSpec = "sim:a.img,create=2M,ro".parse().unwrap();
        assert_eq!(
            d,
            DeviceSpec::Sim(Some(ImageSpec {
                path: "a.img".into(),
                create: Some(2 << 20),
                read_only: true
            }))
        );
        assert_eq!(d.volatile(1), Some(false));
        assert_eq!(d.volatile(2), Some(true));
        assert!("sim:a.img,size=3".parse::<DeviceSpec>().is_err());
        assert!("sim:".parse::<DeviceSpec>().is_err());
        assert!("/dev/nvme0n1"
            .parse::<DeviceSpec>()
            .unwrap_err()
            .contains("setup bind"));
        assert_eq!(
            "pci:0000:03:00.0"
                .parse::<DeviceSpec>()
                .unwrap()
                .volatile(1),
            None
        );
    }
}

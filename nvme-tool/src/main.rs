//! `nvme-tool`: the driver from the command line, in the spirit of `nvme-cli` (same
//! subcommand and option names where they exist) and SPDK's `perf`.
//!
//! Devices: `sim` (the built-in simulator, in memory), `sim:IMAGE[,create=SIZE][,ro]` (the
//! simulator with namespace 1 on a raw image file: created only with `create=`, locked
//! against a second writer, read-only with `ro` or when the file is), `pci:DDDD:BB:DD.F` or a
//! bare PCI address (a controller bound to `vfio-pci`).
//!
//! Exit codes: see [`exit`].

mod device;
mod exit;
mod fmt;
mod nbd;
mod passthru;
mod perf;
mod regs;
mod setup;
mod soak;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use nvme_core::hw::Platform;
use nvme_core::spec::FeatureId;
use nvme_core::{Controller, DsmRange};

use device::DeviceSpec;

#[derive(Parser, Debug)]
#[command(
    name = "nvme-tool",
    version,
    about = "A userspace NVMe driver from the command line (simulator or vfio-pci)",
    after_help = exit::EXIT_CODES_HELP
)]
struct Cli {
    /// More log output on stderr: -v info, -vv debug, -vvv trace (else RUST_LOG, else warnings).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Interrupt mode.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Irq {
    /// MSI-X vectors (eventfds on VFIO).
    Msix,
    /// Poll the completion queues.
    Polled,
}

#[derive(clap::Args, Debug, Clone)]
struct Dev {
    /// The device: `sim`, `sim:IMAGE[,create=SIZE][,ro]`, `pci:0000:03:00.0` or `0000:03:00.0`.
    device: DeviceSpec,
    /// Interrupt mode.
    #[arg(long, value_enum, default_value = "msix")]
    irq: Irq,
}

#[derive(clap::Args, Debug, Clone)]
struct Rw {
    #[command(flatten)]
    dev: Dev,
    /// Namespace ID.
    #[arg(short = 'n', long = "namespace-id", default_value_t = 1)]
    nsid: u32,
    /// First LBA.
    #[arg(short = 's', long = "start-block", default_value_t = 0)]
    slba: u64,
    /// Number of blocks, 0's based (as in nvme-cli: 0 means one block). Any count: the tool
    /// splits it into commands.
    #[arg(short = 'c', long = "block-count")]
    nlb_z: Option<u64>,
    /// Bytes to transfer (a multiple of the LBA size, suffixes K/M/G); instead of, or equal
    /// to, (block-count + 1) × LBA size. Without either: one block, or for write/compare the
    /// whole data file.
    #[arg(short = 'z', long = "data-size", value_parser = device::parse_size)]
    data_size: Option<u64>,
    /// Data file (read: written with what was read, `-` or none for a hex dump on stdout;
    /// write/compare: read from it, `-` for stdin). Streamed through an 8 MiB buffer.
    #[arg(short = 'd', long = "data")]
    data: Option<PathBuf>,
    /// read: raw binary on stdout instead of a hex dump.
    #[arg(short = 'r', long = "raw-binary")]
    raw: bool,
    /// Show the progress line even when stderr is not a terminal.
    #[arg(long)]
    progress: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Bring up a simulated controller on a backing image, show what it is, write and read back
    /// verified data, shut down cleanly.
    Demo {
        /// Backing image of namespace 1 (raw, like `qemu-img create -f raw`); created if missing.
        #[arg(long)]
        image: Option<PathBuf>,
        /// Run the simulator on its own thread, like a real device.
        #[arg(long)]
        threaded: bool,
    },
    /// One line per namespace: model, serial, firmware, usage and format (like `nvme list`).
    /// Without a device: every NVMe controller in sysfs (class 010802h); those bound to
    /// vfio-pci are brought up and identified, the others shown with their kernel driver.
    List {
        /// The device (default: every NVMe controller in sysfs).
        device: Option<DeviceSpec>,
        /// Interrupt mode.
        #[arg(long, value_enum, default_value = "polled")]
        irq: Irq,
        #[command(flatten)]
        out: exit::Out,
    },
    /// Identify Controller (like `nvme id-ctrl`).
    IdCtrl {
        #[command(flatten)]
        dev: Dev,
        #[command(flatten)]
        out: exit::Out,
    },
    /// Identify Namespace (like `nvme id-ns`).
    IdNs {
        #[command(flatten)]
        dev: Dev,
        #[command(flatten)]
        out: exit::Out,
        /// Namespace ID.
        #[arg(short = 'n', long = "namespace-id", default_value_t = 1)]
        nsid: u32,
    },
    /// Active namespace IDs (like `nvme list-ns`).
    ListNs {
        #[command(flatten)]
        dev: Dev,
        #[command(flatten)]
        out: exit::Out,
    },
    /// SMART / Health log (like `nvme smart-log`).
    SmartLog {
        #[command(flatten)]
        dev: Dev,
        #[command(flatten)]
        out: exit::Out,
    },
    /// Error Information log (like `nvme error-log`).
    ErrorLog {
        #[command(flatten)]
        dev: Dev,
        #[command(flatten)]
        out: exit::Out,
        /// Entries to show.
        #[arg(short = 'e', long = "log-entries", default_value_t = 16)]
        entries: usize,
    },
    /// Firmware Slot log (like `nvme fw-log`).
    FwLog {
        #[command(flatten)]
        dev: Dev,
        #[command(flatten)]
        out: exit::Out,
    },
    /// Get Log Page of any log (like `nvme get-log`).
    GetLog(passthru::GetLogArgs),
    /// Any admin command (like `nvme admin-passthru`).
    AdminPassthru(passthru::PassthruArgs),
    /// Any I/O command (like `nvme io-passthru`).
    IoPassthru(passthru::PassthruArgs),
    /// The controller registers, decoded (like `nvme show-regs`).
    ShowRegs(regs::ShowRegsArgs),
    /// What VFIO reports of the device (regions, interrupts, PCI config space); simulated
    /// values on the simulator.
    VfioInfo(regs::VfioInfoArgs),
    /// Get Features (like `nvme get-feature`).
    GetFeature {
        #[command(flatten)]
        dev: Dev,
        #[command(flatten)]
        out: exit::Out,
        /// Feature ID (decimal or 0x hex).
        #[arg(short = 'f', long = "feature-id", value_parser = parse_u32)]
        fid: u32,
        /// Select: 0 current, 1 default, 2 saved, 3 supported capabilities.
        #[arg(short = 's', long = "sel", default_value_t = 0)]
        sel: u8,
        /// CDW11 value.
        #[arg(long = "cdw11", default_value = "0", value_parser = parse_u32)]
        cdw11: u32,
    },
    /// Set Features (like `nvme set-feature`).
    SetFeature {
        #[command(flatten)]
        dev: Dev,
        /// Feature ID.
        #[arg(short = 'f', long = "feature-id", value_parser = parse_u32)]
        fid: u32,
        /// Value (CDW11).
        #[arg(short = 'v', long = "value", value_parser = parse_u32)]
        value: u32,
        /// Make it persist across power cycles (SV).
        #[arg(long)]
        save: bool,
    },
    /// Read blocks into a file (like `nvme read`).
    Read(Rw),
    /// Write blocks from a file (like `nvme write`).
    Write(Rw),
    /// Compare blocks with a file (like `nvme compare`).
    Compare(Rw),
    /// Verify blocks (like `nvme verify`).
    Verify(Rw),
    /// Write Zeroes (like `nvme write-zeroes`).
    WriteZeroes {
        #[command(flatten)]
        rw: Rw,
        /// Deallocate (DEAC).
        #[arg(long)]
        deac: bool,
    },
    /// Dataset Management deallocate of one range (like `nvme dsm --ad`).
    Dsm {
        #[command(flatten)]
        rw: Rw,
    },
    /// Flush (like `nvme flush`).
    Flush {
        #[command(flatten)]
        dev: Dev,
        /// Namespace ID (0xFFFFFFFF for all).
        #[arg(short = 'n', long = "namespace-id", default_value_t = 1, value_parser = parse_u32)]
        nsid: u32,
    },
    /// Format NVM (like `nvme format`). Destroys the namespace's data.
    Format {
        #[command(flatten)]
        dev: Dev,
        /// Namespace ID.
        #[arg(short = 'n', long = "namespace-id", default_value_t = 1)]
        nsid: u32,
        /// LBA format index.
        #[arg(short = 'l', long = "lbaf")]
        lbaf: u8,
        /// Secure erase setting.
        #[arg(short = 's', long = "ses", default_value_t = 0)]
        ses: u8,
    },
    /// Controller reset, then show the controller state (like `nvme reset`).
    Reset(Dev),
    /// Measure I/O performance (like SPDK's `perf`): IOPS, bandwidth, latency percentiles.
    Perf(perf::PerfArgs),
    /// Bind NVMe controllers to vfio-pci and back, reserve huge pages, show what is bound
    /// (like SPDK's setup.sh and driverctl).
    #[command(
        after_help = "Reads and writes $NVME_TOOL_SYSFS (default /sys) and reads $NVME_TOOL_PROC (default /proc): point them at a fake tree to try it safely. --dry-run prints every write as `echo VALUE > PATH`."
    )]
    Setup(setup::SetupArgs),
    /// Data-integrity soak: threads with their own queue pairs write and verify random blocks
    /// (headers with LBA, generation and namespace ID), optionally with injected faults.
    Soak(soak::SoakArgs),
    /// Serve a namespace over the NBD protocol (Unix socket or TCP) until SIGINT/SIGTERM.
    Nbd(nbd::NbdArgs),
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?} is not a number: {e}"))
}

fn main() -> ExitCode {
    // SAFETY: restoring the default SIGPIPE action before any thread starts: output into a
    // closed pipe (`nvme-tool read ... | head`) ends the process quietly, as for C tools,
    // instead of failing every later print.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    exit::init_logger(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::report(&e),
    }
}

/// The blocks of a read/write/compare/verify: from `-c` (0's based), `-z` (bytes), or the
/// data file's length (write/compare), else one block.
fn rw_blocks(rw: &Rw, lba_size: u32, file_len: Option<u64>) -> Result<u64> {
    let bs = u64::from(lba_size);
    let from_z = match rw.data_size {
        Some(z) if z == 0 || z % bs != 0 => {
            usage!("--data-size {z} is not a whole number of {bs}-byte blocks")
        }
        Some(z) => Some(z / bs),
        None => None,
    };
    let from_c = rw.nlb_z.map(|c| c.saturating_add(1));
    match (from_c, from_z) {
        (Some(c), Some(z)) if c != z => usage!(
            "--data-size {} does not match (block-count + 1) × LBA size = {c} × {bs} = {}",
            z * bs,
            c.saturating_mul(bs)
        ),
        (Some(c), _) => Ok(c),
        (None, Some(z)) => Ok(z),
        (None, None) => match file_len {
            Some(0) => usage!("the data file is empty"),
            Some(n) if n % bs != 0 => usage!(
                "the data file holds {n} bytes, not a whole number of {bs}-byte blocks; give --block-count or --data-size"
            ),
            Some(n) => Ok(n / bs),
            None => Ok(1),
        },
    }
}

/// Opens the source of a write or compare, checking a regular file holds enough bytes before
/// anything is sent.
fn open_source(rw: &Rw, lba_size: u32) -> Result<(Box<dyn std::io::Read>, u64)> {
    match rw.data.as_deref() {
        None => usage!("--data FILE is required (or --data - for stdin)"),
        Some(p) if p.as_os_str() == "-" => {
            if rw.nlb_z.is_none() && rw.data_size.is_none() {
                usage!("--data - (stdin) needs --block-count or --data-size: the length of a stream is not known in advance");
            }
            let blocks = rw_blocks(rw, lba_size, None)?;
            Ok((Box::new(std::io::stdin().lock()), blocks))
        }
        Some(p) => {
            let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            let meta = f.metadata()?;
            let len = meta.is_file().then_some(meta.len());
            let blocks = rw_blocks(rw, lba_size, len)?;
            if let Some(n) = len {
                let need = blocks.saturating_mul(u64::from(lba_size));
                if n < need {
                    usage!(
                        "{} holds {n} bytes; the command transfers {need}",
                        p.display()
                    );
                }
            }
            Ok((
                Box::new(std::io::BufReader::with_capacity(1 << 20, f)),
                blocks,
            ))
        }
    }
}

/// A hex dump sink that keeps its offset across writes.
struct HexSink<W: std::io::Write> {
    out: W,
    off: usize,
    pending: Vec<u8>,
}

impl<W: std::io::Write> std::io::Write for HexSink<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(b);
        let whole = self.pending.len() / 16 * 16;
        let mut s = String::new();
        for line in self.pending[..whole].chunks(16) {
            s.push_str(&fmt::hexline(self.off, line));
            s.push('\n');
            self.off += 16;
        }
        self.pending.drain(..whole);
        self.out.write_all(s.as_bytes())?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let l = fmt::hexline(self.off, &self.pending);
            writeln!(self.out, "{l}")?;
            self.off += self.pending.len();
            self.pending.clear();
        }
        self.out.flush()
    }
}

fn do_rw<P: Platform>(c: &mut Controller<P>, rw: &Rw, kind: &'static str) -> Result<()> {
    let ns = c.namespace(rw.nsid)?.clone();
    let bs = ns.lba_size();
    let (blocks, tr) = match kind {
        "read" => {
            let blocks = rw_blocks(rw, bs, None)?;
            let mut progress = device::Progress::new("read", blocks * u64::from(bs), rw.progress);
            // The sink: a file, raw bytes on stdout, or a hex dump on stdout.
            let (mut w, file): (Box<dyn std::io::Write>, _) = match &rw.data {
                Some(p) if p.as_os_str() != "-" => {
                    let f = std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?;
                    (
                        Box::new(std::io::BufWriter::with_capacity(1 << 20, f)),
                        Some(p),
                    )
                }
                _ if rw.raw => (Box::new(std::io::stdout().lock()), None),
                _ => (
                    Box::new(HexSink {
                        out: std::io::stdout().lock(),
                        off: 0,
                        pending: Vec::new(),
                    }),
                    None,
                ),
            };
            let tr = device::transfer(
                c,
                &ns,
                rw.slba,
                blocks,
                device::Op::Read(&mut w),
                &mut progress,
            )?;
            match file {
                Some(p) => w
                    .flush()
                    .with_context(|| format!("writing {}", p.display()))?,
                None => w.flush()?,
            }
            (blocks, tr)
        }
        "write" | "compare" => {
            let (mut src, blocks) = open_source(rw, bs)?;
            let mut progress = device::Progress::new(kind, blocks * u64::from(bs), rw.progress);
            let op = if kind == "write" {
                device::Op::Write(&mut src)
            } else {
                device::Op::Compare(&mut src)
            };
            (
                blocks,
                device::transfer(c, &ns, rw.slba, blocks, op, &mut progress)?,
            )
        }
        _ => {
            let blocks = rw_blocks(rw, bs, None)?;
            let mut progress = device::Progress::new("verify", blocks * u64::from(bs), rw.progress);
            (
                blocks,
                device::transfer(c, &ns, rw.slba, blocks, device::Op::Verify, &mut progress)?,
            )
        }
    };
    eprintln!(
        "{kind}: Success ({blocks} blocks of {bs} B from LBA {} of namespace {}, {} commands)",
        rw.slba,
        ns.nsid(),
        tr.commands
    );
    Ok(())
}

/// The count of a write-zeroes or dsm: NLB is 16 bits, DSM's range length 32 bits.
fn single_count(rw: &Rw, lba_size: u32, max: u64, what: &str) -> Result<u64> {
    let n = rw_blocks(rw, lba_size, None)?;
    if n > max {
        usage!("{what} covers at most {max} blocks per command; {n} asked");
    }
    Ok(n)
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Demo { image, threaded } => device::demo(image, threaded),
        Cmd::List { device, irq, out } => match device {
            Some(d) => with_controller!(&d, irq, |c| {
                let vol = |n| d.volatile(n);
                if out.json() {
                    let devs = fmt::list_entries(c, &d.to_string(), &vol);
                    exit::print_json(&serde_json::json!({ "Devices": devs }));
                } else {
                    fmt::list(c, &d.to_string(), &vol);
                }
                Ok(())
            }),
            None => regs::list_all(irq, out),
        },
        Cmd::IdCtrl { dev: d, out } => with_controller!(&d.device, d.irq, |c| {
            let id = c.identify_controller()?;
            if out.json() {
                exit::print_json(&fmt::id_ctrl_json(&id));
            } else {
                fmt::id_ctrl(&id, c.cap(), c.version());
            }
            Ok(())
        }),
        Cmd::IdNs { dev, out, nsid } => with_controller!(&dev.device, dev.irq, |c| {
            let ns = c.identify_namespace(nsid)?;
            let vol = dev.device.volatile(nsid);
            if out.json() {
                exit::print_json(&fmt::id_ns_json(&ns, vol));
            } else {
                fmt::id_ns(nsid, &ns, vol);
            }
            Ok(())
        }),
        Cmd::ListNs { dev: d, out } => with_controller!(&d.device, d.irq, |c| {
            let ids = c.active_namespace_ids(0)?;
            if out.json() {
                let v: Vec<_> = ids
                    .iter()
                    .map(|i| serde_json::json!({ "nsid": i }))
                    .collect();
                exit::print_json(&serde_json::json!({ "nsid_list": v }));
            } else {
                for (i, id) in ids.iter().enumerate() {
                    println!("[{i:>4}]:{id:#x}");
                }
            }
            Ok(())
        }),
        Cmd::SmartLog { dev: d, out } => with_controller!(&d.device, d.irq, |c| {
            let s = c.smart_log()?;
            if out.json() {
                exit::print_json(&fmt::smart_json(&s));
            } else {
                fmt::smart(&s);
            }
            Ok(())
        }),
        Cmd::ErrorLog { dev, out, entries } => with_controller!(&dev.device, dev.irq, |c| {
            let log = c.error_log(entries)?;
            if out.json() {
                exit::print_json(&fmt::error_log_json(&log));
            } else {
                fmt::error_log(&log);
            }
            Ok(())
        }),
        Cmd::FwLog { dev: d, out } => with_controller!(&d.device, d.irq, |c| {
            let f = c.firmware_slot_log()?;
            if out.json() {
                exit::print_json(&fmt::fw_log_json(&d.device.to_string(), &f));
            } else {
                fmt::fw_log(&f);
            }
            Ok(())
        }),
        Cmd::GetLog(a) => passthru::get_log(a),
        Cmd::AdminPassthru(a) => passthru::passthru(a, false),
        Cmd::IoPassthru(a) => passthru::passthru(a, true),
        Cmd::ShowRegs(a) => regs::show_regs(a),
        Cmd::VfioInfo(a) => regs::vfio_info(a),
        Cmd::GetFeature {
            dev,
            out,
            fid,
            sel,
            cdw11,
        } => {
            let Ok(fid) = u8::try_from(fid) else {
                usage!("feature IDs are 8 bits; {fid:#x} is not one")
            };
            if sel > 3 {
                usage!(
                    "--sel is 0 (current), 1 (default), 2 (saved) or 3 (supported capabilities)"
                );
            }
            with_controller!(&dev.device, dev.irq, |c| {
                let v = c.get_features(FeatureId(fid), sel, cdw11)?;
                if out.json() {
                    exit::print_json(&serde_json::json!({
                        "feature_id": fid,
                        "name": FeatureId(fid).name().unwrap_or("unknown"),
                        "sel": sel,
                        "value": v,
                    }));
                } else {
                    println!(
                        "get-feature:{fid:#04x} ({}), {} value:{v:#010x}",
                        FeatureId(fid).name().unwrap_or("unknown"),
                        ["Current", "Default", "Saved", "Supported capabilities"]
                            .get(sel as usize)
                            .unwrap_or(&"?")
                    );
                }
                Ok(())
            })
        }
        Cmd::SetFeature {
            dev,
            fid,
            value,
            save,
        } => {
            let Ok(fid) = u8::try_from(fid) else {
                usage!("feature IDs are 8 bits; {fid:#x} is not one")
            };
            if FeatureId(fid) == FeatureId::NUMBER_OF_QUEUES {
                usage!("Number of Queues can only be set once, before I/O queues exist; the driver sets it at bring-up");
            }
            with_controller!(&dev.device, dev.irq, |c| {
                let dw0 = c.set_features(FeatureId(fid), value, save)?;
                println!("set-feature:{fid:#04x} ({}), value:{value:#010x}, cdw0:{dw0:#010x}, save:{save}", FeatureId(fid).name().unwrap_or("unknown"));
                Ok(())
            })
        }
        Cmd::Read(rw) => with_controller!(&rw.dev.device, rw.dev.irq, |c| do_rw(c, &rw, "read")),
        Cmd::Write(rw) => with_controller!(&rw.dev.device, rw.dev.irq, |c| do_rw(c, &rw, "write")),
        Cmd::Compare(rw) => {
            with_controller!(&rw.dev.device, rw.dev.irq, |c| do_rw(c, &rw, "compare"))
        }
        Cmd::Verify(rw) => {
            with_controller!(&rw.dev.device, rw.dev.irq, |c| do_rw(c, &rw, "verify"))
        }
        Cmd::WriteZeroes { rw, deac } => with_controller!(&rw.dev.device, rw.dev.irq, |c| {
            let ns = c.namespace(rw.nsid)?.clone();
            let n = single_count(
                &rw,
                ns.lba_size(),
                device::MAX_BLOCKS_PER_COMMAND,
                "Write Zeroes",
            )?;
            let mut qp = c.create_io_queue_pair(8)?;
            let r = qp.write_zeroes(&ns, rw.slba, n as u32, deac);
            c.delete_io_queue_pair(qp)?;
            r?;
            eprintln!("write-zeroes: Success");
            Ok(())
        }),
        Cmd::Dsm { rw } => with_controller!(&rw.dev.device, rw.dev.irq, |c| {
            let ns = c.namespace(rw.nsid)?.clone();
            let n = single_count(
                &rw,
                ns.lba_size(),
                u64::from(u32::MAX),
                "a Dataset Management range",
            )?;
            let mut qp = c.create_io_queue_pair(8)?;
            let r = qp.deallocate(
                &ns,
                &[DsmRange {
                    slba: rw.slba,
                    nlb: n as u32,
                    attributes: 0,
                }],
            );
            c.delete_io_queue_pair(qp)?;
            r?;
            eprintln!("dsm: Success");
            Ok(())
        }),
        Cmd::Flush { dev, nsid } => with_controller!(&dev.device, dev.irq, |c| {
            let mut qp = c.create_io_queue_pair(8)?;
            let r = qp.flush(nsid);
            c.delete_io_queue_pair(qp)?;
            r?;
            eprintln!("flush: Success");
            Ok(())
        }),
        Cmd::Format {
            dev,
            nsid,
            lbaf,
            ses,
        } => with_controller!(&dev.device, dev.irq, |c| {
            c.format_nvm(nsid, lbaf, ses)?;
            let ns = c.namespace(nsid)?;
            eprintln!(
                "format: Success (namespace {nsid}: {} blocks of {} bytes)",
                ns.blocks(),
                ns.lba_size()
            );
            Ok(())
        }),
        Cmd::Reset(d) => with_controller!(&d.device, d.irq, |c| {
            c.reset()?;
            eprintln!(
                "reset: Success (CSTS {:#x}, {} namespaces)",
                c.csts().0,
                c.namespaces().len()
            );
            Ok(())
        }),
        Cmd::Perf(args) => perf::run(args),
        Cmd::Soak(args) => soak::run(args),
        Cmd::Setup(args) => setup::run(args),
        Cmd::Nbd(args) => nbd::run(args),
    }
}

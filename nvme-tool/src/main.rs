//! `nvme-tool`: the driver from the command line, in the spirit of `nvme-cli` (same
//! subcommand and option names where they exist) and SPDK's `perf`.
//!
//! Devices: `sim` (the built-in simulator, in memory), `sim:IMAGE` (the simulator with
//! namespace 1 on a raw image file, created if missing), `pci:DDDD:BB:DD.F` or a bare PCI
//! address (a controller bound to `vfio-pci`).

mod device;
mod fmt;
mod nbd;
mod perf;
mod soak;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use nvme_core::hw::Platform;
use nvme_core::spec::FeatureId;
use nvme_core::{Controller, DsmRange};

use device::DeviceSpec;

#[derive(Parser, Debug)]
#[command(
    name = "nvme-tool",
    version,
    about = "A userspace NVMe driver from the command line (simulator or vfio-pci)"
)]
struct Cli {
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
    /// The device: `sim`, `sim:IMAGE`, `pci:0000:03:00.0` or `0000:03:00.0`.
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
    /// Number of blocks, 0's based (as in nvme-cli: 0 means one block).
    #[arg(short = 'c', long = "block-count", default_value_t = 0)]
    nlb_z: u32,
    /// Bytes to transfer; defaults to (block-count + 1) × LBA size. Must match that.
    #[arg(short = 'z', long = "data-size")]
    data_size: Option<u64>,
    /// Data file (read: written with what was read, `-` for stdout as hex; write/compare: read
    /// from it).
    #[arg(short = 'd', long = "data")]
    data: Option<PathBuf>,
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
    List(Dev),
    /// Identify Controller (like `nvme id-ctrl`).
    IdCtrl(Dev),
    /// Identify Namespace (like `nvme id-ns`).
    IdNs {
        #[command(flatten)]
        dev: Dev,
        /// Namespace ID.
        #[arg(short = 'n', long = "namespace-id", default_value_t = 1)]
        nsid: u32,
    },
    /// Active namespace IDs (like `nvme list-ns`).
    ListNs(Dev),
    /// SMART / Health log (like `nvme smart-log`).
    SmartLog(Dev),
    /// Error Information log (like `nvme error-log`).
    ErrorLog {
        #[command(flatten)]
        dev: Dev,
        /// Entries to show.
        #[arg(short = 'e', long = "log-entries", default_value_t = 16)]
        entries: usize,
    },
    /// Firmware Slot log (like `nvme fw-log`).
    FwLog(Dev),
    /// Get Features (like `nvme get-feature`).
    GetFeature {
        #[command(flatten)]
        dev: Dev,
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
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn rw_len<P: Platform>(c: &Controller<P>, rw: &Rw) -> Result<(nvme_core::Namespace, usize)> {
    let ns = c.namespace(rw.nsid)?.clone();
    let blocks = rw.nlb_z as u64 + 1;
    let len = blocks * ns.lba_size() as u64;
    if let Some(z) = rw.data_size {
        if z != len {
            bail!("--data-size {z} does not match (block-count + 1) × LBA size = {blocks} × {} = {len}", ns.lba_size());
        }
    }
    let end = rw.slba.saturating_add(blocks);
    if end > ns.blocks() {
        bail!(
            "LBA range {}..{end} is outside namespace {}, which has {} blocks",
            rw.slba,
            ns.nsid(),
            ns.blocks()
        );
    }
    Ok((ns, len as usize))
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Demo { image, threaded } => device::demo(image, threaded),
        Cmd::List(d) => with_controller!(&d.device, d.irq, |c| {
            fmt::list(c, &d.device.to_string());
            Ok(())
        }),
        Cmd::IdCtrl(d) => with_controller!(&d.device, d.irq, |c| {
            let id = c.identify_controller()?;
            fmt::id_ctrl(&id, c.cap(), c.version());
            Ok(())
        }),
        Cmd::IdNs { dev, nsid } => with_controller!(&dev.device, dev.irq, |c| {
            let ns = c.identify_namespace(nsid)?;
            fmt::id_ns(nsid, &ns);
            Ok(())
        }),
        Cmd::ListNs(d) => with_controller!(&d.device, d.irq, |c| {
            for (i, id) in c.active_namespace_ids(0)?.iter().enumerate() {
                println!("[{i:>4}]:{id:#x}");
            }
            Ok(())
        }),
        Cmd::SmartLog(d) => with_controller!(&d.device, d.irq, |c| {
            fmt::smart(&c.smart_log()?);
            Ok(())
        }),
        Cmd::ErrorLog { dev, entries } => with_controller!(&dev.device, dev.irq, |c| {
            let log = c.error_log(entries)?;
            fmt::error_log(&log);
            Ok(())
        }),
        Cmd::FwLog(d) => with_controller!(&d.device, d.irq, |c| {
            fmt::fw_log(&c.firmware_slot_log()?);
            Ok(())
        }),
        Cmd::GetFeature {
            dev,
            fid,
            sel,
            cdw11,
        } => with_controller!(&dev.device, dev.irq, |c| {
            let fid = u8::try_from(fid).context("feature IDs are 8 bits")?;
            let v = c.get_features(FeatureId(fid), sel, cdw11)?;
            println!(
                "get-feature:{fid:#04x} ({}), {} value:{v:#010x}",
                FeatureId(fid).name().unwrap_or("unknown"),
                ["Current", "Default", "Saved", "Supported capabilities"]
                    .get(sel as usize)
                    .unwrap_or(&"?")
            );
            Ok(())
        }),
        Cmd::SetFeature {
            dev,
            fid,
            value,
            save,
        } => {
            with_controller!(&dev.device, dev.irq, |c| {
                let fid = u8::try_from(fid).context("feature IDs are 8 bits")?;
                if FeatureId(fid) == FeatureId::NUMBER_OF_QUEUES {
                    bail!("Number of Queues can only be set once, before I/O queues exist; the driver sets it at bring-up");
                }
                let dw0 = c.set_features(FeatureId(fid), value, save)?;
                println!("set-feature:{fid:#04x} ({}), value:{value:#010x}, cdw0:{dw0:#010x}, save:{save}", FeatureId(fid).name().unwrap_or("unknown"));
                Ok(())
            })
        }
        Cmd::Read(rw) => with_controller!(&rw.dev.device, rw.dev.irq, |c| {
            let (ns, len) = rw_len(c, &rw)?;
            let data = device::read_blocks(c, &ns, rw.slba, len)?;
            match &rw.data {
                Some(p) if p.as_os_str() != "-" => {
                    std::fs::write(p, &data).with_context(|| format!("writing {}", p.display()))?
                }
                _ => fmt::hexdump(&data),
            }
            eprintln!(
                "read: Success ({len} bytes from LBA {} of namespace {})",
                rw.slba,
                ns.nsid()
            );
            Ok(())
        }),
        Cmd::Write(rw) => with_controller!(&rw.dev.device, rw.dev.irq, |c| {
            let (ns, len) = rw_len(c, &rw)?;
            let data = device::load_data(rw.data.as_deref(), len)?;
            device::write_blocks(c, &ns, rw.slba, &data)?;
            eprintln!(
                "write: Success ({len} bytes to LBA {} of namespace {})",
                rw.slba,
                ns.nsid()
            );
            Ok(())
        }),
        Cmd::Compare(rw) => with_controller!(&rw.dev.device, rw.dev.irq, |c| {
            let (ns, len) = rw_len(c, &rw)?;
            let data = device::load_data(rw.data.as_deref(), len)?;
            if len > c.max_transfer() {
                bail!(
                    "compare of {len} bytes exceeds the maximum of {} per command (MDTS)",
                    c.max_transfer()
                );
            }
            let mut qp = c.create_io_queue_pair(8)?;
            let mut b = c.alloc_buffer(len)?;
            b.write(0, &data)?;
            let (same, _) = qp.compare(&ns, rw.slba, b)?;
            c.delete_io_queue_pair(qp)?;
            if !same {
                bail!(
                    "compare: the blocks differ from {} (Compare Failure, SCT 2h SC 85h)",
                    rw.data
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                );
            }
            eprintln!("compare: Success");
            Ok(())
        }),
        Cmd::Verify(rw) => with_controller!(&rw.dev.device, rw.dev.irq, |c| {
            let (ns, _) = rw_len(c, &rw)?;
            let mut qp = c.create_io_queue_pair(8)?;
            let r = qp.verify(&ns, rw.slba, rw.nlb_z + 1);
            c.delete_io_queue_pair(qp)?;
            r?;
            eprintln!("verify: Success");
            Ok(())
        }),
        Cmd::WriteZeroes { rw, deac } => with_controller!(&rw.dev.device, rw.dev.irq, |c| {
            let (ns, _) = rw_len(c, &rw)?;
            let mut qp = c.create_io_queue_pair(8)?;
            let r = qp.write_zeroes(&ns, rw.slba, rw.nlb_z + 1, deac);
            c.delete_io_queue_pair(qp)?;
            r?;
            eprintln!("write-zeroes: Success");
            Ok(())
        }),
        Cmd::Dsm { rw } => with_controller!(&rw.dev.device, rw.dev.irq, |c| {
            let (ns, _) = rw_len(c, &rw)?;
            let mut qp = c.create_io_queue_pair(8)?;
            let r = qp.deallocate(
                &ns,
                &[DsmRange {
                    slba: rw.slba,
                    nlb: rw.nlb_z + 1,
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
        Cmd::Nbd(args) => nbd::run(args),
    }
}

//! `get-log`, `admin-passthru` and `io-passthru`, with nvme-cli's option names and the
//! driver's safety rules: the data length of every command the core knows is derived from the
//! command itself (NVMe Base 2.1 §5 per admin command, NVM Command Set 1.1 §3 per I/O
//! command); an opcode the core does not know moves data only with
//! `--unchecked-data-length`, which goes through the `unsafe` passthrough API.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use nvme_core::spec::opcode::{AdminOpcode, NvmOpcode};
use nvme_core::spec::transfer::{admin_data_length, io_data_length, DataLength};
use nvme_core::spec::{Command, Status};

use crate::{fmt, parse_u32, usage, with_controller, Dev};

/// Options of `get-log`.
#[derive(clap::Args, Debug, Clone)]
pub struct GetLogArgs {
    #[command(flatten)]
    dev: Dev,
    /// Log page identifier (LID).
    #[arg(short = 'i', long = "log-id", value_parser = parse_u32)]
    lid: u32,
    /// Bytes to read (a multiple of 4; any length: split into commands of at most 64 KiB
    /// and MDTS).
    #[arg(short = 'l', long = "log-len", value_parser = parse_u32)]
    len: u32,
    /// Namespace ID (as nvme-cli, FFFFFFFFh by default: the controller and all namespaces).
    #[arg(short = 'n', long = "namespace-id", default_value = "0xffffffff", value_parser = parse_u32)]
    nsid: u32,
    /// Log page offset in bytes (LPO; a multiple of 4).
    #[arg(short = 'L', long = "lpo", default_value_t = 0)]
    offset: u64,
    /// Retain Asynchronous Event (RAE): reading the log does not clear its event.
    #[arg(short = 'r', long = "rae")]
    rae: bool,
    /// Raw binary on stdout instead of a hex dump.
    #[arg(short = 'b', long = "raw-binary")]
    raw: bool,
    /// Write the log to this file instead of stdout.
    #[arg(short = 'f', long = "output-file")]
    file: Option<PathBuf>,
}

/// The largest Get Log Page transfer the core takes in one call.
const LOG_CHUNK: usize = 64 << 10;

/// Runs `get-log`.
///
/// # Errors
/// Bad options (before anything is sent), command failures, the output file.
pub fn get_log(a: GetLogArgs) -> Result<()> {
    let Ok(lid) = u8::try_from(a.lid) else {
        usage!("log page identifiers are 8 bits; {:#x} is not one", a.lid)
    };
    if a.len == 0 || a.len % 4 != 0 || a.offset % 4 != 0 {
        usage!(
            "--log-len ({}) must be a non-zero multiple of 4 and --lpo ({}) a multiple of 4 (NUMD counts dwords, NVMe Base 2.1 §5.1.12)",
            a.len,
            a.offset
        );
    }
    if a.offset.checked_add(u64::from(a.len)).is_none() {
        usage!("--lpo + --log-len overflows 64 bits");
    }
    with_controller!(&a.dev.device, a.dev.irq, |c| {
        let chunk = LOG_CHUNK.min(c.max_transfer()) / 4 * 4;
        let mut data = Vec::with_capacity(a.len as usize);
        while data.len() < a.len as usize {
            let n = chunk.min(a.len as usize - data.len());
            let off = a.offset + data.len() as u64;
            let part = c
                .get_log_page(lid, a.nsid, off, n, a.rae)
                .with_context(|| format!("Get Log Page {lid:#04x} at offset {off}"))?;
            data.extend_from_slice(&part);
        }
        match &a.file {
            Some(p) => {
                std::fs::write(p, &data).with_context(|| format!("writing {}", p.display()))?
            }
            None if a.raw => std::io::stdout().lock().write_all(&data)?,
            None => {
                println!(
                    "Device:{} log_id:{lid:#04x} namespace_id:{:#x} offset:{} length:{}",
                    a.dev.device, a.nsid, a.offset, a.len
                );
                fmt::hexdump(&data);
            }
        }
        Ok(())
    })
}

/// Options of `admin-passthru` and `io-passthru`.
#[derive(clap::Args, Debug, Clone)]
pub struct PassthruArgs {
    #[command(flatten)]
    dev: Dev,
    /// Opcode.
    #[arg(short = 'O', long = "opcode", value_parser = parse_u32)]
    opcode: u32,
    /// Namespace ID (CDW1).
    #[arg(short = 'n', long = "namespace-id", default_value = "0", value_parser = parse_u32)]
    nsid: u32,
    /// CDW2.
    #[arg(long = "cdw2", default_value = "0", value_parser = parse_u32)]
    cdw2: u32,
    /// CDW3.
    #[arg(long = "cdw3", default_value = "0", value_parser = parse_u32)]
    cdw3: u32,
    /// CDW10.
    #[arg(long = "cdw10", default_value = "0", value_parser = parse_u32)]
    cdw10: u32,
    /// CDW11.
    #[arg(long = "cdw11", default_value = "0", value_parser = parse_u32)]
    cdw11: u32,
    /// CDW12.
    #[arg(long = "cdw12", default_value = "0", value_parser = parse_u32)]
    cdw12: u32,
    /// CDW13.
    #[arg(long = "cdw13", default_value = "0", value_parser = parse_u32)]
    cdw13: u32,
    /// CDW14.
    #[arg(long = "cdw14", default_value = "0", value_parser = parse_u32)]
    cdw14: u32,
    /// CDW15.
    #[arg(long = "cdw15", default_value = "0", value_parser = parse_u32)]
    cdw15: u32,
    /// Data length in bytes. Optional for commands the driver knows (it derives the length
    /// from the command; a different value is refused); required with
    /// --unchecked-data-length.
    #[arg(short = 'l', long = "data-len", value_parser = parse_u32)]
    data_len: Option<u32>,
    /// The command reads data from the controller (default: from opcode bits 1:0).
    #[arg(short = 'r', long = "read", conflicts_with = "write")]
    read: bool,
    /// The command writes data to the controller (default: from opcode bits 1:0).
    #[arg(short = 'w', long = "write")]
    write: bool,
    /// The data to send (write direction); zeroes without it.
    #[arg(short = 'i', long = "input-file")]
    input: Option<PathBuf>,
    /// Print the data read as raw binary instead of a hex dump.
    #[arg(short = 'b', long = "raw-binary")]
    raw: bool,
    /// Timeout in milliseconds (admin commands; default the driver's admin timeout).
    #[arg(short = 't', long = "timeout")]
    timeout_ms: Option<u64>,
    /// RISK: for an opcode the driver does not know (vendor-specific), trust --data-len as
    /// the transfer length. If the command makes the device move more than --data-len bytes,
    /// the device follows PRP entries past the buffer and reads or corrupts host memory.
    #[arg(long = "unchecked-data-length")]
    unchecked: bool,
}

impl PassthruArgs {
    fn command(&self, opcode: u8) -> Command {
        let mut c = Command::new(opcode);
        c.set_nsid(self.nsid);
        for (i, v) in [
            (2, self.cdw2),
            (3, self.cdw3),
            (10, self.cdw10),
            (11, self.cdw11),
            (12, self.cdw12),
            (13, self.cdw13),
            (14, self.cdw14),
            (15, self.cdw15),
        ] {
            c.set_cdw(i, v);
        }
        c
    }
}

/// The transfer of a passthrough command: (bytes, controller-to-host).
fn plan(
    a: &PassthruArgs,
    derived: DataLength,
    lba_size: Option<u32>,
    name: &str,
) -> Result<(usize, bool)> {
    // Opcode bits 1:0 (NVMe Base 2.1 §3.3.3.1 "Common Command Format", Figure "Opcode for
    // Admin/NVM Commands"): 01b host to controller, 10b controller to host.
    let op = a.opcode as u8;
    let to_host = if a.read {
        true
    } else if a.write {
        false
    } else {
        op & 0b11 == 0b10
    };
    let derived = match derived {
        DataLength::None => Some(0),
        DataLength::Bytes(n) => Some(n),
        DataLength::Blocks(b) => match lba_size {
            Some(bs) => Some(b as usize * bs as usize),
            None => usage!("{name}: namespace {} is not active on this controller", a.nsid),
        },
        DataLength::Managed => usage!(
            "{name} (opcode {op:#04x}) hands memory to the controller or is owned by the driver (queue creation, Doorbell Buffer Config, Host Memory Buffer, Asynchronous Event Request): not through passthrough"
        ),
        DataLength::Unknown => None,
    };
    match (derived, a.unchecked, a.data_len) {
        (Some(n), false, Some(l)) if l as usize != n => usage!(
            "{name} (opcode {op:#04x}) transfers {n} bytes by its own fields; --data-len {l} disagrees (change the CDWs, or drop --data-len)"
        ),
        (Some(_), true, _) => usage!(
            "--unchecked-data-length is only for opcodes the driver does not know; {name} (opcode {op:#04x}) is known and its length is derived"
        ),
        (Some(n), false, _) => Ok((n, to_host)),
        (None, false, _) => usage!(
            "the driver does not know how much data opcode {op:#04x} moves; if you know it, pass --data-len N --unchecked-data-length (a wrong length lets the device read or overwrite host memory past the buffer)"
        ),
        (None, true, None) => usage!("--unchecked-data-length needs --data-len"),
        (None, true, Some(l)) => Ok((l as usize, to_host)),
    }
}

fn input(a: &PassthruArgs, len: usize) -> Result<Vec<u8>> {
    match &a.input {
        None => Ok(vec![0; len]),
        Some(p) => {
            let d = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            if d.len() < len {
                usage!(
                    "{} holds {} bytes; the command sends {len}",
                    p.display(),
                    d.len()
                );
            }
            Ok(d[..len].to_vec())
        }
    }
}

/// The command's data buffer: none for no data, else `len` bytes, filled from the input
/// (`--input-file`, or zeros) when the data goes to the device.
fn data_buffer<P: nvme_core::hw::Platform>(
    c: &nvme_core::Controller<P>,
    a: &PassthruArgs,
    len: usize,
    to_host: bool,
) -> Result<Option<nvme_core::DmaBuffer<P>>> {
    if len == 0 {
        return Ok(None);
    }
    let mut b = c.alloc_buffer(len)?;
    if !to_host {
        b.write(0, &input(a, len)?)?;
    }
    Ok(Some(b))
}

fn show(a: &PassthruArgs, dw0: u32, status: Status, data: Option<Vec<u8>>) -> Result<()> {
    if let Some(d) = data {
        if a.raw {
            std::io::stdout().lock().write_all(&d)?;
        } else {
            fmt::hexdump(&d);
        }
    }
    eprintln!("NVMe command result:{dw0:08x} status:{status}");
    if status.is_success() {
        Ok(())
    } else {
        Err(anyhow::Error::new(nvme_core::Error::Command {
            opcode: a.opcode as u8,
            opcode_name: "passthrough command",
            status,
            dw0,
        }))
    }
}

/// Runs `admin-passthru` (`io == false`) or `io-passthru`.
///
/// # Errors
/// Bad options (before anything is sent), transport failures, an error status (exit 4).
pub fn passthru(a: PassthruArgs, io: bool) -> Result<()> {
    let Ok(op) = u8::try_from(a.opcode) else {
        usage!("opcodes are 8 bits; {:#x} is not one", a.opcode)
    };
    if a.input.is_some() && a.read {
        usage!("--input-file is data to send; --read receives");
    }
    let cmd = a.command(op);
    with_controller!(&a.dev.device, a.dev.irq, |c| {
        if !io {
            let name = AdminOpcode(op).name().unwrap_or("admin command");
            let (len, to_host) = plan(&a, admin_data_length(&cmd), None, name)?;
            let buf = data_buffer(c, &a, len, to_host)?;
            let timeout = a.timeout_ms.map(Duration::from_millis);
            let (cpl, buf) = if a.unchecked {
                log::warn!(
                    "admin-passthru: opcode {op:#04x} with an unchecked data length of {len} bytes"
                );
                // SAFETY: the user asked for an unchecked transfer with
                // --unchecked-data-length, whose help states the risk; the buffer is exactly
                // --data-len bytes, the length they vouch for.
                unsafe { c.admin_passthrough_unchecked(cmd, buf, timeout)? }
            } else {
                c.admin_passthrough(cmd, buf, timeout)?
            };
            let data = buf.filter(|_| to_host).map(|b| b.to_vec());
            show(&a, cpl.dw0(), cpl.status(), data)
        } else {
            let name = NvmOpcode(op).name().unwrap_or("I/O command");
            let bs = c.namespace(a.nsid).ok().map(|n| n.lba_size());
            let (len, to_host) = plan(&a, io_data_length(&cmd), bs, name)?;
            let buf = data_buffer(c, &a, len, to_host)?;
            let mut qp = c.create_io_queue_pair(4)?;
            let r = if a.unchecked {
                log::warn!(
                    "io-passthru: opcode {op:#04x} with an unchecked data length of {len} bytes"
                );
                // SAFETY: as for admin-passthru: the user vouched for --data-len with
                // --unchecked-data-length; the buffer is exactly that long.
                unsafe { qp.passthrough_unchecked(cmd, buf) }
            } else {
                qp.passthrough(cmd, buf)
            };
            c.delete_io_queue_pair(qp)?;
            match r {
                Ok((dw0, buf)) => show(
                    &a,
                    dw0,
                    Status::SUCCESS,
                    buf.filter(|_| to_host).map(|b| b.to_vec()),
                ),
                Err(e) => match e.error {
                    nvme_core::Error::Command { status, dw0, .. } => show(&a, dw0, status, None),
                    other => Err(other.into()),
                },
            }
        }
    })
}

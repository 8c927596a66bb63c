//! `nbd-attach SOCKET /dev/nbdN`: attaches the Linux kernel's NBD client to an NBD server on
//! a Unix socket (the part of `nbd-client` the kernel needs): the fixed newstyle handshake
//! with `NBD_OPT_GO` in userspace (NBD protocol, "Fixed newstyle negotiation"), then the
//! size, block size, flags and socket handed to the kernel with the `NBD_SET_*` ioctls, and
//! `NBD_DO_IT`, which returns when the device is disconnected.
//!
//! `nbd-attach --disconnect /dev/nbdN` asks the kernel to send `NBD_CMD_DISC` and let go.
//!
//! Used by the hardware-in-the-loop guest to put a filesystem on `nvme-tool nbd`.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

/// `_IO(0xab, n)`: the kernel NBD ioctls (`include/uapi/linux/nbd.h`).
const fn nbd_ioctl(n: libc::c_ulong) -> libc::c_ulong {
    (0xab << 8) | n
}
const NBD_SET_SOCK: libc::c_ulong = nbd_ioctl(0);
const NBD_SET_BLKSIZE: libc::c_ulong = nbd_ioctl(1);
const NBD_DO_IT: libc::c_ulong = nbd_ioctl(3);
const NBD_CLEAR_SOCK: libc::c_ulong = nbd_ioctl(4);
const NBD_CLEAR_QUE: libc::c_ulong = nbd_ioctl(5);
const NBD_SET_SIZE_BLOCKS: libc::c_ulong = nbd_ioctl(7);
const NBD_DISCONNECT: libc::c_ulong = nbd_ioctl(8);
const NBD_SET_FLAGS: libc::c_ulong = nbd_ioctl(10);

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;

fn ioctl(fd: &std::fs::File, req: libc::c_ulong, arg: libc::c_ulong) -> Result<(), String> {
    // SAFETY: the NBD ioctls used here take an integer argument (a size, a flag word or a
    // file descriptor), never a pointer; `fd` is an open file for the call's duration.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if r < 0 {
        return Err(format!(
            "ioctl {req:#x}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The export's (size, transmission flags, minimum block size) after `NBD_OPT_GO`.
fn handshake(s: &mut UnixStream) -> Result<(u64, u16, u32), String> {
    let e = |e: std::io::Error| format!("handshake: {e}");
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).map_err(e)?;
    if &hello[..16] != b"NBDMAGICIHAVEOPT" || hello[17] & 1 == 0 {
        return Err("the server does not speak fixed newstyle NBD".into());
    }
    s.write_all(&3u32.to_be_bytes()).map_err(e)?;
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&OPT_GO.to_be_bytes());
    m.extend_from_slice(&8u32.to_be_bytes());
    m.extend_from_slice(&0u32.to_be_bytes()); // default export
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&3u16.to_be_bytes()); // NBD_INFO_BLOCK_SIZE
    s.write_all(&m).map_err(e)?;
    let (mut size, mut flags, mut min) = (None, 0u16, 512u32);
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).map_err(e)?;
        let magic = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
        let kind = u32::from_be_bytes(h[12..16].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(h[16..20].try_into().expect("4 bytes"));
        if magic != REPLY_MAGIC || len > 4096 {
            return Err("malformed option reply".into());
        }
        let mut d = vec![0u8; len as usize];
        s.read_exact(&mut d).map_err(e)?;
        match kind {
            REP_INFO if d.len() == 12 && d[..2] == [0, 0] => {
                size = Some(u64::from_be_bytes(d[2..10].try_into().expect("8 bytes")));
                flags = u16::from_be_bytes([d[10], d[11]]);
            }
            REP_INFO if d.len() == 14 && d[..2] == [0, 3] => {
                min = u32::from_be_bytes(d[2..6].try_into().expect("4 bytes"));
            }
            REP_INFO => {}
            REP_ACK => break,
            _ => {
                return Err(format!(
                    "NBD_OPT_GO refused ({kind:#x}): {}",
                    String::from_utf8_lossy(&d)
                ))
            }
        }
    }
    let size = size.ok_or("the server sent no NBD_INFO_EXPORT")?;
    Ok((size, flags, min))
}

fn attach(socket: &str, dev: &str) -> Result<(), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("{socket}: {e}"))?;
    let (size, flags, min) = handshake(&mut s)?;
    // The kernel's block size: the export's minimum, at least 512 (a sector).
    let bs = u64::from(min.max(512));
    let nbd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("{dev}: {e}"))?;
    ioctl(&nbd, NBD_SET_BLKSIZE, bs as libc::c_ulong)?;
    ioctl(&nbd, NBD_SET_SIZE_BLOCKS, (size / bs) as libc::c_ulong)?;
    ioctl(&nbd, NBD_SET_FLAGS, libc::c_ulong::from(flags))?;
    ioctl(&nbd, NBD_SET_SOCK, s.as_raw_fd() as libc::c_ulong)?;
    eprintln!("nbd-attach: {dev} attached to {socket}: {size} bytes, {bs}-byte blocks, flags {flags:#06x}");
    // Serves until NBD_DISCONNECT (or the server closes the socket).
    let r = ioctl(&nbd, NBD_DO_IT, 0);
    let _ = ioctl(&nbd, NBD_CLEAR_QUE, 0);
    let _ = ioctl(&nbd, NBD_CLEAR_SOCK, 0);
    eprintln!("nbd-attach: {dev} detached");
    r
}

fn disconnect(dev: &str) -> Result<(), String> {
    let nbd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("{dev}: {e}"))?;
    ioctl(&nbd, NBD_DISCONNECT, 0)?;
    let _ = ioctl(&nbd, NBD_CLEAR_SOCK, 0);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.as_slice() {
        [flag, dev] if flag == "--disconnect" => disconnect(dev),
        [socket, dev] => attach(socket, dev),
        _ => Err("usage: nbd-attach SOCKET /dev/nbdN | nbd-attach --disconnect /dev/nbdN".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nbd-attach: {e}");
            ExitCode::FAILURE
        }
    }
}

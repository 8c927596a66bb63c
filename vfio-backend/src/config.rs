//! PCI configuration space through the VFIO config region (index
//! `VFIO_PCI_CONFIG_REGION_INDEX` = 7), read and written with `pread`/`pwrite` on the device
//! fd at the region's offset. Every transfer is checked: errno and short counts become errors.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::error::VfioError;
use crate::sys;

/// Offset of the COMMAND register (PCI Local Bus 3.0 §6.2.2, PCIe Base §7.5.1.1.3).
pub const COMMAND: u64 = 0x04;
/// COMMAND bit 1: Memory Space Enable (the device answers accesses to its memory BARs).
pub const CMD_MEMORY_SPACE: u16 = 1 << 1;
/// COMMAND bit 2: Bus Master Enable (the device may issue DMA and MSI/MSI-X writes).
pub const CMD_BUS_MASTER: u16 = 1 << 2;
/// COMMAND bit 10: Interrupt Disable (no legacy INTx).
pub const CMD_INTX_DISABLE: u16 = 1 << 10;

/// Byte access to config space.
pub(crate) trait ConfigIo: Send + Sync {
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
}

/// The config region of a VFIO device fd.
#[derive(Debug)]
pub(crate) struct VfioConfig {
    pub(crate) device: Arc<OwnedFd>,
    /// Offset of the region in the device fd (`vfio_region_info.offset`).
    pub(crate) region_offset: u64,
    /// Size of the region (256 for conventional PCI, 4096 for PCIe).
    pub(crate) size: u64,
}

impl VfioConfig {
    fn check(&self, offset: u64, len: usize) -> io::Result<u64> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("outside the {}-byte config region", self.size),
            ));
        }
        Ok(self.region_offset + offset)
    }
}

impl ConfigIo for VfioConfig {
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let at = self.check(offset, buf.len())?;
        sys::pread_exact(self.device.as_fd(), buf, at)
    }
    fn write(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let at = self.check(offset, buf.len())?;
        sys::pwrite_all(self.device.as_fd(), buf, at)
    }
}

/// Reads a little-endian 16-bit config register.
pub(crate) fn read16(io: &dyn ConfigIo, addr: &str, offset: u64) -> Result<u16, VfioError> {
    let mut b = [0u8; 2];
    io.read(offset, &mut b)
        .map_err(|source| VfioError::Config {
            addr: addr.to_string(),
            op: "read",
            offset,
            len: 2,
            source,
        })?;
    Ok(u16::from_le_bytes(b))
}

/// Writes a little-endian 16-bit config register.
pub(crate) fn write16(io: &dyn ConfigIo, addr: &str, offset: u64, v: u16) -> Result<(), VfioError> {
    io.write(offset, &v.to_le_bytes())
        .map_err(|source| VfioError::Config {
            addr: addr.to_string(),
            op: "write",
            offset,
            len: 2,
            source,
        })
}

/// Read-modify-write of COMMAND: sets `set`, clears `clear`; returns the value read back.
/// A bit that does not stick is logged as a warning (VFIO virtualises part of COMMAND).
pub(crate) fn update_command(
    io: &dyn ConfigIo,
    addr: &str,
    set: u16,
    clear: u16,
) -> Result<u16, VfioError> {
    let old = read16(io, addr, COMMAND)?;
    let new = (old | set) & !clear;
    if new != old {
        write16(io, addr, COMMAND, new)?;
    }
    let back = read16(io, addr, COMMAND)?;
    if back & (set | clear) != new & (set | clear) {
        log::warn!("{addr}: PCI COMMAND wrote {new:#06x}, reads back {back:#06x}");
    }
    Ok(back)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// 256 bytes of config space in memory; optionally failing.
    #[derive(Debug, Default)]
    pub(crate) struct FakeConfig {
        pub(crate) bytes: Mutex<Vec<u8>>,
        pub(crate) fail: bool,
    }

    impl FakeConfig {
        pub(crate) fn new() -> Self {
            Self {
                bytes: Mutex::new(vec![0; 256]),
                fail: false,
            }
        }
    }

    impl ConfigIo for FakeConfig {
        fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            if self.fail {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let b = self.bytes.lock().unwrap();
            let o = offset as usize;
            buf.copy_from_slice(&b[o..o + buf.len()]);
            Ok(())
        }
        fn write(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
            if self.fail {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let mut b = self.bytes.lock().unwrap();
            let o = offset as usize;
            b[o..o + buf.len()].copy_from_slice(buf);
            Ok(())
        }
    }

    #[test]
    fn command_bits() {
        let c = FakeConfig::new();
        c.bytes.lock().unwrap()[4] = 0x03; // IO + memory
        let v = update_command(
            &c,
            "0000:00:04.0",
            CMD_MEMORY_SPACE | CMD_BUS_MASTER | CMD_INTX_DISABLE,
            0,
        )
        .unwrap();
        assert_eq!(v, 0x0407);
        assert_eq!(&c.bytes.lock().unwrap()[4..6], &[0x07, 0x04]);
        let v = update_command(&c, "0000:00:04.0", 0, CMD_BUS_MASTER).unwrap();
        assert_eq!(v, 0x0403);
    }

    #[test]
    fn errors_name_device_offset_and_errno() {
        let c = FakeConfig {
            fail: true,
            ..FakeConfig::new()
        };
        let e = update_command(&c, "0000:00:04.0", CMD_BUS_MASTER, 0).unwrap_err();
        let m = e.to_string();
        assert!(
            m.starts_with("0000:00:04.0: PCI config space read of 2 bytes at 0x4"),
            "{m}"
        );
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
    }
}

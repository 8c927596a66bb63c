//! PCI addresses in the form Linux uses in sysfs: `DDDD:BB:DD.F` (PCI Local Bus / PCIe Base
//! "Bus/Device/Function", with the PCI segment ("domain") in front).

use std::fmt;
use std::str::FromStr;

use crate::error::VfioError;

/// A PCI function address: segment (domain), bus, device, function.
///
/// Parsed from `DDDD:BB:DD.F` (as in `/sys/bus/pci/devices/`) or `BB:DD.F` (domain `0000`,
/// as `lspci` prints it). Displays in the long form, which is the sysfs name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    domain: u16,
    bus: u8,
    device: u8,
    function: u8,
}

impl PciAddress {
    /// Builds an address. `device` must be below 32 and `function` below 8 (PCIe Base §2.2.4.2
    /// "Routing IDs": 5-bit device, 3-bit function numbers); `None` otherwise.
    pub const fn new(domain: u16, bus: u8, device: u8, function: u8) -> Option<Self> {
        if device >= 32 || function >= 8 {
            return None;
        }
        Some(Self {
            domain,
            bus,
            device,
            function,
        })
    }

    /// Parses `DDDD:BB:DD.F` or `BB:DD.F` (hexadecimal digits, either case).
    ///
    /// # Errors
    /// [`VfioError::MalformedAddress`], whose message shows the expected form.
    pub fn parse(text: &str) -> Result<Self, VfioError> {
        let bad = |reason: &'static str| VfioError::MalformedAddress {
            given: text.to_string(),
            reason,
        };
        let trimmed = text.trim();
        let parts: Vec<&str> = trimmed.split(':').collect();
        let (domain, bus, devfn) = match parts.as_slice() {
            [d, b, df] => (Some(*d), *b, *df),
            [b, df] => (None, *b, *df),
            _ => return Err(bad("it needs two or three `:`-separated fields")),
        };
        let domain = match domain {
            Some(d) => hex_field(d, 4).ok_or_else(|| bad("the domain must be 4 hex digits"))?,
            None => 0,
        };
        let bus = hex_field(bus, 2).ok_or_else(|| bad("the bus must be 2 hex digits"))?;
        let (dev, func) = devfn
            .split_once('.')
            .ok_or_else(|| bad("device and function must be separated by `.`"))?;
        let device = hex_field(dev, 2).ok_or_else(|| bad("the device must be 2 hex digits"))?;
        let function = hex_field(func, 1).ok_or_else(|| bad("the function must be 1 hex digit"))?;
        let device = u8::try_from(device).map_err(|_| bad("the device must be below 0x20"))?;
        let function = u8::try_from(function).map_err(|_| bad("the function must be below 8"))?;
        Self::new(
            domain,
            u8::try_from(bus).map_err(|_| bad("the bus must be 2 hex digits"))?,
            device,
            function,
        )
        .ok_or_else(|| bad("the device must be below 0x20 and the function below 8"))
    }

    /// The PCI segment (domain).
    pub const fn domain(&self) -> u16 {
        self.domain
    }
    /// The bus number.
    pub const fn bus(&self) -> u8 {
        self.bus
    }
    /// The device number (0..32).
    pub const fn device(&self) -> u8 {
        self.device
    }
    /// The function number (0..8).
    pub const fn function(&self) -> u8 {
        self.function
    }
}

/// Exactly `width` hex digits.
fn hex_field(s: &str, width: usize) -> Option<u16> {
    if s.len() != width || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(s, 16).ok()
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl FromStr for PciAddress {
    type Err = VfioError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_and_short_forms() {
        let a = PciAddress::parse("0000:03:00.0").unwrap();
        assert_eq!(
            (a.domain(), a.bus(), a.device(), a.function()),
            (0, 3, 0, 0)
        );
        assert_eq!(a.to_string(), "0000:03:00.0");
        let b = PciAddress::parse("3:00.0");
        assert!(b.is_err());
        let c = PciAddress::parse("0a:1F.7").unwrap();
        assert_eq!(c.to_string(), "0000:0a:1f.7");
        let d: PciAddress = "10de:ff:1f.7".parse().unwrap();
        assert_eq!(d.domain(), 0x10de);
    }

    #[test]
    fn rejects_malformed_with_expected_form() {
        for bad in [
            "",
            "nvme0",
            "0000:03:00",
            "0000:03:20.0",
            "0000:03:00.8",
            "00000:03:00.0",
            "0000:3:00.0",
            "0000:03:00.0.1",
            "g000:03:00.0",
            "1:2:3:4",
        ] {
            let e = PciAddress::parse(bad).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("DDDD:BB:DD.F"), "{bad}: {msg}");
            assert!(msg.contains(&format!("`{bad}`")), "{bad}: {msg}");
        }
    }
}

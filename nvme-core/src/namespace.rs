//! Namespaces (NVM Command Set §4.1.5.1).

use crate::error::{Error, Result};
use crate::spec::IdentifyNamespace;

/// An active namespace and its format (NVM Command Set §4.1.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace ID.
    pub nsid: u32,
    /// NSZE, size in logical blocks.
    pub blocks: u64,
    /// NCAP, capacity in logical blocks.
    pub capacity: u64,
    /// LBA data size in bytes.
    pub lba_size: u32,
    /// Metadata bytes per LBA.
    pub metadata_size: u16,
    /// The full Identify Namespace data.
    pub identify: IdentifyNamespace,
}

impl Namespace {
    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.lba_size as u64)
    }
    pub(crate) fn from_identify(nsid: u32, id: IdentifyNamespace) -> Result<Self> {
        let lba_size = id.lba_size().ok_or(Error::DeviceProtocol(
            "Identify Namespace names an LBA format with LBADS below 9",
        ))?;
        Ok(Self {
            nsid,
            blocks: id.nsze,
            capacity: id.ncap,
            lba_size,
            metadata_size: id.current_format().ms,
            identify: id,
        })
    }
}

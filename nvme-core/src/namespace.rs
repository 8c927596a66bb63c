//! Namespace handles (NVM Command Set §4.1.5.1).

use crate::error::{Error, Result};
use crate::shared::NsFormat;
use crate::spec::IdentifyNamespace;

/// A handle to an active namespace of one controller, with its format.
///
/// Handles come from [`crate::Controller::namespace`] and cannot be built by hand: the I/O
/// API derives every transfer length from the handle's LBA size, so a handle with a wrong
/// size could make the device write past a buffer. A handle is tied to the controller that
/// gave it and to the namespaces' current state: after Format NVM, a namespace management
/// command or a controller reset it is refused with [`Error::StaleNamespace`] (take a fresh
/// one), and on another controller with [`Error::ForeignObject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    nsid: u32,
    blocks: u64,
    capacity: u64,
    lba_size: u32,
    metadata_size: u16,
    extended: bool,
    identify: IdentifyNamespace,
    owner: usize,
    epoch: u32,
}

impl Namespace {
    /// Namespace ID.
    pub fn nsid(&self) -> u32 {
        self.nsid
    }
    /// NSZE, size in logical blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }
    /// NCAP, capacity in logical blocks.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
    /// LBA data size in bytes.
    pub fn lba_size(&self) -> u32 {
        self.lba_size
    }
    /// Metadata bytes per LBA.
    pub fn metadata_size(&self) -> u16 {
        self.metadata_size
    }
    /// The full Identify Namespace data.
    pub fn identify(&self) -> &IdentifyNamespace {
        &self.identify
    }
    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.lba_size as u64)
    }
    /// Bytes the host transfers per logical block through the data pointer: the LBA size,
    /// plus the metadata when it is interleaved with the data (extended LBA, FLBAS bit 4).
    pub fn bytes_per_block(&self) -> u32 {
        self.lba_size
            + if self.extended {
                self.metadata_size as u32
            } else {
                0
            }
    }
    pub(crate) fn from_identify(
        nsid: u32,
        id: IdentifyNamespace,
        owner: usize,
        epoch: u32,
    ) -> Result<Self> {
        let lba_size = id.lba_size().ok_or(Error::DeviceProtocol(
            "Identify Namespace names an LBA format with LBADS below 9",
        ))?;
        Ok(Self {
            nsid,
            blocks: id.nsze,
            capacity: id.ncap,
            lba_size,
            metadata_size: id.current_format().ms,
            // NVM Command Set §4.1.5.1, FLBAS bit 4: metadata transferred at the end of each
            // logical block (extended LBA) rather than in a separate buffer.
            extended: id.flbas & 0x10 != 0,
            identify: id,
            owner,
            epoch,
        })
    }
    pub(crate) fn format(&self) -> NsFormat {
        NsFormat {
            nsid: self.nsid,
            blocks: self.blocks,
            bytes_per_block: self.bytes_per_block(),
        }
    }
    /// The controller identity and namespace epoch the handle was taken in.
    pub(crate) fn origin(&self) -> (usize, u32) {
        (self.owner, self.epoch)
    }
}

//! Backends the suite runs on. A backend opens a fresh platform for each case, so that no case
//! depends on another's leftovers, and reports the host protocol violations it saw (only the
//! simulator can see them).

use std::sync::{Arc, Mutex};

use nvme_core::hw::Platform;
use nvme_core::spec::IdentifyController;
use sim_backend::{SimConfig, SimPlatform, Simulator};
use vfio_backend::{IrqMode, VfioOptions, VfioPlatform};

/// Which controller implementation is on the other side, for the allowance table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// This project's simulator.
    Sim,
    /// QEMU's emulated NVMe controller (PCI 1b36:0010).
    Qemu,
    /// Anything else: a real SSD.
    Device,
}

impl Peer {
    /// Recognises the peer from Identify Controller.
    pub fn detect(id: &IdentifyController, is_sim: bool) -> Self {
        if is_sim {
            Peer::Sim
        } else if id.vid == 0x1b36 && id.mn.as_str().starts_with("QEMU") {
            Peer::Qemu
        } else {
            Peer::Device
        }
    }
}

/// What the suite needs from a place to run cases.
pub trait Backend {
    /// The platform the driver runs on.
    type P: Platform;
    /// A short name for reports (`sim`, `vfio:0000:00:04.0/msix`).
    fn name(&self) -> String;
    /// Opens a fresh platform for one case.
    ///
    /// # Errors
    /// The backend cannot be opened (the message says why and how to fix it).
    fn open(&self) -> anyhow::Result<Arc<Self::P>>;
    /// Whether the driver should use MSI-X (true) or poll.
    fn interrupts(&self) -> bool;
    /// True for the simulator.
    fn is_sim(&self) -> bool;
    /// Host protocol violations seen since the last [`Backend::open`] (simulator only).
    fn violations(&self) -> Vec<String> {
        Vec::new()
    }
    /// Forgets the violations seen so far (after a case that makes them on purpose).
    fn clear_violations(&self) {}
    /// The simulator handle of the current case, if this is the simulator.
    fn simulator(&self) -> Option<Simulator> {
        None
    }
}

/// The simulator, in strict mode.
#[derive(Debug)]
pub struct SimBackend {
    config: SimConfig,
    interrupts: bool,
    current: Mutex<Option<Simulator>>,
    label: &'static str,
}

impl SimBackend {
    /// A simulator with `config`, driven with interrupts or polled.
    pub fn new(config: SimConfig, interrupts: bool, label: &'static str) -> Self {
        Self {
            config,
            interrupts,
            current: Mutex::new(None),
            label,
        }
    }
}

impl Backend for SimBackend {
    type P = SimPlatform;
    fn name(&self) -> String {
        format!("sim/{}", self.label)
    }
    fn open(&self) -> anyhow::Result<Arc<SimPlatform>> {
        let sim = Simulator::new(self.config.clone())?;
        let p = sim.platform();
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(sim);
        Ok(p)
    }
    fn interrupts(&self) -> bool {
        self.interrupts
    }
    fn is_sim(&self) -> bool {
        true
    }
    fn violations(&self) -> Vec<String> {
        match &*self.current.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(s) => s.violations().iter().map(|v| format!("{v:?}")).collect(),
            None => Vec::new(),
        }
    }
    fn clear_violations(&self) {
        if let Some(s) = &*self.current.lock().unwrap_or_else(|e| e.into_inner()) {
            s.clear_violations();
        }
    }
    fn simulator(&self) -> Option<Simulator> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A controller bound to `vfio-pci`, given by PCI address.
#[derive(Debug)]
pub struct VfioBackend {
    addr: String,
    interrupts: bool,
}

impl VfioBackend {
    /// The device at `addr`, with MSI-X (`interrupts`) or polled.
    pub fn new(addr: &str, interrupts: bool) -> Self {
        Self {
            addr: addr.to_string(),
            interrupts,
        }
    }
}

impl Backend for VfioBackend {
    type P = VfioPlatform;
    fn name(&self) -> String {
        format!(
            "vfio:{}/{}",
            self.addr,
            if self.interrupts { "msix" } else { "polled" }
        )
    }
    fn open(&self) -> anyhow::Result<Arc<VfioPlatform>> {
        let opts = VfioOptions {
            interrupts: if self.interrupts {
                IrqMode::Msix
            } else {
                IrqMode::Polled
            },
            ..VfioOptions::default()
        };
        Ok(VfioPlatform::open(&self.addr, &opts)?)
    }
    fn interrupts(&self) -> bool {
        self.interrupts
    }
    fn is_sim(&self) -> bool {
        false
    }
}

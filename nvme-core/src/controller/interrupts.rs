//! Interrupt coalescing and per-vector configuration (NVMe Base §5.27.1.8 and §5.27.1.9;
//! the policy is in [`crate::interrupts`]).

use super::*;
use crate::interrupts::{vector_config_dword, InterruptCoalescing, InterruptCounts};

impl<P: Platform> Controller<P> {
    /// Sends the configured Interrupt Coalescing (feature 08h) when MSI-X is in use. A
    /// refusal by status is recorded, not fatal: the controller then interrupts per
    /// completion.
    ///
    /// # Errors
    /// Transport failures (no completion).
    pub(super) fn apply_interrupt_coalescing(&mut self) -> Result<()> {
        self.stats.coalescing_refused = None;
        let Some(c) = self.config.interrupt_coalescing else {
            return Ok(());
        };
        if self.vectors() == 0 {
            return Ok(());
        }
        match self.set_features(FeatureId::INTERRUPT_COALESCING, c.to_dword(), false) {
            Ok(_) => Ok(()),
            Err(Error::Command { status, .. }) => {
                self.stats.coalescing_refused = Some(status);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Reads Interrupt Coalescing (Get Features 08h, current value).
    ///
    /// # Errors
    /// [`Error::Command`] and transport failures.
    pub fn interrupt_coalescing(&mut self) -> Result<InterruptCoalescing> {
        let dw0 = self.get_features(FeatureId::INTERRUPT_COALESCING, select::CURRENT, 0)?;
        Ok(InterruptCoalescing::from_dword(dw0))
    }

    /// Turns coalescing on or off for one MSI-X vector (Set Features Interrupt Vector
    /// Configuration, 09h, with Coalescing Disable = `!coalescing`): for a queue pair whose
    /// latency matters more than its interrupt rate ([`IoQueuePair::vector`]).
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// let qp = ctrl.create_io_queue_pair(16)?;
    /// // A latency-sensitive pair: its vector opts out of interrupt coalescing (feature 09h).
    /// ctrl.set_vector_coalescing(qp.vector().unwrap(), false)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a vector not in use; [`Error::Command`] (a controller
    /// may refuse the feature) and transport failures.
    pub fn set_vector_coalescing(&mut self, vector: u16, coalescing: bool) -> Result<()> {
        if vector >= self.vectors() {
            return Err(Error::InvalidArgument("no such MSI-X vector in use"));
        }
        self.set_features(
            FeatureId::INTERRUPT_VECTOR_CONFIG,
            vector_config_dword(vector, coalescing),
            false,
        )
        .map(|_| ())
    }

    /// The platform's interrupt counters ([`crate::hw::InterruptSource::counts`]), `None`
    /// if it keeps none. Take one reading before and one after a run and use
    /// [`InterruptCounts::since`].
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// let before = ctrl.interrupt_counts();
    /// // ... I/O ...
    /// if let (Some(a), Some(b)) = (ctrl.interrupt_counts(), before) {
    ///     println!("{} interrupts signalled", a.since(b).fired);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn interrupt_counts(&self) -> Option<InterruptCounts> {
        self.shared.platform.irq().counts()
    }
}

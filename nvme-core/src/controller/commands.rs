//! Typed admin commands: Identify, features, log pages, Abort, asynchronous events, Format NVM.

use super::*;

impl<P: Platform> Controller<P> {
    /// Identify (§5.1.13) with any CNS; returns the 4096-byte page.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// // Identify CNS 02h: the active namespace ID list from NSID 0, as raw bytes.
    /// let raw = ctrl.identify_raw(0x02, 0)?;
    /// assert_eq!(u32::from_le_bytes(raw[..4].try_into()?), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Command`] with the controller's status.
    pub fn identify_raw(&mut self, cns: u8, nsid: u32) -> Result<Vec<u8>> {
        let cmd = Command::identify(cns, nsid, 0, 0);
        let c = self.admin_scratch(cmd, IDENTIFY_LEN, None, self.config.admin_timeout)?;
        Self::check_status(cmd.opcode(), &c)?;
        Ok(self.scratch_bytes(IDENTIFY_LEN))
    }

    /// Identify Controller (CNS 01h), read again from the device.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// let id = ctrl.identify_controller()?;
    /// println!("vendor {:04x}, MDTS {}, {} namespaces", id.vid, id.mdts, id.nn);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Command failures.
    pub fn identify_controller(&mut self) -> Result<IdentifyController> {
        Ok(IdentifyController::parse(
            &self.identify_raw(cns::CONTROLLER, 0)?,
        )?)
    }

    /// Identify Namespace (CNS 00h).
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// let id = ctrl.identify_namespace(1)?;
    /// assert_eq!(id.nsze, ctrl.namespace(1)?.blocks());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Command failures.
    pub fn identify_namespace(&mut self, nsid: u32) -> Result<IdentifyNamespace> {
        Ok(IdentifyNamespace::parse(
            &self.identify_raw(cns::NAMESPACE, nsid)?,
        )?)
    }

    /// Active namespace IDs (CNS 02h) greater than `start`.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// assert_eq!(ctrl.active_namespace_ids(0)?, vec![1, 2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Command failures.
    pub fn active_namespace_ids(&mut self, start: u32) -> Result<Vec<u32>> {
        Ok(
            NamespaceList::parse(&self.identify_raw(cns::ACTIVE_NS_LIST, start)?)
                .ids()
                .to_vec(),
        )
    }

    /// Get Features (§5.1.11); returns completion DW0.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// use nvme_core::spec::FeatureId;
    /// // Number of Queues, current value (SEL 0): NSQA and NCQA, 0's based.
    /// let nq = ctrl.get_features(FeatureId::NUMBER_OF_QUEUES, 0, 0)?;
    /// assert!((nq & 0xFFFF) + 1 >= u32::from(ctrl.granted_queue_pairs()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Command`].
    pub fn get_features(&mut self, fid: FeatureId, sel: u8, cdw11: u32) -> Result<u32> {
        let cmd = Command::get_features(fid.0, sel, 0, cdw11);
        let c = self.admin_no_data(cmd)?;
        Self::check_status(cmd.opcode(), &c)
    }

    /// Get Features, current value (SEL 000b).
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// use nvme_core::spec::FeatureId;
    /// let vwc = ctrl.get_feature(FeatureId::VOLATILE_WRITE_CACHE)?;
    /// println!("volatile write cache {}", if vwc & 1 == 1 { "on" } else { "off" });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Command`].
    pub fn get_feature(&mut self, fid: FeatureId) -> Result<u32> {
        self.get_features(fid, select::CURRENT, 0)
    }

    /// Set Features (§5.1.25); returns completion DW0.
    ///
    /// Number of Queues may only be set once, before I/O queues exist (§5.1.25.2.1); the
    /// controller already did that at bring-up, so it is refused here with the spec's reason.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// use nvme_core::spec::FeatureId;
    /// ctrl.set_features(FeatureId::VOLATILE_WRITE_CACHE, 0, false)?; // write through
    /// assert_eq!(ctrl.get_feature(FeatureId::VOLATILE_WRITE_CACHE)? & 1, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Command`].
    pub fn set_features(&mut self, fid: FeatureId, value: u32, save: bool) -> Result<u32> {
        let cmd = Command::set_features(fid.0, save, 0, value);
        let c = self.admin_no_data(cmd)?;
        Self::check_status(cmd.opcode(), &c)
    }

    /// Get Log Page (§5.1.12): `len` bytes (a multiple of 4, at most 64 KiB) from byte
    /// `offset` of log `lid`.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// // The first 64 bytes of the SMART / Health Information log (LID 02h).
    /// let bytes = ctrl.get_log_page(0x02, 0xFFFF_FFFF, 0, 64, false)?;
    /// assert_eq!(bytes.len(), 64);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a length not a multiple of 4; [`Error::Command`].
    pub fn get_log_page(
        &mut self,
        lid: u8,
        nsid: u32,
        offset: u64,
        len: usize,
        rae: bool,
    ) -> Result<Vec<u8>> {
        if len == 0 || len % 4 != 0 || offset % 4 != 0 {
            return Err(Error::InvalidArgument(
                "log page length and offset must be non-zero multiples of 4",
            ));
        }
        let cmd = Command::get_log_page(lid, nsid, (len / 4) as u32, offset, 0, rae);
        let c = self.admin_scratch(cmd, len, None, self.config.admin_timeout)?;
        Self::check_status(cmd.opcode(), &c)?;
        Ok(self.scratch_bytes(len))
    }

    /// SMART / Health Information (log 02h) for the whole controller.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// let smart = ctrl.smart_log()?;
    /// println!("{} K, {}% spare", smart.composite_temperature, smart.available_spare);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Command failures.
    pub fn smart_log(&mut self) -> Result<SmartLog> {
        Ok(SmartLog::parse(&self.get_log_page(
            lid::SMART,
            0xFFFF_FFFF,
            0,
            SmartLog::LEN,
            false,
        )?)?)
    }

    /// The Error Information log (01h): up to `entries` entries (at most ELPE + 1).
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// for e in ctrl.error_log(16)? {
    ///     println!("{e:?}");
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Command failures.
    pub fn error_log(&mut self, entries: usize) -> Result<Vec<ErrorLogEntry>> {
        let n = entries
            .clamp(1, self.identify.elpe as usize + 1)
            .min(SCRATCH_LEN / ErrorLogEntry::LEN);
        let bytes = self.get_log_page(lid::ERROR_INFO, 0, 0, n * ErrorLogEntry::LEN, false)?;
        Ok(bytes
            .chunks_exact(ErrorLogEntry::LEN)
            .map(ErrorLogEntry::parse)
            .filter(|e| e.error_count != 0)
            .collect())
    }

    /// Firmware Slot Information (log 03h).
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// let fw = ctrl.firmware_slot_log()?;
    /// println!("{fw:?}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Command failures.
    pub fn firmware_slot_log(&mut self) -> Result<FirmwareSlotLog> {
        Ok(FirmwareSlotLog::parse(&self.get_log_page(
            lid::FIRMWARE_SLOT,
            0,
            0,
            FirmwareSlotLog::LEN,
            false,
        )?)?)
    }

    /// Abort (§5.1.1) command `cid` on SQ `sqid`. Returns `true` if the controller reports
    /// the command aborted (DW0 bit 0 cleared), `false` if it was not.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// let ns = ctrl.namespace(1)?.clone();
    /// let mut qp = ctrl.create_io_queue_pair(16)?;
    /// let cid = qp.submit_read(&ns, 0, ctrl.alloc_buffer(512)?, 0).map_err(|e| e.error)?;
    /// qp.ring();
    /// // The simulator completes at the doorbell: nothing is left to abort.
    /// let aborted = ctrl.abort(qp.qid(), cid)?;
    /// assert!(!aborted);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Command`] (for example Abort Command Limit Exceeded).
    pub fn abort(&mut self, sqid: u16, cid: u16) -> Result<bool> {
        let cmd = Command::abort(sqid, cid);
        let c = self.admin_no_data(cmd)?;
        let dw0 = Self::check_status(cmd.opcode(), &c)?;
        Ok(dw0 & 1 == 0)
    }

    /// Posts one Asynchronous Event Request (§5.1.2). Its completion arrives whenever an
    /// event occurs; collect events with [`Controller::take_async_event`]. Returns the
    /// command's CID (to name it in an Abort).
    ///
    /// # Errors
    /// [`Error::QueueFull`] if the admin queue has no slot.
    pub fn post_aer(&mut self) -> Result<u16> {
        self.check_usable()?;
        let p = self.shared.platform.clone();
        let cid = self
            .admin
            .submit(
                Command::async_event_request(),
                None,
                AdminReq::Aer,
                Some(u64::MAX),
            )
            .map_err(|(e, _)| e)?;
        self.admin.ring(p.bar());
        self.aers_outstanding += 1;
        Ok(cid)
    }

    /// Asynchronous Event Requests outstanding.
    pub fn aers_outstanding(&self) -> u8 {
        self.aers_outstanding
    }

    /// The oldest asynchronous event received and not yet taken (processes pending admin
    /// completions first).
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// // Events the controller reported are queued until taken.
    /// while let Some(ev) = ctrl.take_async_event() {
    ///     println!("event type {} info {:#x}, log page {:#x}", ev.event_type, ev.info, ev.log_page);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn take_async_event(&mut self) -> Option<AsyncEvent> {
        self.process_admin_completions();
        self.events.pop_front()
    }

    /// Waits up to `timeout` for an asynchronous event.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// use std::time::Duration;
    /// // Nothing happens on an idle simulator: the wait ends at its timeout.
    /// assert!(ctrl.wait_async_event(Duration::from_millis(10)).is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_async_event(&mut self, timeout: Duration) -> Option<AsyncEvent> {
        let p = self.shared.platform.clone();
        let deadline = Deadline::after(p.clock(), timeout);
        loop {
            if let Some(e) = self.take_async_event() {
                return Some(e);
            }
            if deadline.expired(p.clock()) {
                return None;
            }
            if self.vectors() > 0 {
                p.irq().wait(
                    0,
                    deadline.remaining(p.clock()).min(Duration::from_millis(10)),
                );
            } else {
                p.clock().relax();
            }
        }
    }

    /// Format NVM (§5.1.10 / NVM Command Set §5.1.x): LBA format `lbaf`, secure erase
    /// setting `ses`; then re-reads the namespaces. Every [`Namespace`] handle taken before
    /// becomes stale ([`Error::StaleNamespace`]).
    ///
    /// The LBA size decides how many bytes a Read or Write transfers, so Format NVM is
    /// refused while I/O queues exist: a command in flight was sized for the old format and
    /// the device would transfer by the new one. Delete the queue pairs first.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// // Namespace 1 to LBA format 0, no secure erase; no I/O queue may exist meanwhile.
    /// ctrl.format_nvm(1, 0, 0)?;
    /// let ns = ctrl.namespace(1)?; // handles taken before are stale now
    /// assert_eq!(ns.lba_size(), 512);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Unsupported`] if OACS lacks Format NVM; [`Error::InvalidArgument`] while I/O
    /// queues exist; [`Error::Command`].
    pub fn format_nvm(&mut self, nsid: u32, lbaf: u8, ses: u8) -> Result<()> {
        if self.identify.oacs & oacs::FORMAT_NVM == 0 {
            return Err(Error::Unsupported("Format NVM (OACS bit 1 is clear)"));
        }
        self.namespaces_may_change()?;
        let cmd = Command::format_nvm(nsid, lbaf, ses);
        let c = self
            .admin_wait(cmd, None, AdminReq::NoData, self.config.format_timeout)?
            .0;
        Self::check_status(cmd.opcode(), &c)?;
        self.rescan_namespaces()
    }
}

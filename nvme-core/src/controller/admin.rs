//! The admin queue (NVMe Base §3.3.1, §5): submission, waiting, the scratch page, passthrough.

use super::*;

pub(super) enum AdminReq<P: Platform> {
    /// A command whose data, if any, is the controller's scratch page.
    Scratch,
    /// A command with a caller's buffer.
    Buffer(DmaBuffer<P>),
    /// No data.
    NoData,
    /// An Asynchronous Event Request.
    Aer,
}

impl<P: Platform> core::fmt::Debug for AdminReq<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            AdminReq::Scratch => "Scratch",
            AdminReq::Buffer(_) => "Buffer",
            AdminReq::NoData => "NoData",
            AdminReq::Aer => "Aer",
        })
    }
}

impl<P: Platform> Controller<P> {
    // ---- the admin queue ----

    pub(super) fn check_usable(&self) -> Result<()> {
        if self.shut_down {
            return Err(Error::NeedsReset("the controller was shut down"));
        }
        if let Some(why) = self.needs_reset {
            return Err(Error::NeedsReset(why));
        }
        Ok(())
    }

    pub(super) fn handle_other(
        r: Reaped<AdminReq<P>>,
        events: &mut VecDeque<AsyncEvent>,
        aers: &mut u8,
        scratch_busy: &mut bool,
        stats: &mut ControllerStats,
    ) {
        match r.payload {
            AdminReq::Aer => {
                *aers = aers.saturating_sub(1);
                if r.completion.status().is_success() {
                    if events.len() == MAX_EVENTS {
                        events.pop_front();
                    }
                    events.push_back(AsyncEvent::from_dw0(r.completion.dw0()));
                    stats.async_events += 1;
                } else {
                    // Refused (AER Limit Exceeded, §5.1.2) or aborted: no event.
                    stats.aer_failures += 1;
                    stats.last_aer_failure = Some(r.completion.status());
                }
            }
            AdminReq::Scratch if r.late => *scratch_busy = false,
            // A late completion's buffer is freed here: the device is done with it.
            AdminReq::Buffer(_) | AdminReq::Scratch | AdminReq::NoData => {}
        }
    }

    /// Processes admin completions that arrived (asynchronous events, late completions)
    /// without waiting, and re-posts an Asynchronous Event Request for each one that
    /// completed with an event (§5.1.2: each request reports at most one event). Returns how
    /// many entries were consumed.
    pub fn process_admin_completions(&mut self) -> usize {
        let bar = self.shared.platform.bar();
        let refused_before = self.stats.aer_failures;
        let (events, aers, busy, stats) = (
            &mut self.events,
            &mut self.aers_outstanding,
            &mut self.scratch_busy,
            &mut self.stats,
        );
        let n = self.admin.reap(bar, usize::MAX, |r| {
            Self::handle_other(r, events, aers, busy, stats)
        });
        if self.stats.aer_failures != refused_before {
            // Refused (AER Limit Exceeded) or aborted: re-posting could storm.
            self.aer_refused = true;
        }
        self.repost_aers();
        n
    }

    /// Keeps [`ControllerConfig::async_events`] requests outstanding.
    pub(super) fn repost_aers(&mut self) {
        while !self.aer_refused
            && self.aers_outstanding < self.aers_wanted
            && self.check_usable().is_ok()
            && self.admin.has_free_slot()
        {
            if self.post_aer().is_err() {
                break;
            }
        }
    }

    /// Reads CSTS: all-ones (device gone) and CSTS.CFS fail, and leave the controller
    /// needing a reset (§3.1.4.6, §9.5).
    fn check_csts(&mut self) -> Result<()> {
        let csts = Csts(self.shared.platform.bar().read32(offset::CSTS));
        if csts.is_all_ones() {
            self.needs_reset = Some("the device is gone");
            return Err(Error::DeviceGone);
        }
        if csts.cfs() {
            self.needs_reset = Some("Controller Fatal Status");
            return Err(Error::ControllerFatal);
        }
        Ok(())
    }

    /// Submits an admin command and waits for its completion. Any status is returned; only
    /// transport failures (timeout, device gone) are errors.
    pub(super) fn admin_wait(
        &mut self,
        cmd: Command,
        data: Option<Transfer>,
        payload: AdminReq<P>,
        timeout: Duration,
    ) -> Result<(Completion, AdminReq<P>)> {
        self.check_usable()?;
        let p = self.shared.platform.clone();
        // One register read per admin command (never on the I/O path): a removed or fatal
        // controller fails the command here instead of receiving a doorbell it cannot serve.
        self.check_csts()?;
        let deadline_ns = p
            .clock()
            .now_ns()
            .saturating_add(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX));
        let opcode = cmd.opcode();
        let cid = match self.admin.submit(cmd, data, payload, Some(deadline_ns)) {
            Ok(cid) => cid,
            Err((e, _payload)) => return Err(e),
        };
        self.admin.ring(p.bar());
        let mut spins: u32 = 0;
        loop {
            let mut done = None;
            {
                let (events, aers, busy, stats) = (
                    &mut self.events,
                    &mut self.aers_outstanding,
                    &mut self.scratch_busy,
                    &mut self.stats,
                );
                self.admin.reap(p.bar(), usize::MAX, |r| {
                    if r.cid == cid && !r.late {
                        done = Some((r.completion, r.payload));
                    } else {
                        Self::handle_other(r, events, aers, busy, stats)
                    }
                });
            }
            if let Some(d) = done {
                return Ok(d);
            }
            spins = spins.wrapping_add(1);
            if spins % 64 == 0 {
                self.check_csts()?;
            }
            let now = p.clock().now_ns();
            if now >= deadline_ns {
                let mut scratch = false;
                self.admin.expire(now, None, |e| {
                    if let Expiry::Timeout {
                        cid: c, payload, ..
                    } = e
                    {
                        if c == cid && matches!(payload, AdminReq::Scratch) {
                            scratch = true;
                        }
                    }
                });
                if scratch {
                    self.scratch_busy = true;
                }
                // §3.7: a command that never completes leaves the controller in an unknown
                // state; further admin commands wait for a reset.
                self.needs_reset = Some("an admin command timed out");
                return Err(Error::Timeout {
                    qid: 0,
                    cid,
                    opcode,
                    waited_ms: ms(timeout),
                });
            }
            if self.vectors() > 0 {
                let left = Duration::from_nanos(deadline_ns - now).min(Duration::from_millis(10));
                p.irq().wait(0, left);
            } else {
                p.clock().relax();
            }
        }
    }

    pub(super) fn check_status(opcode: u8, c: &Completion) -> Result<u32> {
        if c.status().is_success() {
            Ok(c.dw0())
        } else {
            Err(Error::Command {
                opcode,
                opcode_name: AdminOpcode(opcode).name().unwrap_or("admin command"),
                status: c.status(),
                dw0: c.dw0(),
            })
        }
    }

    /// Runs an admin command with up to 64 KiB of data in the scratch buffer and returns
    /// its completion (any status).
    pub(super) fn admin_scratch(
        &mut self,
        cmd: Command,
        len: usize,
        to_device: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Completion> {
        if self.scratch_busy {
            return Err(Error::NeedsReset(
                "a timed-out admin command still owns the scratch buffer",
            ));
        }
        if len > SCRATCH_LEN {
            return Err(Error::TransferTooLarge {
                bytes: len as u64,
                max: SCRATCH_LEN as u64,
            });
        }
        if len == 0 {
            return self
                .admin_wait(cmd, None, AdminReq::NoData, timeout)
                .map(|(c, _)| c);
        }
        self.scratch.fill(0, SCRATCH_LEN, 0);
        if let Some(src) = to_device {
            self.scratch.copy_in(0, &src[..src.len().min(len)]);
        }
        let t = Transfer {
            mem: self.scratch,
            offset: 0,
            len,
        };
        self.admin_wait(cmd, Some(t), AdminReq::Scratch, timeout)
            .map(|(c, _)| c)
    }

    pub(super) fn scratch_bytes(&self, len: usize) -> Vec<u8> {
        let mut v = alloc::vec![0u8; len.min(SCRATCH_LEN)];
        self.scratch.copy_out(0, &mut v);
        v
    }

    /// Runs any admin command and returns its completion, whatever the status (raw
    /// passthrough, like `nvme admin-passthru`). `buffer` is the data buffer and comes back
    /// with the completion.
    ///
    /// With a buffer, the transfer length is derived from the command's own fields (see
    /// [`crate::spec::transfer::admin_data_length`]) and must fit the buffer; PRPs are built
    /// for exactly that many bytes, so the device can reach nothing else. Without a buffer
    /// the data pointer is zero, which no DMA allocator hands out, so any command may be sent
    /// (to see how the controller answers it). Commands that hand memory to the controller
    /// beyond the command's own lifetime (Create I/O SQ/CQ, Doorbell Buffer Config, Host
    /// Memory Buffer) and Asynchronous Event Requests are refused: the queue and event APIs
    /// own them. Commands that change namespace formats (Format NVM, Namespace Management,
    /// Namespace Attachment) are refused while I/O queues exist, as for
    /// [`Controller::format_nvm`].
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// use nvme_core::spec::Command;
    /// // Identify Controller (CNS 01h) into a buffer of ours: the core derives its 4 KiB length.
    /// let buf = ctrl.alloc_buffer(4096)?;
    /// let (c, buf) = ctrl.admin_passthrough(Command::identify(0x01, 0, 0, 0), Some(buf), None)?;
    /// assert!(c.status().is_success());
    /// assert_ne!(buf.unwrap().to_vec()[..2], [0, 0]); // PCI vendor ID
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for the refused opcodes, [`Error::UnknownTransfer`] for a
    /// buffer with an opcode the core does not know (see
    /// [`Controller::admin_passthrough_unchecked`]), [`Error::TransferMismatch`],
    /// [`Error::ForeignObject`] for a buffer of another controller; transport failures.
    pub fn admin_passthrough(
        &mut self,
        cmd: Command,
        buffer: Option<DmaBuffer<P>>,
        timeout: Option<Duration>,
    ) -> Result<(Completion, Option<DmaBuffer<P>>)> {
        let len = match (admin_data_length(&cmd), &buffer) {
            (DataLength::Managed, _) => {
                return Err(Error::InvalidArgument(
                    "queue creation, doorbell buffer, host memory buffer and asynchronous event commands are managed by the controller API",
                ))
            }
            (_, None) => 0,
            (DataLength::Bytes(n), Some(b)) if n > 0 && n <= b.len() => n,
            (DataLength::Unknown | DataLength::Blocks(_), Some(_)) => {
                return Err(Error::UnknownTransfer {
                    opcode: cmd.opcode(),
                })
            }
            (DataLength::Bytes(n), Some(b)) => {
                return Err(Error::TransferMismatch {
                    opcode: cmd.opcode(),
                    opcode_name: AdminOpcode(cmd.opcode()).name().unwrap_or("admin command"),
                    described: n,
                    given: b.len(),
                })
            }
            (DataLength::None, Some(b)) => {
                return Err(Error::TransferMismatch {
                    opcode: cmd.opcode(),
                    opcode_name: AdminOpcode(cmd.opcode()).name().unwrap_or("admin command"),
                    described: 0,
                    given: b.len(),
                })
            }
        };
        self.admin_passthrough_bytes(cmd, buffer, len, timeout)
    }

    /// Runs any admin command with PRPs for the whole buffer, without deriving the length
    /// from the command: for opcodes the core does not know (vendor-specific commands).
    ///
    /// # Safety
    /// The command must make the device transfer at most `buffer.len()` bytes through its
    /// data pointer and must not hand any memory to the controller beyond its own lifetime.
    /// A command that transfers more makes the device follow PRP entries past the buffer.
    ///
    /// # Errors
    /// As [`Controller::admin_passthrough`].
    pub unsafe fn admin_passthrough_unchecked(
        &mut self,
        cmd: Command,
        buffer: Option<DmaBuffer<P>>,
        timeout: Option<Duration>,
    ) -> Result<(Completion, Option<DmaBuffer<P>>)> {
        if admin_data_length(&cmd) == DataLength::Managed {
            return Err(Error::InvalidArgument(
                "queue creation, doorbell buffer, host memory buffer and asynchronous event commands are managed by the controller API",
            ));
        }
        let len = buffer.as_ref().map_or(0, DmaBuffer::len);
        self.admin_passthrough_bytes(cmd, buffer, len, timeout)
    }

    fn admin_passthrough_bytes(
        &mut self,
        mut cmd: Command,
        buffer: Option<DmaBuffer<P>>,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<(Completion, Option<DmaBuffer<P>>)> {
        crate::dma::sanitize_pointers(&mut cmd);
        if buffer
            .as_ref()
            .is_some_and(|b| !b.is_on(&self.shared.platform))
        {
            return Err(Error::ForeignObject {
                what: "the DMA buffer",
            });
        }
        let op = AdminOpcode(cmd.opcode());
        let changes_namespaces = op == AdminOpcode::FORMAT_NVM
            || op == AdminOpcode::NAMESPACE_ATTACHMENT
            || op == AdminOpcode::NAMESPACE_MANAGEMENT;
        if changes_namespaces {
            self.namespaces_may_change()?;
        }
        let timeout = timeout.unwrap_or(self.config.admin_timeout);
        let (c, req) = match buffer {
            Some(b) if len > 0 => {
                let t = Transfer {
                    mem: b.mem(),
                    offset: 0,
                    len,
                };
                self.admin_wait(cmd, Some(t), AdminReq::Buffer(b), timeout)?
            }
            Some(b) => self.admin_wait(cmd, None, AdminReq::Buffer(b), timeout)?,
            None => self.admin_wait(cmd, None, AdminReq::NoData, timeout)?,
        };
        if changes_namespaces {
            let _ = self.rescan_namespaces();
        }
        let buf = match req {
            AdminReq::Buffer(b) => Some(b),
            _ => None,
        };
        Ok((c, buf))
    }

    /// Before a command that may change namespace formats: refused while I/O queues exist
    /// (a command in flight was sized for the old format, and the device would transfer by
    /// the new one); otherwise every namespace handle becomes stale.
    pub(super) fn namespaces_may_change(&mut self) -> Result<()> {
        if self.qids_in_use.iter().skip(1).any(|&u| u) || !self.raw_queues.is_empty() {
            return Err(Error::InvalidArgument(
                "Format NVM and namespace management change LBA formats under I/O in flight: delete every I/O queue pair (and raw queue) first",
            ));
        }
        self.namespaces_changing();
        Ok(())
    }

    /// Runs an admin command without data and returns the completion, whatever the status
    /// (for conformance tests of error paths).
    ///
    /// # Errors
    /// As [`Controller::admin_passthrough`].
    pub fn admin_command(&mut self, cmd: Command) -> Result<Completion> {
        self.admin_passthrough(cmd, None, None).map(|(c, _)| c)
    }

    /// Runs an admin command whose data (up to 64 KiB, controller to host) lands in the
    /// scratch buffer; returns the completion and the bytes.
    ///
    /// # Errors
    /// Transport failures and [`Error::TransferTooLarge`].
    pub fn admin_read(&mut self, mut cmd: Command, len: usize) -> Result<(Completion, Vec<u8>)> {
        crate::dma::sanitize_pointers(&mut cmd);
        match admin_data_length(&cmd) {
            DataLength::Managed => {
                return Err(Error::InvalidArgument(
                    "this opcode is managed by the controller API",
                ))
            }
            // The scratch page is the core's own: a longer transfer than `len` stays inside
            // it (64 KiB, rejected above that), never reaching memory of the caller.
            DataLength::Bytes(n) if n > SCRATCH_LEN => {
                return Err(Error::TransferTooLarge {
                    bytes: n as u64,
                    max: SCRATCH_LEN as u64,
                })
            }
            DataLength::Unknown | DataLength::Blocks(_) => {
                return Err(Error::UnknownTransfer {
                    opcode: cmd.opcode(),
                })
            }
            _ => {}
        }
        let c = self.admin_scratch(cmd, len, None, self.config.admin_timeout)?;
        Ok((c, self.scratch_bytes(len)))
    }

    /// Runs an admin command without data and returns its completion, whatever the status.
    pub(super) fn admin_no_data(&mut self, cmd: Command) -> Result<Completion> {
        self.admin_wait(cmd, None, AdminReq::NoData, self.config.admin_timeout)
            .map(|(c, _)| c)
    }
}

//! Bring-up (NVMe Base §3.5.1), disable (§3.5.2), Controller Level Reset (§3.7.2) and shutdown
//! (§3.6.1).

use super::*;
use crate::shared::NsFormat;

/// Waits until `done(csts)` or the deadline; CSTS all-ones is [`Error::DeviceGone`].
pub(crate) fn wait_csts<P: Platform>(
    p: &P,
    timeout: Duration,
    mut done: impl FnMut(Csts) -> bool,
) -> core::result::Result<Csts, Option<Error>> {
    let deadline = Deadline::after(p.clock(), timeout);
    loop {
        let csts = Csts(p.bar().read32(offset::CSTS));
        if csts.is_all_ones() {
            return Err(Some(Error::DeviceGone));
        }
        if done(csts) {
            return Ok(csts);
        }
        if deadline.expired(p.clock()) {
            return Err(None);
        }
        p.clock().relax();
    }
}

pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Disables the controller (§3.5.2 / §3.7.2): if EN=1 and RDY=0 wait for RDY=1 first (never
/// toggle EN while EN≠RDY) unless `settled` says that wait already happened and failed,
/// clear EN, wait for RDY=0 within CAP.TO.
pub(crate) fn disable<P: Platform>(p: &P, cap: Cap, settled: bool) -> Result<()> {
    let timeout = Duration::from_millis(cap.timeout_ms().max(500));
    let cc = Cc(p.bar().read32(offset::CC));
    let csts = Csts(p.bar().read32(offset::CSTS));
    if csts.is_all_ones() {
        return Err(Error::DeviceGone);
    }
    if cc.en() && !csts.rdy() && !csts.cfs() && !settled {
        // Enabling is still in progress; let it finish before clearing EN.
        match wait_csts(p, timeout, |c| c.rdy() || c.cfs()) {
            Ok(_) => {}
            Err(Some(e)) => return Err(e),
            Err(None) => {} // fall through: clearing EN is the only way forward
        }
    }
    if cc.en() {
        // SAFETY: clearing CC.EN stops the controller from using any memory (§3.7.2).
        unsafe {
            p.bar()
                .write32(offset::CC, cc.with_en(false).with_shn(shn::NONE).0)
        };
    }
    match wait_csts(p, timeout, |c| !c.rdy()) {
        Ok(_) => Ok(()),
        Err(Some(e)) => Err(e),
        Err(None) => Err(Error::ReadyTimeout {
            expected: false,
            waited_ms: ms(timeout),
        }),
    }
}

impl<P: Platform> Controller<P> {
    /// Brings the controller up (§3.5.1): disable, admin queue, CC, enable, Identify
    /// Controller, namespaces, Number of Queues, interrupts, Asynchronous Event Requests.
    ///
    /// ```
    /// use nvme_core::{Controller, ControllerConfig};
    /// let sim = sim_backend::Simulator::new(sim_backend::SimConfig::default())?;
    /// // Any `Arc<impl Platform>`: the simulator's, or `vfio_backend::VfioPlatform::open("0000:01:00.0", ..)`.
    /// let ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// println!("{} namespaces, {} I/O queue pairs granted", ctrl.namespaces().len(), ctrl.granted_queue_pairs());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::DeviceGone`] (all-ones registers), [`Error::ControllerFatal`] (CSTS.CFS),
    /// [`Error::ReadyTimeout`] (RDY did not follow EN within CAP.TO), [`Error::Unsupported`]
    /// (no NVM command set, page size, entry sizes), DMA and command failures.
    pub fn new(platform: Arc<P>, config: ControllerConfig) -> Result<Self> {
        let p = &*platform;
        let cap = Cap(p.bar().read64(offset::CAP));
        if cap.0 == u64::MAX || Csts(p.bar().read32(offset::CSTS)).is_all_ones() {
            return Err(Error::DeviceGone);
        }
        if cap.mpsmin() > 0 {
            return Err(Error::Unsupported(
                "CAP.MPSMIN above 4 KiB (the core uses 4 KiB memory pages)",
            ));
        }
        if !cap.css_nvm() && !cap.css_io_sets() {
            return Err(Error::Unsupported(
                "the controller supports no I/O command set (CAP.CSS)",
            ));
        }
        if cap.mqes_z() == 0 {
            return Err(Error::DeviceProtocol(
                "CAP.MQES is 0, which the spec forbids",
            ));
        }
        if p.dma().page_size() < PAGE_SIZE || !p.dma().page_size().is_power_of_two() {
            return Err(Error::Backend("DMA allocator page size below 4 KiB"));
        }
        let vs = Vs(p.bar().read32(offset::VS));
        disable(p, cap, false)?;

        // Admin queue memory (§3.5.1 step 2).
        let entries = config
            .admin_queue_entries
            .clamp(2, 4096)
            .min(cap.mqes_z().saturating_add(1));
        let claim = Claim::new(&platform)?;
        let lists_per_slot = crate::prp::max_list_pages(SCRATCH_LEN, PAGE_SIZE);
        let [sq_mem, cq_mem, scratch, lists] = reclaim::allocate_all(
            p,
            [
                entries as usize * 64,
                entries as usize * 16,
                SCRATCH_LEN,
                (entries as usize - 1) * lists_per_slot * PAGE_SIZE,
            ],
        )?;
        let (Some(sq_mem), Some(cq_mem), Some(scratch)) = (sq_mem, cq_mem, scratch) else {
            return Err(Error::Backend("admin queue memory"));
        };
        let dstrd = cap.dstrd();
        let admin = Engine::new(
            SubQueue::new(sq_mem, 0, entries, dstrd),
            CompQueue::new(cq_mem, 0, entries, dstrd),
            lists,
            lists_per_slot,
            None,
        );
        let shared = Arc::new(Shared::new(
            platform.clone(),
            dstrd,
            u64::try_from(config.io_timeout.as_nanos()).unwrap_or(u64::MAX),
            config.recovery,
        ));
        let mut c = Self {
            _claim: claim,
            shared,
            config,
            admin,
            scratch,
            scratch_busy: false,
            cap,
            vs,
            identify: IdentifyController::default(),
            namespaces: Vec::new(),
            granted: NumberOfQueues { nsq_z: 0, ncq_z: 0 },
            allocated: NumberOfQueues { nsq_z: 0, ncq_z: 0 },
            qids_in_use: Vec::new(),
            raw_queues: Vec::new(),
            released_raw: Vec::new(),
            events: VecDeque::new(),
            aers_outstanding: 0,
            aers_wanted: 0,
            aer_refused: false,
            needs_reset: None,
            io_queues_created: false,
            max_transfer: 0,
            stats: ControllerStats::default(),
            shut_down: false,
            enable_failed: false,
            dbbuf_pages: None,
        };
        c.shared.irq_spin_ns.store(
            u64::try_from(c.config.irq_spin.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        c.enable_and_initialize()?;
        Ok(c)
    }

    /// §3.5.1 steps 2–7 on a disabled controller whose admin rings are allocated.
    pub(super) fn enable_and_initialize(&mut self) -> Result<()> {
        let p = &*self.shared.platform;
        let cap = self.cap;
        let entries = self.admin.sq.entries();
        let bar = p.bar();
        // SAFETY: the admin rings are this controller's and stay allocated until it is
        // disabled (they are freed only through `crate::reclaim` after CC.EN is cleared).
        unsafe {
            bar.write32(offset::AQA, Aqa::new(entries - 1, entries - 1).0);
            bar.write64(offset::ASQ, self.admin.sq.mem().iova());
            bar.write64(offset::ACQ, self.admin.cq.mem().iova());
        }
        // §3.5.1 step 3: CSS from CAP.CSS, MPS = 4 KiB, round robin, entry sizes 2^6 / 2^4.
        let css = if cap.css_io_sets() {
            css::ALL_IO
        } else {
            css::NVM
        };
        let cc = Cc(0)
            .with_css(css)
            .with_mps(0)
            .with_ams(0)
            .with_shn(shn::NONE)
            .with_iosqes(6)
            .with_iocqes(4);
        // SAFETY: enabling hands the controller the admin rings written above (kept alive, see
        // above); their entries are zeroed, so nothing is fetched before a doorbell.
        unsafe { bar.write32(offset::CC, cc.with_en(true).0) };
        let timeout = Duration::from_millis(cap.timeout_ms().max(500));
        match wait_csts(p, timeout, |c| c.rdy() || c.cfs()) {
            Ok(c) if c.cfs() => return Err(Error::ControllerFatal),
            Ok(_) => {}
            Err(Some(e)) => return Err(e),
            Err(None) => {
                self.enable_failed = true;
                return Err(Error::ReadyTimeout {
                    expected: true,
                    waited_ms: ms(timeout),
                });
            }
        }
        self.enable_failed = false;
        self.shared.reclaim.device_started();

        // Interrupts: vector 0 for the admin queue, one per I/O queue pair when available.
        let mut vectors = 0;
        if self.config.interrupts && p.irq().max_vectors() > 0 {
            let want = self
                .config
                .io_queue_pairs
                .saturating_add(1)
                .min(p.irq().max_vectors());
            vectors = p
                .irq()
                .enable(want)
                .map_err(|e| Error::Interrupt(alloc::boxed::Box::new(e)))?;
        }
        self.shared.vectors.store(vectors, Ordering::Release);

        // §3.5.1 step 5: Identify Controller, then the namespaces.
        let page = self.identify_raw(cns::CONTROLLER, 0)?;
        self.identify = IdentifyController::parse(&page)?;
        if self.identify.sqes & 0xF > 6
            || self.identify.sqes >> 4 < 6
            || self.identify.cqes & 0xF > 4
            || self.identify.cqes >> 4 < 4
        {
            return Err(Error::Unsupported(
                "the controller does not support 64-byte SQ and 16-byte CQ entries (SQES/CQES)",
            ));
        }
        let mdts = self
            .identify
            .max_transfer_bytes(cap.mpsmin())
            .unwrap_or(u64::MAX);
        self.max_transfer = (self.config.max_transfer as u64)
            .min(mdts)
            .max(PAGE_SIZE as u64) as usize;
        self.rescan_namespaces()?;

        // §3.5.1 step 6: Number of Queues, once, before creating I/O queues.
        let want = self.config.io_queue_pairs.max(1);
        let req = NumberOfQueues {
            nsq_z: want - 1,
            ncq_z: want - 1,
        };
        let dw0 = self.set_features(FeatureId::NUMBER_OF_QUEUES, req.to_dword(), false)?;
        let got = NumberOfQueues::from_dword(dw0);
        self.allocated = got;
        // Use no more than requested, even if the controller grants more.
        self.granted = NumberOfQueues {
            nsq_z: got.nsq_z.min(req.nsq_z),
            ncq_z: got.ncq_z.min(req.ncq_z),
        };
        let pairs = self.granted.nsq_z.min(self.granted.ncq_z) as usize + 1;
        self.qids_in_use = alloc::vec![false; pairs + 1];
        self.qids_in_use[0] = true;
        // After a reset, the pairs that will be re-created keep their QIDs; with a policy
        // that does not re-create them (or without room for them now), they fail.
        let mut live = self.shared.mailbox.pairs.lock();
        live.retain(|r| {
            let keep = self.shared.policy.reset
                && self
                    .qids_in_use
                    .get(r.qid as usize)
                    .is_some_and(|used| !used);
            if keep {
                self.qids_in_use[r.qid as usize] = true;
            } else {
                r.failed.store(true, Ordering::Release);
            }
            keep
        });
        drop(live);
        self.apply_interrupt_coalescing()?;

        // Shadow doorbells (§5.8), before any I/O queue exists or is re-created.
        self.configure_shadow_doorbells()?;

        // §3.5.1 step 7: event configuration, then post AERs.
        if self.config.async_events > 0 {
            // Best effort: some controllers refuse a feature they consider not changeable.
            let _ = self.set_features(
                FeatureId::ASYNC_EVENT_CONFIG,
                aec::SMART_ALL | aec::NS_ATTRIBUTE,
                false,
            );
            let n = self
                .config
                .async_events
                .min(self.identify.aerl.saturating_add(1));
            self.aers_wanted = n;
            self.aer_refused = false;
            for _ in 0..n {
                self.post_aer()?;
            }
        }
        Ok(())
    }

    /// Re-reads the active namespace list and every namespace's Identify data.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// ctrl.rescan_namespaces()?;
    /// assert!(ctrl.namespace(1).is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Command failures.
    pub fn rescan_namespaces(&mut self) -> Result<()> {
        let before: Vec<NsFormat> = self.shared.formats.lock().clone();
        let epoch = self.shared.ns_epoch.load(Ordering::Acquire);
        let ids: Vec<u32> = if self.vs.0 >= Vs::new(1, 1, 0).0 {
            let page = self.identify_raw(cns::ACTIVE_NS_LIST, 0)?;
            NamespaceList::parse(&page).ids().to_vec()
        } else {
            (1..=self.identify.nn.min(1024)).collect()
        };
        let mut ids_and_data = Vec::with_capacity(ids.len());
        for nsid in ids {
            let id = IdentifyNamespace::parse(&self.identify_raw(cns::NAMESPACE, nsid)?)?;
            if id.is_inactive() || id.nsze == 0 {
                continue;
            }
            ids_and_data.push((nsid, id));
        }
        let mut list = Vec::with_capacity(ids_and_data.len());
        for (nsid, id) in &ids_and_data {
            list.push(Namespace::from_identify(
                *nsid,
                id.clone(),
                self.shared.id,
                epoch,
            )?);
        }
        let after: Vec<NsFormat> = list.iter().map(Namespace::format).collect();
        if after != before {
            // The formats changed (or were never read): handles taken before describe what
            // is no longer true, so the epoch moves and I/O through them is refused.
            let epoch = self.namespaces_changing();
            list.clear();
            for (nsid, id) in ids_and_data {
                list.push(Namespace::from_identify(nsid, id, self.shared.id, epoch)?);
            }
        }
        *self.shared.formats.lock() = after;
        self.namespaces = list;
        Ok(())
    }

    /// Parks regions until the next disable (the device may still refer to them).
    pub(super) fn retire_all(&self, regions: impl IntoIterator<Item = Mem>) {
        for m in regions {
            self.shared
                .reclaim
                .retire(&*self.shared.platform, m.region(), self.generation());
        }
    }

    /// The current reset generation.
    pub(crate) fn generation(&self) -> u32 {
        self.shared.reclaim.generation()
    }

    /// Marks every namespace handle stale and forgets the formats until the next scan;
    /// returns the new epoch.
    pub(super) fn namespaces_changing(&mut self) -> u32 {
        self.shared.formats.lock().clear();
        self.shared.ns_epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    // ---- reset and shutdown ----

    /// Disables the controller and frees everything the device could have reached.
    pub(super) fn disable_and_reclaim(&mut self) -> Result<()> {
        let p = self.shared.platform.clone();
        let r = disable(&*p, self.cap, self.enable_failed);
        p.irq().disable();
        // On failure the device may still be running: keep its memory (leaked, not reused).
        r?;
        // §3.7.2: the reset deleted every I/O queue and aborted every command, and forgot
        // the doorbell buffer (§5.8).
        *self.shared.dbbuf.lock() = None;
        self.shared.reclaim.device_stopped(&*p);
        self.admin.take_all(|_, req, _| drop(req));
        self.scratch_busy = false;
        self.aers_outstanding = 0;
        let generation = self.generation();
        for q in self.raw_queues.drain(..) {
            // The controller is disabled: retiring frees at once.
            self.shared.reclaim.retire(&*p, q.region, generation);
            // `q.held` (data buffers of raw commands) is dropped here, for the same reason.
        }
        Ok(())
    }

    /// Controller Level Reset (§3.7.2): disables the controller (every I/O queue is deleted
    /// and every outstanding command is discarded), then brings it up again. With a
    /// [`crate::RecoveryPolicy`] that resets, existing [`IoQueuePair`]s come back: on their
    /// next call they put their retryable commands back into their rings, and the next
    /// [`Controller::recover`] re-creates their queues; otherwise (or if the namespaces'
    /// formats changed across the reset) they become dead and fail with
    /// [`Error::ControllerReset`]. Namespace handles stay valid unless the formats changed.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// ctrl.reset()?;
    /// // Namespace handles taken before stay valid if the formats did not change.
    /// let ns = ctrl.namespace(1)?.clone();
    /// let mut qp = ctrl.create_io_queue_pair(16)?;
    /// ns.write_at(&mut qp, 0, &[1; 512])?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Controller::new`].
    pub fn reset(&mut self) -> Result<()> {
        let epoch = self.shared.ns_epoch.load(Ordering::Acquire);
        let r = self.reset_inner();
        if self.shared.ns_epoch.load(Ordering::Acquire) != epoch {
            // The namespaces changed across the reset: commands the pairs hold were sized for
            // the old formats, so no pair is re-created (they fail their requests).
            for rec in self.shared.mailbox.pairs.lock().iter() {
                rec.failed.store(true, Ordering::Release);
            }
        }
        r
    }

    fn reset_inner(&mut self) -> Result<()> {
        self.disable_and_reclaim()?;
        self.stats.resets += 1;
        self.needs_reset = None;
        self.shut_down = false;
        self.io_queues_created = false;
        self.events.clear();
        // Fresh rings: the admin queue restarts at slot 0 with phase 1.
        let dstrd = self.shared.dstrd;
        let entries = self.admin.sq.entries();
        let (sqm, cqm) = (self.admin.sq.mem(), self.admin.cq.mem());
        sqm.fill(0, sqm.len(), 0);
        cqm.fill(0, cqm.len(), 0);
        let lists = self.admin.lists();
        let lists_per_slot = crate::prp::max_list_pages(SCRATCH_LEN, PAGE_SIZE);
        let stats = self.admin.stats;
        self.admin = Engine::new(
            SubQueue::new(sqm, 0, entries, dstrd),
            CompQueue::new(cqm, 0, entries, dstrd),
            lists,
            lists_per_slot,
            None,
        );
        self.admin.stats = stats;
        self.enable_and_initialize()
    }

    /// Orderly shutdown (§3.6.1): deletes the queues created through the raw calls, sets
    /// CC.SHN to normal and waits for CSTS.SHST = complete (at least
    /// [`ControllerConfig::shutdown_timeout`], longer if RTD3E says so), then disables the
    /// controller and frees its memory. Delete your [`IoQueuePair`]s first
    /// ([`Controller::delete_io_queue_pair`]); pairs still alive become dead.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// ctrl.shutdown()?; // CC.SHN normal shutdown, then disable: the write cache is written back
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ShutdownTimeout`], [`Error::DeviceGone`].
    pub fn shutdown(mut self) -> Result<()> {
        self.shutdown_inner(shn::NORMAL)
    }

    pub(super) fn shutdown_inner(&mut self, kind: u8) -> Result<()> {
        if self.shut_down {
            return Ok(());
        }
        let p = self.shared.platform.clone();
        if self.needs_reset.is_none() && kind == shn::NORMAL {
            // Delete raw queues: SQs first, then CQs.
            let mut qs: Vec<(u16, bool)> =
                self.raw_queues.iter().map(|q| (q.qid, q.is_sq)).collect();
            qs.sort_by_key(|&(_, sq)| !sq);
            for (qid, sq) in qs {
                let _ = self.delete_raw_queue(qid, sq);
            }
        }
        self.shut_down = true;
        let cc = Cc(p.bar().read32(offset::CC));
        let csts = Csts(p.bar().read32(offset::CSTS));
        if csts.is_all_ones() {
            return Err(Error::DeviceGone);
        }
        let mut result = Ok(());
        if cc.en() && csts.rdy() && !csts.cfs() {
            // SAFETY: a shutdown notification makes the controller finish and stop; it names
            // no memory.
            unsafe { p.bar().write32(offset::CC, cc.with_shn(kind).0) };
            let rtd3e = Duration::from_micros(self.identify.rtd3e as u64);
            let timeout = self.config.shutdown_timeout.max(rtd3e);
            result = match wait_csts(&*p, timeout, |c| c.shst() == shst::COMPLETE) {
                Ok(_) => Ok(()),
                Err(Some(e)) => Err(e),
                Err(None) => Err(Error::ShutdownTimeout {
                    waited_ms: ms(timeout),
                }),
            };
        }
        // After shutdown the controller needs a reset before further use (§3.6.1); disabling
        // it also makes every region safe to free.
        let r = self.disable_and_reclaim();
        result.and(r)
    }
}

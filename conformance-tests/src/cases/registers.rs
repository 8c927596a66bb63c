//! Registers, bring-up and shutdown (NVMe Base §3.1.4, §3.5.1, §3.6.1).

use nvme_core::raw::RawRegisters;
use std::time::{Duration, Instant};

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use anyhow::{bail, ensure, Context as _};
use nvme_core::hw::{Bar, Platform};
use nvme_core::spec::features::select;
use nvme_core::spec::identify::cns;
use nvme_core::spec::regs::{
    cq_head_doorbell, css, offset, shn, shst, sq_tail_doorbell, NSSR_RESET,
};
use nvme_core::spec::{Aqa, Cap, Cc, Command, Completion, Csts, IdentifyController, Vs};
use nvme_core::DmaBuffer;

use crate::backend::Backend;
use crate::case;
use crate::runner::{Case, Ctx, Verdict};

/// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!(
            "REG-01",
            Registers,
            "§3.1.4.1",
            "CAP fields are within their legal ranges",
            cap_sane::<B>
        ),
        case!(
            "REG-02",
            Registers,
            "§3.1.4.2",
            "VS is a released version and matches Identify VER",
            vs_matches::<B>
        ),
        case!(
            "REG-03",
            Registers,
            "§3.1.4.5",
            "after bring-up CC and CSTS show an enabled, ready controller",
            enabled_state::<B>
        ),
        case!(
            "REG-04",
            Registers,
            "§3.5.2",
            "clearing CC.EN drops CSTS.RDY within CAP.TO and the controller comes up again",
            disable_enable::<B>
        ),
        case!(
            "REG-05",
            Registers,
            "§3.6.1",
            "a normal shutdown reaches CSTS.SHST = 10b",
            normal_shutdown::<B>
        ),
        case!("REG-06", Registers, "§3.5.1", "an enable with CC.MPS = CAP.MPSMIN and a hand-built admin queue runs Identify Controller", manual_enable_mpsmin::<B>),
        case!("REG-07", Registers, "§3.1.4.5", "an enable with CC.MPS above CAP.MPSMAX is refused (CSTS.CFS set or RDY stays 0) and a reset recovers", mps_above_max::<B>, violates),
        case!("REG-08", Registers, "§3.6.1", "an abrupt shutdown (CC.SHN = 10b) reaches CSTS.SHST = 10b", abrupt_shutdown::<B>),
        case!("REG-09", Registers, "§3.7.1", "an NVM Subsystem Reset disables the controller and sets CSTS.NSSRO (RW1C); the controller comes up again", subsystem_reset::<B>),
        case!("REG-10", Registers, "§3.1.4.8", "a 2-entry admin queue (AQA 1/1, the minimum) carries admin commands", min_admin_queue::<B>),
        case!("REG-11", Registers, "§4.1.1", "a 4-entry admin queue wraps around with 50 admin commands", admin_wrap::<B>),
        case!("REG-12", Registers, "§3.1.4.5", "an enable with CC.IOSQES/IOCQES = 0 either is refused or gives a working admin queue (the sizes matter only for I/O queues)", enable_without_io_sizes::<B>, violates),
    ]
}

fn wait_csts<P: Platform>(
    p: &P,
    timeout: Duration,
    f: impl Fn(Csts) -> bool,
) -> anyhow::Result<Csts> {
    let start = Instant::now();
    loop {
        let c = Csts(p.bar().read32(offset::CSTS));
        ensure!(!c.is_all_ones(), "CSTS reads all-ones: the device is gone");
        if f(c) {
            return Ok(c);
        }
        if start.elapsed() > timeout {
            bail!("CSTS = {:#x} after {timeout:?}", c.0);
        }
        std::thread::yield_now();
    }
}

fn cap_sane<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let bar = RawRegisters::new(cx.platform().bar());
    let cap = Cap(bar.read64(offset::CAP));
    ensure!(cap.0 != u64::MAX, "CAP reads all-ones");
    ensure!(
        cap.mqes_z() >= 1,
        "CAP.MQES is 0; the minimum is 1 (two entries)"
    );
    ensure!(
        cap.to() >= 1,
        "CAP.TO is 0: the controller gives no ready timeout"
    );
    ensure!(
        cap.mpsmin() <= cap.mpsmax(),
        "CAP.MPSMIN {} above MPSMAX {}",
        cap.mpsmin(),
        cap.mpsmax()
    );
    ensure!(
        cap.css_nvm() || cap.css_io_sets() || cap.css_admin_only(),
        "CAP.CSS names no command set"
    );
    let last_db = nvme_core::spec::regs::cq_head_doorbell(1, cap.dstrd()) + 4;
    ensure!(
        last_db <= bar.size(),
        "CAP.DSTRD {} puts the first I/O doorbells ({last_db:#x}) beyond BAR0 ({:#x})",
        cap.dstrd(),
        bar.size()
    );
    Ok(Verdict::Pass)
}

fn vs_matches<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let vs = Vs(cx.platform().bar().read32(offset::VS));
    ensure!(vs.mjr() >= 1, "VS {vs} is not a released version");
    let ver = cx.ctrl()?.identify().ver;
    // VER is reported by controllers compliant with 1.2 and later (0 before).
    ensure!(
        ver == 0 || ver == vs.0,
        "Identify VER {} differs from VS {vs}",
        Vs(ver)
    );
    Ok(Verdict::Pass)
}

fn enabled_state<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    cx.ctrl()?;
    let bar = RawRegisters::new(cx.platform().bar());
    let cc = Cc(bar.read32(offset::CC));
    let csts = Csts(bar.read32(offset::CSTS));
    ensure!(
        cc.en() && cc.iosqes() == 6 && cc.iocqes() == 4 && cc.mps() == 0,
        "CC = {:#x}",
        cc.0
    );
    ensure!(cc.shn() == shn::NONE, "CC.SHN set during normal operation");
    ensure!(
        csts.rdy() && !csts.cfs(),
        "CSTS = {:#x}: expected RDY=1 CFS=0",
        csts.0
    );
    ensure!(
        csts.shst() == shst::NORMAL,
        "CSTS.SHST = {} during normal operation",
        csts.shst()
    );
    Ok(Verdict::Pass)
}

fn disable_enable<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    cx.ctrl()?;
    let c = cx.take_ctrl();
    let p = cx.platform().clone();
    let cap = Cap(p.bar().read64(offset::CAP));
    let cc = Cc(p.bar().read32(offset::CC));
    RawRegisters::new(p.bar()).write32(offset::CC, cc.with_en(false).0);
    let limit = Duration::from_millis(cap.timeout_ms());
    wait_csts(&*p, limit, |c| !c.rdy())
        .map_err(|e| anyhow::anyhow!("RDY did not clear within CAP.TO: {e}"))?;
    drop(c); // the driver notices the controller is disabled and frees its memory
    let cfg = cx.config();
    let c = cx.bring_up(cfg)?;
    ensure!(!c.namespaces().is_empty(), "no namespace after re-enable");
    Ok(Verdict::Pass)
}

/// Takes the controller from the driver, writes CC.SHN = `kind` and waits for CSTS.SHST =
/// complete; the driver's own teardown then disables the controller, whatever happened.
fn shutdown_with<B: Backend>(
    cx: &mut Ctx<'_, B>,
    kind: u8,
    what: &str,
) -> anyhow::Result<std::sync::Arc<B::P>> {
    cx.ctrl()?;
    let ctrl = cx.take_ctrl();
    let p = cx.platform().clone();
    let cc = Cc(p.bar().read32(offset::CC));
    RawRegisters::new(p.bar()).write32(offset::CC, cc.with_shn(kind).0);
    let r = wait_csts(&*p, Duration::from_secs(10), |c| c.shst() == shst::COMPLETE);
    drop(ctrl);
    r.map_err(|e| anyhow::anyhow!("{what} did not complete: {e}"))?;
    Ok(p)
}

fn normal_shutdown<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let p = shutdown_with(cx, shn::NORMAL, "shutdown")?;
    ensure!(
        !Cc(p.bar().read32(offset::CC)).en() || !Csts(p.bar().read32(offset::CSTS)).rdy(),
        "controller still enabled after teardown"
    );
    Ok(Verdict::Pass)
}

fn abrupt_shutdown<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    shutdown_with(cx, shn::ABRUPT, "abrupt shutdown")?;
    Ok(Verdict::Pass)
}

/// Clears CC.EN if set and waits for RDY = 0 (a fresh platform may come from a controller
/// left enabled).
fn ensure_disabled<P: Platform>(p: &P) -> anyhow::Result<Cap> {
    let cap = Cap(p.bar().read64(offset::CAP));
    let limit = Duration::from_millis(cap.timeout_ms().max(500));
    let cc = Cc(p.bar().read32(offset::CC));
    if cc.en() {
        wait_csts(p, limit, |c| c.rdy() || c.cfs())?;
        RawRegisters::new(p.bar()).write32(offset::CC, cc.with_en(false).0);
    }
    wait_csts(p, limit, |c| !c.rdy())?;
    Ok(cap)
}

/// A hand-built admin queue pair (2 entries each) for enabling the controller without the
/// driver.
struct ManualAdmin<P: Platform> {
    asq: DmaBuffer<P>,
    acq: DmaBuffer<P>,
}

impl<P: Platform> ManualAdmin<P> {
    fn new(p: &Arc<P>) -> anyhow::Result<Self> {
        let asq = DmaBuffer::new(p, 4096)?;
        let acq = DmaBuffer::new(p, 4096)?;
        ensure!(
            asq.iova() % 4096 == 0 && acq.iova() % 4096 == 0,
            "DMA buffers are not page aligned"
        );
        let bar = RawRegisters::new(p.bar());
        bar.write32(offset::AQA, Aqa::new(1, 1).0);
        bar.write64(offset::ASQ, asq.iova());
        bar.write64(offset::ACQ, acq.iova());
        Ok(Self { asq, acq })
    }

    /// Runs Identify Controller through slot 0 of the admin queues.
    fn identify(&mut self, p: &Arc<P>, cap: Cap) -> anyhow::Result<IdentifyController> {
        let data = DmaBuffer::new(p, 4096)?;
        let mut cmd = Command::identify(cns::CONTROLLER, 0, 0, 0);
        cmd.set_cid(0x0A1).set_prps(data.iova(), 0);
        self.asq.write(0, &cmd.to_le_bytes())?;
        fence(Ordering::Release);
        RawRegisters::new(p.bar()).write32(sq_tail_doorbell(0, cap.dstrd()), 1);
        let start = Instant::now();
        let entry = loop {
            let mut raw = [0u8; 16];
            self.acq.read(0, &mut raw)?;
            fence(Ordering::Acquire);
            let c = Completion::from_le_bytes(&raw);
            if c.phase() {
                break c;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(5),
                "no completion for the hand-submitted Identify within 5 s"
            );
            std::thread::yield_now();
        };
        RawRegisters::new(p.bar()).write32(cq_head_doorbell(0, cap.dstrd()), 1);
        ensure!(
            entry.status().is_success() && entry.cid() == 0x0A1 && entry.sqid() == 0,
            "hand-submitted Identify: status {}, CID {:#x}, SQID {}",
            entry.status(),
            entry.cid(),
            entry.sqid()
        );
        Ok(IdentifyController::parse(&data.to_vec())?)
    }
}

/// CC for a manual enable: the CSS the driver would choose, `mps`, entry sizes as given.
fn manual_cc(cap: Cap, mps: u8, iosqes: u8, iocqes: u8) -> Cc {
    let css = if cap.css_io_sets() {
        css::ALL_IO
    } else {
        css::NVM
    };
    Cc(0)
        .with_css(css)
        .with_mps(mps)
        .with_ams(0)
        .with_shn(shn::NONE)
        .with_iosqes(iosqes)
        .with_iocqes(iocqes)
}

/// Writes CC with EN = 1 and waits for RDY or CFS within CAP.TO; `None` if neither rose.
fn enable<P: Platform>(p: &P, cap: Cap, cc: Cc) -> anyhow::Result<Option<Csts>> {
    RawRegisters::new(p.bar()).write32(offset::CC, cc.with_en(true).0);
    let limit = Duration::from_millis(cap.timeout_ms().max(500));
    Ok(wait_csts(p, limit, |c| c.rdy() || c.cfs()).ok())
}

/// Clears EN and waits for RDY = 0.
fn disable<P: Platform>(p: &P, cap: Cap) -> anyhow::Result<()> {
    let cc = Cc(p.bar().read32(offset::CC));
    RawRegisters::new(p.bar()).write32(offset::CC, cc.with_en(false).0);
    let limit = Duration::from_millis(cap.timeout_ms().max(500));
    wait_csts(p, limit, |c| !c.rdy())
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("RDY did not clear after EN = 0: {e}"))
}

fn manual_enable_mpsmin<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let p = cx.platform().clone();
    let cap = ensure_disabled(&*p)?;
    if cap.mpsmin() != 0 {
        return Ok(Verdict::Skip(
            "CAP.MPSMIN is above 4 KiB, the page size of this suite's buffers".into(),
        ));
    }
    let mut admin = ManualAdmin::new(&p)?;
    let st = enable(&*p, cap, manual_cc(cap, cap.mpsmin(), 6, 4))?;
    let r = match st {
        Some(c) if c.rdy() && !c.cfs() => admin.identify(&p, cap),
        Some(c) => Err(anyhow::anyhow!(
            "enable with MPS = MPSMIN: CSTS = {:#x}",
            c.0
        )),
        None => Err(anyhow::anyhow!("RDY did not rise within CAP.TO")),
    };
    disable(&*p, cap)?;
    drop(admin);
    let id = r?;
    ensure!(
        id.nn >= 1 && id.sqes >> 4 >= 6,
        "the Identify data is implausible"
    );
    Ok(Verdict::Pass)
}

fn mps_above_max<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let p = cx.platform().clone();
    let cap = ensure_disabled(&*p)?;
    if cap.mpsmax() == 15 {
        return Ok(Verdict::Skip("CAP.MPSMAX is 15: no larger MPS".into()));
    }
    let admin = ManualAdmin::new(&p)?;
    let st = enable(&*p, cap, manual_cc(cap, cap.mpsmax() + 1, 6, 4))?;
    let csts = Csts(p.bar().read32(offset::CSTS));
    // Whatever happened, EN goes back to 0 (with CFS set this is the reset the host owes).
    let cc = Cc(p.bar().read32(offset::CC));
    RawRegisters::new(p.bar()).write32(offset::CC, cc.with_en(false).0);
    let limit = Duration::from_millis(cap.timeout_ms().max(500));
    wait_csts(&*p, limit, |c| !c.rdy())?;
    drop(admin);
    if let Some(c) = st {
        ensure!(
            c.cfs() || !c.rdy(),
            "the controller became ready with CC.MPS {} above CAP.MPSMAX {} (CSTS {:#x}, now {:#x})",
            cap.mpsmax() + 1,
            cap.mpsmax(),
            c.0,
            csts.0
        );
    }
    // The controller comes up normally afterwards.
    let c = cx.ctrl()?;
    ensure!(!c.csts().cfs(), "CSTS.CFS still set after the reset");
    Ok(Verdict::Pass)
}

fn subsystem_reset<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    cx.ctrl()?;
    let p = cx.platform().clone();
    let cap = Cap(p.bar().read64(offset::CAP));
    if !cap.nssrs() {
        return Ok(Verdict::Skip(
            "CAP.NSSRS is 0: NVM Subsystem Reset is not supported".into(),
        ));
    }
    let old = cx.take_ctrl();
    RawRegisters::new(p.bar()).write32(offset::NSSR, NSSR_RESET);
    let limit = Duration::from_millis(cap.timeout_ms().max(500));
    let r = wait_csts(&*p, limit, |c| !c.rdy());
    // The old driver instance only finds a disabled controller to clean up after.
    drop(old);
    r.map_err(|e| anyhow::anyhow!("RDY did not fall after the subsystem reset: {e}"))?;
    let csts = Csts(p.bar().read32(offset::CSTS));
    ensure!(
        csts.0 & 0x10 != 0,
        "CSTS.NSSRO is clear after an NVM Subsystem Reset (CSTS {:#x})",
        csts.0
    );
    RawRegisters::new(p.bar()).write32(offset::CSTS, 0x10);
    let csts = Csts(p.bar().read32(offset::CSTS));
    ensure!(
        csts.0 & 0x10 == 0,
        "writing 1 to CSTS.NSSRO did not clear it (CSTS {:#x})",
        csts.0
    );
    let cfg = cx.config();
    let c = cx.bring_up(cfg)?;
    ensure!(
        !c.namespaces().is_empty(),
        "no namespace after the subsystem reset"
    );
    Ok(Verdict::Pass)
}

fn small_admin<B: Backend>(
    cx: &mut Ctx<'_, B>,
    entries: u16,
    commands: usize,
) -> anyhow::Result<Verdict> {
    let mut cfg = cx.config();
    cfg.admin_queue_entries = entries;
    cfg.async_events = 0;
    let c = cx.bring_up(cfg)?;
    let aqa = Aqa(c.platform().bar().read32(offset::AQA));
    ensure!(
        (aqa.asqs_z(), aqa.acqs_z()) == (entries - 1, entries - 1),
        "AQA {:#x}: expected {} entries each",
        aqa.0,
        entries
    );
    let first = c.get_features(
        nvme_core::spec::FeatureId::NUMBER_OF_QUEUES,
        select::CURRENT,
        0,
    )?;
    for i in 0..commands {
        let v = c.get_features(
            nvme_core::spec::FeatureId::NUMBER_OF_QUEUES,
            select::CURRENT,
            0,
        )?;
        ensure!(
            v == first,
            "command {i}: Number of Queues reads {v:#x}, first {first:#x}"
        );
        if i % 10 == 0 {
            c.identify_controller()
                .with_context(|| format!("Identify after {i} commands"))?;
        }
    }
    Ok(Verdict::Pass)
}

fn min_admin_queue<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    small_admin(cx, 2, 10)
}

fn admin_wrap<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    small_admin(cx, 4, 50)
}

fn enable_without_io_sizes<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let p = cx.platform().clone();
    let cap = ensure_disabled(&*p)?;
    if cap.mpsmin() != 0 {
        return Ok(Verdict::Skip(
            "CAP.MPSMIN is above 4 KiB, the page size of this suite's buffers".into(),
        ));
    }
    let mut admin = ManualAdmin::new(&p)?;
    let st = enable(&*p, cap, manual_cc(cap, cap.mpsmin(), 0, 0))?;
    let r = match st {
        // Refusing is legal: some controllers check the sizes at enable.
        Some(c) if c.cfs() => Ok(None),
        None => Ok(None),
        Some(_) => admin.identify(&p, cap).map(Some),
    };
    disable(&*p, cap)?;
    drop(admin);
    if let Some(id) = r? {
        ensure!(id.nn >= 1, "the Identify data is implausible");
    }
    // Either way the driver brings it up properly afterwards.
    cx.ctrl()?;
    Ok(Verdict::Pass)
}

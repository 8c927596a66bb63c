//! Registers, bring-up and shutdown (NVMe Base §3.1.4, §3.5.1, §3.6.1).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use nvme_core::hw::{Bar, Platform};
use nvme_core::spec::regs::{offset, shn, shst};
use nvme_core::spec::{Cap, Cc, Csts, Vs};

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
    let bar = cx.platform().bar();
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
    let bar = cx.platform().bar();
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
    p.bar().write32(offset::CC, cc.with_en(false).0);
    let limit = Duration::from_millis(cap.timeout_ms());
    wait_csts(&*p, limit, |c| !c.rdy())
        .map_err(|e| anyhow::anyhow!("RDY did not clear within CAP.TO: {e}"))?;
    drop(c); // the driver notices the controller is disabled and frees its memory
    let cfg = cx.config();
    let c = cx.bring_up(cfg)?;
    ensure!(!c.namespaces().is_empty(), "no namespace after re-enable");
    Ok(Verdict::Pass)
}

fn normal_shutdown<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    cx.ctrl()?;
    let ctrl = cx.take_ctrl();
    let p = cx.platform().clone();
    let cc = Cc(p.bar().read32(offset::CC));
    p.bar().write32(offset::CC, cc.with_shn(shn::NORMAL).0);
    let r = wait_csts(&*p, Duration::from_secs(10), |c| c.shst() == shst::COMPLETE);
    // Whatever happened, the driver's own teardown disables the controller.
    drop(ctrl);
    r.map_err(|e| anyhow::anyhow!("shutdown did not complete: {e}"))?;
    ensure!(
        !Cc(p.bar().read32(offset::CC)).en() || !Csts(p.bar().read32(offset::CSTS)).rdy(),
        "controller still enabled after teardown"
    );
    Ok(Verdict::Pass)
}

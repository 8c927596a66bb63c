//! Running cases: a fresh platform and controller per case, the verdict, the host-violation
//! check on the simulator, the grouped report and the markdown table.

use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nvme_core::spec::Status;
use nvme_core::{Controller, ControllerConfig};

use crate::allowances::{self, Observed};
use crate::backend::{Backend, Peer};

/// The areas of the suite, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// Registers, bring-up, shutdown (§3.1.4, §3.5, §3.6).
    Registers,
    /// Identify (§5.1.13).
    Identify,
    /// Get/Set Features (§5.1.11, §5.1.25).
    Features,
    /// Get Log Page (§5.1.12).
    LogPages,
    /// Queue management (§5.2).
    Queues,
    /// Asynchronous events (§5.1.2).
    AsyncEvents,
    /// Abort (§5.1.1).
    Abort,
    /// NVM I/O commands (NVM Command Set §3).
    NvmIo,
    /// PRP edge cases (§4.3.1).
    Prp,
    /// Scatter Gather Lists (§4.3.2).
    Sgl,
    /// Interrupt signalling (§5.2.1 IEN/IV, MSI-X).
    Interrupts,
    /// Durability: FUA, Flush, the volatile write cache and power loss (NVM §3.3, §5.1.25.1.6).
    Durability,
    /// Format NVM (§5.1.10).
    Format,
    /// Namespace attachment and management (§5.1.19, §5.1.20).
    Namespaces,
    /// Error handling and recovery on the driver side (faults).
    Recovery,
}

impl Group {
    /// The heading in reports.
    pub fn title(self) -> &'static str {
        match self {
            Group::Registers => "Registers and bring-up",
            Group::Identify => "Identify",
            Group::Features => "Get/Set Features",
            Group::LogPages => "Get Log Page",
            Group::Queues => "Queue management",
            Group::AsyncEvents => "Asynchronous events",
            Group::Abort => "Abort",
            Group::NvmIo => "NVM I/O",
            Group::Prp => "PRP edge cases",
            Group::Sgl => "SGLs",
            Group::Interrupts => "Interrupts",
            Group::Durability => "Durability",
            Group::Format => "Format NVM",
            Group::Namespaces => "Namespace attachment",
            Group::Recovery => "Errors and recovery",
        }
    }
}

/// A passing case's verdict (a failure is an `Err`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The controller did what the spec says.
    Pass,
    /// The controller deviated in the way the named allowance documents.
    Allowed(&'static str),
    /// The case does not apply: the controller does not advertise the optional feature it
    /// checks (the reason says which).
    Skip(String),
}

/// One conformance case.
pub struct Case<B: Backend> {
    /// Stable ID (`REG-01`).
    pub id: &'static str,
    /// Area.
    pub group: Group,
    /// The spec section it checks.
    pub spec: &'static str,
    /// What it checks.
    pub title: &'static str,
    /// The case itself.
    pub run: fn(&mut Ctx<'_, B>) -> anyhow::Result<Verdict>,
    /// The case makes host protocol violations on purpose (so they are not held against the
    /// driver).
    pub violates: bool,
    /// Runs only on the simulator (fault injection).
    pub sim_only: bool,
}

impl<B: Backend> std::fmt::Debug for Case<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.id, self.title)
    }
}

/// The outcome of a case on a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed.
    Pass,
    /// Passed through an allowance.
    Allowed(&'static str),
    /// Not applicable.
    Skip(String),
    /// Failed, with the reason.
    Fail(String),
}

/// One row of a report.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Case ID.
    pub id: &'static str,
    /// Area.
    pub group: Group,
    /// Spec section.
    pub spec: &'static str,
    /// Title.
    pub title: &'static str,
    /// Outcome.
    pub outcome: Outcome,
    /// Wall time.
    pub time: Duration,
}

/// The context of one case: the platform, a lazily brought-up controller, the peer.
#[allow(missing_debug_implementations)]
pub struct Ctx<'a, B: Backend> {
    /// The backend.
    pub backend: &'a B,
    /// The case ID (for allowance look-ups).
    pub case_id: &'static str,
    platform: Arc<B::P>,
    ctrl: Option<Controller<B::P>>,
    peer: Option<Peer>,
}

impl<'a, B: Backend> Ctx<'a, B> {
    /// The platform (raw register access for register cases).
    pub fn platform(&self) -> &Arc<B::P> {
        &self.platform
    }
    /// The suite's controller configuration for this backend.
    pub fn config(&self) -> ControllerConfig {
        ControllerConfig {
            io_queue_pairs: 4,
            interrupts: self.backend.interrupts(),
            admin_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(5),
            format_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(5),
            max_transfer: 2 * 1024 * 1024,
            async_events: 1,
            // The suite examines the controller, not the driver's recovery: a timeout or a
            // reset is reported as it happens, never aborted or retried behind a case's back.
            recovery: nvme_core::RecoveryPolicy::REPORT_ONLY,
            // PRPs, which every controller supports, so the PRP cases check PRPs; the SGL
            // cases bring the controller up with SGLs themselves.
            transfer_mode: nvme_core::TransferMode::Prp,
            // Cases that drive raw queues ring the doorbell registers themselves; a
            // controller with a doorbell buffer (NVMe Base §5.8) would read their tails from
            // the shadow buffer instead, which those cases do not write. Shadow doorbells
            // are exercised by `tests/shadow_doorbells.rs` and by the driver's default
            // configuration elsewhere (the tool, the soak).
            shadow_doorbells: false,
            ..ControllerConfig::default()
        }
    }
    /// The controller, brought up with the suite's configuration on first use.
    ///
    /// # Errors
    /// Bring-up failed.
    pub fn ctrl(&mut self) -> anyhow::Result<&mut Controller<B::P>> {
        if self.ctrl.is_none() {
            let cfg = self.config();
            return self.bring_up(cfg);
        }
        self.ctrl.as_mut().context("controller")
    }
    /// Brings the controller up with `cfg` (replacing any earlier one).
    ///
    /// # Errors
    /// Bring-up failed.
    pub fn bring_up(&mut self, cfg: ControllerConfig) -> anyhow::Result<&mut Controller<B::P>> {
        if let Some(c) = self.ctrl.take() {
            c.shutdown()
                .context("shutting down the previous controller")?;
        }
        let c = Controller::new(self.platform.clone(), cfg).context("controller bring-up")?;
        self.peer = Some(Peer::detect(c.identify(), self.backend.is_sim()));
        Ok(self.ctrl.insert(c))
    }
    /// Takes the controller out (to shut it down or drop it inside the case).
    pub fn take_ctrl(&mut self) -> Option<Controller<B::P>> {
        self.ctrl.take()
    }
    /// The peer on the other side (brings the controller up if needed).
    ///
    /// # Errors
    /// Bring-up failed.
    pub fn peer(&mut self) -> anyhow::Result<Peer> {
        if self.peer.is_none() {
            self.ctrl()?;
        }
        self.peer.context("peer")
    }
    /// Checks `got` against the legal `(SCT, SC)` outcomes; otherwise looks for an allowance
    /// of this case and peer that explains it.
    ///
    /// # Errors
    /// Neither legal nor allowed.
    pub fn expect_status(
        &mut self,
        what: &str,
        got: Status,
        legal: &[(u8, u8)],
    ) -> anyhow::Result<Verdict> {
        if legal
            .iter()
            .any(|&(sct, sc)| got.sct().0 == sct && got.sc() == sc)
        {
            return Ok(Verdict::Pass);
        }
        let peer = self.peer()?;
        let observed = if got.is_success() {
            Observed::Success
        } else {
            Observed::Status(got.sct().0, got.sc())
        };
        if let Some(a) = allowances::find(peer, self.case_id, observed) {
            return Ok(Verdict::Allowed(a.id));
        }
        let legal: Vec<String> = legal
            .iter()
            .map(|(t, c)| format!("{t:x}h/{c:02x}h"))
            .collect();
        anyhow::bail!(
            "{what}: expected {} but the controller returned {got}",
            legal.join(" or ")
        )
    }
    /// As [`Ctx::expect_status`], and the status must carry DNR (unless an allowance says the
    /// peer omits it).
    ///
    /// # Errors
    /// As [`Ctx::expect_status`], or DNR missing.
    pub fn expect_status_dnr(
        &mut self,
        what: &str,
        got: Status,
        legal: &[(u8, u8)],
    ) -> anyhow::Result<Verdict> {
        let v = self.expect_status(what, got, legal)?;
        if v == Verdict::Pass && !got.dnr() {
            let peer = self.peer()?;
            if let Some(a) = allowances::find(peer, self.case_id, Observed::NoDnr) {
                return Ok(Verdict::Allowed(a.id));
            }
            anyhow::bail!("{what}: status {got} should have Do Not Retry set");
        }
        Ok(v)
    }
    /// Accepts a documented behavioural deviation of the peer, else fails with `msg`.
    ///
    /// # Errors
    /// No allowance covers it.
    pub fn deviation(&mut self, msg: String) -> anyhow::Result<Verdict> {
        let peer = self.peer()?;
        if let Some(a) = allowances::find(peer, self.case_id, Observed::Behaviour) {
            return Ok(Verdict::Allowed(a.id));
        }
        anyhow::bail!(msg)
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}

/// Runs one case on a fresh platform.
pub fn run_case<B: Backend>(backend: &B, case: &Case<B>) -> CaseResult {
    let start = Instant::now();
    let outcome = match backend.open() {
        Err(e) => Outcome::Fail(format!("cannot open {}: {e:#}", backend.name())),
        Ok(platform) => {
            let mut cx = Ctx {
                backend,
                case_id: case.id,
                platform,
                ctrl: None,
                peer: None,
            };
            let r = catch_unwind(AssertUnwindSafe(|| (case.run)(&mut cx)));
            let mut outcome = match r {
                Ok(Ok(Verdict::Pass)) => Outcome::Pass,
                Ok(Ok(Verdict::Allowed(a))) => Outcome::Allowed(a),
                Ok(Ok(Verdict::Skip(why))) => Outcome::Skip(why),
                Ok(Err(e)) => Outcome::Fail(format!("{e:#}")),
                Err(p) => Outcome::Fail(format!("panicked: {}", panic_message(&*p))),
            };
            if let Some(c) = cx.ctrl.take() {
                if let Err(e) = c.shutdown() {
                    if !matches!(outcome, Outcome::Fail(_)) {
                        outcome =
                            Outcome::Fail(format!("orderly shutdown after the case failed: {e}"));
                    }
                }
            }
            drop(cx);
            if !case.violates {
                let v = backend.violations();
                if !v.is_empty() && !matches!(outcome, Outcome::Fail(_)) {
                    outcome = Outcome::Fail(format!(
                        "the driver violated the protocol: {}",
                        v.join("; ")
                    ));
                }
            }
            backend.clear_violations();
            outcome
        }
    };
    CaseResult {
        id: case.id,
        group: case.group,
        spec: case.spec,
        title: case.title,
        outcome,
        time: start.elapsed(),
    }
}

/// Runs `cases` (those whose ID or title contains `filter`) on `backend`, printing a line per
/// case grouped by area.
pub fn run_suite<B: Backend>(
    backend: &B,
    cases: &[Case<B>],
    filter: Option<&str>,
) -> Vec<CaseResult> {
    let mut results = Vec::new();
    let mut group = None;
    println!("\n=== {} ===", backend.name());
    let mut sorted: Vec<&Case<B>> = cases.iter().collect();
    sorted.sort_by_key(|c| c.group);
    for case in sorted {
        if let Some(f) = filter {
            if !case.id.contains(f) && !case.title.contains(f) {
                continue;
            }
        }
        if case.sim_only && !backend.is_sim() {
            continue;
        }
        if group != Some(case.group) {
            group = Some(case.group);
            println!("-- {} --", case.group.title());
        }
        let r = run_case(backend, case);
        let (tag, detail) = match &r.outcome {
            Outcome::Pass => ("ok     ", String::new()),
            Outcome::Allowed(a) => (
                "ALLOWED",
                format!(
                    "  [{a}: {}]",
                    allowances::ALLOWANCES
                        .iter()
                        .find(|x| x.id == *a)
                        .map(|x| x.reason)
                        .unwrap_or("")
                ),
            ),
            Outcome::Skip(w) => ("skip   ", format!("  ({w})")),
            Outcome::Fail(w) => ("FAIL   ", format!("\n          {w}")),
        };
        println!(
            "  {tag} {:<7} {} ({}) {:.0?}{detail}",
            r.id, r.title, r.spec, r.time
        );
        results.push(r);
    }
    results
}

/// Counts (passed incl. allowed, allowed, failed, skipped).
pub fn counts(results: &[CaseResult]) -> (usize, usize, usize, usize) {
    let mut c = (0, 0, 0, 0);
    for r in results {
        match r.outcome {
            Outcome::Pass => c.0 += 1,
            Outcome::Allowed(_) => {
                c.0 += 1;
                c.1 += 1
            }
            Outcome::Fail(_) => c.2 += 1,
            Outcome::Skip(_) => c.3 += 1,
        }
    }
    c
}

/// One TSV line per result: backend, case, outcome (for collecting results from the
/// hardware-in-the-loop guest).
pub fn tsv(backend: &str, results: &[CaseResult]) -> String {
    let mut s = String::new();
    for r in results {
        let o = match &r.outcome {
            Outcome::Pass => "pass".to_string(),
            Outcome::Allowed(a) => format!("allowed:{a}"),
            Outcome::Skip(_) => "skip".to_string(),
            Outcome::Fail(_) => "fail".to_string(),
        };
        let _ = writeln!(s, "RESULT\t{backend}\t{}\t{o}", r.id);
    }
    s
}

/// The markdown table case × backend, from `(backend, [(case, outcome)])` columns and the
/// case list for titles and sections; `sharpness`, if given, is appended as the section on
/// deliberate simulator defects (the table `scripts/mutants.sh` writes).
pub fn markdown<B: Backend>(
    cases: &[Case<B>],
    columns: &[(String, Vec<(String, String)>)],
    sharpness: Option<&str>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Conformance results\n");
    let _ = writeln!(s, "Generated by `cargo xtask conformance-table`; do not edit by hand. `pass`: the spec's outcome; `allowed (ID)`: a documented deviation from `conformance-tests/src/allowances.rs`; `skip`: the controller does not advertise the optional feature; `fail`: a defect; `—`: not run on that backend (simulator-only fault injection, the PRP-only shape, or a column merged from an earlier run that predates the case).\n");
    let _ = write!(s, "| case | area | spec | check |");
    for (b, _) in columns {
        let _ = write!(s, " {b} |");
    }
    let _ = writeln!(s);
    let _ = write!(s, "|---|---|---|---|");
    for _ in columns {
        let _ = write!(s, "---|");
    }
    let _ = writeln!(s);
    let mut sorted: Vec<&Case<B>> = cases.iter().collect();
    sorted.sort_by_key(|c| c.group);
    for c in sorted {
        let _ = write!(
            s,
            "| {} | {} | {} | {} |",
            c.id,
            c.group.title(),
            c.spec,
            c.title
        );
        for (_, col) in columns {
            let o = col
                .iter()
                .find(|(id, _)| id == c.id)
                .map(|(_, o)| o.as_str())
                .unwrap_or("—");
            let o = o
                .strip_prefix("allowed:")
                .map(|a| format!("allowed ({a})"))
                .unwrap_or_else(|| o.to_string());
            let _ = write!(s, " {o} |");
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "\n## Totals\n");
    for (b, col) in columns {
        let n = |p: &str| col.iter().filter(|(_, o)| o.starts_with(p)).count();
        let _ = writeln!(
            s,
            "- {b}: {} pass, {} allowed, {} skip, {} fail",
            n("pass"),
            n("allowed"),
            n("skip"),
            n("fail")
        );
    }
    if let Some(t) = sharpness {
        let _ = writeln!(s, "\n## Sharpness: deliberate defects of the simulator\n");
        let _ = writeln!(s, "`scripts/mutants.sh` applies each one-line defect below to a scratch copy of the simulator (never to the working tree), runs the simulator suite (shapes `msix` and `polled`) against it and lists the cases that fail. Every defect must be caught by at least one named case, or carry the reason it cannot be observed through the spec.\n");
        s.push_str(t.trim_end());
        s.push('\n');
    }
    s
}

/// Parses [`tsv`] output back into columns.
pub fn parse_tsv(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut cols: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.split("RESULT\t").nth(1) else {
            continue;
        };
        let f: Vec<&str> = rest.trim_end().split('\t').collect();
        if f.len() != 3 {
            continue;
        }
        let col = match cols.iter_mut().position(|(b, _)| b == f[0]) {
            Some(i) => &mut cols[i].1,
            None => {
                cols.push((f[0].to_string(), Vec::new()));
                &mut cols.last_mut().expect("just pushed").1
            }
        };
        col.push((f[1].to_string(), f[2].to_string()));
    }
    cols
}

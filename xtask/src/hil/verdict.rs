//! Pass/fail from the guest's serial log (byte search: SeaBIOS and the kernel put escape
//! sequences and other noise on the same console) plus the host-side image checks.

use std::collections::BTreeMap;

use super::initramfs::GuestPlan;
use super::opts::IrqMode;

/// Counts from the conformance harness's last line: `conformance: N passed, M failed`, with
/// optional `K allowed` / `S skipped` parts in any order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Cases that passed (as the harness counts them; it may include allowed ones).
    pub passed: u32,
    /// Cases that matched a documented peer deviation (the allowance table), if reported.
    pub allowed: u32,
    /// Cases that failed.
    pub failed: u32,
    /// Cases skipped (not applicable to this controller), if reported.
    pub skipped: u32,
}

impl Counts {
    /// Cases that ran to a verdict: `passed + failed`.
    pub fn total(&self) -> u32 {
        self.passed + self.failed
    }
}

/// Parses a harness summary line; `None` unless it names both passed and failed counts.
pub fn parse_summary(line: &str) -> Option<Counts> {
    let rest = &line[line.find("conformance:")? + "conformance:".len()..];
    let mut c = Counts::default();
    let (mut got_passed, mut got_failed) = (false, false);
    for part in rest.split(',') {
        let mut w = part.split_whitespace();
        let (Some(n), Some(what)) = (w.next(), w.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else { continue };
        match what.trim_end_matches(|ch: char| !ch.is_ascii_alphabetic()) {
            "passed" => (c.passed, got_passed) = (n, true),
            "allowed" => c.allowed = n,
            "failed" => (c.failed, got_failed) = (n, true),
            "skipped" => c.skipped = n,
            _ => {}
        }
    }
    (got_passed && got_failed).then_some(c)
}

/// The end of one step as the guest reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepEnd {
    /// Passed?
    pub pass: bool,
    /// Exit status the guest saw.
    pub rc: i64,
    /// Guest seconds from the step's BEGIN to its END, when both carry `t=`.
    pub secs: Option<f64>,
}

/// The `t=<guest uptime>` field of a step line.
fn time_of(words: &[&str]) -> Option<f64> {
    words
        .iter()
        .find_map(|w| w.strip_prefix("t="))
        .and_then(|t| t.parse().ok())
}

/// Everything the host reads from one serial log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestReport {
    /// `HIL-BEGIN` was seen: the kernel ran our `/init`.
    pub began: bool,
    /// `HIL-DEVICE` lines.
    pub devices: Vec<String>,
    /// Step name → its `END` line.
    pub steps: BTreeMap<String, StepEnd>,
    /// Step name → the last harness summary printed inside that step.
    pub summaries: BTreeMap<String, Counts>,
    /// The `HIL-VERDICT:` line (text after the marker) and whether it says PASS.
    pub verdict: Option<(bool, String)>,
    /// Guest uptime at the first step (≈ when `/init` started), seconds.
    pub init_at: Option<f64>,
    /// Mode → IOPS from the `HIL-PERF[<mode>]` lines.
    pub perf: BTreeMap<String, f64>,
}

/// Parses a serial log.
pub fn parse_log(log: &[u8]) -> GuestReport {
    let mut r = GuestReport::default();
    let mut current: Option<String> = None;
    let mut began_at: Option<f64> = None;
    for raw in log.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(raw);
        let line = line.trim_end_matches('\r');
        if let Some(at) = line.find("HIL-") {
            let m = &line[at..];
            if m.starts_with("HIL-BEGIN") {
                r.began = true;
                continue;
            }
            if let Some(d) = m.strip_prefix("HIL-DEVICE ") {
                r.devices.push(d.trim().to_owned());
                continue;
            }
            if let Some(v) = m.strip_prefix("HIL-VERDICT:") {
                let v = v.trim();
                r.verdict = Some((v.split_whitespace().next() == Some("PASS"), v.to_owned()));
                continue;
            }
            if let Some(p) = m.strip_prefix("HIL-PERF[") {
                // HIL-PERF[mode] pci:BDF IOPS MiB/s ...
                if let Some((mode, rest)) = p.split_once(']') {
                    if let Some(iops) = rest
                        .split_whitespace()
                        .nth(1)
                        .and_then(|x| x.parse::<f64>().ok())
                    {
                        r.perf.insert(mode.to_owned(), iops);
                    }
                }
                continue;
            }
            if let Some(s) = m.strip_prefix("HIL-STEP ") {
                let w: Vec<&str> = s.split_whitespace().collect();
                match w.as_slice() {
                    [name, "BEGIN", rest @ ..] => {
                        current = Some((*name).to_owned());
                        began_at = time_of(rest);
                        if r.init_at.is_none() {
                            r.init_at = began_at;
                        }
                    }
                    [name, "END", result, rc, rest @ ..] => {
                        let rc = rc
                            .strip_prefix("rc=")
                            .and_then(|x| x.parse().ok())
                            .unwrap_or(-1);
                        r.steps.insert(
                            (*name).to_owned(),
                            StepEnd {
                                pass: *result == "PASS",
                                rc,
                                secs: began_at.zip(time_of(rest)).map(|(b, e)| e - b),
                            },
                        );
                        current = None;
                        began_at = None;
                    }
                    _ => {}
                }
                continue;
            }
        }
        // The guest's own summary line (after the step) also carries the allowed count.
        if let Some(rest) = line.split("HIL-CONFORMANCE[").nth(1) {
            if let (Some(end), Some(c)) = (rest.find(']'), parse_summary(rest)) {
                r.summaries
                    .insert(format!("conformance[{}]", &rest[..end]), c);
            }
            continue;
        }
        if let (Some(step), Some(c)) = (&current, parse_summary(line)) {
            r.summaries.insert(step.clone(), c);
        }
    }
    r
}

/// One named check with its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Name, e.g. `nvme-read[polled]`.
    pub name: String,
    /// Passed?
    pub pass: bool,
    /// Why it failed (empty when it passed).
    pub detail: String,
}

/// The outcome of one configuration (one LBA size × one interrupt mode).
#[derive(Debug, Clone)]
pub struct ConfigResult {
    /// E.g. `lba512-ns1/polled`.
    pub name: String,
    /// Every check, boot-level ones included.
    pub checks: Vec<Check>,
    /// The harness counts, if it printed them.
    pub conformance: Option<Counts>,
}

impl ConfigResult {
    /// Whether every check passed.
    pub fn pass(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }
    /// `(passed, failed)` check counts.
    pub fn counts(&self) -> (usize, usize) {
        let p = self.checks.iter().filter(|c| c.pass).count();
        (p, self.checks.len() - p)
    }
}

fn check(name: &str, pass: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_owned(),
        pass,
        detail: if pass { String::new() } else { detail.into() },
    }
}

fn step_check(r: &GuestReport, name: &str) -> Check {
    match r.steps.get(name) {
        Some(e) => check(name, e.pass, format!("guest step failed (rc={})", e.rc)),
        None => check(name, false, "no END line in the serial log"),
    }
}

/// Judges one boot: a [`ConfigResult`] per interrupt mode. `host_image[i]` is the host-side
/// check of mode `i`'s write (`Err` holds why it failed); `boot_error` is set when QEMU
/// could not run to the end (timeout, crash).
pub fn judge(
    tag: &str,
    plan: &GuestPlan,
    r: &GuestReport,
    host_image: &[Result<(), String>],
    boot_error: Option<&str>,
) -> Vec<ConfigResult> {
    let mut boot = vec![check(
        "boot",
        boot_error.is_none() && r.began,
        boot_error.unwrap_or("no HIL-BEGIN line: the guest never ran /init"),
    )];
    // Boot-level steps are the expected ones that belong to no interrupt mode.
    boot.extend(
        plan.expected_steps()
            .iter()
            .filter(|s| !s.contains('['))
            .map(|s| step_check(r, s)),
    );
    boot.push(match &r.verdict {
        Some((pass, text)) => check("guest-verdict", *pass, format!("HIL-VERDICT: {text}")),
        None => check("guest-verdict", false, "no HIL-VERDICT line"),
    });
    if plan.expect_no_iommu {
        // Nothing ran on the device: the boot-level steps (bind without a group, the two
        // diagnoses) are the whole result.
        return vec![ConfigResult {
            name: format!("{tag}/no-iommu"),
            checks: boot,
            conformance: None,
        }];
    }
    let mode_steps = plan.mode_steps();
    plan.irq_modes
        .iter()
        .enumerate()
        .map(|(i, m): (usize, &IrqMode)| {
            let mut checks = boot.clone();
            let conf_name = format!("{}[{m}]", mode_steps[0]);
            let counts = r.summaries.get(&conf_name).copied();
            let mut conf = step_check(r, &conf_name);
            match counts {
                None => {
                    conf.pass = false;
                    conf.detail =
                        format!("{}; no `conformance: N passed, M failed` line", conf.detail)
                            .trim_start_matches("; ")
                            .to_owned();
                }
                Some(c) if c.failed > 0 => {
                    conf = check(&conf_name, false, format!("{} cases failed", c.failed))
                }
                Some(c) if c.passed == 0 => {
                    conf = check(&conf_name, false, "the harness ran no case")
                }
                Some(_) => {}
            }
            checks.push(conf);
            checks.extend(
                mode_steps[1..]
                    .iter()
                    .map(|s| step_check(r, &format!("{s}[{m}]"))),
            );
            let img = host_image
                .get(i)
                .cloned()
                .unwrap_or_else(|| Err("not checked".into()));
            checks.push(check(
                &format!("host-image[{m}]"),
                img.is_ok(),
                img.err().unwrap_or_default(),
            ));
            ConfigResult {
                name: format!("{tag}/{m}"),
                checks,
                conformance: counts,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_variants() {
        assert_eq!(
            parse_summary("conformance: 35 passed, 2 failed, 2 skipped"),
            Some(Counts {
                passed: 35,
                allowed: 0,
                failed: 2,
                skipped: 2
            })
        );
        let c = |p, a, f| {
            Some(Counts {
                passed: p,
                allowed: a,
                failed: f,
                skipped: 0,
            })
        };
        assert_eq!(
            parse_summary("conformance: 12 passed, 0 failed"),
            c(12, 0, 0)
        );
        assert_eq!(
            parse_summary("conformance: 40 passed, 3 allowed, 1 failed"),
            c(40, 3, 1)
        );
        assert_eq!(
            parse_summary("\x1b[0mconformance: 5 passed, 2 failed; finished in 3.1s"),
            c(5, 0, 2)
        );
        assert_eq!(
            parse_summary("[  3.2] x conformance:  7 passed , 1 allowed , 0 failed\r"),
            c(7, 1, 0)
        );
        assert_eq!(parse_summary("conformance: 7 passed"), None);
        assert_eq!(parse_summary("conformance: running 7 cases"), None);
        assert_eq!(parse_summary("7 passed, 0 failed"), None);
        assert_eq!(parse_summary("conformance: x passed, 0 failed"), None);
    }

    fn plan(modes: &[IrqMode]) -> GuestPlan {
        GuestPlan {
            tag: "t".into(),
            kver: "k".into(),
            modules: vec![],
            late_modules: vec![],
            irq_modes: modes.to_vec(),
            lba_size: 512,
            blocks: 8,
            host_lba: 100,
            guest_lba: 200,
            expect_no_iommu: false,
            perf_secs: None,
            expect_identity_domain: false,
            nbd: None,
            tokio: false,
            setup_modules: vec![],
        }
    }

    #[test]
    fn step_times_and_perf_are_parsed() {
        let log = b"HIL-STEP modules BEGIN t=15.50\nHIL-STEP modules END PASS rc=0 t=15.75\n\
HIL-STEP conformance[msix] BEGIN t=20.00\nHIL-STEP conformance[msix] END PASS rc=0 t=80.50\n\
HIL-PERF[msix] pci:0000:00:01.0   12345   48.2   2.00\nHIL-PERF[polled] \n";
        let r = parse_log(log);
        assert_eq!(r.init_at, Some(15.5));
        assert_eq!(r.steps["modules"].secs, Some(0.25));
        assert_eq!(r.steps["conformance[msix]"].secs, Some(60.5));
        assert_eq!(r.perf.get("msix"), Some(&12345.0));
        assert!(!r.perf.contains_key("polled"));
    }

    #[test]
    fn no_iommu_boot_is_one_configuration() {
        let mut p = plan(&[]);
        p.expect_no_iommu = true;
        let log = b"HIL-BEGIN t\n\
HIL-STEP modules BEGIN\nHIL-STEP modules END PASS rc=0\n\
HIL-STEP bind BEGIN\nHIL-DEVICE 0000:00:01.0 driver= iommu_group=\nHIL-STEP bind END PASS rc=0\n\
HIL-STEP diagnose-vfio-info BEGIN\nHIL-STEP diagnose-vfio-info END PASS rc=0\n\
HIL-STEP diagnose-nvme-tool BEGIN\nHIL-STEP diagnose-nvme-tool END PASS rc=0\n\
HIL-VERDICT: PASS steps=4/4 no-iommu-diagnosis\n";
        let res = judge("t", &p, &parse_log(log), &[], None);
        assert_eq!(res.len(), 1);
        assert_eq!(res[0].name, "t/no-iommu");
        assert!(res[0].pass(), "{:?}", res[0].checks);
        let bad = String::from_utf8_lossy(log).replace(
            "diagnose-nvme-tool END PASS rc=0",
            "diagnose-nvme-tool END FAIL rc=1",
        );
        assert!(!judge("t", &p, &parse_log(bad.as_bytes()), &[], None)[0].pass());
    }

    const GOOD: &[u8] = b"\x1b[2J\x1bcSeaBIOS (version 1.16)\r\n\
HIL-BEGIN lba512-ns1\r\n\
HIL-STEP modules BEGIN\nHIL-STEP modules END PASS rc=0\n\
HIL-STEP bind BEGIN\nHIL-DEVICE 0000:00:03.0 driver=vfio-pci iommu_group=3\nHIL-STEP bind END PASS rc=0\n\
HIL-STEP hugepages BEGIN\nHIL-STEP hugepages END PASS rc=0\n\
HIL-STEP vfio-info BEGIN\nBAR0 0x4000\nHIL-STEP vfio-info END PASS rc=0\n\
HIL-STEP conformance[polled] BEGIN t=2.50\nconformance: 1 passed, 0 failed\n\
[    2.1] vfio-pci 0000:00:03.0: something\nconformance: 40 passed, 1 allowed, 0 failed\n\
HIL-STEP conformance[polled] END PASS rc=0 t=2.91\n\
HIL-CONFORMANCE[polled] conformance: 40 passed, 1 allowed, 0 failed\n\
HIL-STEP nvme-read[polled] BEGIN\nHIL-STEP nvme-read[polled] END PASS rc=0\n\
HIL-STEP nvme-cmp[polled] BEGIN\nHIL-STEP nvme-cmp[polled] END PASS rc=0\n\
HIL-STEP nvme-write[polled] BEGIN\nHIL-STEP nvme-write[polled] END PASS rc=0\n\
HIL-STEP soak[polled] BEGIN\nsoak: 1000 I/Os, 480 verified, 0 mismatches, 0 lost, 0 faults injected, 0 recovered\nHIL-STEP soak[polled] END PASS rc=0\n\
HIL-VERDICT: PASS steps=9/9 conformance[polled]=40/41 allowed[polled]=1 io[polled]=ok\n";

    #[test]
    fn good_log_passes_every_check() {
        let r = parse_log(GOOD);
        assert!(r.began);
        assert_eq!(r.devices, ["0000:00:03.0 driver=vfio-pci iommu_group=3"]);
        assert_eq!(
            r.summaries["conformance[polled]"],
            Counts {
                passed: 40,
                allowed: 1,
                failed: 0,
                skipped: 0,
            }
        );
        assert!(r.verdict.as_ref().unwrap().0);
        let res = judge("lba512-ns1", &plan(&[IrqMode::Polled]), &r, &[Ok(())], None);
        assert_eq!(res.len(), 1);
        assert!(res[0].pass(), "{:?}", res[0].checks);
        assert_eq!(res[0].counts(), (12, 0));
        assert_eq!(res[0].name, "lba512-ns1/polled");
    }

    #[test]
    fn host_image_failure_and_missing_mode_fail() {
        let r = parse_log(GOOD);
        let res = judge(
            "t",
            &plan(&[IrqMode::Polled, IrqMode::Msix]),
            &r,
            &[Err("differs at byte 3".into())],
            None,
        );
        assert!(!res[0].pass());
        assert_eq!(res[0].counts(), (11, 1));
        assert!(!res[1].pass()); // no msix steps in the log at all
        let failed: Vec<_> = res[1]
            .checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.name.as_str())
            .collect();
        assert!(failed.contains(&"conformance[msix]") && failed.contains(&"host-image[msix]"));
    }

    #[test]
    fn failed_cases_or_no_summary_fail_even_with_rc_zero() {
        let log = String::from_utf8_lossy(GOOD)
            .replace("40 passed, 1 allowed, 0 failed", "40 passed, 2 failed");
        let res = judge(
            "t",
            &plan(&[IrqMode::Polled]),
            &parse_log(log.as_bytes()),
            &[Ok(())],
            None,
        );
        assert!(!res[0].pass());
        let log = String::from_utf8_lossy(GOOD).replace("conformance: ", "summary: ");
        let res = judge(
            "t",
            &plan(&[IrqMode::Polled]),
            &parse_log(log.as_bytes()),
            &[Ok(())],
            None,
        );
        assert!(!res[0].pass());
        assert!(res[0].conformance.is_none());
    }

    #[test]
    fn timeout_and_empty_log_fail() {
        let res = judge(
            "t",
            &plan(&[IrqMode::Polled]),
            &parse_log(GOOD),
            &[Ok(())],
            Some("timed out after 5 s"),
        );
        assert!(!res[0].pass());
        assert_eq!(res[0].checks[0].detail, "timed out after 5 s");
        let res = judge(
            "t",
            &plan(&[IrqMode::Polled]),
            &parse_log(b""),
            &[Ok(())],
            None,
        );
        assert!(!res[0].pass());
    }

    #[test]
    fn guest_fail_verdict_fails() {
        let log = String::from_utf8_lossy(GOOD).replace("HIL-VERDICT: PASS", "HIL-VERDICT: FAIL");
        let res = judge(
            "t",
            &plan(&[IrqMode::Polled]),
            &parse_log(log.as_bytes()),
            &[Ok(())],
            None,
        );
        assert!(!res[0].pass());
        let log = String::from_utf8_lossy(GOOD).replace(
            "nvme-cmp[polled] END PASS rc=0",
            "nvme-cmp[polled] END FAIL rc=1",
        );
        let res = judge(
            "t",
            &plan(&[IrqMode::Polled]),
            &parse_log(log.as_bytes()),
            &[Ok(())],
            None,
        );
        assert_eq!(res[0].counts().1, 1);
    }
}

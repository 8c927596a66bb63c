//! `nvme-tool soak` from the command line: one summary line on stdout, the exit status.

use std::process::Command;

fn soak(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nvme-tool"))
        .arg("soak")
        .args(args)
        .output()
        .expect("running nvme-tool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The numbers of `soak: N I/Os, N verified, N mismatches, N lost, N faults injected, N
/// recovered`.
fn counts(line: &str) -> Vec<u64> {
    let rest = line.strip_prefix("soak: ").expect("summary prefix");
    let labels = [
        "I/Os",
        "verified",
        "mismatches",
        "lost",
        "faults injected",
        "recovered",
    ];
    let parts: Vec<&str> = rest.split(", ").collect();
    assert_eq!(parts.len(), labels.len(), "{line}");
    parts
        .iter()
        .zip(labels)
        .map(|(p, l)| {
            let (n, label) = p.split_once(' ').expect("count and label");
            assert_eq!(label, l, "{line}");
            n.parse().expect("a count")
        })
        .collect()
}

#[test]
fn one_summary_line_and_success_without_faults() {
    let (ok, out, err) = soak(&["sim", "--ios", "3000", "--threads", "2", "-q", "4"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let c = counts(lines[0]);
    assert_eq!(c[0], 3000);
    assert!(c[1] > 0 && c[1] <= c[0]);
    assert_eq!(&c[2..], &[0, 0, 0, 0]);
}

#[test]
fn faults_on_the_simulator_are_counted_and_recovered() {
    let (ok, out, err) = soak(&[
        "sim",
        "--ios",
        "5000",
        "--faults",
        "5000",
        "--io-timeout-ms",
        "50",
        "--seed",
        "3",
    ]);
    assert!(ok, "{err}");
    let c = counts(out.trim_end());
    assert!(c[0] >= 5000 && c[1] > 0, "{out}");
    assert_eq!((c[2], c[3]), (0, 0), "{out}");
    assert!(c[4] > 0 && c[5] > 0, "{out}");
}

#[test]
fn faults_on_a_pci_device_are_refused() {
    let (ok, out, err) = soak(&["pci:0000:03:00.0", "--faults", "10"]);
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("--faults needs the simulator"), "{err}");
}

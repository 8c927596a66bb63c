//! Replays every checked-in input through the fuzz target bodies on stable Rust:
//! `corpus/<target>/*` (seed and minimized corpora) and `regressions/<target>/*` (every crash
//! ever found, kept forever). Fails if any input panics or if a target's corpus directory is
//! empty. Runs without the libtest harness so that the per-target counts are always printed.

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    v.sort();
    v
}

/// Runs one target's inputs; returns the names of those that panicked.
fn replay(target: &str, run: fn(&[u8])) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = files(&root.join("corpus").join(target));
    let regressions = files(&root.join("regressions").join(target));
    let mut failed = Vec::new();
    if corpus.is_empty() {
        failed.push(format!(
            "corpus/{target}/ is empty: check in seeds (see fuzz/README.md)"
        ));
    }
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).expect("readable input");
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            failed.push(format!("{target}: {} panicked", path.display()));
        }
    }
    println!(
        "replay {target}: {} inputs ({} corpus, {} regressions)",
        corpus.len() + regressions.len(),
        corpus.len(),
        regressions.len()
    );
    failed
}

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    for (name, run) in nvme_fuzz::TARGETS {
        if only.is_empty() || only.iter().any(|o| name.contains(o.as_str())) {
            failed.extend(replay(name, *run));
        }
    }
    if !failed.is_empty() {
        for f in &failed {
            eprintln!("FAILED: {f}");
        }
        std::process::exit(1);
    }
    println!("replay: all inputs passed");
}

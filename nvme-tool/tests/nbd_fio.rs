//! fio's `nbd` engine (libnbd) against `nvme-tool nbd` on the simulator: a random write job
//! whose blocks are read back and checked (crc32c) while writing continues
//! (`--verify_backlog`), then again after a server restart, and once more after one block of
//! the image was corrupted behind the server's back (which must fail). Skipped, with the
//! reason printed, when fio is not installed or lacks the engine.

mod nbd_common;

use std::path::Path;
use std::process::Command;

use nbd_common::{have, run, scratch, Server};

fn fio_has_nbd() -> bool {
    if !have("fio", "fio") {
        return false;
    }
    let (_, out) = run(Command::new("fio").arg("--enghelp"));
    if !out.lines().any(|l| l.trim() == "nbd") {
        println!("SKIPPED: this fio has no nbd ioengine (fio --enghelp):\n{out}");
        return false;
    }
    true
}

fn fio(dir: &Path, uri: &str, extra: &[&str]) -> (bool, String) {
    let mut c = Command::new("fio");
    // fio leaves its verify state files in the working directory.
    c.current_dir(dir);
    c.args([
        "--name=nbd-verify",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--size=16M",
        "--offset=4M",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--randseed=7",
    ]);
    c.args(extra);
    run(&mut c)
}

#[test]
fn fio_random_writes_verify_through_the_export_and_across_a_restart() {
    if !fio_has_nbd() {
        return;
    }
    let dir = scratch("fio");
    let img = dir.join("ns1.img");
    let dev = format!("sim:{}", img.display());
    let s = Server::start(&dir, &dev, &["-q", "32"]);
    let (ok, out) = fio(&dir, &s.uri(), &["--verify_backlog=64"]);
    assert!(ok, "fio failed:\n{out}\nserver:\n{}", s.log_text());
    assert!(out.contains("err= 0"), "{out}");
    let (st, log) = s.stop();
    assert!(st.success(), "{log}");
    // The same job's blocks, read and verified by a new server on the same image.
    let s = Server::start(&dir, &dev, &[]);
    let (ok, out) = fio(&dir, &s.uri(), &["--verify_only"]);
    assert!(ok, "fio --verify_only after a restart failed:\n{out}");
    let (st, log) = s.stop();
    assert!(st.success(), "{log}");
    // Flip one byte of a block fio wrote: verification must now fail.
    let mut bytes = std::fs::read(&img).unwrap();
    let (lo, hi) = (4 << 20, 20 << 20);
    let block = (lo..hi)
        .step_by(4096)
        .find(|&o| bytes[o..o + 4096].iter().any(|&b| b != 0))
        .expect("fio wrote something in its range");
    bytes[block + 100] ^= 0x5a;
    std::fs::write(&img, &bytes).unwrap();
    let s = Server::start(&dir, &dev, &[]);
    let (ok, out) = fio(&dir, &s.uri(), &["--verify_only"]);
    assert!(
        !ok,
        "fio must detect the corrupted block at {block}:\n{out}"
    );
    assert!(out.contains("verify"), "{out}");
    let (st, log) = s.stop();
    assert!(st.success(), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

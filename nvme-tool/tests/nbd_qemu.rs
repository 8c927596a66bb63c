//! Interoperability with QEMU's NBD client (`qemu-io`, `qemu-img`) against `nvme-tool nbd`
//! on the simulator. Skipped, with the reason printed, when qemu-utils is not installed.

mod nbd_common;

use std::process::Command;

use nbd_common::{have, run, scratch, Server};

const MIB: usize = 1 << 20;

fn qemu_io(uri: &str, cmds: &[&str]) -> (bool, String) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", uri]);
    for x in cmds {
        c.args(["-c", x]);
    }
    run(&mut c)
}

/// Writes and reads back patterns through the export, zeroes and discards a range, then
/// checks after an orderly shutdown that the bytes are in the simulator's image file at the
/// same offsets (the data went through NVMe Writes into the namespace).
#[test]
fn qemu_io_writes_and_reads_back_and_the_image_holds_the_data() {
    if !have("qemu-io", "qemu-utils") {
        return;
    }
    let dir = scratch("qemu-io");
    let img = dir.join("ns1.img");
    let s = Server::start(&dir, &format!("sim:{}", img.display()), &[]);
    let uri = s.uri();
    let (ok, out) = qemu_io(
        &uri,
        &[
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            // Above the advertised maximum payload of 1 MiB qemu splits; the server splits
            // each request at MDTS (128 KiB on the simulator).
            "write -P 0x5c 3M 3M",
            "read -P 0x5c 3M 3M",
            // Unaligned to MDTS, aligned to the 512-byte block.
            "write -P 0x11 1536 129536",
            "read -P 0x11 1536 129536",
            "read -P 0xab 131072 917504",
            "write -z 8M 512k",
            "read -P 0 8M 512k",
            "write -P 0x77 10M 64k",
            "write -z -u 10M 64k",
            "read -P 0 10M 64k",
            "discard 12M 1M",
            "flush",
        ],
    );
    assert!(ok, "qemu-io failed:\n{out}");
    assert!(!out.contains("Pattern verification failed"), "{out}");
    // A pattern check that must fail, so the checks above are real.
    let (_, out) = qemu_io(&uri, &["read -P 0xcd 0 4k"]);
    assert!(out.contains("Pattern verification failed"), "{out}");
    let (st, log) = s.stop();
    assert!(st.success(), "server exit {st:?}:\n{log}");
    assert!(log.contains("namespace 1 flushed"), "{log}");
    assert!(log.contains("controller shut down in order"), "{log}");
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes[..1536].iter().all(|&b| b == 0xab));
    assert!(bytes[1536..131072].iter().all(|&b| b == 0x11));
    assert!(bytes[131072..MIB].iter().all(|&b| b == 0xab));
    assert!(bytes[3 * MIB..6 * MIB].iter().all(|&b| b == 0x5c));
    assert!(bytes[8 * MIB..8 * MIB + 512 * 1024].iter().all(|&b| b == 0));
    assert!(bytes[10 * MIB..10 * MIB + 65536].iter().all(|&b| b == 0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `qemu-img convert` copies a file into the export; `qemu-img compare` finds it equal, and
/// different once one byte of the export changed. The server runs with MSI-X interrupts.
#[test]
fn qemu_img_convert_and_compare_through_the_export() {
    if !have("qemu-img", "qemu-utils") {
        return;
    }
    let dir = scratch("qemu-img");
    let src = dir.join("src.raw");
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..4 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&src, &data).unwrap();
    // MSI-X: the connection's worker waits on its queue pair's interrupt vector.
    let s = Server::start(&dir, "sim", &["--irq", "msix"]);
    let uri = s.uri();
    // Make the 64 MiB export hold the 4 MiB file and zeroes after it.
    let (ok, out) = qemu_io(&uri, &["write -z 0 64M"]);
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new("qemu-img").args([
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "raw",
        src.to_str().unwrap(),
        &uri,
    ]));
    assert!(ok, "qemu-img convert failed:\n{out}");
    let compare = |uri: &str| {
        let out = Command::new("qemu-img")
            .args([
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                src.to_str().unwrap(),
                uri,
            ])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = compare(&uri);
    assert_eq!(code, Some(0), "qemu-img compare: {out}");
    // Read back through the export and compare here too.
    let back = dir.join("back.raw");
    let (ok, out) = run(Command::new("qemu-img").args([
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &uri,
        back.to_str().unwrap(),
    ]));
    assert!(ok, "{out}");
    let back = std::fs::read(&back).unwrap();
    assert_eq!(back.len(), 64 * MIB);
    assert!(back[..4 * MIB] == data[..], "data read back differs");
    assert!(back[4 * MIB..].iter().all(|&b| b == 0));
    // Change one byte's block in the export: compare must now fail (exit 1).
    let (ok, out) = qemu_io(&uri, &[&format!("write -P {} 2M 512", data[2 * MIB] ^ 1)]);
    assert!(ok, "{out}");
    let (code, out) = compare(&uri);
    assert_eq!(
        code,
        Some(1),
        "qemu-img compare should see the difference: {out}"
    );
    let (st, log) = s.stop();
    assert!(st.success(), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

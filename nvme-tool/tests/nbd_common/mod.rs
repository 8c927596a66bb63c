//! Helpers shared by the NBD tests: a server process on the simulator, and a check for
//! the external tools.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "nvme-nbd-{name}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// True if `tool` runs; otherwise prints why the test is skipped.
pub fn have(tool: &str, package: &str) -> bool {
    match Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => true,
        Err(_) => {
            println!(
                "SKIPPED: {tool} is not installed (Debian package {package}); .ci/run installs it"
            );
            false
        }
    }
}

/// An `nvme-tool nbd` process.
pub struct Server {
    child: Option<Child>,
    /// The Unix socket it listens on.
    pub socket: PathBuf,
    /// Its stderr, collected in a file.
    pub log: PathBuf,
}

impl Server {
    /// Starts `nvme-tool nbd DEVICE --socket DIR/nbd.sock ARGS...` and waits until it serves.
    pub fn start(dir: &Path, device: &str, args: &[&str]) -> Server {
        Self::try_start(dir, device, args)
            .unwrap_or_else(|(status, log)| panic!("the server did not start ({status:?}):\n{log}"))
    }

    /// As [`Server::start`]; `Err((exit status, log))` if it exits before serving.
    pub fn try_start(
        dir: &Path,
        device: &str,
        args: &[&str],
    ) -> Result<Server, (Option<ExitStatus>, String)> {
        let socket = dir.join("nbd.sock");
        Self::start_on(dir, device, &socket, args)
    }

    /// As [`Server::try_start`] on a given socket path.
    pub fn start_on(
        dir: &Path,
        device: &str,
        socket: &Path,
        args: &[&str],
    ) -> Result<Server, (Option<ExitStatus>, String)> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let log = dir.join(format!("server-{n}.log"));
        // A missing image is created (64 MiB): the tool creates one only when asked.
        let device = match device.strip_prefix("sim:") {
            Some(p) if !p.contains(',') && !Path::new(p).exists() => format!("{device},create=64M"),
            _ => device.to_string(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_nvme-tool"))
            .arg("nbd")
            .arg(&device)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting nvme-tool");
        let mut s = Server {
            child: Some(child),
            socket: socket.to_path_buf(),
            log,
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if s.log_text().contains("nbd: serving") {
                return Ok(s);
            }
            if let Ok(Some(st)) = s.child.as_mut().unwrap().try_wait() {
                s.child = None;
                return Err((Some(st), s.log_text()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err((None, s.log_text()))
    }

    /// The `nbd+unix` URI of the export.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    /// What the server wrote to stderr so far.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Sends SIGTERM and waits for the exit; returns the status and the log.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("server running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return (st, self.log_text());
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("the server did not stop within 60 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the log contains `needle` (the server's own account of an event).
    pub fn wait_log(&self, needle: &str) -> String {
        let t0 = Instant::now();
        loop {
            let l = self.log_text();
            if l.contains(needle) {
                return l;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the server log never said {needle:?}:\n{l}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a command; returns (success, stdout + stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("running a tool");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

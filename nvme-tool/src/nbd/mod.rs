//! `nvme-tool nbd`: serves one namespace over the NBD protocol (the protocol document of
//! the reference implementation, `doc/proto.md`), on a Unix socket or a TCP address.
//!
//! Threads: the main thread owns the controller. It accepts connections, drives the
//! driver's recovery (`Controller::recover`), and at the end flushes and shuts the controller
//! down in order. Each connection runs on its own thread with its own I/O queue pair, taken
//! from a pool created at start-up (one pair per `--connections`, as many as the controller
//! grants) when the client picks the export (`NBD_OPT_GO` / `NBD_OPT_EXPORT_NAME`); when none
//! is left the client gets `NBD_REP_ERR_POLICY` with the reason (or, after
//! `NBD_OPT_EXPORT_NAME`, which cannot carry an error, the connection is closed), and the
//! server log says so. See [`handshake`] and [`transmit`].
//!
//! SIGINT / SIGTERM: the server stops accepting, shuts the read side of every connection
//! (requests already read are completed and answered), waits for the connections to end,
//! sends a Flush (NVM Command Set §3.3.2), deletes the queue pairs and shuts the controller
//! down (NVMe Base §3.6.1).
//!
//! A second server on the same device is refused: a simulator image is locked (`flock`) for
//! the life of the server, a VFIO device is held by its group (the open says "busy"), and a
//! socket path another server listens on is not taken over.

pub mod handshake;
pub mod proto;
pub mod transmit;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use nvme_core::hw::Platform;
use nvme_core::spec::identify::oncs;
use nvme_core::{Controller, ControllerConfig, IoQueuePair};
use sim_backend::Simulator;

use crate::device::{self, DeviceSpec, Opened};
use crate::Irq;
use handshake::{Export, Negotiated};
use proto::tflag;
use transmit::Geometry;

/// Options of `nbd`.
#[derive(clap::Args, Debug, Clone)]
pub struct NbdArgs {
    /// The device: `sim`, `sim:IMAGE`, `pci:0000:03:00.0`.
    pub device: DeviceSpec,
    /// Namespace ID to export.
    #[arg(short = 'n', long = "namespace-id", default_value_t = 1)]
    pub nsid: u32,
    /// Listen on this Unix socket (clients: `nbd+unix:///?socket=PATH`).
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    pub socket: Option<PathBuf>,
    /// Listen on this TCP address (e.g. 127.0.0.1:10809; clients: `nbd://HOST:PORT`).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// First block of the namespace the export starts at (the export is blocks
    /// `start-block..start-block + block-count`).
    #[arg(long = "start-block", default_value_t = 0)]
    pub start_block: u64,
    /// Blocks in the export (default: to the end of the namespace).
    #[arg(long = "block-count")]
    pub block_count: Option<u64>,
    /// Export read-only: writes, trims and zeroes get EPERM.
    #[arg(long)]
    pub read_only: bool,
    /// Connections served at once, each with its own I/O queue pair (capped by what the
    /// controller grants).
    #[arg(long, default_value_t = 4)]
    pub connections: u16,
    /// NVMe commands each connection keeps in flight at most (its queue pair's depth).
    #[arg(short = 'q', long = "queue-depth", default_value_t = 64)]
    pub qd: u16,
    /// Interrupt mode.
    #[arg(long, value_enum, default_value = "polled")]
    pub irq: Irq,
    /// Run the simulator on its own device thread (like a real device) instead of inline.
    #[arg(long)]
    pub sim_thread: bool,
}

/// Largest Read or Write command the server sends: the controller's maximum transfer,
/// capped here so that a connection's DMA buffers (one per queue entry) stay small.
const MAX_CHUNK: usize = 256 << 10;

/// Set by SIGINT / SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Async-signal-safe: one atomic store.
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid starting value; the handler only stores to
        // an atomic, which is async-signal-safe; the pointers passed are valid for the call.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            bail!(
                "installing a signal handler: {}",
                io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// A connection's socket.
#[derive(Debug)]
pub enum Stream {
    /// A Unix socket.
    Unix(UnixStream),
    /// A TCP socket.
    Tcp(TcpStream),
}

impl Stream {
    /// Another handle on the same socket.
    ///
    /// # Errors
    /// `dup` failed.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(how),
            Stream::Tcp(s) => s.shutdown(how),
        }
    }
    fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(d),
            Stream::Tcp(s) => s.set_write_timeout(d),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(b),
            Stream::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        (&*self).write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match *self {
            Stream::Unix(s) => (&*s).write(b),
            Stream::Tcp(s) => (&*s).write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    fn accept(&self) -> io::Result<Stream> {
        Ok(match self {
            Listener::Unix(l, _) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                Stream::Unix(s)
            }
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                // proto.md "Protocol phases": both sides SHOULD disable Nagle.
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Binds the Unix socket at `path`: a stale socket file (nobody listening) is replaced; a
/// path where a server answers, or that is not a socket, is refused.
fn bind_unix(path: &Path) -> Result<UnixListener> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket: choose another --socket path",
                path.display()
            );
        }
        if UnixStream::connect(path).is_ok() {
            bail!(
                "another server is already listening on {}: stop it first, or choose another --socket path",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("binding the Unix socket {}", path.display()))
}

/// Runs the server until SIGINT or SIGTERM.
///
/// # Errors
/// Bad options, a device that cannot be opened or is in use, a socket that cannot be bound,
/// bring-up or shutdown failures.
pub fn run(a: NbdArgs) -> Result<()> {
    ensure!(
        a.socket.is_some() || a.listen.is_some(),
        "say where to listen: --socket PATH or --listen 127.0.0.1:PORT"
    );
    ensure!(a.connections >= 1, "--connections must be at least 1");
    ensure!(a.qd >= 1, "--queue-depth must be at least 1");
    match &a.device {
        DeviceSpec::Sim(img) => {
            // The image is opened and locked against a second writer here (held by the
            // simulator's namespace for as long as it runs).
            let cfg = device::sim_config(img.as_ref(), a.sim_thread)?;
            let sim = Simulator::new(cfg).context("starting the simulator")?;
            serve(sim.platform(), &a)
        }
        DeviceSpec::Pci(_) => match device::open(&a.device, a.irq)? {
            Opened::Sim(_sim, p) => serve(p, &a),
            Opened::Vfio(p) => serve(p, &a),
        },
    }
}

fn serve<P>(p: Arc<P>, a: &NbdArgs) -> Result<()>
where
    P: Platform + Send + Sync + 'static,
{
    let listener = match (&a.socket, &a.listen) {
        (Some(path), _) => Listener::Unix(bind_unix(path)?, path.clone()),
        (None, Some(addr)) => {
            Listener::Tcp(TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?)
        }
        (None, None) => unreachable!("checked in run"),
    };
    match &listener {
        Listener::Unix(l, _) => l.set_nonblocking(true)?,
        Listener::Tcp(l) => l.set_nonblocking(true)?,
    }
    let name = p.name().to_string();
    let cfg = ControllerConfig {
        interrupts: a.irq == Irq::Msix,
        io_queue_pairs: a.connections,
        ..ControllerConfig::default()
    };
    let mut c =
        Controller::new(p, cfg).with_context(|| format!("bringing up the controller at {name}"))?;
    let r = session(&mut c, a, &listener, &name);
    let s = c.shutdown().context("shutting down the controller");
    r?;
    s?;
    eprintln!("nbd: controller shut down in order; bye");
    Ok(())
}

/// The export's geometry and flags from the controller and the namespace.
fn describe<P: Platform>(c: &Controller<P>, a: &NbdArgs) -> Result<(Geometry, Export)> {
    let ns = c.namespace(a.nsid)?.clone();
    let bs = ns.lba_size();
    ensure!(
        ns.metadata_size() == 0 || ns.bytes_per_block() == bs,
        "namespace {} has {} bytes of metadata per block interleaved with the data; NBD cannot carry it",
        ns.nsid(),
        ns.metadata_size()
    );
    let id = c.identify();
    let chunk_bytes = c.max_transfer().min(MAX_CHUNK) / bs as usize * bs as usize;
    ensure!(chunk_bytes > 0, "the maximum transfer is below one block");
    let blocks = crate::device::block_range(&ns, a.start_block, a.block_count)?;
    let g = Geometry {
        nsid: ns.nsid(),
        lba_size: bs,
        base: a.start_block,
        blocks,
        read_only: a.read_only,
        trim: id.supports(oncs::DATASET_MANAGEMENT),
        write_zeroes: id.supports(oncs::WRITE_ZEROES),
        chunk_blocks: (chunk_bytes / bs as usize) as u32,
    };
    // Truthful flags (proto.md "Transmission flags"): Flush and FUA are NVM commands every
    // controller has (§3.3.2; FUA is CDW12 bit 30 of Read/Write); TRIM and WRITE_ZEROES only
    // with their ONCS bits and on a writable export; CAN_MULTI_CONN because every
    // connection reaches the same namespace and a Flush commits writes completed on any
    // queue.
    let mut flags = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_FUA | tflag::CAN_MULTI_CONN;
    if a.read_only {
        flags |= tflag::READ_ONLY;
    } else {
        if g.trim {
            flags |= tflag::SEND_TRIM;
        }
        if g.write_zeroes {
            flags |= tflag::SEND_WRITE_ZEROES;
        }
    }
    // Maximum payload from MDTS, at least 1 MiB (proto.md: "SHOULD be at least 2^20"; larger
    // requests are split into MDTS-sized commands) and at most 32 MiB.
    let max_payload = (c.max_transfer() as u64).clamp(1 << 20, u64::from(transmit::MAX_REQUEST));
    let max_payload = (max_payload / u64::from(bs) * u64::from(bs)) as u32;
    let ex = Export {
        name: format!("ns{}", ns.nsid()),
        description: format!(
            "{} namespace {}: blocks {}..{} of {bs} bytes{}",
            id.mn.to_string().trim(),
            ns.nsid(),
            g.base,
            g.base + g.blocks,
            if a.read_only { ", read-only" } else { "" }
        ),
        size: g.size(),
        flags,
        min_block: bs,
        preferred_block: bs.max(4096),
        max_payload,
    };
    Ok((g, ex))
}

fn session<P>(c: &mut Controller<P>, a: &NbdArgs, listener: &Listener, name: &str) -> Result<()>
where
    P: Platform + Send + Sync + 'static,
{
    let (g, ex) = describe(c, a)?;
    let granted = c.granted_queue_pairs();
    let want = a.connections.min(granted);
    if want < a.connections {
        eprintln!(
            "nbd: {want} connection(s) at once instead of {}: the controller granted {granted} I/O queue pair(s)",
            a.connections
        );
    }
    let mut pairs = Vec::with_capacity(usize::from(want));
    for i in 0..want {
        let qp = c
            .create_io_queue_pair(a.qd.saturating_add(1))
            .with_context(|| format!("creating I/O queue pair {}", i + 1))?;
        pairs.push(qp);
    }
    let depth = pairs.first().map_or(0, IoQueuePair::depth);
    let pool: Mutex<Vec<IoQueuePair<P>>> = Mutex::new(pairs);
    install_signal_handlers()?;
    let shutting_down = AtomicBool::new(false);
    let where_ = match listener {
        Listener::Unix(_, p) => format!("nbd+unix:///{}?socket={}", ex.name, p.display()),
        Listener::Tcp(l) => format!("nbd://{}/{}", l.local_addr()?, ex.name),
    };
    eprintln!(
        "nbd: serving {} ({} bytes, {}-byte blocks, flags {:#06x}, max payload {}) from {name} on {where_}; {want} connection(s) of queue depth {depth}",
        ex.name, ex.size, g.lba_size, ex.flags, ex.max_payload
    );
    let conn_ids = AtomicU64::new(0);
    let mut recovery_errors = 0u32;
    std::thread::scope(|sc| -> Result<()> {
        let mut live: Vec<(Stream, std::thread::ScopedJoinHandle<'_, ()>)> = Vec::new();
        while !STOP.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok(stream) => {
                    let id = conn_ids.fetch_add(1, Ordering::Relaxed) + 1;
                    let keep = match stream.try_clone() {
                        Ok(k) => k,
                        Err(e) => {
                            eprintln!("nbd: connection {id}: {e}");
                            continue;
                        }
                    };
                    let (pool, ex, g, sd) = (&pool, &ex, &g, &shutting_down);
                    let wait_irq = a.irq == Irq::Msix;
                    let h =
                        sc.spawn(move || connection(id, stream, pool, ex, g, sd, want, wait_irq));
                    live.push((keep, h));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("nbd: accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            // This thread owns the admin queue: it drives the driver's recovery.
            if let Err(e) = c.recover() {
                recovery_errors += 1;
                if recovery_errors <= 3 {
                    eprintln!("nbd: recovery: {e}");
                }
            }
            live.retain(|(_, h)| !h.is_finished());
        }
        eprintln!(
            "nbd: signal received: no new connections; finishing the requests of {} connection(s)",
            live.len()
        );
        shutting_down.store(true, Ordering::SeqCst);
        for (s, _) in &live {
            // Ends each reader: requests already read are completed and answered.
            let _ = s.shutdown(Shutdown::Read);
        }
        while !live.iter().all(|(_, h)| h.is_finished()) {
            if let Err(e) = c.recover() {
                recovery_errors += 1;
                if recovery_errors <= 3 {
                    eprintln!("nbd: recovery: {e}");
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        for (_, h) in live {
            if h.join().is_err() {
                eprintln!("nbd: a connection thread panicked");
            }
        }
        Ok(())
    })?;
    let mut pairs = pool.into_inner().unwrap_or_else(|e| e.into_inner());
    let flushed = match pairs.first_mut() {
        Some(qp) => qp.flush(g.nsid).map_err(anyhow::Error::from),
        None => Ok(()),
    };
    match &flushed {
        Ok(()) => eprintln!("nbd: namespace {} flushed", g.nsid),
        Err(e) => eprintln!("nbd: final Flush failed: {e}"),
    }
    for qp in pairs {
        let qid = qp.qid();
        if let Err(e) = c.delete_io_queue_pair(qp) {
            eprintln!("nbd: deleting I/O queue pair {qid}: {e}");
        }
    }
    flushed.context("flushing the namespace before shutdown")
}

/// One client, from the greeting to the close.
#[allow(clippy::too_many_arguments)]
fn connection<P: Platform>(
    id: u64,
    mut stream: Stream,
    pool: &Mutex<Vec<IoQueuePair<P>>>,
    ex: &Export,
    g: &Geometry,
    shutting_down: &AtomicBool,
    total: u16,
    wait_irq: bool,
) {
    let log = format!("nbd: connection {id}");
    // A client that stops reading replies must not hold the connection forever.
    let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
    let acquire = || {
        pool.lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .ok_or_else(|| {
                format!(
                    "no I/O queue pair left: all {total} are in use by other connections (the server serves {total} at once; see --connections)"
                )
            })
    };
    let mut qp = match handshake::negotiate(&mut stream, ex, shutting_down, acquire) {
        Ok(Negotiated::Transmission(qp)) => qp,
        Ok(Negotiated::Ended(why)) => {
            eprintln!("{log}: handshake ended: {why}");
            return;
        }
        Err(e) => {
            eprintln!("{log}: handshake: {e}");
            return;
        }
    };
    eprintln!("{log}: transmission on I/O queue pair {}", qp.qid());
    let (why, st) = transmit::serve(&mut qp, g, stream, wait_irq, &log);
    let (qid, left) = (qp.qid(), qp.outstanding());
    pool.lock().unwrap_or_else(|e| e.into_inner()).push(qp);
    eprintln!(
        "{log}: closed ({why}): {} requests, {} errors, {} NVMe commands; I/O queue pair {qid} back in the pool ({left} commands still held by the device)",
        st.requests, st.errors, st.commands
    );
}

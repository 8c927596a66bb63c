//! The transmission phase of one connection (proto.md "Transmission", "Request types"):
//! NBD requests become NVMe commands on the connection's own I/O queue pair.
//!
//! Two threads per connection: a reader parses requests (and reads write payloads) from the
//! socket and hands them over a small bounded channel; the worker, which owns the queue
//! pair, validates each request, splits it into commands, keeps as many in flight as the
//! pair's depth allows (a client may pipeline), and sends each simple reply when the last
//! command of its request completes. Replies go out in completion order (proto.md
//! "Transmission": replies need not follow request order).
//!
//! Mapping (NVM Command Set 1.1 §3.3):
//! - `NBD_CMD_READ` / `NBD_CMD_WRITE` → Read (§3.3.4) / Write (§3.3.6), split into commands
//!   of at most `Geometry::chunk_blocks` blocks (the controller's MDTS); `NBD_CMD_FLAG_FUA`
//!   sets the Write's FUA bit (CDW12 bit 30);
//! - `NBD_CMD_FLUSH` → Flush (§3.3.2) of the namespace: it commits every write that completed
//!   on any queue, and a reply is only sent after its commands completed, so the flush covers
//!   every write already replied to on every connection (hence `NBD_FLAG_CAN_MULTI_CONN`);
//! - `NBD_CMD_TRIM` → Dataset Management with the Deallocate attribute (§3.3.3), one range;
//!   the range is shrunk to whole blocks (proto.md allows rounding a trim inward); with FUA
//!   a Flush follows;
//! - `NBD_CMD_WRITE_ZEROES` → Write Zeroes (§3.3.8) in commands of at most 65,536 blocks
//!   (NLB is 16 bits); the Deallocate bit (CDW12 bit 25) is set unless
//!   `NBD_CMD_FLAG_NO_HOLE` asks for provisioned blocks; FUA sets CDW12 bit 30;
//! - `NBD_CMD_DISC` → the reader stops; requests already read are completed and answered,
//!   then the connection closes.
//!
//! Requests whose offset or length is not a multiple of the LBA size (the advertised
//! minimum block size) are refused with `NBD_EINVAL`, never read-modify-written (proto.md
//! "Size constraints": a server that enforces a minimum block size "MUST cleanly error
//! commands that fall outside the constraints").
//!
//! Bounds: a write payload above [`MAX_REQUEST`] closes the connection (the payload cannot
//! be skipped without reading it; proto.md allows a hard disconnect for a payload "deemed a
//! denial of service"); a read above it gets `NBD_EINVAL`. The worker starts new requests
//! only while the data it holds stays under [`BUDGET`] (or holds none); the reader hands
//! requests over in batches of at most [`BATCH_BYTES`] plus one request, with at most two
//! batches in the channel. One connection therefore holds at most `BUDGET + MAX_REQUEST`
//! bytes in requests being served plus four batches (one waiting in the worker, two in the
//! channel, one being read): about 230 MiB, and only for a client that pipelines 32 MiB
//! writes. DMA buffers: at most one per queue entry.

use std::collections::VecDeque;
use std::io::{self, BufReader, Read, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::Duration;

use nvme_core::hw::Platform;
use nvme_core::spec::status::generic;
use nvme_core::spec::{Command, NvmOpcode, StatusCodeType};
use nvme_core::{DmaBuffer, Error, IoCompletion, IoQueuePair};

use super::proto::{self, cmd, cmdflag, errno, RequestHeader};
use super::Stream;

/// Largest request payload the server accepts (2^25 bytes: proto.md "Size constraints" says
/// no payload up to this size should be treated as a denial of service).
pub const MAX_REQUEST: u32 = 1 << 25;

/// Request data a connection's worker holds at once (reads being filled, writes being
/// sent); a new request is taken only below this (or when nothing is held).
pub const BUDGET: usize = 64 << 20;

/// Most blocks of one Write Zeroes command (NLB, CDW12 bits 15:0, is 0's based).
const MAX_ZEROES_BLOCKS: u64 = 1 << 16;

/// What the worker needs to know of the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Namespace ID.
    pub nsid: u32,
    /// Bytes per logical block (the minimum block size).
    pub lba_size: u32,
    /// First namespace block of the export (export offset 0).
    pub base: u64,
    /// Blocks in the export.
    pub blocks: u64,
    /// Writes, trims and zeroes get `NBD_EPERM`.
    pub read_only: bool,
    /// Dataset Management is supported (ONCS bit 2): `NBD_CMD_TRIM` is served.
    pub trim: bool,
    /// Write Zeroes is supported (ONCS bit 3): `NBD_CMD_WRITE_ZEROES` is served.
    pub write_zeroes: bool,
    /// Most blocks per Read or Write command (from MDTS).
    pub chunk_blocks: u32,
}

impl Geometry {
    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.blocks * u64::from(self.lba_size)
    }
}

/// A request turned into what to do on the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read `blocks` at `lba`.
    Read { lba: u64, blocks: u64 },
    /// Write `blocks` at `lba`.
    Write { lba: u64, blocks: u64, fua: bool },
    /// Flush the namespace.
    Flush,
    /// Deallocate `blocks` at `lba`, then flush if `fua`.
    Trim { lba: u64, blocks: u64, fua: bool },
    /// Write Zeroes of `blocks` at `lba`.
    Zeroes {
        lba: u64,
        blocks: u64,
        deallocate: bool,
        fua: bool,
    },
    /// Nothing to do (zero length, or a trim smaller than a block): success.
    Nothing,
}

/// A refused request: the NBD error value and the reason, for the log.
pub type Refusal = (u32, String);

/// Checks a request against the export and turns it into an [`Op`] (proto.md "Request
/// types", "Error values", "Size constraints").
///
/// # Errors
/// `NBD_EPERM` for writes, trims and zeroes on a read-only export; `NBD_EINVAL` for unknown
/// commands or flags, commands the export did not advertise, unaligned offsets or lengths,
/// reads and trims past the end, reads above [`MAX_REQUEST`]; `NBD_ENOSPC` for writes and
/// zeroes past the end.
pub fn check(h: &RequestHeader, g: &Geometry) -> Result<Op, Refusal> {
    let einval = |why: String| Err((errno::EINVAL, why));
    let allowed = match h.kind {
        cmd::WRITE_ZEROES => cmdflag::FUA | cmdflag::NO_HOLE,
        cmd::READ | cmd::WRITE | cmd::FLUSH | cmd::TRIM => cmdflag::FUA,
        k => return einval(format!("unknown command type {k} ({})", proto::cmd_name(k))),
    };
    if h.flags & !allowed != 0 {
        return einval(format!(
            "command flags {:#x} not valid for {} (or not advertised)",
            h.flags,
            proto::cmd_name(h.kind)
        ));
    }
    let fua = h.flags & cmdflag::FUA != 0;
    let writes = matches!(h.kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    if writes && g.read_only {
        return Err((errno::EPERM, "the export is read-only".into()));
    }
    if h.kind == cmd::FLUSH {
        if h.offset != 0 || h.len != 0 {
            return einval("NBD_CMD_FLUSH with a nonzero offset or length".into());
        }
        return Ok(Op::Flush);
    }
    if h.kind == cmd::TRIM && !g.trim {
        return einval("NBD_CMD_TRIM is not advertised (no Dataset Management, ONCS bit 2)".into());
    }
    if h.kind == cmd::WRITE_ZEROES && !g.write_zeroes {
        return einval(
            "NBD_CMD_WRITE_ZEROES is not advertised (no Write Zeroes, ONCS bit 3)".into(),
        );
    }
    if h.kind == cmd::READ && h.len > MAX_REQUEST {
        return einval(format!(
            "a read of {} bytes exceeds the {MAX_REQUEST}-byte maximum",
            h.len
        ));
    }
    let size = g.size();
    let end = h.offset.checked_add(u64::from(h.len));
    if end.is_none_or(|e| e > size) {
        let code = if matches!(h.kind, cmd::WRITE | cmd::WRITE_ZEROES) {
            errno::ENOSPC
        } else {
            errno::EINVAL
        };
        return Err((
            code,
            format!(
                "{} bytes at offset {} run past the end of the {size}-byte export",
                h.len, h.offset
            ),
        ));
    }
    let bs = u64::from(g.lba_size);
    if h.kind == cmd::TRIM {
        // Rounded inward to whole blocks: the rest is not discarded (a trim is a hint).
        let first = h.offset.div_ceil(bs);
        let last = (h.offset + u64::from(h.len)) / bs;
        if last <= first {
            return Ok(Op::Nothing);
        }
        return Ok(Op::Trim {
            lba: first,
            blocks: last - first,
            fua,
        });
    }
    if h.offset % bs != 0 || u64::from(h.len) % bs != 0 {
        return einval(format!(
            "offset {} / length {} not a multiple of the {bs}-byte block size",
            h.offset, h.len
        ));
    }
    if h.len == 0 {
        return Ok(Op::Nothing);
    }
    let (lba, blocks) = (h.offset / bs, u64::from(h.len) / bs);
    Ok(match h.kind {
        cmd::READ => Op::Read { lba, blocks },
        cmd::WRITE => Op::Write { lba, blocks, fua },
        _ => Op::Zeroes {
            lba,
            blocks,
            deallocate: h.flags & cmdflag::NO_HOLE == 0,
            fua,
        },
    })
}

/// The command of a request that starts `done` blocks into its `blocks` blocks at `lba`,
/// in commands of at most `max` blocks: its first LBA and its block count.
pub fn piece(lba: u64, blocks: u64, done: u64, max: u64) -> (u64, u64) {
    (lba + done, (blocks - done).min(max))
}

/// One request read from the socket.
struct Incoming {
    h: RequestHeader,
    /// The payload of a write.
    data: Vec<u8>,
}

/// A request in progress.
struct Active {
    h: RequestHeader,
    op: Op,
    /// Reads: the reply (16-byte header, then the data). Writes: the payload.
    buf: Vec<u8>,
    /// Blocks whose commands were submitted.
    next: u64,
    /// Commands in flight.
    outstanding: u32,
    /// The first error (NBD value), 0 if none.
    error: u32,
    /// The trailing Flush of a trim with FUA was submitted.
    flushing: bool,
}

impl Active {
    fn span(&self) -> (u64, u64) {
        match self.op {
            Op::Read { lba, blocks }
            | Op::Write { lba, blocks, .. }
            | Op::Zeroes { lba, blocks, .. } => (lba, blocks),
            Op::Trim { lba, .. } => (lba, 1),
            Op::Flush => (0, 1),
            Op::Nothing => (0, 0),
        }
    }
    fn submitted_all(&self) -> bool {
        self.error != 0 || self.next >= self.span().1
    }
    fn held_bytes(&self) -> usize {
        self.buf.len()
    }
}

/// Counts of one connection, for its closing log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnStats {
    /// Requests answered (or dropped because the client went away).
    pub requests: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// NVMe commands submitted.
    pub commands: u64,
}

/// Serves the transmission phase on `stream` with `qp` until the client disconnects, sends
/// `NBD_CMD_DISC`, breaks the protocol, or the socket's read side is shut down (server
/// shutdown). Every request read is completed before this returns (its commands finished,
/// their buffers back), whether or not its reply could still be sent. Returns why the
/// connection ended, and the counts.
pub fn serve<P: Platform>(
    qp: &mut IoQueuePair<P>,
    g: &Geometry,
    stream: Stream,
    wait_irq: bool,
    log: &str,
) -> (String, ConnStats) {
    let reader_stream = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            return (
                format!("cannot clone the socket: {e}"),
                ConnStats::default(),
            )
        }
    };
    // Small: back-pressure comes from the worker, which takes requests only while it has
    // room for them.
    let (tx, rx) = mpsc::sync_channel::<Vec<Incoming>>(2);
    let reader = std::thread::Builder::new()
        .name("nbd-reader".into())
        .spawn(move || read_requests(reader_stream, tx));
    let reader = match reader {
        Ok(r) => r,
        Err(e) => {
            return (
                format!("cannot start the reader thread: {e}"),
                ConnStats::default(),
            )
        }
    };
    let mut w = Worker {
        qp,
        g: *g,
        out: stream,
        rx,
        queued: VecDeque::new(),
        replies: Vec::with_capacity(64 << 10),
        active: Vec::new(),
        pending: VecDeque::new(),
        free: Vec::new(),
        owned: 0,
        chunk_bytes: g.chunk_blocks as usize * g.lba_size as usize,
        held: 0,
        client_gone: false,
        reader_done: false,
        stats: ConnStats::default(),
        logged: 0,
        log,
        wait_irq,
    };
    w.run();
    let stats = w.stats;
    drop(w);
    let why = reader
        .join()
        .unwrap_or_else(|_| "the reader thread panicked".into());
    (why, stats)
}

/// Most request bytes (headers and write payloads) the reader puts in one batch beyond the
/// first request: what a batch adds to the reader's and the channel's share of memory.
const BATCH_BYTES: usize = 1 << 20;

/// Reads requests until the end; returns why it stopped. Requests that already sit in the
/// read buffer behind the first go to the worker in the same batch (one wake-up, one
/// channel message, for a client that pipelines).
fn read_requests(s: Stream, tx: SyncSender<Vec<Incoming>>) -> String {
    let mut r = BufReader::with_capacity(64 << 10, s);
    loop {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let end = loop {
            match read_request(&mut r) {
                Ok(inc) => {
                    bytes += proto::REQUEST_LEN + inc.data.len();
                    batch.push(inc);
                }
                Err(why) => break Some(why),
            }
            if r.buffer().len() < proto::REQUEST_LEN || bytes >= BATCH_BYTES || batch.len() >= 64 {
                break None;
            }
        };
        if !batch.is_empty() && tx.send(batch).is_err() {
            return "the worker stopped".into();
        }
        if let Some(why) = end {
            return why;
        }
    }
}

/// Reads one request (and a write's payload); `Err` says why the connection ends.
fn read_request(r: &mut impl Read) -> Result<Incoming, String> {
    let mut hb = [0u8; proto::REQUEST_LEN];
    match read_full(r, &mut hb) {
        Ok(0) => return Err("the client closed the connection".into()),
        Ok(n) if n < hb.len() => {
            return Err(format!(
                "the client closed the connection {n} bytes into a request header"
            ))
        }
        Ok(_) => {}
        Err(e) => return Err(format!("socket read failed: {e}")),
    }
    let h = RequestHeader::decode(&hb).map_err(|m| {
        format!(
            "request magic {m:#010x} is not NBD_REQUEST_MAGIC: connection closed (proto.md \"Request message\")"
        )
    })?;
    if h.kind == cmd::DISC {
        return Err("NBD_CMD_DISC".into());
    }
    let mut data = Vec::new();
    if h.kind == cmd::WRITE {
        if h.len > MAX_REQUEST {
            return Err(format!(
                "a WRITE of {} bytes exceeds the {MAX_REQUEST}-byte maximum payload: connection closed without reading it",
                h.len
            ));
        }
        data = vec![0u8; h.len as usize];
        match read_full(r, &mut data) {
            Ok(n) if n == data.len() => {}
            Ok(n) => {
                return Err(format!(
                    "the client closed the connection {n} bytes into the {}-byte payload of a WRITE (nothing of it was written)",
                    h.len
                ))
            }
            Err(e) => return Err(format!("socket read failed inside a WRITE payload: {e}")),
        }
    }
    Ok(Incoming { h, data })
}

/// Reads until `buf` is full or the peer closes; returns the bytes read.
fn read_full(s: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

struct Worker<'a, P: Platform> {
    qp: &'a mut IoQueuePair<P>,
    g: Geometry,
    out: Stream,
    rx: Receiver<Vec<Incoming>>,
    /// Requests received and not started yet.
    queued: VecDeque<Incoming>,
    /// Replies not sent yet (sent together once per turn of the loop).
    replies: Vec<u8>,
    /// Requests in progress, by slot (the slot is in the command tags).
    active: Vec<Option<Active>>,
    /// Slots with commands left to submit, oldest first.
    pending: VecDeque<usize>,
    /// DMA buffers of `chunk_bytes` not in use.
    free: Vec<DmaBuffer<P>>,
    /// DMA buffers allocated and not lost to a timed-out command.
    owned: usize,
    chunk_bytes: usize,
    /// Request data held (see [`BUDGET`]).
    held: usize,
    client_gone: bool,
    reader_done: bool,
    stats: ConnStats,
    logged: u32,
    log: &'a str,
    wait_irq: bool,
}

/// Replies up to this size are collected and sent together; larger ones go out alone.
const REPLY_COALESCE: usize = 64 << 10;

/// Bits of a tag that carry the block offset of a command inside its request.
const OFFSET_BITS: u32 = 40;

impl<P: Platform> Worker<'_, P> {
    fn run(&mut self) {
        let mut done: Vec<IoCompletion<P>> = Vec::with_capacity(self.qp.depth());
        loop {
            self.intake();
            self.submit_pending();
            self.qp.ring();
            let busy = self.active.iter().any(Option::is_some);
            if !busy {
                self.send_replies();
                if self.reader_done && self.queued.is_empty() {
                    return;
                }
                if !self.queued.is_empty() {
                    continue;
                }
                // Idle: sleep until the next request.
                match self.rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(b) => self.queued.extend(b),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => self.reader_done = true,
                }
                continue;
            }
            done.clear();
            let r = if self.wait_irq {
                self.qp.wait(Duration::from_millis(1), |c| done.push(c))
            } else {
                self.qp.poll(|c| done.push(c))
            };
            if let Err(e) = r {
                self.note(format!("queue pair {}: {e}", self.qp.qid()));
            }
            if done.is_empty() {
                if self.qp.outstanding() == 0 && !self.pending.is_empty() {
                    // Nothing in flight yet work left: submissions failed for lack of DMA
                    // buffers; try again shortly.
                    std::thread::sleep(Duration::from_millis(1));
                } else {
                    std::thread::yield_now();
                }
            }
            for c in done.drain(..) {
                self.complete(c);
            }
            self.send_replies();
        }
    }

    /// Takes requests from the reader while there is room for them.
    fn intake(&mut self) {
        loop {
            let count = self.active.iter().filter(|a| a.is_some()).count();
            if count > 0 && (count >= self.qp.depth() || self.held >= BUDGET) {
                return;
            }
            if let Some(r) = self.queued.pop_front() {
                self.start(r);
                continue;
            }
            if self.reader_done {
                return;
            }
            match self.rx.try_recv() {
                Ok(b) => self.queued.extend(b),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => self.reader_done = true,
            }
        }
    }

    fn note(&mut self, msg: String) {
        self.logged += 1;
        if self.logged <= 20 {
            eprintln!("{}: {msg}", self.log);
        } else if self.logged == 21 {
            eprintln!(
                "{}: (further messages of this connection not shown)",
                self.log
            );
        }
    }

    fn start(&mut self, r: Incoming) {
        let op = match check(&r.h, &self.g) {
            Ok(op) => op,
            Err((code, why)) => {
                self.note(format!(
                    "{} of {} bytes at offset {}: error {code}: {why}",
                    proto::cmd_name(r.h.kind),
                    r.h.len,
                    r.h.offset
                ));
                self.reply(r.h.cookie, code, None);
                return;
            }
        };
        if op == Op::Nothing {
            self.reply(r.h.cookie, 0, None);
            return;
        }
        let buf = match op {
            Op::Read { .. } => vec![0u8; proto::SIMPLE_REPLY_LEN + r.h.len as usize],
            _ => r.data,
        };
        self.held += buf.len();
        let a = Active {
            h: r.h,
            op,
            buf,
            next: 0,
            outstanding: 0,
            error: 0,
            flushing: false,
        };
        let slot = match self.active.iter().position(Option::is_none) {
            Some(i) => {
                self.active[i] = Some(a);
                i
            }
            None => {
                self.active.push(Some(a));
                self.active.len() - 1
            }
        };
        self.pending.push_back(slot);
    }

    /// A DMA buffer of `chunk_bytes`: a free one, or a new one while fewer than the queue
    /// depth exist.
    fn buffer(&mut self) -> Option<DmaBuffer<P>> {
        if let Some(b) = self.free.pop() {
            return Some(b);
        }
        if self.owned >= self.qp.depth() {
            return None;
        }
        match self.qp.alloc_buffer(self.chunk_bytes) {
            Ok(b) => {
                self.owned += 1;
                Some(b)
            }
            Err(e) => {
                self.note(format!("DMA buffer allocation failed: {e}"));
                None
            }
        }
    }

    /// No DMA buffer now: wait for one to come back if any is in flight, else the request
    /// fails (allocation keeps failing and none will come back).
    fn no_buffer(&self) -> Result<bool, Refusal> {
        if self.owned > self.free.len() {
            return Ok(false);
        }
        Err((
            errno::EIO,
            "no DMA buffer could be allocated for the request".into(),
        ))
    }

    /// Submits commands for pending requests, oldest first, while the pair has room.
    fn submit_pending(&mut self) {
        while let Some(&slot) = self.pending.front() {
            let a = self.active[slot].as_ref().expect("pending slot is active");
            if a.submitted_all() {
                self.pending.pop_front();
                if a.outstanding == 0 {
                    self.finish(slot);
                }
                continue;
            }
            if self.qp.outstanding() >= self.qp.depth() {
                return;
            }
            match self.submit_one(slot) {
                Ok(true) => {}
                Ok(false) => return,
                Err((code, why)) => {
                    self.note(why);
                    if let Some(a) = self.active[slot].as_mut() {
                        a.error = code;
                    }
                }
            }
        }
    }

    /// Submits the next command of the request in `slot`. `Ok(false)`: no DMA buffer now.
    fn submit_one(&mut self, slot: usize) -> Result<bool, Refusal> {
        let bs = self.g.lba_size as usize;
        let nsid = self.g.nsid;
        let chunk = u64::from(self.g.chunk_blocks);
        let (op, next) = {
            let a = self.active[slot].as_ref().expect("pending slot is active");
            (a.op, a.next)
        };
        let tag = (slot as u64) << OFFSET_BITS | next;
        let (cmd, buffer, len, advance) = match op {
            Op::Read { lba, blocks } | Op::Write { lba, blocks, .. } => {
                let (slba, n) = piece(lba, blocks, next, chunk);
                let Some(mut b) = self.buffer() else {
                    return self.no_buffer();
                };
                let write = matches!(op, Op::Write { .. });
                let fua = matches!(op, Op::Write { fua: true, .. });
                if write {
                    let a = self.active[slot].as_ref().expect("active");
                    let off = next as usize * bs;
                    if let Err(e) = b.write(0, &a.buf[off..off + n as usize * bs]) {
                        self.free.push(b);
                        return Err((errno::EIO, format!("filling a DMA buffer: {e}")));
                    }
                }
                let opc = if write {
                    NvmOpcode::WRITE
                } else {
                    NvmOpcode::READ
                };
                let c = Command::rw(opc, nsid, self.g.base + slba, (n - 1) as u16, fua);
                (c, Some(b), n as usize * bs, n)
            }
            Op::Zeroes {
                lba,
                blocks,
                deallocate,
                fua,
            } => {
                let (slba, n) = piece(lba, blocks, next, MAX_ZEROES_BLOCKS);
                let mut c =
                    Command::write_zeroes(nsid, self.g.base + slba, (n - 1) as u16, deallocate);
                if fua {
                    let dw12 = c.cdw(12).unwrap_or(0) | 1 << 30;
                    c.set_cdw(12, dw12);
                }
                (c, None, 0, n)
            }
            Op::Trim { lba, blocks, .. } => {
                let Some(mut b) = self.buffer() else {
                    return self.no_buffer();
                };
                // One range (NVM §3.3.3, Figure "Dataset Management – Range Definition"):
                // context attributes, length in blocks, starting LBA, little endian.
                let mut e = [0u8; 16];
                e[4..8].copy_from_slice(&(blocks.min(u64::from(u32::MAX)) as u32).to_le_bytes());
                e[8..16].copy_from_slice(&(self.g.base + lba).to_le_bytes());
                if let Err(err) = b.write(0, &e) {
                    self.free.push(b);
                    return Err((errno::EIO, format!("filling a DMA buffer: {err}")));
                }
                (Command::dataset_management(nsid, 0, true), Some(b), 16, 1)
            }
            Op::Flush => (Command::flush(nsid), None, 0, 1),
            Op::Nothing => return Ok(true),
        };
        let r = match buffer {
            Some(b) => self.qp.submit_range(cmd, Some(b), 0, Some(len), tag),
            None => self.qp.submit(cmd, None, tag),
        };
        match r {
            Ok(_) => {
                self.stats.commands += 1;
                let a = self.active[slot].as_mut().expect("active");
                a.outstanding += 1;
                a.next += advance;
                Ok(true)
            }
            Err(e) => {
                if let Some(b) = e.buffer {
                    self.free.push(b);
                }
                Err((
                    errno::EIO,
                    format!(
                        "{} at offset {}: submission failed: {}",
                        proto::cmd_name(self.active[slot].as_ref().expect("active").h.kind),
                        self.active[slot].as_ref().expect("active").h.offset,
                        e.error
                    ),
                ))
            }
        }
    }

    fn complete(&mut self, c: IoCompletion<P>) {
        let slot = (c.tag >> OFFSET_BITS) as usize;
        let off = c.tag & ((1 << OFFSET_BITS) - 1);
        let bs = self.g.lba_size as usize;
        let chunk = u64::from(self.g.chunk_blocks);
        let Some(Some(a)) = self.active.get_mut(slot) else {
            // Not one of ours (cannot happen: every tag names an active slot); keep the
            // buffer for reuse.
            if let Some(b) = c.buffer {
                self.free.push(b);
            }
            return;
        };
        a.outstanding -= 1;
        // Reads, writes and the Dataset Management of a trim carry a pool buffer; a trim's
        // trailing Flush does not.
        let had_buffer = matches!(a.op, Op::Read { .. } | Op::Write { .. })
            || (matches!(a.op, Op::Trim { .. }) && !a.flushing);
        let mut problem = None;
        match &c.result {
            Ok(()) => {
                if let (Op::Read { lba, blocks }, Some(b)) = (a.op, &c.buffer) {
                    let (_, n) = piece(lba, blocks, off, chunk);
                    let at = proto::SIMPLE_REPLY_LEN + off as usize * bs;
                    if let Err(e) = b.read(0, &mut a.buf[at..at + n as usize * bs]) {
                        a.error = errno::EIO;
                        problem = Some(format!("copying read data: {e}"));
                    }
                }
            }
            Err(e) => {
                if a.error == 0 {
                    a.error = nbd_error(e);
                }
                problem = Some(format!(
                    "{} at offset {}: {e}",
                    proto::cmd_name(a.h.kind),
                    a.h.offset
                ));
            }
        }
        match c.buffer {
            Some(b) => self.free.push(b),
            // Timed out (the queue keeps the buffer until the device lets go of it) or the
            // device is gone (the buffer stays retired): it is not coming back.
            None if had_buffer => self.owned = self.owned.saturating_sub(1),
            None => {}
        }
        if let Some(p) = problem {
            self.note(p);
        }
        let a = self.active[slot].as_mut().expect("active");
        if a.outstanding == 0 && a.submitted_all() && !self.pending.contains(&slot) {
            if let (Op::Trim { fua: true, .. }, false, 0) = (a.op, a.flushing, a.error) {
                // FUA on a trim: the deallocation is made durable by a Flush.
                a.flushing = true;
                let tag = (slot as u64) << OFFSET_BITS;
                match self.qp.submit(Command::flush(self.g.nsid), None, tag) {
                    Ok(_) => {
                        a.outstanding += 1;
                        self.stats.commands += 1;
                        return;
                    }
                    Err(e) => {
                        a.error = errno::EIO;
                        let why = format!("Flush after a TRIM with FUA: {}", e.error);
                        self.note(why);
                    }
                }
            }
            self.finish(slot);
        }
    }

    /// The request in `slot` is done: reply and free the slot.
    fn finish(&mut self, slot: usize) {
        let Some(mut a) = self.active[slot].take() else {
            return;
        };
        self.held -= a.held_bytes();
        if a.error != 0 || !matches!(a.op, Op::Read { .. }) {
            self.reply(a.h.cookie, a.error, None);
        } else {
            proto::simple_reply(&mut a.buf[..proto::SIMPLE_REPLY_LEN], 0, a.h.cookie);
            self.reply(a.h.cookie, 0, Some(&a.buf));
        }
    }

    /// Sends a simple reply (`whole`: header and data, already laid out).
    fn reply(&mut self, cookie: u64, error: u32, whole: Option<&[u8]>) {
        self.stats.requests += 1;
        if error != 0 {
            self.stats.errors += 1;
        }
        if self.client_gone {
            return;
        }
        match whole {
            // A large reply goes out at once, after what is pending (no copy).
            Some(m) if m.len() > REPLY_COALESCE => {
                self.send_replies();
                if !self.client_gone {
                    let r = (&self.out).write_all(m);
                    self.sent(r);
                }
            }
            Some(m) => self.replies.extend_from_slice(m),
            None => {
                let mut hdr = [0u8; proto::SIMPLE_REPLY_LEN];
                proto::simple_reply(&mut hdr, error, cookie);
                self.replies.extend_from_slice(&hdr);
            }
        }
        if self.replies.len() >= REPLY_COALESCE {
            self.send_replies();
        }
    }

    /// Sends the replies collected so far in one write.
    fn send_replies(&mut self) {
        if self.replies.is_empty() {
            return;
        }
        let r = if self.client_gone {
            Ok(())
        } else {
            (&self.out).write_all(&self.replies)
        };
        self.replies.clear();
        self.sent(r);
    }

    fn sent(&mut self, r: io::Result<()>) {
        if let Err(e) = r {
            self.client_gone = true;
            self.note(format!(
                "the client is gone ({e}): remaining requests are completed without replies"
            ));
        }
    }
}

/// The NBD error value for a failed command (proto.md "Error values"): Capacity Exceeded →
/// `NBD_ENOSPC`, LBA Out of Range or Invalid Field → `NBD_EINVAL`, everything else (media
/// errors, timeouts, resets, a vanished device) → `NBD_EIO`.
pub fn nbd_error(e: &Error) -> u32 {
    match e {
        Error::Command { status, .. }
            if status.is(StatusCodeType::GENERIC, generic::CAPACITY_EXCEEDED) =>
        {
            errno::ENOSPC
        }
        Error::Command { status, .. }
            if status.is(StatusCodeType::GENERIC, generic::LBA_OUT_OF_RANGE)
                || status.is(StatusCodeType::GENERIC, generic::INVALID_FIELD) =>
        {
            errno::EINVAL
        }
        Error::LbaOutOfRange { .. } | Error::InvalidArgument(_) => errno::EINVAL,
        _ => errno::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        Geometry {
            nsid: 1,
            lba_size: 512,
            base: 0,
            blocks: 2048,
            read_only: false,
            trim: true,
            write_zeroes: true,
            chunk_blocks: 256,
        }
    }

    fn req(kind: u16, flags: u16, offset: u64, len: u32) -> RequestHeader {
        RequestHeader {
            flags,
            kind,
            cookie: 1,
            offset,
            len,
        }
    }

    #[test]
    fn requests_map_to_operations() {
        let g = geo();
        assert_eq!(
            check(&req(cmd::READ, 0, 4096, 8192), &g),
            Ok(Op::Read { lba: 8, blocks: 16 })
        );
        assert_eq!(
            check(&req(cmd::WRITE, cmdflag::FUA, 0, 512), &g),
            Ok(Op::Write {
                lba: 0,
                blocks: 1,
                fua: true
            })
        );
        assert_eq!(check(&req(cmd::FLUSH, 0, 0, 0), &g), Ok(Op::Flush));
        assert_eq!(
            check(&req(cmd::WRITE_ZEROES, cmdflag::NO_HOLE, 512, 1024), &g),
            Ok(Op::Zeroes {
                lba: 1,
                blocks: 2,
                deallocate: false,
                fua: false
            })
        );
        assert_eq!(
            check(&req(cmd::WRITE_ZEROES, 0, 512, 1024), &g),
            Ok(Op::Zeroes {
                lba: 1,
                blocks: 2,
                deallocate: true,
                fua: false
            })
        );
        // Trims shrink inward to whole blocks: 100..2100 covers blocks 1..4.
        assert_eq!(
            check(&req(cmd::TRIM, 0, 100, 2000), &g),
            Ok(Op::Trim {
                lba: 1,
                blocks: 3,
                fua: false
            })
        );
        assert_eq!(check(&req(cmd::TRIM, 0, 100, 500), &g), Ok(Op::Nothing));
        assert_eq!(check(&req(cmd::READ, 0, 512, 0), &g), Ok(Op::Nothing));
    }

    #[test]
    fn bad_requests_get_the_documented_errors() {
        let g = geo();
        let code = |h| check(&h, &g).unwrap_err().0;
        let size = g.size();
        assert_eq!(code(req(cmd::READ, 0, size, 512)), errno::EINVAL);
        assert_eq!(code(req(cmd::READ, 0, u64::MAX - 100, 512)), errno::EINVAL);
        assert_eq!(code(req(cmd::TRIM, 0, size - 512, 1024)), errno::EINVAL);
        assert_eq!(code(req(cmd::WRITE, 0, size - 512, 1024)), errno::ENOSPC);
        assert_eq!(code(req(cmd::WRITE_ZEROES, 0, size, 512)), errno::ENOSPC);
        assert_eq!(code(req(cmd::READ, 0, 100, 512)), errno::EINVAL);
        assert_eq!(code(req(cmd::WRITE, 0, 0, 100)), errno::EINVAL);
        assert_eq!(code(req(cmd::READ, 0, 0, MAX_REQUEST + 512)), errno::EINVAL);
        assert_eq!(
            code(req(cmd::READ, cmdflag::NO_HOLE, 0, 512)),
            errno::EINVAL
        );
        assert_eq!(code(req(cmd::READ, 1 << 4, 0, 512)), errno::EINVAL);
        assert_eq!(code(req(5, 0, 0, 512)), errno::EINVAL);
        assert_eq!(code(req(cmd::FLUSH, 0, 0, 512)), errno::EINVAL);
        let ro = Geometry {
            read_only: true,
            ..g
        };
        for k in [cmd::WRITE, cmd::TRIM, cmd::WRITE_ZEROES] {
            assert_eq!(check(&req(k, 0, 0, 512), &ro).unwrap_err().0, errno::EPERM);
        }
        assert!(check(&req(cmd::READ, 0, 0, 512), &ro).is_ok());
        let plain = Geometry {
            trim: false,
            write_zeroes: false,
            ..g
        };
        assert_eq!(
            check(&req(cmd::TRIM, 0, 0, 512), &plain).unwrap_err().0,
            errno::EINVAL
        );
        assert_eq!(
            check(&req(cmd::WRITE_ZEROES, 0, 0, 512), &plain)
                .unwrap_err()
                .0,
            errno::EINVAL
        );
    }

    #[test]
    fn pieces_cover_the_request_in_mdts_sized_commands() {
        let mut done = 0;
        let mut seen = Vec::new();
        while done < 600 {
            let (lba, n) = piece(1000, 600, done, 256);
            seen.push((lba, n));
            done += n;
        }
        assert_eq!(seen, vec![(1000, 256), (1256, 256), (1512, 88)]);
    }
}

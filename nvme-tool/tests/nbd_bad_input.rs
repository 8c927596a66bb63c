//! `nvme-tool nbd` against a raw NBD client written here: malformed and hostile requests,
//! read-only exports, clients that vanish mid-request, several clients at once, a second
//! server on the same device, and shutdown with requests in flight. Needs no external tool.

mod nbd_common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nbd_common::{scratch, Server};

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const OPT_GO: u32 = 7;
const OPT_LIST: u32 = 3;
const OPT_STRUCTURED_REPLY: u32 = 8;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_POLICY: u32 = 0x8000_0002;
const READ: u16 = 0;
const WRITE: u16 = 1;
const DISC: u16 = 2;
const FLUSH: u16 = 3;
const TRIM: u16 = 4;
const WRITE_ZEROES: u16 = 6;
const EPERM: u32 = 1;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const FLAG_READ_ONLY: u16 = 1 << 1;
const FLAG_SEND_TRIM: u16 = 1 << 5;
const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

struct Client {
    s: UnixStream,
}

impl Client {
    /// Connects and completes the greeting (fixed newstyle, no zeroes).
    fn connect(sock: &Path) -> Client {
        let mut s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], b"NBDMAGIC");
        assert_eq!(&hello[8..16], b"IHAVEOPT");
        assert_eq!(u16::from_be_bytes([hello[16], hello[17]]) & 1, 1);
        s.write_all(&3u32.to_be_bytes()).unwrap();
        Client { s }
    }

    fn option(&mut self, opt: u32, data: &[u8]) {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
    }

    /// One option reply: (reply type, data).
    fn option_reply(&mut self, opt: u32) -> (u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(
            u64::from_be_bytes(h[..8].try_into().unwrap()),
            0x0003_e889_0455_65a9
        );
        assert_eq!(u32::from_be_bytes(h[8..12].try_into().unwrap()), opt);
        let t = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let n = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut d = vec![0; n as usize];
        self.s.read_exact(&mut d).unwrap();
        (t, d)
    }

    /// `NBD_OPT_GO` for the default export asking for block sizes: `Ok((size, flags,
    /// [min, preferred, max]))` or `Err((error reply, message))`.
    fn go(&mut self) -> Result<(u64, u16, [u32; 3]), (u32, String)> {
        let mut d = 0u32.to_be_bytes().to_vec();
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
        self.option(OPT_GO, &d);
        let (mut size, mut flags, mut bs) = (0, 0, [0; 3]);
        loop {
            let (t, d) = self.option_reply(OPT_GO);
            match t {
                REP_INFO => match u16::from_be_bytes([d[0], d[1]]) {
                    0 => {
                        size = u64::from_be_bytes(d[2..10].try_into().unwrap());
                        flags = u16::from_be_bytes([d[10], d[11]]);
                    }
                    3 => {
                        for (i, v) in bs.iter_mut().enumerate() {
                            *v = u32::from_be_bytes(d[2 + 4 * i..6 + 4 * i].try_into().unwrap());
                        }
                    }
                    _ => {}
                },
                REP_ACK => return Ok((size, flags, bs)),
                e => return Err((e, String::from_utf8_lossy(&d).into_owned())),
            }
        }
    }

    fn request(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) {
        let mut b = [0u8; 28];
        b[0..4].copy_from_slice(&0x2560_9513u32.to_be_bytes());
        b[4..6].copy_from_slice(&flags.to_be_bytes());
        b[6..8].copy_from_slice(&kind.to_be_bytes());
        b[8..16].copy_from_slice(&cookie.to_be_bytes());
        b[16..24].copy_from_slice(&offset.to_be_bytes());
        b[24..28].copy_from_slice(&len.to_be_bytes());
        self.s.write_all(&b).unwrap();
    }

    /// A simple reply header: (error, cookie).
    fn reply(&mut self) -> (u32, u64) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(&h[..4], &[0x67, 0x44, 0x66, 0x98], "simple reply magic");
        (
            u32::from_be_bytes(h[4..8].try_into().unwrap()),
            u64::from_be_bytes(h[8..16].try_into().unwrap()),
        )
    }

    fn write(&mut self, cookie: u64, offset: u64, data: &[u8]) -> u32 {
        self.request(WRITE, 0, cookie, offset, data.len() as u32);
        self.s.write_all(data).unwrap();
        let (e, c) = self.reply();
        assert_eq!(c, cookie);
        e
    }

    fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.request(READ, 0, cookie, offset, len);
        let (e, c) = self.reply();
        assert_eq!(c, cookie);
        if e != 0 {
            return Err(e);
        }
        let mut d = vec![0; len as usize];
        self.s.read_exact(&mut d).unwrap();
        Ok(d)
    }

    fn simple(&mut self, kind: u16, flags: u16, offset: u64, len: u32) -> u32 {
        self.request(kind, flags, 77, offset, len);
        let (e, c) = self.reply();
        assert_eq!(c, 77);
        e
    }

    /// True once the server closed the connection (reads end).
    fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    fn disconnect(mut self) {
        self.request(DISC, 0, 0, 0, 0);
    }
}

/// `NBD_OPT_GO`, asked again while the server answers that no queue pair is free yet (a
/// closing connection logs its end just before its pair goes back to the pool).
fn go_retrying(c: &mut Client) {
    for _ in 0..100 {
        match c.go() {
            Ok(_) => return,
            Err((REP_ERR_POLICY, _)) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("NBD_OPT_GO: {e:?}"),
        }
    }
    panic!("no queue pair came back");
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn malformed_requests_get_protocol_errors_and_the_server_keeps_serving() {
    let dir = scratch("malformed");
    let s = Server::start(&dir, "sim", &[]);
    let mut c = Client::connect(&s.socket);
    c.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(c.option_reply(OPT_STRUCTURED_REPLY).0, REP_ERR_UNSUP);
    c.option(42, b"whatever");
    assert_eq!(c.option_reply(42).0, REP_ERR_UNSUP);
    c.option(OPT_LIST, &[]);
    let (t, d) = c.option_reply(OPT_LIST);
    assert_eq!(t, 2);
    assert_eq!(&d[4..7], b"ns1");
    assert_eq!(c.option_reply(OPT_LIST).0, REP_ACK);
    let (size, flags, bs) = c.go().unwrap();
    assert_eq!(size, 64 << 20);
    assert_eq!(bs, [512, 4096, 1 << 20]);
    assert_eq!(flags & FLAG_READ_ONLY, 0);
    assert_ne!(
        flags & FLAG_SEND_TRIM,
        0,
        "the simulator has Dataset Management"
    );
    assert_ne!(flags & FLAG_SEND_WRITE_ZEROES, 0);
    assert_ne!(flags & FLAG_CAN_MULTI_CONN, 0);

    // Past the end: reads and trims EINVAL, writes ENOSPC (proto.md "Error values").
    assert_eq!(c.read(1, size, 512), Err(EINVAL));
    assert_eq!(c.read(2, size - 512, 1024), Err(EINVAL));
    assert_eq!(c.read(3, u64::MAX - 511, 512), Err(EINVAL));
    assert_eq!(c.simple(TRIM, 0, size, 4096), EINVAL);
    assert_eq!(c.write(4, size - 512, &[0u8; 1024]), ENOSPC);
    assert_eq!(c.simple(WRITE_ZEROES, 0, size, 512), ENOSPC);
    // Unaligned to the 512-byte minimum block: EINVAL, nothing written.
    assert_eq!(c.read(5, 100, 512), Err(EINVAL));
    assert_eq!(c.write(6, 0, &[0xEE; 100]), EINVAL);
    // Oversized read (above 32 MiB): EINVAL, no reply payload, the connection goes on.
    assert_eq!(c.read(7, 0, 64 << 20), Err(EINVAL));
    // Unknown command, flag not valid for the command, flush with a length.
    assert_eq!(c.simple(9, 0, 0, 512), EINVAL);
    assert_eq!(c.simple(READ, 1 << 1, 0, 512), EINVAL);
    assert_eq!(c.simple(FLUSH, 0, 0, 512), EINVAL);
    // Still serving: data written reads back, and the unaligned write left no trace.
    let d = pattern(1, 8192);
    assert_eq!(c.write(8, 0, &d), 0);
    assert_eq!(c.read(9, 0, 8192).unwrap(), d);
    assert_eq!(c.simple(FLUSH, 0, 0, 0), 0);

    // Pipelining: 48 writes of 16 KiB, then 48 reads, before reading any reply.
    let n = 48u64;
    for i in 0..n {
        c.request(WRITE, 1, 1000 + i, (1 << 20) + i * 16384, 16384);
        c.s.write_all(&pattern(i as u8, 16384)).unwrap();
    }
    let mut seen = vec![false; n as usize];
    for _ in 0..n {
        let (e, cookie) = c.reply();
        assert_eq!(e, 0);
        let i = (cookie - 1000) as usize;
        assert!(!seen[i], "cookie {cookie} answered twice");
        seen[i] = true;
    }
    for i in 0..n {
        c.request(READ, 0, 2000 + i, (1 << 20) + i * 16384, 16384);
    }
    for _ in 0..n {
        let (e, cookie) = c.reply();
        assert_eq!(e, 0);
        let mut d = vec![0; 16384];
        c.s.read_exact(&mut d).unwrap();
        assert_eq!(d, pattern((cookie - 2000) as u8, 16384), "cookie {cookie}");
    }
    // Write Zeroes and trim, with and without NO_HOLE / FUA.
    assert_eq!(c.simple(WRITE_ZEROES, 1 << 1, 1 << 20, 16384), 0);
    assert_eq!(c.read(10, 1 << 20, 16384).unwrap(), vec![0; 16384]);
    assert_eq!(c.simple(WRITE_ZEROES, 1, (1 << 20) + 16384, 16384), 0);
    assert_eq!(
        c.read(11, (1 << 20) + 16384, 16384).unwrap(),
        vec![0; 16384]
    );
    assert_eq!(c.simple(TRIM, 1, (1 << 20) + 100, 60000), 0);
    c.disconnect();

    // A bad request magic: the server closes that connection and keeps serving.
    let mut c = Client::connect(&s.socket);
    c.go().unwrap();
    c.s.write_all(&[0xde; 28]).unwrap();
    assert!(c.closed_by_server());
    s.wait_log("is not NBD_REQUEST_MAGIC");
    // A write announcing a 4 GiB payload: closed without reading (or allocating) it.
    let mut c = Client::connect(&s.socket);
    c.go().unwrap();
    c.request(WRITE, 0, 1, 0, 0xFFFF_FE00);
    assert!(c.closed_by_server());
    s.wait_log("exceeds the 33554432-byte maximum payload");
    // A bad option magic during the handshake.
    let mut c = Client::connect(&s.socket);
    c.s.write_all(&[0x55; 16]).unwrap();
    assert!(c.closed_by_server());
    let mut c = Client::connect(&s.socket);
    c.go().unwrap();
    assert_eq!(c.read(12, 0, 8192).unwrap(), d);
    c.disconnect();
    let (st, log) = s.stop();
    assert!(st.success(), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_read_only_export_refuses_writes_with_eperm() {
    let dir = scratch("ro");
    let img = dir.join("ro.img");
    std::fs::write(&img, pattern(9, 2 << 20)).unwrap();
    let s = Server::start(&dir, &format!("sim:{}", img.display()), &["--read-only"]);
    let mut c = Client::connect(&s.socket);
    let (size, flags, _) = c.go().unwrap();
    assert_eq!(size, 2 << 20);
    assert_ne!(flags & FLAG_READ_ONLY, 0);
    assert_eq!(flags & (FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES), 0);
    assert_eq!(c.write(1, 0, &[0u8; 4096]), EPERM);
    assert_eq!(c.simple(TRIM, 0, 0, 4096), EPERM);
    assert_eq!(c.simple(WRITE_ZEROES, 0, 0, 4096), EPERM);
    assert_eq!(c.read(2, 0, 8192).unwrap(), pattern(9, 2 << 20)[..8192]);
    c.disconnect();
    let (st, log) = s.stop();
    assert!(st.success(), "{log}");
    assert_eq!(std::fs::read(&img).unwrap(), pattern(9, 2 << 20));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn clients_that_vanish_mid_request_lose_nothing_and_the_server_keeps_serving() {
    let dir = scratch("vanish");
    let img = dir.join("v.img");
    let s = Server::start(&dir, &format!("sim:{}", img.display()), &["-q", "8"]);
    let mut a = Client::connect(&s.socket);
    a.go().unwrap();
    let d = pattern(0x42, 1 << 20);
    assert_eq!(a.write(1, 0, &d), 0);
    // Half the payload of a 1 MiB write over the same range, then gone.
    a.request(WRITE, 0, 2, 0, 1 << 20);
    a.s.write_all(&vec![0x99; 512 << 10]).unwrap();
    drop(a);
    s.wait_log("bytes into the 1048576-byte payload of a WRITE");
    // 16 writes and 64 reads of 128 KiB (more than the queue depth of 8), then gone
    // without reading a reply: every command still completes and the queue pair comes
    // back. (The writes go first: a client that stops reading replies while it still sends
    // payloads stalls itself, as with any NBD server.)
    let mut b = Client::connect(&s.socket);
    b.go().unwrap();
    for i in 0..16u64 {
        b.request(WRITE, 0, 100 + i, (2 << 20) + (i << 16), 65536);
        b.s.write_all(&pattern(i as u8, 65536)).unwrap();
    }
    for i in 0..64 {
        b.request(READ, 0, i, (i % 8) << 17, 128 << 10);
    }
    drop(b);
    let log = s.wait_log("connection 2: closed");
    assert!(!log.contains("panicked"), "{log}");
    // With --connections 4 and two clients gone, four can connect at once again.
    let mut cs: Vec<Client> = (0..4).map(|_| Client::connect(&s.socket)).collect();
    for c in &mut cs {
        go_retrying(c);
    }
    assert_eq!(
        cs[3].read(3, 0, 1 << 20).unwrap(),
        d,
        "the half-sent write changed data"
    );
    for c in cs {
        c.disconnect();
    }
    let (st, log) = s.stop();
    assert!(st.success(), "{log}");
    let img = std::fs::read(&img).unwrap();
    assert_eq!(img[..1 << 20], d[..]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concurrent_clients_share_the_namespace_and_one_too_many_is_refused_clearly() {
    let dir = scratch("multi");
    let s = Server::start(&dir, "sim", &["--connections", "2"]);
    let mut a = Client::connect(&s.socket);
    let mut b = Client::connect(&s.socket);
    let mut c = Client::connect(&s.socket);
    a.go().unwrap();
    b.go().unwrap();
    let (code, msg) = c.go().unwrap_err();
    assert_eq!(code, REP_ERR_POLICY);
    assert!(msg.contains("no I/O queue pair left"), "{msg}");
    // Both work at the same time, on their own queue pairs, and see each other's writes
    // once replied to (CAN_MULTI_CONN).
    let t = std::thread::spawn(move || {
        for i in 0..50u64 {
            assert_eq!(a.write(i, i * 4096, &pattern(i as u8, 4096)), 0);
        }
        a
    });
    for i in 0..50u64 {
        assert_eq!(
            b.write(i, (8 << 20) + i * 4096, &pattern(!i as u8, 4096)),
            0
        );
    }
    let a = t.join().unwrap();
    for i in 0..50u64 {
        assert_eq!(b.read(i, i * 4096, 4096).unwrap(), pattern(i as u8, 4096));
    }
    assert_eq!(b.simple(FLUSH, 0, 0, 0), 0);
    // One leaves; the refused client may ask again and now gets a queue pair.
    a.disconnect();
    s.wait_log("connection 1: closed");
    go_retrying(&mut c);
    assert_eq!(
        c.read(1, (8 << 20) + 4096, 4096).unwrap(),
        pattern(!1u8, 4096)
    );
    c.disconnect();
    b.disconnect();
    let (st, log) = s.stop();
    assert!(st.success(), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_server_on_the_same_image_or_socket_is_refused_with_the_reason() {
    let dir = scratch("second");
    let img = dir.join("one.img");
    let dev = format!("sim:{}", img.display());
    let s = Server::start(&dir, &dev, &[]);
    let other = dir.join("other.sock");
    let (st, log) = Server::start_on(&dir, &dev, &other, &[])
        .err()
        .expect("a second server on the same image must not start");
    assert!(!st.unwrap().success());
    assert!(log.contains("in use by process"), "{log}");
    let (st, log) = Server::start_on(&dir, "sim", &s.socket, &[])
        .err()
        .expect("a second server on the same socket must not start");
    assert!(!st.unwrap().success());
    assert!(log.contains("another server is already listening"), "{log}");
    // The first one is unharmed.
    let mut c = Client::connect(&s.socket);
    c.go().unwrap();
    assert_eq!(c.write(1, 0, &pattern(3, 4096)), 0);
    c.disconnect();
    let (st, log) = s.stop();
    assert!(st.success(), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_completes_what_was_read_flushes_and_keeps_every_acknowledged_write() {
    let dir = scratch("sigterm");
    let img = dir.join("t.img");
    let s = Server::start(&dir, &format!("sim:{}", img.display()), &[]);
    let mut c = Client::connect(&s.socket);
    c.go().unwrap();
    let n = 64u64;
    for i in 0..n {
        c.request(WRITE, 0, i, i << 17, 128 << 10);
        c.s.write_all(&pattern(i as u8 | 1, 128 << 10)).unwrap();
    }
    let (st, log) = s.stop();
    assert!(st.success(), "{log}");
    assert!(log.contains("namespace 1 flushed"), "{log}");
    // Every write the server acknowledged is in the image.
    let img = std::fs::read(&img).unwrap();
    let mut acked = 0;
    loop {
        let mut h = [0u8; 16];
        if c.s.read_exact(&mut h).is_err() {
            break;
        }
        let e = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let i = u64::from_be_bytes(h[8..16].try_into().unwrap());
        assert_eq!(e, 0);
        let at = (i << 17) as usize;
        assert!(
            img[at..at + (128 << 10)] == pattern(i as u8 | 1, 128 << 10)[..],
            "acknowledged write {i} is not in the image"
        );
        acked += 1;
    }
    assert!(acked > 0, "no write was acknowledged before the shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_export_of_a_block_range_starts_at_its_first_block_and_ends_at_its_last() {
    let dir = scratch("range");
    let img = dir.join("r.img");
    let s = Server::start(
        &dir,
        &format!("sim:{}", img.display()),
        &["--start-block", "2048", "--block-count", "4096"],
    );
    let mut c = Client::connect(&s.socket);
    let (size, _, _) = c.go().unwrap();
    assert_eq!(size, 4096 * 512);
    let d = pattern(0x3c, 8192);
    assert_eq!(c.write(1, 0, &d), 0);
    assert_eq!(c.write(2, size - 8192, &d), 0);
    assert_eq!(c.write(3, size, &d), ENOSPC);
    assert_eq!(c.simple(WRITE_ZEROES, 0, size - 512, 1024), ENOSPC);
    c.disconnect();
    let (st, log) = s.stop();
    assert!(st.success(), "{log}");
    let img = std::fs::read(&img).unwrap();
    let base = 2048 * 512;
    assert_eq!(img[base..base + 8192], d[..]);
    let end = base + size as usize;
    assert_eq!(img[end - 8192..end], d[..]);
    assert!(img[..base].iter().all(|&b| b == 0));
    assert!(img[end..].iter().all(|&b| b == 0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_export_is_served_on_tcp_too() {
    use std::net::TcpStream;
    use std::process::{Command, Stdio};
    let dir = scratch("tcp");
    let log = dir.join("tcp.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nvme-tool"))
        .args(["nbd", "sim", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut addr = None;
    for _ in 0..1500 {
        let l = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(rest) = l.split("on nbd://").nth(1) {
            addr = rest.split('/').next().map(str::to_owned);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr = addr.expect("the server printed its TCP address");
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..16], b"NBDMAGICIHAVEOPT");
    s.write_all(&3u32.to_be_bytes()).unwrap();
    // NBD_OPT_EXPORT_NAME "ns1": size and flags come back without the 124 zeroes.
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&1u32.to_be_bytes());
    m.extend_from_slice(&3u32.to_be_bytes());
    m.extend_from_slice(b"ns1");
    s.write_all(&m).unwrap();
    let mut info = [0u8; 10];
    s.read_exact(&mut info).unwrap();
    assert_eq!(u64::from_be_bytes(info[..8].try_into().unwrap()), 64 << 20);
    let d = pattern(7, 4096);
    let mut req = [0u8; 28];
    req[0..4].copy_from_slice(&0x2560_9513u32.to_be_bytes());
    req[6..8].copy_from_slice(&WRITE.to_be_bytes());
    req[8..16].copy_from_slice(&5u64.to_be_bytes());
    req[16..24].copy_from_slice(&8192u64.to_be_bytes());
    req[24..28].copy_from_slice(&4096u32.to_be_bytes());
    s.write_all(&req).unwrap();
    s.write_all(&d).unwrap();
    let mut rep = [0u8; 16];
    s.read_exact(&mut rep).unwrap();
    assert_eq!(&rep[4..8], &[0, 0, 0, 0]);
    req[6..8].copy_from_slice(&READ.to_be_bytes());
    s.write_all(&req).unwrap();
    s.read_exact(&mut rep).unwrap();
    assert_eq!(&rep[4..8], &[0, 0, 0, 0]);
    let mut back = vec![0u8; 4096];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, d);
    drop(s);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

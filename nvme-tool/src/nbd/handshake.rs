//! The handshake: fixed newstyle negotiation (proto.md "Newstyle negotiation", "Fixed
//! newstyle negotiation", "Option types").
//!
//! Served options: `NBD_OPT_EXPORT_NAME`, `NBD_OPT_INFO`, `NBD_OPT_GO`, `NBD_OPT_LIST`,
//! `NBD_OPT_ABORT`. `NBD_OPT_STRUCTURED_REPLY`, `NBD_OPT_STARTTLS` and every other option
//! get `NBD_REP_ERR_UNSUP`: the transmission phase uses simple replies only. Oldstyle and
//! non-fixed newstyle clients are not served (a client without `NBD_FLAG_C_FIXED_NEWSTYLE`
//! may still send `NBD_OPT_EXPORT_NAME`, the one option non-fixed newstyle knows).

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use super::proto::{self, cflag, hflag, info, opt, rep};

/// What the server exports: one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// Canonical name (`NBD_REP_SERVER`, `NBD_INFO_NAME`); the empty name (the default
    /// export) is accepted too.
    pub name: String,
    /// Text for a human (`NBD_INFO_DESCRIPTION`, `NBD_REP_SERVER`).
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags (`proto::tflag`).
    pub flags: u16,
    /// Minimum block size: the LBA size (proto.md "Size constraints").
    pub min_block: u32,
    /// Preferred block size: max(4096, LBA size).
    pub preferred_block: u32,
    /// Maximum payload the server takes in one request.
    pub max_payload: u32,
}

impl Export {
    fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
}

/// Most option data the server reads into memory; longer options are read and thrown away
/// in small pieces, then answered with `NBD_REP_ERR_TOO_BIG` (strings in the protocol are
/// at most 4096 bytes, proto.md "Conventions").
pub const MAX_OPTION: u32 = 16 << 10;

/// `NBD_REP_ERR_TOO_BIG` (proto.md "Option reply types").
const ERR_TOO_BIG: u32 = (1 << 31) + 9;

/// How the handshake ended.
#[derive(Debug)]
pub enum Negotiated<T> {
    /// The transmission phase starts, with what `acquire` gave.
    Transmission(T),
    /// The client ended the session (`NBD_OPT_ABORT` or a close), or broke a MUST; the
    /// string says which, for the log.
    Ended(String),
}

/// Runs the handshake on `s`. `acquire` is called when the client chooses the export
/// (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`): it returns what the transmission phase needs (an
/// I/O queue pair), or a message for the client and the log when none is left.
/// `shutting_down` makes every option but `NBD_OPT_ABORT` fail with `NBD_REP_ERR_SHUTDOWN`.
///
/// # Errors
/// Socket errors.
pub fn negotiate<S: Read + Write, T>(
    s: &mut S,
    ex: &Export,
    shutting_down: &AtomicBool,
    mut acquire: impl FnMut() -> Result<T, String>,
) -> io::Result<Negotiated<T>> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&proto::NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(hflag::FIXED_NEWSTYLE | hflag::NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;
    let cflags = match proto::get_u32(s) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Ok(Negotiated::Ended("closed before sending its flags".into()))
        }
        Err(e) => return Err(e),
    };
    // "the server MUST close the TCP connection if it does not recognize the client's flags"
    if cflags & !(cflag::FIXED_NEWSTYLE | cflag::NO_ZEROES) != 0 {
        return Ok(Negotiated::Ended(format!(
            "unknown client flags {cflags:#x}: closed (proto.md \"Client flags\")"
        )));
    }
    let no_zeroes = cflags & cflag::NO_ZEROES != 0;
    loop {
        let magic = match proto::get_u64(s) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Ok(Negotiated::Ended("closed during option haggling".into()))
            }
            Err(e) => return Err(e),
        };
        if magic != proto::IHAVEOPT {
            return Ok(Negotiated::Ended(format!(
                "option magic {magic:#018x} is not IHAVEOPT: closed"
            )));
        }
        let option = proto::get_u32(s)?;
        let len = proto::get_u32(s)?;
        if len > MAX_OPTION {
            let skipped = io::copy(&mut (&mut *s).take(u64::from(len)), &mut io::sink())?;
            if skipped < u64::from(len) {
                return Ok(Negotiated::Ended("closed inside an option".into()));
            }
            if option == opt::EXPORT_NAME {
                return Ok(Negotiated::Ended(format!(
                    "NBD_OPT_EXPORT_NAME with a {len}-byte name: closed"
                )));
            }
            let msg = format!("option data of {len} bytes exceeds the server's {MAX_OPTION}");
            proto::send_option_reply(s, option, ERR_TOO_BIG, msg.as_bytes())?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        if let Err(e) = s.read_exact(&mut data) {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                return Ok(Negotiated::Ended("closed inside an option".into()));
            }
            return Err(e);
        }
        if option == opt::ABORT {
            // The client may close without waiting for the ACK: a failed send is fine.
            let _ = proto::send_option_reply(s, option, rep::ACK, &[]);
            return Ok(Negotiated::Ended("NBD_OPT_ABORT".into()));
        }
        if shutting_down.load(Ordering::Relaxed) {
            if option == opt::EXPORT_NAME {
                return Ok(Negotiated::Ended(
                    "NBD_OPT_EXPORT_NAME while shutting down: closed".into(),
                ));
            }
            proto::send_option_reply(s, option, rep::ERR_SHUTDOWN, b"the server is shutting down")?;
            continue;
        }
        match option {
            opt::EXPORT_NAME => {
                // Non-fixed newstyle's only option: errors cannot be returned, the session
                // is terminated instead (proto.md "Option types", NBD_OPT_EXPORT_NAME).
                if !ex.matches(&data) {
                    return Ok(Negotiated::Ended(format!(
                        "NBD_OPT_EXPORT_NAME for unknown export {:?}: closed",
                        String::from_utf8_lossy(&data)
                    )));
                }
                let lease = match acquire() {
                    Ok(l) => l,
                    Err(msg) => return Ok(Negotiated::Ended(format!("{msg}: closed"))),
                };
                let mut m = Vec::with_capacity(134);
                m.extend_from_slice(&ex.size.to_be_bytes());
                m.extend_from_slice(&ex.flags.to_be_bytes());
                if !no_zeroes {
                    m.extend_from_slice(&[0u8; 124]);
                }
                // The lease goes back to the caller even if the socket just failed: the
                // transmission phase then ends at once and returns it.
                let _ = s.write_all(&m);
                return Ok(Negotiated::Transmission(lease));
            }
            opt::LIST => {
                if !data.is_empty() {
                    proto::send_option_reply(
                        s,
                        option,
                        rep::ERR_INVALID,
                        b"NBD_OPT_LIST takes no data",
                    )?;
                    continue;
                }
                let mut d = Vec::new();
                d.extend_from_slice(&(ex.name.len() as u32).to_be_bytes());
                d.extend_from_slice(ex.name.as_bytes());
                d.extend_from_slice(ex.description.as_bytes());
                proto::send_option_reply(s, option, rep::SERVER, &d)?;
                proto::send_option_reply(s, option, rep::ACK, &[])?;
            }
            opt::INFO | opt::GO => {
                let Some((name, requests)) = parse_info_request(&data) else {
                    proto::send_option_reply(
                        s,
                        option,
                        rep::ERR_INVALID,
                        b"malformed NBD_OPT_INFO/NBD_OPT_GO data",
                    )?;
                    continue;
                };
                if !ex.matches(name) {
                    let msg = format!(
                        "no export named {:?}; this server exports {:?} (or the default, \"\")",
                        String::from_utf8_lossy(name),
                        ex.name
                    );
                    proto::send_option_reply(s, option, rep::ERR_UNKNOWN, msg.as_bytes())?;
                    continue;
                }
                // NBD_INFO_EXPORT is mandatory; the block sizes are always sent (the server
                // enforces a minimum block size, proto.md "Size constraints"); name and
                // description when asked for.
                proto::send_option_reply(
                    s,
                    option,
                    rep::INFO,
                    &proto::info_export(ex.size, ex.flags),
                )?;
                proto::send_option_reply(
                    s,
                    option,
                    rep::INFO,
                    &proto::info_block_size(ex.min_block, ex.preferred_block, ex.max_payload),
                )?;
                if requests.contains(&info::NAME) {
                    proto::send_option_reply(
                        s,
                        option,
                        rep::INFO,
                        &proto::info_text(info::NAME, &ex.name),
                    )?;
                }
                if requests.contains(&info::DESCRIPTION) {
                    proto::send_option_reply(
                        s,
                        option,
                        rep::INFO,
                        &proto::info_text(info::DESCRIPTION, &ex.description),
                    )?;
                }
                if option == opt::INFO {
                    proto::send_option_reply(s, option, rep::ACK, &[])?;
                    continue;
                }
                match acquire() {
                    Ok(lease) => {
                        // As for NBD_OPT_EXPORT_NAME: never lose the lease to a socket error.
                        let _ = proto::send_option_reply(s, option, rep::ACK, &[]);
                        return Ok(Negotiated::Transmission(lease));
                    }
                    Err(msg) => {
                        proto::send_option_reply(s, option, rep::ERR_POLICY, msg.as_bytes())?;
                    }
                }
            }
            opt::STRUCTURED_REPLY => {
                proto::send_option_reply(
                    s,
                    option,
                    rep::ERR_UNSUP,
                    b"structured replies are not supported: simple replies only",
                )?;
            }
            opt::STARTTLS => {
                proto::send_option_reply(s, option, rep::ERR_UNSUP, b"TLS is not supported")?;
            }
            _ => {
                let msg = format!("option {option} is not supported");
                proto::send_option_reply(s, option, rep::ERR_UNSUP, msg.as_bytes())?;
            }
        }
    }
}

/// Parses the data of `NBD_OPT_INFO` / `NBD_OPT_GO`: a 32-bit name length (at most the data
/// length − 6), the name, a 16-bit count, that many 16-bit information requests; nothing
/// more, nothing less.
fn parse_info_request(d: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let nlen = u32::from_be_bytes(d.get(0..4)?.try_into().ok()?) as usize;
    if nlen > d.len().checked_sub(6)? {
        return None;
    }
    let name = &d[4..4 + nlen];
    let rest = &d[4 + nlen..];
    let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
    let list = &rest[2..];
    if list.len() != 2 * n {
        return None;
    }
    Some((
        name,
        list.chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A scripted client: what it sends, and what the server writes back.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl Read for Duplex {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.input.read(b)
        }
    }
    impl Write for Duplex {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn export() -> Export {
        Export {
            name: "ns1".into(),
            description: "namespace 1".into(),
            size: 1 << 20,
            flags: 0x10d,
            min_block: 512,
            preferred_block: 4096,
            max_payload: 128 << 10,
        }
    }

    fn option(o: u32, data: &[u8]) -> Vec<u8> {
        let mut m = proto::IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&o.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        m
    }

    fn go_data(name: &str, reqs: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
        for r in reqs {
            d.extend_from_slice(&r.to_be_bytes());
        }
        d
    }

    /// Splits the server's output after the 18-byte greeting into option replies:
    /// (option, reply type, data).
    fn replies(out: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut v = Vec::new();
        let mut r = Cursor::new(&out[18..]);
        while (r.position() as usize) < out.len() - 18 {
            assert_eq!(proto::get_u64(&mut r).unwrap(), proto::REPLY_MAGIC);
            let o = proto::get_u32(&mut r).unwrap();
            let t = proto::get_u32(&mut r).unwrap();
            let n = proto::get_u32(&mut r).unwrap();
            let mut d = vec![0; n as usize];
            r.read_exact(&mut d).unwrap();
            v.push((o, t, d));
        }
        v
    }

    fn run(script: Vec<u8>, grant: bool) -> (Negotiated<u8>, Vec<u8>) {
        let mut d = Duplex {
            input: Cursor::new(script),
            output: Vec::new(),
        };
        let r = negotiate(&mut d, &export(), &AtomicBool::new(false), || {
            if grant {
                Ok(7)
            } else {
                Err("no I/O queue pair left".to_string())
            }
        })
        .unwrap();
        (r, d.output)
    }

    #[test]
    fn greeting_then_info_list_structured_and_go() {
        let mut s = 3u32.to_be_bytes().to_vec();
        s.extend(option(opt::STRUCTURED_REPLY, &[]));
        s.extend(option(opt::LIST, &[]));
        s.extend(option(
            opt::INFO,
            &go_data("", &[info::BLOCK_SIZE, info::NAME]),
        ));
        s.extend(option(opt::GO, &go_data("ns1", &[])));
        let (r, out) = run(s, true);
        assert!(matches!(r, Negotiated::Transmission(7)));
        assert_eq!(&out[0..8], b"NBDMAGIC");
        assert_eq!(&out[8..16], b"IHAVEOPT");
        assert_eq!(&out[16..18], &[0, 3]);
        let rs = replies(&out);
        assert_eq!(rs[0].0, opt::STRUCTURED_REPLY);
        assert_eq!(rs[0].1, rep::ERR_UNSUP);
        assert_eq!(
            rs[1],
            (opt::LIST, rep::SERVER, {
                let mut d = 3u32.to_be_bytes().to_vec();
                d.extend_from_slice(b"ns1namespace 1");
                d
            })
        );
        assert_eq!(rs[2], (opt::LIST, rep::ACK, vec![]));
        assert_eq!(
            rs[3],
            (opt::INFO, rep::INFO, proto::info_export(1 << 20, 0x10d))
        );
        assert_eq!(
            rs[4],
            (
                opt::INFO,
                rep::INFO,
                proto::info_block_size(512, 4096, 128 << 10)
            )
        );
        assert_eq!(
            rs[5],
            (opt::INFO, rep::INFO, proto::info_text(info::NAME, "ns1"))
        );
        assert_eq!(rs[6], (opt::INFO, rep::ACK, vec![]));
        assert_eq!(rs[9], (opt::GO, rep::ACK, vec![]));
        assert_eq!(rs.len(), 10);
    }

    #[test]
    fn unknown_export_malformed_go_and_no_queue_pair_are_errors_not_hangups() {
        let mut s = 1u32.to_be_bytes().to_vec();
        s.extend(option(opt::GO, &go_data("nope", &[])));
        let mut bad = go_data("ns1", &[1]);
        bad.push(0);
        s.extend(option(opt::GO, &bad));
        s.extend(option(opt::GO, &go_data("", &[])));
        s.extend(option(opt::ABORT, &[]));
        let (r, out) = run(s, false);
        assert!(matches!(r, Negotiated::Ended(ref m) if m == "NBD_OPT_ABORT"));
        let rs = replies(&out);
        assert_eq!(rs[0].1, rep::ERR_UNKNOWN);
        assert_eq!(rs[1].1, rep::ERR_INVALID);
        assert_eq!(rs[4].1, rep::ERR_POLICY);
        assert_eq!(rs[4].2, b"no I/O queue pair left");
        assert_eq!(rs[5], (opt::ABORT, rep::ACK, vec![]));
    }

    #[test]
    fn export_name_sends_size_flags_and_honours_no_zeroes() {
        let mut s = 1u32.to_be_bytes().to_vec();
        s.extend(option(opt::EXPORT_NAME, b""));
        let (r, out) = run(s, true);
        assert!(matches!(r, Negotiated::Transmission(7)));
        assert_eq!(out.len(), 18 + 8 + 2 + 124);
        let mut s = 3u32.to_be_bytes().to_vec();
        s.extend(option(opt::EXPORT_NAME, b"ns1"));
        let (_, out) = run(s, true);
        assert_eq!(out.len(), 18 + 10);
        assert_eq!(&out[18..26], &(1u64 << 20).to_be_bytes());
        assert_eq!(&out[26..28], &0x10du16.to_be_bytes());
    }

    #[test]
    fn bad_client_flags_bad_magic_and_huge_options_end_cleanly() {
        let (r, _) = run(0x80u32.to_be_bytes().to_vec(), true);
        assert!(matches!(r, Negotiated::Ended(ref m) if m.contains("unknown client flags")));
        let mut s = 1u32.to_be_bytes().to_vec();
        s.extend_from_slice(b"NOTANOPT");
        let (r, _) = run(s, true);
        assert!(matches!(r, Negotiated::Ended(ref m) if m.contains("not IHAVEOPT")));
        // A 1 MiB option is skipped (never buffered whole) and refused with ERR_TOO_BIG.
        let mut s = 1u32.to_be_bytes().to_vec();
        s.extend(option(opt::INFO, &vec![0u8; 1 << 20]));
        s.extend(option(opt::ABORT, &[]));
        let (r, out) = run(s, true);
        assert!(matches!(r, Negotiated::Ended(_)));
        let rs = replies(&out);
        assert_eq!(rs[0].1, ERR_TOO_BIG);
        assert_eq!(rs[1].1, rep::ACK);
        // A client that hangs up mid-option.
        let mut s = 1u32.to_be_bytes().to_vec();
        s.extend(option(opt::GO, &go_data("", &[]))[..20].to_vec());
        let (r, _) = run(s, true);
        assert!(matches!(r, Negotiated::Ended(ref m) if m.contains("inside an option")));
    }

    #[test]
    fn info_request_parsing() {
        assert_eq!(
            parse_info_request(&go_data("ab", &[3])),
            Some((&b"ab"[..], vec![3]))
        );
        assert_eq!(parse_info_request(&[0, 0, 0]), None);
        assert_eq!(parse_info_request(&[0, 0, 0, 9, 0, 0]), None);
        assert_eq!(parse_info_request(&[0, 0, 0, 0, 0, 2, 0, 3]), None);
    }
}

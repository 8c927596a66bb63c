//! NBD wire format: magics, flags, option and command numbers, error values, and the
//! encoding of the messages the server sends and parses. Section names refer to the NBD
//! protocol document (`doc/proto.md` of the reference implementation). Everything on the
//! wire is big-endian ("network byte order", proto.md "Conventions").

use std::io::{self, Read, Write};

/// `NBDMAGIC`, the first 8 bytes the server sends (proto.md "Newstyle negotiation").
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: after `NBDMAGIC` from the server, and before every option from the client.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of every option reply (proto.md "Fixed newstyle negotiation").
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// `NBD_REQUEST_MAGIC` (proto.md "Request message").
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_SIMPLE_REPLY_MAGIC` (proto.md "Simple reply message").
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flags (proto.md "Handshake flags").
pub mod hflag {
    /// Bit 0: the server speaks fixed newstyle.
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    /// Bit 1: the 124 zero bytes after `NBD_OPT_EXPORT_NAME` may be left out.
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags (proto.md "Client flags").
pub mod cflag {
    /// Bit 0: `NBD_FLAG_C_FIXED_NEWSTYLE`.
    pub const FIXED_NEWSTYLE: u32 = 1 << 0;
    /// Bit 1: `NBD_FLAG_C_NO_ZEROES`.
    pub const NO_ZEROES: u32 = 1 << 1;
}

/// Transmission flags (proto.md "Transmission flags").
pub mod tflag {
    /// Bit 0: `NBD_FLAG_HAS_FLAGS`, always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// Bit 1: `NBD_FLAG_READ_ONLY`.
    pub const READ_ONLY: u16 = 1 << 1;
    /// Bit 2: `NBD_FLAG_SEND_FLUSH`.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// Bit 3: `NBD_FLAG_SEND_FUA`.
    pub const SEND_FUA: u16 = 1 << 3;
    /// Bit 5: `NBD_FLAG_SEND_TRIM`.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// Bit 6: `NBD_FLAG_SEND_WRITE_ZEROES` (and `NBD_CMD_FLAG_NO_HOLE`).
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// Bit 8: `NBD_FLAG_CAN_MULTI_CONN`.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// Option types (proto.md "Option types").
pub mod opt {
    /// `NBD_OPT_EXPORT_NAME`.
    pub const EXPORT_NAME: u32 = 1;
    /// `NBD_OPT_ABORT`.
    pub const ABORT: u32 = 2;
    /// `NBD_OPT_LIST`.
    pub const LIST: u32 = 3;
    /// `NBD_OPT_STARTTLS`.
    pub const STARTTLS: u32 = 5;
    /// `NBD_OPT_INFO`.
    pub const INFO: u32 = 6;
    /// `NBD_OPT_GO`.
    pub const GO: u32 = 7;
    /// `NBD_OPT_STRUCTURED_REPLY`.
    pub const STRUCTURED_REPLY: u32 = 8;
}

/// Option reply types (proto.md "Option reply types"); errors have bit 31 set.
pub mod rep {
    /// `NBD_REP_ACK`.
    pub const ACK: u32 = 1;
    /// `NBD_REP_SERVER`.
    pub const SERVER: u32 = 2;
    /// `NBD_REP_INFO`.
    pub const INFO: u32 = 3;
    /// `NBD_REP_ERR_UNSUP`.
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    /// `NBD_REP_ERR_POLICY`.
    pub const ERR_POLICY: u32 = (1 << 31) + 2;
    /// `NBD_REP_ERR_INVALID`.
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    /// `NBD_REP_ERR_UNKNOWN`.
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    /// `NBD_REP_ERR_SHUTDOWN`.
    pub const ERR_SHUTDOWN: u32 = (1 << 31) + 7;
}

/// Information types of `NBD_REP_INFO` (proto.md "Option reply types", `NBD_REP_INFO`).
pub mod info {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// `NBD_INFO_NAME`: the canonical name.
    pub const NAME: u16 = 1;
    /// `NBD_INFO_DESCRIPTION`: text for a human.
    pub const DESCRIPTION: u16 = 2;
    /// `NBD_INFO_BLOCK_SIZE`: minimum, preferred, maximum payload.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Command types (proto.md "Request types").
pub mod cmd {
    /// `NBD_CMD_READ`.
    pub const READ: u16 = 0;
    /// `NBD_CMD_WRITE`.
    pub const WRITE: u16 = 1;
    /// `NBD_CMD_DISC`.
    pub const DISC: u16 = 2;
    /// `NBD_CMD_FLUSH`.
    pub const FLUSH: u16 = 3;
    /// `NBD_CMD_TRIM`.
    pub const TRIM: u16 = 4;
    /// `NBD_CMD_WRITE_ZEROES`.
    pub const WRITE_ZEROES: u16 = 6;
}

/// Command flags (proto.md "Command flags").
pub mod cmdflag {
    /// Bit 0: `NBD_CMD_FLAG_FUA`.
    pub const FUA: u16 = 1 << 0;
    /// Bit 1: `NBD_CMD_FLAG_NO_HOLE` (write zeroes only).
    pub const NO_HOLE: u16 = 1 << 1;
}

/// Error values of replies (proto.md "Error values").
pub mod errno {
    /// `NBD_EPERM`.
    pub const EPERM: u32 = 1;
    /// `NBD_EIO`.
    pub const EIO: u32 = 5;
    /// `NBD_EINVAL`.
    pub const EINVAL: u32 = 22;
    /// `NBD_ENOSPC`.
    pub const ENOSPC: u32 = 28;
}

/// The name of a command type, for log lines.
pub fn cmd_name(t: u16) -> &'static str {
    match t {
        cmd::READ => "READ",
        cmd::WRITE => "WRITE",
        cmd::DISC => "DISC",
        cmd::FLUSH => "FLUSH",
        cmd::TRIM => "TRIM",
        5 => "CACHE",
        cmd::WRITE_ZEROES => "WRITE_ZEROES",
        7 => "BLOCK_STATUS",
        8 => "RESIZE",
        _ => "unknown",
    }
}

/// Reads a big-endian `u32`.
pub fn get_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// Reads a big-endian `u64`.
pub fn get_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// One option reply: magic, the option it answers, reply type, length, data
/// (proto.md "Fixed newstyle negotiation").
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + data.len());
    m.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&reply.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    m
}

/// Writes one option reply.
pub fn send_option_reply(
    w: &mut impl Write,
    option: u32,
    reply: u32,
    data: &[u8],
) -> io::Result<()> {
    w.write_all(&option_reply(option, reply, data))
}

/// The payload of `NBD_INFO_EXPORT`: type, size, transmission flags (length 12).
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(12);
    m.extend_from_slice(&info::EXPORT.to_be_bytes());
    m.extend_from_slice(&size.to_be_bytes());
    m.extend_from_slice(&flags.to_be_bytes());
    m
}

/// The payload of `NBD_INFO_BLOCK_SIZE`: type, minimum, preferred, maximum (length 14).
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(14);
    m.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    m.extend_from_slice(&min.to_be_bytes());
    m.extend_from_slice(&preferred.to_be_bytes());
    m.extend_from_slice(&max.to_be_bytes());
    m
}

/// The payload of `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION`: type, then the text.
pub fn info_text(kind: u16, text: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(2 + text.len());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(text.as_bytes());
    m
}

/// The fixed 28-byte header of a request (proto.md "Request message").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub kind: u16,
    /// The client's cookie (handle), echoed in the reply.
    pub cookie: u64,
    /// Byte offset in the export.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

/// Bytes of a request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;

impl RequestHeader {
    /// Decodes a header; `Err(magic)` if the magic is not `NBD_REQUEST_MAGIC`.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Self, u32> {
        let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let be16 = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let be64 = |i: usize| (u64::from(be32(i)) << 32) | u64::from(be32(i + 4));
        let magic = be32(0);
        if magic != REQUEST_MAGIC {
            return Err(magic);
        }
        Ok(Self {
            flags: be16(4),
            kind: be16(6),
            cookie: be64(8),
            offset: be64(16),
            len: be32(24),
        })
    }

    /// Encodes the header.
    #[cfg(test)]
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// Writes a simple reply header (magic, error, cookie) into `out[..16]`
/// (proto.md "Simple reply message").
pub fn simple_reply(out: &mut [u8], error: u32, cookie: u64) {
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_spell_their_names() {
        assert_eq!(&NBDMAGIC.to_be_bytes(), b"NBDMAGIC");
        assert_eq!(&IHAVEOPT.to_be_bytes(), b"IHAVEOPT");
    }

    #[test]
    fn request_header_round_trips_and_checks_the_magic() {
        let h = RequestHeader {
            flags: cmdflag::FUA,
            kind: cmd::WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 0x1_0000_0200,
            len: 4096,
        };
        let b = h.encode();
        assert_eq!(&b[0..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(RequestHeader::decode(&b), Ok(h));
        let mut bad = b;
        bad[0] = 0x12;
        assert_eq!(RequestHeader::decode(&bad), Err(0x1260_9513));
    }

    #[test]
    fn replies_have_the_documented_layout() {
        let r = option_reply(opt::GO, rep::ERR_POLICY, b"no");
        assert_eq!(r.len(), 22);
        assert_eq!(&r[0..8], &REPLY_MAGIC.to_be_bytes());
        assert_eq!(&r[8..12], &7u32.to_be_bytes());
        assert_eq!(&r[12..16], &0x8000_0002u32.to_be_bytes());
        assert_eq!(&r[16..20], &2u32.to_be_bytes());
        assert_eq!(info_export(1 << 20, 0x0d).len(), 12);
        assert_eq!(info_block_size(512, 4096, 1 << 17).len(), 14);
        let mut s = [0u8; 16];
        simple_reply(&mut s, errno::EINVAL, 9);
        assert_eq!(&s[0..4], &[0x67, 0x44, 0x66, 0x98]);
        assert_eq!(&s[4..8], &22u32.to_be_bytes());
        assert_eq!(&s[8..16], &9u64.to_be_bytes());
    }
}

//! Little-endian field access in byte pages written by the device. Out-of-range reads return
//! zero and out-of-range writes are dropped, so no parser can panic on a short page; parsers
//! check the length once up front (`new_checked`).

pub(crate) fn u8_at(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}
pub(crate) fn u16_at(b: &[u8], off: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(off..off + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}
pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}
pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}
pub(crate) fn u128_at(b: &[u8], off: usize) -> u128 {
    let mut a = [0u8; 16];
    if let Some(s) = b.get(off..off + 16) {
        a.copy_from_slice(s);
    }
    u128::from_le_bytes(a)
}
pub(crate) fn array_at<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    if let Some(s) = b.get(off..off + N) {
        a.copy_from_slice(s);
    }
    a
}
pub(crate) fn put(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(s) = b.get_mut(off..off + v.len()) {
        s.copy_from_slice(v);
    }
}

/// An ASCII field of the spec (serial number, model, firmware revision): space padded on the
/// right. Holds the raw bytes; [`AsciiField::as_str`] trims and stops at the first byte that
/// is not printable ASCII, so hostile data can't produce control characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AsciiField<const N: usize>(pub [u8; N]);

impl<const N: usize> Default for AsciiField<N> {
    fn default() -> Self {
        Self([b' '; N])
    }
}

impl<const N: usize> AsciiField<N> {
    /// From a string, truncated or space padded to `N` bytes.
    pub fn from_str_padded(s: &str) -> Self {
        let mut a = [b' '; N];
        for (d, c) in a.iter_mut().zip(s.bytes()) {
            *d = c;
        }
        Self(a)
    }
    /// The printable prefix, trailing spaces and NULs removed.
    pub fn as_str(&self) -> &str {
        let end = self
            .0
            .iter()
            .position(|&c| !(0x20..0x7F).contains(&c))
            .unwrap_or(N);
        let s = core::str::from_utf8(&self.0[..end]).unwrap_or("");
        s.trim_end()
    }
}

impl<const N: usize> core::fmt::Debug for AsciiField<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}
impl<const N: usize> core::fmt::Display for AsciiField<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

//! Raw image files as namespace media, opened safely: an image is never created or resized
//! unless asked, is locked against a second writer, opens read-only when the file is
//! read-only, and keeps its LBA format across runs.
//!
//! - **Creation** only through [`ImageFile::open`] with `create: Some(bytes)`; a missing path
//!   without it is [`ImageError::Missing`]. Creating over an existing file of another size is
//!   refused: an image's length never changes after creation.
//! - **Locking**: a writer takes an exclusive `flock(2)` on the image, a read-only opener a
//!   shared one; a conflicting open fails with [`ImageError::Locked`], naming the holder's
//!   process ID when `/proc/locks` shows it. The lock lives as long as any handle to the file
//!   (the simulator's namespace keeps one).
//! - **Read-only**: a file that cannot be opened for writing (permissions, a read-only mount)
//!   opens read-only; the simulator then reports the namespace write protected (Identify
//!   Namespace NSATTR bit 0, NVM Command Set 1.1 §4.1.5.1; NVMe Base 2.1 chapter 8,
//!   "Namespace Write Protection") and fails writes, Write Zeroes, deallocation and Format NVM
//!   with Generic status 20h "Namespace is Write Protected" (NVMe Base 2.1 §4.2.3.1, Figure
//!   "Generic Command Status Values").
//! - **LBA format**: after Format NVM (NVMe Base 2.1 §5.1.10) of an image-backed namespace the
//!   new LBA data size is written to a sidecar, `IMAGE.nvme-sim.json`
//!   (`{"lba_size": 4096}`), and [`ImageFile::namespace`] uses it on the next open; without
//!   a sidecar an image has 512-byte blocks. Blocks are `length / lba_size`; a tail shorter
//!   than one block is left untouched.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use crate::config::{Backing, NamespaceConfig};

/// The smallest image [`ImageFile::open`] creates or accepts.
pub const MIN_IMAGE_BYTES: u64 = 1 << 20;

/// Why an image could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The path does not exist and creation was not asked for.
    #[error("{0}: no such image; to create it, ask for a size (sim:{0},create=64M)", .path.display())]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// Creation was asked for, but a file of another size is there.
    #[error("{}: exists with {have} bytes, but create={want} asks for {want} bytes; an image is never resized: drop create= to use it, or remove it", .path.display())]
    SizeMismatch {
        /// The path.
        path: PathBuf,
        /// Its length.
        have: u64,
        /// The size asked for.
        want: u64,
    },
    /// Too small or not a multiple of 512 bytes.
    #[error("{}: {reason}", .path.display())]
    BadSize {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another open file holds a conflicting lock.
    #[error("{}: in use by {}; an image has one writer at a time", .path.display(), match .holder { Some(p) => format!("process {p}"), None => "another process".to_string() })]
    Locked {
        /// The path.
        path: PathBuf,
        /// The holder's process ID, if known.
        holder: Option<u32>,
    },
    /// The sidecar exists but cannot be read.
    #[error("{}: {reason} (delete it to fall back to 512-byte blocks)", .path.display())]
    BadSidecar {
        /// The sidecar path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Any other I/O failure.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

struct Inner {
    file: File,
    path: PathBuf,
    read_only: bool,
    len: u64,
}

/// An open, locked raw image. Clones share the file (and the lock).
#[derive(Clone)]
pub struct ImageFile(Arc<Inner>);

impl fmt::Debug for ImageFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageFile")
            .field("path", &self.0.path)
            .field("read_only", &self.0.read_only)
            .field("len", &self.0.len)
            .finish()
    }
}

impl PartialEq for ImageFile {
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.0, &o.0)
    }
}
impl Eq for ImageFile {}

/// The sidecar path of an image: `IMAGE.nvme-sim.json`.
pub fn sidecar_path(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".nvme-sim.json");
    PathBuf::from(s)
}

/// The process holding a `flock` on the file `(dev, ino)`, from `/proc/locks` (lines such as
/// `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`, device numbers in hex).
fn lock_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let i = f.iter().position(|w| *w == want)?;
        if !f.contains(&"FLOCK") || i == 0 {
            return None;
        }
        f[i - 1].parse().ok()
    })
}

fn parse_sidecar(text: &str) -> Option<u32> {
    let rest = &text[text.find("\"lba_size\"")? + "\"lba_size\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl ImageFile {
    /// Opens (or, with `create: Some(bytes)`, creates) the image at `path` and locks it;
    /// `read_only` opens it read-only even if the file is writable.
    ///
    /// # Errors
    /// See [`ImageError`].
    pub fn open(path: &Path, create: Option<u64>, read_only: bool) -> Result<Self, ImageError> {
        let io_err = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bad = |reason: String| ImageError::BadSize {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(want) = create {
            if want < MIN_IMAGE_BYTES || want % 512 != 0 {
                return Err(bad(format!(
                    "create={want}: an image needs at least 1 MiB, in whole 512-byte blocks"
                )));
            }
        }
        let (file, read_only) = match OpenOptions::new().read(true).write(!read_only).open(path) {
            Ok(f) if read_only => (f, true),
            Ok(f) => (f, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match create {
                None => {
                    return Err(ImageError::Missing {
                        path: path.to_path_buf(),
                    })
                }
                Some(want) => {
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(path)
                        .map_err(io_err)?;
                    f.set_len(want).map_err(io_err)?;
                    log::info!("created image {} of {want} bytes", path.display());
                    (f, false)
                }
            },
            Err(e)
                if e.kind() == io::ErrorKind::PermissionDenied
                    || e.kind() == io::ErrorKind::ReadOnlyFilesystem =>
            {
                log::info!("{}: not writable ({e}), opening read-only", path.display());
                (File::open(path).map_err(io_err)?, true)
            }
            Err(e) => return Err(io_err(e)),
        };
        let meta = file.metadata().map_err(io_err)?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        let op = if read_only {
            FlockOperation::NonBlockingLockShared
        } else {
            FlockOperation::NonBlockingLockExclusive
        };
        match flock(&file, op) {
            Ok(()) => {}
            Err(e) if e == Errno::WOULDBLOCK => {
                // `/proc/locks` is produced a chunk at a time from a list other processes
                // change meanwhile, so one reading can skip a line: a few tries.
                let holder = (0..3).find_map(|_| {
                    std::fs::read_to_string("/proc/locks")
                        .ok()
                        .and_then(|l| lock_holder(&l, meta.dev(), meta.ino()))
                });
                return Err(ImageError::Locked {
                    path: path.to_path_buf(),
                    holder,
                });
            }
            Err(e) => return Err(io_err(e.into())),
        }
        let len = meta.len();
        if let Some(want) = create {
            if len != want {
                return Err(ImageError::SizeMismatch {
                    path: path.to_path_buf(),
                    have: len,
                    want,
                });
            }
        }
        if len < MIN_IMAGE_BYTES {
            return Err(bad(format!(
                "{len} bytes; a namespace image needs at least 1 MiB"
            )));
        }
        Ok(Self(Arc::new(Inner {
            file,
            path: path.to_path_buf(),
            read_only,
            len,
        })))
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// True if the file could only be opened for reading.
    pub fn read_only(&self) -> bool {
        self.0.read_only
    }

    /// The file's length in bytes (never changed by the simulator).
    pub fn len(&self) -> u64 {
        self.0.len
    }

    /// Always false: an image has at least [`MIN_IMAGE_BYTES`].
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// A new handle to the open file (sharing its lock).
    ///
    /// # Errors
    /// `dup` failed.
    pub fn file(&self) -> io::Result<File> {
        self.0.file.try_clone()
    }

    /// The LBA data size recorded in the sidecar by a Format NVM, or 512 without one.
    ///
    /// # Errors
    /// [`ImageError::BadSidecar`] for an unreadable sidecar or an unsupported size.
    pub fn lba_size(&self) -> Result<u32, ImageError> {
        let p = sidecar_path(&self.0.path);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(512),
            Err(e) => {
                return Err(ImageError::BadSidecar {
                    path: p,
                    reason: e.to_string(),
                })
            }
        };
        match parse_sidecar(&text) {
            Some(n @ (512 | 1024 | 2048 | 4096)) => Ok(n),
            _ => Err(ImageError::BadSidecar {
                path: p,
                reason: format!(
                    "expected {{\"lba_size\": 512|1024|2048|4096}}, found {:?}",
                    text.trim()
                ),
            }),
        }
    }

    /// Records the LBA data size for the next open (called after Format NVM).
    ///
    /// # Errors
    /// The sidecar could not be written.
    pub fn save_lba_size(&self, lba_size: u32) -> io::Result<()> {
        let p = sidecar_path(&self.0.path);
        if lba_size == 512 && !p.exists() {
            return Ok(());
        }
        let tmp = {
            let mut s = p.as_os_str().to_owned();
            s.push(".tmp");
            PathBuf::from(s)
        };
        std::fs::write(&tmp, format!("{{\"lba_size\": {lba_size}}}\n"))?;
        std::fs::rename(&tmp, &p)
    }

    /// The namespace this image makes: its recorded LBA size, `len / lba_size` blocks.
    ///
    /// # Errors
    /// As [`ImageFile::lba_size`].
    pub fn namespace(&self) -> Result<NamespaceConfig, ImageError> {
        let lba_size = self.lba_size()?;
        Ok(NamespaceConfig {
            lba_size,
            blocks: self.0.len / u64::from(lba_size),
            backing: Backing::Image(self.clone()),
            read_cache: crate::config::DEFAULT_READ_CACHE,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_an_error_unless_created() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.img");
        assert!(matches!(
            ImageFile::open(&p, None, false),
            Err(ImageError::Missing { .. })
        ));
        assert!(!p.exists(), "a failed open creates nothing");
        let img = ImageFile::open(&p, Some(2 << 20), false).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 2 << 20);
        assert!(!img.read_only());
        drop(img);
        // Same size again: opens; another size: refused, file untouched.
        drop(ImageFile::open(&p, Some(2 << 20), false).unwrap());
        let e = ImageFile::open(&p, Some(4 << 20), false).unwrap_err();
        assert!(matches!(e, ImageError::SizeMismatch { .. }), "{e}");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 2 << 20);
        assert!(ImageFile::open(&d.path().join("b"), Some(1000), false).is_err());
    }

    #[test]
    fn a_second_writer_is_refused_with_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.img");
        let first = ImageFile::open(&p, Some(1 << 20), false).unwrap();
        let e = ImageFile::open(&p, None, false).unwrap_err();
        match &e {
            ImageError::Locked { holder, .. } => {
                if std::path::Path::new("/proc/locks").exists() {
                    assert_eq!(*holder, Some(std::process::id()), "{e}");
                }
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("in use by"), "{e}");
        drop(first);
        ImageFile::open(&p, None, false).unwrap();
    }

    #[test]
    fn read_only_opens_share_and_exclude_writers() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.img");
        drop(ImageFile::open(&p, Some(1 << 20), false).unwrap());
        let r1 = ImageFile::open(&p, None, true).unwrap();
        let r2 = ImageFile::open(&p, None, true).unwrap();
        assert!(r1.read_only() && r2.read_only());
        assert!(
            r1.file().unwrap().set_len(0).is_err(),
            "the handle cannot write"
        );
        assert!(matches!(
            ImageFile::open(&p, None, false),
            Err(ImageError::Locked { .. })
        ));
        drop((r1, r2));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 20);
    }

    #[test]
    fn lock_holder_parses_proc_locks() {
        let dev = (8u64 << 8) | 1;
        let locks = "1: POSIX  ADVISORY  WRITE 99 08:01:77 0 EOF\n2: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF\n";
        assert_eq!(lock_holder(locks, dev, 5678), Some(1234));
        assert_eq!(
            lock_holder(locks, dev, 77),
            None,
            "POSIX locks are not ours"
        );
        assert_eq!(lock_holder(locks, dev, 1), None);
    }

    #[test]
    fn sidecar_keeps_the_lba_size() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.img");
        let img = ImageFile::open(&p, Some(1 << 20), false).unwrap();
        assert_eq!(img.namespace().unwrap().lba_size, 512);
        img.save_lba_size(4096).unwrap();
        let ns = img.namespace().unwrap();
        assert_eq!((ns.lba_size, ns.blocks), (4096, 256));
        std::fs::write(sidecar_path(&p), "{\"lba_size\": 520}").unwrap();
        assert!(matches!(img.lba_size(), Err(ImageError::BadSidecar { .. })));
        assert_eq!(parse_sidecar("{ \"lba_size\" :2048 }"), Some(2048));
    }
}

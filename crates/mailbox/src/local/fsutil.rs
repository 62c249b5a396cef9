//! File-system helpers of the local backend: stamps, content etags, atomic
//! writes (temp file in the same folder + rename or link) and dot-locks.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::types::Etag;

/// Prefix of the temp files this backend writes next to the items. Names
/// starting with `.` are never items, so other readers skip them too.
pub(super) const TEMP_PREFIX: &str = ".crmsync-";

/// What `stat` says about a file: enough to tell "surely unchanged" without
/// reading it. Any write through a temp file + rename gives a new inode; an
/// in-place write changes mtime/ctime (and usually size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
}

impl Stamp {
    pub fn of(meta: &Metadata) -> Stamp {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Stamp {
                size: meta.len(),
                mtime_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
                ctime_ns: meta.ctime().saturating_mul(1_000_000_000) + meta.ctime_nsec(),
                ino: meta.ino(),
            }
        }
        #[cfg(not(unix))]
        {
            let mtime_ns = meta.modified().map(system_time_ns).unwrap_or(0);
            Stamp {
                size: meta.len(),
                mtime_ns,
                ctime_ns: mtime_ns,
                ino: 0,
            }
        }
    }

    /// The later of mtime and ctime.
    pub fn latest_ns(&self) -> i64 {
        self.mtime_ns.max(self.ctime_ns)
    }
}

pub(super) fn system_time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

pub(super) fn now_ns() -> i64 {
    system_time_ns(SystemTime::now())
}

/// The etag of a `.vcf`/`.ics`: the first 128 bits of its SHA-256, in hex.
pub(super) fn content_etag(data: &[u8]) -> Etag {
    let digest = Sha256::digest(data);
    Etag::new(hex::encode(&digest[..16]))
}

/// Reads a file and its stamp through one handle, so the stamp belongs to
/// exactly the bytes read.
pub(super) fn read_with_stamp(path: &Path) -> io::Result<(Vec<u8>, Stamp)> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::other("is a directory, not a file"));
    }
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    io::Read::read_to_end(&mut file, &mut data)?;
    Ok((data, Stamp::of(&meta)))
}

/// A fresh temp file path in `dir` (hidden, unique).
pub(super) fn temp_path(dir: &Path) -> PathBuf {
    dir.join(format!(
        "{TEMP_PREFIX}{}.tmp",
        uuid::Uuid::new_v4().simple()
    ))
}

/// Writes `data` to a new file at `path` and flushes it to disk.
pub(super) fn write_file_new(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

/// Flushes a directory entry change (rename, link, unlink) to disk; best
/// effort (not every platform can open a directory).
pub(super) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// How [`place_new`] failed.
pub(super) enum PlaceError {
    Exists,
    Io(PathBuf, io::Error),
}

/// Puts the complete file `tmp` at `target` only if `target` does not exist:
/// `link` refuses to replace (atomic "must not exist"), then the temp name is
/// removed. On file systems without hard links, a check then a rename.
/// `tmp` is gone afterwards in every case.
pub(super) fn place_new(tmp: &Path, target: &Path) -> Result<(), PlaceError> {
    let result = match fs::hard_link(tmp, target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(PlaceError::Exists),
        Err(_) => {
            // No hard links here (some network or FAT file systems).
            if fs::symlink_metadata(target).is_ok() {
                Err(PlaceError::Exists)
            } else {
                return fs::rename(tmp, target)
                    .map_err(|e| PlaceError::Io(target.to_path_buf(), e))
                    .inspect_err(|_| {
                        let _ = fs::remove_file(tmp);
                    });
            }
        }
    };
    let _ = fs::remove_file(tmp);
    result
}

/// Writes `data` into a temp file in `dir` and returns its path.
pub(super) fn write_temp(dir: &Path, data: &[u8]) -> Result<PathBuf> {
    let tmp = temp_path(dir);
    if let Err(e) = write_file_new(&tmp, data) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    Ok(tmp)
}

/// A lock file created with `O_EXCL`, removed on drop (Dovecot's dot-lock
/// convention: `<file>.lock`). A lock older than `stale` is taken over.
pub(super) struct DotLock {
    path: PathBuf,
    armed: bool,
}

impl DotLock {
    pub fn acquire(folder: &Path, path: PathBuf, stale: Duration, wait: Duration) -> Result<Self> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    let _ = writeln!(file, "{}", std::process::id());
                    return Ok(DotLock { path, armed: true });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let age = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| SystemTime::now().duration_since(m).ok());
                    if age.is_some_and(|age| age > stale) {
                        tracing::warn!(lock = %path.display(), "taking over a stale lock");
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    if std::time::Instant::now() >= deadline {
                        return Err(Error::LockTimeout {
                            folder: folder.to_path_buf(),
                            lock: path,
                        });
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file was renamed into place (it became the real file): do
    /// not remove anything on drop.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// This host's name for Maildir unique names, with `/` and `:` escaped as
/// the Maildir specification asks.
pub(super) fn maildir_hostname() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    raw.replace('/', "\\057").replace(':', "\\072")
}

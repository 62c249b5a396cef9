//! Dovecot's `dovecot-keywords` file: which keyword each letter `a`..`z` of a
//! Maildir file name's flags stands for, one folder at a time.
//!
//! Format (Dovecot's Maildir documentation): lines `<index> <name>`, index
//! 0 = letter `a` … 25 = `z`. Read without locking; written only while
//! holding the folder's `dovecot-uidlist.lock`, into `dovecot-keywords.lock`
//! renamed over the file (never edited in place), with an mtime greater than
//! the old one (Dovecot re-reads the file only when its mtime moves).
//! Names are matched without ASCII case, as Dovecot does.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::fsutil::DotLock;
use crate::error::{Error, Result};
use crate::types::Keyword;

pub(super) const KEYWORDS_FILE: &str = "dovecot-keywords";
pub(super) const KEYWORDS_LOCK: &str = "dovecot-keywords.lock";
pub(super) const UIDLIST_LOCK: &str = "dovecot-uidlist.lock";
/// Dovecot overrides a keywords lock older than two minutes.
pub(super) const LOCK_STALE: Duration = Duration::from_secs(120);
pub(super) const LOCK_WAIT: Duration = Duration::from_secs(10);

const SLOTS: usize = 26;

#[derive(Debug, Default, Clone)]
pub(super) struct KeywordTable {
    names: Vec<Option<String>>,
    mtime: Option<SystemTime>,
}

impl KeywordTable {
    /// Reads the folder's table; a missing file is an empty table. Lines
    /// that do not fit the format are skipped, as Dovecot does.
    pub fn read(folder: &Path) -> Result<Self> {
        let path = folder.join(KEYWORDS_FILE);
        let mut table = KeywordTable {
            names: vec![None; SLOTS],
            mtime: None,
        };
        let text = match fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(table),
            Err(e) => return Err(Error::io(&path, e)),
        };
        table.mtime = fs::metadata(&path).and_then(|m| m.modified()).ok();
        for line in text.lines() {
            let Some((index, name)) = line.split_once(' ') else {
                continue;
            };
            let Ok(index) = index.trim().parse::<usize>() else {
                continue;
            };
            if index < SLOTS && !name.is_empty() {
                table.names[index] = Some(name.to_owned());
            }
        }
        Ok(table)
    }

    /// The keyword a flag letter stands for, if the table names one that is
    /// a valid keyword.
    pub fn keyword_of(&self, letter: char) -> Option<Keyword> {
        let index = letter_index(letter)?;
        let name = self.names.get(index)?.as_deref()?;
        Keyword::new(name).ok()
    }

    pub fn letter_of(&self, keyword: &Keyword) -> Option<char> {
        self.names.iter().enumerate().find_map(|(i, name)| {
            name.as_deref()
                .filter(|n| n.eq_ignore_ascii_case(keyword.as_str()))
                .map(|_| index_letter(i))
        })
    }

    /// Gives `keyword` the first free letter; `None` when all 26 are taken.
    pub fn allocate(&mut self, keyword: &Keyword) -> Option<char> {
        if let Some(letter) = self.letter_of(keyword) {
            return Some(letter);
        }
        let free = self.names.iter().position(Option::is_none)?;
        self.names[free] = Some(keyword.as_str().to_owned());
        Some(index_letter(free))
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (i, name) in self.names.iter().enumerate() {
            if let Some(name) = name {
                out.push_str(&format!("{i} {name}\n"));
            }
        }
        out
    }

    /// Replaces the folder's file with this table. The caller holds the
    /// folder's `dovecot-uidlist.lock`.
    pub fn write(&self, folder: &Path) -> Result<()> {
        let target = folder.join(KEYWORDS_FILE);
        let mut lock = DotLock::acquire(folder, folder.join(KEYWORDS_LOCK), LOCK_STALE, LOCK_WAIT)?;
        let lock_path: PathBuf = lock.path().to_path_buf();
        let write = || -> io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&lock_path)?;
            file.write_all(self.render().as_bytes())?;
            // The mtime must grow, in whole seconds, or Dovecot keeps its old copy.
            let now = SystemTime::now();
            let mtime = match self.mtime {
                Some(old) if whole_secs(now) <= whole_secs(old) => {
                    SystemTime::UNIX_EPOCH + Duration::from_secs(whole_secs(old) + 1)
                }
                _ => now,
            };
            file.set_modified(mtime)?;
            file.sync_all()?;
            fs::rename(&lock_path, &target)
        };
        write().map_err(|e| Error::io(&target, e))?;
        lock.disarm();
        if let Ok(dir) = File::open(folder) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

fn whole_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn letter_index(letter: char) -> Option<usize> {
    letter
        .is_ascii_lowercase()
        .then(|| (letter as u8 - b'a') as usize)
}

fn index_letter(index: usize) -> char {
    (b'a' + index as u8) as char
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dovecot_format_and_allocates_the_first_free_letter() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(KEYWORDS_FILE),
            "0 $Junk\n2 $Label1\nbroken line\n30 $TooFar\n",
        )
        .unwrap();
        let mut table = KeywordTable::read(dir.path()).unwrap();
        assert_eq!(table.keyword_of('a'), Some(Keyword::new("$Junk").unwrap()));
        assert_eq!(table.keyword_of('b'), None);
        assert_eq!(
            table.letter_of(&Keyword::new("$label1").unwrap()),
            Some('c')
        );
        assert_eq!(table.allocate(&Keyword::tracked()), Some('b'));
        table.write(dir.path()).unwrap();
        let text = fs::read_to_string(dir.path().join(KEYWORDS_FILE)).unwrap();
        assert_eq!(text, "0 $Junk\n1 $CRMTracked\n2 $Label1\n");
        assert!(!dir.path().join(KEYWORDS_LOCK).exists());
    }

    #[test]
    fn twenty_six_letters_at_most() {
        let mut table = KeywordTable::read(Path::new("/nonexistent")).unwrap();
        for i in 0..26 {
            assert!(table
                .allocate(&Keyword::new(format!("$K{i}")).unwrap())
                .is_some());
        }
        assert_eq!(table.allocate(&Keyword::tracked()), None);
    }
}

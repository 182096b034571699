//! The spill file: records the database could not take, as JSON lines in an
//! append-only file, replayed in order when it is back. How far the replay
//! got is kept in a small offset file beside it, so a restart resumes there;
//! a replay interrupted between the insert and the offset update is written
//! again and skipped by the database (`ON CONFLICT (id) DO NOTHING`).
//!
//! A process holds an flock on its directory's `records.lock` for as long as
//! the spill is open, so on a volume several gateways share, a directory
//! whose lock can be taken belongs to a process that is gone and may be
//! adopted ([`Spill::adopt`]).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::records::{Record, new_id};

const LOCK: &str = "records.lock";

/// An open spill file.
#[derive(Debug)]
pub struct Spill {
    dir: PathBuf,
    path: PathBuf,
    offset_path: PathBuf,
    file: File,
    /// Bytes already replayed.
    offset: u64,
    /// Bytes in the file.
    len: u64,
    /// Held while open: one process per spill directory.
    _lock: File,
}

impl Spill {
    /// Opens (or creates) `dir/records.jsonl`, dropping a torn last line left
    /// by a crash in the middle of an append.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        make_dir(dir, true)?;
        let lock = OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(dir.join(LOCK))?;
        match lock.try_lock() {
            Ok(()) => Self::open_locked(dir, lock),
            Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::other(format!(
                "{} is used by another gateway process: give each its own --spill-dir or --state-dir",
                dir.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Opens a new spill directory of this process's own under `root`,
    /// `root/<name>.<unique id>`. It is made under a hidden name and locked
    /// before it is renamed into place, so a gateway looking for orphans under
    /// `root` never finds it unlocked.
    pub fn create_in(root: &Path, name: &str) -> std::io::Result<Self> {
        make_dir(root, true)?;
        let id = new_id();
        let hidden = root.join(format!(".{name}.{id}"));
        let dir = root.join(format!("{name}.{id}"));
        make_dir(&hidden, false)?;
        let lock = OpenOptions::new().write(true).create_new(true).mode(0o600).open(hidden.join(LOCK))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => std::io::Error::other(format!("{} is locked", hidden.display())),
            std::fs::TryLockError::Error(e) => e,
        })?;
        std::fs::rename(&hidden, &dir)?;
        Self::open_locked(&dir, lock)
    }

    /// Takes over the spill directory of a process that is gone: `None` when
    /// its lock is held (a live process) or it is not a spill directory, or
    /// was removed meanwhile.
    pub fn adopt(dir: &Path) -> std::io::Result<Option<Self>> {
        let lock_path = dir.join(LOCK);
        let lock = match OpenOptions::new().write(true).open(&lock_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        // Another adopter may have replayed and removed it between our open and our lock.
        let held = lock.metadata()?;
        match std::fs::metadata(&lock_path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => Self::open_locked(dir, lock).map(Some),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open_locked(dir: &Path, lock: File) -> std::io::Result<Self> {
        let path = dir.join("records.jsonl");
        let offset_path = dir.join("records.offset");
        let mut file = OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(&path)?;
        let mut len = file.metadata()?.len();
        if len > 0 {
            let mut text = Vec::new();
            file.seek(SeekFrom::Start(0))?;
            file.read_to_end(&mut text)?;
            let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i as u64 + 1);
            if complete < len {
                tracing::warn!(path = %path.display(), bytes = len - complete, "dropping a torn last line of the spill file");
                file.set_len(complete)?;
                len = complete;
            }
        }
        let offset =
            std::fs::read_to_string(&offset_path).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0).min(len);
        Ok(Self { dir: dir.to_path_buf(), path, offset_path, file, offset, len, _lock: lock })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory it is in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether records wait to be replayed.
    pub fn has_backlog(&self) -> bool {
        self.offset < self.len
    }

    /// Bytes waiting to be replayed.
    pub fn backlog_bytes(&self) -> u64 {
        self.len - self.offset
    }

    /// Records (lines) waiting to be replayed.
    pub fn backlog_records(&self) -> std::io::Result<u64> {
        let mut reader = BufReader::new(File::open(&self.path)?);
        reader.seek(SeekFrom::Start(self.offset))?;
        let mut left = self.len - self.offset;
        let mut lines = 0;
        while left > 0 {
            let buf = reader.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            reader.consume(n);
            left -= n as u64;
        }
        Ok(lines)
    }

    /// Removes the directory with the files in it (the lock stays held
    /// until this is dropped).
    pub fn remove_dir(&self) -> std::io::Result<()> {
        std::fs::remove_dir_all(&self.dir)
    }

    /// Appends records and syncs them to disk.
    pub fn append(&mut self, records: &[Record]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(records.len() * 256);
        for record in records {
            serde_json::to_writer(&mut buf, record).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Up to `max` records from the replay point, and the offset after them.
    /// A line that does not parse is logged and skipped (it cannot ever be written).
    pub fn read_batch(&self, max: usize) -> std::io::Result<(Vec<Record>, u64)> {
        let mut reader = BufReader::new(File::open(&self.path)?);
        reader.seek(SeekFrom::Start(self.offset))?;
        let mut records = Vec::new();
        let mut at = self.offset;
        let mut line = Vec::new();
        while records.len() < max && at < self.len {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            at += n as u64;
            match serde_json::from_slice::<Record>(&line) {
                Ok(r) => records.push(r),
                Err(e) => {
                    metrics::counter!("tenantgate_recorder_spill_corrupt_total").increment(1);
                    tracing::error!(path = %self.path.display(), offset = at - n as u64, error = %e, "skipping an unreadable spill line");
                }
            }
        }
        Ok((records, at))
    }

    /// Marks everything before `offset` as replayed; empties the file once all is.
    pub fn advance(&mut self, offset: u64) -> std::io::Result<()> {
        self.offset = offset.min(self.len);
        if self.offset == self.len {
            self.file.set_len(0)?;
            self.file.sync_data()?;
            self.len = 0;
            self.offset = 0;
        }
        let tmp = self.offset_path.with_extension("offset.tmp");
        std::fs::write(&tmp, self.offset.to_string())?;
        std::fs::rename(&tmp, &self.offset_path)
    }
}

/// Makes `dir` (mode 0700): with its parents when `recursive`, else it must not exist yet.
fn make_dir(dir: &Path, recursive: bool) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(recursive).mode(0o700).create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::records::{AuditEvent, AuditKind};

    fn event(n: usize) -> Record {
        let mut e = AuditEvent::new("t", "alice", AuditKind::Admin, "test");
        e.resource = Some(n.to_string());
        Record::Audit(e)
    }

    #[test]
    fn replays_in_order_resumes_after_reopen_and_drops_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("tg-spill-{}-{}", std::process::id(), fastrand::u64(..)));
        let mut spill = Spill::open(&dir).expect("open");
        assert!(!spill.has_backlog());
        let records: Vec<Record> = (0..5).map(event).collect();
        spill.append(&records[..3]).expect("append");
        spill.append(&records[3..]).expect("append");
        let (first, at) = spill.read_batch(2).expect("read");
        assert_eq!(first, records[..2]);
        spill.advance(at).expect("advance");
        // A torn line from a crash mid-append.
        std::fs::OpenOptions::new()
            .append(true)
            .open(spill.path())
            .and_then(|mut f| f.write_all(b"{\"type\":"))
            .expect("tear");
        drop(spill);
        let mut spill = Spill::open(&dir).expect("reopen");
        let (rest, at) = spill.read_batch(100).expect("read");
        assert_eq!(rest, records[2..], "resumes after what was replayed, torn line dropped");
        spill.advance(at).expect("advance");
        assert!(!spill.has_backlog());
        assert_eq!(std::fs::metadata(spill.path()).expect("meta").len(), 0, "emptied once replayed");
        let second = Spill::open(&dir).expect_err("a second owner is refused");
        assert!(second.to_string().contains("another gateway process"), "{second}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_directory_under_a_root_is_adopted_only_once_its_owner_is_gone() {
        let root = std::env::temp_dir().join(format!("tg-spill-root-{}-{}", std::process::id(), fastrand::u64(..)));
        let live = Spill::create_in(&root, "live").expect("live");
        let mut gone = Spill::create_in(&root, "gone").expect("gone");
        assert_ne!(live.dir(), gone.dir(), "each process has a directory of its own");
        assert!(live.dir().file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("live.")));
        let records: Vec<Record> = (0..4).map(event).collect();
        gone.append(&records).expect("append");
        let gone_dir = gone.dir().to_path_buf();
        assert!(Spill::adopt(&gone_dir).expect("adopt").is_none(), "its owner still holds it");
        drop(gone);
        // A directory being made (hidden) is no candidate; the caller's own is left out.
        std::fs::create_dir(root.join(".being-made")).expect("hidden dir");
        let others = crate::storage::adopt::others(&root, live.dir()).expect("list");
        assert_eq!(others, vec![gone_dir.clone()]);

        let adopted = Spill::adopt(&gone_dir).expect("adopt").expect("its owner is gone");
        assert_eq!(adopted.backlog_records().expect("count"), 4);
        assert_eq!(adopted.read_batch(10).expect("read").0, records);
        assert!(Spill::adopt(&gone_dir).expect("adopt").is_none(), "adopted by one gateway at a time");
        assert!(Spill::adopt(live.dir()).expect("adopt").is_none(), "a live gateway's directory is left alone");
        adopted.remove_dir().expect("remove");
        drop(adopted);
        assert!(!gone_dir.exists());
        assert!(Spill::adopt(&gone_dir).expect("adopt").is_none(), "a removed directory is not adopted again");
        let _ = std::fs::remove_dir_all(&root);
    }
}

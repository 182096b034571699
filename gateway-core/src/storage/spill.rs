//! The spill file: records the database could not take, as JSON lines in an
//! append-only file, replayed in order when it is back. How far the replay
//! got is kept in a small offset file beside it, so a restart resumes there;
//! a replay interrupted between the insert and the offset update is written
//! again and skipped by the database (`ON CONFLICT (id) DO NOTHING`).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::records::Record;

/// An open spill file.
#[derive(Debug)]
pub struct Spill {
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
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let lock =
            OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(dir.join("records.lock"))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => std::io::Error::other(format!(
                "{} is used by another gateway process: give each its own --spill-dir or --state-dir",
                dir.display()
            )),
            std::fs::TryLockError::Error(e) => e,
        })?;
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
        Ok(Self { path, offset_path, file, offset, len, _lock: lock })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether records wait to be replayed.
    pub fn has_backlog(&self) -> bool {
        self.offset < self.len
    }

    /// Bytes waiting to be replayed.
    pub fn backlog_bytes(&self) -> u64 {
        self.len - self.offset
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
}

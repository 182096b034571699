//! Adopting orphans: on a spill root that several gateways share (a
//! PersistentVolumeClaim), the spill directories of gateways that are gone.
//! A running gateway holds the lock of its own directory, so one whose lock
//! can be taken is an orphan: its records are replayed into the database in
//! order (their ids make a replay written twice land once), and it is
//! removed once all are. A directory whose lock is held is left alone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Db;
use super::recorder::{ReplayError, replay_chunk};
use super::spill::Spill;

/// The task that adopts the orphans under a spill root.
#[derive(Debug)]
pub(super) struct Adopter {
    pub db: Db,
    /// The shared spill root.
    pub root: PathBuf,
    /// This process's own directory under it.
    pub own: PathBuf,
    pub batch_max: usize,
    pub write_timeout: Duration,
    /// Time between two searches.
    pub interval: Duration,
}

/// Why an orphan was not (yet) adopted.
#[derive(Debug, thiserror::Error)]
enum AdoptError {
    /// Taking it over or removing it failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A chunk could not be replayed (the database is down, most likely).
    #[error("{0}")]
    Replay(#[from] ReplayError),
}

impl Adopter {
    /// Adopts orphans at once and every `interval`, until the recorder closes
    /// (a replay under way stops there; the directory stays for another gateway).
    pub async fn run(self, mut stop: watch::Receiver<Option<Instant>>) {
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(Option::is_some) => return,
                () = self.sweep() => {}
            }
            tokio::select! {
                biased;
                _ = stop.wait_for(Option::is_some) => return,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// One search: each orphan replayed and removed, stopping at the first
    /// that fails (the next search tries again).
    async fn sweep(&self) {
        let (root, own) = (self.root.clone(), self.own.clone());
        let dirs = match tokio::task::spawn_blocking(move || others(&root, &own)).await {
            Ok(Ok(dirs)) => dirs,
            Ok(Err(error)) => {
                tracing::warn!(root = %self.root.display(), %error, "listing the spill root failed");
                return;
            }
            Err(error) => {
                tracing::warn!(root = %self.root.display(), %error, "listing the spill root failed");
                return;
            }
        };
        for dir in dirs {
            if let Err(error) = self.adopt(&dir).await {
                tracing::warn!(dir = %dir.display(), %error, "adopting the spill of a gateway that is gone failed; trying again later");
                return;
            }
        }
    }

    async fn adopt(&self, dir: &Path) -> Result<(), AdoptError> {
        let path = dir.to_path_buf();
        let taken = tokio::task::spawn_blocking(move || Spill::adopt(&path)).await.map_err(std::io::Error::other)??;
        let Some(spill) = taken else { return Ok(()) };
        if spill.has_backlog() {
            tracing::info!(dir = %dir.display(), bytes = spill.backlog_bytes(), "adopting the spill of a gateway that is gone");
        }
        let spill = Arc::new(Mutex::new(spill));
        let mut replayed = 0;
        while spill.lock().unwrap_or_else(PoisonError::into_inner).has_backlog() {
            let chunk = replay_chunk(&self.db, &spill, self.batch_max, self.write_timeout).await?;
            metrics::counter!("tenantgate_recorder_adopted_total").increment(chunk.records as u64);
            replayed += chunk.records;
        }
        // Removed under its lock, so nobody adopts it meanwhile.
        tokio::task::spawn_blocking(move || spill.lock().unwrap_or_else(PoisonError::into_inner).remove_dir())
            .await
            .map_err(std::io::Error::other)??;
        tracing::info!(dir = %dir.display(), records = replayed, "adopted the spill of a gateway that is gone: replayed and removed");
        Ok(())
    }
}

/// The directories under `root` other than `own`, in name order; hidden ones
/// (a gateway's directory being made) and links are left out.
pub(super) fn others(root: &Path, own: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).max_depth(1).sort_by_file_name() {
        let entry = entry?;
        let hidden = entry.file_name().as_encoded_bytes().starts_with(b".");
        if !hidden && entry.file_type().is_dir() && entry.path() != own {
            dirs.push(entry.into_path());
        }
    }
    Ok(dirs)
}

//! The recorder: usage rows and audit events go through a bounded queue to
//! one writer task that inserts them in batches. Requests only enqueue
//! (`try_send`, no await, no lock). When the database fails, batches go to the
//! spill file and are replayed in order once it answers again; when the queue
//! is full, the overflow is spilled too (and counted, and logged as an alarm).
//! Shutdown drains the queue.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::Db;
use super::records::{AuditEvent, ChatEntry, PolicyDecision, Record, UsageRow, new_id, now_ms};
use super::spill::Spill;
use super::write;
use crate::auth::Identity;

/// Recorder settings.
#[derive(Clone, Debug)]
pub struct RecorderConfig {
    /// Directory of the spill file.
    pub spill_dir: PathBuf,
    /// Records the queue holds before it overflows into the spill file.
    pub queue_capacity: usize,
    /// Most records per write.
    pub batch_max: usize,
    /// Least time between the starts of two writes: records arriving
    /// meanwhile wait and go in one transaction, so a steady trickle of
    /// requests costs a commit per interval, not a commit per request.
    pub flush_interval: Duration,
    /// Longest a write may take before the batch is spilled.
    pub write_timeout: Duration,
    /// First wait before trying a failed database again (doubles up to `retry_max`).
    pub retry_min: Duration,
    /// Longest wait between tries.
    pub retry_max: Duration,
}

impl RecorderConfig {
    /// Defaults, spilling into `spill_dir`.
    pub fn new(spill_dir: PathBuf) -> Self {
        Self {
            spill_dir,
            queue_capacity: 65_536,
            batch_max: 1000,
            flush_interval: Duration::from_millis(50),
            write_timeout: Duration::from_secs(5),
            retry_min: Duration::from_millis(250),
            retry_max: Duration::from_secs(2),
        }
    }
}

/// Handle to the recorder; cheap to clone.
#[derive(Clone, Debug)]
pub struct Recorder(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    tx: mpsc::Sender<Record>,
    overflow: mpsc::UnboundedSender<Record>,
    spill: Arc<Mutex<Spill>>,
    stop_overflow: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Option<(JoinHandle<()>, JoinHandle<()>)>>,
    last_alarm_ms: AtomicI64,
}

fn lock(spill: &Mutex<Spill>) -> MutexGuard<'_, Spill> {
    spill.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Recorder {
    /// Opens the spill file and starts the writer. Records spilled by an
    /// earlier run are replayed first.
    pub fn start(db: Db, config: RecorderConfig) -> std::io::Result<Self> {
        let spill = Spill::open(&config.spill_dir)?;
        if spill.has_backlog() {
            tracing::warn!(path = %spill.path().display(), bytes = spill.backlog_bytes(), "replaying records spilled by an earlier run");
        }
        let spill = Arc::new(Mutex::new(spill));
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (overflow, overflow_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let (stop_overflow, stop_overflow_rx) = watch::channel(false);
        let delays = crate::backoff::Delays::new(config.retry_min, config.retry_max);
        let writer = Writer { db, spill: spill.clone(), config, retry_at: None, delays, down_since: None, capacity: 0 };
        let tasks = (
            tokio::spawn(spill_overflow(spill.clone(), overflow_rx, stop_overflow_rx)),
            tokio::spawn(writer.run(rx, stop_rx)),
        );
        Ok(Self(Arc::new(Shared {
            tx,
            overflow,
            spill,
            stop_overflow,
            stop,
            tasks: Mutex::new(Some(tasks)),
            last_alarm_ms: AtomicI64::new(0),
        })))
    }

    /// Enqueues a record: never waits. A full queue sends it to the spill
    /// file instead (counted, alarmed); after shutdown it is spilled at once.
    pub fn record(&self, record: Record) {
        match self.0.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(record)) => {
                metrics::counter!("tenantgate_recorder_overflow_total").increment(1);
                let now = now_ms();
                let last = self.0.last_alarm_ms.load(Ordering::Relaxed);
                if now - last >= 1000
                    && self.0.last_alarm_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
                {
                    tracing::error!(
                        capacity = self.0.tx.max_capacity(),
                        "ALARM: the usage/audit queue is full; records overflow into the spill file"
                    );
                }
                if let Err(e) = self.0.overflow.send(record) {
                    self.spill_now(&[e.0]);
                }
            }
            Err(TrySendError::Closed(record)) => self.spill_now(&[record]),
        }
    }

    /// An audit event, enqueued.
    pub fn audit(&self, event: AuditEvent) {
        self.record(Record::Audit(event));
    }

    fn spill_now(&self, records: &[Record]) {
        let mut spill = lock(&self.0.spill);
        match spill.append(records) {
            Ok(()) => metrics::counter!("tenantgate_recorder_spilled_total").increment(records.len() as u64),
            Err(e) => lost(records.len(), &e),
        }
    }

    /// Records waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.0.tx.max_capacity() - self.0.tx.capacity()
    }

    /// Whether spilled records wait for the database.
    pub fn has_backlog(&self) -> bool {
        lock(&self.0.spill).has_backlog()
    }

    /// Drains the queue into the database (or the spill file) and stops the
    /// writer; waits at most `deadline`. Records made afterwards go straight
    /// to the spill file, for the next start.
    pub async fn close(&self, deadline: Duration) {
        let Some((overflow, writer)) = self.0.tasks.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            return;
        };
        let drain = async {
            // Overflow first, so the writer's last replay includes it.
            let _ = self.0.stop_overflow.send(true);
            let _ = overflow.await;
            let _ = self.0.stop.send(true);
            let _ = writer.await;
        };
        if tokio::time::timeout(deadline, drain).await.is_err() {
            tracing::error!(queued = self.queue_depth(), "the recorder did not drain in time");
        }
    }
}

fn lost(n: usize, error: &std::io::Error) {
    metrics::counter!("tenantgate_recorder_lost_total").increment(n as u64);
    tracing::error!(records = n, %error, "ALARM: records could not be written to the database nor the spill file");
}

/// Appends queue overflow to the spill file as it comes.
async fn spill_overflow(
    spill: Arc<Mutex<Spill>>,
    mut rx: mpsc::UnboundedReceiver<Record>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = Vec::new();
    loop {
        let open = tokio::select! {
            n = rx.recv_many(&mut batch, 1000) => n > 0,
            _ = stop.wait_for(|s| *s) => {
                // Later sends fail and spill directly.
                rx.close();
                while let Ok(r) = rx.try_recv() {
                    batch.push(r);
                }
                false
            }
        };
        if !batch.is_empty() {
            let records = std::mem::take(&mut batch);
            let spill = spill.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let result = lock(&spill).append(&records);
                match result {
                    Ok(()) => metrics::counter!("tenantgate_recorder_spilled_total").increment(records.len() as u64),
                    Err(e) => lost(records.len(), &e),
                }
            })
            .await;
        }
        if !open {
            return;
        }
    }
}

/// The one task that writes to the database.
struct Writer {
    db: Db,
    spill: Arc<Mutex<Spill>>,
    config: RecorderConfig,
    /// While the database is down: when to try it again.
    retry_at: Option<Instant>,
    /// While the database is down: the waits before the next tries.
    delays: crate::backoff::Delays,
    down_since: Option<Instant>,
    capacity: usize,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Record>, mut stop: watch::Receiver<bool>) {
        self.capacity = rx.max_capacity();
        let mut batch = Vec::with_capacity(self.config.batch_max);
        let mut stopping = false;
        let mut next_write = tokio::time::Instant::now();
        loop {
            let backlog = self.backlog();
            let replay_due = backlog && self.retry_at.is_none_or(|t| Instant::now() >= t);
            let retry_at = self.retry_at.map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s), if !stopping => stopping = true,
                n = async {
                    tokio::time::sleep_until(next_write).await;
                    rx.recv_many(&mut batch, self.config.batch_max).await
                }, if !stopping => {
                    if n == 0 {
                        stopping = true;
                    }
                }
                () = async { if let Some(t) = retry_at { tokio::time::sleep_until(t).await } },
                    if backlog && !replay_due && !stopping => {}
                () = std::future::ready(()), if replay_due || stopping => {}
            }
            if stopping {
                // Later sends fail and spill directly; what is queued is still received.
                rx.close();
                while batch.len() < self.config.batch_max {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
            }
            metrics::gauge!("tenantgate_recorder_queue_depth").set(rx.len() as f64);
            if !batch.is_empty() {
                next_write = tokio::time::Instant::now() + self.config.flush_interval;
                self.flush(&mut batch).await;
            }
            if self.backlog() && self.retry_at.is_none_or(|t| Instant::now() >= t) {
                self.replay_chunk().await;
            }
            if stopping && rx.is_empty() && batch.is_empty() {
                // Last tries: replay while the database takes it.
                while self.backlog() && self.retry_at.is_none() {
                    self.replay_chunk().await;
                }
                let left = lock(&self.spill).backlog_bytes();
                metrics::gauge!("tenantgate_recorder_spill_backlog_bytes").set(left as f64);
                if left > 0 {
                    tracing::warn!(bytes = left, "stopping with spilled records; they are replayed at the next start");
                }
                tracing::info!("recorder drained");
                return;
            }
        }
    }

    fn backlog(&self) -> bool {
        lock(&self.spill).has_backlog()
    }

    /// Writes a batch, or spills it when records wait before it or the database is down.
    async fn flush(&mut self, batch: &mut Vec<Record>) {
        let down = self.retry_at.is_some_and(|t| Instant::now() < t);
        if down || self.backlog() {
            // Behind what waits in the spill file, to keep the order.
            self.spill(batch).await;
            return;
        }
        match self.write(batch).await {
            Ok(()) => {
                metrics::counter!("tenantgate_recorder_written_total").increment(batch.len() as u64);
                batch.clear();
            }
            Err(e) => {
                self.mark_down(&e);
                self.spill(batch).await;
            }
        }
    }

    async fn write(&self, records: &[Record]) -> Result<(), WriteError> {
        match tokio::time::timeout(self.config.write_timeout, write::insert(&self.db, records)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WriteError::Database(e)),
            Err(_) => Err(WriteError::Timeout(self.config.write_timeout)),
        }
    }

    async fn spill(&self, batch: &mut Vec<Record>) {
        let records = std::mem::take(batch);
        let spill = self.spill.clone();
        let n = records.len();
        let result = tokio::task::spawn_blocking(move || {
            let mut spill = lock(&spill);
            let r = spill.append(&records);
            (r, spill.backlog_bytes())
        })
        .await;
        match result {
            Ok((Ok(()), backlog)) => {
                metrics::counter!("tenantgate_recorder_spilled_total").increment(n as u64);
                metrics::gauge!("tenantgate_recorder_spill_backlog_bytes").set(backlog as f64);
            }
            Ok((Err(e), _)) => lost(n, &e),
            Err(e) => lost(n, &std::io::Error::other(e.to_string())),
        }
    }

    /// Replays one chunk of the spill file.
    async fn replay_chunk(&mut self) {
        let spill = self.spill.clone();
        let max = self.config.batch_max;
        let read = tokio::task::spawn_blocking(move || lock(&spill).read_batch(max)).await;
        let (records, end) = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reading the spill file failed");
                self.retry_later();
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the spill file failed");
                self.retry_later();
                return;
            }
        };
        if !records.is_empty()
            && let Err(e) = self.write(&records).await
        {
            self.mark_down(&e);
            return;
        }
        let spill = self.spill.clone();
        let advanced = tokio::task::spawn_blocking(move || {
            let mut spill = lock(&spill);
            spill.advance(end).map(|()| spill.backlog_bytes())
        })
        .await;
        match advanced {
            Ok(Ok(backlog)) => {
                metrics::counter!("tenantgate_recorder_replayed_total").increment(records.len() as u64);
                metrics::gauge!("tenantgate_recorder_spill_backlog_bytes").set(backlog as f64);
                self.mark_up(backlog);
            }
            // The records are in the database; replaying them again is harmless.
            Ok(Err(e)) => tracing::error!(error = %e, "recording the spill replay offset failed"),
            Err(e) => tracing::error!(error = %e, "recording the spill replay offset failed"),
        }
    }

    fn mark_down(&mut self, error: &WriteError) {
        metrics::counter!("tenantgate_recorder_write_errors_total").increment(1);
        if self.down_since.is_none() {
            tracing::warn!(%error, backend = self.db.backend(), "database write failed; spilling records to disk until it is back");
            self.down_since = Some(Instant::now());
        } else {
            tracing::debug!(%error, "database still failing");
        }
        self.retry_later();
    }

    fn retry_later(&mut self) {
        let wait = self.delays.next().unwrap_or(self.config.retry_max);
        self.retry_at = Some(Instant::now() + wait);
    }

    fn mark_up(&mut self, backlog: u64) {
        self.retry_at = None;
        self.delays = crate::backoff::Delays::new(self.config.retry_min, self.config.retry_max);
        if backlog == 0
            && let Some(since) = self.down_since.take()
        {
            tracing::info!(down_ms = since.elapsed().as_millis() as u64, "database back; spilled records replayed");
        }
    }
}

/// The usage row and audit event of one chat request, recorded exactly once:
/// when it is dropped, so error paths, finished streams and streams the
/// client cut all record (a panic too).
#[derive(Debug, Default)]
pub struct ChatRecord(Option<Box<Pending>>);

#[derive(Debug)]
struct Pending {
    recorder: Recorder,
    started: Instant,
    usage: UsageRow,
    policy: PolicyDecision,
    record_prompts: bool,
    stream: bool,
    completed: bool,
}

impl ChatRecord {
    /// Starts the record of a request by `identity` to `tenant`.
    pub fn start(
        recorder: &Recorder,
        tenant: &str,
        identity: &Identity,
        request_id: Option<String>,
        record_prompts: bool,
    ) -> Self {
        Self(Some(Box::new(Pending {
            recorder: recorder.clone(),
            started: Instant::now(),
            usage: UsageRow {
                id: new_id(),
                ts_ms: now_ms(),
                tenant: tenant.to_owned(),
                subject: identity.subject.clone(),
                model: String::new(),
                target: None,
                prompt_tokens: 0,
                completion_tokens: 0,
                latency_ms: 0,
                status: 500,
                reason: Some("Unfinished".into()),
                request_id,
            },
            policy: PolicyDecision::default(),
            record_prompts,
            stream: false,
            completed: false,
        })))
    }

    /// Moves the record out (into a stream), leaving one that records nothing.
    pub fn take(&mut self) -> Self {
        Self(self.0.take())
    }

    /// The tenant model asked for.
    pub fn model(&mut self, model: &str) {
        if let Some(p) = &mut self.0 {
            model.clone_into(&mut p.usage.model);
        }
    }

    /// The target that answered.
    pub fn target(&mut self, label: &str) {
        if let Some(p) = &mut self.0 {
            p.usage.target = Some(label.to_owned());
        }
    }

    /// Tokens the upstream reported.
    pub fn tokens(&mut self, prompt: u64, completion: u64) {
        if let Some(p) = &mut self.0 {
            p.usage.prompt_tokens = i64::try_from(prompt).unwrap_or(i64::MAX);
            p.usage.completion_tokens = i64::try_from(completion).unwrap_or(i64::MAX);
        }
    }

    /// The response status and, for errors, the reason.
    pub fn status(&mut self, status: u16, reason: Option<&str>) {
        if let Some(p) = &mut self.0 {
            p.usage.status = i32::from(status);
            p.usage.reason = reason.map(str::to_owned);
        }
    }

    /// The answer is a stream (status 200 sent): unless
    /// [`Self::stream_finished`] is called, the client closed it early.
    pub fn stream_started(&mut self) {
        if let Some(p) = &mut self.0 {
            p.stream = true;
            p.usage.status = 200;
            p.usage.reason = None;
        }
    }

    /// The stream ended; `reason` when it ended with an upstream error.
    pub fn stream_finished(&mut self, reason: Option<&str>) {
        if let Some(p) = &mut self.0 {
            p.completed = true;
            if let Some(reason) = reason {
                p.usage.reason = Some(reason.to_owned());
            }
        }
    }

    /// More guard findings (the output guards', known once the answer is through).
    pub fn findings(&mut self, mut findings: Vec<Value>) {
        if let Some(p) = &mut self.0
            && !findings.is_empty()
        {
            p.policy.findings.append(&mut findings);
        }
    }

    /// What the prompt policies decided.
    pub fn policy(&mut self, decision: PolicyDecision) {
        if let Some(p) = &mut self.0 {
            p.policy = decision;
        }
    }
}

impl Drop for ChatRecord {
    fn drop(&mut self) {
        let Some(p) = self.0.take() else { return };
        let Pending { recorder, started, mut usage, mut policy, record_prompts, stream, completed } = *p;
        usage.latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        if stream && !completed && usage.reason.is_none() {
            usage.reason = Some("ClientClosed".into());
        }
        if !record_prompts {
            policy.redacted_prompt = None;
        }
        recorder.record(Record::Chat(Box::new(ChatEntry { usage, audit_id: new_id(), policy, stream })));
    }
}

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// The database refused it or the connection failed.
    #[error("{0}")]
    Database(sqlx::Error),
    /// The database did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    use super::*;
    use crate::storage::on_db;
    use crate::storage::records::AuditKind;

    fn temp_dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tg-rec-{tag}-{}-{}", std::process::id(), fastrand::u64(..)))
    }

    fn fast(spill_dir: PathBuf) -> RecorderConfig {
        RecorderConfig {
            retry_min: Duration::from_millis(20),
            retry_max: Duration::from_millis(100),
            write_timeout: Duration::from_secs(2),
            ..RecorderConfig::new(spill_dir)
        }
    }

    fn usage(n: usize) -> Record {
        Record::Usage(UsageRow {
            id: new_id(),
            ts_ms: now_ms(),
            tenant: "t".into(),
            subject: format!("user-{}", n % 3),
            model: "m".into(),
            target: Some("p/m".into()),
            prompt_tokens: 2,
            completion_tokens: 3,
            latency_ms: 1,
            status: 200,
            reason: None,
            request_id: None,
        })
    }

    fn audit(n: usize) -> Record {
        let mut e = AuditEvent::new("t", "alice", AuditKind::Admin, "test");
        e.resource = Some(n.to_string());
        Record::Audit(e)
    }

    async fn count(db: &Db, table: &str) -> i64 {
        // One statement, so both counts read the same snapshot: two queries
        // raced the recorder's next commit and saw a row "written twice".
        let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(DISTINCT id), COUNT(*) FROM {table}"));
        let (distinct, total): (i64, i64) =
            on_db!(db, pool => sqlx::query_as(sql).fetch_one(pool).await.expect("count"));
        assert_eq!(distinct, total, "{table}: a record was written twice");
        total
    }

    /// The audit resources in sequence order.
    async fn audit_order(db: &Db) -> Vec<String> {
        on_db!(db, pool => sqlx::query_scalar("SELECT resource FROM audit_events ORDER BY seq")
            .fetch_all(pool)
            .await
            .expect("select"))
    }

    async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn writes_everything_through_a_tiny_queue_and_keeps_it_across_a_restart() {
        let dir = temp_dir("restart");
        let db = Db::sqlite(&dir.join("db/gateway.db")).await.expect("sqlite");
        let recorder = Recorder::start(db.clone(), RecorderConfig { queue_capacity: 4, ..fast(dir.join("spill")) })
            .expect("start");
        for n in 0..1000 {
            recorder.record(usage(n));
            recorder.record(audit(n));
        }
        recorder.close(Duration::from_secs(10)).await;
        assert!(!recorder.has_backlog(), "everything replayed before stopping");
        assert_eq!(count(&db, "usage").await, 1000);
        assert_eq!(count(&db, "audit_events").await, 1000);
        on_db!(&db, pool => pool.close().await);

        // A restart: the same file, migrations run again, the data is there.
        let db = Db::sqlite(&dir.join("db/gateway.db")).await.expect("reopen");
        assert_eq!(count(&db, "usage").await, 1000);
        assert_eq!(count(&db, "audit_events").await, 1000);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_trickle_of_records_is_written_once_per_flush_interval() {
        let dir = temp_dir("interval");
        let db = Db::sqlite(&dir.join("gateway.db")).await.expect("sqlite");
        let config = RecorderConfig { flush_interval: Duration::from_secs(2), ..fast(dir.join("spill")) };
        let recorder = Recorder::start(db.clone(), config).expect("start");
        // The first record of a quiet recorder is written at once.
        let started = Instant::now();
        recorder.record(usage(0));
        wait_for("the first record", async || count(&db, "usage").await == 1).await;
        // The next ones wait out the interval, then go together.
        for n in 1..10 {
            recorder.record(usage(n));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if started.elapsed() < Duration::from_millis(1500) {
            assert_eq!(count(&db, "usage").await, 1, "written before the flush interval was over");
        }
        wait_for("the rest, one interval later", async || count(&db, "usage").await == 10).await;
        recorder.close(Duration::from_secs(5)).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn audit_events_refuse_update_and_delete() {
        let dir = temp_dir("append-only");
        let db = Db::sqlite(&dir.join("gateway.db")).await.expect("sqlite");
        write::insert(&db, &[audit(1)]).await.expect("insert");
        let Db::Sqlite(pool) = &db else { unreachable!() };
        let update = sqlx::query("UPDATE audit_events SET actor = 'mallory'").execute(pool).await;
        let delete = sqlx::query("DELETE FROM audit_events").execute(pool).await;
        assert!(update.expect_err("update refused").to_string().contains("append-only"));
        assert!(delete.expect_err("delete refused").to_string().contains("append-only"));
        assert_eq!(count(&db, "audit_events").await, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn spills_while_the_database_fails_and_replays_in_order_once_it_is_fixed() {
        let dir = temp_dir("spill");
        // A database whose directory does not exist yet: every write fails.
        let path = dir.join("missing-dir/gateway.db");
        let options = SqliteConnectOptions::new().filename(&path).create_if_missing(true);
        let broken =
            Db::Sqlite(SqlitePoolOptions::new().acquire_timeout(Duration::from_millis(500)).connect_lazy_with(options));
        let recorder = Recorder::start(broken.clone(), fast(dir.join("spill"))).expect("start");
        for n in 0..300 {
            recorder.record(audit(n));
            recorder.record(usage(n));
            if n % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        wait_for("records to spill", async || recorder.has_backlog() && recorder.queue_depth() == 0).await;
        assert!(!Path::new(&path).exists());

        // Fix it: the directory and the schema appear; the recorder replays.
        let fixed = Db::sqlite(&path).await.expect("create the database");
        wait_for("the replay", async || !recorder.has_backlog()).await;
        for n in 300..400 {
            recorder.record(audit(n));
        }
        recorder.close(Duration::from_secs(10)).await;
        assert_eq!(count(&fixed, "usage").await, 300);
        assert_eq!(count(&fixed, "audit_events").await, 400);
        let expected: Vec<String> = (0..400).map(|n| n.to_string()).collect();
        assert_eq!(audit_order(&fixed).await, expected, "replayed in the order recorded");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_replay_cut_before_its_offset_was_saved_writes_nothing_twice() {
        let dir = temp_dir("replay-twice");
        let db = Db::sqlite(&dir.join("gateway.db")).await.expect("sqlite");
        let records: Vec<Record> = (0..50).map(audit).collect();
        // An earlier run spilled 50 records and wrote the first 20 before dying.
        Spill::open(&dir.join("spill")).expect("spill").append(&records).expect("append");
        write::insert(&db, &records[..20]).await.expect("insert");
        let recorder = Recorder::start(db.clone(), fast(dir.join("spill"))).expect("start");
        wait_for("the replay", async || !recorder.has_backlog()).await;
        recorder.close(Duration::from_secs(10)).await;
        assert_eq!(count(&db, "audit_events").await, 50);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_chat_record_is_written_once_when_dropped() {
        let dir = temp_dir("chat");
        let db = Db::sqlite(&dir.join("gateway.db")).await.expect("sqlite");
        let recorder = Recorder::start(db.clone(), fast(dir.join("spill"))).expect("start");
        let identity = Identity { subject: "bob".into(), roles: vec![], admin: false, expires_at: 0 };
        let mut outer = ChatRecord::start(&recorder, "t", &identity, Some("req-1".into()), false);
        outer.model("chat");
        outer.stream_started();
        let mut stream = outer.take();
        outer.status(500, Some("ignored: taken"));
        drop(outer);
        stream.tokens(7, 9);
        drop(stream); // cut before the end
        recorder.close(Duration::from_secs(10)).await;
        let Db::Sqlite(pool) = &db else { unreachable!() };
        let (status, reason, tokens): (i32, Option<String>, i64) =
            sqlx::query_as("SELECT status, reason, completion_tokens FROM usage").fetch_one(pool).await.expect("row");
        assert_eq!((status, reason.as_deref(), tokens), (200, Some("ClientClosed"), 9));
        assert_eq!(count(&db, "audit_events").await, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod throughput {
    use super::*;

    /// Prints the enqueue cost of a chat record and SQLite's batch write rate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn enqueue_cost_and_sqlite_write_rate() {
        let dir = std::env::temp_dir().join(format!("tg-rec-rate-{}-{}", std::process::id(), fastrand::u64(..)));
        let db = Db::sqlite(&dir.join("gateway.db")).await.expect("sqlite");
        let recorder = Recorder::start(db.clone(), RecorderConfig::new(dir.join("spill"))).expect("start");
        let identity = Identity { subject: "bob".into(), roles: vec![], admin: false, expires_at: 0 };
        const N: usize = 20_000;
        let started = Instant::now();
        for _ in 0..N {
            let mut r = ChatRecord::start(&recorder, "t", &identity, Some("req".into()), false);
            r.model("chat");
            r.target("p/m");
            r.tokens(10, 20);
            r.status(200, None);
        }
        let enqueue = started.elapsed();
        recorder.close(Duration::from_secs(60)).await;
        let total = started.elapsed();
        let n: i64 = {
            let Db::Sqlite(pool) = &db else { unreachable!() };
            sqlx::query_scalar("SELECT COUNT(*) FROM usage").fetch_one(pool).await.expect("count")
        };
        assert_eq!(n, N as i64);
        eprintln!(
            "{N} chat records: enqueue {:.2} µs each; all {} rows in SQLite after {total:?} ({:.0} records/s)",
            enqueue.as_secs_f64() * 1e6 / N as f64,
            2 * N,
            (2 * N) as f64 / total.as_secs_f64()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

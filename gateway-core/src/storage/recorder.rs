//! The recorder: usage rows and audit events go through a bounded queue to
//! one writer task that inserts them in batches. Requests only enqueue
//! (`try_send`, no await, no lock). When the database fails, batches go to the
//! spill file and are replayed in order once it answers again; when the queue
//! is full, the overflow is spilled too (and counted, and logged as an alarm).
//! Shutdown drains the queue and replays the spill file for a bounded time;
//! what is left stays in the spill file (see [`Recorder::close`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tenantgate_crds::pricing::{Amounts, Rates};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::Db;
use super::adopt::{Adopter, others};
use super::records::{Api, AuditEvent, ChatEntry, PolicyDecision, Record, UsageRow, new_id, now_ms};
use super::spill::Spill;
use super::write;
use crate::auth::Identity;
use crate::llm::types::Usage;
use crate::traces::RequestSpan;

/// Where the spill file lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpillPlace {
    /// This directory, for this process alone.
    Dir(PathBuf),
    /// A directory of this process's own under `root` (`root/<name>.<unique
    /// id>`), on a volume other gateways share: the directories under `root`
    /// that no running gateway holds are adopted (replayed, then removed).
    Shared {
        /// The directory the gateways share.
        root: PathBuf,
        /// This process's name there (its pod's name).
        name: String,
    },
}

/// Recorder settings.
#[derive(Clone, Debug)]
pub struct RecorderConfig {
    /// Where the spill file lives.
    pub spill: SpillPlace,
    /// Whether the spill outlives the pod (a local directory, a
    /// PersistentVolumeClaim). When it does not (an emptyDir), records left
    /// in it when the recorder closes are counted lost.
    pub spill_durable: bool,
    /// How often a shared spill root is searched for directories to adopt.
    pub adopt_interval: Duration,
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
    /// Defaults, spilling into `spill_dir` (durable).
    pub fn new(spill_dir: PathBuf) -> Self {
        Self::at(SpillPlace::Dir(spill_dir))
    }

    /// Defaults, spilling at `spill` (durable).
    pub fn at(spill: SpillPlace) -> Self {
        Self {
            spill,
            spill_durable: true,
            adopt_interval: Duration::from_secs(30),
            queue_capacity: 65_536,
            batch_max: 1000,
            flush_interval: Duration::from_millis(50),
            write_timeout: Duration::from_secs(5),
            retry_min: Duration::from_millis(250),
            retry_max: Duration::from_secs(2),
        }
    }
}

/// What [`Recorder::close`] left in the spill.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leftover {
    /// Records the database had not taken.
    pub records: u64,
    /// Whether they outlive the pod; when not, they were counted lost.
    pub durable: bool,
}

impl Leftover {
    /// One line for the pod's termination message, when records are left.
    pub fn summary(&self) -> Option<String> {
        (self.records > 0).then(|| match self.durable {
            true => format!(
                "{} usage/audit records left in the spill file: the next start, or a gateway sharing its volume, \
                 replays them",
                self.records
            ),
            false => format!(
                "{} usage/audit records lost: left in a spill directory that is not durable \
                 (tenantgate_recorder_lost_total{{reason=\"spill_ephemeral\"}})",
                self.records
            ),
        })
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
    spill_place: SpillPlace,
    spill_durable: bool,
    /// Set (under the spill's lock) once `close` has counted what is left:
    /// records spilled later on a spill that is not durable are lost at once.
    closed: AtomicBool,
    stop_overflow: watch::Sender<bool>,
    /// The drain deadline, once `close` is called.
    stop: watch::Sender<Option<Instant>>,
    tasks: Mutex<Option<Tasks>>,
    last_alarm_ms: AtomicI64,
}

#[derive(Debug)]
struct Tasks {
    overflow: JoinHandle<()>,
    writer: JoinHandle<()>,
    adopter: Option<JoinHandle<()>>,
}

/// Past its deadline, `close` waits this much longer for what is still
/// queued to be spilled (a disk that hangs).
const CLOSE_MARGIN: Duration = Duration::from_secs(5);

fn lock(spill: &Mutex<Spill>) -> MutexGuard<'_, Spill> {
    spill.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Recorder {
    /// Opens the spill file and starts the writer. Records spilled by an
    /// earlier run are replayed first; on a shared spill root, the
    /// directories of gateways that are gone are adopted, at once and every
    /// `adopt_interval`.
    pub fn start(db: Db, config: RecorderConfig) -> std::io::Result<Self> {
        let spill = match &config.spill {
            SpillPlace::Dir(dir) => Spill::open(dir)?,
            SpillPlace::Shared { root, name } => Spill::create_in(root, name)?,
        };
        if spill.has_backlog() {
            tracing::warn!(path = %spill.path().display(), bytes = spill.backlog_bytes(), "replaying records spilled by an earlier run");
        }
        let own_dir = spill.dir().to_path_buf();
        let spill = Arc::new(Mutex::new(spill));
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (overflow, overflow_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(None);
        let (stop_overflow, stop_overflow_rx) = watch::channel(false);
        let adopter = match &config.spill {
            SpillPlace::Dir(_) => None,
            SpillPlace::Shared { root, .. } => {
                let adopter = Adopter {
                    db: db.clone(),
                    root: root.clone(),
                    own: own_dir,
                    batch_max: config.batch_max,
                    write_timeout: config.write_timeout,
                    interval: config.adopt_interval,
                };
                Some(tokio::spawn(adopter.run(stop_rx.clone())))
            }
        };
        let (spill_place, spill_durable) = (config.spill.clone(), config.spill_durable);
        let delays = crate::backoff::Delays::new(config.retry_min, config.retry_max);
        let writer = Writer { db, spill: spill.clone(), config, retry_at: None, delays, down_since: None, capacity: 0 };
        let tasks = Tasks {
            overflow: tokio::spawn(spill_overflow(spill.clone(), overflow_rx, stop_overflow_rx)),
            writer: tokio::spawn(writer.run(rx, stop_rx)),
            adopter,
        };
        Ok(Self(Arc::new(Shared {
            tx,
            overflow,
            spill,
            spill_place,
            spill_durable,
            closed: AtomicBool::new(false),
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
            Ok(()) => {
                metrics::counter!("tenantgate_recorder_spilled_total").increment(records.len() as u64);
                if !self.0.spill_durable && self.0.closed.load(Ordering::Acquire) {
                    lost_with_the_pod(records.len() as u64);
                }
            }
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

    /// Writes the queue into the database and replays the spill file until
    /// `budget` is spent, then stops the writer: what the database has not
    /// taken by then stays in the spill file (the queue left at the deadline
    /// is spilled, not dropped), and records made afterwards go straight
    /// there. Returns what is left; on a spill that is not durable that is
    /// counted in `tenantgate_recorder_lost_total{reason="spill_ephemeral"}`
    /// (with the directories of gone gateways it could not replay).
    pub async fn close(&self, budget: Duration) -> Leftover {
        let Some(tasks) = self.0.tasks.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            return Leftover { records: 0, durable: self.0.spill_durable };
        };
        let deadline = Instant::now() + budget;
        let drain = async {
            // Overflow first, so the writer's last replay includes it.
            let _ = self.0.stop_overflow.send(true);
            let _ = tasks.overflow.await;
            let _ = self.0.stop.send(Some(deadline));
            let _ = tasks.writer.await;
            if let Some(adopter) = tasks.adopter {
                let _ = adopter.await;
            }
        };
        if tokio::time::timeout(budget + CLOSE_MARGIN, drain).await.is_err() {
            tracing::error!(queued = self.queue_depth(), "the recorder did not drain in time");
        }
        let shared = self.0.clone();
        let records = tokio::task::spawn_blocking(move || shared.count_leftover()).await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "counting the records left in the spill failed");
            0
        });
        let leftover = Leftover { records, durable: self.0.spill_durable };
        if records > 0 && leftover.durable {
            tracing::warn!(
                records,
                path = %lock(&self.0.spill).path().display(),
                "stopping with records in the spill file: the next start, or a gateway sharing its volume, replays them"
            );
        } else if records > 0 {
            lost_with_the_pod(records);
        }
        leftover
    }
}

impl Shared {
    /// Records left in the spill file and, on a spill that is not durable
    /// and shared, in the directories of gone gateways; marks the recorder
    /// closed under the spill's lock, so a record spilled meanwhile is
    /// counted here or by `spill_now`, once.
    fn count_leftover(&self) -> u64 {
        let spill = lock(&self.spill);
        self.closed.store(true, Ordering::Release);
        let mut left = backlog_records(&spill);
        if let (false, SpillPlace::Shared { root, .. }) = (self.spill_durable, &self.spill_place) {
            for dir in others(root, spill.dir()).unwrap_or_default() {
                if let Ok(Some(orphan)) = Spill::adopt(&dir) {
                    left += backlog_records(&orphan);
                }
            }
        }
        left
    }
}

fn backlog_records(spill: &Spill) -> u64 {
    spill.backlog_records().unwrap_or_else(|error| {
        tracing::error!(path = %spill.path().display(), %error, "counting the records left in a spill file failed");
        0
    })
}

fn lost(n: usize, error: &std::io::Error) {
    metrics::counter!("tenantgate_recorder_lost_total", "reason" => "spill_failed").increment(n as u64);
    tracing::error!(records = n, %error, "ALARM: records could not be written to the database nor the spill file");
}

/// Records left in a spill directory that does not outlive the pod.
fn lost_with_the_pod(n: u64) {
    metrics::counter!("tenantgate_recorder_lost_total", "reason" => "spill_ephemeral").increment(n);
    tracing::error!(
        records = n,
        reason = "spill_ephemeral",
        "ALARM: records the database did not take stay in a spill directory that is not durable: they are lost with the pod"
    );
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
    async fn run(mut self, mut rx: mpsc::Receiver<Record>, mut stop: watch::Receiver<Option<Instant>>) {
        self.capacity = rx.max_capacity();
        let mut batch = Vec::with_capacity(self.config.batch_max);
        let mut next_write = tokio::time::Instant::now();
        let deadline = loop {
            let backlog = self.backlog();
            let replay_due = backlog && self.retry_at.is_none_or(|t| Instant::now() >= t);
            let retry_at = self.retry_at.map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                deadline = stop.wait_for(Option::is_some) => {
                    break deadline.map_or_else(|_| Instant::now(), |d| d.unwrap_or_else(Instant::now));
                }
                n = async {
                    tokio::time::sleep_until(next_write).await;
                    rx.recv_many(&mut batch, self.config.batch_max).await
                } => {
                    if n == 0 {
                        // Dropped without `close`: no time to drain.
                        break Instant::now();
                    }
                }
                () = async { if let Some(t) = retry_at { tokio::time::sleep_until(t).await } },
                    if backlog && !replay_due => {}
                () = std::future::ready(()), if replay_due => {}
            }
            metrics::gauge!("tenantgate_recorder_queue_depth").set(rx.len() as f64);
            if !batch.is_empty() {
                next_write = tokio::time::Instant::now() + self.config.flush_interval;
                self.flush(&mut batch, self.config.write_timeout).await;
            }
            if self.backlog() && self.retry_at.is_none_or(|t| Instant::now() >= t) {
                self.replay_chunk(self.config.write_timeout).await;
            }
        };
        self.drain(rx, batch, deadline).await;
    }

    /// Writes what is queued, then replays the spill file, until `deadline`;
    /// past it, what is still queued is spilled rather than written.
    async fn drain(&mut self, mut rx: mpsc::Receiver<Record>, mut batch: Vec<Record>, deadline: Instant) {
        // Later sends fail and spill directly; what is queued is still received.
        rx.close();
        loop {
            while batch.len() < self.config.batch_max {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            match time_left(deadline) {
                Some(left) => self.flush(&mut batch, left.min(self.config.write_timeout)).await,
                None => self.spill(&mut batch).await,
            }
        }
        metrics::gauge!("tenantgate_recorder_queue_depth").set(0.0);
        // Replay while the database takes it, trying again after failures, up to the deadline.
        while self.backlog()
            && let Some(left) = time_left(deadline)
        {
            match self.retry_at {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t.min(deadline).into()).await,
                _ => self.replay_chunk(left.min(self.config.write_timeout)).await,
            }
        }
        let left = lock(&self.spill).backlog_bytes();
        metrics::gauge!("tenantgate_recorder_spill_backlog_bytes").set(left as f64);
        tracing::info!(backlog_bytes = left, "recorder drained");
    }

    fn backlog(&self) -> bool {
        lock(&self.spill).has_backlog()
    }

    /// Writes a batch (waiting at most `timeout`), or spills it when records
    /// wait before it or the database is down.
    async fn flush(&mut self, batch: &mut Vec<Record>, timeout: Duration) {
        let down = self.retry_at.is_some_and(|t| Instant::now() < t);
        if down || self.backlog() {
            // Behind what waits in the spill file, to keep the order.
            self.spill(batch).await;
            return;
        }
        match write_within(&self.db, batch, timeout).await {
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

    /// Replays one chunk of the spill file, waiting at most `timeout` for the database.
    async fn replay_chunk(&mut self, timeout: Duration) {
        match replay_chunk(&self.db, &self.spill, self.config.batch_max, timeout).await {
            Ok(replayed) => {
                metrics::gauge!("tenantgate_recorder_spill_backlog_bytes").set(replayed.backlog as f64);
                self.mark_up(replayed.backlog);
            }
            Err(ReplayError::Write(e)) => self.mark_down(&e),
            Err(e @ ReplayError::Read(_)) => {
                tracing::error!(error = %e, "replaying the spill file failed");
                self.retry_later();
            }
            // The records are in the database; replaying them again is harmless.
            Err(e @ ReplayError::Offset(_)) => tracing::error!(error = %e, "replaying the spill file failed"),
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

/// Time before `deadline`, if any is left.
fn time_left(deadline: Instant) -> Option<Duration> {
    deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
}

/// Writes a batch, waiting at most `timeout`.
async fn write_within(db: &Db, records: &[Record], timeout: Duration) -> Result<(), WriteError> {
    match tokio::time::timeout(timeout, write::insert(db, records)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WriteError::Database(e)),
        Err(_) => Err(WriteError::Timeout(timeout)),
    }
}

/// A chunk of a spill file written to the database.
#[derive(Debug)]
pub(super) struct Replayed {
    /// Records written.
    pub records: usize,
    /// Bytes still waiting in the file.
    pub backlog: u64,
}

/// Writes the next chunk (up to `max` records) of `spill` to the database,
/// waiting at most `timeout`, and marks it replayed.
pub(super) async fn replay_chunk(
    db: &Db,
    spill: &Arc<Mutex<Spill>>,
    max: usize,
    timeout: Duration,
) -> Result<Replayed, ReplayError> {
    let reading = spill.clone();
    let (records, end) = tokio::task::spawn_blocking(move || lock(&reading).read_batch(max))
        .await
        .map_err(|e| ReplayError::Read(std::io::Error::other(e)))?
        .map_err(ReplayError::Read)?;
    if !records.is_empty() {
        write_within(db, &records, timeout).await.map_err(ReplayError::Write)?;
    }
    let advancing = spill.clone();
    let backlog = tokio::task::spawn_blocking(move || {
        let mut spill = lock(&advancing);
        spill.advance(end).map(|()| spill.backlog_bytes())
    })
    .await
    .map_err(|e| ReplayError::Offset(std::io::Error::other(e)))?
    .map_err(ReplayError::Offset)?;
    metrics::counter!("tenantgate_recorder_replayed_total").increment(records.len() as u64);
    Ok(Replayed { records: records.len(), backlog })
}

/// Why a chunk of a spill file was not replayed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReplayError {
    /// The file could not be read.
    #[error("reading the spill file failed: {0}")]
    Read(std::io::Error),
    /// The database did not take the records.
    #[error("{0}")]
    Write(WriteError),
    /// The records are in the database, but the replay point was not saved.
    #[error("recording the spill replay offset failed: {0}")]
    Offset(std::io::Error),
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
    /// The price of the target that answered, when it has one.
    price: Option<Price>,
    policy: PolicyDecision,
    record_prompts: bool,
    stream: bool,
    completed: bool,
    api: Api,
    /// The request's span, when it is traced: it ends when this record is written.
    span: Option<RequestSpan>,
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
                cached_tokens: 0,
                cost_nanos: None,
                price_version: None,
                latency_ms: 0,
                status: 500,
                reason: Some("Unfinished".into()),
                request_id,
                api_key: identity.api_key.clone(),
                team: identity.team.clone(),
            },
            price: None,
            policy: PolicyDecision::default(),
            record_prompts,
            stream: false,
            completed: false,
            api: Api::ChatCompletions,
            span: RequestSpan::current(),
        })))
    }

    /// The client API the request came in on (chat completions unless set).
    pub fn api(&mut self, api: Api) {
        if let Some(p) = &mut self.0 {
            p.api = api;
        }
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

    /// The target that answered (`provider/model`) and its price: the record is priced
    /// with it when it is written (the per-request amount, and the tokens reported by then).
    pub fn target(&mut self, label: &str, price: Option<&Price>) {
        if let Some(p) = &mut self.0 {
            p.usage.target = Some(label.to_owned());
            p.price = price.cloned();
        }
    }

    /// Tokens the upstream reported (priced at the target's price when the record is written).
    pub fn tokens(&mut self, usage: &Usage) {
        if let Some(p) = &mut self.0 {
            let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            p.usage.prompt_tokens = int(usage.prompt_tokens);
            p.usage.completion_tokens = int(usage.completion_tokens);
            p.usage.cached_tokens = int(usage.cached_tokens());
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

/// The price of a target, as the request path applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Price {
    /// Nano-units per token and per request.
    pub rates: Rates,
    /// The version of the price (recorded with each cost).
    pub version: Arc<str>,
}

impl Price {
    /// The price of `amounts`, of version `version`.
    pub fn new(amounts: &Amounts, version: &str) -> Self {
        Self { rates: amounts.rates(), version: version.into() }
    }

    /// Prices `usage` as recorded (without reported tokens: the per-request amount alone).
    fn charge(&self, usage: &mut UsageRow) {
        let uint = |n: i64| u64::try_from(n).unwrap_or(0);
        let cost =
            self.rates.cost_nanos(uint(usage.prompt_tokens), uint(usage.cached_tokens), uint(usage.completion_tokens));
        usage.cost_nanos = Some(cost);
        usage.price_version = Some(self.version.to_string());
    }
}

impl Drop for ChatRecord {
    fn drop(&mut self) {
        let Some(p) = self.0.take() else { return };
        let Pending { recorder, started, mut usage, price, mut policy, record_prompts, stream, completed, api, span } =
            *p;
        if let Some(price) = price {
            price.charge(&mut usage);
        }
        if let Some(span) = span {
            trace(&span, &usage, api, stream && !completed && usage.reason.is_none());
        }
        if let Some(cost) = usage.cost_nanos.filter(|c| *c > 0) {
            metrics::counter!("tenantgate_cost_nanounits_total", "model" => usage.model.clone())
                .increment(u64::try_from(cost).unwrap_or(0));
        }
        usage.latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        if stream && !completed && usage.reason.is_none() {
            usage.reason = Some("ClientClosed".into());
        }
        if !record_prompts {
            policy.redacted_prompt = None;
        }
        recorder.record(Record::Chat(Box::new(ChatEntry { usage, audit_id: new_id(), policy, stream, api })));
    }
}

/// Puts what the record says on the request's span (GenAI conventions; the
/// cost in the currency's units as `tenantgate.cost`): the span ends once its
/// last holder, this record or the request, lets it go.
fn trace(span: &RequestSpan, usage: &UsageRow, api: Api, client_closed: bool) {
    use opentelemetry::KeyValue;
    let operation = if api == Api::Embeddings { "embeddings" } else { "chat" };
    if !usage.model.is_empty() {
        span.rename(format!("{operation} {}", usage.model));
    }
    let mut attributes = vec![
        KeyValue::new("gen_ai.operation.name", operation),
        KeyValue::new("gen_ai.request.model", usage.model.clone()),
        KeyValue::new("gen_ai.usage.input_tokens", usage.prompt_tokens),
        KeyValue::new("gen_ai.usage.output_tokens", usage.completion_tokens),
        KeyValue::new("tenantgate.api", api.action()),
    ];
    if usage.cached_tokens > 0 {
        attributes.push(KeyValue::new("gen_ai.usage.cache_read.input_tokens", usage.cached_tokens));
    }
    if let Some(nanos) = usage.cost_nanos {
        // A span attribute is for dashboards: a double is exact to well below a nano-unit
        // up to millions of units; the usage row keeps the exact amount.
        attributes.push(KeyValue::new("tenantgate.cost", nanos as f64 / 1e9));
        attributes.push(KeyValue::new("tenantgate.cost_nanos", nanos));
    }
    if let Some(version) = &usage.price_version {
        attributes.push(KeyValue::new("tenantgate.price_version", version.clone()));
    }
    if let Some(id) = &usage.request_id {
        attributes.push(KeyValue::new("tenantgate.request_id", id.clone()));
    }
    span.set(attributes);
    match &usage.reason {
        Some(reason) => span.failed(reason),
        None if client_closed => span.failed("ClientClosed"),
        None => {}
    }
}

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    /// The database refused it or the connection failed.
    #[error("{0}")]
    Database(sqlx::Error),
    /// The database did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

#[cfg(test)]
mod tests {
    use std::io::Write;
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
            cached_tokens: 0,
            cost_nanos: None,
            price_version: None,
            latency_ms: 1,
            status: 200,
            reason: None,
            request_id: None,
            api_key: None,
            team: None,
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

    /// A database that cannot be written: its directory does not exist.
    fn broken_db(dir: &Path) -> Db {
        let options = SqliteConnectOptions::new().filename(dir.join("missing-dir/gateway.db")).create_if_missing(true);
        Db::Sqlite(SqlitePoolOptions::new().acquire_timeout(Duration::from_millis(500)).connect_lazy_with(options))
    }

    #[tokio::test]
    async fn gateways_sharing_a_spill_root_adopt_the_spill_of_one_that_is_gone() {
        let dir = temp_dir("adopt");
        let root = dir.join("spill");
        let db = Db::sqlite(&dir.join("gateway.db")).await.expect("sqlite");
        // A running gateway's spill, and one left by a gateway that is gone,
        // with a line that does not parse among its 50 records.
        let mut live = Spill::create_in(&root, "live").expect("live");
        live.append(&[audit(1000)]).expect("append");
        let mut gone = Spill::create_in(&root, "gone").expect("gone");
        let records: Vec<Record> = (0..50).map(audit).collect();
        gone.append(&records[..25]).expect("append");
        std::fs::OpenOptions::new()
            .append(true)
            .open(gone.path())
            .and_then(|mut f| f.write_all(b"{\"not\": \"a record\"}\n"))
            .expect("corrupt line");
        gone.append(&records[25..]).expect("append");
        let gone_dir = gone.dir().to_path_buf();
        drop(gone);
        // The database refuses the record "25": the replay stops in the middle.
        let Db::Sqlite(pool) = &db else { unreachable!() };
        sqlx::query(
            "CREATE TRIGGER refuse_25 BEFORE INSERT ON audit_events WHEN NEW.resource = '25' \
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(pool)
        .await
        .expect("trigger");
        let config =
            RecorderConfig { batch_max: 10, adopt_interval: Duration::from_millis(100), ..fast(PathBuf::new()) };
        let config = RecorderConfig { spill: SpillPlace::Shared { root: root.clone(), name: "me".into() }, ..config };
        let recorder = Recorder::start(db.clone(), config).expect("start");
        wait_for("the chunks before the refused one", async || count(&db, "audit_events").await == 20).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(count(&db, "audit_events").await, 20, "nothing after the refused chunk");
        let left = Spill::adopt(&gone_dir).ok().flatten();
        if let Some(left) = left {
            assert_eq!(left.backlog_records().expect("count"), 31, "the rest stays, the corrupt line with it");
        }
        sqlx::query("DROP TRIGGER refuse_25").execute(pool).await.expect("drop trigger");
        wait_for("the adoption", async || !gone_dir.exists()).await;
        let expected: Vec<String> = (0..50).map(|n| n.to_string()).collect();
        assert_eq!(audit_order(&db).await, expected, "replayed once each, in the order spilled");
        assert!(live.has_backlog() && live.dir().exists(), "a running gateway's spill is left alone");
        recorder.close(Duration::from_secs(5)).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_drain_is_bounded_and_what_an_ephemeral_spill_keeps_is_counted_lost() {
        let dir = temp_dir("drain");
        let config = RecorderConfig { spill_durable: false, ..fast(dir.join("spill")) };
        let recorder = Recorder::start(broken_db(&dir), config).expect("start");
        for n in 0..40 {
            recorder.record(audit(n));
        }
        let started = Instant::now();
        let leftover = recorder.close(Duration::from_millis(800)).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(4), "the drain took {took:?}");
        assert_eq!(leftover, Leftover { records: 40, durable: false }, "every record is in the spill, none written");
        let summary = leftover.summary().expect("a summary");
        assert!(summary.starts_with("40 usage/audit records lost"), "{summary}");
        // Recorded after the close: spilled, and lost with the pod too.
        recorder.record(audit(40));
        let spill = Spill::open(&dir.join("spill"));
        assert!(spill.is_err(), "the recorder still holds its spill");
        drop(recorder);
        let spill = Spill::open(&dir.join("spill")).expect("reopen");
        assert_eq!(spill.backlog_records().expect("count"), 41);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_drain_replays_the_spill_when_the_database_answers_within_it() {
        let dir = temp_dir("drain-ok");
        let db = Db::sqlite(&dir.join("gateway.db")).await.expect("sqlite");
        let records: Vec<Record> = (0..30).map(audit).collect();
        Spill::open(&dir.join("spill")).expect("spill").append(&records).expect("append");
        let config = RecorderConfig { spill_durable: false, ..fast(dir.join("spill")) };
        let recorder = Recorder::start(db.clone(), config).expect("start");
        let leftover = recorder.close(Duration::from_secs(10)).await;
        assert_eq!(leftover, Leftover { records: 0, durable: false });
        assert_eq!(leftover.summary(), None);
        assert_eq!(count(&db, "audit_events").await, 30);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_chat_record_is_written_once_when_dropped() {
        let dir = temp_dir("chat");
        let db = Db::sqlite(&dir.join("gateway.db")).await.expect("sqlite");
        let recorder = Recorder::start(db.clone(), fast(dir.join("spill"))).expect("start");
        let identity = crate::policy::tests::who("bob", &[]);
        let mut outer = ChatRecord::start(&recorder, "t", &identity, Some("req-1".into()), false);
        outer.model("chat");
        let amounts = Amounts::parse(&tenantgate_crds::v1alpha1::Price {
            input_per_million: "2".into(),
            output_per_million: Some("8".into()),
            cached_input_per_million: Some("0.5".into()),
            per_request: Some("0.001".into()),
        })
        .expect("price");
        let price = Price::new(&amounts, "v1");
        outer.target("p/m", Some(&price));
        outer.stream_started();
        let mut stream = outer.take();
        outer.status(500, Some("ignored: taken"));
        drop(outer);
        stream.tokens(&Usage::new(7, 9).with_cached(3));
        drop(stream); // cut before the end
        // No target answered: no cost, no price version.
        drop(ChatRecord::start(&recorder, "t", &identity, Some("req-2".into()), false));
        recorder.close(Duration::from_secs(10)).await;
        let Db::Sqlite(pool) = &db else { unreachable!() };
        let (status, reason, tokens): (i32, Option<String>, i64) =
            sqlx::query_as("SELECT status, reason, completion_tokens FROM usage WHERE request_id = 'req-1'")
                .fetch_one(pool)
                .await
                .expect("row");
        assert_eq!((status, reason.as_deref(), tokens), (200, Some("ClientClosed"), 9));
        // 4 x 2 + 3 x 0.5 + 9 x 8 = 81.5 per million (81,500 nano-units), plus 0.001 a request.
        type Cost = (Option<String>, i64, Option<i64>, Option<String>);
        let costs: Vec<Cost> = sqlx::query_as(
            "SELECT request_id, cached_tokens, cost_nanos, price_version FROM usage ORDER BY request_id",
        )
        .fetch_all(pool)
        .await
        .expect("rows");
        assert_eq!(
            costs,
            [(Some("req-1".into()), 3, Some(1_081_500), Some("v1".into())), (Some("req-2".into()), 0, None, None)]
        );
        assert_eq!(count(&db, "audit_events").await, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod throughput {
    use super::*;

    /// Prints the enqueue cost of a chat record (unpriced and priced, alternating
    /// blocks, so both see the same machine) and SQLite's batch write rate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn enqueue_cost_and_sqlite_write_rate() {
        let dir = std::env::temp_dir().join(format!("tg-rec-rate-{}-{}", std::process::id(), fastrand::u64(..)));
        let db = Db::sqlite(&dir.join("gateway.db")).await.expect("sqlite");
        let recorder = Recorder::start(db.clone(), RecorderConfig::new(dir.join("spill"))).expect("start");
        let identity = crate::policy::tests::who("bob", &[]);
        let amounts = Amounts::parse(&tenantgate_crds::v1alpha1::Price {
            input_per_million: "2.5".into(),
            output_per_million: Some("10".into()),
            cached_input_per_million: Some("1.25".into()),
            per_request: None,
        })
        .expect("price");
        let price = Price::new(&amounts, "v");
        const N: usize = 20_000;
        const BLOCK: usize = 1_000;
        let started = Instant::now();
        let mut spent = [Duration::ZERO; 2];
        for block in 0..N / BLOCK {
            let priced = block % 2 == 1;
            let t = Instant::now();
            for _ in 0..BLOCK {
                let mut r = ChatRecord::start(&recorder, "t", &identity, Some("req".into()), false);
                r.model("chat");
                r.target("p/m", priced.then_some(&price));
                r.tokens(&Usage::new(1_000, 200).with_cached(400));
                r.status(200, None);
            }
            spent[usize::from(priced)] += t.elapsed();
        }
        let enqueue = started.elapsed();
        let each = |d: Duration| d.as_secs_f64() * 1e6 / (N / 2) as f64;
        eprintln!(
            "chat record enqueue: unpriced {:.2} µs, priced {:.2} µs (cost computed and counted)",
            each(spent[0]),
            each(spent[1])
        );
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

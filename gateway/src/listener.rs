//! The TCP listener with a cap on open connections, so that an overload
//! cannot grow the gateway without bound. Past the cap, a connection is still
//! accepted while there is room for it among the *shed* connections (a
//! quarter of the cap): each of its requests gets an immediate 503 with
//! `Retry-After` and the connection is closed, so a client hears at once
//! instead of waiting in the kernel's accept queue, whose overflow drops
//! SYNs that clients retry only after 1, 3, 7 s. Past both, connections wait
//! in the accept queue.
//!
//! Idle keep-alive connections do not keep new clients out: when every slot
//! is taken, the connection idle the longest (no request or response body in
//! progress for [`EVICT_AFTER_IDLE`]) is asked to close gracefully, and the
//! new connection takes its slot.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// A connection with nothing in progress for this long may be closed to make
/// room for a new one when every slot is taken.
pub const EVICT_AFTER_IDLE: Duration = Duration::from_millis(250);

/// How long a new connection waits for the slot of an idle connection asked
/// to close (an idle HTTP/1.1 connection closes at once; one whose client
/// sent a request just then finishes that request first).
const EVICT_WAIT: Duration = Duration::from_millis(500);

/// One served connection: its requests in progress and how to ask it to close.
#[derive(Debug)]
pub struct Activity {
    id: u64,
    /// Requests whose response is not finished (body included).
    active: AtomicUsize,
    /// Milliseconds since the registry's start when the last request ended.
    idle_since_ms: AtomicU64,
    /// Notified to make the connection close gracefully.
    close: Notify,
    registry: Arc<Registry>,
}

impl Activity {
    /// A request starts; the guard ends it when dropped (after its response body).
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    /// Resolves when the listener asks this connection to close.
    pub async fn evicted(&self) {
        self.close.notified().await;
    }
}

/// A request in progress on a connection.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since_ms.store(a.registry.now_ms(), Ordering::Release);
        a.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The served connections.
#[derive(Debug)]
struct Registry {
    started: Instant,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn open(self: &Arc<Self>) -> Arc<Activity> {
        let activity = Arc::new(Activity {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            close: Notify::new(),
            registry: self.clone(),
        });
        self.lock().insert(activity.id, activity.clone());
        activity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks the connection idle the longest (at least [`EVICT_AFTER_IDLE`]) to
    /// close; whether there was one.
    fn evict_idle(&self) -> bool {
        let now = self.now_ms();
        let limit = EVICT_AFTER_IDLE.as_millis() as u64;
        let open = self.lock();
        let oldest = open
            .values()
            .filter(|a| a.active.load(Ordering::Acquire) == 0)
            .map(|a| (a.idle_since_ms.load(Ordering::Acquire), a))
            .filter(|(since, _)| now.saturating_sub(*since) >= limit)
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, a)) => {
                // Taken out now, so it is not picked twice while it closes.
                let a = a.clone();
                drop(open);
                self.lock().remove(&a.id);
                a.close.notify_one();
                metrics::counter!("tenantgate_connections_evicted_total").increment(1);
                true
            }
            None => false,
        }
    }
}

/// Accepts at most `max` connections to serve at once, and `max / 4` more to shed.
#[derive(Debug)]
pub struct CappedListener {
    inner: TcpListener,
    max: usize,
    slots: Arc<Semaphore>,
    shed_slots: Option<Arc<Semaphore>>,
    registry: Arc<Registry>,
}

/// An accepted connection holding its slot until it closes.
#[derive(Debug)]
pub struct CappedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    shed: Option<usize>,
    activity: Option<Arc<Activity>>,
}

impl CappedStream {
    /// For a connection accepted past the cap: the cap, which its requests are refused for.
    pub fn shed(&self) -> Option<usize> {
        self.shed
    }

    /// A served connection's activity (its requests mark it busy; the listener may ask it to close).
    pub fn activity(&self) -> Option<Arc<Activity>> {
        self.activity.clone()
    }
}

impl Drop for CappedStream {
    fn drop(&mut self) {
        if let Some(a) = &self.activity {
            a.registry.lock().remove(&a.id);
        }
    }
}

impl CappedListener {
    /// Wraps `inner`; past `max` connections, connections wait in the accept queue.
    pub fn new(inner: TcpListener, max: usize) -> Self {
        let registry = Arc::new(Registry { started: Instant::now(), next: AtomicU64::new(0), open: Mutex::default() });
        Self { inner, max: max.max(1), slots: Arc::new(Semaphore::new(max.max(1))), shed_slots: None, registry }
    }

    /// Past `max`, up to `max / 4` more connections (at least one) are accepted to be shed.
    pub fn shedding(mut self) -> Self {
        self.shed_slots = Some(Arc::new(Semaphore::new((self.max / 4).max(1))));
        self
    }

    /// For a connection that arrived while every slot was taken: a slot to
    /// serve it, freed now or by closing the connection idle the longest.
    async fn reclaim(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Some(slot);
        }
        if !self.registry.evict_idle() {
            return None;
        }
        tokio::time::timeout(EVICT_WAIT, acquire(&self.slots)).await.ok()
    }

    /// A slot to serve, else one to shed, else the first of either to come free.
    async fn slot(&self) -> (OwnedSemaphorePermit, Option<usize>) {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return (slot, None);
        }
        let Some(shed_slots) = &self.shed_slots else {
            return (acquire(&self.slots).await, None);
        };
        if let Ok(slot) = shed_slots.clone().try_acquire_owned() {
            return (slot, Some(self.max));
        }
        tokio::select! {
            biased;
            slot = acquire(&self.slots) => (slot, None),
            slot = acquire(shed_slots) => (slot, Some(self.max)),
        }
    }
}

/// A permit of `semaphore`, which is never closed, so acquiring only waits.
async fn acquire(semaphore: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    loop {
        if let Ok(slot) = semaphore.clone().acquire_owned().await {
            return slot;
        }
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (mut slot, mut shed) = self.slot().await;
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Taken for shedding before it arrived: an idle connection may make room now.
                    if shed.is_some()
                        && let Some(freed) = self.reclaim().await
                    {
                        (slot, shed) = (freed, None);
                    }
                    // Small SSE events must leave at once, not wait for Nagle's algorithm.
                    let _ = stream.set_nodelay(true);
                    let activity = shed.is_none().then(|| self.registry.open());
                    return (CappedStream { stream, _slot: slot, shed, activity }, addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener;

    use super::*;

    #[tokio::test]
    async fn a_connection_past_the_cap_waits_until_one_closes() {
        let inner = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = inner.local_addr().expect("addr");
        let mut listener = CappedListener::new(inner, 1);
        let _c1 = TcpStream::connect(addr).await.expect("connect");
        let (first, _) = listener.accept().await;
        assert_eq!(first.shed(), None);
        let _c2 = TcpStream::connect(addr).await.expect("connect");
        let waiting = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(waiting.is_err(), "the second connection waits while the first is open");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), listener.accept()).await;
        assert!(second.is_ok(), "it is accepted once the first closes");
    }

    /// A shedding listener of `max` and `clients` connections to it, not accepted yet.
    async fn shedding_with_clients(max: usize, clients: usize) -> (CappedListener, Vec<io::Result<TcpStream>>) {
        let inner = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = inner.local_addr().expect("addr");
        let listener = CappedListener::new(inner, max).shedding();
        (listener, futures_util::future::join_all((0..clients).map(|_| TcpStream::connect(addr))).await)
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_idle_connection_is_asked_to_close_for_a_new_one() {
        let (mut listener, _clients) = shedding_with_clients(2, 4).await;
        let (busy, _) = listener.accept().await;
        let (idle, _) = listener.accept().await;
        let busy_activity = busy.activity().expect("served");
        let _request = busy_activity.begin();
        // Neither has been idle long enough: the third is shed.
        let (third, _) = listener.accept().await;
        assert_eq!(third.shed(), Some(2));
        drop(third);
        tokio::time::sleep(EVICT_AFTER_IDLE + Duration::from_millis(50)).await;
        let idle_activity = idle.activity().expect("served");
        let closing = tokio::spawn(async move {
            idle_activity.evicted().await;
            drop(idle); // the connection closes
        });
        let (fourth, _) = tokio::time::timeout(Duration::from_secs(1), listener.accept()).await.expect("accepted");
        assert_eq!(fourth.shed(), None, "the idle connection's slot serves the new one");
        closing.await.expect("the idle connection was asked to close");
        assert_eq!(busy_activity.active.load(Ordering::Acquire), 1, "the busy one is left alone");
    }

    #[tokio::test]
    async fn past_the_cap_a_quarter_more_are_accepted_to_be_shed_then_they_wait() {
        let (mut listener, _clients) = shedding_with_clients(4, 6).await;
        let mut served = Vec::new();
        for _ in 0..4 {
            served.push(listener.accept().await.0);
        }
        assert!(served.iter().all(|c| c.shed().is_none()));
        let (shed, _) = listener.accept().await;
        assert_eq!(shed.shed(), Some(4), "the fifth is accepted to be told the cap");
        let waiting = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(waiting.is_err(), "the sixth waits: no room to shed either");
        served.pop();
        let (sixth, _) = tokio::time::timeout(Duration::from_secs(1), listener.accept()).await.expect("accepted");
        assert_eq!(sixth.shed(), None, "a freed slot serves");
        drop(shed);
    }
}

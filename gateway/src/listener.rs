//! The TCP listener with a cap on open connections, so that an overload
//! cannot grow the gateway without bound. Past the cap, a connection is still
//! accepted while there is room for it among the *shed* connections (a
//! quarter of the cap): each of its requests gets an immediate 503 with
//! `Retry-After` and the connection is closed, so a client hears at once
//! instead of waiting in the kernel's accept queue, whose overflow drops
//! SYNs that clients retry only after 1, 3, 7 s. Past both, connections wait
//! in the accept queue.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Accepts at most `max` connections to serve at once, and `max / 4` more to shed.
#[derive(Debug)]
pub struct CappedListener {
    inner: TcpListener,
    max: usize,
    slots: Arc<Semaphore>,
    shed_slots: Option<Arc<Semaphore>>,
}

/// An accepted connection holding its slot until it closes.
#[derive(Debug)]
pub struct CappedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    shed: Option<usize>,
}

impl CappedStream {
    /// For a connection accepted past the cap: the cap, which its requests are refused for.
    pub fn shed(&self) -> Option<usize> {
        self.shed
    }
}

impl CappedListener {
    /// Wraps `inner`; past `max` connections, connections wait in the accept queue.
    pub fn new(inner: TcpListener, max: usize) -> Self {
        Self { inner, max: max.max(1), slots: Arc::new(Semaphore::new(max.max(1))), shed_slots: None }
    }

    /// Past `max`, up to `max / 4` more connections (at least one) are accepted to be shed.
    pub fn shedding(mut self) -> Self {
        self.shed_slots = Some(Arc::new(Semaphore::new((self.max / 4).max(1))));
        self
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
        let (slot, shed) = self.slot().await;
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Small SSE events must leave at once, not wait for Nagle's algorithm.
                    let _ = stream.set_nodelay(true);
                    return (CappedStream { stream, _slot: slot, shed }, addr);
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

    #[tokio::test]
    async fn past_the_cap_a_quarter_more_are_accepted_to_be_shed_then_they_wait() {
        let inner = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = inner.local_addr().expect("addr");
        let mut listener = CappedListener::new(inner, 4).shedding();
        let _clients: Vec<_> = futures_util::future::join_all((0..6).map(|_| TcpStream::connect(addr))).await;
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

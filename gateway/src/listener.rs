//! The TCP listener with a cap on open connections: past the cap, new
//! connections wait in the kernel's accept queue instead of costing memory
//! in the process, so an overload cannot grow the gateway without bound.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Accepts at most `max` connections at once.
#[derive(Debug)]
pub struct CappedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
}

/// An accepted connection holding its slot until it closes.
#[derive(Debug)]
pub struct CappedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl CappedListener {
    /// Wraps `inner`.
    pub fn new(inner: TcpListener, max: usize) -> Self {
        Self { inner, slots: Arc::new(Semaphore::new(max.max(1))) }
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed, so acquiring only waits.
        let slot = loop {
            if let Ok(slot) = self.slots.clone().acquire_owned().await {
                break slot;
            }
        };
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Small SSE events must leave at once, not wait for Nagle's algorithm.
                    let _ = stream.set_nodelay(true);
                    return (CappedStream { stream, _slot: slot }, addr);
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
        let _c2 = TcpStream::connect(addr).await.expect("connect");
        let waiting = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(waiting.is_err(), "the second connection waits while the first is open");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), listener.accept()).await;
        assert!(second.is_ok(), "it is accepted once the first closes");
    }
}

//! Log lines batched in memory and written to stderr by a thread every
//! 50 ms (or at once past 256 KiB): a request never waits on the log pipe, and
//! never wakes another thread per line, which on a small node costs more than
//! the logging itself.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

const FLUSH_EVERY: Duration = Duration::from_millis(50);
const FLUSH_AT: usize = 256 * 1024;

/// Shared buffer of pending log bytes.
#[derive(Clone, Debug, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

/// Flushes what is pending when dropped (at exit).
#[derive(Debug)]
pub struct FlushOnDrop(LogBuffer);

impl LogBuffer {
    /// A buffer and its flusher thread.
    pub fn start() -> (Self, FlushOnDrop) {
        let buffer = Self::default();
        let flusher = buffer.clone();
        let spawned = std::thread::Builder::new().name("log-flush".into()).spawn(move || {
            loop {
                std::thread::sleep(FLUSH_EVERY);
                flusher.flush();
            }
        });
        if let Err(e) = spawned {
            eprintln!("cannot start the log flusher ({e}); logs are written at 256 KiB");
        }
        (buffer.clone(), FlushOnDrop(buffer))
    }

    /// Writes out what is pending. The lock is held only to swap the buffer.
    pub fn flush(&self) {
        let pending = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        if !pending.is_empty() {
            let _ = std::io::stderr().lock().write_all(&pending);
        }
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// One log line being formatted.
#[derive(Debug)]
pub struct LineWriter(LogBuffer);

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut buf = self.0.0.lock().unwrap_or_else(PoisonError::into_inner);
            buf.extend_from_slice(bytes);
            buf.len() >= FLUSH_AT
        };
        if full {
            self.0.flush();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_wait_in_the_buffer_until_a_flush_or_the_size_limit() {
        let buffer = LogBuffer::default();
        let mut line = buffer.make_writer();
        line.write_all(b"{\"message\":\"request\"}\n").expect("write");
        assert_eq!(buffer.0.lock().expect("lock").len(), 22);
        buffer.flush();
        assert!(buffer.0.lock().expect("lock").is_empty());
        line.write_all(&vec![b' '; FLUSH_AT]).expect("write");
        assert!(buffer.0.lock().expect("lock").is_empty(), "a full buffer is written at once");
    }
}

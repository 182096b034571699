//! Upstream log messages (`notifications/message`) on their way to the `/mcp`
//! client sessions that asked for them with `logging/setLevel`.
//!
//! Each upstream connection's log messages go to one feed, their logger
//! prefixed like the connection's tools (`<prefix>_<logger>`, or `<prefix>`
//! when the upstream names none). A session that set a level gets the
//! messages at that level or above from the connections it can see: a
//! per-user connection's messages only from its own session of it, a shared
//! connection's when its caller may use one of its tools (or it offers none).
//! The upstreams are asked for the most verbose level any session set, so a
//! session's level only filters. Logging is a 2025 revision's feature: the
//! 2026-07-28 revision has no `logging/setLevel` (rmcp marks it deprecated,
//! SEP-2577), hence the `allow(deprecated)` here and where it is used.
#![allow(deprecated)]

use std::sync::{Arc, Mutex};

use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
use tokio::sync::broadcast;

/// Messages buffered for a slow session before it misses some.
const FEED_CAPACITY: usize = 256;

/// One upstream log message, as a client session gets it.
#[derive(Debug, Clone)]
pub struct UpstreamLog {
    /// The McpConnection it came from.
    pub connection: Arc<str>,
    /// The user whose own session of a per-user connection sent it (none: the connection's shared session).
    pub user: Option<Arc<str>>,
    /// The message, its logger prefixed.
    pub message: LoggingMessageNotificationParam,
}

/// The severity of `level`, from debug (0) to emergency (7).
pub fn severity(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// `message` with the connection's `prefix` on its logger (an unprefixed
/// connection's messages keep theirs).
pub fn prefixed(mut message: LoggingMessageNotificationParam, prefix: &str) -> LoggingMessageNotificationParam {
    if !prefix.is_empty() {
        message.logger = Some(match message.logger.take() {
            Some(logger) if !logger.is_empty() => format!("{prefix}_{logger}"),
            _ => prefix.to_owned(),
        });
    }
    message
}

/// The hub's log feed and the level its upstreams are asked for.
#[derive(Debug)]
pub struct LogFeed {
    sender: broadcast::Sender<Arc<UpstreamLog>>,
    level: Mutex<Option<LoggingLevel>>,
}

impl Default for LogFeed {
    fn default() -> Self {
        Self { sender: broadcast::channel(FEED_CAPACITY).0, level: Mutex::new(None) }
    }
}

impl LogFeed {
    /// Passes a message to the sessions listening (none: it is dropped).
    pub fn publish(&self, log: UpstreamLog) {
        let _ = self.sender.send(Arc::new(log));
    }

    /// The messages from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<UpstreamLog>> {
        self.sender.subscribe()
    }

    /// The level upstreams are asked for: the most verbose any session set.
    pub fn level(&self) -> Option<LoggingLevel> {
        *self.level.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that a session wants messages at `level` and above; the level
    /// upstreams must now be asked for, when it became more verbose.
    pub fn want(&self, level: LoggingLevel) -> Option<LoggingLevel> {
        let mut current = self.level.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.is_some_and(|c| severity(c) <= severity(level)) {
            return None;
        }
        *current = Some(level);
        Some(level)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn loggers_get_the_connection_prefix() {
        let message = |logger: Option<&str>| {
            let mut m = LoggingMessageNotificationParam::new(LoggingLevel::Info, json!("x"));
            m.logger = logger.map(str::to_owned);
            prefixed(m, "echo").logger
        };
        assert_eq!(message(Some("db")).as_deref(), Some("echo_db"));
        assert_eq!(message(None).as_deref(), Some("echo"));
        assert_eq!(message(Some("")).as_deref(), Some("echo"));
        let mut m = LoggingMessageNotificationParam::new(LoggingLevel::Info, json!("x"));
        m.logger = Some("db".into());
        assert_eq!(prefixed(m, "").logger.as_deref(), Some("db"), "an unprefixed connection's logger");
    }

    #[test]
    fn upstreams_are_asked_for_the_most_verbose_level_wanted() {
        let feed = LogFeed::default();
        assert_eq!(feed.want(LoggingLevel::Warning), Some(LoggingLevel::Warning));
        assert_eq!(feed.want(LoggingLevel::Error), None, "less verbose: nothing to ask");
        assert_eq!(feed.want(LoggingLevel::Warning), None);
        assert_eq!(feed.want(LoggingLevel::Debug), Some(LoggingLevel::Debug));
        assert_eq!(feed.level(), Some(LoggingLevel::Debug));
        assert!(severity(LoggingLevel::Debug) < severity(LoggingLevel::Emergency));
    }
}

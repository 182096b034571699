//! MCP sessions bound to the subject that opened them.
//!
//! A session id (a UUIDv4 from the OS CSPRNG, minted by rmcp) is not a
//! credential: every request still carries a token, and a session id is only
//! honoured for the subject it was issued to, until it expires. These are
//! this replica's bindings; with Redis, [`super::session_store`] shares them
//! with the other replicas and is the authority.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a presented session id is to this caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCheck {
    /// Issued to this subject and live.
    Valid,
    /// Never issued here, closed, or issued to another subject (the same
    /// answer, so ids of others cannot be probed).
    Unknown,
    /// Issued to this subject but past its lifetime (now forgotten).
    Expired,
}

#[derive(Debug)]
struct Binding {
    subject: Box<str>,
    expires: Instant,
}

/// Session id -> subject and expiry. The lock is held for a map operation only.
#[derive(Debug)]
pub struct SessionBindings {
    map: Mutex<HashMap<Box<str>, Binding>>,
    lifetime: Duration,
}

impl SessionBindings {
    /// Sessions live at most `lifetime` from their `initialize`.
    pub fn new(lifetime: Duration) -> Self {
        Self { map: Mutex::new(HashMap::new()), lifetime }
    }

    /// Binds a new session to `subject`; forgets expired ones on the way.
    pub fn bind(&self, id: &str, subject: &str) {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, b| b.expires > now);
        map.insert(id.into(), Binding { subject: subject.into(), expires: now + self.lifetime });
        metrics::gauge!("tenantgate_mcp_sessions").set(map.len() as f64);
    }

    /// Whether `subject` may use session `id`.
    pub fn check(&self, id: &str, subject: &str) -> SessionCheck {
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get(id) {
            Some(b) if *b.subject != *subject => SessionCheck::Unknown,
            Some(b) if b.expires <= Instant::now() => {
                map.remove(id);
                SessionCheck::Expired
            }
            Some(_) => SessionCheck::Valid,
            None => SessionCheck::Unknown,
        }
    }

    /// Forgets a closed session.
    pub fn remove(&self, id: &str) {
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(id);
        metrics::gauge!("tenantgate_mcp_sessions").set(map.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_belong_to_their_subject_and_expire() {
        let s = SessionBindings::new(Duration::from_millis(30));
        s.bind("a", "alice");
        assert_eq!(s.check("a", "alice"), SessionCheck::Valid);
        assert_eq!(s.check("a", "bob"), SessionCheck::Unknown);
        assert_eq!(s.check("b", "alice"), SessionCheck::Unknown);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(s.check("a", "alice"), SessionCheck::Expired);
        assert_eq!(s.check("a", "alice"), SessionCheck::Unknown);
        s.bind("c", "alice");
        s.remove("c");
        assert_eq!(s.check("c", "alice"), SessionCheck::Unknown);
    }
}

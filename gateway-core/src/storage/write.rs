//! Batch inserts: one multi-row `INSERT .. ON CONFLICT (id) DO NOTHING` per
//! table and chunk, in one transaction. Idempotent, so a batch may be written
//! again after a failure whose outcome is unknown.
//!
//! The statements are not kept prepared (`persistent(false)`): each batch size
//! is a statement of its own, and sqlx's cache (100 a connection) would keep up
//! to a hundred of them, each compiled for up to 15,000 binds.

use sqlx::QueryBuilder;

use super::records::{AuditEvent, Record, UsageRow};
use super::{Db, on_db};

/// Rows per statement: 15 columns x 1000 stays under both backends' bind limits.
const USAGE_CHUNK: usize = 1000;
/// 15 columns x 1000 binds.
const AUDIT_CHUNK: usize = 1000;

/// Writes a batch; either all of it is in the database afterwards or the
/// error says the batch must be written again.
pub async fn insert(db: &Db, records: &[Record]) -> Result<(), sqlx::Error> {
    let mut usage: Vec<&UsageRow> = Vec::with_capacity(records.len());
    let mut chat_events = Vec::new();
    let mut audit: Vec<&AuditEvent> = Vec::with_capacity(records.len());
    for r in records {
        match r {
            Record::Usage(u) => usage.push(u),
            Record::Audit(a) => audit.push(a),
            Record::Chat(c) => {
                usage.push(&c.usage);
                chat_events.push(c.audit_event());
            }
        }
    }
    audit.extend(chat_events.iter());
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        for chunk in usage.chunks(USAGE_CHUNK) {
            let mut q = QueryBuilder::new(
                "INSERT INTO usage (id, ts_ms, tenant, subject, model, target, prompt_tokens, completion_tokens, \
                 cached_tokens, cost_nanos, price_version, latency_ms, status, reason, request_id, api_key, team) ",
            );
            q.push_values(chunk, |mut b, u| {
                b.push_bind(u.id.as_str())
                    .push_bind(u.ts_ms)
                    .push_bind(u.tenant.as_str())
                    .push_bind(u.subject.as_str())
                    .push_bind(u.model.as_str())
                    .push_bind(u.target.as_deref())
                    .push_bind(u.prompt_tokens)
                    .push_bind(u.completion_tokens)
                    .push_bind(u.cached_tokens)
                    .push_bind(u.cost_nanos)
                    .push_bind(u.price_version.as_deref())
                    .push_bind(u.latency_ms)
                    .push_bind(u.status)
                    .push_bind(u.reason.as_deref())
                    .push_bind(u.request_id.as_deref())
                    .push_bind(u.api_key.as_deref())
                    .push_bind(u.team.as_deref());
            });
            q.push(" ON CONFLICT (id) DO NOTHING");
            q.build().persistent(false).execute(&mut *tx).await?;
        }
        for chunk in audit.chunks(AUDIT_CHUNK) {
            let mut q = QueryBuilder::new(
                "INSERT INTO audit_events (id, ts_ms, tenant, actor, kind, action, resource, status, reason, \
                 request_id, policy_hash, policy_ids, findings, prompt, details) ",
            );
            q.push_values(chunk, |mut b, a| {
                b.push_bind(a.id.as_str())
                    .push_bind(a.ts_ms)
                    .push_bind(a.tenant.as_str())
                    .push_bind(a.actor.as_str())
                    .push_bind(a.kind.as_str())
                    .push_bind(a.action.as_str())
                    .push_bind(a.resource.as_deref())
                    .push_bind(a.status)
                    .push_bind(a.reason.as_deref())
                    .push_bind(a.request_id.as_deref())
                    .push_bind(a.policy_hash.as_deref())
                    .push_bind(json(&a.policy_ids))
                    .push_bind(json(&a.findings))
                    .push_bind(a.prompt.as_deref())
                    .push_bind(a.details.to_string());
            });
            q.push(" ON CONFLICT (id) DO NOTHING");
            q.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await
    })
}

fn json<T: serde::Serialize>(value: &T) -> String {
    // Vec<String> and Vec<Value> always serialize.
    serde_json::to_string(value).unwrap_or_else(|_| "[]".into())
}

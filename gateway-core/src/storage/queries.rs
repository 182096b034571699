//! What the admin API reads: usage totals per day, and the audit trail a page
//! at a time in a stable order (by the insertion sequence).

use serde::Serialize;
use serde_json::Value;
use sqlx::QueryBuilder;

use super::{Db, on_db};

/// Milliseconds in a UTC day.
const DAY_MS: i64 = 86_400_000;

/// Which usage to sum.
#[derive(Clone, Debug, Default)]
pub struct UsageFilter {
    /// From this time (inclusive), milliseconds since the epoch.
    pub from_ms: Option<i64>,
    /// Until this time (exclusive).
    pub to_ms: Option<i64>,
    /// Only this subject.
    pub subject: Option<String>,
    /// Only this tenant model.
    pub model: Option<String>,
    /// Only requests made with this API key (its admin API id).
    pub api_key: Option<String>,
    /// Only requests of this team.
    pub team: Option<String>,
}

/// Sums over some requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotals {
    /// Requests.
    pub requests: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Of the prompt tokens, those read from the providers' prompt caches.
    pub cached_tokens: i64,
    /// What the requests cost, in units of the tenant's currency (a decimal string).
    #[serde(rename = "cost", serialize_with = "decimal_of_nanos")]
    pub cost_nanos: i64,
    /// Requests a target answered without a price: their cost is not in `cost`.
    pub unpriced_requests: i64,
    /// Requests answered with an error status.
    pub errors: i64,
}

fn decimal_of_nanos<S: serde::Serializer>(nanos: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&tenantgate_crds::pricing::format_nanos(*nanos))
}

impl UsageTotals {
    fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cached_tokens += other.cached_tokens;
        self.cost_nanos = self.cost_nanos.saturating_add(other.cost_nanos);
        self.unpriced_requests += other.unpriced_requests;
        self.errors += other.errors;
    }
}

/// One UTC day of usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DayUsage {
    /// The day, `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Its sums.
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// Totals and per-day rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    /// Over the whole range.
    pub totals: UsageTotals,
    /// Per UTC day, oldest first; days without requests are left out.
    pub days: Vec<DayUsage>,
}

/// What usage can be grouped by, besides the day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GroupBy {
    /// The caller: a token's `sub`, or `apikey:<prefix>` for an API key.
    Subject,
    /// The tenant model asked for.
    Model,
    /// The `provider/model` that answered.
    Target,
    /// The API key the request was made with (`kubernetes:<name>` or an admin-minted
    /// key's id); requests made with a JWT form the group without a key (`null`).
    ApiKey,
    /// The caller's team; requests of callers without a team form the group without one (`null`).
    Team,
}

impl GroupBy {
    /// The column, from this fixed list only.
    fn column(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Model => "model",
            Self::Target => "target",
            Self::ApiKey => "api_key",
            Self::Team => "team",
        }
    }
}

/// The usage of one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupUsage {
    /// The subject, model, target, API key or team; null for requests no target answered
    /// (by target), made with a JWT (by API key) or of callers without a team (by team).
    pub key: Option<String>,
    /// Its sums.
    #[serde(flatten)]
    pub totals: UsageTotals,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    #[sqlx(rename = "group_key")]
    key: Option<String>,
    #[sqlx(flatten)]
    totals: UsageTotals,
}

/// `tenant`'s usage matching `filter` (tenants may share a database).
pub async fn usage(db: &Db, tenant: &str, filter: &UsageFilter) -> Result<UsageReport, sqlx::Error> {
    let rows = sums(db, tenant, filter, "CAST(ts_ms / 86400000 AS TEXT)").await?;
    let mut totals = UsageTotals::default();
    let mut days: Vec<(i64, UsageTotals)> =
        rows.into_iter().map(|r| (r.key.and_then(|k| k.parse().ok()).unwrap_or(0), r.totals)).collect();
    days.sort_by_key(|(day, _)| *day);
    let days = days
        .into_iter()
        .map(|(day, t)| {
            totals.add(&t);
            DayUsage { date: date_of_day(day), totals: t }
        })
        .collect();
    Ok(UsageReport { totals, days })
}

/// `tenant`'s usage matching `filter` per subject, model or target, the most costly
/// first (then by request count, then by key).
pub async fn usage_by(
    db: &Db,
    tenant: &str,
    filter: &UsageFilter,
    by: GroupBy,
) -> Result<Vec<GroupUsage>, sqlx::Error> {
    let mut groups: Vec<GroupUsage> = sums(db, tenant, filter, by.column())
        .await?
        .into_iter()
        .map(|r| GroupUsage { key: r.key, totals: r.totals })
        .collect();
    groups.sort_by(|a, b| {
        (b.totals.cost_nanos, b.totals.requests).cmp(&(a.totals.cost_nanos, a.totals.requests)).then(a.key.cmp(&b.key))
    });
    Ok(groups)
}

/// The sums of `tenant`'s rows matching `filter`, grouped by `key` (a text expression).
async fn sums(db: &Db, tenant: &str, filter: &UsageFilter, key: &str) -> Result<Vec<KeyRow>, sqlx::Error> {
    let rows: Vec<KeyRow> = on_db!(db, pool => {
        let mut q = QueryBuilder::new("SELECT ");
        q.push(key).push(
            " AS group_key, COUNT(*) AS requests, \
             CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens, \
             CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens, \
             CAST(SUM(cached_tokens) AS BIGINT) AS cached_tokens, \
             CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS cost_nanos, \
             CAST(SUM(CASE WHEN target IS NOT NULL AND cost_nanos IS NULL THEN 1 ELSE 0 END) AS BIGINT) \
             AS unpriced_requests, \
             CAST(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS BIGINT) AS errors \
             FROM usage WHERE tenant = ",
        );
        q.push_bind(tenant);
        if let Some(from) = filter.from_ms {
            q.push(" AND ts_ms >= ").push_bind(from);
        }
        if let Some(to) = filter.to_ms {
            q.push(" AND ts_ms < ").push_bind(to);
        }
        if let Some(subject) = &filter.subject {
            q.push(" AND subject = ").push_bind(subject.as_str());
        }
        if let Some(model) = &filter.model {
            q.push(" AND model = ").push_bind(model.as_str());
        }
        if let Some(key) = &filter.api_key {
            q.push(" AND api_key = ").push_bind(key.as_str());
        }
        if let Some(team) = &filter.team {
            q.push(" AND team = ").push_bind(team.as_str());
        }
        q.push(" GROUP BY ").push(key);
        q.build_query_as::<KeyRow>().fetch_all(pool).await?
    });
    Ok(rows)
}

fn date_of_day(day: i64) -> String {
    chrono::DateTime::from_timestamp_millis(day * DAY_MS)
        .map_or_else(|| day.to_string(), |t| t.format("%Y-%m-%d").to_string())
}

/// Which audit events to list.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Only events after this sequence number (the cursor).
    pub after: Option<i64>,
    /// At most this many.
    pub limit: i64,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this actor.
    pub actor: Option<String>,
    /// From this time (inclusive).
    pub from_ms: Option<i64>,
    /// Until this time (exclusive).
    pub to_ms: Option<i64>,
}

/// A stored audit event.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditRow {
    /// Insertion sequence: the order and the cursor.
    pub seq: i64,
    /// Unique id.
    pub id: String,
    /// When, milliseconds since the epoch.
    pub ts_ms: i64,
    /// Who.
    pub actor: String,
    /// Kind.
    pub kind: String,
    /// Action.
    pub action: String,
    /// What it acted on.
    pub resource: Option<String>,
    /// HTTP status.
    pub status: Option<i32>,
    /// Why it failed.
    pub reason: Option<String>,
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// Policy stack hash.
    pub policy_hash: Option<String>,
    /// Applied policy ids (JSON array).
    pub policy_ids: String,
    /// Guard findings (JSON array).
    pub findings: String,
    /// Redacted prompt, when recorded.
    pub prompt: Option<String>,
    /// Details (JSON object).
    pub details: String,
}

impl AuditRow {
    /// The event as the admin API shows it.
    pub fn to_json(&self) -> Value {
        let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
        serde_json::json!({
            "id": self.id,
            "time": rfc3339(self.ts_ms),
            "actor": self.actor,
            "kind": self.kind,
            "action": self.action,
            "resource": self.resource,
            "status": self.status,
            "reason": self.reason,
            "requestId": self.request_id,
            "policyHash": self.policy_hash,
            "policyIds": parse(&self.policy_ids),
            "findings": parse(&self.findings),
            "prompt": self.prompt,
            "details": parse(&self.details),
        })
    }
}

/// RFC 3339 (UTC, milliseconds) of a time in milliseconds since the epoch.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// One page of audit events.
#[derive(Clone, Debug)]
pub struct AuditPage {
    /// The events, in sequence order.
    pub events: Vec<AuditRow>,
    /// Whether more events matched after this page.
    pub has_more: bool,
}

/// A page of `tenant`'s audit events in insertion order.
pub async fn audit(db: &Db, tenant: &str, filter: &AuditFilter) -> Result<AuditPage, sqlx::Error> {
    let limit = filter.limit.clamp(1, 1000);
    let mut events: Vec<AuditRow> = on_db!(db, pool => {
        let mut q = QueryBuilder::new(
            "SELECT seq, id, ts_ms, actor, kind, action, resource, status, reason, request_id, policy_hash, \
             policy_ids, findings, prompt, details FROM audit_events WHERE tenant = ",
        );
        q.push_bind(tenant).push(" AND seq > ").push_bind(filter.after.unwrap_or(0));
        if let Some(kind) = &filter.kind {
            q.push(" AND kind = ").push_bind(kind.as_str());
        }
        if let Some(actor) = &filter.actor {
            q.push(" AND actor = ").push_bind(actor.as_str());
        }
        if let Some(from) = filter.from_ms {
            q.push(" AND ts_ms >= ").push_bind(from);
        }
        if let Some(to) = filter.to_ms {
            q.push(" AND ts_ms < ").push_bind(to);
        }
        q.push(" ORDER BY seq LIMIT ").push_bind(limit + 1);
        q.build_query_as::<AuditRow>().fetch_all(pool).await?
    });
    let has_more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    Ok(AuditPage { events, has_more })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::records::{AuditEvent, AuditKind, Record, UsageRow, new_id, now_ms};
    use crate::storage::write::insert;

    fn usage_of(tenant: &str, subject: &str, tokens: i64) -> Record {
        Record::Usage(UsageRow {
            id: new_id(),
            ts_ms: now_ms(),
            tenant: tenant.into(),
            subject: subject.into(),
            model: "m".into(),
            target: None,
            prompt_tokens: tokens,
            completion_tokens: 1,
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

    #[tokio::test]
    async fn usage_groups_by_the_api_key_it_was_made_with() {
        let dir = std::env::temp_dir().join(format!("tg-by-key-{}-{}", std::process::id(), fastrand::u64(..)));
        let db = Db::sqlite(&dir.join("gateway.db")).await.expect("sqlite");
        let with_key = |key: Option<&str>, tokens: i64| match usage_of("a", "alice", tokens) {
            Record::Usage(u) => {
                Record::Usage(UsageRow { api_key: key.map(str::to_owned), cost_nanos: Some(tokens), ..u })
            }
            other => other,
        };
        let records = [
            with_key(Some("kubernetes:ci"), 10),
            with_key(Some("kubernetes:ci"), 5),
            with_key(Some("0190e1c2"), 7),
            with_key(None, 100),
        ];
        insert(&db, &records).await.expect("insert");
        let groups = usage_by(&db, "a", &UsageFilter::default(), GroupBy::ApiKey).await.expect("groups");
        let got: Vec<(Option<&str>, i64, i64)> =
            groups.iter().map(|g| (g.key.as_deref(), g.totals.requests, g.totals.cost_nanos)).collect();
        // Most spent first; a JWT's requests are the group without a key.
        assert_eq!(got, [(None, 1, 100), (Some("kubernetes:ci"), 2, 15), (Some("0190e1c2"), 1, 7)]);
        let one = UsageFilter { api_key: Some("kubernetes:ci".into()), ..UsageFilter::default() };
        let report = usage(&db, "a", &one).await.expect("usage");
        assert_eq!((report.totals.requests, report.totals.cost_nanos), (2, 15), "one key's spend");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn usage_groups_by_team() {
        let dir = std::env::temp_dir().join(format!("tg-by-team-{}-{}", std::process::id(), fastrand::u64(..)));
        let db = Db::sqlite(&dir.join("gateway.db")).await.expect("sqlite");
        let of_team = |team: Option<&str>, subject: &str, cost: i64| match usage_of("a", subject, cost) {
            Record::Usage(u) => Record::Usage(UsageRow { team: team.map(str::to_owned), cost_nanos: Some(cost), ..u }),
            other => other,
        };
        let records = [
            of_team(Some("ml"), "alice", 40),
            of_team(Some("ml"), "bob", 30),
            of_team(Some("search"), "carol", 50),
            of_team(None, "dave", 1),
        ];
        insert(&db, &records).await.expect("insert");
        let groups = usage_by(&db, "a", &UsageFilter::default(), GroupBy::Team).await.expect("groups");
        let got: Vec<(Option<&str>, i64, i64)> =
            groups.iter().map(|g| (g.key.as_deref(), g.totals.requests, g.totals.cost_nanos)).collect();
        assert_eq!(got, [(Some("ml"), 2, 70), (Some("search"), 1, 50), (None, 1, 1)]);
        let ml = UsageFilter { team: Some("ml".into()), ..UsageFilter::default() };
        let by_subject = usage_by(&db, "a", &ml, GroupBy::Subject).await.expect("ml by subject");
        let got: Vec<(Option<&str>, i64)> =
            by_subject.iter().map(|g| (g.key.as_deref(), g.totals.cost_nanos)).collect();
        assert_eq!(got, [(Some("alice"), 40), (Some("bob"), 30)], "one team's spend per member");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn tenants_sharing_a_database_see_only_their_own_rows() {
        let dir = std::env::temp_dir().join(format!("tg-queries-{}-{}", std::process::id(), fastrand::u64(..)));
        let db = Db::sqlite(&dir.join("gateway.db")).await.expect("sqlite");
        let records = [
            usage_of("a", "alice", 10),
            usage_of("a", "alice", 20),
            usage_of("b", "bob", 400),
            Record::Audit(AuditEvent::new("a", "alice", AuditKind::Admin, "apiKeys.list")),
            Record::Audit(AuditEvent::new("b", "bob", AuditKind::Admin, "apiKeys.list")),
            Record::Audit(AuditEvent::new("b", "bob", AuditKind::Admin, "apiKeys.create")),
        ];
        insert(&db, &records).await.expect("insert");

        let a = usage(&db, "a", &UsageFilter::default()).await.expect("usage");
        assert_eq!((a.totals.requests, a.totals.prompt_tokens), (2, 30));
        let b = usage(&db, "b", &UsageFilter::default()).await.expect("usage");
        assert_eq!((b.totals.requests, b.totals.prompt_tokens), (1, 400));
        let by_subject = usage_by(&db, "a", &UsageFilter::default(), GroupBy::Subject).await.expect("groups");
        assert_eq!(by_subject.len(), 1);
        assert_eq!((by_subject[0].key.as_deref(), by_subject[0].totals.prompt_tokens), (Some("alice"), 30));
        // Naming the other tenant's subject finds nothing.
        let cross = UsageFilter { subject: Some("bob".into()), ..UsageFilter::default() };
        assert_eq!(usage(&db, "a", &cross).await.expect("usage").totals.requests, 0);

        let all = AuditFilter { after: None, limit: 100, kind: None, actor: None, from_ms: None, to_ms: None };
        let a_events = audit(&db, "a", &all).await.expect("audit").events;
        assert_eq!(a_events.iter().map(|e| e.actor.as_str()).collect::<Vec<_>>(), ["alice"]);
        assert_eq!(audit(&db, "b", &all).await.expect("audit").events.len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

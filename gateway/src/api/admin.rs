//! `/admin/v1`: usage, the audit trail and API keys, for callers with an
//! admin role. Every call is itself audited (refused ones included).

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tenantgate_gateway_core::auth::declared_key_id;

use super::body::read_body;
use super::caller::require_admin;
use crate::auth::Caller;
use crate::error::AppError;
use crate::state::AppState;
use tenantgate_crds::config::DeclaredApiKey;

use crate::storage::{self, AuditEvent, AuditFilter, AuditKind, GroupBy, NewApiKey, UsageFilter, api_keys};

/// Routes of the admin API.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/usage", get(read::<UsageQuery>))
        .route("/admin/v1/budgets", get(read::<BudgetsQuery>))
        .route("/admin/v1/audit", get(read::<AuditQuery>))
        .route("/admin/v1/api-keys", get(list_keys).post(create_key))
        .route("/admin/v1/api-keys/{id}", delete(revoke_key))
        .route("/admin/v1/mcp-tokens", get(read::<McpTokensQuery>))
        .route("/admin/v1/mcp-tokens/{connection}/{subject}", delete(revoke_mcp_tokens))
}

/// Audits one admin call with its outcome, then passes the outcome on.
fn audited(
    state: &AppState,
    caller: &Caller,
    action: &str,
    resource: Option<&str>,
    details: serde_json::Value,
    result: Result<Response, AppError>,
) -> Result<Response, AppError> {
    let mut event = AuditEvent::new(&state.runtime().config.tenant.name, &caller.0.subject, AuditKind::Admin, action);
    event.resource = resource.map(str::to_owned);
    event.details = details;
    match &result {
        Ok(r) => event.status = Some(i32::from(r.status().as_u16())),
        Err(e) => {
            event.status = Some(i32::from(e.status().as_u16()));
            event.reason = Some(e.as_reason().to_owned());
        }
    }
    state.storage().recorder.audit(event);
    result
}

/// An admin read behind a query string: the query type names the read.
trait AdminRead: serde::de::DeserializeOwned + Send + 'static {
    /// The audit action.
    const ACTION: &'static str;

    /// Answers the read.
    fn run(self, state: &AppState) -> impl Future<Output = Result<Response, AppError>> + Send;
}

/// The handler of every [`AdminRead`]: refused unless the caller is an admin
/// and the query parses; audited whatever its outcome.
async fn read<Q: AdminRead>(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<Q>, QueryRejection>,
) -> Result<Response, AppError> {
    let result = async {
        require_admin(&caller)?;
        query(q)?.run(&state).await
    }
    .await;
    audited(&state, &caller, Q::ACTION, None, json!({}), result)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, AppError> {
    q.map(|Query(t)| t).map_err(|e| AppError::bad_request(None, format!("invalid query string: {}", e.body_text())))
}

fn db_error(e: impl std::fmt::Display) -> AppError {
    // The detail is logged, not shown.
    tracing::warn!(error = %e, "admin API: database error");
    AppError::Unavailable { message: "the database is unavailable, try again later".into(), retry_after: None }
}

/// A time: RFC 3339, or a date (`YYYY-MM-DD`, midnight UTC).
fn parse_time(param: &str, value: &str) -> Result<i64, AppError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc().timestamp_millis());
    }
    Err(AppError::bad_request(
        Some(param.to_owned()),
        format!("{param}: {value:?} is not an RFC 3339 time (2026-01-31T12:00:00Z) or a date (2026-01-31)"),
    ))
}

fn parse_range(from: Option<&str>, to: Option<&str>) -> Result<(Option<i64>, Option<i64>), AppError> {
    let from = from.map(|v| parse_time("from", v)).transpose()?;
    let to = to.map(|v| parse_time("to", v)).transpose()?;
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(AppError::bad_request(Some("from".into()), "from is after to"));
    }
    Ok((from, to))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    subject: Option<String>,
    model: Option<String>,
    #[serde(rename = "apiKey")]
    api_key: Option<String>,
    team: Option<String>,
    #[serde(rename = "groupBy")]
    group_by: Option<GroupBy>,
}

impl AdminRead for UsageQuery {
    const ACTION: &'static str = "usage.read";

    /// `GET /admin/v1/usage?from&to&subject&model&apiKey&team&groupBy`: totals, per-day rows,
    /// and with `groupBy` (subject, model, target, apiKey or team) a row per group.
    async fn run(self, state: &AppState) -> Result<Response, AppError> {
        let (from_ms, to_ms) = parse_range(self.from.as_deref(), self.to.as_deref())?;
        let filter = UsageFilter {
            from_ms,
            to_ms,
            subject: self.subject.clone(),
            model: self.model.clone(),
            api_key: self.api_key.clone(),
            team: self.team.clone(),
        };
        let report = storage::queries::usage(&state.storage().db, &state.runtime().config.tenant.name, &filter)
            .await
            .map_err(db_error)?;
        let groups = match self.group_by {
            Some(by) => Some(
                storage::queries::usage_by(&state.storage().db, &state.runtime().config.tenant.name, &filter, by)
                    .await
                    .map_err(db_error)?,
            ),
            None => None,
        };
        let currency = state.runtime().config.pricing.as_ref().map(|p| p.currency.clone());
        Ok(Json(json!({
            "object": "usage.report",
            "from": self.from, "to": self.to, "subject": self.subject, "model": self.model, "team": self.team,
            "currency": currency,
            "totals": report.totals,
            "days": report.days,
            "groupBy": self.group_by,
            "groups": groups,
        }))
        .into_response())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetsQuery {
    subject: Option<String>,
    team: Option<String>,
    #[serde(rename = "apiKey")]
    api_key: Option<String>,
}

impl AdminRead for BudgetsQuery {
    const ACTION: &'static str = "budgets.read";

    /// `GET /admin/v1/budgets?subject&team&apiKey`: the tenant's budget and, with
    /// any of `subject`, `team` or `apiKey`, the budgets a request of that account
    /// counts against (its user's, team's and key's); without them, every listed
    /// team's and every key's budget. As they stand in the current window.
    async fn run(self, state: &AppState) -> Result<Response, AppError> {
        let runtime = state.runtime();
        let account =
            (self.subject.is_some() || self.team.is_some() || self.api_key.is_some()).then(|| crate::limits::Account {
                subject: self.subject.as_deref().unwrap_or(""),
                team: self.team.as_deref(),
                api_key: self.api_key.as_deref(),
            });
        let states = async {
            let mut states = runtime.limiter.budgets(account).await?;
            if account.is_none() {
                states.extend(runtime.limiter.own_budgets().await?);
            }
            Ok::<_, crate::limits::StoreError>(states)
        };
        let states = states.await.map_err(|e| {
            tracing::warn!(error = %e, "admin API: the limit store did not answer");
            AppError::Unavailable {
                message: "the limit store is unavailable, try again later".into(),
                retry_after: None,
            }
        })?;
        let now = chrono::Utc::now();
        let data: Vec<_> = states
            .iter()
            .map(|b| {
                use crate::limits::{Period, Scope};
                let (scope, field) = match b.scope {
                    Scope::Tenant => ("tenant", None),
                    Scope::User => ("user", Some("subject")),
                    Scope::Team => ("team", Some("team")),
                    Scope::Key => ("apiKey", Some("apiKey")),
                };
                let nanos = |n: u64| tenantgate_crds::pricing::format_nanos(n as i64);
                let resets_at = chrono::TimeDelta::from_std(b.resets_in).ok().map(|d| (now + d).to_rfc3339());
                let mut entry = json!({
                    "scope": scope,
                    "amount": nanos(b.limit),
                    "period": match b.period { Period::Day => "Day", Period::Month => "Month", Period::Fixed { .. } => "Fixed" },
                    "window": b.period.label(b.window),
                    "spent": nanos(b.spent),
                    "remaining": nanos(b.limit.saturating_sub(b.spent)),
                    "resetsAt": resets_at,
                });
                if let Some(field) = field {
                    entry[field] = json!(b.id);
                }
                entry
            })
            .collect();
        Ok(Json(json!({
            "object": "budgets",
            "currency": runtime.limiter.currency(),
            "subject": self.subject,
            "team": self.team,
            "apiKey": self.api_key,
            "data": data,
        }))
        .into_response())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    cursor: Option<String>,
    limit: Option<i64>,
    kind: Option<String>,
    actor: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

impl AdminRead for AuditQuery {
    const ACTION: &'static str = "audit.read";

    /// `GET /admin/v1/audit?cursor&limit&kind&actor&from&to`: events in insertion
    /// order, `next_cursor` to continue from.
    async fn run(self, state: &AppState) -> Result<Response, AppError> {
        let after = self
            .cursor
            .as_deref()
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| AppError::bad_request(Some("cursor".into()), "cursor: not a cursor this API returned"))
            })
            .transpose()?;
        let limit = self.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(AppError::bad_request(Some("limit".into()), "limit: must be between 1 and 1000"));
        }
        if let Some(kind) = &self.kind
            && AuditKind::parse(kind).is_none()
        {
            return Err(AppError::bad_request(
                Some("kind".into()),
                format!("kind: {kind:?} is not one of chat, toolCall, admin, configChange"),
            ));
        }
        let (from_ms, to_ms) = parse_range(self.from.as_deref(), self.to.as_deref())?;
        let filter = AuditFilter { after, limit, kind: self.kind, actor: self.actor, from_ms, to_ms };
        let page = storage::queries::audit(&state.storage().db, &state.runtime().config.tenant.name, &filter)
            .await
            .map_err(db_error)?;
        let next_cursor = page.has_more.then(|| page.events.last().map(|e| e.seq.to_string())).flatten();
        let data: Vec<_> = page.events.iter().map(storage::AuditRow::to_json).collect();
        Ok(Json(json!({"object": "list", "data": data, "has_more": page.has_more, "next_cursor": next_cursor}))
            .into_response())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateKey {
    name: String,
    #[serde(default)]
    roles: Vec<String>,
    /// RFC 3339 time.
    expires_at: Option<String>,
    /// Or a lifetime in seconds.
    expires_in_seconds: Option<u64>,
}

/// `POST /admin/v1/api-keys {name, roles, expiresAt | expiresInSeconds}`:
/// the key is in this response only.
async fn create_key(State(state): State<AppState>, caller: Caller, body: Body) -> Result<Response, AppError> {
    let mut resource = None;
    let mut details = json!({});
    let result = async {
        require_admin(&caller)?;
        api_keys_enabled(&state)?;
        let body = read_body(body, state.max_body_bytes()).await?;
        let req: CreateKey =
            serde_json::from_slice(&body).map_err(|e| AppError::bad_request(None, format!("invalid body: {e}")))?;
        let name = req.name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(AppError::bad_request(Some("name".into()), "name: 1 to 200 characters"));
        }
        if req.roles.iter().any(|r| r.trim().is_empty() || r.len() > 200) || req.roles.len() > 50 {
            return Err(AppError::bad_request(Some("roles".into()), "roles: at most 50 non-empty names"));
        }
        let now = storage::now_ms();
        let expires_at_ms = match (req.expires_at.as_deref(), req.expires_in_seconds) {
            (Some(_), Some(_)) => {
                return Err(AppError::bad_request(
                    Some("expiresAt".into()),
                    "set expiresAt or expiresInSeconds, not both",
                ));
            }
            (Some(t), None) => Some(parse_time("expiresAt", t)?),
            (None, Some(s)) => Some(now.saturating_add(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX))),
            (None, None) => None,
        };
        if expires_at_ms.is_some_and(|e| e <= now) {
            return Err(AppError::bad_request(Some("expiresAt".into()), "expiresAt: must be in the future"));
        }
        let storage = state.storage();
        let pepper = storage.pepper.as_ref().ok_or_else(|| AppError::Internal("API-key pepper not loaded".into()))?;
        let new = NewApiKey { name: name.to_owned(), roles: req.roles, expires_at_ms };
        let created =
            api_keys::create(&storage.db, &state.runtime().config.tenant.name, pepper, new, &caller.0.subject)
                .await
                .map_err(|e| match e {
                    api_keys::ApiKeyError::Db(e) => db_error(e),
                    other => AppError::Internal(other.to_string()),
                })?;
        resource = Some(created.record.id.clone());
        details = json!({"name": created.record.name, "prefix": created.record.prefix, "roles": created.record.roles});
        let mut body = serde_json::to_value(created.record.view()).unwrap_or_default();
        body["key"] = json!(created.key);
        Ok((StatusCode::CREATED, Json(body)).into_response())
    }
    .await;
    audited(&state, &caller, "apiKeys.create", resource.as_deref(), details, result)
}

fn api_keys_enabled(state: &AppState) -> Result<(), AppError> {
    if state.runtime().config.auth.api_keys_enabled {
        Ok(())
    } else {
        Err(AppError::Forbidden("API keys are not enabled for this tenant (spec.auth.apiKeys.enabled)".into()))
    }
}

/// `GET /admin/v1/api-keys`: every key, never a secret nor a hash: those
/// declared as ApiKey objects (`origin: kubernetes`, by name) and those
/// minted here (`origin: admin`, newest first).
async fn list_keys(State(state): State<AppState>, caller: Caller) -> Result<Response, AppError> {
    let result = async {
        require_admin(&caller)?;
        let runtime = state.runtime();
        let keys = api_keys::list(&state.storage().db, &runtime.config.tenant.name).await.map_err(db_error)?;
        let now = storage::now_ms();
        let mut data: Vec<serde_json::Value> =
            runtime.config.auth.declared_api_keys.iter().map(|k| declared_view(k, now)).collect();
        data.extend(keys.iter().map(|k| serde_json::to_value(k.view()).unwrap_or_default()));
        Ok(Json(json!({"object": "list", "data": data})).into_response())
    }
    .await;
    audited(&state, &caller, "apiKeys.list", None, json!({}), result)
}

/// The admin API's view of a key declared as an ApiKey object.
fn declared_view(key: &DeclaredApiKey, now_ms: i64) -> serde_json::Value {
    let expired = key.expires_at_ms().ok().flatten().is_some_and(|e| e <= now_ms);
    json!({
        "id": declared_key_id(&key.name),
        "name": key.name,
        "prefix": key.prefix,
        "roles": key.roles,
        "subject": key.subject,
        "allowedModels": key.allowed_models,
        "ipAllowList": key.ip_allow_list,
        "createdBy": "kubernetes",
        "expiresAt": key.expires_at,
        "revokedAt": null,
        "state": if expired { "expired" } else { "active" },
        "origin": "kubernetes",
    })
}

/// `DELETE /admin/v1/api-keys/{id}`: revokes the key (effective on every
/// replica within the key cache's lifetime, here at once).
async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let result = async {
        require_admin(&caller)?;
        let runtime = state.runtime();
        if let Some(k) = runtime.config.auth.declared_api_keys.iter().find(|k| declared_key_id(&k.name) == id || k.prefix == id) {
            return Err(AppError::Conflict(format!(
                "API key {} is managed by Kubernetes (ApiKey {}/{}): revoke it by deleting that object (kubectl delete apikey {} -n {}), or rotate it by changing its spec.rotation",
                k.name, runtime.config.tenant.namespace, k.name, k.name, runtime.config.tenant.namespace
            )));
        }
        let storage = state.storage();
        let revoked = api_keys::revoke(&storage.db, &state.runtime().config.tenant.name, &id, &caller.0.subject)
            .await
            .map_err(db_error)?;
        storage.api_keys.clear();
        match revoked {
            Some(key) => Ok(Json(serde_json::to_value(key.view()).unwrap_or_default()).into_response()),
            None => Err(AppError::NotFound(format!("no API key with id {id:?}"))),
        }
    }
    .await;
    audited(&state, &caller, "apiKeys.revoke", Some(&id), json!({}), result)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct McpTokensQuery {
    connection: Option<String>,
    subject: Option<String>,
}

fn user_tokens(state: &AppState) -> Result<std::sync::Arc<crate::mcp::user_oauth::UserTokens>, AppError> {
    state.carried().mcp().user_tokens().ok_or_else(|| AppError::Unavailable {
        message: "per-user MCP OAuth is not ready yet".into(),
        retry_after: None,
    })
}

impl AdminRead for McpTokensQuery {
    const ACTION: &'static str = "mcpTokens.list";

    /// `GET /admin/v1/mcp-tokens?connection&subject`: users' upstream OAuth
    /// authorizations (metadata: never a token).
    async fn run(self, state: &AppState) -> Result<Response, AppError> {
        let rows = user_tokens(state)?
            .list(self.connection.as_deref(), self.subject.as_deref())
            .await
            .map_err(AppError::from)?;
        let data: Vec<_> = rows.iter().map(storage::mcp_tokens::StoredToken::view).collect();
        Ok(Json(json!({"object": "list", "data": data})).into_response())
    }
}

/// `DELETE /admin/v1/mcp-tokens/{connection}/{subject}`: deletes a user's
/// tokens for a connection and closes their upstream session here (other
/// replicas find no token on their next request).
async fn revoke_mcp_tokens(
    State(state): State<AppState>,
    caller: Caller,
    Path((connection, subject)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let resource = format!("{connection}/{subject}");
    let result = async {
        require_admin(&caller)?;
        let deleted = user_tokens(&state)?.revoke(&connection, &subject).await.map_err(AppError::from)?;
        state.carried().mcp().forget_user(&connection, &subject);
        if !deleted {
            return Err(AppError::NotFound(format!(
                "no OAuth tokens of {subject:?} for MCP connection {connection:?}"
            )));
        }
        Ok(Json(
            json!({"object": "mcp.authorization", "connection": connection, "subject": subject, "status": "revoked"}),
        )
        .into_response())
    }
    .await;
    audited(&state, &caller, "mcpTokens.revoke", Some(&resource), json!({}), result)
}

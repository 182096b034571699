//! Users' upstream OAuth tokens and pending authorizations in a real
//! PostgreSQL (the migration, the queries written once for both backends,
//! single use of states, sealed values that only open for their user).
//!
//! Run: `e2e/with-services cargo test -p tenantgate-gateway --test services_mcp_tokens`
//! (fails without `TENANTGATE_POSTGRES_URL`).

mod common;

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use tenantgate_crds::config::McpConnectionConfig;
use tenantgate_gateway::mcp::seal::{Binding, TokenKey};
use tenantgate_gateway::mcp::user_oauth::{Grant, UserOAuthError, UserTokens};
use tenantgate_gateway::storage::mcp_tokens::{self, PendingState, StoredToken};
use tenantgate_gateway::storage::{Db, new_id, now_ms};

async fn db() -> Db {
    let url = common::services_env("TENANTGATE_POSTGRES_URL");
    Db::postgres(PgConnectOptions::from_str(&url).expect("URL")).await.expect("PostgreSQL")
}

fn config() -> McpConnectionConfig {
    serde_json::from_value(serde_json::json!({
        "name": "gh", "prefix": "gh", "transport": "streamableHttp", "url": "http://127.0.0.1:9/mcp",
        "auth": {"oauth2AuthorizationCode": {"authorizationUrl": "http://127.0.0.1:9/authorize",
            "tokenUrl": "http://127.0.0.1:9/token", "clientId": "gw", "scopes": [], "resource": "r"}},
        "tools": {}, "timeoutSeconds": 5
    }))
    .expect("config")
}

#[tokio::test]
async fn tokens_and_states_round_trip_in_postgres() {
    let db = db().await;
    // A tenant name of its own: reruns against the same database do not meet.
    let tenant = format!("t-{}", new_id());
    let key = TokenKey::from_bytes(&[9u8; 32]).expect("key");
    let sealed = |subject: &str, access: &str| {
        let b = Binding { purpose: "token", tenant: &tenant, connection: "gh", subject };
        key.seal(b, format!(r#"{{"a":"{access}"}}"#).as_bytes()).expect("seal")
    };
    let now = now_ms();
    for (subject, access, at) in
        [("alice", "AT-alice-1", now), ("bob", "AT-bob-1", now + 1), ("alice", "AT-alice-2", now + 2)]
    {
        let row = StoredToken {
            connection: "gh".into(),
            subject: subject.into(),
            sealed: sealed(subject, access),
            has_refresh_token: false,
            scope: None,
            expires_at_ms: Some(at + 3_600_000),
            created_at_ms: at,
            updated_at_ms: at,
        };
        mcp_tokens::upsert_token(&db, &tenant, &row).await.expect("upsert");
    }
    let alice = mcp_tokens::get_token(&db, &tenant, "gh", "alice").await.expect("get").expect("row");
    assert_eq!((alice.created_at_ms, alice.updated_at_ms, alice.has_refresh_token), (now, now + 2, false));
    assert!(!alice.sealed.contains("AT-alice"));
    assert_eq!(mcp_tokens::latest_subject(&db, &tenant, "gh").await.expect("latest").as_deref(), Some("alice"));
    assert_eq!(mcp_tokens::list_tokens(&db, &tenant, None, None).await.expect("list").len(), 2);
    assert_eq!(mcp_tokens::list_tokens(&db, &tenant, Some("gh"), Some("bob")).await.expect("list").len(), 1);
    assert!(mcp_tokens::list_tokens(&db, &tenant, Some("other"), None).await.expect("list").is_empty());

    // Through the vault: the user's own token opens; nobody else's row does.
    let vault = UserTokens::with_key(db.clone(), &tenant, Ok(key.clone()), reqwest::Client::new());
    let c = config();
    let grant = Grant::of(&c).expect("grant");
    assert_eq!(vault.access_token(grant, "alice").await.expect("token"), "AT-alice-2");
    let err = vault.access_token(grant, "carol").await.expect_err("no token");
    assert!(matches!(err, UserOAuthError::NotAuthorized(_)), "{err}");
    assert!(vault.revoke("gh", "alice").await.expect("revoke"));
    assert!(!vault.revoke("gh", "alice").await.expect("revoke again"));
    assert!(matches!(vault.access_token(grant, "alice").await, Err(UserOAuthError::NotAuthorized(_))));

    // A state is taken once, by its tenant only.
    let pending = PendingState {
        connection: "gh".into(),
        subject: "bob".into(),
        sealed_verifier: "v".into(),
        redirect_uri: "http://gw/cb".into(),
        expires_at_ms: now_ms() + 60_000,
    };
    mcp_tokens::put_state(&db, &tenant, "hash-1", &pending).await.expect("put");
    assert!(mcp_tokens::take_state(&db, "another-tenant", "hash-1").await.expect("take").is_none());
    assert_eq!(mcp_tokens::take_state(&db, &tenant, "hash-1").await.expect("take"), Some(pending));
    assert!(mcp_tokens::take_state(&db, &tenant, "hash-1").await.expect("take again").is_none());
    // A real start stores a state the vault can finish only once.
    let url = vault.start(grant, "bob", "http://gw/cb").await.expect("start");
    let state =
        url::Url::parse(&url).expect("url").query_pairs().find(|(k, _)| k == "state").expect("state").1.into_owned();
    let err = vault.finish(grant, &state, "code", Some("mallory")).await.expect_err("another user");
    assert!(matches!(err, UserOAuthError::OtherSubject), "{err}");
    let err = vault.finish(grant, &state, "code", Some("bob")).await.expect_err("spent");
    assert!(matches!(err, UserOAuthError::UnknownState(_)), "{err}");
    assert!(mcp_tokens::delete_token(&db, &tenant, "gh", "bob").await.expect("cleanup"));
}

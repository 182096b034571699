//! API keys declared as ApiKey objects, through the gateway process run as in a
//! cluster (`--config`, the file the operator renders): only their hashes are in
//! the config; a key works on the models it names, from the addresses it names,
//! until it expires or is rotated away; the admin API lists it with its origin
//! and will not revoke it. The tenant has no JWT settings: API keys alone.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Gateway, temp_dir, token};
use serde_json::{Value, json};
use tenantgate_crds::api_key::{declared_hash, format_key};
use tenantgate_crds::render::{IssuedApiKey, RenderInput, RenderOptions, render};
use tenantgate_crds::v1alpha1::{ApiKey, Tenant};

const PEPPER: &[u8] = b"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A fresh key for the ApiKey `name` with `spec`.
fn issue(name: &str, spec: &str, fill: u8) -> (IssuedApiKey, String) {
    let key: ApiKey = serde_yaml::from_str(&format!(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: ApiKey\nmetadata: {{name: {name}, namespace: tg-keys}}\nspec: {spec}\n"
    ))
    .expect("ApiKey");
    let (value, prefix) = format_key(&[fill; 6], &[fill; 32]);
    (IssuedApiKey { key, prefix, hash: declared_hash(&value) }, value)
}

/// Renders the tenant with `keys` into `dir/config.yaml`, its Secret files under `dir/secrets`.
fn write_config(dir: &Path, keys: &[IssuedApiKey]) -> std::path::PathBuf {
    let tenant: Tenant = serde_yaml::from_str(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: keys}\nspec:\n  auth: {apiKeys: {enabled: true}}\n  providers: [{name: p, type: mock}]\n  models: [{name: m, targets: [{provider: p, model: x}]}, {name: other, targets: [{provider: p, model: y}]}]\n",
    )
    .expect("tenant");
    let options = RenderOptions {
        secrets_root: dir.join("secrets").display().to_string(),
        sqlite_path: dir.join("state/gateway.db").display().to_string(),
        ..RenderOptions::default()
    };
    let input = RenderInput {
        tenant: &tenant,
        mcp_connections: &[],
        tenant_policies: &[],
        global_policies: &[],
        model_prices: &[],
        api_keys: keys,
    };
    let rendered = render(input, &options).expect("renders");
    assert!(rendered.skipped.is_empty(), "{:?}", rendered.skipped);
    let keys_dir = dir.join("secrets/gateway-keys");
    std::fs::create_dir_all(&keys_dir).expect("dir");
    std::fs::write(keys_dir.join("api-key-pepper"), PEPPER).expect("pepper");
    std::fs::write(keys_dir.join("token-encryption-key"), "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").expect("key");
    let path = dir.join("config.yaml");
    // Written whole and renamed, as the kubelet swaps a ConfigMap volume.
    let tmp = dir.join("config.yaml.tmp");
    std::fs::write(&tmp, rendered.config.to_yaml().expect("YAML")).expect("config");
    std::fs::rename(&tmp, &path).expect("rename");
    path
}

async fn chat(gw: &Gateway, key: &str, model: &str) -> (u16, Value) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let r = gw.post_raw("/v1/chat/completions", body.to_string(), Some(key)).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn declared_keys_are_accepted_within_their_limits_listed_and_rotated() {
    let dir = temp_dir("declared-keys");
    std::fs::create_dir_all(dir.join("state")).expect("dir");
    let (ci, ci_key) = issue("ci", "{roles: [dev], allowedModels: ['m'], ipAllowList: [127.0.0.0/8]}", 1);
    let (far, far_key) = issue("far", "{ipAllowList: [10.0.0.0/8, '2001:db8::/32']}", 2);
    let (old, old_key) = issue("old", "{expiresAt: '2001-01-01T00:00:00Z'}", 3);
    let (admin, admin_key) = issue("admin", "{roles: [tenant-admin], subject: ops@keys}", 4);
    let config = write_config(&dir, &[ci.clone(), far, old, admin.clone()]);
    let text = std::fs::read_to_string(&config).expect("config");
    for value in [&ci_key, &far_key, &old_key, &admin_key] {
        assert!(
            !text.contains(tenantgate_crds::api_key::key_secret(value).expect("secret")),
            "a key's secret is in the config"
        );
    }
    let gw = Gateway::start_config(&dir, &config).await;

    // On the model it names, from the loopback address it allows.
    let (status, body) = chat(&gw, &ci_key, "m").await;
    assert_eq!(status, 200, "{body}");
    // Another model: 403 naming the model.
    let (status, body) = chat(&gw, &ci_key, "other").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "model_not_allowed", "{body}");
    assert_eq!(body["error"]["param"], "model", "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("`other`")), "{body}");
    // The model list shows it only what it may use.
    let (status, models) = gw.get_json("/v1/models", &ci_key).await;
    assert_eq!(status, 200, "{models}");
    let ids: Vec<&str> = models["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["m"]);
    assert_eq!(gw.get_json("/v1/models/other", &ci_key).await.0, 403);
    // From outside its allow-list: 403 naming the key and the address.
    let (status, body) = chat(&gw, &far_key, "m").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"]["message"],
        "API key far is not accepted from 127.0.0.1: the address is outside the key's ipAllowList"
    );
    // Expired: 401.
    let (status, body) = chat(&gw, &old_key, "m").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["message"], "invalid API key: the key has expired");
    // No JWT settings: a JWT is refused, saying what to use instead.
    let (status, body) = chat(&gw, &token(json!({})), "m").await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("API key")), "{body}");

    // The admin API, with an admin-role key (no JWT here): both origins, never a hash.
    let (status, list) = gw.get_json("/admin/v1/api-keys", &admin_key).await;
    assert_eq!(status, 200, "{list}");
    let data = list["data"].as_array().expect("data");
    assert_eq!(data.len(), 4, "{list}");
    let listed = data.iter().find(|k| k["name"] == "ci").expect("ci listed");
    assert_eq!(listed["origin"], "kubernetes");
    assert_eq!(listed["prefix"], ci.prefix.as_str());
    assert_eq!(listed["id"], "kubernetes:ci");
    assert!(data.iter().any(|k| k["name"] == "old" && k["state"] == "expired"), "{list}");
    let text = list.to_string();
    assert!(!text.contains(&ci.hash) && !text.contains(&admin.hash), "hashes are not listed: {text}");
    let minted = gw
        .post_raw("/admin/v1/api-keys", json!({"name": "minted"}).to_string(), Some(&admin_key))
        .await
        .json::<Value>()
        .await
        .expect("minted");
    let (_, list) = gw.get_json("/admin/v1/api-keys", &admin_key).await;
    let origin_of = |name: &str| {
        list["data"].as_array().and_then(|d| d.iter().find(|k| k["name"] == name)).map(|k| k["origin"].clone())
    };
    assert_eq!(origin_of("minted"), Some(json!("admin")), "{list}");
    assert_eq!(chat(&gw, minted["key"].as_str().expect("key"), "other").await.0, 200, "admin-minted keys still work");
    // Not revocable here: 409 naming the object to delete.
    for id in ["kubernetes:ci", ci.prefix.as_str()] {
        let r = gw
            .client
            .delete(format!("{}/admin/v1/api-keys/{id}", gw.url))
            .bearer_auth(&admin_key)
            .send()
            .await
            .expect("delete");
        assert_eq!(r.status().as_u16(), 409);
        let body: Value = r.json().await.expect("json");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("kubectl delete apikey ci -n tg-keys"), "{body}");
    }
    assert_eq!(chat(&gw, &ci_key, "m").await.0, 200, "still valid after the refused revocation");

    // Rotation: a new key for ci in the config; the old one stops working with the reload.
    let (rotated, rotated_key) = issue("ci", "{roles: [dev], allowedModels: ['m']}", 9);
    write_config(&dir, &[rotated, admin]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while chat(&gw, &ci_key, "m").await.0 != 401 {
        assert!(Instant::now() < deadline, "the rotated-away key still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = chat(&gw, &ci_key, "m").await;
    assert_eq!((status, body["error"]["message"].clone()), (401, json!("invalid API key: unknown key")));
    assert_eq!(chat(&gw, &rotated_key, "m").await.0, 200);
    // Deleted ApiKeys (far, old) are gone from the listing.
    let (_, list) = gw.get_json("/admin/v1/api-keys", &admin_key).await;
    let names: Vec<&str> = list["data"].as_array().expect("data").iter().filter_map(|k| k["name"].as_str()).collect();
    assert_eq!(names, ["admin", "ci", "minted"], "{list}");

    // Usage by key: each request is recorded with the key it was made with, by its admin API id.
    let minted_id = minted["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let groups = loop {
        let (status, report) = gw.get_json("/admin/v1/usage?groupBy=apiKey", &admin_key).await;
        assert_eq!(status, 200, "{report}");
        let groups = report["groups"].as_array().cloned().unwrap_or_default();
        let requests = |id: &str| groups.iter().find(|g| g["key"] == id).and_then(|g| g["requests"].as_i64());
        // The recorder writes in batches: wait for the last chat of each key.
        if requests("kubernetes:ci").is_some_and(|n| n >= 3) && requests(&minted_id) == Some(1) {
            break groups;
        }
        assert!(Instant::now() < deadline, "usage by key never showed both keys: {report}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(groups.iter().all(|g| g["key"] != ci.hash.as_str()), "keys are grouped by id, never by hash");
    let ci_requests = groups.iter().find(|g| g["key"] == "kubernetes:ci").map(|g| g["requests"].clone());
    let (_, one) = gw.get_json("/admin/v1/usage?apiKey=kubernetes:ci", &admin_key).await;
    assert_eq!(Some(one["totals"]["requests"].clone()), ci_requests, "the filter sums what the group does: {one}");
}

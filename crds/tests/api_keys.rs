//! ApiKeys in the rendered config: only their hash, never the key; keys that
//! cannot be used are left out and named; a tenant may have no JWT settings.

mod common;

use common::alone;
use tenantgate_crds::api_key::{declared_hash, format_key};
use tenantgate_crds::config::GatewayConfig;
use tenantgate_crds::render::{IssuedApiKey, RenderInput, RenderOptions, render};
use tenantgate_crds::v1alpha1::{ApiKey, Tenant};

fn tenant(auth: &str) -> Tenant {
    serde_yaml::from_str(&format!(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: t}}\nspec:\n  auth: {auth}\n  providers: [{{name: p, type: mock}}]\n  models: [{{name: m, targets: [{{provider: p, model: x}}]}}]\n"
    ))
    .expect("tenant YAML")
}

fn api_key(name: &str, spec: &str) -> ApiKey {
    serde_yaml::from_str(&format!(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: ApiKey\nmetadata: {{name: {name}, namespace: tg-t}}\nspec: {spec}\n"
    ))
    .expect("ApiKey YAML")
}

/// An ApiKey with a fresh key: the issued material and the key itself.
fn issued(name: &str, spec: &str, fill: u8) -> (IssuedApiKey, String) {
    let (key, prefix) = format_key(&[fill; 6], &[fill.wrapping_add(1); 32]);
    let hash = declared_hash(&key);
    (IssuedApiKey { key: api_key(name, spec), prefix, hash }, key)
}

fn input<'a>(tenant: &'a Tenant, keys: &'a [IssuedApiKey]) -> RenderInput<'a> {
    RenderInput { api_keys: keys, ..alone(tenant) }
}

fn render_with(tenant: &Tenant, keys: &[IssuedApiKey]) -> tenantgate_crds::render::RenderedConfig {
    render(input(tenant, keys), &RenderOptions::default()).expect("renders")
}

#[test]
fn the_config_holds_each_keys_hash_and_never_its_value() {
    let t = tenant("{jwt: {issuer: i, audiences: [a], jwksUri: 'https://idp.example/jwks'}, apiKeys: {enabled: true}}");
    let (ci, ci_key) = issued(
        "ci",
        "{roles: [dev], allowedModels: ['m', 'chat-*'], expiresAt: '2030-01-31T00:00:00Z', ipAllowList: [10.0.0.0/8]}",
        1,
    );
    let (bot, bot_key) = issued("bot", "{subject: robot@acme, rotation: '2026-12'}", 2);
    let rendered = render_with(&t, &[ci.clone(), bot.clone()]);
    assert!(rendered.skipped.is_empty(), "{:?}", rendered.skipped);
    let keys = &rendered.config.auth.declared_api_keys;
    assert_eq!(keys.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["bot", "ci"], "sorted by name");
    assert_eq!(keys[1].hash, ci.hash);
    assert_eq!(keys[1].prefix, ci.prefix);
    assert_eq!(keys[1].subject, "apikey:ci", "the default subject follows the object's name");
    assert_eq!(keys[1].roles, ["dev"]);
    assert_eq!(keys[1].allowed_models, ["m", "chat-*"]);
    assert_eq!(keys[1].expires_at_ms(), Ok(Some(1_896_048_000_000)));
    assert_eq!(keys[1].ip_allow_list, ["10.0.0.0/8"]);
    assert_eq!(keys[0].subject, "robot@acme");
    assert_eq!(rendered.config.auth.admin_roles, ["tenant-admin"]);

    let yaml = rendered.config.to_yaml().expect("YAML");
    for key in [&ci_key, &bot_key] {
        let secret = tenantgate_crds::api_key::key_secret(key).expect("secret part");
        assert!(!yaml.contains(secret), "the key's secret is in the config:\n{yaml}");
    }
    assert!(yaml.contains(&ci.hash) && yaml.contains(&bot.hash));
    // The ConfigMap's reader takes it back.
    let parsed = GatewayConfig::from_yaml(&yaml).expect("parses");
    assert_eq!(parsed.auth.declared_api_keys, *keys);

    // A rotation (a new hash) changes the config and its hash; dropping the key removes it.
    let (rotated, _) = issued("ci", "{roles: [dev]}", 3);
    let after = render_with(&t, &[rotated.clone(), bot.clone()]);
    assert_ne!(after.config.config_hash, rendered.config.config_hash);
    let yaml = after.config.to_yaml().expect("YAML");
    assert!(yaml.contains(&rotated.hash) && !yaml.contains(&ci.hash), "the rotated-away hash is gone");
    let gone = render_with(&t, std::slice::from_ref(&bot));
    assert_eq!(gone.config.auth.declared_api_keys.len(), 1);
    assert!(!gone.config.to_yaml().expect("YAML").contains(&ci.hash));
}

#[test]
fn unusable_keys_are_left_out_and_named() {
    let t = tenant("{jwt: {issuer: i, audiences: [a], jwksUri: 'https://idp.example/jwks'}, apiKeys: {enabled: true}}");
    let (bad_time, _) = issued("late", "{expiresAt: 'tomorrow'}", 1);
    let (bad_cidr, _) = issued("net", "{ipAllowList: ['10.0.0.0/33']}", 2);
    let (good, _) = issued("ok", "{}", 3);
    let rendered = render_with(&t, &[bad_time, bad_cidr, good]);
    let names: Vec<_> = rendered.config.auth.declared_api_keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["ok"]);
    let issues: Vec<String> = rendered.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(issues.len(), 2, "{issues:?}");
    assert!(issues[0].contains("ApiKey tg-t/late: spec.expiresAt") && issues[0].contains("RFC 3339"), "{issues:?}");
    assert!(issues[1].contains("ApiKey tg-t/net: spec.ipAllowList") && issues[1].contains("CIDR"), "{issues:?}");

    // A tenant that does not accept API keys uses none, and says why.
    let off = tenant("{jwt: {issuer: i, audiences: [a], jwksUri: 'https://idp.example/jwks'}}");
    let (k, _) = issued("ok", "{}", 3);
    let rendered = render_with(&off, &[k]);
    assert!(rendered.config.auth.declared_api_keys.is_empty());
    assert_eq!(rendered.skipped.len(), 1);
    assert_eq!(rendered.skipped[0].reason.as_str(), "ApiKeysDisabled");
}

#[test]
fn a_tenant_may_use_api_keys_alone() {
    let t = tenant("{apiKeys: {enabled: true}}");
    let rendered = render_with(&t, &[]);
    assert_eq!(rendered.config.auth.jwt, None);
    assert_eq!(rendered.config.auth.admin_roles, ["tenant-admin"]);
    assert!(rendered.config.auth.api_keys_enabled);
    let yaml = rendered.config.to_yaml().expect("YAML");
    assert!(!yaml.contains("jwt"), "{yaml}");
    GatewayConfig::from_yaml(&yaml).expect("parses");

    // Neither JWT nor API keys: nobody could authenticate.
    let none = tenant("{}");
    let e = render(input(&none, &[]), &RenderOptions::default()).expect_err("refused");
    assert!(e.to_string().contains("spec.auth: set jwt, or enable apiKeys"), "{e}");
}

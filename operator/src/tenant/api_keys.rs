//! Step 1b of the pipeline, between dereference and render: the key of each
//! ApiKey of the tenant. The key lives only in the Secret the ApiKey names in
//! `status.secretName` (its own name until the first rotation, then one Secret
//! per rotation token: see [`ApiKey::secret_name`]), owned by the ApiKey so it
//! goes with it. That Secret's annotations carry the key's prefix and SHA-256,
//! and the rotation token it was generated for; the metadata cache is enough to
//! read them, so the operator never reads a Secret's data and only ever
//! creates Secrets (no get, update or patch on Secrets: see the chart's RBAC).
//! The key's value is never logged, put in status, in an Event or in the
//! config: only its hash reaches the config.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tenantgate_crds::api_key::{PREFIX_BYTES, SECRET_BYTES, declared_hash, format_key};
use tenantgate_crds::issue::ConfigIssue;
use tenantgate_crds::render::{IssuedApiKey, RenderedConfig};
use tenantgate_crds::v1alpha1::{ApiKey, ApiKeyStatus, BudgetStatus, conditions};

use super::Error;
use super::dereference::Dependencies;
use super::status::{condition, same_conditions};
use crate::context::Context;
use crate::labels::{FIELD_MANAGER, labels};

/// Key of the API key in its Secret.
pub const API_KEY_SECRET_KEY: &str = "apiKey";
/// Annotation of an ApiKey's Secret: the key's SHA-256 (what the config holds).
pub const HASH_ANNOTATION: &str = "tenantgate.dev/api-key-sha256";
/// Annotation of an ApiKey's Secret: the key's public prefix.
pub const PREFIX_ANNOTATION: &str = "tenantgate.dev/api-key-prefix";
/// Annotation of an ApiKey's Secret: the `spec.rotation` the key was generated for.
pub const ROTATION_ANNOTATION: &str = "tenantgate.dev/api-key-rotation";
/// Label of an ApiKey's Secret naming the ApiKey.
pub const API_KEY_LABEL: &str = "tenantgate.dev/api-key";
/// Longest Secret name the API server takes.
const MAX_NAME: usize = 253;

/// Why an ApiKey has no key in the config (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Condition reason.
    pub reason: &'static str,
    /// What a human can do about it.
    pub message: String,
}

/// What [`issue`] found or made for the tenant's ApiKeys.
#[derive(Clone, Debug, Default)]
pub struct Issuance {
    /// Keys ready for the config.
    pub issued: Vec<IssuedApiKey>,
    /// Keys without one, by ApiKey name.
    pub pending: BTreeMap<String, Pending>,
}

impl Issuance {
    /// Whether some key waits on something that comes by itself (the cache seeing a Secret).
    pub fn waiting(&self) -> bool {
        self.pending.values().any(|p| p.reason == WAITING_FOR_SECRET)
    }
}

const WAITING_FOR_SECRET: &str = "WaitingForSecret";

/// What a Secret's metadata says of the key of `key`: its prefix and hash, or
/// `Err` when the Secret is someone else's or not one the operator made.
fn current(key: &ApiKey, secret: &ObjectMeta) -> Result<(String, String), Pending> {
    let name = key.secret_name();
    let owned = secret.owner_references.iter().flatten().any(|o| Some(&o.uid) == key.meta().uid.as_ref());
    if !owned {
        return Err(Pending {
            reason: "SecretConflict",
            message: format!(
                "Secret {name} exists and does not belong to this ApiKey: the operator never overwrites it; delete or rename it (or rename the ApiKey)"
            ),
        });
    }
    let annotations = secret.annotations.as_ref();
    let get = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
    let rotation = key.spec.rotation.as_deref().unwrap_or_default();
    match (get(PREFIX_ANNOTATION), get(HASH_ANNOTATION), get(ROTATION_ANNOTATION)) {
        (Some(prefix), Some(hash), Some(r)) if r == rotation => Ok((prefix.to_owned(), hash.to_owned())),
        _ => Err(Pending {
            reason: "SecretConflict",
            message: format!(
                "Secret {name} belongs to this ApiKey but does not say which key it holds (its annotations were edited): delete it and a new key is generated"
            ),
        }),
    }
}

/// The Secret of `key` holding `value`, annotated with what the config needs of it.
/// Owned by the ApiKey, so garbage collection deletes it with the object.
pub fn build_api_key_secret(
    key: &ApiKey,
    tenant: &str,
    value: &str,
    prefix: &str,
    extra_labels: &BTreeMap<String, String>,
) -> Secret {
    let mut labels = labels(tenant, "api-key");
    labels.insert(API_KEY_LABEL.into(), key.name_any());
    // Under --secret-label-selector the operator sees only labelled Secrets, its own included.
    labels.extend(extra_labels.clone());
    let annotations = BTreeMap::from([
        (PREFIX_ANNOTATION.into(), prefix.to_owned()),
        (HASH_ANNOTATION.into(), declared_hash(value)),
        (ROTATION_ANNOTATION.into(), key.spec.rotation.clone().unwrap_or_default()),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(key.secret_name()),
            namespace: key.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: ApiKey::api_version(&()).into_owned(),
                kind: ApiKey::kind(&()).into_owned(),
                name: key.name_any(),
                uid: key.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(API_KEY_SECRET_KEY.into(), ByteString(value.as_bytes().to_vec()))])),
        ..Secret::default()
    }
}

/// A fresh key from the operating system's CSPRNG, and its prefix.
fn generate() -> Option<(String, String)> {
    let (mut prefix, mut secret) = ([0u8; PREFIX_BYTES], [0u8; SECRET_BYTES]);
    getrandom::fill(&mut prefix).and_then(|()| getrandom::fill(&mut secret)).ok()?;
    Some(format_key(&prefix, &secret))
}

/// The key of each of `keys` (the tenant's ApiKeys in `namespace`): read from the
/// Secrets' metadata in the cache, or generated into a new Secret when missing.
pub async fn issue(ctx: &Context, tenant: &str, namespace: &str, keys: &[ApiKey]) -> Issuance {
    let mut out = Issuance::default();
    let secrets = ctx.stores.store::<PartialObjectMeta<Secret>>();
    let cached = |name: &str| secrets.and_then(|s| s.get(&ObjectRef::new(name).within(namespace)));
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    for k in keys {
        let found = match cached(&k.secret_name()) {
            Some(s) => current(k, &s.metadata),
            None => issue_one(ctx, &api, tenant, k).await,
        };
        match found {
            Ok((prefix, hash)) => out.issued.push(IssuedApiKey { key: k.clone(), prefix, hash }),
            Err(p) => {
                out.pending.insert(k.name_any(), p);
            }
        }
    }
    out.issued.sort_by_key(|i| i.key.name_any());
    out
}

/// Generates the key of `key` into its Secret, created (never replaced: a Secret of that
/// name that the cache has not seen yet means a key was generated a moment ago).
async fn issue_one(ctx: &Context, api: &Api<Secret>, tenant: &str, key: &ApiKey) -> Result<(String, String), Pending> {
    let name = key.secret_name();
    if name.len() > MAX_NAME {
        return Err(Pending {
            reason: "InvalidValue",
            message: format!(
                "the Secret of a rotated key is named <ApiKey name>-<10 hex digits>, {} characters here, more than {MAX_NAME}: shorten the ApiKey's name",
                name.len()
            ),
        });
    }
    let (value, prefix) = generate().ok_or_else(|| Pending {
        reason: "NoRandomness",
        message: "the operating system gave no randomness to generate a key with".into(),
    })?;
    let secret = build_api_key_secret(key, tenant, &value, &prefix, &ctx.settings.secret_watch_labels);
    match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() }, &secret).await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            return Err(Pending {
                reason: WAITING_FOR_SECRET,
                message: format!("Secret {name} was just created; waiting to see it"),
            });
        }
        Err(e) => return Err(Pending { reason: "SecretWriteFailed", message: format!("creating Secret {name}: {e}") }),
    }
    let previous = key.status.as_ref().and_then(|s| s.secret_name.as_deref()).filter(|p| *p != name);
    let note = match previous {
        Some(old) => format!(
            "generated a new key {prefix} into Secret {name} (rotation); the key in Secret {old} stops working with this config, and that Secret may be deleted (it goes with the ApiKey otherwise)"
        ),
        None => format!("generated the key {prefix} into Secret {name}"),
    };
    let reason = if previous.is_some() { "KeyRotated" } else { "KeyGenerated" };
    publish(ctx, key, EventType::Normal, reason, &note).await;
    tracing::info!(
        tenant,
        apikey = %key.name_any(),
        namespace = key.namespace().unwrap_or_default(),
        secret = %name,
        prefix = %prefix,
        rotated = previous.is_some(),
        "generated an API key into its Secret"
    );
    Ok((prefix, secret.annotations().get(HASH_ANNOTATION).cloned().unwrap_or_default()))
}

/// What an ApiKey's Ready condition says.
#[derive(Debug, PartialEq, Eq)]
struct Readiness<'a> {
    ready: bool,
    reason: &'a str,
    message: String,
}

/// Whether an ApiKey of `tenant` is ready, and why not: the first of the tenant refusing API
/// keys, its key not issued, the render leaving it out (`issue`), and the config not rendered.
fn readiness<'a>(
    tenant: &str,
    enabled: bool,
    pending: Option<&'a Pending>,
    issue: Option<&'a ConfigIssue>,
    in_config: bool,
) -> Readiness<'a> {
    let not = |reason: &'a str, message: String| Readiness { ready: false, reason, message };
    if !enabled {
        return not(
            "ApiKeysDisabled",
            format!("Tenant {tenant} does not accept API keys: set its spec.auth.apiKeys.enabled to true"),
        );
    }
    match (pending, issue) {
        (Some(p), _) => not(p.reason, p.message.clone()),
        (None, Some(i)) => not(i.reason.as_str(), i.to_string()),
        (None, None) if in_config => Readiness {
            ready: true,
            reason: "InConfig",
            message: format!(
                "the key's hash is in Tenant {tenant}'s gateway-config: its gateways, which watch that ConfigMap, accept it within seconds"
            ),
        },
        (None, None) => {
            not("TenantConfigInvalid", format!("Tenant {tenant}'s config cannot be rendered; see its status"))
        }
    }
}

/// Records an Event on the ApiKey (never with the key in it: prefixes and reasons only).
async fn publish(ctx: &Context, key: &ApiKey, type_: EventType, reason: &str, note: &str) {
    super::publish(ctx, &key.object_ref(&()), type_, "IssueKey", reason, note).await;
}

/// What an ApiKey's `status.budget` becomes: the budget its gateway `published` while the key
/// has one, none without. Figures the same as `prev`'s stay as they were, `updatedAt`
/// included, so a publication that changed other budgets writes nothing to this key.
fn budget_status(key: &ApiKey, published: Option<&BudgetStatus>, prev: Option<&BudgetStatus>) -> Option<BudgetStatus> {
    key.spec.budget.as_ref()?;
    let published = published?;
    let undated = |s: &BudgetStatus| BudgetStatus { updated_at: None, ..s.clone() };
    match prev {
        Some(prev) if undated(prev) == undated(published) => Some(prev.clone()),
        _ => Some(published.clone()),
    }
}

/// The Ready condition and budget of each ApiKey of the tenant, and its status, written when it changed.
pub async fn write_statuses(
    ctx: &Context,
    tenant: &str,
    deps: &Dependencies,
    enabled: bool,
    issuance: &Issuance,
    rendered: Option<&RenderedConfig>,
) -> Result<(), Error> {
    for k in &deps.api_keys {
        let name = k.name_any();
        let issued = issuance.issued.iter().find(|i| i.key.name_any() == name);
        let issue: Option<&ConfigIssue> = rendered.and_then(|r| {
            r.skipped
                .iter()
                .find(|i| i.object.as_ref().is_some_and(|o| o.is("ApiKey", k.namespace().as_deref(), &name)))
        });
        let in_config = rendered.is_some_and(|r| r.config.auth.declared_api_keys.iter().any(|d| d.name == name));
        let Readiness { ready, reason, message } =
            readiness(tenant, enabled, issuance.pending.get(&name), issue, in_config);
        let prev = k.status.clone().unwrap_or_default();
        let generation = k.meta().generation;
        let status = ApiKeyStatus {
            observed_generation: generation,
            tenant: Some(tenant.to_owned()),
            subject: Some(k.subject()),
            prefix: issued.map(|i| i.prefix.clone()).or(prev.prefix.clone()),
            secret_name: issued.map(|i| i.key.secret_name()).or(prev.secret_name.clone()),
            budget: budget_status(k, deps.api_key_budgets.get(&name), prev.budget.as_ref()),
            conditions: vec![condition(
                &prev.conditions,
                conditions::READY,
                ready,
                reason,
                message.clone(),
                generation,
            )],
        };
        let was = prev.conditions.iter().find(|c| c.type_ == conditions::READY).map(|c| c.reason.as_str());
        // A problem a human must fix, once when it appears (waiting for the cache fixes itself).
        if !ready && reason != WAITING_FOR_SECRET && was != Some(reason) {
            publish(ctx, k, EventType::Warning, reason, &message).await;
        }
        write_status(ctx, k, &prev, status).await?;
    }
    Ok(())
}

/// Marks an ApiKey in a namespace that belongs to no tenant.
pub async fn write_unbound(ctx: &Context, key: &ApiKey, message: &str) -> Result<(), Error> {
    let prev = key.status.clone().unwrap_or_default();
    let generation = key.meta().generation;
    let status = ApiKeyStatus {
        observed_generation: generation,
        conditions: vec![condition(&prev.conditions, conditions::READY, false, "NoTenant", message, generation)],
        ..ApiKeyStatus::default()
    };
    write_status(ctx, key, &prev, status).await
}

async fn write_status(ctx: &Context, key: &ApiKey, prev: &ApiKeyStatus, status: ApiKeyStatus) -> Result<(), Error> {
    let unchanged = ApiKeyStatus { conditions: Vec::new(), ..status.clone() }
        == ApiKeyStatus { conditions: Vec::new(), ..prev.clone() }
        && same_conditions(&status.conditions, &prev.conditions);
    if unchanged {
        return Ok(());
    }
    let (ns, name) = (key.namespace().unwrap_or_default(), key.name_any());
    let patch = json!({ "apiVersion": ApiKey::api_version(&()), "kind": ApiKey::kind(&()), "status": status });
    Api::<ApiKey>::namespaced(ctx.client.clone(), &ns)
        .patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Status { object: format!("ApiKey {ns}/{name}"), source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_key(rotation: Option<&str>) -> ApiKey {
        let mut k: ApiKey = serde_yaml::from_str(
            "apiVersion: tenantgate.dev/v1alpha1\nkind: ApiKey\nmetadata: {name: ci, namespace: tg-acme, uid: u-1}\nspec: {roles: [dev]}\n",
        )
        .expect("ApiKey");
        k.spec.rotation = rotation.map(str::to_owned);
        k
    }

    #[test]
    fn the_secret_holds_the_key_and_its_annotations_what_the_config_needs() {
        let key = api_key(Some("2026-12"));
        let extra = BTreeMap::from([("tenantgate.dev/watch".to_string(), "true".to_string())]);
        let s = build_api_key_secret(&key, "acme", "tg_abc_secret", "abc", &extra);
        assert_eq!(s.metadata.name, Some(key.secret_name()));
        assert_ne!(key.secret_name(), "ci", "a rotated key has a Secret of its own");
        assert_eq!(api_key(None).secret_name(), "ci");
        assert_eq!(s.metadata.namespace.as_deref(), Some("tg-acme"));
        assert_eq!(s.immutable, Some(true));
        let owner = &s.metadata.owner_references.as_ref().expect("owned")[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("ApiKey", "ci", "u-1"));
        let data = s.data.as_ref().expect("data");
        assert_eq!(data.get(API_KEY_SECRET_KEY).map(|v| v.0.as_slice()), Some(&b"tg_abc_secret"[..]));
        let labels = s.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels.get("tenantgate.dev/watch").map(String::as_str), Some("true"));
        assert_eq!(labels.get(API_KEY_LABEL).map(String::as_str), Some("ci"));
        let annotations = s.metadata.annotations.as_ref().expect("annotations");
        assert!(annotations.values().all(|v| !v.contains("secret")), "the value is in data only: {annotations:?}");

        // The metadata says which key the Secret holds: no read of its data needed.
        let hash = declared_hash("tg_abc_secret");
        assert_eq!(current(&key, &s.metadata), Ok(("abc".into(), hash)));
        // Annotations edited away, or somebody else's Secret of the same name: never taken over.
        let mut edited = s.metadata.clone();
        edited.annotations = None;
        assert_eq!(current(&key, &edited).map_err(|p| p.reason), Err("SecretConflict"));
        let mut foreign = s.metadata.clone();
        foreign.owner_references = None;
        let refused = current(&key, &foreign).expect_err("foreign");
        assert_eq!(refused.reason, "SecretConflict");
        assert!(refused.message.contains(&key.secret_name()), "{}", refused.message);
    }

    #[test]
    fn readiness_names_the_first_thing_in_the_way() {
        use tenantgate_crds::issue::{ObjectRef, Reason};
        let pending = Pending { reason: "SecretConflict", message: "Secret ci exists".into() };
        let issue = ConfigIssue::new(Reason::InvalidValue, "bad CIDR")
            .on(ObjectRef::namespaced("ApiKey", "tg-acme", "ci"))
            .at("spec.ipAllowList");
        let r = readiness("acme", true, None, None, true);
        assert_eq!((r.ready, r.reason), (true, "InConfig"));
        let r = readiness("acme", false, Some(&pending), Some(&issue), true);
        assert_eq!((r.ready, r.reason), (false, "ApiKeysDisabled"));
        assert!(r.message.contains("spec.auth.apiKeys.enabled"), "{}", r.message);
        let r = readiness("acme", true, Some(&pending), Some(&issue), false);
        assert_eq!((r.ready, r.reason, r.message.as_str()), (false, "SecretConflict", "Secret ci exists"));
        let r = readiness("acme", true, None, Some(&issue), false);
        assert_eq!((r.ready, r.reason), (false, "InvalidValue"));
        assert!(r.message.contains("spec.ipAllowList") && r.message.contains("bad CIDR"), "{}", r.message);
        let r = readiness("acme", true, None, None, false);
        assert_eq!((r.ready, r.reason), (false, "TenantConfigInvalid"));
    }

    #[test]
    fn the_budget_status_is_what_was_published_while_the_key_has_a_budget() {
        let budgeted = || {
            let mut k = api_key(None);
            k.spec.budget = Some(tenantgate_crds::v1alpha1::Budget::new("50", Default::default()));
            k
        };
        let at = |spent: &str, updated_at: &str| BudgetStatus {
            amount: "50".into(),
            spent: spent.into(),
            currency: "USD".into(),
            window: "2026-12".into(),
            updated_at: Some(updated_at.into()),
        };
        let first = at("10", "2026-12-06T12:00:00Z");
        assert_eq!(budget_status(&budgeted(), Some(&first), None), Some(first.clone()));
        // The same figures published again (another key's changed): nothing to write.
        let again = at("10", "2026-12-06T12:00:30Z");
        assert_eq!(budget_status(&budgeted(), Some(&again), Some(&first)), Some(first.clone()));
        let more = at("12.5", "2026-12-06T12:01:00Z");
        assert_eq!(budget_status(&budgeted(), Some(&more), Some(&first)), Some(more.clone()));
        // No entry (or one refused as malformed): no figures.
        assert_eq!(budget_status(&budgeted(), None, Some(&first)), None);
        // The budget removed from the spec: cleared, whatever the map still says.
        assert_eq!(budget_status(&api_key(None), Some(&more), Some(&first)), None);
    }

    #[test]
    fn generated_keys_are_fresh_and_well_formed() {
        let (a, prefix) = generate().expect("key");
        let (b, _) = generate().expect("key");
        assert_ne!(a, b);
        assert_eq!(tenantgate_crds::api_key::key_prefix(&a), Some(prefix.as_str()));
    }
}

//! Step 1b of the pipeline, between dereference and render: the key of each
//! ApiKey of the tenant. The key lives only in the Secret named after the
//! ApiKey (owned by it, so it goes with it); that Secret's annotations carry
//! the key's prefix and peppered hash, the rotation token it was generated for
//! and the `gateway-keys` Secret (by uid) whose pepper made the hash. A key is
//! generated when its Secret is missing or was made for another rotation or
//! pepper; otherwise the metadata cache is enough and no request is made.
//! The key's value is never logged, put in status, in an Event or in the
//! config: only its hash reaches the config.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tenantgate_crds::api_key::{PREFIX_BYTES, SECRET_BYTES, format_key, hash, pepper_bytes};
use tenantgate_crds::issue::ConfigIssue;
use tenantgate_crds::render::{API_KEY_PEPPER, GATEWAY_KEYS_SECRET, IssuedApiKey, RenderedConfig};
use tenantgate_crds::v1alpha1::{ApiKey, ApiKeyStatus, conditions};

use super::Error;
use super::status::{condition, same_conditions};
use crate::context::Context;
use crate::labels::{FIELD_MANAGER, labels};

/// Key of the API key in its Secret.
pub const API_KEY_SECRET_KEY: &str = "apiKey";
/// Annotation of an ApiKey's Secret: the key's peppered hash (what the config holds).
pub const HASH_ANNOTATION: &str = "tenantgate.dev/api-key-hash";
/// Annotation of an ApiKey's Secret: the key's public prefix.
pub const PREFIX_ANNOTATION: &str = "tenantgate.dev/api-key-prefix";
/// Annotation of an ApiKey's Secret: the `spec.rotation` the key was generated for.
pub const ROTATION_ANNOTATION: &str = "tenantgate.dev/api-key-rotation";
/// Annotation of an ApiKey's Secret: uid of the `gateway-keys` Secret whose pepper made the hash.
pub const PEPPER_ANNOTATION: &str = "tenantgate.dev/api-key-pepper-uid";
/// Label of an ApiKey's Secret naming the ApiKey.
pub const API_KEY_LABEL: &str = "tenantgate.dev/api-key";

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
    /// Whether some key waits on something that comes by itself (the tenant's keys).
    pub fn waiting(&self) -> bool {
        self.pending.values().any(|p| p.reason == WAITING_FOR_TENANT_KEYS)
    }
}

const WAITING_FOR_TENANT_KEYS: &str = "WaitingForTenantKeys";

/// What a Secret's metadata says of the key of `key`: its prefix and hash when it
/// still fits (same ApiKey, rotation and pepper), `Ok(None)` when a new key is
/// needed, `Err` when the Secret is someone else's.
fn current(key: &ApiKey, secret: &ObjectMeta, pepper_uid: &str) -> Result<Option<(String, String)>, Pending> {
    let owned = secret.owner_references.iter().flatten().any(|o| Some(&o.uid) == key.meta().uid.as_ref());
    if !owned {
        return Err(Pending {
            reason: "SecretConflict",
            message: format!(
                "Secret {} exists and does not belong to this ApiKey: the operator never overwrites it; delete or rename it (or rename the ApiKey)",
                key.name_any()
            ),
        });
    }
    let annotations = secret.annotations.as_ref();
    let get = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
    let rotation = key.spec.rotation.as_deref().unwrap_or_default();
    match (get(PREFIX_ANNOTATION), get(HASH_ANNOTATION)) {
        (Some(prefix), Some(hash))
            if get(ROTATION_ANNOTATION).unwrap_or_default() == rotation
                && get(PEPPER_ANNOTATION) == Some(pepper_uid) =>
        {
            Ok(Some((prefix.to_owned(), hash.to_owned())))
        }
        _ => Ok(None),
    }
}

/// The Secret of `key` holding `value`, annotated with what the config needs of it.
/// Owned by the ApiKey, so garbage collection deletes it with the object.
pub fn build_api_key_secret(
    key: &ApiKey,
    tenant: &str,
    value: &str,
    (prefix, hash): (&str, &str),
    pepper_uid: &str,
    extra_labels: &BTreeMap<String, String>,
) -> Secret {
    let mut labels = labels(tenant, "api-key");
    labels.insert(API_KEY_LABEL.into(), key.name_any());
    // Under --secret-label-selector the operator sees only labelled Secrets, its own included.
    labels.extend(extra_labels.clone());
    let annotations = BTreeMap::from([
        (PREFIX_ANNOTATION.into(), prefix.to_owned()),
        (HASH_ANNOTATION.into(), hash.to_owned()),
        (ROTATION_ANNOTATION.into(), key.spec.rotation.clone().unwrap_or_default()),
        (PEPPER_ANNOTATION.into(), pepper_uid.to_owned()),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(key.name_any()),
            namespace: key.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: ApiKey::api_version(&()).into_owned(),
                kind: ApiKey::kind(&()).into_owned(),
                name: key.name_any(),
                uid: key.uid().unwrap_or_default(),
                controller: Some(true),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
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
/// Secrets' metadata in the cache, or generated into the Secret when missing or stale.
pub async fn issue(ctx: &Context, tenant: &str, namespace: &str, keys: &[ApiKey]) -> Issuance {
    let mut out = Issuance::default();
    let secrets = ctx.stores.store::<PartialObjectMeta<Secret>>();
    let cached = |name: &str| secrets.and_then(|s| s.get(&ObjectRef::new(name).within(namespace)));
    let Some(pepper_uid) = cached(GATEWAY_KEYS_SECRET).and_then(|s| s.uid()) else {
        for k in keys {
            out.pending.insert(k.name_any(), waiting_for_keys(namespace));
        }
        return out;
    };
    let mut stale = Vec::new();
    for k in keys {
        match cached(&k.name_any()).map(|s| current(k, &s.metadata, &pepper_uid)) {
            Some(Ok(Some((prefix, hash)))) => out.issued.push(IssuedApiKey { key: k.clone(), prefix, hash }),
            Some(Err(p)) => {
                out.pending.insert(k.name_any(), p);
            }
            Some(Ok(None)) | None => stale.push(k),
        }
    }
    if stale.is_empty() {
        return out;
    }
    // Something to generate: the pepper, read once, and each Secret as it is now
    // (the cache may not have seen a key generated a moment ago: never generate twice).
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let pepper = match api.get_opt(GATEWAY_KEYS_SECRET).await {
        Ok(Some(s)) if s.uid().as_deref() == Some(pepper_uid.as_str()) => {
            s.data.as_ref().and_then(|d| d.get(API_KEY_PEPPER)).and_then(|v| pepper_bytes(&v.0))
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(namespace, error = %e, "could not read the tenant's API-key pepper");
            None
        }
    };
    let Some(pepper) = pepper else {
        for k in stale {
            out.pending.insert(k.name_any(), waiting_for_keys(namespace));
        }
        return out;
    };
    for k in stale {
        let name = k.name_any();
        match issue_one(ctx, &api, tenant, k, &pepper, &pepper_uid).await {
            Ok(issued) => out.issued.push(issued),
            Err(p) => {
                out.pending.insert(name, p);
            }
        }
    }
    out.issued.sort_by_key(|i| i.key.name_any());
    out
}

fn waiting_for_keys(namespace: &str) -> Pending {
    Pending {
        reason: WAITING_FOR_TENANT_KEYS,
        message: format!("the tenant's {GATEWAY_KEYS_SECRET} Secret in {namespace} does not exist yet"),
    }
}

async fn issue_one(
    ctx: &Context,
    api: &Api<Secret>,
    tenant: &str,
    key: &ApiKey,
    pepper: &[u8],
    pepper_uid: &str,
) -> Result<IssuedApiKey, Pending> {
    let name = key.name_any();
    let failed = |what: &str, e: kube::Error| Pending {
        reason: "SecretWriteFailed",
        message: format!("{what} Secret {name}: {e}"),
    };
    let live = api.get_opt(&name).await.map_err(|e| failed("reading", e))?;
    if let Some(live) = &live
        && let Some((prefix, hash)) = current(key, &live.metadata, pepper_uid)?
    {
        return Ok(IssuedApiKey { key: key.clone(), prefix, hash });
    }
    let (value, prefix) = generate().ok_or_else(|| Pending {
        reason: "NoRandomness",
        message: "the operating system gave no randomness to generate a key with".into(),
    })?;
    let hash = hash(pepper, &value);
    let secret =
        build_api_key_secret(key, tenant, &value, (&prefix, &hash), pepper_uid, &ctx.settings.secret_watch_labels);
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&secret))
        .await
        .map_err(|e| failed("writing", e))?;
    let rotated = live.is_some();
    let note = format!(
        "generated {} key {prefix} into Secret {name}{}",
        if rotated { "a new" } else { "the" },
        if rotated { " (rotation)" } else { "" }
    );
    publish(ctx, key, EventType::Normal, if rotated { "KeyRotated" } else { "KeyGenerated" }, &note).await;
    tracing::info!(
        tenant,
        apikey = %name,
        namespace = key.namespace().unwrap_or_default(),
        prefix = %prefix,
        rotated,
        "generated an API key into its Secret"
    );
    Ok(IssuedApiKey { key: key.clone(), prefix, hash })
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
                "the key's hash is in Tenant {tenant}'s gateway-config: gateways accept it once they reload it (the kubelet refreshes the volume within about a minute)"
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

/// The Ready condition of each ApiKey of the tenant, and its status, written when it changed.
pub async fn write_statuses(
    ctx: &Context,
    tenant: &str,
    keys: &[ApiKey],
    enabled: bool,
    issuance: &Issuance,
    rendered: Option<&RenderedConfig>,
) -> Result<(), Error> {
    for k in keys {
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
            secret_name: issued.map(|_| name.clone()).or(prev.secret_name.clone()),
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
        // A problem a human must fix, once when it appears (waiting for gateway-keys fixes itself).
        if !ready && reason != WAITING_FOR_TENANT_KEYS && was != Some(reason) {
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
        let s = build_api_key_secret(&key, "acme", "tg_abc_secret", ("abc", "h1"), "pepper-uid", &extra);
        assert_eq!(s.metadata.name.as_deref(), Some("ci"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("tg-acme"));
        let owner = &s.metadata.owner_references.as_ref().expect("owned")[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("ApiKey", "ci", "u-1"));
        let data = s.data.as_ref().expect("data");
        assert_eq!(data.get(API_KEY_SECRET_KEY).map(|v| v.0.as_slice()), Some(&b"tg_abc_secret"[..]));
        let labels = s.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels.get("tenantgate.dev/watch").map(String::as_str), Some("true"));
        assert_eq!(labels.get(API_KEY_LABEL).map(String::as_str), Some("ci"));
        let annotations = s.metadata.annotations.as_ref().expect("annotations");
        assert!(annotations.values().all(|v| !v.contains("secret")), "the value is in data only: {annotations:?}");

        // What the Secret says fits the same rotation and pepper only.
        assert_eq!(current(&key, &s.metadata, "pepper-uid"), Ok(Some(("abc".into(), "h1".into()))));
        assert_eq!(current(&api_key(Some("2027-01")), &s.metadata, "pepper-uid"), Ok(None), "rotated");
        assert_eq!(current(&api_key(None), &s.metadata, "pepper-uid"), Ok(None), "rotation cleared");
        assert_eq!(current(&key, &s.metadata, "another-pepper"), Ok(None), "gateway-keys was replaced");
        // Somebody else's Secret of the same name is never taken over.
        let mut foreign = s.metadata.clone();
        foreign.owner_references = None;
        assert_eq!(current(&key, &foreign, "pepper-uid").map_err(|p| p.reason), Err("SecretConflict"));
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
    fn generated_keys_are_fresh_and_well_formed() {
        let (a, prefix) = generate().expect("key");
        let (b, _) = generate().expect("key");
        assert_ne!(a, b);
        assert_eq!(tenantgate_crds::api_key::key_prefix(&a), Some(prefix.as_str()));
    }
}

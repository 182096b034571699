//! The Secrets the operator generates: the tenant's keys and the stdio
//! bridges' tokens. Each is created once and never rewritten.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use tenantgate_crds::render::{API_KEY_PEPPER, BRIDGE_TOKEN_KEY, GATEWAY_KEYS_SECRET, TOKEN_ENCRYPTION_KEY};
use tenantgate_crds::v1alpha1::McpConnection;

use super::{BuildError, BuildInput, meta};

/// `len` bytes from the operating system's CSPRNG, base64. The one way a
/// build can fail: without randomness there is no key (an all-zero one would
/// be worse than none).
fn random_key(secret: &str, len: usize) -> Result<String, BuildError> {
    use base64::Engine;
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes)
        .map(|()| base64::engine::general_purpose::STANDARD.encode(&bytes))
        .map_err(|_| BuildError { kind: format!("Secret {secret}"), message: "no randomness available".into() })
}

fn generated_secret(input: &BuildInput<'_>, mut metadata: ObjectMeta, data: Vec<(&str, String)>) -> Secret {
    // Under --secret-label-selector the operator sees only labelled Secrets, its own included.
    metadata.labels.get_or_insert_default().extend(input.settings.secret_watch_labels.clone());
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        string_data: Some(data.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
        ..Secret::default()
    }
}

/// Per-tenant keys. Never rewritten, so stored tokens and API key hashes survive.
pub fn build_gateway_keys(input: &BuildInput<'_>) -> Result<Secret, BuildError> {
    let data = vec![
        (TOKEN_ENCRYPTION_KEY, random_key(GATEWAY_KEYS_SECRET, 32)?),
        (API_KEY_PEPPER, random_key(GATEWAY_KEYS_SECRET, 32)?),
    ];
    Ok(generated_secret(input, meta(input, GATEWAY_KEYS_SECRET, "keys"), data))
}

/// The token the gateway sends to a stdio connection's bridge and the bridge
/// requires, in the Secret `name`. Owned by the McpConnection, so it goes
/// when the connection does.
pub fn build_bridge_token(
    input: &BuildInput<'_>,
    connection: &McpConnection,
    name: &str,
) -> Result<Secret, BuildError> {
    let mut metadata = meta(input, name, "mcp-bridge");
    metadata.labels.get_or_insert_default().insert("tenantgate.dev/mcp-connection".into(), connection.name_any());
    metadata.owner_references = Some(vec![OwnerReference {
        api_version: McpConnection::api_version(&()).into_owned(),
        kind: McpConnection::kind(&()).into_owned(),
        name: connection.name_any(),
        uid: connection.uid().unwrap_or_default(),
        ..OwnerReference::default()
    }]);
    Ok(generated_secret(input, metadata, vec![(BRIDGE_TOKEN_KEY, random_key(name, 32)?)]))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn keys_are_owned_and_created_only_when_missing() {
        let keys = built::<Secret>(GATEWAY_KEYS_SECRET);
        assert_eq!(keys.metadata.owner_references.as_ref().map(|o| o[0].name.as_str()), Some("acme"));
        let existing = BTreeMap::from([(GATEWAY_KEYS_SECRET.to_string(), "1".to_string())]);
        assert!(stack_of(&tenant(""), &[], &existing).all::<Secret>().is_empty(), "never rewritten");
        // Under --secret-label-selector the keys carry the label, so the operator sees its own Secret.
        let settings = BuildSettings {
            secret_watch_labels: BTreeMap::from([("tenantgate.dev/watch".into(), "true".into())]),
            ..BuildSettings::default()
        };
        let t = tenant("");
        let r = rendered(&t, &[]);
        let labelled = build_gateway_keys(&input(&t, &r, &settings)).expect("keys");
        let labels = labelled.metadata.labels.unwrap_or_default();
        assert_eq!(labels.get("tenantgate.dev/watch").map(String::as_str), Some("true"));
        assert_eq!(labels.get("tenantgate.dev/tenant").map(String::as_str), Some("acme"), "{labels:?}");
    }
}

//! The tenant's generated keys.

use k8s_openapi::api::core::v1::Secret;
use tenantgate_crds::render::{API_KEY_PEPPER, GATEWAY_KEYS_SECRET, TOKEN_ENCRYPTION_KEY};

use super::{BuildError, BuildInput, meta};

/// Per-tenant keys from the operating system's CSPRNG. Created once; the
/// operator never rewrites it, so stored tokens and API key hashes survive.
/// The one builder that can fail: without randomness there is no key.
pub fn build_gateway_keys(input: &BuildInput<'_>) -> Result<Secret, BuildError> {
    use base64::Engine;
    let key = |len: usize| {
        let mut bytes = vec![0u8; len];
        // The OS CSPRNG does not fail on supported platforms; an all-zero key would, so refuse it.
        getrandom::fill(&mut bytes).map(|()| base64::engine::general_purpose::STANDARD.encode(&bytes))
    };
    let (Ok(encryption), Ok(pepper)) = (key(32), key(32)) else {
        return Err(BuildError {
            kind: format!("Secret {GATEWAY_KEYS_SECRET}"),
            message: "no randomness available".into(),
        });
    };
    let mut metadata = meta(input, GATEWAY_KEYS_SECRET, "keys");
    // Under --secret-label-selector the operator sees only labelled Secrets, its own included.
    metadata.labels.get_or_insert_default().extend(input.settings.secret_watch_labels.clone());
    Ok(Secret {
        metadata,
        type_: Some("Opaque".into()),
        string_data: Some([(TOKEN_ENCRYPTION_KEY.into(), encryption), (API_KEY_PEPPER.into(), pepper)].into()),
        ..Secret::default()
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn keys_are_owned_and_created_only_when_missing() {
        let keys = built::<Secret>(GATEWAY_KEYS_SECRET);
        assert_eq!(keys.metadata.owner_references.as_ref().map(|o| o[0].name.as_str()), Some("acme"));
        let existing = stack_with(&tenant(""), &BuildSettings::default());
        assert!(existing.all::<Secret>().is_empty(), "never rewritten");
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

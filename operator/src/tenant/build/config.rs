//! The rendered GatewayConfig, as the gateway pods mount it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::{BuildError, BuildInput, meta};
use crate::labels::{CONFIG_HASH_ANNOTATION, CONFIG_KEY, GATEWAY_CONFIG, GATEWAY_SPEND};

/// The rendered GatewayConfig (no secret values: only file paths). Fails only
/// if the config does not serialize as YAML (a bug).
pub fn build_config_map(input: &BuildInput<'_>) -> Result<ConfigMap, BuildError> {
    let config = &input.rendered.config;
    let yaml = config.to_yaml().map_err(|e| BuildError { kind: "ConfigMap".into(), message: e.to_string() })?;
    let mut metadata = meta(input, GATEWAY_CONFIG, "config");
    metadata.annotations = Some(BTreeMap::from([(CONFIG_HASH_ANNOTATION.into(), config.config_hash.clone())]));
    Ok(ConfigMap { metadata, data: Some(BTreeMap::from([(CONFIG_KEY.into(), yaml)])), ..ConfigMap::default() })
}

/// The ConfigMap the gateway publishes its budget spend in, without data: the
/// gateway owns its `data` (its own field manager), the operator its metadata,
/// so applying it never undoes what the gateway wrote. Owned by the Tenant.
pub fn build_spend_map(input: &BuildInput<'_>) -> ConfigMap {
    ConfigMap { metadata: meta(input, GATEWAY_SPEND, "budget"), ..ConfigMap::default() }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn the_config_map_carries_the_rendered_config_and_its_hash() {
        let t = tenant("");
        let s = stack_of(&t, &[], &BTreeMap::new());
        let map = s.get::<ConfigMap>(GATEWAY_CONFIG).expect("config map");
        let hash = rendered(&t, &[]).config.config_hash;
        assert_eq!(map.metadata.annotations.as_ref().and_then(|a| a.get(CONFIG_HASH_ANNOTATION)), Some(&hash));
        let yaml = map.data.as_ref().and_then(|d| d.get(CONFIG_KEY)).expect("config");
        let config: tenantgate_crds::config::GatewayConfig = serde_yaml::from_str(yaml).expect("parses");
        assert_eq!(config.config_hash, hash);
    }

    #[test]
    fn the_spend_map_is_applied_without_data() {
        let t = tenant("");
        let s = stack_of(&t, &[], &BTreeMap::new());
        let map = s.get::<ConfigMap>(GATEWAY_SPEND).expect("spend map");
        assert_eq!(map.data, None, "the gateway's data is never overwritten");
        assert!(map.metadata.owner_references.is_some());
    }
}

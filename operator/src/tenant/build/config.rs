//! The rendered GatewayConfig, as the gateway pods mount it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::{BuildError, BuildInput, meta};
use crate::labels::{CONFIG_HASH_ANNOTATION, CONFIG_KEY, GATEWAY_CONFIG};

/// The rendered GatewayConfig (no secret values: only file paths). Fails only
/// if the config does not serialize as YAML (a bug).
pub fn build_config_map(input: &BuildInput<'_>) -> Result<ConfigMap, BuildError> {
    let config = &input.rendered.config;
    let yaml = config.to_yaml().map_err(|e| BuildError { kind: "ConfigMap".into(), message: e.to_string() })?;
    let mut metadata = meta(input, GATEWAY_CONFIG, "config");
    metadata.annotations = Some(BTreeMap::from([(CONFIG_HASH_ANNOTATION.into(), config.config_hash.clone())]));
    Ok(ConfigMap { metadata, data: Some(BTreeMap::from([(CONFIG_KEY.into(), yaml)])), ..ConfigMap::default() })
}

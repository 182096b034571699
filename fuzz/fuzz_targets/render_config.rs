//! CRD YAML (Tenant, McpConnection, PromptPolicy, Secret documents) read as
//! `gateway --manifests DIR` and `tenantgate-operator render` read it, and
//! rendered into each tenant's GatewayConfig, in cluster and local mode.
//!
//! Invariants: reading and rendering are deterministic (the same objects give
//! the same config, byte for byte, twice); the config is sealed (its hash
//! matches its content) and survives the ConfigMap round trip through YAML.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenantgate_crds::config::GatewayConfig;
use tenantgate_crds::manifests::ManifestSet;
use tenantgate_crds::render::{RenderMode, RenderOptions};

fn read(text: &str) -> Option<ManifestSet> {
    let mut set = ManifestSet::default();
    set.add_yaml("fuzz.yaml", text).ok()?;
    Some(set)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(set) = read(text) else { return };
    let twin = read(text).expect("the same YAML reads twice");
    for mode in [RenderMode::Cluster, RenderMode::Local] {
        let options = RenderOptions { mode, ..RenderOptions::default() };
        for (tenant, twin_tenant) in set.tenants.iter().zip(&twin.tenants) {
            let first = set.render(tenant, "tenantgate-system", &options);
            let second = twin.render(twin_tenant, "tenantgate-system", &options);
            assert_eq!(first, second, "rendering is not deterministic");
            let Ok(rendered) = first else { continue };
            let config = &rendered.config;
            assert!(config.hash_matches(), "the rendered config is not sealed");
            let yaml = config.to_yaml().expect("a config serializes");
            let back = GatewayConfig::from_yaml(&yaml).expect("a rendered config reads back");
            assert_eq!(&back, config, "the ConfigMap round trip changed the config");
        }
    }
});

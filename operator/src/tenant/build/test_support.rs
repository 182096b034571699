//! Tenants, connections and stacks the builders' tests share.

pub(super) use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodSpec;
use tenantgate_crds::render::{RenderInput, RenderOptions, RenderedConfig, render};
use tenantgate_crds::v1alpha1::{McpConnection, Tenant};

pub(super) use super::{BuildInput, BuildSettings, TenantStack, build};
use crate::labels::GATEWAY;

pub(crate) fn tenant(extra: &str) -> Tenant {
    let mut t: Tenant = serde_yaml::from_str(&format!(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: acme, uid: 1234}}\nspec:\n  auth:\n    jwt: {{issuer: 'https://idp', audiences: [a], jwksUri: 'https://idp.example/jwks'}}\n  providers:\n    - {{name: openai, type: openai, baseUrl: 'https://api.openai.com/v1', apiKeySecretRef: {{name: openai-key, key: apiKey}}}}\n    - {{name: vllm, type: openai, baseUrl: 'http://vllm.models.svc:8000/v1'}}\n  models: [{{name: chat, targets: [{{provider: openai, model: gpt}}]}}]\n{extra}"
    ))
    .expect("tenant YAML");
    t.metadata.uid = Some("1234".into());
    t
}

pub(crate) fn rendered(t: &Tenant, conns: &[McpConnection]) -> RenderedConfig {
    render(
        RenderInput {
            tenant: t,
            mcp_connections: conns,
            tenant_policies: &[],
            global_policies: &[],
            model_prices: &[],
            api_keys: &[],
        },
        &RenderOptions::default(),
    )
    .expect("renders")
}

/// No Secret versions: the referenced Secrets are absent.
pub(crate) static NO_VERSIONS: BTreeMap<String, String> = BTreeMap::new();

/// The build input of `t` as rendered in `r`, under `settings`, without
/// McpConnections, Secret versions or the generated keys.
pub(crate) fn input<'a>(t: &'a Tenant, r: &'a RenderedConfig, settings: &'a BuildSettings) -> BuildInput<'a> {
    BuildInput {
        tenant: t,
        rendered: r,
        mcp_connections: &[],
        secret_versions: &NO_VERSIONS,
        generate_secrets: false,
        settings,
    }
}

/// The stack of `t` under `settings` (no McpConnections, no generated keys).
pub(crate) fn stack_with(t: &Tenant, settings: &BuildSettings) -> TenantStack {
    build(&input(t, &rendered(t, &[]), settings)).expect("builds")
}

pub(crate) fn stack_of(t: &Tenant, conns: &[McpConnection], versions: &BTreeMap<String, String>) -> TenantStack {
    let r = rendered(t, conns);
    let settings = BuildSettings::default();
    let i = BuildInput {
        mcp_connections: conns,
        secret_versions: versions,
        generate_secrets: true,
        ..input(t, &r, &settings)
    };
    build(&i).expect("builds")
}

/// The stack of the plain test tenant: no McpConnections, no Secrets.
pub(crate) fn plain_stack() -> TenantStack {
    stack_of(&tenant(""), &[], &NO_VERSIONS)
}

/// The object of kind `K` named `name` in [`plain_stack`].
pub(crate) fn built<K>(name: &str) -> K
where
    K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
{
    plain_stack().get::<K>(name).unwrap_or_else(|| panic!("the plain stack has no {} {name}", K::kind(&())))
}

/// A stdio McpConnection `everything` in tg-acme (it gets a bridge Deployment).
pub(super) fn stdio_connection() -> McpConnection {
    serde_yaml::from_str(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: McpConnection\nmetadata: {name: everything, namespace: tg-acme}\nspec: {transport: stdio, stdio: {image: 'node:22', command: [npx, server]}}\n",
    )
    .expect("yaml")
}

/// The gateway Deployment of a stack.
pub(super) fn gateway_deployment(stack: &TenantStack) -> Deployment {
    stack.get::<Deployment>(GATEWAY).expect("the gateway Deployment")
}

/// The gateway's pod spec.
pub(super) fn pod(stack: &TenantStack) -> PodSpec {
    gateway_deployment(stack).spec.as_ref().and_then(|s| s.template.spec.clone()).expect("pod spec")
}

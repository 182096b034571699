//! Fixtures for tests against real dependencies.
//!
//! The local control plane is started by `e2e/with-cluster` (what `make
//! test-cluster` runs), which exports `KUBECONFIG` for the admin kubeconfig.
//! These helpers give tests an admin [`Client`], a client acting as a
//! ServiceAccount (for RBAC tests) and throw-away labelled namespaces.
#![forbid(unsafe_code)]

pub mod operator;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config, ResourceExt};

/// Field manager of objects the tests apply.
pub const TEST_MANAGER: &str = "tenantgate-tests";
/// Label on every namespace a test creates, so leftovers can be found.
pub const TEST_LABEL: &str = "tenantgate.dev/test";

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn kubeconfig_path() -> anyhow::Result<PathBuf> {
    match std::env::var_os("KUBECONFIG") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => bail!(
            "KUBECONFIG is not set: run these tests with `make test-cluster` (e2e/with-cluster starts the control plane)"
        ),
    }
}

async fn admin_config() -> anyhow::Result<Config> {
    let path = kubeconfig_path()?;
    let kubeconfig = Kubeconfig::read_from(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

/// A client with the admin kubeconfig of the local control plane.
pub async fn admin_client() -> anyhow::Result<Client> {
    Ok(Client::try_from(admin_config().await?)?)
}

/// A client that authenticates as ServiceAccount `namespace/name` with a
/// short-lived token from the TokenRequest API, as a pod would.
pub async fn client_as_service_account(admin: &Client, namespace: &str, name: &str) -> anyhow::Result<Client> {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
        ..Default::default()
    };
    let token = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("token for ServiceAccount {namespace}/{name}"))?
        .status
        .and_then(|s| s.token)
        .context("TokenRequest without a token")?;
    let mut config = admin_config().await?;
    config.auth_info = kube::config::AuthInfo { token: Some(token.into()), ..Default::default() };
    Ok(Client::try_from(config)?)
}

/// A unique, DNS-label-safe name with `prefix`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{:x}{n}", std::process::id(), nanos % 0xfffff)
}

/// A namespace that exists for one test. Call [`TestNamespace::delete`] at the end.
#[allow(missing_debug_implementations)]
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates a labelled namespace named after `prefix`.
    pub async fn create(client: &Client, prefix: &str) -> anyhow::Result<Self> {
        let name = unique_name(prefix);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { TEST_LABEL: "true" } }
        }))?;
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
        Ok(Self { name, client: client.clone() })
    }

    /// Deletes the namespace (the namespace controller removes what is in it).
    pub async fn delete(self) -> anyhow::Result<()> {
        Api::<Namespace>::all(self.client).delete(&self.name, &DeleteParams::background()).await?;
        Ok(())
    }
}

/// Applies the committed CRDs (charts/tenantgate/crds) and waits until each is Established.
pub async fn install_crds(client: &Client) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(repo_root().join("charts/tenantgate/crds/crds.yaml"))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let crd: CustomResourceDefinition = serde::Deserialize::deserialize(doc)?;
        let name = crd.name_any();
        crds.patch(&name, &PatchParams::apply(TEST_MANAGER).force(), &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        names.push(name);
    }
    for name in &names {
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not Established within 30s"))??;
    }
    Ok(names)
}

/// Server-side applies every document of `text` with strict field validation,
/// creating each in `namespace_override` when given. Returns the applied objects.
pub async fn apply_yaml(
    client: &Client,
    text: &str,
    namespace_override: Option<&str>,
) -> Result<Vec<DynamicObject>, ApplyError> {
    let mut applied = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(doc).map_err(|e| ApplyError::Input(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let mut object: DynamicObject = serde_json::from_value(value).map_err(|e| ApplyError::Input(e.to_string()))?;
        let types = object.types.clone().ok_or_else(|| ApplyError::Input("document without apiVersion/kind".into()))?;
        let gvk = GroupVersionKind::try_from(&types).map_err(|e| ApplyError::Input(e.to_string()))?;
        let (resource, caps) = pinned_kind(client, &gvk).await.map_err(ApplyError::Api)?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => {
                if let Some(ns) = namespace_override {
                    object.metadata.namespace = Some(ns.to_owned());
                }
                let ns = object.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                Api::namespaced_with(client.clone(), &ns, &resource)
            }
        };
        let name = object.name_any();
        let params = PatchParams::apply(TEST_MANAGER).force().validation_strict();
        applied.push(api.patch(&name, &params, &Patch::Apply(&object)).await.map_err(ApplyError::Api)?);
    }
    Ok(applied)
}

/// Why [`apply_yaml`] failed.
#[derive(Debug, thiserror_impl::Error)]
pub enum ApplyError {
    /// The YAML itself is unusable.
    #[error("bad input: {0}")]
    Input(String),
    /// The API server refused it.
    #[error("{0}")]
    Api(kube::Error),
}

mod thiserror_impl {
    pub use thiserror::Error;
}

//! Reading CRD YAML as the API server would judge it, without a cluster.
//!
//! Every document is decoded strictly (wrong types and unknown fields are
//! errors) and then checked against the CEL rules of its CRD, evaluated by
//! kube's client-side CEL validator, so `render` refuses what `kubectl apply`
//! would refuse, with the file, the object and the field path in the message.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use kube::core::cel::Validator;
use kube::{CustomResourceExt, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::issue::{ConfigIssue, ObjectRef, Reason};
use crate::render::{RenderError, RenderInput, RenderOptions, RenderedConfig, render, tenant_namespace};
use crate::v1alpha1::{API_VERSION, ApiKey, GROUP, McpConnection, ModelPrice, PromptPolicy, Tenant};

/// Why a document was refused: the issue, and where its document is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{source_name} (document {document}): {issue}")]
pub struct ManifestError {
    /// File (or other source) the document came from.
    pub source_name: String,
    /// 1-based index of the document in the source.
    pub document: usize,
    /// The object (when known), field (when known), reason and message.
    pub issue: ConfigIssue,
}

/// All errors of one load, each naming its file, object and field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ManifestErrors(pub Vec<ManifestError>);

/// The objects read from a set of YAML sources.
#[derive(Clone, Debug, Default)]
pub struct ManifestSet {
    /// Tenants.
    pub tenants: Vec<Tenant>,
    /// McpConnections.
    pub mcp_connections: Vec<McpConnection>,
    /// PromptPolicies.
    pub prompt_policies: Vec<PromptPolicy>,
    /// ModelPrices (cluster-scoped).
    pub model_prices: Vec<ModelPrice>,
    /// Secrets (local mode lays them out as the projected volume would).
    pub secrets: Vec<Secret>,
    /// `Kind name` of documents of other kinds, which are not Tenantgate's business.
    pub ignored: Vec<String>,
    seen: BTreeSet<(String, String, String)>,
}

impl ManifestSet {
    /// Reads every document of one YAML source. On error nothing of the source is kept.
    pub fn add_yaml(&mut self, source_name: &str, text: &str) -> Result<(), ManifestErrors> {
        let mut staged = ManifestSet { seen: self.seen.clone(), ..Default::default() };
        let mut errors = Vec::new();
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let mut at = Location { source_name, document: index + 1, object: None };
            if let Err(mut e) = staged.add_document(document, &mut at) {
                // A syntax error ends the stream: serde_yaml's document iterator
                // would yield the same error forever (found by fuzzing: an OOM).
                let syntax = e.iter().any(|e| e.issue.message.starts_with(INVALID_YAML));
                errors.append(&mut e);
                if syntax {
                    break;
                }
            }
        }
        if !errors.is_empty() {
            return Err(ManifestErrors(errors));
        }
        self.seen = staged.seen;
        self.tenants.append(&mut staged.tenants);
        self.mcp_connections.append(&mut staged.mcp_connections);
        self.prompt_policies.append(&mut staged.prompt_policies);
        self.model_prices.append(&mut staged.model_prices);
        self.secrets.append(&mut staged.secrets);
        self.ignored.append(&mut staged.ignored);
        Ok(())
    }

    fn add_document(
        &mut self,
        document: serde_yaml::Deserializer<'_>,
        at: &mut Location<'_>,
    ) -> Result<(), Vec<ManifestError>> {
        let yaml: serde_yaml::Value = serde::Deserialize::deserialize(document)
            .map_err(|e| vec![at.error(None, Reason::InvalidYaml, format!("{INVALID_YAML}{e}"))])?;
        if yaml.is_null() {
            return Ok(());
        }
        let value: Value = serde_json::to_value(&yaml)
            .map_err(|e| vec![at.error(None, Reason::InvalidYaml, format!("not a JSON-compatible document: {e}"))])?;
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        let api_version = text(&value, "apiVersion")
            .ok_or_else(|| vec![at.error(Some("apiVersion"), Reason::InvalidSpec, "is required".into())])?;
        let kind = text(&value, "kind")
            .ok_or_else(|| vec![at.error(Some("kind"), Reason::InvalidSpec, "is required".into())])?;
        let metadata = value.get("metadata").cloned().unwrap_or(Value::Null);
        let name = text(&metadata, "name").unwrap_or_default();
        let namespace = text(&metadata, "namespace");
        at.object = Some(ObjectRef { kind: kind.clone(), namespace: namespace.clone(), name: name.clone() });
        if name.is_empty() {
            return Err(vec![at.error(Some("metadata.name"), Reason::InvalidSpec, "is required".into())]);
        }
        // What the API server enforces on every object, so local mode reads no name a cluster would refuse.
        if !is_dns_subdomain(&name) {
            return Err(vec![at.error(
                Some("metadata.name"),
                Reason::InvalidSpec,
                format!(
                    "{name:?} must be a lowercase RFC 1123 subdomain (a-z, 0-9, '-' and '.', at most 253 characters)"
                ),
            )]);
        }
        if let Some(ns) = namespace.as_deref().filter(|ns| !is_dns_label(ns)) {
            return Err(vec![at.error(
                Some("metadata.namespace"),
                Reason::InvalidSpec,
                format!("{ns:?} must be a lowercase RFC 1123 label (a-z, 0-9 and '-', at most 63 characters)"),
            )]);
        }

        let ours = api_version.split('/').next() == Some(GROUP);
        if ours && api_version != API_VERSION {
            return Err(vec![at.error(
                Some("apiVersion"),
                Reason::InvalidSpec,
                format!("unsupported version {api_version:?}, expected {API_VERSION:?}"),
            )]);
        }
        let namespaced =
            matches!((ours, kind.as_str()), (true, "McpConnection" | "PromptPolicy" | "ApiKey") | (false, "Secret"));
        if namespaced && namespace.is_none() {
            return Err(vec![at.error(
                Some("metadata.namespace"),
                Reason::InvalidSpec,
                "is required: the namespace decides which tenant the object belongs to".into(),
            )]);
        }
        if (ours || kind == "Secret")
            && !self.seen.insert((kind.clone(), namespace.clone().unwrap_or_default(), name.clone()))
        {
            return Err(vec![at.error(None, Reason::Duplicate, "is defined more than once".into())]);
        }
        match (ours, kind.as_str(), api_version.as_str()) {
            (true, "Tenant", _) => self.tenants.push(decode_custom::<Tenant>(&value, at)?),
            (true, "McpConnection", _) => self.mcp_connections.push(decode_custom::<McpConnection>(&value, at)?),
            (true, "PromptPolicy", _) => self.prompt_policies.push(decode_custom::<PromptPolicy>(&value, at)?),
            (true, "ModelPrice", _) => self.model_prices.push(decode_custom::<ModelPrice>(&value, at)?),
            // Checked, but not used: only the operator generates an ApiKey's key (a local
            // gateway takes keys minted through its admin API).
            (true, "ApiKey", _) => {
                decode_custom::<ApiKey>(&value, at)?;
                self.ignored.push(format!("ApiKey {name} (keys are generated by the operator in a cluster)"));
            }
            (true, other, _) => {
                return Err(vec![at.error(
                    Some("kind"),
                    Reason::InvalidSpec,
                    format!(
                        "unknown kind {other:?} in {GROUP}: expected Tenant, McpConnection, PromptPolicy, ModelPrice or ApiKey"
                    ),
                )]);
            }
            (false, "Secret", "v1") => self.secrets.push(decode_strict::<Secret>(&value, at)?),
            (false, other, _) => self.ignored.push(format!("{other} {name}")),
        }
        Ok(())
    }

    /// The tenant named `name`.
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.name_any() == name)
    }

    /// Renders one tenant's config from the objects of this set; global
    /// PromptPolicies are those in `operator_namespace`.
    pub fn render(
        &self,
        tenant: &Tenant,
        operator_namespace: &str,
        options: &RenderOptions,
    ) -> Result<RenderedConfig, RenderError> {
        let namespace = tenant_namespace(tenant);
        let in_ns = |ns: &str, obj: &Option<String>| obj.as_deref() == Some(ns);
        let connections: Vec<McpConnection> =
            self.mcp_connections.iter().filter(|c| in_ns(&namespace, &c.metadata.namespace)).cloned().collect();
        let tenant_policies: Vec<PromptPolicy> =
            self.prompt_policies.iter().filter(|p| in_ns(&namespace, &p.metadata.namespace)).cloned().collect();
        let global_policies: Vec<PromptPolicy> =
            self.prompt_policies.iter().filter(|p| in_ns(operator_namespace, &p.metadata.namespace)).cloned().collect();
        render(
            RenderInput {
                tenant,
                mcp_connections: &connections,
                tenant_policies: &tenant_policies,
                global_policies: &global_policies,
                model_prices: &self.model_prices,
                api_keys: &[],
            },
            options,
        )
    }
}

/// How a YAML syntax error's message starts.
const INVALID_YAML: &str = "invalid YAML: ";

/// An RFC 1123 label: what Kubernetes requires of namespace names.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 subdomain: what Kubernetes requires of most object names.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

struct Location<'a> {
    source_name: &'a str,
    document: usize,
    object: Option<ObjectRef>,
}

impl Location<'_> {
    fn error(&self, field: Option<&str>, reason: Reason, message: String) -> ManifestError {
        ManifestError {
            source_name: self.source_name.to_owned(),
            document: self.document,
            issue: ConfigIssue {
                object: self.object.clone().map(Box::new),
                field: field.map(str::to_owned),
                reason,
                message,
            },
        }
    }
}

/// Decodes a custom resource strictly, then checks its CRD's CEL rules.
fn decode_custom<K>(value: &Value, at: &Location<'_>) -> Result<K, Vec<ManifestError>>
where
    K: DeserializeOwned + CustomResourceExt,
{
    let object = decode_strict::<K>(value, at)?;
    let crd = K::crd();
    let schema = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null);
    Validator::new().validate(&schema, value, None).map_err(|errors| {
        errors
            .iter()
            .map(|e| {
                let field = e.field_path.trim_start_matches('.');
                at.error((!field.is_empty()).then_some(field), Reason::RuleViolated, e.message.clone())
            })
            .collect::<Vec<_>>()
    })?;
    Ok(object)
}

/// Decodes `value` as `T`, refusing unknown fields and naming the path of any error.
fn decode_strict<T: DeserializeOwned>(value: &Value, at: &Location<'_>) -> Result<T, Vec<ManifestError>> {
    let mut unknown = Vec::new();
    let mut track = |path: serde_ignored::Path<'_>| {
        let field = field_path(&path);
        // kube's derived resources take apiVersion and kind from the type, not the document.
        if field != "apiVersion" && field != "kind" {
            unknown.push(field);
        }
    };
    let deserializer = serde_ignored::Deserializer::new(value, &mut track);
    let decoded: Result<T, _> = serde_path_to_error::deserialize(deserializer);
    match decoded {
        Err(e) => {
            let path = e.path().to_string();
            let field = (path != ".").then_some(path);
            Err(vec![at.error(field.as_deref(), Reason::InvalidValue, e.into_inner().to_string())])
        }
        Ok(_) if !unknown.is_empty() => Err(unknown
            .into_iter()
            .map(|field| at.error(Some(&field), Reason::UnknownField, "unknown field".into()))
            .collect()),
        Ok(decoded) => Ok(decoded),
    }
}

/// Formats a path the way Kubernetes names fields: `spec.providers[0].name`.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let parent = field_path(parent);
            if parent.is_empty() { key.clone() } else { format!("{parent}.{key}") }
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `fuzz/` (render_config): an unterminated flow mapping made the
    /// document iterator repeat its error until memory ran out.
    #[test]
    fn a_syntax_error_ends_the_source() {
        let text = include_str!("../../fuzz/corpus/render_config/regression-unterminated-flow-mapping.yaml");
        let err = ManifestSet::default().add_yaml("bad.yaml", text).expect_err("invalid YAML");
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.0[0].issue.message.starts_with("invalid YAML: "), "{err}");
    }

    #[test]
    fn names_the_api_server_would_refuse_are_refused() {
        let doc = |name: &str, ns: &str| {
            format!(
                "apiVersion: tenantgate.dev/v1alpha1\nkind: PromptPolicy\nmetadata: {{ name: {name}, namespace: {ns} }}\nspec: {{ allowedModels: ['*'] }}\n"
            )
        };
        assert!(ManifestSet::default().add_yaml("ok.yaml", &doc("base", "tg-acme")).is_ok());
        for (name, ns, field) in [
            ("\"base\\r\\nx\"", "tg-acme", "metadata.name"),
            ("../base", "tg-acme", "metadata.name"),
            ("Base", "tg-acme", "metadata.name"),
            ("base", "tg-acme/../x", "metadata.namespace"),
        ] {
            let err = ManifestSet::default().add_yaml("bad.yaml", &doc(name, ns)).expect_err(name);
            assert_eq!(err.0[0].issue.field.as_deref(), Some(field), "{err}");
        }
    }

    #[test]
    fn a_connection_prefix_is_empty_or_a_dns_label() {
        let doc = |prefix: &str| {
            format!(
                "apiVersion: tenantgate.dev/v1alpha1\nkind: McpConnection\nmetadata: {{ name: c, namespace: tg-acme }}\nspec: {{ url: 'https://mcp.example/mcp', tools: {{ prefix: {prefix} }} }}\n"
            )
        };
        for ok in ["\"\"", "gh", "my-tools-2"] {
            assert!(ManifestSet::default().add_yaml("ok.yaml", &doc(ok)).is_ok(), "{ok}");
        }
        for bad in ["Gh", "gh_tools", "-gh", "gh+x"] {
            let err = ManifestSet::default().add_yaml("bad.yaml", &doc(bad)).expect_err(bad);
            assert_eq!(err.0[0].issue.field.as_deref(), Some("spec.tools.prefix"), "{err}");
            assert!(err.0[0].issue.message.starts_with("must be empty or a DNS label"), "{err}");
        }
    }
}

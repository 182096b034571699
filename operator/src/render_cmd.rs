//! `tenantgate-operator render -f DIR`: every object the operator would apply
//! for the CRD YAML in DIR, without a cluster, for GitOps review and `kubectl diff`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use kube::ResourceExt;
use sha2::{Digest, Sha256};
use tenantgate_crds::manifests::ManifestSet;
use tenantgate_crds::render::{RenderOptions, tenant_namespace};

use crate::tenant::build::{BuildInput, BuildSettings, build};

/// Why `render` failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderCmdError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A directory could not be walked.
    #[error("reading {0}")]
    Walk(#[from] tenantgate_crds::files::WalkError),
    /// The YAML was refused.
    #[error("{0}")]
    Manifests(#[from] tenantgate_crds::manifests::ManifestErrors),
    /// A tenant's config was refused.
    #[error("Tenant {tenant}: {source}")]
    Render {
        /// The tenant.
        tenant: String,
        /// The cause.
        #[source]
        source: tenantgate_crds::render::RenderError,
    },
    /// A builder failed (a bug).
    #[error(transparent)]
    Build(#[from] crate::tenant::build::BuildError),
    /// Serializing failed (a bug).
    #[error("serializing: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// DIR has no Tenant.
    #[error("no Tenant found in {0}")]
    NoTenant(String),
}

/// Renders every tenant of the YAML under `dirs` into the objects the operator
/// would apply, as one multi-document YAML stream.
pub fn render(dirs: &[PathBuf], settings: &BuildSettings) -> Result<String, RenderCmdError> {
    let mut set = ManifestSet::default();
    for dir in dirs {
        for file in tenantgate_crds::files::yaml_files(dir)? {
            let text = std::fs::read_to_string(&file)
                .map_err(|source| RenderCmdError::Read { path: file.display().to_string(), source })?;
            set.add_yaml(&file.display().to_string(), &text)?;
        }
    }
    if set.tenants.is_empty() {
        return Err(RenderCmdError::NoTenant(
            dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        ));
    }
    let mut tenants = set.tenants.clone();
    tenants.sort_by_key(|t| t.name_any());
    let mut out = String::new();
    for tenant in &tenants {
        let name = tenant.name_any();
        let rendered = set
            .render(tenant, &settings.operator_namespace, &RenderOptions::default())
            .map_err(|source| RenderCmdError::Render { tenant: name.clone(), source })?;
        let namespace = tenant_namespace(tenant);
        // Secrets in the directory stand in for the cluster's: their content
        // hash plays the part of the resourceVersion in the pod checksum.
        let secret_versions: BTreeMap<String, String> = set
            .secrets
            .iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(&namespace))
            .filter(|s| rendered.secret_refs.iter().any(|r| Some(&r.name) == s.metadata.name.as_ref()))
            .map(|s| {
                let digest = Sha256::digest(serde_json::to_vec(&(&s.data, &s.string_data)).unwrap_or_default());
                (s.name_any(), hex::encode(&digest[..8]))
            })
            .collect();
        let connections: Vec<_> = set
            .mcp_connections
            .iter()
            .filter(|c| c.metadata.namespace.as_deref() == Some(&namespace))
            .cloned()
            .collect();
        let stack = build(&BuildInput {
            tenant,
            rendered: &rendered,
            mcp_connections: &connections,
            secret_versions: &secret_versions,
            generate_secrets: false,
            settings,
        })?;
        let _ = writeln!(out, "# Tenant {name}: config hash {}", rendered.config.config_hash);
        for secret in &rendered.generated_secrets {
            let _ = writeln!(out, "# Secret {namespace}/{secret} is generated in the cluster, once, and never shown.");
        }
        for issue in &rendered.skipped {
            let _ = writeln!(out, "# skipped: {issue}");
        }
        // In build order; every object is of a kind in the table of managed kinds.
        for object in stack.objects() {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(object)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// `render -f` on a mounted ConfigMap: each key is a link through the
    /// hidden `..data` to a hidden timestamped directory, which must not be
    /// read a second time ("is defined more than once").
    #[test]
    fn render_reads_a_mounted_config_map_once() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/quickstart");
        let root = std::env::temp_dir().join(format!("tg-render-configmap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let stamp = root.join("..2026_12_04_20_00_00.1");
        std::fs::create_dir_all(&stamp).expect("mkdir");
        std::os::unix::fs::symlink("..2026_12_04_20_00_00.1", root.join("..data")).expect("link");
        for name in ["00-tenant.yaml", "10-policy.yaml"] {
            std::fs::copy(examples.join(name), stamp.join(name)).expect("copy");
            std::os::unix::fs::symlink(format!("..data/{name}"), root.join(name)).expect("link");
        }
        let mounted = render(std::slice::from_ref(&root), &BuildSettings::default());
        let plain = render(&[examples], &BuildSettings::default());
        std::fs::remove_dir_all(&root).expect("cleanup");
        assert_eq!(mounted.expect("renders"), plain.expect("renders"));
    }
}

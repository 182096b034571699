//! Where the GatewayConfig comes from: the file the operator mounts, or CRD
//! YAML rendered locally with the same function the operator uses.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tenantgate_crds::config::GatewayConfig;
use tenantgate_crds::issue::{ConfigIssue, ObjectRef, Reason};
use tenantgate_crds::manifests::ManifestSet;
use tenantgate_crds::render::{RenderMode, RenderOptions};

use super::ConfigError;

/// A file that could not be read or written.
fn unreadable(path: &Path, e: impl std::fmt::Display) -> ConfigIssue {
    ConfigIssue::new(Reason::Unreadable, format!("{}: {e}", path.display()))
}

/// A config source.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A rendered GatewayConfig file (the ConfigMap volume).
    File(PathBuf),
    /// The same file, and the ConfigMap it comes from watched through the API server
    /// (seconds, not the kubelet's minute): its content once delivered, else the file.
    Watched {
        /// The mounted file.
        path: PathBuf,
        /// What the API server delivered of the ConfigMap.
        copy: super::ApiCopy,
    },
    /// CRD YAML under a directory, rendered locally.
    Manifests {
        /// Directory of YAML files (read recursively).
        dir: PathBuf,
        /// Tenant to serve; needed when the directory holds several.
        tenant: Option<String>,
        /// Namespace whose PromptPolicies are global.
        operator_namespace: String,
        /// Where the Secrets of the manifests are laid out as files.
        state_dir: PathBuf,
    },
}

/// The bytes of a source at one moment, and their fingerprint.
#[derive(Debug)]
pub struct Snapshot {
    /// SHA-256 of every file name and content.
    pub fingerprint: [u8; 32],
    files: Vec<(String, String)>,
}

impl Snapshot {
    /// The snapshot of these files (name, content).
    fn of(files: Vec<(String, String)>) -> Self {
        let mut hasher = Sha256::new();
        for (name, text) in &files {
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
            hasher.update([0]);
        }
        Self { fingerprint: hasher.finalize().into(), files }
    }
}

impl ConfigSource {
    /// Reads the source. Following symlinks on every read is what makes a
    /// Kubernetes ConfigMap update (an atomic `..data` symlink swap) visible.
    pub async fn read(&self) -> Result<Snapshot, ConfigIssue> {
        let paths = match self {
            Self::Watched { path, copy } => match copy.latest() {
                // Named as the file is: the same content has the same fingerprint either way.
                Some(text) => return Ok(Snapshot::of(vec![(path.display().to_string(), text.to_string())])),
                None => vec![path.clone()],
            },
            Self::File(path) => vec![path.clone()],
            Self::Manifests { dir, .. } => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || tenantgate_crds::files::yaml_files(&dir))
                    .await
                    .map_err(|e| ConfigIssue::new(Reason::Internal, format!("listing manifests failed: {e}")))?
                    .map_err(|e| ConfigIssue::new(Reason::Unreadable, e.to_string()))?
            }
        };
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let text = tokio::fs::read_to_string(&path).await.map_err(|e| unreadable(&path, e))?;
            files.push((path.display().to_string(), text));
        }
        Ok(Snapshot::of(files))
    }

    /// Turns a snapshot into a config; for manifests this also writes the
    /// tenant's Secrets where the config points.
    pub fn config(&self, snapshot: &Snapshot) -> Result<GatewayConfig, ConfigError> {
        match self {
            Self::File(path) | Self::Watched { path, .. } => {
                let (_, text) = snapshot.files.first().ok_or_else(|| unreadable(path, "no content"))?;
                let config = GatewayConfig::from_yaml(text)
                    .map_err(|e| ConfigIssue::new(Reason::InvalidValue, format!("{}: {e}", path.display())))?;
                if !config.hash_matches() {
                    tracing::warn!(path = %path.display(), "configHash does not match the content (edited by hand?)");
                }
                Ok(config)
            }
            Self::Manifests { dir, tenant, operator_namespace, state_dir } => {
                let mut set = ManifestSet::default();
                for (name, text) in &snapshot.files {
                    let short = Path::new(name).strip_prefix(dir).map_or(name.clone(), |p| p.display().to_string());
                    set.add_yaml(&short, text)?;
                }
                let no_tenant = |message: String| ConfigIssue::new(Reason::NoTenant, message);
                let tenant = match tenant {
                    Some(name) => {
                        set.tenant(name).ok_or_else(|| no_tenant(format!("no Tenant {name:?} in {}", dir.display())))?
                    }
                    None => match set.tenants.as_slice() {
                        [only] => only,
                        [] => return Err(no_tenant(format!("no Tenant in {}", dir.display())).into()),
                        _ => {
                            let message = format!("{} holds several Tenants: choose one with --tenant", dir.display());
                            return Err(no_tenant(message).into());
                        }
                    },
                };
                let secrets_root = state_dir.join("secrets");
                let options = RenderOptions {
                    secrets_root: secrets_root.display().to_string(),
                    sqlite_path: state_dir.join("gateway.db").display().to_string(),
                    mode: RenderMode::Local,
                    // Nothing projects tokens here: whoever runs the gateway (a test)
                    // writes `<state_dir>/identity/<slug>/token` itself.
                    identity_root: state_dir.join("identity").display().to_string(),
                };
                let rendered = set.render(tenant, operator_namespace, &options)?;
                for issue in &rendered.skipped {
                    tracing::warn!(reason = issue.reason.as_str(), "{issue}");
                }
                write_secrets(&set, &rendered.config.tenant.namespace, &secrets_root)?;
                ensure_gateway_keys(&secrets_root)?;
                Ok(rendered.config)
            }
        }
    }
}

/// Lays the Secrets of `namespace` out as a projected volume would: `<root>/<name>/<key>`.
fn write_secrets(set: &ManifestSet, namespace: &str, root: &Path) -> Result<(), ConfigIssue> {
    for secret in set.secrets.iter().filter(|s| s.metadata.namespace.as_deref() == Some(namespace)) {
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        let dir = root.join(name);
        create_private_dir(&dir).map_err(|e| unreadable(&dir, e))?;
        let data = secret.data.iter().flatten().map(|(k, v)| (k, v.0.clone()));
        let string_data = secret.string_data.iter().flatten().map(|(k, v)| (k, v.clone().into_bytes()));
        for (key, value) in data.chain(string_data) {
            if key.contains('/') || key.starts_with('.') {
                let object = ObjectRef::namespaced("Secret", namespace, name);
                return Err(ConfigIssue::new(Reason::InvalidSpec, format!("invalid key {key:?}")).on(object));
            }
            let path = dir.join(key);
            let tmp = dir.join(format!(".{key}.tmp"));
            write_private(&tmp, &value).map_err(|e| unreadable(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| unreadable(&path, e))?;
        }
    }
    Ok(())
}

/// Generates the `gateway-keys` Secret the operator makes in a cluster, once:
/// an existing key is never replaced (API-key hashes depend on the pepper).
fn ensure_gateway_keys(root: &Path) -> Result<(), ConfigIssue> {
    use base64::Engine;
    use tenantgate_crds::render::{API_KEY_PEPPER, GATEWAY_KEYS_SECRET, TOKEN_ENCRYPTION_KEY};
    let dir = root.join(GATEWAY_KEYS_SECRET);
    create_private_dir(&dir).map_err(|e| unreadable(&dir, e))?;
    for key in [TOKEN_ENCRYPTION_KEY, API_KEY_PEPPER] {
        let path = dir.join(key);
        if path.exists() {
            continue;
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| ConfigIssue::new(Reason::Internal, format!("no randomness for {}: {e}", path.display())))?;
        let tmp = dir.join(format!(".{key}.tmp"));
        write_private(&tmp, base64::engine::general_purpose::STANDARD.encode(bytes).as_bytes())
            .map_err(|e| unreadable(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| unreadable(&path, e))?;
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

fn write_private(path: &Path, value: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(value)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_watched_file_is_read_until_the_api_server_delivers_the_configmap() {
        let dir = std::env::temp_dir().join(format!("tg-source-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("config.yaml");
        std::fs::write(&path, "from the volume").expect("file");
        let (tx, rx) = tokio::sync::watch::channel(None::<Arc<str>>);
        let file = ConfigSource::File(path.clone());
        let watched =
            ConfigSource::Watched { path: path.clone(), copy: super::super::ApiCopy::from_receiver(rx, "cm") };
        let text = |s: &Snapshot| s.files[0].1.clone();

        let before = watched.read().await.expect("read");
        assert_eq!(text(&before), "from the volume", "nothing delivered yet: the file");
        assert_eq!(before.fingerprint, file.read().await.expect("read").fingerprint);

        tx.send_replace(Some("from the API server".into()));
        let after = watched.read().await.expect("read");
        assert_eq!(text(&after), "from the API server", "the kubelet has not refreshed the file yet");
        assert_ne!(after.fingerprint, before.fingerprint);
        // The kubelet catches up: the same content is the same fingerprint (no second reload).
        std::fs::write(&path, "from the API server").expect("file");
        assert_eq!(file.read().await.expect("read").fingerprint, after.fingerprint);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

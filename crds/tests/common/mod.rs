//! Shared by the crds tests: the example files of the repository.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use tenantgate_crds::manifests::{ManifestErrors, ManifestSet};
use tenantgate_crds::render::RenderInput;
use tenantgate_crds::v1alpha1::Tenant;

pub const OPERATOR_NAMESPACE: &str = "tenantgate-system";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crds/ has a parent").to_path_buf()
}

/// Every YAML file under `dir`, recursively, sorted.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    tenantgate_crds::files::yaml_files(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
}

/// The valid examples: everything under manifests/examples except invalid/.
pub fn valid_example_files() -> Vec<PathBuf> {
    let root = repo_root().join("manifests/examples");
    yaml_files(&root).into_iter().filter(|p| !p.starts_with(root.join("invalid"))).collect()
}

pub fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root()).unwrap_or(path).display().to_string()
}

pub fn load(files: &[PathBuf]) -> Result<ManifestSet, ManifestErrors> {
    let mut set = ManifestSet::default();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        set.add_yaml(&relative(f), &text)?;
    }
    Ok(set)
}

/// The `# expect: ...` lines of an invalid example.
pub fn expectations(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_prefix("# expect: ")).map(str::to_owned).collect()
}

/// A render input of `tenant` alone: no connections, policies, prices or API keys.
pub fn alone(tenant: &Tenant) -> RenderInput<'_> {
    RenderInput {
        tenant,
        mcp_connections: &[],
        tenant_policies: &[],
        global_policies: &[],
        model_prices: &[],
        api_keys: &[],
    }
}

//! Finding CRD YAML on disk: the one directory walk behind the operator's
//! `render -f`, the gateway's `--manifests` and `token`. Behind the `files`
//! feature: the rest of this crate does no I/O.

use std::path::{Path, PathBuf};

/// A directory or file under the walked one could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WalkError(#[from] walkdir::Error);

/// Every `.yaml`/`.yml` file under `dir`, recursively and following links,
/// sorted (or `dir` itself when it is a file). Hidden entries (names starting
/// with `.`) are skipped: a mounted ConfigMap holds each key twice, once
/// behind the `..data` link and once in the timestamped directory it points at.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, WalkError> {
    let hidden = |e: &walkdir::DirEntry| e.depth() > 0 && e.file_name().to_str().is_some_and(|n| n.starts_with('.'));
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(true).into_iter().filter_entry(|e| !hidden(e)) {
        let entry = entry?;
        let yaml = entry.path().extension().is_some_and(|e| e == "yaml" || e == "yml");
        if entry.file_type().is_file() && (yaml || entry.depth() == 0) {
            out.push(entry.into_path());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout the kubelet gives a ConfigMap volume: each key is a link
    /// through `..data` to a hidden timestamped directory.
    #[test]
    fn a_mounted_config_map_is_read_once() {
        let root = std::env::temp_dir().join(format!("tg-files-{}-{}", std::process::id(), line!()));
        let _ = std::fs::remove_dir_all(&root);
        let stamp = root.join("..2026_12_04_20_00_00.1");
        std::fs::create_dir_all(&stamp).expect("mkdir");
        std::fs::write(stamp.join("tenant.yaml"), "kind: Tenant\n").expect("write");
        std::fs::write(stamp.join("notes.txt"), "not yaml").expect("write");
        std::os::unix::fs::symlink("..2026_12_04_20_00_00.1", root.join("..data")).expect("link");
        std::os::unix::fs::symlink("..data/tenant.yaml", root.join("tenant.yaml")).expect("link");
        std::os::unix::fs::symlink("..data/notes.txt", root.join("notes.txt")).expect("link");
        std::fs::create_dir_all(root.join("nested")).expect("mkdir");
        std::fs::write(root.join("nested/policy.yml"), "kind: PromptPolicy\n").expect("write");

        let files = yaml_files(&root).expect("walk");
        assert_eq!(files, [root.join("nested/policy.yml"), root.join("tenant.yaml")]);
        assert_eq!(yaml_files(&root.join("notes.txt")).expect("file"), [root.join("notes.txt")]);
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}

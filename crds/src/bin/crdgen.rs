//! Prints the Tenantgate CRDs as YAML, or with `--reference` their Markdown reference.

fn main() -> Result<(), serde_yaml::Error> {
    match std::env::args().nth(1).as_deref() {
        Some("--reference") => print!("{}", tenantgate_crds::reference::markdown()),
        _ => print!("{}", tenantgate_crds::crd::to_yaml()?),
    }
    Ok(())
}

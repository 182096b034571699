//! Prints the Tenantgate CRDs as YAML.

fn main() -> Result<(), serde_yaml::Error> {
    print!("{}", tenantgate_crds::crd::to_yaml()?);
    Ok(())
}

//! What the fuzz targets share: fixtures built once and the comparisons their
//! invariants use.

use serde_json::Value;
use tenantgate_crds::config::GatewayConfig;
use tenantgate_crds::manifests::ManifestSet;
use tenantgate_crds::render::{RenderMode, RenderOptions};

/// The quickstart tenant (manifests/examples/quickstart), compiled in.
pub const QUICKSTART: &[(&str, &str)] = &[
    ("00-tenant.yaml", include_str!("../../manifests/examples/quickstart/00-tenant.yaml")),
    ("10-policy.yaml", include_str!("../../manifests/examples/quickstart/10-policy.yaml")),
];

/// The quickstart tenant's rendered config (its prompt policy included).
pub fn quickstart_config() -> GatewayConfig {
    let mut set = ManifestSet::default();
    for (name, text) in QUICKSTART {
        set.add_yaml(name, text).expect("the quickstart manifests parse");
    }
    let tenant = set.tenant("quickstart").expect("the quickstart tenant").clone();
    let options = RenderOptions { mode: RenderMode::Local, ..RenderOptions::default() };
    set.render(&tenant, "tenantgate-system", &options).expect("the quickstart renders").config
}

/// JSON equality where numbers that are not integers compare within one part
/// in 10^15: serde_json's float parsing is not always correctly rounded, so a
/// float can move by one unit in the last place through a round trip.
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            x == y || (x - y).abs() <= f64::EPSILON * 4.0 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Splits fuzz input into chunks: each chunk's length comes from one byte of
/// `lengths` (1..=64), so a stream is cut at arbitrary places.
pub fn chunks<'a>(data: &'a [u8], lengths: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = lengths.get(i % lengths.len().max(1)).map_or(rest.len(), |&b| usize::from(b % 64) + 1);
        let (head, tail) = rest.split_at(n.min(rest.len()));
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}

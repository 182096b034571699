//! Every example parses, round-trips and passes the CRD rules; every invalid
//! example is refused with a message naming the broken field.

mod common;

use common::*;
use kube::CustomResourceExt;
use serde_json::Value;
use tenantgate_crds::v1alpha1::{McpConnection, PromptPolicy, Tenant};

#[test]
fn valid_examples_load() {
    let files = valid_example_files();
    assert!(files.len() >= 6, "expected the example files, found {files:?}");
    let set = load(&files).unwrap_or_else(|e| panic!("examples must load:\n{e}"));
    let names: Vec<_> = set.tenants.iter().map(|t| t.metadata.name.clone().unwrap_or_default()).collect();
    assert_eq!(names, ["acme", "quickstart"]);
    assert_eq!(set.mcp_connections.len(), 2);
    assert!(set.prompt_policies.len() >= 3);
    assert!(set.secrets.iter().any(|s| s.metadata.name.as_deref() == Some("quickstart-jwks")));
}

fn round_trip<T>(objects: &[T])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    for o in objects {
        let json = serde_json::to_string(o).expect("serializes");
        let back: T = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(&back, o);
        let yaml = serde_yaml::to_string(o).expect("serializes as YAML");
        let back: T = serde_yaml::from_str(&yaml).expect("deserializes from YAML");
        assert_eq!(&back, o);
    }
}

#[test]
fn examples_round_trip_through_serde() {
    let set = load(&valid_example_files()).expect("examples load");
    round_trip(&set.tenants);
    round_trip(&set.mcp_connections);
    round_trip(&set.prompt_policies);
}

#[test]
fn defaults_are_applied() {
    let set = load(&valid_example_files()).expect("examples load");
    let quickstart = set.tenant("quickstart").expect("quickstart tenant");
    assert_eq!(quickstart.spec.gateway.replicas, 1);
    assert_eq!(quickstart.spec.auth.jwt.as_ref().expect("jwt").roles_claim, "roles");
    assert_eq!(quickstart.spec.routing.max_retries, 2);
    assert_eq!(quickstart.spec.routing.circuit_breaker.failure_threshold, 5);
    let github = set.mcp_connections.iter().find(|c| c.metadata.name.as_deref() == Some("github")).expect("github");
    assert_eq!(github.spec.timeout_seconds, 30);
}

#[test]
fn invalid_examples_are_refused_naming_the_field() {
    let dir = repo_root().join("manifests/examples/invalid");
    let files = yaml_files(&dir);
    assert!(files.len() >= 15, "expected one invalid example per rule, found {}", files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let expect = expectations(&text);
        assert!(expect.len() >= 2, "{} must say what it expects (# expect: lines)", relative(&file));
        let message = if file.to_string_lossy().ends_with(".update.yaml") {
            update_error(&text)
        } else {
            match load(std::slice::from_ref(&file)) {
                Ok(_) => panic!("{} was accepted", relative(&file)),
                Err(e) => e.to_string(),
            }
        };
        assert!(message.contains(&relative(&file)) || file.to_string_lossy().ends_with(".update.yaml"), "{message}");
        for e in &expect {
            assert!(message.contains(e.as_str()), "{}: error {message:?} does not contain {e:?}", relative(&file));
        }
    }
}

/// Validates the second document of `text` as an update of the first.
fn update_error(text: &str) -> String {
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML document"))
        .collect();
    assert_eq!(docs.len(), 2, "an .update.yaml holds the object and its update");
    let schema = serde_json::to_value(
        Tenant::crd().spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("schema"),
    )
    .expect("schema JSON");
    let validator = kube::core::cel::Validator::new();
    validator.validate(&schema, &docs[0], None).expect("the original object is valid");
    validator.validate(&schema, &docs[1], None).expect("the update is valid on its own");
    let errors = validator.validate(&schema, &docs[1], Some(&docs[0])).expect_err("the update must be refused");
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[test]
fn unrelated_kinds_are_ignored_but_unknown_tenantgate_kinds_are_not() {
    let mut set = tenantgate_crds::manifests::ManifestSet::default();
    set.add_yaml("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").expect("ignored");
    assert_eq!(set.ignored, ["ConfigMap x"]);
    let err =
        set.add_yaml("x.yaml", "apiVersion: tenantgate.dev/v1alpha1\nkind: Tenent\nmetadata: {name: x}\n").unwrap_err();
    assert!(err.to_string().contains("x.yaml (document 1): Tenent x: kind: unknown kind \"Tenent\""), "{err}");
    let err = set.add_yaml("v.yaml", "apiVersion: tenantgate.dev/v1\nkind: Tenant\nmetadata: {name: x}\n").unwrap_err();
    assert!(err.to_string().contains("apiVersion: unsupported version"), "{err}");
}

#[test]
fn namespaced_objects_need_a_namespace_and_duplicates_are_refused() {
    let mut set = tenantgate_crds::manifests::ManifestSet::default();
    let policy =
        "apiVersion: tenantgate.dev/v1alpha1\nkind: PromptPolicy\nmetadata: {name: p}\nspec: {allowedModels: ['*']}\n";
    let err = set.add_yaml("p.yaml", policy).unwrap_err();
    assert!(err.to_string().contains("metadata.namespace: is required"), "{err}");
    let policy = policy.replace("{name: p}", "{name: p, namespace: tg-a}");
    set.add_yaml("p.yaml", &policy).expect("valid policy");
    let err = set.add_yaml("q.yaml", &policy).unwrap_err();
    assert!(err.to_string().contains("q.yaml (document 1): PromptPolicy tg-a/p: is defined more than once"), "{err}");
}

#[test]
fn crds_are_structural_and_documented() {
    for crd in tenantgate_crds::crd::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{name}: status subresource");
        assert!(crd.spec.names.categories.as_ref().is_some_and(|c| c.contains(&"tenantgate".to_string())), "{name}");
        assert!(crd.spec.names.short_names.as_ref().is_some_and(|s| !s.is_empty()), "{name}: short name");
        let columns: Vec<_> = version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        assert!(columns.contains(&"Age"), "{name}: {columns:?}");
        let schema =
            serde_json::to_value(version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("schema"))
                .expect("schema JSON");
        check_structural(&name, "", &schema["properties"]["spec"]);
        check_structural(&name, "", &schema["properties"]["status"]);
    }
    let tenant_columns: Vec<_> =
        Tenant::crd().spec.versions[0].additional_printer_columns.iter().flatten().map(|c| c.name.clone()).collect();
    for c in ["Namespace", "Ready", "Endpoint", "Age"] {
        assert!(tenant_columns.iter().any(|t| t == c), "kubectl get tenants shows {c}");
    }
    let _ = (McpConnection::crd(), PromptPolicy::crd());
}

/// Every node has a type (or preserves unknown fields), nothing uses
/// `$ref`, `anyOf`/`oneOf` carry no types of their own, and every property is documented.
fn check_structural(crd: &str, path: &str, node: &Value) {
    let Some(obj) = node.as_object() else { panic!("{crd}: {path}: schema is not an object") };
    assert!(!obj.contains_key("$ref"), "{crd}: {path}: $ref is not allowed");
    let open = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    assert!(open || obj.contains_key("type"), "{crd}: {path}: no type in {node}");
    for key in ["anyOf", "oneOf", "allOf"] {
        for alt in obj.get(key).and_then(Value::as_array).into_iter().flatten() {
            assert!(alt.get("type").is_none(), "{crd}: {path}: {key} branches must not declare types");
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            let child = format!("{path}.{k}");
            assert!(
                v.get("description").and_then(Value::as_str).is_some_and(|d| !d.is_empty()),
                "{crd}: {child} has no description"
            );
            check_structural(crd, &child, v);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(crd, &format!("{path}[]"), items);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        check_structural(crd, &format!("{path}{{}}"), extra);
    }
}

//! Is the live object already what we would apply? Comparing the fields we set
//! with the live object lets a steady-state reconcile make zero write calls,
//! while a hand edit of any field we own is still seen and undone.

use serde_json::Value;

/// Whether every field set in `desired` has the same value in `live`. Fields
/// the API server or other controllers add to `live` do not matter; lists must
/// match element by element. Server-managed metadata is ignored.
pub fn is_applied(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match k.as_str() {
            "status" => true,
            "metadata" => metadata_applied(dv, l.get(k).unwrap_or(&Value::Null)),
            _ => match l.get(k) {
                Some(lv) => is_applied(dv, lv),
                None => dv.is_null() || is_empty(dv),
            },
        }),
        _ => subset(desired, live),
    }
}

fn metadata_applied(desired: &Value, live: &Value) -> bool {
    ["name", "namespace", "labels", "annotations", "ownerReferences"].iter().all(|k| match desired.get(*k) {
        None => true,
        Some(d) => subset(d, live.get(*k).unwrap_or(&Value::Null)),
    })
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => subset(dv, lv),
            None => dv.is_null() || is_empty(dv),
        }),
        (Value::Object(d), Value::Null) => d.values().all(|v| v.is_null() || is_empty(v)),
        (Value::Array(d), Value::Array(l)) => d.len() == l.len() && d.iter().zip(l).all(|(a, b)| subset(a, b)),
        (Value::Array(d), Value::Null) => d.is_empty(),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Null, _) => true,
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::is_applied;

    #[test]
    fn defaults_added_by_the_server_do_not_count() {
        let desired = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"ports": [{"port": 80}]}});
        let live = json!({
            "metadata": {"name": "a", "labels": {"x": "1", "other": "y"}, "resourceVersion": "7", "managedFields": []},
            "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "clusterIP": "10.0.0.1"},
            "status": {}
        });
        assert!(is_applied(&desired, &live));
    }

    #[test]
    fn a_hand_edit_of_an_owned_field_is_seen() {
        let desired = json!({"spec": {"replicas": 2, "template": {"metadata": {"annotations": {"c": "abc"}}}}});
        assert!(!is_applied(
            &desired,
            &json!({"spec": {"replicas": 3, "template": {"metadata": {"annotations": {"c": "abc"}}}}})
        ));
        assert!(!is_applied(
            &desired,
            &json!({"spec": {"replicas": 2, "template": {"metadata": {"annotations": {"c": "old"}}}}})
        ));
        assert!(!is_applied(&json!({"metadata": {"labels": {"a": "b"}}}), &json!({"metadata": {"labels": {}}})));
    }

    #[test]
    fn lists_match_element_by_element() {
        let desired = json!({"spec": {"args": ["a", "b"]}});
        assert!(is_applied(&desired, &json!({"spec": {"args": ["a", "b"]}})));
        assert!(!is_applied(&desired, &json!({"spec": {"args": ["a", "b", "c"]}})));
        assert!(!is_applied(&desired, &json!({"spec": {"args": ["b", "a"]}})));
    }

    #[test]
    fn absent_and_empty_are_the_same() {
        assert!(is_applied(&json!({"spec": {"emptyDir": {}, "items": []}}), &json!({"spec": {}})));
        assert!(!is_applied(&json!({"spec": {"x": 1}}), &json!({"spec": {}})));
    }
}

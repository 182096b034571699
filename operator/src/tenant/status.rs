//! Step 5: status that tells the truth, written only when it changes.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Builds a condition, keeping `lastTransitionTime` from `previous` when the
/// status did not change (so an unchanged status is byte-for-byte the same).
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Whether two condition lists say the same, ignoring transition times.
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    let key =
        |c: &Condition| (c.type_.clone(), c.status.clone(), c.reason.clone(), c.message.clone(), c.observed_generation);
    let mut a: Vec<_> = a.iter().map(key).collect();
    let mut b: Vec<_> = b.iter().map(key).collect();
    a.sort();
    b.sort();
    a == b
}

/// Whether the gateway Deployment is available, and why not.
pub fn gateway_available(deployment: Option<&Deployment>) -> (bool, &'static str, String) {
    let Some(d) = deployment else {
        return (false, "DeploymentMissing", "the gateway Deployment does not exist yet".into());
    };
    let status = d.status.as_ref();
    let observed = status.and_then(|s| s.observed_generation);
    if observed < d.metadata.generation {
        return (false, "RolloutPending", "the Deployment controller has not seen the latest gateway spec yet".into());
    }
    let available =
        status.and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == "Available"));
    match available {
        Some(c) if c.status == "True" => {
            let ready = status.and_then(|s| s.available_replicas).unwrap_or(0);
            (true, "MinimumReplicasAvailable", format!("{ready} gateway replica(s) available"))
        }
        Some(c) => (
            false,
            "MinimumReplicasUnavailable",
            c.message.clone().unwrap_or_else(|| "no gateway replica is available".into()),
        ),
        None => (false, "RolloutPending", "the gateway Deployment reports no availability yet".into()),
    }
}

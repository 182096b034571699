//! How many gateway pods run: the autoscaler and the disruption budget.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::deployment::int32;
use super::{BuildInput, meta};
use crate::labels::{GATEWAY, gateway_selector};

/// An autoscaling/v2 HPA on CPU, when autoscaling is set.
pub fn build_hpa(input: &BuildInput<'_>) -> Option<HorizontalPodAutoscaler> {
    let a = input.tenant.spec.gateway.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: meta(input, GATEWAY, "gateway"),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: GATEWAY.into(),
            },
            min_replicas: Some(int32(a.min_replicas)),
            max_replicas: int32(a.max_replicas),
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(int32(a.target_cpu_utilization_percentage)),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        },
        ..HorizontalPodAutoscaler::default()
    })
}

/// A PodDisruptionBudget when more than one replica runs.
pub fn build_pdb(input: &BuildInput<'_>) -> Option<PodDisruptionBudget> {
    let g = &input.tenant.spec.gateway;
    let least = g.autoscaling.as_ref().map_or(g.replicas, |a| a.min_replicas);
    if least <= 1 {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: meta(input, GATEWAY, "gateway"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(gateway_selector(&input.tenant.name_any())),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;

    use super::super::test_support::*;
    use super::*;

    #[test]
    fn replicas_belong_to_the_hpa_when_autoscaling_is_on() {
        let fixed = stack_of(&tenant("  gateway: {replicas: 1}\n"), &[], &BTreeMap::new());
        assert_eq!(gateway_deployment(&fixed).spec.as_ref().and_then(|s| s.replicas), Some(1));
        assert!(fixed.all::<HorizontalPodAutoscaler>().is_empty() && fixed.all::<PodDisruptionBudget>().is_empty());
        let scaled = stack_of(
            &tenant(
                "  storage: {redis: {urlSecretRef: {name: r, key: url}}}\n  gateway: {autoscaling: {minReplicas: 2, maxReplicas: 6}}\n",
            ),
            &[],
            &BTreeMap::new(),
        );
        assert_eq!(
            scaled.get::<Deployment>(GATEWAY).and_then(|d| d.spec).and_then(|s| s.replicas),
            None,
            "the HPA owns replicas"
        );
        let hpa = scaled.get::<HorizontalPodAutoscaler>(GATEWAY).expect("HPA");
        assert_eq!((hpa.spec.min_replicas, hpa.spec.max_replicas), (Some(2), 6));
        assert!(scaled.get::<PodDisruptionBudget>(GATEWAY).is_some(), "a PDB for two or more replicas");
    }
}

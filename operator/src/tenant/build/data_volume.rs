//! The gateway's data volume (`/var/lib/tenantgate`): the spill of records the
//! database could not take and, without a database, the SQLite file. An
//! emptyDir by default, lost with the pod; a PersistentVolumeClaim when the
//! Tenant sets `spec.storage.volume`, which outlives the pods.

use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, EnvVar, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    Volume, VolumeResourceRequirements,
};
use tenantgate_crds::v1alpha1::VolumeAccessMode;

use super::deployment::empty_dir;
use super::{BuildInput, meta};
use crate::labels::DATA_DIR;

/// The claim the operator creates for `spec.storage.volume.size`.
pub const DATA_CLAIM: &str = "gateway-data";

/// The claim the operator creates, when the Tenant asks for one by size.
pub fn build_data_claim(input: &BuildInput<'_>) -> Option<PersistentVolumeClaim> {
    let volume = input.tenant.spec.storage.volume.as_ref()?;
    let size = volume.size.clone()?;
    let access_mode = match volume.access_mode.unwrap_or_default() {
        VolumeAccessMode::ReadWriteOnce => "ReadWriteOnce",
        VolumeAccessMode::ReadWriteMany => "ReadWriteMany",
    };
    Some(PersistentVolumeClaim {
        metadata: meta(input, DATA_CLAIM, "gateway"),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![access_mode.into()]),
            storage_class_name: volume.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_owned(), size)].into()),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    })
}

/// Whether the data volume outlives the pods.
pub fn data_is_durable(input: &BuildInput<'_>) -> bool {
    input.tenant.spec.storage.volume.is_some()
}

/// How the gateway spills onto it. On a claim every pod spills into a
/// directory of its own under `spill/` (named after the pod) and replays
/// those of pods that are gone; on an emptyDir the spill goes with the pod, so
/// what is left in it at exit is counted lost.
pub(super) fn spill_env(input: &BuildInput<'_>) -> Vec<EnvVar> {
    let var = |name: &str, value: String| EnvVar { name: name.into(), value: Some(value), ..EnvVar::default() };
    if data_is_durable(input) {
        vec![var("TENANTGATE_SPILL_ROOT", format!("{DATA_DIR}/spill"))]
    } else {
        vec![var("TENANTGATE_SPILL_DURABILITY", "ephemeral".into())]
    }
}

/// The pod's `data` volume: the claim (the platform's or the operator's), else an emptyDir.
pub(super) fn data_volume(input: &BuildInput<'_>) -> Volume {
    let Some(volume) = &input.tenant.spec.storage.volume else {
        return empty_dir("data", EmptyDirVolumeSource::default());
    };
    Volume {
        name: "data".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: volume.claim_name.clone().unwrap_or_else(|| DATA_CLAIM.into()),
            read_only: None,
        }),
        ..Volume::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    fn data_of(s: &super::super::TenantStack) -> Volume {
        let p = pod(s);
        p.volumes.unwrap_or_default().into_iter().find(|v| v.name == "data").expect("data volume")
    }

    fn env_of(s: &super::super::TenantStack) -> Vec<(String, String)> {
        let c = pod(s).containers.remove(0);
        c.env.unwrap_or_default().into_iter().filter_map(|e| Some((e.name, e.value?))).collect()
    }

    #[test]
    fn on_a_claim_each_pod_spills_under_a_shared_root_and_on_an_empty_dir_leftovers_count_as_lost() {
        let plain = env_of(&stack_with(&tenant(""), &BuildSettings::default()));
        assert!(plain.contains(&("TENANTGATE_SPILL_DURABILITY".into(), "ephemeral".into())), "{plain:?}");
        assert!(!plain.iter().any(|(k, _)| k == "TENANTGATE_SPILL_ROOT"));
        let claimed = env_of(&stack_with(&tenant("  storage: {volume: {claimName: c}}\n"), &BuildSettings::default()));
        assert!(claimed.contains(&("TENANTGATE_SPILL_ROOT".into(), "/var/lib/tenantgate/spill".into())), "{claimed:?}");
        assert!(!claimed.iter().any(|(k, _)| k == "TENANTGATE_SPILL_DURABILITY"), "durable is the default");
    }

    #[test]
    fn the_data_volume_is_an_empty_dir_a_claim_the_operator_makes_or_the_platforms() {
        let plain = stack_with(&tenant(""), &BuildSettings::default());
        assert!(data_of(&plain).empty_dir.is_some());
        assert!(plain.all::<PersistentVolumeClaim>().is_empty());

        let sized = stack_with(
            &tenant(
                "  storage: {database: {urlSecretRef: {name: db, key: url}}, volume: {size: 2Gi, storageClassName: nfs, accessMode: ReadWriteMany}}\n",
            ),
            &BuildSettings::default(),
        );
        let claim = sized.get::<PersistentVolumeClaim>(DATA_CLAIM).expect("claim");
        let spec = claim.spec.expect("spec");
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteMany".to_string()]));
        assert_eq!(spec.storage_class_name.as_deref(), Some("nfs"));
        assert_eq!(
            spec.resources.and_then(|r| r.requests).and_then(|r| r.get("storage").cloned()).map(|q| q.0),
            Some("2Gi".into())
        );
        assert_eq!(
            claim.metadata.owner_references.map(|o| o[0].name.clone()).as_deref(),
            Some("acme"),
            "goes with the tenant"
        );
        let mounted = data_of(&sized).persistent_volume_claim.expect("a claim");
        assert_eq!(mounted.claim_name, DATA_CLAIM);

        let existing =
            stack_with(&tenant("  storage: {volume: {claimName: platform-spill}}\n"), &BuildSettings::default());
        assert!(existing.all::<PersistentVolumeClaim>().is_empty(), "the platform's claim is never written");
        assert_eq!(data_of(&existing).persistent_volume_claim.map(|c| c.claim_name).as_deref(), Some("platform-spill"));
    }
}

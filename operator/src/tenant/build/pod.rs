//! What every pod the operator builds shares: Pod Security `restricted`.

use k8s_openapi::api::core::v1::{Capabilities, PodSecurityContext, SeccompProfile, SecurityContext};

fn runtime_default_seccomp() -> Option<SeccompProfile> {
    Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() })
}

/// A container that cannot escalate, write its root filesystem or keep any capability.
pub(super) fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
        seccomp_profile: runtime_default_seccomp(),
        ..SecurityContext::default()
    }
}

/// A pod running as the unprivileged user 65532.
pub(super) fn restricted_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        fs_group: Some(65532),
        seccomp_profile: runtime_default_seccomp(),
        ..PodSecurityContext::default()
    }
}

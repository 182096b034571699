//! One typed problem with configuration, wherever it is found: reading CRD
//! YAML ([`crate::manifests`]), rendering a tenant ([`crate::render`]) or
//! compiling a GatewayConfig in the gateway. It names the object, the field
//! path inside it, a [`Reason`] an operator can alert on, and a message for
//! people.

use std::fmt;

/// The Kubernetes object an issue is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// `Tenant`, `McpConnection`, `PromptPolicy`, `Secret`, ...
    pub kind: String,
    /// The namespace of a namespaced object.
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
}

impl ObjectRef {
    /// A namespaced object.
    pub fn namespaced(kind: &str, namespace: &str, name: &str) -> Self {
        Self { kind: kind.into(), namespace: Some(namespace.into()), name: name.into() }
    }

    /// A cluster-scoped object.
    pub fn cluster(kind: &str, name: &str) -> Self {
        Self { kind: kind.into(), namespace: None, name: name.into() }
    }

    /// Whether this names the object `kind` `namespace`/`name`.
    pub fn is(&self, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        self.kind == kind && self.namespace.as_deref() == namespace && self.name == name
    }
}

/// `Kind namespace/name`, or `Kind name` for a cluster-scoped object.
impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// Why a piece of configuration was refused: a closed set, so conditions,
/// metrics and alerts can match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    /// A field breaks a rule of the API (a duplicate name, an unknown reference, ...).
    InvalidSpec,
    /// A URL does not parse or is not http(s).
    InvalidUrl,
    /// A URL names a local address and the tenant does not allow local upstreams.
    LocalUpstreamRefused,
    /// A stdio McpConnection has no image to run in a cluster.
    MissingImage,
    /// A prompt template does not parse or render.
    InvalidTemplate,
    /// A deny pattern is not a regular expression.
    InvalidPattern,
    /// A tenant policy tries to lock its prompt.
    LockedOutsideGlobal,
    /// Two McpConnections want the same tool prefix.
    PrefixConflict,
    /// A document is not YAML.
    InvalidYaml,
    /// A field is not part of the schema.
    UnknownField,
    /// A value has the wrong type or shape.
    InvalidValue,
    /// A CEL rule of the CRD is violated.
    RuleViolated,
    /// The same object is defined twice.
    Duplicate,
    /// A file could not be read or written.
    Unreadable,
    /// The JWT verification keys (JWKS or HMAC secret) are unusable.
    InvalidKeys,
    /// A provider header cannot be sent.
    InvalidHeader,
    /// A dependency the config names (Redis) cannot be used.
    Unavailable,
    /// No tenant, or an ambiguous choice of tenant.
    NoTenant,
    /// An ApiKey of a tenant whose `spec.auth.apiKeys.enabled` is off.
    ApiKeysDisabled,
    /// A bug or an environment problem, not the config's fault.
    Internal,
}

impl Reason {
    /// The CamelCase name used in conditions, events, logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidSpec => "InvalidSpec",
            Self::InvalidUrl => "InvalidURL",
            Self::LocalUpstreamRefused => "LocalUpstreamRefused",
            Self::MissingImage => "MissingImage",
            Self::InvalidTemplate => "InvalidTemplate",
            Self::InvalidPattern => "InvalidPattern",
            Self::LockedOutsideGlobal => "LockedOutsideGlobal",
            Self::PrefixConflict => "PrefixConflict",
            Self::InvalidYaml => "InvalidYAML",
            Self::UnknownField => "UnknownField",
            Self::InvalidValue => "InvalidValue",
            Self::RuleViolated => "RuleViolated",
            Self::Duplicate => "Duplicate",
            Self::Unreadable => "Unreadable",
            Self::InvalidKeys => "InvalidKeys",
            Self::InvalidHeader => "InvalidHeader",
            Self::Unavailable => "Unavailable",
            Self::NoTenant => "NoTenant",
            Self::ApiKeysDisabled => "ApiKeysDisabled",
            Self::Internal => "Internal",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One problem with configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigIssue {
    /// The object, when the configuration came from one (a compiled
    /// GatewayConfig's own fields have none). Boxed: errors stay small.
    pub object: Option<Box<ObjectRef>>,
    /// The field path inside the object (or the GatewayConfig), e.g. `spec.providers[0].baseUrl`.
    pub field: Option<String>,
    /// Why, for machines.
    pub reason: Reason,
    /// What is wrong, for people.
    pub message: String,
}

impl ConfigIssue {
    /// An issue with no object or field yet.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self { object: None, field: None, reason, message: message.into() }
    }

    /// The same issue, about `object`.
    #[must_use]
    pub fn on(mut self, object: ObjectRef) -> Self {
        self.object = Some(Box::new(object));
        self
    }

    /// The same issue, at `field`.
    #[must_use]
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

/// `object: field: message`, leaving out what is not known.
impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_what_is_known() {
        let issue = ConfigIssue::new(Reason::InvalidUrl, "bad")
            .on(ObjectRef::namespaced("McpConnection", "tg-a", "git"))
            .at("spec.url");
        assert_eq!(issue.to_string(), "McpConnection tg-a/git: spec.url: bad");
        assert_eq!(ConfigIssue::new(Reason::Internal, "x").to_string(), "x");
        assert_eq!(ObjectRef::cluster("Tenant", "acme").to_string(), "Tenant acme");
        assert_eq!(issue.reason, "InvalidURL");
        assert!(issue.object.as_ref().is_some_and(|o| o.is("McpConnection", Some("tg-a"), "git")));
    }
}

//! `tenantgate-gateway database provision`: the platform team's step that
//! gives a tenant its own PostgreSQL role in a shared database (see
//! `storage::tenant_roles`). It prints what it did and the URL shape the
//! tenant's Secret takes, never a password.

use std::fmt::Write as _;

use crate::cli::ProvisionArgs;
use crate::storage::tenant_roles::{self, ProvisionError, Provisioned};
use crate::storage::{StorageError, postgres_options};

/// Why provisioning did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The admin URL file could not be read.
    #[error("--admin-url-file {path}: {source}")]
    UrlFile {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The admin URL does not parse (never echoed: it holds a password).
    #[error("--admin-url-file {0}: not a valid PostgreSQL URL")]
    BadUrl(String),
    /// Provisioning failed.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}

/// Runs `database provision`; the report to print.
pub async fn provision(args: &ProvisionArgs) -> Result<String, DatabaseError> {
    let path = args.admin_url_file.display().to_string();
    let url = std::fs::read_to_string(&args.admin_url_file)
        .map_err(|source| DatabaseError::UrlFile { path: path.clone(), source })?;
    let ca = args.ca_file.as_ref().map(|p| p.display().to_string());
    let options = postgres_options(url.trim(), &path, ca.as_deref()).map_err(|e| match e {
        StorageError::BadUrl { .. } => DatabaseError::BadUrl(path.clone()),
        other => DatabaseError::Provision(ProvisionError::Open(other)),
    })?;
    let password =
        args.password_file.as_ref().map(|p| tenant_roles::read_password(&p.display().to_string())).transpose()?;
    let target = (options.get_host().to_owned(), options.get_port(), options.get_database().map(str::to_owned));
    let done = tenant_roles::provision(options, &args.tenant, &args.role, password.as_deref()).await?;
    Ok(report(&args.tenant, &args.role, &target, &done))
}

fn report(
    tenant: &str,
    role: &str,
    (host, port, database): &(String, u16, Option<String>),
    done: &Provisioned,
) -> String {
    let database = database.as_deref().unwrap_or("postgres");
    let mut out = String::new();
    let role_state = if done.created_role { "created (LOGIN NOINHERIT)" } else { "exists" };
    let _ = writeln!(out, "role {role}: {role_state}");
    if done.password_set {
        let _ = writeln!(out, "role {role}: password set from --password-file");
    }
    let binding = if done.bound_now { "bound" } else { "already bound" };
    let _ =
        writeln!(out, "role {role}: {binding} to tenant {tenant:?} in database {database:?}, schema {:?}", done.schema);
    let _ = writeln!(
        out,
        "role {role}: granted SELECT, INSERT on usage and audit_events; SELECT, INSERT, UPDATE (revoked_at_ms, \
         revoked_by) on api_keys; SELECT, INSERT, UPDATE, DELETE on mcp_user_tokens; SELECT, INSERT, DELETE on \
         mcp_oauth_states; SELECT on tenantgate_tenant_roles and _sqlx_migrations; USAGE on the audit_events \
         sequence and the schema"
    );
    if done.may_create_in_schema {
        let _ = writeln!(
            out,
            "warning: role {role} may create objects in schema {:?} (PostgreSQL before 15 grants that to PUBLIC); \
             revoke it: REVOKE CREATE ON SCHEMA {} FROM PUBLIC",
            done.schema, done.schema
        );
    }
    let _ = writeln!(
        out,
        "the tenant's database URL: postgres://{role}:<password>@{host}:{port}/{database} (with your sslmode), \
         in the Secret of spec.storage.database.urlSecretRef"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_what_was_done_and_holds_no_password() {
        let done = Provisioned {
            created_role: true,
            bound_now: true,
            password_set: true,
            may_create_in_schema: false,
            schema: "public".into(),
        };
        let text = report("acme", "tg_acme", &("db.example.com".into(), 5432, Some("shared".into())), &done);
        assert!(text.contains("role tg_acme: created"), "{text}");
        assert!(text.contains("bound to tenant \"acme\" in database \"shared\""), "{text}");
        assert!(text.contains("postgres://tg_acme:<password>@db.example.com:5432/shared"), "{text}");
        assert!(!text.contains("warning"), "{text}");
    }
}

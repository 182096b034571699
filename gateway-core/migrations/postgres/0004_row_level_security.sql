-- Tenants sharing one database: the database holds every row to its tenant too,
-- not only the gateway's WHERE clauses.
--
-- A tenant's gateway connects as a role of its own that `tenantgate-gateway
-- database provision` creates and binds to the tenant in tenantgate_tenant_roles.
-- The policies admit a bound role to its tenant's rows only, for reading and
-- writing. The binding is keyed on the session's role, which a session cannot
-- change with SET (a provisioned role is a member of no other role), unlike a
-- setting the policies could read.
--
-- A role bound to no tenant keeps every row when it has the privileges of the
-- table's owner (the role that ran these migrations: a single-role install
-- works as before) and sees and writes nothing otherwise. Superusers and
-- BYPASSRLS roles are not held by any policy (PostgreSQL's rule).
--
-- The functions have SQL-standard bodies: their table references are bound
-- when they are created, so a temporary table a session makes cannot stand in
-- for tenantgate_tenant_roles.

CREATE TABLE tenantgate_tenant_roles (
    role_name NAME PRIMARY KEY,
    tenant    TEXT NOT NULL
);
-- A provisioned role may read its own binding and nothing else (the owner reads all).
ALTER TABLE tenantgate_tenant_roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_binding ON tenantgate_tenant_roles FOR SELECT USING (role_name = current_user);

-- The tenant the session's role is bound to; NULL when it is bound to none.
CREATE FUNCTION tenantgate_current_tenant() RETURNS TEXT
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT b.tenant FROM tenantgate_tenant_roles b WHERE b.role_name = current_user;
END;

-- Whether the session's role is bound to no tenant and has the privileges of
-- the owner of `rel`.
CREATE FUNCTION tenantgate_unbound_owner(rel REGCLASS) RETURNS BOOLEAN
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT NOT EXISTS (SELECT 1 FROM tenantgate_tenant_roles b WHERE b.role_name = current_user)
        AND pg_catalog.pg_has_role(c.relowner, 'USAGE')
    FROM pg_catalog.pg_class c WHERE c.oid = rel;
END;

-- Every table that carries a tenant gets the same policy, for reading and writing.
DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['usage', 'audit_events', 'api_keys', 'mcp_user_tokens', 'mcp_oauth_states'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_rows ON %1$I USING (%2$s) WITH CHECK (%2$s)',
            t,
            format('tenant = (SELECT tenantgate_current_tenant()) OR (SELECT tenantgate_unbound_owner(%L))', t)
        );
    END LOOP;
END;
$$;

//! Rendering: golden files for the examples, composition order, hash stability
//! and the problems that refuse or skip objects.

mod common;

use common::*;
use tenantgate_crds::config::{JwtKeys, McpAuthConfig, McpEndpointTransport, PolicyLayer};
use tenantgate_crds::manifests::ManifestSet;
use tenantgate_crds::render::{RenderInput, RenderMode, RenderOptions, render};
use tenantgate_crds::v1alpha1::{McpConnection, PromptPolicy, Tenant};

fn examples() -> ManifestSet {
    load(&valid_example_files()).expect("examples load")
}

fn local() -> RenderOptions {
    RenderOptions {
        secrets_root: "/run/tenantgate/secrets".into(),
        sqlite_path: "/run/tenantgate/gateway.db".into(),
        mode: RenderMode::Local,
        identity_root: "/run/tenantgate/identity".into(),
    }
}

/// Compares with crds/tests/golden/NAME; `UPDATE_GOLDEN=1` rewrites the file.
fn golden(name: &str, actual: &str) {
    let path = repo_root().join("crds/tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    pretty_assertions::assert_eq!(
        expected,
        actual,
        "{} is stale: run with UPDATE_GOLDEN=1 and review the diff",
        path.display()
    );
}

#[test]
fn example_tenants_match_their_golden_configs() {
    let set = examples();
    for (tenant, options, file) in [
        ("quickstart", RenderOptions::default(), "quickstart.yaml"),
        ("quickstart", local(), "quickstart-local.yaml"),
        ("acme", RenderOptions::default(), "acme.yaml"),
        ("acme", local(), "acme-local.yaml"),
    ] {
        let t = set.tenant(tenant).expect("tenant");
        let rendered = set.render(t, OPERATOR_NAMESPACE, &options).unwrap_or_else(|e| panic!("{tenant}: {e}"));
        assert!(rendered.skipped.is_empty(), "{tenant}: {:?}", rendered.skipped);
        assert!(rendered.config.hash_matches());
        golden(file, &rendered.config.to_yaml().expect("YAML"));
    }
}

#[test]
fn policies_compose_global_then_tenant_then_user_by_priority() {
    let set = examples();
    let acme =
        set.render(set.tenant("acme").expect("acme"), OPERATOR_NAMESPACE, &RenderOptions::default()).expect("renders");
    let order: Vec<_> = acme.config.policies.iter().map(|p| (p.layer, p.id.as_str())).collect();
    assert_eq!(
        order,
        [
            (PolicyLayer::Global, "tenantgate-system/platform-baseline"),
            (PolicyLayer::Tenant, "tg-acme/acme-base"),
            (PolicyLayer::User, "tg-acme/contractors"),
        ]
    );
    // Priority orders policies inside a layer; ties go by id.
    let mut tenant = set.tenant("acme").expect("acme").clone();
    tenant.metadata.name = Some("acme".into());
    let mut low = policy("tg-acme", "z-low", 1);
    let high = policy("tg-acme", "a-high", 500);
    let same = policy("tg-acme", "b-same", 500);
    low.spec.priority = 1;
    let rendered = render(
        RenderInput {
            tenant: &tenant,
            mcp_connections: &[],
            tenant_policies: &[same, high, low],
            global_policies: &[],
            model_prices: &[],
            api_keys: &[],
        },
        &RenderOptions::default(),
    )
    .expect("renders");
    let ids: Vec<_> = rendered.config.policies.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["tg-acme/z-low", "tg-acme/a-high", "tg-acme/b-same"]);
}

fn policy(namespace: &str, name: &str, priority: i32) -> PromptPolicy {
    serde_yaml::from_str(&format!(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: PromptPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec: {{priority: {priority}, systemPrompt: {{template: 'segment {name}'}}}}\n"
    ))
    .expect("policy YAML")
}

#[test]
fn hash_is_stable_under_input_order_and_changes_with_content() {
    let set = examples();
    let tenant = set.tenant("acme").expect("acme");
    let conns: Vec<McpConnection> = set.mcp_connections.clone();
    let tenant_policies: Vec<PromptPolicy> =
        set.prompt_policies.iter().filter(|p| p.metadata.namespace.as_deref() == Some("tg-acme")).cloned().collect();
    let global: Vec<PromptPolicy> = set
        .prompt_policies
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(OPERATOR_NAMESPACE))
        .cloned()
        .collect();
    let run = |c: &[McpConnection], p: &[PromptPolicy]| {
        render(
            RenderInput {
                tenant,
                mcp_connections: c,
                tenant_policies: p,
                global_policies: &global,
                model_prices: &[],
                api_keys: &[],
            },
            &RenderOptions::default(),
        )
        .expect("renders")
        .config
    };
    let a = run(&conns, &tenant_policies);
    let b = run(&conns, &tenant_policies);
    assert_eq!(a.config_hash, b.config_hash, "same input, same hash");
    let mut rc = conns.clone();
    rc.reverse();
    let mut rp = tenant_policies.clone();
    rp.reverse();
    let c = run(&rc, &rp);
    assert_eq!(a, c, "input order does not matter");
    let mut changed = tenant_policies.clone();
    changed[0].spec.priority += 1;
    let d = run(&conns, &changed);
    assert_ne!(a.config_hash, d.config_hash, "a policy change changes the hash");
    assert_eq!(a.config_hash.len(), 64);
    let mut tampered = a.clone();
    tampered.routing.max_retries = 9;
    assert!(!tampered.hash_matches(), "an edited config no longer matches its hash");
}

#[test]
fn secrets_are_paths_never_values() {
    let set = examples();
    for tenant in &set.tenants {
        let rendered = set.render(tenant, OPERATOR_NAMESPACE, &RenderOptions::default()).expect("renders");
        let yaml = rendered.config.to_yaml().expect("YAML");
        for secret in &set.secrets {
            for value in secret.string_data.iter().flat_map(|d| d.values()) {
                assert!(
                    !yaml.contains(value.as_str()),
                    "{}: secret value leaked into the config",
                    tenant.metadata.name.as_deref().unwrap_or_default()
                );
            }
        }
        for r in &rendered.secret_refs {
            assert!(
                yaml.contains(&format!("/var/run/secrets/tenantgate/{}/{}", r.name, r.key)),
                "{r:?} is mounted and used"
            );
        }
    }
    let quickstart =
        set.render(set.tenant("quickstart").expect("qs"), OPERATOR_NAMESPACE, &RenderOptions::default()).expect("ok");
    assert_eq!(
        quickstart.config.auth.jwt.as_ref().map(|j| j.keys.clone()),
        Some(JwtKeys::JwksFile("/var/run/secrets/tenantgate/quickstart-jwks/jwks.json".into()))
    );
    let names: Vec<_> = quickstart.secret_refs.iter().map(|r| format!("{}/{}", r.name, r.key)).collect();
    assert_eq!(
        names,
        ["gateway-keys/api-key-pepper", "gateway-keys/token-encryption-key", "quickstart-jwks/jwks.json"]
    );
}

#[test]
fn stdio_connections_run_behind_a_bridge_in_a_cluster_and_as_children_locally() {
    let set = examples();
    let acme = set.tenant("acme").expect("acme");
    let cluster = set.render(acme, OPERATOR_NAMESPACE, &RenderOptions::default()).expect("renders");
    let everything = cluster.config.mcp.iter().find(|c| c.name == "everything").expect("everything");
    assert_eq!(everything.transport, McpEndpointTransport::StreamableHttp);
    assert_eq!(everything.url.as_deref(), Some("http://mcp-everything.tg-acme.svc:8080/mcp"));
    // The gateway proves itself to the bridge with the token the operator generates for it.
    assert_eq!(
        everything.auth,
        Some(McpAuthConfig::Bearer {
            token_file: "/var/run/secrets/tenantgate/mcp-everything-bridge-token/token".into()
        })
    );
    assert!(cluster.generated_secrets.contains("mcp-everything-bridge-token"), "{:?}", cluster.generated_secrets);
    assert!(cluster.secret_refs.iter().any(|r| r.name == "mcp-everything-bridge-token" && r.key == "token"));
    let local = set.render(acme, OPERATOR_NAMESPACE, &local()).expect("renders");
    let everything = local.config.mcp.iter().find(|c| c.name == "everything").expect("everything");
    assert_eq!(everything.transport, McpEndpointTransport::Stdio);
    assert_eq!(everything.auth, None, "a child process needs no token");
    assert!(!local.generated_secrets.contains("mcp-everything-bridge-token"));
    let process = everything.stdio.as_ref().expect("process");
    assert_eq!(
        (process.command.as_str(), process.args.as_slice()),
        ("npx", &["-y".to_string(), "@modelcontextprotocol/server-everything".into()][..])
    );
}

#[test]
fn a_stdio_connection_with_its_own_auth_is_skipped_naming_the_field() {
    let tenant = tenant_yaml("  providers: [{name: p, type: mock}]\n");
    let connection: McpConnection = serde_yaml::from_str(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: McpConnection\nmetadata: {name: files, namespace: tg-t}\nspec:\n  transport: stdio\n  stdio: {image: 'example/files:1', command: [files]}\n  auth: {bearerSecretRef: {name: s, key: token}}\n",
    )
    .expect("yaml");
    let input = RenderInput {
        tenant: &tenant,
        mcp_connections: std::slice::from_ref(&connection),
        tenant_policies: &[],
        global_policies: &[],
        model_prices: &[],
        api_keys: &[],
    };
    let rendered = render(input, &RenderOptions::default()).expect("renders without the connection");
    assert!(rendered.config.mcp.is_empty());
    let issue = rendered.skipped.first().expect("skipped").to_string();
    assert!(issue.contains("McpConnection tg-t/files: spec.auth") && issue.contains("remove spec.auth"), "{issue}");
    assert!(rendered.generated_secrets.iter().all(|s| s == "gateway-keys"), "{:?}", rendered.generated_secrets);
}

fn tenant_yaml(extra: &str) -> Tenant {
    serde_yaml::from_str(&format!(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: t}}\nspec:\n  auth:\n    jwt: {{issuer: i, audiences: [a], jwksUri: 'https://idp.example/jwks'}}\n  models: [{{name: m, targets: [{{provider: p, model: x}}]}}]\n{extra}"
    ))
    .expect("tenant YAML")
}

#[test]
fn local_upstreams_are_refused_unless_allowed() {
    let tenant = tenant_yaml("  providers: [{name: p, type: openai, baseUrl: 'http://169.254.169.254/v1'}]\n");
    let input = alone(&tenant);
    let err = render(input, &RenderOptions::default()).expect_err("metadata address refused");
    let text = err.to_string();
    assert!(
        text.contains("Tenant t: spec.providers[0].baseUrl")
            && text.contains("link-local")
            && text.contains("allowLocalUpstreams"),
        "{text}"
    );
    assert_eq!(err.issues[0].reason, "LocalUpstreamRefused");
    let allowed = tenant_yaml(
        "  providers: [{name: p, type: openai, baseUrl: 'http://127.0.0.1:9000/v1'}]\n  network: {allowLocalUpstreams: true}\n",
    );
    let input = alone(&allowed);
    assert!(render(input, &RenderOptions::default()).is_ok());
}

#[test]
fn a_local_token_endpoint_is_refused_unless_allowed() {
    let sts = "  providers: [{name: p, type: bedrock, bedrock: {region: us-east-1, webIdentity: {roleArn: 'arn:aws:iam::123456789012:role/r', stsUrl: 'http://127.0.0.1:9'}}}]\n";
    let tenant = tenant_yaml(sts);
    let input = alone(&tenant);
    let err = render(input, &RenderOptions::default()).expect_err("a loopback STS refused");
    assert!(err.to_string().contains("spec.providers[0].bedrock.webIdentity.stsUrl"), "{err}");
    assert_eq!(err.issues[0].reason, "LocalUpstreamRefused");
    let allowed = tenant_yaml(&format!("{sts}  network: {{allowLocalUpstreams: true}}\n"));
    let input = alone(&allowed);
    assert!(render(input, &RenderOptions::default()).is_ok());
}

#[test]
fn bad_policies_refuse_the_whole_config_naming_the_policy() {
    let tenant = tenant_yaml("  providers: [{name: p, type: mock}]\n");
    let locked: PromptPolicy = serde_yaml::from_str(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: PromptPolicy\nmetadata: {name: sneaky, namespace: tg-t}\nspec: {systemPrompt: {template: x, locked: true}}\n",
    )
    .expect("yaml");
    let broken: PromptPolicy = serde_yaml::from_str(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: PromptPolicy\nmetadata: {name: broken, namespace: tg-t}\nspec: {systemPrompt: {template: 'Hi {{ user.subject '}}\n",
    )
    .expect("yaml");
    let input = RenderInput {
        tenant: &tenant,
        mcp_connections: &[],
        tenant_policies: &[locked, broken],
        global_policies: &[],
        model_prices: &[],
        api_keys: &[],
    };
    let err = render(input, &RenderOptions::default()).expect_err("refused");
    let objects: Vec<String> =
        err.issues.iter().map(|i| i.object.as_ref().map(ToString::to_string).unwrap_or_default()).collect();
    let reasons: Vec<_> = err.issues.iter().zip(&objects).map(|(i, o)| (o.as_str(), i.reason.as_str())).collect();
    assert_eq!(
        reasons,
        [("PromptPolicy tg-t/sneaky", "LockedOutsideGlobal"), ("PromptPolicy tg-t/broken", "InvalidTemplate")]
    );
    assert!(
        err.to_string().contains("PromptPolicy tg-t/broken: spec.systemPrompt.template: template does not parse"),
        "{err}"
    );
}

#[test]
fn connections_with_clashing_prefixes_are_skipped_not_fatal() {
    let tenant = tenant_yaml("  providers: [{name: p, type: mock}]\n");
    let conn = |name: &str| -> McpConnection {
        serde_yaml::from_str(&format!(
            "apiVersion: tenantgate.dev/v1alpha1\nkind: McpConnection\nmetadata: {{name: {name}, namespace: tg-t}}\nspec: {{url: 'https://mcp.example/mcp', tools: {{prefix: shared}}}}\n"
        ))
        .expect("yaml")
    };
    let conns = [conn("b"), conn("a")];
    let input = RenderInput {
        tenant: &tenant,
        mcp_connections: &conns,
        tenant_policies: &[],
        global_policies: &[],
        model_prices: &[],
        api_keys: &[],
    };
    let rendered = render(input, &RenderOptions::default()).expect("renders");
    assert_eq!(rendered.config.mcp.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["a"]);
    assert_eq!(rendered.skipped.len(), 1);
    assert_eq!(rendered.skipped[0].reason, "PrefixConflict");
    assert!(
        rendered.skipped[0].to_string().starts_with(
            "McpConnection tg-t/b: spec.tools.prefix: prefix \"shared\" is already used by McpConnection a"
        )
    );
}

#[test]
fn golden_configs_parse_back_strictly() {
    for file in ["quickstart.yaml", "acme.yaml", "acme-local.yaml"] {
        let text = std::fs::read_to_string(repo_root().join("crds/tests/golden").join(file)).expect("golden file");
        let config = tenantgate_crds::config::GatewayConfig::from_yaml(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(config.hash_matches(), "{file}");
        assert_eq!(config.to_yaml().expect("YAML"), text, "{file} round-trips byte for byte");
    }
    let text = std::fs::read_to_string(repo_root().join("crds/tests/golden/quickstart.yaml")).expect("golden");
    let err = tenantgate_crds::config::GatewayConfig::from_yaml(
        &text.replace("  maxRetries: 2", "  maxRetries: 2\n  maxRetry: 3"),
    )
    .expect_err("unknown field");
    assert_eq!(err.to_string(), "routing.maxRetry: unknown field");
    let err = tenantgate_crds::config::GatewayConfig::from_yaml(&text.replace("  maxRetries: 2", "  maxRetries: many"))
        .expect_err("type");
    assert!(err.to_string().starts_with("routing.maxRetries: invalid type"), "{err}");
    let err = tenantgate_crds::config::GatewayConfig::from_yaml(&text.replacen("version: 1", "version: 7", 1))
        .expect_err("version");
    assert!(err.to_string().contains("format version 7 is not supported"), "{err}");
}

fn render_tenant(
    tenant: &Tenant,
) -> Result<tenantgate_crds::render::RenderedConfig, tenantgate_crds::render::RenderError> {
    render(alone(tenant), &RenderOptions::default())
}

#[test]
fn the_mcp_resource_is_explicit_or_derived_from_the_exposure_host() {
    let providers = "  providers: [{name: p, type: mock}]\n";
    let plain = render_tenant(&tenant_yaml(providers)).expect("renders");
    assert_eq!(plain.config.auth.mcp.resource, None);
    assert!(plain.config.auth.mcp.scopes.is_empty());

    let exposed = tenant_yaml(&format!("{providers}  exposure: {{host: t.ai.example.com}}\n"));
    let rendered = render_tenant(&exposed).expect("renders");
    assert_eq!(rendered.config.auth.mcp.resource.as_deref(), Some("https://t.ai.example.com/mcp"));
    assert_eq!(tenantgate_crds::render::mcp_resource(&exposed).as_deref(), Some("https://t.ai.example.com/mcp"));

    let explicit = tenant_yaml(&format!(
        "{providers}  exposure: {{host: t.ai.example.com}}\n  mcp: {{resource: 'https://gw.example/t/mcp', scopes: ['mcp:tools', openid]}}\n"
    ));
    let config = render_tenant(&explicit).expect("renders").config;
    assert_eq!(config.auth.mcp.resource.as_deref(), Some("https://gw.example/t/mcp"));
    assert_eq!(config.auth.mcp.scopes, ["mcp:tools", "openid"]);
    let yaml = config.to_yaml().expect("YAML");
    assert!(yaml.contains("resource: https://gw.example/t/mcp"), "{yaml}");
    assert_eq!(tenantgate_crds::config::GatewayConfig::from_yaml(&yaml).expect("parses back"), config);
}

#[test]
fn a_bad_mcp_resource_or_scope_refuses_the_config_naming_the_field() {
    let tenant = tenant_yaml(
        "  providers: [{name: p, type: mock}]\n  mcp: {resource: 'https://gw.example/mcp#x', scopes: [ok, 'two words']}\n",
    );
    let text = render_tenant(&tenant).expect_err("refused").to_string();
    assert!(text.contains("Tenant t: spec.mcp.resource") && text.contains("fragment"), "{text}");
    assert!(text.contains("spec.mcp.scopes[1]") && text.contains("\"two words\""), "{text}");
    assert!(!text.contains("spec.mcp.scopes[0]"), "{text}");
    let relative = tenant_yaml("  providers: [{name: p, type: mock}]\n  mcp: {resource: '/mcp'}\n");
    let text = render_tenant(&relative).expect_err("refused").to_string();
    assert!(text.contains("spec.mcp.resource") && text.contains("not an absolute URL"), "{text}");
}

#[test]
fn tool_access_rules_reach_the_config_and_a_rule_granting_nobody_skips_the_connection() {
    let tenant = tenant_yaml("  providers: [{name: p, type: mock}]\n");
    let connection = |name: &str, tools: &str| -> McpConnection {
        serde_yaml::from_str(&format!(
            "apiVersion: tenantgate.dev/v1alpha1\nkind: McpConnection\nmetadata: {{name: {name}, namespace: tg-t}}\nspec:\n  url: https://mcp.example.com/mcp\n  tools: {tools}\n"
        ))
        .expect("yaml")
    };
    let good = connection(
        "gh",
        "{accessDefault: deny, access: [{tools: ['get_*', search], roles: [developer], subjects: ['alice@x']}]}",
    );
    let nobody = connection("bad", "{access: [{tools: ['get_*']}]}");
    let connections = [good, nobody];
    let input = RenderInput {
        tenant: &tenant,
        mcp_connections: &connections,
        tenant_policies: &[],
        global_policies: &[],
        model_prices: &[],
        api_keys: &[],
    };
    let rendered = render(input, &RenderOptions::default()).expect("renders");
    let names: Vec<_> = rendered.config.mcp.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["gh"]);
    let tools = &rendered.config.mcp[0].tools;
    assert_eq!(tools.access_default, tenantgate_crds::v1alpha1::AccessDefault::Deny);
    assert_eq!(tools.access[0].tools, ["get_*", "search"]);
    assert_eq!(
        (tools.access[0].roles.as_slice(), tools.access[0].subjects.as_slice()),
        (&["developer".to_string()][..], &["alice@x".to_string()][..])
    );
    let issue = rendered.skipped.first().expect("skipped").to_string();
    assert!(
        issue.contains("McpConnection tg-t/bad: spec.tools.access[0]") && issue.contains("role or subject"),
        "{issue}"
    );
}

/// Providers of the Entra ID and workload identity tests: Azure with a client
/// secret and with a federated assertion, Vertex with workload identity.
const IDENTITY_PROVIDERS: &str = "  providers:
    - {name: secret, type: azureOpenai, baseUrl: 'https://res.openai.azure.com', azure: {entraId: {tenantId: contoso.onmicrosoft.com, clientId: app-1, clientSecretSecretRef: {name: entra, key: secret}}}}
    - {name: federated, type: azureOpenai, baseUrl: 'https://res.openai.azure.com', azure: {apiVersion: '2024-10-21', entraId: {tenantId: 0000-1111, clientId: app-2, authorityHost: 'https://login.microsoftonline.us/'}}}
    - name: p
      type: vertex
      baseUrl: https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1/publishers/google
      vertex:
        workloadIdentity:
          audience: //iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/cluster
          serviceAccountEmail: llm@p.iam.gserviceaccount.com
";

#[test]
fn workload_identity_tokens_are_projected_files_one_per_audience() {
    use tenantgate_crds::config::EntraCredential;
    use tenantgate_crds::render::identity_token_slug;
    let tenant = tenant_yaml(IDENTITY_PROVIDERS);
    let rendered = render_tenant(&tenant).expect("renders");
    let google =
        "https://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/cluster";
    assert_eq!(
        rendered.identity_token_audiences.iter().map(String::as_str).collect::<Vec<_>>(),
        ["api://AzureADTokenExchange", google],
        "one token per audience, however many providers use it"
    );
    let slug = identity_token_slug("api://AzureADTokenExchange");
    assert_eq!(slug, identity_token_slug("api://AzureADTokenExchange"), "deterministic");
    assert_ne!(slug, identity_token_slug(google));
    assert!(slug.len() <= 63 && slug.chars().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()), "{slug}");

    let providers = &rendered.config.providers;
    let entra = |i: usize| providers[i].azure.as_ref().and_then(|a| a.entra_id.clone()).expect("entra id");
    let secret = entra(0);
    assert_eq!(secret.token_url, "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token");
    assert_eq!(secret.client_id, "app-1");
    assert_eq!(secret.credential, EntraCredential::ClientSecretFile("/var/run/secrets/tenantgate/entra/secret".into()));
    let federated = entra(1);
    assert_eq!(federated.token_url, "https://login.microsoftonline.us/0000-1111/oauth2/v2.0/token");
    assert_eq!(
        federated.credential,
        EntraCredential::ClientAssertionFile(format!("/var/run/secrets/tenantgate-identity/{slug}/token"))
    );
    assert_eq!(providers[1].azure.as_ref().and_then(|a| a.api_version.as_deref()), Some("2024-10-21"));
    assert_eq!(providers[1].api_key_file, None);

    let wif = providers[2].google_workload_identity.clone().expect("workload identity");
    assert_eq!(wif.audience, google.replacen("https:", "", 1), "STS gets the pool provider's name");
    assert_eq!(
        wif.subject_token_file,
        format!("/var/run/secrets/tenantgate-identity/{}/token", identity_token_slug(google))
    );
    assert_eq!(wif.service_account_email.as_deref(), Some("llm@p.iam.gserviceaccount.com"));
    assert_eq!(wif.sts_url, "https://sts.googleapis.com/v1/token");
    assert_eq!(wif.iam_credentials_url, "https://iamcredentials.googleapis.com");
    assert_eq!(providers[2].service_account_key_file, None);

    // Local mode puts the tokens where the caller says (a test writes them itself).
    let input = alone(&tenant);
    let local = render(input, &local()).expect("renders locally");
    assert_eq!(
        local.config.providers[1].azure.as_ref().and_then(|a| a.entra_id.clone()).map(|e| e.credential),
        Some(EntraCredential::ClientAssertionFile(format!("/run/tenantgate/identity/{slug}/token")))
    );
    let plain = render_tenant(&tenant_yaml("  providers: [{name: p, type: mock}]\n")).expect("renders");
    assert!(plain.identity_token_audiences.is_empty(), "no workload identity, no token");
}

#[test]
fn token_endpoints_at_local_addresses_are_refused_unless_allowed() {
    let tenant = tenant_yaml(
        &IDENTITY_PROVIDERS
            .replace("serviceAccountEmail: llm@p.iam.gserviceaccount.com", "stsUrl: 'http://169.254.169.254/token'"),
    );
    let err = render_tenant(&tenant).expect_err("metadata address refused");
    assert!(err.to_string().contains("spec.providers[2].vertex.workloadIdentity.stsUrl"), "{err}");
}

#[test]
fn azure_and_vertex_need_exactly_one_credential() {
    let doc = |providers: &str| {
        format!(
            "apiVersion: tenantgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: t}}\nspec:\n  auth:\n    jwt: {{issuer: 'https://i', audiences: [a], jwksUri: 'https://idp.example/jwks'}}\n  models: [{{name: m, targets: [{{provider: p, model: x}}]}}]\n  providers:\n{providers}"
        )
    };
    let refused =
        |providers: &str| ManifestSet::default().add_yaml("t.yaml", &doc(providers)).expect_err("refused").to_string();
    ManifestSet::default()
        .add_yaml("t.yaml", &doc(IDENTITY_PROVIDERS.trim_start_matches("  providers:\n")))
        .expect("Entra ID and workload identity are accepted");
    let azure = "    - {name: p, type: azureOpenai, baseUrl: 'https://r.example', apiKeySecretRef: {name: k, key: k}, azure: {entraId: {tenantId: t, clientId: c}}}\n";
    assert!(refused(azure).contains("exactly one of apiKeySecretRef (its api-key) or azure.entraId"));
    let neither = "    - {name: p, type: azureOpenai, baseUrl: 'https://r.example', azure: {}}\n";
    assert!(refused(neither).contains("exactly one of apiKeySecretRef"));
    let bad_tenant = "    - {name: p, type: azureOpenai, baseUrl: 'https://r.example', azure: {entraId: {tenantId: 'a/../b', clientId: c}}}\n";
    assert!(refused(bad_tenant).contains("must be a directory (tenant) ID"));
    let vertex =
        |settings: &str| format!("    - {{name: p, type: vertex, baseUrl: 'https://v.example', vertex: {settings}}}\n");
    let pool = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/a/providers/b";
    let both = vertex(&format!(
        "{{serviceAccountKeySecretRef: {{name: k, key: k}}, workloadIdentity: {{audience: '{pool}'}}}}"
    ));
    assert!(refused(&both).contains("set exactly one of serviceAccountKeySecretRef or workloadIdentity"));
    assert!(refused(&vertex("{}")).contains("set exactly one of serviceAccountKeySecretRef or workloadIdentity"));
    let not_a_pool = vertex("{workloadIdentity: {audience: 'https://example.com'}}");
    assert!(refused(&not_a_pool).contains("must be a workload identity pool provider"));
}

#[test]
fn targets_are_priced_from_the_tenant_the_cluster_or_the_defaults_and_the_rest_are_named() {
    let mut set = ManifestSet::default();
    set.add_yaml(
        "t.yaml",
        "apiVersion: tenantgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: t}\nspec:\n  auth:\n    jwt: {issuer: i, audiences: [a], jwksUri: 'https://idp.example/jwks'}\n  providers: [{name: o, type: openai, baseUrl: 'https://api.openai.com/v1'}, {name: c, type: anthropic, baseUrl: 'https://api.anthropic.com/v1'}]\n  models:\n  - {name: own, targets: [{provider: o, model: gpt-4o, price: {inputPerMillion: '2.000', outputPerMillion: '8', perRequest: '0.01'}}]}\n  - {name: cluster, targets: [{provider: c, model: claude-sonnet-4-5}, {provider: o, model: my-finetune}]}\n  - {name: shipped, targets: [{provider: o, model: gpt-4o-mini}]}\n---\napiVersion: tenantgate.dev/v1alpha1\nkind: ModelPrice\nmetadata: {name: sonnet}\nspec: {provider: anthropic, model: claude-sonnet-4-5, price: {inputPerMillion: '2.5', outputPerMillion: '12'}}\n",
    )
    .expect("valid YAML");
    let tenant = set.tenant("t").expect("tenant");
    let rendered = set.render(tenant, OPERATOR_NAMESPACE, &RenderOptions::default()).expect("renders");
    let pricing = rendered.config.pricing.as_ref().expect("pricing");
    assert_eq!(pricing.currency, "USD");
    let rows: Vec<String> = pricing
        .targets
        .iter()
        .map(|t| {
            format!(
                "{}/{} {} {} {} {} {:?}",
                t.provider,
                t.model,
                t.input_per_million,
                t.output_per_million,
                t.cached_input_per_million,
                t.per_request,
                t.source
            )
        })
        .collect();
    let shipped = tenantgate_crds::pricing::defaults().checked.clone();
    assert_eq!(
        rows,
        [
            "c/claude-sonnet-4-5 2.5 12 2.5 0 ModelPrice(\"sonnet\")".to_string(),
            "o/gpt-4o 2 8 2 0.01 Tenant".to_string(),
            format!("o/gpt-4o-mini 0.15 0.6 0.075 0 Default({shipped:?})"),
        ]
    );
    assert_eq!(rendered.unpriced_targets, ["o/my-finetune"]);
    // The config carries each price once: not in the models.
    assert!(rendered.config.models.iter().flat_map(|m| &m.targets).all(|t| t.price.is_none()));

    // A tenant counting in euros: the dollar prices do not apply.
    let mut euro = tenant.clone();
    euro.spec.currency = "EUR".into();
    euro.spec.models.iter_mut().flat_map(|m| m.targets.iter_mut()).for_each(|t| t.price = None);
    let input = RenderInput {
        tenant: &euro,
        mcp_connections: &[],
        tenant_policies: &[],
        global_policies: &[],
        model_prices: &set.model_prices,
        api_keys: &[],
    };
    let rendered = render(input, &RenderOptions::default()).expect("renders");
    assert!(rendered.config.pricing.is_none());
    assert_eq!(rendered.unpriced_targets, ["c/claude-sonnet-4-5", "o/gpt-4o", "o/gpt-4o-mini", "o/my-finetune"]);
}

#[test]
fn a_price_that_is_not_a_decimal_string_is_refused_naming_the_field() {
    let yaml = |price: &str| {
        format!(
            "apiVersion: tenantgate.dev/v1alpha1\nkind: ModelPrice\nmetadata: {{name: p}}\nspec: {{provider: openai, model: m, price: {{inputPerMillion: '1', outputPerMillion: '{price}'}}}}\n"
        )
    };
    let mut set = ManifestSet::default();
    let err = set.add_yaml("p.yaml", &yaml("1.5e3")).expect_err("not a decimal");
    let text = err.to_string();
    assert!(text.contains("ModelPrice p") && text.contains("outputPerMillion") && text.contains("decimal"), "{text}");
    set.add_yaml("p.yaml", &yaml("1.5")).expect("a decimal");
    let err = set
        .add_yaml("q.yaml", &yaml("1.5").replace("{name: p}", "{name: q}").replace("spec: {", "spec: {currency: usd, "))
        .expect_err("lowercase currency");
    assert!(err.to_string().contains("ISO 4217"), "{err}");
    // Rendered without the API server's validation (a Tenant built in code): the render refuses it.
    let mut tenant = tenant_yaml("  providers: [{name: p, type: openai, baseUrl: 'https://api.openai.com/v1'}]\n");
    tenant.spec.models[0].targets[0].price =
        Some(tenantgate_crds::v1alpha1::Price { input_per_million: "-1".into(), ..Default::default() });
    let input = alone(&tenant);
    let err = render(input, &RenderOptions::default()).expect_err("a negative price");
    assert!(
        err.to_string()
            .contains("spec.models[0].targets[0].price.inputPerMillion: \"-1\" is not a non-negative decimal"),
        "{err}"
    );
}

#[test]
fn tracing_is_off_by_default_and_renders_its_endpoint_and_headers_file() {
    let providers = "  providers: [{name: p, type: mock}]\n";
    assert_eq!(render_tenant(&tenant_yaml(providers)).expect("renders").config.tracing, None);

    let traced = tenant_yaml(&format!(
        "{providers}  observability:\n    tracing: {{otlpEndpoint: 'http://otel.observability.svc:4317', protocol: grpc, sampleRatio: 0.25, headersSecretRef: {{name: otlp, key: headers}}}}\n"
    ));
    let rendered = render_tenant(&traced).expect("renders");
    let tracing = rendered.config.tracing.as_ref().expect("tracing rendered");
    assert_eq!(tracing.otlp_endpoint, "http://otel.observability.svc:4317");
    assert_eq!(tracing.protocol, tenantgate_crds::v1alpha1::OtlpProtocol::Grpc);
    assert_eq!(tracing.sample_ratio, 0.25);
    let headers = tracing.headers_file.as_deref().expect("a headers file");
    assert!(rendered.secret_refs.iter().any(|r| r.name == "otlp" && r.key == "headers"), "the Secret is mounted");
    assert!(headers.ends_with("otlp/headers") || headers.contains("otlp"), "{headers}");

    // The defaults: HTTP with protobuf, every trace.
    let plain = tenant_yaml(&format!(
        "{providers}  observability: {{tracing: {{otlpEndpoint: 'https://otlp.example.com'}}}}\n"
    ));
    let tracing = render_tenant(&plain).expect("renders").config.tracing.expect("tracing");
    assert_eq!(tracing.protocol, tenantgate_crds::v1alpha1::OtlpProtocol::HttpProtobuf);
    assert_eq!(tracing.sample_ratio, 1.0);

    for (endpoint, says) in
        [("'ftp://otel:21'", "http:// or https://"), ("'http://user:pw@otel:4318'", "headersSecretRef")]
    {
        let bad = tenant_yaml(&format!("{providers}  observability: {{tracing: {{otlpEndpoint: {endpoint}}}}}\n"));
        let err = render_tenant(&bad).expect_err("refused").to_string();
        assert!(err.contains("spec.observability.tracing.otlpEndpoint") && err.contains(says), "{err}");
    }
}

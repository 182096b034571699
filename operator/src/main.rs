//! `tenantgate-operator`: `run` the controllers, or `render` offline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use tenantgate_operator::labels::parse_labels;
use tenantgate_operator::run::{RunOptions, run};
use tenantgate_operator::tenant::build::{BuildSettings, DnsPeer, TenantPods};

#[derive(Parser, Debug)]
#[command(name = "tenantgate-operator", version, about = "Reconciles Tenants into isolated AI gateway stacks")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controllers (the default).
    Run,
    /// Print, without a cluster, every object the operator would apply for the CRD YAML in DIR.
    Render {
        /// Files or directories of CRD YAML (Tenants, McpConnections, PromptPolicies, Secrets).
        #[arg(short = 'f', long = "filename", required = true)]
        paths: Vec<PathBuf>,
        /// As in a cluster with the Gateway API: HTTPRoutes for `exposure.gatewayRef`.
        #[arg(long)]
        gateway_api: bool,
        /// As in a cluster with the Prometheus Operator: a ServiceMonitor per gateway.
        #[arg(long)]
        service_monitors: bool,
        /// The API server's endpoints (ADDRESS:PORT, repeatable or comma-separated), as
        /// `kubectl get endpointslice -n default kubernetes` shows them: the gateways'
        /// NetworkPolicy egress to them. Without it the policy has no such rule.
        #[arg(long = "api-server", value_delimiter = ',')]
        api_server: Vec<SocketAddr>,
    },
    /// Exit 0 when an HTTP GET of URL (http://HOST:PORT/PATH) answers 200 (each try
    /// bounded by 10 s, tried once a second up to --attempts times), else 1 with what it
    /// got last: the chart's `helm test` probe of /readyz.
    Probe {
        /// The URL to get.
        url: String,
        /// Tries before giving up.
        #[arg(long, default_value_t = 30)]
        attempts: usize,
    },
    /// Print the kinds the operator manages, its table, one a line:
    /// `<plural>[.<group>] <apiVersion> <kind> <Namespaced|Cluster> <phase> <required|optional>`.
    Kinds,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Namespace the operator runs in: its global PromptPolicies and its Lease live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "tenantgate-system", global = true)]
    namespace: String,
    /// Image of the gateway pods.
    #[arg(long, env = "TENANTGATE_GATEWAY_IMAGE", default_value = "ghcr.io/tenantgate/gateway:0.1.0", global = true)]
    gateway_image: String,
    /// Address of /livez, /readyz and /metrics.
    #[arg(long, env = "TENANTGATE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Requests per second to the API server.
    #[arg(long, env = "TENANTGATE_API_QPS", default_value_t = 100)]
    api_qps: u32,
    /// Burst of requests to the API server.
    #[arg(long, env = "TENANTGATE_API_BURST", default_value_t = 200)]
    api_burst: u32,
    /// Tenants reconciled at once.
    #[arg(long, env = "TENANTGATE_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// Take part in leader election through a Lease (turn off only for a single replica).
    #[arg(long, env = "TENANTGATE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "TENANTGATE_LEASE_NAME", default_value = "tenantgate-operator")]
    lease_name: String,
    /// This replica's identity (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Label (key=value) of namespaces whose pods may scrape gateway metrics.
    #[arg(
        long,
        env = "TENANTGATE_METRICS_NAMESPACE_LABEL",
        default_value = "tenantgate.dev/metrics-scraper=true",
        global = true
    )]
    metrics_namespace_label: String,
    /// Labels (key=value,...) of the namespace of the cluster DNS pods, which gateways may query.
    #[arg(
        long,
        env = "TENANTGATE_DNS_NAMESPACE_SELECTOR",
        default_value = "kubernetes.io/metadata.name=kube-system",
        global = true
    )]
    dns_namespace_selector: String,
    /// Labels (key=value,...) of the cluster DNS pods.
    #[arg(long, env = "TENANTGATE_DNS_POD_SELECTOR", default_value = "k8s-app=kube-dns", global = true)]
    dns_pod_selector: String,
    /// Further DNS addresses gateways may query, as CIDRs (comma-separated), e.g.
    /// NodeLocal DNSCache's 169.254.20.10/32, which no pod selector matches.
    #[arg(long, env = "TENANTGATE_DNS_CIDRS", value_delimiter = ',', global = true)]
    dns_cidrs: Vec<String>,
    /// Secrets (comma-separated names, in each tenant namespace) the gateway and
    /// stdio bridge pods pull their images with.
    #[arg(long, env = "TENANTGATE_GATEWAY_IMAGE_PULL_SECRETS", value_delimiter = ',', global = true)]
    gateway_image_pull_secrets: Vec<String>,
    /// Node labels (key=value,...) the gateway and stdio bridge pods require.
    #[arg(long, env = "TENANTGATE_GATEWAY_NODE_SELECTOR", default_value = "", global = true)]
    gateway_node_selector: String,
    /// Tolerations of the gateway and stdio bridge pods, as a JSON array of Kubernetes tolerations.
    #[arg(long, env = "TENANTGATE_GATEWAY_TOLERATIONS", default_value = "[]", global = true)]
    gateway_tolerations: String,
    /// PriorityClass of the gateway and stdio bridge pods.
    #[arg(long, env = "TENANTGATE_GATEWAY_PRIORITY_CLASS_NAME", global = true)]
    gateway_priority_class_name: Option<String>,
    /// Watch only Secrets with these labels (key=value,...), instead of the metadata of
    /// every Secret: the Secrets tenants reference must then carry them (an unlabelled
    /// one is reported missing), and the generated gateway-keys Secrets get them.
    #[arg(long, env = "TENANTGATE_SECRET_LABEL_SELECTOR", default_value = "", global = true)]
    secret_label_selector: String,
    /// Log format: json or text.
    #[arg(long, env = "TENANTGATE_LOG_FORMAT", default_value = "json", global = true)]
    log_format: String,
}

/// Labels from a flag, or an error naming the flag.
fn labels_of(flag: &str, text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    parse_labels(text).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
}

/// [`build_settings`], or exit 2 with what is wrong with the flags.
fn settings_or_exit(args: &RunArgs) -> BuildSettings {
    build_settings(args).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    })
}

/// What the flags say about how stacks are built (`run` and `render` alike).
fn build_settings(args: &RunArgs) -> anyhow::Result<BuildSettings> {
    for cidr in &args.dns_cidrs {
        let valid = cidr.split_once('/').is_some_and(|(ip, len)| {
            ip.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| len.parse::<u8>().is_ok_and(|l| l <= if ip.is_ipv4() { 32 } else { 128 }))
        });
        anyhow::ensure!(valid, "--dns-cidrs: {cidr:?} is not a CIDR (ADDRESS/LENGTH, e.g. 169.254.20.10/32)");
    }
    let tolerations = serde_json::from_str(&args.gateway_tolerations).map_err(|e| {
        anyhow::anyhow!("--gateway-tolerations: not a JSON array of tolerations ({e}): {}", args.gateway_tolerations)
    })?;
    let metrics_namespace_labels = labels_of("metrics-namespace-label", &args.metrics_namespace_label)?;
    anyhow::ensure!(!metrics_namespace_labels.is_empty(), "--metrics-namespace-label: empty (key=value)");
    let dns = DnsPeer {
        namespace_labels: labels_of("dns-namespace-selector", &args.dns_namespace_selector)?,
        pod_labels: labels_of("dns-pod-selector", &args.dns_pod_selector)?,
        cidrs: args.dns_cidrs.clone(),
    };
    Ok(BuildSettings {
        operator_namespace: args.namespace.clone(),
        gateway_image: args.gateway_image.clone(),
        metrics_namespace_labels,
        dns,
        tenant_pods: TenantPods {
            image_pull_secrets: args.gateway_image_pull_secrets.iter().filter(|s| !s.is_empty()).cloned().collect(),
            node_selector: labels_of("gateway-node-selector", &args.gateway_node_selector)?,
            tolerations,
            priority_class_name: args.gateway_priority_class_name.clone().filter(|p| !p.is_empty()),
        },
        secret_watch_labels: labels_of("secret-label-selector", &args.secret_label_selector)?,
        ..BuildSettings::default()
    })
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).with_current_span(true).init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = cli.run;
    match cli.command {
        Some(Command::Kinds) => {
            for k in tenantgate_operator::kinds::managed_kinds() {
                let r = &k.resource;
                let resource = if r.group.is_empty() { r.plural.clone() } else { format!("{}.{}", r.plural, r.group) };
                let scope = if k.namespaced { "Namespaced" } else { "Cluster" };
                let required = if k.optional { "optional" } else { "required" };
                println!("{resource} {} {} {scope} {:?} {required}", r.api_version, r.kind, k.phase);
            }
            Ok(())
        }
        Some(Command::Render { paths, gateway_api, service_monitors, api_server }) => {
            let settings = BuildSettings { gateway_api, service_monitors, api_server, ..settings_or_exit(&args) };
            match tenantgate_operator::render_cmd::render(&paths, &settings) {
                Ok(yaml) => {
                    print!("{yaml}");
                    Ok(())
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1);
                }
            }
        }
        Some(Command::Probe { url, attempts }) => {
            match tenantgate_operator::probe::until_ok(&url, attempts, std::time::Duration::from_secs(10)) {
                Ok(()) => {
                    println!("{url}: 200");
                    Ok(())
                }
                Err(e) => {
                    eprintln!("{url}: {e}");
                    std::process::exit(1);
                }
            }
        }
        None | Some(Command::Run) => {
            init_logging(&args.log_format);
            let settings = settings_or_exit(&args);
            let identity = args.identity.unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    std::env::var("HOSTNAME").unwrap_or_else(|_| "tenantgate-operator".into()),
                    std::process::id()
                )
            });
            run(RunOptions {
                settings,
                metrics_addr: args.metrics_addr,
                api_qps: args.api_qps,
                api_burst: args.api_burst,
                concurrency: args.concurrency,
                leader_election: args.leader_election,
                lease_name: args.lease_name,
                identity,
            })
            .await
        }
    }
}

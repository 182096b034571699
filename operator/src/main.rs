//! `tenantgate-operator`: `run` the controllers, or `render` offline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use tenantgate_operator::run::{RunOptions, run};
use tenantgate_operator::tenant::build::BuildSettings;

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
    /// Log format: json or text.
    #[arg(long, env = "TENANTGATE_LOG_FORMAT", default_value = "json", global = true)]
    log_format: String,
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

fn label_pair(s: &str) -> BTreeMap<String, String> {
    match s.split_once('=') {
        Some((k, v)) => BTreeMap::from([(k.to_string(), v.to_string())]),
        None => BTreeMap::from([(s.to_string(), String::new())]),
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
        Some(Command::Render { paths }) => {
            let settings = BuildSettings {
                operator_namespace: args.namespace,
                gateway_image: args.gateway_image,
                metrics_namespace_labels: label_pair(&args.metrics_namespace_label),
                gateway_api: false,
                service_monitors: false,
                // Offline: the API server's endpoints are unknown, so the
                // NetworkPolicy shown has no rule for them.
                api_server: Vec::new(),
            };
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
        None | Some(Command::Run) => {
            init_logging(&args.log_format);
            let identity = args.identity.unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    std::env::var("HOSTNAME").unwrap_or_else(|_| "tenantgate-operator".into()),
                    std::process::id()
                )
            });
            run(RunOptions {
                operator_namespace: args.namespace,
                gateway_image: args.gateway_image,
                metrics_addr: args.metrics_addr,
                api_qps: args.api_qps,
                api_burst: args.api_burst,
                concurrency: args.concurrency,
                leader_election: args.leader_election,
                lease_name: args.lease_name,
                identity,
                metrics_namespace_labels: label_pair(&args.metrics_namespace_label),
            })
            .await
        }
    }
}

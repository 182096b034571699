//! `tenantgate-gateway`: see the library for everything.

use clap::Parser;
use tenantgate_gateway::cli::{Cli, Command};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => {
            println!("{}", tenantgate_gateway::token::mint(&args).map_err(anyhow::Error::msg)?);
            Ok(())
        }
        Some(Command::Serve(args)) => serve(*args).await,
        None => serve(cli.serve).await,
    }
}

async fn serve(args: tenantgate_gateway::cli::ServeArgs) -> anyhow::Result<()> {
    let _logs = tenantgate_gateway::telemetry::init_logs(args.log_format);
    if let Err(e) = tenantgate_gateway::server::run(args).await {
        tracing::error!(error = %e, "gateway failed");
        return Err(e.into());
    }
    Ok(())
}

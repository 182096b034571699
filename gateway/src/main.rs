//! `tenantgate-gateway`: see the library for everything.

use clap::Parser;
use tenantgate_gateway::cli::{Cli, Command, DatabaseCommand};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    // Before any TLS client exists: one rustls crypto provider for the whole process.
    tenantgate_gateway::tls::ensure_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => {
            println!("{}", tenantgate_gateway::token::mint(&args)?);
            Ok(())
        }
        Some(Command::Serve(args)) => serve(*args).await,
        Some(Command::StdioBridge(args)) => {
            let _logs = tenantgate_gateway::telemetry::init_logs(args.log_format);
            tenantgate_gateway::mcp::bridge::stdio_bridge(&args).await?;
            Ok(())
        }
        Some(Command::InstallBridge(args)) => {
            let target = tenantgate_gateway::mcp::bridge::install_bridge(&args.dir)?;
            println!("{}", target.display());
            Ok(())
        }
        Some(Command::Database(DatabaseCommand::Provision(args))) => {
            print!("{}", tenantgate_gateway::database::provision(&args).await?);
            Ok(())
        }
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

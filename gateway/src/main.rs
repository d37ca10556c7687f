//! `meridian-gateway`: the east-west gateway binary.

use clap::Parser;
use meridian_api::signal::shutdown_on_signal;
use meridian_api::telemetry;
use meridian_gateway::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(config.log_format, "info");
    meridian_gateway::run(config, shutdown_on_signal()).await?;
    Ok(())
}

//! `meridian-dns`: authoritative DNS for Meridian's global services.

use clap::Parser;
use meridian_api::signal::shutdown_on_signal;
use meridian_api::telemetry::{self, LogFormat};
use meridian_dns::config::Config;

/// hickory logs every query at info level; keep that out of the default output.
const DEFAULT_LOG_FILTER: &str = "info,hickory_server=warn,hickory_proto=warn,hickory_net=warn";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(LogFormat::Text, DEFAULT_LOG_FILTER);
    meridian_dns::run(config, shutdown_on_signal()).await?;
    Ok(())
}

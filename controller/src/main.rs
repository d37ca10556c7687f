//! `meridian-controller`: see the library documentation and `--help`.

use anyhow::Context as _;
use clap::Parser;
use meridian_api::signal::shutdown_on_signal;
use meridian_api::telemetry::{self, LogFormat};
use meridian_controller::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init(LogFormat::Text, "info");
    let config = Config::parse();
    meridian_controller::run(config, shutdown_on_signal())
        .await
        .context("meridian-controller failed")
}

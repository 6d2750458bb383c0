use anyhow::Context;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    gateway::memory::configure();
    gateway::telemetry::init();
    let config = match gateway::Config::from_env() {
        Ok(config) => config,
        Err(gateway::config::ConfigError::Flags(e)) => e.exit(),
        Err(e) => return Err(e).context("invalid configuration"),
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    let shutdown = gateway::shutdown::on_signal();
    gateway::run(config, listener, shutdown).await?;
    Ok(())
}

use anyhow::Context;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service::telemetry::init();
    let config = match publisher::Config::from_env() {
        Ok(config) => config,
        Err(publisher::config::ConfigError::Flags(e)) => e.exit(),
        Err(e) => return Err(e).context("invalid configuration"),
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    let shutdown = service::shutdown::on_signal();
    publisher::run(config, listener, shutdown).await?;
    Ok(())
}

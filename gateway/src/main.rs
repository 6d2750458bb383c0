use anyhow::Context;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    gateway::telemetry::init();
    let listen = std::env::var("GATEWAY_LISTEN").unwrap_or_else(|_| "0.0.0.0:8080".into());
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    let shutdown = gateway::shutdown::on_signal();
    gateway::run(listener, shutdown).await?;
    Ok(())
}

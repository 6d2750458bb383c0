//! [`Publisher`]: the real publisher server (`publisher::run`) in this process on
//! `127.0.0.1:0`, on one Redis or a cluster, configured as the binary configures itself.
//! The `publisher` binary as a child process is [`crate::LoggedProcess`].

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{RedisCluster, within};

/// A real publisher server (`publisher::run`) on `127.0.0.1:0`. Stopped on drop.
#[derive(Debug)]
pub struct Publisher {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), publisher::RunError>>>,
}

impl Publisher {
    /// Starts with default settings against `redis_url`.
    pub async fn start(redis_url: &str) -> anyhow::Result<Self> {
        Self::start_with(redis_url, |_| {}).await
    }

    /// Starts with default settings changed by `tweak`.
    pub async fn start_with(
        redis_url: &str,
        tweak: impl FnOnce(&mut publisher::Config),
    ) -> anyhow::Result<Self> {
        Self::start_configured(redis_url, &[], tweak).await
    }

    /// Starts with `PUBLISHER_*` settings read as the binary reads its environment.
    pub async fn start_env(redis_url: &str, settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_configured(redis_url, settings, |_| {}).await
    }

    /// Starts in cluster mode (`PUBLISHER_REDIS_CLUSTER`) on `cluster`'s seed nodes.
    pub async fn start_cluster(cluster: &RedisCluster) -> anyhow::Result<Self> {
        let env = [("PUBLISHER_REDIS_CLUSTER", cluster.seed_list())];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Self::start_from(&env, |_| {}).await
    }

    async fn start_configured(
        redis_url: &str,
        settings: &[(&str, &str)],
        tweak: impl FnOnce(&mut publisher::Config),
    ) -> anyhow::Result<Self> {
        let mut env = vec![("PUBLISHER_REDIS_URL", redis_url)];
        env.extend_from_slice(settings);
        Self::start_from(&env, tweak).await
    }

    async fn start_from(
        settings: &[(&str, &str)],
        tweak: impl FnOnce(&mut publisher::Config),
    ) -> anyhow::Result<Self> {
        let mut env = std::collections::HashMap::<String, String>::new();
        env.extend(
            settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let mut config = publisher::Config::load(["publisher"].map(Into::into), &env)?;
        tweak(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(publisher::run(config, listener, shutdown.clone()));
        Ok(Self {
            addr,
            shutdown,
            task: Some(task),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Cancels and waits for the server to stop.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            within("publisher to stop", task).await???;
        }
        Ok(())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

//! The server under load, whichever it is: our gateway fleet (published through the
//! publisher library into Redis) or a peer (published over its HTTP API). Owns its
//! `redis-server`, so every target and client count starts on a fresh one.

use std::net::SocketAddr;
use std::path::Path;

use bench::load::{GatewayProcess, cpu_seconds, gateway_binary, pss_kib, rss_kib, unix_nanos};
use bench::peers::Peer;
use proto::{Object, Topic};
use publisher::{RedisOptions, RedisStore, Store};
use serde_json::json;
use system_tests::RedisServer;

use crate::{Args, Check, STREAM_PATH, TOPIC, Target};

#[derive(Debug)]
pub enum Server {
    Gateway {
        processes: Vec<GatewayProcess>,
        store: RedisStore,
        topic: Topic,
        redis: RedisServer,
    },
    Peer {
        peer: Peer,
        redis: RedisServer,
    },
}

/// Memory of a set of processes, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss: u64,
    pub pss: u64,
}

impl Server {
    /// Starts a fresh `redis-server` and the target on it, ready for `clients` streams.
    pub async fn start(args: &Args, target: Target, clients: usize) -> anyhow::Result<Self> {
        let redis = RedisServer::start().await?;
        let redis_port = redis.port();
        let work_dir: &Path = &args.work_dir;
        Ok(match target {
            Target::Gateway => {
                let binary = gateway_binary();
                let max_connections = (clients + 1000).to_string();
                let settings = [("GATEWAY_MAX_CONNECTIONS", max_connections.as_str())];
                let mut processes = Vec::new();
                for _ in 0..args.gateways {
                    processes.push(GatewayProcess::start(&binary, &redis.url(), &settings).await?);
                }
                let store = RedisStore::connect_lazy(&redis.url(), RedisOptions::default())?;
                let topic = Topic::new(TOPIC)?;
                // Warm up: load the script, open the connection. Clients connect after it
                // and never see it.
                let warm_up = store.create(&topic, body(unix_nanos(), 0));
                system_tests::within("warm-up publish", warm_up).await??;
                Self::Gateway {
                    processes,
                    store,
                    topic,
                    redis,
                }
            }
            Target::Nchan => {
                let peer = Peer::nchan(&args.nginx, &args.nchan_module, redis_port, work_dir);
                Self::Peer {
                    peer: peer.await?,
                    redis,
                }
            }
            Target::Centrifugo => {
                let peer = Peer::centrifugo(&args.centrifugo, redis_port, work_dir);
                Self::Peer {
                    peer: peer.await?,
                    redis,
                }
            }
        })
    }

    /// Where clients connect; they spread round-robin over these.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        match self {
            Self::Gateway { processes, .. } => processes.iter().map(|g| g.addr).collect(),
            Self::Peer { peer, .. } => vec![peer.addr],
        }
    }

    pub fn stream_path(&self) -> String {
        match self {
            Self::Gateway { .. } => STREAM_PATH.to_owned(),
            Self::Peer { peer, .. } => peer.stream_path(),
        }
    }

    pub fn check(&self) -> Check {
        match self {
            Self::Gateway { .. } => Check::Id,
            Self::Peer { .. } => Check::Seq,
        }
    }

    /// The server's processes (not Redis).
    fn pids(&self) -> Vec<u32> {
        match self {
            Self::Gateway { processes, .. } => processes.iter().map(|g| g.pid).collect(),
            Self::Peer { peer, .. } => peer.pids(),
        }
    }

    fn redis(&self) -> &RedisServer {
        match self {
            Self::Gateway { redis, .. } | Self::Peer { redis, .. } => redis,
        }
    }

    pub fn memory(&self) -> Memory {
        let pids = self.pids();
        Memory {
            rss: pids.iter().filter_map(|&pid| rss_kib(pid)).sum(),
            pss: pids.iter().filter_map(|&pid| pss_kib(pid)).sum(),
        }
    }

    /// CPU seconds so far: (the server's processes, its redis-server).
    pub fn cpu(&self) -> (f64, f64) {
        let server = self
            .pids()
            .iter()
            .filter_map(|pid| cpu_seconds(&pid.to_string()))
            .sum();
        let redis = self
            .redis()
            .pid()
            .and_then(|pid| cpu_seconds(&pid.to_string()))
            .unwrap_or(0.0);
        (server, redis)
    }

    /// Publishes event `seq`, its body carrying the publish time, and waits for the
    /// server (Redis for the gateway, the peer's API otherwise) to accept it.
    ///
    /// # Errors
    /// The publish fails or times out.
    pub async fn publish(&self, seq: u64) -> anyhow::Result<()> {
        match self {
            Self::Gateway { store, topic, .. } => {
                let create = store.create(topic, body(unix_nanos(), seq));
                system_tests::within("publish", create).await??;
            }
            Self::Peer { peer, .. } => peer.publish(unix_nanos(), seq).await?,
        }
        Ok(())
    }

    /// Stops the server and its Redis; reports what the gateways logged.
    pub async fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::Gateway {
                processes, redis, ..
            } => {
                for (i, gateway) in processes.into_iter().enumerate() {
                    let log = gateway.kill().await?;
                    if log.warnings + log.errors > 0 {
                        eprintln!(
                            "  gateway {i}: {} warnings, {} errors; first: {:?}",
                            log.warnings,
                            log.errors,
                            log.samples.first()
                        );
                    }
                }
                drop(redis);
            }
            Self::Peer { peer, redis } => {
                peer.stop().await?;
                drop(redis);
            }
        }
        Ok(())
    }
}

fn body(t: u64, seq: u64) -> Object {
    let mut body = Object::new();
    body.insert("t".into(), json!(t));
    body.insert("seq".into(), json!(seq));
    body
}

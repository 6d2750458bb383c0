//! The server under load, whichever it is: our gateway fleet (published through the
//! publisher library into Redis) or a peer (published over its HTTP API). Owns its
//! `redis-server`, so every target and client count starts on a fresh one.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use bench::load::{
    GatewayProcess, cpu_seconds, cpu_split, gateway_binary, pss_kib, rss_kib, topic_name,
    unix_nanos,
};
use bench::peers::{CHANNEL, Peer, PeerKind};
use proto::{Filter, FilterLimits, Object, RecordId, Topic};
use publisher::{RedisOptions, RedisStore, Store};
use serde_json::{Value, json};
use system_tests::RedisServer;

use crate::{Args, Check, STREAM_PATH, TOPIC, Target, Writes};

/// Records `--writes toggles` updates in turn (ids 1..=16).
pub const TOGGLED: u64 = 16;

#[derive(Debug)]
pub enum Server {
    Gateway {
        processes: Vec<GatewayProcess>,
        store: RedisStore,
        /// Clients spread over these (`--topics`); event `seq` goes to
        /// `topics[(seq - 1) % len]`.
        topics: Vec<Topic>,
        redis: RedisServer,
        writes: Writes,
        /// `--filter`: the stream's `options` query parameter and the filter, as the
        /// gateway parses it, to tell what a client is owed.
        filter: Option<(String, Filter)>,
        /// `--writes toggles`: each toggled record's state, the `last` of its next update.
        states: Mutex<Vec<Object>>,
    },
    Peer {
        peer: Peer,
        /// Channels, as `topics` above.
        channels: Vec<String>,
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
    /// Starts a fresh `redis-server` and the target on it, ready for `clients` streams
    /// spread over `topics` topics.
    pub async fn start(
        args: &Args,
        target: Target,
        clients: usize,
        topics: usize,
    ) -> anyhow::Result<Self> {
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
                let names = (0..topics).map(|k| Topic::new(&topic_name(TOPIC, k, topics)));
                let topics = names.collect::<Result<Vec<_>, _>>()?;
                let topic = &topics[0];
                // Warm up: load the script, open the connection. Clients connect after it
                // and never see it.
                let mut states = Vec::new();
                match args.writes {
                    Writes::Creates => {
                        let warm_up = store.create(topic, body(unix_nanos(), 0));
                        system_tests::within("warm-up publish", warm_up).await??;
                    }
                    // The toggled records, all `done`: the first update of each moves it
                    // into a `status: open` filter.
                    Writes::Toggles => {
                        for id in 1..=TOGGLED {
                            let mut record = toggled(unix_nanos(), 0, false);
                            record.insert("id".into(), json!(id));
                            let create = store.create(topic, record);
                            states.push(
                                system_tests::within("warm-up create", create)
                                    .await??
                                    .record,
                            );
                        }
                    }
                }
                let filter = args.filter.as_deref().map(options).transpose()?;
                Self::Gateway {
                    processes,
                    store,
                    topics,
                    redis,
                    writes: args.writes,
                    filter,
                    states: Mutex::new(states),
                }
            }
            Target::Nchan | Target::Centrifugo => {
                let peer = if target == Target::Nchan {
                    Peer::nchan(&args.nginx, &args.nchan_module, redis_port, work_dir).await?
                } else {
                    Peer::centrifugo(&args.centrifugo, redis_port, work_dir).await?
                };
                Self::Peer {
                    peer,
                    channels: (0..topics)
                        .map(|k| topic_name(CHANNEL, k, topics))
                        .collect(),
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
            Self::Gateway {
                filter: Some((query, _)),
                ..
            } => format!("{STREAM_PATH}&options={query}"),
            Self::Gateway { .. } => STREAM_PATH.to_owned(),
            Self::Peer { peer, .. } => peer.stream_path(),
        }
    }

    /// Whether clients' streams are filtered (a `remove` is then a move-out).
    pub fn filtered(&self) -> bool {
        matches!(
            self,
            Self::Gateway {
                filter: Some(_),
                ..
            }
        )
    }

    /// What a client waits to have read before it counts as connected: the gateway's
    /// start position (sent once Redis confirmed its topic) or Centrifugo's connect reply
    /// (sent once its subscription is made). Nchan sends nothing that says so.
    pub fn ready_marker(&self) -> Option<&'static str> {
        match self {
            Self::Gateway { .. } => Some("id: "),
            Self::Peer { peer, .. } => (peer.kind == PeerKind::Centrifugo).then_some("\"connect\""),
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

    /// User and system CPU seconds so far of the server's processes (not Redis).
    pub fn cpu_split(&self) -> (f64, f64) {
        self.pids()
            .iter()
            .filter_map(|pid| cpu_split(&pid.to_string()))
            .fold((0.0, 0.0), |(u, s), (user, system)| (u + user, s + system))
    }

    /// Publishes event `seq`, its body carrying the publish time, and waits for the
    /// server (Redis for the gateway, the peer's API otherwise) to accept it. Returns what
    /// a client gets of it: `None` when its filter skips it.
    ///
    /// # Errors
    /// The publish fails or times out.
    pub async fn publish(&self, seq: u64) -> anyhow::Result<Option<Delivery>> {
        match self {
            Self::Gateway {
                store,
                topics,
                writes: Writes::Creates,
                filter,
                ..
            } => {
                let topic = &topics[usize::try_from(seq - 1)? % topics.len()];
                let create = store.create(topic, body(unix_nanos(), seq));
                let written = system_tests::within("publish", create).await??;
                Ok(delivery(
                    filter.as_ref().map(|(_, f)| f),
                    &written.record,
                    None,
                ))
            }
            Self::Gateway {
                store,
                topics,
                writes: Writes::Toggles,
                filter,
                states,
                ..
            } => {
                // One topic (`parent` refuses several with toggles).
                let topic = &topics[0];
                // Record 1, 2, .. 16, 1, ..: its first update opens it, the next closes it.
                let index = usize::try_from((seq - 1) % TOGGLED)?;
                let open = ((seq - 1) / TOGGLED).is_multiple_of(2);
                let id = RecordId::Int(i64::try_from(index)? + 1);
                let last = states
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(index)
                    .cloned()
                    .context("toggled record")?;
                let replace = store.replace(topic, &id, toggled(unix_nanos(), seq, open));
                let written = system_tests::within("publish", replace).await??;
                let filter = filter.as_ref().map(|(_, f)| f);
                let delivery = delivery(filter, &written.record, Some(&last));
                if let Some(state) = states
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_mut(index)
                {
                    *state = written.record;
                }
                Ok(delivery)
            }
            Self::Peer { peer, channels, .. } => {
                let channel = &channels[usize::try_from(seq - 1)? % channels.len()];
                peer.publish(channel, unix_nanos(), seq).await?;
                Ok(Some(Delivery::Change))
            }
        }
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
            Self::Peer { peer, redis, .. } => {
                peer.stop().await?;
                drop(redis);
            }
        }
        Ok(())
    }
}

/// What a client gets of one change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The change itself.
    Change,
    /// A `remove`: an update took the record out of the client's filter.
    MoveOut,
}

/// What a client with `filter` gets of a create (`last: None`) or an update of a record
/// to `record` from `last`, as the gateway decides it (`gateway/src/client.rs`, `apply`):
/// the change when the new state matches, a move-out when only the previous one did.
fn delivery(filter: Option<&Filter>, record: &Object, last: Option<&Object>) -> Option<Delivery> {
    let Some(filter) = filter else {
        return Some(Delivery::Change);
    };
    if filter.matches(record) {
        Some(Delivery::Change)
    } else if last.is_some_and(|last| filter.matches(last)) {
        Some(Delivery::MoveOut)
    } else {
        None
    }
}

/// `--filter`'s `where` as the stream's `options` (URL-encoded), and parsed.
fn options(where_json: &str) -> anyhow::Result<(String, Filter)> {
    let condition: Value = serde_json::from_str(where_json).context("--filter: not JSON")?;
    let options = json!({ "where": condition });
    let filter = Filter::parse(&options, &FilterLimits::default())
        .map_err(|e| anyhow::anyhow!("--filter: {e}"))?;
    Ok((percent_encode(&options.to_string()), filter))
}

/// Every byte but RFC 3986's unreserved ones as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A toggled record's body at event `seq`.
fn toggled(t: u64, seq: u64, open: bool) -> Object {
    let mut body = body(t, seq);
    body.insert("status".into(), json!(if open { "open" } else { "done" }));
    body
}

fn body(t: u64, seq: u64) -> Object {
    let mut body = Object::new();
    body.insert("t".into(), json!(t));
    body.insert("seq".into(), json!(seq));
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filtered_client_is_owed_move_ins_and_move_outs() {
        let (query, filter) = options(r#"{"status":"open"}"#).unwrap();
        assert_eq!(query, "%7B%22where%22%3A%7B%22status%22%3A%22open%22%7D%7D");
        let (open, done) = (toggled(1, 1, true), toggled(1, 1, false));
        let f = Some(&filter);
        assert_eq!(delivery(f, &open, Some(&done)), Some(Delivery::Change));
        assert_eq!(delivery(f, &done, Some(&open)), Some(Delivery::MoveOut));
        assert_eq!(delivery(f, &done, Some(&done)), None);
        assert_eq!(delivery(f, &done, None), None);
        assert_eq!(delivery(None, &done, None), Some(Delivery::Change));
        assert!(options("{").is_err());
        assert!(options(r#"{"n":{"between":1}}"#).is_err());
    }
}

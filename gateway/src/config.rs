//! The gateway's [`Config`]: defaults < config file < `GATEWAY_*` environment < flags.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use publisher::Retention;
use service::RedisTarget;
use service::auth::{Auth, DEFAULT_JWT_LEEWAY, DEFAULT_METRICS_PUBLIC};
use service::limits::{self, RequestLimits};
pub use service::settings::ConfigError;
use service::settings::{Layers, SettingsError};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default interval of the comment heartbeat on an SSE stream (proxies close idle ones).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Default `retry:` hint: how long a browser waits before reconnecting.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(2);
/// Default number of stream entries read per replay round trip.
pub const DEFAULT_REPLAY_PAGE: usize = 500;
/// Default stream reads (replay pages) a pod has in flight on Redis at once. More clients
/// catching up at once (a herd after a reconnect, many slow readers) wait their turn
/// rather than pile thousands of page reads into one connection and time out.
pub const DEFAULT_REPLAY_READS: usize = 32;
/// Default live events buffered per topic for its slowest local client. A client further
/// behind is caught up from the stream instead (nothing is dropped).
pub const DEFAULT_HUB_CAPACITY: usize = 1024;
/// Default pub/sub messages queued between the Redis connection and the reader task.
/// Full: a message is dropped, counted and logged; the id chain makes the next event of
/// its topic refill the gap from the stream.
pub const DEFAULT_PUSH_QUEUE: usize = 65_536;
/// Default wait for Redis to confirm a new topic's SUBSCRIBE before answering 503.
pub const DEFAULT_SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default longest wait for one Redis reply.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time open streams and tasks get to end after SIGTERM.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);
/// Default window over which open streams are ended after SIGTERM, each at a random
/// moment, so their reconnects do not hit the other pods all at once.
pub const DEFAULT_DRAIN_WINDOW: Duration = Duration::from_secs(5);
/// Default most open SSE streams per pod; more get 503 with `Retry-After`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default longest time a write to a client may make no progress before the connection
/// is dropped (a client that stopped reading; it resumes with `Last-Event-ID`).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default most topics on one `/events` stream.
pub const DEFAULT_MAX_TOPICS: usize = 16;
/// Default longest time a pod cut off from Redis, while a peer reaches it, keeps its
/// streams before ending them (jittered over the drain window) so their clients resume
/// on a pod that can serve them.
pub const DEFAULT_PARTITION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "SSE gateway pod: LoopBack change streams over Redis, or single-node with an embedded bus."
)]
struct Flags {
    /// Config file (TOML or YAML); also GATEWAY_CONFIG.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address [env GATEWAY_LISTEN] [default 0.0.0.0:8080]
    #[arg(long)]
    listen: Option<String>,
    /// Serve /metrics (and health) on this address instead of the main one [env GATEWAY_ADMIN_LISTEN]
    #[arg(long)]
    admin_listen: Option<String>,
    /// Redis URL; unset (and no --redis-cluster) runs single-node on the embedded bus [env GATEWAY_REDIS_URL]
    #[arg(long)]
    redis_url: Option<String>,
    /// Redis Cluster seed nodes, comma-separated redis://host:port; instead of --redis-url [env GATEWAY_REDIS_CLUSTER]
    #[arg(long)]
    redis_cluster: Option<String>,
    /// Comment heartbeat interval [env GATEWAY_HEARTBEAT] [default 15s]
    #[arg(long)]
    heartbeat: Option<String>,
    /// `retry:` hint sent to browsers [env GATEWAY_RETRY] [default 2s]
    #[arg(long)]
    retry: Option<String>,
    /// Stream entries per replay read [env GATEWAY_REPLAY_PAGE] [default 500]
    #[arg(long)]
    replay_page: Option<String>,
    /// Stream reads in flight on Redis at once [env GATEWAY_REPLAY_READS] [default 32]
    #[arg(long)]
    replay_reads: Option<String>,
    /// Live events buffered per topic [env GATEWAY_HUB_CAPACITY] [default 1024]
    #[arg(long)]
    hub_capacity: Option<String>,
    /// Pub/sub messages queued from Redis [env GATEWAY_PUSH_QUEUE] [default 65536]
    #[arg(long)]
    push_queue: Option<String>,
    /// Wait for a SUBSCRIBE confirmation [env GATEWAY_SUBSCRIBE_TIMEOUT] [default 5s]
    #[arg(long)]
    subscribe_timeout: Option<String>,
    /// Longest wait for a Redis reply [env GATEWAY_REDIS_TIMEOUT] [default 2s]
    #[arg(long)]
    redis_timeout: Option<String>,
    /// Time streams get to end after SIGTERM [env GATEWAY_GRACE_PERIOD] [default 10s]
    #[arg(long)]
    grace_period: Option<String>,
    /// Window over which streams end after SIGTERM [env GATEWAY_DRAIN_WINDOW] [default 5s]
    #[arg(long)]
    drain_window: Option<String>,
    /// Most open SSE streams [env GATEWAY_MAX_CONNECTIONS] [default 10000]
    #[arg(long)]
    max_connections: Option<String>,
    /// Drop a client whose writes stall this long [env GATEWAY_WRITE_TIMEOUT] [default 30s]
    #[arg(long)]
    write_timeout: Option<String>,
    /// Most topics on one /events stream [env GATEWAY_MAX_TOPICS] [default 16]
    #[arg(long)]
    max_topics: Option<String>,
    /// The other gateway pods, comma-separated host:port (a name resolving to several addresses, such as a headless Service, counts each), asked whether they reach Redis when this pod cannot [env GATEWAY_PEERS]
    #[arg(long)]
    peers: Option<String>,
    /// How long this pod may be cut off from Redis while a peer reaches it before it ends its streams [env GATEWAY_PARTITION_TIMEOUT] [default 10s]
    #[arg(long)]
    partition_timeout: Option<String>,
    /// Largest filter (`options`) in bytes [env GATEWAY_FILTER_MAX_BYTES] [default 4096]
    #[arg(long)]
    filter_max_bytes: Option<String>,
    /// Deepest and/or nesting of a filter [env GATEWAY_FILTER_MAX_DEPTH] [default 8]
    #[arg(long)]
    filter_max_depth: Option<String>,
    /// Most conditions in a filter's where [env GATEWAY_FILTER_MAX_CONDITIONS] [default 64]
    #[arg(long)]
    filter_max_conditions: Option<String>,
    /// Largest request body in bytes (POST change-stream, embedded REST) [env GATEWAY_BODY_LIMIT] [default 102400]
    #[arg(long)]
    body_limit: Option<String>,
    /// Embedded mode: history kept per topic [env GATEWAY_STREAM_MAX_LEN] [default 10000]
    #[arg(long)]
    stream_max_len: Option<String>,
    /// Embedded mode: oldest history kept [env GATEWAY_STREAM_MAX_AGE] [default 24h]
    #[arg(long)]
    stream_max_age: Option<String>,
    /// HS256 secret; turns auth on. Prefer the environment (a flag shows in `ps`) [env GATEWAY_JWT_SECRET]
    #[arg(long)]
    jwt_secret: Option<String>,
    /// PEM public key file (RSA: RS256, P-256: ES256); turns auth on [env GATEWAY_JWT_PUBLIC_KEY_FILE]
    #[arg(long)]
    jwt_public_key_file: Option<String>,
    /// Clock skew allowed on a token's exp; streams end at exp plus this [env GATEWAY_JWT_LEEWAY] [default 5s]
    #[arg(long)]
    jwt_leeway: Option<String>,
    /// Topic patterns anyone may subscribe to without a token, comma-separated [env GATEWAY_PUBLIC_TOPICS]
    #[arg(long)]
    public_topics: Option<String>,
    /// With auth on, serve /metrics without a token [env GATEWAY_METRICS_PUBLIC] [default true]
    #[arg(long)]
    metrics_public: Option<String>,
    /// Longest request URL in bytes [env GATEWAY_MAX_URL_BYTES] [default 8192]
    #[arg(long)]
    max_url_bytes: Option<String>,
    /// Most request header bytes [env GATEWAY_MAX_HEADER_BYTES] [default 16384]
    #[arg(long)]
    max_header_bytes: Option<String>,
    /// Origins allowed cross-origin: `*`, or a comma-separated list (then with credentials) [env GATEWAY_CORS_ORIGINS] [default *]
    #[arg(long)]
    cors_origins: Option<String>,
}

/// The `peers` setting: `host:port` entries, comma-separated; empty entries are ignored.
struct Peers(Vec<String>);

impl std::str::FromStr for Peers {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|peer| match peer.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(peer.to_owned())
                }
                _ => Err(format!("{peer:?} is not host:port")),
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// Which browser origins may call the gateway cross-origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorsOrigins {
    /// Any origin, without credentials (cookies are not sent cross-origin).
    Any,
    /// These origins (`https://app.example.com`), with credentials.
    List(Vec<String>),
}

impl std::str::FromStr for CorsOrigins {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.trim() == "*" {
            return Ok(Self::Any);
        }
        let origins: Vec<String> = text
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect();
        if origins.is_empty() {
            return Err("give `*` or a comma-separated list of origins".into());
        }
        for origin in &origins {
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .ok_or_else(|| format!("{origin:?} is not an http(s) origin"))?;
            if host.is_empty() || host.contains(['/', '*', ' ']) || origin.contains(['"', '\\']) {
                return Err(format!(
                    "{origin:?} is not an origin (scheme://host[:port], no path, no wildcard)"
                ));
            }
        }
        Ok(Self::List(origins))
    }
}

/// Everything the gateway needs to start, parsed and typed.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// `Some`: `/metrics` moves from `listen` to this address (health is on both).
    pub admin_listen: Option<SocketAddr>,
    /// One Redis, or a Redis Cluster (sharded pub/sub). `None`: single node on the
    /// embedded in-memory bus, serving the REST API too.
    pub redis: Option<RedisTarget>,
    pub heartbeat: Duration,
    pub retry: Duration,
    pub replay_page: NonZeroUsize,
    pub replay_reads: NonZeroUsize,
    pub hub_capacity: NonZeroUsize,
    pub push_queue: NonZeroUsize,
    pub subscribe_timeout: Duration,
    pub redis_timeout: Duration,
    pub grace_period: Duration,
    pub drain_window: Duration,
    pub max_connections: NonZeroUsize,
    pub write_timeout: Duration,
    pub max_topics: NonZeroUsize,
    /// Other gateways (`host:port`), asked whether they reach Redis when this pod cannot
    /// ([`crate::partition`]). Empty: this pod takes any outage for a fleet-wide one.
    pub peers: Vec<String>,
    pub partition_timeout: Duration,
    pub filter_max_bytes: NonZeroUsize,
    pub filter_max_depth: NonZeroUsize,
    pub filter_max_conditions: NonZeroUsize,
    pub body_limit: usize,
    pub retention: Retention,
    /// Who may subscribe (and, embedded, publish); off when no JWT setting is given.
    pub auth: Auth,
    pub request_limits: RequestLimits,
    pub cors_origins: CorsOrigins,
}

impl Config {
    /// Reads the real command line and process environment.
    ///
    /// # Errors
    /// See [`Config::load`].
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(std::env::args_os(), &std::env::vars().collect())
    }

    /// Layers defaults, the config file, `env` and `args`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the flag or setting at fault.
    pub fn load(
        args: impl IntoIterator<Item = OsString>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let flags = Flags::try_parse_from(args)?;
        let file = flags
            .config
            .clone()
            .or_else(|| env.get("GATEWAY_CONFIG").map(PathBuf::from));
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let retention = Retention::default();
        let owned = [
            ("listen", DEFAULT_LISTEN.to_owned()),
            ("heartbeat", ms(DEFAULT_HEARTBEAT)),
            ("retry", ms(DEFAULT_RETRY)),
            ("replay_page", DEFAULT_REPLAY_PAGE.to_string()),
            ("replay_reads", DEFAULT_REPLAY_READS.to_string()),
            ("hub_capacity", DEFAULT_HUB_CAPACITY.to_string()),
            ("push_queue", DEFAULT_PUSH_QUEUE.to_string()),
            ("subscribe_timeout", ms(DEFAULT_SUBSCRIBE_TIMEOUT)),
            ("redis_timeout", ms(DEFAULT_REDIS_TIMEOUT)),
            ("grace_period", ms(DEFAULT_GRACE_PERIOD)),
            ("drain_window", ms(DEFAULT_DRAIN_WINDOW)),
            ("max_connections", DEFAULT_MAX_CONNECTIONS.to_string()),
            ("write_timeout", ms(DEFAULT_WRITE_TIMEOUT)),
            ("max_topics", DEFAULT_MAX_TOPICS.to_string()),
            ("partition_timeout", ms(DEFAULT_PARTITION_TIMEOUT)),
            (
                "filter_max_bytes",
                proto::DEFAULT_MAX_FILTER_BYTES.to_string(),
            ),
            (
                "filter_max_depth",
                proto::DEFAULT_MAX_FILTER_DEPTH.to_string(),
            ),
            (
                "filter_max_conditions",
                proto::DEFAULT_MAX_FILTER_CONDITIONS.to_string(),
            ),
            ("body_limit", service::http::DEFAULT_BODY_LIMIT.to_string()),
            ("stream_max_len", retention.max_len.to_string()),
            ("stream_max_age", ms(retention.max_age)),
            ("jwt_leeway", ms(DEFAULT_JWT_LEEWAY)),
            ("metrics_public", DEFAULT_METRICS_PUBLIC.to_string()),
            ("max_url_bytes", limits::DEFAULT_MAX_URL_BYTES.to_string()),
            (
                "max_header_bytes",
                limits::DEFAULT_MAX_HEADER_BYTES.to_string(),
            ),
            ("cors_origins", "*".to_owned()),
        ];
        let defaults: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let overrides = [
            ("listen", flags.listen),
            ("admin_listen", flags.admin_listen),
            ("redis_url", flags.redis_url),
            ("redis_cluster", flags.redis_cluster),
            ("heartbeat", flags.heartbeat),
            ("retry", flags.retry),
            ("replay_page", flags.replay_page),
            ("replay_reads", flags.replay_reads),
            ("hub_capacity", flags.hub_capacity),
            ("push_queue", flags.push_queue),
            ("subscribe_timeout", flags.subscribe_timeout),
            ("redis_timeout", flags.redis_timeout),
            ("grace_period", flags.grace_period),
            ("drain_window", flags.drain_window),
            ("max_connections", flags.max_connections),
            ("write_timeout", flags.write_timeout),
            ("max_topics", flags.max_topics),
            ("peers", flags.peers),
            ("partition_timeout", flags.partition_timeout),
            ("filter_max_bytes", flags.filter_max_bytes),
            ("filter_max_depth", flags.filter_max_depth),
            ("filter_max_conditions", flags.filter_max_conditions),
            ("body_limit", flags.body_limit),
            ("stream_max_len", flags.stream_max_len),
            ("stream_max_age", flags.stream_max_age),
            ("jwt_secret", flags.jwt_secret),
            ("jwt_public_key_file", flags.jwt_public_key_file),
            ("jwt_leeway", flags.jwt_leeway),
            ("public_topics", flags.public_topics),
            ("metrics_public", flags.metrics_public),
            ("max_url_bytes", flags.max_url_bytes),
            ("max_header_bytes", flags.max_header_bytes),
            ("cors_origins", flags.cors_origins),
        ];
        let layers = Layers::build("GATEWAY", &defaults, file.as_deref(), env, &overrides)?;
        Self::from_layers(&layers).map_err(ConfigError::Settings)
    }

    fn from_layers(layers: &Layers) -> Result<Self, SettingsError> {
        let positive = |d: &Duration| {
            if d.is_zero() {
                Err("must be more than 0".to_owned())
            } else {
                Ok(())
            }
        };
        let heartbeat = layers.duration("heartbeat")?;
        let redis = layers.redis_target("redis_url", "redis_cluster")?;
        let config = Self {
            listen: layers.get("listen")?,
            admin_listen: layers.get_opt("admin_listen")?,
            redis,
            heartbeat,
            retry: layers.duration("retry")?,
            replay_page: layers.non_zero("replay_page")?,
            replay_reads: layers.non_zero("replay_reads")?,
            hub_capacity: layers.non_zero("hub_capacity")?,
            push_queue: layers.non_zero("push_queue")?,
            subscribe_timeout: layers.duration("subscribe_timeout")?,
            redis_timeout: layers.duration("redis_timeout")?,
            grace_period: layers.duration("grace_period")?,
            drain_window: layers.duration("drain_window")?,
            max_connections: layers.non_zero("max_connections")?,
            write_timeout: layers.duration("write_timeout")?,
            max_topics: layers.non_zero("max_topics")?,
            peers: layers
                .get_opt::<Peers>("peers")?
                .map(|p| p.0)
                .unwrap_or_default(),
            partition_timeout: layers.duration("partition_timeout")?,
            filter_max_bytes: layers.non_zero("filter_max_bytes")?,
            filter_max_depth: layers.non_zero("filter_max_depth")?,
            filter_max_conditions: layers.non_zero("filter_max_conditions")?,
            body_limit: layers.non_zero("body_limit")?.get(),
            retention: Retention {
                max_len: layers.get("stream_max_len")?,
                max_age: layers.duration("stream_max_age")?,
            },
            auth: Auth::from_layers(layers, true)?,
            request_limits: RequestLimits {
                max_url_bytes: layers.non_zero("max_url_bytes")?.get(),
                max_header_bytes: layers.non_zero("max_header_bytes")?.get(),
            },
            cors_origins: layers.get("cors_origins")?,
        };
        // Checked after parsing so the message names the setting.
        layers.checked("heartbeat", |_: &String| positive(&config.heartbeat))?;
        layers.checked("redis_timeout", |_: &String| {
            positive(&config.redis_timeout)
        })?;
        layers.checked("write_timeout", |_: &String| {
            positive(&config.write_timeout)
        })?;
        layers.checked("drain_window", |_: &String| {
            if config.drain_window < config.grace_period {
                Ok(())
            } else {
                Err(format!(
                    "must be shorter than grace_period ({:?})",
                    config.grace_period
                ))
            }
        })?;
        Ok(config)
    }

    /// What a client's filter may cost.
    pub fn filter_limits(&self) -> proto::FilterLimits {
        proto::FilterLimits {
            max_bytes: self.filter_max_bytes.get(),
            max_depth: self.filter_max_depth.get(),
            max_conditions: self.filter_max_conditions.get(),
            ..proto::FilterLimits::default()
        }
    }

    /// Defaults only: embedded mode on `127.0.0.1:0`-style listeners chosen by the caller.
    pub fn embedded() -> Self {
        Self::load(["gateway"].map(OsString::from), &HashMap::new())
            .unwrap_or_else(|e| unreachable!("defaults are valid: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load(
            std::iter::once("gateway")
                .chain(args.iter().copied())
                .map(OsString::from),
            &env,
        )
    }

    #[test]
    fn defaults_are_embedded_mode() {
        let c = load(&[], &[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.redis, None);
        assert_eq!(c.heartbeat, DEFAULT_HEARTBEAT);
        assert_eq!(c.replay_page.get(), DEFAULT_REPLAY_PAGE);
    }

    #[test]
    fn env_and_flags() {
        let c = load(
            &["--heartbeat", "1s"],
            &[
                ("GATEWAY_REDIS_URL", "redis://h:1/"),
                ("GATEWAY_HEARTBEAT", "9s"),
            ],
        )
        .unwrap();
        assert_eq!(c.redis, Some(RedisTarget::Single("redis://h:1/".into())));
        assert_eq!(c.heartbeat, Duration::from_secs(1));
        let c = load(&["--redis-cluster", "redis://a:1,redis://b:2"], &[]).unwrap();
        assert_eq!(
            c.redis,
            Some(RedisTarget::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ]))
        );
    }

    #[test]
    fn peers_and_partition_timeout() {
        let c = load(&[], &[]).unwrap();
        assert!(c.peers.is_empty());
        assert_eq!(c.partition_timeout, DEFAULT_PARTITION_TIMEOUT);
        let c = load(
            &["--partition-timeout", "30s"],
            &[("GATEWAY_PEERS", " gw-peers.ns.svc:8080, 10.0.0.7:9000 ,")],
        )
        .unwrap();
        assert_eq!(c.peers, ["gw-peers.ns.svc:8080", "10.0.0.7:9000"]);
        assert_eq!(c.partition_timeout, Duration::from_secs(30));
    }

    #[test]
    fn auth_settings() {
        let c = load(&[], &[]).unwrap();
        assert!(!c.auth.is_on(), "no JWT setting: auth off");
        let secret = "a-secret-of-at-least-thirty-two-bytes";
        let c = load(
            &["--public-topics", "News, Public*"],
            &[
                ("GATEWAY_JWT_SECRET", secret),
                ("GATEWAY_JWT_LEEWAY", "0s"),
                ("GATEWAY_METRICS_PUBLIC", "false"),
                ("GATEWAY_PUBLIC_TOPICS", "Ignored"),
            ],
        )
        .unwrap();
        assert!(c.auth.is_on());
        assert_eq!(c.auth.algorithms(), ["HS256"]);
        assert_eq!(c.auth.leeway(), Duration::ZERO);
        assert!(!c.auth.metrics_public());
        let public: Vec<_> = c.auth.public_topics().iter().map(|p| p.as_str()).collect();
        assert_eq!(public, ["News", "Public*"]);
        assert!(!format!("{c:?}").contains(secret));
        let err = load(&[], &[("GATEWAY_JWT_SECRET", "too-short")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`jwt_secret`") && !err.contains("too-short"),
            "{err}"
        );
        let err = load(
            &[],
            &[
                ("GATEWAY_JWT_SECRET", secret),
                ("GATEWAY_PUBLIC_TOPICS", "a b"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`public_topics`"), "{err}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (env, key) in [
            (("GATEWAY_REPLAY_PAGE", "0"), "`replay_page`"),
            (("GATEWAY_REPLAY_READS", "0"), "`replay_reads`"),
            (("GATEWAY_HEARTBEAT", "0s"), "`heartbeat`"),
            (("GATEWAY_REDIS_URL", "http://x"), "`redis_url`"),
            (("GATEWAY_LISTEN", "x"), "`listen`"),
            (("GATEWAY_DRAIN_WINDOW", "1m"), "`drain_window`"),
            (("GATEWAY_MAX_CONNECTIONS", "0"), "`max_connections`"),
            (("GATEWAY_JWT_SECRET", "x"), "`jwt_secret`"),
            (
                ("GATEWAY_JWT_PUBLIC_KEY_FILE", "/no/such.pem"),
                "`jwt_public_key_file`",
            ),
            (("GATEWAY_PUBLIC_TOPICS", "A"), "`public_topics`"),
            (("GATEWAY_METRICS_PUBLIC", "maybe"), "`metrics_public`"),
            (("GATEWAY_REDIS_CLUSTER", "http://a:1"), "`redis_cluster`"),
            (("GATEWAY_REDIS_CLUSTER", " , "), "`redis_cluster`"),
            (("GATEWAY_PEERS", "gw-0:8080,gw-1"), "`peers`"),
            (("GATEWAY_PARTITION_TIMEOUT", "soon"), "`partition_timeout`"),
        ] {
            let err = load(&[], &[env]).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}

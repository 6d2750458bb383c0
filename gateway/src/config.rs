//! The gateway's [`Config`]: defaults < config file < `GATEWAY_*` environment < flags.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use publisher::Retention;
use publisher::store::{DEFAULT_STREAM_MAX_AGE, DEFAULT_STREAM_MAX_LEN};
use service::RedisTarget;
use service::auth::{Auth, DEFAULT_JWT_LEEWAY, DEFAULT_METRICS_PUBLIC};
use service::limits::{self, RequestLimits};
pub use service::settings::ConfigError;
use service::settings::{Layers, SettingsError, Unparsed};

service::settings! {
    env_prefix: "GATEWAY",
    #[command(
        name = "gateway",
        version,
        about = "SSE gateway pod: LoopBack change streams over Redis, or single-node with an embedded in-memory store."
    )]
    flags: Flags,
    inputs: Inputs,
    /// Everything the gateway needs to start, parsed and typed.
    #[derive(Clone, Debug)]
    pub struct Config {
        // One entry per setting: its `--help` line (the doc's first paragraph), `pub` if it
        // is a field as it is, name, type and default. The README's table follows these.
        /// Listen address
        pub listen: SocketAddr = "0.0.0.0:8080",
        /// Serve /metrics (and health) on this address instead of the main one
        ///
        /// `Some`: `/metrics` moves from `listen` to this address (health is on both).
        pub admin_listen: Option<SocketAddr>,
        /// Redis URL; unset (and no --redis-cluster) runs single-node on the embedded in-memory store
        redis_url: Unparsed,
        /// Redis Cluster seed nodes, comma-separated redis://host:port; instead of --redis-url
        redis_cluster: Unparsed,
        /// Comment heartbeat interval
        ///
        /// A comment after this much silence on an SSE stream: proxies close idle ones.
        pub heartbeat: Duration = Duration::from_secs(15),
        /// `retry:` hint sent to browsers
        ///
        /// How long a browser waits before reconnecting.
        pub retry: Duration = Duration::from_secs(2),
        /// Stream entries per replay read
        pub replay_page: NonZeroUsize = 500_usize,
        /// Records per in-band snapshot page
        ///
        /// `snapshot=true` streams send a topic's records in `event: snapshot` pages of at
        /// most this many, read from Redis one page at a time as the client takes them.
        pub snapshot_page: NonZeroUsize = 500_usize,
        /// Stream reads in flight on Redis at once
        ///
        /// Per pod. More clients catching up at once (a herd after a reconnect, many slow
        /// readers) wait their turn rather than pile thousands of page reads into one
        /// connection and time out.
        pub replay_reads: NonZeroUsize = 32_usize,
        /// Live events buffered per topic
        ///
        /// For its slowest local client (8, 16 or 32 while the topic has at most 8 local
        /// clients). A client further behind is caught up from the stream instead (nothing
        /// is dropped).
        pub hub_capacity: NonZeroUsize = 1024_usize,
        /// Pub/sub messages queued from Redis
        ///
        /// Between the Redis connection and the reader task. Full: a message is dropped,
        /// counted and logged; the id chain makes the next event of its topic refill the
        /// gap from the stream.
        pub push_queue: NonZeroUsize = 65_536_usize,
        /// Wait for a SUBSCRIBE confirmation
        ///
        /// For a new topic; past it the stream is told to retry.
        pub subscribe_timeout: Duration = Duration::from_secs(5),
        /// Longest wait for a Redis reply
        pub redis_timeout: Duration = Duration::from_secs(2),
        /// Time streams get to end after SIGTERM
        ///
        /// And tasks to finish.
        pub grace_period: Duration = Duration::from_secs(10),
        /// Window over which streams end after SIGTERM
        ///
        /// Each at a random moment, so their reconnects do not hit the other pods all at
        /// once. Shorter than `grace_period`.
        pub drain_window: Duration = Duration::from_secs(5),
        /// Most open SSE streams
        ///
        /// Per pod; more are told to retry (`200`, a jittered `retry:`, the end).
        pub max_connections: NonZeroUsize = 10_000_usize,
        /// Drop a client whose writes stall this long
        ///
        /// A client that stopped reading; it resumes with `Last-Event-ID`.
        pub write_timeout: Duration = Duration::from_secs(30),
        /// Most topics on one /events stream
        ///
        /// Each topic on a connection costs the pod ~1 KiB (its lane and, with one client,
        /// its topic's state; docs/BENCHMARKS.md "Topics at scale"), so raising it is
        /// cheap; it bounds what one client can make a pod hold.
        pub max_topics: NonZeroUsize = 16_usize,
        /// The other gateway pods, comma-separated host:port (a name resolving to several addresses, such as a headless Service, counts each), asked whether they reach Redis when this pod cannot
        peers: Option<Peers>,
        /// How long this pod may be cut off from Redis while a peer reaches it before it ends its streams
        ///
        /// They end jittered over the drain window, so their clients resume on a pod that
        /// can serve them.
        pub partition_timeout: Duration = Duration::from_secs(10),
        /// Largest filter (`options`) in bytes
        pub filter_max_bytes: NonZeroUsize = proto::DEFAULT_MAX_FILTER_BYTES,
        /// Deepest and/or nesting of a filter
        pub filter_max_depth: NonZeroUsize = proto::DEFAULT_MAX_FILTER_DEPTH,
        /// Most conditions in a filter's where
        pub filter_max_conditions: NonZeroUsize = proto::DEFAULT_MAX_FILTER_CONDITIONS,
        /// Largest request body in bytes (POST change-stream, embedded REST)
        body_limit: NonZeroUsize = service::http::DEFAULT_BODY_LIMIT,
        /// Embedded mode: history kept per topic
        stream_max_len: u64 = DEFAULT_STREAM_MAX_LEN,
        /// Embedded mode: oldest history kept
        stream_max_age: Duration = DEFAULT_STREAM_MAX_AGE,
        /// HS256 secret; turns auth on. Prefer the environment (a flag shows in `ps`)
        jwt_secret: Unparsed,
        /// PEM public key file (RSA: RS256, P-256: ES256); turns auth on
        jwt_public_key_file: Unparsed,
        /// Clock skew allowed on a token's exp; streams end at exp plus this
        jwt_leeway: Unparsed = DEFAULT_JWT_LEEWAY,
        /// Topic patterns anyone may subscribe to without a token, comma-separated
        public_topics: Unparsed,
        /// With auth on, serve /metrics without a token
        metrics_public: Unparsed = DEFAULT_METRICS_PUBLIC,
        /// Longest request URL in bytes
        max_url_bytes: NonZeroUsize = limits::DEFAULT_MAX_URL_BYTES,
        /// Most request header bytes
        max_header_bytes: NonZeroUsize = limits::DEFAULT_MAX_HEADER_BYTES,
        /// Origins allowed cross-origin: `*`, or a comma-separated list (then with credentials)
        pub cors_origins: CorsOrigins = "*",
    }
    // The fields several settings make, or one setting in another shape.
    derived |s, layers| {
        /// One Redis, or a Redis Cluster (sharded pub/sub). `None`: single node on the
        /// embedded in-memory store, serving the REST API too.
        pub redis: Option<RedisTarget> = layers.redis_target("redis_url", "redis_cluster")?,
        /// Other gateways (`host:port`), asked whether they reach Redis when this pod cannot
        /// ([`crate::partition`]). Empty: this pod takes any outage for a fleet-wide one.
        pub peers: Vec<String> = s.peers.map(|p| p.0).unwrap_or_default(),
        pub body_limit: usize = s.body_limit.get(),
        pub retention: Retention = Retention {
            max_len: s.stream_max_len,
            max_age: s.stream_max_age,
        },
        /// Who may subscribe (and, embedded, publish); off when no JWT setting is given.
        pub auth: Auth = Auth::from_layers(layers, true)?,
        pub request_limits: RequestLimits = RequestLimits {
            max_url_bytes: s.max_url_bytes.get(),
            max_header_bytes: s.max_header_bytes.get(),
        },
    }
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

service::from_str_setting!(CorsOrigins);

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
        let layers = Self::layers(args, env)?;
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
        let config = Self::read(layers)?;
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
        assert_eq!(c.heartbeat, Duration::from_secs(15));
        assert_eq!(c.replay_page.get(), 500);
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
        assert_eq!(c.partition_timeout, Duration::from_secs(10));
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

    #[test]
    fn readme_settings_table_matches_the_definitions() {
        let readme = include_str!("../../README.md");
        let wrong = service::settings::readme_disagreements(readme, "GATEWAY", &Config::settings());
        assert!(
            wrong.is_empty(),
            "README.md's gateway settings table and gateway/src/config.rs disagree:\n{}",
            wrong.join("\n")
        );
    }

    #[test]
    fn help_lists_every_setting_with_its_env_and_default() {
        use clap::CommandFactory;
        let command = Flags::command();
        for setting in Config::settings() {
            let arg = command
                .get_arguments()
                .find(|a| a.get_long().map(|l| format!("--{l}")) == Some(setting.flag.clone()))
                .unwrap_or_else(|| panic!("no {}", setting.flag));
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(help.contains(&format!("[env {}]", setting.env)), "{help}");
            if let Some(default) = &setting.default {
                assert!(help.contains(&format!("[default {default}]")), "{help}");
            }
        }
    }
}

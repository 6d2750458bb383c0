//! The publisher's [`Config`]: defaults < config file < `PUBLISHER_*` environment < flags.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use service::RedisTarget;
use service::auth::{Auth, DEFAULT_JWT_LEEWAY, DEFAULT_METRICS_PUBLIC};
use service::http::DEFAULT_BODY_LIMIT;
use service::limits::{self, RequestLimits};
pub use service::settings::ConfigError;
use service::settings::{Layers, SettingsError};

use crate::store::{DEFAULT_STREAM_MAX_AGE, DEFAULT_STREAM_MAX_LEN, RedisOptions, Retention};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8081";
/// Default Redis URL, when neither `redis_url` nor `redis_cluster` is set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";
/// Default longest wait for one Redis reply.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time in-flight requests get to finish after SIGTERM.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);

/// Command-line flags; each overrides its `PUBLISHER_*` variable and config-file key.
#[derive(Debug, Parser)]
#[command(
    name = "publisher",
    version,
    about = "Writes records and their change events to Redis atomically; serves the LoopBack-style REST API."
)]
struct Flags {
    /// Config file (TOML or YAML); also PUBLISHER_CONFIG.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address [env PUBLISHER_LISTEN] [default 0.0.0.0:8081]
    #[arg(long)]
    listen: Option<String>,
    /// Serve /metrics (and health) on this address instead of the main one [env PUBLISHER_ADMIN_LISTEN]
    #[arg(long)]
    admin_listen: Option<String>,
    /// Redis URL [env PUBLISHER_REDIS_URL] [default redis://127.0.0.1:6379/]
    #[arg(long)]
    redis_url: Option<String>,
    /// Redis Cluster seed nodes, comma-separated redis://host:port; instead of --redis-url [env PUBLISHER_REDIS_CLUSTER]
    #[arg(long)]
    redis_cluster: Option<String>,
    /// Largest request body in bytes [env PUBLISHER_BODY_LIMIT] [default 102400]
    #[arg(long)]
    body_limit: Option<String>,
    /// Stream entries kept per topic, 0 for no limit [env PUBLISHER_STREAM_MAX_LEN] [default 10000]
    #[arg(long)]
    stream_max_len: Option<String>,
    /// Oldest stream entry kept, e.g. 24h; 0 for no limit [env PUBLISHER_STREAM_MAX_AGE] [default 24h]
    #[arg(long)]
    stream_max_age: Option<String>,
    /// Longest wait for a Redis reply [env PUBLISHER_REDIS_TIMEOUT] [default 2s]
    #[arg(long)]
    redis_timeout: Option<String>,
    /// Time in-flight requests get after SIGTERM [env PUBLISHER_GRACE_PERIOD] [default 10s]
    #[arg(long)]
    grace_period: Option<String>,
    /// HS256 secret; turns auth on. Prefer the environment (a flag shows in `ps`) [env PUBLISHER_JWT_SECRET]
    #[arg(long)]
    jwt_secret: Option<String>,
    /// PEM public key file (RSA: RS256, P-256: ES256); turns auth on [env PUBLISHER_JWT_PUBLIC_KEY_FILE]
    #[arg(long)]
    jwt_public_key_file: Option<String>,
    /// Clock skew allowed on a token's exp [env PUBLISHER_JWT_LEEWAY] [default 5s]
    #[arg(long)]
    jwt_leeway: Option<String>,
    /// With auth on, serve /metrics without a token [env PUBLISHER_METRICS_PUBLIC] [default true]
    #[arg(long)]
    metrics_public: Option<String>,
    /// Longest request URL in bytes [env PUBLISHER_MAX_URL_BYTES] [default 8192]
    #[arg(long)]
    max_url_bytes: Option<String>,
    /// Most request header bytes [env PUBLISHER_MAX_HEADER_BYTES] [default 16384]
    #[arg(long)]
    max_header_bytes: Option<String>,
    /// Writes per second per token subject, 0 for no limit [env PUBLISHER_PUBLISH_RATE] [default 0]
    #[arg(long)]
    publish_rate: Option<String>,
    /// Writes a subject may make at once, 0 for one second's worth [env PUBLISHER_PUBLISH_BURST] [default 0]
    #[arg(long)]
    publish_burst: Option<String>,
}

/// Everything the publisher needs to start, parsed and typed.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// `Some`: `/metrics` moves from `listen` to this address (health is on both).
    pub admin_listen: Option<SocketAddr>,
    /// One Redis, or a Redis Cluster (then events go out with `SPUBLISH`).
    pub redis: RedisTarget,
    pub body_limit: usize,
    pub retention: Retention,
    pub redis_timeout: Duration,
    pub grace_period: Duration,
    /// Who may publish and read; off when no JWT setting is given.
    pub auth: Auth,
    pub request_limits: RequestLimits,
    /// Writes per second per token subject (0: no limit), and the burst (0: = rate).
    pub publish_rate: u32,
    pub publish_burst: u32,
}

impl Config {
    /// Reads the real command line and process environment.
    ///
    /// # Errors
    /// See [`Config::load`]. `--help` and `--version` come back as an error to print.
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
            .or_else(|| env.get("PUBLISHER_CONFIG").map(PathBuf::from));
        let max_len = DEFAULT_STREAM_MAX_LEN.to_string();
        let max_age = format!("{}s", DEFAULT_STREAM_MAX_AGE.as_secs());
        let body_limit = DEFAULT_BODY_LIMIT.to_string();
        let redis_timeout = format!("{}ms", DEFAULT_REDIS_TIMEOUT.as_millis());
        let grace = format!("{}ms", DEFAULT_GRACE_PERIOD.as_millis());
        let leeway = format!("{}ms", DEFAULT_JWT_LEEWAY.as_millis());
        let metrics_public = DEFAULT_METRICS_PUBLIC.to_string();
        let max_url = limits::DEFAULT_MAX_URL_BYTES.to_string();
        let max_header = limits::DEFAULT_MAX_HEADER_BYTES.to_string();
        let defaults = [
            ("listen", DEFAULT_LISTEN),
            ("body_limit", body_limit.as_str()),
            ("stream_max_len", max_len.as_str()),
            ("stream_max_age", max_age.as_str()),
            ("redis_timeout", redis_timeout.as_str()),
            ("grace_period", grace.as_str()),
            ("jwt_leeway", leeway.as_str()),
            ("metrics_public", metrics_public.as_str()),
            ("max_url_bytes", max_url.as_str()),
            ("max_header_bytes", max_header.as_str()),
            ("publish_rate", "0"),
            ("publish_burst", "0"),
        ];
        let overrides = [
            ("listen", flags.listen),
            ("admin_listen", flags.admin_listen),
            ("redis_url", flags.redis_url),
            ("redis_cluster", flags.redis_cluster),
            ("body_limit", flags.body_limit),
            ("stream_max_len", flags.stream_max_len),
            ("stream_max_age", flags.stream_max_age),
            ("redis_timeout", flags.redis_timeout),
            ("grace_period", flags.grace_period),
            ("jwt_secret", flags.jwt_secret),
            ("jwt_public_key_file", flags.jwt_public_key_file),
            ("jwt_leeway", flags.jwt_leeway),
            ("metrics_public", flags.metrics_public),
            ("max_url_bytes", flags.max_url_bytes),
            ("max_header_bytes", flags.max_header_bytes),
            ("publish_rate", flags.publish_rate),
            ("publish_burst", flags.publish_burst),
        ];
        let layers = Layers::build("PUBLISHER", &defaults, file.as_deref(), env, &overrides)?;
        Self::from_layers(&layers).map_err(ConfigError::Settings)
    }

    fn from_layers(layers: &Layers) -> Result<Self, SettingsError> {
        Ok(Self {
            listen: layers.get("listen")?,
            admin_listen: layers.get_opt("admin_listen")?,
            redis: layers
                .redis_target("redis_url", "redis_cluster")?
                .unwrap_or_else(|| RedisTarget::Single(DEFAULT_REDIS_URL.to_owned())),
            body_limit: layers.non_zero("body_limit")?.get(),
            retention: Retention {
                max_len: layers.get("stream_max_len")?,
                max_age: layers.duration("stream_max_age")?,
            },
            redis_timeout: layers.duration("redis_timeout")?,
            grace_period: layers.duration("grace_period")?,
            auth: Auth::from_layers(layers, false)?,
            request_limits: RequestLimits {
                max_url_bytes: layers.non_zero("max_url_bytes")?.get(),
                max_header_bytes: layers.non_zero("max_header_bytes")?.get(),
            },
            publish_rate: layers.get("publish_rate")?,
            publish_burst: layers.get("publish_burst")?,
        })
    }

    /// The write-rate limiter, if `publish_rate` sets one.
    pub fn rate_limiter(&self) -> Option<service::limits::RateLimiter> {
        let burst = if self.publish_burst == 0 {
            self.publish_rate
        } else {
            self.publish_burst
        };
        service::limits::RateLimiter::new(self.publish_rate, burst)
    }

    pub fn redis_options(&self) -> RedisOptions {
        RedisOptions {
            retention: self.retention,
            response_timeout: self.redis_timeout,
            sharded: self.redis.is_cluster(),
        }
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
            std::iter::once("publisher")
                .chain(args.iter().copied())
                .map(OsString::from),
            &env,
        )
    }

    #[test]
    fn defaults() {
        let c = load(&[], &[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8081".parse().unwrap());
        assert_eq!(c.redis, RedisTarget::Single(DEFAULT_REDIS_URL.into()));
        assert!(!c.redis_options().sharded);
        assert_eq!(c.body_limit, DEFAULT_BODY_LIMIT);
        assert_eq!(c.retention, Retention::default());
    }

    #[test]
    fn env_then_flags() {
        let c = load(
            &["--redis-url", "redis://flag:1/"],
            &[
                ("PUBLISHER_LISTEN", "127.0.0.1:9"),
                ("PUBLISHER_REDIS_URL", "redis://env:1/"),
                ("PUBLISHER_STREAM_MAX_AGE", "0"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9".parse().unwrap());
        assert_eq!(c.redis, RedisTarget::Single("redis://flag:1/".into()));
        assert_eq!(c.retention.max_age, Duration::ZERO);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = load(&["--listen", "nowhere"], &[]).unwrap_err().to_string();
        assert!(
            err.contains("`listen`") && err.contains("PUBLISHER_LISTEN"),
            "{err}"
        );
        let err = load(&[], &[("PUBLISHER_BODY_LIMIT", "0")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`body_limit`") && err.contains("at least 1"),
            "{err}"
        );
        let err = load(&[], &[("PUBLISHER_REDIS_URL", "http://x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`redis_url`"), "{err}");
    }

    #[test]
    fn cluster_mode_publishes_sharded() {
        let c = load(
            &["--redis-cluster", "redis://a:1,redis://b:2"],
            &[("PUBLISHER_REDIS_TIMEOUT", "1s")],
        )
        .unwrap();
        assert_eq!(
            c.redis,
            RedisTarget::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert!(c.redis_options().sharded);
        let err = load(
            &[],
            &[
                ("PUBLISHER_REDIS_URL", "redis://h:1/"),
                ("PUBLISHER_REDIS_CLUSTER", "redis://a:1"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not both"), "{err}");
    }
}

//! The publisher's [`Config`]: defaults < config file < `PUBLISHER_*` environment < flags.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use service::RedisTarget;
use service::auth::{Auth, DEFAULT_JWT_LEEWAY, DEFAULT_METRICS_PUBLIC};
use service::http::DEFAULT_BODY_LIMIT;
use service::limits::{self, RequestLimits};
pub use service::settings::ConfigError;
use service::settings::{Fallback, Unparsed};

use crate::ops::{BatchLimits, DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_ITEMS};
use crate::store::{
    DEFAULT_IDEMPOTENCY_TTL, DEFAULT_STREAM_MAX_AGE, DEFAULT_STREAM_MAX_LEN, RedisOptions,
    Retention,
};

/// Default Redis URL, when neither `redis_url` nor `redis_cluster` is set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

service::settings! {
    env_prefix: "PUBLISHER",
    #[command(
        name = "publisher",
        version,
        about = "Writes records and their change events to Redis atomically; serves the LoopBack-style REST API."
    )]
    flags: Flags,
    inputs: Inputs,
    /// Everything the publisher needs to start, parsed and typed.
    #[derive(Clone, Debug)]
    pub struct Config {
        // One entry per setting: its `--help` line (the doc's first paragraph), `pub` if it
        // is a field as it is, name, type and default. The README's table follows these.
        /// Listen address
        pub listen: SocketAddr = "0.0.0.0:8081",
        /// Serve /metrics (and health) on this address instead of the main one
        ///
        /// `Some`: `/metrics` moves from `listen` to this address (health is on both).
        pub admin_listen: Option<SocketAddr>,
        /// Redis URL
        redis_url: Unparsed = Fallback(DEFAULT_REDIS_URL),
        /// Redis Cluster seed nodes, comma-separated redis://host:port; instead of --redis-url
        redis_cluster: Unparsed,
        /// Largest request body in bytes
        body_limit: NonZeroUsize = DEFAULT_BODY_LIMIT,
        /// Stream entries kept per topic, 0 for no limit
        stream_max_len: u64 = DEFAULT_STREAM_MAX_LEN,
        /// Oldest stream entry kept, e.g. 24h; 0 for no limit
        stream_max_age: Duration = DEFAULT_STREAM_MAX_AGE,
        /// Longest wait for a Redis reply
        pub redis_timeout: Duration = Duration::from_secs(2),
        /// Time in-flight requests get after SIGTERM
        pub grace_period: Duration = Duration::from_secs(10),
        /// HS256 secret; turns auth on. Prefer the environment (a flag shows in `ps`)
        jwt_secret: Unparsed,
        /// PEM public key file (RSA: RS256, P-256: ES256); turns auth on
        jwt_public_key_file: Unparsed,
        /// Clock skew allowed on a token's exp
        jwt_leeway: Unparsed = DEFAULT_JWT_LEEWAY,
        /// With auth on, serve /metrics without a token
        metrics_public: Unparsed = DEFAULT_METRICS_PUBLIC,
        /// Longest request URL in bytes
        max_url_bytes: NonZeroUsize = limits::DEFAULT_MAX_URL_BYTES,
        /// Most request header bytes
        max_header_bytes: NonZeroUsize = limits::DEFAULT_MAX_HEADER_BYTES,
        /// Writes per second per token subject, 0 for no limit
        pub publish_rate: u32 = 0_u32,
        /// Writes a subject may make at once, 0 for one second's worth
        ///
        /// With `publish_rate`: the burst (0: = rate).
        pub publish_burst: u32 = 0_u32,
        /// How long an Idempotency-Key's first answer is kept, e.g. 24h
        pub idempotency_ttl: Duration = DEFAULT_IDEMPOTENCY_TTL,
        /// Most items in one batch write (array create, updateAll, publish array)
        batch_max_items: NonZeroUsize = DEFAULT_BATCH_MAX_ITEMS,
        /// Most bytes of records and changes one batch writes
        batch_max_bytes: NonZeroUsize = DEFAULT_BATCH_MAX_BYTES,
    }
    // The fields several settings make, or one setting in another shape.
    derived |s, layers| {
        /// One Redis, or a Redis Cluster (then events go out with `SPUBLISH`).
        pub redis: RedisTarget = layers
            .redis_target("redis_url", "redis_cluster")?
            .unwrap_or_else(|| RedisTarget::Single(DEFAULT_REDIS_URL.to_owned())),
        pub body_limit: usize = s.body_limit.get(),
        pub retention: Retention = Retention {
            max_len: s.stream_max_len,
            max_age: s.stream_max_age,
        },
        /// Who may publish and read; off when no JWT setting is given.
        pub auth: Auth = Auth::from_layers(layers, false)?,
        pub request_limits: RequestLimits = RequestLimits {
            max_url_bytes: s.max_url_bytes.get(),
            max_header_bytes: s.max_header_bytes.get(),
        },
        /// How large one batch write may be.
        pub batch: BatchLimits = BatchLimits {
            max_items: s.batch_max_items.get(),
            max_bytes: s.batch_max_bytes.get(),
        },
    }
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
        let layers = Self::layers(args, env)?;
        let config = Self::read(&layers).map_err(ConfigError::Settings)?;
        // Checked after parsing so the message names the setting.
        layers
            .checked("idempotency_ttl", |_: &String| {
                if config.idempotency_ttl.is_zero() {
                    Err("must be more than 0".to_owned())
                } else {
                    Ok(())
                }
            })
            .map_err(ConfigError::Settings)?;
        Ok(config)
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

    #[test]
    fn readme_settings_table_matches_the_definitions() {
        let readme = include_str!("../../README.md");
        let wrong =
            service::settings::readme_disagreements(readme, "PUBLISHER", &Config::settings());
        assert!(
            wrong.is_empty(),
            "README.md's publisher settings table and publisher/src/config.rs disagree:\n{}",
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

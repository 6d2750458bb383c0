//! Layered settings: defaults < config file (TOML or YAML) < environment (`<PREFIX>_*`)
//! < command-line flags. Shared by the publisher and the gateway so both name and report
//! settings the same way.
//!
//! Nothing here reads the process environment: callers pass the variables in, so tests
//! can check the layering with a plain map.
//!
//! A binary declares each setting once with [`settings!`](crate::settings!)
//! (`settings/definition.rs`); [`readme_disagreements`] keeps the README's tables in step with
//! those definitions.

mod definition;
mod readme;

pub use definition::{
    DefaultText, DefaultValue, Fallback, Setting, SettingValue, Unparsed, duration_text, env_name,
    flag_name,
};
pub use readme::readme_disagreements;

use std::collections::HashMap;
use std::fmt::Display;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::redis_link::{RedisTarget, redact_url};

/// A setting that could not be read, named the way the user wrote it.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid setting `{key}` (env {env}, flag --{flag}): {value:?}: {reason}")]
    Invalid {
        key: String,
        env: String,
        flag: String,
        value: String,
        reason: String,
    },
    #[error("config file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: Box<config::ConfigError>,
    },
    #[error("settings: {0}")]
    Layering(Box<config::ConfigError>),
}

impl From<config::ConfigError> for SettingsError {
    fn from(e: config::ConfigError) -> Self {
        Self::Layering(Box::new(e))
    }
}

/// Why a binary would not start: a bad flag, or a setting that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Flags(#[from] clap::Error),
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

/// The merged layers of one binary's settings.
#[derive(Debug)]
pub struct Layers {
    merged: config::Config,
    prefix: &'static str,
}

impl Layers {
    /// Merges the layers. `env` holds the process's variables (only `<PREFIX>_*` are
    /// read); `flags` holds the values given on the command line.
    ///
    /// # Errors
    /// [`SettingsError::File`] if the file is missing or unparsable.
    pub fn build(
        prefix: &'static str,
        defaults: &[(&str, &str)],
        file: Option<&Path>,
        env: &HashMap<String, String>,
        flags: &[(&str, Option<String>)],
    ) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder();
        for (key, value) in defaults {
            builder = builder.set_default(*key, *value)?;
        }
        if let Some(path) = file {
            // Read the file alone first so its error names the file, not a key.
            let source = config::File::from(path).required(true);
            config::Config::builder()
                .add_source(source.clone())
                .build()
                .map_err(|source| SettingsError::File {
                    path: path.display().to_string(),
                    source: Box::new(source),
                })?;
            builder = builder.add_source(source);
        }
        let wanted = format!("{prefix}_");
        let vars: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with(&wanted))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(config::Environment::with_prefix(prefix).source(Some(vars)));
        for (key, value) in flags {
            builder = builder.set_override_option(*key, value.clone())?;
        }
        Ok(Self {
            merged: builder.build()?,
            prefix,
        })
    }

    /// An [`SettingsError::Invalid`] naming `key` as the user writes it (env, flag).
    pub fn invalid(&self, key: &str, value: &str, reason: impl Display) -> SettingsError {
        SettingsError::Invalid {
            key: key.to_owned(),
            env: env_name(self.prefix, key),
            flag: flag_name(key),
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// The raw value of `key`, or `None` if no layer set it (or it is empty).
    pub fn raw(&self, key: &str) -> Option<String> {
        self.merged.get_string(key).ok().filter(|v| !v.is_empty())
    }

    /// Parses `key` with `FromStr`.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] naming the setting if it is unset or does not parse.
    pub fn get<T: FromStr>(&self, key: &str) -> Result<T, SettingsError>
    where
        T::Err: Display,
    {
        let value = self
            .raw(key)
            .ok_or_else(|| self.invalid(key, "", "required"))?;
        value
            .trim()
            .parse()
            .map_err(|e| self.invalid(key, &value, e))
    }

    /// Parses `key` if some layer set it.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] if it is set and does not parse.
    pub fn get_opt<T: FromStr>(&self, key: &str) -> Result<Option<T>, SettingsError>
    where
        T::Err: Display,
    {
        self.raw(key).map(|_| self.get(key)).transpose()
    }

    /// Parses `key` as a count of at least 1.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] if it does not parse or is 0.
    pub fn non_zero(&self, key: &str) -> Result<std::num::NonZeroUsize, SettingsError> {
        let n: usize = self.get(key)?;
        std::num::NonZeroUsize::new(n)
            .ok_or_else(|| self.invalid(key, &n.to_string(), "must be at least 1"))
    }

    /// A Redis URL that redis-rs accepts, if some layer set `key`.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] if it is set and not a usable Redis URL.
    pub fn redis_url(&self, key: &str) -> Result<Option<String>, SettingsError> {
        let Some(url) = self.raw(key) else {
            return Ok(None);
        };
        redis::Client::open(url.as_str()).map_err(|e| self.invalid(key, &url, e))?;
        Ok(Some(url))
    }

    /// Redis Cluster seed nodes, if some layer set `key`: a comma-separated string
    /// (environment, flag) or, in a config file, a string or a list of strings.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] if it is set but empty or not a list of usable
    /// `redis://host:port` URLs.
    pub fn redis_cluster(&self, key: &str) -> Result<Option<Vec<String>>, SettingsError> {
        let seeds: Vec<String> = match self.raw(key) {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            None => match self.merged.get_array(key) {
                Ok(values) => values
                    .into_iter()
                    .map(|v| v.into_string().map(|s| s.trim().to_owned()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| self.invalid(key, "[..]", e))?,
                Err(_) => return Ok(None),
            },
        };
        let shown = seeds
            .iter()
            .map(|s| redact_url(s))
            .collect::<Vec<_>>()
            .join(",");
        if seeds.is_empty() || seeds.iter().any(String::is_empty) {
            return Err(self.invalid(
                key,
                &shown,
                "give one or more comma-separated seed nodes, e.g. redis://10.0.0.1:6379",
            ));
        }
        redis::cluster::ClusterClient::new(seeds.iter().map(String::as_str))
            .map_err(|e| self.invalid(key, &shown, e))?;
        Ok(Some(seeds))
    }

    /// Where Redis is: `url_key` (one Redis) or `cluster_key` (Redis Cluster seed nodes),
    /// `None` if neither is set.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] if both are set, or either is unusable.
    pub fn redis_target(
        &self,
        url_key: &str,
        cluster_key: &str,
    ) -> Result<Option<RedisTarget>, SettingsError> {
        let url = self.redis_url(url_key)?;
        let cluster = self.redis_cluster(cluster_key)?;
        match (url, cluster) {
            (Some(url), Some(_)) => Err(self.invalid(
                url_key,
                &redact_url(&url),
                format!(
                    "set either `{url_key}` (one Redis) or `{cluster_key}` (Redis Cluster), not both"
                ),
            )),
            (Some(url), None) => Ok(Some(RedisTarget::Single(url))),
            (None, Some(seeds)) => Ok(Some(RedisTarget::Cluster(seeds))),
            (None, None) => Ok(None),
        }
    }

    /// Parses `key` as a duration: `500ms`, `15s`, `2m`, `1h`, `1d`, or plain seconds.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] if it does not parse.
    pub fn duration(&self, key: &str) -> Result<Duration, SettingsError> {
        let value = self
            .raw(key)
            .ok_or_else(|| self.invalid(key, "", "required"))?;
        parse_duration(&value).map_err(|e| self.invalid(key, &value, e))
    }

    /// Parses `key` with a check, e.g. a lower bound.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] if it does not parse or `check` refuses it.
    pub fn checked<T: FromStr>(
        &self,
        key: &str,
        check: impl FnOnce(&T) -> Result<(), String>,
    ) -> Result<T, SettingsError>
    where
        T::Err: Display,
    {
        let value: T = self.get(key)?;
        check(&value)
            .map_err(|reason| self.invalid(key, &self.raw(key).unwrap_or_default(), reason))?;
        Ok(value)
    }
}

/// Parses `500ms`, `15s`, `2m`, `1h`, `1d`, or a plain number of seconds.
///
/// # Errors
/// A message saying what form is expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| "expected a duration such as 500ms, 15s, 2m, 1h or 1d".to_owned())?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => return Err(format!("unknown unit {other:?}; use ms, s, m, h or d")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| "duration too large".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn layers_override_in_order() {
        let mut file = tempfile_with(
            ".toml",
            "listen = \"127.0.0.1:1\"\nbody_limit = 10\nredis_url = \"redis://file\"\n",
        );
        let env = HashMap::from([
            ("PUBLISHER_BODY_LIMIT".to_owned(), "20".to_owned()),
            ("PUBLISHER_REDIS_URL".to_owned(), "redis://env".to_owned()),
            ("OTHER_BODY_LIMIT".to_owned(), "99".to_owned()),
        ]);
        let defaults = [
            ("listen", "0.0.0.0:8081"),
            ("body_limit", "5"),
            ("redis_url", "redis://default"),
            ("grace", "3s"),
        ];
        let flags = [
            ("redis_url", Some("redis://flag".to_owned())),
            ("listen", None),
        ];
        let layers =
            Layers::build("PUBLISHER", &defaults, Some(file.path()), &env, &flags).unwrap();
        assert_eq!(layers.get::<String>("listen").unwrap(), "127.0.0.1:1");
        assert_eq!(layers.get::<usize>("body_limit").unwrap(), 20);
        assert_eq!(layers.get::<String>("redis_url").unwrap(), "redis://flag");
        assert_eq!(layers.duration("grace").unwrap(), Duration::from_secs(3));
        file.flush().unwrap();
    }

    #[test]
    fn bad_values_name_the_setting() {
        let env = HashMap::from([("PUBLISHER_BODY_LIMIT".to_owned(), "lots".to_owned())]);
        let layers = Layers::build("PUBLISHER", &[("body_limit", "5")], None, &env, &[]).unwrap();
        let err = layers.get::<usize>("body_limit").unwrap_err().to_string();
        assert!(err.starts_with("invalid setting `body_limit` (env PUBLISHER_BODY_LIMIT, flag --body-limit): \"lots\""), "{err}");
    }

    #[test]
    fn redis_target_is_one_redis_or_a_cluster_never_both() {
        let build = |env: &[(&str, &str)], file: Option<&Path>| {
            let env = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            Layers::build("GATEWAY", &[], file, &env, &[]).unwrap()
        };
        let target = |layers: &Layers| layers.redis_target("redis_url", "redis_cluster");
        assert_eq!(target(&build(&[], None)).unwrap(), None);
        assert_eq!(
            target(&build(&[("GATEWAY_REDIS_URL", "redis://h:1/")], None)).unwrap(),
            Some(RedisTarget::Single("redis://h:1/".into()))
        );
        assert_eq!(
            target(&build(
                &[("GATEWAY_REDIS_CLUSTER", " redis://a:1, redis://b:2 ,")],
                None
            ))
            .unwrap(),
            Some(RedisTarget::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ]))
        );
        let both = target(&build(
            &[
                ("GATEWAY_REDIS_URL", "redis://:pw@h:1/"),
                ("GATEWAY_REDIS_CLUSTER", "redis://a:1"),
            ],
            None,
        ))
        .unwrap_err()
        .to_string();
        assert!(both.contains("not both") && !both.contains("pw@"), "{both}");
        for bad in [",", "http://a:1", "redis://a:1,nonsense://b"] {
            let err = target(&build(&[("GATEWAY_REDIS_CLUSTER", bad)], None))
                .unwrap_err()
                .to_string();
            assert!(err.contains("`redis_cluster`"), "{bad}: {err}");
        }
        let file = tempfile_with(
            ".toml",
            "redis_cluster = [\"redis://a:1\", \"redis://b:2\"]\n",
        );
        assert_eq!(
            target(&build(&[], Some(file.path()))).unwrap(),
            Some(RedisTarget::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ]))
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    fn tempfile_with(suffix: &str, text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(suffix).tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }
}

//! One definition per setting: [`settings!`](crate::settings!) turns a list of entries
//! (doc, name, type, default) into a binary's flags, its defaults layer, its typed
//! `Config` and the [`Setting`] table that `--help` and the README test read.
//!
//! The env name and the flag are not written anywhere: they follow from the name
//! ([`env_name`], [`flag_name`]), the same way error messages spell them.

use std::fmt::Display;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Duration;

use super::{Layers, SettingsError};

/// The environment variable of `key`: `GATEWAY` + `redis_timeout` is
/// `GATEWAY_REDIS_TIMEOUT`.
pub fn env_name(prefix: &str, key: &str) -> String {
    format!("{prefix}_{}", key.to_uppercase())
}

/// The flag of `key`, without the dashes in front: `redis_timeout` is `redis-timeout`
/// (clap's own spelling of a field's long flag).
pub fn flag_name(key: &str) -> String {
    key.replace('_', "-")
}

/// One setting of one binary, as users see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The config-file key, and the name error messages use: `redis_timeout`.
    pub key: &'static str,
    /// `GATEWAY_REDIS_TIMEOUT`.
    pub env: String,
    /// `--redis-timeout`.
    pub flag: String,
    /// The definition's doc comment; its first paragraph is the `--help` line.
    pub doc: &'static str,
    /// The default as a user would write it (`15s`, `0.0.0.0:8080`); `None`: unset.
    pub default: Option<String>,
    /// Whether the default is the lowest layer. A [`Fallback`] is not: the field built
    /// from the setting applies it.
    layered: bool,
}

impl Setting {
    /// The setting `key` of the binary whose environment names start with `prefix`.
    pub fn new(
        prefix: &str,
        key: &'static str,
        doc: &'static str,
        default: Option<DefaultText>,
    ) -> Self {
        let layered = default.as_ref().is_none_or(|d| d.layered);
        Self {
            key,
            env: env_name(prefix, key),
            flag: format!("--{}", flag_name(key)),
            doc,
            default: default.map(|d| d.text),
            layered,
        }
    }

    /// The doc's first paragraph on one line.
    pub fn summary(&self) -> String {
        self.doc
            .lines()
            .map(str::trim)
            .skip_while(|line| line.is_empty())
            .take_while(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The `--help` line: `Longest wait for a Redis reply [env GATEWAY_REDIS_TIMEOUT]
    /// [default 2s]`.
    pub fn help(&self) -> String {
        let mut help = format!("{} [env {}]", self.summary(), self.env);
        if let Some(default) = &self.default {
            help.push_str(&format!(" [default {default}]"));
        }
        help
    }

    /// The value of the defaults layer, if the default is one.
    pub fn layered_default(&self) -> Option<&str> {
        self.default.as_deref().filter(|_| self.layered)
    }
}

/// A default as text, and whether it is a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultText {
    pub text: String,
    pub layered: bool,
}

impl DefaultText {
    pub fn of(value: &impl DefaultValue) -> Self {
        Self {
            text: value.text(),
            layered: value.layered(),
        }
    }
}

/// A value a setting's default may be given as. Its text is what goes in the defaults
/// layer (parsed like any value a user gives), `--help` and the README.
pub trait DefaultValue {
    fn text(&self) -> String;

    /// `false`: applied by the field built from the setting, not a layer.
    fn layered(&self) -> bool {
        true
    }
}

macro_rules! display_default {
    ($($t:ty),*) => {$(
        impl DefaultValue for $t {
            fn text(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
display_default!(&str, bool, u32, u64, usize);

impl DefaultValue for Duration {
    /// The largest whole unit: `24h`, `15s`, `500ms`.
    fn text(&self) -> String {
        duration_text(*self)
    }
}

/// A default that is not a layer: the field built from the setting applies it when no
/// layer sets the setting. For a setting that has a default only while another is
/// unset: the publisher's `redis_url` defaults to a local Redis unless `redis_cluster`
/// is given, and a layered default would make every cluster configuration "both".
#[derive(Clone, Copy, Debug)]
pub struct Fallback<T>(pub T);

impl<T: DefaultValue> DefaultValue for Fallback<T> {
    fn text(&self) -> String {
        self.0.text()
    }

    fn layered(&self) -> bool {
        false
    }
}

/// Writes `d` in the largest unit that keeps it whole (`ms`, `s`, `m`, `h`), as
/// [`parse_duration`](super::parse_duration) reads it back.
pub fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

/// How a setting's layered text becomes its typed value, with errors that name it.
pub trait SettingValue: Sized {
    /// # Errors
    /// [`SettingsError::Invalid`] naming `key`.
    fn read(layers: &Layers, key: &str) -> Result<Self, SettingsError>;
}

/// Implements [`SettingValue`] for types read with [`FromStr`] (a missing value is an
/// error: give them a default or make them `Option`).
#[macro_export]
macro_rules! from_str_setting {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::settings::SettingValue for $t {
            fn read(
                layers: &$crate::settings::Layers,
                key: &str,
            ) -> ::std::result::Result<Self, $crate::settings::SettingsError> {
                layers.get(key)
            }
        }
    )*};
}
from_str_setting!(SocketAddr, String, bool, u32, u64, usize);

/// `500ms`, `15s`, `2m`, `1h`, `1d` or plain seconds.
impl SettingValue for Duration {
    fn read(layers: &Layers, key: &str) -> Result<Self, SettingsError> {
        layers.duration(key)
    }
}

/// A count of at least 1.
impl SettingValue for NonZeroUsize {
    fn read(layers: &Layers, key: &str) -> Result<Self, SettingsError> {
        layers.non_zero(key)
    }
}

/// Unset (or empty) is `None`.
impl<T: FromStr> SettingValue for Option<T>
where
    T::Err: Display,
{
    fn read(layers: &Layers, key: &str) -> Result<Self, SettingsError> {
        layers.get_opt(key)
    }
}

/// The type of a setting that a derived field reads from the layers itself: one whose
/// value is no single string (`redis_cluster` may be a list in a file), is checked
/// together with others (`redis_url` against `redis_cluster`), or is a secret that no
/// struct should hold in the clear (`jwt_secret`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Unparsed;

impl SettingValue for Unparsed {
    fn read(_: &Layers, _: &str) -> Result<Self, SettingsError> {
        Ok(Self)
    }
}

/// Declares a binary's settings once: its clap flags (`--config` and one per setting,
/// help line from the doc plus env name and default), its defaults layer, its `Config`
/// struct and the [`Setting`] table.
///
/// ```text
/// service::settings! {
///     env_prefix: "GATEWAY",
///     #[command(name = "gateway", version, about = "...")]
///     flags: Flags,
///     inputs: Inputs,
///     /// Everything the gateway needs to start.
///     #[derive(Clone, Debug)]
///     pub struct Config {
///         /// Comment heartbeat interval        <- `--help` line (first paragraph)
///         ///
///         /// Proxies close idle streams.        <- more rustdoc
///         pub heartbeat: Duration = Duration::from_secs(15),
///         /// Redis URL
///         redis_url: Unparsed,
///     }
///     derived |s, layers| {
///         /// Where Redis is.
///         pub redis: Option<RedisTarget> = layers.redis_target("redis_url", "redis_cluster")?,
///     }
/// }
/// ```
///
/// Each entry, ending in a comma, is one setting: the doc, then `pub` if it is a field of
/// `Config` as it is, the name (config-file key; env name and flag follow from it), the
/// type (read with [`SettingValue`]) and `= default` (a [`DefaultValue`]) unless it is
/// unset by default. An entry without `pub` is an input: read into the `inputs` struct,
/// which `derived` sees as `s` (with the [`Layers`] as `layers`) to build the fields that
/// several settings make (`?` returns a [`SettingsError`]).
///
/// Generates `Config::settings()` (every setting in entry order), the private
/// `Config::layers(args, env)` (parse the flags, layer defaults < file < env < flags) and
/// `Config::read(&layers)` (the typed `Config`; checks across fields are the caller's).
#[macro_export]
macro_rules! settings {
    (
        env_prefix: $prefix:literal,
        $(#[$flags_meta:meta])*
        flags: $Flags:ident,
        inputs: $Inputs:ident,
        $(#[$config_meta:meta])*
        pub struct $Config:ident { $($entries:tt)* }
        derived |$s:ident, $layers:ident| { $($derived:tt)* }
    ) => {
        $crate::settings!(@common $prefix [$(#[$flags_meta])*] $Flags $Config { $($entries)* });
        $crate::settings!(
            @split [[$(#[$config_meta])*] $Config $Inputs $s $layers { $($derived)* }]
            [] [] { $($entries)* }
        );
    };

    // What every setting gets, field or input.
    (@common $prefix:literal [$($flags_meta:tt)*] $Flags:ident $Config:ident {
        $( $(#[doc = $doc:literal])+ $vis:vis $name:ident : $ty:ty $(= $default:expr)? ),* $(,)?
    }) => {
        // The command line: `--config` and one string per setting, parsed once layered.
        // (Plain `Option`: clap's derive tells optional arguments by that name.)
        #[derive(Debug, ::clap::Parser)]
        $($flags_meta)*
        struct $Flags {
            #[arg(long, help = concat!("Config file (TOML or YAML); also ", $prefix, "_CONFIG"))]
            config: Option<::std::path::PathBuf>,
            $(
                #[arg(long, help = $crate::settings::Setting::new(
                    $prefix,
                    stringify!($name),
                    concat!($($doc, "\n"),+),
                    $crate::__setting_default!($($default)?),
                ).help())]
                $name: Option<::std::string::String>,
            )*
        }

        impl $Config {
            /// Every setting, in `--help` order: what the README's settings table lists.
            pub fn settings() -> ::std::vec::Vec<$crate::settings::Setting> {
                ::std::vec![$(
                    $crate::settings::Setting::new(
                        $prefix,
                        stringify!($name),
                        concat!($($doc, "\n"),+),
                        $crate::__setting_default!($($default)?),
                    ),
                )*]
            }

            /// Parses `args` and layers defaults < config file (`--config` or
            /// `<PREFIX>_CONFIG`) < `env` < flags.
            fn layers(
                args: impl ::std::iter::IntoIterator<Item = ::std::ffi::OsString>,
                env: &::std::collections::HashMap<::std::string::String, ::std::string::String>,
            ) -> ::std::result::Result<$crate::settings::Layers, $crate::settings::ConfigError> {
                let flags = <$Flags as ::clap::Parser>::try_parse_from(args)?;
                let file = flags.config.clone().or_else(|| {
                    env.get(concat!($prefix, "_CONFIG")).map(::std::path::PathBuf::from)
                });
                let settings = Self::settings();
                let defaults: ::std::vec::Vec<(&str, &str)> = settings
                    .iter()
                    .filter_map(|s| s.layered_default().map(|d| (s.key, d)))
                    .collect();
                let overrides = [$( (stringify!($name), flags.$name) ),*];
                ::std::result::Result::Ok($crate::settings::Layers::build(
                    $prefix,
                    &defaults,
                    file.as_deref(),
                    env,
                    &overrides,
                )?)
            }
        }
    };

    // Sorts the entries into fields of `Config` (`pub`) and inputs, one at a time.
    (@split $ctx:tt [$($fields:tt)*] [$($inputs:tt)*] {
        $(#[doc = $doc:literal])+ pub $name:ident : $ty:ty $(= $default:expr)?, $($rest:tt)*
    }) => {
        $crate::settings!(
            @split $ctx [$($fields)* $(#[doc = $doc])+ $name : $ty,] [$($inputs)*] { $($rest)* }
        );
    };
    (@split $ctx:tt [$($fields:tt)*] [$($inputs:tt)*] {
        $(#[doc = $doc:literal])+ $name:ident : $ty:ty $(= $default:expr)?, $($rest:tt)*
    }) => {
        $crate::settings!(
            @split $ctx [$($fields)*] [$($inputs)* $(#[doc = $doc])+ $name : $ty,] { $($rest)* }
        );
    };
    (@split [[$($config_meta:tt)*] $Config:ident $Inputs:ident $s:ident $layers:ident {
        $( $(#[doc = $ddoc:literal])* pub $dname:ident : $dty:ty = $dexpr:expr ),* $(,)?
    }]
    [$( $(#[doc = $fdoc:literal])+ $fname:ident : $fty:ty, )*]
    [$( $(#[doc = $idoc:literal])+ $iname:ident : $ity:ty, )*]
    {}) => {
        $($config_meta)*
        pub struct $Config {
            $( $(#[doc = $fdoc])+ pub $fname: $fty, )*
            $( $(#[doc = $ddoc])* pub $dname: $dty, )*
        }

        // The settings that only build derived fields. A field of type `Unparsed` is
        // never read: its derived field reads the layers.
        #[allow(dead_code)]
        struct $Inputs {
            $( $(#[doc = $idoc])+ $iname: $ity, )*
        }

        impl $Config {
            /// The typed settings from `layers`.
            ///
            /// # Errors
            /// `SettingsError::Invalid` naming the first setting that does not parse.
            fn read(
                layers: &$crate::settings::Layers,
            ) -> ::std::result::Result<Self, $crate::settings::SettingsError> {
                let $layers = layers;
                let $s = $Inputs {
                    $( $iname: $crate::settings::SettingValue::read(layers, stringify!($iname))?, )*
                };
                ::std::result::Result::Ok(Self {
                    $( $fname: $crate::settings::SettingValue::read(layers, stringify!($fname))?, )*
                    $( $dname: $dexpr, )*
                })
            }
        }
    };
}

/// The default of one `settings!` entry: `None`, or its [`DefaultText`].
#[doc(hidden)]
#[macro_export]
macro_rules! __setting_default {
    () => {
        ::std::option::Option::None
    };
    ($default:expr) => {
        ::std::option::Option::Some($crate::settings::DefaultText::of(&$default))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_in_their_largest_whole_unit() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(15), "15s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(24 * 3600), "24h"),
        ] {
            assert_eq!(duration_text(d), text);
            assert_eq!(super::super::parse_duration(text), Ok(d), "{text}");
        }
    }

    #[test]
    fn a_setting_spells_its_env_flag_help_and_default() {
        let doc = " Longest wait for a Redis reply\n\n More about it.\n";
        let s = Setting::new(
            "GATEWAY",
            "redis_timeout",
            doc,
            Some(DefaultText::of(&Duration::from_secs(2))),
        );
        assert_eq!(s.env, "GATEWAY_REDIS_TIMEOUT");
        assert_eq!(s.flag, "--redis-timeout");
        assert_eq!(s.default.as_deref(), Some("2s"));
        assert_eq!(s.layered_default(), Some("2s"));
        assert_eq!(
            s.help(),
            "Longest wait for a Redis reply [env GATEWAY_REDIS_TIMEOUT] [default 2s]"
        );
        let s = Setting::new(
            "PUBLISHER",
            "redis_url",
            " Redis URL\n",
            Some(DefaultText::of(&Fallback("redis://h/"))),
        );
        assert_eq!(s.default.as_deref(), Some("redis://h/"));
        assert_eq!(s.layered_default(), None, "a fallback is not a layer");
        let s = Setting::new("GATEWAY", "peers", " Other pods\n", None);
        assert_eq!(s.help(), "Other pods [env GATEWAY_PEERS]");
    }
}

//! [`Topic`]: a collection name as it appears in the URL (`MyModels`), validated once.

use std::fmt;
use std::sync::Arc;

use crate::DecodeError;

/// Longest topic name accepted, in bytes. Long enough for any model name, short enough
/// that a topic never dominates a Redis key or a log line.
pub const MAX_TOPIC_LEN: usize = 128;

/// The characters [`Topic::new`] accepts, as an ECMA-262 regular expression (what OpenAPI
/// schemas use); a test holds the two together.
pub const TOPIC_PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9_.-]*$";

/// A validated collection name. Cheap to clone (shared string).
///
/// Allowed: ASCII letters, digits, `_`, `-` and `.`, not starting with `.`. That excludes
/// everything that would break a Redis key or hash tag (`{`, `}`, `:`), a URL path segment
/// (`/`, `?`, `#`, `%`, spaces), or an authorization pattern (`*`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `name` as a topic.
    ///
    /// # Errors
    /// [`DecodeError::EmptyTopic`], [`DecodeError::TopicTooLong`] or
    /// [`DecodeError::TopicCharacter`] naming the first offending character.
    pub fn new(name: &str) -> Result<Self, DecodeError> {
        if name.is_empty() {
            return Err(DecodeError::EmptyTopic);
        }
        if name.len() > MAX_TOPIC_LEN {
            return Err(DecodeError::TopicTooLong {
                len: name.len(),
                max: MAX_TOPIC_LEN,
            });
        }
        for (i, ch) in name.char_indices() {
            let ok = ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' || (ch == '.' && i > 0);
            if !ok {
                return Err(DecodeError::TopicCharacter {
                    topic: name.chars().take(MAX_TOPIC_LEN).collect(),
                    ch,
                });
            }
        }
        Ok(Self(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", &*self.0)
    }
}

impl std::str::FromStr for Topic {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_collection_names() {
        for name in ["MyModels", "orders", "a", "Order_Items-v2", "x.y", "9lives"] {
            assert_eq!(Topic::new(name).unwrap().as_str(), name);
        }
        assert!(Topic::new(&"a".repeat(MAX_TOPIC_LEN)).is_ok());
    }

    #[test]
    fn the_pattern_says_what_new_accepts() {
        let pattern = regex::Regex::new(TOPIC_PATTERN).unwrap();
        for name in [
            "MyModels",
            "a",
            "Order_Items-v2",
            "x.y",
            "9lives",
            "-a",
            "_",
            "",
            ".hidden",
            "a{b}",
            "a:b",
            "a/b",
            "a b",
            "Orders*",
            "é",
            "a\nb",
            "a.",
            "a..b",
        ] {
            assert_eq!(pattern.is_match(name), Topic::new(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn rejects_what_would_break_a_key_or_url() {
        assert_eq!(Topic::new(""), Err(DecodeError::EmptyTopic));
        assert_eq!(
            Topic::new(&"a".repeat(MAX_TOPIC_LEN + 1)),
            Err(DecodeError::TopicTooLong {
                len: MAX_TOPIC_LEN + 1,
                max: MAX_TOPIC_LEN
            })
        );
        for (name, ch) in [
            ("a{b}", '{'),
            ("a}b", '}'),
            ("a:b", ':'),
            ("a/b", '/'),
            ("a b", ' '),
            ("a?b", '?'),
            ("a#b", '#'),
            ("a%20", '%'),
            ("Orders*", '*'),
            (".hidden", '.'),
            ("é", 'é'),
            ("a\nb", '\n'),
        ] {
            assert_eq!(
                Topic::new(name),
                Err(DecodeError::TopicCharacter {
                    topic: name.into(),
                    ch
                }),
                "{name:?}"
            );
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        assert_eq!(
            Topic::new("a b").unwrap_err().to_string(),
            "topic \"a b\" contains ' '; use letters, digits, '_', '-' and '.' (not first)"
        );
    }
}

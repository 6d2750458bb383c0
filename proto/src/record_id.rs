//! [`RecordId`]: the id of a record in a collection, as LoopBack's change objects carry
//! it in `target` and `where.id`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::DecodeError;

/// Longest string id accepted, in bytes.
pub const MAX_STRING_ID_LEN: usize = 256;

/// A record id: an integer (the default, from the per-collection counter) or a string.
///
/// Ids map one-to-one onto the hash field that stores the record ([`RecordId::key`]) and
/// onto a URL path segment ([`RecordId::from_path`]): `7` is always the integer 7, so a
/// string id that reads as a canonical integer (`"7"`) is refused rather than silently
/// aliased to it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RecordId {
    Int(i64),
    Str(String),
}

impl RecordId {
    /// Interprets a URL path segment: a canonical integer is an integer id, anything else
    /// a string id.
    ///
    /// # Errors
    /// [`DecodeError::RecordIdString`] for an empty or oversized segment or control characters.
    pub fn from_path(segment: &str) -> Result<Self, DecodeError> {
        match canonical_int(segment) {
            Some(n) => Ok(Self::Int(n)),
            None => Self::string(segment),
        }
    }

    /// Reads an `id` value from a JSON body.
    ///
    /// # Errors
    /// [`DecodeError::RecordIdType`] unless the value is an integer or a string, and the
    /// string errors of [`RecordId::from_path`]; [`DecodeError::RecordIdAmbiguous`] for a
    /// string that reads as an integer.
    pub fn from_json(value: &Value) -> Result<Self, DecodeError> {
        match value {
            Value::Number(n) => n.as_i64().map(Self::Int).ok_or(DecodeError::RecordIdType {
                found: "a non-integer number",
            }),
            Value::String(s) => {
                if canonical_int(s).is_some() {
                    return Err(DecodeError::RecordIdAmbiguous { id: s.clone() });
                }
                Self::string(s)
            }
            Value::Null => Err(DecodeError::RecordIdType { found: "null" }),
            Value::Bool(_) => Err(DecodeError::RecordIdType { found: "a boolean" }),
            Value::Array(_) => Err(DecodeError::RecordIdType { found: "an array" }),
            Value::Object(_) => Err(DecodeError::RecordIdType { found: "an object" }),
        }
    }

    fn string(s: &str) -> Result<Self, DecodeError> {
        if s.is_empty() || s.len() > MAX_STRING_ID_LEN || s.chars().any(char::is_control) {
            return Err(DecodeError::RecordIdString {
                max: MAX_STRING_ID_LEN,
            });
        }
        Ok(Self::Str(s.to_owned()))
    }

    /// The hash field the record is stored under: the decimal integer or the string.
    pub fn key(&self) -> String {
        self.to_string()
    }

    pub fn to_json(&self) -> Value {
        match self {
            Self::Int(n) => Value::from(*n),
            Self::Str(s) => Value::from(s.as_str()),
        }
    }

    /// The id as JSON text (`7` or `"abc"`).
    pub fn json_text(&self) -> String {
        self.to_json().to_string()
    }
}

fn canonical_int(s: &str) -> Option<i64> {
    let n: i64 = s.parse().ok()?;
    (n.to_string() == s).then_some(n)
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Str(s) => f.write_str(s),
        }
    }
}

impl Serialize for RecordId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Int(n) => serializer.serialize_i64(*n),
            Self::Str(s) => serializer.serialize_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for RecordId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_json(&value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn path_segments() {
        assert_eq!(RecordId::from_path("7"), Ok(RecordId::Int(7)));
        assert_eq!(RecordId::from_path("-3"), Ok(RecordId::Int(-3)));
        assert_eq!(RecordId::from_path("007"), Ok(RecordId::Str("007".into())));
        assert_eq!(RecordId::from_path("abc"), Ok(RecordId::Str("abc".into())));
        assert!(RecordId::from_path("").is_err());
        assert!(RecordId::from_path("a\u{0}b").is_err());
        assert!(RecordId::from_path(&"x".repeat(MAX_STRING_ID_LEN + 1)).is_err());
    }

    #[test]
    fn json_ids() {
        assert_eq!(RecordId::from_json(&json!(1)), Ok(RecordId::Int(1)));
        assert_eq!(
            RecordId::from_json(&json!("a1")),
            Ok(RecordId::Str("a1".into()))
        );
        assert_eq!(
            RecordId::from_json(&json!("1")),
            Err(DecodeError::RecordIdAmbiguous { id: "1".into() })
        );
        assert_eq!(
            RecordId::from_json(&json!(1.5)),
            Err(DecodeError::RecordIdType {
                found: "a non-integer number"
            })
        );
        assert_eq!(
            RecordId::from_json(&json!({})),
            Err(DecodeError::RecordIdType { found: "an object" })
        );
    }

    #[test]
    fn keys_and_json_text() {
        assert_eq!(RecordId::Int(1).key(), "1");
        assert_eq!(RecordId::Int(1).json_text(), "1");
        assert_eq!(RecordId::Str("a\"b".into()).key(), "a\"b");
        assert_eq!(RecordId::Str("a\"b".into()).json_text(), r#""a\"b""#);
    }
}

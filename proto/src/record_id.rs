//! [`RecordId`]: the id of a record in a collection, as LoopBack's change objects carry
//! it in `target` and `where.id`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::DecodeError;

/// Longest string id accepted, in bytes.
pub const MAX_STRING_ID_LEN: usize = 256;

/// Largest integer id in size (either sign): JavaScript's `Number.MAX_SAFE_INTEGER`,
/// 2^53-1. A browser reads every id with `JSON.parse`, whose numbers are doubles: beyond
/// this two ids can read as the same number (2^53 and 2^53+1 both become 2^53), so a live
/// list would merge two records. The per-collection counter stops here too.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A record id: an integer (the default, from the per-collection counter) or a string.
///
/// Integer ids read from a path or JSON are within [`MAX_SAFE_INTEGER`] in size. Ids map
/// one-to-one onto the hash field that stores the record ([`RecordId::key`]) and
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
    /// [`DecodeError::RecordIdRange`] for a canonical integer beyond [`MAX_SAFE_INTEGER`]
    /// in size (it is not a string id either: `/api/X/<digits>` always names an integer);
    /// [`DecodeError::RecordIdString`] for an empty or oversized segment or control
    /// characters.
    pub fn from_path(segment: &str) -> Result<Self, DecodeError> {
        match canonical_int(segment) {
            Some(n) => n.map(Self::Int),
            None => Self::string(segment),
        }
    }

    /// Reads an `id` value from a JSON body.
    ///
    /// # Errors
    /// [`DecodeError::RecordIdType`] unless the value is an integer or a string, and the
    /// errors of [`RecordId::from_path`]; [`DecodeError::RecordIdAmbiguous`] for a string
    /// that reads as an integer.
    pub fn from_json(value: &Value) -> Result<Self, DecodeError> {
        match value {
            Value::Number(n) => {
                if let Some(n) = n.as_i64() {
                    return safe(n).map(Self::Int);
                }
                // Past i64 serde_json holds a u64 or a double (`1e300`): a whole number
                // that large is an integer out of range, not a fraction. A small whole
                // double (`1.0`) stays "not an integer", as before.
                let too_big = n.is_u64()
                    || n.as_f64()
                        .is_some_and(|f| f.fract() == 0.0 && f.abs() > MAX_SAFE_INTEGER as f64);
                Err(if too_big {
                    DecodeError::RecordIdRange {
                        id: n.to_string(),
                        max: MAX_SAFE_INTEGER,
                    }
                } else {
                    DecodeError::RecordIdType {
                        found: "a non-integer number",
                    }
                })
            }
            Value::String(s) => match canonical_int(s) {
                Some(Ok(_)) => Err(DecodeError::RecordIdAmbiguous { id: s.clone() }),
                // Unaddressable as a string (its path reads as an integer) and refused as
                // a number: the range is the whole answer.
                Some(Err(e)) => Err(e),
                None => Self::string(s),
            },
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

/// Whether `s` is an integer written the canonical way (`-?(0|[1-9][0-9]*)`, not `-0`),
/// of any size; then its value, or the range error if it is not a safe integer.
fn canonical_int(s: &str) -> Option<Result<i64, DecodeError>> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && s != "-0";
    if !canonical {
        return None;
    }
    let out_of_range = DecodeError::RecordIdRange {
        id: s.to_owned(),
        max: MAX_SAFE_INTEGER,
    };
    // Past i64 the parse fails: out of range as well.
    Some(s.parse().map_or(Err(out_of_range), safe))
}

/// `n` if it is within [`MAX_SAFE_INTEGER`] in size.
fn safe(n: i64) -> Result<i64, DecodeError> {
    if n.unsigned_abs() <= MAX_SAFE_INTEGER.unsigned_abs() {
        Ok(n)
    } else {
        Err(DecodeError::RecordIdRange {
            id: n.to_string(),
            max: MAX_SAFE_INTEGER,
        })
    }
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
    fn integer_ids_stay_within_the_safe_range() {
        let max = MAX_SAFE_INTEGER;
        assert_eq!(max, 9_007_199_254_740_991);
        for n in [max, -max, 0] {
            assert_eq!(RecordId::from_path(&n.to_string()), Ok(RecordId::Int(n)));
            assert_eq!(RecordId::from_json(&json!(n)), Ok(RecordId::Int(n)));
        }
        let range = |id: &str| DecodeError::RecordIdRange {
            id: id.into(),
            max: MAX_SAFE_INTEGER,
        };
        for text in [
            "9007199254740992",
            "-9007199254740992",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "123456789012345678901234567890",
        ] {
            // A path of digits always names an integer, so one out of range is refused
            // rather than taken as a string id.
            assert_eq!(RecordId::from_path(text), Err(range(text)), "{text}");
            let number: Value = serde_json::from_str(text).unwrap();
            assert!(
                matches!(
                    RecordId::from_json(&number),
                    Err(DecodeError::RecordIdRange { .. })
                ),
                "{text}"
            );
            // And a string of those digits could never be read back through a path.
            assert_eq!(
                RecordId::from_json(&json!(text)),
                Err(range(text)),
                "{text}"
            );
        }
        assert_eq!(RecordId::from_json(&json!(1e300)), Err(range("1e+300")));
        // Not canonical integers: still string ids, as before.
        assert_eq!(
            RecordId::from_path("09007199254740992"),
            Ok(RecordId::Str("09007199254740992".into()))
        );
        assert_eq!(RecordId::from_path("-0"), Ok(RecordId::Str("-0".into())));
        // A whole number written as a double is not an integer id, as before.
        assert_eq!(
            RecordId::from_json(&json!(2.0)),
            Err(DecodeError::RecordIdType {
                found: "a non-integer number"
            })
        );
        let message = range("9007199254740992").to_string();
        assert!(
            message.contains("safe integer range")
                && message.contains("-9007199254740991 and 9007199254740991"),
            "{message}"
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

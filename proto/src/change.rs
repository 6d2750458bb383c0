//! [`Change`]: LoopBack's change object, the JSON a browser receives in `data:`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{DecodeError, Object, RecordId};

/// What happened to the record. LoopBack's names: never `delete`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeType {
    Create,
    Update,
    Remove,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Remove => "remove",
        }
    }

    /// # Errors
    /// [`DecodeError::ChangeType`] for anything but the three LoopBack names.
    pub fn parse(s: &str) -> Result<Self, DecodeError> {
        match s {
            "create" => Ok(Self::Create),
            "update" => Ok(Self::Update),
            "remove" => Ok(Self::Remove),
            other => Err(DecodeError::ChangeType {
                found: other.chars().take(64).collect(),
            }),
        }
    }
}

impl fmt::Display for ChangeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ChangeType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ChangeType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// LoopBack's change object. Field order is the wire order (`target`, `where`, `data`,
/// `type`) and absent fields are left out, so serializing gives LoopBack's bytes:
/// `{"target":1,"data":{"foo":"bar","id":1},"type":"create"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub target: RecordId,
    #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
    pub where_: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Object>,
    #[serde(rename = "type")]
    pub kind: ChangeType,
}

impl Change {
    /// A record was created; `record` is the stored record, id included.
    pub fn create(id: RecordId, record: Object) -> Self {
        Self {
            target: id,
            where_: None,
            data: Some(record),
            kind: ChangeType::Create,
        }
    }

    /// A record was replaced or patched; `record` is the whole record after the change.
    pub fn update(id: RecordId, record: Object) -> Self {
        Self {
            target: id,
            where_: None,
            data: Some(record),
            kind: ChangeType::Update,
        }
    }

    /// A record was deleted through the REST API: LoopBack sends `where: {id}` and no data.
    pub fn remove(id: RecordId) -> Self {
        let mut where_ = Object::new();
        where_.insert("id".into(), id.to_json());
        Self {
            target: id,
            where_: Some(where_),
            data: None,
            kind: ChangeType::Remove,
        }
    }

    /// The compact JSON text, exactly as the browser receives it.
    pub fn to_json(&self) -> String {
        // Numbers in JavaScript's bytes, as LoopBack's own change stream writes them.
        crate::json::to_string(self)
    }

    /// Parses a change object (the raw `/publish` body, a stream entry).
    ///
    /// # Errors
    /// [`DecodeError::Change`] naming the field at fault.
    pub fn from_json(text: &str) -> Result<Self, DecodeError> {
        serde_json::from_str(text).map_err(|e| DecodeError::Change {
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: serde_json::Value) -> Object {
        match v {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn golden_loopback_bytes() {
        let record = obj(json!({"foo": "bar", "id": 1}));
        assert_eq!(
            Change::create(RecordId::Int(1), record.clone()).to_json(),
            r#"{"target":1,"data":{"foo":"bar","id":1},"type":"create"}"#
        );
        assert_eq!(
            Change::update(RecordId::Int(1), record).to_json(),
            r#"{"target":1,"data":{"foo":"bar","id":1},"type":"update"}"#
        );
        assert_eq!(
            Change::remove(RecordId::Int(1)).to_json(),
            r#"{"target":1,"where":{"id":1},"type":"remove"}"#
        );
        assert_eq!(
            Change::remove(RecordId::Str("a-1".into())).to_json(),
            r#"{"target":"a-1","where":{"id":"a-1"},"type":"remove"}"#
        );
    }

    #[test]
    fn data_keeps_the_record_order() {
        let record = obj(json!({"zeta": 1, "alpha": {"y": 2, "x": 1}, "id": 3}));
        assert_eq!(
            Change::create(RecordId::Int(3), record).to_json(),
            r#"{"target":3,"data":{"zeta":1,"alpha":{"y":2,"x":1},"id":3},"type":"create"}"#
        );
    }

    /// Found by `fuzz/fuzz_targets/json_body.rs`: serde_json's default float parser is
    /// not correctly rounded, so a record number read from a publish body and printed
    /// back could read as a different double (one ulp off) on the next parse: the
    /// gateway's filters and the browser saw another value than the publisher stored.
    #[test]
    fn numbers_survive_a_reparse() {
        for number in [
            "4444444444444444444444444444444441",
            "0.30000000000000004",
            "2.2250738585072011e-308",
            "9007199254740993.5",
            "1e22",
        ] {
            let text = format!(r#"{{"target":1,"data":{{"n":{number}}},"type":"create"}}"#);
            let change = Change::from_json(&text).unwrap();
            // The text is JavaScript's (`9007199254740994`, which reads back as an integer
            // where the first parse had a float): the same number, the same bytes again.
            let again = Change::from_json(&change.to_json()).unwrap();
            assert_eq!(again.to_json(), change.to_json(), "{number}");
            let exact: f64 = number.parse().unwrap();
            assert_eq!(change.data.unwrap()["n"].as_f64(), Some(exact), "{number}");
            assert_eq!(again.data.unwrap()["n"].as_f64(), Some(exact), "{number}");
        }
    }

    #[test]
    fn parses_and_validates() {
        let text = r#"{"target":1,"where":{"id":1},"type":"remove"}"#;
        let change = Change::from_json(text).unwrap();
        assert_eq!(change, Change::remove(RecordId::Int(1)));
        assert_eq!(change.to_json(), text);

        for bad in [
            r#"{"target":1,"type":"delete"}"#,
            r#"{"type":"create"}"#,
            r#"{"target":1}"#,
            r#"{"target":1.5,"type":"create"}"#,
            r#"{"target":1,"type":"create","data":[1]}"#,
            r#"{"target":1,"type":"create","extra":true}"#,
            r#"[]"#,
        ] {
            assert!(
                matches!(Change::from_json(bad), Err(DecodeError::Change { .. })),
                "{bad}"
            );
        }
        assert!(
            Change::from_json(r#"{"target":1,"type":"delete"}"#)
                .unwrap_err()
                .to_string()
                .contains(r#"change type must be "create", "update" or "remove", got "delete""#)
        );
    }
}

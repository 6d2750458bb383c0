//! [`Query`]: a LoopBack `find` filter, what `GET /api/{collection}?filter=...` takes:
//! `where` and `fields` exactly as a change stream's `options` ([`Filter`], one
//! implementation), plus `order`, `limit` and `skip` (or `offset`), applied to a whole
//! collection. Pure: the caller reads the records and hands them to [`Query::apply`].
//!
//! Semantics follow loopback-datasource-juggler 3 (`dao.js` `_normalize`, the memory
//! connector's `all`), checked against a running LoopBack 3 app by the differential test:
//!
//! - **Order of work**: `where`, then `order`, then `skip` and `limit`, then `fields`.
//! - **`order`**: `"name"`, `"name DESC"`, `"a ASC, b DESC"`, or an array of those;
//!   directions `ASC`/`DESC` in any case; anything else is a 400. Keys may be dotted paths.
//!   Values compare as JavaScript's `<` and `>` do (numbers numerically, strings by UTF-16
//!   code unit, a number against a numeric string numerically, anything incomparable as
//!   equal), and a missing value sorts before every present one (after, with `DESC`), as
//!   in the memory connector. Ties keep the default order. Numbers mixed with strings
//!   have no consistent JavaScript order, so LoopBack's answer for them depends on V8's
//!   sort of the whole collection; ours is the stable sort of the matches.
//! - **Default order** (and the order ties keep): integer ids ascending, then string ids.
//! - **`limit`**, **`skip`**/`offset`: non-negative integers (`2.0` and `1e1` count; in the
//!   bracket form, strings of digits); a `limit` of `0` means no limit, as JSON's `0` does
//!   in LoopBack (which refuses the bracket form's `"0"`). `skip` wins over `offset` when
//!   both are given. Unlike LoopBack, a `skip` without a `limit` returns every remaining
//!   record (LoopBack quietly caps it at 100).
//! - **`include`** (relations) is refused: collections here have none.
//!
//! Two spellings, as LoopBack's REST layer takes them: `filter=<JSON>`, or the bracket form
//! (`filter[where][status]=open&filter[order]=name%20DESC&filter[limit]=10`), whose values
//! are all strings: `where` compares them loosely (`"3"` equals `3`), `limit` and `skip`
//! read them as integers, and `fields` reads `"true"`/`"1"` and `"false"`/`"0"` as booleans.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::{Filter, FilterError, FilterLimits, Object};

/// Most elements a bracket-form array may have (`filter[order][20]`); higher indices are an
/// error, so a query string cannot make a large array from one parameter.
pub const MAX_BRACKET_INDEX: usize = 20;

/// Why a find filter was refused (a 400). Messages name the problem and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("{name} is not valid JSON: {reason}")]
    Json { name: String, reason: String },
    #[error("filter is larger than {max} bytes of JSON")]
    TooBig { max: usize },
    #[error("filter must be a JSON object, got {found}")]
    NotAnObject { found: &'static str },
    #[error("filter.{key}: unknown key; a find filter takes where, fields, order, limit and skip")]
    UnknownKey { key: String },
    #[error("filter.include: relations are not supported here")]
    Include,
    #[error("filter.order: {reason}")]
    Order { reason: String },
    #[error("filter.{key}: expected a non-negative integer, got {value}")]
    Count { key: &'static str, value: String },
    #[error("filter: {reason}")]
    Bracket { reason: String },
    /// `where` or `fields`.
    #[error("filter.{0}")]
    Filter(#[from] FilterError),
}

/// A parsed find filter.
#[derive(Clone, Debug, Default)]
pub struct Query {
    filter: Filter,
    order: Vec<OrderKey>,
    /// `None`: every record.
    limit: Option<usize>,
    skip: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct OrderKey {
    path: Vec<String>,
    descending: bool,
}

impl Query {
    /// Parses the JSON form of a find filter (an object, or `null` for none).
    ///
    /// # Errors
    /// A [`QueryError`] naming the first problem.
    pub fn parse(filter: &Value, limits: &FilterLimits) -> Result<Self, QueryError> {
        let map = match filter {
            Value::Null => return Ok(Self::default()),
            Value::Object(map) => map,
            other => {
                return Err(QueryError::NotAnObject { found: kind(other) });
            }
        };
        let mut query = Self::default();
        let mut rest = Map::new();
        // `skip` wins over `offset` when both are given (juggler: `skip || offset`).
        let mut offset = None;
        for (key, value) in map {
            match key.as_str() {
                "where" | "fields" => {
                    rest.insert(key.clone(), value.clone());
                }
                "order" => query.order = parse_order(value)?,
                "limit" => query.limit = count("limit", value)?.filter(|n| *n > 0),
                "skip" => query.skip = count("skip", value)?.unwrap_or(0),
                "offset" => offset = count("offset", value)?,
                "include" => return Err(QueryError::Include),
                key => {
                    return Err(QueryError::UnknownKey {
                        key: key.to_owned(),
                    });
                }
            }
        }
        if !map.contains_key("skip") {
            query.skip = offset.unwrap_or(0);
        }
        query.filter = Filter::parse(&Value::Object(rest), limits).map_err(|e| match e {
            FilterError::TooBig { max } => QueryError::TooBig { max },
            e => QueryError::Filter(e),
        })?;
        Ok(query)
    }

    /// Reads the find filter from a request's query parameters (decoded pairs, in order):
    /// `filter=<JSON>`, or the bracket form `filter[...]=...`; no filter at all is the
    /// empty one. Other parameters are ignored.
    ///
    /// # Errors
    /// A [`QueryError`]: bad JSON, both forms at once, a malformed bracket key, or the
    /// errors of [`Query::parse`].
    pub fn from_query<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        limits: &FilterLimits,
    ) -> Result<Self, QueryError> {
        match json_param("filter", pairs, limits)? {
            None => Ok(Self::default()),
            Some(value) => Self::parse(&value, limits),
        }
    }

    /// This query with `scope`'s `where` ANDed in ([`Filter::restricted_to`]).
    #[must_use]
    pub fn restricted_to(mut self, scope: &Filter) -> Self {
        self.filter = self.filter.restricted_to(scope);
        self
    }

    /// This query limited to its first record (LoopBack's `findOne`).
    #[must_use]
    pub fn first(mut self) -> Self {
        self.limit = Some(1);
        self
    }

    /// The `where` and `fields` part: the same filter a change stream would use.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// Whether this query is the default one (every record, default order, whole).
    pub fn is_empty(&self) -> bool {
        self.filter.is_empty() && self.order.is_empty() && self.limit.is_none() && self.skip == 0
    }

    /// The answer to this query over `records`, which must be in the default order
    /// (integer ids ascending, then string ids).
    pub fn apply(&self, records: Vec<Object>) -> Vec<Object> {
        let mut found: Vec<Object> = records
            .into_iter()
            .filter(|r| self.filter.matches(r))
            .collect();
        if !self.order.is_empty() {
            // Stable: ties keep the default order.
            found.sort_by(|a, b| self.compare(a, b));
        }
        let taken = found
            .into_iter()
            .skip(self.skip)
            .take(self.limit.unwrap_or(usize::MAX));
        if self.filter.projects() {
            taken.map(|r| self.filter.project(&r)).collect()
        } else {
            taken.collect()
        }
    }

    /// The memory connector's `sorting`: the first key that tells `a` and `b` apart.
    fn compare(&self, a: &Object, b: &Object) -> Ordering {
        for key in &self.order {
            let (x, y) = (lookup(a, &key.path), lookup(b, &key.path));
            let order = match (x, y) {
                (Some(_), None) => Ordering::Greater,
                (None, Some(_)) => Ordering::Less,
                (None, None) => Ordering::Equal,
                (Some(x), Some(y)) if js_less(y, x) => Ordering::Greater,
                (Some(x), Some(y)) if js_less(x, y) => Ordering::Less,
                _ => Ordering::Equal,
            };
            let order = if key.descending {
                order.reverse()
            } else {
                order
            };
            if order != Ordering::Equal {
                return order;
            }
        }
        Ordering::Equal
    }
}

/// `record`'s value at a dotted path; `None` when a step is missing (JavaScript's
/// `undefined`). `null` is a value, also for a path that runs through a null.
fn lookup<'r>(record: &'r Object, path: &[String]) -> Option<&'r Value> {
    let (first, rest) = path.split_first()?;
    let mut value = record.get(first)?;
    for step in rest {
        value = match value {
            // The memory connector's `getValue` stops at a null step and answers null.
            Value::Null => return Some(value),
            Value::Object(map) => map.get(step)?,
            Value::Array(items) => items.get(step.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

/// JavaScript's `a < b` for JSON values (the abstract relational comparison): strings
/// compare by UTF-16 code unit; anything else as numbers (`null` is 0, booleans 0 and 1,
/// strings by `Number()`), where `NaN` is never less nor greater.
fn js_less(a: &Value, b: &Value) -> bool {
    match (primitive(a), primitive(b)) {
        (Primitive::Text(x), Primitive::Text(y)) => x.encode_utf16().lt(y.encode_utf16()),
        (x, y) => x.number() < y.number(),
    }
}

enum Primitive<'v> {
    Number(f64),
    Text(std::borrow::Cow<'v, str>),
}

impl Primitive<'_> {
    fn number(&self) -> f64 {
        match self {
            Self::Number(n) => *n,
            Self::Text(text) => js_number(text),
        }
    }
}

/// JavaScript's `ToPrimitive` of a JSON value: arrays become their elements joined by
/// commas, objects `"[object Object]"`.
fn primitive(value: &Value) -> Primitive<'_> {
    match value {
        Value::Null => Primitive::Number(0.0),
        Value::Bool(b) => Primitive::Number(if *b { 1.0 } else { 0.0 }),
        Value::Number(n) => Primitive::Number(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Primitive::Text(s.as_str().into()),
        Value::Array(items) => Primitive::Text(
            items
                .iter()
                .map(|item| match item {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    Value::Object(_) => "[object Object]".to_owned(),
                    other => match primitive(other) {
                        Primitive::Text(t) => t.into_owned(),
                        Primitive::Number(n) => crate::json::js_number(n),
                    },
                })
                .collect::<Vec<_>>()
                .join(",")
                .into(),
        ),
        Value::Object(_) => Primitive::Text("[object Object]".into()),
    }
}

/// JavaScript's `Number(text)`: trimmed; empty is 0; decimal, `Infinity`, or `0x`/`0o`/`0b`
/// integers; anything else `NaN`.
fn js_number(text: &str) -> f64 {
    let t = text.trim();
    if t.is_empty() {
        return 0.0;
    }
    let radix = |prefix: &str, radix: u32| {
        t.strip_prefix(prefix)
            .or_else(|| t.strip_prefix(&prefix.to_uppercase()))
            .map(|digits| u64::from_str_radix(digits, radix).map_or(f64::NAN, |n| n as f64))
    };
    if let Some(n) = radix("0x", 16)
        .or_else(|| radix("0o", 8))
        .or_else(|| radix("0b", 2))
    {
        return n;
    }
    match t {
        "Infinity" | "+Infinity" => f64::INFINITY,
        "-Infinity" => f64::NEG_INFINITY,
        // Rust accepts "inf", "nan" and "1e5" alike; JavaScript only the last.
        _ if t.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => {
            t.parse().unwrap_or(f64::NAN)
        }
        _ => f64::NAN,
    }
}

/// `order` as juggler's `_normalize` reads it.
fn parse_order(value: &Value) -> Result<Vec<OrderKey>, QueryError> {
    let items: Vec<&Value> = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut keys = Vec::new();
    for item in items {
        let Value::String(text) = item else {
            return Err(QueryError::Order {
                reason: format!(
                    "expected a string or an array of strings, got {}",
                    kind(item)
                ),
            });
        };
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let mut parts = token.split_whitespace();
            let name = parts.next().unwrap_or(token);
            let descending = match parts.next().map(str::to_ascii_uppercase).as_deref() {
                None | Some("ASC") => false,
                Some("DESC") => true,
                Some(_) => {
                    return Err(QueryError::Order {
                        reason: format!("{token:?} has an invalid direction; use ASC or DESC"),
                    });
                }
            };
            if parts.next().is_some() {
                return Err(QueryError::Order {
                    reason: format!("{token:?} is not \"<property> [ASC|DESC]\""),
                });
            }
            let path: Vec<String> = name.split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(QueryError::Order {
                    reason: format!("{name:?} is not a property name"),
                });
            }
            keys.push(OrderKey { path, descending });
        }
    }
    Ok(keys)
}

/// `limit` or `skip`: a non-negative integer, or a string of one (bracket form); `null`
/// for none.
fn count(key: &'static str, value: &Value) -> Result<Option<usize>, QueryError> {
    let bad = || QueryError::Count {
        key,
        value: value.to_string(),
    };
    match value {
        Value::Null => Ok(None),
        // `2.0` and `1e1` are integers to JavaScript, as to LoopBack.
        Value::Number(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= 9_007_199_254_740_991.0)
                    .map(|f| f as u64)
            })
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(bad),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map(Some).map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// The JSON value of query parameter `name` (`filter`, `where`), from a request's
/// decoded pairs: `name=<JSON>`, or LoopBack's bracket form `name[a][b]=...`; `None` if
/// neither is there. Other parameters are ignored.
///
/// # Errors
/// A [`QueryError`]: bad JSON, both forms at once, the parameter twice, a malformed
/// bracket key, or more than `limits.max_bytes`.
pub fn json_param<'a>(
    name: &str,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    limits: &FilterLimits,
) -> Result<Option<Value>, QueryError> {
    let mut json = None;
    let mut brackets = Vec::new();
    let open = format!("{name}[");
    for (key, value) in pairs {
        if key == name {
            if json.replace(value).is_some() {
                return Err(QueryError::Bracket {
                    reason: format!("{name} given more than once"),
                });
            }
        } else if let Some(path) = key.strip_prefix(open.as_str()) {
            brackets.push((path, value));
        }
    }
    match (json, brackets.is_empty()) {
        (None, true) => Ok(None),
        (Some(_), false) => Err(QueryError::Bracket {
            reason: format!("give {name} as JSON or in the bracket form, not both"),
        }),
        (Some(text), true) => {
            if text.len() > limits.max_bytes {
                return Err(QueryError::TooBig {
                    max: limits.max_bytes,
                });
            }
            serde_json::from_str(text)
                .map(Some)
                .map_err(|e| QueryError::Json {
                    name: name.to_owned(),
                    reason: e.to_string(),
                })
        }
        (None, false) => {
            let total: usize = brackets.iter().map(|(k, v)| k.len() + v.len()).sum();
            if total > limits.max_bytes {
                return Err(QueryError::TooBig {
                    max: limits.max_bytes,
                });
            }
            bracket_value(&brackets).map(Some)
        }
    }
}

/// The bracket form as `qs` (Express) builds it, then as LoopBack reads it: each key is a
/// path (`where][a][gt]`, the part after `filter[`), each value a string. A segment that is
/// a small integer (or empty, `[]`) indexes an array.
fn bracket_value(pairs: &[(&str, &str)]) -> Result<Value, QueryError> {
    let mut root = Value::Object(Map::new());
    for (path, value) in pairs {
        let segments = bracket_segments(path)?;
        let value = match segments.as_slice() {
            // `fields` flags: the booleans they mean.
            [first, _] if first == "fields" && matches!(*value, "true" | "1") => Value::Bool(true),
            [first, _] if first == "fields" && matches!(*value, "false" | "0") => {
                Value::Bool(false)
            }
            _ => Value::String((*value).to_owned()),
        };
        insert(&mut root, &segments, value, path)?;
    }
    Ok(root)
}

/// `where][a][gt]` -> `["where", "a", "gt"]`.
fn bracket_segments(path: &str) -> Result<Vec<String>, QueryError> {
    let bad = || QueryError::Bracket {
        reason: format!("malformed parameter filter[{path}"),
    };
    let (first, mut rest) = path.split_once(']').ok_or_else(bad)?;
    let mut segments = vec![first.to_owned()];
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or_else(bad)?;
        let (segment, after) = inner.split_once(']').ok_or_else(bad)?;
        segments.push(segment.to_owned());
        rest = after;
    }
    if segments[0].is_empty() {
        return Err(bad());
    }
    Ok(segments)
}

fn insert(
    node: &mut Value,
    segments: &[String],
    value: Value,
    path: &str,
) -> Result<(), QueryError> {
    let clash = || QueryError::Bracket {
        reason: format!("filter[{path} conflicts with another parameter"),
    };
    let Some((segment, rest)) = segments.split_first() else {
        return Err(clash());
    };
    let index = if segment.is_empty() {
        Some(usize::MAX) // `[]`: the next element
    } else if segment.bytes().all(|b| b.is_ascii_digit()) {
        segment
            .parse::<usize>()
            .ok()
            .filter(|i| *i <= MAX_BRACKET_INDEX)
    } else {
        None
    };
    if index.is_some() && matches!(node, Value::Object(map) if map.is_empty()) {
        *node = Value::Array(Vec::new());
    }
    let slot = match (node, index) {
        (Value::Array(items), Some(i)) => {
            // qs compacts sparse indices: `a[3]` alone is the first element.
            let i = i.min(items.len());
            if i == items.len() {
                items.push(if rest.is_empty() {
                    Value::Null
                } else {
                    Value::Object(Map::new())
                });
            }
            &mut items[i]
        }
        (Value::Object(map), _) => map.entry(segment.clone()).or_insert_with(|| {
            if rest.is_empty() {
                Value::Null
            } else {
                Value::Object(Map::new())
            }
        }),
        _ => return Err(clash()),
    };
    if rest.is_empty() {
        if !slot.is_null() {
            return Err(clash());
        }
        *slot = value;
        Ok(())
    } else {
        if !matches!(slot, Value::Object(_) | Value::Array(_)) {
            return Err(clash());
        }
        insert(slot, rest, value, path)
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn records(values: Value) -> Vec<Object> {
        values
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_object().unwrap().clone())
            .collect()
    }

    fn run(filter: Value, data: Value) -> Value {
        let query = Query::parse(&filter, &FilterLimits::default()).unwrap();
        Value::Array(
            query
                .apply(records(data))
                .into_iter()
                .map(Value::Object)
                .collect(),
        )
    }

    fn ids(found: &Value) -> Vec<Value> {
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].clone())
            .collect()
    }

    #[test]
    fn where_then_order_then_skip_limit_then_fields() {
        let data = json!([
            {"n": 3, "s": "b", "id": 1},
            {"n": 1, "s": "a", "id": 2},
            {"n": 2, "s": "c", "id": 3},
            {"n": 5, "s": "a", "id": 4},
        ]);
        let found = run(
            json!({"where": {"n": {"gt": 1}}, "order": "n DESC", "skip": 1, "limit": 2, "fields": ["id"]}),
            data.clone(),
        );
        assert_eq!(found, json!([{"id": 1}, {"id": 3}]));
        // Several keys: the second breaks ties of the first.
        assert_eq!(
            ids(&run(json!({"order": ["s ASC", "n desc"]}), data.clone())),
            [4, 2, 1, 3]
        );
        assert_eq!(
            ids(&run(json!({"order": "s, n DESC"}), data.clone())),
            [4, 2, 1, 3]
        );
        // limit 0 is no limit, as in LoopBack.
        assert_eq!(ids(&run(json!({"limit": 0}), data.clone())).len(), 4);
        assert_eq!(ids(&run(json!({"offset": 3}), data.clone())), [4]);
        // skip wins over offset; 2.0 and 1e1 are integers.
        assert_eq!(
            ids(&run(
                json!({"skip": 1, "offset": 3, "limit": 1}),
                data.clone()
            )),
            [2]
        );
        assert_eq!(ids(&run(json!({"limit": 2.0}), data.clone())), [1, 2]);
        assert_eq!(ids(&run(json!({"limit": 1e1}), data)).len(), 4);
    }

    #[test]
    fn missing_values_sort_first_ascending_and_last_descending() {
        let data = json!([{"id": 1, "n": 2}, {"id": 2}, {"id": 3, "n": 1}, {"id": 4, "n": null}]);
        // null compares as 0, below 1; missing is below everything.
        assert_eq!(ids(&run(json!({"order": "n"}), data.clone())), [2, 4, 3, 1]);
        assert_eq!(ids(&run(json!({"order": "n DESC"}), data)), [1, 3, 4, 2]);
        // A path through a null is null, not missing.
        let nested = json!([{"id": 1, "a": {"b": 1}}, {"id": 2, "a": null}, {"id": 3}]);
        assert_eq!(ids(&run(json!({"order": "a.b"}), nested)), [3, 2, 1]);
    }

    #[test]
    fn values_compare_as_javascript_does() {
        let less = |a: Value, b: Value| js_less(&a, &b);
        assert!(less(json!(2), json!(10)));
        assert!(less(json!("10"), json!("2")), "strings by code unit");
        assert!(
            less(json!(2), json!("10")),
            "number against numeric string: numerically"
        );
        assert!(
            !less(json!("x"), json!(1)) && !less(json!(1), json!("x")),
            "NaN: incomparable"
        );
        assert!(less(json!(null), json!(1)) && less(json!(false), json!(true)));
        assert!(less(
            json!("2020-01-01T00:00:00Z"),
            json!("2021-01-01T00:00:00Z")
        ));
        assert!(
            !less(json!("\u{FFFF}"), json!("\u{1F600}")),
            "UTF-16: surrogates sort below U+FFFF"
        );
    }

    #[test]
    fn bracket_form_reads_as_loopback_does() {
        let pairs = [
            ("filter[where][status]", "open"),
            ("filter[where][n][gt]", "2"),
            ("filter[order][0]", "n DESC"),
            ("filter[order][1]", "id"),
            ("filter[limit]", "2"),
            ("filter[fields][n]", "true"),
            ("filter[fields][id]", "true"),
            ("cache", "buster"),
        ];
        let query = Query::from_query(pairs, &FilterLimits::default()).unwrap();
        let data = json!([
            {"status": "open", "n": 3, "id": 1},
            {"status": "open", "n": 9, "id": 2},
            {"status": "done", "n": 7, "id": 3},
            {"status": "open", "n": 1, "id": 4},
            {"status": "open", "n": 5, "id": 5},
        ]);
        let found: Vec<Value> = query
            .apply(records(data))
            .into_iter()
            .map(Value::Object)
            .collect();
        assert_eq!(
            Value::Array(found),
            json!([{"n": 9, "id": 2}, {"n": 5, "id": 5}])
        );
        // JSON form, and nothing at all.
        let json_form = Query::from_query([("filter", r#"{"limit":1}"#)], &FilterLimits::default());
        assert!(json_form.is_ok());
        assert!(
            Query::from_query([("x", "1")], &FilterLimits::default())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn bad_filters_are_refused_with_their_place() {
        let err = |filter: Value| {
            Query::parse(&filter, &FilterLimits::default())
                .unwrap_err()
                .to_string()
        };
        assert!(err(json!({"order": "n UP"})).contains("invalid direction"));
        assert!(err(json!({"order": 3})).contains("filter.order"));
        assert!(err(json!({"limit": -1})).contains("filter.limit"));
        assert!(err(json!({"limit": 1.5})).contains("filter.limit"));
        assert!(err(json!({"offset": -2})).contains("filter.offset"));
        assert!(err(json!({"skip": "x"})).contains("filter.skip"));
        assert!(err(json!({"include": "owner"})).contains("relations"));
        assert!(err(json!({"sort": "n"})).contains("filter.sort: unknown key"));
        assert!(err(json!({"where": {"n": {"gt": []}}})).starts_with("filter.where.n.gt"));
        assert!(err(json!([1])).contains("must be a JSON object"));
        let from = |pairs: &[(&str, &str)]| {
            Query::from_query(pairs.iter().copied(), &FilterLimits::default())
                .unwrap_err()
                .to_string()
        };
        assert!(from(&[("filter", "{")]).contains("not valid JSON"));
        assert!(from(&[("filter", "{}"), ("filter[limit]", "1")]).contains("not both"));
        assert!(from(&[("filter[where", "1")]).contains("malformed"));
        assert!(from(&[("filter[limit]", "1"), ("filter[limit][x]", "2")]).contains("conflicts"));
        // Past the largest index a segment is a key: an object, which order is not.
        assert!(from(&[("filter[order][99]", "n")]).contains("filter.order"));
    }
}

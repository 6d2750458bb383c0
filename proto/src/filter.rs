//! [`Filter`]: a LoopBack change-stream filter (`options={"where":{...},"fields":[...]}`),
//! parsed once per subscription and applied to each change's `data`. Pure: no I/O, and
//! nothing here knows about changes, removes or SSE; the gateway decides what to apply to
//! which change.
//!
//! LoopBack 3 filtered a change stream with `loopback-filters`, a copy of the
//! `applyFilter` in loopback-datasource-juggler's memory connector. We follow the memory
//! connector (`lib/connectors/memory.js`, `lib/utils.js`), say where we differ, and refuse
//! what it would have got wrong silently:
//!
//! - **Keys.** `where` and `fields` apply; `null` or `{}` for either, or for the whole of
//!   `options`, means no filter. `limit`, `skip`, `offset`, `order` and `include` (which
//!   LoopBack also applied, to one change at a time) and unknown keys are errors.
//! - **Equality** (`{"n": 5}`, `eq`, `neq`, `inq`, `nin`) is LoopBack's loose equality:
//!   `null` matches null and a missing property; a number matches the same number or a
//!   string spelling it (`"5"`); a boolean matches `"true"`/`"false"` too. An empty string
//!   is not `0` (JavaScript's `"" == 0` is true; the memory connector takes `""` for 0). Arrays and
//!   objects are not values: `{"n": [1]}` is an error, and `{"address": {"city": ...}}`
//!   is an unknown operator `city` (write `"address.city"`).
//! - **Negation.** `neq`, `nin`, `nlike` and `nilike` are exactly "not `eq`/`inq`/`like`/
//!   `ilike`", so they match a missing property: `{"role": {"neq": "lead"}}` includes
//!   records without a role, `{"role": {"neq": null}}` is "has a role".
//! - **Ordering** (`gt`, `gte`, `lt`, `lte`, `between`, operands a number or a string):
//!   numbers numerically, strings by code point, a numeric string against a number
//!   numerically (`""` is not numeric: it fails against a number). Dates are strings in JSON and compare as strings, which orders ISO 8601
//!   timestamps of one format and zone correctly. Anything else (booleans, null, missing,
//!   `"abc"` against a number) fails the test. Several operators on one property all apply
//!   (`{"gt": 1, "lt": 5}`); the connector quietly used only the first.
//! - **Patterns.** `like`/`nlike` are the connector's: a regular expression in which `%`
//!   is `.*` and `_` is `.`, matched anywhere in the value (`"St"` matches "Ringo Starr";
//!   anchor with `^J%`); `\%` and `\_` are literal. `ilike`/`nilike` or `"options": "i"`
//!   ignore case. `regexp` takes `"^T"` or a literal with flags `"/^t/i"` (flags `i`, `m`,
//!   `g`). Patterns are compiled once, by the linear-time `regex` crate, with JavaScript's
//!   ASCII `\d`, `\w` and `\b`; look-around and back-references are refused. Numbers and
//!   booleans are matched as their text; null, missing values and objects never match.
//! - **Paths and arrays.** `"address.city"` walks nested objects; a missing step is a
//!   missing value. An array value matches if any element does (`{"tags": "a"}` matches
//!   `["a", "b"]`), and a path through an array of objects tries each (`"items.name"`);
//!   `"tags.0"` is the first element.
//! - **`and`/`or`** take arrays of where objects, combined with their siblings by AND (the
//!   loopback-filters copy let the last `and`/`or` overwrite the rest); `{"and": []}`
//!   matches everything and `{"or": []}` nothing.
//! - **`fields`**: `["id", "name"]` (or one name as a string) keeps only those keys;
//!   `{"name": true}` (or `1`) keeps the `true` keys, and only when none is `true` do the `false`
//!   ones (`{"vin": false}`) drop keys from the whole record. `[]` and `{}` keep
//!   everything. Names are top-level keys, kept in the record's order; `id` is not added.
//!
//! Limits ([`FilterLimits`]) bound the JSON size, the nesting of `and`/`or` and of dotted
//! paths, the number of conditions and each pattern's length; parsing checks depth before
//! descending, so neither parsing nor matching recurses without bound.

mod compare;
mod condition;
mod pattern;

use std::collections::HashSet;
use std::io;

use serde_json::Value;

use crate::{FilterError, Object};
use condition::{Parser, Where};

/// Default for [`FilterLimits::max_bytes`]: the filter as compact JSON. Real filters are a
/// few hundred bytes; this also bounds `inq` lists and `fields`.
pub const DEFAULT_MAX_FILTER_BYTES: usize = 4096;
/// Default for [`FilterLimits::max_depth`].
pub const DEFAULT_MAX_FILTER_DEPTH: usize = 8;
/// Default for [`FilterLimits::max_conditions`].
pub const DEFAULT_MAX_FILTER_CONDITIONS: usize = 64;
/// Default for [`FilterLimits::max_pattern_bytes`].
pub const DEFAULT_MAX_PATTERN_BYTES: usize = 256;

/// What a client's filter may cost. Every subscriber's filter is evaluated for every
/// change on its topic, so these bound the per-change work and memory per subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterLimits {
    /// Largest filter accepted, in bytes of compact JSON.
    pub max_bytes: usize,
    /// How deep `and`/`or` may nest (the top-level `where` is level 1), and how many
    /// segments a dotted property path may have.
    pub max_depth: usize,
    /// Most property conditions in `where`: one per plain value or operator.
    pub max_conditions: usize,
    /// Longest `like`/`ilike`/`regexp` pattern, in bytes.
    pub max_pattern_bytes: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_FILTER_BYTES,
            max_depth: DEFAULT_MAX_FILTER_DEPTH,
            max_conditions: DEFAULT_MAX_FILTER_CONDITIONS,
            max_pattern_bytes: DEFAULT_MAX_PATTERN_BYTES,
        }
    }
}

/// A parsed change-stream filter: which records match (`where`) and which of their keys
/// are sent (`fields`). The default filter matches everything and keeps every key.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `None` when there is no `where` or it is empty.
    where_: Option<Where>,
    fields: Fields,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Fields {
    #[default]
    All,
    Only(HashSet<String>),
    Except(HashSet<String>),
}

/// LoopBack filter keys that cannot mean anything for a stream of single changes.
const NOT_FOR_STREAMS: [&str; 5] = ["limit", "skip", "offset", "order", "include"];

impl Filter {
    /// Parses `options` as LoopBack takes it: an object with optional `where` and
    /// `fields`, or `null` for no filter.
    ///
    /// # Errors
    /// A [`FilterError`] naming the first problem and where it is: too big, too deep or
    /// too many conditions for `limits`, a key other than `where` and `fields`, an unknown
    /// operator, an operand of the wrong type, an invalid pattern.
    pub fn parse(options: &Value, limits: &FilterLimits) -> Result<Self, FilterError> {
        check_size(options, limits.max_bytes)?;
        let map = match options {
            Value::Null => return Ok(Self::default()),
            Value::Object(map) => map,
            other => return Err(type_error("options", "an object", other)),
        };
        let mut filter = Self::default();
        for (key, value) in map {
            match key.as_str() {
                "where" if value.is_null() => {}
                "where" => {
                    let where_ = Parser::new(limits).parse(value, "where", 1)?;
                    filter.where_ = (!where_.is_empty()).then_some(where_);
                }
                "fields" => filter.fields = parse_fields(value)?,
                key if NOT_FOR_STREAMS.contains(&key) => {
                    return Err(FilterError::NotForStreams {
                        key: key.to_owned(),
                    });
                }
                key => {
                    return Err(FilterError::UnknownKey {
                        key: key.to_owned(),
                    });
                }
            }
        }
        Ok(filter)
    }

    /// Parses `options` from JSON text (a query parameter), checking its size first.
    ///
    /// # Errors
    /// [`FilterError::TooBig`], [`FilterError::Json`] for text that is not JSON, and the
    /// errors of [`Filter::parse`].
    pub fn parse_str(text: &str, limits: &FilterLimits) -> Result<Self, FilterError> {
        if text.len() > limits.max_bytes {
            return Err(FilterError::TooBig {
                max: limits.max_bytes,
            });
        }
        let value: Value = serde_json::from_str(text).map_err(|e| FilterError::Json {
            reason: e.to_string(),
        })?;
        Self::parse(&value, limits)
    }

    /// Whether this filter lets every record through whole.
    pub fn is_empty(&self) -> bool {
        self.where_.is_none() && self.fields == Fields::All
    }

    /// Whether `record` (a change's `data`, or for a `remove` the record's last state)
    /// matches `where`. Always true without one.
    pub fn matches(&self, record: &Object) -> bool {
        self.where_.as_ref().is_none_or(|w| w.matches(record))
    }

    /// This filter with `scope`'s `where` ANDed in (a token's row scope): a record passes
    /// when it matches both, so `scope` can only narrow what this filter lets through.
    /// `fields` stays this filter's.
    #[must_use]
    pub fn restricted_to(mut self, scope: &Filter) -> Self {
        match (&mut self.where_, &scope.where_) {
            (_, None) => {}
            (None, Some(theirs)) => self.where_ = Some(theirs.clone()),
            (Some(ours), Some(theirs)) => ours.and(theirs),
        }
        self
    }

    /// A filter of `where` alone (a token's row scope).
    ///
    /// # Errors
    /// The errors of [`Filter::parse`] for `{"where": where_}`.
    pub fn from_where(where_: &Value, limits: &FilterLimits) -> Result<Self, FilterError> {
        let mut options = serde_json::Map::new();
        options.insert("where".into(), where_.clone());
        Self::parse(&Value::Object(options), limits)
    }

    /// Whether `fields` drops any key (else [`Filter::project`] is a copy).
    pub fn projects(&self) -> bool {
        self.fields != Fields::All
    }

    /// `record` with only the keys `fields` selects, in the record's order.
    pub fn project(&self, record: &Object) -> Object {
        let keep = |key: &String| match &self.fields {
            Fields::All => true,
            Fields::Only(names) => names.contains(key),
            Fields::Except(names) => !names.contains(key),
        };
        record
            .iter()
            .filter(|(key, _)| keep(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }
}

/// `fields` as juggler's `fieldsToArray` reads it (see the module docs).
fn parse_fields(value: &Value) -> Result<Fields, FilterError> {
    let mut keep = HashSet::new();
    match value {
        Value::Null => {}
        Value::String(name) => {
            keep.insert(name.clone());
        }
        Value::Array(names) => {
            for (i, name) in names.iter().enumerate() {
                let Value::String(name) = name else {
                    return Err(type_error(
                        &format!("fields[{i}]"),
                        "a property name (a string)",
                        name,
                    ));
                };
                keep.insert(name.clone());
            }
        }
        Value::Object(flags) => {
            let mut drop = HashSet::new();
            for (name, flag) in flags {
                // JavaScript truthiness for numbers too (`{"name": 1}`), as LoopBack reads it.
                let flag = match flag {
                    Value::Number(n) => &Value::Bool(n.as_f64().is_some_and(|f| f != 0.0)),
                    flag => flag,
                };
                match flag {
                    Value::Bool(true) => keep.insert(name.clone()),
                    Value::Bool(false) => drop.insert(name.clone()),
                    other => {
                        return Err(type_error(
                            &format!("fields.{name}"),
                            "true or false",
                            other,
                        ));
                    }
                };
            }
            if keep.is_empty() && !drop.is_empty() {
                return Ok(Fields::Except(drop));
            }
        }
        other => {
            return Err(type_error(
                "fields",
                "an array of property names or an object of true/false",
                other,
            ));
        }
    }
    Ok(if keep.is_empty() {
        Fields::All
    } else {
        Fields::Only(keep)
    })
}

/// Refuses `options` whose compact JSON exceeds `max` bytes, serializing no more than
/// `max + 1` bytes of it whatever its size.
fn check_size(options: &Value, max: usize) -> Result<(), FilterError> {
    struct Budget(usize);
    impl io::Write for Budget {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 = self
                .0
                .checked_sub(buf.len())
                .ok_or_else(|| io::Error::other("over budget"))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    // Serializing a `Value` can only fail in the writer, that is, over budget.
    serde_json::to_writer(Budget(max), options).map_err(|_| FilterError::TooBig { max })
}

/// How a JSON value is named in an error message.
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

fn type_error(at: &str, expected: &'static str, found: &Value) -> FilterError {
    FilterError::Type {
        at: at.to_owned(),
        expected,
        found: kind(found),
    }
}

#[cfg(test)]
mod tests;

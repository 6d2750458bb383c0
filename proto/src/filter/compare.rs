//! How a record's value compares with a filter operand: LoopBack's loose JavaScript
//! comparisons, made explicit. Operands reaching here were checked at parse time (scalars
//! for equality, numbers or strings for ordering); record values can be anything, or
//! missing (`None`).

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Number, Value};

/// Plain equality, `eq`, `neq`, `inq` and `nin`.
///
/// The memory connector compares `String(example) == String(value)` and `inq` uses `==`;
/// for JSON values both come down to:
/// - `null` equals `null` and a missing property (JavaScript's `null == undefined`), and
///   nothing else equals either;
/// - a number equals a number of the same value, or a string spelling one (`"5"`, `"5.0"`);
/// - a boolean equals a boolean, or the string `"true"`/`"false"`;
/// - strings equal strings; anything else is unequal.
pub(super) fn loosely_equal(example: &Value, value: Option<&Value>) -> bool {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return example.is_null();
    };
    match (example, value) {
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Bool(b), Value::String(s)) | (Value::String(s), Value::Bool(b)) => {
            s == bool_text(*b)
        }
        (Value::Number(a), Value::Number(b)) => number_cmp(a, b) == Some(Ordering::Equal),
        (Value::Number(n), Value::String(s)) | (Value::String(s), Value::Number(n)) => {
            numeric(s).is_some_and(|x| n.as_f64() == Some(x))
        }
        (Value::String(a), Value::String(b)) => a == b,
        _ => false,
    }
}

/// `gt`, `gte`, `lt`, `lte` and `between`: how the record's value orders against the
/// operand (a number or a string), or `None` when they do not compare, which fails every
/// ordering test.
///
/// Numbers compare numerically and strings by code point, so ISO 8601 timestamps in one
/// format and time zone (`2014-04-01T18:30:00.000Z`) order as dates. As in JavaScript a
/// string that spells a number compares numerically with a number. Booleans, null, missing
/// values and objects never compare (JavaScript would turn `true` into 1).
pub(super) fn order(value: Option<&Value>, operand: &Value) -> Option<Ordering> {
    match (value?, operand) {
        (Value::Number(a), Value::Number(b)) => number_cmp(a, b),
        (Value::String(a), Value::String(b)) => Some(a.as_str().cmp(b)),
        (Value::Number(a), Value::String(b)) => a.as_f64()?.partial_cmp(&numeric(b)?),
        (Value::String(a), Value::Number(b)) => numeric(a)?.partial_cmp(&b.as_f64()?),
        _ => None,
    }
}

/// The text a pattern (`like`, `regexp`) is matched against: strings as they are, numbers
/// and booleans as JavaScript's `String()` spells them; null, missing values and objects
/// have none, so they never match (and always match the negated operators).
pub(super) fn text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Bool(b) => Some(Cow::Borrowed(bool_text(*b))),
        Value::Number(n) => Some(Cow::Owned(number_text(n))),
        _ => None,
    }
}

fn bool_text(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// A number's text as JavaScript's `String(n)` gives it (`5`, not `5.0`; `0.000001`, not
/// `1e-6`); integers keep their exact digits, as they compare exactly.
fn number_text(n: &Number) -> String {
    match n.as_f64() {
        Some(x) if n.is_f64() => crate::json::js_number(x),
        _ => n.to_string(),
    }
}

/// Integers compare exactly (JSON ids can exceed 2^53); anything else as doubles, as in
/// JavaScript. serde_json numbers are never NaN, so this is `None` only in theory.
fn number_cmp(a: &Number, b: &Number) -> Option<Ordering> {
    match (integer(a), integer(b)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

fn integer(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// A string read as a number the way JavaScript's `==` and `>` do, for finite decimal
/// numbers (surrounding whitespace allowed). An empty string is not a number here,
/// although JavaScript would read it as 0; Rust's `"inf"` and `"NaN"` are not either.
fn numeric(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    s.parse::<f64>().ok().filter(|x| x.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn loose_equality() {
        let eq = |a: Value, b: Value| loosely_equal(&a, Some(&b));
        assert!(eq(json!(5), json!(5)));
        assert!(eq(json!(5), json!(5.0)));
        assert!(eq(json!(5), json!("5")));
        assert!(eq(json!("5.0"), json!(5)));
        assert!(eq(json!(true), json!("true")));
        assert!(eq(json!("false"), json!(false)));
        assert!(eq(json!(null), json!(null)));
        assert!(loosely_equal(&json!(null), None));

        assert!(!eq(json!(5), json!("five")));
        assert!(!eq(json!(5), json!("")));
        assert!(!eq(json!(1), json!(true)));
        assert!(!eq(json!("a"), json!("A")));
        assert!(!eq(json!(null), json!(0)));
        assert!(!eq(json!(null), json!("")));
        assert!(!eq(json!(0), json!(null)));
        assert!(!loosely_equal(&json!(0), None));
        assert!(!eq(json!("[object Object]"), json!({})));
        // Exact above 2^53, where doubles would call these equal.
        assert!(!eq(
            json!(9_007_199_254_740_993_i64),
            json!(9_007_199_254_740_992_i64)
        ));
        assert!(eq(json!(u64::MAX), json!(u64::MAX)));
    }

    #[test]
    fn ordering() {
        let ord = |a: Value, b: Value| order(Some(&a), &b);
        assert_eq!(ord(json!(3), json!(2.5)), Some(Ordering::Greater));
        assert_eq!(ord(json!(-1), json!(u64::MAX)), Some(Ordering::Less));
        assert_eq!(
            ord(json!("San Jose"), json!("San")),
            Some(Ordering::Greater)
        );
        assert_eq!(
            ord(json!("1980-12-08T00:00:00.000Z"), json!("1990-01-01")),
            Some(Ordering::Less)
        );
        assert_eq!(ord(json!("10"), json!(9)), Some(Ordering::Greater));
        assert_eq!(ord(json!(10), json!(" 10 ")), Some(Ordering::Equal));
        assert_eq!(ord(json!("ten"), json!(9)), None);
        assert_eq!(ord(json!(true), json!(0)), None);
        assert_eq!(ord(json!(null), json!(0)), None);
        assert_eq!(ord(json!([1]), json!(0)), None);
        assert_eq!(order(None, &json!(0)), None);
    }

    #[test]
    fn pattern_text() {
        let t = |v: Value| text(&v).map(Cow::into_owned);
        assert_eq!(t(json!("a")).as_deref(), Some("a"));
        assert_eq!(t(json!(95131)).as_deref(), Some("95131"));
        assert_eq!(t(json!(5.0)).as_deref(), Some("5"));
        assert_eq!(t(json!(0.5)).as_deref(), Some("0.5"));
        assert_eq!(t(json!(false)).as_deref(), Some("false"));
        assert_eq!(t(json!(null)), None);
        assert_eq!(t(json!({})), None);
    }
}

//! The `where` clause: parsed once into a [`Where`] tree (operands checked, patterns
//! compiled, limits enforced), then evaluated against each record without allocating
//! (except to spell a number for a pattern).

use regex::Regex;
use serde_json::{Map, Value};

use super::compare::{loosely_equal, order, text};
use super::pattern::{self, Flags};
use super::{FilterLimits, type_error};
use crate::{FilterError, Object};

/// A `where` object: every clause must hold (an empty one matches everything).
#[derive(Clone, Debug)]
pub(super) struct Where {
    clauses: Vec<Clause>,
}

#[derive(Clone, Debug)]
enum Clause {
    And(Vec<Where>),
    Or(Vec<Where>),
    Property {
        /// `address.city` split at the dots: `address`, then `[city]`.
        first: String,
        rest: Vec<String>,
        test: Test,
        /// `neq`, `nin`, `nlike` and `nilike` are exactly the negation of `eq`, `inq`,
        /// `like` and `ilike` on the same value.
        negated: bool,
    },
}

#[derive(Clone, Debug)]
enum Test {
    Equal(Value),
    In(Vec<Value>),
    Order(Bound, Value),
    Between(Value, Value),
    Pattern(Regex),
}

#[derive(Clone, Copy, Debug)]
enum Bound {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Where {
    pub(super) fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    pub(super) fn matches(&self, record: &Object) -> bool {
        self.clauses.iter().all(|clause| clause.matches(record))
    }

    /// Adds `other`'s clauses: a record matches when it matches both.
    pub(super) fn and(&mut self, other: &Where) {
        self.clauses.extend(other.clauses.iter().cloned());
    }
}

impl Clause {
    fn matches(&self, record: &Object) -> bool {
        match self {
            Self::And(all) => all.iter().all(|w| w.matches(record)),
            Self::Or(any) => any.iter().any(|w| w.matches(record)),
            Self::Property {
                first,
                rest,
                test,
                negated,
            } => resolve(record.get(first), rest, test) != *negated,
        }
    }
}

/// Walks the rest of a dotted path from `value`, as the memory connector's `getValue`
/// does, and applies `test` at the end. A missing or null step makes the value missing.
/// Through an array a numeric segment picks an element (`tags.0`) and any other segment
/// tries every element that is an object (`items.name` holds if one item's name passes),
/// as the connector does for embedded relations. Recursion is bounded by the path length,
/// which the parser limits.
fn resolve(value: Option<&Value>, path: &[String], test: &Test) -> bool {
    let Some((segment, rest)) = path.split_first() else {
        return test.holds(value);
    };
    match value {
        Some(Value::Object(map)) => resolve(map.get(segment), rest, test),
        Some(Value::Array(items)) => match segment.parse::<usize>() {
            Ok(index) => resolve(items.get(index), rest, test),
            Err(_) => items
                .iter()
                .filter(|item| item.is_object())
                .any(|item| resolve(Some(item), path, test)),
        },
        _ => test.holds(None),
    }
}

impl Test {
    /// An array value holds if any element does (the connector's array support); the
    /// elements themselves are compared as values, not searched again.
    fn holds(&self, value: Option<&Value>) -> bool {
        match value {
            Some(Value::Array(items)) => items.iter().any(|item| self.holds_for(Some(item))),
            other => self.holds_for(other),
        }
    }

    fn holds_for(&self, value: Option<&Value>) -> bool {
        match self {
            Self::Equal(example) => loosely_equal(example, value),
            Self::In(examples) => examples.iter().any(|e| loosely_equal(e, value)),
            Self::Order(bound, operand) => order(value, operand).is_some_and(|o| match bound {
                Bound::Gt => o.is_gt(),
                Bound::Gte => o.is_ge(),
                Bound::Lt => o.is_lt(),
                Bound::Lte => o.is_le(),
            }),
            Self::Between(low, high) => {
                order(value, low).is_some_and(|o| o.is_ge())
                    && order(value, high).is_some_and(|o| o.is_le())
            }
            Self::Pattern(regex) => value
                .and_then(text)
                .is_some_and(|text| regex.is_match(&text)),
        }
    }
}

/// Builds a [`Where`] while counting conditions against the limits. Depth is checked
/// before each descent, so parsing recurses at most `max_depth` levels.
pub(super) struct Parser<'a> {
    limits: &'a FilterLimits,
    conditions: usize,
}

const SCALAR: &str = "a string, number, boolean or null";
const ORDERED: &str = "a number or string";

impl<'a> Parser<'a> {
    pub(super) fn new(limits: &'a FilterLimits) -> Self {
        Self {
            limits,
            conditions: 0,
        }
    }

    /// Parses a where object found at `at` (`where`, `where.or[1]`), `depth` levels down
    /// (the top-level `where` is level 1).
    pub(super) fn parse(
        &mut self,
        value: &Value,
        at: &str,
        depth: usize,
    ) -> Result<Where, FilterError> {
        if depth > self.limits.max_depth {
            return Err(FilterError::TooDeep {
                at: at.to_owned(),
                max: self.limits.max_depth,
            });
        }
        let Value::Object(map) = value else {
            return Err(type_error(at, "an object", value));
        };
        let mut clauses = Vec::with_capacity(map.len());
        for (key, value) in map {
            clauses.push(match key.as_str() {
                "and" => Clause::And(self.parse_list(value, &format!("{at}.and"), depth)?),
                "or" => Clause::Or(self.parse_list(value, &format!("{at}.or"), depth)?),
                _ => self.parse_property(key, value, at)?,
            });
        }
        Ok(Where { clauses })
    }

    fn parse_list(
        &mut self,
        value: &Value,
        at: &str,
        depth: usize,
    ) -> Result<Vec<Where>, FilterError> {
        let Value::Array(items) = value else {
            return Err(type_error(at, "an array of where objects", value));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| self.parse(item, &format!("{at}[{i}]"), depth + 1))
            .collect()
    }

    /// One property's condition: `"name": value` or `"name": {operator: operand, ...}`.
    /// Several operators in one object must all hold; the memory connector silently used
    /// only the first of `gt`, `gte`, `lt`, `lte` it found.
    fn parse_property(
        &mut self,
        name: &str,
        value: &Value,
        where_at: &str,
    ) -> Result<Clause, FilterError> {
        let at = format!("{where_at}.{name}");
        let mut path: Vec<String> = name.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(FilterError::PropertyName {
                at: where_at.to_owned(),
                name: name.to_owned(),
            });
        }
        if path.len() > self.limits.max_depth {
            return Err(FilterError::TooDeep {
                at,
                max: self.limits.max_depth,
            });
        }
        // `split` yields at least one (here non-empty) segment.
        let first = path.remove(0);
        let rest = path;
        let operators = match value {
            Value::Object(operators) => operators,
            Value::Array(_) => return Err(type_error(&at, "a value or an operator object", value)),
            scalar => {
                self.count()?;
                return Ok(Clause::Property {
                    first,
                    rest,
                    test: Test::Equal(scalar.clone()),
                    negated: false,
                });
            }
        };
        if operators.is_empty() {
            return Err(FilterError::EmptyCondition { at });
        }
        let options = pattern_options(operators, &at)?;
        let mut tests = Vec::with_capacity(operators.len());
        for (op, operand) in operators {
            if op == "options" {
                continue;
            }
            self.count()?;
            let op_at = format!("{at}.{op}");
            let (test, negated) = match op.as_str() {
                "eq" => (Test::Equal(scalar(operand, &op_at)?), false),
                "neq" => (Test::Equal(scalar(operand, &op_at)?), true),
                "gt" => (Test::Order(Bound::Gt, ordered(operand, &op_at)?), false),
                "gte" => (Test::Order(Bound::Gte, ordered(operand, &op_at)?), false),
                "lt" => (Test::Order(Bound::Lt, ordered(operand, &op_at)?), false),
                "lte" => (Test::Order(Bound::Lte, ordered(operand, &op_at)?), false),
                "between" => (between(operand, &op_at)?, false),
                "inq" => (Test::In(scalars(operand, &op_at)?), false),
                "nin" => (Test::In(scalars(operand, &op_at)?), true),
                "like" => (self.like(operand, &op_at, options)?, false),
                "nlike" => (self.like(operand, &op_at, options)?, true),
                "ilike" => (self.like(operand, &op_at, options.insensitive())?, false),
                "nilike" => (self.like(operand, &op_at, options.insensitive())?, true),
                "regexp" => (self.regexp(operand, &op_at, options)?, false),
                _ => {
                    return Err(FilterError::UnknownOperator {
                        at,
                        op: op.clone(),
                        property: name.to_owned(),
                    });
                }
            };
            tests.push(Clause::Property {
                first: first.clone(),
                rest: rest.clone(),
                test,
                negated,
            });
        }
        Ok(match tests.len() {
            1 => tests.swap_remove(0),
            _ => Clause::And(vec![Where { clauses: tests }]),
        })
    }

    fn count(&mut self) -> Result<(), FilterError> {
        self.conditions += 1;
        if self.conditions > self.limits.max_conditions {
            return Err(FilterError::TooManyConditions {
                max: self.limits.max_conditions,
            });
        }
        Ok(())
    }

    fn like(&self, operand: &Value, at: &str, flags: Flags) -> Result<Test, FilterError> {
        let source = pattern::like_to_regex(self.pattern_text(operand, at)?);
        compile(&source, Flags::default(), flags, at)
    }

    fn regexp(&self, operand: &Value, at: &str, options: Flags) -> Result<Test, FilterError> {
        let (source, flags) = pattern::split_literal(self.pattern_text(operand, at)?);
        let flags = Flags::parse(flags).map_err(|flag| FilterError::Flag {
            at: at.to_owned(),
            flag,
        })?;
        compile(source, flags, options, at)
    }

    fn pattern_text<'v>(&self, operand: &'v Value, at: &str) -> Result<&'v str, FilterError> {
        let Value::String(text) = operand else {
            return Err(type_error(at, "a string", operand));
        };
        if text.len() > self.limits.max_pattern_bytes {
            return Err(FilterError::PatternTooLong {
                at: at.to_owned(),
                max: self.limits.max_pattern_bytes,
            });
        }
        Ok(text)
    }
}

/// The flags in a condition's `options` (`{"like": "someth.*", "options": "i"}`), which
/// apply to every pattern operator of that condition.
fn pattern_options(operators: &Map<String, Value>, at: &str) -> Result<Flags, FilterError> {
    let Some(options) = operators.get("options") else {
        return Ok(Flags::default());
    };
    let options_at = format!("{at}.options");
    let patterned = ["like", "nlike", "ilike", "nilike", "regexp"];
    if !operators.keys().any(|op| patterned.contains(&op.as_str())) {
        return Err(FilterError::OptionsWithoutPattern { at: options_at });
    }
    let Value::String(flags) = options else {
        return Err(type_error(
            &options_at,
            "a string of flags such as \"i\"",
            options,
        ));
    };
    Flags::parse(flags).map_err(|flag| FilterError::Flag {
        at: options_at,
        flag,
    })
}

fn compile(source: &str, flags: Flags, options: Flags, at: &str) -> Result<Test, FilterError> {
    pattern::compile(source, flags, options)
        .map(Test::Pattern)
        .map_err(|reason| FilterError::Pattern {
            at: at.to_owned(),
            reason,
        })
}

fn scalar(operand: &Value, at: &str) -> Result<Value, FilterError> {
    match operand {
        Value::Array(_) | Value::Object(_) => Err(type_error(at, SCALAR, operand)),
        scalar => Ok(scalar.clone()),
    }
}

fn scalars(operand: &Value, at: &str) -> Result<Vec<Value>, FilterError> {
    let Value::Array(items) = operand else {
        return Err(type_error(at, "an array of values", operand));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| scalar(item, &format!("{at}[{i}]")))
        .collect()
}

fn ordered(operand: &Value, at: &str) -> Result<Value, FilterError> {
    match operand {
        Value::Number(_) | Value::String(_) => Ok(operand.clone()),
        other => Err(type_error(at, ORDERED, other)),
    }
}

fn between(operand: &Value, at: &str) -> Result<Test, FilterError> {
    let Value::Array(bounds) = operand else {
        return Err(type_error(
            at,
            "an array of two numbers or strings",
            operand,
        ));
    };
    let [low, high] = bounds.as_slice() else {
        return Err(FilterError::BetweenLength {
            at: at.to_owned(),
            len: bounds.len(),
        });
    };
    Ok(Test::Between(
        ordered(low, &format!("{at}[0]"))?,
        ordered(high, &format!("{at}[1]"))?,
    ))
}

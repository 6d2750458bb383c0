//! `like`, `nlike`, `ilike`, `nilike` and `regexp` patterns, compiled once when the filter
//! is parsed.
//!
//! The memory connector turns every one of them into a JavaScript `RegExp`. Here they
//! become a [`Regex`] from the `regex` crate, which matches in time linear in the input
//! (no backtracking), so a client's pattern cannot stall the gateway. Its syntax is
//! JavaScript's for everyday patterns, and [`javascript_semantics`] rewrites the few
//! places where the same text means something else; look-around and back-references are
//! refused when the filter is parsed.

use regex::{Regex, RegexBuilder};

/// Compiled-program size allowed per pattern. A short pattern can still expand a lot
/// (`\w{100}` is a hundred Unicode classes); past this the filter is refused instead of
/// costing memory for every subscriber holding it. The crate's default is 10 MiB.
const COMPILED_SIZE_LIMIT: usize = 256 * 1024;

/// Lazy-DFA cache per pattern (and per thread that evaluates it); the default is 2 MiB.
const DFA_SIZE_LIMIT: usize = 256 * 1024;

/// JavaScript regular-expression flags that mean something for a yes/no match. juggler's
/// `toRegExp` accepts `i`, `g` and `m`; `g` changes nothing for a single test.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Flags {
    case_insensitive: bool,
    multi_line: bool,
}

impl Flags {
    /// # Errors
    /// The first character that is not `i`, `m` or `g`.
    pub(super) fn parse(flags: &str) -> Result<Self, char> {
        let mut out = Self::default();
        for flag in flags.chars() {
            match flag {
                'i' => out.case_insensitive = true,
                'm' => out.multi_line = true,
                'g' => {}
                other => return Err(other),
            }
        }
        Ok(out)
    }

    /// These flags plus `i`: what `ilike` and `nilike` always use.
    pub(super) fn insensitive(self) -> Self {
        Self {
            case_insensitive: true,
            ..self
        }
    }

    fn union(self, other: Self) -> Self {
        Self {
            case_insensitive: self.case_insensitive || other.case_insensitive,
            multi_line: self.multi_line || other.multi_line,
        }
    }
}

/// The regular expression a `like` pattern stands for, as the memory connector builds it:
/// `%` is `.*`, `_` is `.`, everything else is regular-expression syntax as written, and
/// the result is not anchored (`"St"` matches `"Ringo Starr"`; write `^J%` for "starts
/// with J"). A backslash makes the next `%` or `_` literal, the way SQL's escape does; the
/// connector's own translation garbles that case.
pub(super) fn like_to_regex(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => out.push_str(".*"),
            '_' => out.push('.'),
            // Neither `%` nor `_` is special in a regex, so pushed bare they are literal.
            '\\' => match chars.next() {
                Some(escaped @ ('%' | '_')) => out.push(escaped),
                Some(escaped) => {
                    out.push('\\');
                    out.push(escaped);
                }
                None => out.push_str(r"\\"),
            },
            other => out.push(other),
        }
    }
    out
}

/// Splits a `regexp` operand the way juggler's `toRegExp` reads it: `/^t/i` is a regular
/// expression literal with flags, anything else (`^T`) is the expression itself.
pub(super) fn split_literal(operand: &str) -> (&str, &str) {
    operand
        .strip_prefix('/')
        .and_then(|rest| rest.rfind('/').map(|end| (&rest[..end], &rest[end + 1..])))
        .unwrap_or((operand, ""))
}

/// Rewrites what means something else in JavaScript than in the regex crate, so a pattern
/// matches what it matched in LoopBack:
/// - `\d`, `\w`, `\b` and their negations are ASCII in JavaScript and Unicode here, which
///   is also a far bigger program (`\w{20}` alone passes the size limit); they become
///   `[0-9]`, `[0-9A-Za-z_]` and `(?-u:\b)`. Inside a class `\b` is a backspace.
/// - Inside a class, `[` and the `&&`, `~~`, `--` of class set operations are literal in
///   JavaScript; they are escaped. `[]` matches nothing and `[^]` any character.
///
/// Every other escape is kept as written.
fn javascript_semantics(source: &str) -> String {
    const DIGIT: &str = "0-9";
    const WORD: &str = "0-9A-Za-z_";
    const ANY: &str = r"\x00-\x{10FFFF}";
    let mut out = String::with_capacity(source.len() + 16);
    let mut in_class = false;
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(class @ ('d' | 'w' | 'D' | 'W')) => {
                    let set = if class.eq_ignore_ascii_case(&'d') {
                        DIGIT
                    } else {
                        WORD
                    };
                    let negated = class.is_ascii_uppercase();
                    // A negated set inside a class is a nested class, which the crate allows.
                    if in_class && !negated {
                        out.push_str(set);
                    } else {
                        out.push_str(if negated { "[^" } else { "[" });
                        out.push_str(set);
                        out.push(']');
                    }
                }
                Some('b') if in_class => out.push_str(r"\x08"),
                Some(boundary @ ('b' | 'B')) => {
                    out.push_str("(?-u:\\");
                    out.push(boundary);
                    out.push(')');
                }
                Some(escaped) => {
                    out.push('\\');
                    out.push(escaped);
                }
                None => out.push('\\'),
            },
            '[' if in_class => out.push_str(r"\["),
            '[' => {
                let negated = chars.next_if_eq(&'^').is_some();
                if chars.next_if_eq(&']').is_some() {
                    let set = if negated { "[" } else { "[^" };
                    out.push_str(set);
                    out.push_str(ANY);
                    out.push(']');
                } else {
                    in_class = true;
                    out.push_str(if negated { "[^" } else { "[" });
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            '-' if in_class && chars.peek() == Some(&'-') => out.push_str(r"\-"),
            other => out.push(other),
        }
    }
    out
}

/// Compiles `source` with `flags` (from a regex literal) and `options` (the operator's
/// `options` key) combined.
///
/// # Errors
/// A one-line reason: the parser's own message (`unclosed group`, `look-around ... is not
/// supported`) or that the pattern compiles too big.
pub(super) fn compile(source: &str, flags: Flags, options: Flags) -> Result<Regex, String> {
    let flags = flags.union(options);
    RegexBuilder::new(&javascript_semantics(source))
        .case_insensitive(flags.case_insensitive)
        .multi_line(flags.multi_line)
        .size_limit(COMPILED_SIZE_LIMIT)
        .dfa_size_limit(DFA_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => "the pattern compiles too big".to_owned(),
            // The parser's message is a multi-line diagram ending in `error: <reason>`.
            other => {
                let text = other.to_string();
                let reason = text
                    .lines()
                    .rev()
                    .find_map(|line| line.trim().strip_prefix("error: "))
                    .unwrap_or(text.trim());
                reason.to_owned()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(source: &str, flags: Flags, text: &str) -> bool {
        compile(source, flags, Flags::default())
            .unwrap()
            .is_match(text)
    }

    #[test]
    fn like_translation() {
        assert_eq!(like_to_regex("%St%"), ".*St.*");
        assert_eq!(like_to_regex("M%XY"), "M.*XY");
        assert_eq!(like_to_regex("R_ngo"), "R.ngo");
        // Regular-expression syntax passes through, as in the connector ("someth.*").
        assert_eq!(like_to_regex("someth.*"), "someth.*");
        assert_eq!(like_to_regex(r"100\%"), "100%");
        assert_eq!(like_to_regex(r"a\_b"), "a_b");
        assert_eq!(like_to_regex(r"\d+"), r"\d+");
        assert_eq!(like_to_regex("end\\"), r"end\\");
    }

    #[test]
    fn like_is_unanchored() {
        let like = |p: &str, t: &str| matches(&like_to_regex(p), Flags::default(), t);
        assert!(like("St", "Ringo Starr"));
        assert!(like("J%", "Ringo J"));
        assert!(!like("^J%", "Ringo J"));
        assert!(like(r"100\%", "it is 100% done"));
        assert!(!like(r"100\%", "it is 1000 done"));
        assert!(like("end\\", "the end\\"));
    }

    #[test]
    fn literals_and_flags() {
        assert_eq!(split_literal("^T"), ("^T", ""));
        assert_eq!(split_literal("/^t/i"), ("^t", "i"));
        assert_eq!(split_literal("/a/b/gm"), ("a/b", "gm"));
        assert_eq!(split_literal("/^T/"), ("^T", ""));
        assert_eq!(split_literal("/unclosed"), ("/unclosed", ""));
        assert_eq!(split_literal("a/b"), ("a/b", ""));

        assert!(Flags::parse("igm").is_ok());
        assert_eq!(Flags::parse("ix").unwrap_err(), 'x');
        assert!(matches("^t", Flags::parse("i").unwrap(), "Titan"));
        assert!(!matches("^t", Flags::default(), "Titan"));
        assert!(matches("^b$", Flags::parse("m").unwrap(), "a\nb"));
        assert!(!matches("^b$", Flags::default(), "a\nb"));
    }

    #[test]
    fn refusals_are_one_line() {
        let err = |source: &str| compile(source, Flags::default(), Flags::default()).unwrap_err();
        assert_eq!(err("(a"), "unclosed group");
        assert_eq!(
            err("a(?=b)"),
            "look-around, including look-ahead and look-behind, is not supported"
        );
        assert_eq!(err(r"(a)\1"), "backreferences are not supported");
        assert_eq!(err(r"\p{L}{100}"), "the pattern compiles too big");
    }

    #[test]
    fn javascript_classes_are_ascii() {
        assert_eq!(javascript_semantics(r"\d{3}-\w+"), "[0-9]{3}-[0-9A-Za-z_]+");
        assert_eq!(javascript_semantics(r"[\w.+-]"), "[0-9A-Za-z_.+-]");
        assert_eq!(javascript_semantics(r"[^\D]"), "[^[^0-9]]");
        assert_eq!(javascript_semantics(r"\bcat\B"), r"(?-u:\b)cat(?-u:\B)");
        assert_eq!(javascript_semantics(r"[\b]"), r"[\x08]");
        assert_eq!(javascript_semantics(r"\\d\."), r"\\d\.");
        assert_eq!(
            javascript_semantics("[[a&&b~~c--d]"),
            r"[\[a\&\&b\~\~c\--d]"
        );
        assert_eq!(
            javascript_semantics("a[]b[^]"),
            r"a[^\x00-\x{10FFFF}]b[\x00-\x{10FFFF}]"
        );

        let js = |source: &str, text: &str| matches(source, Flags::default(), text);
        assert!(js(r"^\w+$", "abc_1"));
        assert!(!js(r"^\w+$", "é"));
        assert!(!js(r"\d", "٣"));
        assert!(js(r"\bcat\b", "a cat!"));
        assert!(!js(r"\bcat\b", "concat"));
        assert!(js("[&]", "&"));
        assert!(js("[[]", "["));
        assert!(!js("a[]", "a"));
        assert!(js("a[^]b", "a\nb"));
        assert!(js(r"^[\w.+-]+@example\.com$", "j.l+1@example.com"));
        // Large but sensible patterns stay within the size limit.
        assert!(compile(r"\w{50}", Flags::default().insensitive(), Flags::default()).is_ok());
        assert!(
            compile(
                &like_to_regex(&"_".repeat(256)),
                Flags::default(),
                Flags::default()
            )
            .is_ok()
        );
    }
}

//! [`TopicPattern`]: a topic name with `*` wildcards, as tokens and `public_topics` use it.

use std::fmt;

use serde::Deserialize;

/// A topic pattern from a token or `public_topics`: a topic name where `*` stands for any
/// run of characters (`Orders*` matches `Orders` and `Orders-2024`; `*` matches all).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct TopicPattern(Box<str>);

impl TopicPattern {
    /// A pattern for configuration: topic characters and `*` only, so a typo cannot
    /// silently match nothing.
    ///
    /// # Errors
    /// A message naming the offending character.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty topic pattern".to_owned());
        }
        if text.len() > proto::MAX_TOPIC_LEN {
            return Err(format!(
                "topic pattern {text:?} is longer than {} bytes",
                proto::MAX_TOPIC_LEN
            ));
        }
        if let Some(ch) = text
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '*')))
        {
            return Err(format!("topic pattern {text:?} contains {ch:?}"));
        }
        Ok(Self(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `topic` matches: `*` matches any run of characters, everything else itself.
    /// Linear in practice, never worse than pattern length times topic length.
    pub fn matches(&self, topic: &str) -> bool {
        let (pattern, text) = (self.0.as_bytes(), topic.as_bytes());
        let (mut p, mut t) = (0, 0);
        // Where the last `*` was, and the text position it currently stands for.
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            if p < pattern.len() && pattern[p] == b'*' {
                star = Some((p, t));
                p += 1;
            } else if p < pattern.len() && pattern[p] == text[t] {
                p += 1;
                t += 1;
            } else if let Some((sp, st)) = star {
                // Let the last `*` absorb one more character and retry from there.
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        pattern[p..].iter().all(|&c| c == b'*')
    }
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicPattern({})", &*self.0)
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = |s: &str| TopicPattern::parse(s).unwrap();
        assert!(p("MyModels").matches("MyModels"));
        assert!(!p("MyModels").matches("MyModel"));
        assert!(!p("MyModels").matches("MyModelsX"));
        assert!(p("Orders*").matches("Orders"));
        assert!(p("Orders*").matches("Orders-2024"));
        assert!(!p("Orders*").matches("XOrders"));
        assert!(p("*").matches("anything"));
        assert!(p("*-v2").matches("Items-v2"));
        assert!(!p("*-v2").matches("Items-v3"));
        assert!(p("a*b*c").matches("aXXbYYc"));
        assert!(p("a*b*c").matches("abc"));
        assert!(!p("a*b*c").matches("aXXbYY"));
        assert!(p("**").matches(""));
        assert!(TopicPattern::parse("").is_err());
        assert!(TopicPattern::parse("a b").is_err());
        assert!(TopicPattern::parse("a:{b}").is_err());
        // Long adversarial input stays cheap (bounded by pattern x topic length).
        let long = "a".repeat(128);
        assert!(!p(&format!("{}b", "*a".repeat(60))).matches(&long));
    }
}

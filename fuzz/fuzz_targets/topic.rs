//! `Topic::new`: a collection name from a URL path, a query parameter or a publish body.
//!
//! Accepted names are exactly the documented alphabet and length, survive every way the
//! crate spells them (Display, FromStr, Redis keys and channel) and stay inside their
//! Redis hash tag. Refused names get the error that names the actual problem.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::{DecodeError, MAX_TOPIC_LEN, Topic};

fn allowed(i: usize, ch: char) -> bool {
    ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' || (ch == '.' && i > 0)
}

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    match Topic::new(name) {
        Ok(topic) => {
            assert_eq!(topic.as_str(), name);
            assert!(!name.is_empty() && name.len() <= MAX_TOPIC_LEN);
            assert!(
                name.char_indices().all(|(i, ch)| allowed(i, ch)),
                "{name:?}"
            );
            assert_eq!(topic.to_string(), name);
            assert_eq!(name.parse::<Topic>().as_ref(), Ok(&topic));
            // The name is one hash tag: nothing in it can open or close another.
            for key in [
                topic.records_key(),
                topic.seq_key(),
                topic.stream_key(),
                topic.redis_channel(),
            ] {
                assert_eq!(key.matches('{').count(), 1, "{key}");
                assert_eq!(key.matches('}').count(), 1, "{key}");
                assert!(key.starts_with(&format!("cs:{{{name}}}:")), "{key}");
            }
            assert_eq!(
                Topic::from_redis_channel(&topic.redis_channel()),
                Some(topic)
            );
        }
        Err(err) => {
            assert!(!err.to_string().is_empty());
            match err {
                DecodeError::EmptyTopic => assert!(name.is_empty()),
                DecodeError::TopicTooLong { len, max } => {
                    assert_eq!((len, max), (name.len(), MAX_TOPIC_LEN));
                }
                DecodeError::TopicCharacter { topic, ch } => {
                    assert!(name.len() <= MAX_TOPIC_LEN);
                    // The first offending character, and the name echoed back whole.
                    let first_bad = name.char_indices().find(|&(i, c)| !allowed(i, c));
                    assert_eq!(first_bad.map(|(_, c)| c), Some(ch), "{name:?}");
                    assert_eq!(topic, name);
                }
                other => panic!("unexpected error for a topic: {other:?}"),
            }
        }
    }
    // Any channel name the gateway receives maps back only to a topic that spells it.
    if let Some(topic) = Topic::from_redis_channel(name) {
        assert_eq!(topic.redis_channel(), name);
    }
});

//! Subscriptions: LoopBack filters (`options`) on change streams, replayed and live, and
//! many topics on one `/events` connection that resumes exactly on another pod.

use std::collections::HashMap;
use std::time::Duration;

use proto::{Change, EventId, Object, RecordId, Topic};
use publisher::{RedisOptions as StoreOptions, RedisStore, Store};
use serde_json::{Value, json};
use system_tests::{Gateway, Publisher, RedisServer, SseClient, http};

/// The topic of the filter scenarios.
const BEATLES: &str = "Beatles";
/// The target of the raw `remove` (no last state) that ends each filter scenario: a remove
/// the filter cannot judge passes every filter, so every client sees it last.
const SENTINEL: i64 = 999;

/// LoopBack's own test data (loopback-datasource-juggler `test/memory.test.js`, trimmed to
/// the properties the cases use). Pete has no `role`, so `neq` is seen to include a
/// missing property.
fn beatles() -> Vec<Value> {
    vec![
        json!({"name": "John Lennon", "role": "lead", "order": 2, "vip": true,
               "address": {"city": "San Jose", "state": "CA"}}),
        json!({"name": "Paul McCartney", "role": "lead", "order": 1, "vip": true,
               "address": {"city": "San Mateo", "state": "CA"}}),
        json!({"name": "George Harrison", "role": "guitar", "order": 5, "vip": false}),
        json!({"name": "Ringo Starr", "role": "drums", "order": 6, "vip": false}),
        json!({"name": "Pete Best", "order": 4}),
        json!({"name": "Stuart Sutcliffe", "role": "bass", "order": 3, "vip": true}),
    ]
}

/// One case per operator, with the names (and `-<id>` for removes) a client with that
/// filter must see, in order. John (id 1) is deleted after the creates: his remove
/// reaches exactly the clients whose `where` matched his last state.
fn where_cases() -> Vec<(&'static str, Value, Vec<&'static str>)> {
    let all = [
        "John Lennon",
        "Paul McCartney",
        "George Harrison",
        "Ringo Starr",
    ];
    vec![
        ("none", json!({}), {
            let mut v = all.to_vec();
            v.extend(["Pete Best", "Stuart Sutcliffe", "-1"]);
            v
        }),
        (
            "eq",
            json!({"where": {"role": "lead"}}),
            vec!["John Lennon", "Paul McCartney", "-1"],
        ),
        (
            "neq",
            json!({"where": {"role": {"neq": "lead"}}}),
            vec![
                "George Harrison",
                "Ringo Starr",
                "Pete Best",
                "Stuart Sutcliffe",
            ],
        ),
        (
            "gt",
            json!({"where": {"order": {"gt": 4}}}),
            vec!["George Harrison", "Ringo Starr"],
        ),
        (
            "gte",
            json!({"where": {"order": {"gte": 4}}}),
            vec!["George Harrison", "Ringo Starr", "Pete Best"],
        ),
        (
            "lt",
            json!({"where": {"order": {"lt": 2}}}),
            vec!["Paul McCartney"],
        ),
        (
            "lte",
            json!({"where": {"order": {"lte": 2}}}),
            vec!["John Lennon", "Paul McCartney", "-1"],
        ),
        (
            "between",
            json!({"where": {"order": {"between": [3, 5]}}}),
            vec!["George Harrison", "Pete Best", "Stuart Sutcliffe"],
        ),
        (
            "inq",
            json!({"where": {"name": {"inq": ["John Lennon", "Ringo Starr"]}}}),
            vec!["John Lennon", "Ringo Starr", "-1"],
        ),
        (
            "nin",
            json!({"where": {"name": {"nin": ["John Lennon", "Ringo Starr"]}}}),
            vec![
                "Paul McCartney",
                "George Harrison",
                "Pete Best",
                "Stuart Sutcliffe",
            ],
        ),
        (
            "like",
            json!({"where": {"name": {"like": "St"}}}),
            vec!["Ringo Starr", "Stuart Sutcliffe"],
        ),
        (
            "nlike",
            json!({"where": {"name": {"nlike": "St"}}}),
            vec![
                "John Lennon",
                "Paul McCartney",
                "George Harrison",
                "Pete Best",
                "-1",
            ],
        ),
        (
            "and",
            json!({"where": {"and": [{"vip": true}, {"order": {"gt": 2}}]}}),
            vec!["Stuart Sutcliffe"],
        ),
        (
            "or",
            json!({"where": {"or": [{"order": 1}, {"vip": false}]}}),
            vec!["Paul McCartney", "George Harrison", "Ringo Starr"],
        ),
        (
            "nested property",
            json!({"where": {"address.city": "San Jose"}}),
            vec!["John Lennon", "-1"],
        ),
    ]
}

/// `fields` cases: the keys of each create's `data` a client must see.
fn fields_cases() -> Vec<(&'static str, Value, Vec<&'static str>)> {
    vec![
        (
            "fields array",
            json!({"fields": ["name", "id"]}),
            vec!["name", "id"],
        ),
        (
            "fields object include",
            json!({"fields": {"order": true, "name": true}}),
            vec!["name", "order"],
        ),
        (
            "fields object exclude",
            json!({"fields": {"address": false, "vip": false, "role": false}}),
            vec!["name", "order", "id"],
        ),
    ]
}

fn encode(value: &Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn filtered_url(gateway: &Gateway, options: &Value, resume_from_start: bool) -> String {
    let resume = if resume_from_start {
        "&last_event_id=0-0"
    } else {
        ""
    };
    gateway.url(&format!(
        "/api/{BEATLES}/change-stream?_format=event-stream&options={}{resume}",
        encode(options)
    ))
}

/// What a client saw up to the sentinel: names of creates, `-<id>` of removes, and the
/// keys of every create's `data`.
async fn seen(client: &mut SseClient) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
    let mut names = Vec::new();
    let mut keys = Vec::new();
    loop {
        let frame = client.next_event().await?;
        let change: Value = serde_json::from_str(frame.data.as_deref().unwrap_or("null"))?;
        match change["type"].as_str() {
            Some("remove") if change["target"] == SENTINEL => return Ok((names, keys)),
            Some("remove") => names.push(format!("-{}", change["target"])),
            _ => {
                names.push(change["data"]["name"].as_str().unwrap_or("?").to_owned());
                let data = change["data"].as_object().cloned().unwrap_or_default();
                keys.push(data.keys().cloned().collect());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_operator_applies_on_live_events_and_on_replay() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    let live_pod = Gateway::start(&redis.url()).await?;
    let replay_pod = Gateway::start(&redis.url()).await?;
    let cases: Vec<_> = where_cases().into_iter().chain(fields_cases()).collect();

    // Live: every client connected before anything is published.
    let mut live = Vec::new();
    for (name, options, _) in &cases {
        let url = filtered_url(&live_pod, options, false);
        live.push((*name, SseClient::connect(&url, None).await?));
    }
    let per_topic = encode(&json!({"where": {"role": "lead"}}));
    let events_url = live_pod.url(&format!(
        "/events?topic={BEATLES}&options.{BEATLES}={per_topic}"
    ));
    let mut multi = SseClient::connect(&events_url, None).await?;

    let client = http();
    for record in beatles() {
        client
            .post(publisher.url(&format!("/api/{BEATLES}")))
            .json(&record)
            .send()
            .await?
            .error_for_status()?;
    }
    let deleted: Value = client
        .delete(publisher.url(&format!("/api/{BEATLES}/1")))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(deleted, json!({"count": 1}));
    client
        .post(publisher.url("/publish"))
        .json(&json!({
            "topic": BEATLES,
            "change": {"target": SENTINEL, "where": {"id": SENTINEL}, "type": "remove"}
        }))
        .send()
        .await?
        .error_for_status()?;

    for ((name, mut stream), (_, options, expected)) in live.into_iter().zip(&cases) {
        let (names, keys) = seen(&mut stream).await?;
        check(name, "live", &names, &keys, expected)?;
        // Replay on the other pod: the same filter over the stream from its start.
        let url = filtered_url(&replay_pod, options, true);
        let (names, keys) = seen(&mut SseClient::connect(&url, None).await?).await?;
        check(name, "replay", &names, &keys, expected)?;
    }

    // Per-topic filter on the multi-topic endpoint: same JSON, with the topic.
    let mut names = Vec::new();
    loop {
        let frame = multi.next_event().await?;
        assert_eq!(
            frame.event, None,
            "default event name, so onmessage sees it"
        );
        let change: Value = serde_json::from_str(frame.data.as_deref().unwrap_or("null"))?;
        assert_eq!(change["topic"], BEATLES);
        if change["target"] == SENTINEL {
            break;
        }
        names.push(match change["type"].as_str() {
            Some("remove") => format!("-{}", change["target"]),
            _ => change["data"]["name"].as_str().unwrap_or("?").to_owned(),
        });
    }
    assert_eq!(names, ["John Lennon", "Paul McCartney", "-1"]);
    Ok(())
}

fn check(
    case: &str,
    how: &str,
    names: &[String],
    keys: &[Vec<String>],
    expected: &[&str],
) -> anyhow::Result<()> {
    if case.starts_with("fields") {
        // Every create, each with exactly the selected keys, in the record's order; the
        // remove passes untouched (it has no data).
        assert_eq!(names.len(), 7, "{case} ({how}): {names:?}");
        assert_eq!(names.last().map(String::as_str), Some("-1"));
        for k in keys {
            assert_eq!(k, expected, "{case} ({how})");
        }
    } else {
        assert_eq!(names, expected, "{case} ({how})");
    }
    Ok(())
}

/// Publishes to three topics at different rates (A every round, B every 2nd, C every 5th)
/// until `rounds`; returns every id per topic.
async fn publish_rounds(
    store: RedisStore,
    rounds: usize,
) -> anyhow::Result<HashMap<String, Vec<EventId>>> {
    let mut ids: HashMap<String, Vec<EventId>> = HashMap::new();
    for round in 1..=rounds {
        for (name, every) in [("A", 1), ("B", 2), ("C", 5)] {
            if round % every != 0 {
                continue;
            }
            let topic = Topic::new(name)?;
            let seq = ids.get(name).map_or(0, Vec::len) + 1;
            let mut data = Object::new();
            data.insert("n".into(), json!(seq));
            let n = i64::try_from(seq)?;
            let id = store
                .publish(&topic, &Change::create(RecordId::Int(n), data), None)
                .await?;
            ids.entry(name.to_owned()).or_default().push(id);
        }
    }
    Ok(ids)
}

/// Reads events of a multi-topic stream until `done` says so; records `(topic, n)` and
/// the last cursor.
async fn read_multi(
    client: &mut SseClient,
    seen: &mut Vec<(String, u64)>,
    cursor: &mut Option<String>,
    done: impl Fn(&[(String, u64)]) -> bool,
) -> anyhow::Result<()> {
    while !done(seen) {
        let frame = client.next_event().await?;
        assert_eq!(frame.event, None, "{frame:?}");
        let change: Value = serde_json::from_str(frame.data.as_deref().unwrap_or("null"))?;
        let topic = change["topic"].as_str().unwrap_or("?").to_owned();
        seen.push((topic, change["data"]["n"].as_u64().unwrap_or(0)));
        *cursor = frame.id;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_topics_resume_on_the_other_pod_with_exactly_the_missed_events() -> anyhow::Result<()>
{
    const ROUNDS: usize = 1500;
    let redis = RedisServer::start().await?;
    let pod_a = Gateway::start(&redis.url()).await?;
    let pod_b = Gateway::start(&redis.url()).await?;
    let store = RedisStore::connect_lazy(&redis.url(), StoreOptions::default())?;
    let url = |pod: &Gateway| pod.url("/events?topic=A&topic=B,C");

    let mut first = SseClient::connect(&url(&pod_a), None).await?;
    let publishing = tokio::spawn(publish_rounds(store.clone(), ROUNDS));
    let mut seen = Vec::new();
    let mut cursor = None;
    // Leave pod A after 150 events, while publishing goes on.
    read_multi(&mut first, &mut seen, &mut cursor, |s| s.len() >= 150).await?;
    drop(first);
    let cursor = cursor.expect("every event has an id");
    assert!(cursor.starts_with("c1."), "{cursor}");

    // Reconnect on pod B at once, while the three topics are still being published.
    let mut on_b = Some(SseClient::connect(&url(&pod_b), Some(&cursor)).await?);
    let mut published = tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .map_err(|_| anyhow::anyhow!("publishing took over 60 s"))???;
    let total: usize = published.values().map(Vec::len).sum();
    assert_eq!(total, 1500 + 750 + 300);
    // Resume on pod B: by header (connected above), then again from the same cursor by the
    // query parameter (EventSource's first connection cannot set headers).
    for _ in 0..2 {
        let mut again = seen.clone();
        let mut client = if let Some(client) = on_b.take() {
            client
        } else {
            let with_query = format!("{}&last_event_id={cursor}", url(&pod_b));
            SseClient::connect(&with_query, None).await?
        };
        let mut last = None;
        let total: usize = published.values().map(Vec::len).sum();
        read_multi(&mut client, &mut again, &mut last, |s| s.len() >= total).await?;
        for (topic, ids) in &published {
            let ns: Vec<u64> = again
                .iter()
                .filter(|(t, _)| t == topic)
                .map(|(_, n)| *n)
                .collect();
            let expected: Vec<u64> = (1..=u64::try_from(ids.len())?).collect();
            assert_eq!(ns, expected, "topic {topic}: every event once, in order");
        }
        // Nothing more was pending: the next event is one published now.
        let next = published["A"].len() + 1;
        let mut data = Object::new();
        data.insert("n".into(), json!(next));
        let n = i64::try_from(next)?;
        let change = Change::create(RecordId::Int(n), data);
        let id = store.publish(&Topic::new("A")?, &change, None).await?;
        published.entry("A".to_owned()).or_default().push(id);
        let mut after = Vec::new();
        let mut last = None;
        read_multi(&mut client, &mut after, &mut last, |s| !s.is_empty()).await?;
        assert_eq!(after, [("A".to_owned(), u64::try_from(next)?)]);
    }
    Ok(())
}

#[tokio::test]
async fn bad_filters_topic_lists_and_cursors_are_400_with_a_json_message() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let gateway = Gateway::start_with(Some(&redis.url()), |c| {
        c.max_topics = std::num::NonZeroUsize::new(3).expect("3");
        c.filter_max_depth = std::num::NonZeroUsize::new(3).expect("3");
    })
    .await?;
    let deep = json!({"where": {"and": [{"or": [{"and": [{"a": 1}]}]}]}});
    let big = json!({"where": {"name": {"inq": vec!["x".repeat(100); 50]}}});
    let stream = |options: &Value| {
        format!(
            "/api/{BEATLES}/change-stream?_format=event-stream&options={}",
            encode(options)
        )
    };
    let other_set = "c1.00000000.1-0.2-0";
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        (
            stream(&json!({"where": {"a": {"foo": 1}}})),
            None,
            "where.a: unknown operator \"foo\"",
        ),
        (stream(&json!({"limit": 5})), None, "limit"),
        (
            stream(&json!({"where": {"n": {"gt": [1]}}})),
            None,
            "where.n.gt",
        ),
        (stream(&deep), None, "deep"),
        (stream(&big), None, "4096"),
        (stream(&json!([1])), None, "options"),
        ("/events".into(), None, "name at least one topic"),
        (
            "/events?topic=A&topic=B&topic=C&topic=D".into(),
            None,
            "at most 3",
        ),
        ("/events?topic=bad%20name".into(), None, "contains ' '"),
        (
            "/events?topic=A&topic=B".into(),
            Some("c1.zz"),
            "malformed cursor",
        ),
        (
            "/events?topic=A&topic=B".into(),
            Some(other_set),
            "another set of topics",
        ),
        (
            "/events?topic=A&topic=B".into(),
            Some("1-0"),
            "malformed cursor",
        ),
        ("/events?topic=A".into(), Some("nope"), "not a stream id"),
        (
            format!("/events?topic=A&options.B={}", encode(&json!({}))),
            None,
            "options.B names a topic",
        ),
        (
            format!(
                "/events?topic=A&options.A={}",
                encode(&json!({"where": {"x": {"regexp": "(?=a)"}}}))
            ),
            None,
            "options.A: where.x.regexp",
        ),
    ];
    let client = http();
    for (path, last_event_id, message) in cases {
        let mut req = client
            .get(gateway.url(&path))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = req.send().await?;
        assert_eq!(res.status(), 400, "{path} {last_event_id:?}");
        assert!(
            res.headers()["content-type"]
                .to_str()?
                .starts_with("application/json")
        );
        let body: Value = res.json().await?;
        assert_eq!(body["error"]["statusCode"], 400, "{body}");
        let text = body["error"]["message"].as_str().unwrap_or("");
        assert!(text.contains(message), "{path}: {text:?} lacks {message:?}");
    }
    gateway.stop().await
}

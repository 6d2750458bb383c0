//! Live views under a random workload: for several seeds, a few thousand operations
//! (creates, array creates, updates that move records into and out of filters and token
//! scopes, `updateAll`s that move several at once, replaces, upserts, replaceOrCreates,
//! deletes, issued in concurrent groups) on two topics, with clients of every
//! kind (unfiltered, filtered, token-scoped, scoped and filtered, multi-topic) that start
//! with an in-band snapshot, all reconnect to the other of two gateway pods mid-way, and
//! live through a Redis restart (AOF: nothing is lost). Each client's view, built from its
//! snapshot and the changes after it:
//! - equals, at every position the test samples (the snapshot's, then every few events),
//!   the state the stream says its topic(s) had there, through the client's filter and
//!   scope;
//! - and equals, at the end, what `GET /api/{c}?filter=` answers for its filter and token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use jsonwebtoken::{EncodingKey, Header};
use proto::{Cursor, EventId, Filter, FilterLimits, Topic};
use redis::AsyncCommands;
use serde_json::{Value, json};
use system_tests::{
    Gateway, Publisher, RedisOptions, RedisServer, SseClient, http, is_ready, poll_until,
    stream_http, within,
};
use tokio::sync::watch;

const SECRET: &str = "views-random-hs256-secret-of-at-least-32-bytes";
/// Operations per seed.
const OPS: usize = 2000;
/// A client samples its view every this many events.
const SAMPLE_EVERY: usize = 25;
const OWNERS: [&str; 3] = ["alice", "bob", "carol"];
const CONVERGE: Duration = Duration::from_secs(30);

/// A small deterministic generator (xorshift64*): the seed names the run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn token(sub: &str, scope: Option<&str>) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let mut topics = json!({"subscribe": ["*"], "publish": ["*"]});
    if let Some(owner) = scope {
        topics["where"] = json!({"Orders": {"ownerId": owner}});
    }
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": sub, "exp": exp, "topics": topics}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// One kind of client.
#[derive(Clone, Debug)]
struct Spec {
    name: &'static str,
    topics: Vec<&'static str>,
    /// The client's own `where`, if any.
    filter: Option<Value>,
    /// The owner its token is scoped to (on Orders), if any.
    owner: Option<&'static str>,
}

impl Spec {
    fn token(&self) -> String {
        token(self.name, self.owner)
    }

    fn url(&self, base: &str) -> String {
        let mut url = if self.topics.len() == 1 {
            format!("{base}/api/{}/change-stream?snapshot=true", self.topics[0])
        } else {
            let topics: Vec<String> = self.topics.iter().map(|t| format!("topic={t}")).collect();
            format!("{base}/events?{}&snapshot=true", topics.join("&"))
        };
        if let Some(filter) = &self.filter {
            url.push_str(&format!(
                "&options={}",
                url_escape(&json!({ "where": filter }).to_string())
            ));
        }
        url
    }

    /// Whether `record` of `topic` belongs in this client's view.
    fn admits(&self, topic: &str, record: &proto::Object) -> bool {
        let limits = FilterLimits::default();
        let own = self.filter.as_ref().is_none_or(|w| {
            Filter::from_where(w, &limits)
                .expect("filter")
                .matches(record)
        });
        let scoped = match (self.owner, topic) {
            (Some(owner), "Orders") => record.get("ownerId") == Some(&Value::from(owner)),
            _ => true,
        };
        own && scoped
    }
}

fn specs() -> Vec<Spec> {
    vec![
        Spec {
            name: "all",
            topics: vec!["Orders"],
            filter: None,
            owner: None,
        },
        Spec {
            name: "open",
            topics: vec!["Orders"],
            filter: Some(json!({"status": "open"})),
            owner: None,
        },
        Spec {
            name: "alice",
            topics: vec!["Orders"],
            filter: None,
            owner: Some("alice"),
        },
        Spec {
            name: "bob-open",
            topics: vec!["Orders"],
            filter: Some(json!({"status": "open"})),
            owner: Some("bob"),
        },
        Spec {
            name: "both",
            topics: vec!["Items", "Orders"],
            filter: Some(json!({"n": {"lt": 50}})),
            owner: None,
        },
    ]
}

/// A view: (topic, record id as JSON text) -> record.
type View = BTreeMap<(String, String), Value>;

/// What a client kept: its view at each sampled position (per topic).
#[derive(Debug, Default)]
struct Log {
    samples: Vec<(BTreeMap<String, EventId>, View)>,
    reconnects: usize,
}

/// Follows `spec` on the pods of `bases`, from a fresh snapshot; moves to the other pod
/// each time `switch` changes; publishes its current view on `view_tx`.
async fn follow(
    spec: Spec,
    bases: Vec<String>,
    mut switch: watch::Receiver<usize>,
    view_tx: watch::Sender<View>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Log> {
    let topics: Vec<Topic> = Cursor::canonical(
        spec.topics
            .iter()
            .map(|t| Topic::new(t).expect("topic"))
            .collect(),
    );
    let mut log = Log::default();
    let mut view = View::new();
    let mut staging: BTreeMap<String, View> = BTreeMap::new();
    let mut last: Option<String> = None;
    let mut pod = 0;
    let mut received = 0;
    let positions = |id: &str| -> anyhow::Result<BTreeMap<String, EventId>> {
        Ok(if topics.len() == 1 {
            BTreeMap::from([(topics[0].as_str().to_owned(), EventId::parse(id)?)])
        } else {
            Cursor::parse(id, &topics)?
                .positions
                .into_iter()
                .map(|(t, p)| (t.as_str().to_owned(), p))
                .collect()
        })
    };
    loop {
        let mut req = stream_http()
            .get(spec.url(&bases[pod % bases.len()]))
            .header("accept", "text/event-stream")
            .bearer_auth(spec.token());
        if let Some(id) = &last {
            req = req.header("last-event-id", id);
        }
        let mut client = match SseClient::open(req).await {
            Ok(client) => client,
            Err(_) if !stop.is_cancelled() => {
                pod += 1;
                log.reconnects += 1;
                tokio::task::yield_now().await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let seen_switch = *switch.borrow_and_update();
        loop {
            let frame = tokio::select! {
                frame = client.next_frame() => frame,
                _ = switch.changed() => break,
                () = stop.cancelled() => return Ok(log),
            };
            let Ok(Some(frame)) = frame else { break };
            let Some(data) = frame.data.as_deref() else {
                continue;
            };
            let payload: Value = serde_json::from_str(data)?;
            let topic = payload["topic"]
                .as_str()
                .unwrap_or(spec.topics[0])
                .to_owned();
            match frame.event.as_deref() {
                Some("snapshot") => {
                    let page = staging.entry(topic.clone()).or_default();
                    for record in payload["records"].as_array().into_iter().flatten() {
                        page.insert((topic.clone(), record["id"].to_string()), record.clone());
                    }
                    if payload["last"] == true {
                        let page = staging.remove(&topic).unwrap_or_default();
                        view.retain(|(t, _), _| *t != topic);
                        view.extend(page);
                    }
                    if let Some(id) = frame.id {
                        log.samples.push((positions(&id)?, view.clone()));
                        last = Some(id);
                    }
                }
                Some("reset") => anyhow::bail!("{}: reset {data}: history was kept", spec.name),
                _ => {
                    let key = (topic.clone(), payload["target"].to_string());
                    match payload["type"].as_str() {
                        Some("remove") => {
                            view.remove(&key);
                        }
                        _ => {
                            view.insert(key, payload["data"].clone());
                        }
                    }
                    received += 1;
                    let id = frame.id.expect("a change has an id");
                    if received % SAMPLE_EVERY == 0 {
                        log.samples.push((positions(&id)?, view.clone()));
                    }
                    last = Some(id);
                }
            }
            view_tx.send_replace(view.clone());
        }
        // Moved on purpose, or the stream ended: to the other pod, resuming.
        if *switch.borrow() != seen_switch {
            pod += 1;
        }
        log.reconnects += 1;
        pod += usize::from(stop.is_cancelled());
    }
}

/// Every record of `topic` as the stream's entries up to `position` leave it.
fn state_at(entries: &[(EventId, Value)], position: EventId) -> BTreeMap<String, Value> {
    let mut state = BTreeMap::new();
    for (id, change) in entries.iter().take_while(|(id, _)| *id <= position) {
        let _ = id;
        let key = change["target"].to_string();
        match change["type"].as_str() {
            Some("remove") => {
                state.remove(&key);
            }
            _ => {
                state.insert(key, change["data"].clone());
            }
        }
    }
    state
}

async fn whole_stream(redis: &RedisServer, topic: &str) -> anyhow::Result<Vec<(EventId, Value)>> {
    let mut conn = redis.connection().await?;
    let reply: redis::streams::StreamRangeReply =
        within("XRANGE", conn.xrange_all(Topic::new(topic)?.stream_key())).await??;
    reply
        .ids
        .into_iter()
        .map(|entry| {
            let change: String = entry.get("change").expect("change");
            Ok((EventId::parse(&entry.id)?, serde_json::from_str(&change)?))
        })
        .collect()
}

/// One random operation; failures (a 404 for an id another operation deleted, a 503
/// while Redis restarts) are part of the workload.
async fn operate(client: &reqwest::Client, api: &str, auth: &str, rng: &mut Rng, ids: &[i64]) {
    let owner = *rng.pick(&OWNERS);
    let status = *rng.pick(&["open", "done"]);
    let n = rng.below(100);
    let id = if ids.is_empty() { 1 } else { *rng.pick(ids) };
    let order = |rng: &mut Rng| {
        json!({
            "ownerId": *rng.pick(&OWNERS),
            "status": *rng.pick(&["open", "done"]),
            "n": rng.below(100),
        })
    };
    let request = match rng.below(25) {
        0..=2 => client
            .post(format!("{api}/api/Orders"))
            .json(&json!({"ownerId": owner, "status": status, "n": n})),
        // An array create: all its records or none, their events adjacent.
        3 => {
            let records: Vec<Value> = (0..2 + rng.below(4)).map(|_| order(rng)).collect();
            client.post(format!("{api}/api/Orders")).json(&records)
        }
        4..=9 => {
            let patch = match rng.below(3) {
                0 => json!({"status": status}),
                1 => json!({"ownerId": owner}),
                _ => json!({"status": status, "ownerId": owner, "n": n}),
            };
            client.patch(format!("{api}/api/Orders/{id}")).json(&patch)
        }
        10..=11 => client
            .put(format!("{api}/api/Orders/{id}"))
            .json(&json!({"ownerId": owner, "status": status, "n": n, "id": id})),
        // updateAll: one step, one update per record, moving several records at once
        // into or out of filters and scopes.
        12..=13 => {
            let where_ = json!({"ownerId": *rng.pick(&OWNERS), "n": {"lt": 10 + rng.below(10)}});
            let patch = match rng.below(2) {
                0 => json!({"status": status}),
                _ => json!({"ownerId": owner}),
            };
            client
                .post(format!(
                    "{api}/api/Orders/update?where={}",
                    url_escape(&where_.to_string())
                ))
                .json(&patch)
        }
        // upsert (merge, or create) and replaceOrCreate (replace, or create).
        14 => client
            .patch(format!("{api}/api/Orders"))
            .json(&json!({"id": id, "status": status})),
        15 => client
            .put(format!("{api}/api/Orders"))
            .json(&json!({"id": id, "ownerId": owner, "status": status, "n": n})),
        16..=17 => client.delete(format!("{api}/api/Orders/{id}")),
        18..=19 => client
            .post(format!("{api}/api/Items"))
            .json(&json!({"n": n})),
        20..=22 => client
            .patch(format!("{api}/api/Items/{}", 1 + rng.below(40)))
            .json(&json!({"n": n})),
        _ => client.delete(format!("{api}/api/Items/{}", 1 + rng.below(40))),
    };
    let _ = request.bearer_auth(auth).send().await;
}

async fn run(seed: u64) -> anyhow::Result<()> {
    let mut redis = RedisServer::start_with(RedisOptions { appendonly: true }).await?;
    let settings = [
        ("PUBLISHER_JWT_SECRET", SECRET),
        // All history kept, so any sampled position's state can be rebuilt.
        ("PUBLISHER_STREAM_MAX_LEN", "0"),
        ("PUBLISHER_STREAM_MAX_AGE", "0"),
        ("PUBLISHER_REDIS_TIMEOUT", "500ms"),
    ];
    let publisher = Publisher::start_env(&redis.url(), &settings).await?;
    let gateway_settings = [
        ("GATEWAY_JWT_SECRET", SECRET),
        ("GATEWAY_SNAPSHOT_PAGE", "50"),
        ("GATEWAY_HEARTBEAT", "1s"),
        ("GATEWAY_REDIS_TIMEOUT", "500ms"),
    ];
    let pods = [
        Gateway::start_env(Some(&redis.url()), &gateway_settings).await?,
        Gateway::start_env(Some(&redis.url()), &gateway_settings).await?,
    ];
    let bases: Vec<String> = pods.iter().map(|p| p.url("")).collect();
    let api = publisher.url("");
    let admin = token("admin", None);
    let client = http();
    let mut rng = Rng(seed);
    // A starting collection of several snapshot pages, in array creates.
    for chunk in 0..3 {
        let orders: Vec<Value> = (chunk * 100..(chunk + 1) * 100)
            .map(|n| json!({"ownerId": OWNERS[n % 3], "status": if n % 2 == 0 { "open" } else { "done" }, "n": n % 100}))
            .collect();
        let res = client
            .post(format!("{api}/api/Orders"))
            .bearer_auth(&admin)
            .json(&orders)
            .send()
            .await?;
        anyhow::ensure!(res.status() == 200, "array create: {}", res.status());
    }
    let items: Vec<Value> = (0..40).map(|n| json!({"n": n})).collect();
    client
        .post(format!("{api}/api/Items"))
        .bearer_auth(&admin)
        .json(&items)
        .send()
        .await?;

    let (switch_tx, switch_rx) = watch::channel(0_usize);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut followers = Vec::new();
    for spec in specs() {
        let (view_tx, view_rx) = watch::channel(View::new());
        let task = tokio::spawn(follow(
            spec.clone(),
            bases.clone(),
            switch_rx.clone(),
            view_tx,
            stop.clone(),
        ));
        followers.push((spec, view_rx, task));
    }
    let ids = Arc::new(std::sync::Mutex::new((1..=300).collect::<Vec<i64>>()));
    let mut done = 0;
    while done < OPS {
        // A group of concurrent operations, as several backends would send them.
        let group = 1 + rng.below(5);
        let current = ids.lock().expect("ids").clone();
        let mut rngs: Vec<Rng> = (0..group).map(|_| Rng(rng.next() | 1)).collect();
        join_all(
            rngs.iter_mut()
                .map(|r| operate(&client, &api, &admin, r, &current)),
        )
        .await;
        done += group;
        if done % 97 < group {
            // Refresh the ids that exist, so updates mostly hit live records.
            let listed: Vec<Value> = client
                .get(format!("{api}/api/Orders"))
                .bearer_auth(&admin)
                .send()
                .await?
                .json()
                .await
                .unwrap_or_default();
            *ids.lock().expect("ids") = listed.iter().filter_map(|r| r["id"].as_i64()).collect();
        }
        if done >= OPS * 3 / 10 && *switch_tx.borrow() == 0 {
            switch_tx.send_replace(1); // every client to the other pod
        }
        if done >= OPS / 2 && *switch_tx.borrow() == 1 {
            switch_tx.send_replace(2);
            redis.restart().await?; // AOF: nothing acknowledged is lost
            let urls: Vec<String> = bases.iter().map(|b| format!("{b}/readyz")).collect();
            poll_until("pods ready after the Redis restart", CONVERGE, || async {
                for url in &urls {
                    if !is_ready(&http(), url).await {
                        return None;
                    }
                }
                Some(())
            })
            .await?;
        }
    }

    // The end: each view equals its REST answer.
    for (spec, view_rx, _) in &mut followers {
        let mut expected = View::new();
        for topic in &spec.topics {
            let mut url = format!("{api}/api/{topic}");
            if let Some(filter) = &spec.filter {
                url.push_str(&format!(
                    "?filter={}",
                    url_escape(&json!({ "where": filter }).to_string())
                ));
            }
            let records: Vec<Value> =
                within("find", client.get(&url).bearer_auth(spec.token()).send())
                    .await??
                    .json()
                    .await?;
            for record in records {
                expected.insert(((*topic).to_owned(), record["id"].to_string()), record);
            }
        }
        let reached = tokio::time::timeout(CONVERGE, view_rx.wait_for(|view| *view == expected))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(
            reached,
            "seed {seed}, client {}: the view equals GET ?filter= at the end ({} records expected, {} held)",
            spec.name,
            expected.len(),
            view_rx.borrow().len()
        );
    }
    stop.cancel();

    // Every sampled position: the view is the stream's state there, filtered and scoped.
    let streams = BTreeMap::from([
        ("Orders".to_owned(), whole_stream(&redis, "Orders").await?),
        ("Items".to_owned(), whole_stream(&redis, "Items").await?),
    ]);
    let mut sampled = 0;
    for (spec, _, task) in followers {
        let log = within("a follower to stop", task).await???;
        assert!(log.reconnects >= 1, "{}: moved to the other pod", spec.name);
        assert!(!log.samples.is_empty(), "{}: sampled", spec.name);
        for (positions, view) in &log.samples {
            let mut expected = View::new();
            for (topic, position) in positions {
                for (key, record) in state_at(&streams[topic], *position) {
                    let object = record.as_object().cloned().unwrap_or_default();
                    if spec.admits(topic, &object) {
                        expected.insert((topic.clone(), key), record);
                    }
                }
            }
            assert_eq!(
                view, &expected,
                "seed {seed}, client {}: the view at {positions:?}",
                spec.name
            );
            sampled += 1;
        }
    }
    eprintln!("seed {seed}: {OPS} operations, {sampled} sampled positions checked");
    publisher.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_keep_every_kind_of_view_exact() -> anyhow::Result<()> {
    for seed in [
        0x9E37_79B9_7F4A_7C15,
        0xD1B5_4A32_D192_ED03,
        0x8CB9_2BA7_2F3D_8DD7,
    ] {
        run(seed).await?;
    }
    Ok(())
}

//! What the fault scenarios publish and what they check their clients received: a writer
//! that creates a record every tick until stopped and counts what Redis took, and the
//! exactly-once check of every [`Watcher`] against the topic's stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proto::{Object, Topic};
use publisher::{RedisStore, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{Watched, Watcher, poll_until};

/// How many creates a writer got acknowledged and refused.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: AtomicUsize,
    pub failed: AtomicUsize,
}

/// `{"n": n}`.
pub fn body(n: usize) -> Object {
    json!({ "n": n }).as_object().cloned().unwrap_or_default()
}

/// Creates `{"n": 1}`, `{"n": 2}`, ... in `topic`, one per `every`, until `stop`,
/// counting in `tally` what was acknowledged and what was refused.
pub fn publish_until_stopped(
    store: RedisStore,
    topic: Topic,
    every: Duration,
    tally: Arc<Tally>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut n = 0;
        while !stop.is_cancelled() {
            tick.tick().await;
            n += 1;
            match store.create(&topic, body(n)).await {
                Ok(_) => tally.ok.fetch_add(1, Ordering::SeqCst),
                Err(_) => tally.failed.fetch_add(1, Ordering::SeqCst),
            };
        }
    })
}

/// Waits (at most `deadline`) until `count` is at least `target`.
pub async fn reach(
    what: &str,
    count: &AtomicUsize,
    target: usize,
    deadline: Duration,
) -> anyhow::Result<()> {
    poll_until(what, deadline, || async {
        (count.load(Ordering::SeqCst) >= target).then_some(())
    })
    .await
}

/// Waits (at most `deadline` each) until every watcher holds the last id of `stream`,
/// then checks each holds the whole stream, in order, once, and was never reset.
pub async fn all_complete(
    watchers: Vec<Watcher>,
    stream: &[String],
    deadline: Duration,
) -> anyhow::Result<Vec<Watched>> {
    let last = stream.last().expect("events were published");
    let mut results = Vec::new();
    for mut watcher in watchers {
        watcher.wait_for(last, deadline).await?;
        results.push(watcher.stop().await?);
    }
    for (i, watched) in results.iter().enumerate() {
        assert!(
            watched.resets().is_empty(),
            "client {i} was reset: {:?}",
            watched.resets()
        );
        assert_eq!(
            watched.data_ids(),
            stream,
            "client {i}: every event, in order, once"
        );
    }
    Ok(results)
}

//! A pod's limits and its drain: the connection cap, and SIGTERM spreading stream ends
//! over the drain window while `/readyz` and new streams turn clients away.

use std::time::{Duration, Instant};

use serde_json::Value;
use system_tests::{Gateway, SseClient, http, within};

fn stream_url(gateway: &Gateway) -> String {
    gateway.url("/api/Limits/change-stream?_format=event-stream")
}

#[tokio::test]
async fn over_the_connection_cap_is_503_with_retry_after() -> anyhow::Result<()> {
    let gateway = Gateway::start_with(None, |c| {
        c.max_connections = 3.try_into().expect("non-zero")
    })
    .await?;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(SseClient::connect(&stream_url(&gateway), None).await?);
    }
    let res = http().get(stream_url(&gateway)).send().await?;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await?;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("maximum of 3 streams"),
        "{body}"
    );

    // A closed stream frees its place.
    drop(open.pop());
    system_tests::poll_until("a freed place", Duration::from_secs(5), || async {
        SseClient::connect(&stream_url(&gateway), None).await.ok()
    })
    .await?;
    gateway.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_streams_over_the_window_and_turns_new_clients_away() -> anyhow::Result<()> {
    let window = Duration::from_millis(1500);
    let gateway = Gateway::start_with(None, |c| c.drain_window = window).await?;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(SseClient::connect(&stream_url(&gateway), None).await?);
    }
    let started = Instant::now();
    gateway.shutdown.cancel();

    // While draining the listener is closed: a new connection is refused or closed at
    // once (EventSource retries that, through the Service, to another pod), or it gets a
    // 503; it is never left hanging.
    match http().get(stream_url(&gateway)).send().await {
        Ok(res) => assert_eq!(res.status(), 503),
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }

    let mut ended_after = Vec::new();
    for mut client in clients {
        let waited = tokio::spawn(async move {
            while client.next_frame().await?.is_some() {}
            anyhow::Ok(started.elapsed())
        });
        ended_after.push(waited);
    }
    let mut ends = Vec::new();
    for waited in ended_after {
        ends.push(within("stream end", waited).await???);
    }
    ends.sort();
    let first = ends[0];
    let last = ends[ends.len() - 1];
    assert!(
        last < window + Duration::from_secs(2),
        "all ended within the window: {ends:?}"
    );
    assert!(
        last - first > window / 4,
        "ends are spread, not one burst: {ends:?}"
    );
    gateway.stop().await
}

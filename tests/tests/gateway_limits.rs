//! A pod's limits and its drain: the connection cap, and SIGTERM spreading stream ends
//! over the drain window while `/readyz` and new streams turn clients away.

use std::time::{Duration, Instant};

use serde_json::Value;
use system_tests::{Gateway, SseClient, http, within};

fn stream_url(gateway: &Gateway) -> String {
    gateway.url("/api/Limits/change-stream?_format=event-stream")
}

/// A full pod answers so that EventSource tries again (it closes for good on a 503): `200`,
/// `:ok`, for a fresh client a position to resume from, a jittered `retry:`, the end.
#[tokio::test]
async fn over_the_connection_cap_a_stream_is_told_to_retry() -> anyhow::Result<()> {
    let gateway = Gateway::start_with(None, |c| {
        c.max_connections = 3.try_into().expect("non-zero")
    })
    .await?;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(SseClient::connect(&stream_url(&gateway), None).await?);
    }
    let mut turned_away = SseClient::connect(&stream_url(&gateway), None).await?;
    let mut frames = Vec::new();
    while let Some(frame) = turned_away.next_frame().await? {
        frames.push(frame);
    }
    assert_eq!(
        turned_away.response_headers["content-type"],
        "text/event-stream"
    );
    assert_eq!(frames[0].comment.as_deref(), Some("ok"));
    let anchor = frames[1].id.clone().expect("a position");
    let anchor = proto::EventId::parse(&anchor)?;
    assert!(anchor.is_anchor(), "{anchor}");
    let retry: u64 = frames[2].retry.as_deref().expect("retry").parse()?;
    assert!(
        (2000..4000).contains(&retry),
        "jittered above the 2 s default: {retry}"
    );
    assert_eq!(frames.len(), 3, "then the end: {frames:?}");
    // With a position of its own, it keeps it.
    let mut resuming = SseClient::connect(&stream_url(&gateway), Some("1-0")).await?;
    while resuming.next_frame().await?.is_some() {}
    assert!(
        resuming.received.starts_with(":ok\n\nretry: "),
        "{:?}",
        resuming.received
    );
    // A fresh client that wants a snapshot gets no position either: with one, its next
    // connection would be a resume, and a resume sends no snapshot.
    let snapshot_url = format!("{}&snapshot=true", stream_url(&gateway));
    let mut snapshot = SseClient::connect(&snapshot_url, None).await?;
    while snapshot.next_frame().await?.is_some() {}
    assert!(
        snapshot.received.starts_with(":ok\n\nretry: "),
        "{:?}",
        snapshot.received
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
    // once (EventSource retries that, through the Service, to another pod), or it is
    // told to retry (200); it is never left hanging and never gets a 503.
    match http().get(stream_url(&gateway)).send().await {
        Ok(res) => {
            assert_eq!(res.status(), 200);
            assert!(res.text().await?.contains("retry: "));
        }
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

/// Asserts a LoopBack JSON error with `status` whose message contains `text`.
async fn json_error(res: reqwest::Response, status: u16, text: &str) -> anyhow::Result<()> {
    assert_eq!(res.status(), status, "{}", res.url().path());
    let body: Value = res.json().await?;
    assert_eq!(body["error"]["statusCode"], status, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains(text), "{message:?} lacks {text:?}");
    Ok(())
}

#[tokio::test]
async fn a_long_url_is_414_and_large_headers_are_431_as_json() -> anyhow::Result<()> {
    let gateway = Gateway::start_env(
        None,
        &[
            ("GATEWAY_MAX_URL_BYTES", "2048"),
            ("GATEWAY_MAX_HEADER_BYTES", "4096"),
        ],
    )
    .await?;
    let client = http();
    let long = format!("{}&pad={}", stream_url(&gateway), "x".repeat(2048));
    let res = client.get(&long).send().await?;
    json_error(res, 414, "longer than the limit of 2048 bytes").await?;
    let res = client
        .get(stream_url(&gateway))
        .header("x-padding", "y".repeat(5000))
        .send()
        .await?;
    json_error(res, 431, "larger than the limit of 4096 bytes").await?;
    // The embedded REST API is behind the same check, and nothing was written.
    let res = client
        .post(format!(
            "{}&pad={}",
            gateway.url("/api/Limits?x=1"),
            "x".repeat(2048)
        ))
        .json(&serde_json::json!({"n": 1}))
        .send()
        .await?;
    json_error(res, 414, "URL").await?;
    let list: Value = client
        .get(gateway.url("/api/Limits"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(list, serde_json::json!([]));
    // Within the limits all is well.
    SseClient::connect(&stream_url(&gateway), None).await?;
    Ok(())
}

#[tokio::test]
async fn cors_allows_listed_origins_with_credentials_and_no_others() -> anyhow::Result<()> {
    let gateway = Gateway::start_env(
        None,
        &[(
            "GATEWAY_CORS_ORIGINS",
            "https://app.example.com, http://localhost:3000",
        )],
    )
    .await?;
    let client = http();
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, stream_url(&gateway))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "last-event-id")
            .send()
    };
    let allowed = preflight("https://app.example.com").await?;
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(
        h["access-control-allow-headers"]
            .to_str()?
            .contains("last-event-id")
    );
    let other = preflight("https://evil.example").await?;
    assert!(
        other.headers().get("access-control-allow-origin").is_none(),
        "an unlisted origin must not be allowed"
    );
    // A bad list stops start-up naming the setting.
    let env = [(
        "GATEWAY_CORS_ORIGINS".to_owned(),
        "app.example.com".to_owned(),
    )]
    .into();
    let err = gateway::Config::load(["gateway"].map(Into::into), &env)
        .expect_err("an origin without a scheme")
        .to_string();
    assert!(err.contains("cors_origins"), "{err}");
    Ok(())
}

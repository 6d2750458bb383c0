//! `/metrics` on both binaries after real traffic: each named series moved.

use std::time::Duration;

use proto::Topic;
use publisher::{RedisOptions as StoreOptions, RedisStore, Store};
use serde_json::json;
use system_tests::{Gateway, Publisher, RedisServer, SseClient, http, poll_until};

/// The value of the first sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric != name {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse().ok())?
        })
}

async fn scrape(url: &str) -> anyhow::Result<String> {
    let res = http().get(url).send().await?;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()?
            .starts_with("text/plain; version=0.0.4")
    );
    Ok(res.text().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_real_traffic_on_both_binaries() -> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    let gateway = Gateway::start_with(Some(&redis.url()), |c| {
        c.write_timeout = Duration::from_secs(1)
    })
    .await?;
    let url =
        |topic: &str| gateway.url(&format!("/api/{topic}/change-stream?_format=event-stream"));
    let client = http();

    // Live delivery, then a resume that replays, then a reset.
    let mut live = SseClient::connect(&url("Metered"), None).await?;
    for foo in ["a", "b", "c"] {
        client
            .post(publisher.url("/api/Metered"))
            .json(&json!({"foo": foo}))
            .send()
            .await?
            .error_for_status()?;
    }
    let first = live.next_event().await?.id.expect("id");
    live.next_event().await?;
    live.next_event().await?;
    let mut resumed = SseClient::connect(&url("Metered"), Some(&first)).await?;
    resumed.next_event().await?;
    resumed.next_event().await?;
    let mut ahead = SseClient::connect(&url("Metered"), Some("99999999999999-0")).await?;
    assert_eq!(ahead.next_event().await?.event.as_deref(), Some("reset"));
    // A failed mutation is counted by its outcome.
    let res = client
        .patch(publisher.url("/api/Metered/404"))
        .json(&json!({"x": 1}))
        .send()
        .await?;
    assert_eq!(res.status(), 404);

    // A client that never reads while a lot is published gets dropped for stalling.
    let _stalled = SseClient::connect(&url("Flood"), None).await?;
    let store = RedisStore::connect_lazy(&redis.url(), StoreOptions::default())?;
    let flood = Topic::new("Flood")?;
    let pad = "x".repeat(4096);
    let metrics_url = gateway.url("/metrics");
    poll_until("a stalled client dropped", Duration::from_secs(30), || {
        let (store, flood, pad, metrics_url) = (&store, &flood, &pad, &metrics_url);
        async move {
            for n in 0..200 {
                store
                    .create(flood, json!({"n": n, "pad": pad}).as_object().cloned()?)
                    .await
                    .ok()?;
            }
            let text = scrape(metrics_url).await.ok()?;
            (sample(&text, "gateway_slow_client_disconnects_total", &[])? >= 1.0).then_some(())
        }
    })
    .await?;

    // A Redis restart is a reconnect.
    redis.restart().await?;
    poll_until(
        "gateway counts the reconnect",
        Duration::from_secs(20),
        || async {
            let text = scrape(&metrics_url).await.ok()?;
            (sample(&text, "gateway_redis_reconnects_total", &[])? >= 1.0
                && sample(&text, "gateway_redis_subscription_up", &[])? == 1.0)
                .then_some(())
        },
    )
    .await?;

    let text = scrape(&metrics_url).await?;
    let at_least = |name: &str, labels: &[(&str, &str)], min: f64| {
        let value = sample(&text, name, labels)
            .unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{text}"));
        assert!(
            value >= min,
            "{name} {labels:?} = {value}, expected >= {min}"
        );
    };
    at_least(
        "gateway_sse_connections",
        &[("endpoint", "change-stream")],
        3.0,
    );
    at_least(
        "gateway_sse_connections_total",
        &[("endpoint", "change-stream")],
        4.0,
    );
    at_least("gateway_events_delivered_total", &[], 5.0);
    at_least("gateway_events_replayed_total", &[], 2.0);
    at_least(
        "gateway_resets_total",
        &[("reason", "position-unknown")],
        1.0,
    );
    at_least("gateway_publish_to_deliver_seconds_count", &[], 3.0);
    at_least("gateway_redis_subscription_up", &[], 1.0);
    at_least("gateway_subscribed_topics", &[], 1.0);
    for name in [
        "gateway_slow_client_catchups_total",
        "gateway_gap_refills_total",
        "gateway_pubsub_dropped_total",
    ] {
        assert!(sample(&text, name, &[]).is_some(), "{name} exported");
    }

    let text = scrape(&publisher.url("/metrics")).await?;
    let create = sample(
        &text,
        "publisher_mutations_total",
        &[("type", "create"), ("outcome", "ok")],
    );
    assert!(create.is_some_and(|v| v >= 3.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "publisher_mutations_total",
            &[("type", "patch"), ("outcome", "not_found")]
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            "publisher_mutation_duration_seconds_count",
            &[("type", "create")]
        )
        .is_some_and(|v| v >= 3.0)
    );
    Ok(())
}

#[tokio::test]
async fn the_embedded_gateway_exports_gateway_and_publisher_series() -> anyhow::Result<()> {
    let gateway = Gateway::start_with(None, |_| {}).await?;
    let mut client = SseClient::connect(&gateway.url("/api/Solo/change-stream"), None).await?;
    http()
        .post(gateway.url("/api/Solo"))
        .json(&json!({"a": 1}))
        .send()
        .await?
        .error_for_status()?;
    client.next_event().await?;
    let text = scrape(&gateway.url("/metrics")).await?;
    assert_eq!(
        sample(
            &text,
            "publisher_mutations_total",
            &[("type", "create"), ("outcome", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "gateway_events_delivered_total", &[]),
        Some(1.0)
    );
    gateway.stop().await
}

/// Starts `binary` with its metrics on a separate admin port; returns the process and the
/// main and admin addresses from its log.
async fn with_admin_port(
    binary: &str,
    prefix: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<(tokio::process::Child, String, String)> {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(system_tests::workspace_binary(binary)?);
    cmd.env(format!("{prefix}_LISTEN"), "127.0.0.1:0")
        .env(format!("{prefix}_ADMIN_LISTEN"), "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut child = cmd.spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let (main, admin) = system_tests::within("listening lines", async {
        let (mut main, mut admin) = (None, None);
        while let Some(line) = lines.next_line().await? {
            let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if let Some(a) = entry["admin_addr"].as_str() {
                admin = Some(a.to_owned());
            }
            if let Some(a) = entry["addr"].as_str() {
                main = Some(a.to_owned());
            }
            if let (Some(main), Some(admin)) = (&main, &admin) {
                return anyhow::Ok((main.clone(), admin.clone()));
            }
        }
        anyhow::bail!("{binary} exited before listening on both ports")
    })
    .await??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, main, admin))
}

#[tokio::test]
async fn admin_port_serves_metrics_and_the_main_port_does_not() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let client = http();
    for (binary, prefix, series, env) in [
        (
            "gateway",
            "GATEWAY",
            "gateway_events_delivered_total",
            vec![],
        ),
        (
            "publisher",
            "PUBLISHER",
            "publisher_mutations_total",
            vec![("PUBLISHER_REDIS_URL", redis.url())],
        ),
    ] {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (_child, main, admin) = with_admin_port(binary, prefix, &env).await?;
        assert_ne!(main, admin);
        // One write through the main port (embedded mode serves the REST API too).
        client
            .post(format!("http://{main}/api/Admin"))
            .json(&json!({"foo": "bar"}))
            .send()
            .await?
            .error_for_status()?;
        let text = scrape(&format!("http://{admin}/metrics")).await?;
        assert!(
            text.contains(series),
            "{binary}: no {series} on the admin port"
        );
        let on_main = client.get(format!("http://{main}/metrics")).send().await?;
        assert_eq!(
            on_main.status(),
            404,
            "{binary}: /metrics still on the main port"
        );
        for addr in [&main, &admin] {
            let health = client.get(format!("http://{addr}/healthz")).send().await?;
            assert_eq!(health.status(), 200, "{binary}: /healthz on {addr}");
        }
        let unknown = client.get(format!("http://{admin}/api/X")).send().await?;
        assert_eq!(
            unknown.status(),
            404,
            "{binary}: the admin port serves only ops routes"
        );
    }
    Ok(())
}

//! The README quick start, for real: the `gateway` binary with no Redis configured is a
//! complete LoopBack-style app (REST + change stream), and SIGTERM stops it cleanly.

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_binary_alone_serves_rest_and_change_stream_and_stops_on_sigterm() -> anyhow::Result<()>
{
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env_remove("GATEWAY_REDIS_URL")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut logs = BufReader::new(child.stderr.take().expect("stderr")).lines();
    // Logs are JSON lines off a terminal; the listening line names the address.
    let addr = timeout(STEP, async {
        while let Some(line) = logs.next_line().await? {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(addr) = entry["addr"].as_str() {
                assert_eq!(entry["mode"], "embedded single-node");
                return anyhow::Ok(addr.to_owned());
            }
        }
        anyhow::bail!("gateway exited before listening")
    })
    .await??;
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = logs.next_line().await {} });

    let http = reqwest::Client::builder().timeout(STEP).build()?;
    let stream = http
        .get(format!(
            "http://{addr}/api/MyModels/change-stream?_format=event-stream"
        ))
        .send()
        .await?;
    assert_eq!(stream.status(), 200);
    let mut body = stream.bytes_stream();
    let created: serde_json::Value = http
        .post(format!("http://{addr}/api/MyModels"))
        .json(&serde_json::json!({"foo": "bar"}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(created, serde_json::json!({"foo": "bar", "id": 1}));
    let mut received = String::new();
    while !received.contains("\ndata: ") || !received.ends_with("\n\n") {
        let chunk = timeout(STEP, body.next()).await?.expect("stream open")?;
        received.push_str(std::str::from_utf8(&chunk)?);
    }
    assert!(received.starts_with(":ok\n\n"), "{received:?}");
    assert!(
        received.contains("event: data\ndata: {\"target\":1,\"data\":{\"foo\":\"bar\",\"id\":1},\"type\":\"create\"}\n\n"),
        "{received:?}"
    );

    let pid = child.id().expect("running").to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await?;
    assert!(killed.success());
    // The open stream ends and the process exits 0, well within the grace period.
    while let Some(chunk) = timeout(STEP, body.next()).await? {
        chunk?;
    }
    let status = timeout(STEP, child.wait()).await??;
    assert!(status.success(), "{status}");
    drain.abort();
    Ok(())
}

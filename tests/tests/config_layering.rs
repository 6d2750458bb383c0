//! Both binaries, started for real: defaults < config file < environment < flags, and a
//! bad value stops start-up with a message naming the setting.

use std::io::Write;
use std::process::Stdio;

use serde_json::Value;
use system_tests::{RedisServer, STEP, workspace_binary};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Starts `binary` and returns its "configuration" log line; the process is killed after.
async fn effective_config(
    binary: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Value> {
    let mut cmd = Command::new(workspace_binary(binary)?);
    cmd.args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut child = cmd.spawn()?;
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let line = tokio::time::timeout(STEP, async {
        while let Some(line) = lines.next_line().await? {
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if entry["message"] == "configuration" {
                return anyhow::Ok(entry);
            }
        }
        anyhow::bail!("{binary} exited without logging its configuration")
    })
    .await??;
    child.start_kill()?;
    Ok(line)
}

/// Runs `binary` expecting it to refuse to start; returns its stderr.
async fn refused(binary: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut cmd = Command::new(workspace_binary(binary)?);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let output = tokio::time::timeout(STEP, cmd.output()).await??;
    assert!(
        !output.status.success(),
        "{binary} started with a bad setting"
    );
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

fn file(suffix: &str, text: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    let mut f = tempfile::Builder::new().suffix(suffix).tempfile()?;
    f.write_all(text.as_bytes())?;
    Ok(f)
}

#[tokio::test]
async fn gateway_layers_file_env_flags_and_names_bad_settings() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let toml = file(
        ".toml",
        "listen = \"127.0.0.1:1\"\nheartbeat = \"7s\"\nreplay_page = 11\nmax_connections = 5\n",
    )?;
    let config = effective_config(
        "gateway",
        &["--listen", "127.0.0.1:0", "--hub-capacity", "33"],
        &[
            ("GATEWAY_CONFIG", toml.path().to_str().expect("utf-8 path")),
            ("GATEWAY_REPLAY_PAGE", "22"),
            ("GATEWAY_HUB_CAPACITY", "44"),
            ("GATEWAY_LISTEN", "127.0.0.1:2"),
            (
                "GATEWAY_REDIS_URL",
                &redis.url().replace("redis://", "redis://:s3cret@"),
            ),
        ],
    )
    .await?;
    assert_eq!(config["heartbeat_ms"], 7000, "from the file");
    assert_eq!(config["max_connections"], 5, "from the file");
    assert_eq!(config["replay_page"], 22, "env over file");
    assert_eq!(config["hub_capacity"], 33, "flag over env");
    assert_eq!(config["listen"], "127.0.0.1:0", "flag over env over file");
    assert_eq!(config["retry_ms"], 2000, "default");
    let url = config["redis_url"].as_str().unwrap_or_default();
    assert!(url.contains(":***@") && !url.contains("s3cret"), "{url}");

    // YAML works too.
    let yaml = file(".yaml", "heartbeat: 3s\nlisten: 127.0.0.1:0\n")?;
    let config = effective_config(
        "gateway",
        &["--config", yaml.path().to_str().expect("utf-8")],
        &[],
    )
    .await?;
    assert_eq!(config["heartbeat_ms"], 3000);

    // Auth: on with a secret, which never reaches the log line.
    let secret = "config-layering-secret-of-at-least-32-bytes";
    let config = effective_config(
        "gateway",
        &["--listen", "127.0.0.1:0", "--public-topics", "News,Public*"],
        &[("GATEWAY_JWT_SECRET", secret), ("GATEWAY_JWT_LEEWAY", "2s")],
    )
    .await?;
    assert_eq!(config["auth"], "on");
    assert_eq!(config["jwt_leeway_ms"], 2000);
    assert_eq!(config["metrics_public"], true);
    assert!(
        config["jwt_algorithms"]
            .as_str()
            .unwrap_or("")
            .contains("HS256"),
        "{config}"
    );
    assert!(
        config["public_topics"]
            .as_str()
            .unwrap_or("")
            .contains("Public*"),
        "{config}"
    );
    assert!(!config.to_string().contains(secret));
    let config = effective_config("gateway", &["--listen", "127.0.0.1:0"], &[]).await?;
    assert_eq!(config["auth"], "off");

    // Cluster mode: the seed list, passwords redacted.
    let config = effective_config(
        "gateway",
        &["--listen", "127.0.0.1:0"],
        &[(
            "GATEWAY_REDIS_CLUSTER",
            "redis://:s3cret@127.0.0.1:1,redis://:s3cret@127.0.0.1:2",
        )],
    )
    .await?;
    assert_eq!(
        config["redis_cluster"],
        "redis://:***@127.0.0.1:1,redis://:***@127.0.0.1:2"
    );
    assert!(
        config.get("redis_url").is_none_or(Value::is_null),
        "{config}"
    );

    for (args, env, setting) in [
        (
            vec![],
            vec![("GATEWAY_HEARTBEAT", "banana")],
            "`heartbeat` (env GATEWAY_HEARTBEAT, flag --heartbeat)",
        ),
        (vec!["--replay-page", "0"], vec![], "`replay_page`"),
        (
            vec![],
            vec![("GATEWAY_DRAIN_WINDOW", "20s")],
            "`drain_window`",
        ),
        (
            vec![],
            vec![("GATEWAY_REDIS_URL", "http://nope")],
            "`redis_url`",
        ),
        (vec!["--listen", "nowhere"], vec![], "`listen`"),
        (
            vec![],
            vec![("GATEWAY_JWT_SECRET", "tiny-secret-value")],
            "`jwt_secret` (env GATEWAY_JWT_SECRET",
        ),
        (
            vec!["--jwt-public-key-file", "/nonexistent/key.pem"],
            vec![],
            "`jwt_public_key_file`",
        ),
        (vec!["--public-topics", "News"], vec![], "`public_topics`"),
        (
            vec![],
            vec![("GATEWAY_REDIS_CLUSTER", "redis://a:1,http://b:2")],
            "`redis_cluster`",
        ),
        (
            vec!["--redis-cluster", "redis://a:1"],
            vec![("GATEWAY_REDIS_URL", "redis://b:2")],
            "not both",
        ),
    ] {
        let stderr = refused("gateway", &args, &env).await?;
        assert!(stderr.contains(setting), "{args:?} {env:?}: {stderr}");
        assert!(!stderr.contains("tiny-secret-value"), "{stderr}");
    }
    let bad_file = file(".toml", "heartbeat = [\n")?;
    let stderr = refused(
        "gateway",
        &["--config", bad_file.path().to_str().expect("utf-8")],
        &[],
    )
    .await?;
    assert!(stderr.contains("config file"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn publisher_layers_file_env_flags_and_names_bad_settings() -> anyhow::Result<()> {
    let toml = file(
        ".toml",
        "body_limit = 1234\nstream_max_len = 10\nredis_timeout = \"700ms\"\n",
    )?;
    let config = effective_config(
        "publisher",
        &["--listen", "127.0.0.1:0", "--redis-timeout", "900ms"],
        &[
            (
                "PUBLISHER_CONFIG",
                toml.path().to_str().expect("utf-8 path"),
            ),
            ("PUBLISHER_STREAM_MAX_LEN", "55"),
            ("PUBLISHER_REDIS_TIMEOUT", "800ms"),
        ],
    )
    .await?;
    assert_eq!(config["body_limit"], 1234, "from the file");
    assert_eq!(config["stream_max_len"], 55, "env over file");
    assert_eq!(config["redis_timeout_ms"], 900, "flag over env over file");
    assert_eq!(config["stream_max_age_ms"], 86_400_000, "default");
    assert_eq!(config["redis_url"], "redis://127.0.0.1:6379/", "default");
    let config = effective_config(
        "publisher",
        &[
            "--listen",
            "127.0.0.1:0",
            "--redis-cluster",
            "redis://127.0.0.1:1",
        ],
        &[],
    )
    .await?;
    assert_eq!(config["redis_cluster"], "redis://127.0.0.1:1");

    for (args, env, setting) in [
        (vec!["--body-limit", "abc"], vec![], "`body_limit`"),
        (
            vec![],
            vec![("PUBLISHER_STREAM_MAX_AGE", "1w")],
            "`stream_max_age` (env PUBLISHER_STREAM_MAX_AGE",
        ),
        (vec![], vec![("PUBLISHER_LISTEN", "x:y:z")], "`listen`"),
        (
            vec![],
            vec![("PUBLISHER_JWT_SECRET", "tiny-secret-value")],
            "`jwt_secret` (env PUBLISHER_JWT_SECRET",
        ),
        (
            vec!["--metrics-public", "false"],
            vec![],
            "`metrics_public`",
        ),
        (
            vec![],
            vec![("PUBLISHER_REDIS_CLUSTER", ",")],
            "`redis_cluster` (env PUBLISHER_REDIS_CLUSTER",
        ),
        (
            vec!["--redis-url", "redis://a:1"],
            vec![("PUBLISHER_REDIS_CLUSTER", "redis://b:2")],
            "not both",
        ),
    ] {
        let stderr = refused("publisher", &args, &env).await?;
        assert!(stderr.contains(setting), "{args:?} {env:?}: {stderr}");
    }
    Ok(())
}

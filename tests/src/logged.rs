//! [`LoggedProcess`]: a real `gateway` or `publisher` binary as a child process whose log
//! lines are kept, for checks on what it writes (secrets that must never appear).

use std::net::SocketAddr;
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::{within, workspace_binary};

/// A real `gateway` or `publisher` process whose log lines are kept, for checks on what
/// it writes (secrets that must never appear). Killed on drop.
#[derive(Debug)]
pub struct LoggedProcess {
    child: Child,
    pub addr: SocketAddr,
    lines: tokio::sync::watch::Receiver<Vec<String>>,
    drain: JoinHandle<()>,
}

impl LoggedProcess {
    /// Starts workspace binary `name` on a loopback port with `settings` as its
    /// environment (plus `RUST_LOG` from `log_level`), and waits for its listening line.
    pub async fn start(
        name: &str,
        log_level: &str,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let prefix = name.to_uppercase();
        let mut cmd = Command::new(workspace_binary(name)?);
        cmd.env(format!("{prefix}_LISTEN"), "127.0.0.1:0")
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in settings {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().with_context(|| format!("spawn {name}"))?;
        let mut reader = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let (lines_tx, lines) = tokio::sync::watch::channel(Vec::new());
        let addr = within("listening line", async {
            while let Some(line) = reader.next_line().await? {
                let entry = serde_json::from_str::<serde_json::Value>(&line).ok();
                lines_tx.send_modify(|l| l.push(line));
                if let Some(addr) = entry.as_ref().and_then(|e| e["addr"].as_str()) {
                    return Ok(addr.parse::<SocketAddr>()?);
                }
            }
            bail!(
                "{name} exited before listening:\n{}",
                lines_tx.borrow().join("\n")
            )
        })
        .await??;
        let drain = tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                lines_tx.send_modify(|l| l.push(line));
            }
        });
        Ok(Self {
            child,
            addr,
            lines,
            drain,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every line logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.lines.borrow().clone()
    }

    /// Waits until some logged line satisfies `found`.
    pub async fn wait_for_log(
        &mut self,
        what: &str,
        found: impl Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        within(
            what,
            self.lines.wait_for(|lines| lines.iter().any(|l| found(l))),
        )
        .await?
        .map(|_| ())
        .with_context(|| format!("process exited before logging {what}"))
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        self.drain.abort();
    }
}

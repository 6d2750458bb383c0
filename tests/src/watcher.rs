//! [`Watcher`]: a client that follows a change stream as EventSource does, reconnecting
//! with `Last-Event-ID` (to the next of several URLs) whenever the stream ends or fails,
//! and records what it got ([`Watched`]) until stopped. Checking the record against the
//! stream is [`crate::traffic`]'s job.

use std::time::Duration;

use anyhow::bail;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Frame, SseClient, within};

/// What a [`Watcher`] recorded: every `data` and `reset` frame, in arrival order.
#[derive(Debug, Default)]
pub struct Watched {
    pub frames: Vec<Frame>,
    /// How many times the stream ended or failed and was reopened.
    pub reconnects: usize,
}

impl Watched {
    /// The ids of the `data` events.
    pub fn data_ids(&self) -> Vec<String> {
        self.frames
            .iter()
            .filter(|f| f.event.as_deref() == Some("data"))
            .filter_map(|f| f.id.clone())
            .collect()
    }

    pub fn resets(&self) -> Vec<&Frame> {
        self.frames
            .iter()
            .filter(|f| f.event.as_deref() == Some("reset"))
            .collect()
    }
}

/// A client that behaves like EventSource: it follows a change stream, and whenever the
/// stream ends or fails it reconnects (to the next of `urls`, as a Service would send it
/// elsewhere) with `Last-Event-ID`. It records what it receives until stopped.
#[derive(Debug)]
pub struct Watcher {
    stop: CancellationToken,
    last_rx: tokio::sync::watch::Receiver<Option<String>>,
    task: JoinHandle<anyhow::Result<Watched>>,
}

impl Watcher {
    /// Connects once (so the caller knows it is positioned), then follows in the background.
    pub async fn start(urls: Vec<String>, first: usize) -> anyhow::Result<Self> {
        let client = SseClient::connect(&urls[first % urls.len()], None).await?;
        let (last_tx, last_rx) = tokio::sync::watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow(urls, first, client, last_tx, stop.clone()));
        Ok(Self {
            stop,
            last_rx,
            task,
        })
    }

    /// Waits until the last id received is `id`.
    pub async fn wait_for(&mut self, id: &str, deadline: Duration) -> anyhow::Result<()> {
        let reached = tokio::time::timeout(
            deadline,
            self.last_rx.wait_for(|last| last.as_deref() == Some(id)),
        )
        .await
        .map(|r| r.is_ok());
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => bail!("watcher stopped before event {id}"),
            Err(_) => bail!(
                "no event {id} within {deadline:?}; last was {:?}",
                *self.last_rx.borrow()
            ),
        }
    }

    pub async fn stop(self) -> anyhow::Result<Watched> {
        self.stop.cancel();
        within("watcher to stop", self.task).await??
    }
}

async fn follow(
    urls: Vec<String>,
    mut next: usize,
    first: SseClient,
    last_tx: tokio::sync::watch::Sender<Option<String>>,
    stop: CancellationToken,
) -> anyhow::Result<Watched> {
    let mut watched = Watched::default();
    let mut client = Some(first);
    // EventSource waits `retry` between attempts; a short tick keeps a refused connect
    // from spinning.
    let mut retry = tokio::time::interval(Duration::from_millis(50));
    loop {
        let mut current = match client.take() {
            Some(c) => c,
            None => {
                retry.tick().await;
                let last = last_tx.borrow().clone();
                let connect = SseClient::connect(&urls[next % urls.len()], last.as_deref());
                tokio::select! {
                    connected = connect => match connected {
                        Ok(c) => c,
                        Err(_) => {
                            next += 1;
                            continue;
                        }
                    },
                    () = stop.cancelled() => return Ok(watched),
                }
            }
        };
        loop {
            let frame = tokio::select! {
                frame = current.next_frame() => frame,
                () = stop.cancelled() => return Ok(watched),
            };
            match frame {
                Ok(Some(frame)) => {
                    if matches!(frame.event.as_deref(), Some("data" | "reset")) {
                        let id = frame.id.clone();
                        watched.frames.push(frame);
                        if id.is_some() {
                            last_tx.send_replace(id);
                        }
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        watched.reconnects += 1;
        next += 1;
    }
}

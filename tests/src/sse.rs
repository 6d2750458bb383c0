//! [`SseClient`]: a minimal SSE reader over a real HTTP response (reqwest), every read
//! bounded by [`crate::STEP`], keeping every byte received for exact-bytes checks; and
//! [`Frame`], one parsed block. Reconnecting like EventSource is [`crate::Watcher`]'s job.

use anyhow::bail;
use futures::StreamExt;

use crate::{stream_http, within};

/// One parsed SSE block (the lines up to a blank line).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<String>,
    pub comment: Option<String>,
    /// The block's exact bytes, blank line included.
    pub raw: String,
}

impl Frame {
    /// A frame carrying an event (not a comment or a bare `retry:`).
    pub fn is_event(&self) -> bool {
        self.data.is_some()
    }
}

/// A minimal SSE reader over a real HTTP response, every read bounded by
/// [`STEP`](crate::STEP).
pub struct SseClient {
    pub response_headers: reqwest::header::HeaderMap,
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    /// Every byte received so far, for exact-bytes checks.
    pub received: String,
}

impl std::fmt::Debug for SseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseClient")
            .field("received", &self.received.len())
            .finish_non_exhaustive()
    }
}

impl SseClient {
    /// `GET url` as EventSource would (`Accept: text/event-stream`, optional `Last-Event-ID`).
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> anyhow::Result<Self> {
        let mut req = stream_http().get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        Self::open(req).await
    }

    /// Sends `req` (built on [`stream_http`], with whatever headers a test needs) and
    /// expects a 200 stream.
    pub async fn open(req: reqwest::RequestBuilder) -> anyhow::Result<Self> {
        let res = within("SSE connect", req.send()).await??;
        if res.status() != 200 {
            let status = res.status();
            let url = res.url().clone();
            let body = res.text().await.unwrap_or_default();
            bail!("SSE connect to {url}: {status}: {body}");
        }
        Ok(Self {
            response_headers: res.headers().clone(),
            body: Box::pin(res.bytes_stream()),
            buffer: String::new(),
            received: String::new(),
        })
    }

    /// The next block; `None` when the server ended the response.
    pub async fn next_frame(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                return Ok(Some(parse_frame(raw)));
            }
            match within("next SSE bytes", self.body.next()).await? {
                Some(chunk) => {
                    let text = String::from_utf8(chunk?.to_vec())?;
                    self.received.push_str(&text);
                    self.buffer.push_str(&text);
                }
                None => return Ok(None),
            }
        }
    }

    /// The next frame that carries an event, skipping comments and `retry:`.
    pub async fn next_event(&mut self) -> anyhow::Result<Frame> {
        loop {
            match self.next_frame().await? {
                Some(frame) if frame.is_event() => return Ok(frame),
                Some(_) => {}
                None => bail!("stream ended while waiting for an event"),
            }
        }
    }
}

fn parse_frame(raw: String) -> Frame {
    let mut frame = Frame::default();
    for line in raw.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            frame.comment = Some(comment.trim_start().to_owned());
            continue;
        }
        let (field, value) = line
            .split_once(':')
            .map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
        match field {
            "id" => frame.id = Some(value.to_owned()),
            "event" => frame.event = Some(value.to_owned()),
            "data" => frame.data = Some(value.to_owned()),
            "retry" => frame.retry = Some(value.to_owned()),
            _ => {}
        }
    }
    frame.raw = raw;
    frame
}

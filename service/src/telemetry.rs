//! Logging: tracing-subscriber, level from `RUST_LOG` (default `info`), JSON lines when
//! stderr is not a terminal (containers), human-readable on a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, from `main`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    if std::io::stderr().is_terminal() {
        let _ = builder.try_init();
    } else {
        let _ = builder.json().flatten_event(true).try_init();
    }
}

/// The request span of both routers: method and URI with `access_token` redacted, at
/// `debug` (so off at the default `info`), around the handler's work, with a "started
/// processing request" line in it. Only that: the response's body is passed on as it is
/// (tower-http's `TraceLayer` wraps every body, which every open event stream then holds
/// for its whole life, 112 bytes each, and runs its per-chunk hooks on every event; its
/// "finished processing request" line, timed to the response head, goes with it). No
/// failure logging here: 5xx are logged once, by `ApiError`.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpTrace;

/// See [`HttpTrace`].
pub fn http_trace() -> HttpTrace {
    HttpTrace
}

impl<S> tower::Layer<S> for HttpTrace {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced(inner)
    }
}

/// A service whose calls run in the request span ([`HttpTrace`]).
#[derive(Clone, Debug)]
pub struct Traced<S>(S);

impl<S, B> tower::Service<axum::http::Request<B>> for Traced<S>
where
    S: tower::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        let span = request_span(&request);
        // As tower-http's layer did: one line per request, carrying the span's fields.
        span.in_scope(|| tracing::debug!("started processing request"));
        self.0.call(request).instrument(span)
    }
}

fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        uri = %crate::auth::redact_uri(request.uri()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, ServiceExt};

    /// The handler runs inside the request span, and its response (an event stream's
    /// body included) comes back unwrapped: the same type, the same value.
    #[test]
    fn a_request_runs_in_its_span_and_keeps_its_response() {
        let inner = tower::service_fn(|request: axum::http::Request<()>| async move {
            let span = tracing::Span::current();
            let name = span.metadata().map(|m| m.name());
            Ok::<_, std::convert::Infallible>((name, request.uri().to_string()))
        });
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_test_writer()
            .finish();
        let request = axum::http::Request::get("/api/A/change-stream?access_token=secret")
            .body(())
            .unwrap();
        let (name, uri) = tracing::subscriber::with_default(subscriber, || {
            futures::executor::block_on(http_trace().layer(inner).oneshot(request))
        })
        .unwrap();
        assert_eq!(name, Some("request"));
        assert_eq!(uri, "/api/A/change-stream?access_token=secret");
    }
}

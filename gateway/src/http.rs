//! Routes: LoopBack's change stream (`GET`/`POST /api/{collection}/change-stream`), the
//! multi-topic stream (`GET /events?topic=A&topic=B`), health and readiness ([`health`]),
//! the browser client and demo ([`crate::assets`]) and, in embedded mode, the publisher's
//! REST API.
//!
//! [`STREAM_ROUTES`] is the one list of routes that answer with an event stream: [`app`]
//! registers their handlers and gives the connection layer the same paths for its fast
//! path ([`crate::conn`]).
//!
//! `GET /openapi.json` describes every route the pod serves (the REST API too, embedded):
//! each handler carries its `#[utoipa::path]` and is registered with `routes!`, which
//! serves and documents it in one step ([`service::openapi`]).
//!
//! Auth ([`service::auth`]): a presented token is verified by the [`Caller`] extractor
//! (401 if bad); each topic is then checked with [`Auth::authorize_subscribe`] (401 without
//! a token, 403 without a grant; public topics need none), and the stream ends when
//! [`Auth::access_ends`] says (the earliest of its topics). `/healthz` and `/readyz` never
//! need a token, `/metrics` only with `metrics_public = false`.
//!
//! [`Caller`]: service::auth::Caller

pub mod health;
pub mod stream;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::http::{HeaderName, HeaderValue, Method, header};
use publisher::MemoryStore;
use publisher::api::ApiState;
use publisher::metrics::PublisherMetrics;
use service::auth::Auth;
use service::http::{no_route, wrong_method};
use service::openapi::{
    OpenApiRouter, Refusal, UtoipaMethodRouter, operations_mut, refuses, takes_token,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use utoipa::openapi::path::HttpMethod;
use utoipa_axum::routes;

use crate::config::{Config, CorsOrigins};
use crate::conn::{App, StreamPaths};
use crate::history::History;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::partition::Partition;
use crate::subscription::Readiness;

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub history: History,
    pub config: Arc<Config>,
    pub readiness: Readiness,
    /// The verdict when Redis is out of reach (this pod alone, or the fleet), and the token
    /// open streams end on.
    pub partition: Partition,
    /// Ends every open SSE response when cancelled (each at a random moment of the drain
    /// window), and turns `/readyz` and new streams away.
    pub shutdown: CancellationToken,
    /// One permit per open SSE stream (`max_connections`). None left: the stream is told to
    /// retry (200, a jittered `retry:`, the end). The drain waits for every permit.
    pub streams: Arc<Semaphore>,
    /// Shared: every open stream holds a handle (one pointer, not a copy of each series).
    pub metrics: Arc<Metrics>,
}

/// What [`Caller`] verifies tokens with.
impl FromRef<AppState> for Auth {
    fn from_ref(state: &AppState) -> Self {
        state.config.auth.clone()
    }
}

/// A route that answers with an event stream: its handlers, documented (`routes!` of
/// handlers of one path, which it takes from their `#[utoipa::path]`).
#[derive(Clone, Copy, Debug)]
pub struct StreamRoute {
    pub handlers: fn() -> UtoipaMethodRouter<AppState>,
}

/// Every route that answers with an event stream. [`app`] registers them on the router
/// and in the document, and hands the same paths to the connection layer, whose fast path
/// serves their `GET`s without hyper ([`crate::conn`]).
pub const STREAM_ROUTES: &[StreamRoute] = &[
    StreamRoute {
        handlers: || routes!(stream::change_stream_get, stream::change_stream_post),
    },
    StreamRoute {
        handlers: || routes!(stream::events),
    },
];

/// The document's tags: what each group of operations is.
const TAGS: &[(&str, &str)] = &[
    (
        "streams",
        "Server-Sent Events: LoopBack's change stream, and several topics on one stream.",
    ),
    (
        "records",
        "Embedded mode: LoopBack 3 `PersistedModel` routes over the in-memory store.",
    ),
    ("publish", "Embedded mode: changes published as given."),
    ("browser", "The browser client and the demo page."),
    ("health", "Liveness, readiness and metrics."),
    ("meta", "This document."),
];

/// What every stream route may refuse before its stream starts (a token, a bad
/// request, a format it cannot answer in, a topic fed by raw publishes; a `POST`'s body
/// over `body_limit`), added to each of its operations.
fn describe_stream(route: &mut UtoipaMethodRouter<AppState>) {
    for (method, operation) in operations_mut(&mut route.1) {
        takes_token(operation);
        refuses(
            operation,
            &[
                Refusal::BadRequest,
                Refusal::NotAcceptable,
                Refusal::Conflict,
            ],
        );
        if method == HttpMethod::Post {
            refuses(operation, &[Refusal::PayloadTooLarge]);
        }
    }
}

/// The document's `info`.
fn document_info(embedded: bool) -> utoipa::openapi::Info {
    let mut info = utoipa::openapi::Info::new("gateway", env!("CARGO_PKG_VERSION"));
    let mode = if embedded {
        "Embedded mode: the streams, and the publisher's REST API over the in-memory store."
    } else {
        "Fleet mode: the streams of the records the publisher writes to Redis."
    };
    info.description = Some(format!(
        "The change-stream gateway. {mode} Every refusal is LoopBack's JSON error (`Error`); \
         an unknown path is a 404 (`NOT_FOUND`), a known path with another method a 405 \
         (`METHOD_NOT_ALLOWED`)."
    ));
    info
}

/// What the main port serves besides the gateway's own routes.
#[derive(Clone, Debug)]
pub struct Serve {
    /// Embedded mode: the publisher's REST API over this store.
    pub rest: Option<MemoryStore>,
    /// `/metrics` on the main port; `false` when it is on the admin port
    /// ([`admin_router`]).
    pub metrics: bool,
}

/// The gateway's router and the paths of its event streams, from [`STREAM_ROUTES`].
///
/// # Errors
/// Only on a programming error: the embedded publisher's metrics clash with the
/// gateway's, or a stream route is not valid route syntax.
pub fn app(state: AppState, serve: Serve) -> Result<App, AppError> {
    app_with(state, serve, STREAM_ROUTES)
}

/// [`app`] with these stream routes (tests add one).
///
/// # Errors
/// As [`app`].
pub fn app_with(
    state: AppState,
    serve: Serve,
    stream_routes: &[StreamRoute],
) -> Result<App, AppError> {
    let body_limit = state.config.body_limit;
    let auth = state.config.auth.clone();
    let limits = state.config.request_limits;
    let cors_origins = state.config.cors_origins.clone();
    let registry = state.metrics.registry.clone();
    let mut routes = OpenApiRouter::new();
    let mut stream_paths = Vec::new();
    for route in stream_routes {
        let mut route = (route.handlers)();
        describe_stream(&mut route);
        stream_paths.extend(route.1.paths.keys().cloned());
        routes = routes.routes(route);
    }
    routes = routes
        .merge(crate::assets::routes())
        .merge(health::routes());
    if serve.metrics {
        routes = routes.routes(service::http::metrics(registry.clone()));
    }
    let mut router = routes.with_state(state);
    let embedded = serve.rest.is_some();
    if let Some(store) = serve.rest {
        let metrics = PublisherMetrics::register(&registry)?;
        router = router.merge(
            publisher::api::routes().with_state(ApiState::new(store, body_limit, metrics, auth)),
        );
    }
    let router = service::openapi::serve(router, document_info(embedded), TAGS)
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .layer(service::telemetry::http_trace())
        .layer(axum::middleware::from_fn_with_state(
            limits,
            service::limits::check_request,
        ))
        .layer(cors(&cors_origins));
    let stream_paths = StreamPaths::new(stream_paths.iter().map(String::as_str))?;
    Ok(App {
        router,
        stream_paths,
    })
}

/// Why [`app`] could not be built (a programming error either way).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("stream route: {0}")]
    Route(#[from] matchit::InsertError),
}

/// What the admin port serves: health and `/metrics`.
pub fn admin_router(state: AppState) -> Router {
    let registry = state.metrics.registry.clone();
    let (router, _) = health::routes()
        .routes(service::http::metrics(registry))
        .split_for_parts();
    router
        .with_state(state)
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .layer(service::telemetry::http_trace())
}

/// CORS by `cors_origins`: any origin without credentials, or a list of origins with
/// credentials (so the `access_token` cookie is sent cross-origin). The preflight allows
/// `Last-Event-ID`, which browsers send on reconnect and which makes them preflight a
/// cross-origin request.
fn cors(origins: &CorsOrigins) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            HeaderName::from_static("last-event-id"),
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::CACHE_CONTROL,
            header::AUTHORIZATION,
        ])
        .max_age(std::time::Duration::from_secs(86_400));
    match origins {
        CorsOrigins::Any => layer.allow_origin(Any),
        CorsOrigins::List(list) => layer
            .allow_origin(AllowOrigin::list(
                // Checked when the configuration was read.
                list.iter().filter_map(|o| HeaderValue::from_str(o).ok()),
            ))
            .allow_credentials(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stream route added to the list gets the connection layer's fast path with no
    /// other change: served without hyper, its connection closes when the stream ends
    /// (hyper would keep it open for the next request). Fails if the router and the fast
    /// path stop sharing one list.
    #[tokio::test]
    async fn a_new_stream_route_takes_the_fast_path() {
        let config = Config::embedded();
        let shutdown = CancellationToken::new();
        let store = MemoryStore::new(config.retention);
        let state = AppState {
            hub: Hub::new(4, crate::hub::Confirm::OnJoin),
            history: History::Memory(store),
            streams: Arc::new(Semaphore::new(4)),
            readiness: Readiness::always(),
            partition: Partition::new(&shutdown),
            shutdown: shutdown.clone(),
            metrics: Arc::new(Metrics::new().unwrap()),
            config: Arc::new(config),
        };
        /// A stream route only this test has.
        #[utoipa::path(get, path = "/test/{name}/stream")]
        async fn test_stream() -> axum::response::Response {
            crate::sse::come_back(Duration::from_millis(1), None)
        }
        let mut routes = STREAM_ROUTES.to_vec();
        routes.push(StreamRoute {
            handlers: || routes!(test_stream),
        });
        let serve = Serve {
            rest: None,
            metrics: false,
        };
        let app = app_with(state, serve, &routes).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = prometheus::IntCounter::new("stalled", "test").unwrap();
        let listener = crate::conn::TimedListener::new(listener, Duration::from_secs(5), stalled);
        let tracker = tokio_util::task::TaskTracker::new();
        let limits = service::limits::RequestLimits::default();
        tokio::spawn(crate::conn::serve(
            listener,
            app,
            limits,
            shutdown.clone(),
            tracker,
        ));

        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /test/x/stream HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let read = client.read_to_string(&mut answer);
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the connection closes after the stream: the fast path served it")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("transfer-encoding: chunked\r\n"),
            "{answer}"
        );
        assert!(answer.contains(":ok\n\nretry: 1\n\n"), "{answer}");
        assert!(answer.ends_with("0\r\n\r\n"), "{answer}");
        shutdown.cancel();
    }
}

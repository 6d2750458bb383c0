//! Request limits shared by both binaries: the framing of the body ([`crate::framing`]),
//! URL length and header size, checked before any handler runs, and a rate of published
//! events per token subject.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Default longest request target (path and query), in bytes.
pub const DEFAULT_MAX_URL_BYTES: usize = 8 * 1024;
/// Default most bytes of request headers (names and values). Room for a JWT in both a
/// header and a cookie.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most token subjects a [`RateLimiter`] tracks; beyond it, idle ones are forgotten first.
const MAX_SUBJECTS: usize = 100_000;

/// Bounds on a request's size that are not its body's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_url_bytes: usize,
    pub max_header_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_url_bytes: DEFAULT_MAX_URL_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// Middleware: 400 for framing hyper let through ([`crate::framing::check`], closing the
/// connection), 414 for a longer request target, 431 for more header bytes, as LoopBack
/// JSON, before routing.
pub async fn check_request(
    State(limits): State<RequestLimits>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()));
    if let Err(e) = crate::framing::check(request.version(), headers) {
        return ApiError::Malformed(e).into_response();
    }
    let url = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if url > limits.max_url_bytes {
        return ApiError::UriTooLong {
            limit: limits.max_url_bytes,
        }
        .into_response();
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers > limits.max_header_bytes {
        return ApiError::HeadersTooLarge {
            limit: limits.max_header_bytes,
        }
        .into_response();
    }
    next.run(request).await
}

/// Events per second per key (a token's subject), as a token bucket: `burst` events at
/// once, refilled at `rate` per second.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    /// Bounded by [`MAX_SUBJECTS`]: when full, buckets that have refilled (idle keys) are
    /// dropped; if none has, all are (the keys are verified token subjects, so this takes
    /// a fleet of distinct valid tokens, not a forged flood).
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `None` when `rate` is 0 (no limit).
    pub fn new(rate: u32, burst: u32) -> Option<Self> {
        (rate > 0).then(|| Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one event for `key`, or says how long until one is available.
    ///
    /// # Errors
    /// The wait after which the next event is allowed.
    pub fn admit(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.contains_key(key) && buckets.len() >= MAX_SUBJECTS {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| Self::refill(rate, burst, *b, now).tokens < burst);
            if buckets.len() >= MAX_SUBJECTS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        *bucket = Self::refill(self.rate, self.burst, *bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    fn refill(rate: f64, burst: f64, bucket: Bucket, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        Bucket {
            tokens: (bucket.tokens + elapsed * rate).min(burst),
            at: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{StatusCode, header};
    use tower::ServiceExt;

    #[tokio::test]
    #[expect(
        clippy::disallowed_methods,
        reason = "a router of one test route, never served or documented"
    )]
    async fn framing_hyper_lets_through_is_a_json_400_that_closes() {
        let app = axum::Router::new()
            .route("/x", axum::routing::post(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(
                RequestLimits::default(),
                check_request,
            ));
        let request = |te: &str| {
            Request::post("/x")
                .header(header::TRANSFER_ENCODING, te)
                .body(Body::empty())
                .unwrap()
        };
        let res = app.clone().oneshot(request("chunked")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let res = app.oneshot(request("chunked, chunked")).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(res.headers()[header::CONNECTION], "close");
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "MALFORMED_REQUEST", "{body}");
        assert_eq!(body["error"]["name"], "BadRequestError", "{body}");
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(10, 3).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.admit("a", t0).is_ok());
        }
        let wait = limiter.admit("a", t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        // Another subject has its own bucket.
        assert!(limiter.admit("b", t0).is_ok());
        // 100 ms later one more event is allowed, not two.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.admit("a", t1).is_ok());
        assert!(limiter.admit("a", t1).is_err());
        assert!(RateLimiter::new(0, 5).is_none());
    }
}

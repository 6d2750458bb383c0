//! The browser side the gateway serves itself: `GET /client/live-set.js` (a dependency-free
//! ES module that keeps a live collection from a change stream) and `GET /demo` (a live
//! table with a form, built on it). Both are compiled in, so a pod needs no files on disk.
//! The module is the one the npm package `@changestream/live-set` ships
//! (`clients/live-set/live-set.js`), byte for byte.
//!
//! Not here: the change stream (`http`, `sse`) and the REST API the demo calls
//! (`publisher::api`, served by this process only in embedded mode).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use service::openapi::OpenApiRouter;
use utoipa::IntoParams;
use utoipa_axum::routes;

/// The ETag of a `&'static str`, as a `&'static str`, at compile time.
macro_rules! etag {
    ($body:expr) => {{
        const BYTES: [u8; 18] = etag_bytes(fnv1a($body.as_bytes()));
        match std::str::from_utf8(&BYTES) {
            Ok(tag) => tag,
            // Quotes and hex digits are ASCII; a failure here fails the build.
            Err(_) => panic!("ETag is not ASCII"),
        }
    }};
}

/// A file served as is, with a validator so a revisit costs a `304`.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    cache_control: &'static str,
    /// Strong ETag, a hash of the body computed at compile time.
    etag: &'static str,
}

/// The npm package's module itself (`clients/live-set`): one source for the package and for
/// what browsers load from a pod.
const LIVE_SET_JS: &str = include_str!("../../clients/live-set/live-set.js");
const DEMO_HTML: &str = include_str!("../assets/demo.html");

/// Five minutes fresh, then revalidated: the module's URL carries no version, so a new
/// gateway's copy reaches browsers within minutes without a rename.
static LIVE_SET: Asset = Asset {
    body: LIVE_SET_JS,
    content_type: "text/javascript; charset=utf-8",
    cache_control: "public, max-age=300",
    etag: etag!(LIVE_SET_JS),
};

/// The page is revalidated on every load (cheap with the ETag).
static DEMO: Asset = Asset {
    body: DEMO_HTML,
    content_type: "text/html; charset=utf-8",
    cache_control: "no-cache",
    etag: etag!(DEMO_HTML),
};

/// The asset routes, documented, to merge into the gateway's router (any state).
pub fn routes<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(live_set))
        .routes(routes!(demo))
}

/// A revalidation: the tag of the copy the client holds.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
#[expect(dead_code, reason = "describes what `serve` reads from the headers")]
struct Revalidate {
    /// The `ETag` of a copy got before: a 304 if it is still this one.
    #[param(rename = "If-None-Match", value_type = String, required = false)]
    if_none_match: Option<String>,
}

/// `live-set.js`: an ES module that keeps a live collection from a change stream.
///
/// Fresh for five minutes, then revalidated with its `ETag`.
#[utoipa::path(
    get,
    path = "/client/live-set.js",
    tag = "browser",
    operation_id = "liveSetJs",
    params(Revalidate),
    responses(
        (status = 200, description = "The module.", content_type = "text/javascript; charset=utf-8", body = String, headers(("ETag" = String))),
        (status = 304, description = "The client's copy is this one."),
    ),
)]
async fn live_set(headers: HeaderMap) -> Response {
    serve(&LIVE_SET, &headers)
}

/// The demo: a live table with a form, on `live-set.js` and the REST API.
///
/// Revalidated on every load with its `ETag`.
#[utoipa::path(
    get,
    path = "/demo",
    tag = "browser",
    operation_id = "demo",
    params(Revalidate),
    responses(
        (status = 200, description = "The page.", content_type = "text/html; charset=utf-8", body = String, headers(("ETag" = String))),
        (status = 304, description = "The client's copy is this one."),
    ),
)]
async fn demo(headers: HeaderMap) -> Response {
    serve(&DEMO, &headers)
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        ),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(asset.cache_control),
        ),
        (header::ETAG, HeaderValue::from_static(asset.etag)),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if not_modified(request, asset.etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, asset.body).into_response()
}

/// `If-None-Match` lists our tag (weak comparison, as RFC 9110 asks for GET) or is `*`.
fn not_modified(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// 64-bit FNV-1a, usable in a `const`.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `"` + 16 hex digits + `"`.
const fn etag_bytes(hash: u64) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::{Method, Request};
    use tower::ServiceExt;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::builder().uri(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        routes::<()>()
            .split_for_parts()
            .0
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header_of(response: &Response, name: header::HeaderName) -> &str {
        response.headers()[name].to_str().unwrap()
    }

    #[tokio::test]
    async fn live_set_is_served_as_a_cacheable_module() {
        let response = get("/client/live-set.js", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header_of(&response, header::CONTENT_TYPE),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            header_of(&response, header::CACHE_CONTROL),
            "public, max-age=300"
        );
        let etag = header_of(&response, header::ETAG).to_owned();
        assert_eq!(etag.len(), 18);
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        assert_eq!(body, LIVE_SET_JS.as_bytes());
        assert!(LIVE_SET_JS.contains("export function liveSet("));

        let again = get("/client/live-set.js", Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header_of(&again, header::ETAG), etag);
        let weak = get("/client/live-set.js", Some(&format!("\"x\", W/{etag}"))).await;
        assert_eq!(weak.status(), StatusCode::NOT_MODIFIED);
        let other = get("/client/live-set.js", Some("\"0000000000000000\"")).await;
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn demo_page_loads_the_module_relative_to_itself() {
        let response = get("/demo?collection=Orders", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header_of(&response, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-cache");
        assert_ne!(header_of(&response, header::ETAG), etag!(LIVE_SET_JS));
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let page = std::str::from_utf8(&body).unwrap();
        // Relative, so the demo works behind a path prefix too.
        assert!(page.contains("from './client/live-set.js'"));
    }

    #[tokio::test]
    async fn head_and_other_methods() {
        let head = routes::<()>()
            .split_for_parts()
            .0
            .oneshot(
                Request::builder()
                    .method(Method::HEAD)
                    .uri("/demo")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        let post = routes::<()>()
            .split_for_parts()
            .0
            .oneshot(
                Request::builder()
                    .method(Method::POST)
                    .uri("/demo")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn etag_is_the_quoted_hash() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(&etag_bytes(0x0123_4567_89ab_cdef), b"\"0123456789abcdef\"");
    }
}

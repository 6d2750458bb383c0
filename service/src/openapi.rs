//! The OpenAPI 3.1 document each server answers at `GET /openapi.json`, and the parts of it
//! both servers share: LoopBack's error shape ([`ErrorBody`]) and the refusals that carry
//! it ([`Refusal`]), the three ways a token is sent ([`takes_token`]), the request limits
//! every route enforces, and the route that serves the document ([`serve`]).
//!
//! One source of truth: a server registers each route with `utoipa_axum::routes!` on an
//! [`OpenApiRouter`], which adds the handler to the router and its `#[utoipa::path]` to the
//! document in the same step, so a route cannot be served undocumented: clippy's
//! `disallowed-methods` refuses axum's own `Router::route` (and the pass-through
//! `OpenApiRouter::route`), and `tests/tests/openapi.rs` calls every documented operation
//! and finds every other method on its path a 405. A route whose handler is a value, not a
//! function, goes through [`documented`]; LoopBack's second route to an operation through
//! [`alias`].
//!
//! Not here: the routes themselves (the publisher's REST API, the gateway's streams) and
//! what only one server answers (idempotency keys are the publisher's).

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};
use serde::Serialize;
use utoipa::openapi::path::{HttpMethod, Operation, PathItem, Paths};
use utoipa::openapi::response::Response;
use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder};
use utoipa::openapi::security::{SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Components, Info, OpenApi, Ref, RefOr, Tag};
use utoipa::{PartialSchema, Path as _, ToSchema};

pub use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use crate::auth::{TOKEN_COOKIE, TOKEN_QUERY_PARAM};

/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/openapi.json";

/// LoopBack's error answer, the body of every refusal:
/// `{"error":{"statusCode":400,"name":"BadRequestError","code":"INVALID_JSON","message":"..."}}`.
///
/// `ApiError` answers with this type, so the document's `Error` is what is sent.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// The HTTP status, repeated.
    #[schema(example = 400, minimum = 400, maximum = 599)]
    pub status_code: u16,
    /// LoopBack's name for the status.
    #[schema(example = "BadRequestError")]
    pub name: &'static str,
    /// What went wrong, for a program.
    #[schema(example = "INVALID_JSON")]
    pub code: &'static str,
    /// What went wrong, for a person; a 5xx never carries its internal cause.
    #[schema(example = "request body is not valid JSON: expected value at line 1 column 1")]
    pub message: String,
}

/// A collection's (a topic's) name, as [`proto::Topic::new`] accepts it.
#[derive(Debug)]
pub struct TopicName;

impl PartialSchema for TopicName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(proto::MAX_TOPIC_LEN))
            .pattern(Some(proto::TOPIC_PATTERN))
            .examples(["MyModels"])
            .into()
    }
}

impl ToSchema for TopicName {}

/// A refusal an operation can answer, in LoopBack's shape ([`ErrorBody`]): one entry of
/// the document's `components.responses`, referenced by the operations that answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    NotAcceptable,
    Conflict,
    PayloadTooLarge,
    UriTooLong,
    UnsupportedMediaType,
    UnprocessableEntity,
    TooManyRequests,
    HeaderFieldsTooLarge,
    Internal,
    Unavailable,
}

/// Every [`Refusal`], in status order: the document's `components.responses`.
const REFUSALS: [Refusal; 14] = [
    Refusal::BadRequest,
    Refusal::Unauthorized,
    Refusal::Forbidden,
    Refusal::NotFound,
    Refusal::NotAcceptable,
    Refusal::Conflict,
    Refusal::PayloadTooLarge,
    Refusal::UriTooLong,
    Refusal::UnsupportedMediaType,
    Refusal::UnprocessableEntity,
    Refusal::TooManyRequests,
    Refusal::HeaderFieldsTooLarge,
    Refusal::Internal,
    Refusal::Unavailable,
];

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Self::Conflict => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::UnprocessableEntity => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::HeaderFieldsTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Its name in `components.responses`.
    fn name(self) -> &'static str {
        match self {
            Self::BadRequest => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "NotFound",
            Self::NotAcceptable => "NotAcceptable",
            Self::Conflict => "Conflict",
            Self::PayloadTooLarge => "PayloadTooLarge",
            Self::UriTooLong => "UriTooLong",
            Self::UnsupportedMediaType => "UnsupportedMediaType",
            Self::UnprocessableEntity => "UnprocessableEntity",
            Self::TooManyRequests => "TooManyRequests",
            Self::HeaderFieldsTooLarge => "HeaderFieldsTooLarge",
            Self::Internal => "InternalError",
            Self::Unavailable => "Unavailable",
        }
    }

    /// When it is answered, with the `code`s it carries. An operation may say more in its
    /// own response of that status (which then wins over the shared one).
    fn description(self) -> &'static str {
        match self {
            Self::BadRequest => {
                "The request cannot be served as sent: bad JSON (`INVALID_JSON`), a body that is \
                 not an object, a bad topic, id, filter, `where` or query (`BAD_REQUEST`, \
                 `ID_MISMATCH`), a malformed `Idempotency-Key` (`BAD_IDEMPOTENCY_KEY`), or a \
                 body that cannot be delimited or read (`MALFORMED_REQUEST`, with `Connection: close`)."
            }
            Self::Unauthorized => {
                "Auth is on and the request has no valid token (`AUTHORIZATION_REQUIRED`); \
                 `WWW-Authenticate` says which."
            }
            Self::Forbidden => "The token has no grant for this topic (`ACCESS_DENIED`).",
            Self::NotFound => "No such record (`MODEL_NOT_FOUND`).",
            Self::NotAcceptable => {
                "The client accepts neither `text/event-stream` nor anything (`NOT_ACCEPTABLE`)."
            }
            Self::Conflict => {
                "The request conflicts with the collection's state (`DUPLICATE_ID`, `CONTENDED`, \
                 `ID_COUNTER_EXHAUSTED`, `RECORDS_NOT_KEPT`)."
            }
            Self::PayloadTooLarge => {
                "The body is over `body_limit` (`PAYLOAD_TOO_LARGE`), or the batch over \
                 `batch_max_items` / `batch_max_bytes` (`BATCH_TOO_LARGE`)."
            }
            Self::UriTooLong => "The URL is over `max_url_bytes` (`URI_TOO_LONG`).",
            Self::UnsupportedMediaType => {
                "`Content-Type` is not `application/json` (or `application/*+json`) \
                 (`UNSUPPORTED_MEDIA_TYPE`)."
            }
            Self::UnprocessableEntity => {
                "This `Idempotency-Key` was used for a different request (`IDEMPOTENCY_KEY_REUSED`)."
            }
            Self::TooManyRequests => {
                "The token's subject writes faster than `publish_rate` (`TOO_MANY_REQUESTS`); \
                 retry after `Retry-After` seconds."
            }
            Self::HeaderFieldsTooLarge => {
                "The headers are over `max_header_bytes`, or more than 100 fields \
                 (`REQUEST_HEADER_FIELDS_TOO_LARGE`)."
            }
            Self::Internal => "Redis answered something unexpected (`INTERNAL`).",
            Self::Unavailable => {
                "Redis is out of reach or too slow and nothing was written \
                 (`REDIS_UNAVAILABLE`), a read kept moving (`UNSETTLED`), or a write got no \
                 answer and ran in full or not at all (`OUTCOME_UNKNOWN`): retry, a write with \
                 the same `Idempotency-Key`."
            }
        }
    }

    /// The response headers it carries besides `Content-Type`.
    fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Unauthorized => &[(
                "WWW-Authenticate",
                "`Bearer`, or `Bearer error=\"invalid_token\"` for a token that was refused.",
            )],
            Self::TooManyRequests => &[("Retry-After", "Whole seconds until a write is admitted.")],
            Self::Unavailable => &[("Retry-After", "Always `1`.")],
            _ => &[],
        }
    }

    fn response(self) -> Response {
        let mut response = Response::new(self.description());
        response.content.insert(
            "application/json".to_owned(),
            utoipa::openapi::Content::new(Some(Ref::from_schema_name(ErrorBody::name()))),
        );
        for (name, description) in self.headers() {
            let mut header = utoipa::openapi::header::Header::new(Object::with_type(Type::String));
            header.description = Some((*description).to_owned());
            response.headers.insert((*name).to_owned(), header);
        }
        response
    }
}

/// Adds each of `refusals` to `operation`'s responses, as a reference to the shared
/// response, unless the operation describes that status itself.
pub fn refuses(operation: &mut Operation, refusals: &[Refusal]) {
    for refusal in refusals {
        operation
            .responses
            .responses
            .entry(refusal.status().as_u16().to_string())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(refusal.name())));
    }
}

/// Security scheme names: a token as `Authorization: Bearer`, the `access_token` cookie,
/// or the `access_token` query parameter (the first that is present counts).
const BEARER: &str = "bearer";
const COOKIE: &str = "cookie";
const QUERY: &str = "query";

/// Marks `operation` as one that reads a token when the server has auth on (and needs
/// none when it is off): every way of sending one, or none, and the 401 and 403 it then
/// answers.
pub fn takes_token(operation: &mut Operation) {
    let none: [&str; 0] = [];
    operation.security = Some(vec![
        SecurityRequirement::default(),
        SecurityRequirement::new(BEARER, none),
        SecurityRequirement::new(COOKIE, none),
        SecurityRequirement::new(QUERY, none),
    ]);
    refuses(operation, &[Refusal::Unauthorized, Refusal::Forbidden]);
}

/// Every operation of `paths`, with its method.
pub fn operations_mut(paths: &mut Paths) -> impl Iterator<Item = (HttpMethod, &mut Operation)> {
    paths.paths.values_mut().flat_map(item_operations)
}

fn item_operations(item: &mut PathItem) -> impl Iterator<Item = (HttpMethod, &mut Operation)> {
    [
        (HttpMethod::Get, item.get.as_mut()),
        (HttpMethod::Put, item.put.as_mut()),
        (HttpMethod::Post, item.post.as_mut()),
        (HttpMethod::Delete, item.delete.as_mut()),
        (HttpMethod::Options, item.options.as_mut()),
        (HttpMethod::Head, item.head.as_mut()),
        (HttpMethod::Patch, item.patch.as_mut()),
        (HttpMethod::Trace, item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.map(|o| (method, o)))
}

/// A route served by `method_router` and described by `P` (the type a `#[utoipa::path]`
/// generates): for a handler that is a value (a closure holding what it serves), which
/// `routes!` cannot name. `P`'s methods must be the ones `method_router` answers.
pub fn documented<P: utoipa::Path, S>(method_router: MethodRouter<S>) -> UtoipaMethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let mut paths = Paths::new();
    paths.add_path_operation(P::path(), P::methods(), P::operation());
    (Vec::new(), paths, method_router)
}

/// A second route to the operation `P` describes (LoopBack serves some operations on two
/// routes, such as `PUT /api/{c}` and `POST /api/{c}/replaceOrCreate`): `POST path` served
/// by `method_router`, described as `P`'s operation under its own `operation_id`, so the
/// two cannot drift apart.
pub fn alias<P: utoipa::Path, S>(
    path: &str,
    operation_id: &str,
    method_router: MethodRouter<S>,
) -> UtoipaMethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let mut operation = P::operation();
    let of = operation.operation_id.replace(operation_id.to_owned());
    if let (Some(summary), Some(of)) = (&mut operation.summary, of) {
        summary.push_str(&format!(" (`POST` route of `{of}`)"));
    }
    let mut paths = Paths::new();
    paths.add_path_operation(path, vec![HttpMethod::Post], operation);
    (Vec::new(), paths, method_router)
}

/// This document: the server's routes, their bodies, parameters, headers and refusals.
#[utoipa::path(
    get,
    path = DOCUMENT_PATH,
    tag = "meta",
    operation_id = "openapi",
    responses((status = 200, description = "This document (OpenAPI 3.1).", content_type = "application/json", body = Object)),
)]
#[expect(
    dead_code,
    reason = "only its description is used: the handler is a closure"
)]
fn document() {}

/// `router` with `GET /openapi.json` describing it, `info`, those of `tags` its operations
/// use, and what every route shares: the refusals of the request limits (414, 431, checked
/// before routing), the `Error` schema and responses, the token schemes. The document is
/// built and serialized once.
///
/// # Panics
/// If the document does not serialize, which a document of plain strings and maps cannot
/// fail to do.
pub fn serve<S>(router: OpenApiRouter<S>, info: Info, tags: &[(&str, &str)]) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let mut api = router.get_openapi().clone();
    api.paths.add_path_operation(
        DOCUMENT_PATH,
        vec![HttpMethod::Get],
        __path_document::operation(),
    );
    finish(&mut api, info, tags);
    // A tree of strings, numbers and maps with string keys: serde_json cannot fail on it.
    let json = api.to_json().expect("the OpenAPI document serializes");
    let handler = get(move || async move {
        ([(header::CONTENT_TYPE, "application/json")], json).into_response()
    });
    let (router, _) = router
        .routes(documented::<__path_document, S>(handler))
        .split_for_parts();
    router
}

/// The parts of the document no route adds itself.
fn finish(api: &mut OpenApi, info: Info, tags: &[(&str, &str)]) {
    api.info = info;
    for (_, operation) in operations_mut(&mut api.paths) {
        refuses(
            operation,
            &[Refusal::UriTooLong, Refusal::HeaderFieldsTooLarge],
        );
    }
    let components = api.components.get_or_insert_with(Components::new);
    components
        .schemas
        .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    let mut nested = Vec::new();
    ErrorBody::schemas(&mut nested);
    components.schemas.extend(nested);
    for refusal in REFUSALS {
        components
            .responses
            .insert(refusal.name().to_owned(), RefOr::T(refusal.response()));
    }
    let bearer = HttpBuilder::new()
        .scheme(HttpAuthScheme::Bearer)
        .bearer_format("JWT")
        .description(Some(
            "`Authorization: Bearer <jwt>`, when the server has auth on.",
        ))
        .build();
    components.add_security_scheme(BEARER, SecurityScheme::Http(bearer));
    components.add_security_scheme(
        COOKIE,
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            TOKEN_COOKIE,
            "The JWT in the `access_token` cookie (a browser's EventSource sends cookies).",
        ))),
    );
    components.add_security_scheme(
        QUERY,
        SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
            TOKEN_QUERY_PARAM,
            "The JWT as `?access_token=` (never logged).",
        ))),
    );
    // The tags the operations use, in `tags`' order (a fleet gateway has no REST routes).
    let used: std::collections::BTreeSet<String> = operations_mut(&mut api.paths)
        .flat_map(|(_, operation)| operation.tags.clone().unwrap_or_default())
        .collect();
    api.tags = Some(
        tags.iter()
            .filter(|(name, _)| used.contains(*name))
            .map(|(name, description)| {
                let mut tag = Tag::new(*name);
                tag.description = Some((*description).to_owned());
                tag
            })
            .collect(),
    );
}

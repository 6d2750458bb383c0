//! What `/openapi.json` says about the REST API beyond each handler's own
//! `#[utoipa::path]`: the schemas of records, ids, topics and changes (built from the
//! limits `proto` enforces), the path and query parameters, and what every operation
//! shares ([`describe_shared`]): the token, the refusals, and on every write the
//! `Idempotency-Key` request header and the `Idempotent-Replayed` answer header.
//!
//! Not here: the routes (the handlers in [`super`], registered with `routes!`), the error
//! shape and the limits' refusals (`service::openapi`).

use proto::{MAX_SAFE_INTEGER, MAX_STRING_ID_LEN};
use serde::Serialize;
use service::openapi::{Refusal, TopicName, operations_mut, refuses, takes_token};
use utoipa::openapi::path::{HttpMethod, Parameter, ParameterBuilder, ParameterIn, Paths};
use utoipa::openapi::schema::{
    AdditionalProperties, Array, Object, ObjectBuilder, OneOfBuilder, Schema, Type,
};
use utoipa::openapi::{RefOr, Required, header::Header};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use super::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, PublishRequest};

/// `{"count":N}`: what `count`, `updateAll` and `deleteById` answer.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Count {
    #[schema(minimum = 0)]
    pub count: usize,
}

/// `{"exists":true|false}`: LoopBack's `exists`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Exists {
    pub exists: bool,
}

/// `{"id":"<stream id>"}`: where a published change went in its topic's stream.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Published {
    #[schema(example = "1763892000000-0")]
    pub id: String,
}

/// A schema written with utoipa's builders: the type `$name`, its schema `$body`, and the
/// named schemas it refers to (`$dep`), which the document then holds too.
macro_rules! schema {
    ($(#[$doc:meta])* $name:ident [$($dep:ident),*] $body:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub(super) struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $body.into()
            }
        }

        impl ToSchema for $name {
            #[allow(unused_variables, reason = "a schema without references adds none")]
            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                $(
                    schemas.push(($dep::name().into_owned(), $dep::schema()));
                    $dep::schemas(schemas);
                )*
            }
        }
    };
}

/// A reference to the schema of `T`.
fn named<T: ToSchema>() -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name(T::name()))
}

fn integer_id() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(-MAX_SAFE_INTEGER))
        .maximum(Some(MAX_SAFE_INTEGER))
        .build()
}

fn string_id() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_STRING_ID_LEN))
        .description(Some(
            "Not one that reads as an integer (`\"7\"` is refused: `/api/X/7` is the integer 7).",
        ))
        .build()
}

/// An object whose properties are the client's own.
fn open_object(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::FreeForm(true)))
        .description(Some(description))
}

schema! {
    /// A record's id.
    RecordId []
    OneOfBuilder::new()
        .item(integer_id())
        .item(string_id())
        .description(Some(
            "An integer within JavaScript's safe range (what a browser's JSON.parse keeps \
             exact), or a string.",
        ))
}

schema! {
    /// A stored record.
    Record [RecordId]
    open_object("A record: the client's JSON object, keys in its order, with its `id` (last when assigned).")
        .property("id", named::<RecordId>())
        .required("id")
}

schema! {
    /// A record as a read answers it: whole, or only its filter's `fields`.
    FoundRecord [RecordId]
    open_object(
        "A record: the client's JSON object with its `id`, or only the properties the \
         filter's `fields` keep (which may leave out `id`).",
    )
    .property("id", named::<RecordId>())
}

schema! {
    /// A record as a client sends it.
    NewRecord [RecordId]
    open_object(
        "A record to write. Without an `id` (or with `\"id\": null`) one is assigned from the \
         collection's counter.",
    )
    .property("id", OneOfBuilder::new().item(named::<RecordId>()).item(Object::with_type(Type::Null)))
}

schema! {
    /// The properties a patch sets.
    RecordPatch []
    open_object("Properties to set; the others are kept. An `id`, if any, must be the record's.")
}

schema! {
    /// `create`'s body: one record, or an array written all or none.
    CreateBody [NewRecord]
    OneOfBuilder::new()
        .item(named::<NewRecord>())
        .item(Array::new(named::<NewRecord>()))
}

schema! {
    /// `create`'s answer.
    CreateAnswer [Record]
    OneOfBuilder::new()
        .item(named::<Record>())
        .item(Array::new(named::<Record>()))
}

schema! {
    /// LoopBack's change object, as the change stream sends it.
    Change [RecordId]
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "LoopBack's change: `{\"target\":1,\"data\":{...},\"type\":\"create\"}`, \
             `{\"target\":1,\"where\":{\"id\":1},\"type\":\"remove\"}`.",
        ))
        .property("target", named::<RecordId>())
        .required("target")
        .property("data", open_object("The whole record after the change (create, update)."))
        .property("where", open_object("What was removed (remove)."))
        .property(
            "type",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["create", "update", "remove"])),
        )
        .required("type")
}

schema! {
    /// `POST /publish`'s body.
    PublishBody [PublishRequest]
    OneOfBuilder::new()
        .item(named::<PublishRequest>())
        .item(Array::new(named::<PublishRequest>()))
}

schema! {
    /// `POST /publish`'s answer.
    PublishAnswer [Published]
    OneOfBuilder::new()
        .item(named::<Published>())
        .item(Array::new(named::<Published>()))
}

/// A collection.
#[derive(Debug, IntoParams)]
#[expect(
    dead_code,
    reason = "describes what the handlers read from the path and URI themselves"
)]
#[into_params(parameter_in = Path)]
pub(super) struct CollectionPath {
    /// The collection: LoopBack's model plural, and the topic its changes go to.
    #[param(value_type = TopicName)]
    pub collection: String,
}

/// One record of a collection.
#[derive(Debug, IntoParams)]
#[expect(
    dead_code,
    reason = "describes what the handlers read from the path and URI themselves"
)]
#[into_params(parameter_in = Path)]
pub(super) struct ItemPath {
    /// The collection: LoopBack's model plural, and the topic its changes go to.
    #[param(value_type = TopicName)]
    pub collection: String,
    /// The record's id: digits are the integer id, anything else a string id.
    #[param(value_type = RecordId)]
    pub id: String,
}

/// LoopBack's `filter`.
#[derive(Debug, IntoParams)]
#[expect(
    dead_code,
    reason = "describes what the handlers read from the path and URI themselves"
)]
#[into_params(parameter_in = Query)]
pub(super) struct FilterQuery {
    /// LoopBack's filter as JSON (`{"where":{"status":"open"},"order":"n DESC","limit":10}`:
    /// `where`, `fields`, `order`, `limit`, `skip`/`offset`), or in the bracket form
    /// (`filter[where][status]=open&filter[limit]=10`). `include` is refused.
    pub filter: Option<String>,
}

/// LoopBack's `where`, optional: every record without it.
#[derive(Debug, IntoParams)]
#[expect(
    dead_code,
    reason = "describes what the handlers read from the path and URI themselves"
)]
#[into_params(parameter_in = Query, names("where"))]
pub(super) struct WhereQuery(
    /// The records to count, as JSON (`{"status":"open"}`) or in the bracket form
    /// (`where[status]=open`); every record without it.
    pub Option<String>,
);

/// LoopBack's `where`, required: a write says what it selects.
#[derive(Debug, IntoParams)]
#[expect(
    dead_code,
    reason = "describes what the handlers read from the path and URI themselves"
)]
#[into_params(parameter_in = Query, names("where"))]
pub(super) struct RequiredWhere(
    /// The records to write, as JSON (`{"status":"open"}`) or in the bracket form
    /// (`where[status]=open`); `{}` selects every record. Without it: 400.
    pub String,
);

fn idempotency_key() -> Parameter {
    ParameterBuilder::new()
        .name(IDEMPOTENCY_KEY.as_str())
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "1 to 255 visible ASCII characters (a UUID will do). A retry with the same key and \
             request answers the first answer again and writes nothing; the same key with \
             another request is a 422. Kept `idempotency_ttl` (24h), per collection and token \
             subject.",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(255))
                .pattern(Some("^[!-~]+$")),
        ))
        .build()
}

fn replayed() -> Header {
    let mut header = Header::new(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["true"])),
    );
    header.description = Some(
        "`true` when this is the first answer under the request's `Idempotency-Key`, given \
         again: nothing was written this time."
            .to_owned(),
    );
    header
}

/// Adds what every REST operation shares: a token when auth is on, the refusals every
/// request may get (a bad request, Redis unreachable), and on every write (each method but
/// `GET` and `HEAD`, as each write handler reads the key) the `Idempotency-Key` header, its
/// 422, the rate limit's 429, the body's 413 and 415, and `Idempotent-Replayed` on the 200.
pub(super) fn describe_shared(paths: &mut Paths) {
    for (method, operation) in operations_mut(paths) {
        takes_token(operation);
        refuses(
            operation,
            &[Refusal::BadRequest, Refusal::Internal, Refusal::Unavailable],
        );
        if matches!(method, HttpMethod::Get | HttpMethod::Head) {
            continue;
        }
        operation
            .parameters
            .get_or_insert_with(Vec::new)
            .push(idempotency_key());
        refuses(
            operation,
            &[Refusal::UnprocessableEntity, Refusal::TooManyRequests],
        );
        if operation.request_body.is_some() {
            refuses(
                operation,
                &[Refusal::PayloadTooLarge, Refusal::UnsupportedMediaType],
            );
        }
        if let Some(RefOr::T(ok)) = operation.responses.responses.get_mut("200") {
            ok.headers
                .insert(IDEMPOTENT_REPLAYED.as_str().to_owned(), replayed());
        }
    }
}

/// The document's `info`.
pub(super) fn document_info() -> utoipa::openapi::Info {
    let mut info = utoipa::openapi::Info::new("publisher", env!("CARGO_PKG_VERSION"));
    info.description = Some(DOCUMENT_DESCRIPTION.to_owned());
    info
}

const DOCUMENT_DESCRIPTION: &str = "The publisher's REST API: the routes of a LoopBack 3 \
    `PersistedModel`, each write stored with its change event in one atomic step on Redis. \
    Every refusal is LoopBack's JSON error (`Error`) and writes nothing, but a 503 \
    `OUTCOME_UNKNOWN` (a write whose answer was lost: retry it with its `Idempotency-Key`); an \
    unknown path is a 404 (`NOT_FOUND`), a known path with another method a 405 \
    (`METHOD_NOT_ALLOWED`).";

/// The document's tags: what each group of operations is.
pub(super) const TAGS: &[(&str, &str)] = &[
    (
        "records",
        "LoopBack 3 `PersistedModel` routes over a collection; every write publishes the change LoopBack's change stream emits for it.",
    ),
    (
        "publish",
        "Changes published as given, for a backend that keeps its records itself.",
    ),
    ("health", "Liveness, readiness and metrics."),
    ("meta", "This document."),
];

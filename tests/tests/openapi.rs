//! `GET /openapi.json` against what each server really serves: the publisher, the gateway
//! in embedded mode and the gateway of a fleet. For each:
//!
//! - the document lists exactly the routes (method and path) the README's REST table and
//!   the gateway's own routes name, no more and no fewer;
//! - every documented operation, called, answers one of the statuses documented for it
//!   (never the router's own 404 or 405), with a documented content type and the
//!   documented headers;
//! - every other method on a documented path is the router's 405: the router serves
//!   nothing on those paths that the document does not show.
//!
//! The document's validity against the OpenAPI 3.1 schema is checked by a real validator
//! (`tests/openapi`, run by `scripts/test`).

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};
use system_tests::{Gateway, Publisher, RedisServer, http, within};

/// The REST routes of a LoopBack 3 `PersistedModel` (README, "The publisher REST API"),
/// `/publish`, health and the document itself: what the publisher serves.
const PUBLISHER: &[(&str, &str)] = &[
    ("GET", "/api/{collection}"),
    ("POST", "/api/{collection}"),
    ("PATCH", "/api/{collection}"),
    ("PUT", "/api/{collection}"),
    ("POST", "/api/{collection}/replaceOrCreate"),
    ("POST", "/api/{collection}/upsertWithWhere"),
    ("POST", "/api/{collection}/update"),
    ("GET", "/api/{collection}/count"),
    ("GET", "/api/{collection}/findOne"),
    ("GET", "/api/{collection}/{id}"),
    ("HEAD", "/api/{collection}/{id}"),
    ("PUT", "/api/{collection}/{id}"),
    ("PATCH", "/api/{collection}/{id}"),
    ("DELETE", "/api/{collection}/{id}"),
    ("GET", "/api/{collection}/{id}/exists"),
    ("POST", "/api/{collection}/{id}/replace"),
    ("POST", "/publish"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

/// What every gateway serves, in either mode.
const GATEWAY: &[(&str, &str)] = &[
    ("GET", "/api/{collection}/change-stream"),
    ("POST", "/api/{collection}/change-stream"),
    ("GET", "/events"),
    ("GET", "/client/live-set.js"),
    ("GET", "/demo"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/readyz/redis"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

/// The methods a path may answer; those a path's document does not list must be a 405.
/// (`HEAD` is left out: axum answers it wherever it answers `GET`, as HTTP asks.)
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

const COLLECTION: &str = "Things";

/// The server's document, checked to be OpenAPI 3.1.
async fn document(base: &str) -> anyhow::Result<Value> {
    let response = within(
        "GET /openapi.json",
        http().get(format!("{base}/openapi.json")).send(),
    )
    .await??
    .error_for_status()?;
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE].to_str()?;
    assert_eq!(content_type, "application/json");
    let document: Value = within("document body", response.json()).await??;
    assert_eq!(document["openapi"], "3.1.0");
    Ok(document)
}

/// Every (method, path) the document lists.
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            found.insert((method.to_uppercase(), path.clone()));
        }
    }
    found
}

fn expected(lists: &[&[(&str, &str)]]) -> BTreeSet<(String, String)> {
    lists
        .iter()
        .flat_map(|list| list.iter())
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect()
}

/// A request for `operation`: sample path parameters, its required query parameters and,
/// if it takes a body, one it can accept.
fn request(method: &str, path: &str, operation: &Value) -> (Method, String, Option<Value>) {
    let path = path
        .replace("{collection}", COLLECTION)
        .replace("{id}", "1");
    let mut query = Vec::new();
    for parameter in operation["parameters"].as_array().into_iter().flatten() {
        if parameter["in"] == "query" && parameter["required"] == true {
            let name = parameter["name"].as_str().expect("parameter name");
            let value = match name {
                "where" => "{}",
                "topic" => COLLECTION,
                other => panic!("no sample value for the required query parameter {other}"),
            };
            query.push(format!("{name}={value}"));
        }
    }
    let url = if query.is_empty() {
        path
    } else {
        format!("{path}?{}", query.join("&"))
    };
    let body = operation
        .get("requestBody")
        .map(|_| match operation["operationId"].as_str() {
            Some("publish") => json!({
                "topic": "Feed",
                "change": {"target": 1, "data": {"id": 1}, "type": "create"},
            }),
            _ => json!({"n": 1}),
        });
    (
        Method::from_bytes(method.as_bytes()).expect("method"),
        url,
        body,
    )
}

/// `response`, resolved if it is a `$ref` to `components.responses`.
fn resolved<'a>(document: &'a Value, response: &'a Value) -> &'a Value {
    match response["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/responses/")
                .expect("a response reference");
            &document["components"]["responses"][name]
        }
        None => response,
    }
}

/// Calls every documented operation and checks its answer against the document.
async fn answers_as_documented(base: &str, document: &Value) -> anyhow::Result<()> {
    let client = http();
    let all = operations(document);
    if all.contains(&("POST".to_owned(), "/api/{collection}".to_owned())) {
        // A record to find, replace and patch (deleted last).
        within(
            "seed",
            client
                .post(format!("{base}/api/{COLLECTION}"))
                .json(&json!({"id": 1, "n": 0}))
                .send(),
        )
        .await??
        .error_for_status()?;
    }
    let (deletes, others): (Vec<_>, Vec<_>) = all.into_iter().partition(|(m, _)| m == "DELETE");
    for (method, path) in others.into_iter().chain(deletes) {
        let operation = &document["paths"][&path][method.to_lowercase()];
        let (verb, url, body) = request(&method, &path, operation);
        let mut call = client.request(verb, format!("{base}{url}"));
        if let Some(body) = &body {
            call = call.json(body);
        }
        let answer = within(&format!("{method} {url}"), call.send()).await??;
        let status = answer.status().as_u16();
        let documented = &operation["responses"][status.to_string()];
        let headers = answer.headers().clone();
        assert!(
            !documented.is_null(),
            "{method} {url} answered {status}, which its operation does not document"
        );
        let documented = resolved(document, documented);
        for name in documented["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|h| h.0)
        {
            // Sent on replays only.
            if name != "idempotent-replayed" {
                assert!(
                    headers.contains_key(name.as_str()),
                    "{method} {url} answered {status} without its documented header {name}"
                );
            }
        }
        let streams = headers
            .get(reqwest::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if let Some(content) = documented["content"].as_object()
            && method != "HEAD"
        {
            let got = headers
                .get(reqwest::header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap_or("").to_owned())
                .unwrap_or_default();
            let essence = |t: &str| t.split(';').next().unwrap_or("").trim().to_owned();
            assert!(
                content.keys().any(|t| essence(t) == essence(&got)),
                "{method} {url} answered {status} as {got:?}; documented: {:?}",
                content.keys().collect::<Vec<_>>()
            );
        }
        // An event stream never ends: its head is the answer. Any other body is read, and
        // an error names the route's own refusal, never the router's.
        if !streams {
            let text = within(&format!("{method} {url} body"), answer.text()).await??;
            if let Ok(error) = serde_json::from_str::<Value>(&text) {
                let code = &error["error"]["code"];
                assert!(
                    code != "NOT_FOUND" && code != "METHOD_NOT_ALLOWED",
                    "{method} {url} fell through to the router's fallback: {text}"
                );
            }
        }
    }
    Ok(())
}

/// Every method a documented path does not list is the router's 405.
async fn serves_nothing_undocumented(base: &str, document: &Value) -> anyhow::Result<()> {
    let client = http();
    let listed = operations(document);
    for path in document["paths"].as_object().expect("paths").keys() {
        for method in METHODS {
            if listed.contains(&(method.to_owned(), path.clone())) {
                continue;
            }
            let url = path
                .replace("{collection}", COLLECTION)
                .replace("{id}", "1");
            let verb = Method::from_bytes(method.as_bytes())?;
            let answer = within(
                &format!("{method} {url}"),
                client.request(verb, format!("{base}{url}")).send(),
            )
            .await??;
            assert_eq!(
                answer.status().as_u16(),
                405,
                "{method} {url} is served but not documented"
            );
        }
    }
    Ok(())
}

async fn check(base: &str, expected_routes: &BTreeSet<(String, String)>) -> anyhow::Result<()> {
    let document = document(base).await?;
    assert_eq!(&operations(&document), expected_routes);
    answers_as_documented(base, &document).await?;
    serves_nothing_undocumented(base, &document).await
}

#[tokio::test]
async fn the_publisher_documents_what_it_serves() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    check(&publisher.url(""), &expected(&[PUBLISHER])).await?;
    publisher.stop().await
}

#[tokio::test]
async fn the_embedded_gateway_documents_the_rest_api_and_its_streams() -> anyhow::Result<()> {
    let gateway = Gateway::start_with(None, |_| {}).await?;
    check(&gateway.url(""), &expected(&[PUBLISHER, GATEWAY])).await?;
    gateway.stop().await
}

#[tokio::test]
async fn a_fleet_gateway_documents_its_streams_only() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let gateway = Gateway::start(&redis.url()).await?;
    check(&gateway.url(""), &expected(&[GATEWAY])).await?;
    gateway.stop().await
}

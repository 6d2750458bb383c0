//! Who may subscribe and publish, with real parts: Redis, the publisher and gateways
//! configured the way the binaries read their environment, tokens minted here with keys
//! generated at run time (none are committed).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use redis::AsyncCommands;
use serde_json::{Value, json};
use system_tests::{
    Gateway, LoggedProcess, Publisher, RedisServer, SseClient, http, poll_until, stream_http,
    within,
};

const SECRET: &str = "auth-tests-hs256-secret-of-at-least-32-bytes";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn claims(subscribe: &[&str], publish: &[&str], exp: u64) -> Value {
    json!({"sub": "user-42", "exp": exp, "topics": {"subscribe": subscribe, "publish": publish}})
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("token encodes")
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

/// A token for `subscribe` / `publish`, valid for a minute.
fn token(subscribe: &[&str], publish: &[&str]) -> String {
    hs256(&claims(subscribe, publish, now() + 60))
}

/// `token` with one character in the middle of its signature changed.
fn tamper(token: &str) -> String {
    let at = token.rfind('.').expect("three parts") + 10;
    let flipped = if &token[at..=at] == "A" { "B" } else { "A" };
    format!("{}{flipped}{}", &token[..at], &token[at + 1..])
}

/// Gateway settings for an HS256 fleet; streams end exactly at `exp` (no leeway).
fn gateway_settings() -> Vec<(&'static str, &'static str)> {
    vec![
        ("GATEWAY_JWT_SECRET", SECRET),
        ("GATEWAY_JWT_LEEWAY", "0s"),
        ("GATEWAY_PUBLIC_TOPICS", "Public*, Announcements"),
    ]
}

fn stream_url(gateway: &Gateway, topic: &str) -> String {
    gateway.url(&format!("/api/{topic}/change-stream?_format=event-stream"))
}

/// A stream request as EventSource sends it.
fn stream_request(url: &str) -> reqwest::RequestBuilder {
    stream_http().get(url).header("accept", "text/event-stream")
}

/// Sends `req` and checks a LoopBack-shaped refusal with `status`; returns the error body.
async fn refused(req: reqwest::RequestBuilder, status: u16) -> anyhow::Result<Value> {
    let res = within("request", req.send()).await??;
    assert_eq!(res.status(), status, "{:?}", res.url());
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    if status == 401 {
        let challenge = challenge.expect("a 401 carries WWW-Authenticate");
        assert!(challenge.starts_with("Bearer"), "{challenge}");
    } else {
        assert_eq!(challenge, None);
    }
    let body: Value = within("error body", res.json()).await??;
    assert_eq!(body["error"]["statusCode"], status, "{body}");
    let code = if status == 401 {
        "AUTHORIZATION_REQUIRED"
    } else {
        "ACCESS_DENIED"
    };
    assert_eq!(body["error"]["code"], code, "{body}");
    Ok(body)
}

/// Creates a record in `topic` through the publisher with a publish token; its event id
/// comes back on the stream.
async fn create(publisher: &Publisher, topic: &str, body: Value) -> anyhow::Result<Value> {
    let res = http()
        .post(publisher.url(&format!("/api/{topic}")))
        .bearer_auth(token(&[], &[topic]))
        .json(&body)
        .send()
        .await?
        .error_for_status()?;
    Ok(res.json().await?)
}

/// The next `data` event's id and data.
async fn next_change(client: &mut SseClient) -> anyhow::Result<(String, Value)> {
    let frame = client.next_event().await?;
    assert_eq!(frame.event.as_deref(), Some("data"), "{frame:?}");
    Ok((
        frame.id.expect("changes carry ids"),
        serde_json::from_str(frame.data.as_deref().unwrap_or(""))?,
    ))
}

struct Fleet {
    redis: RedisServer,
    publisher: Publisher,
    gateway: Gateway,
}

async fn fleet() -> anyhow::Result<Fleet> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start_env(&redis.url(), &[("PUBLISHER_JWT_SECRET", SECRET)]).await?;
    let gateway = Gateway::start_env(Some(&redis.url()), &gateway_settings()).await?;
    Ok(Fleet {
        redis,
        publisher,
        gateway,
    })
}

#[tokio::test]
async fn a_valid_token_reads_its_topic_from_header_cookie_or_query() -> anyhow::Result<()> {
    let Fleet {
        redis: _redis,
        publisher,
        gateway,
    } = fleet().await?;
    let reader = token(&["MyModels"], &[]);
    let url = stream_url(&gateway, "MyModels");
    let mut clients = vec![
        SseClient::open(stream_request(&url).bearer_auth(&reader)).await?,
        SseClient::open(
            stream_request(&url).header("cookie", format!("theme=dark; access_token={reader}")),
        )
        .await?,
        SseClient::open(stream_request(&format!("{url}&access_token={reader}"))).await?,
    ];
    // Public topics need no token; a wildcard pattern in the token works too.
    let mut public = SseClient::connect(&stream_url(&gateway, "PublicNews"), None).await?;
    let orders = stream_url(&gateway, "Orders-2024");
    let mut orders =
        SseClient::open(stream_request(&orders).bearer_auth(token(&["Orders*"], &[]))).await?;

    create(&publisher, "MyModels", json!({"foo": "bar"})).await?;
    create(&publisher, "PublicNews", json!({"headline": "hi"})).await?;
    create(&publisher, "Orders-2024", json!({"total": 3})).await?;
    for client in &mut clients {
        let (_, change) = next_change(client).await?;
        assert_eq!(
            change,
            json!({"target": 1, "data": {"foo": "bar", "id": 1}, "type": "create"})
        );
    }
    assert_eq!(next_change(&mut public).await?.1["data"]["headline"], "hi");
    assert_eq!(next_change(&mut orders).await?.1["data"]["total"], 3);

    // No token on a private topic: 401, for GET and POST alike.
    let body = refused(stream_request(&url), 401).await?;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("access_token"),
        "{body}"
    );
    refused(
        stream_http()
            .post(gateway.url("/api/MyModels/change-stream"))
            .header("accept", "text/event-stream"),
        401,
    )
    .await?;
    // Operations routes never need one.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let res = http().get(gateway.url(path)).send().await?;
        assert_eq!(res.status(), 200, "{path}");
    }
    Ok(())
}

#[tokio::test]
async fn a_token_for_one_topic_cannot_read_another_not_even_by_resuming() -> anyhow::Result<()> {
    let Fleet {
        redis: _redis,
        publisher,
        gateway,
    } = fleet().await?;
    let mut secret_reader = SseClient::open(
        stream_request(&stream_url(&gateway, "Secrets")).bearer_auth(token(&["Secrets"], &[])),
    )
    .await?;
    create(&publisher, "Secrets", json!({"n": 1})).await?;
    let (first, _) = next_change(&mut secret_reader).await?;
    create(&publisher, "Secrets", json!({"n": 2})).await?;
    next_change(&mut secret_reader).await?;

    let other = token(&["MyModels", "Secret"], &["Secrets"]);
    let url = stream_url(&gateway, "Secrets");
    let body = refused(stream_request(&url).bearer_auth(&other), 403).await?;
    assert_eq!(
        body["error"]["message"],
        "this access token may not subscribe to Secrets"
    );
    refused(
        stream_http()
            .post(gateway.url("/api/Secrets/change-stream"))
            .bearer_auth(&other),
        403,
    )
    .await?;
    // Resume goes through the same check, header or query, before the id is even read.
    for last in [first.as_str(), "not-an-id"] {
        refused(
            stream_request(&url)
                .bearer_auth(&other)
                .header("last-event-id", last),
            403,
        )
        .await?;
        refused(
            stream_request(&format!("{url}&last_event_id={last}")).bearer_auth(&other),
            403,
        )
        .await?;
        refused(stream_request(&url).header("last-event-id", last), 401).await?;
    }

    // The right token resumes exactly after `first`.
    let mut resumed = SseClient::open(
        stream_request(&url)
            .bearer_auth(token(&["Secrets"], &[]))
            .header("last-event-id", &first),
    )
    .await?;
    assert_eq!(next_change(&mut resumed).await?.1["data"]["n"], 2);
    Ok(())
}

#[tokio::test]
async fn every_topic_of_a_multi_topic_stream_is_checked_including_on_resume() -> anyhow::Result<()>
{
    let Fleet {
        redis: _redis,
        publisher,
        gateway,
    } = fleet().await?;
    let url = gateway.url("/events?topic=Orders&topic=Secrets&topic=PublicNews");
    // Both private topics granted (the public one needs no grant): it streams.
    let both = token(&["Orders*", "Secrets"], &[]);
    let mut reader = SseClient::open(stream_request(&url).bearer_auth(&both)).await?;
    create(&publisher, "Secrets", json!({"n": 1})).await?;
    let frame = reader.next_event().await?;
    let cursor = frame.id.expect("a cursor");
    assert!(
        frame
            .data
            .as_deref()
            .unwrap_or("")
            .contains("\"topic\":\"Secrets\"")
    );

    // A grant for Orders alone: 403 naming Secrets, with or without the cursor.
    let orders_only = token(&["Orders"], &[]);
    let body = refused(stream_request(&url).bearer_auth(&orders_only), 403).await?;
    assert_eq!(
        body["error"]["message"],
        "this access token may not subscribe to Secrets"
    );
    refused(
        stream_request(&url)
            .bearer_auth(&orders_only)
            .header("last-event-id", &cursor),
        403,
    )
    .await?;
    refused(
        stream_request(&format!("{url}&last_event_id={cursor}")).bearer_auth(&orders_only),
        403,
    )
    .await?;
    // No token: 401, even though one topic is public.
    refused(stream_request(&url).header("last-event-id", &cursor), 401).await?;
    // Public topics alone need no token.
    SseClient::open(stream_request(
        &gateway.url("/events?topic=PublicNews&topic=Announcements"),
    ))
    .await?;

    // The full grant resumes after the cursor.
    create(&publisher, "Orders", json!({"n": 2})).await?;
    let mut resumed = SseClient::open(
        stream_request(&url)
            .bearer_auth(&both)
            .header("last-event-id", &cursor),
    )
    .await?;
    let frame = resumed.next_event().await?;
    let change: Value = serde_json::from_str(frame.data.as_deref().unwrap_or(""))?;
    assert_eq!(
        (change["topic"].as_str(), change["data"]["n"].as_u64()),
        (Some("Orders"), Some(2))
    );
    Ok(())
}

#[tokio::test]
async fn an_expired_token_is_refused_and_an_open_stream_ends_at_expiry() -> anyhow::Result<()> {
    let Fleet {
        redis: _redis,
        publisher,
        gateway,
    } = fleet().await?;
    let url = stream_url(&gateway, "MyModels");
    let expired = hs256(&claims(&["MyModels"], &[], now() - 30));
    let body = refused(stream_request(&url).bearer_auth(&expired), 401).await?;
    assert_eq!(body["error"]["message"], "the access token has expired");

    // A token good for about two more seconds.
    let exp = now() + 2;
    let short = hs256(&claims(&["MyModels"], &[], exp));
    let mut client = SseClient::open(stream_request(&url).bearer_auth(&short)).await?;
    create(&publisher, "MyModels", json!({"n": 1})).await?;
    let (last, _) = next_change(&mut client).await?;
    // Nothing more is sent; the response ends (cleanly) once the token expires.
    while let Some(frame) = client.next_frame().await? {
        assert!(!frame.is_event(), "{frame:?}");
    }
    let ended = SystemTime::now();
    assert!(
        ended + Duration::from_millis(50) >= UNIX_EPOCH + Duration::from_secs(exp),
        "ended before exp"
    );

    // The same token is now refused; a fresh one resumes where the stream ended.
    refused(stream_request(&url).bearer_auth(&short), 401).await?;
    create(&publisher, "MyModels", json!({"n": 2})).await?;
    let mut resumed = SseClient::open(
        stream_request(&url)
            .bearer_auth(token(&["MyModels"], &[]))
            .header("last-event-id", &last),
    )
    .await?;
    assert_eq!(next_change(&mut resumed).await?.1["data"]["n"], 2);
    Ok(())
}

#[tokio::test]
async fn tampered_forged_and_unsigned_tokens_are_refused() -> anyhow::Result<()> {
    let gateway = Gateway::start_env(None, &gateway_settings()).await?;
    let url = stream_url(&gateway, "MyModels");
    let good = token(&["MyModels"], &[]);
    SseClient::open(stream_request(&url).bearer_auth(&good)).await?;

    // The claims of another token under this token's signature.
    let parts: Vec<&str> = good.split('.').collect();
    let wider = hs256(&claims(&["*"], &["*"], now() + 3600));
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        wider.split('.').nth(1).expect("payload"),
        parts[2]
    );
    let other_secret = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"some-other-secret-that-is-32-bytes-long"),
        &claims(&["MyModels"], &[], now() + 60),
    );
    let hs512 = sign(
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims(&["MyModels"], &[], now() + 60),
    );
    // {"alg":"none","typ":"JWT"}, the claims, no signature.
    let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
    let no_exp = hs256(&json!({"topics": {"subscribe": ["MyModels"]}}));
    for (name, bad) in [
        ("tampered signature", tamper(&good)),
        ("swapped claims", swapped),
        ("another secret", other_secret),
        ("HS512", hs512),
        ("alg none", unsigned),
        ("no exp", no_exp),
        ("garbage", "not-a-token".to_owned()),
    ] {
        let body = refused(stream_request(&url).bearer_auth(&bad), 401).await?;
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.starts_with("the access token is invalid"),
            "{name}: {message}"
        );
        assert!(
            !message.contains(&bad),
            "{name}: the message quotes the token"
        );
        // From the query and the cookie alike.
        refused(stream_request(&format!("{url}&access_token={bad}")), 401).await?;
        refused(
            stream_request(&url).header("cookie", format!("access_token={bad}")),
            401,
        )
        .await?;
    }
    // A present token is checked even where none is needed.
    refused(
        stream_request(&stream_url(&gateway, "Announcements")).bearer_auth(tamper(&good)),
        401,
    )
    .await?;
    gateway.stop().await
}

/// A key pair in PEM: the private key signs tokens here, the public one goes to a file the
/// gateway reads.
struct KeyPair {
    private_pem: String,
    public_pem: String,
}

async fn rsa_keys() -> anyhow::Result<KeyPair> {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    tokio::task::spawn_blocking(|| {
        let private = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)?;
        Ok(KeyPair {
            private_pem: private.to_pkcs1_pem(LineEnding::LF)?.to_string(),
            public_pem: private.to_public_key().to_public_key_pem(LineEnding::LF)?,
        })
    })
    .await?
}

fn p256_keys() -> anyhow::Result<KeyPair> {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    Ok(KeyPair {
        private_pem: secret.to_pkcs8_pem(LineEnding::LF)?.to_string(),
        public_pem: secret.public_key().to_public_key_pem(LineEnding::LF)?,
    })
}

/// Whether a stream opens (200) or is refused with 401.
async fn opens(url: &str, token: &str) -> anyhow::Result<bool> {
    let res = within("stream", stream_request(url).bearer_auth(token).send()).await??;
    match res.status().as_u16() {
        200 => Ok(true),
        401 => Ok(false),
        other => anyhow::bail!("unexpected status {other}"),
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_against_the_configured_public_key() -> anyhow::Result<()> {
    let (rsa, ec) = (rsa_keys().await?, p256_keys()?);
    let dir = tempfile::tempdir()?;
    let rsa_file = dir.path().join("rsa.pem");
    let ec_file = dir.path().join("ec.pem");
    std::fs::write(&rsa_file, &rsa.public_pem)?;
    std::fs::write(&ec_file, &ec.public_pem)?;
    let rsa_gateway = Gateway::start_env(
        None,
        &[(
            "GATEWAY_JWT_PUBLIC_KEY_FILE",
            rsa_file.to_str().expect("utf-8"),
        )],
    )
    .await?;
    // A public key and a secret together: tokens of either algorithm.
    let ec_gateway = Gateway::start_env(
        None,
        &[
            (
                "GATEWAY_JWT_PUBLIC_KEY_FILE",
                ec_file.to_str().expect("utf-8"),
            ),
            ("GATEWAY_JWT_SECRET", SECRET),
        ],
    )
    .await?;

    let grant = claims(&["MyModels"], &[], now() + 60);
    let rs256 = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(rsa.private_pem.as_bytes())?,
        &grant,
    );
    let es256 = sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(ec.private_pem.as_bytes())?,
        &grant,
    );
    let hs = hs256(&grant);
    // Algorithm confusion: an HS256 token keyed with the public key's PEM text.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(rsa.public_pem.as_bytes()),
        &grant,
    );
    let rsa_url = stream_url(&rsa_gateway, "MyModels");
    assert!(opens(&rsa_url, &rs256).await?);
    assert!(!opens(&rsa_url, &es256).await?);
    assert!(!opens(&rsa_url, &hs).await?);
    assert!(!opens(&rsa_url, &confused).await?);
    assert!(!opens(&rsa_url, &tamper(&rs256)).await?);
    let ec_url = stream_url(&ec_gateway, "MyModels");
    assert!(opens(&ec_url, &es256).await?);
    assert!(opens(&ec_url, &hs).await?);
    assert!(!opens(&ec_url, &rs256).await?);
    assert!(!opens(&ec_url, &tamper(&es256)).await?);

    // An RS256 token without the grant is still a 403, not a 401.
    let elsewhere = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(rsa.private_pem.as_bytes())?,
        &claims(&["Other"], &[], now() + 60),
    );
    refused(stream_request(&rsa_url).bearer_auth(&elsewhere), 403).await?;
    rsa_gateway.stop().await?;
    ec_gateway.stop().await
}

/// Every key in Redis with its type and size, to show that refusals wrote nothing.
async fn redis_state(redis: &RedisServer) -> anyhow::Result<Vec<(String, String, i64)>> {
    let mut conn = redis.connection().await?;
    let mut keys: Vec<String> = conn.keys("*").await?;
    keys.sort();
    let mut state = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut conn).await?;
        let size: i64 = match kind.as_str() {
            "hash" => conn.hlen(&key).await?,
            "stream" => conn.xlen(&key).await?,
            _ => conn.get::<_, Option<i64>>(&key).await?.unwrap_or(-1),
        };
        state.push((key, kind, size));
    }
    Ok(state)
}

#[tokio::test]
async fn the_publisher_refuses_without_a_publish_grant_and_writes_nothing() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start_env(&redis.url(), &[("PUBLISHER_JWT_SECRET", SECRET)]).await?;
    let client = http();
    let mutations = |client: &reqwest::Client| {
        vec![
            client
                .post(publisher.url("/api/Orders"))
                .json(&json!({"total": 1})),
            client
                .put(publisher.url("/api/Orders/1"))
                .json(&json!({"total": 2})),
            client
                .patch(publisher.url("/api/Orders/1"))
                .json(&json!({"total": 3})),
            client.delete(publisher.url("/api/Orders/1")),
            client.post(publisher.url("/publish")).json(&json!({
                "topic": "Orders",
                "change": {"target": 9, "data": {"id": 9}, "type": "create"}
            })),
        ]
    };
    let wrong_topic = token(&["Other", "Order"], &["Other", "Order"]);
    let reader_only = token(&["Orders"], &[]);
    let expired = hs256(&claims(&[], &["Orders"], now() - 30));

    for round in 0..2 {
        let before = redis_state(&redis).await?;
        for req in mutations(&client) {
            refused(req, 401).await?;
        }
        for req in mutations(&client) {
            refused(req.bearer_auth(tamper(&token(&[], &["Orders"]))), 401).await?;
        }
        for req in mutations(&client) {
            refused(req.bearer_auth(&expired), 401).await?;
        }
        for req in mutations(&client) {
            refused(
                req.header("cookie", format!("access_token={wrong_topic}")),
                403,
            )
            .await?;
        }
        for req in mutations(&client) {
            refused(req.bearer_auth(&reader_only), 403).await?;
        }
        // Without a token the body is not even read: 401, not 400.
        refused(
            client
                .post(publisher.url("/api/Orders"))
                .header("content-type", "application/json")
                .body("{not json"),
            401,
        )
        .await?;
        assert_eq!(
            redis_state(&redis).await?,
            before,
            "round {round}: nothing written"
        );
        if round == 0 {
            assert!(before.is_empty(), "{before:?}");
            // Now a record exists, and the second round must leave it alone.
            let created: Value = client
                .post(publisher.url("/api/Orders"))
                .bearer_auth(token(&[], &["Orders"]))
                .json(&json!({"total": 1}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            assert_eq!(created, json!({"total": 1, "id": 1}));
        }
    }

    // Reads need a subscribe or a publish grant on the topic.
    for path in ["/api/Orders", "/api/Orders/1"] {
        refused(client.get(publisher.url(path)), 401).await?;
        refused(
            client.get(publisher.url(path)).bearer_auth(&wrong_topic),
            403,
        )
        .await?;
        for grant in [&reader_only, &token(&[], &["Orders*"])] {
            let res = client
                .get(publisher.url(path))
                .bearer_auth(grant)
                .send()
                .await?;
            assert_eq!(res.status(), 200, "{path}");
        }
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(client.get(publisher.url(path)).send().await?.status(), 200);
    }
    publisher.stop().await
}

#[tokio::test]
async fn the_embedded_gateway_guards_its_rest_routes_and_metrics_when_asked() -> anyhow::Result<()>
{
    let mut settings = gateway_settings();
    settings.push(("GATEWAY_METRICS_PUBLIC", "false"));
    let gateway = Gateway::start_env(None, &settings).await?;
    let client = http();
    let writer = token(&[], &["MyModels"]);
    refused(
        client
            .post(gateway.url("/api/MyModels"))
            .json(&json!({"a": 1})),
        401,
    )
    .await?;
    refused(
        client
            .post(gateway.url("/api/MyModels"))
            .bearer_auth(token(&["MyModels"], &["Other"]))
            .json(&json!({"a": 1})),
        403,
    )
    .await?;
    let list: Value = client
        .get(gateway.url("/api/MyModels"))
        .bearer_auth(&writer)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(list, json!([]), "nothing was written");
    client
        .post(gateway.url("/api/MyModels"))
        .bearer_auth(&writer)
        .json(&json!({"a": 1}))
        .send()
        .await?
        .error_for_status()?;
    // Publishing is not subscribing; public topics are for reading streams only.
    refused(
        stream_request(&stream_url(&gateway, "MyModels")).bearer_auth(&writer),
        403,
    )
    .await?;
    refused(
        client
            .post(gateway.url("/api/Announcements"))
            .json(&json!({"a": 1})),
        401,
    )
    .await?;

    refused(client.get(gateway.url("/metrics")), 401).await?;
    let metrics = client
        .get(gateway.url("/metrics"))
        .bearer_auth(token(&[], &[]))
        .send()
        .await?;
    assert_eq!(metrics.status(), 200);
    for path in ["/healthz", "/readyz"] {
        assert_eq!(client.get(gateway.url(path)).send().await?.status(), 200);
    }
    gateway.stop().await
}

#[tokio::test]
async fn tokens_never_reach_the_logs() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    // `debug` turns on the request spans, which carry the (redacted) URI.
    let mut gateway = LoggedProcess::start(
        "gateway",
        "debug",
        &[
            ("GATEWAY_REDIS_URL", &redis.url()),
            ("GATEWAY_JWT_SECRET", SECRET),
        ],
    )
    .await?;
    let mut publisher = LoggedProcess::start(
        "publisher",
        "debug",
        &[
            ("PUBLISHER_REDIS_URL", &redis.url()),
            ("PUBLISHER_JWT_SECRET", SECRET),
        ],
    )
    .await?;
    poll_until("gateway ready", Duration::from_secs(20), || async {
        let res = http().get(gateway.url("/readyz")).send().await.ok()?;
        (res.status() == 200).then_some(())
    })
    .await?;

    let good = token(&["Logs"], &["Logs"]);
    let tampered = tamper(&good);
    let forbidden = token(&["Elsewhere"], &["Elsewhere"]);
    let expired = hs256(&claims(&["Logs"], &["Logs"], now() - 30));
    let tokens = [&good, &tampered, &forbidden, &expired];

    let url = gateway.url("/api/Logs/change-stream?_format=event-stream");
    let mut client = SseClient::open(stream_request(&format!("{url}&access_token={good}"))).await?;
    let created = http()
        .post(publisher.url(&format!("/api/Logs?access_token={good}")))
        .json(&json!({"n": 1}))
        .send()
        .await?;
    assert_eq!(created.status(), 200);
    next_change(&mut client).await?;
    drop(client);
    for (token, status) in [(&tampered, 401), (&forbidden, 403), (&expired, 401)] {
        let query = format!("{url}&access_token={token}");
        assert_eq!(stream_request(&query).send().await?.status(), status);
        let cookie = stream_request(&url).header("cookie", format!("access_token={token}"));
        assert_eq!(cookie.send().await?.status(), status);
        let bearer = stream_request(&url).bearer_auth(token);
        assert_eq!(bearer.send().await?.status(), status);
        let post = http()
            .post(publisher.url(&format!("/api/Logs?access_token={token}")))
            .json(&json!({"n": 2}));
        assert_eq!(post.send().await?.status(), status);
    }
    // A last request of each as a marker: once its line is in, every earlier one is too.
    for process in [&gateway, &publisher] {
        let res = http()
            .get(process.url(&format!("/healthz?access_token={good}")))
            .send()
            .await?;
        assert_eq!(res.status(), 200);
    }
    gateway
        .wait_for_log("the stream's close line", |l| l.contains("stream closed"))
        .await?;
    for process in [&mut gateway, &mut publisher] {
        process
            .wait_for_log("the marker request", |l| {
                l.contains("/healthz?access_token=***")
            })
            .await?;
    }

    for (name, process) in [("gateway", &gateway), ("publisher", &publisher)] {
        let logs = process.logs();
        for line in &logs {
            assert!(!line.contains(SECRET), "{name} logged the secret: {line}");
            for token in tokens {
                let signature = token.rsplit('.').next().unwrap_or(token);
                assert!(
                    !line.contains(token.as_str()) && !line.contains(signature),
                    "{name} logged a token: {line}"
                );
            }
        }
        // The URIs are logged, redacted.
        assert!(
            logs.iter()
                .any(|l| l.contains("/api/Logs") && l.contains("access_token=***")),
            "{name}: no redacted request line"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_token_subject_over_its_publish_rate_gets_429_and_writes_nothing() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    // One write a second after a burst of two: the third write in a row is refused
    // unless the test stalled for a whole second between them.
    let publisher = Publisher::start_env(
        &redis.url(),
        &[
            ("PUBLISHER_JWT_SECRET", SECRET),
            ("PUBLISHER_PUBLISH_RATE", "1"),
            ("PUBLISHER_PUBLISH_BURST", "2"),
        ],
    )
    .await?;
    let alice =
        hs256(&json!({"sub": "alice", "exp": now() + 60, "topics": {"publish": ["Rated"]}}));
    let bob = hs256(&json!({"sub": "bob", "exp": now() + 60, "topics": {"publish": ["Rated"]}}));
    let post = |token: &str| {
        http()
            .post(publisher.url("/api/Rated"))
            .bearer_auth(token)
            .json(&json!({"n": 1}))
            .send()
    };
    for _ in 0..2 {
        assert_eq!(post(&alice).await?.status(), 200);
    }
    let before = redis_state(&redis).await?;
    let res = post(&alice).await?;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await?;
    assert_eq!(body["error"]["code"], "TOO_MANY_REQUESTS", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("too many events for this token"),
        "{body}"
    );
    assert_eq!(redis_state(&redis).await?, before, "a refused write wrote");
    // Another subject has its own budget.
    assert_eq!(post(&bob).await?.status(), 200);
    Ok(())
}

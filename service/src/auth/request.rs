//! Where a request carries its token, and keeping it out of logs: [`find_token`],
//! [`redact_query`], and the [`Caller`] / [`Authenticated`] extractors.

use std::borrow::Cow;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use super::{Auth, AuthError, Claims, TOKEN_COOKIE, TOKEN_QUERY_PARAM};

/// The request's token, from the first source that has one: `Authorization: Bearer`, the
/// `access_token` cookie, the `access_token` query parameter. An `Authorization` header of
/// another scheme is not ours and is skipped.
///
/// # Errors
/// [`AuthError::Invalid`] for a `Bearer` header without a token, a header that is not
/// text, or a query with the parameter twice.
pub fn find_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Result<Option<Cow<'a, str>>, AuthError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| AuthError::Invalid("Authorization header is not text"))?;
        if let Some((scheme, token)) = value.trim().split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
        {
            let token = token.trim();
            if token.is_empty() {
                return Err(AuthError::Invalid("empty bearer token"));
            }
            return Ok(Some(Cow::Borrowed(token)));
        } else if value.trim().eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Invalid("empty bearer token"));
        }
    }
    for cookies in headers.get_all(header::COOKIE) {
        let Ok(cookies) = cookies.to_str() else {
            continue;
        };
        for cookie in cookies.split(';') {
            if let Some((name, value)) = cookie.trim().split_once('=')
                && name.trim() == TOKEN_COOKIE
            {
                let value = value.trim().trim_matches('"');
                if !value.is_empty() {
                    return Ok(Some(Cow::Borrowed(value)));
                }
            }
        }
    }
    let mut found = None;
    for (name, value) in form_pairs(query.unwrap_or("")) {
        if name == TOKEN_QUERY_PARAM {
            if found.is_some() {
                return Err(AuthError::Invalid("access_token given twice"));
            }
            found = Some(value);
        }
    }
    Ok(found.filter(|v| !v.is_empty()))
}

/// `query` with the value of every `access_token` parameter replaced by `***`, for any
/// log line or span that shows a URI.
pub fn redact_query(query: &str) -> Cow<'_, str> {
    if !query
        .split('&')
        .any(|pair| decoded_name(pair) == TOKEN_QUERY_PARAM)
    {
        return Cow::Borrowed(query);
    }
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| {
            if decoded_name(pair) == TOKEN_QUERY_PARAM {
                format!("{TOKEN_QUERY_PARAM}=***")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    Cow::Owned(redacted.join("&"))
}

/// The path and query of `uri` with [`redact_query`] applied: what request logs show.
pub fn redact_uri(uri: &axum::http::Uri) -> String {
    match uri.query() {
        Some(query) => format!("{}?{}", uri.path(), redact_query(query)),
        None => uri.path().to_owned(),
    }
}

fn decoded_name(pair: &str) -> Cow<'_, str> {
    let name = pair.split_once('=').map_or(pair, |(n, _)| n);
    percent_decode(name)
}

/// `application/x-www-form-urlencoded` pairs, decoded (`+` is a space).
fn form_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(name), percent_decode(value))
    })
}

fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains(['%', '+']) {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The verified caller of a request: the token's claims, or `None` (no token, or auth
/// off). Extracting it refuses a request whose token is present but bad (401), before any
/// body is read. Routes then ask [`Auth`] about each topic.
#[derive(Clone, Debug, Default)]
pub struct Caller(Option<Claims>);

impl Caller {
    pub fn claims(&self) -> Option<&Claims> {
        self.0.as_ref()
    }
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Auth: FromRef<S>,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AuthError> {
        let auth = Auth::from_ref(state);
        if !auth.is_on() {
            return Ok(Self(None));
        }
        let token = find_token(&parts.headers, parts.uri.query())?;
        Ok(Self(auth.authenticate(token.as_deref())?))
    }
}

/// A [`Caller`] that must hold a valid token when auth is on: a request without one is
/// refused (401) before its path or body is looked at. For routes without anonymous
/// access (the publisher's).
#[derive(Clone, Debug, Default)]
pub struct Authenticated(Caller);

impl Authenticated {
    /// The token's claims; `None` only when auth is off.
    pub fn claims(&self) -> Option<&Claims> {
        self.0.claims()
    }
}

impl<S> FromRequestParts<S> for Authenticated
where
    S: Send + Sync,
    Auth: FromRef<S>,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AuthError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.claims().is_none() && Auth::from_ref(state).is_on() {
            return Err(AuthError::Missing);
        }
        Ok(Self(caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn token_sources_in_order() {
        let mut h = HeaderMap::new();
        assert_eq!(find_token(&h, None).unwrap(), None);
        assert_eq!(
            find_token(&h, Some("_format=event-stream&access_token=q%2Bq"))
                .unwrap()
                .as_deref(),
            Some("q+q")
        );
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; access_token=c1"),
        );
        assert_eq!(
            find_token(&h, Some("access_token=q")).unwrap().as_deref(),
            Some("c1")
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(find_token(&h, None).unwrap().as_deref(), Some("c1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer b1"));
        assert_eq!(
            find_token(&h, Some("access_token=q")).unwrap().as_deref(),
            Some("b1")
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert!(find_token(&h, None).is_err());
        let h = HeaderMap::new();
        assert!(find_token(&h, Some("access_token=a&access_token=b")).is_err());
        assert_eq!(find_token(&h, Some("access_token=")).unwrap(), None);
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_query("_format=event-stream"), "_format=event-stream");
        assert_eq!(
            redact_query("_format=event-stream&access_token=eyJ.x.y&b=1"),
            "_format=event-stream&access_token=***&b=1"
        );
        assert_eq!(redact_query("access%5Ftoken=eyJ"), "access_token=***");
        let uri: axum::http::Uri = "/api/A/change-stream?access_token=s3cret".parse().unwrap();
        assert_eq!(redact_uri(&uri), "/api/A/change-stream?access_token=***");
    }
}

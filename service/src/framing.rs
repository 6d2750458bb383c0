//! HTTP/1 request framing: whether a request head says, unambiguously, where its body
//! ends (RFC 9112 section 6). Shared by both binaries, so a badly framed request gets
//! LoopBack's JSON 400 ([`crate::ApiError::Malformed`], with `Connection: close`) instead
//! of a server's bare one.
//!
//! hyper checks framing too, but answers what it refuses itself (an empty 400, before any
//! of our code runs), and it accepts `Transfer-Encoding: chunked, chunked` (a coding
//! applied twice, which RFC 9112 forbids) by decoding it once. So [`check`] is stricter
//! than hyper wherever they differ: what passes here, hyper's parser accepts. The gateway
//! runs it on the raw head of every connection's first request (`gateway::serve`), where
//! it sees everything; the request middleware ([`crate::limits::check_request`]) runs it
//! on what hyper passed on, which is where `chunked, chunked` would get through.
//!
//! Not owned here: the request line and header syntax (httparse, hyper), body limits
//! ([`crate::http::read_body`]).

use axum::http::Version;

use crate::error::FramingError;

/// Largest `Content-Length` hyper takes (its `DecodedLength::MAX_LEN`); above, it answers
/// a bare 400 itself.
const MAX_CONTENT_LENGTH: u64 = u64::MAX - 2;

/// Checks the framing headers of a request head of `version`; `headers` are its (name,
/// value) pairs in order, names in any case. HTTP/2 and later frame bodies themselves:
/// always fine here.
///
/// # Errors
/// The [`FramingError`] of the first problem: `Transfer-Encoding` in an HTTP/1.0
/// request, `chunked` missing from the end of it or named twice, a `Content-Length`
/// that is not one decimal number (or too large), or `Content-Length`s that disagree.
pub fn check<'a>(
    version: Version,
    headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<(), FramingError> {
    if version != Version::HTTP_10 && version != Version::HTTP_11 {
        return Ok(());
    }
    let mut transfer_encoding = false;
    let mut chunked = 0_usize;
    let mut last_coding_is_chunked = false;
    let mut length = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if version == Version::HTTP_10 {
                return Err(FramingError::TransferEncodingInHttp10);
            }
            transfer_encoding = true;
            // A list: `gzip, chunked` in one field or over several. As in hyper, the last
            // element of the last field must be `chunked` (so `chunked,` is refused), and
            // the field must be visible ASCII.
            let text = value
                .iter()
                .all(|b| *b == b'\t' || (b' '..=b'~').contains(b));
            let mut codings = value.split(|b| *b == b',').map(<[u8]>::trim_ascii);
            chunked += codings
                .clone()
                .filter(|c| c.eq_ignore_ascii_case(b"chunked"))
                .count();
            last_coding_is_chunked = text
                && codings
                    .next_back()
                    .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // One number per field (hyper refuses `2, 2` too); repeated fields must agree.
            let n = decimal(value.trim_ascii())
                .filter(|n| *n <= MAX_CONTENT_LENGTH)
                .ok_or(FramingError::ContentLength)?;
            match length {
                Some(first) if first != n => {
                    return Err(FramingError::ContentLengths { first, second: n });
                }
                _ => length = Some(n),
            }
        }
    }
    if chunked > 1 {
        return Err(FramingError::ChunkedTwice);
    }
    if transfer_encoding && !last_coding_is_chunked {
        return Err(FramingError::NotChunked);
    }
    Ok(())
}

/// `1*DIGIT` as a number, `None` if it is not one or does not fit.
fn decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0_u64, |n, b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(version: Version, headers: &[(&str, &str)]) -> Result<(), FramingError> {
        check(
            version,
            headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
        )
    }

    fn h11(headers: &[(&str, &str)]) -> Result<(), FramingError> {
        head(Version::HTTP_11, headers)
    }

    #[test]
    fn plain_framings_pass() {
        assert_eq!(h11(&[]), Ok(()));
        assert_eq!(h11(&[("Host", "x"), ("Content-Length", "12")]), Ok(()));
        assert_eq!(h11(&[("transfer-encoding", "chunked")]), Ok(()));
        assert_eq!(h11(&[("Transfer-Encoding", " Chunked ")]), Ok(()));
        assert_eq!(h11(&[("Transfer-Encoding", "gzip, chunked")]), Ok(()));
        assert_eq!(
            h11(&[
                ("Transfer-Encoding", "gzip"),
                ("Transfer-Encoding", "chunked")
            ]),
            Ok(())
        );
        assert_eq!(h11(&[("Transfer-Encoding", ", chunked")]), Ok(()));
        // Repeated but equal lengths are one length (hyper takes them too).
        assert_eq!(
            h11(&[("Content-Length", "2"), ("content-length", "2")]),
            Ok(())
        );
        assert_eq!(head(Version::HTTP_10, &[("Content-Length", "0")]), Ok(()));
        // Content-Length beside chunked: hyper frames by chunked and closes the
        // connection afterwards (RFC 9112 allows that); not refused here.
        assert_eq!(
            h11(&[("Content-Length", "2"), ("Transfer-Encoding", "chunked")]),
            Ok(())
        );
        // HTTP/2 frames its own bodies.
        assert_eq!(
            head(
                Version::HTTP_2,
                &[("transfer-encoding", "chunked, chunked")]
            ),
            Ok(())
        );
    }

    #[test]
    fn chunked_must_come_last_and_once() {
        use FramingError::{ChunkedTwice, NotChunked};
        assert_eq!(
            h11(&[("Transfer-Encoding", "chunked, chunked")]),
            Err(ChunkedTwice)
        );
        assert_eq!(
            h11(&[
                ("Transfer-Encoding", "chunked"),
                ("Transfer-Encoding", "CHUNKED")
            ]),
            Err(ChunkedTwice)
        );
        for te in [
            "gzip",
            "chunked, gzip",
            "identity",
            "",
            " , ",
            "chunked,",
            "x\u{7f}, chunked",
        ] {
            assert_eq!(h11(&[("Transfer-Encoding", te)]), Err(NotChunked), "{te:?}");
        }
        assert_eq!(
            head(Version::HTTP_10, &[("Transfer-Encoding", "chunked")]),
            Err(FramingError::TransferEncodingInHttp10)
        );
    }

    #[test]
    fn a_content_length_is_one_number() {
        for cl in [
            "",
            "abc",
            "-1",
            "+1",
            "1.0",
            "2, 2",
            "0x10",
            "18446744073709551616",
        ] {
            assert_eq!(
                h11(&[("Content-Length", cl)]),
                Err(FramingError::ContentLength),
                "{cl:?}"
            );
        }
        assert_eq!(
            h11(&[("Content-Length", &(u64::MAX - 1).to_string())]),
            Err(FramingError::ContentLength)
        );
        assert_eq!(
            h11(&[("Content-Length", &MAX_CONTENT_LENGTH.to_string())]),
            Ok(())
        );
        assert_eq!(
            h11(&[("Content-Length", "2"), ("Content-Length", "3")]),
            Err(FramingError::ContentLengths {
                first: 2,
                second: 3
            })
        );
    }
}

//! Where a request's credential comes from: the `Authorization` header (scheme `Bearer`, matched
//! case-insensitively) or, for browsers, which cannot set headers on a WebSocket, the `token`
//! query parameter. The caller percent-decodes the query value (`net::query`); this module never
//! decodes anything itself.
//!
//! A token may contain any printable character, spaces included: the header's value after the
//! scheme is taken whole, less the optional whitespace HTTP allows around it. This module must
//! never print a credential: [`Credential`]'s `Debug` is redacted and it has no `Display`.

use std::fmt;

use super::failure::AuthFailure;
use super::secret::REDACTED;

/// Longest credential looked at, in bytes. A JWT with a few hundred symbol patterns fits; a
/// longer value is refused before any hashing or JSON parsing.
pub const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

/// Where a credential was found (for the audit log; never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// `Authorization: Bearer ...`
    Header,
    /// `?token=...`
    Query,
}

impl CredentialSource {
    pub const fn as_str(self) -> &'static str {
        match self {
            CredentialSource::Header => "header",
            CredentialSource::Query => "query",
        }
    }
}

/// A credential as presented by a client: an opaque token or a JWT.
#[derive(Clone, Copy)]
pub struct Credential<'a> {
    value: &'a str,
    source: CredentialSource,
}

impl<'a> Credential<'a> {
    /// A credential from a known place (tests, or a caller with its own extraction).
    pub fn new(value: &'a str, source: CredentialSource) -> Credential<'a> {
        Credential { value, source }
    }
    /// The value, for the one caller that needs it (authentication). Never log it.
    pub fn expose(&self) -> &'a str {
        self.value
    }
    pub fn source(&self) -> CredentialSource {
        self.source
    }
}

impl fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}, {REDACTED})", self.source.as_str())
    }
}

/// What an `Authorization` header value holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Authorization<'a> {
    /// `Bearer TOKEN` (any case of `Bearer`), the token trimmed of surrounding whitespace.
    Bearer(&'a str),
    /// `Bearer` with nothing after it.
    EmptyBearer,
    /// Another scheme, or bytes that are not UTF-8.
    Other,
}

/// Reads an `Authorization` header value (the raw bytes after `Authorization:`).
pub fn parse_authorization(value: &[u8]) -> Authorization<'_> {
    let Ok(value) = std::str::from_utf8(value) else {
        return Authorization::Other;
    };
    let value = value.trim_matches(is_ows);
    let Some(scheme) = value.get(..6) else {
        return Authorization::Other;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Authorization::Other;
    }
    let rest = &value[6..];
    if rest.is_empty() {
        return Authorization::EmptyBearer;
    }
    // The scheme ends at whitespace: `Bearerx` is another scheme, not a token `x`.
    if !rest.starts_with(is_ows) {
        return Authorization::Other;
    }
    match rest.trim_matches(is_ows) {
        "" => Authorization::EmptyBearer,
        token => Authorization::Bearer(token),
    }
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The request's credential: the `Authorization: Bearer` header if it carries one, else the
/// `?token=` value (already percent-decoded by the caller), else the reason there is none.
///
/// `authorization` is the raw header value, `query_token` the decoded `token` parameter (an
/// empty one counts as absent).
pub fn credential_from_request<'a>(
    authorization: Option<&'a [u8]>,
    query_token: Option<&'a str>,
) -> Result<Credential<'a>, AuthFailure> {
    let header = authorization.map(parse_authorization);
    let credential = match (&header, query_token.filter(|t| !t.is_empty())) {
        (Some(Authorization::Bearer(token)), _) => Credential::new(token, CredentialSource::Header),
        (_, Some(token)) => Credential::new(token, CredentialSource::Query),
        (Some(Authorization::Other), None) => return Err(AuthFailure::UnsupportedScheme),
        (Some(Authorization::EmptyBearer) | None, None) => return Err(AuthFailure::Missing),
    };
    if credential.value.len() > MAX_CREDENTIAL_BYTES {
        return Err(AuthFailure::Malformed);
    }
    Ok(credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_matched_case_insensitively() {
        for header in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR abc"] {
            assert_eq!(parse_authorization(header.as_bytes()), Authorization::Bearer("abc"));
        }
    }

    #[test]
    fn token_may_hold_any_printable_character() {
        let token = r##"a b!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~é€"##;
        let header = format!("Bearer {token}");
        assert_eq!(parse_authorization(header.as_bytes()), Authorization::Bearer(token));
        let query = credential_from_request(None, Some(token)).unwrap();
        assert_eq!(query.expose(), token);
    }

    #[test]
    fn whitespace_around_the_token_is_not_part_of_it() {
        assert_eq!(
            parse_authorization(b"  Bearer \t abc def \t"),
            Authorization::Bearer("abc def")
        );
        assert_eq!(parse_authorization(b"Bearer"), Authorization::EmptyBearer);
        assert_eq!(parse_authorization(b"Bearer   "), Authorization::EmptyBearer);
    }

    #[test]
    fn other_schemes_are_not_bearer() {
        assert_eq!(parse_authorization(b"Basic dXNlcjpwYXNz"), Authorization::Other);
        assert_eq!(parse_authorization(b"Bearerabc"), Authorization::Other);
        assert_eq!(parse_authorization(b"Bear"), Authorization::Other);
        assert_eq!(parse_authorization(b""), Authorization::Other);
        assert_eq!(parse_authorization(b"Bearer \xff\xfe"), Authorization::Other);
    }

    #[test]
    fn header_wins_over_query_and_query_serves_browsers() {
        let c = credential_from_request(Some(b"Bearer from-header"), Some("from-query")).unwrap();
        assert_eq!((c.expose(), c.source()), ("from-header", CredentialSource::Header));
        let c = credential_from_request(Some(b"Basic xyz"), Some("from-query")).unwrap();
        assert_eq!((c.expose(), c.source()), ("from-query", CredentialSource::Query));
        let c = credential_from_request(None, Some("from-query")).unwrap();
        assert_eq!(c.source(), CredentialSource::Query);
    }

    #[test]
    fn absent_credentials_name_the_reason() {
        assert_eq!(credential_from_request(None, None).map(drop), Err(AuthFailure::Missing));
        assert_eq!(credential_from_request(None, Some("")).map(drop), Err(AuthFailure::Missing));
        assert_eq!(
            credential_from_request(Some(b"Bearer "), None).map(drop),
            Err(AuthFailure::Missing)
        );
        assert_eq!(
            credential_from_request(Some(b"Basic xyz"), None).map(drop),
            Err(AuthFailure::UnsupportedScheme)
        );
        let long = "x".repeat(MAX_CREDENTIAL_BYTES + 1);
        assert_eq!(
            credential_from_request(None, Some(&long)).map(drop),
            Err(AuthFailure::Malformed)
        );
        let limit = "x".repeat(MAX_CREDENTIAL_BYTES);
        assert!(credential_from_request(None, Some(&limit)).is_ok());
    }

    #[test]
    fn debug_is_redacted() {
        let c = Credential::new("s3cret-token-value", CredentialSource::Query);
        assert_eq!(format!("{c:?}"), "Credential(query, <redacted>)");
    }
}

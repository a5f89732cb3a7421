//! Why an authentication failed: a small fixed set of reasons, each a metric label value
//! (`gateway_auth_failures_total{reason}`) and a line in the audit log.
//!
//! A reason must never carry the credential, or anything derived from it: it is printed,
//! counted and sent to clients.

/// The reason a request was refused with `401` (or a live session closed with `4001`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AuthFailure {
    /// No credential: no `Authorization: Bearer` header and no `?token=`.
    #[error(
        "no access token: send `Authorization: Bearer TOKEN`, or `?token=TOKEN` from a browser"
    )]
    Missing,
    /// An `Authorization` header with another scheme (`Basic`, ...) and no `?token=`.
    #[error("the Authorization header must use the Bearer scheme")]
    UnsupportedScheme,
    /// Longer than any token or JWT the gateway accepts.
    #[error("the access token is longer than the gateway accepts")]
    Malformed,
    /// Not a configured token, and not a JWT (or no JWT key is configured).
    #[error("unknown access token")]
    UnknownToken,
    /// A JWT whose header, encoding, algorithm or signature is wrong.
    #[error("the JWT is not valid: bad encoding, algorithm or signature")]
    BadJwt,
    /// A JWT with a good signature whose claims are missing or ill-typed (`sub`, `exp`,
    /// `symbols`, ...).
    #[error("the JWT's claims are not valid: it needs `sub`, `exp` and `symbols`")]
    BadClaims,
    /// A JWT past its `exp`.
    #[error("the JWT has expired: get a fresh one and reconnect")]
    Expired,
    /// A JWT before its `nbf`.
    #[error("the JWT is not valid yet (nbf)")]
    NotYetValid,
    /// The credential was valid but the access configuration reloaded without it.
    #[error("the access token was revoked")]
    Revoked,
}

impl AuthFailure {
    /// Every reason, in label order, for registering the metric series up front.
    pub const ALL: [AuthFailure; 9] = [
        AuthFailure::Missing,
        AuthFailure::UnsupportedScheme,
        AuthFailure::Malformed,
        AuthFailure::UnknownToken,
        AuthFailure::BadJwt,
        AuthFailure::BadClaims,
        AuthFailure::Expired,
        AuthFailure::NotYetValid,
        AuthFailure::Revoked,
    ];

    /// The metric label value and the `reason` field of the audit log.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::UnsupportedScheme => "unsupported_scheme",
            AuthFailure::Malformed => "malformed",
            AuthFailure::UnknownToken => "unknown_token",
            AuthFailure::BadJwt => "bad_jwt",
            AuthFailure::BadClaims => "bad_claims",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::Revoked => "revoked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_snake_case() {
        let labels: Vec<_> = AuthFailure::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(
            labels,
            [
                "missing",
                "unsupported_scheme",
                "malformed",
                "unknown_token",
                "bad_jwt",
                "bad_claims",
                "expired",
                "not_yet_valid",
                "revoked"
            ]
        );
    }
}

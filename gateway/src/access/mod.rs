//! Access control: who a request is, and which symbols it may see.
//!
//! Pure building blocks, no I/O but reading the configured files: the HTTP layer extracts the
//! credential ([`credential_from_request`]), asks [`AccessConfig::authenticate_request`] for a
//! [`Grant`], and checks every symbol against [`Grant::entitlement`]; on SIGHUP it loads a new
//! [`AccessConfig`] (keeping the old one if the new one is refused) and asks
//! [`AccessConfig::review`] about each live session's grant.
//!
//! ```text
//! Authorization / ?token= ──> Credential ──> AccessConfig::authenticate ──> Arc<Grant>
//!                                              │ token file, --access-tokens: SHA-256, constant-time
//!                                              │ --jwt-key: signature, exp, nbf, claims
//!                                              └─> AuthFailure (a metric label, an audit line)
//! SIGHUP: AccessConfig::load ──> new.review(&grant) ──> Unchanged | Updated | Narrowed | Revoked
//! ```
//!
//! With no token and no JWT key configured the gateway is open: every request gets the
//! anonymous grant, entitled to every symbol.
//!
//! This module must never write a credential into a log line, a metric, an error or a `Debug`
//! string: secrets live in [`secret`] types whose `Debug` is redacted, and errors name entries
//! and fields, never values.

pub mod audit;
pub mod credential;
pub mod entitlement;
pub mod failure;
pub mod jwt;
pub mod page_headers;
pub mod secret;
pub mod sessions;
pub mod tokens;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use audit::{AuditDecision, AuditLimiter};
pub use credential::{credential_from_request, Credential, CredentialSource};
pub use entitlement::{Entitlement, Pattern, PatternError};
pub use failure::AuthFailure;
pub use jwt::{JwtAlgorithm, JwtKeyError, JwtVerifier};
pub use sessions::{SessionCounts, SessionLimitReached, SessionSlot};
pub use tokens::{Limits, TokenFileError, TokenTable};

use secret::{SecretString, TokenDigest};

/// Where the access configuration comes from: the flags, as the lead's `main` reads them, and
/// again on every SIGHUP (the files are re-read; the list is the same).
#[derive(Debug, Clone, Default)]
pub struct AccessSources {
    /// `--tokens-file`
    pub tokens_file: Option<PathBuf>,
    /// `--access-tokens` (for quick local use: visible in `ps`, never reloaded)
    pub access_tokens: Vec<String>,
    /// `--jwt-key`
    pub jwt_key: Option<PathBuf>,
}

/// Why an access configuration was refused. Each message starts with the flag, names the entry
/// and field when there is one, and never holds a secret. At start: exit 64. On SIGHUP: logged,
/// and the configuration in force stays.
#[derive(Debug, thiserror::Error)]
pub enum AccessConfigError {
    #[error("--tokens-file {path}: {source}")]
    TokensFile { path: String, source: Box<TokenFileError> },
    #[error("{0}")]
    AccessTokens(Box<TokenFileError>),
    #[error("--tokens-file and --access-tokens together: {0}")]
    Merged(Box<TokenFileError>),
    #[error("--jwt-key {path}: {source}")]
    JwtKey { path: String, source: JwtKeyError },
}

/// Who a grant was given to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No authentication is configured.
    Anonymous,
    /// A configured token, by its entry's name.
    Token(Box<str>),
    /// A JWT, by its `sub`.
    Jwt(Box<str>),
}

impl Principal {
    /// The log field this principal goes in: `token`, `sub`, or `anonymous`.
    pub fn kind(&self) -> &'static str {
        match self {
            Principal::Anonymous => "anonymous",
            Principal::Token(_) => "token",
            Principal::Jwt(_) => "sub",
        }
    }
    /// The token entry's name, the JWT's `sub`, or `-`.
    pub fn name(&self) -> &str {
        match self {
            Principal::Anonymous => "-",
            Principal::Token(name) | Principal::Jwt(name) => name,
        }
    }
    /// The token entry's name, for a `token` log field (absent otherwise).
    pub fn token_name(&self) -> Option<&str> {
        match self {
            Principal::Token(name) => Some(name),
            _ => None,
        }
    }
    /// The JWT's `sub`, for a `sub` log field (absent otherwise).
    pub fn sub(&self) -> Option<&str> {
        match self {
            Principal::Jwt(sub) => Some(sub),
            _ => None,
        }
    }
}

impl fmt::Display for Principal {
    /// `token=NAME`, `sub=USER` or `anonymous`, ready for a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Anonymous => f.write_str("anonymous"),
            other => write!(f, "{}={}", other.kind(), other.name()),
        }
    }
}

/// What an authenticated request may do. Shared (`Arc`) by every session of a token; one per
/// JWT session.
#[derive(Debug)]
pub struct Grant {
    principal: Principal,
    entitlement: Entitlement,
    limits: Limits,
    expires_at_unix: Option<u64>,
    origin: GrantOrigin,
}

/// What the grant was made from, so a reload can tell whether it still holds.
#[derive(Debug)]
enum GrantOrigin {
    Open,
    Token(TokenDigest),
    /// The JWT itself, re-verified against a reloaded key.
    Jwt(SecretString),
}

impl Grant {
    pub fn principal(&self) -> &Principal {
        &self.principal
    }
    pub fn entitlement(&self) -> &Entitlement {
        &self.entitlement
    }
    /// Shorthand for `entitlement().allows(symbol)`.
    #[inline]
    pub fn allows(&self, symbol: &str) -> bool {
        self.entitlement.allows(symbol)
    }
    pub fn limits(&self) -> Limits {
        self.limits
    }
    /// A JWT's `exp`, seconds since the Unix epoch: the session closes with 4001 then.
    pub fn expires_at_unix(&self) -> Option<u64> {
        self.expires_at_unix
    }
    /// `exp` as a wall-clock time.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at_unix.map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }
    /// How long until `exp` from `now` (zero once passed); `None` for grants that do not expire.
    pub fn time_left(&self, now: SystemTime) -> Option<Duration> {
        self.expires_at().map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
    }
    /// The subscription limit for this grant's sessions: its own, or the gateway's.
    pub fn max_subscriptions(&self, gateway_default: u32) -> u32 {
        self.limits.max_subscriptions.unwrap_or(gateway_default)
    }

    fn same_terms(&self, other: &Grant) -> bool {
        self.principal == other.principal
            && self.entitlement == other.entitlement
            && self.limits == other.limits
            && self.expires_at_unix == other.expires_at_unix
    }
}

/// What a reload means for one live session.
#[derive(Debug)]
pub enum Review {
    /// Nothing changed for it.
    Unchanged,
    /// Its terms changed (a new name, new limits, more symbols) but it lost no symbol: use the
    /// new grant from now on.
    Updated(Arc<Grant>),
    /// It lost symbols: use the new grant, and drop every subscription it no longer allows.
    Narrowed(Arc<Grant>),
    /// Its credential is gone or no longer valid: close the session with 4001.
    Revoked,
}

/// The access configuration in force: tokens (file and list) and the JWT key.
#[derive(Debug)]
pub struct AccessConfig {
    tokens: TokenTable,
    /// One grant per token entry, index for index, so authenticating a token allocates nothing.
    token_grants: Vec<Arc<Grant>>,
    jwt: Option<JwtVerifier>,
    open: Arc<Grant>,
    warnings: Vec<String>,
}

impl AccessConfig {
    /// Reads every configured source. The first problem is the error.
    pub fn load(sources: &AccessSources) -> Result<AccessConfig, AccessConfigError> {
        let mut warnings = Vec::new();
        let from_file = match &sources.tokens_file {
            None => TokenTable::empty(),
            Some(path) => {
                if let Some(warning) = readable_by_others("--tokens-file", path) {
                    warnings.push(warning);
                }
                TokenTable::read_file(path).map_err(|source| AccessConfigError::TokensFile {
                    path: path.display().to_string(),
                    source: Box::new(source),
                })?
            }
        };
        let from_list = TokenTable::parse_access_tokens(&sources.access_tokens)
            .map_err(|e| AccessConfigError::AccessTokens(Box::new(e)))?;
        let tokens =
            from_file.merge(from_list).map_err(|e| AccessConfigError::Merged(Box::new(e)))?;
        let jwt = match &sources.jwt_key {
            None => None,
            Some(path) => {
                let verifier = JwtVerifier::from_key_file(path).map_err(|source| {
                    AccessConfigError::JwtKey { path: path.display().to_string(), source }
                })?;
                // A public key may be read by anyone; a shared secret may not.
                if verifier.algorithm() == JwtAlgorithm::Hs256 {
                    warnings.extend(readable_by_others("--jwt-key", path));
                }
                Some(verifier)
            }
        };
        let mut config = AccessConfig::new(tokens, jwt);
        config.warnings = warnings;
        Ok(config)
    }

    /// From parts already parsed.
    pub fn new(tokens: TokenTable, jwt: Option<JwtVerifier>) -> AccessConfig {
        let token_grants = tokens
            .entries()
            .iter()
            .map(|entry| {
                Arc::new(Grant {
                    principal: Principal::Token(entry.name.clone()),
                    entitlement: entry.entitlement.clone(),
                    limits: entry.limits,
                    expires_at_unix: None,
                    origin: GrantOrigin::Token(entry.digest),
                })
            })
            .collect();
        let open = Arc::new(Grant {
            principal: Principal::Anonymous,
            entitlement: Entitlement::all(),
            limits: Limits::default(),
            expires_at_unix: None,
            origin: GrantOrigin::Open,
        });
        AccessConfig { tokens, token_grants, jwt, open, warnings: Vec::new() }
    }

    /// No authentication: no token and no JWT key.
    pub fn open() -> AccessConfig {
        AccessConfig::new(TokenTable::empty(), None)
    }

    /// Whether requests need a credential.
    pub fn requires_credential(&self) -> bool {
        !self.tokens.is_empty() || self.jwt.is_some()
    }

    /// Things the operator should fix that do not stop the gateway (log them at warn).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// One line for the log: what is configured, never a secret.
    pub fn describe(&self) -> String {
        if !self.requires_credential() {
            return "open: no access tokens and no JWT key, every request may see every symbol"
                .into();
        }
        let from_file = self
            .tokens
            .entries()
            .iter()
            .filter(|e| e.origin == tokens::EntryOrigin::TokensFile)
            .count();
        let from_list = self.tokens.len() - from_file;
        let jwt = self
            .jwt
            .as_ref()
            .map_or("no JWT key".to_string(), |j| format!("JWT {}", j.algorithm().as_str()));
        format!("{from_file} tokens from --tokens-file, {from_list} from --access-tokens, {jwt}")
    }

    /// Authenticates a request from its `Authorization` header value and its decoded `token`
    /// query parameter.
    pub fn authenticate_request(
        &self,
        authorization: Option<&[u8]>,
        query_token: Option<&str>,
        now: SystemTime,
    ) -> Result<Arc<Grant>, AuthFailure> {
        if !self.requires_credential() {
            return Ok(Arc::clone(&self.open));
        }
        let credential = credential_from_request(authorization, query_token)?;
        self.authenticate(&credential, now)
    }

    /// Authenticates one credential: a configured token first (constant time), then, when a JWT
    /// key is configured and the credential has a JWT's shape, as a JWT.
    pub fn authenticate(
        &self,
        credential: &Credential<'_>,
        now: SystemTime,
    ) -> Result<Arc<Grant>, AuthFailure> {
        if !self.requires_credential() {
            return Ok(Arc::clone(&self.open));
        }
        let presented = credential.expose();
        if presented.len() > credential::MAX_CREDENTIAL_BYTES {
            return Err(AuthFailure::Malformed);
        }
        let digest = TokenDigest::of(presented);
        if let Some(i) = digest.position_in(self.tokens.entries().iter().map(|e| &e.digest)) {
            return Ok(Arc::clone(&self.token_grants[i]));
        }
        match &self.jwt {
            Some(verifier) if jwt::looks_like_jwt(presented) => {
                let claims = verifier.verify(presented, unix_secs(now))?;
                Ok(Arc::new(Grant {
                    principal: Principal::Jwt(claims.sub.into()),
                    entitlement: claims.entitlement,
                    limits: claims.limits,
                    expires_at_unix: Some(claims.exp),
                    origin: GrantOrigin::Jwt(SecretString::new(presented)),
                }))
            }
            _ => Err(AuthFailure::UnknownToken),
        }
    }

    /// What this (newly loaded) configuration means for a live session holding `grant`, made by
    /// the configuration before it.
    pub fn review(&self, grant: &Grant, now: SystemTime) -> Review {
        let renewed = match &grant.origin {
            GrantOrigin::Open if !self.requires_credential() => return Review::Unchanged,
            GrantOrigin::Open => return Review::Revoked,
            _ if !self.requires_credential() => Arc::clone(&self.open),
            GrantOrigin::Token(digest) => {
                match digest.position_in(self.tokens.entries().iter().map(|e| &e.digest)) {
                    Some(i) => Arc::clone(&self.token_grants[i]),
                    None => return Review::Revoked,
                }
            }
            GrantOrigin::Jwt(jwt) => {
                let credential = Credential::new(jwt.expose(), CredentialSource::Header);
                match self.authenticate(&credential, now) {
                    Ok(renewed) => renewed,
                    Err(_) => return Review::Revoked,
                }
            }
        };
        if renewed.same_terms(grant) {
            Review::Unchanged
        } else if renewed.entitlement.covers(&grant.entitlement) {
            Review::Updated(renewed)
        } else {
            Review::Narrowed(renewed)
        }
    }
}

fn unix_secs(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A warning when a secret-holding file may be read by other users of the machine.
pub fn readable_by_others(flag: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!("{flag} {}: readable by other users (mode {mode:o}): chmod 600 it", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::jwt::tests::{sign_hs256, NOW, SECRET};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn file(text: &str) -> TokenTable {
        TokenTable::parse_file(text).unwrap()
    }

    const TWO_TOKENS: &str = r#"
[[token]]
name = "alice"
token = "alice-token-0123456789"
symbols = ["AAPL", "FX:*"]
max_sessions = 2

[[token]]
name = "bob"
token = "bob-token-0123456789"
symbols = ["*"]
"#;

    fn header(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn open_gateway_gives_everyone_every_symbol() {
        let access = AccessConfig::open();
        assert!(!access.requires_credential());
        let grant = access.authenticate_request(None, None, at(NOW)).unwrap();
        assert_eq!(grant.principal(), &Principal::Anonymous);
        assert!(grant.allows("ANYTHING"));
        assert_eq!(grant.expires_at_unix(), None);
        assert_eq!(grant.principal().to_string(), "anonymous");
    }

    #[test]
    fn tokens_authenticate_by_header_or_query_with_their_entitlement() {
        let access = AccessConfig::new(file(TWO_TOKENS), None);
        let alice = access
            .authenticate_request(Some(&header("alice-token-0123456789")), None, at(NOW))
            .unwrap();
        assert_eq!(alice.principal().to_string(), "token=alice");
        assert!(alice.allows("AAPL") && alice.allows("FX:EURUSD") && !alice.allows("MSFT"));
        assert_eq!(alice.limits().max_sessions, Some(2));
        assert_eq!(alice.max_subscriptions(1000), 1000);
        let again =
            access.authenticate_request(None, Some("alice-token-0123456789"), at(NOW)).unwrap();
        assert!(Arc::ptr_eq(&alice, &again), "one shared grant per token");
    }

    #[test]
    fn refusals_give_their_reason() {
        let access = AccessConfig::new(file(TWO_TOKENS), None);
        let fail = |auth: Option<&[u8]>, query: Option<&str>| {
            access.authenticate_request(auth, query, at(NOW)).unwrap_err()
        };
        assert_eq!(fail(None, None), AuthFailure::Missing);
        assert_eq!(fail(Some(b"Basic YTpi"), None), AuthFailure::UnsupportedScheme);
        assert_eq!(fail(None, Some("alice-token-012345678")), AuthFailure::UnknownToken);
        // Without a JWT key, a JWT is just an unknown token.
        let jwt = sign_hs256(&serde_json::json!({"sub": "a", "exp": NOW + 60, "symbols": ["*"]}));
        assert_eq!(fail(None, Some(&jwt)), AuthFailure::UnknownToken);
    }

    #[test]
    fn jwt_grants_carry_sub_and_expiry() {
        let access =
            AccessConfig::new(file(TWO_TOKENS), Some(JwtVerifier::from_key_bytes(SECRET).unwrap()));
        let jwt = sign_hs256(
            &serde_json::json!({"sub": "carol", "exp": NOW + 90, "symbols": ["MSFT"], "max_sessions": 1}),
        );
        let grant = access.authenticate_request(Some(&header(&jwt)), None, at(NOW)).unwrap();
        assert_eq!(grant.principal().to_string(), "sub=carol");
        assert_eq!(grant.expires_at_unix(), Some(NOW + 90));
        assert_eq!(grant.time_left(at(NOW + 30)), Some(Duration::from_secs(60)));
        assert_eq!(grant.time_left(at(NOW + 100)), Some(Duration::ZERO));
        assert!(grant.allows("MSFT") && !grant.allows("AAPL"));
        assert_eq!(
            access.authenticate_request(None, Some(&jwt), at(NOW + 90)).unwrap_err(),
            AuthFailure::Expired
        );
        // Tokens still work next to the JWT key.
        assert!(access.authenticate_request(None, Some("bob-token-0123456789"), at(NOW)).is_ok());
        assert_eq!(
            access.authenticate_request(None, Some("a.b.c"), at(NOW)).unwrap_err(),
            AuthFailure::BadJwt
        );
        assert_eq!(
            access.authenticate_request(None, Some("not a jwt"), at(NOW)).unwrap_err(),
            AuthFailure::UnknownToken
        );
    }

    #[test]
    fn reload_keeps_revokes_updates_or_narrows_token_sessions() {
        let old = AccessConfig::new(file(TWO_TOKENS), None);
        let alice =
            old.authenticate_request(None, Some("alice-token-0123456789"), at(NOW)).unwrap();
        let bob = old.authenticate_request(None, Some("bob-token-0123456789"), at(NOW)).unwrap();

        let same = AccessConfig::new(file(TWO_TOKENS), None);
        assert!(matches!(same.review(&alice, at(NOW)), Review::Unchanged));

        let changed = AccessConfig::new(
            file(
                r#"
[[token]]
name = "alice"
token = "alice-token-0123456789"
symbols = ["AAPL", "FX:*", "MSFT"]
max_sessions = 2

[[token]]
name = "bob"
token = "bob-token-0123456789"
symbols = ["FX:*"]
"#,
            ),
            None,
        );
        match changed.review(&alice, at(NOW)) {
            Review::Updated(g) => assert_eq!(g.entitlement().to_string(), "FX:*,AAPL,MSFT"),
            other => panic!("expected Updated, got {other:?}"),
        }
        match changed.review(&bob, at(NOW)) {
            Review::Narrowed(g) => {
                assert!(g.allows("FX:EURUSD") && !g.allows("AAPL"));
            }
            other => panic!("expected Narrowed, got {other:?}"),
        }

        let rotated = AccessConfig::new(
            file("[[token]]\nname = \"alice\"\ntoken = \"alice-token-NEW-0123456789\"\nsymbols = [\"*\"]\n"),
            None,
        );
        assert!(matches!(rotated.review(&alice, at(NOW)), Review::Revoked));
        assert!(matches!(rotated.review(&bob, at(NOW)), Review::Revoked));

        // Removing all authentication: everyone may see everything.
        assert!(matches!(AccessConfig::open().review(&bob, at(NOW)), Review::Updated(_)));
        // Adding authentication to an open gateway revokes the anonymous sessions.
        let anonymous = AccessConfig::open().authenticate_request(None, None, at(NOW)).unwrap();
        assert!(matches!(old.review(&anonymous, at(NOW)), Review::Revoked));
        assert!(matches!(AccessConfig::open().review(&anonymous, at(NOW)), Review::Unchanged));
    }

    #[test]
    fn reload_reverifies_jwt_sessions_against_the_new_key() {
        let key = || Some(JwtVerifier::from_key_bytes(SECRET).unwrap());
        let old = AccessConfig::new(TokenTable::empty(), key());
        let jwt =
            sign_hs256(&serde_json::json!({"sub": "dave", "exp": NOW + 60, "symbols": ["*"]}));
        let grant = old.authenticate_request(None, Some(&jwt), at(NOW)).unwrap();
        assert!(matches!(
            AccessConfig::new(TokenTable::empty(), key()).review(&grant, at(NOW)),
            Review::Unchanged
        ));
        let other_key =
            JwtVerifier::from_key_bytes(b"another-secret-of-32-bytes-or-more!").unwrap();
        let rotated = AccessConfig::new(TokenTable::empty(), Some(other_key));
        assert!(matches!(rotated.review(&grant, at(NOW)), Review::Revoked));
        let no_jwt = AccessConfig::new(file(TWO_TOKENS), None);
        assert!(matches!(no_jwt.review(&grant, at(NOW)), Review::Revoked));
        assert!(matches!(old.review(&grant, at(NOW + 60)), Review::Revoked), "expired meanwhile");
    }

    #[test]
    fn load_reads_files_and_names_the_flag_in_errors() {
        let dir = crate::net::tls::tests::TempDir::new("access-load");
        let tokens = dir.path().join("tokens.toml");
        std::fs::write(&tokens, TWO_TOKENS).unwrap();
        let key = dir.path().join("jwt.secret");
        std::fs::write(&key, [SECRET, b"\n"].concat()).unwrap();
        let sources = AccessSources {
            tokens_file: Some(tokens.clone()),
            access_tokens: vec!["local-token".into(), "fx-only=FX:*".into()],
            jwt_key: Some(key.clone()),
        };
        let access = AccessConfig::load(&sources).unwrap();
        assert_eq!(
            access.describe(),
            "2 tokens from --tokens-file, 2 from --access-tokens, JWT HS256"
        );
        let local = access.authenticate_request(None, Some("local-token"), at(NOW)).unwrap();
        assert_eq!(local.principal().to_string(), "token=access-tokens#1");
        assert_eq!(
            AccessConfig::open().describe(),
            "open: no access tokens and no JWT key, every request may see every symbol"
        );

        std::fs::write(&tokens, "[[token]]\nname = \"x\"\ntoken = \"short\"\nsymbols = [\"*\"]\n")
            .unwrap();
        let err = AccessConfig::load(&sources).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("--tokens-file {}: token entry 1 (\"x\"): token: too short (5 characters): use at least 16 random characters", tokens.display())
        );
        let missing = AccessSources {
            tokens_file: None,
            jwt_key: Some(dir.path().join("nope")),
            ..sources.clone()
        };
        let err = AccessConfig::load(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "--jwt-key {}: cannot read it: ",
                dir.path().join("nope").display()
            )),
            "{err}"
        );
        let dup = AccessSources {
            tokens_file: None,
            access_tokens: vec!["same".into(), "same=AAPL".into()],
            jwt_key: None,
        };
        assert_eq!(
            AccessConfig::load(&dup).unwrap_err().to_string(),
            "--access-tokens item 2 has the same token as --access-tokens item 1 (\"access-tokens#1\"): each token may appear once"
        );
    }

    #[test]
    fn world_readable_token_file_is_warned_about() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = crate::net::tls::tests::TempDir::new("access-mode");
        let tokens = dir.path().join("tokens.toml");
        std::fs::write(&tokens, TWO_TOKENS).unwrap();
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
        let sources =
            AccessSources { tokens_file: Some(tokens.clone()), ..AccessSources::default() };
        assert_eq!(
            AccessConfig::load(&sources).unwrap().warnings(),
            [format!(
                "--tokens-file {}: readable by other users (mode 644): chmod 600 it",
                tokens.display()
            )]
        );
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(AccessConfig::load(&sources).unwrap().warnings().is_empty());
        let secret = dir.path().join("jwt.secret");
        std::fs::write(&secret, SECRET).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
        let with_secret = AccessSources { jwt_key: Some(secret.clone()), ..sources.clone() };
        assert_eq!(
            AccessConfig::load(&with_secret).unwrap().warnings(),
            [format!(
                "--jwt-key {}: readable by other users (mode 640): chmod 600 it",
                secret.display()
            )]
        );
        // A public key is public: no warning.
        let public = dir.path().join("jwt.pem");
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(&public, pair.public_key_pem()).unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        let with_public = AccessSources { jwt_key: Some(public), ..sources.clone() };
        assert!(AccessConfig::load(&with_public).unwrap().warnings().is_empty());
    }

    #[test]
    fn no_secret_reaches_debug_output() {
        let access =
            AccessConfig::new(file(TWO_TOKENS), Some(JwtVerifier::from_key_bytes(SECRET).unwrap()));
        let jwt =
            sign_hs256(&serde_json::json!({"sub": "erin", "exp": NOW + 60, "symbols": ["*"]}));
        let grant = access.authenticate_request(None, Some(&jwt), at(NOW)).unwrap();
        let token_grant =
            access.authenticate_request(None, Some("alice-token-0123456789"), at(NOW)).unwrap();
        let dumps = [format!("{access:?}"), format!("{grant:?}"), format!("{token_grant:?}")];
        for dump in &dumps {
            for secret in
                ["alice-token-0123456789", "bob-token-0123456789", &jwt, "0123456789abcdef"]
            {
                assert!(!dump.contains(secret), "{dump}");
            }
        }
        assert!(dumps[1].contains("erin"), "the sub is not a secret: {}", dumps[1]);
    }
}

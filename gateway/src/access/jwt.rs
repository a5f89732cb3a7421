//! JSON Web Tokens for user sessions (`--jwt-key FILE`): the key, which fixes the one algorithm
//! accepted, and the claims the gateway reads.
//!
//! The key file is read this way:
//! - a file that starts (after blank space) with `-----BEGIN PUBLIC KEY-----` is a public key in
//!   PEM (SubjectPublicKeyInfo): an RSA key means RS256, an EC key on P-256 means ES256
//!   (`-----BEGIN RSA PUBLIC KEY-----`, PKCS#1, is RS256 too);
//! - any other file is an HS256 secret: its bytes, less one trailing line break, at least
//!   [`MIN_HS256_SECRET_BYTES`] of them (`openssl rand -hex 32 > jwt.secret`);
//! - private keys and certificates are refused, with the command that extracts the public key.
//!
//! Only the key's algorithm is accepted (`alg` in the token's header must match), so a token
//! cannot choose a weaker check. The claims ([`CLAIM_SUB`], [`CLAIM_EXP`], [`CLAIM_SYMBOLS`],
//! optional [`CLAIM_NBF`], [`CLAIM_MAX_SESSIONS`], [`CLAIM_MAX_SUBSCRIPTIONS`]) are checked here
//! with exact types against a clock the caller passes, so expiry is testable and the session can
//! close at `exp`. This module must never log or return a token, nor say which part of a
//! signature was wrong.

use std::fmt;
use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use serde::Deserialize;

use super::entitlement::Entitlement;
use super::failure::AuthFailure;
use super::secret::REDACTED;
use super::tokens::Limits;

/// The user, logged with every session line (`sub=...`). Required, a string.
pub const CLAIM_SUB: &str = "sub";
/// Expiry, integer seconds since the Unix epoch. Required. At `exp` the session closes (4001).
pub const CLAIM_EXP: &str = "exp";
/// Not before, integer seconds since the Unix epoch. Optional.
pub const CLAIM_NBF: &str = "nbf";
/// The symbol patterns, an array of strings (as in the token file). Required; `[]` entitles to
/// nothing.
pub const CLAIM_SYMBOLS: &str = "symbols";
/// Optional per-user limit: sessions at once with the same `sub`.
pub const CLAIM_MAX_SESSIONS: &str = "max_sessions";
/// Optional per-user limit: subscriptions per session, replacing `--max-subscriptions`.
pub const CLAIM_MAX_SUBSCRIPTIONS: &str = "max_subscriptions";

/// RFC 7518 section 3.2: an HS256 key must be at least as long as the hash output (256 bits).
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// A public key or secret is a few kilobytes at most; the bound stops a wrong path early.
pub const MAX_JWT_KEY_FILE_BYTES: u64 = 1024 * 1024;
/// Clock skew tolerated on `nbf` only: an identity provider that stamps `nbf = now` on a clock
/// slightly ahead of ours would otherwise issue tokens refused for their first seconds. `exp` has
/// none, so a session closes exactly at the `exp` that also refuses new sessions.
pub const NBF_LEEWAY_SECS: u64 = 30;
/// Longest `sub` accepted: it is written into every session log line.
pub const MAX_SUB_CHARS: usize = 256;

/// The algorithm a key file gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Hs256,
    Rs256,
    Es256,
}

impl JwtAlgorithm {
    pub const fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
        }
    }
    fn jsonwebtoken(self) -> Algorithm {
        match self {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        }
    }
}

/// Why the key file was refused. Never quotes the file.
#[derive(Debug, thiserror::Error)]
pub enum JwtKeyError {
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    #[error("larger than {MAX_JWT_KEY_FILE_BYTES} bytes: is this the key file?")]
    TooLarge,
    #[error(
        "an HS256 secret of {0} bytes: use at least {MIN_HS256_SECRET_BYTES} (openssl rand -hex 32)"
    )]
    SecretTooShort(usize),
    #[error(
        "a private key: give the gateway the public key only \
         (openssl pkey -in private.pem -pubout -out public.pem)"
    )]
    PrivateKey,
    #[error(
        "a certificate: give the public key it holds \
         (openssl x509 -in cert.pem -pubkey -noout > public.pem)"
    )]
    Certificate,
    #[error("a PEM `{0}`: expected `PUBLIC KEY` (RS256 or ES256) or an HS256 secret")]
    UnsupportedPem(String),
    #[error("an EC key on a curve other than P-256: only ES256 (P-256) is supported")]
    UnsupportedCurve,
    #[error("a public key of a type other than RSA or EC P-256 (RS256, ES256)")]
    UnsupportedKeyType,
    #[error("not a valid PEM public key")]
    BadPem,
}

/// Verifies JWTs with one key. `Debug` does not show the key.
#[derive(Clone)]
pub struct JwtVerifier {
    key: DecodingKey,
    algorithm: JwtAlgorithm,
    validation: Validation,
}

/// The claims of a verified, unexpired token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClaims {
    pub sub: String,
    /// Seconds since the Unix epoch; the session ends at this second.
    pub exp: u64,
    pub entitlement: Entitlement,
    pub limits: Limits,
}

#[derive(Deserialize)]
struct RawClaims {
    sub: String,
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    symbols: Vec<String>,
    #[serde(default)]
    max_sessions: Option<u32>,
    #[serde(default)]
    max_subscriptions: Option<u32>,
}

impl JwtVerifier {
    /// Reads `--jwt-key FILE`.
    pub fn from_key_file(path: &Path) -> Result<JwtVerifier, JwtKeyError> {
        use std::io::Read as _;
        let file = std::fs::File::open(path).map_err(JwtKeyError::Read)?;
        let mut bytes = Vec::new();
        file.take(MAX_JWT_KEY_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(JwtKeyError::Read)?;
        if bytes.len() as u64 > MAX_JWT_KEY_FILE_BYTES {
            return Err(JwtKeyError::TooLarge);
        }
        JwtVerifier::from_key_bytes(&bytes)
    }

    /// From the key file's contents (see the module doc for how the algorithm is chosen).
    pub fn from_key_bytes(bytes: &[u8]) -> Result<JwtVerifier, JwtKeyError> {
        let trimmed_start = bytes.trim_ascii_start();
        let (key, algorithm) = match pem_label(trimmed_start) {
            Some(label) => public_key(trimmed_start, label)?,
            None => {
                let secret = strip_one_line_break(bytes);
                if secret.len() < MIN_HS256_SECRET_BYTES {
                    return Err(JwtKeyError::SecretTooShort(secret.len()));
                }
                let key = DecodingKey::from_secret(secret)
                    .map_err(|_| JwtKeyError::SecretTooShort(secret.len()))?;
                (key, JwtAlgorithm::Hs256)
            }
        };
        // Claims are checked below with exact types and the caller's clock; the library checks
        // the header, the algorithm and the signature only.
        let mut validation = Validation::new(algorithm.jsonwebtoken());
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        Ok(JwtVerifier { key, algorithm, validation })
    }

    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// Verifies `jwt` at `now_unix` (seconds since the Unix epoch).
    pub fn verify(&self, jwt: &str, now_unix: u64) -> Result<JwtClaims, AuthFailure> {
        // The header is read first, so a JSON error from `decode` below can only be the claims'.
        let header = jsonwebtoken::decode_header(jwt).map_err(|_| AuthFailure::BadJwt)?;
        if header.alg != self.algorithm.jsonwebtoken() {
            return Err(AuthFailure::BadJwt);
        }
        let data = jsonwebtoken::decode::<RawClaims>(jwt, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::Json(_)
                | ErrorKind::Utf8(_)
                | ErrorKind::MissingRequiredClaim(_)
                | ErrorKind::InvalidClaimFormat(_) => AuthFailure::BadClaims,
                _ => AuthFailure::BadJwt,
            },
        )?;
        let claims = data.claims;
        if claims.exp <= now_unix {
            return Err(AuthFailure::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now_unix.saturating_add(NBF_LEEWAY_SECS)) {
            return Err(AuthFailure::NotYetValid);
        }
        let sub_ok = !claims.sub.is_empty()
            && claims.sub.chars().count() <= MAX_SUB_CHARS
            && !claims.sub.chars().any(char::is_control);
        if !sub_ok {
            return Err(AuthFailure::BadClaims);
        }
        let entitlement =
            Entitlement::parse(&claims.symbols).map_err(|_| AuthFailure::BadClaims)?;
        if claims.max_sessions == Some(0) || claims.max_subscriptions == Some(0) {
            return Err(AuthFailure::BadClaims);
        }
        Ok(JwtClaims {
            sub: claims.sub,
            exp: claims.exp,
            entitlement,
            limits: Limits {
                max_sessions: claims.max_sessions,
                max_subscriptions: claims.max_subscriptions,
            },
        })
    }
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.algorithm)
            .field("key", &REDACTED)
            .finish()
    }
}

/// Whether a credential has the shape of a JWT (three base64url parts), so that an opaque token
/// that is not one is reported as `unknown_token`, not `bad_jwt`.
pub fn looks_like_jwt(credential: &str) -> bool {
    let mut parts = 0;
    for part in credential.split('.') {
        parts += 1;
        let base64url = part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !base64url || (parts < 3 && part.is_empty()) {
            return false;
        }
    }
    parts == 3
}

fn strip_one_line_break(bytes: &[u8]) -> &[u8] {
    bytes.strip_suffix(b"\r\n").or_else(|| bytes.strip_suffix(b"\n")).unwrap_or(bytes)
}

/// The label of the first PEM section, when the text starts with one.
fn pem_label(text: &[u8]) -> Option<&str> {
    let rest = text.strip_prefix(b"-----BEGIN ")?;
    let end = rest.windows(5).position(|w| w == b"-----")?;
    std::str::from_utf8(&rest[..end]).ok()
}

fn public_key(pem: &[u8], label: &str) -> Result<(DecodingKey, JwtAlgorithm), JwtKeyError> {
    match label {
        "RSA PUBLIC KEY" => DecodingKey::from_rsa_pem(pem)
            .map(|k| (k, JwtAlgorithm::Rs256))
            .map_err(|_| JwtKeyError::BadPem),
        "PUBLIC KEY" => {
            let der =
                SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|_| JwtKeyError::BadPem)?;
            match spki_key_type(der.as_ref()) {
                Some(SpkiKeyType::Rsa) => DecodingKey::from_rsa_pem(pem)
                    .map(|k| (k, JwtAlgorithm::Rs256))
                    .map_err(|_| JwtKeyError::BadPem),
                Some(SpkiKeyType::EcP256) => DecodingKey::from_ec_pem(pem)
                    .map(|k| (k, JwtAlgorithm::Es256))
                    .map_err(|_| JwtKeyError::BadPem),
                Some(SpkiKeyType::EcOther) => Err(JwtKeyError::UnsupportedCurve),
                Some(SpkiKeyType::Other) => Err(JwtKeyError::UnsupportedKeyType),
                None => Err(JwtKeyError::BadPem),
            }
        }
        "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
            Err(JwtKeyError::PrivateKey)
        }
        "CERTIFICATE" => Err(JwtKeyError::Certificate),
        other => Err(JwtKeyError::UnsupportedPem(other.chars().take(40).collect())),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum SpkiKeyType {
    Rsa,
    EcP256,
    EcOther,
    Other,
}

/// DER of the OIDs that matter: rsaEncryption, id-ecPublicKey, prime256v1.
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Reads `SubjectPublicKeyInfo ::= SEQUENCE { algorithm SEQUENCE { OID, params }, key BIT STRING }`
/// just far enough to name the key type.
fn spki_key_type(der: &[u8]) -> Option<SpkiKeyType> {
    let (tag, spki, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, algorithm, _) = der_element(spki)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, params) = der_element(algorithm)?;
    if tag != 0x06 {
        return None;
    }
    Some(if oid == OID_RSA {
        SpkiKeyType::Rsa
    } else if oid == OID_EC {
        match der_element(params) {
            Some((0x06, curve, _)) if curve == OID_P256 => SpkiKeyType::EcP256,
            _ => SpkiKeyType::EcOther,
        }
    } else {
        SpkiKeyType::Other
    })
}

/// One DER element: (tag, contents, what follows it). Definite lengths up to 4 bytes.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len_bytes, after) = rest.split_at(n);
        rest = after;
        len_bytes.iter().fold(0usize, |acc, &b| acc << 8 | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    Some((tag, contents, after))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    /// RFC 7515 appendix A.1: the HS256 example, its key and its exact token.
    const RFC7515_A1_KEY_B64URL: &str =
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
    const RFC7515_A1_TOKEN: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

    pub(crate) const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    pub(crate) const NOW: u64 = 1_800_000_000;

    pub(crate) fn sign_hs256(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    }

    fn hs256() -> JwtVerifier {
        JwtVerifier::from_key_bytes(SECRET).unwrap()
    }

    /// A small base64url decoder, so the test needs no extra crate.
    fn base64url_decode(text: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url"),
        };
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for &c in text.as_bytes() {
            acc = acc << 6 | u32::from(value(c));
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }

    #[test]
    fn rfc7515_example_has_a_good_signature_but_not_our_claims() {
        let key = base64url_decode(RFC7515_A1_KEY_B64URL);
        assert_eq!(key.len(), 64);
        let verifier = JwtVerifier::from_key_bytes(&key).unwrap();
        assert_eq!(verifier.algorithm(), JwtAlgorithm::Hs256);
        // Signed correctly, but it has no `sub` or `symbols`: a claims failure, not a signature one.
        assert_eq!(verifier.verify(RFC7515_A1_TOKEN, 1_300_819_379), Err(AuthFailure::BadClaims));
        let mut tampered = RFC7515_A1_TOKEN.to_string();
        tampered.pop();
        tampered.push('j');
        assert_eq!(verifier.verify(&tampered, 1_300_819_379), Err(AuthFailure::BadJwt));
        let other = JwtVerifier::from_key_bytes(SECRET).unwrap();
        assert_eq!(other.verify(RFC7515_A1_TOKEN, 1_300_819_379), Err(AuthFailure::BadJwt));
    }

    #[test]
    fn valid_token_gives_sub_exp_symbols_and_limits() {
        let jwt = sign_hs256(&serde_json::json!({
            "sub": "alice@example.com", "exp": NOW + 60, "symbols": ["AAPL", "FX:*"],
            "max_subscriptions": 50, "iat": NOW, "iss": "idp", "aud": "market-data"
        }));
        let claims = hs256().verify(&jwt, NOW).unwrap();
        assert_eq!(claims.sub, "alice@example.com");
        assert_eq!(claims.exp, NOW + 60);
        assert_eq!(claims.entitlement.to_string(), "FX:*,AAPL");
        assert_eq!(claims.limits, Limits { max_sessions: None, max_subscriptions: Some(50) });
    }

    #[test]
    fn expiry_is_exact_to_the_second() {
        let jwt = sign_hs256(&serde_json::json!({"sub": "a", "exp": NOW, "symbols": ["*"]}));
        assert!(hs256().verify(&jwt, NOW - 1).is_ok());
        assert_eq!(hs256().verify(&jwt, NOW), Err(AuthFailure::Expired));
        assert_eq!(hs256().verify(&jwt, NOW + 1000), Err(AuthFailure::Expired));
    }

    #[test]
    fn nbf_allows_small_clock_skew_only() {
        let jwt = sign_hs256(
            &serde_json::json!({"sub": "a", "exp": NOW + 600, "nbf": NOW + 30, "symbols": ["*"]}),
        );
        assert!(hs256().verify(&jwt, NOW).is_ok());
        assert_eq!(hs256().verify(&jwt, NOW - 1), Err(AuthFailure::NotYetValid));
    }

    #[test]
    fn claims_with_wrong_types_or_missing_are_bad_claims() {
        let cases = [
            serde_json::json!({"exp": NOW + 60, "symbols": ["*"]}),
            serde_json::json!({"sub": "a", "symbols": ["*"]}),
            serde_json::json!({"sub": "a", "exp": NOW + 60}),
            serde_json::json!({"sub": "a", "exp": (NOW + 60).to_string(), "symbols": ["*"]}),
            serde_json::json!({"sub": "a", "exp": NOW + 60, "nbf": "0", "symbols": ["*"]}),
            serde_json::json!({"sub": "a", "exp": NOW + 60, "symbols": "AAPL"}),
            serde_json::json!({"sub": "a", "exp": NOW + 60, "symbols": ["A*B"]}),
            serde_json::json!({"sub": "", "exp": NOW + 60, "symbols": ["*"]}),
            serde_json::json!({"sub": "a\nforged log line", "exp": NOW + 60, "symbols": ["*"]}),
            serde_json::json!({"sub": 7, "exp": NOW + 60, "symbols": ["*"]}),
            serde_json::json!({"sub": "a", "exp": NOW + 60, "symbols": ["*"], "max_sessions": 0}),
            serde_json::json!({"sub": "a", "exp": 1.8e9, "symbols": ["*"]}),
        ];
        for claims in cases {
            assert_eq!(
                hs256().verify(&sign_hs256(&claims), NOW),
                Err(AuthFailure::BadClaims),
                "{claims}"
            );
        }
        let nothing = sign_hs256(&serde_json::json!({"sub": "a", "exp": NOW + 60, "symbols": []}));
        assert!(hs256().verify(&nothing, NOW).unwrap().entitlement.is_empty());
    }

    #[test]
    fn the_token_cannot_choose_its_algorithm() {
        let claims = serde_json::json!({"sub": "a", "exp": NOW + 60, "symbols": ["*"]});
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap();
        assert_eq!(hs256().verify(&hs384, NOW), Err(AuthFailure::BadJwt));
        // `alg: none`, unsigned.
        let none =
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5LCJzeW1ib2xzIjpbIioiXX0.";
        assert_eq!(hs256().verify(none, NOW), Err(AuthFailure::BadJwt));
        assert_eq!(hs256().verify("not-a-jwt", NOW), Err(AuthFailure::BadJwt));
    }

    #[test]
    fn es256_public_key_verifies_tokens_of_its_private_key() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let verifier = JwtVerifier::from_key_bytes(pair.public_key_pem().as_bytes()).unwrap();
        assert_eq!(verifier.algorithm(), JwtAlgorithm::Es256);
        let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let claims = serde_json::json!({"sub": "bob", "exp": NOW + 5, "symbols": ["MSFT"]});
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &signing).unwrap();
        let verified = verifier.verify(&jwt, NOW).unwrap();
        assert_eq!((verified.sub.as_str(), verified.exp), ("bob", NOW + 5));
        // The same claims signed with the shared-secret algorithm must not pass (key confusion).
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(pair.public_key_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(verifier.verify(&hs, NOW), Err(AuthFailure::BadJwt));
    }

    #[test]
    fn other_curves_private_keys_and_certificates_are_refused() {
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let err = JwtVerifier::from_key_bytes(p384.public_key_pem().as_bytes()).unwrap_err();
        assert!(matches!(err, JwtKeyError::UnsupportedCurve), "{err}");
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let err = JwtVerifier::from_key_bytes(ed.public_key_pem().as_bytes()).unwrap_err();
        assert!(matches!(err, JwtKeyError::UnsupportedKeyType), "{err}");
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let err = JwtVerifier::from_key_bytes(p256.serialize_pem().as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a private key: give the gateway the public key only (openssl pkey -in private.pem -pubout -out public.pem)"
        );
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&p256)
            .unwrap();
        let err = JwtVerifier::from_key_bytes(cert.pem().as_bytes()).unwrap_err();
        assert!(matches!(err, JwtKeyError::Certificate), "{err}");
        let err = JwtVerifier::from_key_bytes(
            b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n",
        )
        .unwrap_err();
        assert!(matches!(err, JwtKeyError::BadPem), "{err}");
    }

    #[test]
    fn rs256_public_key_from_openssl_verifies() {
        let dir = crate::net::tls::tests::TempDir::new("jwt-rsa");
        let private = dir.path().join("private.pem");
        let public = dir.path().join("public.pem");
        let run = |args: &[&str]| {
            let status = std::process::Command::new("openssl")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl on PATH (scripts/setup.sh installs it)");
            assert!(status.success(), "openssl {args:?}");
        };
        let private_s = private.to_str().unwrap();
        let public_s = public.to_str().unwrap();
        run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private_s,
        ]);
        run(&["pkey", "-in", private_s, "-pubout", "-out", public_s]);
        let verifier = JwtVerifier::from_key_file(&public).unwrap();
        assert_eq!(verifier.algorithm(), JwtAlgorithm::Rs256);
        let signing = EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
        let claims = serde_json::json!({"sub": "carol", "exp": NOW + 5, "symbols": ["*"]});
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &signing).unwrap();
        assert_eq!(verifier.verify(&jwt, NOW).unwrap().sub, "carol");
        run(&["rsa", "-in", private_s, "-RSAPublicKey_out", "-out", public_s]);
        let pkcs1 = JwtVerifier::from_key_file(&public).unwrap();
        assert_eq!(pkcs1.verify(&jwt, NOW).unwrap().sub, "carol");
    }

    #[test]
    fn secret_file_loses_one_trailing_line_break_and_must_be_long_enough() {
        let with_newline = [SECRET, b"\n"].concat();
        let jwt = sign_hs256(&serde_json::json!({"sub": "a", "exp": NOW + 60, "symbols": ["*"]}));
        assert!(JwtVerifier::from_key_bytes(&with_newline).unwrap().verify(&jwt, NOW).is_ok());
        let with_crlf = [SECRET, b"\r\n"].concat();
        assert!(JwtVerifier::from_key_bytes(&with_crlf).unwrap().verify(&jwt, NOW).is_ok());
        let err = JwtVerifier::from_key_bytes(b"short-secret\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "an HS256 secret of 12 bytes: use at least 32 (openssl rand -hex 32)"
        );
    }

    #[test]
    fn looks_like_jwt_is_three_base64url_parts() {
        assert!(looks_like_jwt(RFC7515_A1_TOKEN));
        assert!(looks_like_jwt("a.b."));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt(".b.c"));
        assert!(!looks_like_jwt("plain token with spaces"));
        assert!(!looks_like_jwt("a.b+c.d"));
    }

    #[test]
    fn debug_does_not_show_the_key() {
        assert_eq!(
            format!("{:?}", hs256()),
            "JwtVerifier { algorithm: Hs256, key: \"<redacted>\" }"
        );
    }
}

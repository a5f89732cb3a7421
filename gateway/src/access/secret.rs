//! Secrets in memory: a token's SHA-256 digest, compared in constant time, and a presented
//! credential. Neither prints its value: `Debug` shows a placeholder, and there is no `Display`.
//!
//! This module must never derive `PartialEq` on a secret (a short-circuiting compare leaks, by
//! its timing, how much of a guess was right), nor give any way to format one.

use std::fmt;

use sha2::{Digest as _, Sha256};
use subtle::{ConstantTimeEq, CtOption};

/// What `Debug` prints in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// The SHA-256 digest of a token. Plain tokens and `sha256` entries both become one, so both are
/// matched the same way: hash what the client presents, compare the digests in constant time.
#[derive(Clone, Copy)]
pub struct TokenDigest([u8; 32]);

/// Why a `sha256` value was refused. Says what is wrong with its shape, never echoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    #[error("expected 64 hexadecimal digits (the SHA-256 of the token), found {0} characters")]
    Length(usize),
    #[error("expected hexadecimal digits only (0-9, a-f)")]
    NotHex,
}

impl TokenDigest {
    /// The digest of a token as presented.
    pub fn of(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// From 64 hexadecimal digits (either case), as `sha256sum` or `openssl dgst -sha256` print.
    pub fn from_hex(hex: &str) -> Result<TokenDigest, DigestParseError> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return Err(DigestParseError::Length(hex.chars().count()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or(DigestParseError::NotHex)?;
            let lo = hex_value(pair[1]).ok_or(DigestParseError::NotHex)?;
            out[i] = hi << 4 | lo;
        }
        Ok(TokenDigest(out))
    }

    /// Constant-time equality: the time taken does not depend on where the digests differ.
    pub fn ct_eq(&self, other: &TokenDigest) -> subtle::Choice {
        self.0.ct_eq(&other.0)
    }

    /// The index of the one digest in `candidates` equal to `self`, looking at every candidate
    /// the same way whether or not one matched (the number of candidates is not a secret).
    pub fn position_in<'a, I>(&self, candidates: I) -> Option<usize>
    where
        I: IntoIterator<Item = &'a TokenDigest>,
    {
        let mut found = 0u64;
        let mut hit = subtle::Choice::from(0);
        for (i, candidate) in candidates.into_iter().enumerate() {
            let this = self.ct_eq(candidate);
            subtle::ConditionallySelectable::conditional_assign(&mut found, &(i as u64), this);
            hit |= this;
        }
        Option::from(CtOption::new(found, hit)).map(|i: u64| i as usize)
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({REDACTED})")
    }
}

/// A secret string kept for later (a session's JWT, re-verified when keys are reloaded).
#[derive(Clone)]
pub struct SecretString(Box<str>);

impl SecretString {
    pub fn new(value: &str) -> SecretString {
        SecretString(value.into())
    }
    /// The value, for the one caller that needs it (verification). Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretString({REDACTED})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `printf %s 'correct horse battery staple' | sha256sum`
    const HORSE_SHA256: &str = "c4bbcb1fbec99d65bf59d85c8cb62ee2db963f0fe106f483d9afa73bd4e39a8a";

    #[test]
    fn digest_of_a_token_matches_sha256sum() {
        let from_token = TokenDigest::of("correct horse battery staple");
        let from_hex = TokenDigest::from_hex(HORSE_SHA256).unwrap();
        assert!(bool::from(from_token.ct_eq(&from_hex)));
        let upper = TokenDigest::from_hex(&HORSE_SHA256.to_uppercase()).unwrap();
        assert!(bool::from(upper.ct_eq(&from_hex)));
        assert!(!bool::from(TokenDigest::of("correct horse battery stapler").ct_eq(&from_hex)));
    }

    #[test]
    fn bad_hex_is_refused_without_echoing_it() {
        assert_eq!(TokenDigest::from_hex("abc").map(drop), Err(DigestParseError::Length(3)));
        let not_hex = format!("{}zz", &HORSE_SHA256[..62]);
        assert_eq!(TokenDigest::from_hex(&not_hex).map(drop), Err(DigestParseError::NotHex));
        assert_eq!(
            DigestParseError::Length(3).to_string(),
            "expected 64 hexadecimal digits (the SHA-256 of the token), found 3 characters"
        );
    }

    #[test]
    fn position_in_finds_the_match_or_none() {
        let digests: Vec<_> = ["a", "b", "c"].iter().map(|t| TokenDigest::of(t)).collect();
        assert_eq!(TokenDigest::of("a").position_in(&digests), Some(0));
        assert_eq!(TokenDigest::of("c").position_in(&digests), Some(2));
        assert_eq!(TokenDigest::of("d").position_in(&digests), None);
        assert_eq!(TokenDigest::of("a").position_in(&[]), None);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let digest = TokenDigest::of("hunter2hunter2");
        assert_eq!(format!("{digest:?}"), "TokenDigest(<redacted>)");
        let secret = SecretString::new("hunter2hunter2");
        assert_eq!(format!("{secret:?}"), "SecretString(<redacted>)");
        assert_eq!(secret.expose(), "hunter2hunter2");
    }
}

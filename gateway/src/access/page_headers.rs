//! Security headers of the dashboard page (`GET /`), as constants for the HTTP layer.
//!
//! The page is one self-contained file (`gateway/assets/index.html`) with one inline `<script>`
//! and one inline `<style>`; the policy allows exactly those two by their SHA-256 hashes, and no
//! other script or style, inline or not. The page connects only to its own origin: `fetch` of
//! `/symbols` and the WebSocket `/ws` (`'self'` covers `ws:`/`wss:` of the same host in CSP
//! level 3 browsers). Its only image is the `data:` favicon. No page may frame it.
//!
//! When the page's script or style changes, its hash changes: the test below fails and prints
//! the new policy to paste here. This module must never loosen the policy with
//! `'unsafe-inline'` or a wildcard source.

/// `Content-Security-Policy` of `/`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; \
     script-src 'sha256-Tb5EhAiFQQccUAMf66fmdfXKjU6shDC6jOqyQ7PI8DU='; \
     style-src 'sha256-j+N3DhN411DEtpXHoXOwMZFj8etkpvuq6b7VoBCAq+g='; \
     connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `X-Content-Type-Options` of every response: browsers must not guess a type other than the
/// one sent (a JSON snapshot is never run as a script).
pub const X_CONTENT_TYPE_OPTIONS: &str = "nosniff";

/// `X-Frame-Options` of `/`: `frame-ancestors 'none'` for browsers older than CSP level 2.
pub const X_FRAME_OPTIONS: &str = "DENY";

/// `Referrer-Policy` of `/`: the page's URL may carry `?token=`, which must not leak to another
/// site in a `Referer` header.
pub const REFERRER_POLICY: &str = "no-referrer";

/// Every header `/` carries, in the order to write them.
pub const PAGE_HEADERS: [(&str, &str); 4] = [
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", X_CONTENT_TYPE_OPTIONS),
    ("X-Frame-Options", X_FRAME_OPTIONS),
    ("Referrer-Policy", REFERRER_POLICY),
];

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    const PAGE: &str = include_str!("../../assets/index.html");

    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// The contents of every `<tag>…</tag>` element (no attributes allowed on the tag, so a
    /// `<script src>` cannot slip in unnoticed).
    fn inline_blocks<'a>(page: &'a str, tag: &str) -> Vec<&'a str> {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        let mut out = Vec::new();
        let mut rest = page;
        while let Some(start) = rest.find(&open) {
            let body = &rest[start + open.len()..];
            let end = body.find(&close).expect("closed element");
            out.push(&body[..end]);
            rest = &body[end + close.len()..];
        }
        out
    }

    fn hash(block: &str) -> String {
        format!("'sha256-{}'", base64(&Sha256::digest(block.as_bytes())))
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn policy_allows_exactly_the_pages_inline_script_and_style() {
        let scripts = inline_blocks(PAGE, "script");
        let styles = inline_blocks(PAGE, "style");
        assert_eq!((scripts.len(), styles.len()), (1, 1), "the page has one script and one style");
        let expected = format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash(scripts[0]),
            hash(styles[0])
        );
        assert_eq!(
            CONTENT_SECURITY_POLICY, expected,
            "index.html changed: set CONTENT_SECURITY_POLICY to the value on the right"
        );
    }

    #[test]
    fn page_has_nothing_the_policy_would_block() {
        // Scripts or styles the hashes do not cover: other elements, attributes, handlers.
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        for forbidden in [
            " style=\"",
            " onclick=",
            " onload=",
            " onerror=",
            "javascript:",
            "<iframe",
            "<img",
            "<link rel=\"stylesheet\"",
            "innerHTML",
            "eval(",
        ] {
            assert!(!PAGE.contains(forbidden), "the page uses {forbidden:?}: the policy blocks it");
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}

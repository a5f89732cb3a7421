//! Opaque access tokens: the token file (`--tokens-file`, TOML) and the quick local list
//! (`--access-tokens`), both parsed into one [`TokenTable`] of named entries, each with its
//! entitlement and optional limits.
//!
//! The file's format (every field but the limits is required; unknown fields are errors):
//!
//! ```toml
//! [[token]]
//! name = "alice-desk"            # in logs; 1-64 of A-Z a-z 0-9 . _ - @ :
//! sha256 = "c4bbcb1f…"           # SHA-256 of the token, 64 hex digits (`printf %s TOKEN | sha256sum`)
//! symbols = ["AAPL", "FX:*"]     # patterns: `*`, a symbol, or a prefix ending in `*`
//! max_sessions = 4               # optional: sessions at once with this token
//! max_subscriptions = 200        # optional: replaces --max-subscriptions for its sessions
//!
//! [[token]]
//! name = "wallboard"
//! token = "plain-token-of-16-chars-or-more"   # instead of sha256: the token itself
//! symbols = ["*"]
//! ```
//!
//! This module must never put a token, or a line of the file (which may hold one), into an error
//! message: errors name the entry (its position and name) and the field, and say what is wrong.

use std::fmt;
use std::path::Path;

use super::credential::MAX_CREDENTIAL_BYTES;
use super::entitlement::Entitlement;
use super::secret::{DigestParseError, TokenDigest};

/// Largest token file read, in bytes: a million entries of ~100 bytes would be 100 MB, far beyond
/// any deployment; the bound keeps a wrong path (a log file, a device) from filling memory.
pub const MAX_TOKEN_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Shortest plain `token` accepted in the file: 16 characters from a random generator are beyond
/// guessing over the network; shorter ones are usually a placeholder left in by mistake.
pub const MIN_FILE_TOKEN_CHARS: usize = 16;
/// Longest entry name: names appear in every session log line.
pub const MAX_NAME_CHARS: usize = 64;

/// Per-token limits; `None` means the gateway-wide setting applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Sessions open at once with this credential (further ones are refused with 503).
    pub max_sessions: Option<u32>,
    /// Subscriptions per session, replacing `--max-subscriptions` (higher or lower).
    pub max_subscriptions: Option<u32>,
}

/// Where an entry was configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryOrigin {
    TokensFile,
    AccessTokensFlag,
}

/// One configured token.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    /// Its name, as logged (`token=NAME`).
    pub name: Box<str>,
    pub digest: TokenDigest,
    pub entitlement: Entitlement,
    pub limits: Limits,
    pub origin: EntryOrigin,
}

/// Every configured token, looked up by digest in constant time.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    entries: Vec<TokenEntry>,
    /// The entries' digests, side by side, so a lookup walks one small contiguous array.
    digests: Vec<TokenDigest>,
}

/// Why the token file (or the `--access-tokens` list) was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    #[error("larger than {MAX_TOKEN_FILE_BYTES} bytes: is this the token file?")]
    TooLarge,
    #[error("not valid UTF-8 TOML")]
    NotUtf8,
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("{0}")]
    Shape(String),
    #[error("{entry}: {field}: {message}")]
    Entry { entry: EntryLabel, field: &'static str, message: String },
    #[error("{second} has the same token as {first}: each token may appear once")]
    DuplicateToken { first: EntryLabel, second: EntryLabel },
    #[error("{second} has the same name as {first}: names must be unique")]
    DuplicateName { first: EntryLabel, second: EntryLabel },
}

/// How an entry is named in messages: its position (1-based) and, once known, its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryLabel {
    pub kind: &'static str,
    pub index: usize,
    pub name: Option<String>,
}

impl fmt::Display for EntryLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.index)?;
        if let Some(name) = &self.name {
            write!(f, " ({name:?})")?;
        }
        Ok(())
    }
}

const FILE_FIELDS: [&str; 6] =
    ["name", "token", "sha256", "symbols", "max_sessions", "max_subscriptions"];

impl TokenTable {
    /// No tokens.
    pub fn empty() -> TokenTable {
        TokenTable::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[TokenEntry] {
        &self.entries
    }

    /// The entry whose token has this digest. Every entry is compared, in constant time, whether
    /// or not one matches, so the time taken says nothing about the token.
    pub fn find(&self, digest: &TokenDigest) -> Option<&TokenEntry> {
        digest.position_in(&self.digests).map(|i| &self.entries[i])
    }

    /// Reads and parses a token file.
    pub fn read_file(path: &Path) -> Result<TokenTable, TokenFileError> {
        use std::io::Read as _;
        let file = std::fs::File::open(path).map_err(TokenFileError::Read)?;
        let mut bytes = Vec::new();
        file.take(MAX_TOKEN_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(TokenFileError::Read)?;
        if bytes.len() as u64 > MAX_TOKEN_FILE_BYTES {
            return Err(TokenFileError::TooLarge);
        }
        let text = String::from_utf8(bytes).map_err(|_| TokenFileError::NotUtf8)?;
        TokenTable::parse_file(&text)
    }

    /// Parses a token file's text.
    pub fn parse_file(text: &str) -> Result<TokenTable, TokenFileError> {
        let root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            // The error's own Display quotes the offending line, which may hold a token: keep
            // only the line number and the parser's message.
            let line = e
                .span()
                .map_or(1, |span| 1 + text[..span.start.min(text.len())].matches('\n').count());
            TokenFileError::Syntax { line, message: e.message().trim().to_string() }
        })?;
        let mut table = TokenTable::default();
        for key in root.keys() {
            if key != "token" {
                return Err(TokenFileError::Shape(format!(
                    "unknown top-level key `{key}`: the file holds `[[token]]` entries only"
                )));
            }
        }
        let Some(entries) = root.get("token") else {
            return Ok(table);
        };
        let Some(entries) = entries.as_array() else {
            return Err(TokenFileError::Shape(
                "`token` must be an array of tables: write each entry as `[[token]]`".into(),
            ));
        };
        for (i, value) in entries.iter().enumerate() {
            let mut label = EntryLabel { kind: "token entry", index: i + 1, name: None };
            let Some(entry) = value.as_table() else {
                return Err(TokenFileError::Shape(format!(
                    "{label}: must be a table: write each entry as `[[token]]`"
                )));
            };
            table.push(parse_file_entry(entry, &mut label)?, label)?;
        }
        Ok(table)
    }

    /// Parses the `--access-tokens` list: `TOKEN` (every symbol) or `TOKEN=SYM1+SYM2` (those
    /// patterns). Entries are named `access-tokens#N` (1-based) in logs. Empty items are skipped.
    pub fn parse_access_tokens(list: &[String]) -> Result<TokenTable, TokenFileError> {
        let mut table = TokenTable::default();
        for (i, item) in list.iter().filter(|t| !t.is_empty()).enumerate() {
            let name = format!("access-tokens#{}", i + 1);
            let label = EntryLabel { kind: "--access-tokens item", index: i + 1, name: None };
            let (token, entitlement) = match item.split_once('=') {
                None => (item.as_str(), Entitlement::all()),
                Some((token, symbols)) => {
                    let patterns = symbols.split('+').filter(|s| !s.is_empty());
                    let entitlement =
                        Entitlement::parse(patterns).map_err(|e| TokenFileError::Entry {
                            entry: label.clone(),
                            field: "symbols",
                            message: e.to_string(),
                        })?;
                    (token, entitlement)
                }
            };
            check_token_text(token, 1).map_err(|message| TokenFileError::Entry {
                entry: label.clone(),
                field: "token",
                message,
            })?;
            let entry = TokenEntry {
                name: name.into(),
                digest: TokenDigest::of(token),
                entitlement,
                limits: Limits::default(),
                origin: EntryOrigin::AccessTokensFlag,
            };
            table.push(entry, label)?;
        }
        Ok(table)
    }

    /// Both tables in one; a token or a name in both is an error.
    pub fn merge(mut self, other: TokenTable) -> Result<TokenTable, TokenFileError> {
        for entry in other.entries {
            let label = EntryLabel {
                kind: kind_of(entry.origin),
                index: self.entries.len() + 1,
                name: Some(entry.name.to_string()),
            };
            self.push(entry, label)?;
        }
        Ok(self)
    }

    fn push(&mut self, entry: TokenEntry, label: EntryLabel) -> Result<(), TokenFileError> {
        let label_of = |e: &TokenEntry, index: usize| EntryLabel {
            kind: kind_of(e.origin),
            index: index + 1,
            name: Some(e.name.to_string()),
        };
        if let Some(i) = entry.digest.position_in(&self.digests) {
            return Err(TokenFileError::DuplicateToken {
                first: label_of(&self.entries[i], i),
                second: label,
            });
        }
        if let Some(i) = self.entries.iter().position(|e| e.name == entry.name) {
            return Err(TokenFileError::DuplicateName {
                first: label_of(&self.entries[i], i),
                second: label,
            });
        }
        self.digests.push(entry.digest);
        self.entries.push(entry);
        Ok(())
    }
}

fn kind_of(origin: EntryOrigin) -> &'static str {
    match origin {
        EntryOrigin::TokensFile => "token entry",
        EntryOrigin::AccessTokensFlag => "--access-tokens item",
    }
}

fn parse_file_entry(
    entry: &toml::Table,
    label: &mut EntryLabel,
) -> Result<TokenEntry, TokenFileError> {
    let fail = |label: &EntryLabel, field: &'static str, message: String| TokenFileError::Entry {
        entry: label.clone(),
        field,
        message,
    };
    // The name first, so every later message can show it.
    let name = match entry.get("name") {
        None => return Err(fail(label, "name", "missing: give every entry a name".into())),
        Some(value) => {
            let Some(name) = value.as_str() else {
                return Err(fail(label, "name", "must be a string".into()));
            };
            check_name(name).map_err(|m| fail(label, "name", m))?;
            label.name = Some(name.to_string());
            name
        }
    };
    for key in entry.keys() {
        if !FILE_FIELDS.contains(&key.as_str()) {
            return Err(TokenFileError::Entry {
                entry: label.clone(),
                field: "entry",
                message: format!(
                    "unknown field `{key}`; the fields are name, token or sha256, symbols, \
                     max_sessions, max_subscriptions"
                ),
            });
        }
    }
    let digest = match (entry.get("token"), entry.get("sha256")) {
        (Some(_), Some(_)) => {
            return Err(fail(label, "token", "give `token` or `sha256`, not both".into()))
        }
        (None, None) => {
            return Err(fail(
                label,
                "token",
                "missing: give the token (`token = \"...\"`) or its SHA-256 (`sha256 = \"...\"`)"
                    .into(),
            ))
        }
        (Some(token), None) => {
            let Some(token) = token.as_str() else {
                return Err(fail(label, "token", "must be a string".into()));
            };
            check_token_text(token, MIN_FILE_TOKEN_CHARS).map_err(|m| fail(label, "token", m))?;
            TokenDigest::of(token)
        }
        (None, Some(hex)) => {
            let Some(hex) = hex.as_str() else {
                return Err(fail(label, "sha256", "must be a string of 64 hex digits".into()));
            };
            TokenDigest::from_hex(hex.trim())
                .map_err(|e: DigestParseError| fail(label, "sha256", e.to_string()))?
        }
    };
    let entitlement = match entry.get("symbols") {
        None => return Err(fail(
            label,
            "symbols",
            "missing: list the symbol patterns it may see, e.g. [\"*\"] or [\"AAPL\", \"FX:*\"]"
                .into(),
        )),
        Some(value) => {
            let Some(items) = value.as_array() else {
                return Err(fail(label, "symbols", "must be an array of strings".into()));
            };
            if items.is_empty() {
                return Err(fail(
                    label,
                    "symbols",
                    "empty: an entry entitled to nothing is a mistake; remove the entry instead"
                        .into(),
                ));
            }
            let mut patterns = Vec::with_capacity(items.len());
            for item in items {
                let Some(text) = item.as_str() else {
                    return Err(fail(label, "symbols", "must be an array of strings".into()));
                };
                patterns.push(text);
            }
            Entitlement::parse(patterns).map_err(|e| fail(label, "symbols", e.to_string()))?
        }
    };
    let limits = Limits {
        max_sessions: positive(entry, "max_sessions")
            .map_err(|m| fail(label, "max_sessions", m))?,
        max_subscriptions: positive(entry, "max_subscriptions")
            .map_err(|m| fail(label, "max_subscriptions", m))?,
    };
    Ok(TokenEntry {
        name: name.into(),
        digest,
        entitlement,
        limits,
        origin: EntryOrigin::TokensFile,
    })
}

fn positive(entry: &toml::Table, field: &str) -> Result<Option<u32>, String> {
    let Some(value) = entry.get(field) else {
        return Ok(None);
    };
    match value.as_integer() {
        Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => Ok(Some(n as u32)),
        Some(n) => Err(format!("{n} is out of range: at least 1, at most {}", u32::MAX)),
        None => Err("must be an integer".into()),
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-@:".contains(c);
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("must be 1 to {MAX_NAME_CHARS} characters long"));
    }
    if !name.chars().all(allowed) {
        return Err(format!(
            "{name:?}: only letters, digits and . _ - @ : are allowed (names appear in logs)"
        ));
    }
    Ok(())
}

/// What a token's text must be; the message never quotes it.
fn check_token_text(token: &str, min_chars: usize) -> Result<(), String> {
    let chars = token.chars().count();
    if chars < min_chars {
        return Err(if min_chars <= 1 {
            "empty".to_string()
        } else {
            format!("too short ({chars} characters): use at least {min_chars} random characters")
        });
    }
    if token.len() > MAX_CREDENTIAL_BYTES {
        return Err(format!("longer than {MAX_CREDENTIAL_BYTES} bytes"));
    }
    if token.chars().any(char::is_control) {
        return Err("holds a control character: a token is printable characters only".into());
    }
    if token.starts_with([' ', '\t']) || token.ends_with([' ', '\t']) {
        return Err("starts or ends with whitespace, which HTTP strips: remove it".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HORSE: &str = "correct horse battery staple";
    const HORSE_SHA256: &str = "c4bbcb1fbec99d65bf59d85c8cb62ee2db963f0fe106f483d9afa73bd4e39a8a";

    fn err(text: &str) -> String {
        TokenTable::parse_file(text).unwrap_err().to_string()
    }

    #[test]
    fn plain_and_hashed_entries_are_found_by_the_presented_token() {
        let text = format!(
            r#"
[[token]]
name = "alice-desk"
sha256 = "{HORSE_SHA256}"
symbols = ["AAPL", "FX:*"]
max_sessions = 4
max_subscriptions = 200

[[token]]
name = "wallboard"
token = "wallboard-token-0123456789"
symbols = ["*"]
"#
        );
        let table = TokenTable::parse_file(&text).unwrap();
        assert_eq!(table.len(), 2);
        let alice = table.find(&TokenDigest::of(HORSE)).unwrap();
        assert_eq!(&*alice.name, "alice-desk");
        assert_eq!(alice.entitlement.to_string(), "FX:*,AAPL");
        assert_eq!(alice.limits, Limits { max_sessions: Some(4), max_subscriptions: Some(200) });
        assert_eq!(alice.origin, EntryOrigin::TokensFile);
        let wall = table.find(&TokenDigest::of("wallboard-token-0123456789")).unwrap();
        assert_eq!(&*wall.name, "wallboard");
        assert!(wall.entitlement.allows_all());
        assert_eq!(wall.limits, Limits::default());
        assert!(table.find(&TokenDigest::of("wallboard-token-012345678")).is_none());
    }

    #[test]
    fn an_empty_file_has_no_tokens() {
        assert!(TokenTable::parse_file("").unwrap().is_empty());
        assert!(TokenTable::parse_file("# nothing yet\n").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_entry_and_the_field() {
        let base = |extra: &str| {
            format!("[[token]]\nname = \"ok\"\ntoken = \"ok-token-0123456789\"\nsymbols = [\"*\"]\n\n[[token]]\n{extra}")
        };
        assert_eq!(
            err(&base("name = \"bob\"\nsha256 = \"abc\"\nsymbols = [\"*\"]")),
            "token entry 2 (\"bob\"): sha256: expected 64 hexadecimal digits (the SHA-256 of the token), found 3 characters"
        );
        assert_eq!(
            err(&base("name = \"bob\"\ntoken = \"bob-token-0123456789\"\nsymbols = [\"A*B\"]")),
            "token entry 2 (\"bob\"): symbols: pattern \"A*B\": `*` may only end a pattern (`FX:*`) or stand alone (`*`)"
        );
        assert_eq!(
            err(&base("token = \"bob-token-0123456789\"\nsymbols = [\"*\"]")),
            "token entry 2: name: missing: give every entry a name"
        );
        assert_eq!(
            err(&base("name = \"bob\"\nsymbols = [\"*\"]")),
            "token entry 2 (\"bob\"): token: missing: give the token (`token = \"...\"`) or its SHA-256 (`sha256 = \"...\"`)"
        );
        assert_eq!(
            err(&base(&format!("name = \"bob\"\ntoken = \"bob-token-0123456789\"\nsha256 = \"{HORSE_SHA256}\"\nsymbols = [\"*\"]"))),
            "token entry 2 (\"bob\"): token: give `token` or `sha256`, not both"
        );
        assert_eq!(
            err(&base("name = \"bob\"\ntoken = \"bob-token-0123456789\"")),
            "token entry 2 (\"bob\"): symbols: missing: list the symbol patterns it may see, e.g. [\"*\"] or [\"AAPL\", \"FX:*\"]"
        );
        assert_eq!(
            err(&base("name = \"bob\"\ntoken = \"bob-token-0123456789\"\nsymbols = []")),
            "token entry 2 (\"bob\"): symbols: empty: an entry entitled to nothing is a mistake; remove the entry instead"
        );
        assert_eq!(
            err(&base("name = \"bob\"\ntoken = \"bob-token-0123456789\"\nsymbols = [\"*\"]\nmax_sessions = 0")),
            "token entry 2 (\"bob\"): max_sessions: 0 is out of range: at least 1, at most 4294967295"
        );
        assert_eq!(
            err(&base("name = \"bob\"\ntoken = \"bob-token-0123456789\"\nsymbols = [\"*\"]\nmax_subscriptions = \"many\"")),
            "token entry 2 (\"bob\"): max_subscriptions: must be an integer"
        );
        assert_eq!(
            err(&base("name = \"bob\"\ntoken = \"bob-token-0123456789\"\nsymbols = [\"*\"]\nexpires = 5")),
            "token entry 2 (\"bob\"): entry: unknown field `expires`; the fields are name, token or sha256, symbols, max_sessions, max_subscriptions"
        );
        assert_eq!(
            err(&base("name = \"bob smith\"\ntoken = \"bob-token-0123456789\"\nsymbols = [\"*\"]")),
            "token entry 2: name: \"bob smith\": only letters, digits and . _ - @ : are allowed (names appear in logs)"
        );
        assert_eq!(
            err("[tokens]\nname = \"x\""),
            "unknown top-level key `tokens`: the file holds `[[token]]` entries only"
        );
    }

    #[test]
    fn token_rules_never_quote_the_token() {
        let message = err("[[token]]\nname = \"bob\"\ntoken = \"short-secret\"\nsymbols = [\"*\"]");
        assert_eq!(
            message,
            "token entry 1 (\"bob\"): token: too short (12 characters): use at least 16 random characters"
        );
        let message =
            err("[[token]]\nname = \"bob\"\ntoken = \" leading-space-secret\"\nsymbols = [\"*\"]");
        assert!(!message.contains("leading-space-secret"), "{message}");
        assert!(message.ends_with("starts or ends with whitespace, which HTTP strips: remove it"));
        let message = err(
            "[[token]]\nname = \"bob\"\ntoken = \"tab\\tinside-the-secret\"\nsymbols = [\"*\"]",
        );
        assert!(!message.contains("inside-the-secret"), "{message}");
    }

    #[test]
    fn syntax_errors_give_the_line_but_not_its_text() {
        let text =
            "[[token]]\nname = \"bob\"\ntoken = \"unterminated-secret-value\nsymbols = [\"*\"]\n";
        let message = err(text);
        assert!(message.starts_with("line 3: "), "{message}");
        assert!(!message.contains("unterminated-secret-value"), "{message}");
    }

    #[test]
    fn duplicate_tokens_and_names_are_refused_naming_both_entries() {
        let text = format!(
            "[[token]]\nname = \"a\"\ntoken = \"{HORSE}\"\nsymbols = [\"*\"]\n\
             [[token]]\nname = \"b\"\nsha256 = \"{HORSE_SHA256}\"\nsymbols = [\"*\"]\n"
        );
        assert_eq!(
            err(&text),
            "token entry 2 (\"b\") has the same token as token entry 1 (\"a\"): each token may appear once"
        );
        let text = "[[token]]\nname = \"a\"\ntoken = \"first-token-0123456789\"\nsymbols = [\"*\"]\n\
                    [[token]]\nname = \"a\"\ntoken = \"second-token-0123456789\"\nsymbols = [\"*\"]\n";
        assert_eq!(
            err(text),
            "token entry 2 (\"a\") has the same name as token entry 1 (\"a\"): names must be unique"
        );
    }

    #[test]
    fn access_tokens_list_parses_as_before() {
        let list: Vec<String> = ["", "open", "limited=AAPL+MSFT", "fx=FX:*", "nothing="]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let table = TokenTable::parse_access_tokens(&list).unwrap();
        assert_eq!(table.len(), 4);
        let open = table.find(&TokenDigest::of("open")).unwrap();
        assert_eq!((&*open.name, open.entitlement.allows_all()), ("access-tokens#1", true));
        assert_eq!(open.origin, EntryOrigin::AccessTokensFlag);
        let limited = table.find(&TokenDigest::of("limited")).unwrap();
        assert_eq!(
            (&*limited.name, limited.entitlement.to_string()),
            ("access-tokens#2", "AAPL,MSFT".into())
        );
        let fx = table.find(&TokenDigest::of("fx")).unwrap();
        assert!(fx.entitlement.allows("FX:EURUSD"));
        let nothing = table.find(&TokenDigest::of("nothing")).unwrap();
        assert!(nothing.entitlement.is_empty());
        let bad = TokenTable::parse_access_tokens(&["x=A*B".to_string()]).unwrap_err();
        assert_eq!(
            bad.to_string(),
            "--access-tokens item 1: symbols: pattern \"A*B\": `*` may only end a pattern (`FX:*`) or stand alone (`*`)"
        );
        let bad = TokenTable::parse_access_tokens(&["=AAPL".to_string()]).unwrap_err();
        assert_eq!(bad.to_string(), "--access-tokens item 1: token: empty");
    }

    #[test]
    fn merge_refuses_a_token_in_both_places() {
        let file = TokenTable::parse_file(&format!(
            "[[token]]\nname = \"a\"\ntoken = \"{HORSE}\"\nsymbols = [\"*\"]\n"
        ))
        .unwrap();
        let list = TokenTable::parse_access_tokens(&[HORSE.to_string()]).unwrap();
        assert_eq!(
            file.merge(list).unwrap_err().to_string(),
            "--access-tokens item 2 (\"access-tokens#1\") has the same token as token entry 1 (\"a\"): each token may appear once"
        );
    }
}

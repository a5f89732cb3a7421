//! Which symbols a credential may see: a set of patterns, checked on every subscribe, snapshot,
//! `/symbols` listing and reload.
//!
//! A pattern is one of:
//! - `*`: every symbol, including symbols that appear after the session opened;
//! - `PREFIX*` (e.g. `FX:*`): every symbol that starts with `PREFIX` (`FX:` itself included);
//! - a symbol name (e.g. `AAPL`): that symbol only.
//!
//! [`Entitlement::allows`] costs one hash lookup plus one `starts_with` per prefix pattern, so it
//! is linear in the number of prefix patterns at most, and never allocates. This module must never
//! grant by accident: an empty entitlement allows nothing, and a malformed pattern is an error,
//! never a guess.

use std::collections::HashSet;
use std::fmt;

/// Longest pattern accepted, in bytes: far above any ticker, and a bound on what a token file
/// or a JWT can make the gateway hold per pattern.
pub const MAX_PATTERN_BYTES: usize = 128;

/// Why a pattern was refused. The message quotes the pattern: patterns are not secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("an empty pattern; write `*`, a symbol such as `AAPL` or a prefix such as `FX:*`")]
    Empty,
    #[error("pattern {0:?}: `*` may only end a pattern (`FX:*`) or stand alone (`*`)")]
    MisplacedStar(String),
    #[error("pattern {0:?}: whitespace and control characters are not allowed")]
    BadCharacter(String),
    #[error("pattern {pattern:?}: longer than {MAX_PATTERN_BYTES} bytes")]
    TooLong { pattern: String },
}

/// One parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// `*`
    All,
    /// `PREFIX*`: the prefix, without the star.
    Prefix(Box<str>),
    /// A symbol name.
    Exact(Box<str>),
}

impl Pattern {
    /// Parses one pattern (surrounding whitespace is not trimmed: it is an error).
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.len() > MAX_PATTERN_BYTES {
            return Err(PatternError::TooLong { pattern: text.chars().take(32).collect() });
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(PatternError::BadCharacter(text.to_string()));
        }
        let (body, starred) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        if body.contains('*') {
            return Err(PatternError::MisplacedStar(text.to_string()));
        }
        Ok(match (starred, body.is_empty()) {
            (true, true) => Pattern::All,
            (true, false) => Pattern::Prefix(body.into()),
            (false, _) => Pattern::Exact(body.into()),
        })
    }

    /// Whether this one pattern allows `symbol`.
    pub fn matches(&self, symbol: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Prefix(prefix) => symbol.starts_with(&**prefix),
            Pattern::Exact(name) => symbol == &**name,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::All => f.write_str("*"),
            Pattern::Prefix(prefix) => write!(f, "{prefix}*"),
            Pattern::Exact(name) => f.write_str(name),
        }
    }
}

/// The symbols one grant may see.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Entitlement {
    all: bool,
    exact: HashSet<Box<str>>,
    /// Kept short: a prefix covered by a shorter one is dropped when parsing.
    prefixes: Vec<Box<str>>,
}

impl Entitlement {
    /// Every symbol (the pattern `*`).
    pub fn all() -> Entitlement {
        Entitlement { all: true, ..Entitlement::default() }
    }

    /// No symbol at all.
    pub fn none() -> Entitlement {
        Entitlement::default()
    }

    /// From pattern texts; the first bad one is the error.
    pub fn parse<I, S>(patterns: I) -> Result<Entitlement, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut parsed = Vec::new();
        for text in patterns {
            parsed.push(Pattern::parse(text.as_ref())?);
        }
        Ok(Entitlement::from_patterns(parsed))
    }

    /// From parsed patterns, normalised: `*` absorbs everything, a prefix absorbs the names and
    /// longer prefixes it covers, duplicates vanish.
    pub fn from_patterns(patterns: impl IntoIterator<Item = Pattern>) -> Entitlement {
        let mut out = Entitlement::default();
        let mut prefixes: Vec<Box<str>> = Vec::new();
        let mut exact = Vec::new();
        for pattern in patterns {
            match pattern {
                Pattern::All => return Entitlement::all(),
                Pattern::Prefix(prefix) => prefixes.push(prefix),
                Pattern::Exact(name) => exact.push(name),
            }
        }
        // Shortest first, so a prefix is kept only when no kept one covers it.
        prefixes.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        for prefix in prefixes {
            if !out.prefixes.iter().any(|kept| prefix.starts_with(&**kept)) {
                out.prefixes.push(prefix);
            }
        }
        for name in exact {
            if !out.prefix_allows(&name) {
                out.exact.insert(name);
            }
        }
        out
    }

    fn prefix_allows(&self, symbol: &str) -> bool {
        self.prefixes.iter().any(|prefix| symbol.starts_with(&**prefix))
    }

    /// Whether `symbol` may be seen. No allocation; one hash lookup and one `starts_with` per
    /// prefix pattern.
    #[inline]
    pub fn allows(&self, symbol: &str) -> bool {
        self.all || self.exact.contains(symbol) || self.prefix_allows(symbol)
    }

    /// Whether this is `*`.
    pub fn allows_all(&self) -> bool {
        self.all
    }

    /// Whether nothing at all is allowed.
    pub fn is_empty(&self) -> bool {
        !self.all && self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// Whether every symbol `other` allows is allowed here too (exact for this pattern language:
    /// a prefix is covered only by `*` or by a prefix of itself, since the prefix itself is one
    /// of the symbols it allows).
    pub fn covers(&self, other: &Entitlement) -> bool {
        if self.all {
            return true;
        }
        if other.all {
            return false;
        }
        other.exact.iter().all(|name| self.allows(name))
            && other.prefixes.iter().all(|prefix| self.prefix_allows(prefix))
    }

    /// The patterns, normalised, in a stable order (`*`; prefixes; names, sorted): for logs and
    /// docs, never for matching.
    pub fn patterns(&self) -> Vec<Pattern> {
        if self.all {
            return vec![Pattern::All];
        }
        let mut prefixes: Vec<_> = self.prefixes.iter().cloned().map(Pattern::Prefix).collect();
        prefixes.sort_by_key(ToString::to_string);
        let mut names: Vec<_> = self.exact.iter().cloned().collect();
        names.sort();
        prefixes.extend(names.into_iter().map(Pattern::Exact));
        prefixes
    }
}

impl fmt::Debug for Entitlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.patterns().iter().map(ToString::to_string)).finish()
    }
}

impl fmt::Display for Entitlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pattern) in self.patterns().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{pattern}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(patterns: &[&str]) -> Entitlement {
        Entitlement::parse(patterns).unwrap()
    }

    #[test]
    fn star_allows_every_symbol_even_unknown_ones() {
        let e = ent(&["*"]);
        assert!(e.allows("AAPL"));
        assert!(e.allows("SYMBOL-THAT-APPEARS-LATER"));
        assert!(e.allows_all());
        assert_eq!(e.to_string(), "*");
    }

    #[test]
    fn exact_names_allow_only_themselves() {
        let e = ent(&["AAPL", "MSFT"]);
        assert!(e.allows("AAPL"));
        assert!(e.allows("MSFT"));
        assert!(!e.allows("AAP"));
        assert!(!e.allows("AAPLX"));
        assert!(!e.allows("aapl"), "symbols are case-sensitive");
        assert!(!e.allows(""));
    }

    #[test]
    fn prefix_allows_what_starts_with_it_and_the_prefix_itself() {
        let e = ent(&["FX:*"]);
        assert!(e.allows("FX:EURUSD"));
        assert!(e.allows("FX:"));
        assert!(!e.allows("FX"));
        assert!(!e.allows("XFX:EURUSD"));
    }

    #[test]
    fn empty_entitlement_allows_nothing() {
        let e = Entitlement::none();
        assert!(e.is_empty());
        assert!(!e.allows("AAPL"));
        assert!(Entitlement::parse(Vec::<String>::new()).unwrap().is_empty());
    }

    #[test]
    fn bad_patterns_are_errors_that_quote_them() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(Pattern::parse("A*B"), Err(PatternError::MisplacedStar("A*B".into())));
        assert_eq!(Pattern::parse("**"), Err(PatternError::MisplacedStar("**".into())));
        assert_eq!(Pattern::parse("*A"), Err(PatternError::MisplacedStar("*A".into())));
        assert_eq!(Pattern::parse(" AAPL"), Err(PatternError::BadCharacter(" AAPL".into())));
        assert_eq!(Pattern::parse("A\tB"), Err(PatternError::BadCharacter("A\tB".into())));
        let long = "X".repeat(MAX_PATTERN_BYTES + 1);
        assert_eq!(Pattern::parse(&long), Err(PatternError::TooLong { pattern: "X".repeat(32) }));
        assert!(Pattern::parse(&"X".repeat(MAX_PATTERN_BYTES)).is_ok());
        assert_eq!(
            PatternError::MisplacedStar("A*B".into()).to_string(),
            "pattern \"A*B\": `*` may only end a pattern (`FX:*`) or stand alone (`*`)"
        );
    }

    #[test]
    fn patterns_are_normalised() {
        let e = ent(&["FX:EUR*", "AAPL", "FX:*", "FX:GBPUSD", "AAPL", "BRK.B"]);
        assert_eq!(e.to_string(), "FX:*,AAPL,BRK.B");
        assert_eq!(format!("{e:?}"), r#"["FX:*", "AAPL", "BRK.B"]"#);
        assert_eq!(ent(&["AAPL", "*", "FX:*"]), Entitlement::all());
        assert_eq!(ent(&["B*", "A*"]).to_string(), "A*,B*");
    }

    #[test]
    fn covers_is_exact_subset() {
        let all = Entitlement::all();
        let fx = ent(&["FX:*"]);
        let fx_eur = ent(&["FX:EUR*", "FX:GBPUSD"]);
        let names = ent(&["AAPL", "MSFT"]);
        assert!(all.covers(&fx));
        assert!(all.covers(&all));
        assert!(!fx.covers(&all));
        assert!(fx.covers(&fx_eur));
        assert!(!fx_eur.covers(&fx));
        assert!(!names.covers(&fx), "names never cover a prefix");
        assert!(ent(&["AAPL", "MSFT", "IBM"]).covers(&names));
        assert!(!ent(&["AAPL"]).covers(&names));
        assert!(names.covers(&Entitlement::none()));
        assert!(Entitlement::none().covers(&Entitlement::none()));
        assert!(!Entitlement::none().covers(&names));
    }
}

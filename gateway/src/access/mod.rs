//! Access control of sessions: an Origin allow-list and access tokens with entitlements.

use std::collections::HashMap;
use std::sync::Arc;

use crate::session::Entitlement;

/// The Origin allow-list and the tokens.
#[derive(Default)]
pub struct Access {
    origins: Vec<String>,
    /// Token to entitlement (`None`: every symbol).
    tokens: HashMap<String, Option<Arc<Entitlement>>>,
}

impl Access {
    /// From the configuration's lists; `TOKEN=SYM1+SYM2` limits a token to those symbols.
    pub fn new(origins: &[String], tokens: &[String]) -> Access {
        let tokens = tokens
            .iter()
            .filter(|t| !t.is_empty())
            .map(|t| match t.split_once('=') {
                None => (t.clone(), None),
                Some((token, symbols)) => {
                    let allowed =
                        symbols.split('+').filter(|s| !s.is_empty()).map(Into::into).collect();
                    (token.to_string(), Some(Arc::new(allowed)))
                }
            })
            .collect();
        Access { origins: origins.iter().filter(|o| !o.is_empty()).cloned().collect(), tokens }
    }

    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        self.origins.is_empty() || origin.is_some_and(|o| self.origins.iter().any(|a| a == o))
    }

    /// Whether tokens are configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The session's entitlement, or `Err` when tokens are configured and none valid was given.
    #[allow(clippy::result_unit_err)]
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        query_token: Option<&str>,
    ) -> Result<Option<Arc<Entitlement>>, ()> {
        if self.tokens.is_empty() {
            return Ok(None);
        }
        let bearer = authorization.and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
        [bearer, query_token]
            .into_iter()
            .flatten()
            .find_map(|t| self.tokens.get(t).cloned())
            .ok_or(())
    }
}

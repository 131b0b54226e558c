//! Bearer tokens for sites without a PKI: 256 random bits, kept in the config only as a SHA-256
//! hash bound to one organisation and role, compared in constant time.

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};

use super::Role;
use crate::domain::OdsCode;
use crate::error::Error;

/// Every token starts with this, so a leaked one is easy to recognise in a scan.
pub const TOKEN_PREFIX: &str = "labaid_";

/// One configured token: the hash of the secret, and whom it stands for.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash {
    /// The organisation the token acts for.
    pub org: OdsCode,
    /// Its role.
    pub role: Role,
    /// SHA-256 of the token text.
    pub sha256: [u8; 32],
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenHash")
            .field("org", &self.org)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl TokenHash {
    /// Parses the lower-case hex of a SHA-256 digest, as written in the config file.
    pub fn parse_hex(hex_digest: &str) -> Result<[u8; 32], String> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digest.trim(), &mut out)
            .map_err(|_| "sha256 must be 64 hex digits".to_string())?;
        Ok(out)
    }
}

/// SHA-256 of a token. A plain hash is enough (no argon2): the token is 256 random bits, so there
/// is nothing to guess, and a fast hash keeps the check cheap on every call.
pub fn digest(token: &str) -> [u8; 32] {
    let d = Sha256::digest(token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(&d);
    out
}

/// The configured tokens, indexed by their SHA-256.
///
/// A lookup by hash is safe without a constant-time scan: the map compares digests of what the
/// caller sent, and timing that reveals how close a guess's digest came to a stored one says
/// nothing about the token itself (it would take a SHA-256 preimage). One lookup per call, however
/// many tokens are configured.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenIndex {
    by_digest: HashMap<[u8; 32], TokenHash>,
}

impl TokenIndex {
    pub(crate) fn new(tokens: impl IntoIterator<Item = TokenHash>) -> Self {
        Self {
            by_digest: tokens.into_iter().map(|t| (t.sha256, t)).collect(),
        }
    }

    /// Number of configured tokens.
    pub(crate) fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// The configured token whose hash matches `token`.
    pub(crate) fn find(&self, token: &str) -> Option<&TokenHash> {
        self.by_digest.get(&digest(token))
    }
}

/// A newly created token: the secret (shown once) and the config lines that admit it.
#[derive(Clone)]
pub struct NewToken {
    /// The secret to hand to the site. Never stored by the broker.
    pub token: String,
    /// The `[[token]]` table to add to the broker's config file.
    pub config_entry: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken").finish_non_exhaustive()
    }
}

/// Creates a random token for `org` acting as `role`.
pub fn create(org: &OdsCode, role: Role) -> Result<NewToken, Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| Error::Internal(format!("no system randomness: {e}")))?;
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
    let config_entry = format!(
        "[[token]]\norg = \"{org}\"\nrole = \"{}\"\nsha256 = \"{}\"\n",
        role.as_str(),
        hex::encode(digest(&token))
    );
    Ok(NewToken {
        token,
        config_entry,
    })
}

/// Creates a random token for the trusted edge `id`, allowed to speak for `speaks_for`.
pub fn create_edge(id: &super::EdgeId, speaks_for: &[OdsCode]) -> Result<NewToken, Error> {
    if speaks_for.is_empty() {
        return Err(Error::invalid(
            "speaks_for",
            "an edge must speak for at least one organisation",
        ));
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| Error::Internal(format!("no system randomness: {e}")))?;
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
    let orgs: Vec<String> = speaks_for.iter().map(|o| format!("\"{o}\"")).collect();
    let config_entry = format!(
        "[[edge]]\nid = \"{id}\"\nspeaks_for = [{}]\nsha256 = \"{}\"\n",
        orgs.join(", "),
        hex::encode(digest(&token))
    );
    Ok(NewToken {
        token,
        config_entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_token_matches_its_own_entry_only() {
        let org = OdsCode::parse("RJ7").unwrap();
        let a = create(&org, Role::Lab).unwrap();
        let b = create(&org, Role::Lab).unwrap();
        assert_ne!(a.token, b.token);
        assert!(a.token.starts_with(TOKEN_PREFIX));
        let line = a
            .config_entry
            .lines()
            .find(|l| l.starts_with("sha256"))
            .unwrap();
        let hex_digest = line.split('"').nth(1).unwrap();
        let entry = TokenHash {
            org,
            role: Role::Lab,
            sha256: TokenHash::parse_hex(hex_digest).unwrap(),
        };
        let tokens = TokenIndex::new([entry]);
        assert_eq!(tokens.find(&a.token).map(|t| t.role), Some(Role::Lab));
        assert!(tokens.find(&b.token).is_none());
        assert!(
            !a.config_entry.contains(&a.token),
            "only the hash is stored"
        );
    }
}

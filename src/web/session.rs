//! Sign-in sessions of the coordinator page: a random session id in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` under TLS), a per-session CSRF token every action must echo,
//! and an expiry. Only coordinators get a session; the credential itself is never kept.

use std::time::Duration;

use dashmap::DashMap;
use http::HeaderMap;
use http::header::COOKIE;

use crate::auth::Principal;
use crate::domain::Timestamp;

/// The cookie's name.
pub(crate) const COOKIE_NAME: &str = "labaid_session";
/// How long a session lasts: a long shift.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest go first (sign-ins beyond this push out stale ones).
const MAX_SESSIONS: usize = 1024;

/// A signed-in coordinator.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) who: Principal,
    pub(crate) csrf: String,
    expires: Timestamp,
}

/// The open sessions.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_id: DashMap<String, Session>,
}

/// 32 random bytes as hex: a session id or a CSRF token.
fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Compares without stopping at the first difference, so that timing tells nothing of a token.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    /// Opens a session for `who`; returns its id.
    pub(crate) fn open(&self, who: Principal, now: Timestamp) -> Result<String, getrandom::Error> {
        if self.by_id.len() >= MAX_SESSIONS {
            self.by_id.retain(|_, s| s.expires > now);
            if self.by_id.len() >= MAX_SESSIONS
                && let Some(oldest) = self
                    .by_id
                    .iter()
                    .min_by_key(|e| e.expires)
                    .map(|e| e.key().clone())
            {
                self.by_id.remove(&oldest);
            }
        }
        let id = random_token()?;
        let ttl_ms = i64::try_from(SESSION_TTL.as_millis()).unwrap_or(i64::MAX);
        self.by_id.insert(
            id.clone(),
            Session {
                who,
                csrf: random_token()?,
                expires: now.plus_millis(ttl_ms),
            },
        );
        Ok(id)
    }

    /// The live session named by the request's cookie, if any.
    pub(crate) fn find(&self, headers: &HeaderMap, now: Timestamp) -> Option<Session> {
        let id = cookie(headers, COOKIE_NAME)?;
        let session = self.by_id.get(id)?.clone();
        if session.expires <= now {
            self.by_id.remove(id);
            return None;
        }
        Some(session)
    }

    /// Ends the session named by the request's cookie.
    pub(crate) fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE_NAME) {
            self.by_id.remove(id);
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value that carries session `id`.
pub(crate) fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE_NAME}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::domain::OdsCode;

    fn who() -> Principal {
        Principal {
            org: OdsCode::parse("X24").unwrap(),
            role: Role::Coordinator,
            via: None,
        }
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, value.parse().unwrap());
        h
    }

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_expires() {
        let sessions = Sessions::default();
        let now = Timestamp::from_millis(1_000_000);
        let id = sessions.open(who(), now).unwrap();
        let headers = with_cookie(&format!("other=1; {COOKIE_NAME}={id}"));
        assert!(sessions.find(&headers, now).is_some());
        assert!(
            sessions
                .find(&with_cookie("labaid_session=nope"), now)
                .is_none()
        );
        let later = now.plus_millis(SESSION_TTL.as_millis() as i64);
        assert!(sessions.find(&headers, later).is_none());
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_under_tls() {
        let c = set_cookie("abc", true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(!set_cookie("abc", false).contains("Secure"));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abcd", "abcd"));
        assert!(!same_token("abcd", "abce"));
        assert!(!same_token("abc", "abcd"));
    }
}

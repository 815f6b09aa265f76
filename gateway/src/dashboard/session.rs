//! Dashboard sessions: a signed cookie naming who signed in (an admin key's id, or a customer
//! key's id and account) until when, under the gateways' shared key secret, so every gateway of
//! a deployment honours it and none stores it. A session is checked on every request against
//! the keys as they are now: revoking the key ends its sessions. Each session has its own CSRF
//! token, derived from it, that every form carries.

use subtle::ConstantTimeEq;

use crate::auth::KeySecret;

/// The session cookie.
pub const COOKIE: &str = "lumina_session";
/// The cookie that carries the sign-in form's CSRF token before there is a session.
pub const LOGIN_COOKIE: &str = "lumina_login";
/// How long a session lasts, µs.
pub const LIFETIME_US: i64 = 12 * 3_600 * 1_000_000;

/// Who a session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An admin key (`adm_…`).
    Admin(String),
    /// A customer key (`key_…`) of an account (`acct_…`).
    Customer {
        /// The key.
        key_id: String,
        /// Its account.
        account_id: String,
    },
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Who signed in.
    pub principal: Principal,
    /// Until when, µs since the epoch.
    pub expires_at: i64,
    nonce: String,
}

fn mac(secret: &KeySecret, domain: &str, text: &str) -> String {
    hex::encode(secret.hash(&format!("lumina dashboard {domain}\0{text}")))
}

/// An id as a session may carry it: letters, digits and `_` only.
fn plain(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Session {
    /// A new session for `principal` from `now` (µs), with a random nonce.
    pub fn new(principal: Principal, now: i64) -> Option<Session> {
        let nonce: [u8; 16] = rand::random();
        Some(Session {
            principal,
            expires_at: now.checked_add(LIFETIME_US)?,
            nonce: hex::encode(nonce),
        })
    }

    fn payload(&self) -> String {
        match &self.principal {
            Principal::Admin(id) => format!("a.{id}.{}.{}", self.expires_at, self.nonce),
            Principal::Customer { key_id, account_id } => {
                format!("k.{key_id}.{account_id}.{}.{}", self.expires_at, self.nonce)
            }
        }
    }

    /// The cookie value: the payload and its MAC.
    pub fn cookie(&self, secret: &KeySecret) -> String {
        let payload = self.payload();
        let tag = mac(secret, "session", &payload);
        format!("{payload}.{tag}")
    }

    /// The session a cookie value names, if its MAC is right and it has not expired at `now`.
    pub fn verify(secret: &KeySecret, cookie: &str, now: i64) -> Option<Session> {
        let (payload, tag) = cookie.rsplit_once('.')?;
        let want = mac(secret, "session", payload);
        if !bool::from(want.as_bytes().ct_eq(tag.as_bytes())) {
            return None;
        }
        let parts: Vec<&str> = payload.split('.').collect();
        let (principal, expires, nonce) = match parts.as_slice() {
            ["a", id, expires, nonce] if plain(id) => {
                (Principal::Admin((*id).to_string()), *expires, *nonce)
            }
            ["k", key_id, account_id, expires, nonce] if plain(key_id) && plain(account_id) => (
                Principal::Customer {
                    key_id: (*key_id).to_string(),
                    account_id: (*account_id).to_string(),
                },
                *expires,
                *nonce,
            ),
            _ => return None,
        };
        let expires_at: i64 = expires.parse().ok()?;
        (now < expires_at).then(|| Session {
            principal,
            expires_at,
            nonce: nonce.to_string(),
        })
    }

    /// The CSRF token every form of this session carries.
    pub fn csrf(&self, secret: &KeySecret) -> String {
        mac(secret, "csrf", &self.nonce)[..32].to_string()
    }
}

/// Whether `presented` is the CSRF token `expected`, in constant time.
pub fn csrf_matches(expected: &str, presented: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> KeySecret {
        KeySecret::from_hex(&hex::encode([byte; 32])).unwrap()
    }

    #[test]
    fn a_session_round_trips_and_nothing_else_verifies() {
        let s = secret(1);
        let admin = Session::new(Principal::Admin("adm_1".into()), 1_000).unwrap();
        let customer = Session::new(
            Principal::Customer {
                key_id: "key_1".into(),
                account_id: "acct_1".into(),
            },
            1_000,
        )
        .unwrap();
        for session in [&admin, &customer] {
            let cookie = session.cookie(&s);
            assert_eq!(Session::verify(&s, &cookie, 2_000).as_ref(), Some(session));
            // Expired, another secret, a changed principal or MAC: refused.
            assert_eq!(Session::verify(&s, &cookie, session.expires_at), None);
            assert_eq!(Session::verify(&secret(2), &cookie, 2_000), None);
            let forged = cookie.replacen("_1", "_2", 1);
            assert_eq!(Session::verify(&s, &forged, 2_000), None);
            let mut cut = cookie.clone();
            cut.pop();
            assert_eq!(Session::verify(&s, &cut, 2_000), None);
        }
        assert_eq!(Session::verify(&s, "", 0), None);
        assert_eq!(Session::verify(&s, "a.b", 0), None);
    }

    #[test]
    fn each_session_has_its_own_csrf_token() {
        let s = secret(1);
        let a = Session::new(Principal::Admin("adm_1".into()), 0).unwrap();
        let b = Session::new(Principal::Admin("adm_1".into()), 0).unwrap();
        assert_ne!(a.csrf(&s), b.csrf(&s));
        assert!(csrf_matches(&a.csrf(&s), &a.csrf(&s)));
        assert!(!csrf_matches(&a.csrf(&s), &b.csrf(&s)));
        assert!(!csrf_matches(&a.csrf(&s), ""));
        assert!(!csrf_matches("", ""));
    }
}

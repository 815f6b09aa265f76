//! API keys: generation, keyed hashing, and the in-memory cache requests authenticate against.
//!
//! A key is `lum_` followed by 48 random hex digits, shown to its owner once. Only its
//! HMAC-SHA-256 under the server's key secret is ever recorded (in events and tables). The
//! cache maps a key's public prefix to candidate hashes; the presented key's HMAC is compared
//! with each candidate in constant time. The cache is rebuilt from the read model at least
//! every second and right after this gateway's own admin writes.

use crate::metering::events::InboundApi;
use crate::routing::catalog::RoutePath;
use crate::routing::policy::Prefer;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hmac::{Hmac, KeyInit, Mac};
use lumina_projector::{AdminKeyRow, KeyRow, ReadModel};
use lumina_schemas::ids::{AccountId, KeyId, ProjectId};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Marks a Lumina key.
pub const KEY_PREFIX: &str = "lum_";
/// Characters of a key kept as its public prefix (`lum_` and 8 hex digits).
pub const PUBLIC_PREFIX_LEN: usize = 12;
const SECRET_HEX_LEN: usize = 48;

/// The server secret keys are hashed under; shared by every gateway of a deployment.
#[derive(Clone)]
pub struct KeySecret([u8; 32]);

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySecret(..)")
    }
}

/// Why a secret or a key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secret text is not 64 hex digits.
    #[error("key secret must be 64 hex digits (32 bytes)")]
    Malformed,
    /// The operating system's random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
}

fn random_bytes<const N: usize>() -> Result<[u8; N], SecretError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(buf)
}

impl KeySecret {
    /// A fresh random secret.
    pub fn generate() -> Result<KeySecret, SecretError> {
        random_bytes().map(KeySecret)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Result<KeySecret, SecretError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| SecretError::Malformed)?;
        Ok(KeySecret(bytes))
    }

    /// The secret as 64 hex digits, for storing in the data dir.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// HMAC-SHA-256 of `key` under this secret.
    pub fn hash(&self, key: &str) -> [u8; 32] {
        // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => return [0u8; 32],
        };
        mac.update(key.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The text whose HMAC under a key secret is that secret's fingerprint.
const FINGERPRINT_TEXT: &str = "lumina key-secret fingerprint v1";

/// Why a gateway may not run with its key secret.
#[derive(Debug, thiserror::Error)]
pub enum SharedSecretError {
    /// The database records another secret's fingerprint.
    #[error(
        "auth.key_secret (or LUMINA_KEY_SECRET) differs from the one the other gateways on this database use (fingerprint {recorded}…, this one {ours}…): keys issued through them would all be refused here. Give every gateway the same auth.key_secret."
    )]
    Differs {
        /// The first digits of the recorded fingerprint.
        recorded: String,
        /// The first digits of this secret's.
        ours: String,
    },
    /// The database could not be asked.
    #[error("cannot check auth.key_secret against the database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Records `secret`'s fingerprint in `db` if none is, and refuses a secret whose fingerprint
/// differs from the recorded one: gateways sharing a database must hash keys alike.
pub async fn check_shared_secret(
    db: &lumina_eventlog::db::Database,
    secret: &KeySecret,
) -> Result<(), SharedSecretError> {
    let ours = hex::encode(secret.hash(FINGERPRINT_TEXT));
    sqlx::query(
        "INSERT INTO key_secret_fingerprint (id, fingerprint, recorded_at) VALUES (1, $1, $2)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&ours)
    .bind(lumina_schemas::now_micros())
    .execute(&db.pool)
    .await?;
    let recorded: String = sqlx::Row::try_get(
        &sqlx::query("SELECT fingerprint FROM key_secret_fingerprint WHERE id = 1")
            .fetch_one(&db.pool)
            .await?,
        0,
    )?;
    if recorded != ours {
        return Err(SharedSecretError::Differs {
            recorded: recorded.chars().take(12).collect(),
            ours: ours.chars().take(12).collect(),
        });
    }
    Ok(())
}

/// A newly generated key: the secret text (shown once), its prefix and hash.
pub struct NewKey {
    /// The full key, `lum_…`; returned to the caller once and never stored.
    pub key: String,
    /// Public prefix for display and lookup.
    pub prefix: String,
    /// Hex HMAC of the key.
    pub hash_hex: String,
}

/// Generates a random key and its hash under `secret`.
pub fn generate_key(secret: &KeySecret) -> Result<NewKey, SecretError> {
    let random: [u8; SECRET_HEX_LEN / 2] = random_bytes()?;
    let key = format!("{KEY_PREFIX}{}", hex::encode(random));
    Ok(NewKey {
        prefix: key[..PUBLIC_PREFIX_LEN].to_string(),
        hash_hex: hex::encode(secret.hash(&key)),
        key,
    })
}

/// Characters of an admin key kept as its public prefix (`lum_admin_` and 8 hex digits).
pub const ADMIN_PREFIX_LEN: usize = 18;

/// The id events give the bootstrap admin key (the one in the data dir or configuration),
/// the first owner.
pub const BOOTSTRAP_ADMIN_ID: &str = "adm_bootstrap";

/// What an admin key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRole {
    /// Everything, admin keys included.
    Owner,
    /// Accounts, projects, keys, credits, budgets and policies, and every read.
    Operator,
    /// Every read, the ledger and statements included; no change.
    Finance,
    /// Reads, but not the ledger's entries and statements.
    Viewer,
}

/// What an admin request does, for its key's role to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// Reads accounts, projects, keys, budgets, policies, requests and route statistics.
    Read,
    /// Reads the ledger's entries and statements.
    ReadLedger,
    /// Changes accounts, projects, keys, credits, budgets or policies.
    Write,
    /// Issues, lists or revokes admin keys.
    ManageAdminKeys,
}

impl AdminAction {
    /// The action of a request to the admin route `path` with `method`.
    pub fn of(method: &axum::http::Method, path: &str) -> AdminAction {
        if path.starts_with("/admin/admin-keys") {
            AdminAction::ManageAdminKeys
        } else if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
            if path.starts_with("/admin/ledger") {
                AdminAction::ReadLedger
            } else {
                AdminAction::Read
            }
        } else {
            AdminAction::Write
        }
    }
}

impl AdminRole {
    /// `owner`, `operator`, `finance` or `viewer`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Owner => "owner",
            AdminRole::Operator => "operator",
            AdminRole::Finance => "finance",
            AdminRole::Viewer => "viewer",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Option<AdminRole> {
        match name {
            "owner" => Some(AdminRole::Owner),
            "operator" => Some(AdminRole::Operator),
            "finance" => Some(AdminRole::Finance),
            "viewer" => Some(AdminRole::Viewer),
            _ => None,
        }
    }

    /// Whether a key of this role may do `action`.
    pub fn allows(self, action: AdminAction) -> bool {
        match self {
            AdminRole::Owner => true,
            AdminRole::Operator => action != AdminAction::ManageAdminKeys,
            AdminRole::Finance => matches!(action, AdminAction::Read | AdminAction::ReadLedger),
            AdminRole::Viewer => action == AdminAction::Read,
        }
    }
}

/// The admin key a request authenticated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminIdentity {
    /// `adm_…` ([`BOOTSTRAP_ADMIN_ID`] for the bootstrap key).
    pub id: String,
    /// What it may do.
    pub role: AdminRole,
}

/// Why an admin key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRefusal {
    /// No admin key, or one Lumina did not issue.
    Unknown,
    /// The admin key was revoked.
    Revoked,
}

#[derive(Clone)]
struct CachedAdminKey {
    hash: [u8; 32],
    revoked: bool,
    identity: Arc<AdminIdentity>,
}

/// Admin keys by public prefix.
type AdminKeyMap = HashMap<String, Vec<CachedAdminKey>>;

/// Generates a random admin key (`lum_admin_…`).
pub fn generate_admin_key() -> Result<String, SecretError> {
    let random: [u8; 24] = random_bytes()?;
    Ok(format!("lum_admin_{}", hex::encode(random)))
}

/// What a request authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdentity {
    /// `key_…`
    pub key_id: KeyId,
    /// The key's account.
    pub account_id: AccountId,
    /// The key's project.
    pub project_id: ProjectId,
    /// Requests per minute, if limited.
    pub rpm: Option<i64>,
    /// Tokens per minute, if limited.
    pub tpm: Option<i64>,
    /// Whether prompts and answers may be kept for eval datasets.
    pub store_content: bool,
    /// The default routing preference of its requests.
    pub prefer: Option<Prefer>,
    /// Refused `lumina-fusion`, and kept off Fusion panels by `lumina-auto`.
    pub fusion_barred: bool,
    /// From this instant (µs since the epoch) the key no longer authenticates.
    pub expires_at: Option<i64>,
    /// The paths its requests may take; `None`: all.
    pub paths: Option<Vec<RoutePath>>,
    /// The inbound APIs it may call; `None`: all.
    pub surfaces: Option<Vec<InboundApi>>,
    /// It reads usage and requests but makes no completion.
    pub read_only: bool,
    /// Its requests in flight at once on this gateway.
    pub max_parallel_requests: Option<u64>,
}

/// Why a presented key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No key was presented.
    Missing,
    /// The key is not one Lumina issued.
    Unknown,
    /// The key was revoked.
    Revoked,
    /// The key's project was archived.
    Archived,
    /// The key expired.
    Expired,
}

#[derive(Clone)]
struct CachedKey {
    hash: [u8; 32],
    /// Why the key no longer authenticates, if it does not.
    refused: Option<AuthFailure>,
    identity: Arc<KeyIdentity>,
}

type KeyMap = HashMap<String, Vec<CachedKey>>;

fn add_row(map: &mut KeyMap, row: KeyRow) {
    let mut hash = [0u8; 32];
    if hex::decode_to_slice(&row.key_hash, &mut hash).is_err() {
        tracing::warn!(key_id = %row.id, "skipping key with a malformed hash");
        return;
    }
    let refused = match row.status.as_str() {
        "active" => None,
        "archived" => Some(AuthFailure::Archived),
        _ => Some(AuthFailure::Revoked),
    };
    map.entry(row.key_prefix).or_default().push(CachedKey {
        hash,
        refused,
        identity: Arc::new(KeyIdentity {
            key_id: row.id.into(),
            account_id: row.account_id.into(),
            project_id: row.project_id.into(),
            rpm: row.rpm,
            tpm: row.tpm,
            store_content: row.store_content,
            prefer: row.routing_prefer.as_deref().and_then(Prefer::parse),
            fusion_barred: row.fusion_barred,
            expires_at: row.expires_at,
            paths: row
                .paths
                .as_ref()
                .map(|p| p.iter().filter_map(|n| RoutePath::parse(n)).collect()),
            surfaces: row
                .surfaces
                .as_ref()
                .map(|s| s.iter().filter_map(|n| InboundApi::parse(n)).collect()),
            read_only: row.read_only,
            max_parallel_requests: row
                .max_parallel_requests
                .and_then(|n| u64::try_from(n).ok()),
        }),
    });
}

/// How long a key the read model did not know is answered from memory.
const MISS_TTL: Duration = Duration::from_secs(5);

/// Most misses remembered; past it the oldest are forgotten wholesale.
const MAX_MISSES: usize = 16_384;

/// Most read-model lookups of uncached keys per second and gateway.
const LOOKUPS_PER_SECOND: u32 = 50;

/// Uncached keys recently looked up and not found, and the lookups of the current second.
struct Misses {
    recent: HashMap<[u8; 32], Instant>,
    second: Instant,
    lookups: u32,
}

impl Misses {
    /// Whether `hash` may be looked up now: not a recent miss, and within the second's budget.
    fn may_look_up(&mut self, hash: &[u8; 32]) -> bool {
        let now = Instant::now();
        if self
            .recent
            .get(hash)
            .is_some_and(|at| now.duration_since(*at) < MISS_TTL)
        {
            return false;
        }
        if now.duration_since(self.second) >= Duration::from_secs(1) {
            self.second = now;
            self.lookups = 0;
        }
        if self.lookups >= LOOKUPS_PER_SECOND {
            return false;
        }
        self.lookups += 1;
        true
    }

    fn missed(&mut self, hash: [u8; 32]) {
        if self.recent.len() >= MAX_MISSES {
            let now = Instant::now();
            self.recent
                .retain(|_, at| now.duration_since(*at) < MISS_TTL);
            if self.recent.len() >= MAX_MISSES {
                self.recent.clear();
            }
        }
        self.recent.insert(hash, Instant::now());
    }
}

/// The in-memory key table; reads are lock-free. Keys it does not know are looked up in the
/// read model at most [`LOOKUPS_PER_SECOND`] times a second, and a key not found there is
/// not looked up again for [`MISS_TTL`], so a flood of made-up keys cannot become database
/// load (`lumina_auth_key_lookups_total` counts the lookups, `…_skipped_total` the others).
pub struct KeyCache {
    secret: KeySecret,
    keys: ArcSwap<KeyMap>,
    admin_keys: ArcSwap<AdminKeyMap>,
    misses: Mutex<Misses>,
}

impl KeyCache {
    /// An empty cache hashing presented keys under `secret`.
    pub fn new(secret: KeySecret) -> KeyCache {
        KeyCache {
            secret,
            keys: ArcSwap::from_pointee(HashMap::new()),
            admin_keys: ArcSwap::from_pointee(HashMap::new()),
            misses: Mutex::new(Misses {
                recent: HashMap::new(),
                second: Instant::now(),
                lookups: 0,
            }),
        }
    }

    /// The secret keys are hashed under.
    pub fn secret(&self) -> &KeySecret {
        &self.secret
    }

    /// Replaces the cache with `rows`.
    pub fn replace(&self, rows: Vec<KeyRow>) {
        let mut map: KeyMap = HashMap::with_capacity(rows.len());
        for row in rows {
            add_row(&mut map, row);
        }
        self.keys.store(Arc::new(map));
    }

    /// Authenticates a presented key; a well-formed key the cache does not know is looked up
    /// in the read model by its hash, so a key issued through another gateway works on its
    /// very first request here.
    pub async fn authenticate_or_load(
        &self,
        presented: &str,
        read_model: &ReadModel,
    ) -> Result<Arc<KeyIdentity>, AuthFailure> {
        match self.authenticate(presented) {
            Err(AuthFailure::Unknown)
                if presented.starts_with(KEY_PREFIX) && presented.len() >= PUBLIC_PREFIX_LEN =>
            {
                let raw = self.secret.hash(presented);
                let allowed = self.misses.lock().is_ok_and(|mut m| m.may_look_up(&raw));
                if !allowed {
                    metrics::counter!("lumina_auth_key_lookups_skipped_total").increment(1);
                    return Err(AuthFailure::Unknown);
                }
                metrics::counter!("lumina_auth_key_lookups_total").increment(1);
                let hash = hex::encode(raw);
                match read_model.key_by_hash(&hash).await {
                    Ok(Some(row)) => {
                        self.keys.rcu(|current| {
                            let mut map = KeyMap::clone(current);
                            if let Some(list) = map.get_mut(&row.key_prefix) {
                                list.retain(|k| k.identity.key_id.as_str() != row.id);
                            }
                            add_row(&mut map, row.clone());
                            map
                        });
                        self.authenticate(presented)
                    }
                    Ok(None) => {
                        if let Ok(mut m) = self.misses.lock() {
                            m.missed(raw);
                        }
                        Err(AuthFailure::Unknown)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot look up an uncached key");
                        Err(AuthFailure::Unknown)
                    }
                }
            }
            other => other,
        }
    }

    /// Reloads every key and admin key from the read model.
    pub async fn refresh(&self, read_model: &ReadModel) -> Result<usize, sqlx::Error> {
        let rows = read_model.all_keys().await?;
        let n = rows.len();
        self.replace(rows);
        self.replace_admin_keys(read_model.admin_keys().await?);
        Ok(n)
    }

    /// Replaces the admin keys with `rows`.
    pub fn replace_admin_keys(&self, rows: Vec<AdminKeyRow>) {
        let mut map = AdminKeyMap::with_capacity(rows.len());
        for row in rows {
            let mut hash = [0u8; 32];
            let Some(role) = AdminRole::parse(&row.role) else {
                tracing::warn!(admin_key_id = %row.id, role = %row.role, "skipping admin key with an unknown role");
                continue;
            };
            if hex::decode_to_slice(&row.key_hash, &mut hash).is_err() {
                tracing::warn!(admin_key_id = %row.id, "skipping admin key with a malformed hash");
                continue;
            }
            map.entry(row.key_prefix).or_default().push(CachedAdminKey {
                hash,
                revoked: row.status != "active",
                identity: Arc::new(AdminIdentity { id: row.id, role }),
            });
        }
        self.admin_keys.store(Arc::new(map));
    }

    /// Authenticates a presented admin key: the bootstrap key `bootstrap` (an owner), or one
    /// issued through the admin API.
    pub fn authenticate_admin(
        &self,
        presented: &str,
        bootstrap: &str,
    ) -> Result<Arc<AdminIdentity>, AdminRefusal> {
        if presented.is_empty() {
            return Err(AdminRefusal::Unknown);
        }
        if secrets_equal(presented, bootstrap) {
            return Ok(Arc::new(AdminIdentity {
                id: BOOTSTRAP_ADMIN_ID.into(),
                role: AdminRole::Owner,
            }));
        }
        let keys = self.admin_keys.load();
        let Some(candidates) = presented
            .get(..ADMIN_PREFIX_LEN)
            .and_then(|prefix| keys.get(prefix))
        else {
            return Err(AdminRefusal::Unknown);
        };
        let hash = self.secret.hash(presented);
        for candidate in candidates {
            if bool::from(candidate.hash.ct_eq(&hash)) {
                return if candidate.revoked {
                    Err(AdminRefusal::Revoked)
                } else {
                    Ok(candidate.identity.clone())
                };
            }
        }
        Err(AdminRefusal::Unknown)
    }

    /// Authenticates a presented key.
    pub fn authenticate(&self, presented: &str) -> Result<Arc<KeyIdentity>, AuthFailure> {
        if presented.is_empty() {
            return Err(AuthFailure::Missing);
        }
        if !presented.starts_with(KEY_PREFIX) || presented.len() < PUBLIC_PREFIX_LEN {
            return Err(AuthFailure::Unknown);
        }
        let keys = self.keys.load();
        let Some(candidates) = presented
            .get(..PUBLIC_PREFIX_LEN)
            .and_then(|prefix| keys.get(prefix))
        else {
            return Err(AuthFailure::Unknown);
        };
        let hash = self.secret.hash(presented);
        for candidate in candidates {
            if bool::from(candidate.hash.ct_eq(&hash)) {
                return match candidate.refused {
                    Some(why) => Err(why),
                    None if candidate
                        .identity
                        .expires_at
                        .is_some_and(|at| lumina_schemas::now_micros() >= at) =>
                    {
                        Err(AuthFailure::Expired)
                    }
                    None => Ok(candidate.identity.clone()),
                };
            }
        }
        Err(AuthFailure::Unknown)
    }

    /// The key `key_id`, if it still authenticates (a dashboard session's key).
    pub fn active_key(&self, key_id: &str) -> Option<Arc<KeyIdentity>> {
        let keys = self.keys.load();
        let now = lumina_schemas::now_micros();
        keys.values()
            .flatten()
            .find(|k| k.identity.key_id.as_str() == key_id)
            .filter(|k| k.refused.is_none() && k.identity.expires_at.is_none_or(|at| now < at))
            .map(|k| k.identity.clone())
    }

    /// The admin key `id`, if it is not revoked (a dashboard session's key); the bootstrap
    /// key's id always is.
    pub fn active_admin(&self, id: &str) -> Option<Arc<AdminIdentity>> {
        if id == BOOTSTRAP_ADMIN_ID {
            return Some(Arc::new(AdminIdentity {
                id: BOOTSTRAP_ADMIN_ID.into(),
                role: AdminRole::Owner,
            }));
        }
        self.admin_keys
            .load()
            .values()
            .flatten()
            .find(|k| k.identity.id == id && !k.revoked)
            .map(|k| k.identity.clone())
    }

    /// Number of keys cached.
    pub fn len(&self) -> usize {
        self.keys.load().values().map(Vec::len).sum()
    }

    /// Whether no key is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Constant-time comparison of two secrets of any length (hashing first hides the length).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    use sha2::Digest;
    let ha = Sha256::digest(a.as_bytes());
    let hb = Sha256::digest(b.as_bytes());
    bool::from(ha.as_slice().ct_eq(hb.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_allows_its_share_of_the_admin_api() {
        use axum::http::Method;
        let read = AdminAction::of(&Method::GET, "/admin/accounts/acct_1");
        let ledger = AdminAction::of(&Method::GET, "/admin/ledger/statements");
        let write = AdminAction::of(&Method::POST, "/admin/keys");
        let admins = AdminAction::of(&Method::GET, "/admin/admin-keys");
        assert_eq!(
            [read, ledger, write, admins],
            [
                AdminAction::Read,
                AdminAction::ReadLedger,
                AdminAction::Write,
                AdminAction::ManageAdminKeys
            ]
        );
        let table = [
            (AdminRole::Owner, [true, true, true, true]),
            (AdminRole::Operator, [true, true, true, false]),
            (AdminRole::Finance, [true, true, false, false]),
            (AdminRole::Viewer, [true, false, false, false]),
        ];
        for (role, allowed) in table {
            assert_eq!(
                [read, ledger, write, admins].map(|a| role.allows(a)),
                allowed,
                "{role:?}"
            );
            assert_eq!(AdminRole::parse(role.as_str()), Some(role));
        }
        assert_eq!(AdminRole::parse("root"), None);
    }

    fn row(id: &str, new: &NewKey, status: &str) -> KeyRow {
        KeyRow {
            id: id.into(),
            account_id: "acct_1".into(),
            project_id: "proj_1".into(),
            name: "k".into(),
            key_hash: new.hash_hex.clone(),
            key_prefix: new.prefix.clone(),
            status: status.into(),
            store_content: false,
            rpm: None,
            tpm: None,
            created_at: 0,
            revoked_at: None,
            routing_prefer: None,
            fusion_barred: false,
            expires_at: None,
            paths: None,
            surfaces: None,
            read_only: false,
            max_parallel_requests: None,
        }
    }

    #[test]
    fn authenticates_issued_keys_and_refuses_others() {
        let secret = KeySecret::generate().unwrap();
        let cache = KeyCache::new(secret.clone());
        let good = generate_key(&secret).unwrap();
        let revoked = generate_key(&secret).unwrap();
        cache.replace(vec![
            row("key_a", &good, "active"),
            row("key_b", &revoked, "revoked"),
        ]);
        assert_eq!(cache.authenticate(&good.key).unwrap().key_id, "key_a");
        assert_eq!(
            cache.authenticate(&revoked.key).unwrap_err(),
            AuthFailure::Revoked
        );
        assert_eq!(cache.authenticate("").unwrap_err(), AuthFailure::Missing);
        assert_eq!(
            cache.authenticate("sk-foo").unwrap_err(),
            AuthFailure::Unknown
        );
        let mut forged = good.key.clone();
        forged.pop();
        forged.push(if good.key.ends_with('0') { '1' } else { '0' });
        assert_eq!(
            cache.authenticate(&forged).unwrap_err(),
            AuthFailure::Unknown
        );
    }

    #[test]
    fn the_same_key_hashes_differently_under_another_secret() {
        let a = KeySecret::generate().unwrap();
        let b = KeySecret::generate().unwrap();
        let key = generate_key(&a).unwrap();
        assert_ne!(a.hash(&key.key), b.hash(&key.key));
        assert_eq!(hex::encode(a.hash(&key.key)), key.hash_hex);
        assert_eq!(
            KeySecret::from_hex(&a.to_hex()).unwrap().hash("x"),
            a.hash("x")
        );
    }

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let secret = KeySecret::generate().unwrap();
        let key = generate_key(&secret).unwrap();
        assert!(key.key.starts_with("lum_"));
        assert_eq!(key.key.len(), 4 + SECRET_HEX_LEN);
        assert_eq!(key.prefix, key.key[..PUBLIC_PREFIX_LEN]);
        assert!(!key.hash_hex.contains(&key.key[4..]));
    }
}

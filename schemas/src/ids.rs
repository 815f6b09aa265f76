//! Public identifiers: a type prefix and a UUIDv7 in hex, so ids sort by creation time and say
//! what they name (`acct_…`, `proj_…`, `key_…`, `req_…`).

use uuid::Uuid;

/// A new id with `prefix` (`"acct"`, `"proj"`, `"key"`, `"req"`).
pub fn new_id(prefix: &str) -> String {
    let mut buf = Uuid::encode_buffer();
    let hex = Uuid::now_v7().simple().encode_lower(&mut buf);
    let mut id = String::with_capacity(prefix.len() + 1 + hex.len());
    id.push_str(prefix);
    id.push('_');
    id.push_str(hex);
    id
}

/// Whether `id` looks like an id with `prefix` (prefix, underscore, 32 hex digits).
pub fn has_shape(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The prefix of this kind of id.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id of this kind.
            pub fn generate() -> $name {
                $name(new_id($prefix))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id's text.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> $name {
                $name(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> $name {
                $name(id.to_string())
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id_type!(
    /// A customer account (`acct_…`).
    AccountId,
    "acct"
);
id_type!(
    /// A project of an account (`proj_…`).
    ProjectId,
    "proj"
);
id_type!(
    /// An API key's id (`key_…`), never the key itself.
    KeyId,
    "key"
);
id_type!(
    /// A request (`req_…`), as `x-request-id` and every event of the request name it.
    RequestId,
    "req"
);

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

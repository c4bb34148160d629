//! The API keys a handler context has already looked up, for publishes only.
//!
//! Looking a token up costs a single publish a sixth of its connection thread's time
//! (BENCHMARKS.md item 29): the read transaction finds the file changed by the
//! writer's last commit, empties the connection's page cache and reads the key's pages
//! again. A publish whose key is found here skips that, and stays exactly as safe: the
//! writer checks in the publish's own transaction that the key is still live (a
//! revocation through the API or the `hookd` CLI commits before it), and refuses it
//! otherwise; the entry is then forgotten. Every other request looks its key up.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::model::ApiKey;

/// Enough for every publishing key of a normal installation; past it the cache starts
/// over rather than growing with every token a client makes up (only keys that exist
/// are kept, so this takes real keys).
const MAX_KEYS: usize = 64;

/// One per handler context, which only one thread uses at a time: no lock.
#[derive(Default)]
pub struct KeyCache {
    keys: RefCell<HashMap<Vec<u8>, ApiKey>>,
}

impl KeyCache {
    /// The key whose token hashes to `hash`, if it was looked up before.
    pub fn get(&self, hash: &[u8]) -> Option<ApiKey> {
        self.keys.borrow().get(hash).cloned()
    }

    pub fn put(&self, hash: Vec<u8>, key: &ApiKey) {
        let mut keys = self.keys.borrow_mut();
        if keys.len() >= MAX_KEYS {
            keys.clear();
        }
        keys.insert(hash, key.clone());
    }

    /// Drops the key `id` (the writer found it revoked).
    pub fn forget(&self, id: &str) {
        self.keys.borrow_mut().retain(|_, k| k.id != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    fn key(id: &str) -> ApiKey {
        ApiKey {
            id: id.to_string(),
            role: Role::Publisher,
            tenant: None,
            created_at: 0,
        }
    }

    #[test]
    fn keeps_found_keys_forgets_revoked_ones_and_stays_bounded() {
        let cache = KeyCache::default();
        cache.put(vec![1], &key("key_a"));
        cache.put(vec![2], &key("key_b"));
        assert_eq!(cache.get(&[1]).map(|k| k.id), Some("key_a".to_string()));
        cache.forget("key_a");
        assert!(cache.get(&[1]).is_none());
        assert!(cache.get(&[2]).is_some());
        for i in 0..=MAX_KEYS as u8 {
            cache.put(vec![10, i], &key("key_c"));
        }
        assert!(cache.keys.borrow().len() <= MAX_KEYS);
    }
}

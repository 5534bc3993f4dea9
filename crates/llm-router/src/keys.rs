//! Bearer keys for the OpenAI-compatible endpoint: created, listed and revoked over gRPC,
//! stored only as SHA-256 hashes in `keys.json` in the state directory, checked in constant time.
//!
//! A key reads `sk-synos-<id>-<secret>`: the id finds the record without scanning, the secret
//! (256 random bits) is what is hashed. A fast hash is enough for a secret that long; slow
//! password hashes exist for guessable secrets.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::SystemTime;

use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::accounting::write_atomically;

const PREFIX: &str = "sk-synos-";

/// One stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyRecord {
    /// Public id, part of the key.
    pub(crate) id: String,
    /// Whom requests with it are for.
    pub(crate) principal: String,
    /// Routes it may use; empty means all.
    pub(crate) routes: Vec<String>,
    /// Seconds since the epoch.
    pub(crate) created_unix: u64,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
}

impl KeyRecord {
    /// Whether the key may use `route`.
    pub(crate) fn allows(&self, route: &str) -> bool {
        self.routes.is_empty() || self.routes.iter().any(|allowed| allowed == route)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyFile {
    keys: BTreeMap<String, KeyRecord>,
}

/// The key store.
#[derive(Debug)]
pub(crate) struct KeyStore {
    keys: RwLock<BTreeMap<String, KeyRecord>>,
    path: Option<PathBuf>,
}

impl KeyStore {
    /// A store in memory only: keys vanish with the process.
    pub(crate) fn in_memory() -> Self {
        Self {
            keys: RwLock::new(BTreeMap::new()),
            path: None,
        }
    }

    /// Loads the keys stored at `path`.
    pub(crate) fn open(path: PathBuf) -> Result<Self, String> {
        let mut keys = BTreeMap::new();
        {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let file: KeyFile = serde_json::from_slice(&bytes)
                        .map_err(|error| format!("{}: not a key file: {error}", path.display()))?;
                    keys = file.keys;
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(format!("{}: cannot read: {error}", path.display())),
            }
        }
        Ok(Self {
            keys: RwLock::new(keys),
            path: Some(path),
        })
    }

    fn save(&self, keys: &BTreeMap<String, KeyRecord>) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(&KeyFile { keys: keys.clone() })
            .map_err(|error| format!("cannot encode keys: {error}"))?;
        write_atomically(path, &bytes)
    }

    /// Creates a key; returns it (the only time it exists in clear) and its record.
    pub(crate) fn create(
        &self,
        principal: &str,
        routes: Vec<String>,
    ) -> Result<(String, KeyRecord), String> {
        let mut random = [0_u8; 38];
        rand::rng().fill_bytes(&mut random);
        let (id_bytes, secret_bytes) = random.split_at(6);
        let id = hex::encode(id_bytes);
        let secret = hex::encode(secret_bytes);
        let record = KeyRecord {
            id: id.clone(),
            principal: principal.to_owned(),
            routes,
            created_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs()),
            secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
        };
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut updated = keys.clone();
        updated.insert(id.clone(), record.clone());
        // Stored first: a key that was shown but not saved would fail its first use.
        self.save(&updated)?;
        *keys = updated;
        Ok((format!("{PREFIX}{id}-{secret}"), record))
    }

    /// All keys, without secrets.
    pub(crate) fn list(&self) -> Vec<KeyRecord> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Revokes `id`; false when there is no such key.
    pub(crate) fn revoke(&self, id: &str) -> Result<bool, String> {
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !keys.contains_key(id) {
            return Ok(false);
        }
        let mut updated = keys.clone();
        updated.remove(id);
        self.save(&updated)?;
        *keys = updated;
        Ok(true)
    }

    /// The record of a presented key, if it is valid. Hashes and compares in constant time
    /// even when the id is unknown, so timing does not tell which ids exist.
    pub(crate) fn verify(&self, presented: &str) -> Option<KeyRecord> {
        let (id, secret) = presented
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .unwrap_or(("", presented));
        let presented_hash = Sha256::digest(secret.as_bytes());
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let record = keys.get(id);
        let mut expected = [0_u8; 32];
        if let Some(record) = record
            && hex::decode_to_slice(&record.secret_sha256, &mut expected).is_err()
        {
            return None;
        }
        let matches: bool = presented_hash.as_slice().ct_eq(&expected).into();
        record.filter(|_| matches).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_verify_until_revoked_and_survive_a_reload() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("keys.json");
        let store = KeyStore::open(path.clone()).unwrap();
        let (key, record) = store.create("alice", vec!["default".into()]).unwrap();
        assert!(key.starts_with("sk-synos-"));
        assert_eq!(store.verify(&key).unwrap().principal, "alice");
        assert!(store.verify(&format!("{key}x")).is_none());
        assert!(store.verify("sk-synos-000000000000-abc").is_none());
        assert!(store.verify("").is_none());
        let stored = std::fs::read_to_string(&path).unwrap();
        assert!(
            !stored.contains(key.rsplit('-').next().unwrap()),
            "secret stored in clear"
        );
        let reopened = KeyStore::open(path).unwrap();
        assert!(reopened.verify(&key).is_some());
        assert!(reopened.revoke(&record.id).unwrap());
        assert!(reopened.verify(&key).is_none());
        assert!(!reopened.revoke(&record.id).unwrap());
    }
}

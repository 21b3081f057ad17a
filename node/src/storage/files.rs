//! The owner's records of its own files, and the manifest each provider keeps encrypted.

use serde::{Deserialize, Serialize};

use super::StorageError;
use super::chunks::ChunkHash;
use super::db::Db;
use crate::address::NodeAddress;

/// Key prefix of file records in the database. DO NOT CHANGE: on-disk format.
const FILE_PREFIX: &str = "file/";
/// Key prefix of copies to delete (`discard/<file id>/<provider address>`). DO NOT CHANGE:
/// on-disk format.
const DISCARD_PREFIX: &str = "discard/";

/// A copy of a file on a provider that must not be kept (a dropped replica, a failed upload's
/// copy) and whose deletion has not succeeded yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDiscard {
    /// The file.
    pub file_id: String,
    /// The provider's gRPC address.
    pub address: NodeAddress,
    /// Since when the copy has been waiting for deletion (ms since the Unix epoch).
    pub since_ms: u64,
}

/// A provider holding a copy of a file, and what the owner's audits found there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The provider's gRPC address.
    pub address: NodeAddress,
    /// The provider's node ID, as it reported it when it acknowledged the upload.
    pub provider_id: String,
    /// When the last audit of this replica ended, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub last_audit_ms: Option<u64>,
    /// Whether the last audit passed.
    #[serde(default)]
    pub last_audit_ok: Option<bool>,
    /// Why the last audit failed.
    #[serde(default)]
    pub last_audit_error: Option<String>,
    /// Since when audits have been failing without a pass in between.
    #[serde(default)]
    pub failing_since_ms: Option<u64>,
    /// Until when the copy is paid for (ms since the Unix epoch); `None` when the provider does
    /// not charge for storage.
    #[serde(default)]
    pub paid_until_ms: Option<u64>,
}

impl Replica {
    /// Returns a replica that has not been audited yet.
    pub fn new(address: NodeAddress, provider_id: String) -> Self {
        Self {
            address,
            provider_id,
            last_audit_ms: None,
            last_audit_ok: None,
            last_audit_error: None,
            failing_since_ms: None,
            paid_until_ms: None,
        }
    }

    /// Returns whether the replica counts as lost: failing for longer than `grace_ms` of the
    /// time its owner watched, from `watched_since_ms` (its start) on. The time the owner was
    /// stopped does not count: an owner starting again after an outage does not declare lost
    /// at once every replica whose audits failed as it stopped (its providers stopping too).
    pub fn is_lost(&self, now_ms: u64, grace_ms: u64, watched_since_ms: u64) -> bool {
        self.failing_since_ms
            .is_some_and(|since| now_ms.saturating_sub(since.max(watched_since_ms)) >= grace_ms)
    }
}

/// What the owner must keep of a file to read it back; also stored, encrypted, on every provider
/// holding the file, so that the owner's key file alone recovers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The file's ID, also the ID of its data object on every provider.
    pub id: String,
    /// The name the requester gave; several files may share a name.
    pub name: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Plaintext bytes per chunk (the last chunk may be shorter).
    pub chunk_size: u64,
    /// When the file was stored, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Address (Merkle root) of each encrypted chunk, in order.
    pub chunks: Vec<String>,
}

/// Everything the owner knows of one of its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The file itself.
    #[serde(flatten)]
    pub manifest: Manifest,
    /// How many replicas the file should have; repair restores this number.
    pub replicas_wanted: u32,
    /// The providers holding the file.
    pub replicas: Vec<Replica>,
    /// Labels every provider of the file must carry (`region: eu`); repair keeps to them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Manifest {
    /// Returns the chunk addresses, failing if the record was damaged.
    pub fn chunk_hashes(&self) -> Result<Vec<ChunkHash>, StorageError> {
        ChunkHash::parse_list(&self.chunks, || file_key(&self.id))
    }

    /// Returns the size of the encrypted data object (every chunk plus its tag).
    pub fn sealed_size(&self) -> u64 {
        self.size + self.chunks.len() as u64 * super::crypto::TAG_LEN as u64
    }

    /// Returns the length of encrypted chunk `index` (plaintext plus tag).
    pub fn sealed_chunk_len(&self, index: usize) -> u64 {
        let last = self.chunks.len().saturating_sub(1);
        let plain = if index < last {
            self.chunk_size
        } else {
            self.size - self.chunk_size * last as u64
        };
        plain + super::crypto::TAG_LEN as u64
    }
}

/// The owner's file records in the database.
#[derive(Debug, Clone)]
pub struct FileIndex {
    db: Db,
}

impl FileIndex {
    /// Returns the index kept in `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Returns the record of file `id`, if this node owns such a file.
    pub async fn get(&self, id: &str) -> Result<Option<FileRecord>, StorageError> {
        self.db.get_json(&file_key(id)).await
    }

    /// Returns every file record.
    pub async fn all(&self) -> Result<Vec<FileRecord>, StorageError> {
        self.db.scan_json(FILE_PREFIX).await
    }

    /// Stores `record` durably.
    pub async fn put(&self, record: &FileRecord) -> Result<(), StorageError> {
        self.db
            .put_json_durable(&file_key(&record.manifest.id), record)
            .await
    }

    /// Removes the record of file `id`, durably.
    pub async fn remove(&self, id: &str) -> Result<(), StorageError> {
        self.db
            .write_durable(vec![(file_key(id).into_bytes(), None)])
            .await
    }
}

impl FileIndex {
    /// Records durably that the copy of `file_id` at `address` must be deleted.
    pub async fn add_discard(
        &self,
        file_id: &str,
        address: &NodeAddress,
    ) -> Result<(), StorageError> {
        let pending = PendingDiscard {
            file_id: file_id.to_owned(),
            address: address.clone(),
            since_ms: crate::clock::now_ms(),
        };
        self.db
            .put_json_durable(&discard_key(file_id, address), &pending)
            .await
    }

    /// Forgets the copy of `file_id` at `address`: deleted, or wanted again.
    pub async fn remove_discard(
        &self,
        file_id: &str,
        address: &NodeAddress,
    ) -> Result<(), StorageError> {
        self.db
            .write_durable(vec![(discard_key(file_id, address).into_bytes(), None)])
            .await
    }

    /// Returns every copy waiting for deletion.
    pub async fn discards(&self) -> Result<Vec<PendingDiscard>, StorageError> {
        self.db.scan_json(DISCARD_PREFIX).await
    }
}

fn discard_key(file_id: &str, address: &NodeAddress) -> String {
    format!("{DISCARD_PREFIX}{file_id}/{address}")
}

fn file_key(id: &str) -> String {
    format!("{FILE_PREFIX}{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_chunk_lengths_follow_size_and_chunk_size() {
        let manifest = Manifest {
            id: "x".to_owned(),
            name: "n".to_owned(),
            size: 2500,
            chunk_size: 1000,
            created_at_ms: 0,
            chunks: vec![String::new(); 3],
        };
        assert_eq!(manifest.sealed_chunk_len(0), 1016);
        assert_eq!(manifest.sealed_chunk_len(2), 516);
        let empty = Manifest {
            size: 0,
            chunks: vec![String::new()],
            ..manifest
        };
        assert_eq!(empty.sealed_chunk_len(0), 16);
    }

    #[test]
    fn a_replica_is_lost_only_after_failing_for_the_grace_while_its_owner_ran() {
        let mut replica = Replica::new("127.0.0.1:1".parse().expect("address"), String::new());
        assert!(!replica.is_lost(100_000, 5_000, 0), "never failed");
        replica.failing_since_ms = Some(10_000);
        assert!(!replica.is_lost(14_999, 5_000, 0));
        assert!(replica.is_lost(15_000, 5_000, 0));
        // Failing since before the owner stopped; the owner started again at 60 s.
        assert!(
            !replica.is_lost(60_000, 5_000, 60_000),
            "its outage does not count"
        );
        assert!(!replica.is_lost(64_999, 5_000, 60_000));
        assert!(replica.is_lost(65_000, 5_000, 60_000));
    }
}

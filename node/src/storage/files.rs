//! The owner's records of its own files: the only place a file's key is kept.

use serde::{Deserialize, Serialize};

use super::StorageError;
use super::chunks::ChunkHash;
use super::crypto::FileKey;
use super::db::Db;

/// Key prefix of file records in the database. DO NOT CHANGE: on-disk format.
const FILE_PREFIX: &str = "file/";

/// A provider holding a copy of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The provider's gRPC address, as the requester named it.
    pub address: String,
    /// The provider's node ID, as it reported it when it acknowledged the upload.
    pub provider_id: String,
}

/// Everything the owner knows of one of its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The file's ID, also the object ID on every provider.
    pub id: String,
    /// The name the requester gave; several files may share a name.
    pub name: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Plaintext bytes per chunk (the last chunk may be shorter).
    pub chunk_size: u64,
    /// When the file was stored, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The file's key and nonce prefix, hex ([`FileKey::to_bytes`]).
    pub key: String,
    /// Hex SHA-256 of each encrypted chunk, in order.
    pub chunks: Vec<String>,
    /// The providers holding the file.
    pub replicas: Vec<Replica>,
}

impl FileRecord {
    /// Returns the file's key, failing if the record was damaged.
    pub fn file_key(&self) -> Result<FileKey, StorageError> {
        hex::decode(&self.key)
            .ok()
            .and_then(|bytes| FileKey::from_bytes(&bytes))
            .ok_or_else(|| self.damaged("bad key".to_owned()))
    }

    /// Returns the chunk hashes, failing if the record was damaged.
    pub fn chunk_hashes(&self) -> Result<Vec<ChunkHash>, StorageError> {
        self.chunks
            .iter()
            .map(|hex| {
                ChunkHash::from_hex(hex)
                    .ok_or_else(|| self.damaged(format!("bad chunk hash {hex:?}")))
            })
            .collect()
    }

    fn damaged(&self, reason: String) -> StorageError {
        StorageError::CorruptRecord {
            key: file_key(&self.id),
            reason,
        }
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
        let key = file_key(id);
        let Some(bytes) = self.db.get(key.clone().into_bytes()).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| StorageError::CorruptRecord {
                key,
                reason: error.to_string(),
            })
    }

    /// Stores `record` durably.
    pub async fn put(&self, record: &FileRecord) -> Result<(), StorageError> {
        let value = serde_json::to_vec(record).expect("file records serialise");
        self.db
            .put_durable(file_key(&record.id).into_bytes(), value)
            .await
    }
}

fn file_key(id: &str) -> String {
    format!("{FILE_PREFIX}{id}")
}

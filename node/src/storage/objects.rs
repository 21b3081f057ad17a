//! The provider's records of objects it stores for owners.

use serde::{Deserialize, Serialize};

use super::StorageError;
use super::chunks::ChunkHash;
use super::db::Db;

/// Key prefix of object records in the database. DO NOT CHANGE: on-disk format.
const OBJECT_PREFIX: &str = "object/";

/// What a provider knows of an object it stores: which chunks, in which order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// The object's ID, chosen by its owner.
    pub object_id: String,
    /// Hex SHA-256 of each chunk, in order.
    pub chunks: Vec<String>,
    /// Total bytes of all chunks.
    pub size: u64,
    /// When the object was stored, in milliseconds since the Unix epoch.
    pub stored_at_ms: u64,
}

impl ObjectRecord {
    /// Returns the chunk hashes, failing if the record was damaged.
    pub fn chunk_hashes(&self) -> Result<Vec<ChunkHash>, StorageError> {
        self.chunks
            .iter()
            .map(|hex| {
                ChunkHash::from_hex(hex).ok_or_else(|| StorageError::CorruptRecord {
                    key: object_key(&self.object_id),
                    reason: format!("bad chunk hash {hex:?}"),
                })
            })
            .collect()
    }
}

/// The provider's object records in the database.
#[derive(Debug, Clone)]
pub struct ObjectIndex {
    db: Db,
}

impl ObjectIndex {
    /// Returns the index kept in `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Returns the record of `object_id`, if stored.
    pub async fn get(&self, object_id: &str) -> Result<Option<ObjectRecord>, StorageError> {
        let key = object_key(object_id);
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

    /// Stores `record` durably. Callers check first that the ID is free.
    pub async fn put(&self, record: &ObjectRecord) -> Result<(), StorageError> {
        let value = serde_json::to_vec(record).expect("object records serialise");
        self.db
            .put_durable(object_key(&record.object_id).into_bytes(), value)
            .await
    }
}

fn object_key(object_id: &str) -> String {
    format!("{OBJECT_PREFIX}{object_id}")
}

//! Channel records in memory, written to the database under a version number: many tasks change
//! a channel at once, and each writer stores the newest state unless a newer one is on the disk
//! already, so concurrent changes share one write and none is undone by an older one.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use alloy::primitives::B256;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::storage::StorageError;
use crate::storage::db::Db;

/// A channel record the ledger keeps.
pub trait Record: Clone + Serialize + DeserializeOwned {
    /// The channel's ID.
    fn channel_id(&self) -> B256;
    /// Bumped on every change; not stored.
    fn version(&self) -> u64;
}

/// How a record is written.
#[derive(Debug, Clone, Copy)]
pub enum Durability {
    /// On the disk (fsync) before the write returns.
    Synced,
    /// Buffered until the next synced write or a clean close; a crash may lose it.
    Lazy,
}

/// Records of one kind, by channel, under a key prefix of the database.
#[derive(Debug)]
pub struct Ledger<T> {
    db: Db,
    prefix: &'static str,
    records: Mutex<BTreeMap<B256, T>>,
    /// Versions written, and versions synced, per channel; writers take this lock in turn.
    stored_versions: tokio::sync::Mutex<StoredVersions>,
}

#[derive(Debug, Default)]
struct StoredVersions {
    written: BTreeMap<B256, u64>,
    synced: BTreeMap<B256, u64>,
}

impl<T: Record> Ledger<T> {
    /// Loads every record under `prefix`.
    pub async fn load(db: Db, prefix: &'static str) -> Result<Self, StorageError> {
        let records: Vec<T> = db.scan_json(prefix).await?;
        Ok(Self {
            db,
            prefix,
            records: Mutex::new(
                records
                    .into_iter()
                    .map(|record| (record.channel_id(), record))
                    .collect(),
            ),
            stored_versions: tokio::sync::Mutex::default(),
        })
    }

    /// Locks the records in memory. Never held across an await.
    pub fn lock(&self) -> MutexGuard<'_, BTreeMap<B256, T>> {
        self.records.lock().expect("ledger lock is never poisoned")
    }

    /// Returns every record.
    pub fn all(&self) -> Vec<T> {
        self.lock().values().cloned().collect()
    }

    /// Writes a channel's record unless one at `version` or newer is written already (synced,
    /// when `durability` asks for it).
    pub async fn store(
        &self,
        channel_id: B256,
        version: u64,
        durability: Durability,
    ) -> Result<(), Error> {
        let mut stored = self.stored_versions.lock().await;
        let done = match durability {
            Durability::Synced => &stored.synced,
            Durability::Lazy => &stored.written,
        };
        if done.get(&channel_id).is_some_and(|done| *done >= version) {
            return Ok(());
        }
        let Some(record) = self.lock().get(&channel_id).cloned() else {
            return Ok(());
        };
        let key = format!("{}{channel_id}", self.prefix);
        match durability {
            Durability::Synced => self.db.put_json_durable(&key, &record).await,
            Durability::Lazy => {
                let value = serde_json::to_vec(&record).expect("records serialise to JSON");
                self.db.put(key.into_bytes(), value).await
            }
        }
        .map_err(Error::from)?;
        stored.written.insert(channel_id, record.version());
        if let Durability::Synced = durability {
            stored.synced.insert(channel_id, record.version());
        }
        Ok(())
    }
}

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
    /// Versions written, and versions synced, per channel. Read without waiting for a writer,
    /// so a record that is on the disk already costs nothing to store again.
    stored_versions: Mutex<StoredVersions>,
    /// Taken by writers in turn.
    writing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct StoredVersions {
    written: BTreeMap<B256, u64>,
    synced: BTreeMap<B256, u64>,
}

impl StoredVersions {
    fn covers(&self, channel_id: &B256, version: u64, durability: Durability) -> bool {
        let done = match durability {
            Durability::Synced => &self.synced,
            Durability::Lazy => &self.written,
        };
        done.get(channel_id).is_some_and(|done| *done >= version)
    }
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
            stored_versions: Mutex::default(),
            writing: tokio::sync::Mutex::default(),
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
        if self.stored().covers(&channel_id, version, durability) {
            return Ok(());
        }
        let _writer = self.writing.lock().await;
        // Another writer may have stored it while this one waited.
        if self.stored().covers(&channel_id, version, durability) {
            return Ok(());
        }
        if let Durability::Synced = durability {
            // Lets the work ready to run change the record first, so that one sync covers it
            // too (group commit); a lone writer loses nothing.
            tokio::task::yield_now().await;
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
        let mut stored = self.stored();
        stored.written.insert(channel_id, record.version());
        if let Durability::Synced = durability {
            stored.synced.insert(channel_id, record.version());
        }
        Ok(())
    }

    /// Writes every record not written at its current version yet.
    pub async fn store_all(&self, durability: Durability) -> Result<(), Error> {
        let versions: Vec<(B256, u64)> = self
            .lock()
            .values()
            .map(|record| (record.channel_id(), record.version()))
            .collect();
        for (channel_id, version) in versions {
            self.store(channel_id, version, durability).await?;
        }
        Ok(())
    }

    fn stored(&self) -> MutexGuard<'_, StoredVersions> {
        self.stored_versions
            .lock()
            .expect("ledger lock is never poisoned")
    }
}

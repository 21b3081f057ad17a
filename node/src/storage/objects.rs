//! The provider's side of storage: objects kept for owners, their chunks, and the space they use.
//!
//! Records in the database (DO NOT CHANGE the key prefixes: on-disk format):
//! - `object/<id>`: an [`ObjectRecord`] (owner, kind, chunk addresses, size);
//! - `chunkref/<address>`: how many objects use a chunk, so a chunk file is deleted exactly when
//!   its last object goes.
//!
//! Space is counted per object (what owners are charged for) against `storage.capacity_bytes`;
//! an upload that would pass it is refused as it arrives, and what it had written is removed.
//!
//! Chunk files no object references (left by a provider killed during an upload, or by a write
//! that finished after its upload was abandoned) are swept at start-up and every
//! [`SWEEP_INTERVAL`], so the disk holds only what is counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use serde::{Deserialize, Serialize};

use super::StorageError;
use super::chunks::{ChunkHash, ChunkStore};
use super::db::Db;

const OBJECT_PREFIX: &str = "object/";
const CHUNK_REF_PREFIX: &str = "chunkref/";

/// Time between sweeps of unreferenced chunk files.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// A chunk file written this recently is left to the next sweep, whatever the clock says of the
/// uploads in flight.
const SWEEP_GRACE: Duration = Duration::from_secs(60);

/// What a provider knows of an object it stores: whose it is and which chunks, in which order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// The object's ID, chosen by its owner.
    pub object_id: String,
    /// The owner's node ID; only it may read, audit or delete the object.
    pub owner: String,
    /// What the object is to its owner ("data", "manifest"), opaque here.
    pub kind: String,
    /// Addresses of the chunks, in order.
    pub chunks: Vec<String>,
    /// Total bytes of all chunks.
    pub size: u64,
    /// When the object was stored, in milliseconds since the Unix epoch.
    pub stored_at_ms: u64,
    /// Until when the owner paid for keeping it (ms since the Unix epoch); `None` when this
    /// provider did not charge for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_until_ms: Option<u64>,
}

impl ObjectRecord {
    /// Returns the chunk addresses, failing if the record was damaged.
    pub fn chunk_hashes(&self) -> Result<Vec<ChunkHash>, StorageError> {
        ChunkHash::parse_list(&self.chunks, || object_key(&self.object_id))
    }
}

/// Space in use, in bytes.
#[derive(Debug, Default)]
struct Usage {
    total: u64,
    /// Bytes of uploads under way, not yet counted in `total`.
    reserved: u64,
    per_owner: HashMap<String, u64>,
}

/// The provider's objects, chunks and space. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    db: Db,
    chunks: ChunkStore,
    capacity_bytes: u64,
    usage: Arc<Mutex<Usage>>,
    /// When each upload in flight began, by upload number: the sweep spares every chunk file
    /// written since the oldest began.
    uploads_in_flight: Arc<Mutex<UploadsInFlight>>,
}

#[derive(Debug, Default)]
struct UploadsInFlight {
    started_at: BTreeMap<u64, SystemTime>,
    next: u64,
}

impl ObjectStore {
    /// Opens the store, counting the space its objects use.
    pub async fn open(
        db: Db,
        chunks: ChunkStore,
        capacity_bytes: u64,
    ) -> Result<Self, StorageError> {
        let mut usage = Usage::default();
        for record in db.scan_json::<ObjectRecord>(OBJECT_PREFIX).await? {
            usage.total += record.size;
            *usage.per_owner.entry(record.owner).or_default() += record.size;
        }
        Ok(Self {
            db,
            chunks,
            capacity_bytes,
            usage: Arc::new(Mutex::new(usage)),
            uploads_in_flight: Arc::default(),
        })
    }

    /// Removes unreferenced chunk files now, as of `started_at` (nothing written before this
    /// process started belongs to an upload in flight), then every [`SWEEP_INTERVAL`] until
    /// `shutdown`.
    pub async fn run_sweeps(self, started_at: SystemTime, shutdown: CancellationToken) {
        let mut cutoff = started_at;
        loop {
            match self.sweep(cutoff).await {
                Ok((0, _)) => {}
                Ok((files, bytes)) => {
                    tracing::info!(files, bytes, "removed chunk files no object uses")
                }
                Err(error) => tracing::warn!(%error, "could not sweep unreferenced chunk files"),
            }
            tokio::select! {
                () = tokio::time::sleep(SWEEP_INTERVAL) => {}
                () = shutdown.cancelled() => return,
            }
            cutoff = SystemTime::now() - SWEEP_GRACE;
        }
    }

    /// Removes the chunk files no object references that were last written before `cutoff` and
    /// before the oldest upload in flight began, and temporary files as old; returns the chunk
    /// files and bytes removed.
    pub async fn sweep(&self, cutoff: SystemTime) -> Result<(usize, u64), StorageError> {
        let cutoff = self
            .uploads_in_flight
            .lock()
            .expect("uploads lock is never poisoned")
            .started_at
            .values()
            .copied()
            .chain([cutoff])
            .min()
            .expect("cutoff is there");
        let (mut files, mut bytes) = (0, 0);
        for prefix in 0..=u8::MAX {
            let chunks = self.chunks.clone();
            let candidates =
                blocking(move || chunks.untouched_since_blocking(prefix, cutoff)).await?;
            let mut unreferenced = Vec::new();
            for hash in candidates {
                if self
                    .db
                    .get(chunk_ref_key(hash).into_bytes())
                    .await?
                    .is_none()
                {
                    unreferenced.push(hash);
                }
            }
            let chunks = self.chunks.clone();
            let freed = blocking(move || {
                unreferenced
                    .into_iter()
                    .map(|hash| chunks.remove_if_untouched_since(hash, cutoff))
                    .filter(|freed| !matches!(freed, Ok(0)))
                    .collect::<Result<Vec<u64>, StorageError>>()
            })
            .await?;
            files += freed.len();
            bytes += freed.iter().sum::<u64>();
        }
        let chunks = self.chunks.clone();
        blocking(move || chunks.remove_stale_temporary_files(cutoff)).await?;
        Ok((files, bytes))
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().expect("usage lock is never poisoned")
    }

    /// Returns (capacity, bytes used).
    pub fn capacity(&self) -> (u64, u64) {
        (self.capacity_bytes, self.usage().total)
    }

    /// Returns the bytes each owner's objects use.
    pub fn usage_by_owner(&self) -> std::collections::BTreeMap<String, u64> {
        self.usage()
            .per_owner
            .iter()
            .filter(|(_, bytes)| **bytes > 0)
            .map(|(owner, bytes)| (owner.clone(), *bytes))
            .collect()
    }

    /// Returns the record of `object_id`, if stored.
    pub async fn get(&self, object_id: &str) -> Result<Option<ObjectRecord>, StorageError> {
        self.db.get_json(&object_key(object_id)).await
    }

    /// Records that `record` is paid for until `paid_until_ms`.
    pub async fn set_paid_until(
        &self,
        record: &ObjectRecord,
        paid_until_ms: u64,
    ) -> Result<ObjectRecord, StorageError> {
        let updated = ObjectRecord {
            paid_until_ms: Some(paid_until_ms),
            ..record.clone()
        };
        self.db
            .put_json_durable(&object_key(&updated.object_id), &updated)
            .await?;
        Ok(updated)
    }

    /// Returns the objects of `owner`.
    pub async fn list(&self, owner: &str) -> Result<Vec<ObjectRecord>, StorageError> {
        let mut records: Vec<ObjectRecord> = self.db.scan_json(OBJECT_PREFIX).await?;
        records.retain(|record| record.owner == owner);
        Ok(records)
    }

    /// Returns the chunk store, to read chunks from.
    pub fn chunks(&self) -> &ChunkStore {
        &self.chunks
    }

    /// Starts receiving an object; its chunks count against the capacity as they arrive.
    pub fn begin_upload(&self, object_id: String, owner: String, kind: String) -> Upload {
        let number = {
            let mut uploads = self
                .uploads_in_flight
                .lock()
                .expect("uploads lock is never poisoned");
            let number = uploads.next;
            uploads.next += 1;
            uploads.started_at.insert(number, SystemTime::now());
            number
        };
        Upload {
            number,
            store: self.clone(),
            object_id,
            owner,
            kind,
            written: Vec::new(),
            reserved: 0,
            committed: false,
        }
    }

    /// Deletes `object_id`; returns the bytes freed.
    pub async fn delete(&self, record: &ObjectRecord) -> Result<u64, StorageError> {
        let hashes = record.chunk_hashes()?;
        let mut changes = vec![(object_key(&record.object_id).into_bytes(), None)];
        let (ref_changes, unreferenced) = self.change_refs(&hashes, -1).await?;
        changes.extend(ref_changes);
        self.db.write_durable(changes).await?;
        self.remove_chunk_files(unreferenced).await?;
        let mut usage = self.usage();
        usage.total = usage.total.saturating_sub(record.size);
        if let Some(owned) = usage.per_owner.get_mut(&record.owner) {
            *owned = owned.saturating_sub(record.size);
        }
        Ok(record.size)
    }

    /// Computes new reference counts of `hashes` changed by `delta`; returns the database
    /// changes and the chunks no object uses any more.
    async fn change_refs(
        &self,
        hashes: &[ChunkHash],
        delta: i64,
    ) -> Result<(Vec<(Vec<u8>, Option<Vec<u8>>)>, Vec<ChunkHash>), StorageError> {
        let mut counts: HashMap<ChunkHash, i64> = HashMap::new();
        for hash in hashes {
            *counts.entry(*hash).or_default() += delta;
        }
        let mut changes = Vec::new();
        let mut unreferenced = Vec::new();
        for (hash, change) in counts {
            let key = chunk_ref_key(hash);
            let current: i64 = self.db.get_json(&key).await?.unwrap_or(0);
            let updated = (current + change).max(0);
            if updated == 0 {
                changes.push((key.into_bytes(), None));
                unreferenced.push(hash);
            } else {
                changes.push((key.into_bytes(), Some(updated.to_string().into_bytes())));
            }
        }
        Ok((changes, unreferenced))
    }

    async fn remove_chunk_files(&self, hashes: Vec<ChunkHash>) -> Result<(), StorageError> {
        let chunks = self.chunks.clone();
        blocking(move || {
            for hash in hashes {
                chunks.remove_blocking(hash)?;
            }
            Ok(())
        })
        .await
    }
}

/// An object being received. Dropped without [`Upload::commit`], it removes the chunks it wrote
/// that no stored object uses, and gives back its reserved space.
#[derive(Debug)]
pub struct Upload {
    /// Its number among the uploads in flight.
    number: u64,
    store: ObjectStore,
    object_id: String,
    owner: String,
    kind: String,
    written: Vec<ChunkHash>,
    reserved: u64,
    committed: bool,
}

impl Upload {
    /// Reserves space for `size` more bytes, or fails if the provider would be full.
    pub fn reserve(&mut self, size: u64) -> Result<(), StorageError> {
        let mut usage = self.store.usage();
        if usage.total + usage.reserved + size > self.store.capacity_bytes {
            return Err(StorageError::Full {
                capacity: self.store.capacity_bytes,
            });
        }
        usage.reserved += size;
        self.reserved += size;
        Ok(())
    }

    /// Records that chunk `hash` was written for this upload.
    pub fn wrote(&mut self, hash: ChunkHash) {
        self.written.push(hash);
    }

    /// Returns the addresses of the chunks written so far, in order.
    pub fn written(&self) -> &[ChunkHash] {
        &self.written
    }

    /// Makes the object durable: chunk directories synced, then record and chunk references
    /// written in one synced batch.
    /// `paid_until_ms` is the end of the paid storage period, when the provider charges.
    pub async fn commit(
        mut self,
        size: u64,
        paid_until_ms: Option<u64>,
    ) -> Result<ObjectRecord, StorageError> {
        let chunks = self.store.chunks.clone();
        let written = self.written.clone();
        blocking(move || chunks.sync_dirs(&written)).await?;
        let record = ObjectRecord {
            object_id: self.object_id.clone(),
            owner: self.owner.clone(),
            kind: self.kind.clone(),
            chunks: self.written.iter().map(|hash| hash.to_hex()).collect(),
            size,
            stored_at_ms: crate::clock::now_ms(),
            paid_until_ms,
        };
        let (mut changes, _) = self.store.change_refs(&self.written, 1).await?;
        changes.push((
            object_key(&record.object_id).into_bytes(),
            Some(serde_json::to_vec(&record).expect("records serialise")),
        ));
        self.store.db.write_durable(changes).await?;
        self.committed = true;
        let mut usage = self.store.usage();
        usage.reserved = usage.reserved.saturating_sub(self.reserved);
        usage.total += size;
        *usage.per_owner.entry(record.owner.clone()).or_default() += size;
        Ok(record)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.store
            .uploads_in_flight
            .lock()
            .expect("uploads lock is never poisoned")
            .started_at
            .remove(&self.number);
        if self.committed {
            return;
        }
        {
            let mut usage = self.store.usage();
            usage.reserved = usage.reserved.saturating_sub(self.reserved);
        }
        // Remove what the failed upload wrote, unless a stored object uses it too.
        let store = self.store.clone();
        let written = std::mem::take(&mut self.written);
        let object_id = self.object_id.clone();
        tokio::spawn(async move {
            let mut orphans = Vec::new();
            for hash in written {
                match store.db.get(chunk_ref_key(hash).into_bytes()).await {
                    Ok(None) => orphans.push(hash),
                    Ok(Some(_)) => {}
                    Err(error) => {
                        tracing::warn!(%error, "could not check a chunk of a failed upload")
                    }
                }
            }
            let removed = orphans.len();
            match store.remove_chunk_files(orphans).await {
                Ok(()) => {
                    tracing::info!(object_id, removed, "removed the chunks of a failed upload")
                }
                Err(error) => {
                    tracing::warn!(object_id, %error, "could not remove the chunks of a failed upload")
                }
            }
        });
    }
}

/// Runs disk work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|join_error| StorageError::Database(join_error.to_string()))?
}

fn object_key(object_id: &str) -> String {
    format!("{OBJECT_PREFIX}{object_id}")
}

fn chunk_ref_key(hash: ChunkHash) -> String {
    format!("{CHUNK_REF_PREFIX}{}", hash.to_hex())
}

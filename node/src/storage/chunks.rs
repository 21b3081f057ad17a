//! The provider's chunk store: each encrypted chunk in its own file, named by its address (the
//! Merkle root of its segments, see [`super::merkle`]).
//!
//! A chunk is written to a temporary file, synced, and renamed into place, so a chunk file that
//! exists under its final name is complete. Directory entries are synced by
//! [`ChunkStore::sync_dirs`] before the object that uses them is acknowledged.
//!
//! A chunk file's modification time says when an upload last needed it: written, or found
//! already there and touched. The sweep ([`ChunkStore::remove_if_untouched_since`]) relies on it
//! to leave alone what uploads in flight use.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::StorageError;

/// A chunk's address: the Merkle root of its 4 KiB segments ([`super::merkle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    /// Returns the address of the chunk `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(super::merkle::root(bytes))
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(text, &mut hash).ok()?;
        Some(Self(hash))
    }

    /// Parses a stored list of addresses; `record_key` names the record for the error when one
    /// is damaged.
    pub fn parse_list(
        list: &[String],
        record_key: impl Fn() -> String,
    ) -> Result<Vec<Self>, StorageError> {
        list.iter()
            .map(|hex| {
                Self::from_hex(hex).ok_or_else(|| StorageError::CorruptRecord {
                    key: record_key(),
                    reason: format!("bad chunk address {hex:?}"),
                })
            })
            .collect()
    }

    /// Returns the hash as 64 lowercase hex characters.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// Returns the SHA-256 over the concatenation of `hashes`: what both ends of a transfer
    /// compute to agree on the whole chunk list (the object's root).
    pub fn list_digest<'a>(hashes: impl IntoIterator<Item = &'a ChunkHash>) -> [u8; 32] {
        let mut digest = Sha256::new();
        for hash in hashes {
            digest.update(hash.0);
        }
        digest.finalize().into()
    }
}

/// Chunk files under one directory, fanned out by the first byte of their hash.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    root: PathBuf,
    /// Held while an existing chunk file is touched for reuse, and while the sweep checks and
    /// removes one, so that the sweep never removes a file an upload just decided to reuse.
    reuse: Arc<Mutex<()>>,
}

impl ChunkStore {
    /// Opens the store in `root`, creating it if needed, and removes temporary files that an
    /// interrupted write left behind.
    pub fn open(root: &Path) -> Result<Self, StorageError> {
        let temporary = root.join("tmp");
        if temporary.exists() {
            std::fs::remove_dir_all(&temporary)?;
        }
        std::fs::create_dir_all(&temporary)?;
        Ok(Self {
            root: root.to_owned(),
            reuse: Arc::default(),
        })
    }

    /// Writes `chunk` durably (data synced; its directory entry is synced by
    /// [`ChunkStore::sync_dirs`]) and returns its hash. Blocks: call from a blocking thread.
    pub fn write_blocking(&self, chunk: &[u8]) -> Result<ChunkHash, StorageError> {
        use std::io::Write;
        let hash = ChunkHash::of(chunk);
        let path = self.path_of(hash);
        {
            let _reuse = self.reuse.lock().expect("reuse lock is never poisoned");
            match std::fs::File::options().write(true).open(&path) {
                Ok(existing) => {
                    existing.set_modified(SystemTime::now())?;
                    return Ok(hash);
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
        }
        std::fs::create_dir_all(path.parent().expect("chunk paths have a parent"))?;
        let temporary =
            self.root
                .join("tmp")
                .join(format!("{}.{}", hash.to_hex(), super::new_id()));
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(chunk)?;
        file.sync_data()?;
        std::fs::rename(&temporary, &path)?;
        Ok(hash)
    }

    /// Syncs the directories holding `hashes`, making their chunk files' names durable.
    pub fn sync_dirs(&self, hashes: &[ChunkHash]) -> Result<(), StorageError> {
        let directories: BTreeSet<PathBuf> = hashes
            .iter()
            .filter_map(|hash| self.path_of(*hash).parent().map(Path::to_owned))
            .collect();
        for directory in directories {
            std::fs::File::open(directory)?.sync_all()?;
        }
        Ok(())
    }

    /// Reads the chunk stored under `hash`. Blocks: call from a blocking thread.
    pub fn read_blocking(&self, hash: ChunkHash) -> Result<Bytes, StorageError> {
        Ok(Bytes::from(std::fs::read(self.path_of(hash))?))
    }

    /// Removes the chunk stored under `hash`, if present. Blocks: call from a blocking thread.
    pub fn remove_blocking(&self, hash: ChunkHash) -> Result<(), StorageError> {
        match std::fs::remove_file(self.path_of(hash)) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Returns the chunk files last written before `cutoff` in the directory of chunks whose
    /// address starts with byte `prefix`. Blocks: call from a blocking thread.
    pub fn untouched_since_blocking(
        &self,
        prefix: u8,
        cutoff: SystemTime,
    ) -> Result<Vec<ChunkHash>, StorageError> {
        let directory = self.root.join(hex::encode([prefix]));
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Some(hash) = entry.file_name().to_str().and_then(ChunkHash::from_hex) else {
                continue;
            };
            if entry.metadata()?.modified()? < cutoff {
                found.push(hash);
            }
        }
        Ok(found)
    }

    /// Removes the chunk file of `hash` if it was last written before `cutoff`; returns the bytes
    /// freed. Blocks: call from a blocking thread.
    pub fn remove_if_untouched_since(
        &self,
        hash: ChunkHash,
        cutoff: SystemTime,
    ) -> Result<u64, StorageError> {
        let path = self.path_of(hash);
        let _reuse = self.reuse.lock().expect("reuse lock is never poisoned");
        let metadata = match std::fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(error) => return Err(error.into()),
        };
        if metadata.modified()? >= cutoff {
            return Ok(0);
        }
        std::fs::remove_file(&path)?;
        Ok(metadata.len())
    }

    /// Removes temporary files older than `cutoff` (writes that never finished). Blocks: call
    /// from a blocking thread.
    pub fn remove_stale_temporary_files(&self, cutoff: SystemTime) -> Result<u64, StorageError> {
        let mut removed = 0;
        for entry in std::fs::read_dir(self.root.join("tmp"))? {
            let entry = entry?;
            if entry.metadata()?.modified()? < cutoff {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Ok(removed)
    }

    /// Returns where the chunk with `hash` lives.
    pub fn path_of(&self, hash: ChunkHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_stored_under_their_hash() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ChunkStore::open(dir.path()).expect("open");
        let hash = store.write_blocking(b"ciphertext").expect("write");
        assert_eq!(hash, ChunkHash::of(b"ciphertext"));
        assert_eq!(store.write_blocking(b"ciphertext").expect("rewrite"), hash);
        store.sync_dirs(&[hash]).expect("sync");
        assert_eq!(&store.read_blocking(hash).expect("read")[..], b"ciphertext");
        assert_eq!(ChunkHash::from_hex(&hash.to_hex()), Some(hash));
        assert!(
            std::fs::read_dir(dir.path().join("tmp"))
                .expect("tmp")
                .next()
                .is_none()
        );
    }
}

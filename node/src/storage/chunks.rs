//! The provider's chunk store: each encrypted chunk in its own file, named by its address (the
//! Merkle root of its segments, see [`super::merkle`]).
//!
//! A chunk is written to a temporary file, synced, and renamed into place, so a chunk file that
//! exists under its final name is complete. Directory entries are synced by
//! [`ChunkStore::sync_dirs`] before the object that uses them is acknowledged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

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
        })
    }

    /// Writes `chunk` durably (data synced; its directory entry is synced by
    /// [`ChunkStore::sync_dirs`]) and returns its hash. Blocks: call from a blocking thread.
    pub fn write_blocking(&self, chunk: &[u8]) -> Result<ChunkHash, StorageError> {
        use std::io::Write;
        let hash = ChunkHash::of(chunk);
        let path = self.path_of(hash);
        if path.exists() {
            return Ok(hash);
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

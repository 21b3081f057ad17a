//! Everything this node keeps on its disk, and the encryption of files before they leave it.
//!
//! Storage knows nothing of gRPC or HTTP. Two roles share it:
//! - as an **owner**, the node keeps a [`files::FileRecord`] per file it stored elsewhere: the
//!   file's key, its chunk list and the providers holding it;
//! - as a **provider**, the node keeps encrypted chunks for others in a [`chunks::ChunkStore`]
//!   and, per stored object, an [`objects::ObjectRecord`] listing them, within its capacity
//!   ([`objects::ObjectStore`]).
//!
//! # Layout
//! - [`db`]: the LevelDB handle, made durable (see ARCHITECTURE.md, "Durability").
//! - [`crypto`]: AES-256-GCM in the STREAM construction, one fresh key per file.
//! - [`chunks`]: content-addressed chunk files, fsynced before they count as stored.
//! - [`merkle`]: chunk addresses and the segment proofs audits ask for.
//! - [`objects`]: the provider's objects, chunk references and space.
//! - [`files`]: the owner's records of its own files.

pub mod chunks;
pub mod crypto;
pub mod db;
pub mod files;
pub mod merkle;
pub mod objects;

use std::path::Path;

use crate::error::{Error, ErrorCode};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The disk or the database failed.
    #[error("storage i/o failed: {0}")]
    Io(#[from] std::io::Error),
    /// LevelDB failed.
    #[error("database failed: {0}")]
    Database(String),
    /// A stored record could not be decoded: it was damaged or written by an incompatible version.
    #[error("stored record {key} is damaged: {reason}")]
    CorruptRecord {
        /// Key of the damaged record.
        key: String,
        /// What could not be decoded.
        reason: String,
    },
    /// Data did not verify: a chunk's hash or authentication tag did not match.
    #[error("{0}")]
    Integrity(String),
    /// An object with this ID is stored already.
    #[error("object {0} already exists")]
    AlreadyExists(String),
    /// The provider's capacity is used up.
    #[error("this provider is full: it offers {capacity} bytes and they are taken")]
    Full {
        /// `storage.capacity_bytes`.
        capacity: u64,
    },
}

impl From<rusty_leveldb::Status> for StorageError {
    fn from(status: rusty_leveldb::Status) -> Self {
        Self::Database(status.to_string())
    }
}

impl From<StorageError> for Error {
    fn from(error: StorageError) -> Self {
        let code = match &error {
            StorageError::Integrity(_) => ErrorCode::IntegrityError,
            StorageError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            StorageError::Full { .. } => ErrorCode::ProviderFull,
            StorageError::Io(_)
            | StorageError::Database(_)
            | StorageError::CorruptRecord { .. } => {
                tracing::error!(%error, "storage failure");
                ErrorCode::StorageFailure
            }
        };
        Error::new(code, error.to_string())
    }
}

/// Makes the directory entry of `path` durable: after a rename or a create, the data of the file
/// is synced but its name is not until its directory is.
pub fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => std::fs::File::open(parent)?.sync_all(),
        _ => std::fs::File::open(".")?.sync_all(),
    }
}

/// Returns a new random 128-bit identifier as 32 lowercase hex characters.
pub fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Returns whether `id` has the form of [`new_id`]'s identifiers, so it is safe in keys and paths.
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

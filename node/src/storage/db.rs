//! The node's LevelDB (`rusty-leveldb`), made durable and usable from async code.
//!
//! rusty-leveldb never calls fsync: a "synced" write only flushes its buffer to the kernel, which
//! survives the process being killed but not the machine losing power. [`DurableEnv`] wraps its
//! file system so that flushing a file means `fdatasync`, closing a file syncs it, and creating,
//! renaming or deleting a file syncs its directory. A [`Db::put_durable`] is therefore on the disk
//! when it returns.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use rusty_leveldb::env::{Env, FileLock, Logger, RandomAccess};
use rusty_leveldb::{DB, Options, PosixDiskEnv, WriteBatch};

use super::StorageError;

/// A cheap-to-clone handle on the node's LevelDB. Every call runs on tokio's blocking pool,
/// because LevelDB calls block.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Mutex<DB>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    /// Opens (creating if needed) the database in `path`.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(path)?;
        let options = Options {
            env: Rc::new(Box::new(DurableEnv::default())),
            create_if_missing: true,
            ..Options::default()
        };
        let db = DB::open(path, options)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(db)),
        })
    }

    /// Returns the value stored under `key`.
    pub async fn get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, StorageError> {
        self.run(move |db| Ok(db.get(&key).map(|value| value.to_vec())))
            .await
    }

    /// Stores `value` under `key` and returns once it is on the disk.
    pub async fn put_durable(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StorageError> {
        self.run(move |db| {
            let mut batch = WriteBatch::default();
            batch.put(&key, &value);
            Ok(db.write(batch, true)?)
        })
        .await
    }

    /// Stores `value` under `key` without waiting for the disk: it stays in this process's
    /// buffer until the next durable write or a clean close, so a crash can lose it. For records
    /// that are cheap to lose.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StorageError> {
        self.run(move |db| {
            let mut batch = WriteBatch::default();
            batch.put(&key, &value);
            Ok(db.write(batch, false)?)
        })
        .await
    }

    /// Applies `changes` (a value to store, or `None` to delete) atomically, and returns once
    /// they are on the disk.
    pub async fn write_durable(
        &self,
        changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), StorageError> {
        self.run(move |db| {
            let mut batch = WriteBatch::default();
            for (key, value) in &changes {
                match value {
                    Some(value) => batch.put(key, value),
                    None => batch.delete(key),
                }
            }
            Ok(db.write(batch, true)?)
        })
        .await
    }

    /// Returns the JSON record stored under `key`, failing if it does not decode.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self.get(key.as_bytes().to_vec()).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| StorageError::CorruptRecord {
                key: key.to_owned(),
                reason: error.to_string(),
            })
    }

    /// Stores `record` as JSON under `key`, durably.
    pub async fn put_json_durable<T: serde::Serialize>(
        &self,
        key: &str,
        record: &T,
    ) -> Result<(), StorageError> {
        let value = serde_json::to_vec(record).expect("records serialise to JSON");
        self.put_durable(key.as_bytes().to_vec(), value).await
    }

    /// Returns every JSON record whose key starts with `prefix`, failing on one that does not
    /// decode.
    pub async fn scan_json<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<T>, StorageError> {
        self.scan_prefix(prefix.as_bytes().to_vec())
            .await?
            .into_iter()
            .map(|(key, value)| {
                serde_json::from_slice(&value).map_err(|error| StorageError::CorruptRecord {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    reason: error.to_string(),
                })
            })
            .collect()
    }

    /// Returns every entry whose key starts with `prefix`, in key order.
    pub async fn scan_prefix(
        &self,
        prefix: Vec<u8>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        use rusty_leveldb::LdbIterator;
        self.run(move |db| {
            let mut iterator = db.new_iter()?;
            iterator.seek(&prefix);
            let mut entries = Vec::new();
            while let Some((key, value)) = iterator.current() {
                if !key.starts_with(&prefix) {
                    break;
                }
                entries.push((key.to_vec(), value.to_vec()));
                if !iterator.advance() {
                    break;
                }
            }
            Ok(entries)
        })
        .await
    }

    /// Flushes and closes the database; later calls fail.
    pub async fn close(&self) -> Result<(), StorageError> {
        self.run(|db| Ok(db.close()?)).await
    }

    async fn run<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&mut DB) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves LevelDB in an unknown state; refuse to go on.
            let mut db = inner
                .lock()
                .map_err(|_| StorageError::Database("database lock poisoned".to_owned()))?;
            operation(&mut db)
        })
        .await
        .map_err(|join_error| StorageError::Database(join_error.to_string()))?
    }
}

/// rusty-leveldb's disk environment, with every write made durable (see the module docs).
#[derive(Default)]
struct DurableEnv {
    disk: PosixDiskEnv,
}

/// A file LevelDB writes: flushing it syncs its data, and so does closing it.
struct DurableFile {
    file: Box<dyn Write>,
    /// The boxed writer is a plain `File` we cannot reach, so its data is synced through a
    /// second handle, opened once: fdatasync acts on the file, not on the descriptor.
    sync_handle: std::fs::File,
    path: PathBuf,
}

impl DurableFile {
    fn new(file: Box<dyn Write>, path: &Path) -> rusty_leveldb::Result<Self> {
        sync_dir_of(path)?;
        let sync_handle = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|error| io_failure(format!("open {} to sync it", path.display()), &error))?;
        Ok(Self {
            file,
            sync_handle,
            path: path.to_owned(),
        })
    }
}

impl Write for DurableFile {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        self.file.write(buffer)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.sync_handle.sync_data()
    }
}

impl Drop for DurableFile {
    fn drop(&mut self) {
        if let Err(error) = self.flush() {
            tracing::error!(path = %self.path.display(), %error, "could not sync database file");
        }
    }
}

fn sync_dir_of(path: &Path) -> rusty_leveldb::Result<()> {
    super::sync_parent_dir(path)
        .map_err(|error| io_failure(format!("sync directory of {}", path.display()), &error))
}

/// LevelDB's status for a failed file operation, saying which.
fn io_failure(what: String, error: &std::io::Error) -> rusty_leveldb::Status {
    rusty_leveldb::Status {
        code: rusty_leveldb::StatusCode::IOError,
        err: format!("{what}: {error}"),
    }
}

impl Env for DurableEnv {
    fn open_sequential_file(&self, path: &Path) -> rusty_leveldb::Result<Box<dyn std::io::Read>> {
        self.disk.open_sequential_file(path)
    }
    fn open_random_access_file(&self, path: &Path) -> rusty_leveldb::Result<Box<dyn RandomAccess>> {
        self.disk.open_random_access_file(path)
    }
    fn open_writable_file(&self, path: &Path) -> rusty_leveldb::Result<Box<dyn Write>> {
        let file = self.disk.open_writable_file(path)?;
        Ok(Box::new(DurableFile::new(file, path)?))
    }
    fn open_appendable_file(&self, path: &Path) -> rusty_leveldb::Result<Box<dyn Write>> {
        let file = self.disk.open_appendable_file(path)?;
        Ok(Box::new(DurableFile::new(file, path)?))
    }
    fn exists(&self, path: &Path) -> rusty_leveldb::Result<bool> {
        self.disk.exists(path)
    }
    fn children(&self, path: &Path) -> rusty_leveldb::Result<Vec<PathBuf>> {
        self.disk.children(path)
    }
    fn size_of(&self, path: &Path) -> rusty_leveldb::Result<usize> {
        self.disk.size_of(path)
    }
    fn delete(&self, path: &Path) -> rusty_leveldb::Result<()> {
        self.disk.delete(path)?;
        sync_dir_of(path)
    }
    fn mkdir(&self, path: &Path) -> rusty_leveldb::Result<()> {
        self.disk.mkdir(path)
    }
    fn rmdir(&self, path: &Path) -> rusty_leveldb::Result<()> {
        self.disk.rmdir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> rusty_leveldb::Result<()> {
        self.disk.rename(from, to)?;
        sync_dir_of(to)
    }
    fn lock(&self, path: &Path) -> rusty_leveldb::Result<FileLock> {
        self.disk.lock(path)
    }
    fn unlock(&self, lock: FileLock) -> rusty_leveldb::Result<()> {
        self.disk.unlock(lock)
    }
    fn new_logger(&self, path: &Path) -> rusty_leveldb::Result<Logger> {
        // LevelDB's own info log needs no durability.
        self.disk.new_logger(path)
    }
    fn micros(&self) -> u64 {
        self.disk.micros()
    }
    fn sleep_for(&self, micros: u32) {
        self.disk.sleep_for(micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn durable_writes_survive_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::open(dir.path()).expect("open");
        for index in 0..200u32 {
            db.put_durable(format!("key/{index:04}").into_bytes(), vec![7; 4096])
                .await
                .expect("put");
        }
        db.put_durable(b"other".to_vec(), b"x".to_vec())
            .await
            .expect("put");
        db.close().await.expect("close");
        drop(db);

        let reopened = Db::open(dir.path()).expect("reopen");
        let entries = reopened.scan_prefix(b"key/".to_vec()).await.expect("scan");
        assert_eq!(entries.len(), 200);
        assert_eq!(entries[17].0, b"key/0017");
        assert_eq!(
            reopened.get(b"other".to_vec()).await.expect("get"),
            Some(b"x".to_vec())
        );
    }
}

//! Background tasks' records: what was asked, where each stands, what came of it. In LevelDB,
//! so that they outlive a restart of the requester's node, with an index in memory for listing
//! and for the limits on how many are kept and run.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::{TaskRequest, TaskState, TaskStatus};
use crate::config::TasksConfig;
use crate::error::{Error, ErrorCode};
use crate::storage::StorageError;
use crate::storage::db::Db;

/// Key prefix of background task records (`task/<id>`). DO NOT CHANGE: on-disk format.
const TASK_PREFIX: &str = "task/";

/// A background task as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Where it stands, as `GET /tasks/{id}` shows it.
    #[serde(flatten)]
    pub status: TaskStatus,
    /// The request as accepted (with its ID); the input is dropped once the task is over.
    pub request: TaskRequest,
}

impl TaskRecord {
    /// A task just accepted.
    pub fn queued(id: String, request: TaskRequest) -> Self {
        Self {
            status: TaskStatus {
                id,
                state: TaskState::Queued,
                plugin: request.plugin.clone(),
                node: None,
                created_at_ms: crate::clock::now_ms(),
                started_at_ms: None,
                finished_at_ms: None,
                output: None,
                output_base64: None,
                verified_by: Vec::new(),
                error: None,
            },
            request,
        }
    }

    /// Notes that the task started now.
    pub fn start(&mut self) {
        self.status.state = TaskState::Running;
        self.status.started_at_ms = Some(crate::clock::now_ms());
    }

    /// Notes how the task ended, and drops its input.
    pub fn finish(&mut self, outcome: Result<Ran, Error>) {
        match outcome {
            Ok(ran) => {
                self.status.state = TaskState::Succeeded;
                (self.status.output, self.status.output_base64) =
                    crate::encoding::text_or_base64(&ran.output);
                self.status.plugin = Some(ran.plugin);
                self.status.node = Some(ran.node);
                self.status.verified_by = ran.verified_by;
            }
            Err(error) => {
                self.status.state = TaskState::Failed;
                self.status.error = Some(error.into());
            }
        }
        self.status.finished_at_ms = Some(crate::clock::now_ms());
        self.request.input = None;
        self.request.input_base64 = None;
    }
}

/// What a task that ran gave.
#[derive(Debug, Clone)]
pub struct Ran {
    /// The output.
    pub output: bytes::Bytes,
    /// The plugin that ran it.
    pub plugin: String,
    /// The node that ran it.
    pub node: String,
    /// With verification: the nodes that signed the output.
    pub verified_by: Vec<String>,
}

/// What the index keeps of each task.
#[derive(Debug, Clone, Copy)]
struct Entry {
    created_at_ms: u64,
    state: TaskState,
    finished_at_ms: Option<u64>,
    /// Size of the stored record.
    bytes: u64,
}

#[derive(Debug, Default)]
struct Index {
    by_id: HashMap<String, Entry>,
    /// Oldest first.
    by_age: BTreeSet<(u64, String)>,
    /// Size of all the stored records.
    bytes: u64,
}

/// Finished tasks to forget to make room, and whether that is enough.
struct Room {
    forget: Vec<String>,
    fits: bool,
}

impl Index {
    fn insert(&mut self, id: &str, entry: Entry) {
        self.remove(id);
        self.bytes += entry.bytes;
        self.by_id.insert(id.to_owned(), entry);
        self.by_age.insert((entry.created_at_ms, id.to_owned()));
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            self.bytes -= old.bytes;
            self.by_age.remove(&(old.created_at_ms, id.to_owned()));
        }
    }

    /// The oldest finished tasks (never `id`) to forget for the record of `id`, of `bytes`, to
    /// fit within `limits`.
    fn room_for(&self, id: &str, bytes: u64, limits: &TasksConfig) -> Room {
        let previous = self.by_id.get(id);
        let mut count = self.by_id.len() + usize::from(previous.is_none());
        let mut total = self.bytes - previous.map_or(0, |entry| entry.bytes) + bytes;
        let mut finished = self
            .by_age
            .iter()
            .map(|(_, kept)| kept)
            .filter(|kept| *kept != id && self.by_id[*kept].state.is_finished());
        let mut forget = Vec::new();
        while count > limits.max_kept as usize || total > limits.max_kept_bytes {
            let Some(oldest) = finished.next() else {
                return Room {
                    forget,
                    fits: false,
                };
            };
            count -= 1;
            total -= self.by_id[oldest].bytes;
            forget.push(oldest.clone());
        }
        Room { forget, fits: true }
    }
}

/// The background tasks' records. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskRecords {
    db: Db,
    index: Arc<Mutex<Index>>,
    running: Arc<Semaphore>,
    options: TasksConfig,
}

impl TaskRecords {
    /// Reads the index of the records in `db`.
    pub async fn open(db: Db, options: TasksConfig) -> Result<Self, StorageError> {
        let records: Vec<TaskRecord> = db.scan_json(TASK_PREFIX).await?;
        let mut index = Index::default();
        for record in &records {
            index.insert(&record.status.id, entry_of(&record.status, &encode(record)));
        }
        Ok(Self {
            db,
            index: Arc::new(Mutex::new(index)),
            running: Arc::new(Semaphore::new(options.max_running as usize)),
            options,
        })
    }

    /// Stores a new task's record, forgetting the oldest finished tasks past `tasks.max_kept`
    /// or `tasks.max_kept_bytes`. Refuses an ID already kept, and a task that does not fit even
    /// then.
    pub async fn insert(&self, record: &TaskRecord) -> Result<(), Error> {
        let id = &record.status.id;
        let encoded = encode(record);
        let forgotten = {
            let mut index = self.lock();
            if index.by_id.contains_key(id) {
                return Err(Error::new(
                    ErrorCode::AlreadyExists,
                    format!("a task with ID {id:?} is already kept; choose another ID"),
                ));
            }
            let room = index.room_for(id, encoded.len() as u64, &self.options);
            if !room.fits {
                return Err(Error::new(
                    ErrorCode::Overloaded,
                    format!(
                        "the {} background tasks kept are unfinished and fill tasks.max_kept ({}) \
                         or tasks.max_kept_bytes ({} of {} bytes); wait for some to finish",
                        index.by_id.len(),
                        self.options.max_kept,
                        index.bytes,
                        self.options.max_kept_bytes
                    ),
                )
                .with_details(serde_json::json!({"retry_after_seconds": 1})));
            }
            for old in &room.forget {
                index.remove(old);
            }
            index.insert(id, entry_of(&record.status, &encoded));
            room.forget
        };
        self.write(id, encoded, forgotten).await.inspect_err(|_| {
            self.lock().remove(id);
        })?;
        Ok(())
    }

    /// Stores a task's new state, forgetting the oldest finished tasks when its output takes
    /// the room of theirs.
    pub async fn update(&self, record: &TaskRecord) -> Result<(), StorageError> {
        let id = &record.status.id;
        let encoded = encode(record);
        let entry = entry_of(&record.status, &encoded);
        let forgotten = {
            let mut index = self.lock();
            // Kept even when it does not fit: the task ran, and its outcome is what was asked for.
            let room = index.room_for(id, entry.bytes, &self.options);
            for old in &room.forget {
                index.remove(old);
            }
            room.forget
        };
        self.write(id, encoded, forgotten).await?;
        self.lock().insert(id, entry);
        Ok(())
    }

    /// Writes the record of `id` and deletes those of `forgotten`, at once and durably.
    async fn write(
        &self,
        id: &str,
        encoded: Vec<u8>,
        forgotten: Vec<String>,
    ) -> Result<(), StorageError> {
        let mut changes = vec![(key(id).into_bytes(), Some(encoded))];
        changes.extend(forgotten.iter().map(|old| (key(old).into_bytes(), None)));
        self.db.write_durable(changes).await
    }

    /// The record of task `id`.
    pub async fn get(&self, id: &str) -> Result<Option<TaskRecord>, StorageError> {
        self.db.get_json(&key(id)).await
    }

    /// Up to `limit` tasks, newest first, in `state` if given, without their outputs.
    pub async fn list(
        &self,
        state: Option<TaskState>,
        limit: usize,
    ) -> Result<Vec<TaskStatus>, StorageError> {
        let ids: Vec<String> = {
            let index = self.lock();
            index
                .by_age
                .iter()
                .rev()
                .filter(|(_, id)| state.is_none_or(|state| index.by_id[id].state == state))
                .take(limit)
                .map(|(_, id)| id.clone())
                .collect()
        };
        let mut tasks = Vec::with_capacity(ids.len());
        for id in ids {
            // A task forgotten meanwhile is simply not listed.
            if let Some(record) = self.get(&id).await? {
                let mut status = record.status;
                status.output = None;
                status.output_base64 = None;
                tasks.push(status);
            }
        }
        Ok(tasks)
    }

    /// The records of tasks not finished: queued or running when this node stopped.
    pub async fn unfinished(&self) -> Result<Vec<TaskRecord>, StorageError> {
        let ids: Vec<String> = self
            .lock()
            .by_id
            .iter()
            .filter(|(_, entry)| !entry.state.is_finished())
            .map(|(id, _)| id.clone())
            .collect();
        let mut records = Vec::new();
        for id in ids {
            records.extend(self.get(&id).await?);
        }
        records.sort_by_key(|record| record.status.created_at_ms);
        Ok(records)
    }

    /// Forgets the tasks finished more than `tasks.keep_results_ms` ago; returns how many.
    pub async fn forget_old(&self) -> Result<usize, StorageError> {
        let cutoff = crate::clock::now_ms().saturating_sub(self.options.keep_results_ms);
        let old: Vec<String> = self
            .lock()
            .by_id
            .iter()
            .filter(|(_, entry)| entry.finished_at_ms.is_some_and(|at| at < cutoff))
            .map(|(id, _)| id.clone())
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        self.db
            .write_durable(old.iter().map(|id| (key(id).into_bytes(), None)).collect())
            .await?;
        let mut index = self.lock();
        for id in &old {
            index.remove(id);
        }
        Ok(old.len())
    }

    /// Waits for one of `tasks.max_running` places.
    pub async fn place_to_run(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.running)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// How long a finished task is kept, to know how often to look for old ones.
    pub fn keep_results_ms(&self) -> u64 {
        self.options.keep_results_ms
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index
            .lock()
            .expect("task index lock is never poisoned")
    }
}

fn entry_of(status: &TaskStatus, encoded: &[u8]) -> Entry {
    Entry {
        created_at_ms: status.created_at_ms,
        state: status.state,
        finished_at_ms: status.finished_at_ms,
        bytes: encoded.len() as u64,
    }
}

fn key(id: &str) -> String {
    format!("{TASK_PREFIX}{id}")
}

fn encode(record: &TaskRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("records serialise to JSON")
}

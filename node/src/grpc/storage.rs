//! `StorageService`: keeps encrypted objects for other nodes.
//!
//! An object counts as stored only once every chunk file is synced, the chunk directories are
//! synced, and its record is durably in the database; only then is the upload acknowledged.
//! A stream that breaks off, or whose trailer does not match, leaves no record.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use sphere_proto::v1::put_object_request::Part;
use sphere_proto::v1::storage_service_server::StorageService;
use sphere_proto::v1::{
    GetObjectRequest, GetObjectResponse, ObjectTrailer, PutObjectRequest, PutObjectResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, ErrorCode};
use crate::storage::StorageError;
use crate::storage::chunks::{ChunkHash, ChunkStore};
use crate::storage::objects::{ObjectIndex, ObjectRecord};

/// Chunk writes (or reads) running at once per transfer; bounds memory and keeps the disk busy.
const CHUNK_IO_IN_FLIGHT: usize = 4;

/// The provider side of storage.
#[derive(Debug, Clone)]
pub struct ProviderStorage {
    node_id: String,
    chunks: ChunkStore,
    objects: ObjectIndex,
    /// Object IDs being uploaded now, so two uploads cannot claim the same ID.
    uploads_in_progress: Arc<Mutex<HashSet<String>>>,
}

impl ProviderStorage {
    /// Returns the provider storage of node `node_id`.
    pub fn new(node_id: String, chunks: ChunkStore, objects: ObjectIndex) -> Self {
        Self {
            node_id,
            chunks,
            objects,
            uploads_in_progress: Arc::default(),
        }
    }

    async fn receive(
        &self,
        mut stream: Streaming<PutObjectRequest>,
    ) -> Result<PutObjectResponse, Error> {
        let object_id = match next_part(&mut stream).await? {
            Some(Part::Header(header)) => header.object_id,
            _ => return Err(bad_stream("the first message must be a header")),
        };
        if !crate::storage::is_valid_id(&object_id) {
            return Err(Error::invalid_field(
                "object_id",
                "must be 32 lowercase hex characters",
            ));
        }
        let _reservation = self.reserve(&object_id).await?;

        let mut writes = FuturesOrdered::new();
        let mut hashes = Vec::new();
        let mut size = 0u64;
        let trailer: ObjectTrailer = loop {
            match next_part(&mut stream).await? {
                Some(Part::Chunk(chunk)) => {
                    size += chunk.len() as u64;
                    let chunks = self.chunks.clone();
                    writes.push_back(tokio::task::spawn_blocking(move || {
                        chunks.write_blocking(&chunk)
                    }));
                    if writes.len() >= CHUNK_IO_IN_FLIGHT {
                        hashes.push(joined(writes.next().await)?);
                    }
                }
                Some(Part::Trailer(trailer)) => break trailer,
                Some(Part::Header(_)) => return Err(bad_stream("a second header arrived")),
                None => {
                    return Err(bad_stream(
                        "the stream ended without a trailer; nothing was stored",
                    ));
                }
            }
        };
        while let Some(write) = writes.next().await {
            hashes.push(joined(Some(write))?);
        }
        if trailer.chunk_count != hashes.len() as u64
            || trailer.size != size
            || trailer.chunk_list_digest[..] != ChunkHash::list_digest(&hashes)
        {
            return Err(Error::new(
                ErrorCode::IntegrityError,
                "the chunks received do not match the trailer; nothing was stored",
            ));
        }
        let chunks = self.chunks.clone();
        let synced_hashes = hashes.clone();
        tokio::task::spawn_blocking(move || chunks.sync_dirs(&synced_hashes))
            .await
            .map_err(|join_error| Error::new(ErrorCode::Internal, join_error.to_string()))??;
        let record = ObjectRecord {
            object_id: object_id.clone(),
            chunks: hashes.iter().map(|hash| hash.to_hex()).collect(),
            size,
            stored_at_ms: crate::files::now_ms(),
        };
        self.objects.put(&record).await?;
        tracing::info!(object_id, size, chunks = hashes.len(), "object stored");
        Ok(PutObjectResponse {
            object_id,
            provider_id: self.node_id.clone(),
        })
    }

    /// Claims `object_id` for one upload, refusing IDs that are stored or being uploaded.
    async fn reserve(&self, object_id: &str) -> Result<Reservation, Error> {
        let already = || Error::from(StorageError::AlreadyExists(object_id.to_owned()));
        if self.objects.get(object_id).await?.is_some() {
            return Err(already());
        }
        let mut in_progress = self
            .uploads_in_progress
            .lock()
            .expect("upload set lock is never poisoned");
        if !in_progress.insert(object_id.to_owned()) {
            return Err(already());
        }
        Ok(Reservation {
            uploads_in_progress: Arc::clone(&self.uploads_in_progress),
            object_id: object_id.to_owned(),
        })
    }
}

/// Releases a claimed object ID when the upload ends, however it ends.
struct Reservation {
    uploads_in_progress: Arc<Mutex<HashSet<String>>>,
    object_id: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut in_progress) = self.uploads_in_progress.lock() {
            in_progress.remove(&self.object_id);
        }
    }
}

async fn next_part(stream: &mut Streaming<PutObjectRequest>) -> Result<Option<Part>, Error> {
    match stream.message().await {
        Ok(Some(message)) => message
            .part
            .map(Some)
            .ok_or_else(|| bad_stream("a message had no part")),
        Ok(None) => Ok(None),
        Err(status) => Err(Error::new(
            ErrorCode::TargetError,
            format!("the upload stream broke: {}", status.message()),
        )),
    }
}

fn joined<T>(
    finished: Option<Result<Result<T, StorageError>, tokio::task::JoinError>>,
) -> Result<T, Error> {
    match finished {
        Some(Ok(result)) => Ok(result?),
        Some(Err(join_error)) => Err(Error::new(ErrorCode::Internal, join_error.to_string())),
        None => Err(Error::new(ErrorCode::Internal, "no write was pending")),
    }
}

fn bad_stream(problem: &str) -> Error {
    Error::new(
        ErrorCode::InvalidField,
        format!("malformed PutObject stream: {problem}"),
    )
}

#[tonic::async_trait]
impl StorageService for ProviderStorage {
    async fn put_object(
        &self,
        request: Request<Streaming<PutObjectRequest>>,
    ) -> Result<Response<PutObjectResponse>, Status> {
        Ok(Response::new(self.receive(request.into_inner()).await?))
    }

    type GetObjectStream = ReceiverStream<Result<GetObjectResponse, Status>>;

    async fn get_object(
        &self,
        request: Request<GetObjectRequest>,
    ) -> Result<Response<Self::GetObjectStream>, Status> {
        let object_id = request.into_inner().object_id;
        let not_found = || {
            Error::new(
                ErrorCode::FileNotFound,
                format!("no object with id {object_id:?}"),
            )
        };
        if !crate::storage::is_valid_id(&object_id) {
            return Err(not_found().into());
        }
        let record = self
            .objects
            .get(&object_id)
            .await
            .map_err(Error::from)?
            .ok_or_else(not_found)?;
        let hashes = record.chunk_hashes().map_err(Error::from)?;
        let (sender, receiver) = mpsc::channel(CHUNK_IO_IN_FLIGHT);
        let chunks = self.chunks.clone();
        tokio::spawn(async move {
            let mut reads =
                futures_util::stream::iter(hashes.into_iter().enumerate().map(|(index, hash)| {
                    let chunks = chunks.clone();
                    async move {
                        tokio::task::spawn_blocking(move || read_verified(&chunks, index, hash))
                            .await
                            .unwrap_or_else(|join_error| {
                                Err(Error::new(ErrorCode::Internal, join_error.to_string()))
                            })
                    }
                }))
                .buffered(CHUNK_IO_IN_FLIGHT);
            while let Some(read) = reads.next().await {
                let failed = read.is_err();
                let message = read
                    .map(|chunk| GetObjectResponse { chunk })
                    .map_err(Status::from);
                if sender.send(message).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// Reads a chunk and checks it against its address: a provider reports its own damaged data
/// instead of serving it (the owner checks again anyway).
fn read_verified(chunks: &ChunkStore, index: usize, hash: ChunkHash) -> Result<Bytes, Error> {
    let chunk = chunks.read_blocking(hash)?;
    if ChunkHash::of(&chunk) != hash {
        tracing::error!(chunk = %hash.to_hex(), "stored chunk is damaged");
        return Err(Error::new(
            ErrorCode::IntegrityError,
            format!("chunk {index} is damaged on the provider"),
        ));
    }
    Ok(chunk)
}

//! `StorageService`: keeps encrypted objects for other nodes, for their owners only.
//!
//! An object counts as stored only once every chunk file is synced, the chunk directories are
//! synced, and its record is durably in the database; only then is the upload acknowledged.
//! A stream that breaks off, or whose trailer does not match, leaves no record, and the chunks it
//! wrote are removed. Every request must be signed by the object's owner ([`crate::auth`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use sphere_proto::v1::put_object_request::Part;
use sphere_proto::v1::storage_service_server::StorageService;
use sphere_proto::v1::{
    AuditObjectRequest, AuditObjectResponse, DeleteObjectRequest, DeleteObjectResponse,
    GetCapacityRequest, GetCapacityResponse, GetObjectRequest, GetObjectResponse,
    ListObjectsRequest, ListObjectsResponse, ObjectSummary, ObjectTrailer, PutObjectRequest,
    PutObjectResponse, RenewObjectRequest, RenewObjectResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{RequestVerifier, SignedRequest};
use crate::error::{Error, ErrorCode};
use crate::identity::NodeId;
use crate::payments::{Payments, amount, payee};
use crate::storage::StorageError;
use crate::storage::chunks::{ChunkHash, ChunkStore};
use crate::storage::merkle;
use crate::storage::objects::{ObjectRecord, ObjectStore};

/// Chunk writes (or reads) running at once per transfer; bounds memory and keeps the disk busy.
const CHUNK_IO_IN_FLIGHT: usize = 4;

/// The provider side of storage.
#[derive(Debug, Clone)]
pub struct ProviderStorage {
    node_id: String,
    store: ObjectStore,
    /// Charges for storage and reads, when payments are on.
    payments: Option<Payments>,
    verifier: Arc<RequestVerifier>,
    /// Object IDs being uploaded now, so two uploads cannot claim the same ID.
    uploads_in_progress: Arc<Mutex<HashSet<String>>>,
}

impl ProviderStorage {
    /// Returns the provider storage of node `node_id`.
    pub fn new(node_id: String, store: ObjectStore, payments: Option<Payments>) -> Self {
        Self {
            store,
            payments,
            verifier: Arc::new(RequestVerifier::new(
                node_id.parse().expect("a node ID is an address"),
            )),
            node_id,
            uploads_in_progress: Arc::default(),
        }
    }

    /// Checks the owner's signature on `request` and returns the owner's node ID.
    fn authorize<R: SignedRequest>(&self, request: &R) -> Result<NodeId, Error> {
        Ok(NodeId::from(self.verifier.verify(request)?))
    }

    /// Returns the record of the object `request` is about, and its owner, if its signature
    /// proves the caller owns it. A stranger learns nothing: an object of someone else's looks
    /// like no object at all.
    async fn owned_object<R: SignedRequest>(
        &self,
        request: &R,
    ) -> Result<(ObjectRecord, NodeId), Error> {
        let caller = self.authorize(request)?;
        let object_id = request.object_id();
        let not_found = || {
            Error::new(
                ErrorCode::FileNotFound,
                format!("no object with id {object_id:?}"),
            )
        };
        if !crate::storage::is_valid_id(object_id) {
            return Err(not_found());
        }
        match self.store.get(object_id).await? {
            Some(record) if record.owner == caller.to_string() => Ok((record, caller)),
            Some(_) => Err(Error::new(
                ErrorCode::PermissionDenied,
                "request refused: only the object's owner may do this",
            )),
            None => Err(not_found()),
        }
    }

    async fn receive(
        &self,
        mut stream: Streaming<PutObjectRequest>,
    ) -> Result<PutObjectResponse, Error> {
        let header = match next_part(&mut stream).await? {
            Some(Part::Header(header)) => header,
            _ => return Err(bad_stream("the first message must be a header")),
        };
        let owner = self.authorize(&header)?;
        let object_id = header.object_id;
        if !crate::storage::is_valid_id(&object_id) {
            return Err(Error::invalid_field(
                "object_id",
                "must be 32 lowercase hex characters",
            ));
        }
        let _reservation = self.reserve(&object_id).await?;
        let mut upload = self
            .store
            .begin_upload(object_id.clone(), owner.to_string(), header.kind);

        let mut writes = FuturesOrdered::new();
        let mut size = 0u64;
        let received: Result<ObjectTrailer, Error> = async {
            loop {
                match next_part(&mut stream).await? {
                    Some(Part::Chunk(chunk)) => {
                        upload.reserve(chunk.len() as u64)?;
                        size += chunk.len() as u64;
                        let chunks = self.store.chunks().clone();
                        writes.push_back(tokio::task::spawn_blocking(move || {
                            chunks.write_blocking(&chunk)
                        }));
                        if writes.len() >= CHUNK_IO_IN_FLIGHT {
                            upload.wrote(joined(writes.next().await)?);
                        }
                    }
                    Some(Part::Trailer(trailer)) => return Ok(trailer),
                    Some(Part::Header(_)) => return Err(bad_stream("a second header arrived")),
                    None => {
                        return Err(bad_stream(
                            "the stream ended without a trailer; nothing was stored",
                        ));
                    }
                }
            }
        }
        .await;
        // Every write started is waited for and accounted, so that the chunks of a failed upload
        // are known and removed.
        let mut write_failure = None;
        while let Some(write) = writes.next().await {
            match joined(Some(write)) {
                Ok(hash) => upload.wrote(hash),
                Err(error) => {
                    write_failure.get_or_insert(error);
                }
            }
        }
        let trailer = received?;
        if let Some(error) = write_failure {
            return Err(error);
        }
        let hashes = upload.written();
        if trailer.chunk_count != hashes.len() as u64
            || trailer.size != size
            || trailer.chunk_list_digest[..] != ChunkHash::list_digest(hashes)
        {
            return Err(Error::new(
                ErrorCode::IntegrityError,
                "the chunks received do not match the trailer; nothing was stored",
            ));
        }
        let (payment, paid_until_ms) = match &self.payments {
            Some(payments) => {
                let (price, period_ms) = payments.storage_period_price(size);
                let work = format!("storing {size} bytes for one period");
                let payment = payments
                    .payee
                    .reserve(trailer.voucher.as_ref(), price, &work, Some(owner))
                    .await?;
                let paid_until = (!price.is_zero()).then(|| crate::clock::now_ms() + period_ms);
                (payment, paid_until)
            }
            None => (payee::Reservation::free(), None),
        };
        let record = upload.commit(size, paid_until_ms).await?;
        crate::metrics::provider_bytes("stored", size);
        payment.charge().await?;
        tracing::info!(
            object_id,
            size,
            chunks = record.chunks.len(),
            owner = record.owner,
            "object stored"
        );
        Ok(PutObjectResponse {
            object_id,
            provider_id: self.node_id.clone(),
            paid_until_ms: paid_until_ms.unwrap_or(0),
        })
    }

    /// Claims `object_id` for one upload, refusing IDs that are stored or being uploaded.
    async fn reserve(&self, object_id: &str) -> Result<Reservation, Error> {
        let already = || Error::from(StorageError::AlreadyExists(object_id.to_owned()));
        if self.store.get(object_id).await?.is_some() {
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
        // In a task of its own: when the client goes away, this handler is dropped, but the
        // upload still waits for its chunk writes in flight and removes what it wrote.
        let provider = self.clone();
        let stream = request.into_inner();
        let received = tokio::spawn(async move { provider.receive(stream).await })
            .await
            .map_err(|join_error| Error::new(ErrorCode::Internal, join_error.to_string()))?;
        Ok(Response::new(received?))
    }

    type GetObjectStream = ReceiverStream<Result<GetObjectResponse, Status>>;

    async fn get_object(
        &self,
        request: Request<GetObjectRequest>,
    ) -> Result<Response<Self::GetObjectStream>, Status> {
        let request = request.into_inner();
        let (record, owner) = self.owned_object(&request).await?;
        let hashes = record.chunk_hashes().map_err(Error::from)?;
        let start = usize::try_from(request.start_chunk)
            .unwrap_or(usize::MAX)
            .min(hashes.len());
        let payment = match &self.payments {
            Some(payments) => {
                let bytes = amount::read_bytes(record.size, hashes.len() as u64, start as u64);
                let work = format!("reading {bytes} bytes");
                payments
                    .payee
                    .reserve(
                        request.voucher.as_ref(),
                        payments.read_price(bytes),
                        &work,
                        Some(owner),
                    )
                    .await?
            }
            None => payee::Reservation::free(),
        };
        let (sender, receiver) = mpsc::channel(CHUNK_IO_IN_FLIGHT);
        let chunks = self.store.chunks().clone();
        tokio::spawn(async move {
            let wanted = hashes.into_iter().enumerate().skip(start);
            let mut reads = futures_util::stream::iter(wanted.map(|(index, hash)| {
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
                let served = read.as_ref().map_or(0, |chunk| chunk.len() as u64);
                let message = read
                    .map(|chunk| GetObjectResponse { chunk })
                    .map_err(Status::from);
                if sender.send(message).await.is_err() || failed {
                    return;
                }
                crate::metrics::provider_bytes("served", served);
            }
            // Every chunk was handed to the stream: the read is charged.
            if let Err(error) = payment.charge().await {
                tracing::warn!(%error, "could not record the payment of a read");
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn renew_object(
        &self,
        request: Request<RenewObjectRequest>,
    ) -> Result<Response<RenewObjectResponse>, Status> {
        let request = request.into_inner();
        let (record, owner) = self.owned_object(&request).await?;
        let free = || {
            Error::new(
                ErrorCode::PaymentsOff,
                "this provider does not charge for storage; there is nothing to renew",
            )
        };
        let payments = self.payments.as_ref().ok_or_else(free)?;
        let (price, period_ms) = payments.storage_period_price(record.size);
        if price.is_zero() {
            return Err(free().into());
        }
        let work = format!("keeping {} bytes for one more period", record.size);
        let payment = payments
            .payee
            .reserve(request.voucher.as_ref(), price, &work, Some(owner))
            .await?;
        let now = crate::clock::now_ms();
        let paid_until_ms = record.paid_until_ms.unwrap_or(now).max(now) + period_ms;
        self.store
            .set_paid_until(&record, paid_until_ms)
            .await
            .map_err(Error::from)?;
        payment.charge().await?;
        tracing::info!(
            object_id = record.object_id,
            paid_until_ms,
            "object renewed"
        );
        Ok(Response::new(RenewObjectResponse { paid_until_ms }))
    }

    async fn delete_object(
        &self,
        request: Request<DeleteObjectRequest>,
    ) -> Result<Response<DeleteObjectResponse>, Status> {
        let request = request.into_inner();
        let (record, _) = self.owned_object(&request).await?;
        let freed_bytes = self.store.delete(&record).await.map_err(Error::from)?;
        tracing::info!(object_id = record.object_id, freed_bytes, "object deleted");
        Ok(Response::new(DeleteObjectResponse { freed_bytes }))
    }

    async fn audit_object(
        &self,
        request: Request<AuditObjectRequest>,
    ) -> Result<Response<AuditObjectResponse>, Status> {
        let request = request.into_inner();
        let (record, _) = self.owned_object(&request).await?;
        let hashes = record.chunk_hashes().map_err(Error::from)?;
        let hash = usize::try_from(request.chunk_index)
            .ok()
            .and_then(|index| hashes.get(index).copied())
            .ok_or_else(|| {
                Error::invalid_field("chunk_index", "is past the object's last chunk")
            })?;
        let segment_index = usize::try_from(request.segment_index).unwrap_or(usize::MAX);
        let chunks = self.store.chunks().clone();
        let proven = tokio::task::spawn_blocking(move || {
            let chunk = chunks.read_blocking(hash)?;
            crate::metrics::provider_bytes("read", chunk.len() as u64);
            Ok::<_, StorageError>((
                merkle::segment_count(chunk.len()),
                merkle::prove(&chunk, segment_index),
            ))
        })
        .await
        .map_err(|join_error| Error::new(ErrorCode::Internal, join_error.to_string()))?
        .map_err(Error::from)?;
        let (segment_count, Some((segment, proof))) = proven else {
            return Err(
                Error::invalid_field("segment_index", "is past the chunk's last segment").into(),
            );
        };
        Ok(Response::new(AuditObjectResponse {
            segment: Bytes::from(segment),
            proof: proof
                .into_iter()
                .map(|hash| Bytes::copy_from_slice(&hash))
                .collect(),
            segment_count: segment_count as u64,
        }))
    }

    async fn list_objects(
        &self,
        request: Request<ListObjectsRequest>,
    ) -> Result<Response<ListObjectsResponse>, Status> {
        let owner = self.authorize(request.get_ref())?;
        let objects = self
            .store
            .list(&owner.to_string())
            .await
            .map_err(Error::from)?
            .into_iter()
            .map(|record| ObjectSummary {
                object_id: record.object_id,
                kind: record.kind,
                size: record.size,
                stored_at_ms: record.stored_at_ms,
            })
            .collect();
        Ok(Response::new(ListObjectsResponse { objects }))
    }

    async fn get_capacity(
        &self,
        _request: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        let (capacity_bytes, used_bytes) = self.store.capacity();
        Ok(Response::new(GetCapacityResponse {
            capacity_bytes,
            used_bytes,
        }))
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

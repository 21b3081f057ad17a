//! The owner's side of file storage: encrypt a file and spread it over providers, read it back
//! from whichever replica answers, delete it; audits, repair and recovery live in the
//! submodules.
//!
//! Both directions stream: a file passes through in chunks (1 MiB by default), with at most a few
//! chunks in memory at a time, whatever its size.
//!
//! Storing: plaintext chunks → seal (AES-256-GCM STREAM, key derived for this file) → Merkle root
//! → the same sealed chunk to every chosen provider's `PutObject` stream → each provider
//! acknowledges after fsync → the encrypted manifest goes to every provider → the owner's record
//! is written durably. Only then is the file reported stored; if any provider fails, what the
//! others stored is deleted and the upload fails.
//!
//! Reading: `GetObject` stream from a replica → each chunk checked against its recorded address
//! → opened (authenticated decryption) → plaintext. When a replica fails or sends a bad chunk,
//! reading resumes at that chunk on the next replica; no unverified byte is ever returned.
//!
//! # Layout
//! - [`maintenance`]: periodic audits of every replica, and repair of lost ones.
//! - [`recovery`]: rebuilding the owner's records from the providers with the key file alone.

pub mod maintenance;
pub mod recovery;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use sphere_proto::v1::put_object_request::Part;
use sphere_proto::v1::{
    DeleteObjectRequest, GetCapacityRequest, GetObjectRequest, GetObjectResponse, ObjectHeader,
    ObjectTrailer, PutObjectRequest, RenewObjectRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::address::NodeAddress;
use crate::auth::{self, SignedRequest};
use crate::error::{Error, ErrorCode};
use crate::identity::NodeIdentity;
use crate::payments::payer::{Payer, Payment, Work, paying};
use crate::peers::{Peers, Target};
use crate::scheduler::choose::{Refused, rank_providers};
use crate::scheduler::standings::Standings;
use crate::storage::StorageError;
use crate::storage::chunks::ChunkHash;
use crate::storage::crypto::{ChunkCipher, FileKey, TAG_LEN};
use crate::storage::files::{FileIndex, FileRecord, Manifest, Replica};

/// Chunks sealed ahead of the slowest provider; bounds memory per transfer.
const CHUNKS_IN_FLIGHT: usize = 4;
/// How long choosing providers waits for each one's capacity answer.
const CAPACITY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Object kinds, as providers list them back. DO NOT CHANGE: recovery looks for them.
const KIND_DATA: &str = "data";
const KIND_MANIFEST: &str = "manifest";

/// A stream of plaintext bytes coming into or out of the node.
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>;

/// Where a new file goes.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Providers named by the requester; when empty, the node picks among its peers.
    pub targets: Vec<String>,
    /// How many providers to pick when none are named; `None` is `storage.replicas`.
    pub replicas: Option<u32>,
    /// Labels each picked provider must carry.
    pub labels: BTreeMap<String, String>,
}

/// How the owner's file operations behave (from `storage.*` and `peers`).
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// Plaintext bytes per chunk.
    pub chunk_size: usize,
    /// Replicas of a file when the request names neither targets nor a number.
    pub default_replicas: u32,
    /// Providers the node may pick from besides the live members of the mesh (`peers`).
    pub providers: Vec<NodeAddress>,
    /// How often every replica is audited.
    pub audit_interval: Duration,
    /// How long a replica may fail audits before it counts as lost and is repaired.
    pub lost_after: Duration,
}

/// The owner's file operations. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Files {
    index: FileIndex,
    peers: Peers,
    identity: NodeIdentity,
    /// Pays providers that charge for storage and reads, when payments are on.
    payer: Option<Payer>,
    options: Arc<FileOptions>,
    /// How the nodes this node works with are doing, to rank providers.
    standings: Standings,
    /// Serialises read-modify-write of records (audits, repair, delete), so that none undoes
    /// another's change.
    record_lock: Arc<tokio::sync::Mutex<()>>,
    /// When this node started: replicas' failures count towards their loss from then on.
    watching_since_ms: u64,
}

impl Files {
    /// Returns the file operations of `identity`, keeping records in `index` and reaching
    /// providers through `peers`.
    pub fn new(
        index: FileIndex,
        peers: Peers,
        identity: NodeIdentity,
        payer: Option<Payer>,
        options: FileOptions,
        standings: Standings,
    ) -> Self {
        Self {
            index,
            peers,
            identity,
            payer,
            options: Arc::new(options),
            standings,
            record_lock: Arc::default(),
            watching_since_ms: crate::clock::now_ms(),
        }
    }

    /// Returns whether `replica` counts as lost at `now_ms`: failing for longer than
    /// `storage.lost_after_ms` while this node ran.
    pub fn is_lost(&self, replica: &Replica, now_ms: u64) -> bool {
        replica.is_lost(
            now_ms,
            self.options.lost_after.as_millis() as u64,
            self.watching_since_ms,
        )
    }

    /// Applies `change` to the current record of file `id` and stores it; returns the updated
    /// record, or `None` if the file was deleted meanwhile.
    async fn update_record(
        &self,
        id: &str,
        change: impl FnOnce(&mut FileRecord),
    ) -> Result<Option<FileRecord>, Error> {
        let _guard = self.record_lock.lock().await;
        let Some(mut record) = self.index.get(id).await? else {
            return Ok(None);
        };
        change(&mut record);
        self.index.put(&record).await?;
        Ok(Some(record))
    }

    /// Returns the options in force.
    pub fn options(&self) -> &FileOptions {
        &self.options
    }

    /// Encrypts `plaintext` and stores it under a new ID on the providers `placement` names or
    /// picks; returns the record once every provider has it durably and the record is durable
    /// here.
    pub async fn store(
        &self,
        name: String,
        placement: Placement,
        plaintext: ByteStream,
    ) -> Result<FileRecord, Error> {
        let targets = self.choose_providers(&placement).await?;
        let id = crate::storage::new_id();
        let cipher = Arc::new(self.data_key(&id).cipher(&id));

        let mut senders = Vec::new();
        let mut uploads = Vec::new();
        for target in &targets {
            let (sender, receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
            senders.push(sender);
            uploads.push(self.put_object(target, &id, KIND_DATA, ReceiverStream::new(receiver)));
        }
        let sealing = seal_into(cipher, self.options.chunk_size, plaintext, senders);
        let (sealed, uploaded) = tokio::join!(sealing, futures_util::future::join_all(uploads));

        let mut replicas = Vec::new();
        let mut stored_on = Vec::new();
        let mut failures = Vec::new();
        for (target, result) in targets.iter().zip(uploaded) {
            match result {
                Ok(replica) => {
                    replicas.push(replica);
                    stored_on.push(target);
                }
                Err(error) => failures.push((target.clone(), error)),
            }
        }
        let provider_failure = |target: &Target, cause: Error| {
            Error::new(
                cause.code,
                format!("storing on provider {target} failed: {}", cause.message),
            )
        };
        let failure = match sealed {
            // A provider that stopped receiving is the cause; the others only saw a cut stream.
            Err(SealError::ProviderStopped(index)) => {
                let target = &targets[index];
                let cause = failures
                    .into_iter()
                    .find(|(failed, _)| failed == target)
                    .map(|(_, error)| error)
                    .unwrap_or_else(|| Error::new(ErrorCode::TargetError, "it stopped receiving"));
                Some(provider_failure(target, cause))
            }
            // When the source failed, that is the cause; the providers only saw a cut stream.
            Err(SealError::Source(error)) => Some(error),
            Ok(_) if !failures.is_empty() => {
                let (target, cause) = failures.remove(0);
                Some(provider_failure(&target, cause))
            }
            Ok(sealed) => {
                let manifest = Manifest {
                    id: id.clone(),
                    name,
                    size: sealed.plaintext_size,
                    chunk_size: self.options.chunk_size as u64,
                    created_at_ms: crate::clock::now_ms(),
                    chunks: sealed.chunks.iter().map(|hash| hash.to_hex()).collect(),
                };
                match self.put_manifest(&manifest, &targets).await {
                    Ok(()) => {
                        let record = FileRecord {
                            manifest,
                            replicas_wanted: targets.len() as u32,
                            replicas,
                            labels: placement.labels,
                        };
                        self.index.put(&record).await?;
                        return Ok(record);
                    }
                    Err(error) => Some(error),
                }
            }
        };
        // Leave nothing that looks stored: remove what the successful providers kept.
        for target in stored_on {
            self.discard_copy(target, &id).await;
        }
        Err(failure.expect("every other branch returned"))
    }

    /// Returns the record of file `id`, or a `file_not_found` error.
    pub async fn record(&self, id: &str) -> Result<FileRecord, Error> {
        let not_found = || Error::new(ErrorCode::FileNotFound, format!("no file with id {id:?}"));
        if !crate::storage::is_valid_id(id) {
            return Err(not_found());
        }
        self.index.get(id).await?.ok_or_else(not_found)
    }

    /// Returns every file of this node, newest first.
    pub async fn list(&self) -> Result<Vec<FileRecord>, Error> {
        let mut records = self.index.all().await?;
        records.sort_by_key(|record| std::cmp::Reverse(record.manifest.created_at_ms));
        Ok(records)
    }

    /// The provider of `replica`, which must prove it is the node that acknowledged the copy:
    /// where the mesh last saw that node, else where it took the copy.
    pub(crate) fn replica_target(&self, replica: &Replica) -> Target {
        let Ok(node) = replica.provider_id.parse() else {
            return Target::anyone_at(replica.address.clone());
        };
        let moved = self.peers.mesh().and_then(|mesh| mesh.address_of(node));
        Target::node_at(node, moved.unwrap_or_else(|| replica.address.clone()))
    }

    /// Deletes file `id` from every replica, then its record. A replica that cannot be reached
    /// keeps the record in place (with an error), so the delete can be retried.
    pub async fn delete(&self, id: &str) -> Result<FileRecord, Error> {
        let _guard = self.record_lock.lock().await;
        let record = self.record(id).await?;
        for replica in &record.replicas {
            self.delete_objects(&self.replica_target(replica), id)
                .await?;
        }
        self.index.remove(id).await?;
        Ok(record)
    }

    /// Streams the plaintext of `record` back, from `preferred` first if given, then from the
    /// replicas (those passing audits first). Every chunk is verified before it is yielded; the
    /// stream ends with an error only when no replica can give a chunk that verifies.
    pub fn read(
        &self,
        record: &FileRecord,
        preferred: Option<Target>,
    ) -> Result<ByteStream, Error> {
        let mut replicas = record.replicas.clone();
        replicas.sort_by_key(|replica| replica.failing_since_ms.is_some());
        let mut sources: Vec<Target> = Vec::new();
        if let Some(preferred) = preferred {
            // A replica's provider proves it is the node that took the copy, even when the
            // reader named it by address.
            let replica = replicas
                .iter()
                .find(|replica| &replica.address == preferred.address());
            sources.push(match (preferred.node(), replica) {
                (None, Some(replica)) => self.replica_target(replica),
                _ => preferred,
            });
        }
        for replica in &replicas {
            let target = self.replica_target(replica);
            if !sources
                .iter()
                .any(|source| source.address() == target.address())
            {
                sources.push(target);
            }
        }
        if sources.is_empty() {
            return Err(lost(&record.manifest.id));
        }
        let expected = record.manifest.chunk_hashes()?;
        let cipher = Arc::new(
            self.data_key(&record.manifest.id)
                .cipher(&record.manifest.id),
        );
        let files = self.clone();
        let manifest = record.manifest.clone();
        let (sender, receiver) = mpsc::channel::<Result<Bytes, Error>>(CHUNKS_IN_FLIGHT);
        tokio::spawn(async move {
            let mut next = 0usize;
            let mut last_error = None;
            for source in sources {
                match files
                    .read_from(&source, &manifest, &expected, &cipher, &mut next, &sender)
                    .await
                {
                    Ok(()) => return,
                    Err(ReadStop::ClientGone) => return,
                    Err(ReadStop::Failed(error)) => {
                        tracing::warn!(file_id = manifest.id, %source, chunk = next, %error, "replica failed; trying the next one");
                        last_error = Some(error);
                    }
                }
            }
            let error = match last_error {
                // The record says the file exists: providers that no longer hold it lost it.
                Some(error) if error.code == ErrorCode::FileNotFound => lost(&manifest.id),
                Some(error) => error,
                None => Error::new(ErrorCode::Internal, "no replica was tried"),
            };
            let _ = sender.send(Err(error)).await;
        });
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }

    /// Sends the verified plaintext of chunks `*next..` from `source`, advancing `*next`.
    async fn read_from(
        &self,
        source: &Target,
        manifest: &Manifest,
        expected: &[ChunkHash],
        cipher: &Arc<ChunkCipher>,
        next: &mut usize,
        sender: &mpsc::Sender<Result<Bytes, Error>>,
    ) -> Result<(), ReadStop> {
        let object = (manifest.sealed_size(), expected.len() as u64);
        let (mut chunks, payment) = self
            .get_object(source, &manifest.id, *next as u64, object)
            .await?;
        while *next < expected.len() {
            let chunk = match chunks.message().await {
                Ok(Some(message)) => message.chunk,
                Ok(None) => {
                    return Err(ReadStop::Failed(integrity(format!(
                        "provider {source} sent {next} of {} chunks",
                        expected.len()
                    ))));
                }
                Err(status) => {
                    return Err(ReadStop::Failed(crate::peers::remote_error(
                        &status, source,
                    )));
                }
            };
            let index = *next;
            let last = index + 1 == expected.len();
            let expected_hash = expected[index];
            let cipher = Arc::clone(cipher);
            let opened = tokio::task::spawn_blocking(move || {
                open_chunk(&cipher, index, last, expected_hash, chunk)
            })
            .await
            .unwrap_or_else(|join_error| {
                Err(Error::new(ErrorCode::Internal, join_error.to_string()))
            })?;
            if sender.send(Ok(opened)).await.is_err() {
                return Err(ReadStop::ClientGone);
            }
            *next += 1;
        }
        settle(payment, &Ok::<(), Error>(())).await;
        Ok(())
    }

    /// Picks the providers of a new file.
    async fn choose_providers(&self, placement: &Placement) -> Result<Vec<Target>, Error> {
        if !placement.targets.is_empty() {
            let mut targets: Vec<Target> = Vec::new();
            for text in &placement.targets {
                let target = self.peers.resolve(text).await?;
                if !targets
                    .iter()
                    .any(|known| known.address() == target.address())
                {
                    targets.push(target);
                }
            }
            return Ok(targets);
        }
        let wanted = placement.replicas.unwrap_or(self.options.default_replicas) as usize;
        if wanted == 0 {
            return Err(Error::invalid_field("replicas", "must be at least 1"));
        }
        let (mut available, refused) = self.candidate_providers(&placement.labels).await;
        if available.len() < wanted {
            let reasons: Vec<serde_json::Value> = refused
                .iter()
                .map(|refused| {
                    serde_json::json!({
                        "node": refused.node.to_string(),
                        "address": refused.address.to_string(),
                        "reason": refused.refusal.kind(),
                        "message": refused.refusal.to_string(),
                    })
                })
                .collect();
            return Err(Error::new(
                ErrorCode::NotEnoughProviders,
                format!(
                    "the file needs {wanted} providers but only {} (live members of the mesh with free space{}) can take it; \
                     name `targets`, ask for fewer `replicas`, or add nodes",
                    available.len(),
                    if placement.labels.is_empty() {
                        " and configured peers".to_owned()
                    } else {
                        format!(" carrying the labels asked for; {} refused", refused.len())
                    },
                ),
            )
            .with_details(serde_json::json!({ "candidates": reasons })));
        }
        available.truncate(wanted);
        Ok(available)
    }

    /// The providers that can take a copy now, one entry per node, best first: the live members
    /// of the mesh with free space that carry `labels`, ranked by the scheduler's provider
    /// ranking, then (without labels, which they cannot show) the configured peers outside the
    /// mesh that report free space. Also the members refused, with the reason.
    pub(crate) async fn candidate_providers(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> (Vec<Target>, Vec<Refused>) {
        let (ranked, refused) = match self.peers.mesh() {
            Some(mesh) => {
                let standings = self.standings.snapshot();
                rank_providers(
                    &mesh.candidates().await,
                    labels,
                    |node| standings.get(&node).copied().unwrap_or_default(),
                    rand::random::<f64>,
                )
            }
            None => (Vec::new(), Vec::new()),
        };
        let mut candidates: Vec<Target> = ranked
            .into_iter()
            .map(|(node, address)| Target::node_at(node, address))
            .collect();
        if !labels.is_empty() {
            return (candidates, refused);
        }
        let outside: Vec<Target> = self
            .options
            .providers
            .iter()
            .map(|provider| Target::anyone_at(provider.clone()))
            .filter(|provider| {
                !candidates
                    .iter()
                    .any(|member| member.address() == provider.address())
            })
            .collect();
        let probes = outside.into_iter().map(|provider| async move {
            let free = self.free_space(&provider).await.ok()?;
            (free > 0).then_some(provider)
        });
        candidates.extend(
            futures_util::future::join_all(probes)
                .await
                .into_iter()
                .flatten(),
        );
        (candidates, refused)
    }

    /// Returns the free space `provider` reports.
    async fn free_space(&self, provider: &Target) -> Result<u64, Error> {
        let mut request = tonic::Request::new(GetCapacityRequest {});
        request.set_timeout(CAPACITY_PROBE_TIMEOUT);
        let capacity = self
            .peers
            .storage(provider)
            .get_capacity(request)
            .await
            .map_err(|status| crate::peers::remote_error(&status, provider))?
            .into_inner();
        Ok(capacity.capacity_bytes.saturating_sub(capacity.used_bytes))
    }

    /// Streams the sealed chunks and trailer coming from `parts` to `target` as object
    /// `object_id`, preceded by a signed header, paying for the first storage period in the
    /// trailer when the target charges; returns the replica once the target has the object
    /// durably.
    async fn put_object(
        &self,
        target: &Target,
        object_id: &str,
        kind: &str,
        parts: impl Stream<Item = PutObjectRequest> + Send + 'static,
    ) -> Result<Replica, Error> {
        let mut client = self.peers.storage(target);
        let header = ObjectHeader {
            object_id: object_id.to_owned(),
            auth: None,
            kind: kind.to_owned(),
        };
        let header = PutObjectRequest {
            part: Some(Part::Header(self.signed_for(target, header).await?)),
        };
        // The price depends on the size, known at the trailer: pay there. If paying fails, the
        // trailer is held back, so the provider stores nothing, and the payment's error is
        // reported.
        let payment: Arc<std::sync::Mutex<Option<Result<Payment, Error>>>> = Arc::default();
        let paying = Arc::clone(&payment);
        let payer = self.payer.clone();
        let target_name = target.clone();
        let parts = parts.filter_map(move |mut message| {
            let payer = payer.clone();
            let paying = Arc::clone(&paying);
            let target = target_name.clone();
            async move {
                let (Some(payer), Some(Part::Trailer(trailer))) = (payer, &mut message.part) else {
                    return Some(message);
                };
                match payer.pay(&target, Work::Store(trailer.size)).await {
                    Ok(None) => Some(message),
                    Ok(Some(paid)) => {
                        trailer.voucher = Some(paid.voucher());
                        *paying.lock().expect("payment lock is never poisoned") = Some(Ok(paid));
                        Some(message)
                    }
                    Err(error) => {
                        *paying.lock().expect("payment lock is never poisoned") = Some(Err(error));
                        None
                    }
                }
            }
        });
        let stream = futures_util::stream::once(async move { header }).chain(parts);
        let response = client.put_object(stream).await;
        let payment = payment
            .lock()
            .expect("payment lock is never poisoned")
            .take();
        let payment = match payment {
            Some(Err(error)) => return Err(error),
            Some(Ok(payment)) => Some(payment),
            None => None,
        };
        let response = response.map_err(|status| crate::peers::remote_error(&status, target));
        settle(payment, &response).await;
        let response = response?.into_inner();
        let mut replica = Replica::new(target.address().to_owned(), response.provider_id);
        replica.paid_until_ms = Some(response.paid_until_ms).filter(|until| *until != 0);
        Ok(replica)
    }

    /// Opens a signed `GetObject` stream of `object_id` on `source` from chunk `start`, paying
    /// for the read when the source charges; `object` is the object's size and chunk count.
    /// The caller settles the payment when the stream has ended.
    async fn get_object(
        &self,
        source: &Target,
        object_id: &str,
        start: u64,
        (size, chunk_count): (u64, u64),
    ) -> Result<(tonic::Streaming<GetObjectResponse>, Option<Payment>), Error> {
        let bytes = crate::payments::amount::read_bytes(size, chunk_count, start);
        let (stream, payment) = paying(
            self.payer.as_ref(),
            source,
            Work::Read(bytes),
            |voucher| async move {
                let request = GetObjectRequest {
                    object_id: object_id.to_owned(),
                    auth: None,
                    start_chunk: start,
                    voucher,
                };
                let request = self.signed_for(source, request).await?;
                self.peers
                    .storage(source)
                    .get_object(request)
                    .await
                    .map_err(|status| crate::peers::remote_error(&status, source))
            },
            Error::clone,
            |error| error,
        )
        .await?;
        Ok((stream.into_inner(), payment))
    }

    /// Pays for one more storage period of `object_id` of `size` bytes on `target`; returns
    /// until when it is paid.
    pub(crate) async fn renew_object(
        &self,
        target: &Target,
        object_id: &str,
        size: u64,
    ) -> Result<u64, Error> {
        let payer = self
            .payer
            .as_ref()
            .ok_or_else(|| Error::new(ErrorCode::PaymentsOff, "payments are off on this node"))?;
        let (response, payment) = paying(
            Some(payer),
            target,
            Work::Store(size),
            |voucher| async move {
                let request = RenewObjectRequest {
                    object_id: object_id.to_owned(),
                    auth: None,
                    voucher,
                };
                let request = self.signed_for(target, request).await?;
                self.peers
                    .storage(target)
                    .renew_object(request)
                    .await
                    .map_err(|status| crate::peers::remote_error(&status, target))
            },
            Error::clone,
            |error| error,
        )
        .await?;
        let response = response.into_inner();
        settle(payment, &Ok::<_, Error>(())).await;
        Ok(response.paid_until_ms)
    }

    /// Stores the encrypted manifest of a file on each of `targets`.
    async fn put_manifest(&self, manifest: &Manifest, targets: &[Target]) -> Result<(), Error> {
        let object_id = manifest_object_id(&manifest.id);
        let mut sealed = manifest_json(manifest);
        self.manifest_key(&manifest.id)
            .cipher(&object_id)
            .seal(0, true, &mut sealed)?;
        let sealed = Bytes::from(sealed);
        let hash = ChunkHash::of(&sealed);
        for target in targets {
            let parts = vec![
                PutObjectRequest {
                    part: Some(Part::Chunk(sealed.clone())),
                },
                PutObjectRequest {
                    part: Some(Part::Trailer(ObjectTrailer {
                        chunk_count: 1,
                        size: sealed.len() as u64,
                        chunk_list_digest: Bytes::copy_from_slice(&ChunkHash::list_digest([&hash])),
                        voucher: None,
                    })),
                },
            ];
            self.put_object(
                target,
                &object_id,
                KIND_MANIFEST,
                futures_util::stream::iter(parts),
            )
            .await?;
        }
        Ok(())
    }

    /// Deletes the data and manifest objects of file `id` from `target`; objects already gone
    /// count as deleted.
    async fn delete_objects(&self, target: &Target, id: &str) -> Result<(), Error> {
        for object_id in [id.to_owned(), manifest_object_id(id)] {
            let request = DeleteObjectRequest {
                auth: None,
                object_id,
            };
            let request = self.signed_for(target, request).await?;
            match self.peers.storage(target).delete_object(request).await {
                Ok(_) => {}
                Err(status) => {
                    let error = crate::peers::remote_error(&status, target);
                    if error.code != ErrorCode::FileNotFound {
                        return Err(error);
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes what `target` holds of file `id` when that copy must not be kept (a failed upload
    /// or repair, a lost replica). The copy is recorded first, and a delete that fails is tried
    /// again by [`Files::retry_discards`] until it succeeds.
    async fn discard_copy(&self, target: &Target, id: &str) {
        if let Err(error) = self.index.add_discard(id, target.address()).await {
            tracing::warn!(file_id = id, %target, %error, "could not record a copy to delete");
        }
        match self.delete_objects(target, id).await {
            Ok(()) => {
                if let Err(error) = self.index.remove_discard(id, target.address()).await {
                    tracing::warn!(file_id = id, %target, %error, "could not forget a deleted copy");
                }
            }
            Err(error) => {
                tracing::warn!(file_id = id, %target, %error, "could not delete a copy that must not be kept; will retry");
            }
        }
    }

    /// Tries again to delete every copy that must not be kept, except those the file's record
    /// lists as replicas again.
    pub(crate) async fn retry_discards(&self) -> Result<(), Error> {
        for pending in self.index.discards().await? {
            let (file_id, address) = (&pending.file_id, &pending.address);
            let wanted = self
                .index
                .get(file_id)
                .await?
                .is_some_and(|record| record.replicas.iter().any(|r| r.address == *address));
            if !wanted {
                let target = Target::anyone_at(address.clone());
                if let Err(error) = self.delete_objects(&target, file_id).await {
                    tracing::debug!(file_id, %address, %error, "a copy to delete is still there");
                    continue;
                }
                tracing::info!(file_id, %address, "deleted a copy that must not be kept");
            }
            self.index.remove_discard(file_id, address).await?;
        }
        Ok(())
    }

    /// Returns `request` signed by this node for the provider at `target` (whose node ID it asks
    /// when it does not know it), so that no other provider accepts it.
    async fn signed_for<R: SignedRequest>(&self, target: &Target, request: R) -> Result<R, Error> {
        let provider = self.peers.node_id(target).await?;
        Ok(auth::sign(&self.identity, &provider.to_string(), request))
    }

    /// Returns the key of the data of file `id`.
    fn data_key(&self, id: &str) -> FileKey {
        FileKey::from_secret(self.identity.derive_secret(format!("file:{id}").as_bytes()))
    }

    /// Returns the key of the manifest of file `id`.
    fn manifest_key(&self, id: &str) -> FileKey {
        FileKey::from_secret(
            self.identity
                .derive_secret(format!("manifest:{id}").as_bytes()),
        )
    }
}

/// Returns the object ID under which providers keep the manifest of file `id`.
pub fn manifest_object_id(id: &str) -> String {
    let digest = Sha256::digest(format!("sphere.v1 manifest {id}").as_bytes());
    hex::encode(&digest[..16])
}

/// Why reading from one replica stopped.
enum ReadStop {
    /// The reader went away; nothing more to do.
    ClientGone,
    /// The replica failed; try the next one.
    Failed(Error),
}

impl From<Error> for ReadStop {
    fn from(error: Error) -> Self {
        Self::Failed(error)
    }
}

/// Returns the JSON of `manifest` that is sealed into its manifest object.
fn manifest_json(manifest: &Manifest) -> Vec<u8> {
    serde_json::to_vec(manifest).expect("manifests serialise")
}

/// Returns the size of `manifest`'s sealed manifest object.
fn sealed_manifest_len(manifest: &Manifest) -> u64 {
    (manifest_json(manifest).len() + TAG_LEN) as u64
}

/// Records the outcome of paid work, when it was paid.
async fn settle<T>(payment: Option<Payment>, outcome: &Result<T, Error>) {
    if let Some(payment) = payment {
        payment.settle(outcome).await;
    }
}

fn lost(id: &str) -> Error {
    Error::new(
        ErrorCode::FileLost,
        format!(
            "file {id} is lost: none of its replicas holds it any more; delete it, or store it \
             again from another copy"
        ),
    )
}

fn integrity(message: String) -> Error {
    Error::new(ErrorCode::IntegrityError, message)
}

/// Checks a chunk against the address the owner recorded, then decrypts it.
fn open_chunk(
    cipher: &ChunkCipher,
    index: usize,
    last: bool,
    expected: ChunkHash,
    chunk: Bytes,
) -> Result<Bytes, Error> {
    if ChunkHash::of(&chunk) != expected {
        return Err(integrity(format!(
            "chunk {index} does not match its recorded address"
        )));
    }
    let mut chunk = Vec::from(chunk);
    let position =
        u32::try_from(index).map_err(|_| integrity(format!("chunk {index} is out of range")))?;
    cipher
        .open(position, last, &mut chunk)
        .map_err(Error::from)?;
    Ok(Bytes::from(chunk))
}

/// Why sealing stopped.
enum SealError {
    /// Reading or sealing the plaintext failed.
    Source(Error),
    /// The provider with this index in the target list stopped receiving.
    ProviderStopped(usize),
}

impl From<Error> for SealError {
    fn from(error: Error) -> Self {
        Self::Source(error)
    }
}

/// What sealing a file produced.
struct Sealed {
    plaintext_size: u64,
    chunks: Vec<ChunkHash>,
}

/// Reads `plaintext`, seals it chunk by chunk and sends every chunk, then the trailer, to each of
/// `senders`. On any failure it stops without sending the trailer, so no provider stores
/// anything.
async fn seal_into(
    cipher: Arc<ChunkCipher>,
    chunk_size: usize,
    mut plaintext: ByteStream,
    senders: Vec<mpsc::Sender<PutObjectRequest>>,
) -> Result<Sealed, SealError> {
    let send_all = |part: Part| {
        let senders = senders.clone();
        async move {
            for (index, sender) in senders.iter().enumerate() {
                let message = PutObjectRequest {
                    part: Some(part.clone()),
                };
                if sender.send(message).await.is_err() {
                    return Err(SealError::ProviderStopped(index));
                }
            }
            Ok(())
        }
    };
    // Bytes read past the previous chunk: a chunk is the last one only if no byte follows it.
    let mut carried: Option<Bytes> = None;
    let mut chunks = Vec::new();
    let mut plaintext_size = 0u64;
    let mut sealed_size = 0u64;
    // The chunk being sealed on the blocking pool while the next one is read from the upload.
    let mut sealing = None;
    loop {
        // Filled straight from the body's frames, with room for the tag that sealing appends in
        // place: each byte is copied once before it is encrypted.
        let mut plain_chunk = Vec::with_capacity(chunk_size + TAG_LEN);
        loop {
            let bytes = match carried.take() {
                Some(bytes) => bytes,
                None => match plaintext.next().await {
                    Some(Ok(bytes)) => bytes,
                    Some(Err(error)) => return Err(SealError::Source(error)),
                    None => break,
                },
            };
            let room = chunk_size - plain_chunk.len();
            if bytes.len() > room {
                plain_chunk.extend_from_slice(&bytes[..room]);
                carried = Some(bytes.slice(room..));
                break;
            }
            plain_chunk.extend_from_slice(&bytes);
        }
        let last = carried.is_none();
        plaintext_size += plain_chunk.len() as u64;
        let index = u32::try_from(chunks.len() + usize::from(sealing.is_some())).map_err(|_| {
            Error::new(
                ErrorCode::PayloadTooLarge,
                "the file has more than 2^32 chunks",
            )
        })?;
        let cipher = Arc::clone(&cipher);
        let sealed = tokio::task::spawn_blocking(move || {
            let mut chunk = plain_chunk;
            cipher.seal(index, last, &mut chunk)?;
            let hash = ChunkHash::of(&chunk);
            Ok::<_, StorageError>((chunk, hash))
        });
        // The previous chunk is sent now, and the last one too once it is sealed.
        let mut ready = Vec::with_capacity(2);
        ready.extend(sealing.replace(sealed));
        if last {
            ready.extend(sealing.take());
        }
        for sealed in ready {
            let (sealed_chunk, hash) = sealed
                .await
                .map_err(|join_error| Error::new(ErrorCode::Internal, join_error.to_string()))?
                .map_err(Error::from)?;
            sealed_size += sealed_chunk.len() as u64;
            chunks.push(hash);
            send_all(Part::Chunk(Bytes::from(sealed_chunk))).await?;
        }
        if last {
            break;
        }
    }
    send_all(Part::Trailer(ObjectTrailer {
        chunk_count: chunks.len() as u64,
        size: sealed_size,
        chunk_list_digest: Bytes::copy_from_slice(&ChunkHash::list_digest(&chunks)),
        voucher: None,
    }))
    .await?;
    Ok(Sealed {
        plaintext_size,
        chunks,
    })
}

//! The owner's side of file storage: encrypt and send a file to a provider, fetch it back,
//! verify and decrypt it.
//!
//! Both directions stream: a file passes through in chunks (1 MiB by default), with at most a few
//! chunks in memory at a time, whatever its size.
//!
//! Storing: plaintext chunks → seal (AES-256-GCM STREAM, fresh key) → SHA-256 → `PutObject`
//! stream to the provider → provider acknowledges after fsync → the owner's record (key, chunk
//! hashes, replica) is written durably. Only then is the file reported stored.
//!
//! Reading: `GetObject` stream → each chunk's hash checked against the owner's record → opened
//! (authenticated decryption) → plaintext. Any mismatch stops the stream with an integrity error;
//! no unverified byte is ever returned.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use sphere_proto::v1::put_object_request::Part;
use sphere_proto::v1::{GetObjectRequest, ObjectHeader, ObjectTrailer, PutObjectRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{Error, ErrorCode};
use crate::peers::Peers;
use crate::storage::StorageError;
use crate::storage::chunks::ChunkHash;
use crate::storage::crypto::FileKey;
use crate::storage::files::{FileIndex, FileRecord, Replica};

/// Chunks sealed ahead of the network; bounds memory per transfer.
const CHUNKS_IN_FLIGHT: usize = 4;

/// A stream of plaintext bytes coming into or out of the node.
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>;

/// The owner's file operations.
#[derive(Debug, Clone)]
pub struct Files {
    index: FileIndex,
    peers: Peers,
    chunk_size: usize,
}

impl Files {
    /// Returns the file operations, keeping records in `index` and reaching providers through
    /// `peers`; files are cut into chunks of `chunk_size` plaintext bytes.
    pub fn new(index: FileIndex, peers: Peers, chunk_size: usize) -> Self {
        Self {
            index,
            peers,
            chunk_size,
        }
    }

    /// Encrypts `plaintext` and stores it on `target` under a new ID; returns the record once
    /// the provider has it durably and the record is durable here.
    pub async fn store(
        &self,
        target: &str,
        name: String,
        plaintext: ByteStream,
    ) -> Result<FileRecord, Error> {
        let mut storage = self.peers.storage(target)?;
        let id = crate::storage::new_id();
        let key = FileKey::generate();
        let (sender, receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let sealing = seal_into(id.clone(), key.clone(), self.chunk_size, plaintext, sender);
        let upload = storage.put_object(ReceiverStream::new(receiver));
        let (sealed, uploaded) = tokio::join!(sealing, upload);
        let (sealed, acknowledgement) = match (sealed, uploaded) {
            (Ok(sealed), Ok(response)) => (sealed, response.into_inner()),
            // When the source failed, that is the cause; the provider only saw a cut stream.
            (Err(source_error), _) if source_error.code != ErrorCode::TargetError => {
                return Err(source_error);
            }
            (_, Err(status)) => return Err(Error::from_remote_status(&status, target)),
            (Err(error), Ok(_)) => return Err(error),
        };

        let record = FileRecord {
            id,
            name,
            size: sealed.plaintext_size,
            chunk_size: self.chunk_size as u64,
            created_at_ms: now_ms(),
            key: hex::encode(key.to_bytes()),
            chunks: sealed.chunks.iter().map(|hash| hash.to_hex()).collect(),
            replicas: vec![Replica {
                address: target.to_owned(),
                provider_id: acknowledgement.provider_id,
            }],
        };
        self.index.put(&record).await?;
        Ok(record)
    }

    /// Returns the record of file `id`, or a `file_not_found` error.
    pub async fn record(&self, id: &str) -> Result<FileRecord, Error> {
        let not_found = || Error::new(ErrorCode::FileNotFound, format!("no file with id {id:?}"));
        if !crate::storage::is_valid_id(id) {
            return Err(not_found());
        }
        self.index.get(id).await?.ok_or_else(not_found)
    }

    /// Streams the plaintext of `record` back from `target` (by default its first replica).
    /// Every chunk is verified before it is yielded; the stream ends with an error at the first
    /// chunk that does not verify.
    pub async fn read(
        &self,
        record: &FileRecord,
        target: Option<&str>,
    ) -> Result<ByteStream, Error> {
        let target = match target {
            Some(target) => target.to_owned(),
            None => record
                .replicas
                .first()
                .map(|replica| replica.address.clone())
                .ok_or_else(|| {
                    Error::new(ErrorCode::FileNotFound, "the file has no replica left")
                })?,
        };
        let expected_chunks = record.chunk_hashes()?;
        let cipher_key = record.file_key()?;
        let mut storage = self.peers.storage(&target)?;
        let mut remote_chunks = storage
            .get_object(GetObjectRequest {
                object_id: record.id.clone(),
            })
            .await
            .map_err(|status| Error::from_remote_status(&status, &target))?
            .into_inner();

        let file_id = record.id.clone();
        let (sender, receiver) = mpsc::channel::<Result<Bytes, Error>>(CHUNKS_IN_FLIGHT);
        tokio::spawn(async move {
            let cipher = std::sync::Arc::new(cipher_key.cipher(&file_id));
            let last_index = expected_chunks.len() - 1;
            for (index, expected) in expected_chunks.into_iter().enumerate() {
                let chunk = match remote_chunks.message().await {
                    Ok(Some(message)) => message.chunk,
                    Ok(None) => {
                        let _ = sender
                            .send(Err(integrity(format!(
                                "provider {target} sent {index} of {} chunks",
                                last_index + 1
                            ))))
                            .await;
                        return;
                    }
                    Err(status) => {
                        let _ = sender
                            .send(Err(Error::from_remote_status(&status, &target)))
                            .await;
                        return;
                    }
                };
                let cipher = std::sync::Arc::clone(&cipher);
                let opened = tokio::task::spawn_blocking(move || {
                    open_chunk(
                        &cipher,
                        index,
                        index == last_index,
                        expected,
                        Vec::from(chunk),
                    )
                })
                .await
                .unwrap_or_else(|join_error| {
                    Err(Error::new(ErrorCode::Internal, join_error.to_string()))
                });
                let failed = opened.is_err();
                if sender.send(opened).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }
}

fn integrity(message: String) -> Error {
    Error::new(ErrorCode::IntegrityError, message)
}

/// Checks a chunk against the hash the owner recorded, then decrypts it.
fn open_chunk(
    cipher: &crate::storage::crypto::ChunkCipher,
    index: usize,
    last: bool,
    expected: ChunkHash,
    chunk: Vec<u8>,
) -> Result<Bytes, Error> {
    if ChunkHash::of(&chunk) != expected {
        return Err(integrity(format!(
            "chunk {index} does not match its recorded hash"
        )));
    }
    let mut chunk = chunk;
    let position =
        u32::try_from(index).map_err(|_| integrity(format!("chunk {index} is out of range")))?;
    cipher
        .open(position, last, &mut chunk)
        .map_err(|error: StorageError| Error::from(error))?;
    Ok(Bytes::from(chunk))
}

/// What sealing a file produced.
struct Sealed {
    plaintext_size: u64,
    chunks: Vec<ChunkHash>,
}

/// Reads `plaintext`, seals it chunk by chunk and sends the `PutObject` stream (header, chunks,
/// trailer) into `sender`. On any failure it stops without sending the trailer, so the provider
/// stores nothing.
async fn seal_into(
    id: String,
    key: FileKey,
    chunk_size: usize,
    mut plaintext: ByteStream,
    sender: mpsc::Sender<PutObjectRequest>,
) -> Result<Sealed, Error> {
    let provider_gone = || {
        Error::new(
            ErrorCode::TargetError,
            "the provider stopped receiving the file",
        )
    };
    let send = |part: Part| {
        let sender = sender.clone();
        async move {
            sender
                .send(PutObjectRequest { part: Some(part) })
                .await
                .is_ok()
        }
    };
    if !send(Part::Header(ObjectHeader {
        object_id: id.clone(),
    }))
    .await
    {
        return Err(provider_gone());
    }

    let cipher = std::sync::Arc::new(key.cipher(&id));
    let mut pending = BytesMut::new();
    let mut source_done = false;
    let mut chunks = Vec::new();
    let mut plaintext_size = 0u64;
    let mut sealed_size = 0u64;
    loop {
        // Fill past one chunk: a chunk is the last one only if no byte follows it.
        while !source_done && pending.len() <= chunk_size {
            match plaintext.next().await {
                Some(Ok(bytes)) => pending.extend_from_slice(&bytes),
                Some(Err(error)) => return Err(error),
                None => source_done = true,
            }
        }
        let last = source_done && pending.len() <= chunk_size;
        let take = pending.len().min(chunk_size);
        let plain_chunk = pending.split_to(take).to_vec();
        plaintext_size += plain_chunk.len() as u64;
        let index = u32::try_from(chunks.len()).map_err(|_| {
            Error::new(
                ErrorCode::PayloadTooLarge,
                "the file has more than 2^32 chunks",
            )
        })?;
        let cipher = std::sync::Arc::clone(&cipher);
        let (sealed_chunk, hash) = tokio::task::spawn_blocking(move || {
            let mut chunk = plain_chunk;
            cipher.seal(index, last, &mut chunk)?;
            let hash = ChunkHash::of(&chunk);
            Ok::<_, StorageError>((chunk, hash))
        })
        .await
        .map_err(|join_error| Error::new(ErrorCode::Internal, join_error.to_string()))??;
        sealed_size += sealed_chunk.len() as u64;
        chunks.push(hash);
        if !send(Part::Chunk(Bytes::from(sealed_chunk))).await {
            return Err(provider_gone());
        }
        if last {
            break;
        }
    }
    let trailer = ObjectTrailer {
        chunk_count: chunks.len() as u64,
        size: sealed_size,
        chunk_list_digest: Bytes::copy_from_slice(&ChunkHash::list_digest(&chunks)),
    };
    if !send(Part::Trailer(trailer)).await {
        return Err(provider_gone());
    }
    Ok(Sealed {
        plaintext_size,
        chunks,
    })
}

/// Returns the current time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

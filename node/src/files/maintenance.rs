//! Audits and repair: the owner's periodic check that every provider still holds every file, and
//! the copy of a lost replica to a new provider.
//!
//! An audit asks a replica for one random 4 KiB segment of one random chunk with its Merkle
//! proof, and checks it against the chunk address the owner recorded: a few KiB per audit,
//! whatever the file's size, and a provider cannot answer without the data. A replica whose audits
//! fail (wrong data, or no answer) for longer than `storage.lost_after_ms` is lost; a brief outage
//! is not, and neither is the owner's own: only failures while the owner runs count. Repair
//! copies the ciphertext of a healthy replica to a provider that does not hold the file yet (every
//! chunk verified on the way, never decrypted), until the file is back at its replica count, and
//! deletes what is left on the lost provider.
//!
//! With payments on, a replica that passed its audit and whose paid storage period is more than
//! half over is paid for one more period (data and manifest objects): the owner pays only for
//! copies it has just seen proof of.

use std::sync::Arc;

use bytes::Bytes;
use sphere_proto::v1::put_object_request::Part;
use sphere_proto::v1::{AuditObjectRequest, ObjectTrailer, PutObjectRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::{CHUNKS_IN_FLIGHT, Files, KIND_DATA};
use crate::address::NodeAddress;
use crate::clock::now_ms;
use crate::error::{Error, ErrorCode};
use crate::identity::NodeId;
use crate::peers::Target;
use crate::storage::chunks::ChunkHash;
use crate::storage::files::{FileRecord, Manifest, Replica};
use crate::storage::merkle;

/// Runs a round of audits and repairs every `storage.audit_interval_ms`, until `shutdown`.
pub async fn run(files: Files, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(files.options.audit_interval) => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(error) = files.maintain().await {
            tracing::warn!(%error, "audit round failed");
        }
        if let Err(error) = files.retry_discards().await {
            tracing::warn!(%error, "could not retry the deletion of copies");
        }
    }
}

impl Files {
    /// Audits every replica of every file once, then repairs the files that lost replicas.
    pub async fn maintain(&self) -> Result<(), Error> {
        for record in self.index.all().await? {
            let outcomes = futures_util::future::join_all(
                record
                    .replicas
                    .iter()
                    .map(|replica| self.audit_replica(&record.manifest, replica)),
            )
            .await;
            for outcome in &outcomes {
                crate::metrics::audit(if outcome.is_ok() { "ok" } else { "failed" });
            }
            let renewals = futures_util::future::join_all(
                record
                    .replicas
                    .iter()
                    .zip(&outcomes)
                    .filter(|(_, outcome)| outcome.is_ok())
                    .map(|(replica, _)| self.renew_if_due(&record.manifest, replica)),
            )
            .await;
            let now = now_ms();
            let updated = self
                .update_record(&record.manifest.id, |current| {
                    for (replica, outcome) in record.replicas.iter().zip(&outcomes) {
                        let Some(current) = current
                            .replicas
                            .iter_mut()
                            .find(|r| r.address == replica.address)
                        else {
                            continue;
                        };
                        if let Some((_, paid_until)) = renewals
                            .iter()
                            .flatten()
                            .find(|(address, _)| *address == replica.address)
                        {
                            current.paid_until_ms = Some(*paid_until);
                        }
                        current.last_audit_ms = Some(now);
                        current.last_audit_ok = Some(outcome.is_ok());
                        match outcome {
                            Ok(()) => {
                                current.last_audit_error = None;
                                current.failing_since_ms = None;
                            }
                            Err(error) => {
                                current.last_audit_error = Some(error.message.clone());
                                current.failing_since_ms.get_or_insert(now);
                            }
                        }
                    }
                })
                .await?;
            if let Some(updated) = updated {
                self.repair(updated).await;
            }
        }
        Ok(())
    }

    /// Pays `replica` for one more storage period when more than half of its paid period is
    /// over; returns its address and the new end of the paid time, or `None` when nothing was
    /// due or the renewal failed (logged; the next round tries again).
    async fn renew_if_due(
        &self,
        manifest: &Manifest,
        replica: &Replica,
    ) -> Option<(NodeAddress, u64)> {
        let (Some(payer), Some(paid_until)) = (&self.payer, replica.paid_until_ms) else {
            return None;
        };
        let renewed = async {
            let target = self.replica_target(replica);
            let info = payer.target_info(&target).await?;
            let Some(terms) = &info.payment_terms else {
                return Ok(None);
            };
            let half_period_ms = terms.storage_period_seconds.saturating_mul(500);
            if paid_until.saturating_sub(now_ms()) > half_period_ms {
                return Ok(None);
            }
            let until = self
                .renew_object(&target, &manifest.id, manifest.sealed_size())
                .await?;
            self.renew_object(
                &target,
                &super::manifest_object_id(&manifest.id),
                super::sealed_manifest_len(manifest),
            )
            .await?;
            tracing::info!(
                file_id = manifest.id,
                provider = %replica.address,
                paid_until_ms = until,
                "storage renewed"
            );
            Ok::<_, Error>(Some(until))
        }
        .await;
        match renewed {
            Ok(until) => until.map(|until| (replica.address.clone(), until)),
            Err(error) => {
                tracing::warn!(file_id = manifest.id, provider = %replica.address, %error, "could not renew storage");
                None
            }
        }
    }

    /// Challenges `replica` for a random segment of a random chunk and checks the proof.
    async fn audit_replica(&self, manifest: &Manifest, replica: &Replica) -> Result<(), Error> {
        let roots = manifest.chunk_hashes()?;
        let chunk_index = rand::random_range(0..roots.len());
        let segment_count = merkle::segment_count(manifest.sealed_chunk_len(chunk_index) as usize);
        let segment_index = rand::random_range(0..segment_count);
        let request = AuditObjectRequest {
            object_id: manifest.id.clone(),
            auth: None,
            chunk_index: chunk_index as u64,
            segment_index: segment_index as u64,
        };
        let target = self.replica_target(replica);
        let request = self.signed_for(&target, request).await?;
        let answer = self
            .peers
            .storage(&target)
            .audit_object(request)
            .await
            .map_err(|status| crate::peers::remote_error(&status, &target))?
            .into_inner();
        let proof: Option<Vec<[u8; 32]>> = answer
            .proof
            .iter()
            .map(|hash| hash[..].try_into().ok())
            .collect();
        let verified = answer.segment_count == segment_count as u64
            && proof.is_some_and(|proof| {
                merkle::verify(
                    &roots[chunk_index].0,
                    segment_index,
                    segment_count,
                    &answer.segment,
                    &proof,
                )
            });
        if verified {
            Ok(())
        } else {
            tracing::warn!(
                file_id = manifest.id,
                provider = %replica.address,
                chunk_index,
                "audit failed: bad proof"
            );
            Err(Error::new(
                ErrorCode::IntegrityError,
                format!(
                    "segment {segment_index} of chunk {chunk_index} does not match the file's record"
                ),
            ))
        }
    }

    /// Replaces the lost replicas of `record` (and makes up missing ones) with copies on new
    /// providers. Failures are logged; the next round tries again.
    async fn repair(&self, record: FileRecord) {
        let now = now_ms();
        let (lost, kept): (Vec<Replica>, Vec<Replica>) = record
            .replicas
            .iter()
            .cloned()
            .partition(|replica| self.is_lost(replica, now));
        let missing = (record.replicas_wanted as usize).saturating_sub(kept.len());
        if missing == 0 {
            return;
        }
        let file_id = &record.manifest.id;
        let Some(source) = kept
            .iter()
            .find(|replica| replica.failing_since_ms.is_none())
        else {
            tracing::error!(file_id, "no healthy replica left to repair from");
            return;
        };
        // Not back onto a provider whose copy of this file is waiting to be deleted.
        let discarding: Vec<NodeAddress> = match self.index.discards().await {
            Ok(discards) => discards
                .into_iter()
                .filter(|pending| pending.file_id == *file_id)
                .map(|pending| pending.address)
                .collect(),
            Err(error) => {
                tracing::warn!(file_id, %error, "could not read the copies to delete; no repair now");
                return;
            }
        };
        let holders: Vec<&NodeAddress> = record
            .replicas
            .iter()
            .map(|replica| &replica.address)
            .chain(&discarding)
            .collect();
        let source_target = self.replica_target(source);
        // Never two copies on one node, whatever address it is known by.
        let holder_ids: Vec<NodeId> = record
            .replicas
            .iter()
            .filter_map(|replica| replica.provider_id.parse().ok())
            .collect();
        let candidates = self
            .candidate_providers(&record.labels)
            .await
            .0
            .into_iter()
            .filter(|candidate| {
                !holders.contains(&candidate.address())
                    && !candidate
                        .node()
                        .is_some_and(|node| holder_ids.contains(&node))
            });
        let mut added = Vec::new();
        for candidate in candidates {
            if added.len() == missing {
                break;
            }
            match self
                .copy_replica(&record.manifest, &source_target, &candidate)
                .await
            {
                Ok(replica) => {
                    crate::metrics::repair();
                    tracing::info!(
                        file_id,
                        from = %source.address,
                        to = %candidate,
                        "replica repaired"
                    );
                    added.push(replica);
                }
                Err(error) => {
                    tracing::warn!(file_id, to = %candidate, %error, "repair copy failed")
                }
            }
        }
        if added.is_empty() {
            tracing::warn!(file_id, missing, "no provider could take a repair copy");
            return;
        }
        let replaced = added.len().min(lost.len());
        let dropped_replicas: Vec<&Replica> = lost.iter().take(replaced).collect();
        let dropped: Vec<NodeAddress> = dropped_replicas
            .iter()
            .map(|replica| replica.address.clone())
            .collect();
        let result = self
            .update_record(file_id, |current| {
                current
                    .replicas
                    .retain(|replica| !dropped.contains(&replica.address));
                current.replicas.extend(added.iter().cloned());
            })
            .await;
        if let Err(error) = result {
            tracing::error!(file_id, %error, "could not record repaired replicas");
            return;
        }
        for replica in dropped_replicas {
            // The lost provider may be gone or damaged; removing its copy is a courtesy.
            self.discard_copy(&self.replica_target(replica), file_id)
                .await;
        }
    }

    /// Copies the ciphertext of a file from `source` to `target`, checking every chunk on the
    /// way, then stores the manifest there; returns the new replica.
    async fn copy_replica(
        &self,
        manifest: &Manifest,
        source: &Target,
        target: &Target,
    ) -> Result<Replica, Error> {
        let expected = Arc::new(manifest.chunk_hashes()?);
        let object = (manifest.sealed_size(), expected.len() as u64);
        let (mut incoming, payment) = self.get_object(source, &manifest.id, 0, object).await?;
        let (sender, receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let source_name = source.clone();
        let forward = async move {
            let mut size = 0u64;
            for (index, expected_hash) in expected.iter().enumerate() {
                let chunk: Bytes = match incoming.message().await {
                    Ok(Some(message)) => message.chunk,
                    Ok(None) => {
                        return Err(Error::new(
                            ErrorCode::IntegrityError,
                            "the source sent too few chunks",
                        ));
                    }
                    Err(status) => return Err(crate::peers::remote_error(&status, &source_name)),
                };
                let checked = chunk.clone();
                let actual = tokio::task::spawn_blocking(move || ChunkHash::of(&checked))
                    .await
                    .map_err(|join_error| {
                        Error::new(ErrorCode::Internal, join_error.to_string())
                    })?;
                if actual != *expected_hash {
                    return Err(Error::new(
                        ErrorCode::IntegrityError,
                        format!(
                            "chunk {index} from {source_name} does not match the file's record"
                        ),
                    ));
                }
                size += chunk.len() as u64;
                let message = PutObjectRequest {
                    part: Some(Part::Chunk(chunk)),
                };
                if sender.send(message).await.is_err() {
                    return Err(Error::new(
                        ErrorCode::TargetError,
                        "the new provider stopped receiving",
                    ));
                }
            }
            let trailer = PutObjectRequest {
                part: Some(Part::Trailer(ObjectTrailer {
                    chunk_count: expected.len() as u64,
                    size,
                    chunk_list_digest: Bytes::copy_from_slice(&ChunkHash::list_digest(
                        expected.iter(),
                    )),
                    voucher: None,
                })),
            };
            sender.send(trailer).await.map_err(|_| {
                Error::new(ErrorCode::TargetError, "the new provider stopped receiving")
            })
        };
        let upload = self.put_object(
            target,
            &manifest.id,
            KIND_DATA,
            ReceiverStream::new(receiver),
        );
        let (forwarded, uploaded) = tokio::join!(forward, upload);
        super::settle(payment, &forwarded).await;
        let replica = match (forwarded, uploaded) {
            (Ok(()), Ok(replica)) => replica,
            (Err(error), _) | (Ok(()), Err(error)) => {
                self.discard_copy(target, &manifest.id).await;
                return Err(error);
            }
        };
        if let Err(error) = self
            .put_manifest(manifest, std::slice::from_ref(target))
            .await
        {
            self.discard_copy(target, &manifest.id).await;
            return Err(error);
        }
        Ok(replica)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use sphere_proto::v1::AuditObjectResponse;

    use super::*;
    use crate::identity::NodeIdentity;

    /// One audit of a 1 MiB chunk, as it travels: the signed request and the segment with its
    /// proof. Run by `bench/storage.sh`, which reports the figure.
    #[test]
    fn audit_cost_is_a_few_kib_whatever_the_file_size() {
        let chunk = vec![7u8; (1 << 20) + crate::storage::crypto::TAG_LEN];
        let segment_count = merkle::segment_count(chunk.len());
        let (segment, proof) = merkle::prove(&chunk, segment_count / 2).expect("segment");
        let request = crate::auth::sign(
            &NodeIdentity::generate(),
            &NodeIdentity::generate().node_id(),
            AuditObjectRequest {
                object_id: "0".repeat(32),
                auth: None,
                chunk_index: 1000,
                segment_index: (segment_count / 2) as u64,
            },
        );
        let response = AuditObjectResponse {
            segment: Bytes::from(segment),
            proof: proof
                .iter()
                .map(|hash| Bytes::copy_from_slice(hash))
                .collect(),
            segment_count: segment_count as u64,
        };
        let total = request.encoded_len() + response.encoded_len();
        println!(
            "bytes per audit: {total} (request {}, response {}, proof of {} hashes)",
            request.encoded_len(),
            response.encoded_len(),
            proof.len()
        );
        assert!(total < 8 * 1024, "{total} bytes");
    }
}

//! The peer book: believed records of members this node saw alive, kept in LevelDB so that a
//! restarted node finds the mesh again without `mesh.bootstrap`.
//!
//! It is a cache: written without waiting for the disk, read only for seed addresses (records
//! are checked again, and gossip brings fresh ones). A member not seen alive for
//! `mesh.forget_dead_after_ms` is dropped from it. A member's entry is written again only when
//! its record changed or a quarter of that time passed, so a quiet mesh costs the disk little.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{PeerRecord, Signed};
use crate::address::NodeAddress;
use crate::identity::NodeId;
use crate::storage::db::Db;

const KEY_PREFIX: &str = "mesh/peer/";

/// One member as the book keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct KnownPeer {
    /// The signed record, exactly as gossiped.
    record: String,
    /// When this node last saw it alive (ms since the epoch).
    last_seen_ms: u64,
}

/// The book, with when each member in it was last seen.
#[derive(Debug)]
pub(super) struct PeerBook {
    db: Db,
    forget_after_ms: u64,
    /// When each member was last seen alive.
    last_seen_ms: HashMap<NodeId, u64>,
    /// What the disk holds of each member: its signed record, and the time written with it.
    written: HashMap<NodeId, (String, u64)>,
}

fn key(node_id: NodeId) -> Vec<u8> {
    format!("{KEY_PREFIX}{node_id}").into_bytes()
}

impl PeerBook {
    /// Reads the book, drops members not seen for `forget_after_ms`, and returns it with the
    /// gRPC addresses of the members it still holds (the seeds to join through).
    pub(super) async fn open(
        db: Db,
        forget_after_ms: u64,
        now_ms: u64,
    ) -> (Self, Vec<NodeAddress>) {
        let mut book = Self {
            db,
            forget_after_ms,
            last_seen_ms: HashMap::new(),
            written: HashMap::new(),
        };
        let entries = match book.db.scan_prefix(KEY_PREFIX.as_bytes().to_vec()).await {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(%error, "could not read the peer book; joining through mesh.bootstrap only");
                return (book, Vec::new());
            }
        };
        let mut seeds = Vec::new();
        let mut forgotten = Vec::new();
        for (key, value) in entries {
            let name = String::from_utf8_lossy(&key[KEY_PREFIX.len()..]).into_owned();
            let known = serde_json::from_slice::<KnownPeer>(&value)
                .map_err(|error| error.to_string())
                .and_then(|known| {
                    PeerRecord::verify_signature(&known.record, &name)
                        .map(|record| (known, record))
                        .map_err(|error| error.to_string())
                });
            match known {
                Ok((known, record))
                    if now_ms.saturating_sub(known.last_seen_ms) < forget_after_ms =>
                {
                    book.last_seen_ms.insert(record.node_id, known.last_seen_ms);
                    book.written
                        .insert(record.node_id, (known.record, known.last_seen_ms));
                    seeds.push(record.grpc_address);
                }
                Ok(_) => forgotten.push((key, None)),
                Err(reason) => {
                    tracing::warn!(
                        member = name,
                        reason,
                        "dropped an unreadable entry of the peer book"
                    );
                    forgotten.push((key, None));
                }
            }
        }
        if !forgotten.is_empty() {
            tracing::info!(
                count = forgotten.len(),
                "forgot members of the peer book not seen for mesh.forget_dead_after_ms"
            );
            if let Err(error) = book.db.write_durable(forgotten).await {
                tracing::warn!(%error, "could not drop members from the peer book");
            }
        }
        (book, seeds)
    }

    /// Notes that the members whose signed records are `alive` were seen alive at `now_ms`,
    /// and forgets members not seen for the configured time.
    pub(super) async fn update(&mut self, alive: Vec<(NodeId, String)>, now_ms: u64) {
        let rewrite_after_ms = self.forget_after_ms / 4;
        for (node_id, record) in alive {
            self.last_seen_ms.insert(node_id, now_ms);
            let current = self.written.get(&node_id).is_some_and(|(written, at)| {
                *written == record && now_ms.saturating_sub(*at) < rewrite_after_ms
            });
            if current {
                continue;
            }
            let value = serde_json::to_vec(&KnownPeer {
                record: record.clone(),
                last_seen_ms: now_ms,
            })
            .expect("book entries serialise");
            if let Err(error) = self.db.put(key(node_id), value).await {
                tracing::warn!(%error, "could not write the peer book");
                return;
            }
            self.written.insert(node_id, (record, now_ms));
        }
        let forget_after_ms = self.forget_after_ms;
        let stale: Vec<NodeId> = self
            .last_seen_ms
            .iter()
            .filter(|(_, seen)| now_ms.saturating_sub(**seen) >= forget_after_ms)
            .map(|(node_id, _)| *node_id)
            .collect();
        if stale.is_empty() {
            return;
        }
        for node_id in &stale {
            self.last_seen_ms.remove(node_id);
            self.written.remove(node_id);
        }
        let changes = stale.iter().map(|node_id| (key(*node_id), None)).collect();
        if let Err(error) = self.db.write_durable(changes).await {
            tracing::warn!(%error, "could not drop members from the peer book");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeIdentity;

    fn signed_record(identity: &NodeIdentity, grpc_address: &str) -> String {
        PeerRecord {
            node_id: identity.id(),
            version: "0.1.0".to_owned(),
            grpc_address: grpc_address.parse().expect("an address"),
            http_address: "127.0.0.1:3000".to_owned(),
            labels: Default::default(),
            plugins: Vec::new(),
            prices: None,
            capacity: crate::api::PeerCapacity {
                cpu_cores: 1,
                memory_bytes: 0,
                disk_bytes: 0,
                free_disk_bytes: 0,
            },
            seq: 1,
            expires_at_ms: 1,
        }
        .sign(identity)
    }

    #[tokio::test]
    async fn the_book_gives_seeds_back_and_forgets_members_long_unseen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::open(dir.path()).expect("db");
        let (fresh, stale, impostor) = (
            NodeIdentity::generate(),
            NodeIdentity::generate(),
            NodeIdentity::generate(),
        );
        let (mut book, seeds) = PeerBook::open(db.clone(), 1_000, 0).await;
        assert!(seeds.is_empty());
        book.update(
            vec![(stale.id(), signed_record(&stale, "127.0.0.1:2"))],
            100,
        )
        .await;
        book.update(
            vec![
                (fresh.id(), signed_record(&fresh, "127.0.0.1:1")),
                // A record filed under a node ID that did not sign it is never a seed.
                (impostor.id(), signed_record(&fresh, "127.0.0.1:3")),
            ],
            900,
        )
        .await;

        // Reopened at 1,150: the stale member (seen at 100) is past the 1,000 ms.
        let (_, seeds) = PeerBook::open(db.clone(), 1_000, 1_150).await;
        assert_eq!(
            seeds,
            vec!["127.0.0.1:1".parse::<NodeAddress>().expect("an address")]
        );
        let left = db
            .scan_prefix(KEY_PREFIX.as_bytes().to_vec())
            .await
            .expect("scan");
        assert_eq!(left.len(), 1, "the stale and the forged entries are gone");

        // Kept up to date, a member unseen for the time is dropped while the node runs.
        let (mut book, _) = PeerBook::open(db.clone(), 1_000, 1_050).await;
        book.update(Vec::new(), 2_000).await;
        let (_, seeds) = PeerBook::open(db, 1_000, 2_000).await;
        assert!(seeds.is_empty());
    }

    #[tokio::test]
    async fn an_unchanged_member_is_written_again_only_after_a_quarter_of_the_forget_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::open(dir.path()).expect("db");
        let member = NodeIdentity::generate();
        let record = signed_record(&member, "127.0.0.1:1");
        let on_disk = || async {
            let value = db
                .get(key(member.id()))
                .await
                .expect("read")
                .expect("stored");
            serde_json::from_slice::<KnownPeer>(&value)
                .expect("entry")
                .last_seen_ms
        };
        let (mut book, _) = PeerBook::open(db.clone(), 1_000, 0).await;
        book.update(vec![(member.id(), record.clone())], 0).await;
        book.update(vec![(member.id(), record.clone())], 200).await;
        assert_eq!(
            on_disk().await,
            0,
            "seen again within 250 ms: not rewritten"
        );
        book.update(vec![(member.id(), record.clone())], 250).await;
        assert_eq!(on_disk().await, 250);
        let changed = signed_record(&member, "127.0.0.1:2");
        book.update(vec![(member.id(), changed)], 260).await;
        assert_eq!(on_disk().await, 260, "a changed record is written at once");
    }
}

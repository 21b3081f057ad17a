//! Membership: which nodes are in the network and what each offers, learnt by gossip.
//!
//! Gossip is chitchat's (Quickwit's scuttlebutt with a phi-accrual failure detector), over UDP on
//! `mesh.listen` (by default the gRPC port's number, so one `host:port` names a node for both).
//! Each node writes one key of its own state: its [`PeerRecord`], signed with the node key. A
//! reader believes a record only when its signature recovers the node ID the record and the
//! gossip identity both claim, and its sequence number is not older than one already seen; a
//! member without such a record never counts as alive, so a stranger cannot pose as a node.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::Signature;
use alloy_signer::SignerSync;
use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{PeerInfo, PeerPlugin, PeerState};
use crate::config::MeshConfig;
use crate::identity::{NodeId, NodeIdentity};
use crate::plugin::Plugins;
use crate::storage::db::Db;
use crate::storage::objects::ObjectStore;

mod book;
mod transport;

/// The key of a node's state that holds its signed record.
pub const RECORD_KEY: &str = "record";
/// What the signed text starts with, so a record signature is never anything else's.
const RECORD_DOMAIN: &str = "sphere peer record\nversion 1\n";
/// Nodes of other clusters ignore each other's gossip.
pub const CLUSTER_ID: &str = "sphere-v1";
/// How long a record stays valid; it is signed again well before.
const RECORD_TTL: Duration = Duration::from_secs(600);
/// How often the node checks whether its record changed.
const RECORD_REFRESH: Duration = Duration::from_secs(2);
/// How often the members seen alive are written to the peer book.
const BOOK_INTERVAL: Duration = Duration::from_secs(10);

/// What a node tells the network about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The node ID: the Ethereum address of the key that signed the record.
    pub node_id: NodeId,
    /// Software version.
    pub version: String,
    /// Where other nodes reach its gRPC services.
    pub grpc_address: String,
    /// Where its REST API listens.
    pub http_address: String,
    /// The operator's labels.
    pub labels: BTreeMap<String, String>,
    /// The plugins it serves.
    pub plugins: Vec<RecordPlugin>,
    /// Whether it takes payments.
    pub payments: bool,
    /// Bytes it offers other nodes, and how many are free.
    pub capacity_bytes: u64,
    /// Bytes of that still free.
    pub free_bytes: u64,
    /// Grows with every new record of this node (milliseconds since the epoch when signed).
    pub seq: u64,
    /// After this (milliseconds since the epoch) the record is not believed.
    pub expires_at_ms: u64,
}

/// A plugin as a record lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordPlugin {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// Whether it serves now.
    pub serving: bool,
}

/// A record as gossiped: the exact JSON text that was signed, and the signature.
#[derive(Debug, Serialize, Deserialize)]
struct SignedRecord {
    body: String,
    signature: String,
}

/// Why a gossiped record is not believed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// Not a signed record at all.
    #[error("the record is not readable: {0}")]
    Unreadable(String),
    /// The signature does not recover the node ID claimed.
    #[error("the record claims node {claimed} but is signed by {signer}")]
    WrongSigner {
        /// The node ID the record or the gossip identity claims.
        claimed: String,
        /// Who signed it.
        signer: String,
    },
    /// The record expired.
    #[error("the record expired")]
    Expired,
}

impl PeerRecord {
    /// Signs the record with `identity` into the value gossiped under [`RECORD_KEY`].
    pub fn sign(&self, identity: &NodeIdentity) -> String {
        let body = serde_json::to_string(self).expect("records serialise");
        let signature = identity
            .signer()
            .sign_message_sync(format!("{RECORD_DOMAIN}{body}").as_bytes())
            .expect("signing with a local key cannot fail");
        serde_json::to_string(&SignedRecord {
            body,
            signature: format!("0x{}", hex::encode(signature.as_bytes())),
        })
        .expect("records serialise")
    }

    /// Reads and checks a gossiped value: signed by the node it names, which is `gossip_id` (the
    /// identity it gossips under), and not expired at `now_ms`.
    pub fn verify(value: &str, gossip_id: &str, now_ms: u64) -> Result<Self, RecordError> {
        Self::verify_signature(value, gossip_id)?.unexpired(now_ms)
    }

    fn unexpired(self, now_ms: u64) -> Result<Self, RecordError> {
        if self.expires_at_ms <= now_ms {
            return Err(RecordError::Expired);
        }
        Ok(self)
    }

    /// The part of [`Self::verify`] that does not change with time.
    fn verify_signature(value: &str, gossip_id: &str) -> Result<Self, RecordError> {
        let signed: SignedRecord = serde_json::from_str(value)
            .map_err(|error| RecordError::Unreadable(error.to_string()))?;
        let signature_bytes = hex::decode(signed.signature.trim_start_matches("0x"))
            .map_err(|error| RecordError::Unreadable(error.to_string()))?;
        let signature = Signature::try_from(&signature_bytes[..])
            .map_err(|error| RecordError::Unreadable(error.to_string()))?;
        let signer = NodeId::from(
            signature
                .recover_address_from_msg(format!("{RECORD_DOMAIN}{}", signed.body).as_bytes())
                .map_err(|error| RecordError::Unreadable(error.to_string()))?,
        );
        let record: PeerRecord = serde_json::from_str(&signed.body)
            .map_err(|error| RecordError::Unreadable(error.to_string()))?;
        let wrong_signer = |claimed: String| RecordError::WrongSigner {
            claimed,
            signer: signer.to_string(),
        };
        if record.node_id != signer {
            return Err(wrong_signer(record.node_id.to_string()));
        }
        if gossip_id.parse() != Ok(signer) {
            return Err(wrong_signer(gossip_id.to_owned()));
        }
        Ok(record)
    }
}

/// Gossiped records already checked, by gossip identity: a signature is recovered once per new
/// record rather than at every gossip round (chitchat asks the liveness predicate about every
/// member each round).
#[derive(Debug, Default)]
struct CheckedRecords(Mutex<HashMap<String, CheckedRecord>>);

type CheckedRecord = (String, Result<PeerRecord, RecordError>);

/// Identities remembered at most; strangers can gossip under any number of made-up ones.
const CHECKED_RECORDS_MAX: usize = 4_096;

impl CheckedRecords {
    /// [`PeerRecord::verify`], from the cache when `value` was checked before.
    fn verify(&self, value: &str, gossip_id: &str, now_ms: u64) -> Result<PeerRecord, RecordError> {
        let mut checked = self.0.lock().expect("record cache lock is never poisoned");
        let outcome = match checked.get(gossip_id) {
            Some((seen, outcome)) if seen == value => outcome.clone(),
            _ => {
                let outcome = PeerRecord::verify_signature(value, gossip_id);
                if checked.len() >= CHECKED_RECORDS_MAX {
                    checked.clear();
                }
                checked.insert(gossip_id.to_owned(), (value.to_owned(), outcome.clone()));
                outcome
            }
        };
        outcome?.unexpired(now_ms)
    }
}

/// Where this node gossips and what it publishes.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// The settings (`mesh.*`).
    pub config: MeshConfig,
    /// The UDP address to gossip on.
    pub listen: SocketAddr,
    /// The address others gossip with and call gRPC on.
    pub advertise: SocketAddr,
    /// Seeds besides `mesh.bootstrap`: the configured peers.
    pub extra_seeds: Vec<String>,
    /// Where this node's REST API listens.
    pub http_address: SocketAddr,
    /// The operator's labels.
    pub labels: BTreeMap<String, String>,
    /// Whether payments are on.
    pub payments: bool,
}

/// This node's membership in the network. Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    handle: Arc<ChitchatHandle>,
    node_id: String,
    /// The highest sequence number believed per node, so an older record is never taken back.
    newest_seq: Arc<Mutex<HashMap<NodeId, u64>>>,
    checked: Arc<CheckedRecords>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Mesh")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Joins the network: starts gossiping on `options.listen` with the seeds (the bootstrap
    /// addresses, the configured peers and the members in the peer book of `db`), publishes this
    /// node's record, and keeps it and the book current until `shutdown`.
    pub async fn start(
        options: MeshOptions,
        identity: NodeIdentity,
        plugins: Plugins,
        objects: ObjectStore,
        db: Db,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let gossip_interval = Duration::from_millis(options.config.gossip_interval_ms);
        let failure_timeout = Duration::from_millis(options.config.failure_timeout_ms);
        let node_id = identity.node_id();
        let generation = crate::clock::now_ms();
        let (book, known) =
            book::PeerBook::open(db, options.config.forget_dead_after_ms, generation).await;
        let from_book = known.len();
        let mut seed_nodes: Vec<String> = options.config.bootstrap.clone();
        seed_nodes.extend(options.extra_seeds.iter().cloned());
        seed_nodes.extend(known);
        seed_nodes.retain(|seed| seed != &options.advertise.to_string());
        seed_nodes.sort();
        seed_nodes.dedup();
        tracing::info!(
            seeds = seed_nodes.len(),
            from_peer_book = from_book,
            "joining the mesh"
        );
        let verifying_id = node_id.clone();
        let checked = Arc::new(CheckedRecords::default());
        let predicate_checked = checked.clone();
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(node_id.clone(), generation, options.advertise),
            cluster_id: CLUSTER_ID.to_owned(),
            gossip_interval,
            listen_addr: options.listen,
            seed_nodes,
            failure_detector_config: FailureDetectorConfig {
                // Heartbeats come about every interval, and the last one before a death came up
                // to an interval before it: dead once silent for the timeout less an interval.
                phi_threshold: (failure_timeout.as_secs_f64() - gossip_interval.as_secs_f64())
                    / gossip_interval.as_secs_f64(),
                sampling_window_size: 1_000,
                max_interval: failure_timeout,
                initial_interval: gossip_interval,
                dead_node_grace_period: Duration::from_millis(options.config.forget_dead_after_ms),
            },
            marked_for_deletion_grace_period: Duration::from_secs(3_600),
            catchup_callback: None,
            // A member counts as alive only with a record signed by the node it claims to be.
            extra_liveness_predicate: Some(Box::new(move |state: &NodeState| {
                let gossip_id = state.chitchat_id().node_id.as_ref();
                gossip_id == verifying_id.as_str()
                    || state.get(RECORD_KEY).is_some_and(|value| {
                        predicate_checked
                            .verify(value, gossip_id, crate::clock::now_ms())
                            .is_ok()
                    })
            })),
            protocol_version: chitchat::ProtocolVersion::V1,
        };
        let record_source = RecordSource {
            identity,
            options,
            plugins,
            objects,
        };
        let first = record_source.record();
        let handle = chitchat::spawn_chitchat(
            config,
            vec![(RECORD_KEY.to_owned(), first.sign(&record_source.identity))],
            &transport::CountingTransport(UdpTransport),
        )
        .await?;
        let mesh = Self {
            handle: Arc::new(handle),
            node_id,
            newest_seq: Arc::default(),
            checked,
        };
        tasks.spawn(mesh.clone().keep_book_current(book, shutdown.clone()));
        tasks.spawn(
            mesh.clone()
                .keep_record_current(record_source, first, shutdown),
        );
        Ok(mesh)
    }

    /// Signs and publishes a new record whenever what it says changes, and before it expires.
    async fn keep_record_current(
        self,
        source: RecordSource,
        mut published: PeerRecord,
        shutdown: CancellationToken,
    ) {
        let mut interval = tokio::time::interval(RECORD_REFRESH);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            let mut record = source.record();
            let unchanged = PeerRecord {
                seq: published.seq,
                expires_at_ms: published.expires_at_ms,
                ..record.clone()
            } == published;
            let fresh = published.expires_at_ms
                > crate::clock::now_ms() + RECORD_TTL.as_millis() as u64 / 2;
            if unchanged && fresh {
                continue;
            }
            record.seq = record.seq.max(published.seq + 1);
            let value = record.sign(&source.identity);
            self.handle
                .with_chitchat(|chitchat| chitchat.self_node_state().set(RECORD_KEY, &value))
                .await;
            published = record;
        }
        if let Err(error) = self.handle.initiate_shutdown() {
            tracing::debug!(%error, "gossip was stopped already");
        }
    }

    /// Writes the members seen alive to the peer book every [`BOOK_INTERVAL`], and once more
    /// at shutdown.
    async fn keep_book_current(self, mut book: book::PeerBook, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(BOOK_INTERVAL);
        interval.tick().await;
        loop {
            let stopping = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = interval.tick() => false,
            };
            let alive = self
                .believed()
                .await
                .into_iter()
                .filter(|member| member.alive)
                .map(|member| (member.record.node_id, member.signed))
                .collect();
            book.update(alive, crate::clock::now_ms()).await;
            if stopping {
                break;
            }
        }
    }

    /// Returns the other members this node knows, with what their records say.
    pub async fn members(&self) -> Vec<PeerInfo> {
        let mut members: Vec<PeerInfo> = self
            .believed()
            .await
            .into_iter()
            .map(|member| {
                let state = if member.alive {
                    PeerState::Alive
                } else {
                    PeerState::Dead
                };
                peer_info(member.record, state)
            })
            .collect();
        members.sort_by(|a, b| a.address.cmp(&b.address));
        members
    }

    /// Where member `node` is (its gRPC address) and whether it is alive; `None` when it is not
    /// a member.
    pub async fn member(&self, node: NodeId) -> Option<(String, bool)> {
        self.believed()
            .await
            .into_iter()
            .find(|member| member.record.node_id == node)
            .map(|member| (member.record.grpc_address, member.alive))
    }

    /// The live members: each one's node ID, gRPC address, and bytes free for others (as its
    /// record says).
    pub async fn live_members(&self) -> Vec<(NodeId, String, u64)> {
        self.believed()
            .await
            .into_iter()
            .filter(|member| member.alive)
            .map(|member| {
                let record = member.record;
                (record.node_id, record.grpc_address, record.free_bytes)
            })
            .collect()
    }

    /// Returns every other member with a believed record, the newest generation of each.
    async fn believed(&self) -> Vec<Member> {
        let now = crate::clock::now_ms();
        let mut members = Vec::new();
        let chitchat = self.handle.chitchat();
        let chitchat = chitchat.lock().await;
        let live: Vec<ChitchatId> = chitchat.live_nodes().cloned().collect();
        // A restarted node gossips under a new generation; the newest one stands for it.
        let mut states: Vec<(&ChitchatId, &NodeState)> = chitchat.node_states().iter().collect();
        states.sort_by_key(|(id, _)| std::cmp::Reverse(id.generation_id));
        let mut seen = std::collections::HashSet::new();
        for (id, state) in states {
            let gossip_id = id.node_id.as_ref();
            if gossip_id == self.node_id || seen.contains(gossip_id) {
                continue;
            }
            let Some(value) = state.get(RECORD_KEY) else {
                continue;
            };
            let record = match self.checked.verify(value, gossip_id, now) {
                Ok(record) => record,
                Err(error) => {
                    tracing::warn!(member = gossip_id, gossip = %id.gossip_advertise_addr, %error, "ignored a peer record");
                    continue;
                }
            };
            // Only a believed record stands for its node: a forger's newer generation hides
            // nothing.
            seen.insert(gossip_id);
            if !self.is_newest(&record) {
                tracing::warn!(
                    member = gossip_id,
                    seq = record.seq,
                    "ignored an older peer record"
                );
                continue;
            }
            members.push(Member {
                record,
                signed: value.to_owned(),
                alive: live.contains(id),
            });
        }
        members
    }

    fn is_newest(&self, record: &PeerRecord) -> bool {
        let mut newest = self
            .newest_seq
            .lock()
            .expect("sequence map lock is never poisoned");
        let seen = newest.entry(record.node_id).or_insert(record.seq);
        if record.seq < *seen {
            return false;
        }
        *seen = record.seq;
        true
    }
}

/// A member as this node believes it.
struct Member {
    record: PeerRecord,
    /// The record as gossiped, signature included.
    signed: String,
    alive: bool,
}

fn peer_info(record: PeerRecord, state: PeerState) -> PeerInfo {
    PeerInfo {
        address: record.grpc_address,
        reachable: state == PeerState::Alive,
        state,
        node_id: Some(record.node_id.to_string()),
        version: Some(record.version),
        http_address: Some(record.http_address),
        labels: record.labels,
        plugins: record
            .plugins
            .into_iter()
            .map(|plugin| PeerPlugin {
                name: plugin.name,
                version: plugin.version,
                description: plugin.description,
            })
            .collect(),
        payments: Some(record.payments),
        capacity_bytes: Some(record.capacity_bytes),
        free_bytes: Some(record.free_bytes),
        latency_ms: None,
        error: None,
    }
}

/// What a node's record is made of, read afresh at each refresh.
struct RecordSource {
    identity: NodeIdentity,
    options: MeshOptions,
    plugins: Plugins,
    objects: ObjectStore,
}

impl RecordSource {
    fn record(&self) -> PeerRecord {
        let now = crate::clock::now_ms();
        let (capacity_bytes, used_bytes) = self.objects.capacity();
        PeerRecord {
            node_id: self.identity.id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            grpc_address: self.options.advertise.to_string(),
            http_address: self.options.http_address.to_string(),
            labels: self.options.labels.clone(),
            plugins: self
                .plugins
                .statuses()
                .into_iter()
                .map(|plugin| RecordPlugin {
                    name: plugin.name,
                    version: plugin.version.unwrap_or_default(),
                    description: plugin.description.unwrap_or_default(),
                    serving: plugin.health == crate::plugin::registry::SlotHealth::Serving,
                })
                .collect(),
            payments: self.options.payments,
            capacity_bytes,
            free_bytes: capacity_bytes.saturating_sub(used_bytes),
            seq: now,
            expires_at_ms: now + RECORD_TTL.as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(identity: &NodeIdentity) -> PeerRecord {
        PeerRecord {
            node_id: identity.id(),
            version: "0.1.0".to_owned(),
            grpc_address: "127.0.0.1:8081".to_owned(),
            http_address: "127.0.0.1:3000".to_owned(),
            labels: BTreeMap::from([("region".to_owned(), "eu".to_owned())]),
            plugins: Vec::new(),
            payments: false,
            capacity_bytes: 10,
            free_bytes: 5,
            seq: 1,
            expires_at_ms: u64::MAX,
        }
    }

    #[test]
    fn a_record_is_believed_only_from_the_node_it_names() {
        let node = NodeIdentity::generate();
        let stranger = NodeIdentity::generate();
        let signed = record(&node).sign(&node);
        assert_eq!(
            PeerRecord::verify(&signed, &node.node_id(), 0).expect("genuine"),
            record(&node)
        );
        // Gossiped under another node's identity.
        assert!(PeerRecord::verify(&signed, &stranger.node_id(), 0).is_err());
        // Claiming the node but signed by a stranger.
        let forged = record(&node).sign(&stranger);
        assert!(matches!(
            PeerRecord::verify(&forged, &node.node_id(), 0),
            Err(RecordError::WrongSigner { .. })
        ));
        // The cache gives the same answers, expiry included.
        let checked = CheckedRecords::default();
        for _ in 0..2 {
            assert!(checked.verify(&signed, &node.node_id(), 0).is_ok());
            assert!(checked.verify(&forged, &node.node_id(), 0).is_err());
        }
        let mut old = record(&node);
        old.expires_at_ms = 5;
        let old = old.sign(&node);
        assert!(checked.verify(&old, &node.node_id(), 4).is_ok());
        assert!(matches!(
            checked.verify(&old, &node.node_id(), 10),
            Err(RecordError::Expired)
        ));
        // Altered after signing.
        let altered = signed.replace("eu", "us");
        assert!(PeerRecord::verify(&altered, &node.node_id(), 0).is_err());
        // Expired.
        let mut old = record(&node);
        old.expires_at_ms = 5;
        assert!(matches!(
            PeerRecord::verify(&old.sign(&node), &node.node_id(), 10),
            Err(RecordError::Expired)
        ));
    }
}

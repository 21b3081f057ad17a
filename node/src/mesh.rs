//! Membership: which nodes are in the network and what each offers, learnt by gossip.
//!
//! Gossip is chitchat's (Quickwit's scuttlebutt with a phi-accrual failure detector), over UDP on
//! `mesh.listen` (by default the gRPC port's number, so one `host:port` names a node for both).
//! Each node writes two keys of its own state, each a value signed with the node key
//! ([`record`]): its [`PeerRecord`] and its [`LoadRecord`]. A reader believes a value only when
//! its signature recovers the node ID the value and the gossip identity both claim, and its
//! sequence number is not older than one already seen; a member without a believed record never
//! counts as alive, so a stranger cannot pose as a node.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat::transport::UdpTransport;
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, Heartbeat, NodeState,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::address::NodeAddress;
use crate::api::{
    PeerAddresses, PeerCapacity, PeerInfo, PeerLoad, PeerSource, PeerState, PluginLoad, Prices,
};
use crate::config::MeshConfig;
use crate::identity::{NodeId, NodeIdentity};
use crate::plugin::Plugins;
use crate::storage::db::Db;
use crate::storage::objects::ObjectStore;

mod book;
pub mod record;
mod transport;

use record::{Checked, LOAD_KEY, RECORD_KEY, RECORD_TTL};
pub use record::{LoadRecord, PeerRecord, RecordError, Signed};

/// Nodes of other clusters ignore each other's gossip.
pub const CLUSTER_ID: &str = "sphere-v1";
/// How often the members seen alive are written to the peer book.
const BOOK_INTERVAL: Duration = Duration::from_secs(10);

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
    pub extra_seeds: Vec<NodeAddress>,
    /// Where this node's REST API listens.
    pub http_address: SocketAddr,
    /// The operator's labels.
    pub labels: BTreeMap<String, String>,
    /// What this node charges, when payments are on.
    pub prices: Option<Prices>,
}

/// This node's membership in the network. Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    handle: Arc<ChitchatHandle>,
    node_id: String,
    /// The highest sequence number believed per node and key, so an older value is never taken
    /// back.
    newest_seq: Arc<Mutex<HashMap<(NodeId, &'static str), u64>>>,
    records: Arc<Checked<PeerRecord>>,
    loads: Arc<Checked<LoadRecord>>,
    /// Per gossip identity: its highest heartbeat, and when it grew (ms since the epoch).
    heard: Arc<Mutex<HashMap<ChitchatId, (Heartbeat, u64)>>>,
    round_trips: Arc<transport::RoundTrips>,
    /// Every member's gRPC address as its newest believed record gives it, for callers that
    /// cannot wait: noted whenever the members are read (for `GET /peers`, for targets and
    /// providers, and for the peer book every 10 s), so never far behind.
    addresses: Arc<Mutex<HashMap<NodeId, NodeAddress>>>,
    /// Unheard of this long, a member still counted alive is shown as suspect.
    suspect_after_ms: u64,
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
    /// node's record and load, and keeps them and the book current until `shutdown`.
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
        seed_nodes.extend(options.extra_seeds.iter().map(NodeAddress::to_string));
        seed_nodes.extend(known.iter().map(NodeAddress::to_string));
        seed_nodes.retain(|seed| seed != &options.advertise.to_string());
        seed_nodes.sort();
        seed_nodes.dedup();
        tracing::info!(
            seeds = seed_nodes.len(),
            from_peer_book = from_book,
            "joining the mesh"
        );
        let verifying_id = node_id.clone();
        let records = Arc::new(Checked::<PeerRecord>::default());
        let predicate_records = records.clone();
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
                        let generation = state.chitchat_id().generation_id;
                        predicate_records
                            .verify(value, gossip_id, generation, crate::clock::now_ms())
                            .is_ok()
                    })
            })),
            protocol_version: chitchat::ProtocolVersion::V1,
        };
        // Suspect: a round short of being declared dead (heartbeats reach a node a few rounds
        // late in a large mesh, so an earlier mark would cry wolf).
        let suspect_after_ms = options
            .config
            .failure_timeout_ms
            .saturating_sub(options.config.gossip_interval_ms)
            .max(2 * options.config.gossip_interval_ms);
        let source = RecordSource::new(identity, options, plugins, objects);
        let (record, load) = source.current();
        let round_trips = Arc::new(transport::RoundTrips::default());
        let handle = chitchat::spawn_chitchat(
            config,
            vec![
                (RECORD_KEY.to_owned(), record.sign(&source.identity)),
                (LOAD_KEY.to_owned(), load.sign(&source.identity)),
            ],
            &transport::CountingTransport::new(UdpTransport, round_trips.clone()),
        )
        .await?;
        let mesh = Self {
            handle: Arc::new(handle),
            node_id,
            newest_seq: Arc::default(),
            records,
            loads: Arc::default(),
            heard: Arc::default(),
            round_trips,
            addresses: Arc::default(),
            suspect_after_ms,
        };
        tasks.spawn(mesh.clone().keep_book_current(book, shutdown.clone()));
        tasks.spawn(
            mesh.clone()
                .keep_current(source, (record, load), gossip_interval, shutdown),
        );
        Ok(mesh)
    }

    /// Every gossip interval: notes whose heartbeats grew, and signs and publishes a new load or
    /// record when what it says changed (a record also before it expires).
    async fn keep_current(
        self,
        source: RecordSource,
        (mut record, mut load): (PeerRecord, LoadRecord),
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut interval = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            self.note_heartbeats().await;
            let mut updates = Vec::new();
            let (mut new_record, mut new_load) = source.current();
            if new_load.load != load.load {
                new_load.seq = new_load.seq.max(load.seq + 1);
                updates.push((LOAD_KEY, new_load.sign(&source.identity)));
                load = new_load;
            }
            let unchanged = PeerRecord {
                seq: record.seq,
                expires_at_ms: record.expires_at_ms,
                ..new_record.clone()
            } == record;
            let fresh =
                record.expires_at_ms > crate::clock::now_ms() + RECORD_TTL.as_millis() as u64 / 2;
            if !(unchanged && fresh) {
                new_record.seq = new_record.seq.max(record.seq + 1);
                updates.push((RECORD_KEY, new_record.sign(&source.identity)));
                record = new_record;
            }
            if !updates.is_empty() {
                self.handle
                    .with_chitchat(|chitchat| {
                        for (key, value) in updates.drain(..) {
                            chitchat.self_node_state().set(key, value);
                        }
                    })
                    .await;
            }
        }
        if let Err(error) = self.handle.initiate_shutdown() {
            tracing::debug!(%error, "gossip was stopped already");
        }
    }

    /// Where member `node` last said it listens (its gRPC address), without waiting.
    pub fn address_of(&self, node: NodeId) -> Option<NodeAddress> {
        self.addresses
            .lock()
            .expect("address map lock is never poisoned")
            .get(&node)
            .cloned()
    }

    /// Notes, for each member, when its heartbeat last grew: the last time anyone heard of it.
    async fn note_heartbeats(&self) {
        let now = crate::clock::now_ms();
        let chitchat = self.handle.chitchat();
        let chitchat = chitchat.lock().await;
        let mut heard = self
            .heard
            .lock()
            .expect("heartbeat map lock is never poisoned");
        heard.retain(|id, _| chitchat.node_states().contains_key(id));
        for (id, state) in chitchat.node_states() {
            let heartbeat = state.heartbeat();
            let known = heard.entry(id.clone()).or_insert((heartbeat, now));
            if heartbeat > known.0 {
                *known = (heartbeat, now);
            }
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

    /// Returns the other members this node knows, with what their records say, ordered by gRPC
    /// address.
    pub async fn members(&self) -> Vec<PeerInfo> {
        let mut members: Vec<PeerInfo> = self
            .believed()
            .await
            .into_iter()
            .map(|member| self.peer_info(member))
            .collect();
        members.sort_by(|a, b| a.addresses.grpc.cmp(&b.addresses.grpc));
        members
    }

    /// Where member `node` is (its gRPC address) and whether it is alive; `None` when it is not
    /// a member.
    pub async fn member(&self, node: NodeId) -> Option<(NodeAddress, bool)> {
        self.believed()
            .await
            .into_iter()
            .find(|member| member.record.node_id == node)
            .map(|member| (member.record.grpc_address, member.alive))
    }

    /// The live members: each one's node ID, gRPC address, and bytes free for others (as its
    /// record says).
    pub async fn live_members(&self) -> Vec<(NodeId, NodeAddress, u64)> {
        self.believed()
            .await
            .into_iter()
            .filter(|member| member.alive)
            .map(|member| {
                let record = member.record;
                (
                    record.node_id,
                    record.grpc_address,
                    record.capacity.free_disk_bytes,
                )
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
            // A bad record was logged when it was first checked.
            let Ok(record) = self.records.verify(value, gossip_id, id.generation_id, now) else {
                continue;
            };
            // Only a believed record stands for its node: a forger's newer generation hides
            // nothing.
            seen.insert(gossip_id);
            if !self.is_newest(record.node_id, RECORD_KEY, record.seq) {
                tracing::warn!(
                    member = gossip_id,
                    seq = record.seq,
                    "ignored an older peer record"
                );
                continue;
            }
            let load = state.get(LOAD_KEY).and_then(|value| {
                let load = self
                    .loads
                    .verify(value, gossip_id, id.generation_id, now)
                    .ok()?;
                if !self.is_newest(load.node_id, LOAD_KEY, load.seq) {
                    tracing::warn!(
                        member = gossip_id,
                        seq = load.seq,
                        "ignored an older peer load"
                    );
                    return None;
                }
                Some(load.load)
            });
            members.push(Member {
                record,
                signed: value.to_owned(),
                alive: live.contains(id),
                load,
                gossip_address: id.gossip_advertise_addr,
                last_heard_ms: self
                    .heard
                    .lock()
                    .expect("heartbeat map lock is never poisoned")
                    .get(id)
                    .map(|(_, at)| *at),
            });
        }
        let mut addresses = self
            .addresses
            .lock()
            .expect("address map lock is never poisoned");
        for member in &members {
            addresses.insert(member.record.node_id, member.record.grpc_address.clone());
        }
        members
    }

    fn is_newest(&self, node: NodeId, key: &'static str, seq: u64) -> bool {
        let mut newest = self
            .newest_seq
            .lock()
            .expect("sequence map lock is never poisoned");
        let seen = newest.entry((node, key)).or_insert(seq);
        if seq < *seen {
            return false;
        }
        *seen = seq;
        true
    }

    /// The other members with what the scheduler weighs: record, load, state and round trip.
    pub async fn candidates(&self) -> Vec<Candidate> {
        self.believed()
            .await
            .into_iter()
            .map(|member| {
                let (state, _) = self.state_of(&member);
                Candidate {
                    rtt_ms: self.round_trips.rtt_ms(member.gossip_address),
                    record: member.record,
                    load: member.load,
                    state,
                }
            })
            .collect()
    }

    /// A member's state, and how long ago it was last heard of.
    fn state_of(&self, member: &Member) -> (PeerState, Option<u64>) {
        let last_seen_ms = member
            .last_heard_ms
            .map(|at| crate::clock::now_ms().saturating_sub(at));
        (
            peer_state(member.alive, last_seen_ms, self.suspect_after_ms),
            last_seen_ms,
        )
    }

    fn peer_info(&self, member: Member) -> PeerInfo {
        let (state, last_seen_ms) = self.state_of(&member);
        let record = member.record;
        PeerInfo {
            id: Some(record.node_id.to_string()),
            state,
            source: PeerSource::Mesh,
            addresses: PeerAddresses {
                grpc: record.grpc_address.to_string(),
                http: Some(record.http_address),
                gossip: Some(member.gossip_address.to_string()),
            },
            version: Some(record.version),
            labels: record.labels,
            plugins: record.plugins,
            payments: Some(record.prices.is_some()),
            prices: record.prices,
            capacity: Some(record.capacity),
            load: member.load,
            last_seen_ms,
            rtt_ms: self.round_trips.rtt_ms(member.gossip_address),
            error: None,
            standing: None,
        }
    }
}

/// Where a member stands: dead when the failure detector says so, suspect when still counted
/// alive but unheard of for longer than `suspect_after_ms`.
fn peer_state(alive: bool, last_seen_ms: Option<u64>, suspect_after_ms: u64) -> PeerState {
    match (alive, last_seen_ms) {
        (false, _) => PeerState::Dead,
        (true, Some(silent)) if silent > suspect_after_ms => PeerState::Suspect,
        (true, _) => PeerState::Alive,
    }
}

/// A member as the scheduler weighs it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// What it signed about itself.
    pub record: PeerRecord,
    /// Its signed load, when it published one.
    pub load: Option<PeerLoad>,
    /// Alive, suspect or dead.
    pub state: PeerState,
    /// Smoothed gossip round trip, once measured.
    pub rtt_ms: Option<f64>,
}

/// A member as this node believes it.
struct Member {
    record: PeerRecord,
    /// The record as gossiped, signature included.
    signed: String,
    alive: bool,
    load: Option<PeerLoad>,
    gossip_address: SocketAddr,
    /// When its heartbeat last grew (ms since the epoch).
    last_heard_ms: Option<u64>,
}

/// What a node's record and load are made of, read afresh at each refresh.
struct RecordSource {
    identity: NodeIdentity,
    options: MeshOptions,
    plugins: Plugins,
    objects: ObjectStore,
    cpu_cores: u32,
    memory_bytes: u64,
}

impl RecordSource {
    fn new(
        identity: NodeIdentity,
        options: MeshOptions,
        plugins: Plugins,
        objects: ObjectStore,
    ) -> Self {
        Self {
            identity,
            options,
            plugins,
            objects,
            cpu_cores: std::thread::available_parallelism()
                .map_or(1, |cores| u32::try_from(cores.get()).unwrap_or(u32::MAX)),
            memory_bytes: machine_memory_bytes().unwrap_or(0),
        }
    }

    /// This node's record and load as they are now.
    fn current(&self) -> (PeerRecord, LoadRecord) {
        let now = crate::clock::now_ms();
        let statuses = self.plugins.statuses();
        let load = LoadRecord {
            node_id: self.identity.id(),
            seq: now,
            load: PeerLoad {
                plugins: statuses
                    .iter()
                    .map(|plugin| {
                        let load = PluginLoad {
                            in_flight: plugin.in_flight,
                            queued: plugin.queued,
                        };
                        (plugin.name.clone(), load)
                    })
                    .collect(),
            },
        };
        let (capacity_bytes, used_bytes) = self.objects.capacity();
        let record = PeerRecord {
            node_id: self.identity.id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            grpc_address: self.options.advertise.into(),
            http_address: self.options.http_address.to_string(),
            labels: self.options.labels.clone(),
            plugins: statuses
                .into_iter()
                .map(|status| record::peer_plugin(status.into()))
                .collect(),
            prices: self.options.prices.clone(),
            capacity: PeerCapacity {
                cpu_cores: self.cpu_cores,
                memory_bytes: self.memory_bytes,
                disk_bytes: capacity_bytes,
                free_disk_bytes: capacity_bytes.saturating_sub(used_bytes),
            },
            seq: now,
            expires_at_ms: now + RECORD_TTL.as_millis() as u64,
        };
        (record, load)
    }
}

/// The machine's memory, from `/proc/meminfo` (Linux).
fn machine_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_member_unheard_of_too_long_is_suspect_and_a_dead_one_dead() {
        assert_eq!(peer_state(true, Some(100), 4_000), PeerState::Alive);
        assert_eq!(peer_state(true, None, 4_000), PeerState::Alive);
        assert_eq!(peer_state(true, Some(4_001), 4_000), PeerState::Suspect);
        assert_eq!(peer_state(false, Some(100), 4_000), PeerState::Dead);
    }
}

//! The REST API's requests and answers: what the handlers in [`crate::http`] read and write, what
//! the CLI's client ([`crate::client`]) sends and reads back, and what the OpenAPI document at
//! `GET /openapi.json` is generated from.
//!
//! Amounts of wei are decimal strings (they can exceed 64 bits); times are RFC 3339 strings or
//! milliseconds since the Unix epoch, as each field says.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub use crate::config::Prices;
pub use crate::error::ErrorCode;
pub use crate::files::recovery::RecoveryReport;
pub use crate::payments::payer::ChannelPhase;
pub use crate::plugin::limits::{Enforcement, LimitsApplied};
pub use crate::plugin::registry::{PluginStatus, SlotHealth};

/// The body of every failed request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorAnswer {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong: a stable code for scripts, a message for people, and facts for scripts next
/// to them (for example `plugins` with `plugin_not_found`, `retry_after_seconds` with
/// `overloaded`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// What went wrong, for scripts.
    pub code: ErrorCode,
    /// What went wrong, for people, and how to fix it where possible.
    pub message: String,
    /// Facts beyond the code.
    #[serde(flatten)]
    #[schema(additional_properties)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// `POST /task`: a task to run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct TaskRequest {
    /// Where to run the task: a node, or what the node must offer. Absent: this node when it
    /// serves the plugin, else the node the scheduler chooses among the mesh's members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TaskTarget>,
    /// Name of the plugin to run the task; the target's default plugin when absent or empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The requester's identifier for the task, echoed back; a random one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The input as text; give this or `input_base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// The input as base64, for binary inputs; give this or `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_base64: Option<String>,
    /// Deadline in milliseconds, capped by `grpc.task_timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub timeout_ms: Option<u64>,
    /// Run the task on several nodes and accept the output `k` of them sign alike (for plugins
    /// that declare themselves deterministic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyRequest>,
}

/// How many nodes must agree on a verified task's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Nodes that must sign the same output (at least 2).
    #[schema(minimum = 2, maximum = 16)]
    pub k: u32,
    /// The most nodes asked, when some disagree (at least `k`, at most 16; `k` + 1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 2, maximum = 16)]
    pub n: Option<u32>,
}

/// Where a background task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Accepted, waiting for one of `tasks.max_running` places.
    Queued,
    /// Being run (on this node or another).
    Running,
    /// Ran: the output is there.
    Succeeded,
    /// Did not run, or failed: the error says why.
    Failed,
}

impl TaskState {
    /// Whether the task is over.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// `POST /tasks`: a background task accepted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskAccepted {
    /// The task's identifier, for `GET /tasks/{id}`.
    pub id: String,
    /// `queued`.
    pub state: TaskState,
}

/// `GET /tasks/{id}`: a background task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskStatus {
    /// The task's identifier.
    pub id: String,
    /// Where it stands.
    pub state: TaskState,
    /// The plugin asked for (absent: the default), or the one that ran it once it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The node that ran it (its node ID), once it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When it was accepted (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When it started (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// When it finished (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// The output as text, when it succeeded and the output is UTF-8 (not in lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The output as base64, when it succeeded and the output is not UTF-8 (not in lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_base64: Option<String>,
    /// With `verify`: the nodes that signed the output, `node` first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verified_by: Vec<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// `GET /tasks`: background tasks, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    /// The tasks, without their outputs.
    pub tasks: Vec<TaskStatus>,
}

/// `GET /tasks` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TaskListQuery {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Where a task runs: a node the requester names, or what the node must offer.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum TaskTarget {
    /// A node's gRPC address (`host:port`), its node ID (`0x…`, found through the mesh), or both
    /// (`0xID@host:port`: only that node may answer there).
    Node(String),
    /// What the node must offer; the scheduler chooses among the nodes that do, and tries the
    /// next when one fails before running the task.
    Selector(TargetSelector),
}

impl<'de> Deserialize<'de> for TaskTarget {
    // By hand rather than `untagged`, whose error ("did not match any variant") says nothing.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(text) => Ok(Self::Node(text)),
            selector @ serde_json::Value::Object(_) => TargetSelector::deserialize(selector)
                .map(Self::Selector)
                .map_err(D::Error::custom),
            _ => Err(D::Error::custom(
                "expected a node (\"host:port\" or \"0x…\") or a selector object",
            )),
        }
    }
}

/// What the node that runs a task must offer. Every field is optional; `{}` lets the scheduler
/// choose among every node that serves the plugin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSelector {
    /// Labels the node must carry, each with this value (`{"region": "eu"}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The most to pay for the task, in wei (a decimal string); nodes that charge more are
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price_wei: Option<String>,
    /// Node IDs (`0x…`) never to use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Versions of the plugin that will do, as a semver requirement (`"^1.2"`, `"=1.0.3"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_version: Option<String>,
}

/// `POST /task`: a finished task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskAnswer {
    /// The task's identifier.
    pub id: String,
    /// The output as text, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The output as base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_base64: Option<String>,
    /// Name of the plugin that ran the task.
    pub plugin: String,
    /// The node that ran it: its node ID, as its authenticated link proved (this node's own for
    /// a task without `target`).
    pub node: String,
    /// With `verify`: the nodes that signed this output, `node` first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verified_by: Vec<String>,
    /// With `verify`: the nodes that signed another output (they are scored down).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disagreed: Vec<String>,
}

/// `POST /file`: a small file to store, sent whole as base64.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct StoreFileRequest {
    /// gRPC address of the one provider to store the file on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1)]
    pub target: Option<String>,
    /// gRPC addresses of the providers to store the file on, one replica each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1)]
    pub targets: Option<Vec<String>>,
    /// How many providers the node picks among its peers, when none are named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 64)]
    pub replicas: Option<u32>,
    /// Labels each provider the node picks must carry (`{"region": "eu"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Name of the file; need not be unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(required = true, value_type = String)]
    pub name: Option<String>,
    /// Contents, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(required = true, value_type = String, content_encoding = "base64")]
    pub data: Option<String>,
}

/// `GET /file` with a JSON body: which file to read back.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ReadFileRequest {
    /// Provider to read from first; by default the file's replicas in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1)]
    pub target: Option<String>,
    /// The file's ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(required = true, value_type = String)]
    pub id: Option<String>,
}

/// The query of `PUT /files/{name}`: where the file goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StoreQuery {
    /// Provider to store on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(min_length = 1)]
    pub target: Option<String>,
    /// Providers to store on, comma-separated, one replica each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(min_length = 1)]
    pub targets: Option<String>,
    /// How many providers the node picks among its peers, when none are named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 64)]
    pub replicas: Option<u32>,
    /// Labels each provider the node picks must carry, comma-separated `key:value` pairs
    /// (`region:eu,tier:ssd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(min_length = 1)]
    pub labels: Option<String>,
}

/// The query of the routes that read a file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// Provider to read from first; by default the file's replicas in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(min_length = 1)]
    pub target: Option<String>,
}

/// `POST /files/recover`: providers to ask besides the configured peers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RecoverFilesRequest {
    /// gRPC addresses of providers to ask besides the configured peers.
    #[serde(default)]
    pub providers: Vec<String>,
}

/// How a file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileHealth {
    /// As many healthy replicas as wanted.
    Ok,
    /// Fewer, or some failing their audits; repair is under way.
    Degraded,
    /// No replica left that is not lost: reads answer 410 `file_lost`.
    Lost,
}

/// How one copy of a file stands, from its audits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaHealth {
    /// Not audited yet.
    Unaudited,
    /// The last audit passed.
    Ok,
    /// Audits fail, within the grace period (`storage.lost_after_ms`).
    Failing,
    /// Audits failed past the grace period; the copy is replaced.
    Lost,
}

/// A replica as the owner sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReplicaInfo {
    /// The provider's gRPC address.
    pub target: String,
    /// The provider's node ID.
    pub provider_id: String,
    /// What the audits found.
    pub health: ReplicaHealth,
    /// When the last audit ended (RFC 3339).
    pub last_audit: Option<String>,
    /// Why the last audit failed.
    pub last_audit_error: Option<String>,
    /// Until when the copy is paid for (RFC 3339), when the provider charges for storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_until: Option<String>,
}

/// A stored file.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileInfo {
    /// The file's ID.
    pub id: String,
    /// The name it was stored under.
    pub name: String,
    /// Size of the plaintext in bytes.
    pub size: u64,
    /// When it was stored (RFC 3339).
    pub created_at: String,
    /// Address of the first provider holding the file.
    pub target: String,
    /// Node ID of that provider.
    pub provider_id: String,
    /// How the file stands.
    pub health: FileHealth,
    /// Replicas the file should have.
    pub replicas_wanted: u32,
    /// Every provider holding the file, with what the audits found.
    pub replicas: Vec<ReplicaInfo>,
    /// Labels every provider of the file must carry, as stored with it; repair keeps to them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Contents, base64; only in the answers of `GET /file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// `GET /files`: the owner's files, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileList {
    /// The files.
    pub files: Vec<FileInfo>,
}

/// `DELETE /files/{id}`: the file deleted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeletedFile {
    /// The file's ID.
    pub id: String,
    /// Always true: the file is gone from every replica.
    pub deleted: bool,
}

/// `GET /storage`: the space this node offers other nodes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StorageAnswer {
    /// Bytes offered (`storage.capacity_bytes`).
    pub capacity_bytes: u64,
    /// Bytes used by other nodes' objects.
    pub used_bytes: u64,
    /// Bytes used per owner's node ID.
    pub owners: BTreeMap<String, u64>,
}

/// Whether the node serves fully.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeHealth {
    /// Every plugin serves.
    Ok,
    /// Some plugin does not; the node still stores files and runs the healthy plugins' tasks.
    Degraded,
}

/// `GET /health`: the node's identity and its plugins' health.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthAnswer {
    /// Whether the node serves fully.
    pub status: NodeHealth,
    /// The node's ID: the Ethereum address of its key.
    pub node_id: String,
    /// The node software's version.
    pub version: String,
    /// Each plugin's health.
    pub plugins: Vec<PluginHealth>,
}

/// A plugin's health, as `GET /health` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PluginHealth {
    /// The plugin's name.
    pub name: String,
    /// Its health.
    pub health: SlotHealth,
}

/// `GET /node`: who and where the node is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeAnswer {
    /// The node's ID: the Ethereum address of its key.
    pub node_id: String,
    /// The node software's version.
    pub version: String,
    /// When the node started (RFC 3339).
    pub started_at: String,
    /// Seconds since it started.
    pub uptime_seconds: u64,
    /// Where other nodes reach its gRPC services.
    pub grpc_address: String,
    /// Where its REST API listens.
    pub http_address: String,
    /// Whether REST requests need the bearer token.
    pub token_required: bool,
    /// Whether payments are on.
    pub payments_enabled: bool,
    /// The operator's labels of this node (`labels`, `--label key=value`).
    pub labels: BTreeMap<String, String>,
}

/// `GET /plugins`: the node's plugins.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PluginList {
    /// Every plugin with its description, health, load and counters.
    pub plugins: Vec<PluginStatus>,
}

/// `GET /peers`: the nodes this node knows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PeerList {
    /// The members of the mesh, from their signed records, and configured peers outside it,
    /// ordered by gRPC address.
    pub peers: Vec<PeerInfo>,
}

/// Where a peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// Gossiping (or, outside the mesh, answering).
    Alive,
    /// Still counted alive, but unheard of for `mesh.failure_timeout_ms` less one gossip
    /// interval: about to be declared dead.
    Suspect,
    /// Silent past `mesh.failure_timeout_ms` (or, outside the mesh, not answering): it gets no
    /// work.
    Dead,
}

/// How this node knows a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeerSource {
    /// A member of the mesh: what it says comes from its signed record.
    Mesh,
    /// A configured peer (`peers`) outside the mesh: what it says comes from asking it
    /// (`NodeService.GetInfo`) over an authenticated link.
    Configured,
}

/// A peer: a member of the mesh as its signed records say, or a configured peer as it answered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PeerInfo {
    /// Its node ID (the Ethereum address of its key); absent for a configured peer that never
    /// answered.
    pub id: Option<String>,
    /// Where it stands.
    pub state: PeerState,
    /// How this node knows it.
    pub source: PeerSource,
    /// Where it listens.
    pub addresses: PeerAddresses,
    /// Its software version.
    pub version: Option<String>,
    /// Its operator's labels.
    pub labels: BTreeMap<String, String>,
    /// The plugins it offers.
    pub plugins: Vec<PeerPlugin>,
    /// Whether it takes payments (and so wants a voucher with each task).
    pub payments: Option<bool>,
    /// What it charges, when it takes payments and its record says.
    pub prices: Option<Prices>,
    /// What it offers.
    pub capacity: Option<PeerCapacity>,
    /// Tasks it runs and queues now, per plugin (signed apart from the record, and republished
    /// as it changes, at most once per gossip interval).
    pub load: Option<PeerLoad>,
    /// Milliseconds since this node last heard of it (its gossip heartbeat last grew, or,
    /// outside the mesh, it last answered).
    pub last_seen_ms: Option<u64>,
    /// Round-trip time in milliseconds: of gossip with it (a smoothed average), or, outside the
    /// mesh, of its `GetInfo` answer.
    pub rtt_ms: Option<f64>,
    /// Why it did not answer (configured peers).
    pub error: Option<ErrorDetail>,
    /// How this node's own tasks there went, once it sent some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standing: Option<PeerStanding>,
}

/// How the tasks this node sent a peer went (the scheduler weighs it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PeerStanding {
    /// Tasks this node has running or waiting there now.
    pub in_flight: u32,
    /// Recent outcomes, from 0 (all failed, or signed an output other nodes disagreed with) to 1
    /// (all succeeded).
    pub success: f64,
}

/// Where a peer listens.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PeerAddresses {
    /// Its gRPC address: what `target` takes, with or without `0xID@` before it.
    pub grpc: String,
    /// Its REST API, as its record says.
    pub http: Option<String>,
    /// Where it gossips.
    pub gossip: Option<String>,
}

/// A plugin a peer offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeerPlugin {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// MIME type of the input it expects.
    pub input_content_type: String,
    /// MIME type of the output it returns.
    pub output_content_type: String,
    /// Whether the same input always gives the same output.
    pub deterministic: bool,
    /// Whether running a task twice does no harm.
    pub idempotent: bool,
    /// Whether it takes tasks now.
    pub serving: bool,
    /// Whether it runs the tasks that name no plugin.
    #[serde(default)]
    pub default: bool,
    /// Most tasks it runs at once (0: not said).
    #[serde(default)]
    pub max_concurrency: u32,
    /// Most tasks it keeps waiting beyond those (0: not said, or none).
    #[serde(default)]
    pub queue_size: u32,
}

/// What a peer offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeerCapacity {
    /// CPU cores of its machine.
    pub cpu_cores: u32,
    /// Memory of its machine, in bytes.
    pub memory_bytes: u64,
    /// Bytes of disk it offers other nodes (`storage.capacity_bytes`).
    pub disk_bytes: u64,
    /// Bytes of that still free.
    pub free_disk_bytes: u64,
}

/// What a peer runs now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeerLoad {
    /// Per plugin name.
    pub plugins: BTreeMap<String, PluginLoad>,
}

/// Tasks of one plugin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PluginLoad {
    /// Running.
    pub in_flight: u32,
    /// Waiting for a free slot.
    pub queued: u32,
}

/// `GET /payments`: the node's payments. With payments off, only `enabled` (false).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PaymentsAnswer {
    /// Whether payments are on.
    pub enabled: bool,
    /// The chain's ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<u64>,
    /// Address of the payment contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// Seconds between a close request and the refund.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge_period_seconds: Option<u64>,
    /// This node's account: its node ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The account's balance, in wei.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_wei: Option<String>,
    /// What this node charges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<Prices>,
    /// Wei this node spent on work that succeeded, over its channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent_wei: Option<String>,
    /// Wei this node earned as a provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earned_wei: Option<String>,
    /// Wei of its earnings redeemed on chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redeemed_wei: Option<String>,
    /// Wei earned and not yet redeemed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_wei: Option<String>,
    /// Channels this node pays through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels_out: Option<Vec<ChannelInfo>>,
    /// Channels that pay this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels_in: Option<Vec<IncomingChannelInfo>>,
}

/// A channel this node pays through.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelInfo {
    /// The channel's ID (32 bytes, 0x-prefixed hex).
    pub channel_id: String,
    /// The provider it pays: its node ID.
    pub provider: String,
    /// Where the channel stands.
    pub phase: ChannelPhase,
    /// Wei deposited in all.
    pub deposit_wei: String,
    /// Wei spent on work that succeeded.
    pub spent_wei: String,
    /// The largest cumulative amount signed in a voucher.
    pub signed_wei: String,
    /// Wei of the deposit not yet promised.
    pub remaining_wei: String,
    /// When it was opened, in milliseconds since the Unix epoch.
    pub opened_at_ms: u64,
    /// Wei refunded at close.
    pub refunded_wei: Option<String>,
}

/// A channel after a transaction that changed it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelChange {
    /// The channel as it is now.
    #[serde(flatten)]
    pub channel: ChannelInfo,
    /// The transaction.
    pub transaction: TransactionInfo,
}

/// A mined transaction.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransactionInfo {
    /// Its hash.
    pub tx: String,
    /// Gas it used.
    pub gas_used: u64,
    /// What it cost, in wei.
    pub fee_wei: String,
}

/// `POST /channels/recover`: the channels found again on the chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecoveredChannels {
    /// The channels.
    pub recovered: Vec<ChannelInfo>,
}

/// A channel that pays this node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IncomingChannelInfo {
    /// The channel's ID.
    pub channel_id: String,
    /// Who pays: the requester's node ID.
    pub requester: String,
    /// The deposit, as last read from the chain.
    pub deposit_wei: String,
    /// Wei charged for work done.
    pub earned_wei: String,
    /// The largest voucher received: what the requester promised in all, work done and paid
    /// ahead (redemptions claim only what was earned).
    pub best_voucher_wei: String,
    /// The largest amount redeemed on chain.
    pub redeemed_wei: String,
    /// Wei earned and not yet redeemed.
    pub pending_wei: String,
    /// The last redemption.
    pub last_redemption: Option<RedemptionInfo>,
}

/// A redemption this node made.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RedemptionInfo {
    /// When it was mined, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The cumulative amount redeemed.
    pub amount_wei: String,
    /// What it paid: the amount minus what was redeemed before.
    pub paid_wei: String,
    /// The transaction's hash.
    pub tx: String,
    /// Gas it used.
    pub gas_used: u64,
}

/// `POST /payments/redeem`: what was redeemed and what failed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RedeemAnswer {
    /// Channels redeemed.
    pub redeemed: Vec<ChannelRedemption>,
    /// Channels whose redemption failed.
    pub failed: Vec<FailedRedemption>,
}

/// A channel's redemption.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelRedemption {
    /// The channel.
    pub channel_id: String,
    /// The redemption.
    #[serde(flatten)]
    pub redemption: RedemptionInfo,
}

/// A channel whose redemption failed, and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FailedRedemption {
    /// The channel.
    pub channel_id: String,
    /// Why, for scripts.
    pub code: ErrorCode,
    /// Why, for people.
    pub message: String,
}

/// An amount: wei as a number, or a string with a unit (`"0.01eth"`, `"5gwei"`, `"1000wei"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Amount {
    /// Whole wei; integral numbers written with an exponent (`1e18`) too, up to 2^53.
    Wei(serde_json::Number),
    /// Wei, gwei or eth with a unit.
    Text(String),
}

impl utoipa::PartialSchema for Amount {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .description(Some(
                "Wei as a whole number (up to 2^53), or a string with a unit: \"0.01eth\", \"5gwei\", \"1000wei\", \"1000\"",
            ))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^\s*[0-9]*\.?[0-9]+\s*([wW][eE][iI]|[gG][wW][eE][iI]|[eE][tT][hH]([eE][rR])?)?\s*$")),
            )
            .into()
    }
}

impl ToSchema for Amount {}

/// `POST /channels`: a channel to open, to a provider named by its address or its node ID.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenChannelRequest {
    /// gRPC address of the provider's node; its node ID is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1)]
    pub target: Option<String>,
    /// The provider's node ID, when no target is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^0x[0-9a-fA-F]{40}$")]
    pub provider: Option<String>,
    /// The deposit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(required = true, value_type = Amount)]
    pub deposit: Option<Amount>,
}

/// `POST /channels/{id}/topup`: an amount to add to a channel's deposit.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUpRequest {
    /// The amount to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(required = true, value_type = Amount)]
    pub amount: Option<Amount>,
}

//! Node configuration: embedded defaults, then an optional JSON file, then `SPHERE_*`
//! environment variables, then command-line flags, each overriding the one before.
//!
//! Every field is documented in `docs/configuration.md`; `config-example.json` at the top of the
//! repository holds every field with its default, and a test keeps the two in step with
//! [`Config::default`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::connections::ConnectionLimits;

/// Prefix of the environment variables that override configuration fields. Nested fields are
/// separated by a double underscore: `SPHERE_HTTP__LISTEN=0.0.0.0:3000` sets `http.listen`.
pub const ENV_PREFIX: &str = "SPHERE";

/// Smallest and largest accepted `storage.chunk_size_bytes`.
const CHUNK_SIZE_RANGE: std::ops::RangeInclusive<u64> = 4 * 1024..=16 * 1024 * 1024;

/// Everything a node needs to know to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding the node's LevelDB, stored chunks and (by default) its key.
    pub data_dir: PathBuf,
    /// File holding the node's secp256k1 key. `None` means `<data_dir>/node.key`, created at
    /// first start; a configured file must already exist (see `sphere keygen`).
    pub key_file: Option<PathBuf>,
    /// Log filter in `tracing` syntax, for example `info` or `sphere_node=debug,info`.
    pub log: String,
    /// Longest time in-flight requests get to finish after SIGINT or SIGTERM.
    pub shutdown_grace_ms: u64,
    /// The node-to-node gRPC server and client.
    pub grpc: GrpcConfig,
    /// The REST API.
    pub http: HttpConfig,
    /// The plugins that run this node's tasks.
    pub plugins: PluginsConfig,
    /// Files this node stores on others and objects it stores for others.
    pub storage: StorageConfig,
    /// gRPC addresses of other nodes this node may store files on (until discovery exists).
    pub peers: Vec<String>,
    /// Membership: how this node finds the others and is found.
    pub mesh: MeshConfig,
    /// Key/value facts the operator gives about this node (`region: eu`, `gpu: a100`), for
    /// requesters to choose by. Keys: lowercase letters, digits, `-` and `_`.
    pub labels: BTreeMap<String, String>,
    /// Payments through the Sphere payment contract; off by default.
    pub payments: PaymentsConfig,
    /// Background tasks (`POST /tasks`).
    pub tasks: TasksConfig,
}

/// Background tasks (`tasks.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TasksConfig {
    /// Most background tasks running at once; more wait, `queued`.
    pub max_running: u32,
    /// Most background tasks kept; past it the oldest finished ones are forgotten, and a new
    /// task is refused while every kept one is unfinished.
    pub max_kept: u32,
    /// Most bytes the kept records may take (inputs of unfinished tasks, outputs of finished
    /// ones); past it, as past `max_kept`.
    pub max_kept_bytes: u64,
    /// How long a finished task's record (and output) is kept.
    pub keep_results_ms: u64,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            max_running: 64,
            max_kept: 10_000,
            max_kept_bytes: 1 << 30,
            keep_results_ms: 86_400_000,
        }
    }
}

/// The node-to-node gRPC server and the client this node uses to reach other nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Address the gRPC server listens on. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// How long connecting to another node may take before it counts as unreachable.
    pub connect_timeout_ms: u64,
    /// Deadline for a whole task run on another node, plugin included.
    pub task_timeout_ms: u64,
    /// Limits on the connections other nodes (and strangers) open to this one.
    pub connections: ConnectionLimits,
    /// Most requests in flight at once on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
    /// Which clients may call without a TLS link (grpcurl, tests): `loopback` (the default),
    /// `never`, or `anywhere`. Nodes always call each other over authenticated TLS.
    pub plaintext: crate::link::Plaintext,
}

/// The REST API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address the REST API listens on. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Largest accepted JSON request body (`POST /task`, `POST /file`); larger ones get 413.
    /// Streaming uploads (`PUT /files/{name}`) have no such limit.
    pub max_json_body_bytes: u64,
    /// Limits on the connections clients open to the REST API.
    pub connections: ConnectionLimits,
    /// Bearer token every route but `GET /health` requires. Unset: the node writes a random one
    /// to `<data_dir>/api.token` and requires it when `listen` is not a loopback address.
    pub token: Option<String>,
}

/// The plugins that run this node's tasks, and how the node watches them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Name of the plugin that runs tasks naming none; `None` means the first entry.
    pub default: Option<String>,
    /// How often each plugin's gRPC health service is asked whether it is serving.
    pub health_interval_ms: u64,
    /// Longest wait before restarting a managed plugin that keeps dying (the wait doubles from
    /// 200 ms after each quick death).
    pub restart_backoff_max_ms: u64,
    /// How long a managed plugin may fail every health check (hung, or saying NOT_SERVING)
    /// before the node stops it (SIGTERM, then SIGKILL) and starts it again. External plugins
    /// are only taken out of rotation.
    pub unhealthy_restart_ms: u64,
    /// The plugins. `None` runs the built-in demo plugin ("hello"); an empty list runs none
    /// (a storage-only node).
    pub entries: Option<Vec<PluginConfig>>,
}

/// One plugin: either an `address` someone else runs, or a `command` the node runs itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginConfig {
    /// The name requesters use. Required for a managed plugin; for an `address`, `None` takes the
    /// name the plugin gives in `Describe`. When set, `Describe` must give the same name, or the
    /// plugin is refused.
    pub name: Option<String>,
    /// gRPC address of a plugin someone else runs, for example `http://127.0.0.1:50051`.
    pub address: Option<String>,
    /// Program the node starts, watches, restarts and stops (a managed plugin).
    pub command: Option<String>,
    /// Arguments of `command`.
    pub args: Vec<String>,
    /// Extra environment variables for `command`.
    pub env: BTreeMap<String, String>,
    /// Working directory of `command`; `None` is the node's.
    pub working_dir: Option<PathBuf>,
    /// Most tasks run at once (lowered to what the plugin's `Describe` allows).
    pub max_concurrency: u32,
    /// Most tasks waiting for a free slot; beyond that requests get 429 with `Retry-After`.
    pub queue_size: u32,
    /// Longest time one task may take, queueing included; a request's `timeout_ms` can only
    /// shorten it.
    pub timeout_ms: u64,
    /// Largest task input accepted (413 beyond).
    pub max_input_bytes: u64,
    /// Largest task output accepted from the plugin (413 beyond).
    pub max_output_bytes: u64,
    /// Memory limit of a managed plugin process; `None` is unlimited. See docs/configuration.md
    /// for how it is enforced.
    pub memory_limit_bytes: Option<u64>,
    /// CPU limit of a managed plugin in percent of one core (cgroup v2 only); `None` is unlimited.
    pub cpu_limit_percent: Option<u32>,
}

impl PluginConfig {
    /// Returns the entry for a plugin someone else runs at `address`, with default limits.
    pub fn external(address: String) -> Self {
        Self {
            address: Some(address),
            ..Self::default()
        }
    }

    /// Returns the entry for the built-in demo plugin, run as `program demo-plugin`.
    pub fn builtin_demo(program: String) -> Self {
        Self {
            name: Some("hello".to_owned()),
            command: Some(program),
            args: vec!["demo-plugin".to_owned()],
            ..Self::default()
        }
    }

    /// Returns the name to show before the plugin has described itself.
    pub fn display_name(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("plugin-{index}"))
    }
}

/// Membership by gossip (`mesh.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshConfig {
    /// Whether this node gossips with others. Off: it knows only its `peers`.
    pub enabled: bool,
    /// Addresses (`host:port`) of members to join through; the configured `peers` are used too.
    pub bootstrap: Vec<String>,
    /// UDP address to gossip on; by default the gRPC listener's address and port number.
    pub listen: Option<SocketAddr>,
    /// The address (`ip:port`, or `host:port` resolved at start) other nodes should use for
    /// gossip and gRPC (behind NAT, in containers); by default the gRPC listener's address.
    pub advertise: Option<String>,
    /// How often this node gossips with a few others.
    pub gossip_interval_ms: u64,
    /// How long without news before a member is marked dead and gets no work.
    pub failure_timeout_ms: u64,
    /// How long a dead member is remembered before it is forgotten.
    pub forget_dead_after_ms: u64,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bootstrap: Vec::new(),
            listen: None,
            advertise: None,
            gossip_interval_ms: 1_000,
            failure_timeout_ms: 5_000,
            forget_dead_after_ms: 3_600_000,
        }
    }
}

/// The payments settings (`payments.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsConfig {
    /// Whether this node pays and gets paid. Off: no chain is needed.
    pub enabled: bool,
    /// JSON-RPC endpoint of the chain, for example `http://127.0.0.1:8545`.
    pub rpc_url: Option<String>,
    /// The chain's ID; the node refuses an endpoint serving another chain.
    pub chain_id: Option<u64>,
    /// Address of the payment contract (`sphere payments deploy` prints it).
    pub contract: Option<String>,
    /// What this node charges.
    pub prices: Prices,
    /// Length of one paid storage period, in seconds: an upload pays for the first period, a
    /// renewal for each next one.
    pub storage_period_seconds: u64,
    /// Unredeemed wei on a channel that make the provider redeem at once.
    pub redeem_threshold_wei: u64,
    /// Longest time a received voucher waits before it is redeemed, in milliseconds.
    pub redeem_interval_ms: u64,
    /// How long a channel's state read from the chain is used for checking vouchers, in
    /// milliseconds.
    pub channel_cache_ms: u64,
    /// Longest wait for one answer of the chain's endpoint, connecting included, in
    /// milliseconds.
    pub rpc_timeout_ms: u64,
    /// How many tasks one voucher pays ahead, as a requester: a voucher is signed (and checked
    /// by the provider) once per this many tasks. A provider that took the money and stopped
    /// working could keep at most this many tasks' price; an honest one redeems only the work
    /// it did.
    pub prepaid_tasks: u64,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            rpc_url: None,
            chain_id: None,
            contract: None,
            prices: Prices::default(),
            storage_period_seconds: 86_400,
            redeem_threshold_wei: 10_000_000_000_000_000,
            redeem_interval_ms: 3_600_000,
            channel_cache_ms: 5_000,
            rpc_timeout_ms: 30_000,
            prepaid_tasks: 32,
        }
    }
}

/// What a provider charges, in wei.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Prices {
    /// Price of one task on a plugin without a price of its own.
    pub task_wei: u64,
    /// Price of one task per plugin name.
    pub task_wei_by_plugin: BTreeMap<String, u64>,
    /// Price of storing one GiB for one day.
    pub storage_gib_day_wei: u64,
    /// Price of reading one GiB back.
    pub read_gib_wei: u64,
}

impl Prices {
    /// Price of one task on `plugin`.
    pub fn task_wei_on(&self, plugin: &str) -> u64 {
        *self
            .task_wei_by_plugin
            .get(plugin)
            .unwrap_or(&self.task_wei)
    }
}

impl Default for Prices {
    fn default() -> Self {
        Self {
            task_wei: 1_000_000_000_000,
            task_wei_by_plugin: BTreeMap::new(),
            storage_gib_day_wei: 10_000_000_000_000,
            read_gib_wei: 1_000_000_000_000,
        }
    }
}

/// Files this node stores on others and objects it stores for others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Plaintext bytes per encrypted chunk of a file this node stores on others.
    pub chunk_size_bytes: u64,
    /// Replicas of a file when a request names neither `targets` nor `replicas`.
    pub replicas: u32,
    /// Bytes this node offers to store for others.
    pub capacity_bytes: u64,
    /// How often this node audits every replica of its files.
    pub audit_interval_ms: u64,
    /// How long a replica may fail audits (or not answer) before it counts as lost and is
    /// repaired.
    pub lost_after_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("sphere-data"),
            key_file: None,
            log: "info".to_owned(),
            shutdown_grace_ms: 10_000,
            grpc: GrpcConfig::default(),
            http: HttpConfig::default(),
            plugins: PluginsConfig::default(),
            storage: StorageConfig::default(),
            peers: Vec::new(),
            labels: BTreeMap::new(),
            mesh: MeshConfig::default(),
            payments: PaymentsConfig::default(),
            tasks: TasksConfig::default(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            connect_timeout_ms: 3_000,
            task_timeout_ms: 30_000,
            connections: ConnectionLimits::default(),
            max_streams_per_connection: 256,
            plaintext: crate::link::Plaintext::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            max_json_body_bytes: 16 * 1024 * 1024,
            connections: ConnectionLimits::default(),
            token: None,
        }
    }
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            default: None,
            health_interval_ms: 1_000,
            restart_backoff_max_ms: 10_000,
            unhealthy_restart_ms: 30_000,
            entries: None,
        }
    }
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            name: None,
            address: None,
            command: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            max_concurrency: 16,
            queue_size: 64,
            timeout_ms: 30_000,
            max_input_bytes: 16 * 1024 * 1024,
            max_output_bytes: 16 * 1024 * 1024,
            memory_limit_bytes: None,
            cpu_limit_percent: None,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            chunk_size_bytes: 1024 * 1024,
            replicas: 2,
            capacity_bytes: 100 * 1024 * 1024 * 1024,
            audit_interval_ms: 10 * 60 * 1000,
            lost_after_ms: 60 * 60 * 1000,
        }
    }
}

/// A configuration that cannot be used; the message names the field and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, an environment variable or a flag could not be read or has the wrong type.
    #[error("invalid configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// The configuration file cannot be read, is not JSON or has a field the node does not know.
    #[error("invalid configuration file {}: {problem}", file.display())]
    File {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A field has a value of the right type that the node cannot use.
    #[error("invalid configuration: field `{field}` {problem}")]
    Invalid {
        /// Dotted path of the field, for example `storage.chunk_size_bytes`.
        field: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
}

impl Config {
    /// Loads the configuration from the embedded defaults, then `file` (JSON) if given, then the
    /// `SPHERE_*` variables of `environment`, then `overrides` (dotted field path to value, from
    /// command-line flags), and checks it.
    pub fn load(
        file: Option<&Path>,
        environment: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            check_file_fields(file)?;
            builder = builder.add_source(
                config::File::from(file)
                    .format(config::FileFormat::Json)
                    .required(true),
            );
        }
        let environment: HashMap<String, String> = environment
            .into_iter()
            .filter(|(name, _)| is_config_variable(name) && field_of_variable(name).is_some())
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                // `SPHERE_PEERS=a:8081,b:8081` sets the list `peers`.
                .list_separator(",")
                .with_list_parse_key("peers")
                .with_list_parse_key("mesh.bootstrap")
                .source(Some(environment)),
        );
        for (field, value) in overrides {
            builder = builder.set_override(field.as_str(), value.as_str())?;
        }
        let config: Config = builder.build()?.try_deserialize()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that have the right type but that the node cannot use.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |field: &'static str, value: u64| {
            if value == 0 {
                Err(ConfigError::Invalid {
                    field,
                    problem: "must be greater than 0".to_owned(),
                })
            } else {
                Ok(())
            }
        };
        positive("shutdown_grace_ms", self.shutdown_grace_ms)?;
        positive("grpc.connect_timeout_ms", self.grpc.connect_timeout_ms)?;
        positive("grpc.task_timeout_ms", self.grpc.task_timeout_ms)?;
        positive("tasks.max_running", u64::from(self.tasks.max_running))?;
        positive("tasks.max_kept", u64::from(self.tasks.max_kept))?;
        positive("tasks.max_kept_bytes", self.tasks.max_kept_bytes)?;
        positive("tasks.keep_results_ms", self.tasks.keep_results_ms)?;
        positive("http.max_json_body_bytes", self.http.max_json_body_bytes)?;
        positive("payments.prepaid_tasks", self.payments.prepaid_tasks)?;
        positive("payments.rpc_timeout_ms", self.payments.rpc_timeout_ms)?;
        for (field, limits) in [
            ("grpc.connections", &self.grpc.connections),
            ("http.connections", &self.http.connections),
        ] {
            for (name, value) in [
                ("max", u64::from(limits.max)),
                ("max_pending", u64::from(limits.max_pending)),
                ("handshake_timeout_ms", limits.handshake_timeout_ms),
                ("idle_timeout_ms", limits.idle_timeout_ms),
            ] {
                if value == 0 {
                    return Err(ConfigError::Invalid {
                        field,
                        problem: format!("has `{name}` 0; it must be greater than 0"),
                    });
                }
            }
        }
        if let Some(token) = &self.http.token
            && (token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(ConfigError::Invalid {
                field: "http.token",
                problem: "must be at least 16 characters, without spaces".to_owned(),
            });
        }
        positive(
            "grpc.max_streams_per_connection",
            u64::from(self.grpc.max_streams_per_connection),
        )?;
        positive(
            "plugins.health_interval_ms",
            self.plugins.health_interval_ms,
        )?;
        positive("storage.replicas", u64::from(self.storage.replicas))?;
        positive("storage.audit_interval_ms", self.storage.audit_interval_ms)?;
        positive("storage.lost_after_ms", self.storage.lost_after_ms)?;
        for peer in &self.peers {
            crate::address::target_uri(peer).map_err(|error| ConfigError::Invalid {
                field: "peers",
                problem: format!("holds {peer:?}: {}", error.message),
            })?;
        }
        positive(
            "plugins.restart_backoff_max_ms",
            self.plugins.restart_backoff_max_ms,
        )?;
        positive(
            "plugins.unhealthy_restart_ms",
            self.plugins.unhealthy_restart_ms,
        )?;
        self.validate_plugins()?;
        validate_labels(&self.labels)?;
        positive("mesh.gossip_interval_ms", self.mesh.gossip_interval_ms)?;
        positive("mesh.forget_dead_after_ms", self.mesh.forget_dead_after_ms)?;
        if self.mesh.failure_timeout_ms < 2 * self.mesh.gossip_interval_ms {
            return Err(ConfigError::Invalid {
                field: "mesh.failure_timeout_ms",
                problem: "must be at least twice `mesh.gossip_interval_ms`".to_owned(),
            });
        }
        for seed in &self.mesh.bootstrap {
            crate::address::target_uri(seed).map_err(|error| ConfigError::Invalid {
                field: "mesh.bootstrap",
                problem: format!("holds {seed:?}: {}", error.message),
            })?;
        }
        if !CHUNK_SIZE_RANGE.contains(&self.storage.chunk_size_bytes) {
            return Err(ConfigError::Invalid {
                field: "storage.chunk_size_bytes",
                problem: format!(
                    "must be between {} and {}, got {}",
                    CHUNK_SIZE_RANGE.start(),
                    CHUNK_SIZE_RANGE.end(),
                    self.storage.chunk_size_bytes
                ),
            });
        }
        if self.log.trim().is_empty() {
            return Err(ConfigError::Invalid {
                field: "log",
                problem: "must not be empty (try \"info\")".to_owned(),
            });
        }
        Ok(())
    }

    fn validate_plugins(&self) -> Result<(), ConfigError> {
        let invalid =
            |field: &'static str, problem: String| ConfigError::Invalid { field, problem };
        let entries = self.plugins.entries.as_deref().unwrap_or_default();
        let mut names = std::collections::HashSet::new();
        for (index, entry) in entries.iter().enumerate() {
            let which = format!("entry {index} ({})", entry.display_name(index));
            match (&entry.address, &entry.command) {
                (Some(address), None) => {
                    address
                        .parse::<tonic::transport::Uri>()
                        .ok()
                        .filter(|uri| uri.scheme_str() == Some("http") && uri.host().is_some())
                        .ok_or_else(|| {
                            invalid(
                                "plugins.entries[].address",
                                format!("of {which} must be an http:// URI such as http://127.0.0.1:50051, got {address:?}"),
                            )
                        })?;
                }
                (None, Some(_)) if entry.name.is_none() => {
                    return Err(invalid(
                        "plugins.entries[].name",
                        format!("of {which} is required with `command`"),
                    ));
                }
                (None, Some(_)) => {}
                _ => {
                    return Err(invalid(
                        "plugins.entries[]",
                        format!(
                            "{which} needs exactly one of `address` (a plugin someone else runs) or `command` (one the node runs)"
                        ),
                    ));
                }
            }
            if let Some(name) = &entry.name
                && (name.is_empty() || !names.insert(name.clone()))
            {
                return Err(invalid(
                    "plugins.entries[].name",
                    format!("of {which} must be non-empty and unique"),
                ));
            }
            let positive = [
                (
                    "plugins.entries[].max_concurrency",
                    u64::from(entry.max_concurrency),
                ),
                ("plugins.entries[].timeout_ms", entry.timeout_ms),
                ("plugins.entries[].max_input_bytes", entry.max_input_bytes),
                ("plugins.entries[].max_output_bytes", entry.max_output_bytes),
            ];
            for (field, value) in positive {
                if value == 0 {
                    return Err(invalid(field, format!("of {which} must be greater than 0")));
                }
            }
            if entry.cpu_limit_percent == Some(0) || entry.memory_limit_bytes == Some(0) {
                return Err(invalid(
                    "plugins.entries[].memory_limit_bytes",
                    format!("and cpu_limit_percent of {which} must be greater than 0 when set"),
                ));
            }
        }
        if let Some(default) = &self.plugins.default
            && !entries
                .iter()
                .any(|entry| entry.name.as_ref() == Some(default))
        {
            return Err(invalid(
                "plugins.default",
                format!(
                    "names {default:?}, which is not the `name` of any entry in plugins.entries"
                ),
            ));
        }
        Ok(())
    }

    /// Returns the plugins to run: the configured entries, or the built-in demo plugin run as
    /// `demo_program demo-plugin` when none are configured.
    pub fn plugin_entries(&self, demo_program: impl FnOnce() -> String) -> Vec<PluginConfig> {
        match &self.plugins.entries {
            Some(entries) => entries.clone(),
            None => vec![PluginConfig::builtin_demo(demo_program())],
        }
    }

    /// Replaces the plugins with one that someone else runs at `address` (the `--plugin-address`
    /// flag).
    pub fn use_plugin_address(&mut self, address: String) -> Result<(), ConfigError> {
        self.plugins.entries = Some(vec![PluginConfig::external(address)]);
        self.plugins.default = None;
        self.validate()
    }

    /// Returns the file that holds the node key, and whether it may be created when missing.
    pub fn key_file(&self) -> (PathBuf, bool) {
        match &self.key_file {
            Some(path) => (path.clone(), false),
            None => (self.data_dir.join("node.key"), true),
        }
    }

    /// Returns the grace period for shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// Returns whether an environment variable is a configuration override. Variables of the plugin
/// start-up handshake share the prefix but belong to plugins, not to the node.
/// Most characters in a label's key and in its value.
const LABEL_KEY_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 255;

/// Refuses labels others could not match on or that would disguise themselves when shown.
fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= LABEL_KEY_MAX
            && key
                .bytes()
                .all(|byte| matches!(byte, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_'));
        if !key_ok {
            return Err(ConfigError::Invalid {
                field: "labels",
                problem: format!(
                    "has the key {key:?}; keys are 1 to {LABEL_KEY_MAX} lowercase letters, digits, `-` or `_`"
                ),
            });
        }
        if value.is_empty()
            || value.chars().count() > LABEL_VALUE_MAX
            || value.chars().any(char::is_control)
        {
            return Err(ConfigError::Invalid {
                field: "labels",
                problem: format!(
                    "has {key}={value:?}; values are 1 to {LABEL_VALUE_MAX} characters without control characters"
                ),
            });
        }
    }
    Ok(())
}

/// Parses a `--label key=value` flag into the field it sets and its value.
pub fn label_override(flag: &str) -> Result<(String, String), String> {
    key_value(flag).map(|(key, value)| (format!("labels.{key}"), value))
}

/// Parses `key=value` from the command line (the key trimmed, the value as given).
pub fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("--label {text:?} is not key=value")),
    }
}

/// Fields that are maps with names of the operator's choosing: any name below them is valid.
const OPEN_MAPS: [&str; 2] = ["labels", "payments.prices.task_wei_by_plugin"];

fn is_config_variable(name: &str) -> bool {
    name.starts_with(&format!("{ENV_PREFIX}_")) && !name.starts_with("SPHERE_PLUGIN_")
}

/// Returns the dotted configuration field a `SPHERE_*` variable sets, or `None` when no field
/// has that name.
fn field_of_variable(name: &str) -> Option<String> {
    let path: Vec<String> = name
        .strip_prefix(&format!("{ENV_PREFIX}_"))?
        .split("__")
        .map(str::to_lowercase)
        .collect();
    let dotted = path.join(".");
    if OPEN_MAPS
        .iter()
        .any(|map| dotted.starts_with(&format!("{map}.")))
    {
        return Some(dotted);
    }
    let defaults = serde_json::to_value(Config::default()).expect("defaults serialise");
    let mut value = &defaults;
    for segment in &path {
        match value {
            serde_json::Value::Object(fields) => value = fields.get(segment)?,
            // Inside a list, a map or an unset optional section, any name may be valid.
            _ => break,
        }
    }
    Some(path.join("."))
}

/// Returns the `SPHERE_*` variables of `environment` that set no configuration field (deployments
/// often set others, such as `SPHERE_ENV=prod`): the node ignores them and warns.
pub fn unknown_variables(environment: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut unknown: Vec<String> = environment
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| is_config_variable(name) && field_of_variable(name).is_none())
        .collect();
    unknown.sort();
    unknown
}

/// Refuses a configuration file with a field the node does not know, naming the file and the
/// field's dotted path (a misspelt field must not be silently ignored).
fn check_file_fields(file: &Path) -> Result<(), ConfigError> {
    let invalid = |problem: String| ConfigError::File {
        file: file.to_owned(),
        problem,
    };
    let text = std::fs::read_to_string(file).map_err(|error| invalid(error.to_string()))?;
    let mut deserializer = serde_json::Deserializer::from_str(&text);
    let Err(error) = serde_path_to_error::deserialize::<_, Config>(&mut deserializer) else {
        return Ok(());
    };
    let path = error.path().to_string();
    let problem = error.into_inner();
    Err(invalid(if path == "." {
        problem.to_string()
    } else {
        format!("field `{path}`: {problem}")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config-example.json")
    }

    #[test]
    fn example_file_holds_every_default() {
        let loaded = Config::load(Some(&example_path()), [], &[]).expect("example loads");
        assert_eq!(loaded, Config::default());
        let example: serde_json::Value =
            serde_json::from_slice(&std::fs::read(example_path()).expect("example readable"))
                .expect("example is JSON");
        let defaults = serde_json::to_value(Config::default()).expect("defaults serialise");
        assert_eq!(
            example, defaults,
            "config-example.json must list every field with its default"
        );
    }

    #[test]
    fn environment_overrides_file_and_flags_override_environment() {
        let environment = [
            ("SPHERE_HTTP__LISTEN".to_owned(), "0.0.0.0:4000".to_owned()),
            ("SPHERE_GRPC__TASK_TIMEOUT_MS".to_owned(), "1234".to_owned()),
            ("SPHERE_PLUGIN_LISTEN".to_owned(), "ignored".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let environment = environment.into_iter().chain([(
            "SPHERE_PEERS".to_owned(),
            "node2:8081,node3:8081".to_owned(),
        )]);
        let overrides = [("grpc.task_timeout_ms".to_owned(), "99".to_owned())];
        let config =
            Config::load(Some(&example_path()), environment, &overrides).expect("config loads");
        assert_eq!(config.http.listen, "0.0.0.0:4000".parse().expect("address"));
        assert_eq!(config.grpc.task_timeout_ms, 99);
        assert_eq!(config.peers, ["node2:8081", "node3:8081"]);
    }

    #[test]
    fn wrong_type_names_the_field() {
        let environment = [(
            "SPHERE_HTTP__MAX_JSON_BODY_BYTES".to_owned(),
            "lots".to_owned(),
        )];
        let error = Config::load(None, environment, &[]).expect_err("must refuse");
        assert!(
            error.to_string().contains("http.max_json_body_bytes"),
            "{error}"
        );
    }

    #[test]
    fn unknown_variables_are_named_and_ignored() {
        let environment = vec![
            ("SPHERE_ENV".to_owned(), "prod".to_owned()),
            ("SPHERE_HTTP__LISTN".to_owned(), "x".to_owned()),
            ("SPHERE_HTTP__LISTEN".to_owned(), "0.0.0.0:4000".to_owned()),
            (
                "SPHERE_PAYMENTS__RPC_URL".to_owned(),
                "http://chain:8545".to_owned(),
            ),
            ("SPHERE_PLUGIN_LISTEN".to_owned(), "ignored".to_owned()),
        ];
        assert_eq!(
            unknown_variables(environment.clone()),
            ["SPHERE_ENV", "SPHERE_HTTP__LISTN"]
        );
        let config = Config::load(None, environment, &[]).expect("unknown variables are ignored");
        assert_eq!(config.http.listen, "0.0.0.0:4000".parse().expect("address"));
    }

    #[test]
    fn bounds_and_limits_of_zero_are_refused_naming_the_field() {
        for field in [
            "shutdown_grace_ms",
            "grpc.connect_timeout_ms",
            "grpc.task_timeout_ms",
            "tasks.max_running",
            "tasks.max_kept",
            "tasks.max_kept_bytes",
            "tasks.keep_results_ms",
            "http.max_json_body_bytes",
            "payments.prepaid_tasks",
            "payments.rpc_timeout_ms",
        ] {
            let variable = format!("SPHERE_{}", field.to_uppercase().replace('.', "__"));
            let error = Config::load(None, [(variable, "0".to_owned())], &[])
                .expect_err("0 must be refused");
            assert!(error.to_string().contains(field), "{field}: {error}");
        }
    }

    #[test]
    fn an_unknown_field_in_the_file_is_refused_naming_file_and_field() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("node.json");
        std::fs::write(&file, r#"{"http": {"listn": "0.0.0.0:3000"}}"#).expect("write");
        let error = Config::load(Some(&file), [], &[]).expect_err("must refuse");
        let message = error.to_string();
        assert!(
            message.contains("node.json") && message.contains("http") && message.contains("listn"),
            "{message}"
        );
    }

    #[test]
    fn plugin_entries_are_checked() {
        let mut config = Config::default();
        assert!(
            config
                .use_plugin_address("http://127.0.0.1:1".to_owned())
                .is_ok()
        );
        let error = config
            .use_plugin_address("127.0.0.1:1".to_owned())
            .expect_err("scheme required");
        assert!(
            error.to_string().contains("plugins.entries[].address"),
            "{error}"
        );

        let mut both = PluginConfig::external("http://127.0.0.1:1".to_owned());
        both.command = Some("x".to_owned());
        config.plugins.entries = Some(vec![both]);
        assert!(config.validate().is_err(), "address and command together");

        let nameless_command = PluginConfig {
            command: Some("x".to_owned()),
            ..PluginConfig::default()
        };
        config.plugins.entries = Some(vec![nameless_command]);
        let error = config.validate().expect_err("name required");
        assert!(
            error.to_string().contains("plugins.entries[].name"),
            "{error}"
        );

        let demo = PluginConfig::builtin_demo("sphere".to_owned());
        config.plugins.entries = Some(vec![demo.clone(), demo]);
        assert!(config.validate().is_err(), "duplicate names");
    }

    #[test]
    fn the_multi_plugin_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/config-plugins.json");
        let config = Config::load(Some(&path), [], &[]).expect("example loads");
        let entries = config.plugins.entries.expect("entries");
        assert!(entries.len() >= 3);
    }

    #[test]
    fn labels_come_from_the_file_the_environment_and_flags_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("node.json");
        std::fs::write(&file, r#"{"labels": {"region": "eu", "tier": "gold"}}"#).expect("write");
        let environment = [("SPHERE_LABELS__GPU".to_owned(), "a100".to_owned())];
        let flag = label_override("tier=silver").expect("key=value");
        assert_eq!(unknown_variables(environment.clone()), Vec::<String>::new());
        let config = Config::load(Some(&file), environment, &[flag]).expect("loads");
        let labels: Vec<(&str, &str)> = config
            .labels
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        assert_eq!(
            labels,
            [("gpu", "a100"), ("region", "eu"), ("tier", "silver")]
        );

        assert!(label_override("no-equals-sign").is_err());
        for (key, value) in [
            ("Region", "eu"),
            ("region", ""),
            ("a b", "x"),
            ("k", "bad\u{1b}[2J"),
        ] {
            let error = Config::load(None, [], &[(format!("labels.{key}"), value.to_owned())])
                .expect_err("must refuse");
            assert!(error.to_string().contains("labels"), "{key}: {error}");
        }
    }

    #[test]
    fn unusable_values_name_the_field() {
        let cases = [
            ("storage.chunk_size_bytes", "12"),
            ("plugins.default", "nobody"),
            ("grpc.task_timeout_ms", "0"),
        ];
        for (field, value) in cases {
            let error = Config::load(None, [], &[(field.to_owned(), value.to_owned())])
                .expect_err("must refuse");
            assert!(error.to_string().contains(field), "{field}: {error}");
        }
    }
}

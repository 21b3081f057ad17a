//! A running node: binding, start-up order and shutdown.
//!
//! Tasks of a running node:
//! - the gRPC server (node-to-node services), until the shutdown token is cancelled;
//! - the HTTP server (REST API), until the shutdown token is cancelled;
//! - per plugin, a health watcher and, for a managed plugin, a supervisor (see [`crate::plugin`]);
//! - the audit and repair rounds of this node's files ([`crate::files::maintenance`]);
//! - with payments on, the redemption of received vouchers ([`crate::payments::payee`]).
//!
//! [`Node::shutdown`] stops the servers and lets in-flight requests finish within the grace
//! period, redeems every unredeemed voucher, then stops the plugins (managed processes get
//! SIGTERM), then closes the database.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::address::NodeAddress;
use crate::config::Config;
use crate::connections::{self, GuardedListener};
use crate::context::{NodeContext, NodeParts};
use crate::files::{FileOptions, Files};
use crate::grpc::ProviderStorage;
use crate::http::access::ApiAccess;
use crate::identity::{IdentityError, NodeIdentity};
use crate::link::LinkKeys;
use crate::payments::{Payments, PaymentsError};
use crate::peers::Peers;
use crate::plugin::Plugins;
use crate::plugin::supervisor::{self, SupervisorOptions};
use crate::scheduler::records::TaskRecords;
use crate::storage::StorageError;
use crate::storage::chunks::ChunkStore;
use crate::storage::db::Db;
use crate::storage::files::FileIndex;
use crate::storage::objects::ObjectStore;

/// Longest time start-up waits for plugins to come up before the node reports ready anyway
/// (plugins that come up later join then).
const PLUGIN_START_WAIT: Duration = Duration::from_secs(15);
/// Longest time shutdown waits for the last redemptions.
const FINAL_REDEMPTION_WAIT: Duration = Duration::from_secs(30);

/// Why a node could not start. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The node key could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The data directory or the database could not be opened.
    #[error("could not open the data directory {path}: {source}")]
    Storage {
        /// The data directory.
        path: PathBuf,
        /// Why.
        source: StorageError,
    },
    /// The REST API's token file could not be read or written.
    #[error("could not read or create the REST API token {}: {source}", path.display())]
    ApiToken {
        /// The token file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Payments are on but the chain or the contract is not usable.
    #[error(transparent)]
    Payments(#[from] PaymentsError),
    /// The path of the running program is unknown, so the demo plugin cannot be started.
    #[error("could not find the sphere program to run the demo plugin: {0}")]
    DemoPlugin(std::io::Error),
    /// A listener could not be bound.
    #[error(
        "could not listen on {address} (`{field}`): {source}; choose another address with {flag}"
    )]
    Bind {
        /// The configuration field naming the address.
        field: &'static str,
        /// The command-line flag that sets it.
        flag: &'static str,
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// `mesh.advertise` names a host that does not resolve.
    #[error("`mesh.advertise` {address:?} does not resolve to an address: {reason}")]
    Advertise {
        /// The address as configured.
        address: String,
        /// Why.
        reason: String,
    },
    /// Gossip could not start (its UDP address is taken, say).
    #[error("could not join the mesh on UDP {address} (`mesh.listen`): {reason}")]
    Mesh {
        /// The gossip address.
        address: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    identity: NodeIdentity,
    grpc_address: SocketAddr,
    http_address: SocketAddr,
    plugins: Plugins,
    shutdown_token: CancellationToken,
    servers: TaskTracker,
    plugins_shutdown_token: CancellationToken,
    plugin_tasks: TaskTracker,
    db: Db,
    payments: Option<Payments>,
    shutdown_grace: Duration,
}

impl Node {
    /// Starts a node: identity, storage, plugin, then the gRPC and HTTP servers.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let started_at = std::time::SystemTime::now();
        crate::metrics::install();
        let (key_file, create_key) = config.key_file();
        let (identity, key_created) = NodeIdentity::load_or_create(&key_file, create_key)?;
        if key_created {
            tracing::info!(key_file = %key_file.display(), "created a new node key");
        }

        let storage_error = |source| StartError::Storage {
            path: config.data_dir.clone(),
            source,
        };
        let db = Db::open(&config.data_dir.join("db")).map_err(storage_error)?;
        let chunks = ChunkStore::open(&config.data_dir.join("chunks")).map_err(storage_error)?;
        let api_access =
            ApiAccess::for_config(&config.http, &config.data_dir).map_err(|source| {
                StartError::ApiToken {
                    path: config.data_dir.join(crate::http::access::TOKEN_FILE),
                    source,
                }
            })?;
        if api_access.is_required() {
            tracing::info!(
                "the REST API requires the bearer token (http.token, or {} in the data directory)",
                crate::http::access::TOKEN_FILE
            );
        }

        let demo_program = match &config.plugins.entries {
            Some(_) => String::new(),
            None => std::env::current_exe()
                .map_err(StartError::DemoPlugin)?
                .to_string_lossy()
                .into_owned(),
        };
        let plugins = Plugins::new(
            config.plugin_entries(|| demo_program),
            config.plugins.default.as_deref(),
        );
        let plugins_shutdown_token = CancellationToken::new();
        let plugin_tasks = TaskTracker::new();
        supervisor::start(
            &plugins,
            SupervisorOptions {
                health_interval: Duration::from_millis(config.plugins.health_interval_ms),
                restart_backoff_max: Duration::from_millis(config.plugins.restart_backoff_max_ms),
                unhealthy_restart: Duration::from_millis(config.plugins.unhealthy_restart_ms),
            },
            &plugins_shutdown_token,
            &plugin_tasks,
        );
        plugin_tasks.close();
        supervisor::settled(&plugins, PLUGIN_START_WAIT).await;

        let grpc_listener = bind(config.grpc.listen, "grpc.listen", "--grpc-listen").await?;
        let http_listener = bind(config.http.listen, "http.listen", "--http-listen").await?;
        let grpc_address = local_address(&grpc_listener, config.grpc.listen);
        let http_address = local_address(&http_listener, config.http.listen);
        let mut grpc_limits = config.grpc.connections.clone();
        let mut http_limits = config.http.connections.clone();
        if let Some(file_limit) = connections::raise_file_limit() {
            connections::fit_to_file_limit(&mut grpc_limits, "grpc.connections", file_limit);
            connections::fit_to_file_limit(&mut http_limits, "http.connections", file_limit);
        }
        let grpc_listener = GuardedListener::new(grpc_listener, "grpc", grpc_limits);
        let http_listener = GuardedListener::new(http_listener, "http", http_limits);
        let max_streams = config.grpc.max_streams_per_connection;

        let objects = ObjectStore::open(db.clone(), chunks, config.storage.capacity_bytes)
            .await
            .map_err(storage_error)?;
        let link_keys = LinkKeys::new(&identity);
        let peers = Peers::new(
            link_keys.clone(),
            Duration::from_millis(config.grpc.connect_timeout_ms),
        );
        let payments = Payments::start(&config.payments, &identity, &db, &peers).await?;
        let provider = ProviderStorage::new(identity.node_id(), objects.clone(), payments.clone());
        let configured_peers: Vec<NodeAddress> = config
            .peers
            .iter()
            .map(|peer| {
                peer.parse()
                    .expect("peers are checked when the configuration loads")
            })
            .collect();
        let standings = crate::scheduler::standings::Standings::default();
        let files = Files::new(
            FileIndex::new(db.clone()),
            peers.clone(),
            identity.clone(),
            payments.as_ref().map(|payments| payments.payer.clone()),
            FileOptions {
                chunk_size: usize::try_from(config.storage.chunk_size_bytes)
                    .expect("validated to a few MiB"),
                default_replicas: config.storage.replicas,
                providers: configured_peers.clone(),
                audit_interval: Duration::from_millis(config.storage.audit_interval_ms),
                lost_after: Duration::from_millis(config.storage.lost_after_ms),
            },
            standings.clone(),
        );
        let shutdown_token = CancellationToken::new();
        let servers = TaskTracker::new();
        let mesh = if config.mesh.enabled {
            let listen = config.mesh.listen.unwrap_or(grpc_address);
            let advertise = match &config.mesh.advertise {
                Some(text) => resolve_advertised(text).await?,
                None if grpc_address.ip().is_unspecified() => {
                    let loopback = SocketAddr::from(([127, 0, 0, 1], grpc_address.port()));
                    tracing::warn!(%loopback, "gRPC listens on every address and mesh.advertise is not set: other nodes are told {loopback}, which only this machine reaches");
                    loopback
                }
                None => grpc_address,
            };
            let options = crate::mesh::MeshOptions {
                config: config.mesh.clone(),
                listen,
                advertise,
                extra_seeds: configured_peers.clone(),
                http_address,
                labels: config.labels.clone(),
                prices: payments.is_some().then(|| config.payments.prices.clone()),
            };
            let mesh = crate::mesh::Mesh::start(
                options,
                identity.clone(),
                plugins.clone(),
                objects.clone(),
                db.clone(),
                &servers,
                shutdown_token.clone(),
            )
            .await
            .map_err(|error| StartError::Mesh {
                address: listen,
                reason: format!("{error:#}"),
            })?;
            peers.use_mesh(mesh.clone());
            Some(mesh)
        } else {
            None
        };
        let context = NodeContext::new(NodeParts {
            identity: identity.clone(),
            plugins: plugins.clone(),
            peers: peers.clone(),
            files: files.clone(),
            objects: objects.clone(),
            payments: payments.clone(),
            task_timeout: Duration::from_millis(config.grpc.task_timeout_ms),
            max_json_body_bytes: usize::try_from(config.http.max_json_body_bytes)
                .unwrap_or(usize::MAX),
            api_access,
            started_at,
            grpc_address,
            http_address,
            labels: config.labels.clone(),
            mesh,
            standings,
            tasks: TaskRecords::open(db.clone(), config.tasks.clone())
                .await
                .map_err(storage_error)?,
        });

        let grpc_links = crate::link::incoming(
            grpc_listener,
            &link_keys,
            config.grpc.plaintext,
            Duration::from_millis(config.grpc.connections.handshake_timeout_ms),
        );
        let grpc_shutdown = shutdown_token.clone().cancelled_owned();
        let grpc_context = context.clone();
        servers.spawn(async move {
            if let Err(error) = crate::grpc::serve(
                grpc_links,
                max_streams,
                grpc_context,
                provider,
                grpc_shutdown,
            )
            .await
            {
                tracing::error!(%error, "gRPC server failed");
            }
        });
        let background_context = context.clone();
        let left_queued = crate::scheduler::background::left_over(&context)
            .await
            .map_err(storage_error)?;
        let http_shutdown = shutdown_token.clone().cancelled_owned();
        servers.spawn(async move {
            if let Err(error) = crate::http::serve(http_listener, context, http_shutdown).await {
                tracing::error!(%error, "HTTP server failed");
            }
        });
        servers.spawn(
            objects
                .clone()
                .run_sweeps(started_at, shutdown_token.clone()),
        );
        servers.spawn(crate::files::maintenance::run(
            files,
            shutdown_token.clone(),
        ));
        if let Some(payments) = &payments {
            servers.spawn(payments.payee.clone().run(shutdown_token.clone()));
        }
        servers.spawn(crate::scheduler::background::forget_old_tasks(
            background_context.clone(),
            shutdown_token.clone(),
        ));
        // Tasks a previous run left are taken up once gossip has had a few rounds to find the
        // members they may need.
        let settle = if config.mesh.enabled {
            Duration::from_millis(config.mesh.gossip_interval_ms.saturating_mul(3))
        } else {
            Duration::ZERO
        };
        servers.spawn(async move {
            tokio::time::sleep(settle).await;
            crate::scheduler::background::resume(&background_context, left_queued).await;
        });
        servers.close();

        Ok(Self {
            identity,
            grpc_address,
            http_address,
            plugins,
            shutdown_token,
            servers,
            plugins_shutdown_token,
            plugin_tasks,
            db,
            payments,
            shutdown_grace: config.shutdown_grace(),
        })
    }

    /// Returns the node ID.
    pub fn node_id(&self) -> String {
        self.identity.node_id()
    }

    /// Returns the address the gRPC server listens on.
    pub fn grpc_address(&self) -> SocketAddr {
        self.grpc_address
    }

    /// Returns the address the REST API listens on.
    pub fn http_address(&self) -> SocketAddr {
        self.http_address
    }

    /// Returns the node's plugins.
    pub fn plugins(&self) -> &Plugins {
        &self.plugins
    }

    /// Stops the node: no new requests, in-flight ones finish (within the grace period), then the
    /// plugin process stops and the database closes.
    pub async fn shutdown(self) {
        self.shutdown_token.cancel();
        if tokio::time::timeout(self.shutdown_grace, self.servers.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace = ?self.shutdown_grace,
                "requests still running after the grace period are dropped"
            );
        }
        if let Some(payments) = &self.payments {
            if let Err(error) = payments.payer.flush().await {
                tracing::error!(%error, "could not store the payment channels' records");
            }
            match tokio::time::timeout(FINAL_REDEMPTION_WAIT, payments.payee.redeem_all()).await {
                Ok(outcomes) => crate::payments::payee::log_failures(&outcomes),
                Err(_) => tracing::warn!(
                    "the last redemptions did not finish in time; they are tried at the next start"
                ),
            }
        }
        self.plugins_shutdown_token.cancel();
        self.plugin_tasks.wait().await;
        if let Err(error) = self.db.close().await {
            tracing::error!(%error, "could not close the database cleanly");
        }
    }
}

async fn bind(
    address: SocketAddr,
    field: &'static str,
    flag: &'static str,
) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind {
            field,
            flag,
            address,
            source,
        })
}

fn local_address(listener: &TcpListener, configured: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(configured)
}

/// The address `mesh.advertise` names (`ip:port`, or `host:port` such as a container's service
/// name), resolved once at start: an IPv4 address when the host has one.
async fn resolve_advertised(text: &str) -> Result<SocketAddr, StartError> {
    let failure = |reason: String| StartError::Advertise {
        address: text.to_owned(),
        reason,
    };
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host(text)
        .await
        .map_err(|error| failure(error.to_string()))?
        .collect();
    addresses
        .iter()
        .find(|address| address.is_ipv4())
        .or(addresses.first())
        .copied()
        .ok_or_else(|| failure("no address".to_owned()))
}

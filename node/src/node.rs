//! A running node: binding, start-up order and shutdown.
//!
//! Tasks of a running node:
//! - the gRPC server (node-to-node services), until the shutdown token is cancelled;
//! - the HTTP server (REST API), until the shutdown token is cancelled;
//! - the plugin child process, when the node runs its own, with two tasks copying its output
//!   into the log.
//!
//! [`Node::shutdown`] cancels the token, lets in-flight requests finish within the grace period,
//! stops the plugin process, and closes the database.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::files::Files;
use crate::grpc::ProviderStorage;
use crate::identity::{IdentityError, NodeIdentity};
use crate::peers::Peers;
use crate::plugin::PluginClient;
use crate::plugin::process::{self, ManagedPlugin};
use crate::storage::StorageError;
use crate::storage::chunks::ChunkStore;
use crate::storage::db::Db;
use crate::storage::files::FileIndex;
use crate::storage::objects::ObjectIndex;

/// The subcommand of the `sphere` binary that runs the built-in demo plugin.
pub const DEMO_PLUGIN_SUBCOMMAND: &str = "demo-plugin";

/// What request handlers share: cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeContext {
    /// This node's key and ID.
    pub identity: NodeIdentity,
    /// The plugin that runs this node's tasks.
    pub plugin: PluginClient,
    /// Connections to other nodes.
    pub peers: Peers,
    /// The owner's file operations.
    pub files: Files,
    /// Longest deadline of a task sent to another node.
    pub task_timeout: Duration,
    /// Largest JSON request body.
    pub max_json_body_bytes: usize,
}

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
    /// The demo plugin could not be started.
    #[error(transparent)]
    Plugin(#[from] process::StartError),
    /// The plugin address is not usable.
    #[error("plugin.address: {0}")]
    PluginAddress(#[from] crate::plugin::PluginError),
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
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    identity: NodeIdentity,
    grpc_address: SocketAddr,
    http_address: SocketAddr,
    plugin_address: String,
    shutdown_token: CancellationToken,
    servers: TaskTracker,
    plugin_process: Option<ManagedPlugin>,
    db: Db,
    shutdown_grace: Duration,
}

impl Node {
    /// Starts a node: identity, storage, plugin, then the gRPC and HTTP servers.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
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

        let max_task_time = Duration::from_millis(config.plugin.timeout_ms);
        let (plugin, plugin_process) = match &config.plugin.address {
            Some(address) => (PluginClient::new(address, max_task_time)?, None),
            None => {
                let program =
                    std::env::current_exe().map_err(|source| process::StartError::Spawn {
                        program: "sphere".to_owned(),
                        source,
                    })?;
                let process = ManagedPlugin::start(
                    sphere_plugin_hello::NAME,
                    &program.to_string_lossy(),
                    &[DEMO_PLUGIN_SUBCOMMAND],
                )
                .await?;
                (
                    PluginClient::new(process.address(), max_task_time)?,
                    Some(process),
                )
            }
        };
        match plugin.describe().await {
            Ok(description) => tracing::info!(
                name = description.name,
                version = description.version,
                address = plugin.address(),
                "plugin ready"
            ),
            Err(error) => tracing::warn!(
                address = plugin.address(),
                %error,
                "plugin is not answering yet; tasks fail until it does"
            ),
        }

        let grpc_listener = bind(config.grpc.listen, "grpc.listen", "--grpc-listen").await?;
        let http_listener = bind(config.http.listen, "http.listen", "--http-listen").await?;
        let grpc_address = local_address(&grpc_listener, config.grpc.listen);
        let http_address = local_address(&http_listener, config.http.listen);

        let peers = Peers::new(Duration::from_millis(config.grpc.connect_timeout_ms));
        let context = NodeContext {
            identity: identity.clone(),
            plugin: plugin.clone(),
            peers: peers.clone(),
            files: Files::new(
                FileIndex::new(db.clone()),
                peers,
                usize::try_from(config.storage.chunk_size_bytes).expect("validated to a few MiB"),
            ),
            task_timeout: Duration::from_millis(config.grpc.task_timeout_ms),
            max_json_body_bytes: usize::try_from(config.http.max_json_body_bytes)
                .unwrap_or(usize::MAX),
        };
        let provider =
            ProviderStorage::new(identity.node_id(), chunks, ObjectIndex::new(db.clone()));

        let shutdown_token = CancellationToken::new();
        let servers = TaskTracker::new();
        let grpc_shutdown = shutdown_token.clone().cancelled_owned();
        let grpc_context = context.clone();
        servers.spawn(async move {
            if let Err(error) =
                crate::grpc::serve(grpc_listener, grpc_context, provider, grpc_shutdown).await
            {
                tracing::error!(%error, "gRPC server failed");
            }
        });
        let http_shutdown = shutdown_token.clone().cancelled_owned();
        servers.spawn(async move {
            if let Err(error) = crate::http::serve(http_listener, context, http_shutdown).await {
                tracing::error!(%error, "HTTP server failed");
            }
        });
        servers.close();

        Ok(Self {
            identity,
            grpc_address,
            http_address,
            plugin_address: plugin.address().to_owned(),
            shutdown_token,
            servers,
            plugin_process,
            db,
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

    /// Returns the address of the plugin in use.
    pub fn plugin_address(&self) -> &str {
        &self.plugin_address
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
        if let Some(plugin_process) = self.plugin_process {
            plugin_process.stop().await;
        }
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

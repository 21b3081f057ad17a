//! What the request handlers of both servers share: the node's parts, cheap to clone.
//!
//! Its own module so that the servers ([`crate::http`], [`crate::grpc`]) depend on it and
//! [`crate::node`], which starts them, depends on them, without a circle.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::files::Files;
use crate::http::access::ApiAccess;
use crate::identity::NodeIdentity;
use crate::payments::Payments;
use crate::peers::Peers;
use crate::plugin::Plugins;
use crate::storage::objects::ObjectStore;

/// What request handlers share, behind one `Arc`: every request clones it (axum's `State`),
/// and the parts inside (labels among them) are not all cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeContext(Arc<NodeParts>);

impl NodeContext {
    pub fn new(parts: NodeParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for NodeContext {
    type Target = NodeParts;

    fn deref(&self) -> &NodeParts {
        &self.0
    }
}

/// The node's parts that request handlers use.
#[derive(Debug)]
pub struct NodeParts {
    /// This node's key and ID.
    pub identity: NodeIdentity,
    /// The plugins that run this node's tasks.
    pub plugins: Plugins,
    /// Connections to other nodes.
    pub peers: Peers,
    /// The owner's file operations.
    pub files: Files,
    /// The objects this node stores for others.
    pub objects: ObjectStore,
    /// The payment contract, when payments are on.
    pub payments: Option<Payments>,
    /// Longest deadline of a task sent to another node.
    pub task_timeout: Duration,
    /// Largest JSON request body.
    pub max_json_body_bytes: usize,
    /// The bearer token the REST API requires, if any.
    pub api_access: ApiAccess,
    /// When the node started.
    pub started_at: std::time::SystemTime,
    /// Where the gRPC server listens.
    pub grpc_address: SocketAddr,
    /// Where the REST API listens.
    pub http_address: SocketAddr,
    /// The operator's labels of this node.
    pub labels: BTreeMap<String, String>,
    /// Membership in the mesh, when `mesh.enabled`.
    pub mesh: Option<crate::mesh::Mesh>,
    /// How the nodes this node sent tasks to are doing, for the scheduler.
    pub standings: crate::scheduler::standings::Standings,
    /// Background tasks' records.
    pub tasks: crate::scheduler::records::TaskRecords,
}

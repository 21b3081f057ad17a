//! Connections from this node to other nodes' gRPC services.
//!
//! A [`Target`] is where a node listens (its gRPC address, `127.0.0.1:8081`) and, when the
//! caller knows it, which node must answer there (`0xID@host:port`). Every connection is an
//! authenticated link ([`crate::link`]): the node at the other end proves its ID, and a target
//! that names a node refuses any other. Channels are made lazily, kept per target and shared by
//! every request to it; a channel whose peer restarted connects again on its next call. A peer
//! that does not answer at all is caught by the per-request deadline and by HTTP/2 keep-alive
//! pings.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lru::LruCache;
use sphere_proto::v1::node_service_client::NodeServiceClient;
use sphere_proto::v1::storage_service_client::StorageServiceClient;
use sphere_proto::v1::task_service_client::TaskServiceClient;
use sphere_proto::v1::{GetInfoRequest, GetInfoResponse};

pub use crate::address::NodeAddress;
use crate::channel::{Channel, KeepAlive};
use crate::error::{Error, ErrorCode};
use crate::identity::NodeId;
use crate::link::{LinkError, LinkKeys};
use crate::mesh::Mesh;

/// How often an idle connection to a peer is checked, and how long an answer may take.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most channels kept open to other nodes. Targets come from requests and from the mesh, whose
/// members come and go, so the least recently used beyond this is closed.
const MAX_CHANNELS: NonZeroUsize = NonZeroUsize::new(256).expect("not zero");
/// A channel unused for this long is closed when another target is first reached; its
/// connection would otherwise be kept alive with pings for good.
const CHANNEL_IDLE: Duration = Duration::from_secs(600);

/// Largest gRPC message this node accepts from a peer: a chunk of the largest allowed chunk size
/// plus framing.
pub const MAX_MESSAGE_BYTES: usize = 17 * 1024 * 1024;

/// A node to call: its gRPC address and, when known, the node that must answer there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    address: NodeAddress,
    node: Option<NodeId>,
}

impl Target {
    /// Whichever node listens at `address` (`host:port`, or `http://host:port`).
    pub fn at(address: &str) -> Result<Self, Error> {
        Ok(Self::anyone_at(address.parse()?))
    }

    /// Whichever node listens at `address`.
    pub fn anyone_at(address: NodeAddress) -> Self {
        Self {
            address,
            node: None,
        }
    }

    /// Node `node`, at `address`; another node there is refused.
    pub fn node_at(node: NodeId, address: NodeAddress) -> Self {
        Self {
            address,
            node: Some(node),
        }
    }

    /// The address.
    pub fn address(&self) -> &NodeAddress {
        &self.address
    }

    /// The node that must answer, if the caller named one.
    pub fn node(&self) -> Option<NodeId> {
        self.node
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.node {
            Some(node) => write!(formatter, "{node}@{}", self.address),
            None => write!(formatter, "{}", self.address),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = Error;

    /// `host:port`, `http://host:port` or `0xID@host:port`.
    fn from_str(text: &str) -> Result<Self, Error> {
        match text.trim().split_once('@') {
            Some((node, address)) => {
                let node = node
                    .parse()
                    .map_err(|error| Error::invalid_field("target", error))?;
                Ok(Self::node_at(node, address.parse()?))
            }
            None => Self::at(text),
        }
    }
}

/// One channel to a target, and the node its last link reached.
#[derive(Debug, Clone)]
struct PeerChannel {
    channel: Channel,
    reached: Arc<Mutex<Option<NodeId>>>,
}

/// A channel kept, and when it was last asked for.
#[derive(Debug)]
struct KeptChannel {
    peer: PeerChannel,
    last_used: Instant,
}

/// The channels to other nodes, one per target.
#[derive(Debug, Clone)]
pub struct Peers {
    /// Least recently used first.
    channels: Arc<Mutex<LruCache<Target, KeptChannel>>>,
    keys: LinkKeys,
    connect_timeout: Duration,
    /// Membership, once it started: where a node named by its ID alone is.
    mesh: Arc<OnceLock<Mesh>>,
}

impl Peers {
    /// Returns an empty pool whose links use `keys` and give up connecting after
    /// `connect_timeout`.
    pub fn new(keys: LinkKeys, connect_timeout: Duration) -> Self {
        Self {
            channels: Arc::new(Mutex::new(LruCache::new(MAX_CHANNELS))),
            keys,
            connect_timeout,
            mesh: Arc::default(),
        }
    }

    /// Lets targets be named by node ID alone, found among the members of `mesh`.
    pub fn use_mesh(&self, mesh: Mesh) {
        let _ = self.mesh.set(mesh);
    }

    /// Membership, when the mesh is on.
    pub fn mesh(&self) -> Option<&Mesh> {
        self.mesh.get()
    }

    /// Reads a target as a user writes it: `host:port`, `0xID@host:port`, or a node ID alone
    /// (a live member of the mesh).
    pub async fn resolve(&self, text: &str) -> Result<Target, Error> {
        let text = text.trim();
        if text.contains('@') || !text.starts_with("0x") {
            return text.parse();
        }
        let node: NodeId = text
            .parse()
            .map_err(|error| Error::invalid_field("target", error))?;
        let Some(mesh) = self.mesh.get() else {
            return Err(Error::invalid_field(
                "target",
                format!(
                    "{node} is a node ID, which needs the mesh (mesh.enabled): give 0xID@host:port"
                ),
            ));
        };
        match mesh.member(node).await {
            Some((address, true)) => Ok(Target::node_at(node, address)),
            Some((address, false)) => Err(Error::new(
                ErrorCode::TargetUnreachable,
                format!("node {node} (last at {address}) is dead in the mesh"),
            )),
            None => Err(Error::new(
                ErrorCode::TargetUnreachable,
                format!("no member of the mesh is node {node}"),
            )),
        }
    }

    /// Returns a task client for `target`.
    pub fn tasks(&self, target: &Target) -> TaskServiceClient<Channel> {
        TaskServiceClient::new(self.peer(target).channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Returns a node-information client for `target`.
    pub fn node(&self, target: &Target) -> NodeServiceClient<Channel> {
        NodeServiceClient::new(self.peer(target).channel)
    }

    /// Returns the node ID of the node at `target`: the one it names, else the one its link
    /// proved (linking first if need be).
    pub async fn node_id(&self, target: &Target) -> Result<NodeId, Error> {
        if let Some(node) = target.node {
            return Ok(node);
        }
        let reached = Arc::clone(&self.peer(target).reached);
        let known = *reached.lock().expect("lock is never poisoned");
        if let Some(node) = known {
            return Ok(node);
        }
        self.info(target).await?;
        let reached = *reached.lock().expect("lock is never poisoned");
        reached.ok_or_else(|| {
            Error::new(
                ErrorCode::TargetError,
                format!("target {target} answered without a link"),
            )
        })
    }

    /// Asks the node at `target` who it is.
    pub async fn info(&self, target: &Target) -> Result<GetInfoResponse, Error> {
        let mut request = tonic::Request::new(GetInfoRequest {});
        request.set_timeout(self.connect_timeout + KEEP_ALIVE_TIMEOUT);
        let info = self
            .node(target)
            .get_info(request)
            .await
            .map_err(|status| remote_error(&status, target))?
            .into_inner();
        Ok(info)
    }

    /// Returns a storage client for `target`.
    pub fn storage(&self, target: &Target) -> StorageServiceClient<Channel> {
        StorageServiceClient::new(self.peer(target).channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn peer(&self, target: &Target) -> PeerChannel {
        let mut channels = self
            .channels
            .lock()
            .expect("peer map lock is never poisoned");
        let now = Instant::now();
        if let Some(kept) = channels.get_mut(target) {
            kept.last_used = now;
            return kept.peer.clone();
        }
        // The idle ones are the least recently used. Calls under way hold clones of what is
        // closed here, and finish on them.
        while channels
            .peek_lru()
            .is_some_and(|(_, kept)| now.duration_since(kept.last_used) >= CHANNEL_IDLE)
        {
            channels.pop_lru();
        }
        let uri = target
            .address
            .uri()
            .parse()
            .expect("a target's URI was checked when it was made");
        let reached = Arc::new(Mutex::new(None));
        let channel = Channel::new(
            &uri,
            self.connect_timeout,
            Some(KeepAlive {
                interval: KEEP_ALIVE_INTERVAL,
                timeout: KEEP_ALIVE_TIMEOUT,
            }),
            self.keys.connector(target.node, Arc::clone(&reached)),
        )
        .expect("a target's URI names its host and port");
        let peer = PeerChannel { channel, reached };
        // Closes the least recently used when full.
        channels.push(
            target.clone(),
            KeptChannel {
                peer: peer.clone(),
                last_used: now,
            },
        );
        peer
    }
}

/// Interprets a gRPC status received from `target`. A status carrying a `sphere-error-code`
/// comes from a Sphere node and keeps its code and message; any other status means the call did
/// not get through to a node's handler: no link (an impostor is `target_mismatch`), no answer in
/// time, or a broken connection.
pub fn remote_error(status: &tonic::Status, target: impl std::fmt::Display) -> Error {
    if let Some(error) = Error::from_node_status(status) {
        return error;
    }
    if let Some(link_error) = link_error(status) {
        let code = match link_error {
            LinkError::Impostor { .. } => ErrorCode::TargetMismatch,
            _ => ErrorCode::TargetUnreachable,
        };
        return Error::new(code, format!("target {target}: {link_error}"));
    }
    match status.code() {
        code if crate::error::is_timeout(status) || code == tonic::Code::DeadlineExceeded => {
            Error::new(
                ErrorCode::TargetTimeout,
                format!("target {target} did not answer in time"),
            )
        }
        // Refused or broken connections: tonic reports them as UNAVAILABLE, or as CANCELLED or
        // UNKNOWN carrying the transport error that caused them.
        tonic::Code::Unavailable | tonic::Code::Cancelled => Error::new(
            ErrorCode::TargetUnreachable,
            format!("target {target} is unreachable: {}", with_causes(status)),
        ),
        tonic::Code::Unknown if std::error::Error::source(status).is_some() => Error::new(
            ErrorCode::TargetUnreachable,
            format!(
                "the connection to target {target} broke: {}",
                with_causes(status)
            ),
        ),
        other => Error::new(
            ErrorCode::TargetError,
            format!("target {target} answered {other:?}: {}", status.message()),
        ),
    }
}

/// Whether the call behind a failed `status` got a link to the node, so that it may have reached
/// the node's handler.
pub fn linked(status: &tonic::Status) -> bool {
    link_error(status).is_none()
}

/// The link failure behind a status, when the call never got a link to the node.
fn link_error(status: &tonic::Status) -> Option<&LinkError> {
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        if let Some(link_error) = error.downcast_ref::<LinkError>() {
            return Some(link_error);
        }
        cause = error.source();
    }
    None
}

/// Returns a status's message followed by the chain of errors that caused it.
fn with_causes(status: &tonic::Status) -> String {
    crate::error::followed_by_causes(
        status.message().to_owned(),
        std::error::Error::source(status),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn channels_kept_are_bounded_and_the_idle_and_least_recently_used_are_closed() {
        let identity = crate::identity::NodeIdentity::generate();
        let peers = Peers::new(LinkKeys::new(&identity), Duration::from_secs(1));
        let target = |index: usize| -> Target {
            format!("127.0.0.1:{}", 10_000 + index)
                .parse()
                .expect("target")
        };
        let kept = |target: &Target| peers.channels.lock().expect("lock").contains(target);
        let max = MAX_CHANNELS.get();
        for index in 0..max {
            peers.peer(&target(index));
        }
        // Asked for again, the first is no longer the least recently used: the second is.
        peers.peer(&target(0));
        peers.peer(&target(max));
        assert_eq!(peers.channels.lock().expect("lock").len(), max);
        assert!(kept(&target(0)));
        assert!(!kept(&target(1)));

        // Those unused for longer than the idle time are closed when another target comes, all
        // of them: the bound alone would close only one to make room.
        let long_ago = Instant::now()
            .checked_sub(CHANNEL_IDLE + Duration::from_secs(1))
            .expect("the clock is past that");
        for idle in [2, 3] {
            peers
                .channels
                .lock()
                .expect("lock")
                .peek_mut(&target(idle))
                .expect("kept")
                .last_used = long_ago;
        }
        peers.peer(&target(max + 1));
        assert!(!kept(&target(2)));
        assert!(!kept(&target(3)));
        assert!(kept(&target(4)));
        assert_eq!(peers.channels.lock().expect("lock").len(), max - 1);
    }

    #[test]
    fn targets_name_an_address_and_perhaps_a_node() {
        let node = crate::identity::NodeIdentity::generate().id();
        let named: Target = format!("{node}@127.0.0.1:8081").parse().expect("ok");
        assert_eq!(named.node(), Some(node));
        assert_eq!(named.address(), "127.0.0.1:8081");
        assert_eq!(named.to_string(), format!("{node}@127.0.0.1:8081"));
        let lower = format!("{}@127.0.0.1:8081", node.to_string().to_lowercase());
        assert_eq!(lower.parse::<Target>().expect("any case"), named);
        let anyone: Target = "http://127.0.0.1:8081".parse().expect("ok");
        assert_eq!(
            (anyone.node(), anyone.to_string()),
            (None, "127.0.0.1:8081".to_owned())
        );
        for bad in [
            "0x12@127.0.0.1:1",
            "@127.0.0.1:1",
            "0xzz@",
            "nobody@127.0.0.1:1",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plain_transport_statuses_blame_the_target() {
        let unreachable = tonic::Status::unavailable("connection refused");
        assert_eq!(
            remote_error(&unreachable, "t").code,
            ErrorCode::TargetUnreachable
        );
        let late = tonic::Status::deadline_exceeded("timeout");
        assert_eq!(remote_error(&late, "t").code, ErrorCode::TargetTimeout);
        let expired = tonic::Status::cancelled(tonic::TimeoutExpired(()).to_string());
        assert_eq!(remote_error(&expired, "t").code, ErrorCode::TargetTimeout);
        let broken = tonic::Status::cancelled("connection closed");
        assert_eq!(
            remote_error(&broken, "t").code,
            ErrorCode::TargetUnreachable
        );
    }
}

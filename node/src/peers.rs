//! Connections from this node to other nodes' gRPC services.
//!
//! A target is named by its gRPC address (`127.0.0.1:8081` or `http://host:8081`). Channels are
//! made lazily, kept per target and shared by every request to it; tonic reconnects a channel
//! whose peer restarted. A peer that does not answer at all is caught by the per-request deadline
//! and by HTTP/2 keep-alive pings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sphere_proto::v1::node_service_client::NodeServiceClient;
use sphere_proto::v1::storage_service_client::StorageServiceClient;
use sphere_proto::v1::task_service_client::TaskServiceClient;
use sphere_proto::v1::{GetInfoRequest, GetInfoResponse};
use tonic::transport::{Channel, Endpoint};

use crate::error::Error;

/// How often an idle connection to a peer is checked, and how long an answer may take.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest gRPC message this node accepts from a peer: a chunk of the largest allowed chunk size
/// plus framing.
pub const MAX_MESSAGE_BYTES: usize = 17 * 1024 * 1024;

/// How long the node ID a target gave is trusted before it is asked again (a target address may
/// come to be served by another node).
const NODE_ID_TTL: Duration = Duration::from_secs(60);

/// The channels to other nodes, one per target address.
#[derive(Debug, Clone)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// The node ID each target address last gave, and when.
    node_ids: Arc<Mutex<HashMap<String, (String, Instant)>>>,
    connect_timeout: Duration,
}

impl Peers {
    /// Returns an empty pool whose connections give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            channels: Arc::default(),
            node_ids: Arc::default(),
            connect_timeout,
        }
    }

    /// Returns a task client for `target`.
    pub fn tasks(&self, target: &str) -> Result<TaskServiceClient<Channel>, Error> {
        Ok(TaskServiceClient::new(self.channel(target)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Returns a node-information client for `target`.
    pub fn node(&self, target: &str) -> Result<NodeServiceClient<Channel>, Error> {
        Ok(NodeServiceClient::new(self.channel(target)?))
    }

    /// Returns the node ID of the node serving `target`, as it last said (asked again after a
    /// minute).
    pub async fn node_id(&self, target: &str) -> Result<String, Error> {
        let uri = target_uri(target)?;
        if let Some((node_id, asked)) = self
            .node_ids
            .lock()
            .expect("node ID map lock is never poisoned")
            .get(&uri)
            && asked.elapsed() < NODE_ID_TTL
        {
            return Ok(node_id.clone());
        }
        let node_id = self.info(target).await?.node_id;
        self.node_ids
            .lock()
            .expect("node ID map lock is never poisoned")
            .insert(uri, (node_id.clone(), Instant::now()));
        Ok(node_id)
    }

    /// Asks the node serving `target` who it is.
    pub async fn info(&self, target: &str) -> Result<GetInfoResponse, Error> {
        let mut request = tonic::Request::new(GetInfoRequest {});
        request.set_timeout(self.connect_timeout + KEEP_ALIVE_TIMEOUT);
        let info = self
            .node(target)?
            .get_info(request)
            .await
            .map_err(|status| Error::from_remote_status(&status, target))?
            .into_inner();
        Ok(info)
    }

    /// Returns a storage client for `target`.
    pub fn storage(&self, target: &str) -> Result<StorageServiceClient<Channel>, Error> {
        Ok(StorageServiceClient::new(self.channel(target)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    fn channel(&self, target: &str) -> Result<Channel, Error> {
        let uri = target_uri(target)?;
        let mut channels = self
            .channels
            .lock()
            .expect("peer map lock is never poisoned");
        if let Some(channel) = channels.get(&uri) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|error| Error::invalid_field("target", format!("is not an address: {error}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        channels.insert(uri, channel.clone());
        Ok(channel)
    }
}

/// Turns a target as users write it (`host:port`, or a full `http://` URI) into a URI.
pub fn target_uri(target: &str) -> Result<String, Error> {
    let target = target.trim();
    if target.is_empty() {
        return Err(Error::invalid_field("target", "must not be empty"));
    }
    let uri = if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}")
    };
    let parsed: tonic::transport::Uri = uri.parse().map_err(|error| {
        Error::invalid_field("target", format!("{target:?} is not an address: {error}"))
    })?;
    if parsed.scheme_str() != Some("http") || parsed.port_u16().is_none() {
        return Err(Error::invalid_field(
            "target",
            format!("{target:?} must be host:port, for example 127.0.0.1:8081"),
        ));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_accept_host_port_and_uris() {
        assert_eq!(
            target_uri("127.0.0.1:8081").expect("ok"),
            "http://127.0.0.1:8081"
        );
        assert_eq!(target_uri("http://node:9").expect("ok"), "http://node:9");
        for bad in ["", "127.0.0.1", "ftp://x:1", "a b:1"] {
            assert!(target_uri(bad).is_err(), "{bad:?}");
        }
    }
}

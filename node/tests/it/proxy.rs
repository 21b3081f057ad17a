//! A gRPC proxy in front of a node that keeps what passes: the tests replay the requests it
//! captured. Links between nodes are TLS bound to node keys, so nobody on the network can read
//! them; the proxy holds the node's own key, and sees what the node itself (or whoever stole
//! its key) sees.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use bytes::Bytes;
use http_body_util::Full;
use prost::Message;
use tonic::transport::Channel;
use tower::ServiceExt;

/// One request that went through the proxy: its gRPC method path and its body.
#[derive(Clone, Debug)]
pub struct Captured {
    pub path: String,
    pub body: Bytes,
}

impl Captured {
    /// Returns the messages of the body (each gRPC frame: a flag byte, a 4-byte length, the
    /// message).
    pub fn messages<M: Message + Default>(&self) -> Vec<M> {
        let mut messages = Vec::new();
        let mut rest = &self.body[..];
        while rest.len() >= 5 {
            let length = u32::from_be_bytes(rest[1..5].try_into().expect("4 bytes")) as usize;
            messages.push(M::decode(&rest[5..5 + length]).expect("a captured message decodes"));
            rest = &rest[5 + length..];
        }
        messages
    }

    /// Returns the only message of a unary or server-streaming request.
    pub fn message<M: Message + Default>(&self) -> M {
        let mut messages = self.messages();
        assert_eq!(messages.len(), 1, "one message in {}", self.path);
        messages.remove(0)
    }
}

/// A proxy to one node's gRPC port, running on the test's runtime.
pub struct GrpcProxy {
    pub address: SocketAddr,
    captured: Arc<Mutex<Vec<Captured>>>,
    blocked: Arc<Mutex<HashSet<String>>>,
}

impl GrpcProxy {
    /// Starts a proxy on 127.0.0.1 that answers links with `node`'s key and forwards to it.
    pub async fn start(node: &crate::harness::TestNode) -> Self {
        let identity = sphere_node::identity::NodeIdentity::load(&node.data_dir.join("node.key"))
            .expect("the node's key");
        let upstream = node.grpc;
        let channel = Channel::from_shared(format!("http://{upstream}"))
            .expect("upstream URI")
            .connect_lazy();
        let captured = Arc::new(Mutex::new(Vec::new()));
        let blocked = Arc::new(Mutex::new(HashSet::new()));
        let router = {
            let captured = Arc::clone(&captured);
            let blocked = Arc::clone(&blocked);
            axum::Router::new().fallback(move |request: Request| {
                let channel = channel.clone();
                let captured = Arc::clone(&captured);
                let blocked = Arc::clone(&blocked);
                async move {
                    let (parts, body) = request.into_parts();
                    let body = axum::body::to_bytes(body, usize::MAX)
                        .await
                        .expect("request body");
                    let path = parts.uri.path().to_owned();
                    captured.lock().expect("lock").push(Captured {
                        path: path.clone(),
                        body: body.clone(),
                    });
                    if blocked.lock().expect("lock").contains(&path) {
                        let (parts, ()) = tonic::Status::unavailable("dropped by the test proxy")
                            .into_http::<()>()
                            .into_parts();
                        return axum::http::Response::from_parts(parts, axum::body::Body::empty());
                    }
                    let forwarded = axum::http::Request::from_parts(
                        parts,
                        tonic::body::Body::new(Full::new(body)),
                    );
                    match channel.oneshot(forwarded).await {
                        Ok(response) => response.map(axum::body::Body::new),
                        Err(error) => {
                            let status = tonic::Status::unavailable(format!("upstream: {error}"));
                            let (parts, ()) = status.into_http::<()>().into_parts();
                            axum::http::Response::from_parts(parts, axum::body::Body::empty())
                        }
                    }
                }
            })
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let links = sphere_node::link::incoming(
            sphere_node::connections::GuardedListener::new(
                listener,
                "proxy",
                sphere_node::connections::ConnectionLimits::default(),
            ),
            &sphere_node::link::LinkKeys::new(&identity),
            sphere_node::link::Plaintext::Loopback,
            std::time::Duration::from_secs(10),
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::from(router))
                .serve_with_incoming(links),
        );
        Self {
            address,
            captured,
            blocked,
        }
    }

    /// Returns the proxy's address as a target.
    pub fn target(&self) -> String {
        self.address.to_string()
    }

    /// Answers `unavailable` to every later call of `method` (e.g. `DeleteObject`) instead of
    /// forwarding it; the call is still captured.
    pub fn drop_calls_to(&self, method: &str) {
        self.blocked
            .lock()
            .expect("lock")
            .insert(format!("/sphere.v1.StorageService/{method}"));
    }

    /// Forwards calls of `method` again.
    pub fn allow_calls_to(&self, method: &str) {
        self.blocked
            .lock()
            .expect("lock")
            .remove(&format!("/sphere.v1.StorageService/{method}"));
    }

    /// Returns the captured calls of StorageService's `method`, oldest first.
    pub fn captured(&self, method: &str) -> Vec<Captured> {
        let path = format!("/sphere.v1.StorageService/{method}");
        self.captured
            .lock()
            .expect("lock")
            .iter()
            .filter(|call| call.path == path)
            .cloned()
            .collect()
    }
}

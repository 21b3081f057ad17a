//! The node-to-node gRPC server: `NodeService`, `TaskService`, `StorageService` and the standard
//! `grpc.health.v1` health service, all on one listener.

mod held;
mod node_info;
mod storage;
mod tasks;

use std::future::Future;
use std::time::Duration;

use crate::connections::TrackRequestsLayer;
use crate::context::NodeContext;
use crate::link::Link;
use crate::peers::MAX_MESSAGE_BYTES;
use sphere_proto::v1::node_service_server::NodeServiceServer;
use sphere_proto::v1::storage_service_server::StorageServiceServer;
use sphere_proto::v1::task_service_server::TaskServiceServer;

pub use storage::ProviderStorage;

/// Serves every node-to-node service on the `links` the listener accepted, at most
/// `max_streams` calls at once per connection, until `shutdown` completes, then lets in-flight
/// calls finish.
pub async fn serve(
    links: impl futures_util::Stream<Item = Result<Link, std::io::Error>> + Send + 'static,
    max_streams: u32,
    context: NodeContext,
    provider: ProviderStorage,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // A task's input crosses in one message; the plugins' limits say how large it may be.
    let task_message_bytes = context
        .plugins
        .largest_task_message_bytes()
        .max(MAX_MESSAGE_BYTES);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<TaskServiceServer<tasks::TaskGrpc>>()
        .await;
    health_reporter
        .set_serving::<StorageServiceServer<ProviderStorage>>()
        .await;
    // Calls that succeed are traced at `debug` (metrics count them); failures at `error`.
    let trace = tower_http::trace::TraceLayer::new_for_grpc()
        .make_span_with(tower_http::trace::DefaultMakeSpan::new().level(tracing::Level::DEBUG))
        .on_request(())
        .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::DEBUG));
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(max_streams))
        .layer(TrackRequestsLayer)
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(trace)
        .add_service(health_service)
        .add_service(NodeServiceServer::new(node_info::NodeInfoGrpc::new(
            context.clone(),
        )))
        .add_service(
            TaskServiceServer::new(tasks::TaskGrpc::new(context))
                .max_decoding_message_size(task_message_bytes)
                .max_encoding_message_size(task_message_bytes),
        )
        .add_service(
            StorageServiceServer::new(provider)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(links, shutdown)
        .await
}

/// The node at the other end of the call's link; `None` for a plaintext client.
fn caller<T>(request: &tonic::Request<T>) -> Option<crate::identity::NodeId> {
    request
        .extensions()
        .get::<crate::connections::ConnectionHandle>()
        .and_then(crate::connections::ConnectionHandle::linked_node)
}

//! Sphere's demo plugin: answers the input `hello` with `world` and echoes any other input.
//!
//! It is a real, separate gRPC server implementing `sphere.v1.PluginService` and the standard
//! `grpc.health.v1.Health` service. A Sphere node with no plugin configured starts it as a child
//! process (`sphere demo-plugin`); it also runs on its own as `sphere-plugin-hello`.
//!
//! Start-up handshake, shared by every plugin a node starts itself: the plugin binds the address
//! in the environment variable `SPHERE_PLUGIN_LISTEN` (port 0 means any free port), then prints
//! `SPHERE_PLUGIN_ADDR=<host:port>` as a line on standard output so the node learns where it is.

use std::future::Future;
use std::net::SocketAddr;

use sphere_proto::v1::plugin_service_server::{PluginService, PluginServiceServer};
use sphere_proto::v1::{DescribeRequest, DescribeResponse, ExecuteRequest, ExecuteResponse};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Environment variable naming the address a node-managed plugin must listen on.
pub const LISTEN_ENV: &str = "SPHERE_PLUGIN_LISTEN";
/// Prefix of the stdout line through which a plugin tells the node its bound address.
pub const ADDR_LINE_PREFIX: &str = "SPHERE_PLUGIN_ADDR=";
/// Address used when `SPHERE_PLUGIN_LISTEN` is not set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// The plugin's name, as reported by `Describe`.
pub const NAME: &str = "hello";

/// Answers `hello` with `world` and echoes anything else.
#[derive(Debug, Default, Clone, Copy)]
pub struct HelloPlugin;

#[tonic::async_trait]
impl PluginService for HelloPlugin {
    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<ExecuteResponse>, Status> {
        let input = request.into_inner().input;
        let output = if input == b"hello".as_slice() {
            tonic::codegen::Bytes::from_static(b"world")
        } else {
            input
        };
        Ok(Response::new(ExecuteResponse { output }))
    }

    async fn describe(
        &self,
        _request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        Ok(Response::new(DescribeResponse {
            name: NAME.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "answers \"hello\" with \"world\" and echoes any other input".to_owned(),
        }))
    }
}

/// Serves the plugin and its health service on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PluginServiceServer<HelloPlugin>>()
        .await;
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(PluginServiceServer::new(HelloPlugin))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

/// Runs the plugin as a process: binds `SPHERE_PLUGIN_LISTEN`, announces the bound address on
/// stdout, and serves until SIGINT or SIGTERM.
pub async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::var(LISTEN_ENV).unwrap_or_else(|_| DEFAULT_LISTEN.to_owned());
    let listen: SocketAddr = listen
        .parse()
        .map_err(|error| format!("{LISTEN_ENV}={listen:?} is not a socket address: {error}"))?;
    // Watch the signals before announcing the address: the node may stop us right away.
    let shutdown = shutdown_signal()?;
    let listener = TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("{ADDR_LINE_PREFIX}{bound}\n").as_bytes())
        .await?;
    stdout.flush().await?;
    serve(listener, shutdown).await?;
    Ok(())
}

/// Starts watching SIGINT and SIGTERM; the returned future completes at the first of them.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

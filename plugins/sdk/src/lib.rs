//! Write a Sphere plugin in Rust.
//!
//! A plugin is one type implementing [`Plugin`]: what it is ([`Plugin::describe`]) and what it
//! does with a task's input ([`Plugin::execute`]). [`run`] does the rest: it listens where the
//! node asks, announces its address, serves `sphere.v1.PluginService` and the standard
//! `grpc.health.v1` health service, and stops gracefully on SIGINT or SIGTERM.
//!
//! ```no_run
//! use sphere_plugin::{Bytes, Description, Plugin, Task, TaskError};
//!
//! struct Shout;
//!
//! #[sphere_plugin::async_trait]
//! impl Plugin for Shout {
//!     fn describe(&self) -> Description {
//!         Description::new("shout", env!("CARGO_PKG_VERSION"), "upper-cases text")
//!             .content_types("text/plain", "text/plain")
//!     }
//!
//!     async fn execute(&self, task: Task) -> Result<Bytes, TaskError> {
//!         let text = std::str::from_utf8(&task.input)
//!             .map_err(|_| TaskError::InvalidInput("input must be UTF-8 text".into()))?;
//!         Ok(Bytes::from(text.to_uppercase()))
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), sphere_plugin::BoxError> {
//!     sphere_plugin::run(Shout).await
//! }
//! ```
//!
//! # Start-up handshake
//! A node that runs a plugin itself sets `SPHERE_PLUGIN_LISTEN` (usually `127.0.0.1:0`) and reads
//! the plugin's standard output until a line `SPHERE_PLUGIN_ADDR=<host:port>`. A plugin started
//! by hand listens on `SPHERE_PLUGIN_LISTEN` or, when unset, on [`DEFAULT_LISTEN`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use bytes::Bytes;
use sphere_proto::v1::plugin_service_server::{PluginService, PluginServiceServer};
use sphere_proto::v1::{DescribeRequest, DescribeResponse, ExecuteRequest, ExecuteResponse};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
pub use tonic::async_trait;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Environment variable naming the address a plugin must listen on.
pub const LISTEN_ENV: &str = "SPHERE_PLUGIN_LISTEN";
/// Prefix of the stdout line through which a plugin tells the node its bound address.
pub const ADDR_LINE_PREFIX: &str = "SPHERE_PLUGIN_ADDR=";
/// Address used when `SPHERE_PLUGIN_LISTEN` is not set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Environment variable giving the largest gRPC message (in bytes) a plugin must accept and may
/// send: the node's input and output limits for it, plus room for framing. gRPC libraries
/// default to 4 MiB, below the node's default limits (16 MiB).
pub const MAX_MESSAGE_ENV: &str = "SPHERE_PLUGIN_MAX_MESSAGE_BYTES";
/// Message limit used when `SPHERE_PLUGIN_MAX_MESSAGE_BYTES` is not set: the node's default
/// input and output limit (16 MiB) plus room for framing.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024 + 64 * 1024;

/// Returns the message limit the node asks for (`SPHERE_PLUGIN_MAX_MESSAGE_BYTES`), or the
/// default.
pub fn max_message_bytes() -> usize {
    std::env::var(MAX_MESSAGE_ENV)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES)
}

/// Any error, for `main`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a plugin says about itself in `Describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// Short machine-friendly name; the node's configuration refers to the plugin by it.
    pub name: String,
    /// Version of the plugin, preferably semantic.
    pub version: String,
    /// One sentence for people.
    pub description: String,
    /// MIME type of the input it expects, for example `text/plain`.
    pub input_content_type: String,
    /// MIME type of the output it returns.
    pub output_content_type: String,
    /// Most tasks it accepts at once; 0 leaves the limit to the node.
    pub max_concurrency: u32,
    /// Whether the same input always gives the same output on any node.
    pub deterministic: bool,
    /// Whether running a task twice does no harm.
    pub idempotent: bool,
}

impl Description {
    /// Returns a description with `application/octet-stream` content types and no concurrency
    /// limit of the plugin's own.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            input_content_type: "application/octet-stream".to_owned(),
            output_content_type: "application/octet-stream".to_owned(),
            max_concurrency: 0,
            deterministic: false,
            idempotent: false,
        }
    }

    /// Sets the input and output content types.
    pub fn content_types(mut self, input: impl Into<String>, output: impl Into<String>) -> Self {
        self.input_content_type = input.into();
        self.output_content_type = output.into();
        self
    }

    /// Declares that the same input always gives the same output, byte for byte, on any node
    /// (so requesters may verify a task by running it on several), and that running a task
    /// twice does no harm (so a task whose answer was lost may run again elsewhere).
    pub fn pure(mut self) -> Self {
        self.deterministic = true;
        self.idempotent = true;
        self
    }

    /// Sets the most tasks the plugin accepts at once.
    pub fn max_concurrency(mut self, max_concurrency: u32) -> Self {
        self.max_concurrency = max_concurrency;
        self
    }
}

/// One task to run.
#[derive(Debug, Clone)]
pub struct Task {
    /// The requester's identifier for the task, for logs.
    pub id: String,
    /// The input, exactly as the requester sent it.
    pub input: Bytes,
    /// When the node stops waiting for the answer, if it said.
    pub deadline: Option<Instant>,
}

/// Why a task failed; the message reaches the requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// The input is not something this plugin can work on.
    InvalidInput(String),
    /// The plugin could not do the work.
    Failed(String),
}

impl From<TaskError> for Status {
    fn from(error: TaskError) -> Self {
        match error {
            TaskError::InvalidInput(message) => Status::invalid_argument(message),
            TaskError::Failed(message) => Status::internal(message),
        }
    }
}

/// A plugin: what it is and what it does with a task.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// Returns what the plugin says about itself.
    fn describe(&self) -> Description;

    /// Runs one task and returns its output.
    async fn execute(&self, task: Task) -> Result<Bytes, TaskError>;
}

/// Adapts a [`Plugin`] to the generated gRPC service.
struct PluginGrpc<P> {
    plugin: Arc<P>,
}

#[async_trait]
impl<P: Plugin> PluginService for PluginGrpc<P> {
    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<ExecuteResponse>, Status> {
        let deadline = grpc_timeout(request.metadata()).map(|timeout| Instant::now() + timeout);
        let ExecuteRequest { task_id, input } = request.into_inner();
        let output = self
            .plugin
            .execute(Task {
                id: task_id,
                input,
                deadline,
            })
            .await?;
        Ok(Response::new(ExecuteResponse { output }))
    }

    async fn describe(
        &self,
        _request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        let description = self.plugin.describe();
        Ok(Response::new(DescribeResponse {
            name: description.name,
            version: description.version,
            description: description.description,
            input_content_type: description.input_content_type,
            output_content_type: description.output_content_type,
            max_concurrency: description.max_concurrency,
            deterministic: description.deterministic,
            idempotent: description.idempotent,
        }))
    }
}

/// Serves `plugin` and the health service on `listener` until `shutdown` completes, then lets
/// running tasks finish.
pub async fn serve<P: Plugin>(
    plugin: P,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PluginServiceServer<PluginGrpc<P>>>()
        .await;
    let service = PluginGrpc {
        plugin: Arc::new(plugin),
    };
    let max_message_bytes = max_message_bytes();
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(
            PluginServiceServer::new(service)
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        )
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

/// Runs `plugin` as a process: listens on `SPHERE_PLUGIN_LISTEN`, announces the bound address on
/// stdout, and serves until SIGINT or SIGTERM.
pub async fn run<P: Plugin>(plugin: P) -> Result<(), BoxError> {
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
    serve(plugin, listener, shutdown).await?;
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

/// Returns the deadline a caller set with the `grpc-timeout` header, if any.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// Reads a `grpc-timeout` header's value: at most eight digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`); `None` for anything else.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if !value.is_ascii() {
        return None;
    }
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    if amount.len() > 8 {
        return None;
    }
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_is_understood() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&metadata), None);
        metadata.insert("grpc-timeout", "1500m".parse().expect("value"));
        assert_eq!(grpc_timeout(&metadata), Some(Duration::from_millis(1500)));
        metadata.insert("grpc-timeout", "2S".parse().expect("value"));
        assert_eq!(grpc_timeout(&metadata), Some(Duration::from_secs(2)));
        metadata.insert("grpc-timeout", "x".parse().expect("value"));
        assert_eq!(grpc_timeout(&metadata), None);
    }

    #[test]
    fn grpc_timeout_values_take_every_unit_and_at_most_eight_digits() {
        let units = [
            ("3H", Duration::from_secs(3 * 3600)),
            ("3M", Duration::from_secs(180)),
            ("3S", Duration::from_secs(3)),
            ("3m", Duration::from_millis(3)),
            ("3u", Duration::from_micros(3)),
            ("3n", Duration::from_nanos(3)),
            ("99999999S", Duration::from_secs(99_999_999)),
        ];
        for (value, expected) in units {
            assert_eq!(parse_grpc_timeout(value), Some(expected), "{value}");
        }
        for value in ["", "S", "100000000S", "3s", "-3S", "3", "3é"] {
            assert_eq!(parse_grpc_timeout(value), None, "{value:?}");
        }
    }
}

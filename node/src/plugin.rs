//! The node's side of the plugin protocol (`proto/sphere/v1/plugin.proto`).
//!
//! A plugin is a separate gRPC server. [`PluginClient`] calls it; [`process::ManagedPlugin`]
//! starts and stops a plugin that the node runs itself (the built-in demo plugin, by default).

pub mod process;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sphere_proto::v1::plugin_service_client::PluginServiceClient;
use sphere_proto::v1::{DescribeRequest, DescribeResponse, ExecuteRequest};
use tokio::sync::RwLock;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::error::{Error, ErrorCode};

/// Largest gRPC message exchanged with a plugin.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Ways a plugin call fails.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin could not be reached.
    #[error("plugin is unavailable: {0}")]
    Unavailable(String),
    /// The plugin did not answer before the deadline.
    #[error("plugin did not finish within {0:?}")]
    Timeout(Duration),
    /// The plugin answered with an error.
    #[error("plugin failed the task: {0}")]
    Failed(String),
}

impl From<PluginError> for Error {
    fn from(error: PluginError) -> Self {
        let code = match error {
            PluginError::Unavailable(_) => ErrorCode::PluginUnavailable,
            PluginError::Timeout(_) => ErrorCode::PluginTimeout,
            PluginError::Failed(_) => ErrorCode::PluginFailed,
        };
        Error::new(code, error.to_string())
    }
}

/// What a plugin's health check says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginHealth {
    /// It answers and says it is serving.
    Serving,
    /// It answers but says it is not serving.
    NotServing,
    /// It does not answer.
    Unreachable,
}

/// A connection to one plugin, shared by all tasks.
#[derive(Debug, Clone)]
pub struct PluginClient {
    channel: Channel,
    address: String,
    max_task_time: Duration,
    description: Arc<RwLock<Option<DescribeResponse>>>,
}

impl PluginClient {
    /// Returns a client for the plugin at `address` (an `http://` URI); tasks may run for at most
    /// `max_task_time`. Connects lazily: a plugin that is down now may come up later.
    pub fn new(address: &str, max_task_time: Duration) -> Result<Self, PluginError> {
        let channel = Endpoint::from_shared(address.to_owned())
            .map_err(|error| PluginError::Unavailable(format!("bad address {address:?}: {error}")))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            channel,
            address: address.to_owned(),
            max_task_time,
            description: Arc::default(),
        })
    }

    /// Returns the plugin's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Asks the plugin to describe itself, and remembers the answer.
    pub async fn describe(&self) -> Result<DescribeResponse, PluginError> {
        let mut request = tonic::Request::new(DescribeRequest {});
        request.set_timeout(Duration::from_secs(5));
        let description = self
            .client()
            .describe(request)
            .await
            .map_err(|status| classify(status, Duration::from_secs(5)))?
            .into_inner();
        *self.description.write().await = Some(description.clone());
        Ok(description)
    }

    /// Returns what the plugin last said about itself, if it was reached.
    pub async fn description(&self) -> Option<DescribeResponse> {
        self.description.read().await.clone()
    }

    /// Runs a task, giving it at most `deadline` (capped by the configured maximum).
    pub async fn execute(
        &self,
        task_id: String,
        input: Bytes,
        deadline: Option<Duration>,
    ) -> Result<Bytes, PluginError> {
        let time_allowed = deadline.map_or(self.max_task_time, |deadline| {
            deadline.min(self.max_task_time)
        });
        let mut request = tonic::Request::new(ExecuteRequest { task_id, input });
        request.set_timeout(time_allowed);
        // The client-side timer is the one that counts: a hung plugin may never answer at all.
        let mut client = self.client();
        let call = client.execute(request);
        match tokio::time::timeout(time_allowed, call).await {
            Ok(Ok(response)) => Ok(response.into_inner().output),
            Ok(Err(status)) => Err(classify(status, time_allowed)),
            Err(_elapsed) => Err(PluginError::Timeout(time_allowed)),
        }
    }

    /// Asks the plugin's standard gRPC health service whether it is serving.
    pub async fn health(&self) -> PluginHealth {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(Duration::from_secs(1));
        match HealthClient::new(self.channel.clone()).check(request).await {
            Ok(response) if response.get_ref().status() == ServingStatus::Serving => {
                PluginHealth::Serving
            }
            Ok(_) => PluginHealth::NotServing,
            Err(_) => PluginHealth::Unreachable,
        }
    }

    fn client(&self) -> PluginServiceClient<Channel> {
        PluginServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn classify(status: tonic::Status, time_allowed: Duration) -> PluginError {
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            PluginError::Timeout(time_allowed)
        }
        tonic::Code::Unavailable => PluginError::Unavailable(status.message().to_owned()),
        code => PluginError::Failed(format!("{code:?}: {}", status.message())),
    }
}

//! gRPC calls to one plugin.

use std::time::Duration;

use bytes::Bytes;
use sphere_proto::v1::plugin_service_client::PluginServiceClient;
use sphere_proto::v1::{DescribeRequest, DescribeResponse, ExecuteRequest};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::channel::Channel;

/// How long `Describe` and health checks may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Room for protobuf framing on top of the largest accepted output.
const FRAMING_ALLOWANCE: usize = 1024;

/// What a plugin's health check says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginHealth {
    /// It answers and says it is serving.
    Serving,
    /// It answers but says it is not serving.
    NotServing,
    /// It answers but has no health service.
    NoHealthService,
    /// It does not answer.
    Unreachable,
}

/// How a call to a plugin failed, before it is given the plugin's name.
#[derive(Debug)]
pub enum CallError {
    /// Unreachable or connection lost.
    Unavailable(String),
    /// Past the deadline.
    Timeout,
    /// The plugin refused the input (INVALID_ARGUMENT).
    Rejected(String),
    /// The plugin's gRPC library refused a message that large (its receive limit).
    InputOverPluginLimit(String),
    /// The answer was larger than allowed.
    OutputTooLarge,
    /// Any other failure, garbage answers included.
    Failed(String),
}

/// A connection to one plugin process, shared by all its tasks.
#[derive(Debug, Clone)]
pub struct PluginClient {
    channel: Channel,
    address: String,
    max_output_bytes: usize,
}

impl PluginClient {
    /// Returns a client for the plugin at `address` (an `http://` URI), accepting outputs up to
    /// `max_output_bytes`. Connects lazily.
    pub fn new(address: &str, max_output_bytes: u64) -> Result<Self, String> {
        let channel = address
            .parse::<http::Uri>()
            .map_err(|error| error.to_string())
            .and_then(|uri| Channel::plaintext(&uri, PROBE_TIMEOUT, None))
            .map_err(|error| format!("bad plugin address {address:?}: {error}"))?;
        Ok(Self {
            channel,
            address: address.to_owned(),
            max_output_bytes: usize::try_from(max_output_bytes).unwrap_or(usize::MAX),
        })
    }

    /// Returns the plugin's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Asks the plugin to describe itself.
    pub async fn describe(&self) -> Result<DescribeResponse, String> {
        let mut request = tonic::Request::new(DescribeRequest {});
        request.set_timeout(PROBE_TIMEOUT);
        self.client()
            .describe(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| format!("Describe failed: {:?}: {}", status.code(), status.message()))
    }

    /// Runs one task with `time_allowed`.
    pub async fn execute(
        &self,
        task_id: String,
        input: Bytes,
        time_allowed: Duration,
    ) -> Result<Bytes, CallError> {
        let mut request = tonic::Request::new(ExecuteRequest { task_id, input });
        request.set_timeout(time_allowed);
        let mut client = self.client();
        // The local timer is the one that counts: a hung plugin may never answer at all.
        let output = match tokio::time::timeout(time_allowed, client.execute(request)).await {
            Ok(Ok(response)) => response.into_inner().output,
            Ok(Err(status)) => return Err(classify(&status)),
            Err(_elapsed) => return Err(CallError::Timeout),
        };
        if output.len() > self.max_output_bytes {
            return Err(CallError::OutputTooLarge);
        }
        Ok(output)
    }

    /// Asks the plugin's standard gRPC health service whether it is serving.
    pub async fn health(&self) -> PluginHealth {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(PROBE_TIMEOUT);
        match HealthClient::new(self.channel.clone()).check(request).await {
            Ok(response) if response.get_ref().status() == ServingStatus::Serving => {
                PluginHealth::Serving
            }
            Ok(_) => PluginHealth::NotServing,
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                PluginHealth::NoHealthService
            }
            Err(_) => PluginHealth::Unreachable,
        }
    }

    fn client(&self) -> PluginServiceClient<Channel> {
        PluginServiceClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_output_bytes.saturating_add(FRAMING_ALLOWANCE))
            .max_encoding_message_size(usize::MAX)
    }
}

fn classify(status: &tonic::Status) -> CallError {
    let message = status.message().to_owned();
    match status.code() {
        code if crate::error::is_timeout(status) || code == tonic::Code::DeadlineExceeded => {
            CallError::Timeout
        }
        tonic::Code::Unavailable | tonic::Code::Cancelled => CallError::Unavailable(message),
        // A status made here from a broken connection carries its cause; one the plugin sent
        // does not.
        tonic::Code::Unknown if std::error::Error::source(status).is_some() => {
            CallError::Unavailable(format!("the connection broke: {message}"))
        }
        tonic::Code::InvalidArgument => CallError::Rejected(message),
        // gRPC libraries (C core, grpc-js, grpc-go) word their receive limit this way.
        tonic::Code::ResourceExhausted
            if message
                .to_lowercase()
                .contains("received message larger than max")
                || message
                    .to_lowercase()
                    .contains("grpc: received message larger") =>
        {
            CallError::InputOverPluginLimit(message)
        }
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            if message.contains("too large") =>
        {
            CallError::OutputTooLarge
        }
        code => CallError::Failed(format!("{code:?}: {message}")),
    }
}

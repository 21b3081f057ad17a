//! `POST /task`.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sphere_proto::v1::RunTaskRequest;

use super::extract::{JsonBody, base64_field, required, to_base64};
use crate::error::{Error, ErrorCode};
use crate::node::NodeContext;
use crate::payments::payer::{Payment, Work};

/// Extra time past the deadline before the requester stops waiting on its own; the gRPC channel
/// enforces the deadline itself, this only guards against a call that never returns.
const STUCK_CALL_MARGIN: Duration = Duration::from_millis(500);

/// A task as requesters send it.
#[derive(Debug, Deserialize)]
pub struct TaskRequest {
    /// gRPC address of the node to run the task on; this node when absent.
    target: Option<String>,
    /// Name of the plugin to run the task; the target's default plugin when absent.
    plugin: Option<String>,
    /// The requester's identifier for the task, echoed back; a random one when absent.
    id: Option<String>,
    /// The input as text.
    input: Option<String>,
    /// The input as base64, for binary inputs; exclusive with `input`.
    input_base64: Option<String>,
    /// Deadline for the task in milliseconds, capped by `grpc.task_timeout_ms`.
    timeout_ms: Option<u64>,
}

/// A finished task.
#[derive(Debug, Serialize)]
pub struct TaskResponse {
    /// The task's identifier.
    id: String,
    /// The output as text, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    /// The output as base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    output_base64: Option<String>,
    /// Name of the plugin that ran the task.
    plugin: String,
}

/// Runs a task on its target and returns the output.
pub async fn run_task(
    State(context): State<NodeContext>,
    JsonBody(request): JsonBody<TaskRequest>,
) -> Result<Response, Error> {
    let input = match (request.input, request.input_base64) {
        (Some(text), None) => Bytes::from(text),
        (None, Some(encoded)) => Bytes::from(base64_field(&encoded, "input_base64")?),
        (Some(_), Some(_)) => {
            return Err(Error::invalid_field(
                "input_base64",
                "cannot be given together with `input`",
            ));
        }
        (None, None) => return Err(required(None::<()>, "input").expect_err("absent")),
    };
    let task_id = request.id.unwrap_or_else(crate::storage::new_id);
    let deadline = match request.timeout_ms {
        Some(0) => return Err(Error::invalid_field("timeout_ms", "must be greater than 0")),
        Some(milliseconds) => Duration::from_millis(milliseconds).min(context.task_timeout),
        None => context.task_timeout,
    };

    let plugin = request.plugin.filter(|name| !name.is_empty());
    let (output, plugin) = match request.target {
        None => {
            context
                .plugins
                .run(plugin.as_deref(), task_id.clone(), input, Some(deadline))
                .await?
        }
        Some(target) => {
            let mut task = RunTaskRequest {
                task_id: task_id.clone(),
                input,
                plugin: plugin.clone().unwrap_or_default(),
                voucher: None,
            };
            // A second try only after this node caught up with the target's count of the
            // channel (its voucher was refused as too small).
            let mut tries_left = 2;
            loop {
                tries_left -= 1;
                let payment = match &context.payments {
                    Some(payments) => {
                        payments
                            .payer
                            .pay(&target, Work::Task(plugin.as_deref()))
                            .await?
                    }
                    None => None,
                };
                task.voucher = payment.as_ref().map(Payment::voucher);
                let outcome = run_on_target(&context, &target, task.clone(), deadline).await;
                let caught_up = match payment {
                    Some(payment) => payment.settle(&outcome).await,
                    None => false,
                };
                if caught_up && tries_left > 0 {
                    continue;
                }
                break outcome?;
            }
        }
    };
    let (output, output_base64) = match std::str::from_utf8(&output) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(to_base64(&output))),
    };
    Ok(axum::Json(TaskResponse {
        id: task_id,
        output,
        output_base64,
        plugin,
    })
    .into_response())
}

async fn run_on_target(
    context: &NodeContext,
    target: &str,
    task: RunTaskRequest,
    deadline: Duration,
) -> Result<(Bytes, String), Error> {
    let mut client = context.peers.tasks(target)?;
    let mut request = tonic::Request::new(task);
    request.set_timeout(deadline);
    match tokio::time::timeout(deadline + STUCK_CALL_MARGIN, client.run_task(request)).await {
        Ok(Ok(response)) => {
            let response = response.into_inner();
            Ok((response.output, response.plugin))
        }
        Ok(Err(status)) => Err(Error::from_remote_status(&status, target)),
        Err(_elapsed) => Err(Error::new(
            ErrorCode::TargetTimeout,
            format!("target {target} did not answer within {deadline:?}"),
        )),
    }
}

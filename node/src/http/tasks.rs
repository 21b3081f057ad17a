//! `POST /task`.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::extract::{JsonBody, address, base64_field, required, to_base64};
use super::openapi::error_responses;
use crate::api::{TaskAnswer, TaskRequest};
use crate::context::NodeContext;
use crate::error::Error;
use crate::scheduler::TaskSpec;

/// The longest deadline a request may ask for (it is capped by `grpc.task_timeout_ms` anyway).
const MAX_TIMEOUT_MS: u64 = 86_400_000;

error_responses!(
    /// Errors of `POST /task`.
    TaskErrors: InvalidJson, MissingField, InvalidField, PayloadTooLarge, PluginNotFound,
    Overloaded, TaskRejected, PaymentRequired, InsufficientFunds, ChannelStateConflict,
    TargetUnreachable, TargetMismatch, TargetTimeout, TargetError, PluginUnavailable, PluginTimeout, PluginFailed,
    ShuttingDown,
);

/// Runs a task on a target node (or this one) and returns its output.
#[utoipa::path(
    post,
    path = "/task",
    tag = "tasks",
    request_body = TaskRequest,
    responses((status = 200, description = "The task ran", body = TaskAnswer), TaskErrors),
)]
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
        Some(milliseconds) if milliseconds > MAX_TIMEOUT_MS => {
            return Err(Error::invalid_field(
                "timeout_ms",
                format!("must be at most {MAX_TIMEOUT_MS} (a day)"),
            ));
        }
        Some(milliseconds) => Duration::from_millis(milliseconds).min(context.task_timeout),
        None => context.task_timeout,
    };

    let outcome = crate::scheduler::run(
        &context,
        TaskSpec {
            id: task_id.clone(),
            target: address(request.target, "target")?,
            plugin: request.plugin.filter(|name| !name.is_empty()),
            input,
            deadline,
        },
    )
    .await?;
    let (output, output_base64) = match std::str::from_utf8(&outcome.output) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(to_base64(&outcome.output))),
    };
    Ok(axum::Json(TaskAnswer {
        id: task_id,
        output,
        output_base64,
        plugin: outcome.plugin,
        node: outcome.node.to_string(),
    })
    .into_response())
}

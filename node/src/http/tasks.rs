//! `POST /task`.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sphere_proto::v1::RunTaskRequest;

use super::extract::{JsonBody, address, base64_field, required, to_base64};
use super::openapi::error_responses;
use crate::api::{TaskAnswer, TaskRequest};
use crate::context::NodeContext;
use crate::error::{Error, ErrorCode};
use crate::payments::payer::{Payment, Work};
use crate::peers::Target;

/// The longest deadline a request may ask for (it is capped by `grpc.task_timeout_ms` anyway).
const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// Extra time past the deadline before the requester stops waiting on its own; the gRPC channel
/// enforces the deadline itself, this only guards against a call that never returns.
const STUCK_CALL_MARGIN: Duration = Duration::from_millis(500);

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

    let plugin = request.plugin.filter(|name| !name.is_empty());
    let (output, plugin) = match address(request.target, "target")? {
        None => {
            context
                .plugins
                .run(plugin.as_deref(), task_id.clone(), input, Some(deadline))
                .await?
        }
        Some(target) => {
            let target = context.peers.resolve(&target).await?;
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
    Ok(axum::Json(TaskAnswer {
        id: task_id,
        output,
        output_base64,
        plugin,
    })
    .into_response())
}

/// Runs `task` on `target` and records how it went in the metrics.
async fn run_on_target(
    context: &NodeContext,
    target: &Target,
    task: RunTaskRequest,
    deadline: Duration,
) -> Result<(Bytes, String), Error> {
    let started = std::time::Instant::now();
    let requested_plugin = task.plugin.clone();
    let outcome = call_target(context, target, task, deadline).await;
    let known_target = context
        .files
        .options()
        .providers
        .iter()
        .any(|peer| peer == target.address());
    let plugin = match &outcome {
        Ok((_, plugin)) => plugin.as_str(),
        Err(_) if requested_plugin.is_empty() => "default",
        Err(_) => requested_plugin.as_str(),
    };
    crate::metrics::requested_task(
        if known_target {
            target.address().as_str()
        } else {
            "other"
        },
        plugin,
        outcome
            .as_ref()
            .map_or_else(|error| error.code.as_str(), |_| "ok"),
        started.elapsed(),
    );
    outcome
}

async fn call_target(
    context: &NodeContext,
    target: &Target,
    task: RunTaskRequest,
    deadline: Duration,
) -> Result<(Bytes, String), Error> {
    let mut client = context.peers.tasks(target);
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

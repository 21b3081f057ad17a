//! `POST /task`.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::extract::{JsonBody, address, base64_field, required, to_base64};
use super::openapi::error_responses;
use crate::api::{TargetSelector, TaskAnswer, TaskRequest, TaskTarget};
use crate::context::NodeContext;
use crate::error::Error;
use crate::identity::NodeId;
use crate::scheduler::{Placement, Selector, TaskSpec};

/// The longest deadline a request may ask for (it is capped by `grpc.task_timeout_ms` anyway).
const MAX_TIMEOUT_MS: u64 = 86_400_000;

error_responses!(
    /// Errors of `POST /task`.
    TaskErrors: InvalidJson, MissingField, InvalidField, PayloadTooLarge, PluginNotFound,
    Overloaded, TaskRejected, PaymentRequired, InsufficientFunds, ChannelStateConflict,
    NoCapableNode, TargetUnreachable, TargetMismatch, TargetTimeout, TargetError, PluginUnavailable,
    PluginTimeout, PluginFailed, ShuttingDown,
);

/// Runs a task on the node the target names, or the one the scheduler chooses, and returns its
/// output.
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
            placement: placement(request.target)?,
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

/// Where the request asks the task to run, checked field by field.
fn placement(target: Option<TaskTarget>) -> Result<Placement, Error> {
    match target {
        None => Ok(Placement::Anywhere),
        Some(TaskTarget::Node(text)) => Ok(Placement::Named(
            address(Some(text), "target")?.expect("given"),
        )),
        Some(TaskTarget::Selector(selector)) => Ok(Placement::Chosen(selector_of(selector)?)),
    }
}

fn selector_of(selector: TargetSelector) -> Result<Selector, Error> {
    let max_price_wei = selector
        .max_price_wei
        .map(|text| {
            text.trim()
                .parse::<alloy_primitives::U256>()
                .ok()
                .filter(|_| text.trim().bytes().all(|byte| byte.is_ascii_digit()))
                .ok_or_else(|| {
                    Error::invalid_field(
                        "target.max_price_wei",
                        format!("{text:?} is not a whole number of wei"),
                    )
                })
        })
        .transpose()?;
    let exclude = selector
        .exclude
        .iter()
        .map(|text| {
            text.parse::<NodeId>().map_err(|error| {
                Error::invalid_field("target.exclude", format!("has {text:?}: {error}"))
            })
        })
        .collect::<Result<_, _>>()?;
    let plugin_version = selector
        .plugin_version
        .map(|text| {
            text.parse::<semver::VersionReq>().map_err(|error| {
                Error::invalid_field(
                    "target.plugin_version",
                    format!("{text:?} is not a semver requirement such as \"^1.2\": {error}"),
                )
            })
        })
        .transpose()?;
    Ok(Selector {
        labels: selector.labels,
        max_price_wei,
        exclude,
        plugin_version,
    })
}

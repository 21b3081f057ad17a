//! `POST /task` (run and wait) and the background tasks: `POST /tasks`, `GET /tasks/{id}`,
//! `GET /tasks`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::extract::{JsonBody, Path, Query};
use super::openapi::error_responses;
use crate::api::{TaskAccepted, TaskAnswer, TaskList, TaskListQuery, TaskRequest, TaskStatus};
use crate::context::NodeContext;
use crate::error::{Error, ErrorCode};
use crate::scheduler::TaskSpec;
use crate::scheduler::background;

/// Tasks `GET /tasks` lists when the query names no limit, and the most it lists.
const DEFAULT_LIST_LIMIT: u32 = 100;
const MAX_LIST_LIMIT: u32 = 1000;

error_responses!(
    /// Errors of `POST /task`.
    TaskErrors: InvalidJson, MissingField, InvalidField, PayloadTooLarge, PluginNotFound,
    Overloaded, TaskRejected, PaymentRequired, InsufficientFunds, ChannelStateConflict,
    NoCapableNode, TargetUnreachable, TargetMismatch, TargetTimeout, TargetError, PluginUnavailable,
    PluginTimeout, PluginFailed, ShuttingDown,
);

error_responses!(
    /// Errors of `POST /tasks`.
    SubmitErrors: InvalidJson, MissingField, InvalidField, PayloadTooLarge, AlreadyExists,
    Overloaded, StorageFailure,
);

error_responses!(
    /// Errors of `GET /tasks/{id}`.
    StatusErrors: InvalidField, TaskNotFound, StorageFailure,
);

error_responses!(
    /// Errors of `GET /tasks`.
    ListErrors: InvalidField, StorageFailure,
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
    let spec = TaskSpec::from_request(request, context.task_timeout)?;
    let id = spec.id.clone();
    let outcome = crate::scheduler::run(&context, spec).await?;
    let (output, output_base64) = crate::encoding::text_or_base64(&outcome.output);
    Ok(axum::Json(TaskAnswer {
        id,
        output,
        output_base64,
        plugin: outcome.plugin,
        node: outcome.node.to_string(),
        verified_by: outcome
            .verified_by
            .iter()
            .map(ToString::to_string)
            .collect(),
        disagreed: outcome.disagreed.iter().map(ToString::to_string).collect(),
    })
    .into_response())
}

/// Accepts a task to run in the background (the same body as `POST /task`); its state is at
/// `GET /tasks/{id}`.
#[utoipa::path(
    post,
    path = "/tasks",
    tag = "tasks",
    request_body = TaskRequest,
    responses(
        (status = 202, description = "The task is accepted and queued", body = TaskAccepted,
         headers(("Location" = String, description = "Where its state is: /tasks/{id}"))),
        SubmitErrors,
    ),
)]
pub async fn submit(
    State(context): State<NodeContext>,
    JsonBody(request): JsonBody<TaskRequest>,
) -> Result<Response, Error> {
    let status = background::submit(&context, request).await?;
    let location = format!("/tasks/{}", crate::encoding::path_segment(&status.id));
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(TaskAccepted {
            id: status.id,
            state: status.state,
        }),
    )
        .into_response())
}

/// A background task: its state, the node that ran it, timings, and its output or error.
#[utoipa::path(
    get,
    path = "/tasks/{id}",
    tag = "tasks",
    params(("id" = String, Path, description = "The task's ID")),
    responses((status = 200, description = "The task", body = TaskStatus), StatusErrors),
)]
pub async fn status(
    State(context): State<NodeContext>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let record = context.tasks.get(&id).await?.ok_or_else(|| {
        Error::new(
            ErrorCode::TaskNotFound,
            format!("no background task with ID {id:?} is kept here"),
        )
    })?;
    Ok(axum::Json(record.status).into_response())
}

/// Background tasks, newest first, without their outputs.
#[utoipa::path(
    get,
    path = "/tasks",
    tag = "tasks",
    params(TaskListQuery),
    responses((status = 200, description = "The tasks", body = TaskList), ListErrors),
)]
pub async fn list(
    State(context): State<NodeContext>,
    Query(query): Query<TaskListQuery>,
) -> Result<Response, Error> {
    let limit = match query.limit {
        Some(0) => return Err(Error::invalid_field("limit", "must be greater than 0")),
        Some(limit) if limit > MAX_LIST_LIMIT => {
            return Err(Error::invalid_field(
                "limit",
                format!("must be at most {MAX_LIST_LIMIT}"),
            ));
        }
        Some(limit) => limit,
        None => DEFAULT_LIST_LIMIT,
    };
    let tasks = context.tasks.list(query.state, limit as usize).await?;
    Ok(axum::Json(TaskList { tasks }).into_response())
}

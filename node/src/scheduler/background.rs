//! Background tasks: accepted at once (`POST /tasks`), run through the same flow as a task the
//! requester waits for, their state kept in [`super::records`] at every step so that a restart of
//! this node loses none: a task still queued then runs, one that was running is marked failed
//! (`interrupted`: it may or may not have run on its node).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::TaskSpec;
use super::records::{Ran, TaskRecord};
use crate::api::{TaskRequest, TaskStatus};
use crate::context::NodeContext;
use crate::error::{Error, ErrorCode};
use crate::storage::StorageError;

/// The longest pause between two looks for finished tasks past their keeping time.
const LONGEST_FORGET_INTERVAL: Duration = Duration::from_secs(60);

/// Accepts the task `request` asks for and starts it in the background; returns its status.
pub async fn submit(context: &NodeContext, mut request: TaskRequest) -> Result<TaskStatus, Error> {
    let spec = TaskSpec::from_request(request.clone(), context.task_timeout)?;
    request.id = Some(spec.id.clone());
    let record = TaskRecord::queued(spec.id.clone(), request);
    context.tasks.insert(&record).await?;
    let status = record.status.clone();
    tokio::spawn(run(context.clone(), record, spec));
    Ok(status)
}

/// Fails the tasks a previous run of this node left running (`interrupted`), and returns those
/// it left queued, for [`resume`]. Called before this run accepts tasks of its own.
pub async fn left_over(context: &NodeContext) -> Result<Vec<TaskRecord>, StorageError> {
    let mut queued = Vec::new();
    for mut record in context.tasks.unfinished().await? {
        if record.status.started_at_ms.is_none() {
            queued.push(record);
            continue;
        }
        record.finish(Err(Error::new(
            ErrorCode::Interrupted,
            "this node stopped while the task ran; it may or may not have run, so it was not \
             started again: submit it again if that does no harm",
        )));
        context.tasks.update(&record).await?;
    }
    Ok(queued)
}

/// Starts the tasks a previous run of this node left queued.
pub async fn resume(context: &NodeContext, queued: Vec<TaskRecord>) {
    for mut record in queued {
        match TaskSpec::from_request(record.request.clone(), context.task_timeout) {
            Ok(spec) => {
                tracing::info!(task = %spec.id, "resuming a queued background task");
                tokio::spawn(run(context.clone(), record, spec));
            }
            // Accepted once, so only a change of the rules can refuse it now.
            Err(error) => {
                record.finish(Err(error));
                if let Err(error) = context.tasks.update(&record).await {
                    tracing::error!(task = %record.status.id, %error, "could not store a background task's outcome");
                }
            }
        }
    }
}

/// Forgets finished tasks past `tasks.keep_results_ms`, until `shutdown`.
pub async fn forget_old_tasks(context: NodeContext, shutdown: CancellationToken) {
    let interval =
        Duration::from_millis(context.tasks.keep_results_ms() / 10).min(LONGEST_FORGET_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match context.tasks.forget_old().await {
            Ok(0) => {}
            Ok(count) => tracing::debug!(count, "forgot finished background tasks"),
            Err(error) => tracing::warn!(%error, "could not forget old background tasks"),
        }
    }
}

async fn run(context: NodeContext, mut record: TaskRecord, spec: TaskSpec) {
    let _place = context.tasks.place_to_run().await;
    record.start();
    // Running must be on the disk before the task starts: after a crash, a task that may have
    // run is never started again unasked.
    if let Err(error) = context.tasks.update(&record).await {
        tracing::error!(task = %spec.id, %error, "could not note a background task's start; not running it");
        return;
    }
    let outcome = super::run(&context, spec).await.map(|outcome| Ran {
        output: outcome.output,
        plugin: outcome.plugin,
        node: outcome.node.to_string(),
        verified_by: outcome
            .verified_by
            .iter()
            .map(ToString::to_string)
            .collect(),
    });
    record.finish(outcome);
    if let Err(error) = context.tasks.update(&record).await {
        tracing::error!(task = %record.status.id, %error, "could not store a background task's outcome");
    }
}

//! The task flow on the requester's side: where a task runs, paying for it, calling the node,
//! settling the payment by the outcome. The REST handler only reads the request and writes the
//! answer.
//!
//! Today the requester names the target (or none: this node's own plugins); choosing a node,
//! failover and verification by several nodes grow here (issue 13).

use std::time::Duration;

use bytes::Bytes;
use sphere_proto::v1::RunTaskRequest;

use crate::context::NodeContext;
use crate::error::{Error, ErrorCode};
use crate::identity::NodeId;
use crate::payments::payer::{Payment, Work};
use crate::peers::Target;

/// Extra time past the deadline before the requester stops waiting on its own; the gRPC channel
/// enforces the deadline itself, this only guards against a call that never returns.
const STUCK_CALL_MARGIN: Duration = Duration::from_millis(500);

/// A task as the requester asked for it.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// The requester's identifier of the task.
    pub id: String,
    /// Where to run it: a target as users write it; `None` runs it on this node.
    pub target: Option<String>,
    /// The plugin to run it on; `None` is the node's default plugin.
    pub plugin: Option<String>,
    /// The input, as given.
    pub input: Bytes,
    /// How long it may take, all included.
    pub deadline: Duration,
}

/// A task that ran.
#[derive(Debug, Clone)]
pub struct TaskOutcome {
    /// The output.
    pub output: Bytes,
    /// The plugin that ran it.
    pub plugin: String,
    /// The node that ran it: this one, or the node the link to the target proved.
    pub node: NodeId,
}

/// Runs `spec` where it asks, paying the target when payments are on.
pub async fn run(context: &NodeContext, spec: TaskSpec) -> Result<TaskOutcome, Error> {
    let Some(target) = spec.target.as_deref() else {
        let (output, plugin) = context
            .plugins
            .run(
                spec.plugin.as_deref(),
                spec.id,
                spec.input,
                Some(spec.deadline),
            )
            .await?;
        return Ok(TaskOutcome {
            output,
            plugin,
            node: context.identity.id(),
        });
    };
    let target = context.peers.resolve(target).await?;
    let mut task = RunTaskRequest {
        task_id: spec.id,
        input: spec.input,
        plugin: spec.plugin.clone().unwrap_or_default(),
        voucher: None,
    };
    // A second try only after this node caught up with the target's count of the channel (its
    // voucher was refused as too small).
    let mut tries_left = 2;
    let (output, plugin) = loop {
        tries_left -= 1;
        let payment = match &context.payments {
            Some(payments) => {
                payments
                    .payer
                    .pay(&target, Work::Task(spec.plugin.as_deref()))
                    .await?
            }
            None => None,
        };
        task.voucher = payment.as_ref().map(Payment::voucher);
        let outcome = run_on_target(context, &target, task.clone(), spec.deadline).await;
        let caught_up = match payment {
            Some(payment) => payment.settle(&outcome).await,
            None => false,
        };
        if caught_up && tries_left > 0 {
            continue;
        }
        break outcome?;
    };
    Ok(TaskOutcome {
        output,
        plugin,
        // The link answered, so the node it proved is known without another call.
        node: context.peers.node_id(&target).await?,
    })
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
    // Targets outside the configured peers share one label, so strangers cannot grow the metrics.
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
        Ok(Err(status)) => Err(crate::peers::remote_error(&status, target)),
        Err(_elapsed) => Err(Error::new(
            ErrorCode::TargetTimeout,
            format!("target {target} did not answer within {deadline:?}"),
        )),
    }
}

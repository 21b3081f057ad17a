//! `TaskService`: runs tasks from other nodes on this node's plugin.

use sphere_proto::v1::task_service_server::TaskService;
use sphere_proto::v1::{RunTaskRequest, RunTaskResponse};
use tonic::{Request, Response, Status};

use std::time::Duration;

use crate::error::Error;
use crate::payments::payee::Reservation;
use crate::scheduler::verify::{NONCE_BYTES, TaskDigest};

/// Time kept back from the caller's deadline for the answer to travel back.
const ANSWER_MARGIN: Duration = Duration::from_millis(100);
use crate::context::NodeContext;

/// Answers `TaskService` calls.
pub struct TaskGrpc {
    context: NodeContext,
}

impl TaskGrpc {
    pub fn new(context: NodeContext) -> Self {
        Self { context }
    }
}

#[tonic::async_trait]
impl TaskService for TaskGrpc {
    async fn run_task(
        &self,
        request: Request<RunTaskRequest>,
    ) -> Result<Response<RunTaskResponse>, Status> {
        // Finish early enough for a timeout answer to reach the caller before its own deadline.
        let deadline = sphere_plugin::grpc_timeout(request.metadata()).map(|deadline| {
            deadline
                .saturating_sub(ANSWER_MARGIN)
                .max(Duration::from_millis(1))
        });
        let RunTaskRequest {
            task_id,
            input,
            plugin,
            voucher,
            verify_nonce,
        } = request.into_inner();
        if !verify_nonce.is_empty() && !NONCE_BYTES.contains(&verify_nonce.len()) {
            return Err(Error::invalid_field(
                "verify_nonce",
                format!(
                    "has {} bytes; it must have {} to {}",
                    verify_nonce.len(),
                    NONCE_BYTES.start(),
                    NONCE_BYTES.end()
                ),
            )
            .into());
        }
        let plugin = Some(plugin.as_str()).filter(|name| !name.is_empty());
        let reservation = match &self.context.payments {
            Some(payments) => {
                let name = self.context.plugins.resolve(plugin).map_err(Error::from)?;
                let price = payments.task_price(&name);
                let work = format!("a task on plugin {name}");
                payments
                    .payee
                    .reserve(voucher.as_ref(), price, &work)
                    .await?
            }
            None => Reservation::free(),
        };
        let (output, plugin_name) = self
            .context
            .plugins
            .run(plugin, task_id.clone(), input.clone(), deadline)
            .await
            .map_err(Error::from)?;
        reservation.charge().await?;
        let plugin_version = self.context.plugins.version_of(&plugin_name);
        let result_signature = if verify_nonce.is_empty() {
            Vec::new()
        } else {
            TaskDigest {
                plugin: &plugin_name,
                version: &plugin_version,
                input: &input,
                nonce: &verify_nonce,
            }
            .sign(&self.context.identity, &output)
        };
        Ok(Response::new(RunTaskResponse {
            task_id,
            output,
            plugin: plugin_name,
            plugin_version,
            result_signature: result_signature.into(),
        }))
    }
}

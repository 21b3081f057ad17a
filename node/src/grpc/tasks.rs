//! `TaskService`: runs tasks from other nodes on this node's plugin.

use std::time::{Duration, Instant};

use alloy_primitives::U256;
use bytes::Bytes;
use sphere_proto::v1::task_service_server::TaskService;
use sphere_proto::v1::{
    RevealResultRequest, RevealResultResponse, RunTaskRequest, RunTaskResponse, Voucher,
};
use tonic::{Request, Response, Status};

use super::caller;
use super::held::{HELD_FOR, HeldKey, HeldOutput, HeldResults};
use crate::context::NodeContext;
use crate::error::{Error, ErrorCode};
use crate::identity::NodeId;
use crate::payments::payee::Reservation;
use crate::scheduler::verify::{NONCE_BYTES, TaskDigest, output_hash};

/// Time kept back from the caller's deadline for the answer to travel back.
const ANSWER_MARGIN: Duration = Duration::from_millis(100);

/// Answers `TaskService` calls.
pub struct TaskGrpc {
    context: NodeContext,
    held: HeldResults,
}

impl TaskGrpc {
    pub fn new(context: NodeContext) -> Self {
        Self {
            context,
            held: HeldResults::default(),
        }
    }

    /// The payee, the price of a task on `plugin` (`None`: the default one) and how refusals
    /// name the work; `None` when payments are off.
    fn price_of(
        &self,
        plugin: Option<&str>,
    ) -> Result<Option<(&crate::payments::payee::Payee, U256, String)>, Error> {
        let Some(payments) = &self.context.payments else {
            return Ok(None);
        };
        let name = self.context.plugins.resolve(plugin)?;
        Ok(Some((
            &payments.payee,
            payments.task_price(&name),
            format!("a task on plugin {name}"),
        )))
    }

    /// Checks that `voucher` pays for `payer`'s task on `plugin` and reserves its price; free
    /// when payments are off.
    async fn reserve(
        &self,
        plugin: Option<&str>,
        voucher: Option<&Voucher>,
        payer: Option<NodeId>,
    ) -> Result<Reservation, Error> {
        match self.price_of(plugin)? {
            Some((payee, price, work)) => payee.reserve(voucher, price, &work, payer).await,
            None => Ok(Reservation::free()),
        }
    }
}

fn check_nonce(nonce: &[u8]) -> Result<(), Error> {
    if NONCE_BYTES.contains(&nonce.len()) {
        return Ok(());
    }
    Err(Error::invalid_field(
        "verify_nonce",
        format!(
            "has {} bytes; it must have {} to {}",
            nonce.len(),
            NONCE_BYTES.start(),
            NONCE_BYTES.end()
        ),
    ))
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
        let caller = caller(&request);
        let RunTaskRequest {
            task_id,
            input,
            plugin,
            voucher,
            verify_nonce,
            withhold_output,
            credit_channel_id,
        } = request.into_inner();
        let verified = !verify_nonce.is_empty();
        if verified || withhold_output {
            check_nonce(&verify_nonce)?;
        }
        let plugin = Some(plugin.as_str()).filter(|name| !name.is_empty());
        // Paid for now, or, for an output held back, when it is handed over: until then on the
        // credit of the requester's deposit.
        let (reservation, credit) = if withhold_output {
            if !self.held.has_room_for(caller) {
                return Err(Error::new(
                    ErrorCode::Overloaded,
                    "this node holds as many unpaid outputs for you as it keeps; pay for them \
                     (RevealResult) or wait until they expire",
                )
                .into());
            }
            let credit = match self.price_of(plugin)? {
                Some((payee, price, work)) => Some(
                    payee
                        .credit(&credit_channel_id, caller, price, &work)
                        .await?,
                ),
                None => None,
            };
            (Reservation::free(), credit)
        } else {
            (self.reserve(plugin, voucher.as_ref(), caller).await?, None)
        };
        let (output, plugin_name) = self
            .context
            .plugins
            .run(plugin, task_id.clone(), input.clone(), deadline)
            .await
            .map_err(Error::from)?;
        let charged = reservation.charge().await?;
        let plugin_version = self.context.plugins.version_of(&plugin_name);
        let mut response = RunTaskResponse {
            task_id,
            plugin_version,
            channel_charged_wei: charged.map(|wei| wei.to_string()).unwrap_or_default(),
            ..RunTaskResponse::default()
        };
        if verified {
            let hash = output_hash(&output);
            response.result_signature = TaskDigest {
                plugin: &plugin_name,
                version: &response.plugin_version,
                input: &input,
                nonce: &verify_nonce,
            }
            .sign(&self.context.identity, &hash)
            .into();
            if withhold_output {
                response.output_sha256 = Bytes::copy_from_slice(&hash);
                response.held_for_ms = HELD_FOR.as_millis() as u64;
                self.held.hold(
                    HeldKey {
                        caller,
                        task_id: response.task_id.clone(),
                        nonce: verify_nonce,
                    },
                    HeldOutput {
                        output,
                        plugin: plugin_name.clone(),
                        credit,
                        held_at: Instant::now(),
                    },
                );
                response.plugin = plugin_name;
                return Ok(Response::new(response));
            }
        }
        response.output = output;
        response.plugin = plugin_name;
        Ok(Response::new(response))
    }

    async fn reveal_result(
        &self,
        request: Request<RevealResultRequest>,
    ) -> Result<Response<RevealResultResponse>, Status> {
        let caller = caller(&request);
        let RevealResultRequest {
            task_id,
            verify_nonce,
            voucher,
        } = request.into_inner();
        let key = HeldKey {
            caller,
            task_id,
            nonce: verify_nonce,
        };
        let Some(held) = self.held.take(&key) else {
            return Err(Error::new(
                ErrorCode::TaskNotFound,
                format!(
                    "this node holds no output of task {:?} with that nonce for you: it was never \
                     held, was handed over already, or was kept past {} s",
                    key.task_id,
                    HELD_FOR.as_secs()
                ),
            )
            .into());
        };
        let paid = match self
            .reserve(Some(&held.plugin), voucher.as_ref(), key.caller)
            .await
        {
            Ok(reservation) => reservation.charge().await,
            Err(refusal) => Err(refusal),
        };
        let charged = match paid {
            Ok(charged) => charged,
            Err(error) => {
                // Unpaid, so still the requester's to pay for, within the life it had.
                self.held.hold(key, held);
                return Err(error.into());
            }
        };
        // Paid: the deposit's credit goes back.
        let HeldOutput { output, credit, .. } = held;
        drop(credit);
        Ok(Response::new(RevealResultResponse {
            output,
            channel_charged_wei: charged.map(|wei| wei.to_string()).unwrap_or_default(),
        }))
    }
}

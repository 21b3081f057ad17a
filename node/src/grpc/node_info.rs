//! `NodeService`: who this node is.

use sphere_proto::v1::node_service_server::NodeService;
use sphere_proto::v1::{GetInfoRequest, GetInfoResponse};
use tonic::{Request, Response, Status};

use crate::context::NodeContext;

/// Answers `NodeService` calls.
pub struct NodeInfoGrpc {
    context: NodeContext,
}

impl NodeInfoGrpc {
    pub fn new(context: NodeContext) -> Self {
        Self { context }
    }
}

#[tonic::async_trait]
impl NodeService for NodeInfoGrpc {
    async fn get_info(
        &self,
        request: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        let payments = self.context.payments.as_ref();
        let your_channels = payments
            .zip(super::caller(&request))
            .map(|(payments, caller)| payments.payee.counts_for(caller))
            .unwrap_or_default();
        Ok(Response::new(GetInfoResponse {
            node_id: self.context.identity.node_id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            plugins: self.context.plugins.summaries(),
            payment_terms: payments.map(|payments| payments.terms()),
            your_channels,
        }))
    }
}

//! What the node tells about itself: health, identity and addresses, plugins, peers, metrics,
//! and the API's own description.

use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::openapi::{CommonErrors, error_responses};
use crate::address::NodeAddress;
use crate::api::{
    HealthAnswer, NodeAnswer, NodeHealth, PeerAddresses, PeerInfo, PeerList, PeerSource,
    PeerStanding, PeerState, PluginHealth, PluginList, Prices,
};
use crate::context::NodeContext;
use crate::error::{Error, ErrorCode};
use crate::identity::NodeId;
use crate::mesh::record::peer_plugin;
use crate::peers::Target;
use crate::plugin::registry::SlotHealth;

error_responses!(
    /// Errors of `GET /health`: none, it is answered while the node runs.
    HealthErrors:
);

/// The node's identity and whether its plugins are serving: `status` is `ok` when every plugin
/// is, `degraded` otherwise (the node still stores files and runs the healthy plugins' tasks).
/// Open without the token, for health checks.
#[utoipa::path(
    get,
    path = "/health",
    tag = "node",
    security(()),
    responses((status = 200, description = "The node runs", body = HealthAnswer), HealthErrors),
)]
pub async fn health(State(context): State<NodeContext>) -> axum::Json<HealthAnswer> {
    let status = if context.plugins.all_serving() {
        NodeHealth::Ok
    } else {
        NodeHealth::Degraded
    };
    let plugins = context
        .plugins
        .statuses()
        .into_iter()
        .map(|plugin| PluginHealth {
            name: plugin.name,
            health: plugin.health,
        })
        .collect();
    axum::Json(HealthAnswer {
        status,
        node_id: context.identity.node_id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        plugins,
    })
}

/// Who and where the node is, and since when.
#[utoipa::path(
    get,
    path = "/node",
    tag = "node",
    responses((status = 200, description = "The node", body = NodeAnswer), CommonErrors),
)]
pub async fn node(State(context): State<NodeContext>) -> axum::Json<NodeAnswer> {
    let uptime = SystemTime::now()
        .duration_since(context.started_at)
        .unwrap_or_default();
    axum::Json(NodeAnswer {
        node_id: context.identity.node_id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: humantime::format_rfc3339_seconds(context.started_at).to_string(),
        uptime_seconds: uptime.as_secs(),
        grpc_address: context.grpc_address.to_string(),
        http_address: context.http_address.to_string(),
        token_required: context.api_access.is_required(),
        payments_enabled: context.payments.is_some(),
        labels: context.labels.clone(),
    })
}

/// Every plugin with its description, health, load and counters.
#[utoipa::path(
    get,
    path = "/plugins",
    tag = "node",
    responses((status = 200, description = "The node's plugins", body = PluginList), CommonErrors),
)]
pub async fn plugins(State(context): State<NodeContext>) -> axum::Json<PluginList> {
    axum::Json(PluginList {
        plugins: context.plugins.statuses(),
    })
}

/// The peers this node knows: the mesh's members from their signed records, then configured
/// peers that are not members, each asked who it is (all at once, each within the connect
/// timeout).
#[utoipa::path(
    get,
    path = "/peers",
    tag = "node",
    responses((status = 200, description = "The peers", body = PeerList), CommonErrors),
)]
pub async fn peers(State(context): State<NodeContext>) -> axum::Json<PeerList> {
    axum::Json(PeerList {
        peers: known_peers(&context).await,
    })
}

error_responses!(
    /// Errors of `GET /peers/{id}`.
    PeerErrors: InvalidField, PeerNotFound
);

/// One peer, by node ID, as `GET /peers` shows it.
#[utoipa::path(
    get,
    path = "/peers/{id}",
    tag = "node",
    params(("id" = String, Path, description = "The peer's node ID (0x and 40 hex digits)")),
    responses((status = 200, description = "The peer", body = PeerInfo), PeerErrors, CommonErrors),
)]
pub async fn peer(
    State(context): State<NodeContext>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<axum::Json<PeerInfo>, Error> {
    let node: NodeId = id
        .parse()
        .map_err(|error| Error::invalid_field("id", error))?;
    let wanted = node.to_string();
    let is_wanted = |peer: &PeerInfo| peer.id.as_deref() == Some(wanted.as_str());
    let members = members(&context).await;
    // Configured peers outside the mesh are asked only when no member is the node.
    let found = match members.iter().position(is_wanted) {
        Some(index) => members.into_iter().nth(index),
        None => ask_outside(&context, &members)
            .await
            .into_iter()
            .find(is_wanted),
    };
    found
        .map(axum::Json)
        .ok_or_else(|| Error::new(ErrorCode::PeerNotFound, format!("no peer is node {node}")))
}

async fn members(context: &NodeContext) -> Vec<PeerInfo> {
    let mut members = match &context.mesh {
        Some(mesh) => mesh.members().await,
        None => Vec::new(),
    };
    let standings = context.standings.snapshot();
    for member in &mut members {
        let node = member
            .id
            .as_deref()
            .and_then(|id| id.parse::<NodeId>().ok());
        member.standing = node
            .and_then(|node| standings.get(&node))
            .map(|standing| PeerStanding {
                in_flight: standing.in_flight,
                success: standing.success,
            });
    }
    members
}

async fn known_peers(context: &NodeContext) -> Vec<PeerInfo> {
    let mut peers = members(context).await;
    let outside = ask_outside(context, &peers).await;
    peers.extend(outside);
    peers
}

/// Asks the configured peers that are not among `members` who they are.
async fn ask_outside(context: &NodeContext, members: &[PeerInfo]) -> Vec<PeerInfo> {
    let outside: Vec<&NodeAddress> = context
        .files
        .options()
        .providers
        .iter()
        .filter(|address| !members.iter().any(|peer| **address == *peer.addresses.grpc))
        .collect();
    let asks = outside
        .into_iter()
        .map(|address| ask_peer(context, address));
    futures_util::future::join_all(asks).await
}

async fn ask_peer(context: &NodeContext, address: &NodeAddress) -> PeerInfo {
    let started = Instant::now();
    let target = Target::anyone_at(address.clone());
    let answer = match context.peers.info(&target).await {
        // The node its link proved, whatever it says about itself.
        Ok(info) => context
            .peers
            .node_id(&target)
            .await
            .map(|node| (node, info)),
        Err(error) => Err(error),
    };
    let rtt_ms = duration_ms(started.elapsed());
    let mut peer = PeerInfo {
        id: None,
        state: PeerState::Dead,
        source: PeerSource::Configured,
        addresses: PeerAddresses {
            grpc: address.to_string(),
            http: None,
            gossip: None,
        },
        version: None,
        labels: Default::default(),
        plugins: Vec::new(),
        payments: None,
        prices: None,
        capacity: None,
        load: None,
        last_seen_ms: None,
        rtt_ms: None,
        error: None,
        standing: None,
    };
    match answer {
        Ok((node, info)) => {
            peer.state = PeerState::Alive;
            peer.id = Some(node.to_string());
            peer.version = Some(info.version);
            peer.plugins = info.plugins.into_iter().map(peer_plugin).collect();
            peer.payments = Some(info.payment_terms.is_some());
            peer.prices = info.payment_terms.as_ref().and_then(Prices::from_terms);
            peer.last_seen_ms = Some(0);
            peer.rtt_ms = Some(rtt_ms);
        }
        Err(error) => peer.error = Some(error.into()),
    }
    peer
}

fn duration_ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

/// The node's metrics in Prometheus's text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "node",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String),
        CommonErrors,
    ),
)]
pub async fn metrics(State(context): State<NodeContext>) -> Response {
    for plugin in context.plugins.statuses() {
        crate::metrics::plugin(
            &plugin.name,
            plugin.health == SlotHealth::Serving,
            plugin.restarts,
            plugin.in_flight,
            plugin.queued,
        );
    }
    let (capacity_bytes, used_bytes) = context.objects.capacity();
    crate::metrics::storage(capacity_bytes, used_bytes);
    if let Some(payments) = &context.payments {
        payments.record_metrics();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}

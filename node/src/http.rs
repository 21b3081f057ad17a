//! The REST API, how people and scripts drive a node.
//!
//! | route | what it does |
//! |---|---|
//! | `POST /task` | runs a task on a target node (or this one) and returns its output |
//! | `POST /file` | stores a small file sent as base64 in JSON |
//! | `GET /file` (JSON body) and `GET /file/{id}` | reads a small file back as base64 in JSON |
//! | `PUT /files/{name}?target=` | stores a file of any size streamed as the raw body |
//! | `GET /files/{id}` | streams a file of any size back as raw bytes |
//! | `GET /files` | the owner's files with the health of each replica |
//! | `DELETE /files/{id}` | deletes a file from every replica |
//! | `POST /files/recover` | finds the node's files again on its peers after losing its database |
//! | `GET /storage` | the space this node offers others, and each owner's use |
//! | `GET /plugins` | the node's plugins: description, health, load, counters |
//! | `GET /payments` | payments: settings, balance, channels both ways, spent, earned, pending |
//! | `POST /payments/redeem` | redeems every unredeemed voucher now |
//! | `POST /channels` | opens a payment channel to a provider |
//! | `GET /channels/{id}` | one channel this node pays through |
//! | `POST /channels/recover` | finds this node's channels again on the chain after losing its database |
//! | `POST /channels/{id}/topup` | adds to a channel's deposit |
//! | `POST /channels/{id}/close` | asks to close a channel; after the challenge period, closes it |
//! | `GET /health` | the node's identity and its plugins' health |
//! | `GET /metrics` | Prometheus metrics: requests, tasks, connections |
//!
//! Every failure answers `{"error": {"code": "...", "message": "..."}}` (see [`crate::error`]).

pub mod access;
mod extract;
mod files;
mod payments;
mod tasks;

use std::future::Future;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use crate::connections::{ConnectionHandle, GuardedListener, TrackRequestsLayer};
use crate::error::{Error, ErrorCode};
use crate::node::NodeContext;

/// Serves the REST API on `listener` until `shutdown` completes, then lets in-flight requests
/// finish.
pub async fn serve(
    listener: GuardedListener,
    context: NodeContext,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(context)
        .layer(TrackRequestsLayer)
        .into_make_service_with_connect_info::<ConnectionHandle>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Returns the API's routes with their middleware.
pub fn router(context: NodeContext) -> Router {
    let json_limit = DefaultBodyLimit::max(context.max_json_body_bytes);
    let json_routes = Router::new()
        .route("/task", post(tasks::run_task))
        .route("/file", post(files::store_json).get(files::read_json))
        .route("/file/{id}", get(files::read_json_by_path))
        .route("/channels", post(payments::open))
        .route("/channels/{id}/topup", post(payments::top_up))
        .layer(json_limit);
    let stream_routes = Router::new()
        .route(
            "/files/{name_or_id}",
            put(files::store_stream)
                .get(files::read_stream)
                .delete(files::delete),
        )
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .merge(json_routes)
        .merge(stream_routes)
        .route("/files", get(files::list))
        .route("/files/recover", post(files::recover))
        .route("/storage", get(files::storage))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/plugins", get(plugins))
        .route("/payments", get(payments::summary))
        .route("/payments/redeem", post(payments::redeem))
        .route("/channels/{id}", get(payments::show))
        .route("/channels/{id}/close", post(payments::close))
        .route("/channels/recover", post(payments::recover))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            context.api_access.clone(),
            access::require_token,
        ))
        .layer(axum::middleware::from_fn(log_request))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(context)
}

/// The node's identity and whether its plugins are serving: `status` is `ok` when every plugin
/// is, `degraded` otherwise (the node still stores files and runs the healthy plugins' tasks).
async fn health(State(context): State<NodeContext>) -> Response {
    let status = if context.plugins.all_serving() {
        "ok"
    } else {
        "degraded"
    };
    let plugins: Vec<_> = context
        .plugins
        .statuses()
        .into_iter()
        .map(|plugin| serde_json::json!({"name": plugin.name, "health": plugin.health}))
        .collect();
    axum::Json(serde_json::json!({
        "status": status,
        "node_id": context.identity.node_id(),
        "version": env!("CARGO_PKG_VERSION"),
        "plugins": plugins,
    }))
    .into_response()
}

/// The node's metrics in Prometheus's text format.
async fn metrics(State(context): State<NodeContext>) -> Response {
    for plugin in context.plugins.statuses() {
        crate::metrics::plugin(
            &plugin.name,
            plugin.health == crate::plugin::registry::SlotHealth::Serving,
            plugin.restarts,
            plugin.in_flight,
            plugin.queued,
        );
    }
    let (capacity_bytes, used_bytes) = context.objects.capacity();
    crate::metrics::storage(capacity_bytes, used_bytes);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}

/// Every plugin with its description, health, load and counters.
async fn plugins(State(context): State<NodeContext>) -> Response {
    axum::Json(serde_json::json!({ "plugins": context.plugins.statuses() })).into_response()
}

async fn route_not_found(request: Request) -> Error {
    Error::new(
        ErrorCode::RouteNotFound,
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> Error {
    Error::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Logs one line per request: method, path, status, error code if any, and duration.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |route| route.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    crate::metrics::http_request(&route, method.as_str(), status, started.elapsed());
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    match response.extensions().get::<ErrorCode>() {
        Some(code) => {
            tracing::info!(%method, path, status, error = %code, duration_ms, "request failed")
        }
        None => tracing::info!(%method, path, status, duration_ms, "request"),
    }
    response
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "request handler panicked");
    Error::new(
        ErrorCode::Internal,
        "the node hit a bug while handling this request; it has been logged",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_json_500_and_the_router_keeps_serving() {
        async fn boom() -> &'static str {
            panic!("handler bug")
        }
        let app = Router::new()
            .route("/boom", get(boom))
            .route("/fine", get(|| async { "fine" }))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(
                panic_response,
            ));
        let response = app
            .clone()
            .oneshot(Request::get("/boom").body(Body::empty()).expect("request"))
            .await
            .expect("answered");
        assert_eq!(response.status(), 500);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["error"]["code"], "internal");
        let response = app
            .oneshot(Request::get("/fine").body(Body::empty()).expect("request"))
            .await
            .expect("answered");
        assert_eq!(response.status(), 200);
    }
}

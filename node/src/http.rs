//! The REST API, how people and scripts drive a node.
//!
//! | route | what it does |
//! |---|---|
//! | `POST /task` | runs a task on a target node, this one, or the one the scheduler chooses, and returns its output |
//! | `POST /tasks` | accepts a task to run in the background (202) |
//! | `GET /tasks/{id}`, `GET /tasks` | a background task's state, node, timings, output or error; the recent ones |
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
//! | `GET /node` | the node's identity, addresses and uptime |
//! | `GET /peers` | the mesh's members and configured peers: addresses, plugins, prices, capacity, load, state |
//! | `GET /peers/{id}` | one peer by node ID |
//! | `GET /metrics` | Prometheus metrics: requests, tasks, plugins, storage, payments, connections |
//! | `GET /openapi.json` | the OpenAPI 3.1 description of these routes |
//! | `GET /` | the dashboard |
//!
//! Every failure answers `{"error": {"code": "...", "message": "..."}}` (see [`crate::error`]).

pub mod access;
mod dashboard;
mod extract;
mod files;
pub mod openapi;
mod payments;
mod status;
mod tasks;

use std::future::Future;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::connections::{ConnectionHandle, GuardedListener, TrackRequestsLayer};
use crate::context::NodeContext;
use crate::error::{Error, ErrorCode};

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

/// Returns the API's routes and their OpenAPI description, without state or middleware.
fn api() -> (Router<NodeContext>, utoipa::openapi::OpenApi) {
    let json_routes = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(tasks::run_task))
        .routes(routes!(tasks::submit, tasks::list))
        .routes(routes!(files::store_json, files::read_json))
        .routes(routes!(files::read_json_by_path))
        .routes(routes!(payments::open))
        .routes(routes!(payments::top_up));
    let stream_routes = OpenApiRouter::new()
        .routes(routes!(
            files::store_stream,
            files::read_stream,
            files::delete
        ))
        .layer(DefaultBodyLimit::disable());
    let (json_router, mut description) = json_routes.split_for_parts();
    let (stream_router, stream_description) = stream_routes.split_for_parts();
    description.merge(stream_description);
    let (other_router, other_description) = OpenApiRouter::new()
        .routes(routes!(tasks::status))
        .routes(routes!(files::list))
        .routes(routes!(files::recover))
        .routes(routes!(files::storage))
        .routes(routes!(status::health))
        .routes(routes!(status::node))
        .routes(routes!(status::plugins))
        .routes(routes!(status::peers))
        .routes(routes!(status::peer))
        .routes(routes!(status::metrics))
        .routes(routes!(payments::summary))
        .routes(routes!(payments::redeem))
        .routes(routes!(payments::show))
        .routes(routes!(payments::close))
        .routes(routes!(payments::recover))
        .split_for_parts();
    description.merge(other_description);
    let router = json_router.merge(stream_router).merge(other_router);
    (router, description)
}

/// Returns the API's routes with their middleware.
pub fn router(context: NodeContext) -> Router {
    let json_limit = DefaultBodyLimit::max(context.max_json_body_bytes);
    let (routes, description) = api();
    let document = axum::body::Bytes::from(
        description
            .to_json()
            .expect("the OpenAPI document serialises"),
    );
    routes
        .route(
            "/openapi.json",
            get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    document.clone(),
                )
            }),
        )
        // Inside the token check: a stranger learns nothing of which routes exist.
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(json_limit)
        .layer(axum::middleware::from_fn_with_state(
            context.api_access.clone(),
            access::require_token,
        ))
        .merge(dashboard::routes())
        .layer(axum::middleware::from_fn(log_request))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(context)
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

/// Logs one line per request: method, path, status, error code if any, and duration; at `debug`
/// for requests that succeed (a line per task at `info` cost a tenth of the task path, and
/// `sphere_http_requests_total` counts them anyway), at `info` for those that fail.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let uri = request.uri().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let response = next.run(request).await;
    let duration = started.elapsed();
    let route = route
        .as_ref()
        .map_or("unmatched", axum::extract::MatchedPath::as_str);
    crate::metrics::http_request(route, method.as_str(), response.status().as_str(), duration);
    let status = response.status().as_u16();
    let duration_ms = duration.as_secs_f64() * 1000.0;
    let path = uri.path();
    match response.extensions().get::<ErrorCode>() {
        Some(code) => {
            tracing::info!(%method, path, status, error = %code, duration_ms, "request failed")
        }
        None => tracing::debug!(%method, path, status, duration_ms, "request"),
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

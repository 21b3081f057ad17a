//! The dashboard: a web page over the public REST API, served from files embedded in the binary
//! (`node/web/`, with its vendored chart library), so `sphere node` needs no other files.
//!
//! The page and its scripts are open without the token: they hold no data, and the page asks
//! for the token when the API refuses it.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::{Error, ErrorCode};

#[derive(rust_embed::RustEmbed)]
#[folder = "web/"]
struct Assets;

/// What the page may load and talk to: only this node.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; \
    style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Returns the routes of the page and its assets.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(asset))
        .route("/index.html", get(asset))
        .route("/app.js", get(asset))
        .route("/style.css", get(asset))
        .route("/vendor/{file}", get(asset))
}

async fn asset(request: Request) -> Response {
    let path = match request.uri().path().trim_start_matches('/') {
        "" => "index.html",
        path => path,
    };
    let Some(file) = Assets::get(path) else {
        return Error::new(
            ErrorCode::RouteNotFound,
            format!("no route for GET {}", request.uri().path()),
        )
        .into_response();
    };
    let mut response = (StatusCode::OK, file.data.into_owned()).into_response();
    let headers = response.headers_mut();
    if let Ok(mime) = HeaderValue::from_str(file.metadata.mimetype()) {
        headers.insert(header::CONTENT_TYPE, mime);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The binary is the version: a new node serves new files, so browsers check each load.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

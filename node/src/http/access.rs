//! Who may use the REST API: whoever reaches it acts as the node's owner (spends its channels,
//! reads and deletes its files), so a listener others can reach requires a bearer token.
//!
//! The token is `http.token` when configured (then always required), else a random one the node
//! writes to `<data_dir>/api.token` at first start, required when `http.listen` is not a
//! loopback address. `GET /health` stays open for health checks, `GET /openapi.json` for
//! tools that read the API's description.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::config::HttpConfig;
use crate::error::{Error, ErrorCode};

/// What anyone may `GET` without the token: health checks, and the API's description.
const OPEN_PATHS: [&str; 2] = ["/health", "/openapi.json"];

/// Name of the token file in the data directory.
pub const TOKEN_FILE: &str = "api.token";

/// The token requests must carry, or `None` when the API is open (loopback, no token set).
#[derive(Debug, Clone, Default)]
pub struct ApiAccess {
    required_token: Option<Arc<str>>,
}

impl ApiAccess {
    /// Returns the access rule for `config`, creating `<data_dir>/api.token` if it is missing.
    pub fn for_config(config: &HttpConfig, data_dir: &Path) -> std::io::Result<Self> {
        let file_token = load_or_create_token(&data_dir.join(TOKEN_FILE))?;
        let required_token = match &config.token {
            Some(token) => Some(Arc::from(token.as_str())),
            None if config.listen.ip().is_loopback() => None,
            None => Some(Arc::from(file_token.as_str())),
        };
        Ok(Self { required_token })
    }

    /// Returns whether requests need a token.
    pub fn is_required(&self) -> bool {
        self.required_token.is_some()
    }
}

/// Returns the token in `path`, writing a new random one (readable by the owner only) when the
/// file does not exist.
fn load_or_create_token(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(token) => return Ok(token.trim().to_owned()),
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        Err(_) => {}
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?
    };
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()?;
    Ok(token)
}

/// Returns the token a client finds in the data directory `data_dir`, if there is one.
pub fn token_in(data_dir: &Path) -> Option<String> {
    let path: PathBuf = data_dir.join(TOKEN_FILE);
    std::fs::read_to_string(path)
        .ok()
        .map(|token| token.trim().to_owned())
        .filter(|token| !token.is_empty())
}

/// Refuses, with 401 `unauthorized`, a request without the required bearer token.
pub async fn require_token(
    State(access): State<ApiAccess>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &access.required_token else {
        return next.run(request).await;
    };
    if request.method() == Method::GET && OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let problem = match given {
        Some(token) if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) => {
            return next.run(request).await;
        }
        Some(_) => "the bearer token is wrong",
        None => "this API needs `Authorization: Bearer <token>`",
    };
    let mut response = Error::new(
        ErrorCode::Unauthorized,
        format!(
            "{problem}; the token is http.token, or the file {TOKEN_FILE} in the node's data \
             directory (the CLI reads it from there, or takes --token)"
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

//! File routes: JSON with base64 for small files, raw streams for files of any size.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::extract::{JsonBody, base64_field, required, to_base64};
use crate::error::{Error, ErrorCode};
use crate::files::ByteStream;
use crate::node::NodeContext;
use crate::storage::files::FileRecord;

/// `POST /file`: a small file to store.
#[derive(Debug, Deserialize)]
pub struct StoreFileRequest {
    /// gRPC address of the provider to store the file on.
    target: Option<String>,
    /// Name of the file; need not be unique.
    name: Option<String>,
    /// Contents, base64.
    data: Option<String>,
}

/// `GET /file`: which file to read back.
#[derive(Debug, Deserialize)]
pub struct ReadFileRequest {
    /// Provider to read from; by default the one the file was stored on.
    target: Option<String>,
    /// The file's ID.
    id: Option<String>,
}

/// Query of the streaming and by-path routes.
#[derive(Debug, Deserialize)]
pub struct TargetQuery {
    /// Provider to store on (required for `PUT`) or read from (optional).
    target: Option<String>,
}

/// What the node tells about a stored file.
#[derive(Debug, Serialize)]
pub struct FileInfo {
    id: String,
    name: String,
    size: u64,
    created_at: String,
    /// Address of the provider holding the file (the first, when there are several).
    target: String,
    /// Node ID of that provider.
    provider_id: String,
    /// Contents, base64; only in JSON reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
}

impl FileInfo {
    fn of(record: &FileRecord, data: Option<String>) -> Self {
        let created_at =
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(record.created_at_ms);
        let first_replica = record.replicas.first();
        Self {
            id: record.id.clone(),
            name: record.name.clone(),
            size: record.size,
            created_at: humantime::format_rfc3339_millis(created_at).to_string(),
            target: first_replica
                .map(|replica| replica.address.clone())
                .unwrap_or_default(),
            provider_id: first_replica
                .map(|replica| replica.provider_id.clone())
                .unwrap_or_default(),
            data,
        }
    }
}

/// `POST /file`: stores a small file sent as base64 JSON.
pub async fn store_json(
    State(context): State<NodeContext>,
    JsonBody(request): JsonBody<StoreFileRequest>,
) -> Result<Response, Error> {
    let target = required(request.target, "target")?;
    let name = required(request.name, "name")?;
    let data = base64_field(&required(request.data, "data")?, "data")?;
    let plaintext: ByteStream =
        Box::pin(futures_util::stream::once(
            async move { Ok(Bytes::from(data)) },
        ));
    let record = context.files.store(&target, name, plaintext).await?;
    Ok(axum::Json(FileInfo::of(&record, None)).into_response())
}

/// `GET /file` with a JSON body `{"id": ..., "target": ...}`.
pub async fn read_json(
    State(context): State<NodeContext>,
    JsonBody(request): JsonBody<ReadFileRequest>,
) -> Result<Response, Error> {
    let id = required(request.id, "id")?;
    read_json_response(&context, &id, request.target.as_deref()).await
}

/// `GET /file/{id}?target=...`.
pub async fn read_json_by_path(
    State(context): State<NodeContext>,
    Path(id): Path<String>,
    Query(query): Query<TargetQuery>,
) -> Result<Response, Error> {
    read_json_response(&context, &id, query.target.as_deref()).await
}

async fn read_json_response(
    context: &NodeContext,
    id: &str,
    target: Option<&str>,
) -> Result<Response, Error> {
    let record = context.files.record(id).await?;
    // The answer holds the file base64-encoded; past the request limit, streaming is the way.
    if record.size > context.max_json_body_bytes as u64 {
        return Err(Error::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "file {id} has {} bytes, more than http.max_json_body_bytes; read it with GET /files/{id}",
                record.size
            ),
        ));
    }
    let chunks: Vec<Bytes> = context
        .files
        .read(&record, target)
        .await?
        .try_collect()
        .await?;
    let data = to_base64(&chunks.concat());
    Ok(axum::Json(FileInfo::of(&record, Some(data))).into_response())
}

/// `PUT /files/{name}?target=...`: stores the raw request body, streamed.
pub async fn store_stream(
    State(context): State<NodeContext>,
    Path(name): Path<String>,
    Query(query): Query<TargetQuery>,
    body: Body,
) -> Result<Response, Error> {
    let target = required(query.target, "target")?;
    let plaintext: ByteStream = Box::pin(body.into_data_stream().map_err(|error| {
        Error::new(
            ErrorCode::InvalidField,
            format!("the request body broke off: {error}"),
        )
    }));
    let record = context.files.store(&target, name, plaintext).await?;
    let location =
        HeaderValue::from_str(&format!("/files/{}", record.id)).expect("ids are header-safe");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(FileInfo::of(&record, None)),
    )
        .into_response())
}

/// `GET /files/{id}?target=...`: streams the plaintext back. Failures before the first byte get a
/// JSON error; a failure later cuts the response short, so a client never takes a partial file for
/// a whole one (the `Content-Length` is not reached).
pub async fn read_stream(
    State(context): State<NodeContext>,
    Path(id): Path<String>,
    Query(query): Query<TargetQuery>,
) -> Result<Response, Error> {
    let record = context.files.record(&id).await?;
    let mut plaintext = context.files.read(&record, query.target.as_deref()).await?;
    let first_chunk = plaintext.next().await.transpose()?;
    let file_id = record.id.clone();
    let rest = plaintext.map_err(move |error| {
        tracing::warn!(%file_id, %error, "file stream cut short");
        std::io::Error::other(error)
    });
    let body = Body::from_stream(futures_util::stream::iter(first_chunk.map(Ok)).chain(rest));
    let disposition = format!(
        "attachment; filename=\"{}\"",
        record.name.replace(['"', '\\', '\r', '\n'], "_")
    );
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(record.size)),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition)
                    .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
            ),
        ],
        body,
    )
        .into_response())
}

//! File routes: JSON with base64 for small files, raw streams for files of any size, the list of
//! the owner's files with the health of each replica, deletion and recovery; and the provider's
//! view of the space it offers.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::extract::{JsonBody, Path, Query, base64_field, required, to_base64};
use crate::error::{Error, ErrorCode};
use crate::files::{ByteStream, Placement};
use crate::node::NodeContext;
use crate::storage::files::{FileRecord, Replica};

/// `POST /file`: a small file to store.
#[derive(Debug, Deserialize)]
pub struct StoreFileRequest {
    /// gRPC address of the one provider to store the file on.
    target: Option<String>,
    /// gRPC addresses of the providers to store the file on, one replica each.
    targets: Option<Vec<String>>,
    /// How many providers to pick among the node's peers, when none are named.
    replicas: Option<u32>,
    /// Name of the file; need not be unique.
    name: Option<String>,
    /// Contents, base64.
    data: Option<String>,
}

/// `GET /file`: which file to read back.
#[derive(Debug, Deserialize)]
pub struct ReadFileRequest {
    /// Provider to read from first; by default the file's replicas.
    target: Option<String>,
    /// The file's ID.
    id: Option<String>,
}

/// Query of the streaming and by-path routes.
#[derive(Debug, Deserialize)]
pub struct FileQuery {
    /// Provider to store on, or to read from first.
    target: Option<String>,
    /// Providers to store on, comma-separated.
    targets: Option<String>,
    /// How many providers to pick among the node's peers.
    replicas: Option<u32>,
}

/// `POST /files/recover`: extra providers to ask.
#[derive(Debug, Default, Deserialize)]
pub struct RecoverRequest {
    /// Providers to ask besides the configured peers.
    #[serde(default)]
    providers: Vec<String>,
}

/// A replica as the owner sees it.
#[derive(Debug, Serialize)]
pub struct ReplicaInfo {
    /// The provider's gRPC address.
    target: String,
    /// The provider's node ID.
    provider_id: String,
    /// `unaudited`, `ok`, `failing` (audits fail, within the grace period) or `lost`.
    health: &'static str,
    /// When the last audit ended.
    last_audit: Option<String>,
    /// Why the last audit failed.
    last_audit_error: Option<String>,
    /// Until when the copy is paid for, when the provider charges for storage.
    #[serde(skip_serializing_if = "Option::is_none")]
    paid_until: Option<String>,
}

/// What the node tells about a stored file.
#[derive(Debug, Serialize)]
pub struct FileInfo {
    id: String,
    name: String,
    size: u64,
    created_at: String,
    /// Address of the first provider holding the file.
    target: String,
    /// Node ID of that provider.
    provider_id: String,
    /// `ok` (as many healthy replicas as wanted), `degraded` (fewer, or some failing audits)
    /// or `lost` (no replica left that is not lost: reads answer 410 `file_lost`).
    health: &'static str,
    /// Replicas the file should have.
    replicas_wanted: u32,
    /// Every provider holding the file, with what the audits found.
    replicas: Vec<ReplicaInfo>,
    /// Contents, base64; only in JSON reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
}

fn rfc3339(milliseconds: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(milliseconds);
    humantime::format_rfc3339_millis(time).to_string()
}

impl FileInfo {
    fn of(context: &NodeContext, record: &FileRecord, data: Option<String>) -> Self {
        let grace_ms = context.files.options().lost_after.as_millis() as u64;
        let now = crate::clock::now_ms();
        let first_replica = record.replicas.first();
        let replicas: Vec<ReplicaInfo> = record
            .replicas
            .iter()
            .map(|replica| ReplicaInfo::of(replica, now, grace_ms))
            .collect();
        let healthy = replicas
            .iter()
            .filter(|replica| matches!(replica.health, "ok" | "unaudited"))
            .count();
        let health = if replicas.iter().all(|replica| replica.health == "lost") {
            "lost"
        } else if healthy >= record.replicas_wanted as usize {
            "ok"
        } else {
            "degraded"
        };
        Self {
            id: record.manifest.id.clone(),
            name: record.manifest.name.clone(),
            size: record.manifest.size,
            created_at: rfc3339(record.manifest.created_at_ms),
            target: first_replica
                .map(|replica| replica.address.clone())
                .unwrap_or_default(),
            provider_id: first_replica
                .map(|replica| replica.provider_id.clone())
                .unwrap_or_default(),
            health,
            replicas_wanted: record.replicas_wanted,
            replicas,
            data,
        }
    }
}

impl ReplicaInfo {
    fn of(replica: &Replica, now: u64, grace_ms: u64) -> Self {
        let health = match (replica.last_audit_ok, replica.is_lost(now, grace_ms)) {
            (_, true) => "lost",
            (None, false) => "unaudited",
            (Some(true), false) => "ok",
            (Some(false), false) => "failing",
        };
        Self {
            target: replica.address.clone(),
            provider_id: replica.provider_id.clone(),
            health,
            last_audit: replica.last_audit_ms.map(rfc3339),
            last_audit_error: replica.last_audit_error.clone(),
            paid_until: replica.paid_until_ms.map(rfc3339),
        }
    }
}

/// Returns where a new file goes: `targets`, else `target`, else `replicas` picked by the node.
fn placement(
    target: Option<String>,
    targets: Option<Vec<String>>,
    replicas: Option<u32>,
) -> Result<Placement, Error> {
    let targets = match (targets, target) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid_field(
                "targets",
                "cannot be given together with `target`",
            ));
        }
        (Some(targets), None) if targets.is_empty() => {
            return Err(Error::invalid_field(
                "targets",
                "must name at least one provider",
            ));
        }
        (Some(targets), None) => targets,
        (None, Some(target)) => vec![target],
        (None, None) => Vec::new(),
    };
    if !targets.is_empty() && replicas.is_some() {
        return Err(Error::invalid_field(
            "replicas",
            "cannot be given together with named targets",
        ));
    }
    Ok(Placement { targets, replicas })
}

/// `POST /file`: stores a small file sent as base64 JSON.
pub async fn store_json(
    State(context): State<NodeContext>,
    JsonBody(request): JsonBody<StoreFileRequest>,
) -> Result<Response, Error> {
    let placement = placement(request.target, request.targets, request.replicas)?;
    let name = required(request.name, "name")?;
    let data = base64_field(&required(request.data, "data")?, "data")?;
    let plaintext: ByteStream =
        Box::pin(futures_util::stream::once(
            async move { Ok(Bytes::from(data)) },
        ));
    let record = context.files.store(name, placement, plaintext).await?;
    Ok(axum::Json(FileInfo::of(&context, &record, None)).into_response())
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
    Query(query): Query<FileQuery>,
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
    if record.manifest.size > context.max_json_body_bytes as u64 {
        return Err(Error::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "file {id} has {} bytes, more than http.max_json_body_bytes; read it with GET /files/{id}",
                record.manifest.size
            ),
        ));
    }
    let chunks: Vec<Bytes> = context.files.read(&record, target)?.try_collect().await?;
    let data = to_base64(&chunks.concat());
    Ok(axum::Json(FileInfo::of(context, &record, Some(data))).into_response())
}

/// `PUT /files/{name}?target=...` (or `targets=a,b`, or `replicas=n`): stores the raw request
/// body, streamed.
pub async fn store_stream(
    State(context): State<NodeContext>,
    Path(name): Path<String>,
    Query(query): Query<FileQuery>,
    body: Body,
) -> Result<Response, Error> {
    let targets = query.targets.map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    });
    let placement = placement(query.target, targets, query.replicas)?;
    let plaintext: ByteStream = Box::pin(body.into_data_stream().map_err(|error| {
        Error::new(
            ErrorCode::InvalidField,
            format!("the request body broke off: {error}"),
        )
    }));
    let record = context.files.store(name, placement, plaintext).await?;
    let location = HeaderValue::from_str(&format!("/files/{}", record.manifest.id))
        .expect("ids are header-safe");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(FileInfo::of(&context, &record, None)),
    )
        .into_response())
}

/// `GET /files/{id}?target=...`: streams the plaintext back. Failures before the first byte get a
/// JSON error; a failure later cuts the response short, so a client never takes a partial file for
/// a whole one (the `Content-Length` is not reached).
pub async fn read_stream(
    State(context): State<NodeContext>,
    Path(id): Path<String>,
    Query(query): Query<FileQuery>,
) -> Result<Response, Error> {
    let record = context.files.record(&id).await?;
    let mut plaintext = context.files.read(&record, query.target.as_deref())?;
    let first_chunk = plaintext.next().await.transpose()?;
    let file_id = record.manifest.id.clone();
    let rest = plaintext.map_err(move |error| {
        tracing::warn!(%file_id, %error, "file stream cut short");
        std::io::Error::other(error)
    });
    let body = Body::from_stream(futures_util::stream::iter(first_chunk.map(Ok)).chain(rest));
    let disposition = format!(
        "attachment; filename=\"{}\"",
        record.manifest.name.replace(['"', '\\', '\r', '\n'], "_")
    );
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::CONTENT_LENGTH,
                HeaderValue::from(record.manifest.size),
            ),
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

/// `GET /files`: the owner's files, newest first, with each replica's health.
pub async fn list(State(context): State<NodeContext>) -> Result<Response, Error> {
    let files: Vec<FileInfo> = context
        .files
        .list()
        .await?
        .iter()
        .map(|record| FileInfo::of(&context, record, None))
        .collect();
    Ok(axum::Json(serde_json::json!({ "files": files })).into_response())
}

/// `DELETE /files/{id}`: deletes the file from every replica, then forgets it.
pub async fn delete(
    State(context): State<NodeContext>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let record = context.files.delete(&id).await?;
    Ok(axum::Json(serde_json::json!({"id": record.manifest.id, "deleted": true})).into_response())
}

/// `POST /files/recover`: finds this node's files again on its peers (after losing the
/// database), and records those it had forgotten.
pub async fn recover(
    State(context): State<NodeContext>,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let request: RecoverRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RecoverRequest::default()
    } else {
        super::extract::parse(&body)?
    };
    let report = context.files.recover(&request.providers).await?;
    Ok(axum::Json(report).into_response())
}

/// `GET /storage`: the space this node offers other nodes, and what each owner uses.
pub async fn storage(State(context): State<NodeContext>) -> Response {
    let (capacity_bytes, used_bytes) = context.objects.capacity();
    axum::Json(serde_json::json!({
        "capacity_bytes": capacity_bytes,
        "used_bytes": used_bytes,
        "owners": context.objects.usage_by_owner(),
    }))
    .into_response()
}

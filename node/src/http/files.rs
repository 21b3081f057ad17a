//! File routes: JSON with base64 for small files, raw streams for files of any size, the list of
//! the owner's files with the health of each replica, deletion and recovery; and the provider's
//! view of the space it offers.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::extract::{JsonBody, Path, Query, address, base64_field, required, to_base64};
use super::openapi::{CommonErrors, error_responses};
use crate::api::{
    DeletedFile, FileHealth, FileInfo, FileList, ReadFileRequest, ReadQuery, RecoverFilesRequest,
    RecoveryReport, ReplicaHealth, ReplicaInfo, StorageAnswer, StoreFileRequest, StoreQuery,
};
use crate::context::NodeContext;
use crate::error::{Error, ErrorCode};
use crate::files::{ByteStream, Placement};
use crate::storage::files::{FileRecord, Replica};

error_responses!(
    /// Errors of storing a file.
    StoreErrors: InvalidJson, MissingField, InvalidField, PayloadTooLarge, NotEnoughProviders,
    TargetUnreachable, TargetMismatch, TargetTimeout, TargetError, PermissionDenied, ProviderFull,
    PaymentRequired, InsufficientFunds, StorageFailure, ShuttingDown,
);
error_responses!(
    /// Errors of reading a file.
    ReadErrors: InvalidJson, MissingField, InvalidField, PayloadTooLarge, FileNotFound, FileLost,
    TargetUnreachable, TargetMismatch, TargetTimeout, TargetError, IntegrityError, PaymentRequired,
    StorageFailure,
);
error_responses!(
    /// Errors of deleting a file.
    DeleteErrors: InvalidField, FileNotFound, TargetUnreachable, TargetMismatch, TargetTimeout, TargetError,
    StorageFailure,
);
error_responses!(
    /// Errors of listing files and the storage offered.
    ListErrors: StorageFailure,
);
error_responses!(
    /// Errors of recovering files.
    RecoverErrors: InvalidJson, InvalidField, TargetUnreachable, TargetError, StorageFailure,
);

fn rfc3339(milliseconds: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(milliseconds);
    humantime::format_rfc3339_millis(time).to_string()
}

/// The most replicas a request may ask for.
const MAX_REPLICAS: u32 = 64;

/// Returns what the owner is told of `record`: its replicas' health from their audits.
fn file_info(context: &NodeContext, record: &FileRecord, data: Option<String>) -> FileInfo {
    let now = crate::clock::now_ms();
    let first_replica = record.replicas.first();
    let replicas: Vec<ReplicaInfo> = record
        .replicas
        .iter()
        .map(|replica| replica_info(replica, context.files.is_lost(replica, now)))
        .collect();
    let healthy = replicas
        .iter()
        .filter(|replica| matches!(replica.health, ReplicaHealth::Ok | ReplicaHealth::Unaudited))
        .count();
    let health = if replicas
        .iter()
        .all(|replica| replica.health == ReplicaHealth::Lost)
    {
        FileHealth::Lost
    } else if healthy >= record.replicas_wanted as usize {
        FileHealth::Ok
    } else {
        FileHealth::Degraded
    };
    FileInfo {
        id: record.manifest.id.clone(),
        name: record.manifest.name.clone(),
        size: record.manifest.size,
        created_at: rfc3339(record.manifest.created_at_ms),
        target: first_replica
            .map(|replica| replica.address.to_string())
            .unwrap_or_default(),
        provider_id: first_replica
            .map(|replica| replica.provider_id.clone())
            .unwrap_or_default(),
        health,
        replicas_wanted: record.replicas_wanted,
        replicas,
        labels: record.labels.clone(),
        data,
    }
}

fn replica_info(replica: &Replica, lost: bool) -> ReplicaInfo {
    let health = match (replica.last_audit_ok, lost) {
        (_, true) => ReplicaHealth::Lost,
        (None, false) => ReplicaHealth::Unaudited,
        (Some(true), false) => ReplicaHealth::Ok,
        (Some(false), false) => ReplicaHealth::Failing,
    };
    ReplicaInfo {
        target: replica.address.to_string(),
        provider_id: replica.provider_id.clone(),
        health,
        last_audit: replica.last_audit_ms.map(rfc3339),
        last_audit_error: replica.last_audit_error.clone(),
        paid_until: replica.paid_until_ms.map(rfc3339),
    }
}

/// Reads `region:eu,tier:ssd` (or `=` for `:`) into labels.
fn labels_of_query(text: &str) -> Result<BTreeMap<String, String>, Error> {
    if text.split(',').all(|pair| pair.trim().is_empty()) {
        return Err(Error::invalid_field(
            "labels",
            "is empty; write key:value pairs, or leave it out",
        ));
    }
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            pair.split_once([':', '='])
                .filter(|(key, _)| !key.trim().is_empty())
                .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
                .ok_or_else(|| {
                    Error::invalid_field("labels", format!("has {pair:?}; write key:value pairs"))
                })
        })
        .collect()
}

/// Returns where a new file goes: `targets`, else `target`, else `replicas` picked by the node.
fn placement(
    target: Option<String>,
    targets: Option<Vec<String>>,
    replicas: Option<u32>,
    labels: Option<BTreeMap<String, String>>,
) -> Result<Placement, Error> {
    let target = address(target, "target")?;
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
        (Some(targets), None) if targets.iter().any(|target| target.trim().is_empty()) => {
            return Err(Error::invalid_field(
                "targets",
                "holds an empty address; give each provider's gRPC address (host:port)",
            ));
        }
        (Some(targets), None) => targets,
        (None, Some(target)) => vec![target],
        (None, None) => Vec::new(),
    };
    if replicas.is_some_and(|replicas| !(1..=MAX_REPLICAS).contains(&replicas)) {
        return Err(Error::invalid_field(
            "replicas",
            format!("must be between 1 and {MAX_REPLICAS}"),
        ));
    }
    if !targets.is_empty() && replicas.is_some() {
        return Err(Error::invalid_field(
            "replicas",
            "cannot be given together with named targets",
        ));
    }
    if !targets.is_empty() && labels.is_some() {
        return Err(Error::invalid_field(
            "labels",
            "cannot be given together with named targets",
        ));
    }
    Ok(Placement {
        targets,
        replicas,
        labels: labels.unwrap_or_default(),
    })
}

/// `POST /file`: stores a small file sent as base64 JSON.
#[utoipa::path(
    post,
    path = "/file",
    tag = "files",
    request_body = StoreFileRequest,
    responses((status = 200, description = "The file is stored", body = FileInfo), StoreErrors),
)]
pub async fn store_json(
    State(context): State<NodeContext>,
    JsonBody(request): JsonBody<StoreFileRequest>,
) -> Result<Response, Error> {
    let placement = placement(
        request.target,
        request.targets,
        request.replicas,
        request.labels,
    )?;
    let name = required(request.name, "name")?;
    let data = base64_field(&required(request.data, "data")?, "data")?;
    let plaintext: ByteStream =
        Box::pin(futures_util::stream::once(
            async move { Ok(Bytes::from(data)) },
        ));
    let record = context.files.store(name, placement, plaintext).await?;
    Ok(axum::Json(file_info(&context, &record, None)).into_response())
}

/// `GET /file` with a JSON body `{"id": ..., "target": ...}`.
#[utoipa::path(
    get,
    path = "/file",
    tag = "files",
    request_body = ReadFileRequest,
    responses((status = 200, description = "The file, base64 in `data`", body = FileInfo), ReadErrors),
)]
pub async fn read_json(
    State(context): State<NodeContext>,
    JsonBody(request): JsonBody<ReadFileRequest>,
) -> Result<Response, Error> {
    let id = required(request.id, "id")?;
    let target = address(request.target, "target")?;
    read_json_response(&context, &id, target.as_deref()).await
}

/// `GET /file/{id}?target=...`.
#[utoipa::path(
    get,
    path = "/file/{id}",
    tag = "files",
    params(("id" = String, Path, description = "The file's ID"), ReadQuery),
    responses((status = 200, description = "The file, base64 in `data`", body = FileInfo), ReadErrors),
)]
pub async fn read_json_by_path(
    State(context): State<NodeContext>,
    Path(id): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<Response, Error> {
    let target = address(query.target, "target")?;
    read_json_response(&context, &id, target.as_deref()).await
}

async fn read_json_response(
    context: &NodeContext,
    id: &str,
    target: Option<&str>,
) -> Result<Response, Error> {
    let record = context.files.record(id).await?;
    let target = match target {
        Some(target) => Some(context.peers.resolve(target).await?),
        None => None,
    };
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
    Ok(axum::Json(file_info(context, &record, Some(data))).into_response())
}

/// `PUT /files/{name}?target=...` (or `targets=a,b`, or `replicas=n`): stores the raw request
/// body, streamed.
#[utoipa::path(
    put,
    path = "/files/{name_or_id}",
    tag = "files",
    params(("name_or_id" = String, Path, description = "Name to store the file under"), StoreQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes, streamed"),
    responses(
        (status = 201, description = "The file is stored", body = FileInfo,
            headers(("location" = String, description = "`/files/{id}`"))),
        StoreErrors,
    ),
)]
pub async fn store_stream(
    State(context): State<NodeContext>,
    Path(name): Path<String>,
    Query(query): Query<StoreQuery>,
    body: Body,
) -> Result<Response, Error> {
    let targets = query.targets.map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    });
    let labels = query.labels.as_deref().map(labels_of_query).transpose()?;
    let placement = placement(query.target, targets, query.replicas, labels)?;
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
        axum::Json(file_info(&context, &record, None)),
    )
        .into_response())
}

/// `GET /files/{id}?target=...`: streams the plaintext back. Failures before the first byte get a
/// JSON error; a failure later cuts the response short, so a client never takes a partial file for
/// a whole one (the `Content-Length` is not reached).
#[utoipa::path(
    get,
    path = "/files/{name_or_id}",
    tag = "files",
    params(("name_or_id" = String, Path, description = "The file's ID"), ReadQuery),
    responses(
        (status = 200, description = "The file's bytes, streamed; cut short (before `Content-Length`) if a replica fails midway",
            content_type = "application/octet-stream", body = Vec<u8>),
        ReadErrors,
    ),
)]
pub async fn read_stream(
    State(context): State<NodeContext>,
    Path(id): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<Response, Error> {
    let record = context.files.record(&id).await?;
    let target = match address(query.target, "target")? {
        Some(target) => Some(context.peers.resolve(&target).await?),
        None => None,
    };
    let mut plaintext = context.files.read(&record, target)?;
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
#[utoipa::path(
    get,
    path = "/files",
    tag = "files",
    responses((status = 200, description = "The owner's files", body = FileList), ListErrors),
)]
pub async fn list(State(context): State<NodeContext>) -> Result<Response, Error> {
    let files: Vec<FileInfo> = context
        .files
        .list()
        .await?
        .iter()
        .map(|record| file_info(&context, record, None))
        .collect();
    Ok(axum::Json(FileList { files }).into_response())
}

/// `DELETE /files/{id}`: deletes the file from every replica, then forgets it.
#[utoipa::path(
    delete,
    path = "/files/{name_or_id}",
    tag = "files",
    params(("name_or_id" = String, Path, description = "The file's ID")),
    responses((status = 200, description = "The file is deleted", body = DeletedFile), DeleteErrors),
)]
pub async fn delete(
    State(context): State<NodeContext>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let record = context.files.delete(&id).await?;
    Ok(axum::Json(DeletedFile {
        id: record.manifest.id,
        deleted: true,
    })
    .into_response())
}

/// `POST /files/recover`: finds this node's files again on its peers (after losing the
/// database), and records those it had forgotten.
#[utoipa::path(
    post,
    path = "/files/recover",
    tag = "files",
    request_body(content = Option<RecoverFilesRequest>, description = "Optional: providers to ask besides the peers"),
    responses((status = 200, description = "What recovery found", body = RecoveryReport), RecoverErrors),
)]
pub async fn recover(
    State(context): State<NodeContext>,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let request: RecoverFilesRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RecoverFilesRequest::default()
    } else {
        super::extract::parse::<Option<RecoverFilesRequest>>(&body)?.unwrap_or_default()
    };
    let report = context.files.recover(&request.providers).await?;
    Ok(axum::Json(report).into_response())
}

/// `GET /storage`: the space this node offers other nodes, and what each owner uses.
#[utoipa::path(
    get,
    path = "/storage",
    tag = "files",
    responses((status = 200, description = "The space offered and used", body = StorageAnswer), CommonErrors),
)]
pub async fn storage(State(context): State<NodeContext>) -> Response {
    let (capacity_bytes, used_bytes) = context.objects.capacity();
    axum::Json(StorageAnswer {
        capacity_bytes,
        used_bytes,
        owners: context.objects.usage_by_owner(),
    })
    .into_response()
}

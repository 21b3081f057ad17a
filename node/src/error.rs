//! The node's errors as its users see them, and the one place they are mapped to the wire.
//!
//! Lower layers have their own error enums ([`crate::storage::StorageError`],
//! [`crate::plugin::PluginError`]); they become an [`Error`], which carries a stable
//! [`ErrorCode`]. That code decides the HTTP status of a REST answer, the gRPC status of a
//! node-to-node answer, and travels between nodes in the `sphere-error-code` trailer so that a
//! requester can tell "the target's plugin timed out" from "the target did not answer".

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::{ErrorAnswer, ErrorDetail};

/// Name of the gRPC metadata entry carrying an [`ErrorCode`] between nodes.
pub const ERROR_CODE_METADATA: &str = "sphere-error-code";
/// Name of the binary gRPC metadata entry carrying an error's details (a JSON object).
pub const ERROR_DETAILS_METADATA: &str = "sphere-error-details-bin";

/// `text` followed by each of the chain of errors from `cause` it does not say already: many
/// errors' own messages leave out why ("error sending request"), their causes say it.
pub fn followed_by_causes(
    mut text: String,
    mut cause: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    while let Some(error) = cause {
        let message = error.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = error.source();
    }
    text
}

/// What went wrong, in a form scripts can match on. The string forms are part of the public API.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body is not valid JSON, or a field has the wrong type.
    InvalidJson,
    /// A required field is missing.
    MissingField,
    /// A field is present but its value cannot be used (bad base64, bad address, ...).
    InvalidField,
    /// The request body is larger than the configured limit.
    PayloadTooLarge,
    /// No file or object with that ID.
    FileNotFound,
    /// The target has no plugin with that name; the details list the ones it has.
    PluginNotFound,
    /// No peer with that node ID is known (`GET /peers/{id}`).
    PeerNotFound,
    /// No background task with that ID is kept (`GET /tasks/{id}`).
    TaskNotFound,
    /// The plugin's slots and queue are full; retry after the `Retry-After` seconds.
    Overloaded,
    /// The file is known but none of its replicas can give it back any more (every one lost).
    FileLost,
    /// This node's account cannot pay for the deposit and the gas of a payment transaction.
    InsufficientFunds,
    /// The plugin refused the task's input as something it cannot work on.
    TaskRejected,
    /// No route for that path.
    RouteNotFound,
    /// The route exists but not for that method.
    MethodNotAllowed,
    /// An object with that ID is already stored; stored objects are never overwritten.
    AlreadyExists,
    /// The REST request lacks the bearer token this node requires, or carries a wrong one.
    Unauthorized,
    /// The request is not signed by the object's owner, or was replayed.
    PermissionDenied,
    /// The provider has no space left for the object.
    ProviderFull,
    /// The work is not paid for: no voucher, too small a voucher, or no usable payment channel.
    PaymentRequired,
    /// Payments are off on this node (or on the target) and the request needs them.
    PaymentsOff,
    /// The payment contract has no channel with that ID.
    ChannelNotFound,
    /// The channel's state does not allow that now (closed, closing, challenge period running).
    ChannelStateConflict,
    /// Fewer providers are available than the file needs.
    NotEnoughProviders,
    /// No node fits the task (none serves the plugin, matches the selector, or has room) within
    /// its deadline; the details list every candidate and why it was refused.
    NoCapableNode,
    /// The target node could not be reached.
    TargetUnreachable,
    /// The node at the target's address is not the node the target names.
    TargetMismatch,
    /// The target node did not answer in time.
    TargetTimeout,
    /// The target answered with something this node cannot use.
    TargetError,
    /// The plugin could not be reached.
    PluginUnavailable,
    /// The plugin did not finish the task in time.
    PluginTimeout,
    /// The plugin refused the task or failed while running it.
    PluginFailed,
    /// A verified task's nodes did not agree on its output; the details hold their signed
    /// results as evidence.
    VerificationFailed,
    /// Stored data failed verification: it was changed or damaged, and is not returned.
    IntegrityError,
    /// This node could not read or write its own storage.
    StorageFailure,
    /// The node is shutting down and takes no new work.
    ShuttingDown,
    /// This node stopped while the background task ran; it may or may not have run there.
    Interrupted,
    /// A bug: something that should not happen did.
    Internal,
}

impl ErrorCode {
    /// Every code, in no particular order.
    pub const ALL: [ErrorCode; 37] = [
        Self::Unauthorized,
        Self::VerificationFailed,
        Self::TaskNotFound,
        Self::Interrupted,
        Self::NoCapableNode,
        Self::FileLost,
        Self::InsufficientFunds,
        Self::PaymentsOff,
        Self::ChannelNotFound,
        Self::ChannelStateConflict,
        Self::PermissionDenied,
        Self::ProviderFull,
        Self::PaymentRequired,
        Self::NotEnoughProviders,
        Self::InvalidJson,
        Self::MissingField,
        Self::InvalidField,
        Self::PayloadTooLarge,
        Self::FileNotFound,
        Self::PluginNotFound,
        Self::PeerNotFound,
        Self::Overloaded,
        Self::TaskRejected,
        Self::RouteNotFound,
        Self::MethodNotAllowed,
        Self::AlreadyExists,
        Self::TargetUnreachable,
        Self::TargetMismatch,
        Self::TargetTimeout,
        Self::TargetError,
        Self::PluginUnavailable,
        Self::PluginTimeout,
        Self::PluginFailed,
        Self::IntegrityError,
        Self::StorageFailure,
        Self::ShuttingDown,
        Self::Internal,
    ];

    /// Returns the stable string form, used in JSON bodies and between nodes.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::MissingField => "missing_field",
            Self::InvalidField => "invalid_field",
            Self::PayloadTooLarge => "payload_too_large",
            Self::FileNotFound => "file_not_found",
            Self::FileLost => "file_lost",
            Self::InsufficientFunds => "insufficient_funds",
            Self::PluginNotFound => "plugin_not_found",
            Self::PeerNotFound => "peer_not_found",
            Self::TaskNotFound => "task_not_found",
            Self::Overloaded => "overloaded",
            Self::TaskRejected => "task_rejected",
            Self::RouteNotFound => "route_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::AlreadyExists => "already_exists",
            Self::Unauthorized => "unauthorized",
            Self::PermissionDenied => "permission_denied",
            Self::ProviderFull => "provider_full",
            Self::PaymentRequired => "payment_required",
            Self::ChannelNotFound => "channel_not_found",
            Self::PaymentsOff => "payments_off",
            Self::ChannelStateConflict => "channel_state_conflict",
            Self::NotEnoughProviders => "not_enough_providers",
            Self::NoCapableNode => "no_capable_node",
            Self::TargetUnreachable => "target_unreachable",
            Self::TargetMismatch => "target_mismatch",
            Self::TargetTimeout => "target_timeout",
            Self::TargetError => "target_error",
            Self::PluginUnavailable => "plugin_unavailable",
            Self::PluginTimeout => "plugin_timeout",
            Self::PluginFailed => "plugin_failed",
            Self::VerificationFailed => "verification_failed",
            Self::IntegrityError => "integrity_error",
            Self::StorageFailure => "storage_failure",
            Self::ShuttingDown => "shutting_down",
            Self::Interrupted => "interrupted",
            Self::Internal => "internal",
        }
    }

    /// Parses the string form; `None` for codes this version does not know.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|known| known.as_str() == code)
    }

    /// Returns the HTTP status a REST answer with this code gets.
    pub const fn http_status(self) -> StatusCode {
        match self {
            Self::InvalidJson | Self::MissingField | Self::InvalidField => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::FileNotFound
            | Self::RouteNotFound
            | Self::PluginNotFound
            | Self::PeerNotFound
            | Self::TaskNotFound => StatusCode::NOT_FOUND,
            Self::FileLost => StatusCode::GONE,
            Self::InsufficientFunds => StatusCode::CONFLICT,
            Self::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Self::TaskRejected => StatusCode::UNPROCESSABLE_ENTITY,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::AlreadyExists => StatusCode::CONFLICT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::ProviderFull => StatusCode::INSUFFICIENT_STORAGE,
            Self::PaymentRequired => StatusCode::PAYMENT_REQUIRED,
            Self::ChannelNotFound => StatusCode::NOT_FOUND,
            Self::PaymentsOff => StatusCode::CONFLICT,
            Self::ChannelStateConflict => StatusCode::CONFLICT,
            Self::NotEnoughProviders | Self::NoCapableNode => StatusCode::SERVICE_UNAVAILABLE,
            Self::TargetUnreachable
            | Self::TargetMismatch
            | Self::TargetError
            | Self::PluginUnavailable
            | Self::PluginFailed
            | Self::VerificationFailed
            | Self::IntegrityError => StatusCode::BAD_GATEWAY,
            Self::TargetTimeout | Self::PluginTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::ShuttingDown | Self::Interrupted => StatusCode::SERVICE_UNAVAILABLE,
            Self::StorageFailure | Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Returns the gRPC status code a node-to-node answer with this code gets.
    pub const fn grpc_code(self) -> tonic::Code {
        match self {
            Self::InvalidJson | Self::MissingField | Self::InvalidField => {
                tonic::Code::InvalidArgument
            }
            Self::PayloadTooLarge => tonic::Code::ResourceExhausted,
            Self::FileNotFound
            | Self::RouteNotFound
            | Self::PluginNotFound
            | Self::PeerNotFound
            | Self::TaskNotFound => tonic::Code::NotFound,
            Self::FileLost => tonic::Code::DataLoss,
            Self::InsufficientFunds => tonic::Code::FailedPrecondition,
            Self::Overloaded => tonic::Code::ResourceExhausted,
            Self::TaskRejected => tonic::Code::FailedPrecondition,
            Self::MethodNotAllowed => tonic::Code::Unimplemented,
            Self::AlreadyExists => tonic::Code::AlreadyExists,
            Self::Unauthorized => tonic::Code::Unauthenticated,
            Self::PermissionDenied => tonic::Code::PermissionDenied,
            Self::ProviderFull => tonic::Code::ResourceExhausted,
            Self::PaymentRequired => tonic::Code::FailedPrecondition,
            Self::ChannelNotFound => tonic::Code::NotFound,
            Self::PaymentsOff => tonic::Code::FailedPrecondition,
            Self::ChannelStateConflict => tonic::Code::FailedPrecondition,
            Self::NotEnoughProviders | Self::NoCapableNode => tonic::Code::Unavailable,
            Self::TargetUnreachable | Self::PluginUnavailable | Self::ShuttingDown => {
                tonic::Code::Unavailable
            }
            Self::TargetMismatch => tonic::Code::Unauthenticated,
            Self::TargetTimeout | Self::PluginTimeout => tonic::Code::DeadlineExceeded,
            Self::TargetError
            | Self::PluginFailed
            | Self::Interrupted
            | Self::VerificationFailed => tonic::Code::Aborted,
            Self::IntegrityError => tonic::Code::DataLoss,
            Self::StorageFailure | Self::Internal => tonic::Code::Internal,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// An error as the node reports it: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    /// What went wrong, for scripts.
    pub code: ErrorCode,
    /// What went wrong, for people: lowercase, and saying how to fix it where possible.
    pub message: String,
    /// Facts for scripts beyond the code (a JSON object), shown next to code and message.
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Error {
    /// Creates an error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Adds details; `details` must be a JSON object (anything else is ignored).
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        if let serde_json::Value::Object(map) = details {
            self.details = Some(map);
        }
        self
    }

    /// Returns the error for a required field that is missing from a request.
    pub fn missing_field(field: &str) -> Self {
        Self::new(
            ErrorCode::MissingField,
            format!("field `{field}` is required"),
        )
    }

    /// Returns the error for a field whose value cannot be used.
    pub fn invalid_field(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorCode::InvalidField,
            format!("field `{field}` {problem}"),
        )
    }

    /// The error a Sphere node answered with, when `status` carries a `sphere-error-code`: its
    /// code, message and details, as the node sent them. `None` for any other status (the call
    /// did not get through to a node's handler; [`crate::peers::remote_error`] reads those).
    pub fn from_node_status(status: &tonic::Status) -> Option<Self> {
        let code = status
            .metadata()
            .get(ERROR_CODE_METADATA)
            .and_then(|value| value.to_str().ok())
            .and_then(ErrorCode::parse)?;
        let details = status
            .metadata()
            .get_bin(ERROR_DETAILS_METADATA)
            .and_then(|value| value.to_bytes().ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        Some(Self {
            code,
            message: status.message().to_owned(),
            details,
        })
    }
}

/// Returns whether tonic gave up on a call because its deadline passed (it reports that as
/// CANCELLED with the message of [`tonic::TimeoutExpired`]).
pub fn is_timeout(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Cancelled
        && status.message() == tonic::TimeoutExpired(()).to_string()
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let mut status = tonic::Status::new(error.code.grpc_code(), error.message);
        status.metadata_mut().insert(
            ERROR_CODE_METADATA,
            tonic::metadata::MetadataValue::from_static(error.code.as_str()),
        );
        if let Some(details) = &error.details {
            let json = serde_json::to_vec(details).expect("JSON maps serialise");
            status.metadata_mut().insert_bin(
                ERROR_DETAILS_METADATA,
                tonic::metadata::MetadataValue::from_bytes(&json),
            );
        }
        status
    }
}

impl From<Error> for ErrorDetail {
    fn from(error: Error) -> Self {
        Self {
            code: error.code,
            message: error.message,
            details: error.details.unwrap_or_default(),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = self.code;
        let body = ErrorAnswer { error: self.into() };
        let retry_after_seconds = (code == ErrorCode::Overloaded).then(|| {
            body.error
                .details
                .get("retry_after_seconds")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(1)
        });
        let mut response = (code.http_status(), axum::Json(body)).into_response();
        if let Some(seconds) = retry_after_seconds {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        // Lets the request log show the code without parsing the body.
        response.extensions_mut().insert(code);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_string_form() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let json = serde_json::to_value(code).expect("codes serialise");
            assert_eq!(json, code.as_str(), "JSON and string forms differ");
        }
    }

    #[test]
    fn code_survives_a_trip_through_grpc() {
        let original = Error::new(ErrorCode::PluginTimeout, "plugin took too long");
        let status = tonic::Status::from(original.clone());
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            Error::from_node_status(&status).expect("a node's error"),
            original
        );
    }

    #[test]
    fn details_survive_a_trip_through_grpc() {
        let original = Error::new(ErrorCode::PluginNotFound, "no plugin named x")
            .with_details(serde_json::json!({"plugins": ["hello", "wörd"]}));
        let status = tonic::Status::from(original.clone());
        assert_eq!(
            Error::from_node_status(&status).expect("a node's error"),
            original
        );
    }
}

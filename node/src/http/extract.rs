//! Request extraction that answers bad input with the node's JSON errors.
//!
//! JSON bodies are accepted whatever their `Content-Type`: `curl -d` sends
//! `application/x-www-form-urlencoded`, and existing scripts rely on that.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorCode};

/// A JSON request body, or the right error: 413 over the limit, 400 for malformed JSON or a field
/// of the wrong type (naming the field).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Error::new(
                        ErrorCode::PayloadTooLarge,
                        "the request body is larger than http.max_json_body_bytes; \
                     stream large files with PUT /files/{name} instead",
                    )
                } else {
                    Error::new(
                        ErrorCode::InvalidJson,
                        format!("could not read the body: {rejection}"),
                    )
                }
            })?;
        parse(&body).map(JsonBody)
    }
}

/// Parses `body` as JSON into `T`, naming the field when a value has the wrong type.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::new(
            ErrorCode::InvalidJson,
            "the request body is empty; send a JSON object",
        ));
    }
    // serde reads a struct from an array of its fields in order too; the API takes objects only.
    if body.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[') {
        return Err(Error::new(
            ErrorCode::InvalidJson,
            "the request body is a JSON array; send a JSON object",
        ));
    }
    // Tracking the path costs an allocation per field: only a body that fails is read again
    // with it, to name the field.
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_data() && path != "." {
            Error::new(ErrorCode::InvalidJson, format!("field `{path}`: {inner}"))
        } else {
            Error::new(
                ErrorCode::InvalidJson,
                format!("the body is not valid JSON: {inner}"),
            )
        }
    })?;
    deserializer.end().map_err(|error| {
        Error::new(
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON: {error}"),
        )
    })?;
    Ok(value)
}

/// Returns a required field, or a `missing_field` error naming it.
pub fn required<T>(value: Option<T>, field: &str) -> Result<T, Error> {
    value.ok_or_else(|| Error::missing_field(field))
}

/// Returns an optional node address, refusing an empty one (it would name no node).
pub fn address(value: Option<String>, field: &str) -> Result<Option<String>, Error> {
    match value {
        Some(address) if address.trim().is_empty() => Err(Error::invalid_field(
            field,
            "is empty; give a node's gRPC address (host:port) or leave it out",
        )),
        other => Ok(other),
    }
}

pub use crate::encoding::{base64_field, to_base64};

/// A path parameter; a segment that does not decode (`GET /files/%ff`) is a JSON
/// `invalid_field` error rather than axum's plain-text 400.
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|rejection| {
                Error::new(
                    ErrorCode::InvalidField,
                    format!("the path is not valid: {}", rejection.body_text()),
                )
            })
    }
}

/// Query parameters; a repeated or malformed parameter (`?target=a&target=b`) is a JSON
/// `invalid_field` error rather than axum's plain-text 400.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|rejection| {
                Error::new(
                    ErrorCode::InvalidField,
                    format!("the query string is not valid: {}", rejection.body_text()),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Sample {
        #[allow(dead_code)]
        count: Option<u32>,
    }

    #[test]
    fn bad_bodies_get_clear_errors() {
        assert_eq!(
            parse::<Sample>(b"").expect_err("empty").code,
            ErrorCode::InvalidJson
        );
        assert_eq!(
            parse::<Sample>(b"{").expect_err("cut").code,
            ErrorCode::InvalidJson
        );
        let wrong_type = parse::<Sample>(br#"{"count": "x"}"#).expect_err("type");
        assert!(
            wrong_type.message.contains("`count`"),
            "{}",
            wrong_type.message
        );
        assert!(parse::<Sample>(br#"{"count": 1} trailing"#).is_err());
        assert!(parse::<Sample>(br#"{"count": 1, "other": true}"#).is_ok());
    }

    #[test]
    fn base64_accepts_with_and_without_padding() {
        assert_eq!(base64_field("aGk=", "data").expect("padded"), b"hi");
        assert_eq!(base64_field("aGk", "data").expect("unpadded"), b"hi");
        assert_eq!(
            base64_field("!!", "data").expect_err("bad").code,
            ErrorCode::InvalidField
        );
    }
}

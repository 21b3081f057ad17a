//! The OpenAPI document of the REST API, generated from the routes' `#[utoipa::path]`
//! annotations and the types of [`crate::api`], and served at `GET /openapi.json`.
//!
//! Each route lists the error codes it can answer (an [`error_responses!`] set); their HTTP
//! statuses come from [`ErrorCode::http_status`], the one mapping the handlers use too.

use std::collections::BTreeMap;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, response::Response};
use utoipa::{Modify, OpenApi};

use crate::api::{ErrorAnswer, ErrorCode};

/// Name of the bearer token's security scheme.
const BEARER: &str = "bearer_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sphere node",
        description = "Drives one Sphere node: runs tasks on plugins of this node or others, \
            stores encrypted files on other nodes, pays and gets paid through payment channels. \
            Every failure answers `{\"error\": {\"code\", \"message\"}}` with a stable code. \
            When the API listens beyond loopback (or `http.token` is set), requests need \
            `Authorization: Bearer <token>`; `GET /health` and `GET /openapi.json` never do.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorAnswer)),
    modifiers(&BearerToken),
)]
pub struct ApiDoc;

/// Adds the bearer token scheme, optional on every operation (not needed on loopback).
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`http.token`, or the token in `<data_dir>/api.token`"))
                    .build(),
            ),
        );
        openapi.security = Some(vec![
            SecurityRequirement::default(),
            SecurityRequirement::new(BEARER, Vec::<String>::new()),
        ]);
    }
}

/// Returns the error responses of a route that can answer `codes`, grouped by HTTP status; every
/// route can also answer `unauthorized` and `internal`.
pub fn responses_for(codes: &[ErrorCode]) -> BTreeMap<String, RefOr<Response>> {
    let mut by_status: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
    for code in codes
        .iter()
        .chain(&[ErrorCode::Unauthorized, ErrorCode::Internal])
    {
        let codes = by_status.entry(code.http_status().as_u16()).or_default();
        if !codes.contains(code) {
            codes.push(*code);
        }
    }
    by_status
        .into_iter()
        .map(|(status, codes)| {
            let names: Vec<String> = codes.iter().map(|code| format!("`{code}`")).collect();
            let response = ResponseBuilder::new()
                .description(format!("Error codes: {}", names.join(", ")))
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorAnswer")))
                        .build(),
                )
                .build();
            (status.to_string(), RefOr::T(response))
        })
        .collect()
}

/// Declares a set of error codes a route can answer, for its `responses(...)`.
macro_rules! error_responses {
    ($(#[$doc:meta])* $name:ident: $($code:ident),* $(,)?) => {
        $(#[$doc])*
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            > {
                $crate::http::openapi::responses_for(&[$($crate::error::ErrorCode::$code),*])
            }
        }
    };
}
pub(crate) use error_responses;

error_responses!(
    /// Errors any route can answer.
    CommonErrors:
);

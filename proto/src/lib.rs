//! The versioned public gRPC contract of Sphere.
//!
//! `sphere/v1/node.proto` is what nodes speak to each other; `sphere/v1/plugin.proto` is what a
//! node speaks to its plugins. This crate only holds the code generated from them: domain types
//! live in the crates that use it.

/// Generated messages, clients and servers of the `sphere.v1` package.
pub mod v1 {
    tonic::include_proto!("sphere.v1");
}

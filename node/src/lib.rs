//! The Sphere node: runs tasks on plugins for other nodes, and stores encrypted files on other
//! nodes (and theirs on its disk).
//!
//! See ARCHITECTURE.md at the top of the repository for how a task and a file flow through it.
//!
//! # Layout
//! - [`node`]: start-up order, shutdown.
//! - [`context`]: [`context::NodeContext`], what both servers' handlers share.
//! - [`config`]: configuration from defaults, file, environment and flags.
//! - [`identity`]: the node's secp256k1 key; its Ethereum address is the node ID.
//! - [`address`]: where a node listens (`host:port`), checked once.
//! - [`auth`]: owner signatures on storage requests, and their verification.
//! - [`error`]: the node's error codes and their one mapping to HTTP and gRPC.
//! - [`clock`]: the wall-clock timestamps records carry.
//! - [`api`]: the REST API's requests and answers, shared by the handlers and the CLI.
//! - [`http`]: the REST API (axum), with its OpenAPI description.
//! - [`grpc`]: the node-to-node gRPC services (tonic).
//! - [`connections`]: both listeners' connections, held within limits.
//! - [`metrics`]: Prometheus metrics, served at `GET /metrics`.
//! - [`peers`]: gRPC connections to other nodes.
//! - [`scheduler`]: the requester's task flow: where a task runs, pay, call, settle.
//! - [`mesh`]: membership by gossip (chitchat) and the nodes' signed records.
//! - [`plugin`]: the plugin client, and the plugin process the node runs itself.
//! - [`files`]: the owner's file flow: chunk, encrypt, spread; fetch, verify, decrypt; audits,
//!   repair, recovery.
//! - [`client`]: the `sphere file` commands, a client of a node's REST API.
//! - [`storage`]: LevelDB, chunk files and encryption; knows nothing of the network.
//! - [`payments`]: the payment contract through alloy, with the node's key.

pub mod address;
pub mod api;
pub mod auth;
pub mod channel;
pub mod client;
pub mod clock;
pub mod config;
pub mod connections;
pub mod context;
pub mod encoding;
pub mod error;
pub mod files;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod link;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod payments;
pub mod peers;
pub mod plugin;
pub mod scheduler;
pub mod storage;

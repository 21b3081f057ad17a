//! The node's side of the plugin protocol (`proto/sphere/v1/plugin.proto`).
//!
//! Tasks of the plugin subsystem, one set per configured plugin:
//! - a health watcher asking the plugin's `grpc.health.v1` service every `health_interval_ms`
//!   whether it is serving, and calling `Describe` whenever it comes (back) up;
//! - for a managed plugin, a supervisor that starts the process, restarts it with backoff when
//!   it dies, and stops it on shutdown;
//! - for a managed plugin, two tasks copying its stdout and stderr into the node's log.
//!
//! # Layout
//! - [`client`]: gRPC calls to one plugin (`Execute`, `Describe`, health).
//! - [`registry`]: the node's plugins by name: routing, limits, queueing, counters.
//! - [`process`]: starting and stopping a plugin process (handshake, no orphans).
//! - [`limits`]: memory and CPU limits of plugin processes (cgroups, or `RLIMIT_AS`).
//! - [`supervisor`]: the watcher and supervisor tasks.

pub mod client;
pub mod limits;
pub mod process;
pub mod registry;
pub mod supervisor;

use std::time::Duration;

pub use client::{PluginClient, PluginHealth};
pub use registry::{PluginStatus, Plugins};

use crate::error::{Error, ErrorCode};

/// Ways running a task on a plugin fails.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    /// No plugin has that name.
    #[error("no plugin named {name:?}; this node offers: {}", available.join(", "))]
    NotFound {
        /// The name asked for.
        name: String,
        /// The names this node offers.
        available: Vec<String>,
    },
    /// The plugin is not taking tasks now.
    #[error("plugin {name} is unavailable: {reason}")]
    Unavailable {
        /// The plugin.
        name: String,
        /// Why.
        reason: String,
    },
    /// Every slot and queue place of the plugin is taken.
    #[error("plugin {name} is busy: {capacity} tasks running or queued; retry shortly")]
    Overloaded {
        /// The plugin.
        name: String,
        /// Tasks it runs or queues at most.
        capacity: u32,
    },
    /// The task did not finish before its deadline (queueing included).
    #[error("plugin {name} did not finish the task within {time_allowed:?}")]
    Timeout {
        /// The plugin.
        name: String,
        /// The time the task had.
        time_allowed: Duration,
    },
    /// The input is larger than the plugin accepts.
    #[error("the input has {size} bytes; plugin {name} accepts at most {limit}")]
    InputTooLarge {
        /// The plugin.
        name: String,
        /// Input size.
        size: usize,
        /// The limit.
        limit: u64,
    },
    /// The plugin's own gRPC receive limit is below the task's input.
    #[error(
        "plugin {name} cannot take a task this large: its gRPC library refused the message \
         ({message}); send a smaller input, or raise the plugin's receive limit \
         (SPHERE_PLUGIN_MAX_MESSAGE_BYTES, see docs/writing-a-plugin.md)"
    )]
    InputOverPluginLimit {
        /// The plugin.
        name: String,
        /// What its gRPC library said.
        message: String,
    },
    /// The plugin returned more than the node accepts.
    #[error("plugin {name} returned more than {limit} bytes")]
    OutputTooLarge {
        /// The plugin.
        name: String,
        /// The limit.
        limit: u64,
    },
    /// The plugin said the input is not something it can work on.
    #[error("plugin {name} refused the input: {message}")]
    Rejected {
        /// The plugin.
        name: String,
        /// Its explanation.
        message: String,
    },
    /// The plugin failed, crashed, or answered something that is not a valid response.
    #[error("plugin {name} failed the task: {message}")]
    Failed {
        /// The plugin.
        name: String,
        /// What happened.
        message: String,
    },
}

/// Seconds a client should wait before retrying a task refused because the plugin is busy.
pub const RETRY_AFTER_SECONDS: u64 = 1;

impl From<PluginError> for Error {
    fn from(error: PluginError) -> Self {
        let message = error.to_string();
        match error {
            PluginError::NotFound { available, .. } => {
                Error::new(ErrorCode::PluginNotFound, message)
                    .with_details(serde_json::json!({ "plugins": available }))
            }
            PluginError::Unavailable { .. } => Error::new(ErrorCode::PluginUnavailable, message),
            PluginError::Overloaded { .. } => Error::new(ErrorCode::Overloaded, message)
                .with_details(serde_json::json!({ "retry_after_seconds": RETRY_AFTER_SECONDS })),
            PluginError::Timeout { .. } => Error::new(ErrorCode::PluginTimeout, message),
            PluginError::InputTooLarge { .. }
            | PluginError::InputOverPluginLimit { .. }
            | PluginError::OutputTooLarge { .. } => Error::new(ErrorCode::PayloadTooLarge, message),
            PluginError::Rejected { .. } => Error::new(ErrorCode::TaskRejected, message),
            PluginError::Failed { .. } => Error::new(ErrorCode::PluginFailed, message),
        }
    }
}

//! The node's plugins by name: routing a task to one, its limits, queue and counters.
//!
//! Each plugin has a slot. A slot takes tasks only while its plugin is healthy (the watcher in
//! `supervisor` decides); it runs at most `max_concurrency` tasks at once (lowered to what the
//! plugin's `Describe` allows), lets at most `queue_size` more wait, and refuses the rest at once
//! so that requests do not pile up.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sphere_proto::v1::{DescribeResponse, PluginSummary};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::PluginError;
use super::client::{CallError, PluginClient};
use super::limits::LimitsApplied;
use crate::config::PluginConfig;

/// Where a plugin stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SlotHealth {
    /// Not yet connected or checked.
    Starting,
    /// Healthy and taking tasks.
    Serving,
    /// Reachable but says it is not serving; no tasks until it is.
    NotServing,
    /// Not reachable (down, or restarting); no tasks until it is back.
    Unreachable,
    /// Reachable but refused by the node (for example `Describe` gives another name).
    Rejected,
    /// Stopped with the node.
    Stopped,
}

/// What the node shows of a plugin (`GET /plugins`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginStatus {
    /// The name requesters use.
    pub name: String,
    /// Whether tasks naming no plugin go here.
    pub default: bool,
    /// Version from `Describe`.
    pub version: Option<String>,
    /// Description from `Describe`.
    pub description: Option<String>,
    /// Input MIME type from `Describe`.
    pub input_content_type: Option<String>,
    /// Output MIME type from `Describe`.
    pub output_content_type: Option<String>,
    /// Whether, as `Describe` says, the same input always gives the same output.
    pub deterministic: bool,
    /// Whether, as `Describe` says, running a task twice does no harm.
    pub idempotent: bool,
    /// gRPC address, once known.
    pub address: Option<String>,
    /// Whether the node runs the plugin process itself.
    pub managed: bool,
    /// Process ID of a managed plugin while it runs.
    pub pid: Option<u32>,
    /// How the memory and CPU limits of a managed plugin are enforced.
    pub limits: Option<LimitsApplied>,
    /// Times a managed plugin was restarted after dying.
    pub restarts: u32,
    /// Health as the node last saw it.
    pub health: SlotHealth,
    /// Why the plugin is not serving, when it is not.
    pub problem: Option<String>,
    /// Tasks running now.
    pub in_flight: u32,
    /// Tasks waiting for a free slot.
    pub queued: u32,
    /// Most tasks running at once.
    pub max_concurrency: u32,
    /// Most tasks waiting.
    pub queue_size: u32,
    /// Tasks that succeeded since start.
    pub succeeded: u64,
    /// Tasks that failed since start (refused for being busy excluded).
    pub failed: u64,
}

impl From<PluginStatus> for PluginSummary {
    fn from(status: PluginStatus) -> Self {
        Self {
            serving: status.health == SlotHealth::Serving,
            name: status.name,
            version: status.version.unwrap_or_default(),
            description: status.description.unwrap_or_default(),
            input_content_type: status.input_content_type.unwrap_or_default(),
            output_content_type: status.output_content_type.unwrap_or_default(),
            is_default: status.default,
            deterministic: status.deterministic,
            idempotent: status.idempotent,
            max_concurrency: status.max_concurrency,
            queue_size: status.queue_size,
        }
    }
}

/// The plugins of a node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Plugins {
    slots: Arc<Vec<Arc<Slot>>>,
    default_index: Option<usize>,
}

impl Plugins {
    /// Returns the registry of `entries`; the default plugin is the one named `default`, or the
    /// first. Plugins take tasks once the supervisor attaches and checks them.
    pub fn new(entries: Vec<PluginConfig>, default: Option<&str>) -> Self {
        let default_index = match default {
            Some(name) => entries
                .iter()
                .position(|entry| entry.name.as_deref() == Some(name)),
            None if entries.is_empty() => None,
            None => Some(0),
        };
        let slots = entries
            .into_iter()
            .enumerate()
            .map(|(index, config)| Arc::new(Slot::new(index, config)))
            .collect();
        Self {
            slots: Arc::new(slots),
            default_index,
        }
    }

    /// Returns every slot, for the supervisor.
    pub(super) fn slots(&self) -> &[Arc<Slot>] {
        &self.slots
    }

    /// Runs a task on the plugin `name` (the default one when `None`); returns the output and
    /// the plugin's name.
    pub async fn run(
        &self,
        name: Option<&str>,
        task_id: String,
        input: Bytes,
        deadline: Option<Duration>,
    ) -> Result<(Bytes, String), PluginError> {
        let slot = self.find(name)?;
        let started = Instant::now();
        let result = slot.execute(task_id, input, deadline).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => crate::error::Error::from(error.clone()).code.as_str(),
        };
        crate::metrics::task(&slot.name(), outcome, started.elapsed());
        Ok((result?, slot.name()))
    }

    /// The version plugin `name` described itself with; empty before it did.
    pub fn version_of(&self, name: &str) -> String {
        self.slots
            .iter()
            .find(|slot| slot.name() == name)
            .and_then(|slot| {
                slot.state()
                    .description
                    .as_ref()
                    .map(|description| description.version.clone())
            })
            .unwrap_or_default()
    }

    /// Returns the name of the plugin `name` (the default one when `None`) would run on.
    pub fn resolve(&self, name: Option<&str>) -> Result<String, PluginError> {
        Ok(self.find(name)?.name())
    }

    fn find(&self, name: Option<&str>) -> Result<&Arc<Slot>, PluginError> {
        let found = match name {
            Some(name) => self.slots.iter().find(|slot| slot.name() == name),
            None => self.default_index.and_then(|index| self.slots.get(index)),
        };
        found.ok_or_else(|| PluginError::NotFound {
            name: name.unwrap_or("(default)").to_owned(),
            available: self.slots.iter().map(|slot| slot.name()).collect(),
        })
    }

    /// Returns what the node shows of each plugin.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        self.slots
            .iter()
            .map(|slot| slot.status(Some(slot.index) == self.default_index))
            .collect()
    }

    /// Returns the plugins as other nodes see them (`NodeService.GetInfo`).
    pub fn summaries(&self) -> Vec<PluginSummary> {
        self.statuses()
            .into_iter()
            .map(PluginSummary::from)
            .collect()
    }

    /// Returns the largest gRPC message a task for one of these plugins may need: the largest
    /// input or output limit, plus framing.
    pub fn largest_task_message_bytes(&self) -> usize {
        self.slots()
            .iter()
            .map(|slot| super::process::max_message_bytes(&slot.config))
            .max()
            .map_or(0, |bytes| usize::try_from(bytes).unwrap_or(usize::MAX))
    }

    /// Returns whether every plugin is serving.
    pub fn all_serving(&self) -> bool {
        self.slots
            .iter()
            .all(|slot| slot.health() == SlotHealth::Serving)
    }
}

/// One plugin's place in the registry.
#[derive(Debug)]
pub(super) struct Slot {
    index: usize,
    pub(super) config: PluginConfig,
    state: Mutex<SlotState>,
    /// Tasks admitted: running or queued. Admission is one atomic step, so the limit holds under
    /// any interleaving.
    admitted: AtomicU32,
    in_flight: AtomicU32,
    succeeded: AtomicU64,
    failed: AtomicU64,
    pub(super) restarts: AtomicU32,
}

#[derive(Debug)]
struct SlotState {
    client: Option<PluginClient>,
    description: Option<DescribeResponse>,
    health: SlotHealth,
    problem: Option<String>,
    permits: Arc<Semaphore>,
    max_concurrency: u32,
    pid: Option<u32>,
    limits: Option<LimitsApplied>,
    /// Since when health checks have failed without a pass, if they fail now.
    unhealthy_since: Option<Instant>,
}

impl Slot {
    fn new(index: usize, config: PluginConfig) -> Self {
        let max_concurrency = config.max_concurrency;
        Self {
            index,
            config,
            state: Mutex::new(SlotState {
                client: None,
                description: None,
                health: SlotHealth::Starting,
                problem: None,
                permits: Arc::new(Semaphore::new(max_concurrency as usize)),
                max_concurrency,
                pid: None,
                limits: None,
                unhealthy_since: None,
            }),
            admitted: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            restarts: AtomicU32::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // Critical sections only copy fields; a panic there is a bug worth stopping on.
        self.state
            .lock()
            .expect("plugin slot lock is never poisoned")
    }

    /// Returns the name requesters use: the configured one, else the described one.
    pub(super) fn name(&self) -> String {
        if let Some(name) = &self.config.name {
            return name.clone();
        }
        let state = self.state();
        match &state.description {
            Some(description) => description.name.clone(),
            None => self.config.display_name(self.index),
        }
    }

    pub(super) fn health(&self) -> SlotHealth {
        self.state().health
    }

    pub(super) fn client(&self) -> Option<PluginClient> {
        self.state().client.clone()
    }

    /// Connects the slot to a (re)started plugin; it takes tasks once checked healthy.
    pub(super) fn attach(
        &self,
        client: PluginClient,
        pid: Option<u32>,
        limits: Option<LimitsApplied>,
    ) {
        let mut state = self.state();
        state.client = Some(client);
        state.pid = pid;
        state.limits = limits;
        state.description = None;
        state.health = SlotHealth::Starting;
        state.problem = None;
        state.unhealthy_since = None;
    }

    /// Takes the plugin out of rotation, for `reason`.
    pub(super) fn detach(&self, health: SlotHealth, reason: String) {
        let mut state = self.state();
        state.client = None;
        state.pid = None;
        state.health = health;
        state.problem = Some(reason);
    }

    /// Records a health check; returns the previous health when it changed.
    pub(super) fn set_health(
        &self,
        health: SlotHealth,
        problem: Option<String>,
    ) -> Option<SlotHealth> {
        let mut state = self.state();
        let previous = state.health;
        state.health = health;
        state.problem = problem;
        if health == SlotHealth::Serving {
            state.unhealthy_since = None;
        } else if state.unhealthy_since.is_none() {
            state.unhealthy_since = Some(Instant::now());
        }
        (previous != health).then_some(previous)
    }

    /// Returns why the plugin is out of rotation, if it is.
    pub(super) fn problem(&self) -> Option<String> {
        self.state().problem.clone()
    }

    /// Returns how long health checks have failed without a pass, if they fail now.
    pub(super) fn unhealthy_for(&self) -> Option<Duration> {
        self.state().unhealthy_since.map(|since| since.elapsed())
    }

    /// Returns whether the plugin still needs describing (new process, or not yet accepted).
    pub(super) fn needs_description(&self) -> bool {
        let state = self.state();
        state.description.is_none() || state.health != SlotHealth::Serving
    }

    /// Accepts a plugin's description, or says why it is refused.
    pub(super) fn accept_description(&self, description: DescribeResponse) -> Result<(), String> {
        if let Some(configured) = &self.config.name
            && &description.name != configured
        {
            return Err(format!(
                "it describes itself as {:?}, but is configured as {configured:?}",
                description.name
            ));
        }
        let mut state = self.state();
        let max_concurrency = match description.max_concurrency {
            0 => self.config.max_concurrency,
            own_limit => own_limit.min(self.config.max_concurrency),
        };
        if max_concurrency != state.max_concurrency {
            state.permits = Arc::new(Semaphore::new(max_concurrency as usize));
            state.max_concurrency = max_concurrency;
        }
        state.description = Some(description);
        Ok(())
    }

    fn status(&self, is_default: bool) -> PluginStatus {
        let name = self.name();
        let state = self.state();
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let description = state.description.as_ref();
        PluginStatus {
            name,
            default: is_default,
            version: description.map(|description| description.version.clone()),
            description: description.map(|description| description.description.clone()),
            input_content_type: description
                .map(|description| description.input_content_type.clone()),
            output_content_type: description
                .map(|description| description.output_content_type.clone()),
            deterministic: description.is_some_and(|description| description.deterministic),
            idempotent: description.is_some_and(|description| description.idempotent),
            address: state
                .client
                .as_ref()
                .map(|client| client.address().to_owned())
                .or_else(|| self.config.address.clone()),
            managed: self.config.command.is_some(),
            pid: state.pid,
            limits: state.limits,
            restarts: self.restarts.load(Ordering::Relaxed),
            health: state.health,
            problem: state.problem.clone(),
            in_flight,
            queued: self
                .admitted
                .load(Ordering::Relaxed)
                .saturating_sub(in_flight),
            max_concurrency: state.max_concurrency,
            queue_size: self.config.queue_size,
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    async fn execute(
        &self,
        task_id: String,
        input: Bytes,
        deadline: Option<Duration>,
    ) -> Result<Bytes, PluginError> {
        let name = self.name();
        let maximum = Duration::from_millis(self.config.timeout_ms);
        let time_allowed = deadline.map_or(maximum, |deadline| deadline.min(maximum));
        let deadline_at = Instant::now() + time_allowed;
        if input.len() as u64 > self.config.max_input_bytes {
            return Err(PluginError::InputTooLarge {
                name,
                size: input.len(),
                limit: self.config.max_input_bytes,
            });
        }
        let (client, permits, max_concurrency) = {
            let state = self.state();
            match (&state.client, state.health) {
                (Some(client), SlotHealth::Serving) => (
                    client.clone(),
                    Arc::clone(&state.permits),
                    state.max_concurrency,
                ),
                (_, health) => {
                    let reason = state
                        .problem
                        .clone()
                        .unwrap_or_else(|| format!("{health:?}").to_lowercase());
                    return Err(PluginError::Unavailable { name, reason });
                }
            }
        };

        let capacity = max_concurrency.saturating_add(self.config.queue_size);
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= capacity {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(PluginError::Overloaded { name, capacity });
        }
        let _admission = CounterGuard(&self.admitted);
        let _permit = match tokio::time::timeout_at(deadline_at, permits.acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => {
                return Err(PluginError::Unavailable {
                    name,
                    reason: "it was replaced while the task waited".to_owned(),
                });
            }
            Err(_elapsed) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                return Err(PluginError::Timeout { name, time_allowed });
            }
        };
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _running = CounterGuard(&self.in_flight);
        let remaining = deadline_at.saturating_duration_since(Instant::now());
        let result = client.execute(task_id, input, remaining).await;
        let counter = if result.is_ok() {
            &self.succeeded
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result.map_err(|error| match error {
            CallError::Unavailable(reason) => PluginError::Unavailable { name, reason },
            CallError::Timeout => PluginError::Timeout { name, time_allowed },
            CallError::Rejected(message) => PluginError::Rejected { name, message },
            CallError::InputOverPluginLimit(message) => {
                PluginError::InputOverPluginLimit { name, message }
            }
            CallError::OutputTooLarge => PluginError::OutputTooLarge {
                name,
                limit: self.config.max_output_bytes,
            },
            CallError::Failed(message) => PluginError::Failed { name, message },
        })
    }
}

/// Decrements a counter when a task leaves a stage, however it leaves.
struct CounterGuard<'a>(&'a AtomicU32);

impl Drop for CounterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

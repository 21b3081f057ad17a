//! The tasks that keep plugins in rotation: a health watcher per plugin, and a supervisor per
//! managed plugin that restarts its process with backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::{PluginClient, PluginHealth};
use super::process::ManagedPlugin;
use super::registry::{Plugins, Slot, SlotHealth};

/// First wait before restarting a plugin that died.
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// A plugin that ran this long before dying is restarted after the initial wait again.
const STABLE_RUN: Duration = Duration::from_secs(30);

/// How the supervisor watches plugins.
#[derive(Debug, Clone, Copy)]
pub struct SupervisorOptions {
    /// Time between health checks of each plugin.
    pub health_interval: Duration,
    /// Longest wait before restarting a plugin that keeps dying.
    pub restart_backoff_max: Duration,
    /// How long a managed plugin may fail every health check (stuck, or saying NOT_SERVING)
    /// before it is stopped and started again.
    pub unhealthy_restart: Duration,
}

/// Connects external plugins and starts managed ones, and spawns their watchers on `tracker`;
/// all of them stop when `shutdown` is cancelled (managed processes are stopped then).
pub fn start(
    plugins: &Plugins,
    options: SupervisorOptions,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    super::limits::remove_stale_cgroups();
    for slot in plugins.slots() {
        if let Some(address) = &slot.config.address {
            match PluginClient::new(address, slot.config.max_output_bytes) {
                Ok(client) => slot.attach(client, None, None),
                Err(reason) => slot.detach(SlotHealth::Rejected, reason),
            }
        } else {
            tracker.spawn(supervise(Arc::clone(slot), options, shutdown.clone()));
        }
        tracker.spawn(watch_health(
            Arc::clone(slot),
            options.health_interval,
            shutdown.clone(),
        ));
    }
}

/// Waits until every plugin has been checked once (or `timeout` passes), so that a node that
/// says it is ready can run tasks at once.
pub async fn settled(plugins: &Plugins, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline
        && plugins
            .slots()
            .iter()
            .any(|slot| slot.health() == SlotHealth::Starting)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn watch_health(slot: Arc<Slot>, interval: Duration, shutdown: CancellationToken) {
    loop {
        check(&slot).await;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Asks the plugin whether it is healthy, describes it when it (re)appears, and updates its slot.
async fn check(slot: &Slot) {
    let Some(client) = slot.client() else {
        return;
    };
    let health = client.health().await;
    let (new_health, problem) = match health {
        PluginHealth::Serving | PluginHealth::NoHealthService
            if slot.needs_description() || health == PluginHealth::NoHealthService =>
        {
            match client.describe().await {
                Ok(description) => match slot.accept_description(description) {
                    Ok(()) => (SlotHealth::Serving, None),
                    Err(reason) => (SlotHealth::Rejected, Some(reason)),
                },
                Err(reason) => (SlotHealth::Unreachable, Some(reason)),
            }
        }
        PluginHealth::Serving | PluginHealth::NoHealthService => (SlotHealth::Serving, None),
        PluginHealth::NotServing => (
            SlotHealth::NotServing,
            Some("its health service says NOT_SERVING".to_owned()),
        ),
        PluginHealth::Unreachable => (
            SlotHealth::Unreachable,
            Some("it does not answer health checks".to_owned()),
        ),
    };
    // A process that died between the check and now is the supervisor's to report.
    if slot.client().is_none() {
        return;
    }
    if let Some(previous) = slot.set_health(new_health, problem.clone()) {
        let name = slot.name();
        match new_health {
            SlotHealth::Serving => {
                tracing::info!(
                    plugin = name,
                    address = client.address(),
                    ?previous,
                    "plugin serving"
                )
            }
            _ => tracing::warn!(
                plugin = name,
                health = ?new_health,
                problem = problem.as_deref().unwrap_or(""),
                "plugin out of rotation"
            ),
        }
    }
}

/// Returns once the plugin of `slot` has failed every health check for
/// `options.unhealthy_restart`, with how long that was.
async fn stays_unhealthy(slot: &Slot, options: SupervisorOptions) -> Duration {
    loop {
        tokio::time::sleep(options.health_interval).await;
        if let Some(unhealthy_for) = slot.unhealthy_for()
            && unhealthy_for >= options.unhealthy_restart
        {
            return unhealthy_for;
        }
    }
}

async fn supervise(slot: Arc<Slot>, options: SupervisorOptions, shutdown: CancellationToken) {
    let name = slot.name();
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let started_at = Instant::now();
        match ManagedPlugin::start(&name, &slot.config).await {
            Ok(mut process) => {
                match PluginClient::new(process.address(), slot.config.max_output_bytes) {
                    Ok(client) => slot.attach(client, process.pid(), Some(process.limits())),
                    Err(reason) => slot.detach(SlotHealth::Rejected, reason),
                }
                check(&slot).await;
                tokio::select! {
                    exit = process.wait() => {
                        tracing::warn!(plugin = name, %exit, "plugin process died; restarting it");
                        slot.detach(SlotHealth::Unreachable, format!("its process {exit}; restarting"));
                    }
                    unhealthy_for = stays_unhealthy(&slot, options) => {
                        let reason = format!(
                            "it failed every health check for {}s ({}); restarting it",
                            unhealthy_for.as_secs(),
                            slot.problem().unwrap_or_default()
                        );
                        tracing::warn!(plugin = name, "{reason}");
                        slot.detach(SlotHealth::Unreachable, reason);
                        process.stop().await;
                    }
                    () = shutdown.cancelled() => {
                        slot.detach(SlotHealth::Stopped, "the node is stopping".to_owned());
                        process.stop().await;
                        return;
                    }
                }
            }
            Err(error) => {
                tracing::error!(plugin = name, %error, "could not start plugin");
                slot.detach(SlotHealth::Unreachable, error.to_string());
            }
        }
        if started_at.elapsed() >= STABLE_RUN {
            backoff = INITIAL_BACKOFF;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => {
                slot.detach(SlotHealth::Stopped, "the node is stopping".to_owned());
                return;
            }
        }
        backoff = (backoff * 2).min(options.restart_backoff_max);
        slot.restarts.fetch_add(1, Ordering::Relaxed);
    }
}

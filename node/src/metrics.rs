//! Prometheus metrics (`GET /metrics`): the `metrics` facade, recorded by
//! `metrics-exporter-prometheus` without a listener of its own (the REST API serves it).
//!
//! Names follow Prometheus conventions: `sphere_<what>_total` for counters, `_seconds` and
//! `_bytes` for units. Recorded as things happen: REST requests by route, method and status with
//! their latency; tasks by plugin and outcome with their latency; open connections per listener;
//! audits by result; repairs; bytes stored and served as a provider; tasks asked of other nodes
//! by target, plugin and outcome; transactions sent to the payment contract; gossip datagrams. Read from the
//! node's state at each scrape: plugins (up, restarts, in flight, queued), the storage offered
//! and used, and the payment channels both ways.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: 100 us to 30 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Most series a metric family recorded as things happen holds; label sets beyond it are
/// recorded as `other`, so that label values from outside (an HTTP method, a plugin name asked
/// for, what a peer answers) cannot grow the registry and `/metrics` without bound.
const MAX_SERIES: usize = 1000;

/// The label value that stands for any beyond [`MAX_SERIES`].
const OTHER: &str = "other";

/// The handles of the series one metric family records, by label values. Registering a series
/// (owned label strings, a lookup in the recorder's registry) costs more than recording into
/// it, and every task records the same few series again.
struct Family<H> {
    series: Mutex<HashMap<String, H>>,
}

impl<H: Clone> Family<H> {
    fn new() -> Self {
        Self {
            series: Mutex::default(),
        }
    }

    /// The handles of the series `labels` name (or of the `other` series, once the family is
    /// full), registered by `register` when first seen.
    fn get<const N: usize>(&self, labels: [&str; N], register: impl FnOnce([&str; N]) -> H) -> H {
        thread_local! {
            static KEY: RefCell<String> = const { RefCell::new(String::new()) };
        }
        let write_key = |key: &mut String, labels: &[&str]| {
            key.clear();
            for label in labels {
                key.push_str(label);
                key.push('\0');
            }
        };
        KEY.with_borrow_mut(|key| {
            write_key(key, &labels);
            let mut series = self.series.lock().expect("metrics lock is never poisoned");
            if let Some(handles) = series.get(key.as_str()) {
                return handles.clone();
            }
            let labels = if series.len() < MAX_SERIES {
                labels
            } else {
                write_key(key, &[OTHER; N]);
                if let Some(handles) = series.get(key.as_str()) {
                    return handles.clone();
                }
                [OTHER; N]
            };
            let handles = register(labels);
            series.insert(key.clone(), handles.clone());
            handles
        })
    }
}

/// A counter of events and a histogram of their durations, recorded together: the counter
/// labelled with every label, the histogram with the first only.
struct Timed<const N: usize> {
    counter: &'static str,
    histogram: &'static str,
    labels: [&'static str; N],
    family: LazyLock<Family<(Counter, Histogram)>>,
}

impl<const N: usize> Timed<N> {
    const fn new(
        counter: &'static str,
        histogram: &'static str,
        labels: [&'static str; N],
    ) -> Self {
        Self {
            counter,
            histogram,
            labels,
            family: LazyLock::new(Family::new),
        }
    }

    /// Counts one event whose labels have `values`, and records its `duration`.
    fn record(&self, values: [&str; N], duration: Duration) {
        let (events, durations) = self.family.get(values, |values| {
            let labels: Vec<(&'static str, String)> = self
                .labels
                .iter()
                .zip(values)
                .map(|(name, value)| (*name, value.to_owned()))
                .collect();
            (
                metrics::counter!(self.counter, &labels),
                metrics::histogram!(self.histogram, &labels[..1]),
            )
        });
        events.increment(1);
        durations.record(duration.as_secs_f64());
    }
}

/// Installs the process's recorder (once; later calls reuse it) and keeps its histograms
/// compact in the background; returns the handle that renders the metrics.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)
                .expect("the buckets are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed in this process");
            let upkeep = handle.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(Duration::from_secs(5));
                loop {
                    interval.tick().await;
                    upkeep.run_upkeep();
                }
            });
            handle
        })
        .clone()
}

/// Returns the metrics in Prometheus's text format (empty before [`install`]).
pub fn render() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// Records one REST request: its route (the matched pattern, so IDs do not multiply series),
/// method, status and duration.
pub fn http_request(route: &str, method: &str, status: &str, duration: Duration) {
    static REQUESTS: Timed<3> = Timed::new(
        "sphere_http_requests_total",
        "sphere_http_request_duration_seconds",
        ["route", "method", "status"],
    );
    REQUESTS.record([route, method, status], duration);
}

/// Records one task run by one of this node's plugins: `outcome` is `ok` or the error code.
pub fn task(plugin: &str, outcome: &str, duration: Duration) {
    static TASKS: Timed<2> = Timed::new(
        "sphere_tasks_total",
        "sphere_task_duration_seconds",
        ["plugin", "outcome"],
    );
    TASKS.record([plugin, outcome], duration);
}

/// Sets the number of connections `listener` (`http` or `grpc`) holds open.
pub fn open_connections(listener: &'static str, open: usize) {
    metrics::gauge!("sphere_connections_open", "listener" => listener).set(open as f64);
}

/// Records one audit of one replica: `result` is `ok` or `failed`.
pub fn audit(result: &'static str) {
    metrics::counter!("sphere_audits_total", "result" => result).increment(1);
}

/// Records one replica copied to a new provider by repair.
pub fn repair() {
    metrics::counter!("sphere_repairs_total").increment(1);
}

/// Counts bytes this node, as a provider, `stored` (objects committed), `read` (chunks read from
/// disk to answer audits) or `served` (chunks sent to their owners).
pub fn provider_bytes(direction: &'static str, bytes: u64) {
    metrics::counter!("sphere_provider_bytes_total", "direction" => direction).increment(bytes);
}

/// Counts one gossip datagram of `bytes`, a `message` (`syn`, `syn_ack`, `ack`, `bad_cluster`)
/// this node `sent` or `received`.
pub fn gossip(direction: &'static str, message: &'static str, bytes: usize) {
    metrics::counter!("sphere_gossip_bytes_total", "direction" => direction, "message" => message)
        .increment(bytes as u64);
    metrics::counter!("sphere_gossip_messages_total", "direction" => direction, "message" => message)
        .increment(1);
}

/// Sets what a plugin's status says, at a scrape.
pub fn plugin(name: &str, up: bool, restarts: u32, in_flight: u32, queued: u32) {
    let plugin = || ("plugin", name.to_owned());
    metrics::gauge!("sphere_plugin_up", &[plugin()]).set(if up { 1.0 } else { 0.0 });
    metrics::counter!("sphere_plugin_restarts_total", &[plugin()]).absolute(u64::from(restarts));
    metrics::gauge!("sphere_plugin_in_flight", &[plugin()]).set(f64::from(in_flight));
    metrics::gauge!("sphere_plugin_queued", &[plugin()]).set(f64::from(queued));
}

/// Records one transaction this node sent to the payment contract: `kind` is `open`, `top_up`,
/// `request_close`, `close` or `redeem`; `outcome` is `ok` or the error code.
pub fn transaction(kind: &'static str, outcome: &'static str) {
    metrics::counter!("sphere_chain_transactions_total", "kind" => kind, "outcome" => outcome)
        .increment(1);
}

/// Records one task this node asked another node to run: `target` is the peer's address when it
/// is a configured peer, else `other` (addresses come from requests; they must not multiply
/// series); `outcome` is `ok` or the error code.
pub fn requested_task(target: &str, plugin: &str, outcome: &str, duration: Duration) {
    static TASKS: Timed<3> = Timed::new(
        "sphere_requested_tasks_total",
        "sphere_requested_task_duration_seconds",
        ["target", "plugin", "outcome"],
    );
    TASKS.record([target, plugin, outcome], duration);
}

/// What the payment channels hold, at a scrape: `direction` is `out` (this node pays) or `in`
/// (this node is paid); amounts in wei (as floats: exact to 2^53, plenty for a dashboard).
pub struct ChannelTotals {
    /// Channels by phase (`open`, `closing`, `closed`); `in` channels count as `open`.
    pub channels: Vec<(&'static str, usize)>,
    /// Wei deposited in all.
    pub deposit_wei: f64,
    /// Out: wei spent on work done. In: wei earned.
    pub used_wei: f64,
    /// In: wei redeemed on chain.
    pub redeemed_wei: f64,
}

/// Sets what the payment channels hold in `direction`, at a scrape.
pub fn payments(direction: &'static str, totals: &ChannelTotals) {
    for (phase, count) in &totals.channels {
        metrics::gauge!("sphere_payment_channels", "direction" => direction, "phase" => *phase)
            .set(*count as f64);
    }
    metrics::gauge!("sphere_payment_deposit_wei", "direction" => direction).set(totals.deposit_wei);
    let used = if direction == "out" {
        "sphere_payment_spent_wei"
    } else {
        "sphere_payment_earned_wei"
    };
    metrics::gauge!(used).set(totals.used_wei);
    if direction == "in" {
        metrics::gauge!("sphere_payment_redeemed_wei").set(totals.redeemed_wei);
    }
}

/// Sets the space this node offers other nodes and what their objects use, at a scrape.
pub fn storage(capacity_bytes: u64, used_bytes: u64) {
    metrics::gauge!("sphere_storage_capacity_bytes").set(capacity_bytes as f64);
    metrics::gauge!("sphere_storage_used_bytes").set(used_bytes as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_records_label_sets_beyond_its_bound_as_other() {
        let family: Family<String> = Family::new();
        let register = |labels: [&str; 2]| labels.join("/");
        for i in 0..MAX_SERIES {
            assert_eq!(
                family.get([&i.to_string(), "a"], register),
                format!("{i}/a")
            );
        }
        assert_eq!(family.get(["new", "a"], register), "other/other");
        assert_eq!(family.get(["newer", "b"], register), "other/other");
        // Those seen before the bound keep their own series.
        assert_eq!(family.get(["7", "a"], register), "7/a");
        assert_eq!(family.series.lock().expect("lock").len(), MAX_SERIES + 1);
    }
}

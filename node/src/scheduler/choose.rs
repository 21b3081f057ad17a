//! Where a task may run and where it should: hard filters first, each refused node with its
//! reason, then a score over the nodes left, with a little randomness so equal nodes share the
//! work.
//!
//! Pure functions over a snapshot of the mesh and this node's standings, so that every rule is
//! tested without a network.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use alloy_primitives::U256;
use serde_json::json;

use crate::address::NodeAddress;
use crate::api::{PeerPlugin, PeerState};
use crate::error::{Error, ErrorCode};
use crate::identity::NodeId;
use crate::mesh::Candidate;

use super::standings::Standing;

/// Weights of the score's parts; each part lies in 0..=1.
const WEIGHT_FREE: f64 = 0.4;
const WEIGHT_SUCCESS: f64 = 0.25;
const WEIGHT_PRICE: f64 = 0.2;
const WEIGHT_LATENCY: f64 = 0.15;
/// The most randomness added to a score: enough to share work among equal nodes, too little to
/// prefer a clearly worse one.
const JITTER: f64 = 0.05;
/// The round trip at which the latency part is one half: a few milliseconds more or less on one
/// network barely count, another continent does.
const HALF_SCORE_RTT_MS: f64 = 50.0;

/// What the requester asks of the node that runs its task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    /// Labels the node must carry, each with this value.
    pub labels: BTreeMap<String, String>,
    /// The most the requester pays for the task.
    pub max_price_wei: Option<U256>,
    /// Nodes never to use.
    pub exclude: BTreeSet<NodeId>,
    /// Versions of the plugin that will do.
    pub plugin_version: Option<semver::VersionReq>,
}

/// What a task needs, beyond the selector.
#[derive(Debug, Clone, Copy)]
pub struct Needs<'a> {
    /// The plugin by name; `None` is each node's default plugin.
    pub plugin: Option<&'a str>,
    /// Whether this node can pay; a node that charges is refused when it cannot.
    pub can_pay: bool,
    /// Whether the plugin must say it is deterministic (verified execution).
    pub deterministic: bool,
}

/// Why a node was not chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The selector excludes it.
    Excluded,
    /// The mesh does not count it alive.
    NotAlive(PeerState),
    /// It has no such plugin (or no default plugin).
    NoPlugin {
        /// The plugin asked for; `None` for the default.
        plugin: Option<String>,
        /// The plugins it has.
        serves: Vec<String>,
    },
    /// Its plugin is not taking tasks now.
    NotServing(String),
    /// Its plugin's version does not meet the selector.
    Version {
        /// The version it runs.
        version: String,
        /// The versions asked for.
        wanted: String,
    },
    /// Its plugin does not say it is deterministic, which verification needs.
    NotDeterministic(String),
    /// A label is missing or has another value.
    Label {
        /// The label.
        key: String,
        /// The value asked for.
        wanted: String,
        /// Its value, if any.
        has: Option<String>,
    },
    /// It charges more than the selector's cap.
    Price {
        /// Its price.
        price: U256,
        /// The cap.
        cap: U256,
    },
    /// It charges and this node has payments off.
    CannotPay(U256),
    /// Its plugin's slots and queue are full.
    Overloaded {
        /// Tasks running or waiting there (the larger of what it published and what this node
        /// sent it).
        busy: u32,
        /// Slots plus queue.
        room: u32,
    },
    /// It failed this task already.
    Failed(Error),
    /// It has no free space (for a file).
    NoSpace,
}

impl Refusal {
    /// A short stable name, for scripts.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Excluded => "excluded",
            Self::NotAlive(_) => "not_alive",
            Self::NoPlugin { .. } => "no_plugin",
            Self::NotServing(_) => "plugin_not_serving",
            Self::Version { .. } => "plugin_version",
            Self::NotDeterministic(_) => "not_deterministic",
            Self::Label { .. } => "labels",
            Self::Price { .. } => "price",
            Self::CannotPay(_) => "payments_off",
            Self::Overloaded { .. } => "overloaded",
            Self::Failed(_) => "failed",
            Self::NoSpace => "no_space",
        }
    }

    /// Whether waiting may lift it: a node can come back, free a slot, restart its plugin.
    pub fn may_pass_later(&self) -> bool {
        match self {
            Self::NotAlive(_) | Self::NotServing(_) | Self::Overloaded { .. } => true,
            Self::Failed(error) => is_passing(error.code),
            _ => false,
        }
    }
}

/// Failures a node gets over by itself: a full queue drains, a plugin restarts.
pub fn is_passing(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Overloaded | ErrorCode::PluginUnavailable)
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Excluded => write!(formatter, "excluded by the selector"),
            Self::NotAlive(PeerState::Suspect) => {
                write!(formatter, "suspect: not heard from lately")
            }
            Self::NotAlive(_) => write!(formatter, "dead: not heard from"),
            Self::NoPlugin {
                plugin: Some(plugin),
                serves,
            } => write!(
                formatter,
                "has no plugin {plugin:?} (it has: {})",
                names(serves)
            ),
            Self::NoPlugin {
                plugin: None,
                serves,
            } => write!(
                formatter,
                "has no default plugin (it has: {})",
                names(serves)
            ),
            Self::NotServing(plugin) => write!(formatter, "plugin {plugin:?} is not serving"),
            Self::Version { version, wanted } => {
                write!(formatter, "runs version {version}, not {wanted}")
            }
            Self::NotDeterministic(plugin) => write!(
                formatter,
                "plugin {plugin:?} does not say it is deterministic, which verification needs"
            ),
            Self::Label {
                key,
                wanted,
                has: Some(has),
            } => write!(formatter, "label {key}={has}, not {key}={wanted}"),
            Self::Label { key, wanted, .. } => {
                write!(formatter, "no label {key} (wanted {key}={wanted})")
            }
            Self::Price { price, cap } => {
                write!(formatter, "charges {price} wei, above the cap of {cap} wei")
            }
            Self::CannotPay(price) => write!(
                formatter,
                "charges {price} wei and this node has payments off"
            ),
            Self::Overloaded { busy, room } => {
                write!(
                    formatter,
                    "full: {busy} tasks running or waiting, room for {room}"
                )
            }
            Self::Failed(error) => write!(formatter, "failed this task: {error}"),
            Self::NoSpace => write!(formatter, "has no free space"),
        }
    }
}

fn names(plugins: &[String]) -> String {
    if plugins.is_empty() {
        "none".to_owned()
    } else {
        plugins.join(", ")
    }
}

/// A node that may run the task.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The node.
    pub node: NodeId,
    /// Where it listens.
    pub address: NodeAddress,
    /// The plugin that would run the task there.
    pub plugin: PeerPlugin,
    /// Higher is better.
    pub score: f64,
}

/// A node that may not run the task, and why.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The node.
    pub node: NodeId,
    /// Where it listens.
    pub address: NodeAddress,
    /// Why not.
    pub refusal: Refusal,
}

/// The candidates sorted: those that may run the task, best first, and the others.
#[derive(Debug, Clone, Default)]
pub struct Ranking {
    /// Best first.
    pub chosen: Vec<Choice>,
    /// In the mesh's order.
    pub refused: Vec<Refused>,
}

impl Ranking {
    /// Whether waiting may give a node to run the task.
    pub fn may_pass_later(&self) -> bool {
        self.refused
            .iter()
            .any(|refused| refused.refusal.may_pass_later())
    }

    /// The answer when no node fits: every candidate with the reason it was refused.
    pub fn no_capable_node(&self, what: &str) -> Error {
        let candidates: Vec<_> = self
            .refused
            .iter()
            .map(|refused| {
                json!({
                    "node": refused.node.to_string(),
                    "address": refused.address.to_string(),
                    "reason": refused.refusal.kind(),
                    "message": refused.refusal.to_string(),
                })
            })
            .collect();
        let message = if candidates.is_empty() {
            format!("no node can run {what}: this node knows no other node")
        } else {
            let reasons: Vec<String> = self
                .refused
                .iter()
                .map(|refused| format!("{} {}", short(refused.node), refused.refusal))
                .collect();
            format!("no node can run {what}: {}", reasons.join("; "))
        };
        Error::new(ErrorCode::NoCapableNode, message)
            .with_details(json!({ "candidates": candidates }))
    }
}

/// A node ID short enough for a message (the details carry it whole).
fn short(node: NodeId) -> String {
    let text = node.to_string();
    format!("{}…{}", &text[..6], &text[text.len() - 4..])
}

/// Filters and scores `candidates` for a task with `needs` under `selector`. `standing` gives
/// what this node knows of each node (tasks it has running there, how they went); `failed` the
/// nodes that failed this task already; `jitter` a random number in 0..1 per call.
pub fn rank(
    candidates: &[Candidate],
    selector: &Selector,
    needs: Needs<'_>,
    standing: impl Fn(NodeId) -> Standing,
    failed: &HashMap<NodeId, Error>,
    mut jitter: impl FnMut() -> f64,
) -> Ranking {
    let mut ranking = Ranking::default();
    let mut fitting = Vec::new();
    for candidate in candidates {
        let node = candidate.record.node_id;
        let standing = standing(node);
        match admit(candidate, selector, needs, &standing, failed.get(&node)) {
            Ok((plugin, price)) => fitting.push((candidate, plugin, price, standing)),
            Err(refusal) => ranking.refused.push(Refused {
                node,
                address: candidate.record.grpc_address.clone(),
                refusal,
            }),
        }
    }
    let dearest = fitting
        .iter()
        .map(|(_, _, price, _)| *price)
        .max()
        .unwrap_or(U256::ZERO);
    ranking.chosen = fitting
        .into_iter()
        .map(|(candidate, plugin, price, standing)| {
            let free = 1.0 / (1.0 + busy(candidate, &plugin, &standing) as f64 / slots(&plugin));
            let price_part = 1.0 - ratio(price, dearest);
            let latency = latency_part(candidate);
            let score = WEIGHT_FREE * free
                + WEIGHT_SUCCESS * standing.success
                + WEIGHT_PRICE * price_part
                + WEIGHT_LATENCY * latency
                + JITTER * jitter();
            Choice {
                node: candidate.record.node_id,
                address: candidate.record.grpc_address.clone(),
                plugin,
                score,
            }
        })
        .collect();
    ranking.chosen.sort_by(|a, b| b.score.total_cmp(&a.score));
    ranking
}

/// Ranks `candidates` as providers of a new file copy: alive, with free space, carrying
/// `labels`; scored by free space, storage price, past success and round trip, with jitter.
/// Returns the providers best first, and the refused ones.
pub fn rank_providers(
    candidates: &[Candidate],
    labels: &BTreeMap<String, String>,
    standing: impl Fn(NodeId) -> Standing,
    mut jitter: impl FnMut() -> f64,
) -> (Vec<(NodeId, NodeAddress)>, Vec<Refused>) {
    let mut refused = Vec::new();
    let mut fitting = Vec::new();
    for candidate in candidates {
        let record = &candidate.record;
        let refusal = labels_refusal(&record.labels, labels)
            .or_else(|| {
                (candidate.state != PeerState::Alive).then_some(Refusal::NotAlive(candidate.state))
            })
            .or_else(|| (record.capacity.free_disk_bytes == 0).then_some(Refusal::NoSpace));
        match refusal {
            Some(refusal) => refused.push(Refused {
                node: record.node_id,
                address: record.grpc_address.clone(),
                refusal,
            }),
            None => fitting.push(candidate),
        }
    }
    let price = |candidate: &Candidate| {
        candidate
            .record
            .prices
            .as_ref()
            .map_or(U256::ZERO, |prices| U256::from(prices.storage_gib_day_wei))
    };
    let dearest = fitting
        .iter()
        .map(|candidate| price(candidate))
        .max()
        .unwrap_or(U256::ZERO);
    let mut scored: Vec<(f64, NodeId, NodeAddress)> = fitting
        .into_iter()
        .map(|candidate| {
            let capacity = &candidate.record.capacity;
            let free = if capacity.disk_bytes == 0 {
                0.0
            } else {
                capacity.free_disk_bytes as f64 / capacity.disk_bytes as f64
            };
            let latency = latency_part(candidate);
            let score = WEIGHT_FREE * free.clamp(0.0, 1.0)
                + WEIGHT_SUCCESS * standing(candidate.record.node_id).success
                + WEIGHT_PRICE * (1.0 - ratio(price(candidate), dearest))
                + WEIGHT_LATENCY * latency
                + JITTER * jitter();
            (
                score,
                candidate.record.node_id,
                candidate.record.grpc_address.clone(),
            )
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let chosen = scored
        .into_iter()
        .map(|(_, node, address)| (node, address))
        .collect();
    (chosen, refused)
}

/// The first label of `wanted` that `labels` lacks or holds with another value.
fn labels_refusal(
    labels: &BTreeMap<String, String>,
    wanted: &BTreeMap<String, String>,
) -> Option<Refusal> {
    wanted.iter().find_map(|(key, value)| {
        let has = labels.get(key);
        (has != Some(value)).then(|| Refusal::Label {
            key: key.clone(),
            wanted: value.clone(),
            has: has.cloned(),
        })
    })
}

/// The hard filters, in the order a person would check them: the plugin and price it would run
/// the task at, or why not.
fn admit(
    candidate: &Candidate,
    selector: &Selector,
    needs: Needs<'_>,
    standing: &Standing,
    failed: Option<&Error>,
) -> Result<(PeerPlugin, U256), Refusal> {
    let record = &candidate.record;
    if selector.exclude.contains(&record.node_id) {
        return Err(Refusal::Excluded);
    }
    if let Some(error) = failed {
        return Err(Refusal::Failed(error.clone()));
    }
    if let Some(refusal) = labels_refusal(&record.labels, &selector.labels) {
        return Err(refusal);
    }
    let plugin = match needs.plugin {
        Some(name) => record.plugins.iter().find(|plugin| plugin.name == name),
        None => record
            .plugins
            .iter()
            .find(|plugin| plugin.default)
            .or(record.plugins.first()),
    };
    let Some(plugin) = plugin else {
        return Err(Refusal::NoPlugin {
            plugin: needs.plugin.map(str::to_owned),
            serves: record
                .plugins
                .iter()
                .map(|plugin| plugin.name.clone())
                .collect(),
        });
    };
    if let Some(wanted) = &selector.plugin_version {
        let meets =
            semver::Version::parse(&plugin.version).is_ok_and(|version| wanted.matches(&version));
        if !meets {
            return Err(Refusal::Version {
                version: plugin.version.clone(),
                wanted: wanted.to_string(),
            });
        }
    }
    if needs.deterministic && !plugin.deterministic {
        return Err(Refusal::NotDeterministic(plugin.name.clone()));
    }
    let price = record.prices.as_ref().map_or(U256::ZERO, |prices| {
        U256::from(prices.task_wei_on(&plugin.name))
    });
    if let Some(cap) = selector.max_price_wei
        && price > cap
    {
        return Err(Refusal::Price { price, cap });
    }
    if !needs.can_pay && !price.is_zero() {
        return Err(Refusal::CannotPay(price));
    }
    if candidate.state != PeerState::Alive {
        return Err(Refusal::NotAlive(candidate.state));
    }
    if !plugin.serving {
        return Err(Refusal::NotServing(plugin.name.clone()));
    }
    let busy = busy(candidate, plugin, standing);
    let room = plugin
        .max_concurrency
        .max(1)
        .saturating_add(plugin.queue_size);
    if busy >= room {
        return Err(Refusal::Overloaded { busy, room });
    }
    Ok((plugin.clone(), price))
}

/// Tasks running or waiting on `plugin` at `candidate`: what it last published, or what this
/// node has sent it since, whichever is more (the published load lags by a gossip round).
fn busy(candidate: &Candidate, plugin: &PeerPlugin, standing: &Standing) -> u32 {
    let published = candidate
        .load
        .as_ref()
        .and_then(|load| load.plugins.get(&plugin.name))
        .map_or(0, |load| load.in_flight.saturating_add(load.queued));
    published.max(standing.in_flight)
}

/// The latency part of a score: 1 for no delay, one half at [`HALF_SCORE_RTT_MS`], one half too
/// while unmeasured.
fn latency_part(candidate: &Candidate) -> f64 {
    candidate
        .rtt_ms
        .map_or(0.5, |rtt| 1.0 / (1.0 + rtt / HALF_SCORE_RTT_MS))
}

fn slots(plugin: &PeerPlugin) -> f64 {
    f64::from(plugin.max_concurrency.max(1))
}

/// `part / whole` for prices, which may exceed what an `f64` holds exactly; 0 when both are 0.
fn ratio(part: U256, whole: U256) -> f64 {
    if part.is_zero() || whole.is_zero() {
        return 0.0;
    }
    let to_f64 = |value: U256| value.approx_log2().exp2();
    (to_f64(part) / to_f64(whole)).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PeerCapacity, PeerLoad, PluginLoad};
    use crate::config::Prices;
    use crate::mesh::record::PeerRecord;

    fn node(byte: u8) -> NodeId {
        NodeId::from(alloy_primitives::Address::repeat_byte(byte))
    }

    fn plugin(name: &str) -> PeerPlugin {
        PeerPlugin {
            name: name.to_owned(),
            version: "1.2.0".to_owned(),
            description: String::new(),
            input_content_type: String::new(),
            output_content_type: String::new(),
            deterministic: true,
            idempotent: true,
            serving: true,
            default: true,
            max_concurrency: 2,
            queue_size: 2,
        }
    }

    fn candidate(byte: u8) -> Candidate {
        Candidate {
            record: PeerRecord {
                node_id: node(byte),
                version: "0".to_owned(),
                grpc_address: format!("127.0.0.1:{}", 1000 + u16::from(byte))
                    .parse()
                    .expect("present"),
                http_address: String::new(),
                labels: BTreeMap::from([("region".to_owned(), "eu".to_owned())]),
                plugins: vec![plugin("hello")],
                prices: None,
                capacity: PeerCapacity {
                    cpu_cores: 1,
                    memory_bytes: 0,
                    disk_bytes: 0,
                    free_disk_bytes: 0,
                },
                seq: 1,
                expires_at_ms: u64::MAX,
            },
            load: None,
            state: PeerState::Alive,
            rtt_ms: Some(1.0),
        }
    }

    const NEEDS: Needs<'static> = Needs {
        plugin: Some("hello"),
        can_pay: true,
        deterministic: false,
    };

    fn rank_plainly(candidates: &[Candidate], selector: &Selector, needs: Needs<'_>) -> Ranking {
        rank(
            candidates,
            selector,
            needs,
            |_| Standing::default(),
            &HashMap::new(),
            || 0.0,
        )
    }

    fn refusal_of(ranking: &Ranking, byte: u8) -> Option<&Refusal> {
        ranking
            .refused
            .iter()
            .find(|refused| refused.node == node(byte))
            .map(|refused| &refused.refusal)
    }

    #[test]
    fn every_hard_filter_refuses_with_its_reason() {
        let mut candidates: Vec<Candidate> = (1..=9).map(candidate).collect();
        candidates[1].state = PeerState::Dead;
        candidates[2].record.plugins = vec![plugin("other")];
        candidates[3].record.plugins[0].serving = false;
        candidates[4].record.plugins[0].version = "2.0.0".to_owned();
        candidates[5]
            .record
            .labels
            .insert("region".into(), "us".into());
        candidates[6].record.prices = Some(Prices {
            task_wei: 500,
            ..Prices::default()
        });
        candidates[7].load = Some(PeerLoad {
            plugins: BTreeMap::from([(
                "hello".to_owned(),
                PluginLoad {
                    in_flight: 2,
                    queued: 2,
                },
            )]),
        });
        let selector = Selector {
            labels: BTreeMap::from([("region".to_owned(), "eu".to_owned())]),
            max_price_wei: Some(U256::from(100)),
            exclude: BTreeSet::from([node(9)]),
            plugin_version: Some("^1.2".parse().expect("a requirement")),
        };
        let ranking = rank_plainly(&candidates, &selector, NEEDS);
        assert_eq!(
            ranking
                .chosen
                .iter()
                .map(|choice| choice.node)
                .collect::<Vec<_>>(),
            vec![node(1)]
        );
        let kinds: Vec<&str> = (2..=9)
            .map(|byte| refusal_of(&ranking, byte).expect("refused").kind())
            .collect();
        assert_eq!(
            kinds,
            [
                "not_alive",
                "no_plugin",
                "plugin_not_serving",
                "plugin_version",
                "labels",
                "price",
                "overloaded",
                "excluded"
            ]
        );
        assert!(
            ranking.may_pass_later(),
            "a dead, a stopped and a full node may pass later"
        );
        let error = ranking.no_capable_node("the task");
        assert_eq!(error.code, ErrorCode::NoCapableNode);
        assert!(
            error.message.contains("label region=us, not region=eu"),
            "{error}"
        );
        let listed = error.details.expect("present")["candidates"]
            .as_array()
            .expect("present")
            .len();
        assert_eq!(listed, 8);
    }

    #[test]
    fn a_node_that_charges_is_refused_when_this_node_cannot_pay_and_verification_needs_determinism()
    {
        let mut charging = candidate(1);
        charging.record.prices = Some(Prices::default());
        let mut loose = candidate(2);
        loose.record.plugins[0].deterministic = false;
        let candidates = [charging, loose];
        let ranking = rank_plainly(
            &candidates,
            &Selector::default(),
            Needs {
                can_pay: false,
                deterministic: true,
                ..NEEDS
            },
        );
        assert!(ranking.chosen.is_empty());
        assert_eq!(
            refusal_of(&ranking, 1).expect("present").kind(),
            "payments_off"
        );
        assert_eq!(
            refusal_of(&ranking, 2).expect("present").kind(),
            "not_deterministic"
        );
        assert!(
            !ranking.may_pass_later(),
            "neither refusal lifts by waiting"
        );
    }

    #[test]
    fn without_a_plugin_name_each_nodes_default_plugin_is_used() {
        let mut two = candidate(1);
        two.record.plugins = vec![
            PeerPlugin {
                default: false,
                ..plugin("first")
            },
            plugin("chosen-default"),
        ];
        let ranking = rank_plainly(
            &[two],
            &Selector::default(),
            Needs {
                plugin: None,
                ..NEEDS
            },
        );
        assert_eq!(ranking.chosen[0].plugin.name, "chosen-default");
    }

    #[test]
    fn the_score_prefers_free_cheap_near_and_reliable_nodes() {
        let base = candidate(1);
        let mut busy = candidate(2);
        busy.load = Some(PeerLoad {
            plugins: BTreeMap::from([(
                "hello".to_owned(),
                PluginLoad {
                    in_flight: 2,
                    queued: 1,
                },
            )]),
        });
        let mut dear = candidate(3);
        dear.record.prices = Some(Prices {
            task_wei: 10,
            ..Prices::default()
        });
        let mut cheap = candidate(4);
        cheap.record.prices = Some(Prices {
            task_wei: 1,
            ..Prices::default()
        });
        let mut far = candidate(5);
        far.rtt_ms = Some(200.0);
        let unreliable = candidate(6);
        let candidates = [base, busy, dear, cheap, far, unreliable];
        let ranking = rank(
            &candidates,
            &Selector::default(),
            NEEDS,
            |node_id| Standing {
                in_flight: 0,
                success: if node_id == node(6) { 0.2 } else { 1.0 },
            },
            &HashMap::new(),
            || 0.0,
        );
        let score = |byte| {
            ranking
                .chosen
                .iter()
                .find(|choice| choice.node == node(byte))
                .expect("present")
                .score
        };
        assert!(score(1) > score(2), "free beats busy");
        assert!(score(4) > score(3), "cheap beats dear");
        assert!(score(1) > score(5), "near beats far");
        assert!(score(1) > score(6), "reliable beats unreliable");
        assert_eq!(ranking.chosen[0].node, node(1));
    }

    #[test]
    fn what_this_node_sent_counts_before_the_published_load_catches_up() {
        let candidates = [candidate(1)];
        let full = |_| Standing {
            in_flight: 4,
            success: 1.0,
        };
        let ranking = rank(
            &candidates,
            &Selector::default(),
            NEEDS,
            full,
            &HashMap::new(),
            || 0.0,
        );
        assert_eq!(
            refusal_of(&ranking, 1),
            Some(&Refusal::Overloaded { busy: 4, room: 4 })
        );
        assert!(ranking.may_pass_later());
    }

    #[test]
    fn a_node_that_failed_the_task_is_refused_and_only_passing_failures_lift() {
        let candidates = [candidate(1), candidate(2)];
        let failed = HashMap::from([
            (node(1), Error::new(ErrorCode::TargetUnreachable, "gone")),
            (node(2), Error::new(ErrorCode::Overloaded, "full")),
        ]);
        let ranking = rank(
            &candidates,
            &Selector::default(),
            NEEDS,
            |_| Standing::default(),
            &failed,
            || 0.0,
        );
        assert!(ranking.chosen.is_empty());
        assert!(!refusal_of(&ranking, 1).expect("present").may_pass_later());
        assert!(refusal_of(&ranking, 2).expect("present").may_pass_later());
    }

    #[test]
    fn jitter_shares_work_among_equal_nodes() {
        let candidates = [candidate(1), candidate(2), candidate(3)];
        let mut firsts = HashMap::new();
        let mut seed = 0.0_f64;
        for _ in 0..300 {
            let ranking = rank(
                &candidates,
                &Selector::default(),
                NEEDS,
                |_| Standing::default(),
                &HashMap::new(),
                || {
                    seed = (seed + 0.618_033_988_7) % 1.0;
                    seed
                },
            );
            *firsts.entry(ranking.chosen[0].node).or_insert(0) += 1;
        }
        assert_eq!(
            firsts.len(),
            3,
            "every equal node is chosen first at times: {firsts:?}"
        );
    }

    #[test]
    fn providers_are_live_labelled_nodes_with_space_the_freest_and_cheapest_first() {
        let mut roomy = candidate(1);
        roomy.record.capacity.disk_bytes = 100;
        roomy.record.capacity.free_disk_bytes = 90;
        let mut cramped = candidate(2);
        cramped.record.capacity.disk_bytes = 100;
        cramped.record.capacity.free_disk_bytes = 5;
        let mut full = candidate(3);
        full.record.capacity.disk_bytes = 100;
        let mut dead = candidate(4);
        dead.record.capacity.free_disk_bytes = 50;
        dead.state = PeerState::Dead;
        let mut elsewhere = candidate(5);
        elsewhere.record.capacity.free_disk_bytes = 50;
        elsewhere.record.labels.insert("region".into(), "us".into());
        let mut dear = candidate(6);
        dear.record.capacity.disk_bytes = 100;
        dear.record.capacity.free_disk_bytes = 90;
        dear.record.prices = Some(Prices::default());
        let (chosen, refused) = rank_providers(
            &[cramped, full, dead, elsewhere, dear, roomy],
            &BTreeMap::from([("region".to_owned(), "eu".to_owned())]),
            |_| Standing::default(),
            || 0.0,
        );
        let order: Vec<NodeId> = chosen.iter().map(|(node, _)| *node).collect();
        assert_eq!(order, vec![node(1), node(6), node(2)]);
        let kinds: Vec<(NodeId, &str)> = refused
            .iter()
            .map(|refused| (refused.node, refused.refusal.kind()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (node(3), "no_space"),
                (node(4), "not_alive"),
                (node(5), "labels")
            ]
        );
    }
}

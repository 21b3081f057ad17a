//! The task flow on the requester's side: where a task runs, paying for it, calling the node,
//! settling the payment by the outcome, and trying another node when one fails. The REST handler
//! only reads the request and writes the answer.
//!
//! A task runs where the requester names (an address or a node ID), else on this node when it
//! serves the plugin, else where [`choose`] ranks best among the mesh's members.

pub mod background;
pub mod choose;
pub mod records;
pub mod standings;
pub mod verify;

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sphere_proto::v1::{
    RevealResultRequest, RevealResultResponse, RunTaskRequest, RunTaskResponse, Voucher,
};

pub use choose::Selector;

use crate::api::{TargetSelector, TaskRequest, TaskTarget, VerifyRequest};
use crate::context::NodeContext;
use crate::error::{Error, ErrorCode};
use crate::identity::NodeId;
use crate::payments::payer::{self, Work};
use crate::peers::Target;

/// Extra time past the deadline before the requester stops waiting on its own; the gRPC channel
/// enforces the deadline itself, this only guards against a call that never returns.
const STUCK_CALL_MARGIN: Duration = Duration::from_millis(500);
/// The first wait for a node to fit when none does; it doubles up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(50);
const LONGEST_WAIT: Duration = Duration::from_secs(1);
/// Less time than this left is not worth another node.
const LEAST_USEFUL_TIME: Duration = Duration::from_millis(20);
/// The longest deadline a request may ask for (it is capped by `grpc.task_timeout_ms` anyway).
const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// The most nodes a verified task may ask.
const MAX_VERIFIERS: usize = 16;
/// The longest task ID a requester may choose.
const MAX_ID_CHARS: usize = 128;

/// Where the requester wants a task to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// This node when it serves the plugin; otherwise the node the scheduler chooses.
    Anywhere,
    /// The node the requester named: an address, a node ID, or `0xID@host:port`.
    Named(String),
    /// The node the scheduler chooses among those the selector allows.
    Chosen(Selector),
}

/// A task as the requester asked for it.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// The requester's identifier of the task.
    pub id: String,
    /// Where to run it.
    pub placement: Placement,
    /// The plugin to run it on; `None` is the node's default plugin.
    pub plugin: Option<String>,
    /// The input, as given.
    pub input: Bytes,
    /// How long it may take, all included.
    pub deadline: Duration,
    /// Run it on several nodes and accept an output enough of them sign.
    pub verify: Option<Verification>,
}

/// How many nodes must agree on a verified task's output, and how many may be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    /// Nodes that must sign the same output.
    pub k: usize,
    /// The most nodes asked.
    pub n: usize,
}

impl TaskSpec {
    /// The task a REST request asks for, checked field by field; `longest` caps its deadline.
    pub fn from_request(request: TaskRequest, longest: Duration) -> Result<Self, Error> {
        let input = match (request.input, request.input_base64) {
            (Some(text), None) => Bytes::from(text),
            (None, Some(encoded)) => {
                Bytes::from(crate::encoding::base64_field(&encoded, "input_base64")?)
            }
            (Some(_), Some(_)) => {
                return Err(Error::invalid_field(
                    "input_base64",
                    "cannot be given together with `input`",
                ));
            }
            (None, None) => return Err(Error::missing_field("input")),
        };
        let id = match request.id {
            Some(id) if id.is_empty() || id.chars().count() > MAX_ID_CHARS => {
                return Err(Error::invalid_field(
                    "id",
                    format!("must have 1 to {MAX_ID_CHARS} characters"),
                ));
            }
            Some(id) if id.chars().any(char::is_control) => {
                return Err(Error::invalid_field(
                    "id",
                    "must not hold control characters",
                ));
            }
            Some(id) => id,
            None => crate::storage::new_id(),
        };
        let deadline = match request.timeout_ms {
            Some(0) => return Err(Error::invalid_field("timeout_ms", "must be greater than 0")),
            Some(milliseconds) if milliseconds > MAX_TIMEOUT_MS => {
                return Err(Error::invalid_field(
                    "timeout_ms",
                    format!("must be at most {MAX_TIMEOUT_MS} (a day)"),
                ));
            }
            Some(milliseconds) => Duration::from_millis(milliseconds).min(longest),
            None => longest,
        };
        let placement = Placement::from_target(request.target)?;
        let verify = request
            .verify
            .map(|verify| Verification::from_request(verify, &placement))
            .transpose()?;
        Ok(Self {
            id,
            placement,
            plugin: request.plugin.filter(|name| !name.is_empty()),
            input,
            deadline,
            verify,
        })
    }
}

impl Verification {
    fn from_request(verify: VerifyRequest, placement: &Placement) -> Result<Self, Error> {
        if let Placement::Named(_) = placement {
            return Err(Error::invalid_field(
                "verify",
                "needs the scheduler to choose the nodes: give a selector as `target`, or none",
            ));
        }
        let k = verify.k as usize;
        let n = verify.n.map_or(k + 1, |n| n as usize);
        if !(2..=MAX_VERIFIERS).contains(&k) || !(k..=MAX_VERIFIERS).contains(&n) {
            return Err(Error::invalid_field(
                "verify",
                format!("needs 2 <= k <= n <= {MAX_VERIFIERS}, got k {k} and n {n}"),
            ));
        }
        Ok(Self { k, n })
    }
}

impl Placement {
    fn from_target(target: Option<TaskTarget>) -> Result<Self, Error> {
        match target {
            None => Ok(Self::Anywhere),
            Some(TaskTarget::Node(text)) if text.trim().is_empty() => Err(Error::invalid_field(
                "target",
                "is empty; give a node's gRPC address (host:port), its node ID, or leave it out",
            )),
            Some(TaskTarget::Node(text)) => Ok(Self::Named(text)),
            Some(TaskTarget::Selector(selector)) => {
                Ok(Self::Chosen(Selector::from_request(selector)?))
            }
        }
    }
}

impl Selector {
    fn from_request(selector: TargetSelector) -> Result<Self, Error> {
        let max_price_wei = selector
            .max_price_wei
            .map(|text| {
                let digits = text.trim();
                digits
                    .parse::<alloy_primitives::U256>()
                    .ok()
                    .filter(|_| {
                        !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit())
                    })
                    .ok_or_else(|| {
                        Error::invalid_field(
                            "target.max_price_wei",
                            format!("{text:?} is not a whole number of wei"),
                        )
                    })
            })
            .transpose()?;
        let exclude = selector
            .exclude
            .iter()
            .map(|text| {
                text.parse::<NodeId>().map_err(|error| {
                    Error::invalid_field("target.exclude", format!("has {text:?}: {error}"))
                })
            })
            .collect::<Result<_, _>>()?;
        let plugin_version = selector
            .plugin_version
            .map(|text| {
                text.parse::<semver::VersionReq>().map_err(|error| {
                    Error::invalid_field(
                        "target.plugin_version",
                        format!("{text:?} is not a semver requirement such as \"^1.2\": {error}"),
                    )
                })
            })
            .transpose()?;
        Ok(Self {
            labels: selector.labels,
            max_price_wei,
            exclude,
            plugin_version,
        })
    }
}

/// A task that ran.
#[derive(Debug, Clone)]
pub struct TaskOutcome {
    /// The output.
    pub output: Bytes,
    /// The plugin that ran it.
    pub plugin: String,
    /// The node that ran it: this one, or the node the link to the target proved.
    pub node: NodeId,
    /// With verification: the nodes that signed this output, `node` first.
    pub verified_by: Vec<NodeId>,
    /// With verification: the nodes that signed another output.
    pub disagreed: Vec<NodeId>,
}

impl TaskOutcome {
    /// A task that ran on `node`, unverified.
    fn on(node: NodeId, output: Bytes, plugin: String) -> Self {
        Self {
            output,
            plugin,
            node,
            verified_by: Vec::new(),
            disagreed: Vec::new(),
        }
    }
}

/// Runs `spec` where it asks, paying the node that runs it when payments are on.
pub async fn run(context: &NodeContext, spec: TaskSpec) -> Result<TaskOutcome, Error> {
    if let Some(verification) = spec.verify {
        let selector = match &spec.placement {
            Placement::Chosen(selector) => selector.clone(),
            _ => Selector::default(),
        };
        return run_verified(context, &spec, &selector, verification).await;
    }
    match &spec.placement {
        Placement::Named(text) => {
            let target = context.peers.resolve(text).await?;
            let response = attempt(context, &target, &spec, spec.deadline, None)
                .await
                .map_err(|failure| failure.error)?;
            // The link answered, so the node it proved is known without another call.
            let node = context.peers.node_id(&target).await?;
            Ok(TaskOutcome::on(node, response.output, response.plugin))
        }
        Placement::Anywhere => {
            if context.plugins.resolve(spec.plugin.as_deref()).is_ok() {
                return run_here(context, spec).await;
            }
            let has_members = match &context.mesh {
                Some(mesh) => !mesh.candidates().await.is_empty(),
                None => false,
            };
            // With nobody else to ask, this node's own answer (the plugins it has) says most.
            if has_members {
                choose_and_run(context, &spec, &Selector::default()).await
            } else {
                run_here(context, spec).await
            }
        }
        Placement::Chosen(selector) => choose_and_run(context, &spec, selector).await,
    }
}

async fn run_here(context: &NodeContext, spec: TaskSpec) -> Result<TaskOutcome, Error> {
    let (output, plugin) = context
        .plugins
        .run(
            spec.plugin.as_deref(),
            spec.id,
            spec.input,
            Some(spec.deadline),
        )
        .await?;
    Ok(TaskOutcome::on(context.identity.id(), output, plugin))
}

/// Runs the task on the best node that fits; on a failure, on the next, as long as the task
/// cannot have run twice (or its plugin says that does no harm). While no node fits but one
/// may later (it comes back, frees a slot), waits with growing pauses until the deadline.
async fn choose_and_run(
    context: &NodeContext,
    spec: &TaskSpec,
    selector: &Selector,
) -> Result<TaskOutcome, Error> {
    let what = match &spec.plugin {
        Some(plugin) => format!("task {} on plugin {plugin:?}", spec.id),
        None => format!("task {} on a default plugin", spec.id),
    };
    let Some(mesh) = &context.mesh else {
        return Err(choose::Ranking::default().no_capable_node(&what));
    };
    let give_up_at = Instant::now() + spec.deadline;
    let needs = choose::Needs {
        plugin: spec.plugin.as_deref(),
        can_pay: context.payments.is_some(),
        deterministic: false,
    };
    let mut failed: HashMap<NodeId, Error> = HashMap::new();
    let mut wait = FIRST_WAIT;
    loop {
        let candidates = mesh.candidates().await;
        let standings = context.standings.snapshot();
        let ranking = choose::rank(
            &candidates,
            selector,
            needs,
            |node| standings.get(&node).copied().unwrap_or_default(),
            &failed,
            rand::random::<f64>,
        );
        let time_left = give_up_at.saturating_duration_since(Instant::now());
        let Some(choice) = ranking.chosen.first().cloned() else {
            if !ranking.may_pass_later() || time_left < LEAST_USEFUL_TIME {
                return Err(ranking.no_capable_node(&what));
            }
            tokio::time::sleep(wait.min(time_left)).await;
            wait = (wait * 2).min(LONGEST_WAIT);
            failed.retain(|_, error| !choose::is_passing(error.code));
            continue;
        };
        let target = Target::node_at(choice.node, choice.address.clone());
        let running = context.standings.start(choice.node);
        let outcome = attempt(context, &target, spec, time_left, None).await;
        drop(running);
        let failure = match outcome {
            Ok(response) => {
                context.standings.record(choice.node, true);
                return Ok(TaskOutcome::on(
                    choice.node,
                    response.output,
                    response.plugin,
                ));
            }
            Err(failure) => failure,
        };
        if failure.is_the_tasks_own() {
            return Err(failure.error);
        }
        context.standings.record(choice.node, false);
        let time_left = give_up_at.saturating_duration_since(Instant::now());
        if (failure.may_have_run && !choice.plugin.idempotent) || time_left < LEAST_USEFUL_TIME {
            return Err(failure.error);
        }
        tracing::info!(
            task = %spec.id,
            node = %choice.node,
            error = %failure.error,
            "the task failed on a node; trying another"
        );
        failed.insert(choice.node, failure.error);
    }
}

/// Runs the task on `k` nodes chosen at random among those that fit (never simply the first
/// to answer, which a group of fast liars could be), each signing its answer; while no `k`
/// agree, on more nodes, up to `n` answers. Agreeing nodes count as successes in their
/// standings, dissenting ones as failures.
async fn run_verified(
    context: &NodeContext,
    spec: &TaskSpec,
    selector: &Selector,
    verification: Verification,
) -> Result<TaskOutcome, Error> {
    let what = format!(
        "verified task {} on {}",
        spec.id,
        spec.plugin.as_deref().unwrap_or("a default plugin")
    );
    let Some(mesh) = &context.mesh else {
        return Err(choose::Ranking::default().no_capable_node(&what));
    };
    let signed = Signed {
        nonce: Bytes::from(rand::random::<[u8; 32]>().to_vec()),
        // A paying requester pays only the nodes whose answers agree: they run the task
        // unpaid and hand over the output once paid.
        withhold_output: context.payments.is_some(),
    };
    let give_up_at = Instant::now() + spec.deadline;
    let needs = choose::Needs {
        plugin: spec.plugin.as_deref(),
        can_pay: context.payments.is_some(),
        deterministic: true,
    };
    let mut results: Vec<verify::SignedResult> = Vec::new();
    let mut targets: HashMap<NodeId, Target> = HashMap::new();
    let mut failed: HashMap<NodeId, Error> = HashMap::new();
    let mut wait = FIRST_WAIT;
    loop {
        let missing = match verify::tally(&results, verification.k) {
            verify::Verdict::Agreed {
                agreeing,
                dissenting,
            } => {
                for node in &dissenting {
                    tracing::warn!(task = %spec.id, %node, "a node signed another output than the nodes that agree");
                    context.standings.record(*node, false);
                }
                let agreed: Vec<(&verify::SignedResult, &Target)> = agreeing
                    .iter()
                    .map(|node| {
                        let result = results
                            .iter()
                            .find(|result| result.node == *node)
                            .expect("agreeing nodes answered");
                        (result, &targets[node])
                    })
                    .collect();
                let output = match &agreed[0].0.output {
                    Some(output) => {
                        for node in &agreeing {
                            context.standings.record(*node, true);
                        }
                        output.clone()
                    }
                    None => reveal(context, spec, &signed.nonce, &agreed, give_up_at).await?,
                };
                return Ok(TaskOutcome {
                    output,
                    plugin: agreed[0].0.plugin.clone(),
                    node: agreed[0].0.node,
                    verified_by: agreeing,
                    disagreed: dissenting,
                });
            }
            verify::Verdict::Undecided(missing) => missing,
        };
        if missing > verification.n - results.len() {
            return Err(disagreement(&what, verification, &results, &failed));
        }
        let candidates = mesh.candidates().await;
        refuse_if_not_deterministic(&candidates, spec.plugin.as_deref())?;
        let mut selector = selector.clone();
        selector
            .exclude
            .extend(results.iter().map(|result| result.node));
        let standings = context.standings.snapshot();
        let ranking = choose::rank(
            &candidates,
            &selector,
            needs,
            |node| standings.get(&node).copied().unwrap_or_default(),
            &failed,
            rand::random::<f64>,
        );
        let time_left = give_up_at.saturating_duration_since(Instant::now());
        let mut chosen = ranking.chosen.clone();
        if chosen.is_empty() {
            if !ranking.may_pass_later() || time_left < LEAST_USEFUL_TIME {
                return Err(if results.is_empty() {
                    ranking.no_capable_node(&what)
                } else {
                    disagreement(&what, verification, &results, &failed)
                });
            }
            tokio::time::sleep(wait.min(time_left)).await;
            wait = (wait * 2).min(LONGEST_WAIT);
            failed.retain(|_, error| !choose::is_passing(error.code));
            continue;
        }
        {
            use rand::seq::SliceRandom;
            chosen.shuffle(&mut rand::rng());
        }
        chosen.truncate(missing);
        let answers = futures_util::future::join_all(chosen.iter().map(|choice| {
            let target = Target::node_at(choice.node, choice.address.clone());
            let running = context.standings.start(choice.node);
            let signed = signed.clone();
            async move {
                let outcome = attempt(context, &target, spec, time_left, Some(signed)).await;
                drop(running);
                outcome
            }
        }))
        .await;
        for (choice, answer) in chosen.iter().zip(answers) {
            let response = match answer {
                Ok(response) => response,
                Err(failure) if failure.is_the_tasks_own() => return Err(failure.error),
                Err(failure) => {
                    context.standings.record(choice.node, false);
                    failed.insert(choice.node, failure.error);
                    continue;
                }
            };
            let digest = verify::TaskDigest {
                plugin: &response.plugin,
                version: &response.plugin_version,
                input: &spec.input,
                nonce: &signed.nonce,
            };
            let output_sha256 = if signed.withhold_output {
                <[u8; 32]>::try_from(&response.output_sha256[..]).ok()
            } else {
                Some(verify::output_hash(&response.output))
            };
            let Some(output_sha256) = output_sha256.filter(|output_sha256| {
                digest.signed_by(choice.node, output_sha256, &response.result_signature)
            }) else {
                context.standings.record(choice.node, false);
                failed.insert(
                    choice.node,
                    Error::new(
                        ErrorCode::TargetError,
                        format!("node {} did not sign its answer with its key", choice.node),
                    ),
                );
                continue;
            };
            targets.insert(
                choice.node,
                Target::node_at(choice.node, choice.address.clone()),
            );
            results.push(verify::SignedResult {
                node: choice.node,
                plugin: response.plugin,
                version: response.plugin_version,
                output_sha256,
                output: (!signed.withhold_output).then_some(response.output),
                signature: response.result_signature.to_vec(),
            });
        }
    }
}

/// A 400 when the nodes that have the plugin all leave out that it is deterministic: comparing
/// their outputs would prove nothing.
fn refuse_if_not_deterministic(
    candidates: &[crate::mesh::Candidate],
    plugin: Option<&str>,
) -> Result<(), Error> {
    let offered: Vec<&crate::api::PeerPlugin> = candidates
        .iter()
        .filter_map(|candidate| {
            let plugins = &candidate.record.plugins;
            match plugin {
                Some(name) => plugins.iter().find(|offered| offered.name == name),
                None => plugins.iter().find(|offered| offered.default),
            }
        })
        .collect();
    if !offered.is_empty() && offered.iter().all(|offered| !offered.deterministic) {
        return Err(Error::invalid_field(
            "verify",
            format!(
                "cannot be used with plugin {:?}: it does not declare itself deterministic, so \
                 outputs of several nodes may differ without anyone lying",
                offered[0].name
            ),
        ));
    }
    Ok(())
}

/// The answer when no `k` nodes agree: every signed result, as evidence.
fn disagreement(
    what: &str,
    verification: Verification,
    results: &[verify::SignedResult],
    failed: &HashMap<NodeId, Error>,
) -> Error {
    let evidence: Vec<serde_json::Value> = results
        .iter()
        .map(|result| {
            serde_json::json!({
                "node": result.node.to_string(),
                "plugin": result.plugin,
                "plugin_version": result.version,
                "output_sha256": hex::encode(result.output_sha256),
                "signature": format!("0x{}", hex::encode(&result.signature)),
            })
        })
        .collect();
    let failures: Vec<serde_json::Value> = failed
        .iter()
        .map(|(node, error)| {
            serde_json::json!({"node": node.to_string(), "code": error.code, "message": error.message})
        })
        .collect();
    let distinct: std::collections::HashSet<[u8; 32]> =
        results.iter().map(|result| result.output_sha256).collect();
    Error::new(
        ErrorCode::VerificationFailed,
        format!(
            "{what}: no {} nodes signed the same output ({} answers, {} different outputs, at most {} nodes asked)",
            verification.k,
            results.len(),
            distinct.len(),
            verification.n
        ),
    )
    .with_details(serde_json::json!({"results": evidence, "failed": failures}))
}

/// A task that did not run on a node.
#[derive(Debug)]
struct Failure {
    error: Error,
    /// Whether the node's plugin may have started the task (the node said so, or went silent
    /// after the call reached it).
    may_have_run: bool,
}

impl Failure {
    fn before_running(error: Error) -> Self {
        Self {
            error,
            may_have_run: false,
        }
    }

    /// Whether the task itself (or this node's account) is at fault, so no other node would
    /// do better.
    fn is_the_tasks_own(&self) -> bool {
        matches!(
            self.error.code,
            ErrorCode::TaskRejected
                | ErrorCode::PayloadTooLarge
                | ErrorCode::InvalidJson
                | ErrorCode::MissingField
                | ErrorCode::InvalidField
                | ErrorCode::InsufficientFunds
        )
    }
}

/// Whether a node answering `code` said it did not start the task.
fn refused_before_running(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Overloaded
            | ErrorCode::PluginUnavailable
            | ErrorCode::PluginNotFound
            | ErrorCode::ShuttingDown
            | ErrorCode::PaymentRequired
            | ErrorCode::PaymentsOff
            | ErrorCode::ChannelNotFound
            | ErrorCode::ChannelStateConflict
            | ErrorCode::Unauthorized
            | ErrorCode::PermissionDenied
    )
}

/// What a verified task asks of each node: to sign its answer over `nonce`, and, when the
/// requester pays, to hold the output back until it is paid for.
#[derive(Debug, Clone)]
struct Signed {
    nonce: Bytes,
    withhold_output: bool,
}

/// Runs the task on `target` within `deadline`, paying it when payments are on; when
/// `signed`, the target signs its answer (and may hold its output back, unpaid).
async fn attempt(
    context: &NodeContext,
    target: &Target,
    spec: &TaskSpec,
    deadline: Duration,
    signed: Option<Signed>,
) -> Result<RunTaskResponse, Failure> {
    let (verify_nonce, withhold_output) = signed.map_or((Bytes::new(), false), |signed| {
        (signed.nonce, signed.withhold_output)
    });
    let task = RunTaskRequest {
        task_id: spec.id.clone(),
        input: spec.input.clone(),
        plugin: spec.plugin.clone().unwrap_or_default(),
        voucher: None,
        verify_nonce,
        withhold_output,
        credit_channel_id: Bytes::new(),
    };
    if withhold_output {
        let credit_channel_id = match &context.payments {
            Some(payments) => payments
                .payer
                .channel_to(target)
                .await
                .map_err(Failure::before_running)?
                .map_or_else(Bytes::new, |channel_id| {
                    Bytes::copy_from_slice(&channel_id[..])
                }),
            None => Bytes::new(),
        };
        let task = RunTaskRequest {
            credit_channel_id,
            ..task
        };
        return run_on_target(context, target, task, deadline).await;
    }
    paying(context, target, spec.plugin.as_deref(), |voucher| {
        let task = RunTaskRequest {
            voucher,
            ..task.clone()
        };
        run_on_target(context, target, task, deadline)
    })
    .await
}

/// An answer to paid work that says what the target charged on the paying channel in all.
trait ChargedAnswer {
    fn channel_charged_wei(&self) -> &str;
}

impl ChargedAnswer for RunTaskResponse {
    fn channel_charged_wei(&self) -> &str {
        &self.channel_charged_wei
    }
}

impl ChargedAnswer for RevealResultResponse {
    fn channel_charged_wei(&self) -> &str {
        &self.channel_charged_wei
    }
}

/// Makes `call` with a voucher paying `target` for a task on `plugin` (`None`: its default
/// plugin) when payments are on, and settles the payment by the call's outcome
/// ([`payer::paying`]: once more after catching up with a refusal).
async fn paying<T: ChargedAnswer, Call>(
    context: &NodeContext,
    target: &Target,
    plugin: Option<&str>,
    call: impl FnMut(Option<Voucher>) -> Call,
) -> Result<T, Failure>
where
    Call: Future<Output = Result<T, Failure>>,
{
    let (answer, payment) = payer::paying(
        context.payments.as_ref().map(|payments| &payments.payer),
        target,
        Work::Task(plugin),
        call,
        |failure: &Failure| failure.error.clone(),
        Failure::before_running,
    )
    .await?;
    if let Some(payment) = payment {
        let charged = answer.channel_charged_wei().parse().ok();
        payment.settle_counted(&Ok::<_, Error>(()), charged).await;
    }
    Ok(answer)
}

/// Pays every node in `agreed` for the output it held back, and returns the output: the first
/// handed over whose hash is the one they signed. A node that takes the payment without
/// handing over that output counts as a failure in its standing.
async fn reveal(
    context: &NodeContext,
    spec: &TaskSpec,
    nonce: &Bytes,
    agreed: &[(&verify::SignedResult, &Target)],
    give_up_at: Instant,
) -> Result<Bytes, Error> {
    // Paid-for work is worth a moment past the deadline.
    let deadline = give_up_at
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let outputs =
        futures_util::future::join_all(agreed.iter().map(|(result, target)| async move {
            let output = paying(context, target, Some(&result.plugin), |voucher| {
                let request = RevealResultRequest {
                    task_id: spec.id.clone(),
                    verify_nonce: nonce.clone(),
                    voucher,
                };
                call_reveal(context, target, request, deadline)
            })
            .await
            .map_err(|failure| failure.error)?
            .output;
            if verify::output_hash(&output) != result.output_sha256 {
                return Err(Error::new(
                    ErrorCode::TargetError,
                    format!(
                        "node {} handed over another output than the one it signed",
                        result.node
                    ),
                ));
            }
            Ok(output)
        }))
        .await;
    let mut handed_over = None;
    let mut last_error = None;
    for ((result, _), output) in agreed.iter().zip(outputs) {
        context.standings.record(result.node, output.is_ok());
        match output {
            Ok(output) => {
                handed_over.get_or_insert(output);
            }
            Err(error) => {
                tracing::warn!(task = %spec.id, node = %result.node, %error, "a node that agreed did not hand over its output");
                last_error = Some(error);
            }
        }
    }
    handed_over.ok_or_else(|| {
        let error = last_error.expect("at least one node agreed");
        Error::new(
            error.code,
            format!(
                "task {}: the nodes agreed on an output, but none handed it over: {}",
                spec.id, error.message
            ),
        )
    })
}

/// Runs `task` on `target` and records how it went in the metrics.
async fn run_on_target(
    context: &NodeContext,
    target: &Target,
    task: RunTaskRequest,
    deadline: Duration,
) -> Result<RunTaskResponse, Failure> {
    let started = Instant::now();
    let requested_plugin = task.plugin.clone();
    let outcome = call_target(context, target, task, deadline).await;
    // Targets outside the configured peers share one label, so strangers cannot grow the metrics.
    let known_target = context
        .files
        .options()
        .providers
        .iter()
        .any(|peer| peer == target.address());
    let plugin = match &outcome {
        Ok(response) => response.plugin.as_str(),
        Err(_) if requested_plugin.is_empty() => "default",
        Err(_) => requested_plugin.as_str(),
    };
    crate::metrics::requested_task(
        if known_target {
            target.address().as_str()
        } else {
            "other"
        },
        plugin,
        outcome
            .as_ref()
            .map_or_else(|failure| failure.error.code.as_str(), |_| "ok"),
        started.elapsed(),
    );
    outcome
}

async fn call_target(
    context: &NodeContext,
    target: &Target,
    task: RunTaskRequest,
    deadline: Duration,
) -> Result<RunTaskResponse, Failure> {
    let mut client = context.peers.tasks(target);
    let mut request = tonic::Request::new(task);
    request.set_timeout(deadline);
    match tokio::time::timeout(deadline + STUCK_CALL_MARGIN, client.run_task(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(Failure {
            may_have_run: match Error::from_node_status(&status) {
                Some(answer) => !refused_before_running(answer.code),
                None => crate::peers::linked(&status),
            },
            error: crate::peers::remote_error(&status, target),
        }),
        Err(_elapsed) => Err(Failure {
            error: Error::new(
                ErrorCode::TargetTimeout,
                format!("target {target} did not answer within {deadline:?}"),
            ),
            may_have_run: true,
        }),
    }
}

async fn call_reveal(
    context: &NodeContext,
    target: &Target,
    request: RevealResultRequest,
    deadline: Duration,
) -> Result<RevealResultResponse, Failure> {
    let mut client = context.peers.tasks(target);
    let mut request = tonic::Request::new(request);
    request.set_timeout(deadline);
    match tokio::time::timeout(deadline + STUCK_CALL_MARGIN, client.reveal_result(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(Failure::before_running(crate::peers::remote_error(
            &status, target,
        ))),
        Err(_elapsed) => Err(Failure::before_running(Error::new(
            ErrorCode::TargetTimeout,
            format!("target {target} did not hand over the output within {deadline:?}"),
        ))),
    }
}

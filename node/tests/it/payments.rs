//! Payments on a real local chain (anvil): settings, paid tasks between real nodes, refusals of
//! unpaid, underpaid and forged vouchers, redemption with exact balances, closing after the
//! challenge period, and a provider that restarts between tasks.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sphere_contracts::{SpherePayments, Voucher, sign_voucher, voucher_domain};
use sphere_node::storage::chunks::ChunkHash;
use sphere_proto::v1::put_object_request::Part;
use sphere_proto::v1::storage_service_client::StorageServiceClient;

use crate::harness::{
    NodeOptions, TestNode, hello_plugin, merge, misbehaving_plugin, plugins_config, repo_root,
};

fn anvil() -> AnvilInstance {
    let path = repo_root().join(".tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    assert!(
        path.exists(),
        "anvil is missing: run scripts/test-all, or npm install --prefix .tools @foundry-rs/anvil-linux-amd64@1.7.1"
    );
    Anvil::at(path).try_spawn().expect("anvil starts")
}

/// Writes anvil's first funded key as a node key file in `dir`.
fn funded_key_file(anvil: &AnvilInstance, dir: &Path) -> PathBuf {
    let path = dir.join("funded.key");
    std::fs::write(
        &path,
        format!("{}\n", hex::encode(anvil.keys()[0].to_bytes())),
    )
    .expect("write key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn deploy(anvil: &AnvilInstance, key_file: &Path) -> String {
    deploy_through(anvil.endpoint().as_str(), key_file, None, &[])
}

/// `sphere payments deploy` through `rpc_url` with `key_file` and `more_args`.
fn deploy_command(rpc_url: &str, key_file: &Path, more_args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sphere"));
    command
        .args(["payments", "deploy", "--rpc-url", rpc_url, "--key-file"])
        .arg(key_file)
        .args([
            "--challenge-period-seconds",
            &CHALLENGE_PERIOD_SECONDS.to_string(),
        ])
        .args(more_args);
    command
}

/// Deploys the contract through `rpc_url` with `key_file` and `more_args`, trusting the TLS roots
/// in `roots` when given (`SSL_CERT_FILE`); returns its address.
fn deploy_through(
    rpc_url: &str,
    key_file: &Path,
    roots: Option<&Path>,
    more_args: &[&str],
) -> String {
    let mut command = deploy_command(rpc_url, key_file, more_args);
    if let Some(roots) = roots {
        command.env("SSL_CERT_FILE", roots);
    }
    let output = crate::harness::run(&mut command);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned()
}

/// Runs `sphere node` with `payments` settings and returns its stderr; the node must refuse to
/// start.
fn refused_start(payments: serde_json::Value) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.json");
    std::fs::write(&config, json!({ "payments": payments }).to_string()).expect("write");
    crate::harness::stderr_of_failure(
        crate::harness::sphere_node(dir.path())
            .arg("--config")
            .arg(&config),
    )
}

#[tokio::test]
async fn payments_are_off_by_default() {
    let node = TestNode::start();
    assert_eq!(payments_of(&node).await, json!({"enabled": false}));
    let answer = node_info(&node).await;
    assert!(answer.payment_terms.is_none());
    assert_eq!(answer.node_id, node.node_id);
}

/// What the compose setup relies on when the chain kept its state across `down` and `up`.
#[tokio::test]
async fn a_deploy_finds_the_contract_already_there_and_refuses_a_stranger_contract() {
    let chain = anvil();
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = funded_key_file(&chain, dir.path());
    let rpc_url = chain.endpoint();
    let first = deploy(&chain, &key_file);
    let again = deploy_through(&rpc_url, &key_file, None, &["--unless-deployed-at", &first]);
    assert_eq!(again, first, "the contract there is kept");

    // An address without code (a chain that started afresh) gets a new deployment.
    let nothing_there = Address::repeat_byte(0x5a).to_string();
    let fresh = deploy_through(
        &rpc_url,
        &key_file,
        None,
        &["--unless-deployed-at", &nothing_there],
    );
    assert_ne!(fresh, first);
    let provider = ProviderBuilder::new().connect_http(rpc_url.parse().expect("URL"));
    let code = provider
        .get_code_at(fresh.parse().expect("address"))
        .await
        .expect("code");
    assert!(!code.is_empty());

    // Code that is not the payment contract is named, not taken for it.
    let stranger = Address::repeat_byte(0x5b);
    provider
        .raw_request::<_, ()>("anvil_setCode".into(), (stranger, "0x00"))
        .await
        .expect("set code");
    let refused = crate::harness::run(&mut deploy_command(
        &rpc_url,
        &key_file,
        &["--unless-deployed-at", &stranger.to_string()],
    ));
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("not Sphere's payment contract"), "{stderr}");
}

#[tokio::test]
async fn a_deployed_contract_is_used_and_a_wrong_chain_or_contract_is_refused_by_name() {
    let chain = anvil();
    let dir = tempfile::tempdir().expect("temp dir");
    let contract = deploy(&chain, &funded_key_file(&chain, dir.path()));
    assert!(
        contract.starts_with("0x") && contract.len() == 42,
        "{contract}"
    );
    let rpc_url = chain.endpoint();
    let settings = json!({
        "enabled": true,
        "rpc_url": rpc_url,
        "chain_id": chain.chain_id(),
        "contract": contract,
        "prices": {"task_wei": 5000},
    });

    let node = TestNode::start_with(NodeOptions {
        config: Some(json!({ "payments": settings })),
        ..NodeOptions::default()
    });
    let body = payments_of(&node).await;
    assert_eq!(body["enabled"], true);
    assert_eq!(body["contract"], contract);
    assert_eq!(body["chain_id"], chain.chain_id());
    assert_eq!(body["challenge_period_seconds"], CHALLENGE_PERIOD_SECONDS);
    assert_eq!(body["prices"]["task_wei"], 5000);

    // Other nodes see the same terms through the node-to-node API.
    let terms = node_info(&node).await.payment_terms.expect("payment terms");
    assert_eq!(terms.contract, contract);
    assert_eq!(terms.chain_id, chain.chain_id());
    assert_eq!(terms.task_wei, "5000");

    let (_refusing, refusing_address) = crate::harness::refusing_address();
    let mut unreachable = settings.clone();
    unreachable["rpc_url"] = json!(format!("http://{refusing_address}"));
    assert!(refused_start(unreachable).contains("payments.rpc_url"));

    // An endpoint that takes the connection and never answers is refused once its time is up.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut hung = settings.clone();
    hung["rpc_url"] = json!(format!("http://{}", silent.local_addr().expect("address")));
    hung["rpc_timeout_ms"] = json!(500);
    let stderr = refused_start(hung);
    assert!(
        stderr.contains("payments.rpc_url") && stderr.contains("timed out"),
        "{stderr}"
    );

    let mut wrong_chain = settings.clone();
    wrong_chain["chain_id"] = json!(1);
    assert!(refused_start(wrong_chain).contains("payments.chain_id"));

    let mut no_contract = settings.clone();
    no_contract["contract"] = json!("0x000000000000000000000000000000000000dEaD");
    let stderr = refused_start(no_contract);
    assert!(
        stderr.contains("payments.contract") && stderr.contains("sphere payments deploy"),
        "{stderr}"
    );

    let mut missing = settings;
    missing["contract"] = serde_json::Value::Null;
    assert!(refused_start(missing).contains("payments.contract"));
}

/// Price of a task on the paid providers of these tests, in wei.
const TASK_PRICE: u64 = 1_000;
/// Challenge period of the contract the paid tests deploy.
const CHALLENGE_PERIOD_SECONDS: u64 = 600;

/// A chain with the payment contract, a requester node and a provider node, both paying and
/// paid through it, each with its own funded anvil account.
struct PaidPair {
    chain: AnvilInstance,
    contract: SpherePayments::SpherePaymentsInstance<alloy::providers::DynProvider>,
    requester: TestNode,
    provider: TestNode,
}

/// Starts a node whose key is anvil's funded account `account`, with payments on and `extra`
/// merged into its configuration.
fn paid_node(chain: &AnvilInstance, contract: &str, account: usize, extra: Value) -> TestNode {
    let data_dir = tempfile::Builder::new()
        .prefix("sphere-it-paid-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let key = data_dir.join("node.key");
    std::fs::write(&key, hex::encode(chain.keys()[account].to_bytes())).expect("write key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut config = json!({
        "payments": {
            "enabled": true,
            "rpc_url": chain.endpoint(),
            "chain_id": chain.chain_id(),
            "contract": contract,
            "prices": {"task_wei": TASK_PRICE},
            // Redeemed only when a test says so (or at shutdown, or on a close request).
            "redeem_threshold_wei": u64::MAX,
            "redeem_interval_ms": 3_600_000,
        }
    });
    merge(&mut config, extra);
    TestNode::start_with(NodeOptions {
        data_dir: Some(data_dir),
        config: Some(config),
        ..NodeOptions::default()
    })
}

impl PaidPair {
    async fn start(provider_extra: Value) -> Self {
        Self::start_with(json!({}), provider_extra).await
    }

    async fn start_with(requester_extra: Value, provider_extra: Value) -> Self {
        let chain = anvil();
        let dir = tempfile::tempdir().expect("temp dir");
        let address = deploy(&chain, &funded_key_file(&chain, dir.path()));
        let mut requester_config = json!({"storage": {"audit_interval_ms": 1_000}});
        merge(&mut requester_config, requester_extra);
        let requester = paid_node(&chain, &address, 1, requester_config);
        let provider = paid_node(&chain, &address, 2, provider_extra);
        let reader = ProviderBuilder::new()
            .connect_http(chain.endpoint_url())
            .erased();
        let contract = SpherePayments::new(address.parse().expect("address"), reader);
        Self {
            chain,
            contract,
            requester,
            provider,
        }
    }

    fn address(node: &TestNode) -> Address {
        node.node_id.parse().expect("node IDs are addresses")
    }

    async fn balance(&self, node: &TestNode) -> U256 {
        self.contract
            .provider()
            .get_balance(Self::address(node))
            .await
            .expect("balance")
    }

    async fn transactions_sent(&self, node: &TestNode) -> u64 {
        self.contract
            .provider()
            .get_transaction_count(Self::address(node))
            .await
            .expect("nonce")
    }

    /// Returns the fee paid for transaction `tx`.
    async fn fee(&self, tx: &str) -> (U256, u64) {
        let receipt = self
            .contract
            .provider()
            .get_transaction_receipt(tx.parse().expect("tx hash"))
            .await
            .expect("receipt")
            .expect("mined");
        (
            U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price),
            receipt.gas_used,
        )
    }

    /// Opens a channel from the requester to the provider; returns its ID and the open
    /// transaction's hash.
    async fn open_channel(&self, deposit: &str) -> (String, String) {
        let (status, body) = self
            .requester
            .post(
                "/channels",
                &json!({"target": self.provider.target(), "deposit": deposit}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["provider"], self.provider.node_id.as_str());
        assert_eq!(body["phase"], "open");
        (
            body["channel_id"].as_str().expect("id").to_owned(),
            body["transaction"]["tx"].as_str().expect("tx").to_owned(),
        )
    }

    /// Has the provider redeem everything now (`POST /payments/redeem`); returns its answer.
    async fn redeem(&self) -> Value {
        let (status, body) = self
            .provider
            .call(reqwest::Method::POST, "/payments/redeem", "")
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Asks the requester to close `channel` (`POST /channels/{id}/close`).
    async fn close(&self, channel: &str) -> (u16, Value) {
        self.requester
            .call(
                reqwest::Method::POST,
                &format!("/channels/{channel}/close"),
                "",
            )
            .await
    }

    async fn task(&self, input: &str) -> (u16, Value) {
        self.requester
            .post(
                "/task",
                &json!({"target": self.provider.target(), "input": input}),
            )
            .await
    }

    async fn on_chain(&self, channel: &str) -> SpherePayments::channelsReturn {
        self.contract
            .channels(channel.parse().expect("channel id"))
            .call()
            .await
            .expect("channel")
    }

    async fn advance_chain_time(&self, seconds: u64) {
        let provider = self.contract.provider();
        let _: Value = provider
            .raw_request("evm_increaseTime".into(), (seconds,))
            .await
            .expect("time travel");
        let _: Value = provider
            .raw_request("evm_mine".into(), Vec::<Value>::new())
            .await
            .expect("mine");
    }
}

/// Asks `node` who it is through the node-to-node API, as other nodes do.
async fn node_info(node: &TestNode) -> sphere_proto::v1::GetInfoResponse {
    sphere_proto::v1::node_service_client::NodeServiceClient::connect(format!(
        "http://{}",
        node.target()
    ))
    .await
    .expect("connect")
    .get_info(sphere_proto::v1::GetInfoRequest {})
    .await
    .expect("info")
    .into_inner()
}

/// A link to `node` from the node whose key is `identity`.
async fn link_as(
    identity: &sphere_node::identity::NodeIdentity,
    node: &TestNode,
) -> tonic::transport::Channel {
    let connector = sphere_node::link::LinkKeys::new(identity).connector(
        Some(node.node_id.parse().expect("node ID")),
        std::sync::Arc::default(),
    );
    tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc))
        .expect("endpoint")
        .connect_with_connector(connector)
        .await
        .expect("a node links with its own key")
}

async fn payments_of(node: &TestNode) -> Value {
    let (status, body) = node.call(reqwest::Method::GET, "/payments", "").await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn a_paid_providers_peer_record_carries_its_prices() {
    let chain = anvil();
    let dir = tempfile::tempdir().expect("temp dir");
    let address = deploy(&chain, &funded_key_file(&chain, dir.path()));
    let requester = paid_node(&chain, &address, 1, json!({}));
    let provider = paid_node(
        &chain,
        &address,
        2,
        json!({"mesh": {"bootstrap": [requester.target()]}}),
    );
    let path = format!("/peers/{}", provider.node_id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let record = loop {
        let (status, body) = requester.call(reqwest::Method::GET, &path, "").await;
        if status == 200 {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the provider never joined: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(record["payments"], true, "{record}");
    assert_eq!(record["prices"]["task_wei"], TASK_PRICE, "{record}");
}

#[tokio::test]
async fn a_thousand_paid_tasks_cost_two_transactions_and_pay_the_provider_exactly() {
    const TASKS: u64 = 1_000;
    let pair = PaidPair::start(json!({})).await;
    let (channel, open_tx) = pair.open_channel(&(TASKS * TASK_PRICE).to_string()).await;
    let provider_before = pair.balance(&pair.provider).await;

    let outcomes: Vec<(u16, Value)> = futures_util::stream::iter(0..TASKS)
        .map(|_| pair.task("hello"))
        .buffer_unordered(8)
        .collect()
        .await;
    for (status, body) in &outcomes {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["output"], "world");
    }

    // The deposit is spent exactly: the next task is refused by the requester itself.
    let (status, body) = pair.task("hello").await;
    assert_eq!(status, 402, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("top it up"),
        "{body}"
    );

    let spent = (TASKS * TASK_PRICE).to_string();
    let requester = payments_of(&pair.requester).await;
    assert_eq!(requester["spent_wei"], spent.as_str(), "{requester}");
    assert_eq!(requester["channels_out"][0]["remaining_wei"], "0");
    let provider = payments_of(&pair.provider).await;
    assert_eq!(provider["earned_wei"], spent.as_str(), "{provider}");
    assert_eq!(provider["pending_wei"], spent.as_str());
    assert_eq!(provider["channels_in"][0]["channel_id"], channel.as_str());
    assert_eq!(provider["channels_in"][0]["deposit_wei"], spent.as_str());
    // Nothing was redeemed while the tasks ran: no transaction per task.
    assert_eq!(pair.transactions_sent(&pair.provider).await, 0);

    let body = pair.redeem().await;
    assert_eq!(body["failed"], json!([]));
    let redemption = &body["redeemed"][0];
    assert_eq!(redemption["paid_wei"], spent.as_str(), "{body}");
    let (redeem_fee, redeem_gas) = pair.fee(redemption["tx"].as_str().expect("tx")).await;

    assert_eq!(
        pair.balance(&pair.provider).await,
        provider_before + U256::from(TASKS * TASK_PRICE) - redeem_fee
    );
    assert_eq!(
        pair.on_chain(&channel).await.redeemed,
        U256::from(TASKS * TASK_PRICE)
    );
    let provider = payments_of(&pair.provider).await;
    assert_eq!(provider["pending_wei"], "0", "{provider}");
    assert_eq!(provider["redeemed_wei"], spent.as_str());

    // Two transactions in all: the requester's open and the provider's one redemption.
    assert_eq!(pair.transactions_sent(&pair.requester).await, 1);
    assert_eq!(pair.transactions_sent(&pair.provider).await, 1);

    // The metrics say the same.
    let requester = crate::metrics::scrape(&pair.requester).await;
    let provider = crate::metrics::scrape(&pair.provider).await;
    let metric = crate::metrics::sample;
    let wei = (TASKS * TASK_PRICE) as f64;
    assert_eq!(
        metric(
            &requester,
            "sphere_chain_transactions_total",
            &["kind=\"open\"", "outcome=\"ok\""]
        ),
        1.0,
        "{requester}"
    );
    assert_eq!(
        metric(&requester, "sphere_chain_transactions_total", &[]),
        1.0
    );
    assert_eq!(
        metric(
            &provider,
            "sphere_chain_transactions_total",
            &["kind=\"redeem\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &requester,
            "sphere_payment_channels",
            &["direction=\"out\"", "phase=\"open\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &requester,
            "sphere_payment_deposit_wei",
            &["direction=\"out\""]
        ),
        wei
    );
    assert_eq!(metric(&requester, "sphere_payment_spent_wei", &[]), wei);
    assert_eq!(
        metric(&provider, "sphere_payment_channels", &["direction=\"in\""]),
        1.0
    );
    assert_eq!(
        metric(&provider, "sphere_payment_earned_wei", &[]),
        wei,
        "{provider}"
    );
    assert_eq!(metric(&provider, "sphere_payment_redeemed_wei", &[]), wei);
    assert_eq!(
        metric(
            &requester,
            "sphere_requested_tasks_total",
            &["outcome=\"ok\""]
        ),
        TASKS as f64
    );
    let (_, open_gas) = pair.fee(&open_tx).await;
    // Read by BENCHMARKS.md: the gas of the whole run.
    eprintln!(
        "payments for {TASKS} tasks: 2 transactions, gas open={open_gas} redeem={redeem_gas} total={}",
        open_gas + redeem_gas
    );
}

#[tokio::test]
async fn unpaid_underpaid_forged_and_failed_work_is_not_paid_for() {
    // One task per voucher, so that the vouchers made by hand below meet no credit paid ahead.
    let pair = PaidPair::start_with(
        json!({"payments": {"prepaid_tasks": 1}}),
        plugins_config(vec![hello_plugin(), misbehaving_plugin("flaky", json!({}))]),
    )
    .await;

    // A requester without payments sends no voucher.
    let unpaid = TestNode::start();
    let (status, body) = unpaid
        .post(
            "/task",
            &json!({"target": pair.provider.target(), "input": "hello"}),
        )
        .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "payment_required");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("without a voucher"),
        "{body}"
    );

    // A paying requester without a channel is told how to open one.
    let (status, body) = pair.task("hello").await;
    assert_eq!(status, 402, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("sphere channel open"),
        "{body}"
    );

    let (channel, _) = pair.open_channel("10000").await;
    let channel_id: B256 = channel.parse().expect("id");

    // A task the plugin refuses is not charged.
    let (status, body) = pair
        .requester
        .post(
            "/task",
            &json!({"target": pair.provider.target(), "plugin": "flaky", "input": "reject"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    // Its voucher is the largest the provider has, but nothing is earned: nothing to redeem.
    assert_eq!(pair.redeem().await["redeemed"], json!([]));
    // The next task uses the refused task's credit, and that is what gets redeemed.
    let (status, body) = pair.task("hello").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(pair.redeem().await["redeemed"][0]["paid_wei"], "1000");
    assert_eq!(payments_of(&pair.provider).await["earned_wei"], "1000");
    assert_eq!(payments_of(&pair.requester).await["spent_wei"], "1000");

    // Vouchers made by hand, sent straight to the provider's gRPC service.
    let requester_key = PrivateKeySigner::from(pair.chain.keys()[1].clone());
    let stranger_key = PrivateKeySigner::from(pair.chain.keys()[5].clone());
    let domain = voucher_domain(pair.chain.chain_id(), *pair.contract.address());
    let voucher = |signer: &PrivateKeySigner, channel: B256, amount: u64| {
        let signed = Voucher {
            channelId: channel,
            cumulativeAmount: U256::from(amount),
        };
        sphere_proto::v1::Voucher {
            channel_id: channel.to_vec().into(),
            cumulative_amount_wei: amount.to_string(),
            signature: sign_voucher(signer, &signed, &domain).to_vec().into(),
        }
    };
    let mut tasks = pair.provider.task_client().await;
    let mut send = async |voucher: Option<sphere_proto::v1::Voucher>| {
        tasks
            .run_task(sphere_proto::v1::RunTaskRequest {
                task_id: "by-hand".into(),
                input: "hello".into(),
                plugin: String::new(),
                voucher,
                ..Default::default()
            })
            .await
    };
    let refusals = [
        (
            voucher(&requester_key, channel_id, 1_999),
            "send a voucher for at least 2000 wei",
        ),
        (voucher(&requester_key, channel_id, 1_000), "underpaid"),
        (voucher(&stranger_key, channel_id, 2_000), "not signed by"),
        (
            voucher(&requester_key, channel_id, 20_000),
            "deposit of 10000",
        ),
        (
            voucher(&requester_key, B256::repeat_byte(7), 2_000),
            "has no channel",
        ),
    ];
    for (bad, expected) in refusals {
        let status = send(Some(bad)).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            status
                .metadata()
                .get("sphere-error-code")
                .map(|code| code.to_str().ok()),
            Some(Some("payment_required"))
        );
        assert!(
            status.message().contains(expected),
            "{expected}: {status:?}"
        );
    }
    let paid = voucher(&requester_key, channel_id, 2_000);
    let answer = send(Some(paid.clone())).await.expect("paid").into_inner();
    assert_eq!(&answer.output[..], b"world");
    // The same voucher again buys nothing more.
    let replayed = send(Some(paid)).await.expect_err("replay refused");
    assert!(replayed.message().contains("underpaid"), "{replayed:?}");
    assert_eq!(payments_of(&pair.provider).await["earned_wei"], "2000");
}

#[tokio::test]
async fn a_voucher_pays_tasks_ahead_and_the_provider_redeems_only_the_work_done() {
    // Storage costs one wei per byte per period here, so that a stranger's upload has a price.
    let mut pair = PaidPair::start_with(
        json!({"payments": {"prepaid_tasks": 4}}),
        json!({"payments": {"storage_period_seconds": 4, "prices": {"storage_gib_day_wei": (1u64 << 30) * 86_400 / 4}}}),
    )
    .await;
    let (channel, _) = pair.open_channel("100000").await;
    let channel_id: B256 = channel.parse().expect("id");
    // Spent and signed as the requester counts them, earned and the best voucher as the
    // provider does.
    async fn counts(pair: &PaidPair) -> (String, String, String, String) {
        let paying = payments_of(&pair.requester).await["channels_out"][0].clone();
        let paid = payments_of(&pair.provider).await["channels_in"][0].clone();
        let text = |value: &Value| value.as_str().expect("an amount").to_owned();
        (
            text(&paying["spent_wei"]),
            text(&paying["signed_wei"]),
            text(&paid["earned_wei"]),
            text(&paid["best_voucher_wei"]),
        )
    }
    assert_eq!(pair.task("hello").await.0, 200);
    assert_eq!(
        counts(&pair).await,
        ("1000".into(), "4000".into(), "1000".into(), "4000".into())
    );
    // What is redeemed is the work done, claimed under the voucher paid ahead.
    assert_eq!(pair.redeem().await["redeemed"][0]["paid_wei"], "1000");
    assert_eq!(pair.on_chain(&channel).await.redeemed, U256::from(1000));

    // The same voucher pays the next three tasks; the fifth needs a new one, four ahead.
    for _ in 0..3 {
        assert_eq!(pair.task("hello").await.0, 200);
    }
    assert_eq!(
        counts(&pair).await,
        ("4000".into(), "4000".into(), "4000".into(), "4000".into())
    );
    assert_eq!(pair.task("hello").await.0, 200);
    assert_eq!(
        counts(&pair).await,
        ("5000".into(), "8000".into(), "5000".into(), "8000".into())
    );

    // Another node showing the requester's voucher over its own link cannot spend the credit
    // paid ahead.
    let requester_key = PrivateKeySigner::from(pair.chain.keys()[1].clone());
    let domain = voucher_domain(pair.chain.chain_id(), *pair.contract.address());
    let signed = Voucher {
        channelId: channel_id,
        cumulativeAmount: U256::from(8_000),
    };
    let refused_voucher = Some(sphere_proto::v1::Voucher {
        channel_id: channel_id.to_vec().into(),
        cumulative_amount_wei: "8000".into(),
        signature: sign_voucher(&requester_key, &signed, &domain)
            .to_vec()
            .into(),
    });
    let stranger = sphere_node::identity::NodeIdentity::generate();
    let link = link_as(&stranger, &pair.provider).await;
    let refusal = sphere_proto::v1::task_service_client::TaskServiceClient::new(link)
        .run_task(sphere_proto::v1::RunTaskRequest {
            task_id: "stranger".into(),
            input: "hello".into(),
            voucher: refused_voucher.clone(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert!(
        refusal.message().contains("pays for the work of"),
        "{refusal:?}"
    );
    // Nor store on it: an upload pays for its signed owner's work only.
    let chunk = bytes::Bytes::from_static(b"a stranger's bytes");
    let hash = ChunkHash::of(&chunk);
    let upload = [
        Part::Header(sphere_node::auth::sign(
            &stranger,
            &pair.provider.node_id,
            sphere_proto::v1::ObjectHeader {
                object_id: "0123456789abcdef0123456789abcdef".into(),
                kind: "data".into(),
                ..Default::default()
            },
        )),
        Part::Chunk(chunk.clone()),
        Part::Trailer(sphere_proto::v1::ObjectTrailer {
            chunk_count: 1,
            size: chunk.len() as u64,
            chunk_list_digest: ChunkHash::list_digest([&hash]).to_vec().into(),
            voucher: refused_voucher.clone(),
        }),
    ]
    .map(|part| sphere_proto::v1::PutObjectRequest { part: Some(part) });
    let refusal = StorageServiceClient::connect(format!("http://{}", pair.provider.target()))
        .await
        .expect("connect")
        .put_object(tokio_stream::iter(upload))
        .await
        .expect_err("refused");
    assert!(
        refusal.message().contains("pays for the work of"),
        "{refusal:?}"
    );
    assert_eq!(
        counts(&pair).await,
        ("5000".into(), "8000".into(), "5000".into(), "8000".into())
    );
    assert_eq!(pair.redeem().await["redeemed"][0]["paid_wei"], "4000");
    assert_eq!(pair.on_chain(&channel).await.redeemed, U256::from(5000));

    // A clean restart keeps the requester's count (written at shutdown), so nothing needs
    // catching up.
    assert!(pair.requester.terminate().success());
    pair.requester.restart();
    assert_eq!(
        counts(&pair).await,
        ("5000".into(), "8000".into(), "5000".into(), "8000".into())
    );
    assert_eq!(pair.task("hello").await.0, 200);
    assert!(!pair.requester.log().contains("catching up"));
}

#[tokio::test]
async fn closing_refunds_the_requester_after_the_challenge_period_and_the_provider_redeems_first() {
    let pair = PaidPair::start(json!({})).await;
    // More than the account holds (anvil's accounts hold 10,000 ether): the chain's answer, in
    // its own code, not "the chain did not answer".
    let (status, body) = pair
        .requester
        .post(
            "/channels",
            &json!({"target": pair.provider.target(), "deposit": "100000000000000000000000"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_funds", "{body}");
    let (channel, _) = pair.open_channel("100000").await;
    for _ in 0..10 {
        let (status, body) = pair.task("hello").await;
        assert_eq!(status, 200, "{body}");
    }
    let requester_before = pair.balance(&pair.requester).await;

    let (status, body) = pair.close(&channel).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phase"], "closing");
    let (request_fee, _) = pair
        .fee(body["transaction"]["tx"].as_str().expect("tx"))
        .await;
    let (status, body) = pair.task("hello").await;
    assert_eq!(status, 402, "a closing channel pays no more: {body}");

    // The provider sees the close request and redeems what it earned within the period.
    wait_for_redeemed(&pair.provider, "10000").await;

    let (status, body) = pair.close(&channel).await;
    assert_eq!(status, 409, "closing before the period ends: {body}");
    assert_eq!(body["error"]["code"], "channel_state_conflict");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("challenge period"),
        "{body}"
    );

    pair.advance_chain_time(CHALLENGE_PERIOD_SECONDS + 1).await;
    let (status, body) = pair.close(&channel).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phase"], "closed");
    assert_eq!(body["refunded_wei"], "90000");
    let (close_fee, _) = pair
        .fee(body["transaction"]["tx"].as_str().expect("tx"))
        .await;
    assert_eq!(
        pair.balance(&pair.requester).await,
        requester_before + U256::from(90_000) - request_fee - close_fee
    );
    assert!(pair.on_chain(&channel).await.closed);
}

#[tokio::test]
async fn a_provider_restarted_between_tasks_still_redeems_the_last_voucher() {
    let mut pair = PaidPair::start(json!({})).await;
    let (channel, _) = pair.open_channel("100000").await;
    let provider_before = pair.balance(&pair.provider).await;
    for round in 0..2 {
        for _ in 0..5 {
            let (status, body) = pair.task("hello").await;
            assert_eq!(status, 200, "round {round}: {body}");
        }
        if round == 0 {
            // Killed outright: nothing redeemed, only what it stored survives.
            pair.provider.kill9();
            pair.provider.restart();
            assert_eq!(payments_of(&pair.provider).await["earned_wei"], "5000");
        }
    }
    assert_eq!(pair.transactions_sent(&pair.provider).await, 0);

    // A clean stop redeems everything before the node exits.
    assert!(pair.provider.terminate().success());
    let on_chain = pair.on_chain(&channel).await;
    assert_eq!(on_chain.redeemed, U256::from(10 * TASK_PRICE));
    let redemptions = pair
        .contract
        .VoucherRedeemed_filter()
        .from_block(0)
        .query()
        .await
        .expect("events");
    assert_eq!(redemptions.len(), 1);
    let tx = redemptions[0]
        .1
        .transaction_hash
        .expect("mined")
        .to_string();
    let (fee, _) = pair.fee(&tx).await;
    assert_eq!(
        pair.balance(&pair.provider).await,
        provider_before + U256::from(10 * TASK_PRICE) - fee
    );
}

#[tokio::test]
async fn storage_is_paid_per_period_and_reads_per_byte_and_renewed_after_audits() {
    // One wei per byte per four-second period, one wei per byte read.
    const GIB: u64 = 1 << 30;
    let pair = PaidPair::start(json!({
        "payments": {
            "storage_period_seconds": 4,
            "prices": {"storage_gib_day_wei": GIB * 86_400 / 4, "read_gib_wei": GIB},
        }
    }))
    .await;
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let put = |owner: &TestNode| {
        owner
            .http()
            .put(owner.url(&format!(
                "/files/paid.bin?target={}",
                pair.provider.target()
            )))
            .body(content.clone())
            .send()
    };

    // An owner without payments stores nothing on a provider that charges.
    let unpaid = TestNode::start();
    let response = put(&unpaid).await.expect("answer");
    assert_eq!(response.status(), 402);
    assert_eq!(
        response.json::<Value>().await.expect("JSON")["error"]["code"],
        "payment_required"
    );

    // With a channel, the upload pays for the first period of the data and the manifest.
    let owner = &pair.requester;
    pair.open_channel("1000000000").await;
    let response = put(owner).await.expect("answer");
    assert_eq!(response.status(), 201);
    let stored: Value = response.json().await.expect("JSON");
    let id = stored["id"].as_str().expect("id").to_owned();
    assert!(stored["replicas"][0]["paid_until"].is_string(), "{stored}");
    let sealed_data = 100_000 + 16;
    let after_store = payments_of(&pair.provider).await["earned_wei"]
        .as_str()
        .expect("earned")
        .parse::<u64>()
        .expect("number");
    assert!(
        after_store > sealed_data && after_store < sealed_data + 2_000,
        "data plus a small manifest: {after_store}"
    );

    // A read pays for the bytes sent.
    let read = owner
        .http()
        .get(owner.url(&format!("/files/{id}")))
        .send()
        .await
        .expect("read");
    assert_eq!(read.status(), 200);
    assert_eq!(read.bytes().await.expect("body").to_vec(), content);
    let earned = |payments: &Value| {
        payments["earned_wei"]
            .as_str()
            .and_then(|text| text.parse::<u64>().ok())
            .expect("earned")
    };
    assert_eq!(
        earned(&payments_of(&pair.provider).await),
        after_store + sealed_data
    );
    // Storage is paid exactly, never ahead: the largest voucher is what was charged.
    let paid = &payments_of(&pair.provider).await["channels_in"][0];
    assert_eq!(paid["best_voucher_wei"], paid["earned_wei"], "{paid}");

    // Audits run every second; past half a period, each passing replica is paid again.
    let mut provider_payments = Value::Null;
    for _ in 0..40 {
        provider_payments = payments_of(&pair.provider).await;
        if earned(&provider_payments) >= 2 * after_store + sealed_data {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        earned(&provider_payments) >= 2 * after_store + sealed_data,
        "not renewed: {provider_payments}"
    );
    assert!(pair.provider.log().contains("object renewed"));
    // Both sides count the same: what the owner spent is what the provider earned.
    let spent = payments_of(owner).await["spent_wei"].clone();
    assert_eq!(spent, payments_of(&pair.provider).await["earned_wei"]);
}

#[tokio::test]
async fn the_provider_redeems_by_itself_past_its_threshold_and_after_its_interval() {
    // Threshold: five tasks' worth; the interval is an hour, so only the threshold can act.
    let pair = PaidPair::start(json!({
        "payments": {"redeem_threshold_wei": 5 * TASK_PRICE}
    }))
    .await;
    pair.open_channel("100000").await;
    for _ in 0..4 {
        assert_eq!(pair.task("hello").await.0, 200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(payments_of(&pair.provider).await["redeemed_wei"], "0");
    assert_eq!(pair.task("hello").await.0, 200);
    let redeemed = wait_for_redeemed(&pair.provider, "5000").await;
    assert_eq!(redeemed["pending_wei"], "0", "{redeemed}");
    assert!(
        redeemed["channels_in"][0]["last_redemption"]["tx"].is_string(),
        "{redeemed}"
    );

    // Interval: one second, with a threshold never reached.
    let pair = PaidPair::start(json!({
        "payments": {"redeem_interval_ms": 1_000}
    }))
    .await;
    pair.open_channel("100000").await;
    assert_eq!(pair.task("hello").await.0, 200);
    wait_for_redeemed(&pair.provider, "1000").await;
}

/// Waits (up to 30 s) until `node` has redeemed `amount` wei in all; returns its payments.
async fn wait_for_redeemed(node: &TestNode, amount: &str) -> Value {
    let mut seen = Value::Null;
    for _ in 0..60 {
        seen = payments_of(node).await;
        if seen["redeemed_wei"] == amount {
            return seen;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    panic!("{amount} wei not redeemed: {seen}");
}

#[tokio::test]
async fn a_requester_that_lost_its_count_in_a_crash_catches_up_with_the_provider() {
    let mut pair = PaidPair::start(json!({})).await;
    pair.open_channel("100000").await;
    for _ in 0..5 {
        assert_eq!(pair.task("hello").await.0, 200);
    }
    // Its count after each task is written lazily: the crash loses it.
    pair.requester.kill9();
    pair.requester.restart();
    let (status, body) = pair.task("hello").await;
    assert_eq!(status, 200, "{body}");
    assert!(pair.requester.log().contains("catching up"));
    assert_eq!(payments_of(&pair.requester).await["spent_wei"], "6000");
    assert_eq!(payments_of(&pair.provider).await["earned_wei"], "6000");
    for _ in 0..2 {
        assert_eq!(pair.task("hello").await.0, 200);
    }
    assert_eq!(payments_of(&pair.requester).await["spent_wei"], "8000");
    assert_eq!(payments_of(&pair.provider).await["earned_wei"], "8000");
}

#[tokio::test]
async fn an_upload_after_the_requester_lost_its_count_in_a_crash_is_paid_at_once() {
    // Storage is paid exactly (here one wei per byte), in the upload's trailer: a voucher
    // refused there cannot be sent again with the data, so the count must be right before the
    // upload starts.
    let mut pair = PaidPair::start(json!({
        "payments": {
            "storage_period_seconds": 3_600,
            "prices": {"storage_gib_day_wei": (1u64 << 30) * 24},
        }
    }))
    .await;
    pair.open_channel("1000000000").await;
    for _ in 0..5 {
        assert_eq!(pair.task("hello").await.0, 200);
    }
    pair.requester.kill9();
    pair.requester.restart();
    let owner = &pair.requester;
    let response = owner
        .http()
        .put(owner.url(&format!(
            "/files/after-crash.bin?target={}",
            pair.provider.target()
        )))
        .body(vec![7u8; 100_000])
        .send()
        .await
        .expect("answer");
    let status = response.status();
    assert_eq!(status, 201, "{}", response.text().await.unwrap_or_default());
    assert!(owner.log().contains("catching up"));
    // Both sides count the five tasks and the upload alike.
    let earned = payments_of(&pair.provider).await["earned_wei"].clone();
    let earned_wei: u64 = earned.as_str().expect("earned").parse().expect("number");
    assert!(earned_wei > 5 * TASK_PRICE + 100_000, "{earned}");
    assert_eq!(payments_of(owner).await["spent_wei"], earned);
    // The provider tells a channel's count only to its requester, whom the link proves: not to
    // a plaintext client, nor to another node linked with its own key.
    assert!(node_info(&pair.provider).await.your_channels.is_empty());
    let stranger = sphere_node::identity::NodeIdentity::generate();
    let link = link_as(&stranger, &pair.provider).await;
    let told = sphere_proto::v1::node_service_client::NodeServiceClient::new(link)
        .get_info(sphere_proto::v1::GetInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert!(told.payment_terms.is_some());
    assert!(told.your_channels.is_empty(), "{:?}", told.your_channels);
}

#[tokio::test]
async fn a_requester_that_lost_its_database_finds_its_channels_on_the_chain() {
    let mut pair = PaidPair::start(json!({})).await;
    let (channel, _) = pair.open_channel("100000").await;
    for _ in 0..3 {
        assert_eq!(pair.task("hello").await.0, 200);
    }
    pair.redeem().await;

    assert!(pair.requester.terminate().success());
    std::fs::remove_dir_all(pair.requester.data_dir.join("db")).expect("remove the database");
    pair.requester.restart();
    assert_eq!(
        payments_of(&pair.requester).await["channels_out"],
        json!([])
    );
    let (status, body) = pair
        .requester
        .call(reqwest::Method::POST, "/channels/recover", "")
        .await;
    assert_eq!(status, 200, "{body}");
    let recovered = &body["recovered"][0];
    assert_eq!(recovered["channel_id"], channel.as_str(), "{body}");
    assert_eq!(recovered["deposit_wei"], "100000");
    assert_eq!(recovered["spent_wei"], "3000");
    assert_eq!(recovered["phase"], "open");
    // Found once: a second look adds nothing.
    let (_, again) = pair
        .requester
        .call(reqwest::Method::POST, "/channels/recover", "")
        .await;
    assert_eq!(again["recovered"], json!([]));

    assert_eq!(pair.task("hello").await.0, 200);
    assert_eq!(payments_of(&pair.provider).await["earned_wei"], "4000");

    // Lost again, after work the chain has not seen: the provider's refusal carries the largest
    // voucher it kept, signed by this node, which proves what it signed, so it catches up past
    // what the chain shows instead of being stuck on the channel.
    assert!(pair.requester.terminate().success());
    std::fs::remove_dir_all(pair.requester.data_dir.join("db")).expect("remove the database");
    pair.requester.restart();
    let (_, body) = pair
        .requester
        .call(reqwest::Method::POST, "/channels/recover", "")
        .await;
    assert_eq!(body["recovered"][0]["spent_wei"], "3000", "{body}");
    let (status, body) = pair.task("hello").await;
    assert_eq!(status, 200, "{body}");
    assert!(pair.requester.log().contains("catching up"));
    assert_eq!(payments_of(&pair.requester).await["spent_wei"], "5000");
    assert_eq!(payments_of(&pair.provider).await["earned_wei"], "5000");
}

#[tokio::test]
async fn the_scheduler_keeps_to_a_price_cap_prefers_cheap_nodes_and_pays_only_agreeing_ones() {
    let chain = anvil();
    let dir = tempfile::tempdir().expect("temp dir");
    let address = deploy(&chain, &funded_key_file(&chain, dir.path()));
    let requester = paid_node(&chain, &address, 1, json!({"mesh": {"bootstrap": []}}));
    // Plugin `work` echoes its input (deterministic and idempotent); with `LIE`, it lies.
    let worker = |account: usize, price: u64, env: Value| {
        let mut env_all = json!({"PURE": "1"});
        merge(&mut env_all, env);
        let mut extra = plugins_config(vec![misbehaving_plugin("work", json!({"env": env_all}))]);
        extra["mesh"] = json!({"bootstrap": [requester.target()]});
        extra["payments"] = json!({"prices": {"task_wei": price}});
        paid_node(&chain, &address, account, extra)
    };
    let honest = [
        worker(2, TASK_PRICE, json!({})),
        worker(3, TASK_PRICE, json!({})),
    ];
    let liar = worker(4, TASK_PRICE, json!({"LIE": "1"}));
    let dear = worker(5, 5 * TASK_PRICE, json!({}));
    let workers = [&honest[0], &honest[1], &liar, &dear];
    crate::scheduler::until_serving(&requester, &workers, "work").await;
    for worker in workers {
        let (status, body) = requester
            .post(
                "/channels",
                &json!({"target": worker.target(), "deposit": "1000000"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let mut runs: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let task = async |input: &str, target: Value, verify: Value| {
        let mut request =
            json!({"plugin": "work", "input": input, "target": target, "timeout_ms": 20_000});
        if !verify.is_null() {
            request["verify"] = verify;
        }
        requester.post("/task", &request).await
    };

    // A cap leaves the dear node out; without one, it is still the last choice while the cheap
    // nodes are idle (the price weighs more than the jitter that shares work between equals).
    let cheap_only = [
        json!({"exclude": [liar.node_id], "max_price_wei": "2000"}),
        json!({"exclude": [liar.node_id]}),
    ];
    for (round, target) in cheap_only.iter().cycle().take(12).enumerate() {
        let (status, body) = task(&format!("cheap {round}"), target.clone(), Value::Null).await;
        assert_eq!(status, 200, "{body}");
        let node = body["node"].as_str().expect("the node that ran it");
        assert_ne!(node, dear.node_id, "{target}: {body}");
        *runs.entry(node.to_owned()).or_default() += 1;
    }
    let (status, body) = task(
        "too dear",
        json!({"exclude": [liar.node_id, honest[0].node_id, honest[1].node_id], "max_price_wei": "4999"}),
        Value::Null,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "no_capable_node", "{body}");
    let reasons: Vec<&Value> = body["error"]["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .filter(|candidate| candidate["node"] == dear.node_id.as_str())
        .map(|candidate| &candidate["reason"])
        .collect();
    assert_eq!(reasons, [&json!("price")], "{body}");

    // Verified on two of the honest nodes and the liar: the nodes run the task unpaid, and only
    // those whose signed answers agree are paid to hand the output over.
    let mut caught = false;
    for round in 0..30 {
        let (status, body) = task(
            &format!("verified {round}"),
            json!({"exclude": [dear.node_id]}),
            json!({"k": 2, "n": 3}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["output"], format!("verified {round}"), "{body}");
        for node in body["verified_by"].as_array().expect("agreeing nodes") {
            *runs
                .entry(node.as_str().expect("an ID").to_owned())
                .or_default() += 1;
        }
        if body.get("disagreed").is_some() {
            assert_eq!(body["disagreed"], json!([liar.node_id]), "{body}");
            caught = true;
            break;
        }
    }
    assert!(caught, "the liar was never drawn in 30 verified tasks");

    for node in &honest {
        let expected = runs.get(&node.node_id).copied().unwrap_or(0) * TASK_PRICE;
        let payments = payments_of(node).await;
        assert_eq!(
            payments["earned_wei"],
            expected.to_string(),
            "{} ran {runs:?}: {payments}",
            node.node_id
        );
    }
    let liar_payments = payments_of(&liar).await;
    assert_eq!(liar_payments["earned_wei"], "0", "{liar_payments}");
    for channel in liar_payments["channels_in"]
        .as_array()
        .into_iter()
        .flatten()
    {
        assert_eq!(
            channel["best_voucher_wei"], "0",
            "the liar holds no voucher: {liar_payments}"
        );
    }
    assert_eq!(payments_of(&dear).await["earned_wei"], "0");
    let spent: u64 = runs.values().sum::<u64>() * TASK_PRICE;
    assert_eq!(
        payments_of(&requester).await["spent_wei"],
        spent.to_string()
    );
}

#[tokio::test]
async fn work_paid_after_it_ran_never_exceeds_the_deposit_and_needs_a_proven_node() {
    let chain = anvil();
    let dir = tempfile::tempdir().expect("temp dir");
    let address = deploy(&chain, &funded_key_file(&chain, dir.path()));
    let requester = paid_node(&chain, &address, 1, json!({"mesh": {"bootstrap": []}}));
    let workers: Vec<TestNode> = (2..4)
        .map(|account| {
            let mut extra = plugins_config(vec![misbehaving_plugin(
                "work",
                json!({"env": {"PURE": "1"}}),
            )]);
            extra["mesh"] = json!({"bootstrap": [requester.target()]});
            paid_node(&chain, &address, account, extra)
        })
        .collect();
    crate::scheduler::until_serving(&requester, &[&workers[0], &workers[1]], "work").await;
    // The second worker's channel holds exactly one task's price.
    for (worker, deposit) in workers.iter().zip([1_000_000, TASK_PRICE]) {
        let (status, body) = requester
            .post(
                "/channels",
                &json!({"target": worker.target(), "deposit": deposit.to_string()}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let verified = |input: &str| json!({"plugin": "work", "input": input, "verify": {"k": 2, "n": 2}, "timeout_ms": 2_000});
    let (status, body) = requester.post("/task", &verified("first")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["verified_by"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );

    // The second worker's deposit is spent: it refuses to run the task on credit, the first
    // worker's answer alone proves nothing, and neither is paid for it.
    let (status, body) = requester.post("/task", &verified("second")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "verification_failed", "{body}");
    let refusal = body["error"]["failed"]
        .as_array()
        .expect("failed nodes")
        .iter()
        .find(|failure| failure["node"] == workers[1].node_id.as_str())
        .unwrap_or_else(|| panic!("the spent worker refused: {body}"));
    assert_eq!(refusal["code"], "payment_required", "{body}");
    assert!(
        refusal["message"]
            .as_str()
            .is_some_and(|message| message.contains("of its deposit left beyond the work done")),
        "{body}"
    );
    for worker in &workers {
        assert_eq!(
            payments_of(worker).await["earned_wei"],
            TASK_PRICE.to_string(),
            "only the first task was paid"
        );
    }

    // A client that proves no node key cannot have paid work run on credit.
    let mut tasks = workers[0].task_client().await;
    let status = tasks
        .run_task(sphere_proto::v1::RunTaskRequest {
            task_id: "stranger".into(),
            input: "x".into(),
            plugin: "work".into(),
            verify_nonce: vec![7u8; 16].into(),
            withhold_output: true,
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("only for a node that proves its key on the link"),
        "{status:?}"
    );
}

/// A TLS endpoint in front of `chain` for `localhost`, with a certificate from an authority of
/// its own; returns its `https://` URL and the authority's certificate (PEM), which no system
/// trusts. It runs on a thread of its own, so that the test may wait on processes that use it.
fn https_in_front_of(chain: &AnvilInstance) -> (String, String) {
    let authority_key = rcgen::KeyPair::generate().expect("key");
    let mut authority = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    authority.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    authority
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Sphere test authority");
    let authority = authority.self_signed(&authority_key).expect("authority");
    let server_key = rcgen::KeyPair::generate().expect("key");
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&server_key, &authority, &authority_key)
        .expect("certificate");
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![server.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("address").port();
    let upstream = format!("127.0.0.1:{}", chain.port());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(mut client) = acceptor.accept(client).await else {
                        return;
                    };
                    if let Ok(mut chain) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut chain).await;
                    }
                });
            }
        });
    });
    (format!("https://localhost:{port}"), authority.pem())
}

#[tokio::test]
async fn a_chain_is_reached_over_https_with_the_roots_the_system_trusts() {
    let chain = anvil();
    let (rpc_url, authority) = https_in_front_of(&chain);
    let dir = tempfile::tempdir().expect("temp dir");
    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, authority).expect("write roots");
    let key_file = funded_key_file(&chain, dir.path());

    // The command line deploys through it, trusting the roots SSL_CERT_FILE names.
    let contract = deploy_through(&rpc_url, &key_file, Some(&roots), &[]);
    let settings = json!({
        "enabled": true,
        "rpc_url": rpc_url,
        "chain_id": chain.chain_id(),
        "contract": contract,
    });
    let node = TestNode::start_with(NodeOptions {
        config: Some(json!({ "payments": settings })),
        environment: vec![("SSL_CERT_FILE".into(), roots.display().to_string())],
        ..NodeOptions::default()
    });
    let payments = payments_of(&node).await;
    assert_eq!(payments["enabled"], true, "{payments}");
    assert_eq!(payments["contract"], contract.as_str(), "{payments}");
    assert!(payments["balance_wei"].is_string(), "{payments}");

    // Without those roots, the endpoint's certificate is not trusted and the node says where.
    let stderr = refused_start(settings);
    assert!(
        stderr.contains("payments.rpc_url") && stderr.contains("certificate"),
        "{stderr}"
    );
}

//! Payments settings on a real local chain (anvil): off by default, clear refusals when the chain
//! or the contract is wrong, the contract deployed by `sphere payments deploy`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use alloy::node_bindings::{Anvil, AnvilInstance};
use serde_json::json;

use crate::harness::{NodeOptions, TestNode, repo_root};

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
    let output = Command::new(env!("CARGO_BIN_EXE_sphere"))
        .args([
            "payments",
            "deploy",
            "--rpc-url",
            anvil.endpoint().as_str(),
            "--key-file",
        ])
        .arg(key_file)
        .args(["--challenge-period-seconds", "600"])
        .output()
        .expect("sphere runs");
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
    let output = Command::new(env!("CARGO_BIN_EXE_sphere"))
        .args([
            "node",
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("sphere runs");
    assert!(!output.status.success(), "the node started anyway");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn payments_are_off_by_default() {
    let node = TestNode::start();
    let (status, body) = node.call(reqwest::Method::GET, "/payments", "").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"enabled": false}));
    let mut info = sphere_proto::v1::node_service_client::NodeServiceClient::connect(format!(
        "http://{}",
        node.target()
    ))
    .await
    .expect("connect");
    let answer = info
        .get_info(sphere_proto::v1::GetInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert!(answer.payment_terms.is_none());
    assert_eq!(answer.node_id, node.node_id);
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
    let (status, body) = node.call(reqwest::Method::GET, "/payments", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["enabled"], true);
    assert_eq!(body["contract"], contract);
    assert_eq!(body["chain_id"], chain.chain_id());
    assert_eq!(body["challenge_period_seconds"], 600);
    assert_eq!(body["prices"]["task_wei"], 5000);

    // Other nodes see the same terms through the node-to-node API.
    let mut info = sphere_proto::v1::node_service_client::NodeServiceClient::connect(format!(
        "http://{}",
        node.target()
    ))
    .await
    .expect("connect");
    let terms = info
        .get_info(sphere_proto::v1::GetInfoRequest {})
        .await
        .expect("info")
        .into_inner()
        .payment_terms
        .expect("payment terms");
    assert_eq!(terms.contract, contract);
    assert_eq!(terms.chain_id, chain.chain_id());
    assert_eq!(terms.task_wei, "5000");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let mut unreachable = settings.clone();
    unreachable["rpc_url"] = json!(dead_url);
    assert!(refused_start(unreachable).contains("payments.rpc_url"));

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

//! The scheduler: a requester's node chooses where a task runs among the mesh's members, by
//! selector, load and history; waits, then says why no node fits; and fails over when a node
//! dies.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{NodeOptions, TestNode, misbehaving_plugin, plugins_config};

/// Starts the requester: the mesh's first member, with only the demo plugin, so that tasks on
/// plugin `work` go to the workers.
fn requester() -> TestNode {
    TestNode::start_with(NodeOptions {
        config: Some(json!({"mesh": {"bootstrap": []}})),
        ..NodeOptions::default()
    })
}

/// Starts a worker joined through `seed`, with `labels` and plugin `work` (the misbehaving test
/// plugin, deterministic and idempotent unless `pure` is false) merged with `plugin`.
fn worker(seed: &TestNode, labels: Value, plugin: Value) -> TestNode {
    let mut entry = misbehaving_plugin("work", json!({"env": {"PURE": "1"}}));
    crate::harness::merge(&mut entry, plugin);
    let mut config = plugins_config(vec![entry]);
    config["mesh"] = json!({"bootstrap": [seed.target()]});
    config["labels"] = labels;
    TestNode::start_with(NodeOptions {
        config: Some(config),
        ..NodeOptions::default()
    })
}

/// Polls until `node` lists every one of `workers` alive with plugin `work` serving.
async fn until_ready(node: &TestNode, workers: &[&TestNode]) {
    until_serving(node, workers, "work").await;
}

/// Polls until `node` lists every one of `workers` alive with plugin `plugin` serving.
pub(crate) async fn until_serving(node: &TestNode, workers: &[&TestNode], plugin_name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = node.call(reqwest::Method::GET, "/peers", "").await;
        let ready = workers.iter().all(|worker| {
            body["peers"].as_array().into_iter().flatten().any(|peer| {
                peer["id"] == worker.node_id.as_str()
                    && peer["state"] == "alive"
                    && peer["plugins"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|plugin| plugin["name"] == plugin_name && plugin["serving"] == true)
            })
        });
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "workers never all alive and serving: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `input` on plugin `work` through `requester` with `target`; returns status and body.
async fn task(requester: &TestNode, target: Value, input: &str) -> (u16, Value) {
    let mut request = json!({"plugin": "work", "input": input, "timeout_ms": 15_000});
    if !target.is_null() {
        request["target"] = target;
    }
    requester.post("/task", &request).await
}

/// Sends `count` tasks through `requester` at once; the handle gives back each answer.
fn tasks_at_once(
    requester: &TestNode,
    target: Value,
    input: &str,
    count: usize,
) -> tokio::task::JoinHandle<Vec<(u16, Value)>> {
    let requests: Vec<_> = (0..count)
        .map(|_| {
            let client = requester.http().clone();
            let url = requester.url("/task");
            let body = json!({"plugin": "work", "input": input, "target": target.clone(), "timeout_ms": 30_000});
            tokio::spawn(async move {
                let response = client.post(url).json(&body).send().await.expect("answered");
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.expect("JSON"))
            })
        })
        .collect();
    tokio::spawn(async move {
        let mut answers = Vec::new();
        for request in requests {
            answers.push(request.await.expect("joined"));
        }
        answers
    })
}

#[tokio::test]
async fn selectors_choose_only_matching_nodes_and_no_fit_says_why_for_each_node() {
    let requester = requester();
    let eu_one = worker(&requester, json!({"region": "eu"}), json!({}));
    let eu_two = worker(&requester, json!({"region": "eu"}), json!({}));
    let us = worker(&requester, json!({"region": "us"}), json!({}));
    let eu_busy = worker(
        &requester,
        json!({"region": "eu"}),
        json!({"max_concurrency": 1, "queue_size": 0}),
    );
    until_ready(&requester, &[&eu_one, &eu_two, &us, &eu_busy]).await;

    // Without a target, the requester (which has no plugin `work`) lets the scheduler choose.
    let (status, body) = task(&requester, Value::Null, "anyone").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], "anyone");
    assert_ne!(body["node"], requester.node_id.as_str());

    // Only nodes labelled region=eu run tasks with that selector; the excluded one never does.
    let mut ran_on = HashMap::new();
    for _ in 0..24 {
        let selector = json!({"labels": {"region": "eu"}, "exclude": [eu_two.node_id]});
        let (status, body) = task(&requester, selector, "eu").await;
        assert_eq!(status, 200, "{body}");
        *ran_on
            .entry(body["node"].as_str().expect("a string").to_owned())
            .or_insert(0) += 1;
    }
    assert!(
        ran_on
            .keys()
            .all(|node| [&eu_one.node_id, &eu_busy.node_id].contains(&node)),
        "{ran_on:?}"
    );

    // The busy node's only slot is taken (a task sent to it directly), as its load tells the
    // requester. Only it matches this selector: the requester waits until the deadline, then
    // says why each node was refused.
    let long_task = {
        let client = eu_busy.http().clone();
        let url = eu_busy.url("/task");
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"input": "sleep:6000"}))
                .send()
                .await
        })
    };
    until_busy(&requester, &eu_busy).await;
    let selector = json!({
        "labels": {"region": "eu"},
        "exclude": [eu_one.node_id, eu_two.node_id],
    });
    let asked = Instant::now();
    let (status, body) = requester
        .post(
            "/task",
            &json!({"plugin": "work", "input": "x", "target": selector, "timeout_ms": 1500}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        asked.elapsed() >= Duration::from_millis(1000),
        "the requester waited for a slot before giving up"
    );
    assert_eq!(body["error"]["code"], "no_capable_node");
    let reasons: HashMap<String, String> = body["error"]["candidates"]
        .as_array()
        .expect("candidates listed")
        .iter()
        .map(|candidate| {
            (
                candidate["node"].as_str().expect("a string").to_owned(),
                candidate["reason"].as_str().expect("a string").to_owned(),
            )
        })
        .collect();
    assert_eq!(reasons[&eu_one.node_id], "excluded");
    assert_eq!(reasons[&eu_two.node_id], "excluded");
    assert_eq!(reasons[&us.node_id], "labels");
    assert_eq!(reasons[&eu_busy.node_id], "overloaded");
    let message = body["error"]["message"].as_str().expect("a string");
    assert!(
        message.contains("label region=us, not region=eu"),
        "{message}"
    );
    long_task.await.expect("joined").expect("answered");

    // A plugin nobody has is refused at once, naming what each node has.
    let (status, body) = requester
        .post(
            "/task",
            &json!({"plugin": "nowhere", "input": "x", "target": {}}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["candidates"]
            .as_array()
            .expect("an array")
            .iter()
            .all(|candidate| candidate["reason"] == "no_plugin"),
        "{body}"
    );

    // Selectors are checked field by field.
    for (selector, field) in [
        (json!({"max_price_wei": "ten"}), "target.max_price_wei"),
        (json!({"exclude": ["not-a-node"]}), "target.exclude"),
        (json!({"plugin_version": "~>1"}), "target.plugin_version"),
    ] {
        let (status, body) = task(&requester, selector, "x").await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_field");
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("a string")
                .contains(field),
            "{body}"
        );
    }
    let (status, body) = task(&requester, json!({"region": "eu"}), "x").await;
    assert_eq!(status, 400, "an unknown selector field is refused: {body}");
    let (status, body) = task(&requester, json!(7), "x").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("a string")
            .contains("selector object"),
        "{body}"
    );
}

/// Polls until `requester` sees tasks running on `worker`'s plugin `work`.
async fn until_busy(requester: &TestNode, worker: &TestNode) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = requester
            .call(
                reqwest::Method::GET,
                &format!("/peers/{}", worker.node_id),
                "",
            )
            .await;
        if body["load"]["plugins"]["work"]["in_flight"].as_u64() > Some(0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never looked busy: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn at_saturation_work_is_spread_so_no_node_gets_twice_the_mean() {
    let requester = requester();
    let workers: Vec<TestNode> = (0..3)
        .map(|_| {
            worker(
                &requester,
                json!({}),
                json!({"max_concurrency": 2, "queue_size": 30}),
            )
        })
        .collect();
    until_ready(&requester, &workers.iter().collect::<Vec<_>>()).await;

    let answers = tasks_at_once(&requester, json!({}), "sleep:100", 60)
        .await
        .expect("joined");
    let mut ran_on: HashMap<String, usize> = HashMap::new();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        *ran_on
            .entry(body["node"].as_str().expect("a string").to_owned())
            .or_default() += 1;
    }
    let mean = answers.len() as f64 / workers.len() as f64;
    assert_eq!(
        ran_on.len(),
        workers.len(),
        "every worker ran tasks: {ran_on:?}"
    );
    assert!(
        ran_on.values().all(|&count| count as f64 <= 2.0 * mean),
        "no node got more than twice the mean of {mean}: {ran_on:?}"
    );
}

#[tokio::test]
async fn a_node_killed_mid_run_loses_no_task_of_an_idempotent_plugin_and_others_fail_loudly() {
    let requester = requester();
    let mut workers: Vec<TestNode> = (0..3)
        .map(|_| {
            worker(
                &requester,
                json!({}),
                json!({"max_concurrency": 8, "queue_size": 8}),
            )
        })
        .collect();
    until_ready(&requester, &workers.iter().collect::<Vec<_>>()).await;

    let running = tasks_at_once(&requester, json!({}), "sleep:1500", 18);
    // Every worker has tasks running when one dies.
    for worker in &workers {
        until_busy(&requester, worker).await;
    }
    let killed = workers[0].node_id.clone();
    workers[0].kill9();

    let answers = running.await.expect("joined");
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_ne!(body["node"], killed.as_str(), "{body}");
    }
    assert!(
        requester.log().contains("trying another"),
        "some tasks failed over from the killed node"
    );
}

#[tokio::test]
async fn a_task_of_a_plugin_that_may_not_run_twice_is_not_retried_after_it_started() {
    let requester = requester();
    let impure = json!({"env": {"PURE": "0"}});
    let mut first = worker(&requester, json!({}), impure.clone());
    until_ready(&requester, &[&first]).await;

    let running = tasks_at_once(&requester, json!({}), "sleep:25000", 1);
    until_busy(&requester, &first).await;
    // A second worker is there to fail over to, but the task may have run: it is not repeated.
    let second = worker(&requester, json!({}), impure);
    until_ready(&requester, &[&second]).await;
    first.kill9();
    let (status, body) = running.await.expect("joined").remove(0);
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "target_unreachable", "{body}");
}

#[tokio::test]
async fn a_lying_node_is_caught_by_verification_outvoted_and_scored_down() {
    let requester = requester();
    let honest: Vec<TestNode> = (0..2)
        .map(|_| worker(&requester, json!({}), json!({})))
        .collect();
    let liar = worker(&requester, json!({}), json!({"env": {"LIE": "1"}}));
    let impure = worker(
        &requester,
        json!({"role": "impure"}),
        json!({"name": "loose", "env": {"PURE": "0", "PLUGIN_NAME": "loose"}}),
    );
    until_ready(&requester, &[&honest[0], &honest[1], &liar]).await;
    until_serving(&requester, &[&impure], "loose").await;
    let verified = |input: &str, verify: Value, target: Value| json!({"plugin": "work", "input": input, "verify": verify, "target": target, "timeout_ms": 15_000});

    // k=2 of n=3 among three nodes, one of them lying: every answer is the honest output, signed
    // by two honest nodes. The nodes are drawn at random, so within a few tasks the liar is drawn,
    // outvoted and named.
    let mut caught = false;
    for round in 0..30 {
        let (status, body) = requester
            .post(
                "/task",
                &verified(
                    &format!("round {round}"),
                    json!({"k": 2, "n": 3}),
                    json!({}),
                ),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["output"], format!("round {round}"));
        let verified_by: Vec<&str> = body["verified_by"]
            .as_array()
            .expect("the agreeing nodes")
            .iter()
            .map(|node| node.as_str().expect("an ID"))
            .collect();
        assert_eq!(verified_by.len(), 2, "{body}");
        assert!(!verified_by.contains(&liar.node_id.as_str()), "{body}");
        assert_eq!(body["node"], verified_by[0]);
        if let Some(disagreed) = body.get("disagreed") {
            assert_eq!(disagreed, &json!([liar.node_id]), "{body}");
            caught = true;
            break;
        }
    }
    assert!(caught, "the liar was never drawn in 30 verified tasks");
    let (_, peer) = requester
        .call(
            reqwest::Method::GET,
            &format!("/peers/{}", liar.node_id),
            "",
        )
        .await;
    let liar_success = peer["standing"]["success"].as_f64().expect("a standing");
    assert!(liar_success < 1.0, "the liar is scored down: {peer}");
    for node in &honest {
        let (_, peer) = requester
            .call(
                reqwest::Method::GET,
                &format!("/peers/{}", node.node_id),
                "",
            )
            .await;
        let success = peer["standing"]["success"].as_f64().expect("a standing");
        assert!(success > liar_success, "{peer}");
    }

    // With room for only two answers, the liar and one honest node disagree: the task fails with
    // both signed results as evidence.
    let (status, body) = requester
        .post(
            "/task",
            &verified(
                "evidence",
                json!({"k": 2, "n": 2}),
                json!({"exclude": [honest[1].node_id]}),
            ),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "verification_failed");
    let results = body["error"]["results"].as_array().expect("evidence");
    assert_eq!(results.len(), 2, "{body}");
    let hashes: std::collections::HashSet<&str> = results
        .iter()
        .map(|result| result["output_sha256"].as_str().expect("a hash"))
        .collect();
    assert_eq!(hashes.len(), 2, "two different outputs: {body}");
    for result in results {
        assert_eq!(
            result["signature"].as_str().map(str::len),
            Some(132),
            "65 bytes of signature: {result}"
        );
    }

    // A plugin that does not declare itself deterministic cannot be verified; nor can a task
    // whose target is named.
    let (status, body) = requester
        .post(
            "/task",
            &json!({"plugin": "loose", "input": "x", "verify": {"k": 2}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("a message")
            .contains("deterministic"),
        "{body}"
    );
    let (status, body) = requester
        .post(
            "/task",
            &verified("x", json!({"k": 2}), json!(liar.target())),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = requester
        .post("/task", &verified("x", json!({"k": 3, "n": 2}), json!({})))
        .await;
    assert_eq!(status, 400, "{body}");
    drop(impure);
}

#[tokio::test]
async fn a_node_signs_its_answer_only_over_a_nonce_of_a_sound_length() {
    let node = crate::harness::TestNode::start();
    let mut tasks = node.task_client().await;
    let ask = |nonce: &'static [u8]| sphere_proto::v1::RunTaskRequest {
        task_id: "signed".into(),
        input: "hello".into(),
        verify_nonce: nonce.into(),
        ..Default::default()
    };
    let plain = tasks
        .run_task(ask(b""))
        .await
        .expect("a plain task runs")
        .into_inner();
    assert!(
        plain.result_signature.is_empty(),
        "unsigned without a nonce"
    );
    let signed = tasks
        .run_task(ask(b"0123456789abcdef"))
        .await
        .expect("a task to verify runs")
        .into_inner();
    assert_eq!(signed.output, "world");
    assert_eq!(signed.result_signature.len(), 65);
    assert!(!signed.plugin_version.is_empty());
    for nonce in [&b"short"[..], &[7u8; 65][..]] {
        let status = tasks
            .run_task(sphere_proto::v1::RunTaskRequest {
                verify_nonce: nonce.to_vec().into(),
                ..ask(b"")
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
}

#[tokio::test]
async fn a_held_back_output_is_handed_over_once_to_its_caller_for_the_nonce_it_was_run_with() {
    let node = crate::harness::TestNode::start();
    let mut tasks = node.task_client().await;
    let nonce = bytes::Bytes::from_static(b"0123456789abcdef");
    let held = tasks
        .run_task(sphere_proto::v1::RunTaskRequest {
            task_id: "held".into(),
            input: "hello".into(),
            verify_nonce: nonce.clone(),
            withhold_output: true,
            ..Default::default()
        })
        .await
        .expect("runs")
        .into_inner();
    assert!(held.output.is_empty(), "the output is held back");
    assert_eq!(
        held.output_sha256.as_ref(),
        <sha2::Sha256 as sha2::Digest>::digest(b"world").as_slice()
    );
    assert_eq!(held.result_signature.len(), 65);
    assert!(held.held_for_ms > 0);
    let reveal = |task_id: &str, nonce: &bytes::Bytes| sphere_proto::v1::RevealResultRequest {
        task_id: task_id.into(),
        verify_nonce: nonce.clone(),
        voucher: None,
    };
    for (task_id, nonce) in [
        ("held", bytes::Bytes::from_static(b"fedcba9876543210")),
        ("other", nonce.clone()),
    ] {
        let status = tasks
            .reveal_result(reveal(task_id, &nonce))
            .await
            .expect_err("nothing held under that key");
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    }
    let revealed = tasks
        .reveal_result(reveal("held", &nonce))
        .await
        .expect("handed over")
        .into_inner();
    assert_eq!(revealed.output, "world");
    let status = tasks
        .reveal_result(reveal("held", &nonce))
        .await
        .expect_err("handed over once");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let status = tasks
        .run_task(sphere_proto::v1::RunTaskRequest {
            task_id: "no nonce".into(),
            input: "hello".into(),
            withhold_output: true,
            ..Default::default()
        })
        .await
        .expect_err("a held output needs a nonce");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn file_replicas_go_only_to_providers_with_the_labels_asked_for() {
    let owner = requester();
    let eu: Vec<TestNode> = (0..2)
        .map(|_| worker(&owner, json!({"region": "eu"}), json!({})))
        .collect();
    let us = worker(&owner, json!({"region": "us"}), json!({}));
    until_ready(&owner, &[&eu[0], &eu[1], &us]).await;
    let eu_ids: Vec<&str> = eu.iter().map(|node| node.node_id.as_str()).collect();

    for _ in 0..4 {
        let response = owner
            .http()
            .put(owner.url("/files/notes.txt?replicas=2&labels=region:eu"))
            .body("only in europe")
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 201);
        let file: Value = response.json().await.expect("JSON");
        let mut holders: Vec<&str> = file["replicas"]
            .as_array()
            .expect("replicas")
            .iter()
            .map(|replica| replica["provider_id"].as_str().expect("an ID"))
            .collect();
        holders.sort_unstable();
        let mut expected = eu_ids.clone();
        expected.sort_unstable();
        assert_eq!(holders, expected, "{file}");
    }
    let (status, file) = owner
        .post(
            "/file",
            &json!({"name": "n", "data": "aGk=", "replicas": 1, "labels": {"region": "us"}}),
        )
        .await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["provider_id"], us.node_id.as_str());

    // Three replicas in a region with two nodes: refused, each other node with its reason.
    let response = owner
        .http()
        .put(owner.url("/files/notes.txt?replicas=3&labels=region:eu"))
        .body("too many")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "not_enough_providers");
    let candidates = body["error"]["candidates"].as_array().expect("reasons");
    assert_eq!(candidates.len(), 1, "{body}");
    assert_eq!(candidates[0]["node"], us.node_id.as_str());
    assert_eq!(candidates[0]["reason"], "labels");

    for query in ["labels=region", "labels=", "labels=,"] {
        let (status, body) = owner
            .call(reqwest::Method::PUT, &format!("/files/x?{query}"), "x")
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_field", "{query}: {body}");
    }
}

#[tokio::test]
async fn repair_keeps_a_files_replicas_on_nodes_with_the_labels_it_was_stored_with() {
    let owner = TestNode::start_with(NodeOptions {
        config: Some(json!({
            "mesh": {"bootstrap": []},
            "storage": {"audit_interval_ms": 200, "lost_after_ms": 1000},
        })),
        ..NodeOptions::default()
    });
    let member = |region: &str| {
        TestNode::start_with(NodeOptions {
            config: Some(
                json!({"mesh": {"bootstrap": [owner.target()]}, "labels": {"region": region}}),
            ),
            ..NodeOptions::default()
        })
    };
    let mut eu: Vec<TestNode> = (0..3).map(|_| member("eu")).collect();
    let us: Vec<TestNode> = (0..2).map(|_| member("us")).collect();
    until_serving(&owner, &[&eu[0], &eu[1], &eu[2], &us[0], &us[1]], "hello").await;

    let (status, stored) = owner
        .post(
            "/file",
            &json!({"name": "eu only", "data": "aGk=", "replicas": 2, "labels": {"region": "eu"}}),
        )
        .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["labels"], json!({"region": "eu"}), "{stored}");
    let holders: Vec<String> = stored["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|replica| replica["provider_id"].as_str().expect("an ID").to_owned())
        .collect();
    let victim = eu
        .iter()
        .position(|node| node.node_id == holders[0])
        .expect("held in the eu");
    eu[victim].kill9();
    let spare = eu
        .iter()
        .find(|node| !holders.contains(&node.node_id))
        .expect("one eu node holds nothing")
        .node_id
        .clone();
    let us_ids: Vec<&str> = us.iter().map(|node| node.node_id.as_str()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, listing) = owner.call(reqwest::Method::GET, "/files", "").await;
        let now_held: Vec<&str> = listing["files"][0]["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|replica| replica["provider_id"].as_str())
            .collect();
        assert!(
            now_held.iter().all(|node| !us_ids.contains(node)),
            "a replica left the eu: {listing}"
        );
        if now_held.contains(&spare.as_str()) && !now_held.contains(&holders[0].as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not repaired onto {spare}: {listing}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_task_command_passes_selectors_and_verification_to_the_scheduler() {
    let requester = requester();
    let eu = worker(&requester, json!({"region": "eu"}), json!({}));
    let us = worker(&requester, json!({"region": "us"}), json!({}));
    until_ready(&requester, &[&eu, &us]).await;
    let sphere = |args: &[&str]| {
        let run = ["task", "run", "--plugin", "work", "--timeout-ms", "3000"];
        requester.cli(&[&run[..], args].concat())
    };
    let ran_on = async |id: &str| {
        let (status, body) = requester
            .call(reqwest::Method::GET, &format!("/tasks/{id}"), "")
            .await;
        assert_eq!(status, 200, "{body}");
        body
    };

    for round in 0..4 {
        let id = format!("eu-{round}");
        let (ok, output, errors) = sphere(&["--wait", "--label", "region=eu", "--id", &id, "hi"]);
        assert!(ok, "{errors}");
        assert_eq!(output.trim(), "hi");
        assert_eq!(ran_on(&id).await["node"], eu.node_id.as_str());
    }
    let (ok, _, errors) = sphere(&[
        "--wait",
        "--label",
        "region=eu",
        "--exclude",
        &eu.node_id,
        "hi",
    ]);
    assert!(!ok);
    assert!(errors.contains("no_capable_node"), "{errors}");

    let (ok, output, errors) = sphere(&["--wait", "--verify", "2", "--id", "checked", "both"]);
    assert!(ok, "{errors}");
    assert_eq!(output.trim(), "both");
    let mut verified_by: Vec<String> = ran_on("checked").await["verified_by"]
        .as_array()
        .expect("the agreeing nodes")
        .iter()
        .map(|node| node.as_str().expect("an ID").to_owned())
        .collect();
    verified_by.sort_unstable();
    let mut both = vec![eu.node_id.clone(), us.node_id.clone()];
    both.sort_unstable();
    assert_eq!(verified_by, both);

    let (ok, _, errors) = sphere(&["--max-price-wei", "lots", "hi"]);
    assert!(!ok);
    assert!(errors.contains("target.max_price_wei"), "{errors}");
}

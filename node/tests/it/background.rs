//! Background tasks: accepted at once, run, kept in the database, listed, and never lost by a
//! restart of the requester's node; and the `sphere task` commands.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{NodeOptions, TestNode, misbehaving_plugin, plugins_config};

/// Starts a node with the misbehaving plugin `slow` (one slot, a long queue) and `tasks` settings.
fn node_with_slow_plugin(tasks: Value) -> TestNode {
    let mut config = plugins_config(vec![misbehaving_plugin(
        "slow",
        json!({"max_concurrency": 1, "queue_size": 16}),
    )]);
    config["tasks"] = tasks;
    TestNode::start_with(NodeOptions {
        config: Some(config),
        ..NodeOptions::default()
    })
}

async fn task(node: &TestNode, id: &str) -> (u16, Value) {
    node.call(reqwest::Method::GET, &format!("/tasks/{id}"), "")
        .await
}

/// Polls until task `id` on `node` is in `state`; returns the task.
async fn until_state(node: &TestNode, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = task(node, id).await;
        assert_eq!(status, 200, "task {id}: {body}");
        if body["state"] == state {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} never became {state}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(node: &TestNode, body: Value) -> String {
    let response = node
        .http()
        .post(node.url("/tasks"))
        .json(&body)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 202);
    let location = response
        .headers()
        .get("location")
        .expect("a Location header")
        .to_str()
        .expect("ASCII")
        .to_owned();
    let accepted: Value = response.json().await.expect("JSON");
    assert_eq!(accepted["state"], "queued");
    let id = accepted["id"].as_str().expect("an ID").to_owned();
    let (status, at_location) = node.call(reqwest::Method::GET, &location, "").await;
    assert_eq!(status, 200, "{location}: {at_location}");
    assert_eq!(at_location["id"], id.as_str());
    id
}

#[tokio::test]
async fn a_background_task_is_accepted_at_once_runs_and_is_listed() {
    let node = node_with_slow_plugin(json!({}));
    let asked = Instant::now();
    let id = submit(&node, json!({"input": "sleep:1000"})).await;
    assert!(
        asked.elapsed() < Duration::from_millis(900),
        "the answer did not wait for the task"
    );
    let running = until_state(&node, &id, "running").await;
    assert!(
        running["started_at_ms"].as_u64().expect("started")
            >= running["created_at_ms"].as_u64().expect("created")
    );
    let done = until_state(&node, &id, "succeeded").await;
    assert_eq!(done["output"], "slept");
    assert_eq!(done["plugin"], "slow");
    assert_eq!(done["node"], node.node_id.as_str());
    let took = done["finished_at_ms"].as_u64().expect("finished")
        - done["started_at_ms"].as_u64().expect("started");
    assert!(took >= 1000, "it ran for the second it sleeps: {took} ms");

    // A failing task keeps its error; IDs may be chosen, once.
    let failing = submit(&node, json!({"input": "reject", "id": "my task/1"})).await;
    assert_eq!(failing, "my task/1");
    let failed = until_state(&node, "my%20task%2F1", "failed").await;
    assert_eq!(failed["error"]["code"], "task_rejected", "{failed}");
    let (status, body) = node
        .post("/tasks", &json!({"input": "again", "id": "my task/1"}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "already_exists");

    // Newest first, without outputs; filtered by state.
    let (status, list) = node.call(reqwest::Method::GET, "/tasks", "").await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|task| task["id"].as_str().expect("an ID"))
        .collect();
    assert_eq!(ids, ["my task/1", id.as_str()]);
    assert!(list["tasks"][1].get("output").is_none(), "{list}");
    let (_, succeeded) = node
        .call(reqwest::Method::GET, "/tasks?state=succeeded&limit=5", "")
        .await;
    assert_eq!(succeeded["tasks"].as_array().map(Vec::len), Some(1));

    // Bad requests are refused with the field named; unknown tasks are 404.
    for (body, code) in [
        (json!({}), "missing_field"),
        (json!({"input": "x", "timeout_ms": 0}), "invalid_field"),
        (json!({"input": "x", "id": ""}), "invalid_field"),
        (
            json!({"input": "x", "target": {"labels": 3}}),
            "invalid_json",
        ),
    ] {
        let (status, answer) = node.post("/tasks", &body).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert_eq!(answer["error"]["code"], code, "{body} -> {answer}");
    }
    let (status, body) = task(&node, "nothing-here").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "task_not_found");
    for query in ["state=bogus", "limit=0", "limit=5000"] {
        let (status, body) = node
            .call(reqwest::Method::GET, &format!("/tasks?{query}"), "")
            .await;
        assert_eq!(status, 400, "{query}: {body}");
    }
}

#[tokio::test]
async fn background_tasks_survive_a_restart_of_the_requesters_node() {
    // One background task runs at a time, so a second one stays queued.
    let mut node = node_with_slow_plugin(json!({"max_running": 1}));
    let finished = submit(&node, json!({"input": "finished before"})).await;
    until_state(&node, &finished, "succeeded").await;
    let interrupted = submit(&node, json!({"input": "sleep:20000"})).await;
    until_state(&node, &interrupted, "running").await;
    let queued = submit(&node, json!({"input": "waited"})).await;
    assert_eq!(task(&node, &queued).await.1["state"], "queued");

    node.kill9();
    node.restart();

    // Done stays done; queued runs after the restart; running is failed, not silently lost nor
    // run again unasked.
    let done = until_state(&node, &finished, "succeeded").await;
    assert_eq!(done["output"], "finished before");
    let resumed = until_state(&node, &queued, "succeeded").await;
    assert_eq!(resumed["output"], "waited");
    let failed = until_state(&node, &interrupted, "failed").await;
    assert_eq!(failed["error"]["code"], "interrupted", "{failed}");
    assert!(failed.get("output").is_none());
}

#[tokio::test]
async fn finished_tasks_are_forgotten_after_their_keeping_time_and_the_number_kept_is_bounded() {
    let node = node_with_slow_plugin(json!({"keep_results_ms": 1000, "max_kept": 2}));
    let first = submit(&node, json!({"input": "one"})).await;
    until_state(&node, &first, "succeeded").await;
    let second = submit(&node, json!({"input": "two"})).await;
    until_state(&node, &second, "succeeded").await;
    // A third makes room by forgetting the oldest finished one.
    let third = submit(&node, json!({"input": "sleep:3000"})).await;
    assert_eq!(task(&node, &first).await.0, 404);
    let fourth = submit(&node, json!({"input": "sleep:3000"})).await;
    assert_eq!(task(&node, &second).await.0, 404);
    // With every kept task unfinished, a new one is refused.
    let (status, body) = node.post("/tasks", &json!({"input": "x"})).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "overloaded");

    // Each finishes, is readable for keep_results_ms, then is forgotten.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_done = [false, false];
    let mut forgotten = [false, false];
    while forgotten != [true, true] {
        for (index, id) in [&third, &fourth].into_iter().enumerate() {
            let (status, body) = task(&node, id).await;
            match status {
                200 if body["state"] == "succeeded" => seen_done[index] = true,
                200 => assert_ne!(body["state"], "failed", "{body}"),
                404 => forgotten[index] = true,
                _ => panic!("{status} {body}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "finished tasks kept past keep_results_ms"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen_done, [true, true], "each was readable once finished");
}

#[tokio::test]
async fn the_bytes_the_kept_tasks_take_are_bounded() {
    // Each task below takes a little over 2,000 bytes: two fit, a third makes room.
    let node = node_with_slow_plugin(json!({"max_kept_bytes": 6_000}));
    let input = |fill: char| fill.to_string().repeat(2_000);
    let first = submit(&node, json!({"input": input('a')})).await;
    until_state(&node, &first, "succeeded").await;
    let second = submit(&node, json!({"input": input('b')})).await;
    until_state(&node, &second, "succeeded").await;
    let third = submit(&node, json!({"input": input('c')})).await;
    assert_eq!(task(&node, &first).await.0, 404, "the oldest is forgotten");
    assert_eq!(task(&node, &second).await.0, 200);
    until_state(&node, &third, "succeeded").await;

    // A task larger than the bound even with every finished one forgotten is refused, and
    // nothing is forgotten for it.
    let (status, body) = node
        .post("/tasks", &json!({"input": "d".repeat(7_000)}))
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "overloaded");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("tasks.max_kept_bytes")),
        "{body}"
    );
    for kept in [&second, &third] {
        assert_eq!(task(&node, kept).await.0, 200);
    }
}

#[tokio::test]
async fn the_task_commands_run_wait_show_and_list() {
    let node = TestNode::start();
    let sphere = |args: &[&str]| node.cli(args);

    let (ok, output, errors) = sphere(&["task", "run", "--wait", "hello"]);
    assert!(ok, "{errors}");
    assert_eq!(output.trim(), "world");

    let (ok, id, errors) = sphere(&["task", "run", "--id", "cli-1", "echo me"]);
    assert!(ok, "{errors}");
    assert_eq!(id.trim(), "cli-1");
    until_state(&node, "cli-1", "succeeded").await;
    let (ok, status, errors) = sphere(&["task", "status", "cli-1"]);
    assert!(ok, "{errors}");
    let status: Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(status["output"], "echo me");

    let (ok, table, errors) = sphere(&["task", "ls"]);
    assert!(ok, "{errors}");
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("cli-1") && table.contains("succeeded"),
        "{table}"
    );

    // A task that fails makes --wait fail with the node's error.
    let (ok, _, errors) = sphere(&["task", "run", "--wait", "--plugin", "nope", "x"]);
    assert!(!ok);
    assert!(errors.contains("plugin_not_found"), "{errors}");
}

//! Several real plugin processes per node, in Rust, Python and Node.js, and plugins that
//! misbehave: routing, supervision, health, limits.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{
    NodeOptions, TestNode, children_of, eventually, hello_plugin, is_alive, merge,
    misbehaving_plugin, node_with_plugins, plugins_config, python_stubs, repo_root, signal,
};

/// Returns the `GET /plugins` entry of plugin `name`.
async fn plugin_status(node: &TestNode, name: &str) -> Value {
    let (status, body) = node.call(Method::GET, "/plugins", "").await;
    assert_eq!(status, 200, "{body}");
    body["plugins"]
        .as_array()
        .expect("plugins list")
        .iter()
        .find(|plugin| plugin["name"] == name)
        .unwrap_or_else(|| panic!("no plugin {name} in {body}"))
        .clone()
}

/// Polls `GET /plugins` until plugin `name` has `health`, for up to 10 s.
async fn wait_for_health(node: &TestNode, name: &str, health: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = plugin_status(node, name).await;
        if status["health"] == health {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "plugin {name} never became {health}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(node: &TestNode, task: Value) -> (u16, Value) {
    node.post("/task", &task).await
}

fn csv_stats_plugin() -> Value {
    json!({
        "name": "csv-stats",
        "command": "python3",
        "args": ["plugin.py"],
        "working_dir": repo_root().join("plugins/python-csv-stats"),
        "env": {"PYTHONPATH": python_stubs()},
    })
}

fn word_count_plugin() -> Value {
    let directory = repo_root().join("plugins/node-word-count");
    assert!(
        directory.join("node_modules/@grpc/grpc-js").exists(),
        "the Node.js example's packages are missing: run scripts/test-all (npm ci in {})",
        directory.display()
    );
    json!({
        "name": "word-count",
        "command": "node",
        "args": ["index.js"],
        "working_dir": directory,
    })
}

#[tokio::test]
async fn tasks_are_routed_to_plugins_in_rust_python_and_node() {
    let provider = node_with_plugins(vec![
        hello_plugin(),
        csv_stats_plugin(),
        word_count_plugin(),
    ]);
    let requester = TestNode::start();
    let target = provider.target();

    let (status, body) = run(&requester, json!({"target": target, "input": "hello"})).await;
    assert_eq!(
        (status, body["output"].clone()),
        (200, json!("world")),
        "{body}"
    );
    assert_eq!(body["plugin"], "hello", "the first entry is the default");

    let csv = "city,population,area\nLyon,522250,47.87\nNantes,320732,65.19\nLille,236234,34.51\n";
    let (status, body) = run(
        &requester,
        json!({"target": target, "plugin": "csv-stats", "input": csv}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let stats: Value =
        serde_json::from_str(body["output"].as_str().expect("text output")).expect("JSON output");
    assert_eq!(stats["rows"], 3);
    assert_eq!(stats["columns"]["population"]["max"], 522250.0);
    assert_eq!(stats["columns"]["population"]["median"], 320732.0);
    assert_eq!(stats["columns"]["city"]["type"], "text");
    assert_eq!(stats["columns"]["city"]["distinct"], 3);

    let text = "The cat saw the other cat. THE END";
    let (status, body) = run(
        &requester,
        json!({"target": target, "plugin": "word-count", "input": text}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let counts: Value =
        serde_json::from_str(body["output"].as_str().expect("text output")).expect("JSON output");
    assert_eq!(counts["words"], 8);
    assert_eq!(counts["top"][0], json!(["the", 3]));
    assert_eq!(counts["top"][1], json!(["cat", 2]));

    // A plugin's refusal of its input is the requester's problem: 422.
    let (status, body) = run(
        &requester,
        json!({"target": target, "plugin": "csv-stats", "input": "only a header\n"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (422, json!("task_rejected")),
        "{body}"
    );

    let (status, body) = run(
        &requester,
        json!({"target": target, "plugin": "nope", "input": "x"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "plugin_not_found");
    assert_eq!(
        body["error"]["plugins"],
        json!(["hello", "csv-stats", "word-count"])
    );

    let csv_stats = plugin_status(&provider, "csv-stats").await;
    assert_eq!(csv_stats["health"], "serving");
    assert_eq!(csv_stats["version"], "1.0.0");
    assert_eq!(csv_stats["input_content_type"], "text/csv");
    assert_eq!(
        csv_stats["max_concurrency"], 8,
        "lowered to what Describe allows"
    );
    assert_eq!(csv_stats["succeeded"], 1);
    assert_eq!(csv_stats["failed"], 1);
    assert_eq!(csv_stats["managed"], true);
}

#[tokio::test]
async fn a_killed_plugin_is_restarted_while_other_plugins_keep_answering() {
    let node = node_with_plugins(vec![hello_plugin(), misbehaving_plugin("flaky", json!({}))]);
    let (status, body) = run(&node, json!({"plugin": "flaky", "input": "pid"})).await;
    assert_eq!(status, 200, "{body}");
    let first_pid: u32 = body["output"]
        .as_str()
        .expect("pid")
        .parse()
        .expect("number");

    signal(first_pid, libc::SIGKILL);
    // The other plugin answers throughout; the killed one comes back with a new process.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let second_pid = loop {
        let (status, body) = run(&node, json!({"plugin": "hello", "input": "hello"})).await;
        assert_eq!(
            (status, body["output"].clone()),
            (200, json!("world")),
            "{body}"
        );
        let (status, body) = run(&node, json!({"plugin": "flaky", "input": "pid"})).await;
        if status == 200 {
            let pid: u32 = body["output"]
                .as_str()
                .expect("pid")
                .parse()
                .expect("number");
            if pid != first_pid {
                break pid;
            }
        } else {
            assert_eq!(body["error"]["code"], "plugin_unavailable", "{body}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the plugin was not restarted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(is_alive(second_pid));
    let status = plugin_status(&node, "flaky").await;
    assert!(status["restarts"].as_u64() >= Some(1), "{status}");
    assert_eq!(status["pid"], second_pid);
}

#[tokio::test]
async fn deadlines_crashes_garbage_and_sizes_get_clear_errors() {
    let node = node_with_plugins(vec![misbehaving_plugin(
        "bad",
        json!({"timeout_ms": 1500, "max_input_bytes": 1000, "max_output_bytes": 1000}),
    )]);
    let cases = [
        (
            json!({"input": "sleep:5000", "timeout_ms": 300}),
            504,
            "plugin_timeout",
        ),
        (json!({"input": "sleep:5000"}), 504, "plugin_timeout"),
        (json!({"input": "garbage"}), 502, "plugin_failed"),
        (json!({"input": "reject"}), 422, "task_rejected"),
        (json!({"input": "big:5000"}), 413, "payload_too_large"),
        (json!({"input": "x".repeat(2000)}), 413, "payload_too_large"),
    ];
    for (task, expected_status, expected_code) in cases {
        let started = std::time::Instant::now();
        let (status, body) = run(&node, task.clone()).await;
        assert_eq!(
            (status, body["error"]["code"].as_str().unwrap_or("")),
            (expected_status, expected_code),
            "{task}: {body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{task} was not cut off"
        );
    }
    // The plugin survived all of that and still answers.
    let (status, body) = run(&node, json!({"input": "still here"})).await;
    assert_eq!(
        (status, body["output"].clone()),
        (200, json!("still here")),
        "{body}"
    );

    // A plugin that dies in the middle of a task fails that task, not the node; it comes back.
    let (status, body) = run(&node, json!({"input": "exit"})).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        ["plugin_unavailable", "plugin_failed"]
            .contains(&body["error"]["code"].as_str().unwrap_or("")),
        "{body}"
    );
    assert!(
        eventually_async(|| async {
            let status = plugin_status(&node, "bad").await;
            status["restarts"].as_u64() >= Some(1) && status["health"] == "serving"
        })
        .await,
        "the plugin did not come back"
    );
    let (status, body) = run(&node, json!({"input": "back"})).await;
    assert_eq!(
        (status, body["output"].clone()),
        (200, json!("back")),
        "{body}"
    );
}

#[tokio::test]
async fn what_a_plugin_prints_reaches_the_node_log_tagged_with_its_name() {
    let node = node_with_plugins(vec![misbehaving_plugin("chatty", json!({}))]);
    let (status, body) = run(&node, json!({"input": "say:a line from the plugin"})).await;
    assert_eq!(
        (status, body["output"].clone()),
        (200, json!("said")),
        "{body}"
    );
    assert!(
        eventually(Duration::from_secs(5), || node
            .log()
            .lines()
            .any(|line| line.contains("a line from the plugin")
                && line.contains("plugin=\"chatty\""))),
        "the plugin's line is not in the node log:\n{}",
        node.log()
    );
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let node = node_with_plugins(vec![misbehaving_plugin(
        "slow",
        json!({"max_concurrency": 1, "queue_size": 1}),
    )]);
    let running = tokio::spawn({
        let url = node.url("/task");
        async move {
            reqwest::Client::new()
                .post(url)
                .body(r#"{"input": "sleep:1500"}"#)
                .send()
                .await
        }
    });
    let status =
        eventually_async(|| async { plugin_status(&node, "slow").await["in_flight"] == 1 }).await;
    assert!(status, "the first task never started");
    let queued = tokio::spawn({
        let url = node.url("/task");
        async move {
            reqwest::Client::new()
                .post(url)
                .body(r#"{"input": "sleep:10"}"#)
                .send()
                .await
        }
    });
    assert!(
        eventually_async(|| async { plugin_status(&node, "slow").await["queued"] == 1 }).await,
        "the second task never queued"
    );

    let response = node
        .http()
        .post(node.url("/task"))
        .body(r#"{"input": "one too many"}"#)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 429);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok()),
        Some("1")
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "overloaded");

    for task in [running, queued] {
        let response = task.await.expect("joined").expect("answered");
        assert_eq!(response.status(), 200);
    }
}

async fn eventually_async<F, Fut>(mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn an_unhealthy_plugin_leaves_rotation_and_comes_back() {
    let health_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(health_file.path(), "SERVING").expect("write");
    let node = node_with_plugins(vec![misbehaving_plugin(
        "flapping",
        json!({"env": {"HEALTH_FILE": health_file.path()}}),
    )]);
    for _ in 0..2 {
        std::fs::write(health_file.path(), "NOT_SERVING").expect("write");
        wait_for_health(&node, "flapping", "not_serving").await;
        let (status, body) = run(&node, json!({"input": "x"})).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (502, json!("plugin_unavailable")),
            "{body}"
        );
        let (_, health) = node.call(Method::GET, "/health", "").await;
        assert_eq!(health["status"], "degraded");

        std::fs::write(health_file.path(), "SERVING").expect("write");
        wait_for_health(&node, "flapping", "serving").await;
        let (status, body) = run(&node, json!({"input": "x"})).await;
        assert_eq!(
            (status, body["output"].clone()),
            (200, json!("x")),
            "{body}"
        );
        let (_, health) = node.call(Method::GET, "/health", "").await;
        assert_eq!(health["status"], "ok");
    }
}

#[tokio::test]
async fn ten_mib_inputs_pass_through_every_example_plugin_and_a_plugin_limit_is_413() {
    const TEN_MIB: usize = 10 * 1024 * 1024;
    let provider = node_with_plugins(vec![
        hello_plugin(),
        csv_stats_plugin(),
        word_count_plugin(),
        // Keeps gRPC's default 4 MiB receive limit.
        misbehaving_plugin("small", json!({})),
    ]);
    let requester = TestNode::start();
    let target = provider.target();

    let echoed = "e".repeat(TEN_MIB);
    let (status, body) = run(&requester, json!({"target": target, "input": echoed})).await;
    assert_eq!(status, 200, "{}", body["error"]);
    assert_eq!(body["output"].as_str().map(str::len), Some(TEN_MIB));

    let mut csv = String::from("n,word\n");
    let mut rows = 0;
    while csv.len() < TEN_MIB {
        csv.push_str(&format!("{rows},w{}\n", rows % 7));
        rows += 1;
    }
    let (status, body) = run(
        &requester,
        json!({"target": target, "plugin": "csv-stats", "input": csv}),
    )
    .await;
    assert_eq!(status, 200, "{}", body["error"]);
    let stats: Value =
        serde_json::from_str(body["output"].as_str().expect("text output")).expect("JSON output");
    assert_eq!(stats["rows"], rows);

    let text = "lorem ipsum ".repeat(TEN_MIB / 12 + 1);
    let (status, body) = run(
        &requester,
        json!({"target": target, "plugin": "word-count", "input": text}),
    )
    .await;
    assert_eq!(status, 200, "{}", body["error"]);
    let counts: Value =
        serde_json::from_str(body["output"].as_str().expect("text output")).expect("JSON output");
    assert_eq!(counts["words"], 2 * (TEN_MIB / 12 + 1));

    let (status, body) = run(
        &requester,
        json!({"target": target, "plugin": "small", "input": "s".repeat(5 * 1024 * 1024)}),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("cannot take a task this large"),
        "{body}"
    );
}

#[tokio::test]
async fn a_plugin_whose_workers_all_hang_is_stopped_and_restarted() {
    let mut config = plugins_config(vec![misbehaving_plugin(
        "stuck",
        json!({"env": {"MAX_WORKERS": "2"}, "timeout_ms": 600_000}),
    )]);
    merge(
        &mut config,
        json!({"plugins": {"unhealthy_restart_ms": 2_000}}),
    );
    let node = TestNode::start_with(NodeOptions {
        config: Some(config),
        ..NodeOptions::default()
    });
    let (status, body) = run(&node, json!({"input": "pid"})).await;
    assert_eq!(status, 200, "{body}");
    let first_pid: u32 = body["output"].as_str().expect("pid").parse().expect("pid");

    // Both workers hang: the plugin is alive but answers nothing, health checks included.
    let hung: Vec<_> = (0..2)
        .map(|_| {
            let client = node.http().clone();
            let url = node.url("/task");
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({"input": "sleep:600000"}))
                    .send()
                    .await
                    .expect("answered")
                    .status()
                    .as_u16()
            })
        })
        .collect();

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let restarted = loop {
        let status = plugin_status(&node, "stuck").await;
        if status["restarts"].as_u64() >= Some(1) && status["health"] == "serving" {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stuck plugin was never restarted: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(restarted["pid"], first_pid, "{restarted}");
    assert!(
        eventually(Duration::from_secs(10), || !is_alive(first_pid)),
        "the stuck process was killed"
    );
    assert!(
        node.log().contains("failed every health check"),
        "{}",
        node.log()
    );
    for task in hung {
        let status = task.await.expect("joined");
        assert_eq!(
            status, 502,
            "a task of the killed process fails instead of hanging"
        );
    }
    let (status, body) = run(&node, json!({"input": "pid"})).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["output"], first_pid.to_string());
}

#[tokio::test]
async fn a_plugin_describing_itself_under_another_name_is_refused() {
    let node = node_with_plugins(vec![misbehaving_plugin(
        "expected",
        json!({"env": {"PLUGIN_NAME": "impostor"}}),
    )]);
    let status = wait_for_health(&node, "expected", "rejected").await;
    let problem = status["problem"].as_str().unwrap_or("");
    assert!(
        problem.contains("impostor") && problem.contains("expected"),
        "{status}"
    );
    let (status, body) = run(&node, json!({"input": "x"})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (502, json!("plugin_unavailable")),
        "{body}"
    );
}

#[tokio::test]
async fn a_plugin_someone_else_runs_is_used_by_address() {
    let mut plugin = std::process::Command::new("python3")
        .arg(repo_root().join("node/tests/plugins/misbehaving.py"))
        .env("PYTHONPATH", python_stubs())
        .env("PLUGIN_NAME", "outside")
        .env("SPHERE_PLUGIN_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(plugin.stdout.take().expect("piped")),
        &mut line,
    )
    .expect("handshake line");
    let address = line
        .trim()
        .strip_prefix("SPHERE_PLUGIN_ADDR=")
        .expect("handshake")
        .to_owned();

    let node = TestNode::start_with(NodeOptions {
        config: Some(json!({"plugins": {"entries": [{"address": format!("http://{address}")}]}})),
        ..NodeOptions::default()
    });
    let (status, body) = run(&node, json!({"input": "from outside"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], "from outside");
    assert_eq!(body["plugin"], "outside", "the name comes from Describe");
    let status = plugin_status(&node, "outside").await;
    assert_eq!(status["managed"], false);
    let _ = plugin.kill();
    let _ = plugin.wait();
}

#[tokio::test]
async fn no_plugin_process_outlives_a_killed_node() {
    let mut node = node_with_plugins(vec![
        hello_plugin(),
        csv_stats_plugin(),
        word_count_plugin(),
    ]);
    let plugins = children_of(node.pid());
    assert_eq!(plugins.len(), 3, "three plugin processes: {plugins:?}");
    node.kill9();
    for pid in plugins {
        assert!(
            eventually(Duration::from_secs(5), || !is_alive(pid)),
            "plugin process {pid} outlived the killed node"
        );
    }
}

#[tokio::test]
async fn memory_and_cpu_limits_are_applied_to_a_managed_plugin() {
    let memory_limit: u64 = 1024 * 1024 * 1024;
    let node = node_with_plugins(vec![misbehaving_plugin(
        "limited",
        json!({"memory_limit_bytes": memory_limit, "cpu_limit_percent": 50}),
    )]);
    let status = wait_for_health(&node, "limited", "serving").await;
    let pid = status["pid"].as_u64().expect("pid");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroups");
    // The node says how each limit is enforced on this machine; check that it really is.
    match status["limits"]["memory"].as_str() {
        Some("cgroup") => {
            let limit =
                cgroup_setting(&cgroups, "memory", &["memory.max", "memory.limit_in_bytes"]);
            assert_eq!(limit, memory_limit.to_string());
        }
        Some("rlimit") => {
            let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
            let address_space = limits
                .lines()
                .find(|line| line.starts_with("Max address space"))
                .expect("address space line");
            assert!(
                address_space.contains(&memory_limit.to_string()),
                "{address_space}"
            );
        }
        other => panic!("memory limit not enforced: {other:?} in {status}"),
    }
    match status["limits"]["cpu"].as_str() {
        Some("cgroup") => {
            let quota = cgroup_setting(&cgroups, "cpu", &["cpu.max", "cpu.cfs_quota_us"]);
            assert!(quota == "50000" || quota == "50000 100000", "{quota}");
        }
        Some("not_enforced") => eprintln!("this machine offers no cgroup for the CPU limit"),
        other => panic!("unexpected CPU enforcement {other:?} in {status}"),
    }
}

/// Reads the first of `files` that exists in the plugin's own cgroup for `controller`, from the
/// process's `/proc/<pid>/cgroup` listing.
fn cgroup_setting(listing: &str, controller: &str, files: &[&str]) -> String {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let dir = listing
        .lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let relative = path.trim_start_matches('/');
            if controllers.is_empty() {
                Some(root.join(relative))
            } else if controllers.split(',').any(|name| name == controller) {
                Some(root.join(controllers).join(relative))
            } else {
                None
            }
        })
        .unwrap_or_else(|| panic!("no {controller} cgroup in {listing}"));
    assert!(
        dir.file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("sphere-")),
        "the plugin is not in a cgroup of its own: {}",
        dir.display()
    );
    files
        .iter()
        .find_map(|file| std::fs::read_to_string(dir.join(file)).ok())
        .unwrap_or_else(|| panic!("none of {files:?} in {}", dir.display()))
        .trim()
        .to_owned()
}

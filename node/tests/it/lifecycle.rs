//! Start-up, configuration, shutdown and the plugin child process.

use std::time::Duration;

use crate::harness::{
    NodeOptions, TestNode, children_of, eventually, is_alive, run, sphere, sphere_node,
    stderr_of_failure,
};

#[tokio::test]
async fn sigterm_stops_the_node_with_status_0_and_no_orphan_plugin() {
    let mut node = TestNode::start();
    let plugins = children_of(node.pid());
    assert_eq!(plugins.len(), 1, "the node runs its demo plugin as a child");
    let status = node.terminate();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        node.log()
    );
    assert!(
        eventually(Duration::from_secs(5), || !is_alive(plugins[0])),
        "plugin process {} outlived the node",
        plugins[0]
    );
}

#[tokio::test]
async fn sigkill_of_the_node_leaves_no_orphan_plugin() {
    let mut node = TestNode::start();
    let plugins = children_of(node.pid());
    assert_eq!(plugins.len(), 1);
    node.kill9();
    assert!(
        eventually(Duration::from_secs(5), || !is_alive(plugins[0])),
        "plugin process {} outlived the killed node",
        plugins[0]
    );
}

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The allocator's settings in main.rs are read (their symbol is the one jemalloc looks for):
/// exactly one background thread returns an idle node's freed memory (bench/memory.sh).
#[tokio::test]
async fn the_allocator_gives_memory_back_from_one_background_thread() {
    let node = TestNode::start();
    let background = |names: &[String]| {
        names
            .iter()
            .filter(|name| name.as_str() == "jemalloc_bg_thd")
            .count()
    };
    assert!(
        eventually(Duration::from_secs(5), || background(&thread_names(
            node.pid()
        )) > 0),
        "no jemalloc background thread among {:?}",
        thread_names(node.pid())
    );
    assert_eq!(background(&thread_names(node.pid())), 1);
}

#[tokio::test]
async fn health_reports_identity_and_plugin() {
    let node = TestNode::start();
    let (status, body) = node.call(reqwest::Method::GET, "/health", "").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["node_id"], node.node_id);
    assert_eq!(body["plugins"][0]["name"], "hello");
    assert_eq!(body["plugins"][0]["health"], "serving");
}

#[test]
fn a_bad_configuration_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.json");
    std::fs::write(&config, r#"{"http": {"listen": "not-an-address"}}"#).expect("write");
    let stderr = stderr_of_failure(
        sphere()
            .args(["node", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path()),
    );
    assert!(stderr.contains("http.listen"), "{stderr}");

    let stderr = stderr_of_failure(
        sphere()
            .args(["node", "--data-dir"])
            .arg(dir.path())
            .env("SPHERE_STORAGE__CHUNK_SIZE_BYTES", "3"),
    );
    assert!(stderr.contains("storage.chunk_size_bytes"), "{stderr}");
}

#[test]
fn unknown_variables_are_warnings_and_errors_stay_short_with_rust_backtrace() {
    let node = TestNode::start_with(crate::harness::NodeOptions {
        environment: vec![
            ("SPHERE_ENV".to_owned(), "prod".to_owned()),
            ("RUST_BACKTRACE".to_owned(), "1".to_owned()),
        ],
        ..Default::default()
    });
    assert!(
        eventually(Duration::from_secs(5), || node
            .log()
            .contains("ignoring environment variable SPHERE_ENV")),
        "{}",
        node.log()
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("node.json");
    std::fs::write(&config, r#"{"storage": {"replica": 3}}"#).expect("write config");
    let stderr = stderr_of_failure(
        sphere()
            .args(["node", "--data-dir"])
            .arg(dir.path())
            .arg("--config")
            .arg(&config)
            .env("RUST_BACKTRACE", "1"),
    );
    assert!(
        stderr.contains("node.json") && stderr.contains("replica"),
        "{stderr}"
    );
    assert!(
        stderr.lines().count() <= 3 && !stderr.contains("backtrace"),
        "{stderr}"
    );

    let stderr = stderr_of_failure(
        sphere()
            .args(["file", "ls", "--node", "http://127.0.0.1:1"])
            .env("RUST_BACKTRACE", "1"),
    );
    assert!(
        stderr.starts_with("error: ") && stderr.lines().count() <= 3,
        "{stderr}"
    );
}

#[test]
fn keygen_writes_the_identity_a_node_then_uses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("my.key");
    let output = run(sphere().args(["keygen", "--out"]).arg(&key_file));
    assert!(output.status.success());
    let node_id = String::from_utf8_lossy(&output.stdout).trim().to_owned();

    let node = TestNode::start_with(crate::harness::NodeOptions {
        environment: vec![(
            "SPHERE_KEY_FILE".to_owned(),
            key_file.to_string_lossy().into_owned(),
        )],
        ..Default::default()
    });
    assert_eq!(node.node_id, node_id);

    let again = run(sphere().args(["keygen", "--out"]).arg(&key_file));
    assert!(!again.status.success(), "keygen must not replace a key");
}

#[tokio::test]
async fn an_upload_in_flight_at_sigterm_finishes_before_the_node_exits() {
    let mut owner = TestNode::start();
    let provider = TestNode::start();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let upload = owner
        .http()
        .put(owner.url(&format!("/files/slow?target={}", provider.target())))
        .body(reqwest::Body::wrap_stream(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        ))
        .send();
    let upload = tokio::spawn(upload);
    sender
        .send(Ok(vec![1u8; 1024 * 1024]))
        .await
        .expect("first part");
    tokio::time::sleep(Duration::from_millis(200)).await;

    crate::harness::signal(owner.pid(), libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sender
        .send(Ok(vec![2u8; 1024 * 1024]))
        .await
        .expect("second part");
    drop(sender);

    let response = upload
        .await
        .expect("joined")
        .expect("the in-flight upload is answered");
    assert_eq!(response.status(), 201);
    let stored: serde_json::Value = response.json().await.expect("json");
    assert_eq!(stored["size"], 2 * 1024 * 1024);
    let status = tokio::task::spawn_blocking(move || {
        let status = owner.terminate();
        (status, owner)
    })
    .await
    .expect("joined");
    assert!(status.0.success(), "exit status {:?}", status.0);
}

#[tokio::test]
async fn a_crashed_plugin_fails_its_tasks_but_not_the_node() {
    let node = TestNode::start();
    let health = |strict: bool| {
        let args: &[&str] = if strict {
            &["health", "--strict"]
        } else {
            &["health"]
        };
        let (ok, stdout, _) = node.cli(args);
        (ok, stdout)
    };
    let (healthy, line) = health(true);
    assert!(healthy, "{line}");
    assert_eq!(line.trim(), format!("ok {} (hello serving)", node.node_id));
    let plugins = children_of(node.pid());
    assert_eq!(plugins.len(), 1);
    crate::harness::signal(plugins[0], libc::SIGKILL);
    assert!(eventually(Duration::from_secs(5), || !is_alive(plugins[0])));

    let (status, body) = node
        .post("/task", &serde_json::json!({"input": "hello"}))
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "plugin_unavailable");
    let (status, body) = node.call(reqwest::Method::GET, "/health", "").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["plugins"][0]["name"], "hello");
    assert_ne!(body["plugins"][0]["health"], "serving");
    // `sphere health` (the image's health check) passes while the node answers, unless told
    // to fail on a plugin down too.
    let (healthy, line) = health(false);
    assert!(healthy && line.starts_with("degraded"), "{line}");
    assert!(!health(true).0);
    let (_refusing, nobody) = crate::harness::refusing_address();
    let status = run(sphere().args(["health", "--node", &format!("http://{nobody}")])).status;
    assert!(!status.success(), "nobody answers there");
}

#[tokio::test]
async fn get_node_tells_identity_addresses_uptime_and_the_operators_labels() {
    let node = TestNode::start_with(NodeOptions {
        config: Some(serde_json::json!({"labels": {"region": "eu", "tier": "gold"}})),
        environment: vec![("SPHERE_LABELS__GPU".to_owned(), "a100".to_owned())],
        ..NodeOptions::default()
    });
    let (status, answer) = node.call(reqwest::Method::GET, "/node", "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["node_id"], node.node_id.as_str());
    assert_eq!(answer["grpc_address"], node.grpc.to_string().as_str());
    assert_eq!(answer["http_address"], node.http.to_string().as_str());
    assert_eq!(answer["token_required"], false);
    assert_eq!(answer["payments_enabled"], false);
    assert!(answer["uptime_seconds"].as_u64().is_some(), "{answer}");
    assert_eq!(
        answer["labels"],
        serde_json::json!({"gpu": "a100", "region": "eu", "tier": "gold"})
    );
}

#[test]
fn a_bad_label_flag_stops_the_node_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stderr = stderr_of_failure(sphere_node(dir.path()).args(["--label", "Region=eu"]));
    assert!(
        stderr.contains("labels") && stderr.contains("Region"),
        "{stderr}"
    );
}

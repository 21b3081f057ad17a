//! `GET /metrics`: Prometheus text whose values move with the work the node does.

use serde_json::json;

use crate::harness::{NodeOptions, TestNode};

pub async fn scrape(node: &TestNode) -> String {
    let response = node
        .http()
        .get(node.url("/metrics"))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/plain"),
        "{:?}",
        response.headers()
    );
    response.text().await.expect("text")
}

/// Returns the value of the sample of `name` whose labels include every one of `labels`.
pub fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .map(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|value| value.parse::<f64>().ok())
                .expect("a sample ends with its value")
        })
        .sum()
}

#[tokio::test]
async fn metrics_count_requests_tasks_and_connections() {
    let node = TestNode::start();
    let before = scrape(&node).await;
    for _ in 0..3 {
        let (status, body) = node.post("/task", &json!({"input": "hello"})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = node
        .call(
            reqwest::Method::GET,
            "/files/0123456789abcdef0123456789abcdef",
            "",
        )
        .await;
    assert_eq!(status, 404);
    let after = scrape(&node).await;

    let tasks = |metrics: &str| {
        sample(
            metrics,
            "sphere_tasks_total",
            &["plugin=\"hello\"", "outcome=\"ok\""],
        )
    };
    assert_eq!(tasks(&after) - tasks(&before), 3.0, "{after}");
    let task_requests = |metrics: &str| {
        sample(
            metrics,
            "sphere_http_requests_total",
            &["route=\"/task\"", "method=\"POST\"", "status=\"200\""],
        )
    };
    assert_eq!(
        task_requests(&after) - task_requests(&before),
        3.0,
        "{after}"
    );
    // Routes are patterns, not paths: one series for every file ID.
    assert_eq!(
        sample(
            &after,
            "sphere_http_requests_total",
            &["route=\"/files/{name_or_id}\"", "status=\"404\""]
        ),
        1.0,
        "{after}"
    );
    assert!(
        sample(
            &after,
            "sphere_http_request_duration_seconds_count",
            &["route=\"/task\""]
        ) >= 3.0,
        "{after}"
    );
    assert!(
        sample(
            &after,
            "sphere_task_duration_seconds_count",
            &["plugin=\"hello\""]
        ) >= 3.0,
        "{after}"
    );
    assert!(
        sample(&after, "sphere_connections_open", &["listener=\"http\""]) >= 1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "sphere_plugin_up", &["plugin=\"hello\""]),
        1.0,
        "{after}"
    );
    assert!(
        sample(&after, "sphere_storage_capacity_bytes", &[]) > 0.0,
        "{after}"
    );
}

#[tokio::test]
async fn tasks_asked_of_other_nodes_are_counted_by_peer_and_outcome() {
    let provider = TestNode::start();
    let requester = TestNode::start_with(NodeOptions {
        config: Some(json!({ "peers": [provider.target()] })),
        ..NodeOptions::default()
    });
    for _ in 0..2 {
        let (status, body) = requester
            .post(
                "/task",
                &json!({"target": provider.target(), "input": "hello"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // An address from a request, not a peer: counted, without a series of its own.
    let (status, body) = requester
        .post("/task", &json!({"target": "127.0.0.1:1", "input": "hello"}))
        .await;
    assert_eq!(status, 502, "{body}");

    let metrics = scrape(&requester).await;
    let peer = format!("target=\"{}\"", provider.target());
    assert_eq!(
        sample(
            &metrics,
            "sphere_requested_tasks_total",
            &[&peer, "plugin=\"hello\"", "outcome=\"ok\""]
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "sphere_requested_tasks_total",
            &["target=\"other\"", "outcome=\"target_unreachable\""]
        ),
        1.0,
        "{metrics}"
    );
    assert!(!metrics.contains("127.0.0.1:1\""), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "sphere_requested_task_duration_seconds_count",
            &[&peer]
        ),
        2.0
    );
    // The provider ran them.
    assert_eq!(
        sample(
            &scrape(&provider).await,
            "sphere_tasks_total",
            &["outcome=\"ok\""]
        ),
        2.0
    );
}

#[tokio::test]
async fn label_values_a_stranger_chooses_cannot_grow_the_metrics_without_bound() {
    let node = TestNode::start();
    assert_eq!(node.call(reqwest::Method::GET, "/node", "").await.0, 200);
    // Each request has an HTTP method of its own, and the node answers each, unauthenticated
    // routes included; its method would be a new series every time.
    let client = node.http();
    for i in 0..1100 {
        let method = reqwest::Method::from_bytes(format!("M{i}").as_bytes()).expect("method");
        let response = client
            .request(method, node.url("/task"))
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), 405);
    }
    let metrics = scrape(&node).await;
    let series = metrics
        .lines()
        .filter(|line| line.starts_with("sphere_http_requests_total{"))
        .count();
    assert!((900..=1001).contains(&series), "{series} series");
    assert!(
        sample(
            &metrics,
            "sphere_http_requests_total",
            &["route=\"other\"", "method=\"other\"", "status=\"other\""]
        ) >= 99.0,
        "{metrics}"
    );
    // Series seen before the bound keep counting under their own labels.
    assert_eq!(node.call(reqwest::Method::GET, "/node", "").await.0, 200);
    assert_eq!(
        sample(
            &scrape(&node).await,
            "sphere_http_requests_total",
            &["route=\"/node\"", "method=\"GET\"", "status=\"200\""]
        ),
        2.0
    );
}

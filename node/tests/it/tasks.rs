//! Tasks between real nodes, through the real demo plugin.

use serde_json::json;

use crate::harness::TestNode;

#[tokio::test]
async fn readme_task_flow_between_two_nodes() {
    let requester = TestNode::start();
    let target = TestNode::start();

    let (status, body) = requester
        .post(
            "/task",
            &json!({"target": target.target(), "id": "1", "input": "hello"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "1");
    assert_eq!(body["output"], "world");
    assert_eq!(body["plugin"], "hello");
    // The node that ran it, as the link to it proved.
    assert_eq!(body["node"], target.node_id.as_str());

    let (status, body) = requester
        .post(
            "/task",
            &json!({"target": target.target(), "id": "2", "input": "anything else"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], "anything else");
}

#[tokio::test]
async fn task_without_target_runs_on_this_node_and_binary_travels_as_base64() {
    let node = TestNode::start();
    let (status, body) = node.post("/task", &json!({"input": "hello"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], "world");
    assert_eq!(body["node"], node.node_id.as_str());
    assert!(
        body["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{body}"
    );

    // The demo plugin echoes: bytes that are not UTF-8 come back as base64.
    let binary = [0xff, 0x00, 0xfe];
    let (status, body) = node
        .post(
            "/task",
            &json!({"target": node.target(), "input_base64": crate::harness::base64(&binary)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output_base64"], crate::harness::base64(&binary));
    assert!(body.get("output").is_none(), "{body}");
}

/// Returns the first line of `node`'s log that names `path`, waiting for it a little: the line
/// is written once the answer is sent, so it may trail the answer.
fn request_line(node: &TestNode, path: &str) -> Option<String> {
    let find = || {
        node.log()
            .lines()
            .find(|line| line.contains(&format!("path=\"{path}\"")))
            .map(str::to_owned)
    };
    crate::harness::eventually(std::time::Duration::from_secs(2), || find().is_some());
    find()
}

#[tokio::test]
async fn failed_requests_are_logged_and_the_others_at_debug() {
    let node = TestNode::start();
    let (status, _) = node.post("/task", &json!({"input": "hello"})).await;
    assert_eq!(status, 200);
    // No input: refused.
    let (status, _) = node.post("/task", &json!({"plugin": "hello"})).await;
    assert_eq!(status, 400);
    let line = request_line(&node, "/task").expect("the failed request is logged");
    assert!(
        line.contains("status=400") && line.contains("error=") && line.contains("duration_ms="),
        "{line}"
    );

    let verbose = TestNode::start_with(crate::harness::NodeOptions {
        environment: vec![("RUST_LOG".into(), "info,sphere_node::http=debug".into())],
        ..Default::default()
    });
    let (status, _) = verbose.post("/task", &json!({"input": "hello"})).await;
    assert_eq!(status, 200);
    let line = request_line(&verbose, "/task").expect("logged at debug");
    assert!(
        line.contains("status=200") && line.contains("duration_ms="),
        "{line}"
    );
}

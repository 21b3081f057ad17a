//! Bad input and failing targets: each case checks the status and the error code.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::harness::{NodeOptions, TestNode, base64};

fn assert_error(status: u16, body: &serde_json::Value, expected_status: u16, expected_code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"]["code"], expected_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn bad_requests_get_400_404_405_with_codes() {
    let node = TestNode::start();
    let provider = node.target();
    let cases: Vec<(Method, &str, String, u16, &str)> = vec![
        (
            Method::POST,
            "/task",
            "{\"input\": ".to_owned(),
            400,
            "invalid_json",
        ),
        (Method::POST, "/task", String::new(), 400, "invalid_json"),
        (
            Method::POST,
            "/task",
            "[1, 2]".to_owned(),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/task",
            json!({"input": 5}).to_string(),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/task",
            json!({"target": provider}).to_string(),
            400,
            "missing_field",
        ),
        (
            Method::POST,
            "/task",
            json!({"target": "not an address", "input": "hello"}).to_string(),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/task",
            json!({"input_base64": "%%%"}).to_string(),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/file",
            json!({"target": provider, "name": "x", "data": "not base64!"}).to_string(),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/file",
            json!({"target": provider, "name": "x"}).to_string(),
            400,
            "missing_field",
        ),
        (
            Method::POST,
            "/file",
            json!({"name": "x", "data": base64(b"x")}).to_string(),
            503,
            "not_enough_providers",
        ),
        (
            Method::GET,
            "/file",
            json!({"target": provider}).to_string(),
            400,
            "missing_field",
        ),
        (
            Method::GET,
            "/file",
            json!({"id": "0123456789abcdef0123456789abcdef"}).to_string(),
            404,
            "file_not_found",
        ),
        (
            Method::GET,
            "/file/../../etc/passwd",
            String::new(),
            404,
            "route_not_found",
        ),
        (
            Method::GET,
            "/file/nonsense",
            String::new(),
            404,
            "file_not_found",
        ),
        (
            Method::GET,
            "/files/0123456789abcdef0123456789abcdef",
            String::new(),
            404,
            "file_not_found",
        ),
        (
            Method::PUT,
            "/files/name",
            "data".to_owned(),
            503,
            "not_enough_providers",
        ),
        (
            Method::POST,
            "/file",
            json!({"targets": [], "name": "x", "data": base64(b"x")}).to_string(),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/file",
            json!({"target": provider, "replicas": 2, "name": "x", "data": base64(b"x")})
                .to_string(),
            400,
            "invalid_field",
        ),
        (
            Method::DELETE,
            "/files/0123456789abcdef0123456789abcdef",
            String::new(),
            404,
            "file_not_found",
        ),
        (
            Method::GET,
            "/nowhere",
            String::new(),
            404,
            "route_not_found",
        ),
        (
            Method::DELETE,
            "/task",
            String::new(),
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/files/%ff",
            String::new(),
            400,
            "invalid_field",
        ),
        (
            Method::GET,
            "/file/x?target=a&target=b",
            String::new(),
            400,
            "invalid_field",
        ),
        (
            Method::PUT,
            "/files/name?replicas=many",
            "data".to_owned(),
            400,
            "invalid_field",
        ),
    ];
    for (method, path, body, expected_status, expected_code) in cases {
        let (status, answer) = node.call(method.clone(), path, &body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str().unwrap_or("")),
            (expected_status, expected_code),
            "{method} {path} {body}: {answer}"
        );
        assert_error(status, &answer, expected_status, expected_code);
    }
}

#[tokio::test]
async fn bodies_over_the_configured_limit_get_413_and_nothing_is_stored() {
    let node = TestNode::start_with(NodeOptions {
        environment: vec![(
            "SPHERE_HTTP__MAX_JSON_BODY_BYTES".to_owned(),
            "1024".to_owned(),
        )],
        ..NodeOptions::default()
    });
    let big = base64(&vec![7u8; 4096]);
    let (status, body) = node
        .post(
            "/file",
            &json!({"target": node.target(), "name": "big", "data": big}),
        )
        .await;
    assert_error(status, &body, 413, "payload_too_large");
    assert!(
        crate::harness::files_under(&node.data_dir.join("chunks"))
            .iter()
            .all(|path| path.starts_with(node.data_dir.join("chunks/tmp"))),
        "a refused upload left chunks behind"
    );

    // A file stored by streaming is fine, but too big to come back as JSON: 413 with a pointer.
    let response = node
        .http()
        .put(node.url(&format!("/files/big?target={}", node.target())))
        .body(vec![1u8; 4096])
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 201);
    let stored: serde_json::Value = response.json().await.expect("json");
    let id = stored["id"].as_str().expect("id");
    let (status, body) = node.call(Method::GET, &format!("/file/{id}"), "").await;
    assert_error(status, &body, 413, "payload_too_large");
    let response = node
        .http()
        .get(node.url(&format!("/files/{id}")))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.bytes().await.expect("body").len(), 4096);
}

#[tokio::test]
async fn an_unreachable_target_is_502() {
    let node = TestNode::start();
    let (_refusing, closed_address) = crate::harness::refusing_address();
    let closed_address = closed_address.to_string();

    let (status, body) = node
        .post(
            "/task",
            &json!({"target": closed_address, "input": "hello"}),
        )
        .await;
    assert_error(status, &body, 502, "target_unreachable");
    let (status, body) = node
        .post(
            "/file",
            &json!({"target": closed_address, "name": "x", "data": base64(b"x")}),
        )
        .await;
    assert_error(status, &body, 502, "target_unreachable");
}

#[tokio::test]
async fn a_target_that_never_answers_is_504() {
    let node = TestNode::start();
    // Accepts connections and never says a word: a hung peer.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_address = silent.local_addr().expect("address").to_string();
    let _held = std::thread::spawn(move || {
        let mut connections = Vec::new();
        for connection in silent.incoming().take(4).flatten() {
            connections.push(connection);
        }
        std::thread::sleep(Duration::from_secs(30));
    });

    let started = std::time::Instant::now();
    let (status, body) = node
        .post(
            "/task",
            &json!({"target": silent_address, "input": "hello", "timeout_ms": 1000}),
        )
        .await;
    assert_error(status, &body, 504, "target_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the deadline was not applied"
    );
}

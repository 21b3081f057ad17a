//! An acknowledged file survives SIGKILL of either node.

use serde_json::json;

use crate::harness::{TestNode, base64};

#[tokio::test]
async fn an_acknowledged_file_survives_sigkill_of_the_provider() {
    let owner = TestNode::start();
    let mut provider = TestNode::start();
    let contents: Vec<u8> = (0..2_500_000u32).map(|index| (index % 253) as u8).collect();
    let (status, stored) = owner
        .post(
            "/file",
            &json!({"target": provider.target(), "name": "durable", "data": base64(&contents)}),
        )
        .await;
    assert_eq!(status, 200, "{stored}");
    let id = stored["id"].as_str().expect("id").to_owned();

    provider.kill9();
    let (status, body) = owner
        .call(reqwest::Method::GET, &format!("/file/{id}"), "")
        .await;
    assert_eq!(status, 502, "the provider is down: {body}");
    assert_eq!(body["error"]["code"], "target_unreachable");

    provider.restart();
    let (status, read) = owner
        .call(reqwest::Method::GET, &format!("/file/{id}"), "")
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["data"], base64(&contents));
}

#[tokio::test]
async fn an_acknowledged_file_survives_sigkill_of_the_owner() {
    let mut owner = TestNode::start();
    let provider = TestNode::start();
    let (status, stored) = owner
        .post(
            "/file",
            &json!({"target": provider.target(), "name": "mine", "data": base64(b"owner's bytes")}),
        )
        .await;
    assert_eq!(status, 200, "{stored}");
    let id = stored["id"].as_str().expect("id").to_owned();
    let node_id = owner.node_id.clone();

    owner.kill9();
    owner.restart();
    assert_eq!(
        owner.node_id, node_id,
        "the key file gives the same identity"
    );
    let (status, read) = owner
        .call(reqwest::Method::GET, &format!("/file/{id}"), "")
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["data"], base64(b"owner's bytes"));
}

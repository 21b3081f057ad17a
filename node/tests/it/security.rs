//! What an eavesdropper or a stranger on the network can try, and what the node refuses (each
//! test is named in SECURITY.md).

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use sphere_proto::v1::storage_service_client::StorageServiceClient;
use sphere_proto::v1::{
    DeleteObjectRequest, GetObjectRequest, ListObjectsRequest, PutObjectRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::harness::{NodeOptions, TestNode, base64};
use crate::proxy::{Captured, GrpcProxy};

async fn storage_client(node: &TestNode) -> StorageServiceClient<tonic::transport::Channel> {
    StorageServiceClient::connect(format!("http://{}", node.target()))
        .await
        .expect("connect")
}

/// Asserts that `result` is a `permission_denied` whose message contains `why`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, why: &str) {
    let status = result.expect_err("the replayed request is refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(why), "{status:?}");
}

/// Returns the index of the proxy that captured a call of `method` about `object_id`, and the
/// call.
fn captured_about(
    proxies: &[GrpcProxy],
    method: &str,
    object_id: &str,
    object_of: impl Fn(&Captured) -> String,
) -> (usize, Captured) {
    proxies
        .iter()
        .enumerate()
        .find_map(|(index, proxy)| {
            proxy
                .captured(method)
                .into_iter()
                .find(|call| object_of(call) == object_id)
                .map(|call| (index, call))
        })
        .unwrap_or_else(|| panic!("no {method} of {object_id} went through the proxies"))
}

#[tokio::test]
async fn requests_captured_on_the_wire_are_refused_by_other_providers_and_after_a_restart() {
    let mut providers = [TestNode::start(), TestNode::start()];
    let proxies = [
        GrpcProxy::start(&providers[0]).await,
        GrpcProxy::start(&providers[1]).await,
    ];
    let owner = TestNode::start_with(NodeOptions {
        config: Some(json!({
            "peers": proxies.iter().map(GrpcProxy::target).collect::<Vec<_>>(),
            "storage": {"replicas": 2},
        })),
        ..NodeOptions::default()
    });
    let contents = b"the only copy of the thesis".repeat(100);
    let (status, stored) = owner
        .post(
            "/file",
            &json!({"name": "thesis", "data": base64(&contents)}),
        )
        .await;
    assert_eq!(status, 200, "{stored}");
    let id = stored["id"].as_str().expect("id").to_owned();
    let other = |index: usize| 1 - index;

    // An upload's header replayed to another provider does not plant an object there.
    let (uploaded_to, upload) = captured_about(&proxies, "PutObject", &id, |call| {
        match call
            .messages::<PutObjectRequest>()
            .first()
            .and_then(|m| m.part.clone())
        {
            Some(sphere_proto::v1::put_object_request::Part::Header(header)) => header.object_id,
            _ => String::new(),
        }
    });
    let replayed = storage_client(&providers[other(uploaded_to)])
        .await
        .put_object(tokio_stream::iter(upload.messages::<PutObjectRequest>()))
        .await;
    assert_refused(replayed, "addressed to provider");

    // A read captured on its way to one provider is refused by the other one.
    let (status, read) = owner.call(Method::GET, &format!("/file/{id}"), "").await;
    assert_eq!(status, 200, "{read}");
    let (read_from, read_request) = captured_about(&proxies, "GetObject", &id, |call| {
        call.message::<GetObjectRequest>().object_id
    });
    let read_request: GetObjectRequest = read_request.message();
    let replayed = storage_client(&providers[other(read_from)])
        .await
        .get_object(read_request.clone())
        .await;
    assert_refused(replayed, "addressed to provider");

    // ... and by its own provider after a restart, which forgot the nonces it had seen.
    providers[read_from].kill9();
    providers[read_from].restart();
    let replayed = storage_client(&providers[read_from])
        .await
        .get_object(read_request)
        .await;
    assert_refused(replayed, "signed before this provider started");

    // A listing captured during recovery is refused by the other provider.
    let (status, recovered) = owner.post("/files/recover", &json!({})).await;
    assert_eq!(status, 200, "{recovered}");
    let (listed_at, listing) = proxies
        .iter()
        .enumerate()
        .find_map(|(index, proxy)| proxy.captured("ListObjects").pop().map(|c| (index, c)))
        .expect("recovery lists objects on the providers");
    let replayed = storage_client(&providers[other(listed_at)])
        .await
        .list_objects(listing.message::<ListObjectsRequest>())
        .await;
    assert_refused(replayed, "addressed to provider");

    // The owner's delete reaches no provider (the proxies drop it) but is captured: replayed to
    // the other provider it is refused and the file survives there.
    for proxy in &proxies {
        proxy.drop_calls_to("DeleteObject");
    }
    let (status, deleted) = owner
        .call(Method::DELETE, &format!("/files/{id}"), "")
        .await;
    assert!(
        status >= 500,
        "the delete could not reach the providers: {deleted}"
    );
    let (deleted_at, delete) = captured_about(&proxies, "DeleteObject", &id, |call| {
        call.message::<DeleteObjectRequest>().object_id
    });
    let delete: DeleteObjectRequest = delete.message();
    let replayed = storage_client(&providers[other(deleted_at)])
        .await
        .delete_object(delete.clone())
        .await;
    assert_refused(replayed, "addressed to provider");
    storage_client(&providers[deleted_at])
        .await
        .delete_object(delete)
        .await
        .expect("the captured delete was genuine: its own provider accepts it");

    let (status, read) = owner.call(Method::GET, &format!("/file/{id}"), "").await;
    assert_eq!(
        status, 200,
        "the other replica still serves the file: {read}"
    );
    assert_eq!(read["data"], base64(&contents));
}

fn open_files_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_neither_stop_the_node_nor_stay_open() {
    const PER_PORT: usize = 2_000;
    let file_limit = sphere_node::connections::raise_file_limit().expect("file limit");
    assert!(
        file_limit >= 2 * PER_PORT as u64 + 256,
        "this test holds {} connections but the hard limit on open files is {file_limit}",
        2 * PER_PORT
    );
    // About 1,000 such connections used to exhaust a limit of 1,024 open files.
    let node = TestNode::start_with(NodeOptions {
        file_limit: Some(1024),
        ..NodeOptions::default()
    });
    let flood_started = std::time::Instant::now();
    let mut held = Vec::with_capacity(2 * PER_PORT);
    for index in 0..PER_PORT {
        // Half send nothing, half start a request and never finish it.
        for (address, unfinished) in [
            (node.http, &b"GET /health HTTP/1.1\r\nHost: sphere\r\n"[..]),
            (node.grpc, &b"PRI * HTTP/2.0\r\n"[..]),
        ] {
            let mut stream = tokio::net::TcpStream::connect(address)
                .await
                .expect("the node accepts connections");
            if index % 2 == 1 {
                // The node may already have closed it to make room.
                let _ = stream.write_all(unfinished).await;
            }
            held.push(stream);
        }
    }

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let started = std::time::Instant::now();
    let health = client
        .get(node.url("/health"))
        .send()
        .await
        .expect("/health answers during the flood");
    assert_eq!(health.status(), 200);
    let health_took = started.elapsed();
    let started = std::time::Instant::now();
    let task = client
        .post(node.url("/task"))
        .json(&json!({"target": node.target(), "input": "hello"}))
        .send()
        .await
        .expect("a task through the gRPC port answers during the flood");
    assert_eq!(task.status(), 200);
    let answer: serde_json::Value = task.json().await.expect("JSON");
    assert_eq!(answer["output"], "world", "{answer}");
    eprintln!(
        "during the flood: /health took {health_took:?}, a task {:?}",
        started.elapsed()
    );

    let closed_by_node = held.into_iter().map(|mut stream| async move {
        let mut buffer = [0u8; 256];
        // Bytes the node sends first (its HTTP/2 settings) are read past: only the close counts.
        while let Ok(read) = stream.read(&mut buffer).await {
            if read == 0 {
                break;
            }
        }
    });
    let remaining = Duration::from_secs(60).saturating_sub(flood_started.elapsed());
    tokio::time::timeout(remaining, futures_util::future::join_all(closed_by_node))
        .await
        .expect("the node closed every half-open connection within a minute");
    assert!(
        open_files_of(node.pid()) < 200,
        "the node still holds {} files",
        open_files_of(node.pid())
    );
    assert!(
        !node.log().contains("Too many open files"),
        "the node ran out of files:\n{}",
        node.log()
    );
}

#[tokio::test]
async fn a_rest_api_beyond_loopback_requires_the_token_from_the_data_directory() {
    let node = TestNode::start_with(NodeOptions {
        http_listen: Some("0.0.0.0:0".parse().expect("address")),
        ..NodeOptions::default()
    });
    let token_file = node.data_dir.join("api.token");
    let token = std::fs::read_to_string(&token_file).expect("the node wrote its token");
    let token = token.trim();
    assert!(token.len() >= 32, "{token:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "only the owner may read the token: {mode:o}"
        );
    }

    let client = reqwest::Client::new();
    let health = client
        .get(node.url("/health"))
        .send()
        .await
        .expect("answers");
    assert_eq!(health.status(), 200, "health checks need no token");
    for (authorization, problem) in [
        (None, "needs `Authorization: Bearer"),
        (Some("Bearer not-the-token"), "wrong"),
        (Some(token), "needs `Authorization: Bearer"),
    ] {
        for (method, path) in [
            (Method::GET, "/files"),
            (Method::POST, "/task"),
            (Method::GET, "/nowhere"),
        ] {
            let mut request = client.request(method.clone(), node.url(path));
            if let Some(authorization) = authorization {
                request = request.header("authorization", authorization);
            }
            let response = request.send().await.expect("answers");
            assert_eq!(response.status(), 401, "{method} {path}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let body: serde_json::Value = response.json().await.expect("JSON");
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains(problem),
                "{body}"
            );
        }
    }
    let (status, body) = {
        let response = client
            .post(node.url("/task"))
            .bearer_auth(token)
            .json(&json!({"input": "hello"}))
            .send()
            .await
            .expect("answers");
        let status = response.status();
        (
            status,
            response.json::<serde_json::Value>().await.expect("JSON"),
        )
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], "world");

    // The CLI finds the token in the data directory, or takes it as --token.
    let sphere = |extra: &[&str]| {
        crate::harness::run(
            crate::harness::sphere()
                .args(["file", "ls", "--node", &node.url("")])
                .args(extra)
                .env_remove("SPHERE_HTTP__TOKEN"),
        )
    };
    let data_dir = node.data_dir.to_string_lossy().into_owned();
    let output = sphere(&["--data-dir", &data_dir]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = sphere(&["--data-dir", "/nonexistent", "--token", token]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = sphere(&["--data-dir", "/nonexistent"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("unauthorized"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_clients_connecting_at_once_is_served() {
    const CLIENTS: usize = 400;
    let node = TestNode::start();
    // Every client connects and asks at the same moment, as `curl -Z` does: for an instant,
    // far more connections are pending than `max_pending`.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let start = std::sync::Arc::clone(&start);
            let address = node.http;
            tokio::spawn(async move {
                start.wait().await;
                let mut stream = tokio::net::TcpStream::connect(address).await?;
                stream
                    .write_all(b"GET /health HTTP/1.1\r\nHost: sphere\r\nConnection: close\r\n\r\n")
                    .await?;
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).await?;
                Ok::<_, std::io::Error>(answer)
            })
        })
        .collect();
    let mut served = 0;
    for client in clients {
        let answer = client.await.expect("joined");
        if answer.is_ok_and(|bytes| bytes.starts_with(b"HTTP/1.1 200")) {
            served += 1;
        }
    }
    assert_eq!(served, CLIENTS, "every client of the burst is answered");
}

#[tokio::test]
async fn plaintext_grpc_is_refused_where_grpc_plaintext_says_never_and_nodes_still_link() {
    use sphere_proto::v1::GetInfoRequest;
    use sphere_proto::v1::node_service_client::NodeServiceClient;

    let open = TestNode::start();
    let closed = TestNode::start_with(NodeOptions {
        config: Some(json!({"grpc": {"plaintext": "never"}})),
        ..NodeOptions::default()
    });
    // Plaintext from loopback: served by default, refused by `never`.
    let mut client = NodeServiceClient::connect(format!("http://{}", open.target()))
        .await
        .expect("connect");
    let info = client
        .get_info(GetInfoRequest {})
        .await
        .expect("plaintext from loopback is served by default");
    assert_eq!(info.into_inner().node_id, open.node_id);
    let refused = async {
        NodeServiceClient::connect(format!("http://{}", closed.target()))
            .await
            .map_err(|error| error.to_string())?
            .get_info(GetInfoRequest {})
            .await
            .map_err(|status| status.to_string())
    }
    .await;
    assert!(refused.is_err(), "{refused:?}");
    // Nodes link over TLS whatever grpc.plaintext says.
    let (status, answer) = open
        .post(
            "/task",
            &json!({"target": closed.target(), "input": "hello"}),
        )
        .await;
    assert_eq!(
        (status, &answer["output"]),
        (200, &json!("world")),
        "{answer}"
    );
}

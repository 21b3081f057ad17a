//! Files spread over several real provider nodes: replicas, failover, audits, repair, owner-only
//! access, capacity, deletion and recovery from the key file alone.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sphere_node::auth;
use sphere_node::identity::NodeIdentity;
use sphere_proto::v1::put_object_request::Part;
use sphere_proto::v1::storage_service_client::StorageServiceClient;
use sphere_proto::v1::{DeleteObjectRequest, GetObjectRequest, ObjectHeader, PutObjectRequest};

use crate::harness::{NodeOptions, TestNode, base64, files_under};
use crate::proxy::GrpcProxy;

/// Starts `count` provider nodes.
fn providers(count: usize) -> Vec<TestNode> {
    (0..count).map(|_| TestNode::start()).collect()
}

/// Starts an owner whose peers are `providers`, auditing every 200 ms and counting a replica lost
/// after one second of failures.
fn owner_of(providers: &[TestNode], replicas: u32) -> TestNode {
    TestNode::start_with(NodeOptions {
        config: Some(json!({
            "peers": providers.iter().map(TestNode::target).collect::<Vec<_>>(),
            "storage": {"replicas": replicas, "audit_interval_ms": 200, "lost_after_ms": 1000},
        })),
        ..NodeOptions::default()
    })
}

fn pattern(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|index| (index as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn store(owner: &TestNode, body: Value) -> Value {
    let (status, stored) = owner.post("/file", &body).await;
    assert_eq!(status, 200, "{stored}");
    stored
}

async fn read_back(owner: &TestNode, id: &str) -> (u16, Value) {
    owner.call(Method::GET, &format!("/file/{id}"), "").await
}

async fn file_entry(owner: &TestNode, id: &str) -> Value {
    let (status, listing) = owner.call(Method::GET, "/files", "").await;
    assert_eq!(status, 200, "{listing}");
    listing["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|file| file["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

fn replica_targets(entry: &Value) -> Vec<String> {
    entry["replicas"]
        .as_array()
        .map(|replicas| {
            replicas
                .iter()
                .map(|r| r["target"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Returns the chunk files a node keeps for others.
fn chunk_files(node: &TestNode) -> Vec<std::path::PathBuf> {
    files_under(&node.data_dir.join("chunks"))
        .into_iter()
        .filter(|path| !path.starts_with(node.data_dir.join("chunks/tmp")))
        .collect()
}

#[tokio::test]
async fn a_1_gib_file_at_two_replicas_reads_back_identical() {
    const BLOCK: usize = 1 << 20;
    const BLOCKS: usize = 1024;
    let providers = providers(2);
    let owner = owner_of(&providers, 2);
    let block = |index: usize| {
        let mut block = pattern(BLOCK, (index % 251) as u8);
        block[..8].copy_from_slice(&(index as u64).to_le_bytes());
        block
    };
    let mut expected = Sha256::new();
    for index in 0..BLOCKS {
        expected.update(block(index));
    }
    let expected = expected.finalize();
    let upload = futures_util::stream::iter(0..BLOCKS)
        .map(move |index| Ok::<_, std::io::Error>(block(index)));
    let response = owner
        .http()
        .put(owner.url("/files/big.bin?replicas=2"))
        .body(reqwest::Body::wrap_stream(upload))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 201);
    let stored: Value = response.json().await.expect("json");
    assert_eq!(stored["size"], (BLOCK * BLOCKS) as u64);
    assert_eq!(
        stored["replicas"].as_array().map(Vec::len),
        Some(2),
        "{stored}"
    );
    let id = stored["id"].as_str().expect("id").to_owned();

    // Read back from each replica in turn.
    for provider in &providers {
        let response = owner
            .http()
            .get(owner.url(&format!("/files/{id}?target={}", provider.target())))
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 200);
        let mut received = Sha256::new();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            received.update(chunk.expect("streams"));
        }
        assert_eq!(
            received.finalize(),
            expected,
            "differs when read from {}",
            provider.target()
        );
    }
}

#[tokio::test]
async fn a_provider_killed_during_upload_leaves_nothing_that_looks_stored() {
    let mut providers = providers(2);
    let owner = owner_of(&providers, 2);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    let upload = tokio::spawn(
        owner
            .http()
            .put(owner.url(&format!(
                "/files/doomed?targets={},{}",
                providers[0].target(),
                providers[1].target()
            )))
            .body(reqwest::Body::wrap_stream(
                tokio_stream::wrappers::ReceiverStream::new(receiver),
            ))
            .send(),
    );
    for part in 0..6u8 {
        sender.send(Ok(pattern(1 << 20, part))).await.expect("send");
    }
    wait_until(
        "the provider has received chunks",
        Duration::from_secs(10),
        || {
            let count = chunk_files(&providers[1]).len();
            async move { count > 0 }
        },
    )
    .await;
    providers[1].kill9();
    for part in 6..12u8 {
        if sender.send(Ok(pattern(1 << 20, part))).await.is_err() {
            break;
        }
    }
    drop(sender);
    let response = upload.await.expect("joined").expect("answered");
    assert_eq!(response.status(), 502, "the upload must fail clearly");
    let body: Value = response.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );

    let (_, listing) = owner.call(Method::GET, "/files", "").await;
    assert_eq!(listing["files"], json!([]), "a failed upload is not listed");
    // The surviving provider keeps nothing of it: no object, and its chunks are collected.
    let survivor = &providers[0];
    wait_until(
        "the partial chunks are removed",
        Duration::from_secs(10),
        || {
            let count = chunk_files(survivor).len();
            async move { count == 0 }
        },
    )
    .await;
    let (_, storage) = survivor.call(Method::GET, "/storage", "").await;
    assert_eq!(storage["used_bytes"], 0, "{storage}");

    // The killed provider's disk holds the chunks it had written, which no object uses: once
    // restarted, it sweeps them, so what its disk holds is what it counts.
    let killed_with = chunk_files(&providers[1]).len();
    assert!(killed_with > 0, "the killed provider had written chunks");
    providers[1].restart();
    let restarted = &providers[1];
    // The sweep logs once it has removed the files: wait for both.
    wait_until(
        "the restarted provider sweeps the chunks of the killed upload",
        Duration::from_secs(20),
        || {
            let swept = chunk_files(restarted).is_empty()
                && restarted
                    .log()
                    .contains("removed chunk files no object uses");
            async move { swept }
        },
    )
    .await;
    let (_, storage) = restarted.call(Method::GET, "/storage", "").await;
    assert_eq!(storage["used_bytes"], 0, "{storage}");
}

#[tokio::test]
async fn an_upload_whose_client_goes_away_leaves_no_chunk_behind() {
    let provider = TestNode::start();
    let owner_key = NodeIdentity::generate();
    let mut client = StorageServiceClient::connect(format!("http://{}", provider.target()))
        .await
        .expect("connect");
    let header = auth::sign(
        &owner_key,
        &provider.node_id,
        ObjectHeader {
            object_id: "0123456789abcdef0123456789abcdef".to_owned(),
            kind: "data".to_owned(),
            ..ObjectHeader::default()
        },
    );
    let (sender, receiver) = tokio::sync::mpsc::channel::<PutObjectRequest>(64);
    sender
        .send(PutObjectRequest {
            part: Some(Part::Header(header)),
        })
        .await
        .expect("header");
    let upload = tokio::spawn(async move {
        client
            .put_object(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
    });
    for index in 0..32u8 {
        sender
            .send(PutObjectRequest {
                part: Some(Part::Chunk(pattern(256 * 1024, index).into())),
            })
            .await
            .expect("chunk");
    }
    wait_until(
        "the provider has written chunks",
        Duration::from_secs(10),
        || {
            let count = chunk_files(&provider).len();
            async move { count > 0 }
        },
    )
    .await;
    // The client goes away in the middle, with writes in flight.
    upload.abort();
    drop(sender);
    wait_until(
        "the chunks of the abandoned upload are removed",
        Duration::from_secs(10),
        || {
            let count = chunk_files(&provider).len();
            async move { count == 0 }
        },
    )
    .await;
    let (_, storage) = provider.call(Method::GET, "/storage", "").await;
    assert_eq!(storage["used_bytes"], 0, "{storage}");
}

#[tokio::test]
async fn a_killed_provider_is_replaced_and_reads_go_on() {
    let mut providers = providers(3);
    let owner = owner_of(&providers, 2);
    let contents = pattern(3 * 1024 * 1024 + 17, 9);
    let stored = store(
        &owner,
        json!({"name": "photos.tar", "data": base64(&contents)}),
    )
    .await;
    let id = stored["id"].as_str().expect("id").to_owned();
    let holders = replica_targets(&stored);
    assert_eq!(holders.len(), 2, "{stored}");

    let victim_index = providers
        .iter()
        .position(|p| p.target() == holders[0])
        .expect("a holder");
    let victim = providers[victim_index].target();
    providers[victim_index].kill9();

    // The file reads at once, from the other replica.
    let (status, read) = read_back(&owner, &id).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["data"], base64(&contents));

    // Audits find the replica gone; after the grace period it is repaired on the third node.
    wait_until(
        "the lost replica is replaced",
        Duration::from_secs(30),
        || {
            let owner = &owner;
            let id = id.clone();
            let victim = victim.clone();
            async move {
                let entry = file_entry(owner, &id).await;
                let targets = replica_targets(&entry);
                targets.len() == 2
                    && !targets.contains(&victim)
                    && entry["replicas"]
                        .as_array()
                        .is_some_and(|r| r.iter().all(|r| r["health"] != "lost"))
            }
        },
    )
    .await;
    let (status, read) = read_back(&owner, &id).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["data"], base64(&contents));
}

/// The health `owner` shows for file `id`'s replica at `target`.
async fn replica_health(owner: &TestNode, id: &str, target: &str) -> String {
    let entry = file_entry(owner, id).await;
    entry["replicas"]
        .as_array()
        .and_then(|replicas| replicas.iter().find(|replica| replica["target"] == target))
        .map(|replica| replica["health"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| format!("not a replica any more: {entry}"))
}

/// Waits until `owner` shows file `id`'s replica at `target` with `health`.
async fn wait_for_health(
    owner: &TestNode,
    id: &str,
    target: &str,
    health: &str,
    timeout: Duration,
) {
    wait_until(
        &format!("the replica at {target} is {health}"),
        timeout,
        || async move { replica_health(owner, id, target).await == health },
    )
    .await;
}

/// An owner counts only the audit failures it watched. Its providers stop with it (as a whole
/// deployment goes down), it stays stopped past the grace period, and it starts before one of
/// them: that replica is not lost at once, and is healthy again when its provider returns.
#[tokio::test]
async fn a_replica_is_not_lost_for_the_time_its_owner_was_stopped() {
    const LOST_AFTER: Duration = Duration::from_secs(8);
    let mut providers = providers(3);
    let mut owner = TestNode::start_with(NodeOptions {
        config: Some(json!({
            "peers": providers.iter().map(TestNode::target).collect::<Vec<_>>(),
            "storage": {
                "replicas": 2,
                "audit_interval_ms": 200,
                "lost_after_ms": LOST_AFTER.as_millis() as u64,
            },
        })),
        ..NodeOptions::default()
    });
    let stored = store(
        &owner,
        json!({"name": "a", "data": base64(&pattern(5000, 3))}),
    )
    .await;
    let id = stored["id"].as_str().expect("id").to_owned();
    let holders = replica_targets(&stored);
    let stopped = holders[0].clone();
    let stopped_index = providers
        .iter()
        .position(|p| p.target() == stopped)
        .expect("a holder");

    providers[stopped_index].kill9();
    wait_for_health(&owner, &id, &stopped, "failing", Duration::from_secs(10)).await;
    owner.kill9();
    tokio::time::sleep(LOST_AFTER + Duration::from_secs(1)).await;

    // Without counting only what it watched, the owner's first audit would find the replica
    // failing for longer than the grace, and repair it onto the third provider.
    owner.restart();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(replica_health(&owner, &id, &stopped).await, "failing");
    providers[stopped_index].restart();
    // The returned provider's replica passes its audits.
    wait_for_health(&owner, &id, &stopped, "ok", Duration::from_secs(6)).await;
    let entry = file_entry(&owner, &id).await;
    assert_eq!(
        replica_targets(&entry),
        holders,
        "not repaired elsewhere: {entry}"
    );
}

#[tokio::test]
async fn a_corrupted_chunk_is_caught_by_audits_and_repaired_and_never_read() {
    let providers = providers(3);
    let owner = owner_of(&providers, 2);
    let contents = pattern(300_000, 3);
    let stored = store(&owner, json!({"name": "doc", "data": base64(&contents)})).await;
    let id = stored["id"].as_str().expect("id").to_owned();
    let holders = replica_targets(&stored);
    let victim = providers
        .iter()
        .find(|p| p.target() == holders[0])
        .expect("a holder");

    // Overwrite the data chunk (the larger of the two objects' chunks) with other bytes.
    let mut chunks = chunk_files(victim);
    chunks.sort_by_key(|path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0));
    let data_chunk = chunks.last().expect("a chunk");
    let length = std::fs::metadata(data_chunk).expect("meta").len() as usize;
    std::fs::write(data_chunk, pattern(length, 200)).expect("corrupt");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Reads never return wrong bytes while the damage is there.
        let (status, read) = owner
            .call(
                Method::GET,
                &format!("/file/{id}?target={}", victim.target()),
                "",
            )
            .await;
        assert_eq!(status, 200, "the other replica serves the read: {read}");
        assert_eq!(read["data"], base64(&contents));
        let entry = file_entry(&owner, &id).await;
        let targets = replica_targets(&entry);
        if targets.len() == 2 && !targets.contains(&victim.target()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the damaged replica was never replaced: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = crate::metrics::scrape(&owner).await;
    let sample = crate::metrics::sample;
    assert!(
        sample(&metrics, "sphere_audits_total", &["result=\"failed\""]) >= 1.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "sphere_audits_total", &["result=\"ok\""]) >= 1.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "sphere_repairs_total", &[]) >= 1.0,
        "{metrics}"
    );
    // The providers counted what they stored (two replicas and the repair copy), read from disk
    // for audits, and served.
    let mut bytes = [0.0; 3];
    for provider in &providers {
        let metrics = crate::metrics::scrape(provider).await;
        for (total, direction) in bytes.iter_mut().zip(["stored", "read", "served"]) {
            *total += sample(
                &metrics,
                "sphere_provider_bytes_total",
                &[&format!("direction=\"{direction}\"")],
            );
        }
    }
    let [stored, read, served] = bytes;
    assert!(stored >= 3.0 * 300_000.0, "{bytes:?}");
    assert!(read > 0.0, "{bytes:?}");
    assert!(served >= 300_000.0, "{bytes:?}");
}

#[tokio::test]
async fn a_dropped_replica_whose_delete_failed_is_deleted_later() {
    let providers = providers(3);
    let mut proxies = Vec::new();
    for provider in &providers {
        proxies.push(GrpcProxy::start(provider).await);
    }
    let owner = TestNode::start_with(NodeOptions {
        config: Some(json!({
            "peers": proxies.iter().map(GrpcProxy::target).collect::<Vec<_>>(),
            "storage": {"replicas": 2, "audit_interval_ms": 200, "lost_after_ms": 1000},
        })),
        ..NodeOptions::default()
    });
    let contents = pattern(300_000, 4);
    let stored = store(&owner, json!({"name": "doc", "data": base64(&contents)})).await;
    let id = stored["id"].as_str().expect("id").to_owned();
    let holders = replica_targets(&stored);
    let victim = proxies
        .iter()
        .position(|proxy| proxy.target() == holders[0])
        .expect("a holder");

    // The victim's copy goes bad, and it cannot be reached for deletes.
    proxies[victim].drop_calls_to("DeleteObject");
    let mut chunks = chunk_files(&providers[victim]);
    chunks.sort_by_key(|path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0));
    let data_chunk = chunks.last().expect("a chunk");
    let length = std::fs::metadata(data_chunk).expect("meta").len() as usize;
    std::fs::write(data_chunk, pattern(length, 201)).expect("corrupt");

    wait_until(
        "the bad replica is replaced",
        Duration::from_secs(30),
        || {
            let owner = &owner;
            let id = &id;
            let victim = proxies[victim].target();
            async move {
                let targets = replica_targets(&file_entry(owner, id).await);
                targets.len() == 2 && !targets.contains(&victim)
            }
        },
    )
    .await;
    assert!(
        !proxies[victim].captured("DeleteObject").is_empty(),
        "repair tried to delete the dropped copy"
    );
    assert!(
        !chunk_files(&providers[victim]).is_empty(),
        "the delete could not get through"
    );

    // Once the provider can be reached again, the copy is deleted.
    proxies[victim].allow_calls_to("DeleteObject");
    wait_until(
        "the dropped copy is deleted",
        Duration::from_secs(30),
        || {
            let count = chunk_files(&providers[victim]).len();
            async move { count == 0 }
        },
    )
    .await;
    let (_, storage) = providers[victim].call(Method::GET, "/storage", "").await;
    assert_eq!(storage["used_bytes"], 0, "{storage}");
    let (status, read) = read_back(&owner, &id).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["data"], base64(&contents));
}

#[tokio::test]
async fn only_the_owner_may_read_and_a_replayed_request_is_refused() {
    let providers = providers(1);
    let owner = owner_of(&providers, 1);
    let stored = store(
        &owner,
        json!({"name": "secret", "data": base64(b"top secret")}),
    )
    .await;
    let id = stored["id"].as_str().expect("id").to_owned();
    let owner_key = NodeIdentity::load(&owner.data_dir.join("node.key")).expect("owner key");

    let mut client = StorageServiceClient::connect(format!("http://{}", providers[0].target()))
        .await
        .expect("connect");
    let provider_id = providers[0].node_id.clone();
    let read_request = GetObjectRequest {
        object_id: id.clone(),
        auth: None,
        start_chunk: 0,
        voucher: None,
    };
    let signed = auth::sign(&owner_key, &provider_id, read_request.clone());
    let mut stream = client
        .get_object(signed.clone())
        .await
        .expect("the owner may read")
        .into_inner();
    assert!(stream.message().await.expect("chunk").is_some());

    let replayed = client
        .get_object(signed.clone())
        .await
        .expect_err("a replay is refused");
    assert_eq!(
        replayed.code(),
        tonic::Code::PermissionDenied,
        "{replayed:?}"
    );
    assert!(replayed.message().contains("replayed"), "{replayed:?}");

    let mut altered = auth::sign(&owner_key, &provider_id, read_request.clone());
    altered.start_chunk = 1;
    let refused = client
        .get_object(altered)
        .await
        .expect_err("a request altered after signing is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    let stranger = NodeIdentity::generate();
    let foreign = auth::sign(&stranger, &provider_id, read_request.clone());
    let refused = client
        .get_object(foreign)
        .await
        .expect_err("a stranger is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    let mut impersonated = auth::sign(&stranger, &provider_id, read_request);
    impersonated.auth.as_mut().expect("signed").owner = owner_key.node_id();
    let refused = client
        .get_object(impersonated)
        .await
        .expect_err("a forged owner is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    let unsigned = GetObjectRequest {
        object_id: id,
        auth: None,
        start_chunk: 0,
        voucher: None,
    };
    assert_eq!(
        client
            .get_object(unsigned)
            .await
            .expect_err("unsigned")
            .code(),
        tonic::Code::PermissionDenied
    );
}

#[tokio::test]
async fn a_full_provider_refuses_clearly_loses_nothing_and_deleting_frees_space() {
    let provider = TestNode::start_with(NodeOptions {
        environment: vec![(
            "SPHERE_STORAGE__CAPACITY_BYTES".to_owned(),
            (3 << 20).to_string(),
        )],
        ..NodeOptions::default()
    });
    let owner = owner_of(std::slice::from_ref(&provider), 1);
    let first = pattern(2 << 20, 1);
    let stored = store(&owner, json!({"name": "first", "data": base64(&first)})).await;
    let first_id = stored["id"].as_str().expect("id").to_owned();

    let (status, refused) = owner
        .post(
            "/file",
            &json!({"name": "second", "data": base64(&pattern(2 << 20, 2))}),
        )
        .await;
    assert_eq!(status, 507, "{refused}");
    assert_eq!(refused["error"]["code"], "provider_full");
    let (status, read) = read_back(&owner, &first_id).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["data"], base64(&first));
    let (_, listing) = owner.call(Method::GET, "/files", "").await;
    assert_eq!(
        listing["files"].as_array().map(Vec::len),
        Some(1),
        "{listing}"
    );

    let (status, deleted) = owner
        .call(Method::DELETE, &format!("/files/{first_id}"), "")
        .await;
    assert_eq!(status, 200, "{deleted}");
    let (status, _) = read_back(&owner, &first_id).await;
    assert_eq!(status, 404);
    let (_, storage) = provider.call(Method::GET, "/storage", "").await;
    assert_eq!(storage["used_bytes"], 0, "{storage}");
    assert!(
        chunk_files(&provider).is_empty(),
        "deleting removes the chunk files"
    );

    store(
        &owner,
        json!({"name": "second", "data": base64(&pattern(2 << 20, 2))}),
    )
    .await;
}

#[tokio::test]
async fn the_key_file_alone_recovers_every_file() {
    let providers = providers(2);
    let mut owner = owner_of(&providers, 2);
    let mut originals = Vec::new();
    for (name, size) in [("a.txt", 10_000), ("b.bin", 2_500_000)] {
        let contents = pattern(size, size as u8);
        let stored = store(&owner, json!({"name": name, "data": base64(&contents)})).await;
        originals.push((
            stored["id"].as_str().expect("id").to_owned(),
            name,
            contents,
        ));
    }

    owner.kill9();
    std::fs::remove_dir_all(owner.data_dir.join("db")).expect("lose the database");
    owner.restart();
    let (_, listing) = owner.call(Method::GET, "/files", "").await;
    assert_eq!(listing["files"], json!([]), "the database is gone");

    let (status, report) = owner.call(Method::POST, "/files/recover", "").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["files_restored"], 2, "{report}");
    for (id, name, contents) in &originals {
        let entry = file_entry(&owner, id).await;
        assert_eq!(entry["name"], *name);
        assert_eq!(replica_targets(&entry).len(), 2, "{entry}");
        let (status, read) = read_back(&owner, id).await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(read["data"], base64(contents));
    }
}

#[tokio::test]
async fn the_file_commands_put_list_get_and_remove() {
    let providers = providers(2);
    let owner = owner_of(&providers, 2);
    let work = tempfile::tempdir().expect("temp dir");
    let original = work.path().join("holiday photos.bin");
    let contents = pattern(3 * 1024 * 1024 + 5, 42);
    std::fs::write(&original, &contents).expect("write");
    let node = owner.url("");
    let sphere = |args: &[&str]| {
        let output =
            crate::harness::run(crate::harness::sphere().args(args).args(["--node", &node]));
        assert!(
            output.status.success(),
            "sphere {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8")
    };

    let path = original.to_string_lossy().into_owned();
    let id = sphere(&["file", "put", &path]).trim().to_owned();
    assert_eq!(id.len(), 32, "{id:?}");

    let table = sphere(&["file", "ls"]);
    assert!(
        table.contains(&id) && table.contains("holiday photos.bin"),
        "{table}"
    );
    let listing: Value = serde_json::from_str(&sphere(&["file", "ls", "--json"])).expect("JSON");
    assert_eq!(
        listing["files"][0]["replicas"].as_array().map(Vec::len),
        Some(2)
    );

    let copy = work.path().join("copy.bin");
    sphere(&["file", "get", &id, &copy.to_string_lossy()]);
    assert_eq!(std::fs::read(&copy).expect("read"), contents);

    sphere(&["file", "rm", &id]);
    let (status, _) = read_back(&owner, &id).await;
    assert_eq!(status, 404);
    let failed = crate::harness::run(crate::harness::sphere().args([
        "file",
        "get",
        &id,
        &copy.to_string_lossy(),
        "--node",
        &node,
    ]));
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("file_not_found"));
}

#[tokio::test]
async fn a_download_carries_on_from_another_replica_when_its_provider_dies() {
    const SIZE: usize = 64 << 20;
    let mut providers = providers(2);
    let owner = owner_of(&providers, 2);
    let contents = pattern(SIZE, 77);
    let response = owner
        .http()
        .put(owner.url(&format!(
            "/files/movie?targets={},{}",
            providers[0].target(),
            providers[1].target()
        )))
        .body(contents.clone())
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 201);
    let stored: Value = response.json().await.expect("json");
    let id = stored["id"].as_str().expect("id");

    // Start reading from the first provider, take a few bytes, then kill it mid-download.
    let response = owner
        .http()
        .get(owner.url(&format!("/files/{id}?target={}", providers[0].target())))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = Vec::with_capacity(SIZE);
    while received.len() < (1 << 20) {
        received.extend_from_slice(&body.next().await.expect("more").expect("bytes"));
    }
    providers[0].kill9();
    while let Some(chunk) = body.next().await {
        received.extend_from_slice(&chunk.expect("the download carries on"));
    }
    assert_eq!(received.len(), SIZE);
    assert!(received == contents, "the file came back different");
    assert!(
        owner.log().contains("replica failed; trying the next one"),
        "the download never switched replicas, so this test proved nothing:\n{}",
        owner.log()
    );
}

#[tokio::test]
async fn a_file_whose_replicas_are_all_lost_is_listed_lost_and_reads_as_file_lost() {
    let providers = providers(1);
    let owner = owner_of(&providers, 1);
    let name = "report\u{1b}[2J\u{202e}fdp.exe";
    let stored = store(&owner, json!({"name": name, "data": base64(b"soon gone")})).await;
    let id = stored["id"].as_str().expect("id").to_owned();

    // The provider loses the data, as a wiped disk would (here through the owner's own delete).
    let owner_key = NodeIdentity::load(&owner.data_dir.join("node.key")).expect("owner key");
    let mut client = StorageServiceClient::connect(format!("http://{}", providers[0].target()))
        .await
        .expect("connect");
    client
        .delete_object(auth::sign(
            &owner_key,
            &providers[0].node_id,
            DeleteObjectRequest {
                object_id: id.clone(),
                auth: None,
            },
        ))
        .await
        .expect("deleted");

    wait_until(
        "the file is listed as lost",
        Duration::from_secs(30),
        || {
            let owner = &owner;
            let id = &id;
            async move { file_entry(owner, id).await["health"] == "lost" }
        },
    )
    .await;
    let (status, read) = read_back(&owner, &id).await;
    assert_eq!(status, 410, "{read}");
    assert_eq!(read["error"]["code"], "file_lost", "{read}");

    // `sphere file ls` shows it lost, and does not hand the name's escape sequences to the
    // terminal.
    let output = crate::harness::run(crate::harness::sphere().args([
        "file",
        "ls",
        "--node",
        &owner.url(""),
    ]));
    assert!(output.status.success());
    let table = String::from_utf8(output.stdout).expect("UTF-8");
    let row = table
        .lines()
        .find(|line| line.contains(&id))
        .expect("listed");
    assert!(row.contains("lost"), "{row}");
    assert!(row.contains("report\\u{1b}[2J\\u{202e}fdp.exe"), "{row}");
    assert!(
        !table.contains('\u{1b}') && !table.contains('\u{202e}'),
        "{table:?}"
    );
}

//! Membership: nodes that know one member find every other, see the dead, and believe only
//! records signed by the node they name.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{NodeOptions, TestNode, base64};

/// Starts a node that joins the mesh through `seed` (none: the first member).
fn member(seed: Option<&TestNode>) -> TestNode {
    TestNode::start_with(NodeOptions {
        config: Some(json!({
            "mesh": {"bootstrap": seed.map(|seed| vec![seed.target()]).unwrap_or_default()},
            "labels": {"role": if seed.is_some() { "joiner" } else { "seed" }},
        })),
        ..NodeOptions::default()
    })
}

async fn peers(node: &TestNode) -> Vec<Value> {
    let (status, body) = node.call(reqwest::Method::GET, "/peers", "").await;
    assert_eq!(status, 200, "{body}");
    body["peers"].as_array().cloned().unwrap_or_default()
}

/// Returns what `GET /peers/{id}` on `node` says of node `id`.
async fn peer(node: &TestNode, id: &str) -> Value {
    let (status, body) = node
        .call(reqwest::Method::GET, &format!("/peers/{id}"), "")
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Returns the state `node` sees `other` in, if it lists it.
async fn state_of(node: &TestNode, other: &TestNode) -> Option<String> {
    peers(node)
        .await
        .iter()
        .find(|peer| peer["id"] == other.node_id.as_str())
        .and_then(|peer| peer["state"].as_str().map(str::to_owned))
}

/// Polls until every node in `watchers` sees `other` in `state`; returns how long it took.
async fn until_seen(watchers: &[&TestNode], other: &TestNode, state: &str) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    loop {
        let mut all = true;
        for watcher in watchers {
            all &= state_of(watcher, other).await.as_deref() == Some(state);
        }
        if all {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{} is not {state} for every watcher after 30 s",
            other.node_id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ten_members_that_know_one_find_all_see_a_killed_one_dead_and_alive_again() {
    let seed = member(None);
    let mut joiners: Vec<TestNode> = (0..9).map(|_| member(Some(&seed))).collect();
    let mut everyone: Vec<&TestNode> = joiners.iter().collect();
    everyone.push(&seed);

    // Every member lists every other alive, with what its signed record says.
    for node in &everyone {
        for other in &everyone {
            if node.node_id != other.node_id {
                until_seen(&[node], other, "alive").await;
            }
        }
    }
    let seed_entry = peer(&joiners[0], &seed.node_id).await;
    assert_eq!(seed_entry["source"], "mesh");
    assert_eq!(seed_entry["addresses"]["grpc"], seed.target().as_str());
    assert_eq!(
        seed_entry["addresses"]["http"],
        seed.http.to_string().as_str()
    );
    assert_eq!(seed_entry["labels"], json!({"role": "seed"}));
    let hello = &seed_entry["plugins"][0];
    assert_eq!(
        (&hello["name"], &hello["deterministic"], &hello["serving"]),
        (&json!("hello"), &json!(true), &json!(true)),
        "{seed_entry}"
    );
    assert_eq!(
        (&seed_entry["payments"], &seed_entry["prices"]),
        (&json!(false), &Value::Null)
    );
    let capacity = &seed_entry["capacity"];
    for field in ["cpu_cores", "memory_bytes", "disk_bytes", "free_disk_bytes"] {
        assert!(capacity[field].as_u64() > Some(0), "{field}: {seed_entry}");
    }
    assert_eq!(
        seed_entry["load"]["plugins"]["hello"],
        json!({"in_flight": 0, "queued": 0})
    );
    assert!(
        seed_entry["last_seen_ms"]
            .as_u64()
            .is_some_and(|ms| ms < 5_000),
        "{seed_entry}"
    );
    // Round trips are timed from gossip rounds with the seed, which come every few seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !peer(&joiners[0], &seed.node_id).await["rtt_ms"].is_f64() {
        assert!(Instant::now() < deadline, "no round-trip time to the seed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = joiners[0]
        .call(
            reqwest::Method::GET,
            &format!("/peers/0x{}", "ab".repeat(20)),
            "",
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("peer_not_found")),
        "{body}"
    );
    let (status, body) = joiners[0]
        .call(reqwest::Method::GET, "/peers/nobody", "")
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_field")),
        "{body}"
    );

    // Gossip is counted for the operator, by direction and kind of message.
    let metrics = crate::metrics::scrape(&seed).await;
    for direction in ["sent", "received"] {
        for message in ["syn", "syn_ack"] {
            let labels = [
                format!("direction=\"{direction}\""),
                format!("message=\"{message}\""),
            ];
            let labels = [labels[0].as_str(), labels[1].as_str()];
            let bytes = crate::metrics::sample(&metrics, "sphere_gossip_bytes_total", &labels);
            assert!(bytes > 0.0, "gossip bytes {direction} {message}: {bytes}");
        }
    }

    // kill -9: every other member marks it dead (mesh.failure_timeout_ms is 5 s by default).
    let last = joiners.len() - 1;
    let victim = &mut joiners[last];
    victim.kill9();
    let victim_id = victim.node_id.clone();
    let watchers: Vec<&TestNode> = std::iter::once(&seed).chain(&joiners[..last]).collect();
    let took = until_seen(&watchers, &joiners[last], "dead").await;
    eprintln!("a killed member was dead for every other member after {took:?}");

    // Restarted (same key, new generation): alive again, listed once.
    joiners[last].restart();
    let watchers: Vec<&TestNode> = std::iter::once(&seed).chain(&joiners[..last]).collect();
    until_seen(&watchers, &joiners[last], "alive").await;
    let listed = peers(&seed).await;
    assert_eq!(
        listed
            .iter()
            .filter(|peer| peer["id"] == victim_id.as_str())
            .count(),
        1,
        "{listed:?}"
    );
}

#[tokio::test]
async fn a_members_load_shows_the_tasks_it_runs_and_queues() {
    use crate::harness::{misbehaving_plugin, plugins_config};

    let seed = member(None);
    let mut config = plugins_config(vec![misbehaving_plugin(
        "slow",
        json!({"max_concurrency": 1, "queue_size": 4}),
    )]);
    config["mesh"] = json!({"bootstrap": [seed.target()]});
    let worker = TestNode::start_with(NodeOptions {
        config: Some(config),
        ..NodeOptions::default()
    });
    until_seen(&[&seed], &worker, "alive").await;
    let running: Vec<_> = (0..3)
        .map(|_| {
            let request = worker
                .http()
                .post(worker.url("/task"))
                .body(r#"{"input": "sleep:3000"}"#)
                .send();
            tokio::spawn(request)
        })
        .collect();

    // One runs and two wait, as the worker's signed load tells the seed.
    until_load(&seed, &worker, json!({"in_flight": 1, "queued": 2})).await;
    for request in running {
        let response = request.await.expect("joined").expect("answered");
        assert_eq!(response.status(), 200);
    }
    until_load(&seed, &worker, json!({"in_flight": 0, "queued": 0})).await;
}

/// Polls until `watcher` sees `worker`'s load of plugin `slow` as `expected`.
async fn until_load(watcher: &TestNode, worker: &TestNode, expected: Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let load = peer(watcher, &worker.node_id).await["load"]["plugins"]["slow"].clone();
        if load == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "load {load} never became {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_configured_peer_outside_the_mesh_is_asked_who_it_is() {
    let other = TestNode::start();
    let node = TestNode::start_with(NodeOptions {
        config: Some(json!({"mesh": {"enabled": false}, "peers": [other.target()]})),
        ..NodeOptions::default()
    });
    let listed = peer(&node, &other.node_id).await;
    assert_eq!(
        (&listed["source"], &listed["state"]),
        (&json!("configured"), &json!("alive")),
        "{listed}"
    );
    assert_eq!(listed["addresses"]["grpc"], other.target().as_str());
    assert_eq!(listed["plugins"][0]["name"], "hello", "{listed}");
    assert!(listed["rtt_ms"].is_f64(), "{listed}");
}

#[tokio::test]
async fn a_node_restarted_without_bootstrap_finds_the_mesh_from_its_peer_book() {
    let seed = member(None);
    let other = member(Some(&seed));
    let mut joiner = member(Some(&seed));
    until_seen(&[&joiner], &seed, "alive").await;
    until_seen(&[&joiner], &other, "alive").await;

    // Stopped (the peer book is written at shutdown, and every 10 s while running), then
    // started with no bootstrap address and no peers at all.
    assert!(joiner.terminate().success());
    joiner.restart_with_config(Some(json!({"mesh": {"bootstrap": []}})));
    assert!(
        joiner
            .log()
            .contains("joining the mesh seeds=2 from_peer_book=2"),
        "the restarted node joins through the two members of its peer book:\n{}",
        joiner.log()
    );
    until_seen(&[&joiner], &seed, "alive").await;
    until_seen(&[&joiner], &other, "alive").await;
    until_seen(&[&seed, &other], &joiner, "alive").await;
}

#[tokio::test]
async fn a_node_gossiping_a_forged_record_is_never_listed() {
    use sphere_node::api::PeerCapacity;
    use sphere_node::identity::NodeIdentity;
    use sphere_node::mesh::record::RECORD_KEY;
    use sphere_node::mesh::{CLUSTER_ID, PeerRecord, Signed};

    let seed = member(None);
    let genuine = member(Some(&seed));
    until_seen(&[&seed], &genuine, "alive").await;

    // A stranger gossips as the genuine node, with a record it signed itself and an address of
    // its own, and as a node of its own whose record names the genuine node.
    let stranger = NodeIdentity::generate();
    let mut forgers = Vec::new();
    for (gossip_id, record_id) in [
        (genuine.node_id.clone(), genuine.node_id.clone()),
        (stranger.node_id(), genuine.node_id.clone()),
    ] {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port");
        let address = socket.local_addr().expect("address");
        drop(socket);
        let record = PeerRecord {
            node_id: record_id.parse().expect("a node ID"),
            version: "9.9.9".to_owned(),
            grpc_address: address.into(),
            http_address: "127.0.0.1:1".to_owned(),
            labels: Default::default(),
            plugins: Vec::new(),
            prices: None,
            capacity: PeerCapacity {
                cpu_cores: 64,
                memory_bytes: 1 << 40,
                disk_bytes: 1 << 40,
                free_disk_bytes: 1 << 40,
            },
            seq: u64::MAX - 1,
            expires_at_ms: u64::MAX,
        };
        let config = chitchat::ChitchatConfig {
            chitchat_id: chitchat::ChitchatId::new(gossip_id, u64::MAX - 1, address),
            cluster_id: CLUSTER_ID.to_owned(),
            gossip_interval: Duration::from_millis(200),
            listen_addr: address,
            seed_nodes: vec![seed.target()],
            failure_detector_config: chitchat::FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(60),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V1,
        };
        forgers.push(
            chitchat::spawn_chitchat(
                config,
                vec![(RECORD_KEY.to_owned(), record.sign(&stranger))],
                &chitchat::transport::UdpTransport,
            )
            .await
            .expect("the forger gossips"),
        );
    }
    // The seed reads the forged records (and says so in its log) once they reached it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while seed.log().matches("ignored a peer record").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the seed never saw both forged records"
        );
        let _ = peers(&seed).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed = peers(&seed).await;
    assert_eq!(
        listed.len(),
        1,
        "only the genuine node is listed: {listed:?}"
    );
    assert_eq!(listed[0]["id"], genuine.node_id.as_str());
    assert_eq!(listed[0]["addresses"]["grpc"], genuine.target().as_str());
    assert_eq!(listed[0]["state"], "alive");
    assert!(listed.iter().all(|peer| peer["version"] != "9.9.9"));
    for forger in forgers {
        forger.shutdown().await.ok();
    }
}

#[tokio::test]
async fn targets_by_node_id_reach_that_node_and_an_impostor_at_its_address_is_refused() {
    let seed = member(None);
    let genuine = member(Some(&seed));
    let other = member(Some(&seed));
    until_seen(&[&seed], &genuine, "alive").await;
    until_seen(&[&seed], &other, "alive").await;

    // A task by node ID alone (found through membership), and as ID@address.
    for target in [
        genuine.node_id.clone(),
        format!("{}@{}", genuine.node_id.to_lowercase(), genuine.target()),
    ] {
        let (status, answer) = seed
            .post("/task", &json!({"target": target, "input": "hello"}))
            .await;
        assert_eq!(
            (status, &answer["output"]),
            (200, &json!("world")),
            "{target}: {answer}"
        );
    }

    // The genuine node's ID at the other node's address: the link proves who answers there.
    let impostor_target = format!("{}@{}", genuine.node_id, other.target());
    let (status, answer) = seed
        .post(
            "/task",
            &json!({"target": impostor_target, "input": "hello"}),
        )
        .await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["error"]["code"], "target_mismatch", "{answer}");
    let message = answer["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(&other.node_id) && message.contains(&genuine.node_id),
        "{message}"
    );
    // Nor is a file stored there.
    let (status, answer) = seed
        .post(
            "/file",
            &json!({"name": "x", "data": "eA==", "targets": [impostor_target]}),
        )
        .await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (502, &json!("target_mismatch")),
        "{answer}"
    );

    // A node ID no member has.
    let stranger = sphere_node::identity::NodeIdentity::generate().node_id();
    let (status, answer) = seed
        .post("/task", &json!({"target": stranger, "input": "hello"}))
        .await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["error"]["code"], "target_unreachable", "{answer}");

    // Files by node ID: JSON with `targets`, and a streamed upload with `?targets=`.
    let (status, stored) = seed
        .post(
            "/file",
            &json!({"name": "by-id", "data": base64(b"kept by one node"), "targets": [genuine.node_id]}),
        )
        .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(
        stored["replicas"][0]["provider_id"],
        genuine.node_id.as_str()
    );
    assert_eq!(stored["replicas"][0]["target"], genuine.target().as_str());
    let streamed = seed
        .http()
        .put(seed.url(&format!(
            "/files/streamed?targets={},{}",
            genuine.node_id, other.node_id
        )))
        .body(b"kept by two".to_vec())
        .send()
        .await
        .expect("answer");
    assert_eq!(streamed.status(), 201);
    let streamed: Value = streamed.json().await.expect("JSON");
    let mut holders: Vec<&str> = streamed["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .filter_map(|replica| replica["provider_id"].as_str())
        .collect();
    holders.sort_unstable();
    let mut expected = vec![genuine.node_id.as_str(), other.node_id.as_str()];
    expected.sort_unstable();
    assert_eq!(holders, expected);
    let read_path = format!("/file/{}", stored["id"].as_str().expect("id"));
    let (status, read) = seed.call(reqwest::Method::GET, &read_path, "").await;
    assert_eq!(
        (status, &read["data"]),
        (200, &json!(base64(b"kept by one node"))),
        "{read}"
    );

    // The node holding the only replica goes, and another takes its address: the replica is
    // refused from it rather than read.
    let mut genuine = genuine;
    let address = genuine.grpc;
    genuine.terminate();
    let _squatter = TestNode::start_with(NodeOptions {
        grpc_listen: Some(address),
        ..NodeOptions::default()
    });
    let (status, read) = seed.call(reqwest::Method::GET, &read_path, "").await;
    assert_eq!(
        (status, &read["error"]["code"]),
        (502, &json!("target_mismatch")),
        "{read}"
    );
}

#[tokio::test]
async fn a_replica_is_followed_to_the_new_address_of_the_node_that_holds_it() {
    let owner = TestNode::start_with(NodeOptions {
        config: Some(json!({"storage": {"audit_interval_ms": 200}})),
        ..NodeOptions::default()
    });
    let mut provider = member(Some(&owner));
    until_seen(&[&owner], &provider, "alive").await;
    let contents = b"wherever it goes".repeat(100);
    let (status, stored) = owner
        .post(
            "/file",
            &json!({"name": "kept", "target": provider.node_id, "data": base64(&contents)}),
        )
        .await;
    assert_eq!(status, 200, "{stored}");
    let id = stored["id"].as_str().expect("id").to_owned();

    // The provider comes back on another port: the owner learns it from the mesh.
    let old_address = provider.target();
    provider.terminate();
    provider.restart_elsewhere();
    assert_ne!(provider.target(), old_address);
    let deadline = Instant::now() + Duration::from_secs(30);
    while peer(&owner, &provider.node_id).await["addresses"]["grpc"] != provider.target().as_str() {
        assert!(
            Instant::now() < deadline,
            "the owner never saw the new address"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Within a gossip interval, reads and audits go there.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (status, read) = owner
        .call(reqwest::Method::GET, &format!("/file/{id}"), "")
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["data"], base64(&contents));
    // An audit after the move passes (audits run every 200 ms; the old address has no one).
    let replica = || async {
        let (_, listing) = owner.call(reqwest::Method::GET, "/files", "").await;
        listing["files"][0]["replicas"][0].clone()
    };
    let moved_at = replica().await["last_audit"].clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = replica().await;
        if now["last_audit"] != moved_at
            && now["last_audit_error"].is_null()
            && now["health"] == "ok"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never audited at the new address: {now}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn files_go_to_live_members_are_repaired_among_them_and_recovered_from_them() {
    // An owner with no `peers` at all: its providers come from the mesh.
    let owner = TestNode::start_with(NodeOptions {
        config: Some(json!({
            "storage": {"replicas": 2, "audit_interval_ms": 200, "lost_after_ms": 1000},
        })),
        ..NodeOptions::default()
    });
    let mut providers: Vec<TestNode> = (0..3).map(|_| member(Some(&owner))).collect();
    for provider in &providers {
        until_seen(&[&owner], provider, "alive").await;
    }

    let contents = b"spread over the mesh".repeat(1000);
    let (status, stored) = owner
        .post(
            "/file",
            &json!({"name": "spread", "data": base64(&contents)}),
        )
        .await;
    assert_eq!(status, 200, "{stored}");
    let id = stored["id"].as_str().expect("id").to_owned();
    let holders: Vec<String> = stored["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|replica| replica["provider_id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(holders.len(), 2, "{stored}");
    assert_ne!(holders[0], holders[1]);

    // A holder dies: the copy is made again on the member that had none.
    let victim = providers
        .iter()
        .position(|provider| provider.node_id == holders[0])
        .expect("a holder is one of the members");
    providers[victim].kill9();
    let spare = providers
        .iter()
        .find(|provider| !holders.contains(&provider.node_id))
        .expect("one member holds nothing")
        .node_id
        .clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, listing) = owner.call(reqwest::Method::GET, "/files", "").await;
        let now_held: Vec<&str> = listing["files"][0]["replicas"]
            .as_array()
            .map(|replicas| {
                replicas
                    .iter()
                    .filter_map(|replica| replica["provider_id"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        if now_held.contains(&spare.as_str()) && !now_held.contains(&holders[0].as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not repaired onto {spare}: {listing}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, read) = owner
        .call(reqwest::Method::GET, &format!("/file/{id}"), "")
        .await;
    assert_eq!((status, &read["data"]), (200, &json!(base64(&contents))));

    // The owner loses its database (peer book included): with its key and one member's
    // address, it finds its files on the members again.
    let mut owner = owner;
    owner.kill9();
    std::fs::remove_dir_all(owner.data_dir.join("db")).expect("lose the database");
    let survivor = providers
        .iter()
        .find(|provider| provider.node_id == spare)
        .expect("the spare");
    owner.restart_with_config(Some(json!({"mesh": {"bootstrap": [survivor.target()]}})));
    until_seen(&[&owner], survivor, "alive").await;
    let (status, report) = owner
        .call(reqwest::Method::POST, "/files/recover", "")
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["files_restored"], 1, "{report}");
    let (status, read) = owner
        .call(reqwest::Method::GET, &format!("/file/{id}"), "")
        .await;
    assert_eq!((status, &read["data"]), (200, &json!(base64(&contents))));
}

#[tokio::test]
async fn a_node_may_advertise_a_host_name_which_it_resolves_at_start() {
    let seed = member(None);
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = free.local_addr().expect("address").port();
    drop(free);
    let named = TestNode::start_with(NodeOptions {
        grpc_listen: Some(std::net::SocketAddr::from(([0, 0, 0, 0], port))),
        config: Some(json!({
            "mesh": {"bootstrap": [seed.target()], "advertise": format!("localhost:{port}")},
        })),
        ..NodeOptions::default()
    });
    until_seen(&[&seed], &named, "alive").await;
    let record = peers(&seed)
        .await
        .into_iter()
        .find(|peer| peer["id"] == named.node_id.as_str())
        .expect("listed");
    assert_eq!(
        record["addresses"]["grpc"],
        format!("127.0.0.1:{port}"),
        "{record}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let stderr = crate::harness::stderr_of_failure(
        crate::harness::sphere_node(dir.path())
            .env("SPHERE_MESH__ADVERTISE", "no-such-host.invalid:8081"),
    );
    assert!(stderr.contains("mesh.advertise"), "{stderr}");
}

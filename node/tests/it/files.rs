//! Files stored on a real provider node and read back.

use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::harness::{NodeOptions, TestNode, base64, files_under};

const README_DATA: &str = "TXkgYXdlc29tZSBsb25nIGxvbmcgbG9uZyBzdHJpbmch";

#[tokio::test]
async fn readme_file_flows_between_two_nodes() {
    let owner = TestNode::start();
    let provider = TestNode::start();

    let (status, stored) = owner
        .post(
            "/file",
            &json!({"target": provider.target(), "name": "my_awesome_file", "data": README_DATA}),
        )
        .await;
    assert_eq!(status, 200, "{stored}");
    let id = stored["id"].as_str().expect("id").to_owned();
    assert_eq!(stored["name"], "my_awesome_file");
    assert_eq!(stored["size"], 33);
    assert_eq!(stored["provider_id"], provider.node_id);

    // The README's GET with a JSON body.
    let body = json!({"target": provider.target(), "id": id}).to_string();
    let (status, read) = owner.call(reqwest::Method::GET, "/file", &body).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["data"], README_DATA);
    assert_eq!(read["id"], id.as_str());

    // The same without a body, and without naming the target.
    let (status, read) = owner
        .call(reqwest::Method::GET, &format!("/file/{id}"), "")
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["data"], README_DATA);

    // The provider holds only ciphertext: the plaintext appears in none of its files.
    let plaintext = b"My awesome long long long string!";
    for path in files_under(&provider.data_dir) {
        let contents = std::fs::read(&path).expect("read");
        assert!(
            !contents
                .windows(plaintext.len())
                .any(|window| window == plaintext),
            "plaintext found in {}",
            path.display()
        );
    }
}

#[tokio::test]
async fn storing_the_same_name_twice_keeps_both_files() {
    let owner = TestNode::start();
    let provider = TestNode::start();
    let mut ids = Vec::new();
    for contents in [&b"first version"[..], b"second version"] {
        let (status, stored) = owner
            .post(
                "/file",
                &json!({"target": provider.target(), "name": "same", "data": base64(contents)}),
            )
            .await;
        assert_eq!(status, 200, "{stored}");
        ids.push(stored["id"].as_str().expect("id").to_owned());
    }
    assert_ne!(ids[0], ids[1]);
    for (id, contents) in ids.iter().zip([&b"first version"[..], b"second version"]) {
        let (status, read) = owner
            .call(reqwest::Method::GET, &format!("/file/{id}"), "")
            .await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(read["data"], base64(contents));
    }
}

/// Deterministic pseudo-random bytes, so a large file needs no memory to describe.
fn pattern_block(seed: u64, index: u64) -> Vec<u8> {
    let mut state = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..64 * 1024 / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect()
}

/// Every size around a chunk's edges, sent in frames that straddle the edges, some larger than a
/// chunk, comes back byte for byte, in as many chunks as it fills (an empty file in one) besides
/// its manifest.
#[tokio::test]
async fn files_of_every_size_around_a_chunk_edge_round_trip_in_the_right_number_of_chunks() {
    const CHUNK: usize = 4096;
    let owner = TestNode::start_with(NodeOptions {
        environment: vec![(
            "SPHERE_STORAGE__CHUNK_SIZE_BYTES".to_owned(),
            CHUNK.to_string(),
        )],
        ..NodeOptions::default()
    });
    let provider = TestNode::start();
    let chunk_files = || {
        files_under(&provider.data_dir.join("chunks"))
            .into_iter()
            .filter(|path| !path.starts_with(provider.data_dir.join("chunks/tmp")))
            .count()
    };
    let sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5];
    for (seed, size) in sizes.into_iter().enumerate() {
        let contents: Vec<u8> = pattern_block(seed as u64, 0)
            .into_iter()
            .cycle()
            .take(size)
            .collect();
        // Frames of 1,000 bytes, then one of 10,000 (more than a chunk), then the rest.
        let mut frames = Vec::new();
        let mut rest = contents.as_slice();
        for frame_size in [1000, 1000, 10_000]
            .into_iter()
            .chain(std::iter::repeat(1000))
        {
            if rest.is_empty() {
                break;
            }
            let (frame, after) = rest.split_at(frame_size.min(rest.len()));
            frames.push(Ok::<_, std::io::Error>(frame.to_vec()));
            rest = after;
        }
        let chunks_before = chunk_files();
        let response = owner
            .http()
            .put(owner.url(&format!("/files/edge-{size}?target={}", provider.target())))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                frames,
            )))
            .send()
            .await
            .expect("upload answered");
        assert_eq!(response.status(), 201, "size {size}");
        let stored: serde_json::Value = response.json().await.expect("json");
        assert_eq!(stored["size"], size, "size {size}");
        assert_eq!(
            chunk_files() - chunks_before,
            size.div_ceil(CHUNK).max(1) + 1,
            "chunks of a file of {size} bytes, and its manifest's"
        );
        let id = stored["id"].as_str().expect("id");
        let read = owner
            .http()
            .get(owner.url(&format!("/files/{id}")))
            .send()
            .await
            .expect("download answered");
        assert_eq!(read.status(), 200, "size {size}");
        let read = read.bytes().await.expect("body");
        assert!(
            read.as_ref() == contents.as_slice(),
            "a file of {size} bytes came back different"
        );
    }
}

#[tokio::test]
async fn a_256_mib_file_streams_round_trip_byte_for_byte() {
    const BLOCKS: u64 = 256 * 16; // 64 KiB blocks: 256 MiB
    let owner = TestNode::start();
    let provider = TestNode::start();

    let mut expected = Sha256::new();
    for index in 0..BLOCKS {
        expected.update(pattern_block(7, index));
    }
    let expected = expected.finalize();

    let upload = futures_util::stream::iter(0..BLOCKS)
        .map(|index| Ok::<_, std::io::Error>(pattern_block(7, index)));
    let response = owner
        .http()
        .put(owner.url(&format!("/files/big.bin?target={}", provider.target())))
        .body(reqwest::Body::wrap_stream(upload))
        .send()
        .await
        .expect("upload answered");
    assert_eq!(response.status(), 201);
    let stored: serde_json::Value = response.json().await.expect("json");
    assert_eq!(stored["size"], BLOCKS * 64 * 1024);
    let id = stored["id"].as_str().expect("id");

    let response = owner
        .http()
        .get(owner.url(&format!("/files/{id}")))
        .send()
        .await
        .expect("download answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(BLOCKS * 64 * 1024));
    let mut received = Sha256::new();
    let mut received_bytes = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("body streams without error");
        received_bytes += chunk.len() as u64;
        received.update(&chunk);
    }
    assert_eq!(received_bytes, BLOCKS * 64 * 1024);
    assert_eq!(received.finalize(), expected, "file came back different");
}

#[tokio::test]
async fn a_tampered_chunk_is_an_error_never_wrong_bytes() {
    let owner = TestNode::start();
    let provider = TestNode::start();
    // Three chunks of 1 MiB and a bit.
    let contents: Vec<u8> = (0..3 * 1024 * 1024 + 100)
        .map(|index| (index % 251) as u8)
        .collect();
    let (status, stored) = owner
        .post(
            "/file",
            &json!({"target": provider.target(), "name": "t", "data": base64(&contents)}),
        )
        .await;
    assert_eq!(status, 200, "{stored}");
    let id = stored["id"].as_str().expect("id").to_owned();

    // Flip one byte of the chunk file holding the second chunk (chunk files are the ones whose
    // size is a full chunk plus the tag).
    let mut chunk_files: Vec<_> = files_under(&provider.data_dir.join("chunks"))
        .into_iter()
        .filter(|path| std::fs::metadata(path).expect("meta").len() == 1024 * 1024 + 16)
        .collect();
    assert_eq!(chunk_files.len(), 3, "expected three full chunks");
    chunk_files.sort();
    let victim = &chunk_files[1];
    let mut bytes = std::fs::read(victim).expect("read chunk");
    bytes[1000] ^= 0x01;
    std::fs::write(victim, bytes).expect("tamper");

    let (status, body) = owner
        .call(reqwest::Method::GET, &format!("/file/{id}"), "")
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "integrity_error");

    // Streaming: either an error status, or a body that breaks off before its full length.
    let response = owner
        .http()
        .get(owner.url(&format!("/files/{id}")))
        .send()
        .await
        .expect("answered");
    if response.status() == 200 {
        let mut received = Vec::new();
        let mut body = response.bytes_stream();
        let mut broke_off = false;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => received.extend_from_slice(&chunk),
                Err(_) => {
                    broke_off = true;
                    break;
                }
            }
        }
        assert!(broke_off, "a damaged file streamed to its end");
        assert!(received.len() < contents.len());
        assert_eq!(
            received,
            contents[..received.len()],
            "wrong bytes were returned"
        );
    } else {
        assert_eq!(response.status(), 502);
    }
}

//! Merkle trees over the 4 KiB segments of a chunk: a chunk's address is the tree's root, and a
//! provider proves it still holds a chunk by returning one segment with its proof.
//!
//! Leaf = SHA-256(0x00 ‖ segment); inner node = SHA-256(left ‖ right); a node without a sibling
//! is carried up unchanged (the rules of `rs_merkle`). The leaf prefix keeps a leaf from ever
//! being taken for an inner node. DO NOT CHANGE: chunk addresses on every provider depend on it.

use rs_merkle::algorithms::Sha256;
use rs_merkle::{MerkleProof, MerkleTree};

/// Bytes per segment, the unit an audit asks for.
pub const SEGMENT_SIZE: usize = 4096;

/// Returns the hash of one leaf, SHA-256(0x00 ‖ segment), without copying the segment.
fn leaf_hash(segment: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::new()
        .chain_update([0u8])
        .chain_update(segment)
        .finalize()
        .into()
}

fn leaves(chunk: &[u8]) -> Vec<[u8; 32]> {
    if chunk.is_empty() {
        return vec![leaf_hash(&[])];
    }
    chunk.chunks(SEGMENT_SIZE).map(leaf_hash).collect()
}

/// Returns the number of segments of a chunk of `chunk_len` bytes (an empty chunk has one).
pub fn segment_count(chunk_len: usize) -> usize {
    chunk_len.div_ceil(SEGMENT_SIZE).max(1)
}

/// Returns the Merkle root of `chunk`.
pub fn root(chunk: &[u8]) -> [u8; 32] {
    let leaves = leaves(chunk);
    if leaves.len() == 1 {
        return leaves[0];
    }
    MerkleTree::<Sha256>::from_leaves(&leaves)
        .root()
        .expect("a tree with leaves has a root")
}

/// Returns segment `index` of `chunk` and the sibling hashes proving it, or `None` when the chunk
/// has no such segment.
pub fn prove(chunk: &[u8], index: usize) -> Option<(Vec<u8>, Vec<[u8; 32]>)> {
    let count = segment_count(chunk.len());
    if index >= count {
        return None;
    }
    let start = index * SEGMENT_SIZE;
    let segment = chunk[start..(start + SEGMENT_SIZE).min(chunk.len())].to_vec();
    if count == 1 {
        return Some((segment, Vec::new()));
    }
    let tree = MerkleTree::<Sha256>::from_leaves(&leaves(chunk));
    Some((segment, tree.proof(&[index]).proof_hashes().to_vec()))
}

/// Checks that `segment` is segment `index` of `count` of the chunk whose root is `root`.
pub fn verify(
    root: &[u8; 32],
    index: usize,
    count: usize,
    segment: &[u8],
    proof: &[[u8; 32]],
) -> bool {
    if index >= count || segment.len() > SEGMENT_SIZE {
        return false;
    }
    let leaf = leaf_hash(segment);
    if count == 1 {
        return proof.is_empty() && &leaf == root;
    }
    MerkleProof::<Sha256>::new(proof.to_vec()).verify(*root, &[index], &[leaf], count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_segment_proves_and_tampering_fails() {
        for length in [
            0,
            100,
            SEGMENT_SIZE,
            3 * SEGMENT_SIZE + 5,
            256 * SEGMENT_SIZE,
        ] {
            let chunk: Vec<u8> = (0..length).map(|byte| (byte * 7 % 251) as u8).collect();
            let chunk_root = root(&chunk);
            let count = segment_count(length);
            for index in [0, count / 2, count - 1] {
                let (segment, proof) = prove(&chunk, index).expect("segment exists");
                assert!(
                    verify(&chunk_root, index, count, &segment, &proof),
                    "{length}/{index}"
                );
                let mut bad = segment.clone();
                if bad.is_empty() {
                    bad.push(1);
                } else {
                    bad[0] ^= 1;
                }
                assert!(
                    !verify(&chunk_root, index, count, &bad, &proof),
                    "tampered {length}/{index}"
                );
                if count > 1 {
                    let other = (index + 1) % count;
                    assert!(
                        !verify(&chunk_root, other, count, &segment, &proof),
                        "moved {length}/{index}"
                    );
                }
            }
            assert!(prove(&chunk, count).is_none());
        }
    }

    /// The construction `proto/sphere/v1/node.proto` documents for other implementations:
    /// leaf = SHA-256(0x00 ‖ segment), inner node = SHA-256(left ‖ right), an odd node carried up.
    #[test]
    fn the_root_is_built_as_the_proto_documents() {
        use sha2::{Digest, Sha256};
        let chunk: Vec<u8> = (0..3 * SEGMENT_SIZE + 10)
            .map(|i| (i % 253) as u8)
            .collect();
        let leaf = |segment: &[u8]| -> [u8; 32] {
            Sha256::new()
                .chain_update([0u8])
                .chain_update(segment)
                .finalize()
                .into()
        };
        let inner = |left: [u8; 32], right: [u8; 32]| -> [u8; 32] {
            Sha256::new()
                .chain_update(left)
                .chain_update(right)
                .finalize()
                .into()
        };
        let leaves: Vec<[u8; 32]> = chunk.chunks(SEGMENT_SIZE).map(leaf).collect();
        assert_eq!(leaves.len(), 4);
        let expected = inner(inner(leaves[0], leaves[1]), inner(leaves[2], leaves[3]));
        assert_eq!(root(&chunk), expected);

        let odd = &chunk[..2 * SEGMENT_SIZE + 1];
        let leaves: Vec<[u8; 32]> = odd.chunks(SEGMENT_SIZE).map(leaf).collect();
        let expected = inner(inner(leaves[0], leaves[1]), leaves[2]);
        assert_eq!(root(odd), expected, "an odd node is carried up unchanged");
    }

    #[test]
    fn roots_differ_for_different_chunks() {
        assert_ne!(root(b"a"), root(b"b"));
        assert_ne!(root(&[0u8; 8192]), root(&[0u8; 8193]));
    }
}

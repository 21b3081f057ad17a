//! Verified execution: the same task on several nodes, each signing what it answered, accepted
//! when `k` nodes agree.
//!
//! A node signs, with its node key, the hash of the task (plugin, version, input and the
//! requester's nonce, so that a signature cannot be replayed for another task) and the hash of
//! its output. The requester checks each signature against the node its link proved, and
//! compares the output hashes.

use std::collections::BTreeMap;

use alloy_primitives::Signature;
use alloy_signer::SignerSync;
use sha2::{Digest, Sha256};

use crate::identity::{NodeId, NodeIdentity};

/// What a signed result statement starts with; nothing else the node key signs does.
const DOMAIN: &str = "Sphere result v1";
/// Accepted nonce lengths: enough to be unique, small enough to bound what a stranger sends.
pub const NONCE_BYTES: std::ops::RangeInclusive<usize> = 16..=64;

/// The task, as both sides hash it.
pub struct TaskDigest<'a> {
    /// The plugin's name.
    pub plugin: &'a str,
    /// The plugin's version.
    pub version: &'a str,
    /// The input.
    pub input: &'a [u8],
    /// The requester's nonce.
    pub nonce: &'a [u8],
}

impl TaskDigest<'_> {
    fn hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [
            self.plugin.as_bytes(),
            self.version.as_bytes(),
            self.input,
            self.nonce,
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.finalize().into()
    }

    fn statement(&self, output_sha256: &[u8; 32]) -> String {
        format!(
            "{DOMAIN}\ntask 0x{}\noutput 0x{}",
            hex::encode(self.hash()),
            hex::encode(output_sha256)
        )
    }

    /// This node's signature of the output with SHA-256 `output_sha256` as its answer to the
    /// task.
    pub fn sign(&self, identity: &NodeIdentity, output_sha256: &[u8; 32]) -> Vec<u8> {
        identity
            .signer()
            .sign_message_sync(self.statement(output_sha256).as_bytes())
            .expect("signing with a local key cannot fail")
            .as_bytes()
            .to_vec()
    }

    /// Whether `signature` is `node`'s signature of the output with SHA-256 `output_sha256` as
    /// its answer to the task.
    pub fn signed_by(&self, node: NodeId, output_sha256: &[u8; 32], signature: &[u8]) -> bool {
        Signature::try_from(signature)
            .ok()
            .and_then(|signature| {
                signature
                    .recover_address_from_msg(self.statement(output_sha256).as_bytes())
                    .ok()
            })
            .is_some_and(|signer| NodeId::from(signer) == node)
    }
}

/// The SHA-256 of an output.
pub fn output_hash(output: &[u8]) -> [u8; 32] {
    Sha256::digest(output).into()
}

/// One node's signed answer.
#[derive(Debug, Clone)]
pub struct SignedResult {
    /// The node, as its link proved.
    pub node: NodeId,
    /// The plugin that ran it and its version.
    pub plugin: String,
    /// Its version.
    pub version: String,
    /// The SHA-256 of its output.
    pub output_sha256: [u8; 32],
    /// The output, unless the node holds it back until it is paid.
    pub output: Option<bytes::Bytes>,
    /// The node's signature.
    pub signature: Vec<u8>,
}

/// Where a set of signed results stands.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// `k` nodes agree: these nodes, on the output of the first of them; the others disagreed.
    Agreed {
        /// The nodes that agree, in the order they answered.
        agreeing: Vec<NodeId>,
        /// The nodes that answered something else.
        dissenting: Vec<NodeId>,
    },
    /// No `k` agree yet: at least this many more answers are needed.
    Undecided(usize),
}

/// Compares `results`: agreement when `k` of them have the same output.
pub fn tally(results: &[SignedResult], k: usize) -> Verdict {
    let mut groups: BTreeMap<[u8; 32], Vec<NodeId>> = BTreeMap::new();
    for result in results {
        groups
            .entry(result.output_sha256)
            .or_default()
            .push(result.node);
    }
    let largest = groups.values().map(Vec::len).max().unwrap_or(0);
    match groups.into_values().find(|nodes| nodes.len() >= k) {
        Some(agreeing) => Verdict::Agreed {
            dissenting: results
                .iter()
                .map(|result| result.node)
                .filter(|node| !agreeing.contains(node))
                .collect(),
            agreeing,
        },
        None => Verdict::Undecided(k - largest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: TaskDigest<'static> = TaskDigest {
        plugin: "word-count",
        version: "1.0.0",
        input: b"a b c",
        nonce: b"0123456789abcdef",
    };

    #[test]
    fn a_signature_holds_only_for_its_node_task_and_output() {
        let identity = NodeIdentity::generate();
        let (three, four) = (output_hash(b"3"), output_hash(b"4"));
        let signature = TASK.sign(&identity, &three);
        assert!(TASK.signed_by(identity.id(), &three, &signature));
        assert!(
            !TASK.signed_by(identity.id(), &four, &signature),
            "another output"
        );
        assert!(
            !TASK.signed_by(NodeIdentity::generate().id(), &three, &signature),
            "another node"
        );
        let replayed = TaskDigest {
            nonce: b"fedcba9876543210",
            ..TASK
        };
        assert!(
            !replayed.signed_by(identity.id(), &three, &signature),
            "another nonce"
        );
        assert!(!TASK.signed_by(identity.id(), &three, b"not a signature"));
    }

    #[test]
    fn k_equal_outputs_agree_and_the_others_dissent() {
        let nodes: Vec<NodeId> = (0..3).map(|_| NodeIdentity::generate().id()).collect();
        let result = |index: usize, output: &'static str| SignedResult {
            node: nodes[index],
            plugin: "p".into(),
            version: "1".into(),
            output_sha256: output_hash(output.as_bytes()),
            output: None,
            signature: Vec::new(),
        };
        assert_eq!(
            tally(&[result(0, "3"), result(1, "4")], 2),
            Verdict::Undecided(1)
        );
        assert_eq!(
            tally(&[result(0, "3"), result(1, "4"), result(2, "3")], 2),
            Verdict::Agreed {
                agreeing: vec![nodes[0], nodes[2]],
                dissenting: vec![nodes[1]],
            }
        );
        assert_eq!(tally(&[], 2), Verdict::Undecided(2));
    }
}

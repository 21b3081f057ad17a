//! What a node publishes about itself, signed with its key: its record (who and where it is, what
//! it offers and charges) and, under a key of its own because it changes often, its load.
//!
//! A reader believes a signed value only when its signature recovers the node ID the value and
//! the gossip identity both claim. Each kind of value signs over its own domain text, so a
//! signature over one is never taken for another, nor for anything else the node key signs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use alloy_primitives::Signature;
use alloy_signer::SignerSync;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sphere_proto::v1::PluginSummary;

use crate::address::NodeAddress;
use crate::api::{PeerCapacity, PeerLoad, PeerPlugin, Prices};
use crate::identity::{NodeId, NodeIdentity};

/// The key of a node's state that holds its signed record.
pub const RECORD_KEY: &str = "record";
/// The key of a node's state that holds its signed load.
pub const LOAD_KEY: &str = "load";
/// How long a record stays valid; it is signed again well before.
pub const RECORD_TTL: Duration = Duration::from_secs(600);

/// What a node tells the network about itself. A change of this format that older nodes
/// cannot read gets a new version in [`PeerRecord::DOMAIN`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The node ID: the Ethereum address of the key that signed the record.
    pub node_id: NodeId,
    /// Software version.
    pub version: String,
    /// Where other nodes reach its gRPC services.
    pub grpc_address: NodeAddress,
    /// Where its REST API listens.
    pub http_address: String,
    /// The operator's labels.
    pub labels: BTreeMap<String, String>,
    /// The plugins it serves.
    pub plugins: Vec<PeerPlugin>,
    /// What it charges; absent when payments are off.
    pub prices: Option<Prices>,
    /// What it offers.
    pub capacity: PeerCapacity,
    /// Grows with every new record of this node (milliseconds since the epoch when signed).
    pub seq: u64,
    /// After this (milliseconds since the epoch) the record is not believed.
    pub expires_at_ms: u64,
}

/// A plugin as peers see it, from what its node says of it (`NodeService.GetInfo`, or this
/// node's own plugins for its record).
pub fn peer_plugin(summary: PluginSummary) -> PeerPlugin {
    PeerPlugin {
        name: summary.name,
        version: summary.version,
        description: summary.description,
        input_content_type: summary.input_content_type,
        output_content_type: summary.output_content_type,
        deterministic: summary.deterministic,
        idempotent: summary.idempotent,
        serving: summary.serving,
        default: summary.is_default,
        max_concurrency: summary.max_concurrency,
        queue_size: summary.queue_size,
    }
}

/// How busy a node is, published apart from its record so the record is not re-signed and
/// re-gossiped whole at every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadRecord {
    /// The node ID of the key that signed it.
    pub node_id: NodeId,
    /// Grows with every new load of this node (milliseconds since the epoch when signed).
    pub seq: u64,
    /// The load.
    pub load: PeerLoad,
}

/// A value a node signs and gossips about itself.
pub trait Signed: Serialize + DeserializeOwned + Clone {
    /// What the signed text starts with.
    const DOMAIN: &'static str;
    /// What the value is, for the log.
    const NAME: &'static str;

    /// The node the value says signed it.
    fn node_id(&self) -> NodeId;

    /// Its sequence number: a reader never takes back an older one.
    fn seq(&self) -> u64;

    /// Signs the value with `identity` into the text gossiped.
    fn sign(&self, identity: &NodeIdentity) -> String {
        let body = serde_json::to_string(self).expect("signed values serialise");
        let signature = identity
            .signer()
            .sign_message_sync(format!("{}{body}", Self::DOMAIN).as_bytes())
            .expect("signing with a local key cannot fail");
        serde_json::to_string(&Envelope {
            body,
            signature: format!("0x{}", hex::encode(signature.as_bytes())),
        })
        .expect("envelopes serialise")
    }

    /// Reads a gossiped value and checks that it is signed by the node it names, which is
    /// `gossip_id` (the identity it gossips under).
    fn verify_signature(value: &str, gossip_id: &str) -> Result<Self, RecordError> {
        let unreadable = |error: &dyn std::fmt::Display| RecordError::Unreadable(error.to_string());
        let envelope: Envelope = serde_json::from_str(value).map_err(|error| unreadable(&error))?;
        let signature_bytes = hex::decode(envelope.signature.trim_start_matches("0x"))
            .map_err(|error| unreadable(&error))?;
        let signature =
            Signature::try_from(&signature_bytes[..]).map_err(|error| unreadable(&error))?;
        let signer = NodeId::from(
            signature
                .recover_address_from_msg(format!("{}{}", Self::DOMAIN, envelope.body).as_bytes())
                .map_err(|error| unreadable(&error))?,
        );
        let signed: Self =
            serde_json::from_str(&envelope.body).map_err(|error| unreadable(&error))?;
        let wrong_signer = |claimed: String| RecordError::WrongSigner {
            claimed,
            signer: signer.to_string(),
        };
        if signed.node_id() != signer {
            return Err(wrong_signer(signed.node_id().to_string()));
        }
        if gossip_id.parse() != Ok(signer) {
            return Err(wrong_signer(gossip_id.to_owned()));
        }
        Ok(signed)
    }

    /// Whether the value may no longer be believed at `now_ms`.
    fn expired(&self, _now_ms: u64) -> bool {
        false
    }
}

impl Signed for PeerRecord {
    const DOMAIN: &'static str = "sphere peer record\nversion 2\n";
    const NAME: &'static str = "record";

    fn node_id(&self) -> NodeId {
        self.node_id
    }

    fn seq(&self) -> u64 {
        self.seq
    }

    fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms <= now_ms
    }
}

impl Signed for LoadRecord {
    const DOMAIN: &'static str = "sphere peer load\nversion 1\n";
    const NAME: &'static str = "load";

    fn node_id(&self) -> NodeId {
        self.node_id
    }

    fn seq(&self) -> u64 {
        self.seq
    }
}

/// A signed value as gossiped: the exact JSON text that was signed, and the signature.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    body: String,
    signature: String,
}

/// Why a gossiped value is not believed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// Not a signed value of this kind at all.
    #[error("the value is not readable: {0}")]
    Unreadable(String),
    /// The signature does not recover the node ID claimed.
    #[error("it claims node {claimed} but is signed by {signer}")]
    WrongSigner {
        /// The node ID the value or the gossip identity claims.
        claimed: String,
        /// Who signed it.
        signer: String,
    },
    /// The value expired.
    #[error("it expired")]
    Expired,
}

/// Gossiped values already checked, by gossip identity and generation: a signature is recovered
/// (and a bad one logged) once per new value rather than at every read (chitchat asks the
/// liveness predicate about every member each round).
#[derive(Debug)]
pub struct Checked<T>(Mutex<HashMap<(String, u64), CheckedValue<T>>>);

/// A gossiped value as last seen under one gossip identity, and what checking it gave.
type CheckedValue<T> = (String, Result<T, RecordError>);

impl<T> Default for Checked<T> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

/// Identities remembered at most; strangers can gossip under any number of made-up ones.
const CHECKED_MAX: usize = 4_096;

impl<T: Signed> Checked<T> {
    /// [`Signed::verify_signature`] and not expired at `now_ms`, from the cache when `value` was
    /// checked before under the gossip identity `gossip_id` of generation `generation`.
    pub fn verify(
        &self,
        value: &str,
        gossip_id: &str,
        generation: u64,
        now_ms: u64,
    ) -> Result<T, RecordError> {
        let mut checked = self.0.lock().expect("cache lock is never poisoned");
        let key = (gossip_id.to_owned(), generation);
        let outcome = match checked.get(&key) {
            Some((seen, outcome)) if seen == value => outcome.clone(),
            _ => {
                let outcome = T::verify_signature(value, gossip_id);
                if let Err(error) = &outcome {
                    tracing::warn!(member = gossip_id, generation, %error, "ignored a peer {}", T::NAME);
                }
                if checked.len() >= CHECKED_MAX {
                    checked.clear();
                }
                checked.insert(key, (value.to_owned(), outcome.clone()));
                outcome
            }
        };
        let signed = outcome?;
        if signed.expired(now_ms) {
            return Err(RecordError::Expired);
        }
        Ok(signed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(identity: &NodeIdentity) -> PeerRecord {
        PeerRecord {
            node_id: identity.id(),
            version: "0.1.0".to_owned(),
            grpc_address: "127.0.0.1:8081".parse().expect("an address"),
            http_address: "127.0.0.1:3000".to_owned(),
            labels: BTreeMap::from([("region".to_owned(), "eu".to_owned())]),
            plugins: Vec::new(),
            prices: Some(Prices::default()),
            capacity: PeerCapacity {
                cpu_cores: 2,
                memory_bytes: 1 << 30,
                disk_bytes: 10,
                free_disk_bytes: 5,
            },
            seq: 1,
            expires_at_ms: u64::MAX,
        }
    }

    #[test]
    fn a_record_is_believed_only_from_the_node_it_names() {
        let node = NodeIdentity::generate();
        let stranger = NodeIdentity::generate();
        let checked = Checked::<PeerRecord>::default();
        let signed = record(&node).sign(&node);
        assert_eq!(
            checked
                .verify(&signed, &node.node_id(), 1, 0)
                .expect("genuine"),
            record(&node)
        );
        // Gossiped under another node's identity.
        assert!(PeerRecord::verify_signature(&signed, &stranger.node_id()).is_err());
        // Claiming the node but signed by a stranger.
        let forged = record(&node).sign(&stranger);
        for _ in 0..2 {
            assert!(matches!(
                checked.verify(&forged, &node.node_id(), 1, 0),
                Err(RecordError::WrongSigner { .. })
            ));
        }
        // Altered after signing.
        let altered = signed.replace("eu", "us");
        assert!(PeerRecord::verify_signature(&altered, &node.node_id()).is_err());
        // Expired, from the cache too.
        let mut old = record(&node);
        old.expires_at_ms = 5;
        let old = old.sign(&node);
        assert!(checked.verify(&old, &node.node_id(), 1, 4).is_ok());
        assert!(matches!(
            checked.verify(&old, &node.node_id(), 1, 10),
            Err(RecordError::Expired)
        ));
    }

    #[test]
    fn a_signature_over_a_load_is_never_taken_for_a_record() {
        let node = NodeIdentity::generate();
        let load = LoadRecord {
            node_id: node.id(),
            seq: 3,
            load: PeerLoad::default(),
        };
        let signed = load.sign(&node);
        assert_eq!(
            LoadRecord::verify_signature(&signed, &node.node_id()).expect("genuine"),
            load
        );
        assert!(PeerRecord::verify_signature(&signed, &node.node_id()).is_err());
        let record = record(&node).sign(&node);
        assert!(LoadRecord::verify_signature(&record, &node.node_id()).is_err());
    }
}

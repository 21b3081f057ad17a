//! Signed storage requests: only an object's owner may read, audit, list or delete it.
//!
//! The owner signs `"sphere.v1 storage\n<operation>\n<object_id>\n<timestamp_ms>\n<hex nonce>"`
//! with its node key (EIP-191 `personal_sign`, the same key that identifies and pays). A provider
//! recovers the signer's address, refuses timestamps more than [`MAX_CLOCK_SKEW`] away from its
//! own clock, and remembers every nonce for that long, so a captured request cannot be replayed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use alloy_primitives::{Address, Signature};
use alloy_signer::SignerSync;
use sphere_proto::v1::OwnerSignature;

use crate::error::{Error, ErrorCode};
use crate::identity::NodeIdentity;

/// How far a request's timestamp may be from the provider's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// What a signed request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Store an object.
    Put,
    /// Read an object.
    Get,
    /// Delete an object.
    Delete,
    /// Prove possession of an object.
    Audit,
    /// List the owner's objects.
    List,
    /// Pay for one more storage period.
    Renew,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Get => "get",
            Self::Delete => "delete",
            Self::Audit => "audit",
            Self::List => "list",
            Self::Renew => "renew",
        }
    }
}

fn signed_text(operation: Operation, object_id: &str, timestamp_ms: u64, nonce: &[u8]) -> String {
    format!(
        "sphere.v1 storage\n{}\n{object_id}\n{timestamp_ms}\n{}",
        operation.as_str(),
        hex::encode(nonce)
    )
}

/// Signs `operation` on `object_id` as `identity`, now.
pub fn sign(identity: &NodeIdentity, operation: Operation, object_id: &str) -> OwnerSignature {
    let timestamp_ms = crate::clock::now_ms();
    let nonce: [u8; 16] = rand::random();
    let text = signed_text(operation, object_id, timestamp_ms, &nonce);
    let signature = identity
        .signer()
        .sign_message_sync(text.as_bytes())
        .expect("signing with a local key cannot fail");
    OwnerSignature {
        owner: identity.node_id(),
        timestamp_ms,
        nonce: nonce.to_vec().into(),
        signature: signature.as_bytes().to_vec().into(),
    }
}

/// Checks signed requests and remembers their nonces.
#[derive(Debug, Default)]
pub struct RequestVerifier {
    /// Nonces seen, with the time (ms) after which they can be forgotten.
    seen_nonces: Mutex<HashMap<Vec<u8>, u64>>,
}

impl RequestVerifier {
    /// Returns the address that signed `auth` for `operation` on `object_id`, or a
    /// `permission_denied` error saying why the request is refused.
    pub fn verify(
        &self,
        auth: Option<&OwnerSignature>,
        operation: Operation,
        object_id: &str,
    ) -> Result<Address, Error> {
        let denied = |why: &str| {
            Error::new(
                ErrorCode::PermissionDenied,
                format!("request refused: {why}"),
            )
        };
        let auth = auth.ok_or_else(|| denied("it is not signed by the object's owner"))?;
        let now_ms = crate::clock::now_ms();
        let skew_ms = MAX_CLOCK_SKEW.as_millis() as u64;
        if auth.timestamp_ms.abs_diff(now_ms) > skew_ms {
            return Err(denied(
                "its timestamp is more than 5 minutes from this provider's clock",
            ));
        }
        if auth.nonce.len() != 16 {
            return Err(denied("its nonce must be 16 bytes"));
        }
        let signature = Signature::try_from(&auth.signature[..])
            .map_err(|_| denied("its signature is malformed"))?;
        let text = signed_text(operation, object_id, auth.timestamp_ms, &auth.nonce);
        let signer = signature
            .recover_address_from_msg(text.as_bytes())
            .map_err(|_| denied("its signature does not verify"))?;
        let claimed: Address = auth
            .owner
            .parse()
            .map_err(|_| denied("its owner is not an address"))?;
        if signer != claimed {
            return Err(denied("it is signed by another key than its owner's"));
        }
        let mut seen = self
            .seen_nonces
            .lock()
            .expect("nonce set lock is never poisoned");
        seen.retain(|_, forget_after| *forget_after > now_ms);
        if seen
            .insert(auth.nonce.to_vec(), auth.timestamp_ms + skew_ms)
            .is_some()
        {
            return Err(denied("it was seen before (replayed)"));
        }
        Ok(signer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_once_and_only_for_what_was_signed() {
        let owner = NodeIdentity::generate();
        let verifier = RequestVerifier::default();
        let auth = sign(&owner, Operation::Get, "abc");
        let signer = verifier
            .verify(Some(&auth), Operation::Get, "abc")
            .expect("valid");
        assert_eq!(signer.to_checksum(None), owner.node_id());
        let replay = verifier
            .verify(Some(&auth), Operation::Get, "abc")
            .expect_err("replay");
        assert!(replay.message.contains("replayed"), "{}", replay.message);

        let other_object = sign(&owner, Operation::Get, "abc");
        assert!(
            verifier
                .verify(Some(&other_object), Operation::Get, "xyz")
                .is_err()
        );
        let other_operation = sign(&owner, Operation::Get, "abc");
        assert!(
            verifier
                .verify(Some(&other_operation), Operation::Delete, "abc")
                .is_err()
        );
        assert!(verifier.verify(None, Operation::Get, "abc").is_err());
    }

    #[test]
    fn a_signature_by_another_key_or_from_another_time_is_refused() {
        let owner = NodeIdentity::generate();
        let verifier = RequestVerifier::default();
        let mut forged = sign(&NodeIdentity::generate(), Operation::Get, "abc");
        forged.owner = owner.node_id();
        assert_eq!(
            verifier
                .verify(Some(&forged), Operation::Get, "abc")
                .expect_err("forged")
                .code,
            ErrorCode::PermissionDenied
        );
        let mut stale = sign(&owner, Operation::Get, "abc");
        stale.timestamp_ms -= 10 * 60 * 1000;
        assert!(
            verifier
                .verify(Some(&stale), Operation::Get, "abc")
                .is_err()
        );
    }
}

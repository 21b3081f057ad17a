//! Signed storage requests: only an object's owner may store, read, audit, renew, list or delete
//! it, and each signature is good for one request to one provider, once.
//!
//! The owner signs (EIP-191 `personal_sign`, with its node key, the same key that identifies and
//! pays) a text naming the scheme version, the operation, the provider's node ID, the object, the
//! time, a random nonce and a digest of every other field of the request (see
//! `OwnerSignature` in `proto/sphere/v1/node.proto`). A provider refuses a request that is
//! addressed to another provider, signed more than [`MAX_CLOCK_SKEW`] away from its clock, signed
//! before it started, or whose nonce it has seen; it remembers nonces for as long as a timestamp
//! stays acceptable. Refusing what was signed before start-up is what makes an in-memory nonce
//! set enough across restarts: nothing the previous process accepted is acceptable any more.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use alloy_primitives::{Address, Signature};
use alloy_signer::SignerSync;
use prost::Message;
use sha2::{Digest, Sha256};
use sphere_proto::v1::{
    AuditObjectRequest, DeleteObjectRequest, GetObjectRequest, ListObjectsRequest, ObjectHeader,
    OwnerSignature, RenewObjectRequest,
};

use crate::error::{Error, ErrorCode};
use crate::identity::NodeIdentity;

/// How far a request's timestamp may be from the provider's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The signature scheme this node signs and accepts. DO NOT CHANGE without a new text layout:
/// version 1 was bound neither to a provider nor to the request's fields.
pub const SCHEME_VERSION: u32 = 2;

/// A storage request that carries an owner's signature over its other fields.
pub trait SignedRequest: Message + Clone {
    /// The operation the request performs, as the signed text names it.
    const OPERATION: &'static str;
    /// The object the request is about (empty for a listing).
    fn object_id(&self) -> &str;
    /// The signature field.
    fn auth_mut(&mut self) -> &mut Option<OwnerSignature>;
}

macro_rules! signed_request {
    ($request:ty, $operation:literal, |$it:ident| $object_id:expr) => {
        impl SignedRequest for $request {
            const OPERATION: &'static str = $operation;
            fn object_id(&self) -> &str {
                let $it = self;
                $object_id
            }
            fn auth_mut(&mut self) -> &mut Option<OwnerSignature> {
                &mut self.auth
            }
        }
    };
}

signed_request!(ObjectHeader, "put", |it| &it.object_id);
signed_request!(GetObjectRequest, "get", |it| &it.object_id);
signed_request!(DeleteObjectRequest, "delete", |it| &it.object_id);
signed_request!(AuditObjectRequest, "audit", |it| &it.object_id);
signed_request!(RenewObjectRequest, "renew", |it| &it.object_id);
signed_request!(ListObjectsRequest, "list", |_it| "");

/// Returns SHA-256 of `request` encoded without its signature.
fn request_digest<R: SignedRequest>(request: &R) -> [u8; 32] {
    let mut unsigned = request.clone();
    *unsigned.auth_mut() = None;
    Sha256::digest(unsigned.encode_to_vec()).into()
}

/// The text an owner signs. DO NOT CHANGE: providers check exactly this layout.
fn signed_text<R: SignedRequest>(
    request: &R,
    provider: &str,
    timestamp_ms: u64,
    nonce: &[u8],
) -> String {
    format!(
        "sphere storage request\nversion {SCHEME_VERSION}\n{}\n{provider}\n{}\n{timestamp_ms}\n{}\n{}",
        R::OPERATION,
        request.object_id(),
        hex::encode(nonce),
        hex::encode(request_digest(request)),
    )
}

/// Signs `request` as `identity` for the provider whose node ID is `provider`, now.
pub fn sign<R: SignedRequest>(identity: &NodeIdentity, provider: &str, mut request: R) -> R {
    let timestamp_ms = crate::clock::now_ms();
    let nonce: [u8; 16] = rand::random();
    *request.auth_mut() = None;
    let text = signed_text(&request, provider, timestamp_ms, &nonce);
    let signature = identity
        .signer()
        .sign_message_sync(text.as_bytes())
        .expect("signing with a local key cannot fail");
    *request.auth_mut() = Some(OwnerSignature {
        owner: identity.node_id(),
        timestamp_ms,
        nonce: nonce.to_vec().into(),
        signature: signature.as_bytes().to_vec().into(),
        provider: provider.to_owned(),
        version: SCHEME_VERSION,
    });
    request
}

/// Checks signed requests addressed to one provider and remembers their nonces.
#[derive(Debug)]
pub struct RequestVerifier {
    /// The node ID of the provider this verifier works for.
    provider: Address,
    /// When this provider started (ms since the epoch): requests signed before were perhaps
    /// accepted by an earlier process, whose nonces are forgotten.
    started_at_ms: u64,
    /// Nonces seen, with the time (ms) after which they can be forgotten.
    seen_nonces: Mutex<SeenNonces>,
}

#[derive(Debug, Default)]
struct SeenNonces {
    forget_after_ms: HashMap<[u8; 16], u64>,
    /// When expired nonces were last dropped: dropping them walks the whole set, so it is done
    /// at most once a second rather than on every request.
    pruned_at_ms: u64,
}

impl RequestVerifier {
    /// Returns a verifier for the provider `provider`, which starts now.
    pub fn new(provider: Address) -> Self {
        Self {
            provider,
            started_at_ms: crate::clock::now_ms(),
            seen_nonces: Mutex::default(),
        }
    }

    /// Returns the address that signed `request`, or a `permission_denied` error saying why the
    /// request is refused.
    pub fn verify<R: SignedRequest>(&self, request: &R) -> Result<Address, Error> {
        let denied = |why: String| {
            Error::new(
                ErrorCode::PermissionDenied,
                format!("request refused: {why}"),
            )
        };
        let mut request = request.clone();
        let auth = request
            .auth_mut()
            .take()
            .ok_or_else(|| denied("it is not signed by the object's owner".into()))?;
        if auth.version != SCHEME_VERSION {
            return Err(denied(format!(
                "it is signed with scheme version {} and this provider accepts only version \
                 {SCHEME_VERSION} (bound to one provider); upgrade the owner's node",
                auth.version
            )));
        }
        let provider: Address = auth
            .provider
            .parse()
            .map_err(|_| denied("its provider is not a node ID".into()))?;
        if provider != self.provider {
            return Err(denied(format!(
                "it is addressed to provider {}, not to this one ({})",
                provider.to_checksum(None),
                self.provider.to_checksum(None)
            )));
        }
        let now_ms = crate::clock::now_ms();
        let skew_ms = MAX_CLOCK_SKEW.as_millis() as u64;
        if auth.timestamp_ms.abs_diff(now_ms) > skew_ms {
            return Err(denied(
                "its timestamp is more than 5 minutes from this provider's clock".into(),
            ));
        }
        if auth.timestamp_ms < self.started_at_ms {
            return Err(denied(
                "it was signed before this provider started; sign a new request".into(),
            ));
        }
        let nonce: [u8; 16] = auth.nonce[..]
            .try_into()
            .map_err(|_| denied("its nonce must be 16 bytes".into()))?;
        let signature = Signature::try_from(&auth.signature[..])
            .map_err(|_| denied("its signature is malformed".into()))?;
        let text = signed_text(&request, &auth.provider, auth.timestamp_ms, &nonce);
        let signer = signature
            .recover_address_from_msg(text.as_bytes())
            .map_err(|_| denied("its signature does not verify".into()))?;
        let claimed: Address = auth
            .owner
            .parse()
            .map_err(|_| denied("its owner is not an address".into()))?;
        if signer != claimed {
            return Err(denied(
                "it is signed by another key than its owner's, or altered after signing".into(),
            ));
        }
        let mut seen = self
            .seen_nonces
            .lock()
            .expect("nonce set lock is never poisoned");
        if now_ms >= seen.pruned_at_ms + 1_000 {
            seen.forget_after_ms
                .retain(|_, forget_after| *forget_after > now_ms);
            seen.pruned_at_ms = now_ms;
        }
        if seen
            .forget_after_ms
            .insert(nonce, auth.timestamp_ms + skew_ms)
            .is_some()
        {
            return Err(denied("it was seen before (replayed)".into()));
        }
        Ok(signer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(object_id: &str) -> GetObjectRequest {
        GetObjectRequest {
            object_id: object_id.into(),
            ..Default::default()
        }
    }

    fn provider() -> (NodeIdentity, RequestVerifier) {
        let provider = NodeIdentity::generate();
        let verifier = RequestVerifier::new(provider.node_id().parse().expect("address"));
        (provider, verifier)
    }

    #[test]
    fn a_signature_verifies_once_and_only_for_what_was_signed() {
        let owner = NodeIdentity::generate();
        let (provider, verifier) = provider();
        let id = provider.node_id();
        let request = sign(&owner, &id, get("abc"));
        let signer = verifier.verify(&request).expect("valid");
        assert_eq!(signer.to_checksum(None), owner.node_id());
        let replay = verifier.verify(&request).expect_err("replay");
        assert!(replay.message.contains("replayed"), "{}", replay.message);

        let mut other_object = sign(&owner, &id, get("abc"));
        other_object.object_id = "xyz".into();
        let mut other_start = sign(&owner, &id, get("abc"));
        other_start.start_chunk = 7;
        for altered in [other_object, other_start] {
            let refused = verifier.verify(&altered).expect_err("altered");
            assert!(refused.message.contains("altered"), "{}", refused.message);
        }
        let delete = sign(
            &owner,
            &id,
            DeleteObjectRequest {
                object_id: "abc".into(),
                auth: None,
            },
        );
        let as_get = GetObjectRequest {
            object_id: "abc".into(),
            auth: delete.auth.clone(),
            ..Default::default()
        };
        assert!(verifier.verify(&as_get).is_err(), "operation is signed");
        assert!(verifier.verify(&get("abc")).is_err(), "unsigned");
    }

    #[test]
    fn a_request_for_another_provider_is_refused() {
        let owner = NodeIdentity::generate();
        let (_, verifier) = provider();
        let other = NodeIdentity::generate().node_id();
        let refused = verifier
            .verify(&sign(&owner, &other, get("abc")))
            .expect_err("addressed elsewhere");
        assert_eq!(refused.code, ErrorCode::PermissionDenied);
        assert!(
            refused.message.contains("addressed to provider"),
            "{}",
            refused.message
        );
        // Rewriting the provider field to this one breaks the signature.
        let mut redirected = sign(&owner, &other, get("abc"));
        redirected.auth.as_mut().expect("signed").provider = verifier.provider.to_checksum(None);
        assert!(verifier.verify(&redirected).is_err());
    }

    #[test]
    fn a_signature_by_another_key_from_another_time_or_scheme_is_refused() {
        let owner = NodeIdentity::generate();
        let (provider, verifier) = provider();
        let id = provider.node_id();
        let mut forged = sign(&NodeIdentity::generate(), &id, get("abc"));
        forged.auth.as_mut().expect("signed").owner = owner.node_id();
        assert_eq!(
            verifier.verify(&forged).expect_err("forged").code,
            ErrorCode::PermissionDenied
        );
        let mut stale = sign(&owner, &id, get("abc"));
        stale.auth.as_mut().expect("signed").timestamp_ms -= 10 * 60 * 1000;
        assert!(verifier.verify(&stale).is_err());
        let mut old_scheme = sign(&owner, &id, get("abc"));
        old_scheme.auth.as_mut().expect("signed").version = 1;
        let refused = verifier.verify(&old_scheme).expect_err("version 1");
        assert!(refused.message.contains("version"), "{}", refused.message);
    }

    #[test]
    fn a_request_signed_before_the_provider_started_is_refused() {
        let owner = NodeIdentity::generate();
        let provider = NodeIdentity::generate();
        let id = provider.node_id();
        let captured = sign(&owner, &id, get("abc"));
        std::thread::sleep(Duration::from_millis(5));
        let restarted = RequestVerifier::new(id.parse().expect("address"));
        let refused = restarted
            .verify(&captured)
            .expect_err("signed before start");
        assert!(
            refused.message.contains("before this provider started"),
            "{}",
            refused.message
        );
        assert!(restarted.verify(&sign(&owner, &id, get("abc"))).is_ok());
    }
}

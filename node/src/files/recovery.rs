//! Recovery from the key file alone: after losing its database, a node finds its files again on
//! the providers it knows.
//!
//! Each provider lists the objects the node's key owns ([`crate::auth`] signs the listing). Every
//! data object's ID is a file ID; the manifest object next to it has an ID derived from the file
//! ID and is encrypted under a key derived from the node key and the file ID, so the key file is
//! all it takes to read it. Files found on several providers get all of them as replicas.

use std::collections::BTreeMap;

use sphere_proto::v1::ListObjectsRequest;

use super::{Files, KIND_DATA, KIND_MANIFEST, manifest_object_id};
use crate::auth;
use crate::error::Error;
use crate::identity::NodeId;
use crate::peers::Target;
use crate::storage::files::{FileRecord, Manifest, Replica};

/// What recovery found.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RecoveryReport {
    /// Providers asked.
    pub providers_asked: usize,
    /// Providers that answered.
    pub providers_answered: usize,
    /// Files found on the providers.
    pub files_found: usize,
    /// Files this node had no record of, now recorded again.
    pub files_restored: usize,
    /// Payment channels this node had no record of, found again on the chain before the
    /// providers were asked (charging providers are paid for reading the manifests); 0 with
    /// payments off.
    #[serde(default)]
    pub channels_restored: usize,
}

impl Files {
    /// Finds this node's payment channels on the chain again (reading a manifest from a
    /// charging provider is paid), then asks every configured peer, every live member of the
    /// mesh and `extra_providers` for this node's objects and records again every file whose
    /// manifest can be read. Files the node already has a record of are left as they are.
    pub async fn recover(&self, extra_providers: &[String]) -> Result<RecoveryReport, Error> {
        let channels_restored = match &self.payer {
            Some(payer) => payer.recover().await?.len(),
            None => 0,
        };
        let mut providers: Vec<Target> = Vec::new();
        for provider in &self.options.providers {
            providers.push(Target::anyone_at(provider.clone()));
        }
        for provider in extra_providers {
            providers.push(self.peers.resolve(provider).await?);
        }
        if let Some(mesh) = self.peers.mesh() {
            for (node, address, _) in mesh.live_members().await {
                providers.push(Target::node_at(node, address));
            }
        }
        let mut asked: Vec<Target> = Vec::new();
        for provider in providers {
            if !asked
                .iter()
                .any(|known| known.address() == provider.address())
            {
                asked.push(provider);
            }
        }
        let mut report = RecoveryReport {
            providers_asked: asked.len(),
            channels_restored,
            ..RecoveryReport::default()
        };
        let mut found: BTreeMap<String, (Manifest, Vec<Replica>)> = BTreeMap::new();
        for provider in &asked {
            match self.manifests_on(provider).await {
                Ok((provider_id, manifests)) => {
                    report.providers_answered += 1;
                    for manifest in manifests {
                        let replica =
                            Replica::new(provider.address().to_owned(), provider_id.to_string());
                        found
                            .entry(manifest.id.clone())
                            .or_insert_with(|| (manifest, Vec::new()))
                            .1
                            .push(replica);
                    }
                }
                Err(error) => tracing::warn!(%provider, %error, "provider did not answer recovery"),
            }
        }
        report.files_found = found.len();
        for (id, (manifest, replicas)) in found {
            if self.index.get(&id).await?.is_some() {
                continue;
            }
            let record = FileRecord {
                manifest,
                replicas_wanted: replicas.len() as u32,
                replicas,
                // Labels live only in the owner's record, which recovery rebuilds without.
                labels: BTreeMap::new(),
            };
            self.index.put(&record).await?;
            report.files_restored += 1;
        }
        Ok(report)
    }

    /// Returns `provider`'s node ID and the manifests of this node's files it holds.
    async fn manifests_on(&self, provider: &Target) -> Result<(NodeId, Vec<Manifest>), Error> {
        let provider_id = self.peers.node_id(provider).await?;
        let listing = self
            .peers
            .storage(provider)
            .list_objects(auth::sign(
                &self.identity,
                &provider_id.to_string(),
                ListObjectsRequest { auth: None },
            ))
            .await
            .map_err(|status| crate::peers::remote_error(&status, provider))?
            .into_inner();
        let manifests_stored: Vec<(&str, u64)> = listing
            .objects
            .iter()
            .filter(|object| object.kind == KIND_MANIFEST)
            .map(|object| (object.object_id.as_str(), object.size))
            .collect();
        let mut manifests = Vec::new();
        for data in listing
            .objects
            .iter()
            .filter(|object| object.kind == KIND_DATA)
        {
            let file_id = &data.object_id;
            let manifest_id = manifest_object_id(file_id);
            let Some(&(_, manifest_size)) = manifests_stored
                .iter()
                .find(|(id, _)| *id == manifest_id.as_str())
            else {
                continue;
            };
            match self
                .read_manifest(provider, file_id, &manifest_id, manifest_size)
                .await
            {
                Ok(manifest) => manifests.push(manifest),
                Err(error) => tracing::warn!(%provider, file_id, %error, "unreadable manifest"),
            }
        }
        Ok((provider_id, manifests))
    }

    async fn read_manifest(
        &self,
        provider: &Target,
        file_id: &str,
        manifest_id: &str,
        size: u64,
    ) -> Result<Manifest, Error> {
        let (mut stream, payment) = self.get_object(provider, manifest_id, 0, (size, 1)).await?;
        let sealed = stream
            .message()
            .await
            .map_err(|status| crate::peers::remote_error(&status, provider))?
            .ok_or_else(|| {
                Error::new(
                    crate::error::ErrorCode::IntegrityError,
                    "empty manifest object",
                )
            })?
            .chunk;
        super::settle(payment, &Ok::<(), Error>(())).await;
        let mut plain = Vec::from(sealed);
        self.manifest_key(file_id)
            .cipher(manifest_id)
            .open(0, true, &mut plain)?;
        let manifest: Manifest = serde_json::from_slice(&plain).map_err(|error| {
            Error::new(
                crate::error::ErrorCode::IntegrityError,
                format!("manifest does not decode: {error}"),
            )
        })?;
        if manifest.id != file_id {
            return Err(Error::new(
                crate::error::ErrorCode::IntegrityError,
                "manifest of another file",
            ));
        }
        Ok(manifest)
    }
}

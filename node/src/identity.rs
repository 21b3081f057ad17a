//! The node's identity: a secp256k1 key whose Ethereum address is the node ID.
//!
//! The same key will sign payment vouchers and transactions, so a provider is paid at the address
//! other nodes know it by. The key file holds the 32-byte private key as hex on one line (the
//! format of geth's `--nodekey`), readable by its owner only (mode 0600).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use alloy_primitives::Address;
use alloy_signer_local::PrivateKeySigner;

/// A node's ID: the Ethereum address of its key. Written with the EIP-55 checksum, read in any
/// case (`0x` and 40 hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Address);

impl NodeId {
    /// The ID of the node whose key has this uncompressed public key (64 bytes: x then y).
    pub fn from_public_key(uncompressed: &[u8; 64]) -> Self {
        Self(Address::from_raw_public_key(uncompressed))
    }

    /// The address payments and signatures use.
    pub fn address(self) -> Address {
        self.0
    }
}

impl From<Address> for NodeId {
    fn from(address: Address) -> Self {
        Self(address)
    }
}

/// How many node IDs each thread keeps written out.
const WRITTEN_KEPT: usize = 8;

impl std::fmt::Display for NodeId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Answers and logs name the same few nodes over and over, and each checksum costs a
        // keccak hash: each thread keeps the last ones it wrote.
        thread_local! {
            static WRITTEN: std::cell::RefCell<Vec<(Address, Box<str>)>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        WRITTEN.with_borrow_mut(|written| {
            if let Some((_, text)) = written.iter().find(|(address, _)| *address == self.0) {
                return formatter.write_str(text);
            }
            let text: Box<str> = self.0.to_checksum(None).into();
            if written.len() == WRITTEN_KEPT {
                written.remove(0);
            }
            written.push((self.0, text));
            formatter.write_str(&written[written.len() - 1].1)
        })
    }
}

/// Why a text is not a node ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a node ID (0x and 40 hex digits)")]
pub struct NotANodeId(String);

impl std::str::FromStr for NodeId {
    type Err = NotANodeId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let hex_digits = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .filter(|digits| digits.len() == 40)
            .ok_or_else(|| NotANodeId(text.to_owned()))?;
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(hex_digits, &mut bytes).map_err(|_| NotANodeId(text.to_owned()))?;
        Ok(Self(Address::from(bytes)))
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Errors reading or writing a key file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The configured key file does not exist and is not ours to create.
    #[error("key file {path} does not exist: create one with `sphere keygen --out {path}`")]
    Missing {
        /// The configured key file.
        path: PathBuf,
    },
    /// `keygen` would overwrite an existing identity.
    #[error("key file {path} already exists: refusing to replace a node's identity")]
    AlreadyExists {
        /// The existing key file.
        path: PathBuf,
    },
    /// The key file holds something other than a secp256k1 private key in hex.
    #[error("key file {path} does not hold a 64-hex-digit secp256k1 private key")]
    Malformed {
        /// The unreadable key file.
        path: PathBuf,
    },
    /// The key file could be read or written by anyone but its owner.
    #[error("key file {path} has mode {mode:o}: it must be readable by its owner only (chmod 600)")]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file system refused.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
}

/// A node's secp256k1 key and the node ID derived from it.
#[derive(Clone)]
pub struct NodeIdentity {
    signer: PrivateKeySigner,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        formatter
            .debug_struct("NodeIdentity")
            .field("node_id", &self.node_id())
            .finish()
    }
}

impl NodeIdentity {
    /// Creates a fresh random identity.
    pub fn generate() -> Self {
        Self {
            signer: PrivateKeySigner::random(),
        }
    }

    /// Returns the node ID: the key's Ethereum address, EIP-55 checksummed.
    pub fn node_id(&self) -> String {
        self.id().to_string()
    }

    /// Returns the node ID as a value.
    pub fn id(&self) -> NodeId {
        NodeId(self.signer.address())
    }

    /// Derives `N` secret bytes for `purpose` from the node key (HKDF-SHA256): the same key and
    /// purpose always give the same bytes, so whatever is derived is recovered from the key file
    /// alone.
    pub fn derive_secret<const N: usize>(&self, purpose: &[u8]) -> [u8; N] {
        let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(
            Some(b"sphere.v1 derived secrets"),
            &self.signer.to_bytes()[..],
        );
        let mut secret = [0u8; N];
        hkdf.expand(purpose, &mut secret)
            .expect("HKDF-SHA256 gives up to 8160 bytes");
        secret
    }

    /// Returns the signer for payments and signed requests.
    pub fn signer(&self) -> &PrivateKeySigner {
        &self.signer
    }

    /// Loads the key in `path`; if the file is missing and `create_if_missing` holds, writes a new
    /// key there first. The second value is true when a key was created.
    pub fn load_or_create(
        path: &Path,
        create_if_missing: bool,
    ) -> Result<(Self, bool), IdentityError> {
        match std::fs::metadata(path) {
            Ok(_) => Ok((Self::load(path)?, false)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if !create_if_missing {
                    return Err(IdentityError::Missing {
                        path: path.to_owned(),
                    });
                }
                let identity = Self::generate();
                identity.write_new(path)?;
                Ok((identity, true))
            }
            Err(source) => Err(IdentityError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Loads the key in `path`, refusing a file others can read.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let io_error = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        let mode = std::fs::metadata(path)
            .map_err(io_error)?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io_error)?;
        let malformed = || IdentityError::Malformed {
            path: path.to_owned(),
        };
        let hex_key = text.trim();
        let hex_key = hex_key.strip_prefix("0x").unwrap_or(hex_key);
        let bytes = hex::decode(hex_key).map_err(|_| malformed())?;
        let signer = PrivateKeySigner::from_slice(&bytes).map_err(|_| malformed())?;
        Ok(Self { signer })
    }

    /// Writes the key to a new file `path` with mode 0600 and syncs it; never overwrites.
    pub fn write_new(&self, path: &Path) -> Result<(), IdentityError> {
        let io_error = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(io_error)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    IdentityError::AlreadyExists {
                        path: path.to_owned(),
                    }
                } else {
                    io_error(source)
                }
            })?;
        let hex_key = hex::encode(self.signer.to_bytes());
        file.write_all(format!("{hex_key}\n").as_bytes())
            .map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
        crate::storage::sync_parent_dir(path).map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_kept_written_out_still_show_their_own_checksum() {
        let ids: Vec<NodeId> = (0..3 * WRITTEN_KEPT as u8)
            .map(|byte| NodeId::from(Address::repeat_byte(byte.wrapping_mul(37))))
            .collect();
        for _ in 0..2 {
            for id in ids.iter().chain(ids.iter().rev()) {
                assert_eq!(id.to_string(), id.address().to_checksum(None));
            }
        }
    }

    #[test]
    fn node_ids_read_in_any_case_and_show_checksummed() {
        let identity = NodeIdentity::generate();
        let shown = identity.id().to_string();
        assert_eq!(shown, identity.node_id());
        for written in [
            shown.clone(),
            shown.to_lowercase(),
            shown.replacen("0x", "0X", 1),
        ] {
            assert_eq!(written.parse::<NodeId>(), Ok(identity.id()), "{written}");
        }
        for bad in [
            "",
            "0x",
            "0x1234",
            &shown[2..],
            &format!("{shown}00"),
            "0xzz34567890123456789012345678901234567890",
        ] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&identity.id()).expect("serialises");
        assert_eq!(json, format!("\"{shown}\""));
        assert_eq!(
            serde_json::from_str::<NodeId>(&json).expect("reads"),
            identity.id()
        );
    }

    #[test]
    fn same_file_gives_same_identity_and_is_private() {
        let dir = tempdir();
        let path = dir.join("node.key");
        let (created, was_created) = NodeIdentity::load_or_create(&path, true).expect("create");
        assert!(was_created);
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let (loaded, was_created) = NodeIdentity::load_or_create(&path, true).expect("load");
        assert!(!was_created);
        assert_eq!(created.node_id(), loaded.node_id());
        assert!(created.node_id().starts_with("0x") && created.node_id().len() == 42);
    }

    #[test]
    fn derived_secrets_depend_on_key_and_purpose_only() {
        let identity = NodeIdentity::generate();
        let first: [u8; 39] = identity.derive_secret(b"file:1");
        assert_eq!(first, identity.derive_secret::<39>(b"file:1"));
        assert_ne!(first, identity.derive_secret::<39>(b"file:2"));
        assert_ne!(
            first,
            NodeIdentity::generate().derive_secret::<39>(b"file:1")
        );
    }

    #[test]
    fn configured_key_file_is_never_invented() {
        let dir = tempdir();
        let error =
            NodeIdentity::load_or_create(&dir.join("absent.key"), false).expect_err("must refuse");
        assert!(matches!(error, IdentityError::Missing { .. }));
    }

    #[test]
    fn keygen_never_overwrites_and_open_files_are_refused() {
        let dir = tempdir();
        let path = dir.join("node.key");
        NodeIdentity::generate().write_new(&path).expect("write");
        let error = NodeIdentity::generate()
            .write_new(&path)
            .expect_err("must refuse");
        assert!(matches!(error, IdentityError::AlreadyExists { .. }));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            NodeIdentity::load(&path),
            Err(IdentityError::TooOpen { .. })
        ));
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sphere-identity-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}

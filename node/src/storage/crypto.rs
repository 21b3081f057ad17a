//! Encryption of a file before it leaves its owner: AES-256-GCM in the STREAM construction.
//!
//! Every file gets its own 256-bit key and 7-byte nonce prefix, derived from the owner's node key
//! and the file's random 128-bit ID (so no two files share a key, and the key file alone recovers
//! every file's key). Chunk `i` is
//! sealed under the nonce `prefix ‖ i (32-bit big endian) ‖ last-chunk flag`, with the file ID as
//! associated data, so a chunk cannot be moved to another position, another file, or be made to
//! look like the end of the file: reordering, dropping or truncating chunks fails to decrypt.
//! The chunk index is 32 bits, so a file has at most 2³² chunks (4 PiB at 1 MiB per chunk).

use aead_stream::{NewStream, StreamBE32, StreamPrimitive};
use aes_gcm::aead::KeyInit;
use aes_gcm::{Aes256Gcm, Key};

use super::StorageError;

/// Bytes the authentication tag adds to every chunk.
pub const TAG_LEN: usize = 16;
/// Length of the random nonce prefix; the STREAM construction fills the other 5 bytes.
pub const NONCE_PREFIX_LEN: usize = 7;

/// The secret of one file: its key and nonce prefix. Only the owner ever holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct FileKey {
    key: [u8; 32],
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("FileKey(..)")
    }
}

impl FileKey {
    /// Returns a fresh random key; never reuse one for two files.
    pub fn generate() -> Self {
        Self::from_secret(rand::random())
    }

    /// Returns the key made of 39 secret bytes: 32 of key, 7 of nonce prefix.
    pub fn from_secret(secret: [u8; 39]) -> Self {
        let (key, nonce_prefix) = secret.split_at(32);
        Self {
            key: key.try_into().expect("32 bytes"),
            nonce_prefix: nonce_prefix.try_into().expect("7 bytes"),
        }
    }

    /// Returns the sealer for the file `file_id`.
    pub fn cipher(&self, file_id: &str) -> ChunkCipher {
        let aead = Aes256Gcm::new(&Key::<Aes256Gcm>::from(self.key));
        ChunkCipher {
            stream: StreamBE32::from_aead(aead, &self.nonce_prefix.into()),
            associated_data: file_id.as_bytes().to_vec(),
        }
    }
}

/// Seals and opens the chunks of one file.
pub struct ChunkCipher {
    stream: StreamBE32<Aes256Gcm>,
    associated_data: Vec<u8>,
}

impl ChunkCipher {
    /// Encrypts chunk `index` in place, appending its tag. `last` marks the file's final chunk.
    pub fn seal(&self, index: u32, last: bool, chunk: &mut Vec<u8>) -> Result<(), StorageError> {
        self.stream
            .encrypt_in_place(index, last, &self.associated_data, chunk)
            .map_err(|_| StorageError::Integrity(format!("could not encrypt chunk {index}")))
    }

    /// Decrypts chunk `index` in place, checking its tag; fails on any change to the chunk.
    pub fn open(&self, index: u32, last: bool, chunk: &mut Vec<u8>) -> Result<(), StorageError> {
        self.stream
            .decrypt_in_place(index, last, &self.associated_data, chunk)
            .map_err(|_| StorageError::Integrity(format!("chunk {index} failed authentication")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(cipher: &ChunkCipher, index: u32, last: bool, text: &[u8]) -> Vec<u8> {
        let mut chunk = text.to_vec();
        cipher.seal(index, last, &mut chunk).expect("seal");
        chunk
    }

    #[test]
    fn round_trip_and_every_kind_of_tampering_fails() {
        let key = FileKey::generate();
        let cipher = key.cipher("file-a");
        let chunk = sealed(&cipher, 3, false, b"some plaintext");
        assert_eq!(chunk.len(), 14 + TAG_LEN);

        let mut intact = chunk.clone();
        cipher.open(3, false, &mut intact).expect("opens");
        assert_eq!(intact, b"some plaintext");

        let mut flipped = chunk.clone();
        flipped[0] ^= 1;
        assert!(cipher.open(3, false, &mut flipped).is_err(), "changed byte");
        assert!(
            cipher.open(4, false, &mut chunk.clone()).is_err(),
            "moved chunk"
        );
        assert!(
            cipher.open(3, true, &mut chunk.clone()).is_err(),
            "truncation"
        );
        let other_file = key.cipher("file-b");
        assert!(
            other_file.open(3, false, &mut chunk.clone()).is_err(),
            "other file"
        );
        let other_key = FileKey::generate().cipher("file-a");
        assert!(
            other_key.open(3, false, &mut chunk.clone()).is_err(),
            "other key"
        );
    }

    #[test]
    fn keys_are_fresh_or_follow_their_secret() {
        assert_ne!(FileKey::generate(), FileKey::generate());
        assert_eq!(FileKey::from_secret([3; 39]), FileKey::from_secret([3; 39]));
    }
}

//! The barrier's crypto: a keyring of AES-256-GCM terms, and the stored-value format bound to its path.
//!
//! Stored value: `term (u32 BE) | version (1) | nonce (12) | ciphertext+tag`. The associated data
//! is the header's term and version, then `cluster_id NUL path`, so a value copied to another
//! path, or into another cluster, or with its header altered, fails to decrypt. Nonces are random, so a term may encrypt at most [`TERM_ENCRYPTION_LIMIT`] values:
//! encryptions are reserved in blocks recorded in the stored keyring (a conditional write), which
//! counts them across restarts and replicas, and the term rotates before the budget is spent.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use rand::RngCore;

use crate::secret::{Key256, SecretBytes};

/// Version 2 authenticates the header's term and version; version 1 (written before, where only
/// the path and cluster were associated data) is still read.
pub const FORMAT_VERSION: u8 = 2;
const VERSION_1: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 12;
const TAG_LEN: usize = 16;
/// How much longer a stored value is than its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// NIST SP 800-38D: at most 2^32 random-nonce encryptions per key; we stop well before it.
pub const TERM_ENCRYPTION_LIMIT: u64 = 1 << 32;
/// Rotate once this much of a term's budget is reserved, leaving room for in-flight blocks.
pub const ROTATE_AT: u64 = TERM_ENCRYPTION_LIMIT - (1 << 28);
/// Encryptions a replica reserves at a time.
pub const BLOCK_SIZE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BarrierError {
    #[error("stored value is truncated")]
    Truncated,
    #[error("stored value was encrypted under keyring term {0}, which this keyring does not hold")]
    UnknownTerm(u32),
    #[error("stored value has unknown format version {0}")]
    UnknownVersion(u8),
    #[error("stored value failed authentication (tampered, or moved from another path)")]
    Tampered,
    #[error("the encryption block of this replica is spent; reserve another")]
    BlockSpent,
    #[error("serialised keyring is malformed")]
    MalformedKeyring,
}

fn associated_data(cluster_id: &str, path: &str) -> Vec<u8> {
    associated_parts(cluster_id, path).concat()
}

/// The associated data of a value stored at `path`: `cluster_id NUL path` (behind the header).
fn associated_parts<'a>(cluster_id: &'a str, path: &'a str) -> [&'a [u8]; 3] {
    [cluster_id.as_bytes(), b"\0", path.as_bytes()]
}

/// Encrypts one value with a bare key (used for the keyring itself under the root key).
pub fn seal_with_key(key: &Key256, term: u32, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.expose().into());
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut header = [0u8; 5];
    header[..4].copy_from_slice(&term.to_be_bytes());
    header[4] = FORMAT_VERSION;
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &[&header[..], aad].concat(),
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

/// Reads the header of a stored value: its term.
pub fn term_of(blob: &[u8]) -> Result<u32, BarrierError> {
    if blob.len() < HEADER_LEN + TAG_LEN {
        return Err(BarrierError::Truncated);
    }
    if blob[4] != FORMAT_VERSION && blob[4] != VERSION_1 {
        return Err(BarrierError::UnknownVersion(blob[4]));
    }
    Ok(u32::from_be_bytes(
        blob[..4].try_into().expect("length checked"),
    ))
}

pub fn open_with_key(key: &Key256, aad: &[u8], blob: &[u8]) -> Result<SecretBytes, BarrierError> {
    open_with_parts(key, &[aad], blob)
}

/// [`open_with_key`] with the associated data given in parts, joined once behind the header.
fn open_with_parts(key: &Key256, aad: &[&[u8]], blob: &[u8]) -> Result<SecretBytes, BarrierError> {
    term_of(blob)?;
    let cipher = Aes256Gcm::new(key.expose().into());
    let header = match blob[4] {
        VERSION_1 => &[][..],
        _ => &blob[..5],
    };
    let mut associated =
        Vec::with_capacity(header.len() + aad.iter().map(|part| part.len()).sum::<usize>());
    associated.extend_from_slice(header);
    for part in aad {
        associated.extend_from_slice(part);
    }
    cipher
        .decrypt(
            Nonce::from_slice(&blob[5..HEADER_LEN]),
            Payload {
                msg: &blob[HEADER_LEN..],
                aad: &associated,
            },
        )
        .map(SecretBytes::new)
        .map_err(|_| BarrierError::Tampered)
}

pub struct Term {
    pub number: u32,
    pub key: Key256,
    /// Unix seconds.
    pub install_time: i64,
    /// Encryptions reserved so far by all replicas (an upper bound of those done).
    pub reserved: u64,
}

/// The keyring as held in memory by one replica: immutable terms plus this replica's block.
pub struct Keyring {
    cluster_id: String,
    terms: BTreeMap<u32, Term>,
    active: u32,
    block_next: AtomicU64,
    block_end: u64,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("active", &self.active)
            .field("terms", &self.terms.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// A fresh keyring with one term and no block reserved.
    pub fn new(cluster_id: &str, now: i64) -> Self {
        let mut terms = BTreeMap::new();
        terms.insert(
            1,
            Term {
                number: 1,
                key: Key256::generate(),
                install_time: now,
                reserved: 0,
            },
        );
        Keyring {
            cluster_id: cluster_id.to_owned(),
            terms,
            active: 1,
            block_next: AtomicU64::new(0),
            block_end: 0,
        }
    }

    pub fn active_term(&self) -> &Term {
        &self.terms[&self.active]
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn encrypt(&self, path: &str, plaintext: &[u8]) -> Result<Vec<u8>, BarrierError> {
        if self.block_next.fetch_add(1, Ordering::Relaxed) >= self.block_end {
            return Err(BarrierError::BlockSpent);
        }
        let term = self.active_term();
        Ok(seal_with_key(
            &term.key,
            term.number,
            &associated_data(&self.cluster_id, path),
            plaintext,
        ))
    }

    pub fn decrypt(&self, path: &str, blob: &[u8]) -> Result<SecretBytes, BarrierError> {
        let term_number = term_of(blob)?;
        let term = self
            .terms
            .get(&term_number)
            .ok_or(BarrierError::UnknownTerm(term_number))?;
        open_with_parts(&term.key, &associated_parts(&self.cluster_id, path), blob)
    }

    /// Takes a reservation of `BLOCK_SIZE` encryptions for this replica, rotating to a new term
    /// first when the active one has reached [`ROTATE_AT`]. The caller persists the result with
    /// a conditional write, so two replicas never hold the same block.
    pub fn with_new_block(&self, now: i64) -> Keyring {
        let mut next = self.duplicate();
        if next.active_term().reserved + BLOCK_SIZE > ROTATE_AT {
            next.push_term(now);
        }
        let term = next
            .terms
            .get_mut(&next.active)
            .expect("active term exists");
        term.reserved += BLOCK_SIZE;
        next.block_next = AtomicU64::new(0);
        next.block_end = BLOCK_SIZE;
        next
    }

    /// A copy with a new active term (and no block: the next encryption reserves one).
    pub fn rotated(&self, now: i64) -> Keyring {
        let mut next = self.duplicate();
        next.push_term(now);
        next
    }

    fn push_term(&mut self, now: i64) {
        let number = self.active + 1;
        self.terms.insert(
            number,
            Term {
                number,
                key: Key256::generate(),
                install_time: now,
                reserved: 0,
            },
        );
        self.active = number;
        self.block_next = AtomicU64::new(0);
        self.block_end = 0;
    }

    fn duplicate(&self) -> Keyring {
        let terms = self
            .terms
            .iter()
            .map(|(&n, t)| {
                (
                    n,
                    Term {
                        number: n,
                        key: t.key.duplicate(),
                        install_time: t.install_time,
                        reserved: t.reserved,
                    },
                )
            })
            .collect();
        Keyring {
            cluster_id: self.cluster_id.clone(),
            terms,
            active: self.active,
            block_next: AtomicU64::new(self.block_next.load(Ordering::Relaxed)),
            block_end: self.block_end,
        }
    }

    /// `active (4) | count (4) | count × [term (4) | install (8) | reserved (8) | key (32)]`.
    pub fn to_bytes(&self) -> SecretBytes {
        let mut out = Vec::with_capacity(8 + self.terms.len() * 52);
        out.extend_from_slice(&self.active.to_be_bytes());
        out.extend_from_slice(&(self.terms.len() as u32).to_be_bytes());
        for term in self.terms.values() {
            out.extend_from_slice(&term.number.to_be_bytes());
            out.extend_from_slice(&term.install_time.to_be_bytes());
            out.extend_from_slice(&term.reserved.to_be_bytes());
            out.extend_from_slice(term.key.expose());
        }
        SecretBytes::new(out)
    }

    /// Restores a stored keyring; the replica holds no block until it reserves one.
    pub fn from_bytes(cluster_id: &str, bytes: &[u8]) -> Result<Keyring, BarrierError> {
        let read_u32 = |at: usize| -> Result<u32, BarrierError> {
            Ok(u32::from_be_bytes(
                bytes
                    .get(at..at + 4)
                    .ok_or(BarrierError::MalformedKeyring)?
                    .try_into()
                    .unwrap(),
            ))
        };
        let read_u64 = |at: usize| -> Result<u64, BarrierError> {
            Ok(u64::from_be_bytes(
                bytes
                    .get(at..at + 8)
                    .ok_or(BarrierError::MalformedKeyring)?
                    .try_into()
                    .unwrap(),
            ))
        };
        let active = read_u32(0)?;
        let count = read_u32(4)? as usize;
        if bytes.len() != 8 + count * 52 {
            return Err(BarrierError::MalformedKeyring);
        }
        let mut terms = BTreeMap::new();
        for i in 0..count {
            let at = 8 + i * 52;
            let number = read_u32(at)?;
            let install_time = read_u64(at + 4)? as i64;
            let reserved = read_u64(at + 12)?;
            let key = Key256::from_slice(&bytes[at + 20..at + 52])
                .ok_or(BarrierError::MalformedKeyring)?;
            terms.insert(
                number,
                Term {
                    number,
                    key,
                    install_time,
                    reserved,
                },
            );
        }
        if !terms.contains_key(&active) {
            return Err(BarrierError::MalformedKeyring);
        }
        Ok(Keyring {
            cluster_id: cluster_id.to_owned(),
            terms,
            active,
            block_next: AtomicU64::new(0),
            block_end: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_keyring() -> Keyring {
        Keyring::new("cluster-a", 0).with_new_block(0)
    }

    #[test]
    fn round_trip_and_format() {
        let ring = ready_keyring();
        let blob = ring.encrypt("logical/x/a", b"value").unwrap();
        assert_eq!(term_of(&blob).unwrap(), 1);
        assert_eq!(blob[4], FORMAT_VERSION);
        assert_eq!(blob.len(), HEADER_LEN + 5 + TAG_LEN);
        assert_eq!(
            ring.decrypt("logical/x/a", &blob).unwrap().expose(),
            b"value"
        );
    }

    #[test]
    fn version_1_values_written_before_still_open() {
        // Version 1: the associated data was the path and cluster only.
        let ring = ready_keyring();
        let term = ring.active_term();
        let cipher = Aes256Gcm::new(term.key.expose().into());
        let nonce = [5u8; 12];
        let aad = associated_data("cluster-a", "p");
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: b"old value",
                    aad: &aad,
                },
            )
            .unwrap();
        let blob = [
            &term.number.to_be_bytes()[..],
            &[VERSION_1],
            &nonce,
            &ciphertext,
        ]
        .concat();
        assert_eq!(ring.decrypt("p", &blob).unwrap().expose(), b"old value");
        // A version 2 value relabelled as version 1 does not open.
        let mut relabelled = ring.encrypt("p", b"new value").unwrap();
        relabelled[4] = VERSION_1;
        assert_eq!(ring.decrypt("p", &relabelled), Err(BarrierError::Tampered));
    }

    #[test]
    fn nonces_are_fresh() {
        let ring = ready_keyring();
        let a = ring.encrypt("p", b"same").unwrap();
        let b = ring.encrypt("p", b"same").unwrap();
        assert_ne!(a[5..HEADER_LEN], b[5..HEADER_LEN]);
    }

    #[test]
    fn value_moved_to_another_path_or_cluster_fails() {
        let ring = ready_keyring();
        let blob = ring.encrypt("logical/x/a", b"value").unwrap();
        assert_eq!(
            ring.decrypt("logical/x/b", &blob),
            Err(BarrierError::Tampered)
        );
        let other = Keyring::from_bytes("cluster-b", ring.to_bytes().expose()).unwrap();
        assert_eq!(
            other.decrypt("logical/x/a", &blob),
            Err(BarrierError::Tampered)
        );
    }

    #[test]
    fn tampering_truncation_and_unknown_headers_are_errors() {
        let ring = ready_keyring();
        let blob = ring.encrypt("p", b"value").unwrap();
        for i in 5..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                ring.decrypt("p", &bad),
                Err(BarrierError::Tampered),
                "flip at byte {i}"
            );
        }
        // The header too: found by the `barrier` fuzz target, where a value sealed with a bare
        // key (the keyring under the root key) still opened with its term altered.
        let key = Key256::from_slice(&[3; 32]).unwrap();
        let sealed = seal_with_key(&key, 1, b"aad", b"value");
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    open_with_key(&key, b"aad", &bad).is_err(),
                    "flip of bit {bit} at byte {i}"
                );
            }
        }
        assert_eq!(
            ring.decrypt("p", &blob[..blob.len() - 1]),
            Err(BarrierError::Tampered)
        );
        assert_eq!(ring.decrypt("p", &blob[..10]), Err(BarrierError::Truncated));
        let mut unknown_term = blob.clone();
        unknown_term[..4].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(
            ring.decrypt("p", &unknown_term),
            Err(BarrierError::UnknownTerm(9))
        );
        let mut unknown_version = blob.clone();
        unknown_version[4] = 7;
        assert_eq!(
            ring.decrypt("p", &unknown_version),
            Err(BarrierError::UnknownVersion(7))
        );
    }

    #[test]
    fn rotation_keeps_old_terms_readable() {
        let ring = ready_keyring();
        let old = ring.encrypt("p", b"old").unwrap();
        let rotated = ring.rotated(5).with_new_block(5);
        assert_eq!(rotated.active_term().number, 2);
        let new = rotated.encrypt("p", b"new").unwrap();
        assert_eq!(term_of(&new).unwrap(), 2);
        assert_eq!(rotated.decrypt("p", &old).unwrap().expose(), b"old");
        assert_eq!(ring.decrypt("p", &new), Err(BarrierError::UnknownTerm(2)));
    }

    #[test]
    fn blocks_are_counted_and_spent() {
        let ring = Keyring::new("c", 0);
        assert_eq!(ring.encrypt("p", b"x"), Err(BarrierError::BlockSpent));
        let ring = ring.with_new_block(0);
        assert_eq!(ring.active_term().reserved, BLOCK_SIZE);
        let ring = ring.with_new_block(0);
        assert_eq!(ring.active_term().reserved, 2 * BLOCK_SIZE);
    }

    #[test]
    fn term_rotates_before_the_nonce_budget_is_spent() {
        let mut ring = Keyring::new("c", 0);
        ring.terms.get_mut(&1).unwrap().reserved = ROTATE_AT - BLOCK_SIZE / 2;
        let next = ring.with_new_block(0);
        assert_eq!(next.active_term().number, 2);
        assert_eq!(next.active_term().reserved, BLOCK_SIZE);
        assert!(next.terms[&1].reserved < TERM_ENCRYPTION_LIMIT);
    }

    #[test]
    fn serialisation_round_trips_and_rejects_garbage() {
        let ring = ready_keyring().rotated(9).with_new_block(9);
        let bytes = ring.to_bytes();
        let back = Keyring::from_bytes("cluster-a", bytes.expose()).unwrap();
        assert_eq!(back.active, 2);
        assert_eq!(back.terms.len(), 2);
        assert_eq!(back.terms[&2].install_time, 9);
        assert_eq!(back.terms[&2].reserved, BLOCK_SIZE);
        assert_eq!(
            Keyring::from_bytes("c", &bytes.expose()[..20]).unwrap_err(),
            BarrierError::MalformedKeyring
        );
    }
}

//! The envelope every secret in the store is sealed in: AES-256-GCM (ring), a random nonce,
//! and associated data that binds the blob to its org, user, field and generation, so a
//! blob copied to another record does not open. Several keys: the first seals, any opens
//! (keys rotate without downtime). Layout: `version | key id (4) | nonce (12) | ciphertext
//! and tag`.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::secret::StoreKey;

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const HEADER: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// What a sealed blob belongs to: checked when it is opened.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub org: &'a str,
    pub user: Option<&'a str>,
    /// `access_token` or `refresh_token`.
    pub field: &'static str,
    pub generation: u64,
}

impl Binding<'_> {
    fn aad(&self) -> Vec<u8> {
        let user = self.user.unwrap_or_default();
        let mut aad = Vec::with_capacity(32 + self.org.len() + user.len());
        aad.extend_from_slice(b"tokenbroker-store-v1\0");
        for part in [self.org, user, self.field] {
            aad.extend_from_slice(part.as_bytes());
            aad.push(0);
        }
        aad.extend_from_slice(&self.generation.to_be_bytes());
        aad
    }
}

/// Why a blob did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// None of the configured keys sealed it.
    #[error("sealed with a key that is not configured")]
    UnknownKey,
    /// Damaged, or bound to another record.
    #[error("damaged or moved from another record")]
    Damaged,
}

/// The configured keys, ready to seal and open.
pub struct Sealer {
    /// Key id and key; the first seals.
    keys: Vec<([u8; KEY_ID_LEN], LessSafeKey)>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({} keys)", self.keys.len())
    }
}

/// A key's id in the envelope: the first bytes of its SHA-256 (says which key to try,
/// reveals nothing of it).
fn key_id(key: &StoreKey) -> [u8; KEY_ID_LEN] {
    let digest = Sha256::digest(key.expose());
    [digest[0], digest[1], digest[2], digest[3]]
}

impl Sealer {
    /// Seals with the first of `keys`, opens with any. `keys` is not empty (the config
    /// requires one).
    pub fn new(keys: &[StoreKey]) -> Self {
        let keys = keys
            .iter()
            .filter_map(|k| {
                let unbound = UnboundKey::new(&AES_256_GCM, k.expose()).ok()?;
                Some((key_id(k), LessSafeKey::new(unbound)))
            })
            .collect();
        Self { keys }
    }

    /// The ids of the configured keys, as envelopes carry them after their version byte:
    /// what a shared store checks before it hands out a sealed refresh token, so that a
    /// replica without the key never takes (and so destroys) one it cannot open.
    pub fn key_ids(&self) -> Vec<[u8; KEY_ID_LEN]> {
        self.keys.iter().map(|(id, _)| *id).collect()
    }

    /// `plaintext` sealed for `binding` with the first key.
    pub fn seal(&self, binding: Binding<'_>, plaintext: &[u8]) -> Vec<u8> {
        let Some((id, key)) = self.keys.first() else {
            return Vec::new();
        };
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(HEADER + plaintext.len() + AES_256_GCM.tag_len());
        out.push(VERSION);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce_bytes);
        let mut body = Zeroizing::new(plaintext.to_vec());
        let nonce = Nonce::assume_unique_for_key(nonce_bytes);
        // Sealing fails only for plaintexts past GCM's limit (64 GiB).
        if let Ok(tag) = key.seal_in_place_separate_tag(nonce, Aad::from(binding.aad()), &mut body)
        {
            out.extend_from_slice(&body);
            out.extend_from_slice(tag.as_ref());
        }
        out
    }

    /// The plaintext of `blob`, if one of the keys sealed it for `binding`.
    pub fn open(&self, binding: Binding<'_>, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if blob.len() < HEADER + AES_256_GCM.tag_len() || blob[0] != VERSION {
            return Err(OpenError::Damaged);
        }
        let id = &blob[1..1 + KEY_ID_LEN];
        let nonce: [u8; NONCE_LEN] = blob[1 + KEY_ID_LEN..HEADER]
            .try_into()
            .map_err(|_| OpenError::Damaged)?;
        let mut known = false;
        for (_, key) in self.keys.iter().filter(|(k, _)| k == id) {
            known = true;
            let mut body = Zeroizing::new(blob[HEADER..].to_vec());
            let nonce = Nonce::assume_unique_for_key(nonce);
            if let Ok(plain) = key.open_in_place(nonce, Aad::from(binding.aad()), &mut body) {
                let len = plain.len();
                body.truncate(len);
                return Ok(body);
            }
        }
        Err(if known {
            OpenError::Damaged
        } else {
            OpenError::UnknownKey
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(generation: u64) -> Binding<'static> {
        Binding {
            org: "acme",
            user: Some("EMP-1"),
            field: "access_token",
            generation,
        }
    }

    #[test]
    fn a_sealed_blob_opens_only_with_a_configured_key_and_for_its_own_record() {
        let (a, b) = (StoreKey::generate(), StoreKey::generate());
        let sealer = Sealer::new(std::slice::from_ref(&a));
        let blob = sealer.seal(binding(3), b"the token");
        assert!(!blob.windows(9).any(|w| w == b"the token"), "not in clear");
        assert_eq!(
            sealer.open(binding(3), &blob).unwrap().as_slice(),
            b"the token"
        );
        // Rotation: [b, a] opens what a sealed, and seals with b.
        let rotated = Sealer::new(&[b.clone(), a]);
        assert_eq!(
            rotated.open(binding(3), &blob).unwrap().as_slice(),
            b"the token"
        );
        let resealed = rotated.seal(binding(3), b"x");
        assert_eq!(
            Sealer::new(std::slice::from_ref(&b))
                .open(binding(3), &resealed)
                .unwrap()
                .as_slice(),
            b"x"
        );
        // b alone does not know a's blobs.
        assert_eq!(
            Sealer::new(&[b]).open(binding(3), &blob),
            Err(OpenError::UnknownKey)
        );
        // Bound to its record: another generation, field or user does not open it.
        assert_eq!(sealer.open(binding(4), &blob), Err(OpenError::Damaged));
        let refresh = Binding {
            field: "refresh_token",
            ..binding(3)
        };
        assert_eq!(sealer.open(refresh, &blob), Err(OpenError::Damaged));
        let other_user = Binding {
            user: Some("EMP-2"),
            ..binding(3)
        };
        assert_eq!(sealer.open(other_user, &blob), Err(OpenError::Damaged));
        // Damage anywhere is found.
        let mut flipped = blob.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(sealer.open(binding(3), &flipped), Err(OpenError::Damaged));
        assert_eq!(
            sealer.open(binding(3), &blob[..10]),
            Err(OpenError::Damaged)
        );
    }
}

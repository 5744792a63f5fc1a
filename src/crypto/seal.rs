//! Sealing secrets at rest with AES-256-GCM under the master key (DESIGN.md §4).
//!
//! A sealed value is `v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`. The key id names the
//! master key that sealed it, so a later master-key rotation can hold old and new keys side by
//! side and re-seal lazily. The AAD binds each ciphertext to its table, column and row: a sealed
//! value copied into another row or column does not open.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;

const FORMAT_VERSION: &str = "v1";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the master key must be 32 bytes of base64 ({0})")]
    BadMasterKey(String),
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value was made under another master key (key id {0})")]
    UnknownKey(String),
    #[error("sealed value does not open: wrong key, wrong row binding, or tampered")]
    Unauthentic,
}

/// The 32-byte root secret. Everything Ward keeps sealed, or keys with HMAC, derives from it.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let bytes = STANDARD
            .decode(text.trim())
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim()))
            .map_err(|e| SealError::BadMasterKey(e.to_string()))?;
        let array: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| SealError::BadMasterKey(format!("got {} bytes", b.len())))?;
        Ok(Self(array))
    }

    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// A purpose-bound subkey (HKDF-SHA-256), so no two uses share key material.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(b"ward"), &self.0);
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF's 255*32 limit, so expand cannot fail.
        if hk.expand(purpose.as_bytes(), &mut out).is_err() {
            out = [0u8; 32];
        }
        out
    }

    /// A short public fingerprint naming this key in sealed values.
    fn key_id(&self) -> String {
        let id = self.derive("ward/master-key-id/v1");
        URL_SAFE_NO_PAD.encode(&id[..6])
    }
}

/// Where a sealed value lives; the binding is authenticated as AAD.
#[derive(Debug, Clone, Copy)]
pub struct Aad<'a> {
    pub table: &'a str,
    pub column: &'a str,
    pub row: &'a str,
}

impl Aad<'_> {
    fn bytes(&self) -> Vec<u8> {
        format!(
            "ward/{FORMAT_VERSION}/{}/{}/{}",
            self.table, self.column, self.row
        )
        .into_bytes()
    }
}

/// One master key's derived material, named by the master key's id.
#[derive(Clone)]
struct KeySet {
    key_id: String,
    cipher: Aes256Gcm,
    mac_key: [u8; 32],
}

impl KeySet {
    fn new(master: &MasterKey) -> Self {
        let key = master.derive("ward/seal/aes-256-gcm/v1");
        Self {
            key_id: master.key_id(),
            cipher: Aes256Gcm::new(&key.into()),
            mac_key: master.derive("ward/keyed-hash/hmac-sha256/v1"),
        }
    }

    fn keyed_hash(&self, purpose: &str, data: &[u8]) -> String {
        use hmac::{Hmac, Mac};
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.mac_key) else {
            return String::new();
        };
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(data);
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }
}

/// Seals and opens values under the master key. It holds the current master key, which seals
/// and keys everything new, and any previous ones (after a master-key rotation), which only
/// open what they sealed and check what they keyed: each sealed value and each audit-chain link
/// names the key that made it.
#[derive(Clone)]
pub struct Sealer {
    current: KeySet,
    previous: Vec<KeySet>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("key_id", &self.current.key_id)
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.key_id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Sealer {
    pub fn new(master: &MasterKey) -> Self {
        Self::with_previous(master, &[])
    }

    /// The current master key plus previous ones kept to open and check older material.
    /// A previous key equal to the current one is ignored.
    pub fn with_previous(master: &MasterKey, previous: &[MasterKey]) -> Self {
        let current = KeySet::new(master);
        let mut kept: Vec<KeySet> = Vec::new();
        for key in previous {
            let set = KeySet::new(key);
            if set.key_id != current.key_id && kept.iter().all(|k| k.key_id != set.key_id) {
                kept.push(set);
            }
        }
        Self {
            current,
            previous: kept,
        }
    }

    /// The id of the current master key (also the id of the chain key derived from it).
    pub fn key_id(&self) -> &str {
        &self.current.key_id
    }

    /// The ids of every key held: the current one first.
    pub fn key_ids(&self) -> Vec<String> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| k.key_id.clone())
            .collect()
    }

    /// Whether this sealer holds the master key named `key_id`.
    pub fn holds(&self, key_id: &str) -> bool {
        self.key(key_id).is_some()
    }

    fn key(&self, key_id: &str) -> Option<&KeySet> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.key_id == key_id)
    }

    /// A keyed hash (HMAC-SHA-256 under a master-derived key) for secrets of moderate entropy
    /// that must be looked up exactly, such as recovery codes: a stolen database alone does not
    /// allow testing guesses offline, and `purpose` keeps uses apart. Made with the current key.
    pub fn keyed_hash(&self, purpose: &str, data: &[u8]) -> String {
        self.current.keyed_hash(purpose, data)
    }

    /// The keyed hash under the key named `key_id`, if this sealer holds it.
    pub fn keyed_hash_with(&self, key_id: &str, purpose: &str, data: &[u8]) -> Option<String> {
        self.key(key_id).map(|k| k.keyed_hash(purpose, data))
    }

    /// The keyed hash under every key held (current first), for looking up values keyed
    /// before a master-key rotation.
    pub fn keyed_hashes(&self, purpose: &str, data: &[u8]) -> Vec<String> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| k.keyed_hash(purpose, data))
            .collect()
    }

    pub fn seal(&self, aad: Aad<'_>, plaintext: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = aad.bytes();
        let ciphertext = self
            .current
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Unauthentic)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        Ok(format!(
            "{FORMAT_VERSION}.{}.{}",
            self.current.key_id,
            URL_SAFE_NO_PAD.encode(blob)
        ))
    }

    pub fn open(&self, aad: Aad<'_>, sealed: &str) -> Result<Vec<u8>, SealError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(version), Some(key_id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError::Malformed);
        };
        if version != FORMAT_VERSION {
            return Err(SealError::Malformed);
        }
        let Some(key) = self.key(key_id) else {
            return Err(SealError::UnknownKey(key_id.to_owned()));
        };
        let blob = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| SealError::Malformed)?;
        if blob.len() < NONCE_LEN + 16 {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let aad = aad.bytes();
        key.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Unauthentic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROW: Aad<'static> = Aad {
        table: "signing_keys",
        column: "private_jwk",
        row: "kid-1",
    };

    #[test]
    fn seal_then_open_round_trips() {
        let sealer = Sealer::new(&MasterKey::generate());
        let sealed = sealer.seal(ROW, b"top secret").expect("seals");
        assert!(sealed.starts_with("v1."));
        assert!(!sealed.contains("top secret"));
        assert_eq!(sealer.open(ROW, &sealed).expect("opens"), b"top secret");
    }

    #[test]
    fn same_plaintext_seals_differently_each_time() {
        let sealer = Sealer::new(&MasterKey::generate());
        assert_ne!(sealer.seal(ROW, b"x").ok(), sealer.seal(ROW, b"x").ok());
    }

    #[test]
    fn rejects_tampered_ciphertext() {
        let sealer = Sealer::new(&MasterKey::generate());
        let sealed = sealer.seal(ROW, b"top secret").expect("seals");
        let (head, body) = sealed.rsplit_once('.').expect("has body");
        let mut bytes = URL_SAFE_NO_PAD.decode(body).expect("b64");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = format!("{head}.{}", URL_SAFE_NO_PAD.encode(bytes));
        assert_eq!(sealer.open(ROW, &tampered), Err(SealError::Unauthentic));
    }

    #[test]
    fn rejects_wrong_row_binding() {
        let sealer = Sealer::new(&MasterKey::generate());
        let sealed = sealer.seal(ROW, b"top secret").expect("seals");
        let other_row = Aad {
            row: "kid-2",
            ..ROW
        };
        let other_column = Aad {
            column: "public_jwk",
            ..ROW
        };
        assert_eq!(sealer.open(other_row, &sealed), Err(SealError::Unauthentic));
        assert_eq!(
            sealer.open(other_column, &sealed),
            Err(SealError::Unauthentic)
        );
    }

    #[test]
    fn rejects_wrong_master_key() {
        let sealed = Sealer::new(&MasterKey::generate())
            .seal(ROW, b"top secret")
            .expect("seals");
        let other = Sealer::new(&MasterKey::generate());
        assert!(matches!(
            other.open(ROW, &sealed),
            Err(SealError::UnknownKey(_))
        ));
        // Even if the key id is forged to match, authentication still fails.
        let forged = sealed.replacen(sealed.split('.').nth(1).expect("key id"), other.key_id(), 1);
        assert_eq!(other.open(ROW, &forged), Err(SealError::Unauthentic));
    }

    #[test]
    fn rejects_malformed_values() {
        let sealer = Sealer::new(&MasterKey::generate());
        for bad in ["", "v1", "v1.x", "v2.abc.def", "v1.abc.!!!", "v1.abc.AAAA"] {
            assert!(sealer.open(ROW, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keyed_hashes_depend_on_key_purpose_and_data() {
        let key = MasterKey::generate();
        let a = Sealer::new(&key);
        assert_eq!(
            a.keyed_hash("p", b"x"),
            Sealer::new(&key).keyed_hash("p", b"x")
        );
        assert_ne!(a.keyed_hash("p", b"x"), a.keyed_hash("q", b"x"));
        assert_ne!(a.keyed_hash("p", b"x"), a.keyed_hash("p", b"y"));
        assert_ne!(
            a.keyed_hash("p", b"x"),
            Sealer::new(&MasterKey::generate()).keyed_hash("p", b"x")
        );
    }

    #[test]
    fn previous_keys_open_and_check_what_they_made_but_never_seal() {
        let old_key = MasterKey::generate();
        let new_key = MasterKey::generate();
        let old = Sealer::new(&old_key);
        let sealed_before = old.seal(ROW, b"top secret").expect("seals");
        let rotated = Sealer::with_previous(&new_key, &[old_key.clone(), new_key.clone()]);
        assert_eq!(
            rotated.key_ids(),
            vec![
                Sealer::new(&new_key).key_id().to_owned(),
                old.key_id().to_owned()
            ],
            "the current key first, duplicates dropped"
        );
        assert_eq!(
            rotated.open(ROW, &sealed_before).expect("opens"),
            b"top secret"
        );
        let sealed_after = rotated.seal(ROW, b"new secret").expect("seals");
        assert!(sealed_after.starts_with(&format!("v1.{}.", rotated.key_id())));
        assert!(matches!(
            old.open(ROW, &sealed_after),
            Err(SealError::UnknownKey(_))
        ));
        assert_eq!(
            rotated.keyed_hash("p", b"x"),
            Sealer::new(&new_key).keyed_hash("p", b"x")
        );
        assert_eq!(
            rotated.keyed_hash_with(old.key_id(), "p", b"x"),
            Some(old.keyed_hash("p", b"x"))
        );
        assert_eq!(rotated.keyed_hash_with("unknown", "p", b"x"), None);
        assert_eq!(
            rotated.keyed_hashes("p", b"x"),
            vec![rotated.keyed_hash("p", b"x"), old.keyed_hash("p", b"x")]
        );
    }

    #[test]
    fn master_key_parses_only_32_bytes() {
        let key = MasterKey::generate();
        assert!(MasterKey::from_base64(&key.to_base64()).is_ok());
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        assert!(MasterKey::from_base64("not base64 at all!").is_err());
        assert!(!format!("{key:?}").contains(&key.to_base64()));
    }
}

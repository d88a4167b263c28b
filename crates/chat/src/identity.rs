//! A user's identity: an ed25519 key pair, and the X25519 key bound to it.
//!
//! The public key ([`UserKey`]) is the user's permanent identity. The X25519 key used
//! for sealing envelopes and for Noise sessions is derived from the same key pair
//! (the birational map from Edwards to Montgomery form), so no extra record is
//! needed to bind it to the identity: the X25519 secret is
//! `StaticSecret::from(signing_key.to_scalar_bytes())` and the public is
//! `verifying_key.to_montgomery()`.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::CryptoRng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::wire::{byte_array, from_hex, to_hex};

/// Why a public key cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The 32 bytes are not the encoding of a point on the curve.
    #[error("user key is not a valid ed25519 public key")]
    InvalidKey,
    /// The point has small order: anyone could forge signatures for it.
    #[error("user key is a weak (small-order) ed25519 point")]
    WeakKey,
}

/// Why a string is not a user key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a user key is 64 hex characters")]
pub struct ParseKeyError;

/// A user: an ed25519 key pair. The secret never appears in `Debug` output.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
}

impl Identity {
    /// A new identity from 32 bytes drawn from `rng`.
    pub fn generate(rng: &mut impl CryptoRng) -> Identity {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Identity::from_secret_bytes(secret)
    }

    /// The identity whose ed25519 secret key (seed) is `secret`.
    pub fn from_secret_bytes(secret: [u8; 32]) -> Identity {
        Identity {
            signing: SigningKey::from_bytes(&secret),
        }
    }

    /// The ed25519 secret key (seed), to store in the data dir (mode 0600) or to
    /// sign BEP 44 items with.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public key: the user's identity.
    pub fn public(&self) -> UserKey {
        UserKey(self.signing.verifying_key().to_bytes())
    }

    /// The X25519 static secret bound to this identity (see [`x25519_secret`]).
    pub fn x25519_secret(&self) -> [u8; 32] {
        self.signing.to_scalar_bytes()
    }

    /// Signs `msg`. Callers put a domain-separation prefix in `msg`.
    pub(crate) fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.public())
    }
}

/// The X25519 static secret bound to `identity`: for Noise static keys and for
/// opening sealed envelopes. Its public half is [`UserKey::x25519_public`].
pub fn x25519_secret(identity: &Identity) -> [u8; 32] {
    identity.x25519_secret()
}

/// A user's ed25519 public key: the user's permanent identity.
///
/// Any 32 bytes can be held; [`UserKey::verifying_key`] says whether they are a
/// usable key. Serialized as 32 raw bytes in binary formats and as 64 hex
/// characters in human-readable ones.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserKey(pub [u8; 32]);

impl UserKey {
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The ed25519 verifying key, refusing invalid encodings and weak keys.
    pub fn verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| KeyError::InvalidKey)?;
        if key.is_weak() {
            return Err(KeyError::WeakKey);
        }
        Ok(key)
    }

    /// Whether `signature` is this key's strict ed25519 signature of `msg`.
    pub(crate) fn verifies(&self, msg: &[u8], signature: &[u8; 64]) -> bool {
        match self.verifying_key() {
            Ok(key) => key
                .verify_strict(msg, &Signature::from_bytes(signature))
                .is_ok(),
            Err(_) => false,
        }
    }

    /// The X25519 public key bound to this identity (the Montgomery form of the
    /// ed25519 point): the Noise static key and the key envelopes are sealed to.
    pub fn x25519_public(&self) -> Result<[u8; 32], KeyError> {
        Ok(self.verifying_key()?.to_montgomery().to_bytes())
    }

    /// A short string two people can compare to check they hold the same key:
    /// the first 16 bytes of SHA-256(key) as 8 groups of 4 hex characters,
    /// e.g. `"ab12 cd34 ef56 7890 1a2b 3c4d 5e6f 7a8b"`.
    pub fn fingerprint(&self) -> String {
        let digest: [u8; 32] = Sha256::digest(self.0).into();
        let hex = to_hex(&digest[..16]);
        let groups: Vec<&str> = (0..8).map(|i| &hex[4 * i..4 * i + 4]).collect();
        groups.join(" ")
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserKey({})", self.to_hex())
    }
}

impl FromStr for UserKey {
    type Err = ParseKeyError;

    /// Parses 64 hex characters (surrounding whitespace is ignored).
    fn from_str(s: &str) -> Result<UserKey, ParseKeyError> {
        from_hex(s.trim()).map(UserKey).ok_or(ParseKeyError)
    }
}

impl Serialize for UserKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        byte_array::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for UserKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<UserKey, D::Error> {
        byte_array::deserialize(d).map(UserKey)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use x25519_dalek::{PublicKey, StaticSecret};

    use super::*;

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(1)
    }

    #[test]
    fn secret_round_trip() {
        let id = Identity::generate(&mut rng());
        let again = Identity::from_secret_bytes(id.secret_bytes());
        assert_eq!(id.public(), again.public());
        assert!(format!("{id:?}").contains(&id.public().to_hex()));
        assert!(!format!("{id:?}").contains(&to_hex(&id.secret_bytes())));
    }

    #[test]
    fn x25519_binding_agrees() {
        let mut r = rng();
        for _ in 0..8 {
            let a = Identity::generate(&mut r);
            let b = Identity::generate(&mut r);
            let a_pub = PublicKey::from(a.public().x25519_public().unwrap());
            let b_pub = PublicKey::from(b.public().x25519_public().unwrap());
            let ab = StaticSecret::from(x25519_secret(&a)).diffie_hellman(&b_pub);
            let ba = StaticSecret::from(x25519_secret(&b)).diffie_hellman(&a_pub);
            assert_eq!(ab.as_bytes(), ba.as_bytes());
            // The public derived from the secret matches the Montgomery form.
            let derived = PublicKey::from(&StaticSecret::from(a.x25519_secret()));
            assert_eq!(derived.to_bytes(), a.public().x25519_public().unwrap());
        }
    }

    #[test]
    fn invalid_and_weak_keys() {
        // y = 2 does not decode to a curve point.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        assert_eq!(UserKey(bad).x25519_public(), Err(KeyError::InvalidKey));
        // The identity point (y = 1) has small order.
        let mut ident = [0u8; 32];
        ident[0] = 1;
        assert_eq!(
            UserKey(ident).verifying_key().err(),
            Some(KeyError::WeakKey)
        );
        assert!(!UserKey(ident).verifies(b"x", &[0; 64]));
    }

    #[test]
    fn hex_display_parse_and_serde() {
        let key = Identity::generate(&mut rng()).public();
        let s = key.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<UserKey>(), Ok(key));
        assert_eq!(
            format!(" {} ", s.to_uppercase()).parse::<UserKey>(),
            Ok(key)
        );
        assert_eq!("abc".parse::<UserKey>(), Err(ParseKeyError));
        let bin = postcard::to_stdvec(&key).unwrap();
        assert_eq!(bin, key.0.to_vec());
        assert_eq!(postcard::from_bytes::<UserKey>(&bin).unwrap(), key);
    }

    #[test]
    fn fingerprint_shape() {
        let key = UserKey([7; 32]);
        let fp = key.fingerprint();
        assert_eq!(fp.len(), 8 * 4 + 7);
        assert_eq!(fp.split(' ').count(), 8);
        let digest = Sha256::digest([7u8; 32]);
        assert!(fp.replace(' ', "").starts_with(&hex::encode(&digest[..2])));
        assert_ne!(fp, UserKey([8; 32]).fingerprint());
    }
}

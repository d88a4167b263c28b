//! Usernames and signed name claims.
//!
//! A claim binds a name to a user key. It is stored at the k closest nodes to
//! [`name_target`]; each storer keeps the first valid claim for a name and only
//! accepts updates signed by the same key with a higher `seq` ([`accept_claim`]).

use std::collections::BTreeMap;
use std::fmt;

use peerchat_kad::NodeId;
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use crate::identity::{Identity, KeyError, UserKey};
use crate::wire::{self, byte_array};

/// Longest username, in characters.
pub const MAX_NAME_LEN: usize = 32;

/// Largest encoded [`NameClaim`] accepted by [`NameClaim::from_bytes`].
pub const MAX_CLAIM_BYTES: usize = 256;

/// Domain separation for the claim signature.
const DOMAIN: &[u8] = b"peerchat-name-v1";

/// Why a string is not a username.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("name is {0} characters long, the most is {MAX_NAME_LEN}")]
    TooLong(usize),
    /// A character outside `a-z 0-9 _ - .` (after lowercasing).
    #[error(
        "name contains {ch:?} at position {pos}: only letters a-z, digits, '_', '-' and '.' are allowed"
    )]
    BadChar {
        /// The offending character.
        ch: char,
        /// Its position, counted in characters from 0.
        pos: usize,
    },
    /// The name starts with `_`, `-` or `.`.
    #[error("name must start with a letter or a digit, not {0:?}")]
    BadStart(char),
    /// A decoded name is not in lowercase normal form.
    #[error("name {0:?} is not in lowercase normal form")]
    NotNormalized(String),
}

/// A valid, normalized (lowercase) username: 1 to 32 characters from `a-z 0-9 _ - .`,
/// starting with a letter or a digit (so a name never looks like a command-line flag
/// or a path like `.` or `..`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

impl Username {
    /// Validates `name` and lowercases it (`"Alice"` becomes `"alice"`).
    pub fn new(name: &str) -> Result<Username, NameError> {
        validate_name(name)
    }

    /// The normalized name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where claims for this name are stored: see [`name_target`].
    pub fn target(&self) -> NodeId {
        name_target(self)
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Username({:?})", self.0)
    }
}

impl TryFrom<String> for Username {
    type Error = NameError;

    /// Strict: the string must already be normalized (used when decoding).
    fn try_from(s: String) -> Result<Username, NameError> {
        let name = validate_name(&s)?;
        if name.0 != s {
            return Err(NameError::NotNormalized(s));
        }
        Ok(name)
    }
}

impl From<Username> for String {
    fn from(name: Username) -> String {
        name.0
    }
}

/// Checks the name rules and returns the normalized (lowercase) name.
pub fn validate_name(name: &str) -> Result<Username, NameError> {
    let len = name.chars().count();
    if len == 0 {
        return Err(NameError::Empty);
    }
    if len > MAX_NAME_LEN {
        return Err(NameError::TooLong(len));
    }
    let mut out = String::with_capacity(name.len());
    for (pos, ch) in name.chars().enumerate() {
        let c = ch.to_ascii_lowercase();
        if !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.')) {
            return Err(NameError::BadChar { ch, pos });
        }
        if pos == 0 && !c.is_ascii_alphanumeric() {
            return Err(NameError::BadStart(ch));
        }
        out.push(c);
    }
    Ok(Username(out))
}

/// The DHT key of a name: SHA-1("peerchat:name:" ‖ normalized name).
pub fn name_target(name: &Username) -> NodeId {
    let mut h = Sha1::new();
    h.update(b"peerchat:name:");
    h.update(name.as_str().as_bytes());
    NodeId(h.finalize().into())
}

/// A signed claim of a name by a key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NameClaim {
    /// The claimed name.
    pub name: Username,
    /// The claiming user.
    pub key: UserKey,
    /// Update counter: a storer replaces a claim only with a higher `seq`.
    pub seq: u64,
    /// When the claim was signed, unix milliseconds.
    pub timestamp_ms: u64,
    /// Ed25519 signature by `key` over the domain-separated encoding.
    #[serde(with = "byte_array")]
    pub signature: [u8; 64],
}

/// Why a claim is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The claim's key is unusable.
    #[error("claim key is unusable: {0}")]
    BadKey(KeyError),
    /// The signature does not verify.
    #[error("name claim signature does not verify")]
    BadSignature,
    /// The name is held by another key.
    #[error("name {name} is already claimed by key {owner}")]
    Taken {
        /// The name.
        name: Username,
        /// The fingerprint of the key that holds it.
        owner: String,
    },
    /// An update that does not raise `seq`.
    #[error("claim update has seq {offered}, not above the stored seq {stored}")]
    StaleSeq {
        /// The stored claim's seq.
        stored: u64,
        /// The new claim's seq.
        offered: u64,
    },
    /// A claim compared with a stored claim for another name.
    #[error("claim is for name {offered}, the stored claim is for {stored}")]
    NameMismatch {
        /// The stored claim's name.
        stored: Username,
        /// The new claim's name.
        offered: Username,
    },
    /// The bytes are not a claim.
    #[error("malformed name claim: {0}")]
    Malformed(&'static str),
    /// The encoding is larger than [`MAX_CLAIM_BYTES`].
    #[error("name claim is {0} bytes, the most is {MAX_CLAIM_BYTES}")]
    TooLarge(usize),
}

/// What a storer does with an incoming claim ([`accept_claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// No claim was stored for the name: store this one.
    New,
    /// Same key, higher seq: replace the stored claim.
    Update,
    /// The very claim already stored: nothing to do.
    Unchanged,
}

impl NameClaim {
    /// Signs a claim of `name` by `identity`.
    pub fn new(identity: &Identity, name: &Username, seq: u64, now_ms: u64) -> NameClaim {
        let mut claim = NameClaim {
            name: name.clone(),
            key: identity.public(),
            seq,
            timestamp_ms: now_ms,
            signature: [0; 64],
        };
        claim.signature = identity.sign(&claim.signed_bytes());
        claim
    }

    /// `"peerchat-name-v1" ‖ len(name) as u8 ‖ name ‖ key ‖ seq (BE) ‖ timestamp_ms (BE)`.
    fn signed_bytes(&self) -> Vec<u8> {
        let name = self.name.as_str().as_bytes();
        let mut m = Vec::with_capacity(DOMAIN.len() + 1 + name.len() + 48);
        m.extend_from_slice(DOMAIN);
        // A Username is at most 32 ASCII bytes.
        m.push(name.len().min(255) as u8);
        m.extend_from_slice(name);
        m.extend_from_slice(&self.key.0);
        m.extend_from_slice(&self.seq.to_be_bytes());
        m.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        m
    }

    /// Checks the key and the signature.
    pub fn verify(&self) -> Result<(), ClaimError> {
        self.key.verifying_key().map_err(ClaimError::BadKey)?;
        if !self.key.verifies(&self.signed_bytes(), &self.signature) {
            return Err(ClaimError::BadSignature);
        }
        Ok(())
    }

    /// Where this claim is stored: [`name_target`] of its name.
    pub fn target(&self) -> NodeId {
        name_target(&self.name)
    }

    /// The postcard encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Decodes a claim (without verifying it); the name must be normalized.
    pub fn from_bytes(bytes: &[u8]) -> Result<NameClaim, ClaimError> {
        if bytes.len() > MAX_CLAIM_BYTES {
            return Err(ClaimError::TooLarge(bytes.len()));
        }
        wire::decode_exact(bytes).map_err(|e| match e {
            wire::StrictError::Malformed(why) => ClaimError::Malformed(why),
            wire::StrictError::Trailing(_) => ClaimError::Malformed("trailing bytes"),
        })
    }
}

/// A storer's policy: may `new` be stored where `existing` (already validated) is?
///
/// The first valid claim for a name wins; afterwards only its key may update it, with
/// a higher `seq`.
pub fn accept_claim(existing: Option<&NameClaim>, new: &NameClaim) -> Result<Accept, ClaimError> {
    // The claim already held, offered again (its owner announcing itself
    // anew): it was verified when it was stored, so no signature check.
    if existing == Some(new) {
        return Ok(Accept::Unchanged);
    }
    new.verify()?;
    let Some(old) = existing else {
        return Ok(Accept::New);
    };
    if old.name != new.name {
        return Err(ClaimError::NameMismatch {
            stored: old.name.clone(),
            offered: new.name.clone(),
        });
    }
    if old.key != new.key {
        return Err(ClaimError::Taken {
            name: old.name.clone(),
            owner: old.key.fingerprint(),
        });
    }
    if new.seq <= old.seq {
        return Err(ClaimError::StaleSeq {
            stored: old.seq,
            offered: new.seq,
        });
    }
    Ok(Accept::Update)
}

/// A reader's policy: of the claims returned by the storers of `name`, which one to
/// believe. Invalid claims and claims for other names are ignored; the key held by
/// the most storers wins (ties go to the smaller key, so every reader decides the
/// same way), and of that key's claims the one with the highest `seq`.
///
/// Clients then pin the key (trust on first use) and show its fingerprint.
pub fn resolve_claims<'a>(
    name: &Username,
    claims: impl IntoIterator<Item = &'a NameClaim>,
) -> Option<NameClaim> {
    let mut tally = ClaimTally::new(name.clone());
    for claim in claims {
        tally.add(claim);
    }
    tally.winner().cloned()
}

/// The count behind [`resolve_claims`], kept as the storers' answers come in,
/// so a reader can stop once the answers still out cannot change the outcome
/// ([`ClaimTally::leading_votes`]).
///
/// Storers mostly return the same claim: each distinct claim is verified once.
#[derive(Debug, Clone)]
pub struct ClaimTally {
    name: Username,
    /// Every distinct claim seen, and whether it verified.
    checked: Vec<(NameClaim, bool)>,
    /// Per key: its valid votes, and its claim with the highest `seq`.
    by_key: BTreeMap<UserKey, (usize, NameClaim)>,
}

impl ClaimTally {
    /// An empty count of the claims of `name`.
    pub fn new(name: Username) -> ClaimTally {
        ClaimTally {
            name,
            checked: Vec::new(),
            by_key: BTreeMap::new(),
        }
    }

    /// Whether `claim` is a valid claim of the name, without counting it; its
    /// signature is checked the first time only. A reader can check the
    /// first answers this way while it waits for the others.
    pub fn check(&mut self, claim: &NameClaim) -> bool {
        if claim.name != self.name {
            return false;
        }
        match self.checked.iter().find(|(c, _)| c == claim) {
            Some((_, v)) => *v,
            None => {
                let v = claim.verify().is_ok();
                self.checked.push((claim.clone(), v));
                v
            }
        }
    }

    /// Counts one storer's claim; false if it is not a valid claim of the name
    /// (a forgery, or a claim of another name), which counts for no key.
    pub fn add(&mut self, claim: &NameClaim) -> bool {
        let valid = self.check(claim);
        if valid {
            let entry = self
                .by_key
                .entry(claim.key)
                .or_insert_with(|| (0, claim.clone()));
            entry.0 += 1;
            if claim.seq > entry.1.seq {
                entry.1 = claim.clone();
            }
        }
        valid
    }

    /// The valid votes of the key held by the most storers (0 before any).
    pub fn leading_votes(&self) -> usize {
        self.by_key.values().map(|(v, _)| *v).max().unwrap_or(0)
    }

    /// The claim to believe: the newest of the key with the most votes, ties
    /// to the smaller key.
    pub fn winner(&self) -> Option<&NameClaim> {
        // max_by_key keeps the last maximum; iterate keys in descending order
        // so ties resolve to the smallest key.
        self.by_key
            .iter()
            .rev()
            .max_by_key(|(_, (votes, _))| *votes)
            .map(|(_, (_, claim))| claim)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn ids() -> (Identity, Identity) {
        let mut r = ChaCha20Rng::seed_from_u64(7);
        (Identity::generate(&mut r), Identity::generate(&mut r))
    }

    fn name(s: &str) -> Username {
        Username::new(s).unwrap()
    }

    #[test]
    fn name_rules() {
        assert_eq!(validate_name("Alice_99").unwrap().as_str(), "alice_99");
        assert_eq!(validate_name("a.b-c").unwrap().as_str(), "a.b-c");
        assert_eq!(validate_name(&"x".repeat(32)).unwrap().as_str().len(), 32);
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name(&"x".repeat(33)), Err(NameError::TooLong(33)));
        assert_eq!(
            validate_name("bob smith"),
            Err(NameError::BadChar { ch: ' ', pos: 3 })
        );
        assert_eq!(
            validate_name("zoë"),
            Err(NameError::BadChar { ch: 'ë', pos: 2 })
        );
        assert_eq!(validate_name("-rf"), Err(NameError::BadStart('-')));
        assert_eq!(validate_name(".."), Err(NameError::BadStart('.')));
        let msg = validate_name("a/b").unwrap_err().to_string();
        assert!(msg.contains("'/'") && msg.contains("position 1"), "{msg}");
        // Strict on decoding.
        assert_eq!(
            Username::try_from("Alice".to_string()),
            Err(NameError::NotNormalized("Alice".into()))
        );
    }

    #[test]
    fn name_target_is_sha1_of_prefixed_name() {
        let t = name_target(&name("Alice"));
        let want: [u8; 20] = Sha1::digest(b"peerchat:name:alice").into();
        assert_eq!(t, NodeId(want));
        assert_eq!(name("alice").target(), t);
    }

    #[test]
    fn claim_round_trip_and_verify() {
        let (a, _) = ids();
        let claim = NameClaim::new(&a, &name("alice"), 1, 1000);
        claim.verify().unwrap();
        let bytes = claim.to_bytes();
        assert!(bytes.len() <= MAX_CLAIM_BYTES);
        assert_eq!(NameClaim::from_bytes(&bytes).unwrap(), claim);
        assert!(NameClaim::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(NameClaim::from_bytes(&longer).is_err());
        assert!(NameClaim::from_bytes(&[0; 300]).is_err());
        // An upper-case name on the wire is refused.
        let mut upper = bytes.clone();
        upper[1] = b'A';
        assert!(matches!(
            NameClaim::from_bytes(&upper),
            Err(ClaimError::Malformed(_))
        ));
    }

    #[test]
    fn forged_claims_are_refused() {
        let (a, b) = ids();
        let claim = NameClaim::new(&a, &name("alice"), 1, 1000);
        // Key swapped: b claims a's signature.
        let mut forged = claim.clone();
        forged.key = b.public();
        assert_eq!(forged.verify(), Err(ClaimError::BadSignature));
        assert_eq!(accept_claim(None, &forged), Err(ClaimError::BadSignature));
        // Any field changed.
        let mut f = claim.clone();
        f.seq = 2;
        assert_eq!(f.verify(), Err(ClaimError::BadSignature));
        let mut f = claim.clone();
        f.name = name("alicf");
        assert_eq!(f.verify(), Err(ClaimError::BadSignature));
        let mut f = claim.clone();
        f.timestamp_ms += 1;
        assert_eq!(f.verify(), Err(ClaimError::BadSignature));
        let mut f = claim;
        f.signature[0] ^= 1;
        assert_eq!(f.verify(), Err(ClaimError::BadSignature));
        // An invalid key.
        let mut f = NameClaim::new(&a, &name("x"), 1, 1);
        f.key = UserKey([0; 32]);
        assert!(matches!(f.verify(), Err(ClaimError::BadKey(_))));
    }

    #[test]
    fn first_claim_wins_and_only_its_key_updates() {
        let (a, b) = ids();
        let alice = name("alice");
        let first = NameClaim::new(&a, &alice, 1, 1000);
        assert_eq!(accept_claim(None, &first), Ok(Accept::New));
        assert_eq!(accept_claim(Some(&first), &first), Ok(Accept::Unchanged));
        let thief = NameClaim::new(&b, &alice, 99, 2000);
        assert!(matches!(
            accept_claim(Some(&first), &thief),
            Err(ClaimError::Taken { .. })
        ));
        let update = NameClaim::new(&a, &alice, 2, 3000);
        assert_eq!(accept_claim(Some(&first), &update), Ok(Accept::Update));
        let replay = NameClaim::new(&a, &alice, 1, 4000);
        assert_eq!(
            accept_claim(Some(&update), &replay),
            Err(ClaimError::StaleSeq {
                stored: 2,
                offered: 1
            })
        );
        let other = NameClaim::new(&a, &name("bob"), 5, 1);
        assert!(matches!(
            accept_claim(Some(&first), &other),
            Err(ClaimError::NameMismatch { .. })
        ));
    }

    #[test]
    fn readers_pick_the_majority_key() {
        let (a, b) = ids();
        let alice = name("alice");
        let a1 = NameClaim::new(&a, &alice, 1, 1);
        let a2 = NameClaim::new(&a, &alice, 2, 2);
        let b1 = NameClaim::new(&b, &alice, 1, 0);
        let mut forged = NameClaim::new(&b, &alice, 7, 0);
        forged.seq = 8;
        let claims = [
            b1.clone(),
            a1,
            forged.clone(),
            forged,
            a2.clone(),
            b1.clone(),
        ];
        // a: 2 valid votes, b: 2 valid votes (forged ones ignored) -> the smaller key.
        let picked = resolve_claims(&alice, &claims).unwrap();
        let smaller = a.public().min(b.public());
        assert_eq!(picked.key, smaller);
        let with_extra_a = [claims.to_vec(), vec![a2.clone()]].concat();
        assert_eq!(resolve_claims(&alice, &with_extra_a), Some(a2.clone()));
        assert_eq!(resolve_claims(&name("bob"), &claims), None);
    }

    #[test]
    fn a_tally_counts_valid_claims_of_its_name_only() {
        let (a, b) = ids();
        let alice = name("alice");
        let mut tally = ClaimTally::new(alice.clone());
        assert_eq!((tally.leading_votes(), tally.winner()), (0, None));
        let a1 = NameClaim::new(&a, &alice, 1, 1);
        let mut forged = NameClaim::new(&b, &alice, 1, 1);
        forged.seq = 2;
        assert!(tally.add(&a1));
        assert!(!tally.add(&forged));
        assert!(!tally.add(&forged));
        assert!(!tally.add(&NameClaim::new(&b, &name("bob"), 1, 1)));
        assert!(tally.add(&a1));
        assert_eq!(tally.leading_votes(), 2);
        assert!(tally.add(&NameClaim::new(&b, &alice, 1, 1)));
        assert_eq!(tally.leading_votes(), 2);
        assert_eq!(tally.winner(), Some(&a1));
    }
}

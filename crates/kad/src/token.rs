//! Write tokens (BEP 5): SHA-1 of the requester's IP and a secret that rotates
//! every five minutes; a token from the current or the previous secret is valid.

use std::net::IpAddr;

use sha1::{Digest, Sha1};

/// Length of the tokens we hand out.
pub const TOKEN_LEN: usize = 8;

/// Issues and checks write tokens.
#[derive(Clone, Debug)]
pub struct Tokens {
    current: [u8; 16],
    previous: [u8; 16],
}

impl Tokens {
    /// Tokens from an initial secret.
    pub fn new(secret: [u8; 16]) -> Tokens {
        Tokens {
            current: secret,
            previous: secret,
        }
    }

    /// Starts using a new secret; tokens of the current one stay valid until the next rotation.
    pub fn rotate(&mut self, secret: [u8; 16]) {
        self.previous = self.current;
        self.current = secret;
    }

    fn make(secret: &[u8; 16], ip: IpAddr) -> [u8; TOKEN_LEN] {
        let mut h = Sha1::new();
        h.update(secret);
        match ip {
            IpAddr::V4(v4) => h.update(v4.octets()),
            IpAddr::V6(v6) => h.update(v6.octets()),
        }
        let out = h.finalize();
        let mut t = [0u8; TOKEN_LEN];
        t.copy_from_slice(&out[..TOKEN_LEN]);
        t
    }

    /// The token for a requester at `ip`.
    pub fn issue(&self, ip: IpAddr) -> Vec<u8> {
        Self::make(&self.current, ip).to_vec()
    }

    /// Whether `token` was issued to `ip` recently.
    pub fn verify(&self, token: &[u8], ip: IpAddr) -> bool {
        token == Self::make(&self.current, ip) || token == Self::make(&self.previous, ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_for_two_rotations_and_bound_to_ip() {
        let ip: IpAddr = "1.2.3.4".parse().unwrap();
        let other: IpAddr = "1.2.3.5".parse().unwrap();
        let mut t = Tokens::new([1; 16]);
        let tok = t.issue(ip);
        assert!(t.verify(&tok, ip));
        assert!(!t.verify(&tok, other));
        t.rotate([2; 16]);
        assert!(t.verify(&tok, ip));
        t.rotate([3; 16]);
        assert!(!t.verify(&tok, ip));
    }
}

//! BEP 42: node ids derived from the node's public IP, so that an attacker
//! cannot choose where in the id space it sits.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are treated as the IPv4 address
//! they carry, everywhere in this module.

use std::net::IpAddr;

use rand::RngCore;

use crate::id::NodeId;

/// Mask applied to an IPv4 address before hashing.
const V4_MASK: u32 = 0x030f_3fff;
/// Mask applied to the high 64 bits of an IPv6 address before hashing.
const V6_MASK: u64 = 0x0103_070f_1f3f_7fff;

/// Whether `ip` is exempt from BEP 42 (private, loopback, link-local): any id is valid.
///
/// IPv4: 10/8, 172.16/12, 192.168/16, 169.254/16, 127/8 (BEP 42's list) and
/// 0.0.0.0. IPv6: `::1`, `::`, unique-local `fc00::/7` and link-local `fe80::/10`.
pub fn is_exempt(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_private() || v4.is_link_local() || v4.is_loopback() || v4.is_unspecified()
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// The BEP 42 crc32c of `ip` with `r = rand & 7`.
fn crc(ip: IpAddr, rand: u8) -> u32 {
    let r = rand & 7;
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let x = (u32::from(v4) & V4_MASK) | (u32::from(r) << 29);
            crc32c::crc32c(&x.to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let high = (u128::from(v6) >> 64) as u64;
            let x = (high & V6_MASK) | (u64::from(r) << 61);
            crc32c::crc32c(&x.to_be_bytes())
        }
    }
}

/// A fresh node id valid for `ip` under BEP 42 (random for exempt addresses).
pub fn id_for_ip(ip: IpAddr, rng: &mut impl RngCore) -> NodeId {
    let rest = NodeId::random(rng);
    if is_exempt(ip) {
        return rest;
    }
    let rand = rest.0[19];
    id_from_parts(ip, rand, &rest.0)
}

/// The id with its checked bits fixed for `ip` and `rand` (the id's last byte), the rest
/// taken from `rest`. Used by [`id_for_ip`] and by the official test vectors.
///
/// Computed whether or not `ip` is exempt.
pub fn id_from_parts(ip: IpAddr, rand: u8, rest: &[u8; 20]) -> NodeId {
    let [c0, c1, c2, _] = crc(ip, rand).to_be_bytes();
    let mut id = *rest;
    id[0] = c0;
    id[1] = c1;
    id[2] = (c2 & 0xf8) | (rest[2] & 0x07);
    id[19] = rand;
    NodeId(id)
}

/// Whether `id` is valid for a node at `ip` (true for exempt addresses).
pub fn is_valid(id: &NodeId, ip: IpAddr) -> bool {
    if is_exempt(ip) {
        return true;
    }
    let [c0, c1, c2, _] = crc(ip, id.0[19]).to_be_bytes();
    id.0[0] == c0 && id.0[1] == c1 && (id.0[2] & 0xf8) == (c2 & 0xf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// (ip, rand, example id, crc32c) from BEP 42.
    const VECTORS: [(&str, u8, &str, u32); 5] = [
        (
            "124.31.75.21",
            1,
            "5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401",
            0x5fbfbdb2,
        ),
        (
            "21.75.31.124",
            86,
            "5a3ce9c14e7a08645677bbd1cfe7d8f956d53256",
            0x5a3ce9b0,
        ),
        (
            "65.23.51.170",
            22,
            "a5d43220bc8f112a3d426c84764f8c2a1150e616",
            0xa5d4344a,
        ),
        (
            "84.124.73.14",
            65,
            "1b0321dd1bb1fe518101ceef99462b947a01ff41",
            0x1b03217b,
        ),
        (
            "43.213.53.83",
            90,
            "e56f6cbf5b7c4be0237986d5243b87aa6d51305a",
            0xe56f6972,
        ),
    ];

    #[test]
    fn official_vectors() {
        for (ip, rand, example, want_crc) in VECTORS {
            let ip: IpAddr = ip.parse().unwrap();
            let example = NodeId::from_hex(example).unwrap();
            assert_eq!(crc(ip, rand), want_crc, "{ip}");
            assert_eq!(example.0[19], rand);
            let id = id_from_parts(ip, rand, &example.0);
            // The top 21 bits match the example; the rest is the example's.
            assert_eq!(id.0[..2], example.0[..2], "{ip}");
            assert_eq!(id.0[2] & 0xf8, example.0[2] & 0xf8, "{ip}");
            assert_eq!(id, example, "{ip}");
            assert!(is_valid(&example, ip), "{ip}");
            assert!(is_valid(&id, ip), "{ip}");
            // Flipping any checked bit, or the rand's low bits, invalidates it.
            for bit in 0..21 {
                let mut bad = example;
                bad.0[bit / 8] ^= 0x80 >> (bit % 8);
                assert!(!is_valid(&bad, ip), "{ip} bit {bit}");
            }
            let mut bad = example;
            bad.0[19] ^= 0x01;
            assert!(!is_valid(&bad, ip), "{ip} r");
            // The unchecked bits are free.
            let mut free = example;
            free.0[2] ^= 0x07;
            free.0[10] ^= 0xff;
            free.0[19] ^= 0xf8;
            assert!(is_valid(&free, ip), "{ip} free bits");
            // An IPv4-mapped IPv6 address is treated as the IPv4 address.
            let IpAddr::V4(v4) = ip else { unreachable!() };
            assert!(is_valid(&example, IpAddr::V6(v4.to_ipv6_mapped())));
        }
    }

    #[test]
    fn exemptions() {
        for ip in [
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.3.4",
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "::ffff:192.168.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_exempt(ip), "{ip}");
            assert!(is_valid(&NodeId([0xaa; 20]), ip), "{ip}");
        }
        for ip in [
            "11.0.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.169.0.1",
            "169.253.0.1",
            "128.0.0.1",
            "8.8.8.8",
            "2001:db8::1",
            "2a00:1450::1",
            "fec0::1",
            "fb00::1",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_exempt(ip), "{ip}");
        }
    }

    #[test]
    fn generated_ids_are_valid() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
        let ips: [IpAddr; 4] = [
            Ipv4Addr::new(124, 31, 75, 21).into(),
            Ipv4Addr::new(8, 8, 4, 4).into(),
            "2001:db8:1234:5678::9".parse::<Ipv6Addr>().unwrap().into(),
            "2a00:1450:4001:81c::200e"
                .parse::<Ipv6Addr>()
                .unwrap()
                .into(),
        ];
        for ip in ips {
            for _ in 0..64 {
                let id = id_for_ip(ip, &mut rng);
                assert!(is_valid(&id, ip), "{ip} {id}");
            }
        }
        // An id made for one public address is (almost always) invalid for another.
        let id = id_for_ip(ips[0], &mut rng);
        assert!(!is_valid(&id, ips[1]));
        // Exempt addresses get random ids.
        let a = id_for_ip(Ipv4Addr::LOCALHOST.into(), &mut rng);
        let b = id_for_ip(Ipv4Addr::LOCALHOST.into(), &mut rng);
        assert_ne!(a, b);
    }

    #[test]
    fn ipv6_uses_high_64_bits_only() {
        let a: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let id = id_from_parts(a, 0x33, &[7; 20]);
        assert!(is_valid(&id, a));
        assert!(is_valid(&id, b));
        // The mask keeps low bits of every byte of the prefix, so a different /48 differs.
        let c: IpAddr = "2001:db9:1:2::1".parse().unwrap();
        assert!(!is_valid(&id, c));
    }
}

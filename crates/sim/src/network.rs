//! The simulated network: virtual addresses, per-datagram latency and loss.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::LatencyModel;

/// The UDP port of every simulated node.
pub const PORT: u16 = 6881;
/// First address of the simulated network (10.0.0.0/8: private, so BEP 42 exempts it).
const NET_BASE: u32 = 0x0a00_0000;
/// Most nodes a simulation can create (addresses 10.0.0.1 to 10.255.255.254).
pub const MAX_NODES: usize = 0x00ff_fffe;

/// The address of node `index`: 10.0.0.1 for node 0, counting up.
pub fn addr_of(index: usize) -> SocketAddr {
    let ip = Ipv4Addr::from(NET_BASE + 1 + index as u32);
    SocketAddr::V4(SocketAddrV4::new(ip, PORT))
}

/// The node index of a simulated address, `None` for any other address.
pub fn index_of(addr: &SocketAddr) -> Option<usize> {
    let SocketAddr::V4(a) = addr else {
        return None;
    };
    let ip = u32::from(*a.ip());
    if a.port() != PORT || ip >> 24 != NET_BASE >> 24 || ip == NET_BASE {
        return None;
    }
    Some((ip - NET_BASE - 1) as usize)
}

/// SplitMix64's finalizer: a fixed, well-mixing 64-bit permutation.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Latency and loss, seeded.
#[derive(Debug)]
pub struct Network {
    latency: LatencyModel,
    loss: f64,
    /// Key of the per-pair base latency hash.
    pair_key: u64,
    rng: ChaCha8Rng,
}

impl Network {
    /// A network with this latency model and loss probability, seeded with `seed`.
    pub fn new(latency: LatencyModel, loss: f64, seed: u64) -> Network {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let pair_key = rng.random();
        Network {
            latency,
            loss: loss.clamp(0.0, 1.0),
            pair_key,
            rng,
        }
    }

    /// The fixed one-way base latency between nodes `a` and `b`, in nanoseconds.
    pub fn base_latency(&self, a: usize, b: usize) -> u64 {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let min = self.latency.min.as_nanos() as u64;
        let max = (self.latency.max.as_nanos() as u64).max(min);
        let h = mix64(self.pair_key ^ mix64(((lo as u64) << 32) | hi as u64));
        min + h % (max - min + 1)
    }

    /// The fate of one datagram from `a` to `b`: `None` if it is lost, or its
    /// latency in nanoseconds.
    pub fn transit(&mut self, a: usize, b: usize) -> Option<u64> {
        if self.loss > 0.0 && self.rng.random::<f64>() < self.loss {
            return None;
        }
        let jitter = self.latency.jitter.as_nanos() as u64;
        let extra = if jitter > 0 {
            self.rng.random_range(0..=jitter)
        } else {
            0
        };
        Some(self.base_latency(a, b) + extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn addresses_round_trip_and_are_private() {
        for i in [0usize, 1, 255, 256, 65_535, 100_000, MAX_NODES - 1] {
            let a = addr_of(i);
            assert_eq!(index_of(&a), Some(i));
            assert!(peerchat_kad::bep42::is_exempt(a.ip()));
        }
        assert_eq!(index_of(&"10.0.0.0:6881".parse().unwrap()), None);
        assert_eq!(index_of(&"10.0.0.1:6882".parse().unwrap()), None);
        assert_eq!(index_of(&"192.168.0.1:6881".parse().unwrap()), None);
        assert_eq!(index_of(&"[::1]:6881".parse().unwrap()), None);
    }

    #[test]
    fn latency_is_symmetric_and_in_range() {
        let model = LatencyModel {
            min: Duration::from_millis(10),
            max: Duration::from_millis(80),
            jitter: Duration::from_millis(5),
        };
        let mut net = Network::new(model, 0.0, 7);
        for a in 0..50 {
            for b in 0..50 {
                let l = net.base_latency(a, b);
                assert_eq!(l, net.base_latency(b, a));
                assert!((10_000_000..=80_000_000).contains(&l));
                let t = net.transit(a, b).unwrap();
                assert!(t >= l && t <= l + 5_000_000);
            }
        }
    }

    #[test]
    fn loss_rate_is_about_right() {
        let mut net = Network::new(LatencyModel::default(), 0.1, 3);
        let lost = (0..100_000).filter(|_| net.transit(1, 2).is_none()).count();
        assert!((9_000..11_000).contains(&lost), "lost {lost}");
    }
}

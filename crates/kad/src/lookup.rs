//! An iterative Kademlia lookup as a state machine.
//!
//! The lookup knows nothing of messages or sockets: the caller asks
//! [`Lookup::next`] whom to query, and reports each answer with
//! [`Lookup::on_success`] or [`Lookup::on_failure`]. At most `alpha` requests
//! are in flight at once. A request that takes longer than the per-request
//! timeout stops counting as in flight ("stalled"), so one slow node never
//! holds the lookup back; its reply is still used if it arrives while the
//! lookup runs. The lookup ends when the `k` closest nodes it has heard of
//! that did not fail have all answered (a stalled one is waited for one more
//! request timeout), or when nothing is left to ask.

use std::time::{Duration, Instant};

use crate::id::{Distance, NodeId};
use crate::krpc::NodeInfo;

/// Most candidates a lookup remembers: enough to replace every one of the
/// `k` closest several times over, bounded so a hostile answer cannot grow it.
const CANDIDATES_PER_K: usize = 2;
/// Room beyond `CANDIDATES_PER_K * k`, for requests in flight and stalled ones.
const CANDIDATES_EXTRA: usize = 16;

/// Where a candidate stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Heard of, not asked yet.
    NotContacted,
    /// Asked; the answer is due before the deadline.
    Waiting(Instant),
    /// Asked, and the deadline passed: no longer counted in flight. Its
    /// (resent) answer is still waited for until this instant before the
    /// lookup may end without it.
    Stalled(Instant),
    /// Answered.
    Succeeded,
    /// Failed (an error, or given up on).
    Failed,
}

/// A [`PeerState`] without its instant (kept beside it, in [`Candidate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    NotContacted,
    Waiting,
    Stalled,
    Succeeded,
    Failed,
}

/// One candidate of a lookup.
///
/// Packed to 72 bytes (a lookup holds dozens, and a node joining runs them
/// back to back): the state's instant sits beside a one-byte phase, and write
/// tokens, which only `get_peers` and `get` answers carry, live in the lookup.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The node.
    pub node: NodeInfo,
    /// Hops from us: 1 for the nodes we started from (saturating).
    hop: u16,
    phase: Phase,
    /// The instant of `Waiting` and `Stalled`.
    until: Option<Instant>,
}

impl Candidate {
    /// Its state.
    pub fn state(&self) -> PeerState {
        match (self.phase, self.until) {
            (Phase::Waiting, Some(t)) => PeerState::Waiting(t),
            (Phase::Stalled, Some(t)) => PeerState::Stalled(t),
            (Phase::Succeeded, _) => PeerState::Succeeded,
            (Phase::Failed, _) => PeerState::Failed,
            _ => PeerState::NotContacted,
        }
    }

    fn set_state(&mut self, state: PeerState) {
        (self.phase, self.until) = match state {
            PeerState::NotContacted => (Phase::NotContacted, None),
            PeerState::Waiting(t) => (Phase::Waiting, Some(t)),
            PeerState::Stalled(t) => (Phase::Stalled, Some(t)),
            PeerState::Succeeded => (Phase::Succeeded, None),
            PeerState::Failed => (Phase::Failed, None),
        };
    }

    /// Hops from us: 1 for the nodes we started from.
    pub fn hop(&self) -> u32 {
        u32::from(self.hop)
    }
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send a request to this node (it is now counted in flight).
    Query(NodeInfo),
    /// Nothing to send now: wait for answers or timeouts.
    Wait,
    /// The lookup is over.
    Done,
}

/// Lookup parameters.
#[derive(Clone, Copy, Debug)]
pub struct LookupConfig {
    /// Number of closest nodes sought.
    pub k: usize,
    /// Most requests in flight at once.
    pub alpha: usize,
    /// After this, a request no longer counts in flight.
    pub request_timeout: Duration,
}

/// An iterative lookup towards a target.
#[derive(Clone, Debug)]
pub struct Lookup {
    target: NodeId,
    config: LookupConfig,
    /// Sorted by distance to the target, closest first, no two with the same
    /// id. A vector sized to the cap rather than a tree: a lookup holds up to
    /// `CANDIDATES_PER_K * k + CANDIDATES_EXTRA` of them, and a node joining
    /// runs lookups back to back, so their bytes are a good part of its memory.
    candidates: Vec<Candidate>,
    /// Write tokens of the candidates that gave one, for a later
    /// `announce_peer` or `put` (one each: a candidate answers once).
    tokens: Vec<(NodeId, Vec<u8>)>,
    in_flight: usize,
    finished: bool,
}

impl Lookup {
    /// A lookup of `target`, seeded with `seeds` (usually the closest contacts of
    /// the routing table, or bootstrap nodes).
    pub fn new(
        target: NodeId,
        config: LookupConfig,
        seeds: impl IntoIterator<Item = NodeInfo>,
    ) -> Lookup {
        let config = LookupConfig {
            k: config.k.max(1),
            alpha: config.alpha.max(1),
            ..config
        };
        let mut l = Lookup {
            target,
            config,
            candidates: Vec::new(),
            tokens: Vec::new(),
            in_flight: 0,
            finished: false,
        };
        for s in seeds {
            l.add_candidate(s, 1);
        }
        l
    }

    /// The target.
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// Its parameters.
    pub fn config(&self) -> &LookupConfig {
        &self.config
    }

    /// Requests in flight (not counting stalled ones).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether the lookup is over.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Ends the lookup early (for example when a value was found).
    pub fn finish(&mut self) {
        self.finished = true;
    }

    fn distance(&self, c: &Candidate) -> Distance {
        c.node.id.distance(&self.target)
    }

    /// The position of the candidate at distance `d`, or where it would go.
    fn search(&self, d: &Distance) -> Result<usize, usize> {
        self.candidates
            .binary_search_by(|c| c.node.id.distance(&self.target).cmp(d))
    }

    fn add_candidate(&mut self, node: NodeInfo, hop: u32) {
        let d = node.id.distance(&self.target);
        let Err(mut at) = self.search(&d) else {
            return;
        };
        let cap = self.config.k * CANDIDATES_PER_K + CANDIDATES_EXTRA;
        if self.candidates.len() >= cap {
            // Make room: a failed candidate is of no more use; else the farthest
            // one not asked yet, if it is farther than the newcomer. (A stalled
            // one stays: its late answer still counts.)
            let failed = self
                .candidates
                .iter()
                .rposition(|c| c.phase == Phase::Failed);
            let victim = failed.or_else(|| {
                self.candidates
                    .iter()
                    .rposition(|c| c.phase == Phase::NotContacted)
                    .filter(|&i| self.distance(&self.candidates[i]) > d)
            });
            let Some(victim) = victim else {
                return;
            };
            self.candidates.remove(victim);
            if victim < at {
                at -= 1;
            }
        }
        if self.candidates.len() == self.candidates.capacity() {
            // Grow 8, 16, 32, then straight to the cap: doubling past it would
            // leave most of the last allocation empty.
            let want = (self.candidates.capacity() * 2).clamp(8, cap.max(8));
            self.candidates
                .reserve_exact(want.saturating_sub(self.candidates.len()).max(1));
        }
        self.candidates.insert(
            at,
            Candidate {
                node,
                hop: u16::try_from(hop).unwrap_or(u16::MAX),
                phase: Phase::NotContacted,
                until: None,
            },
        );
    }

    /// What to do next at `now`. Call repeatedly until it returns [`Next::Wait`]
    /// or [`Next::Done`]; each [`Next::Query`] must be sent.
    pub fn next(&mut self, now: Instant) -> Next {
        if self.finished {
            return Next::Done;
        }
        let mut succeeded = 0;
        let mut waiting = false;
        let mut to_query: Option<usize> = None;
        for (i, c) in self.candidates.iter().enumerate() {
            if succeeded >= self.config.k {
                break;
            }
            match c.state() {
                PeerState::Succeeded => succeeded += 1,
                // A stalled request no longer holds a slot, but its resent
                // answer may still come: among the k closest, it is waited for
                // one more request timeout before the lookup may end without it
                // (else one lost datagram could leave out the closest node).
                PeerState::Waiting(_) => waiting = true,
                PeerState::Stalled(until) if now < until => waiting = true,
                PeerState::Stalled(_) => {}
                PeerState::NotContacted => {
                    if to_query.is_none() {
                        to_query = Some(i);
                    }
                }
                PeerState::Failed => {}
            }
        }
        match to_query {
            Some(i) if self.in_flight < self.config.alpha => {
                let deadline = now + self.config.request_timeout;
                let Some(c) = self.candidates.get_mut(i) else {
                    return Next::Wait;
                };
                c.set_state(PeerState::Waiting(deadline));
                self.in_flight += 1;
                Next::Query(c.node)
            }
            Some(_) => Next::Wait,
            None if waiting => Next::Wait,
            None => {
                self.finished = true;
                Next::Done
            }
        }
    }

    fn state_of(&mut self, id: &NodeId) -> Option<&mut Candidate> {
        let i = self.search(&id.distance(&self.target)).ok()?;
        self.candidates.get_mut(i)
    }

    /// Adds a node that already answered outside the lookup (a bootstrap node
    /// whose id we learned from its answer), with the closer nodes it gave.
    pub fn add_succeeded(&mut self, node: NodeInfo, closer: &[NodeInfo], token: Option<Vec<u8>>) {
        self.add_candidate(node, 1);
        if let Some(c) = self.state_of(&node.id)
            && c.phase == Phase::NotContacted
        {
            c.set_state(PeerState::Succeeded);
            self.keep_token(node.id, token);
        }
        for n in closer {
            self.add_candidate(*n, 2);
        }
    }

    /// `id` answered, with these closer nodes and (maybe) a write token.
    pub fn on_success(&mut self, id: &NodeId, closer: &[NodeInfo], token: Option<Vec<u8>>) {
        let Some(c) = self.state_of(id) else {
            return;
        };
        let was_waiting = c.phase == Phase::Waiting;
        if !matches!(c.phase, Phase::Waiting | Phase::Stalled) {
            return;
        }
        c.set_state(PeerState::Succeeded);
        let hop = c.hop().saturating_add(1);
        self.keep_token(*id, token);
        if was_waiting {
            self.in_flight -= 1;
        }
        if self.finished {
            return;
        }
        for n in closer {
            self.add_candidate(*n, hop);
        }
    }

    /// The request to `id` failed (an error answer, or the node is known dead).
    pub fn on_failure(&mut self, id: &NodeId) {
        let Some(c) = self.state_of(id) else {
            return;
        };
        let was_waiting = c.phase == Phase::Waiting;
        if matches!(c.phase, Phase::Waiting | Phase::Stalled) {
            c.set_state(PeerState::Failed);
        }
        if was_waiting {
            self.in_flight -= 1;
        }
    }

    /// Marks requests past their deadline as stalled. Returns how many.
    pub fn on_timeout(&mut self, now: Instant) -> usize {
        let mut n = 0;
        for c in &mut self.candidates {
            if let PeerState::Waiting(deadline) = c.state()
                && deadline <= now
            {
                c.set_state(PeerState::Stalled(now + self.config.request_timeout));
                n += 1;
            }
        }
        self.in_flight -= n;
        n
    }

    /// The earliest deadline of a request in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.candidates
            .iter()
            .filter_map(|c| match c.state() {
                PeerState::Waiting(d) => Some(d),
                _ => None,
            })
            .min()
    }

    /// Hops of the node `id` (1 for a seed), if it is a candidate.
    pub fn hop_of(&self, id: &NodeId) -> Option<u32> {
        let i = self.search(&id.distance(&self.target)).ok()?;
        self.candidates.get(i).map(Candidate::hop)
    }

    fn keep_token(&mut self, id: NodeId, token: Option<Vec<u8>>) {
        if let Some(t) = token {
            self.tokens.push((id, t));
        }
    }

    /// The write token the node `id` gave, if it answered with one.
    pub fn token_of(&self, id: &NodeId) -> Option<&[u8]> {
        self.tokens
            .iter()
            .find(|(n, _)| n == id)
            .map(|(_, t)| t.as_slice())
    }

    /// The `k` closest nodes that answered, closest first (their tokens:
    /// [`Lookup::token_of`]).
    pub fn closest_succeeded(&self) -> Vec<&Candidate> {
        self.candidates
            .iter()
            .filter(|c| c.phase == Phase::Succeeded)
            .take(self.config.k)
            .collect()
    }

    /// Every candidate, closest first.
    pub fn candidates(&self) -> impl Iterator<Item = &Candidate> {
        self.candidates.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

    fn info(id: NodeId, i: usize) -> NodeInfo {
        NodeInfo {
            id,
            addr: SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::LOCALHOST,
                (i % 60000) as u16 + 1,
            )),
        }
    }

    /// A toy network: each node knows `degree` others, some nodes are dead, some slow.
    struct Net {
        nodes: Vec<NodeInfo>,
        knows: HashMap<NodeId, Vec<NodeInfo>>,
        dead: HashMap<NodeId, bool>,
        slow: HashMap<NodeId, bool>,
    }

    fn net(seed: u64, n: usize, degree: usize, dead_pct: u32, slow_pct: u32) -> Net {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let nodes: Vec<NodeInfo> = (0..n).map(|i| info(NodeId::random(&mut rng), i)).collect();
        let mut knows = HashMap::new();
        let mut dead = HashMap::new();
        let mut slow = HashMap::new();
        for node in &nodes {
            let mut others = Vec::new();
            for _ in 0..degree {
                others.push(nodes[rng.random_range(0..n)]);
            }
            // Everyone also knows its closest few, as a real routing table does.
            let mut by_dist = nodes.clone();
            by_dist.sort_by_key(|o| o.id.distance(&node.id));
            others.extend(by_dist.iter().skip(1).take(degree));
            knows.insert(node.id, others);
            dead.insert(node.id, rng.random_range(0..100) < dead_pct);
            slow.insert(node.id, rng.random_range(0..100) < slow_pct);
        }
        Net {
            nodes,
            knows,
            dead,
            slow,
        }
    }

    /// Drives a lookup to the end in virtual time; checks alpha at every step.
    fn run(net: &Net, target: NodeId, cfg: LookupConfig, seeds: usize) -> (Lookup, Vec<NodeInfo>) {
        let start = Instant::now();
        let mut now = start;
        let mut l = Lookup::new(target, cfg, net.nodes.iter().take(seeds).copied());
        // (due time, node, reply?) for requests in the air.
        let mut air: Vec<(Instant, NodeInfo)> = Vec::new();
        let mut heard: Vec<NodeInfo> = net.nodes.iter().take(seeds).copied().collect();
        for step in 0..100_000 {
            assert!(step < 99_999, "lookup did not terminate");
            loop {
                match l.next(now) {
                    Next::Query(n) => {
                        assert!(l.in_flight() <= cfg.alpha, "more than alpha in flight");
                        let delay = if net.slow[&n.id] {
                            cfg.request_timeout * 3
                        } else {
                            Duration::from_millis(10)
                        };
                        air.push((now + delay, n));
                    }
                    Next::Wait => break,
                    Next::Done => return (l, heard),
                }
            }
            // Advance to the next event: a reply or a deadline.
            let next_reply = air.iter().map(|a| a.0).min();
            let next_deadline = l.next_deadline();
            let t = match (next_reply, next_deadline) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => panic!("waiting with nothing in the air"),
            };
            now = t;
            l.on_timeout(now);
            let (due, rest): (Vec<_>, Vec<_>) = air.into_iter().partition(|a| a.0 <= now);
            air = rest;
            for (_, n) in due {
                if net.dead[&n.id] {
                    l.on_failure(&n.id);
                } else {
                    let closer = &net.knows[&n.id];
                    heard.extend(closer.iter().copied());
                    l.on_success(&n.id, closer, Some(vec![1]));
                }
            }
            assert!(l.in_flight() <= cfg.alpha);
        }
        unreachable!()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn lookup_terminates_respects_alpha_and_returns_sorted_closest(
            seed in any::<u64>(),
            n in 30usize..300,
            k in 1usize..25,
            alpha in 1usize..6,
            dead in 0u32..30,
            slow in 0u32..30,
        ) {
            let network = net(seed, n, 8, dead, slow);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xabc);
            let target = NodeId::random(&mut rng);
            let cfg = LookupConfig { k, alpha, request_timeout: Duration::from_millis(100) };
            let (l, heard) = run(&network, target, cfg, 3);
            let got: Vec<NodeInfo> = l.closest_succeeded().iter().map(|c| c.node).collect();
            // Sorted by distance.
            for w in got.windows(2) {
                prop_assert!(w[0].id.distance(&target) < w[1].id.distance(&target));
            }
            prop_assert!(got.len() <= k);
            // The k closest nodes it heard of that answer (promptly, or late but
            // before the end) are exactly the result: nothing closer was left out.
            let answered_late = |id: &NodeId| got.iter().any(|g| g.id == *id);
            let mut live: Vec<NodeInfo> = heard.iter().copied()
                .filter(|h| !network.dead[&h.id] && (!network.slow[&h.id] || answered_late(&h.id)))
                .collect();
            live.sort_by_key(|h| h.id.distance(&target));
            live.dedup_by_key(|h| h.id);
            live.truncate(k);
            for want in &live {
                prop_assert!(got.iter().any(|g| g.id == want.id),
                    "live node {:?} heard of but missing from the result", want.id);
            }
        }
    }

    #[test]
    fn tokens_are_kept_for_the_nodes_that_gave_them() {
        let now = Instant::now();
        let cfg = LookupConfig {
            k: 3,
            alpha: 3,
            request_timeout: Duration::from_millis(50),
        };
        let a = info(NodeId([1; 20]), 1);
        let b = info(NodeId([2; 20]), 2);
        let c = info(NodeId([3; 20]), 3);
        let mut l = Lookup::new(NodeId::ZERO, cfg, [a, b]);
        l.add_succeeded(c, &[], Some(b"tc".to_vec()));
        assert_eq!(l.next(now), Next::Query(a));
        assert_eq!(l.next(now), Next::Query(b));
        l.on_success(&a.id, &[], Some(b"ta".to_vec()));
        l.on_success(&b.id, &[], None);
        // A second answer from a does not replace its token.
        l.on_success(&a.id, &[], Some(b"again".to_vec()));
        assert_eq!(l.token_of(&a.id), Some(&b"ta"[..]));
        assert_eq!(l.token_of(&b.id), None);
        assert_eq!(l.token_of(&c.id), Some(&b"tc"[..]));
        let hops: Vec<u32> = l.closest_succeeded().iter().map(|c| c.hop()).collect();
        assert_eq!(hops, vec![1, 1, 1]);
        assert_eq!(l.next(now), Next::Done);
    }

    #[test]
    fn candidates_stay_small() {
        // A lookup holds up to 2k + 16 candidates, and every node joining runs
        // lookups back to back: their size is a good part of a node's memory.
        assert!(size_of::<Candidate>() <= 72);
    }

    #[test]
    fn stalled_request_frees_a_slot() {
        let now = Instant::now();
        let cfg = LookupConfig {
            k: 2,
            alpha: 1,
            request_timeout: Duration::from_millis(50),
        };
        let a = info(NodeId([1; 20]), 1);
        let b = info(NodeId([2; 20]), 2);
        let mut l = Lookup::new(NodeId::ZERO, cfg, [a, b]);
        assert_eq!(l.next(now), Next::Query(a));
        assert_eq!(l.next(now), Next::Wait);
        let later = now + Duration::from_millis(60);
        assert_eq!(l.on_timeout(later), 1);
        assert_eq!(l.next(later), Next::Query(b));
        // The late reply from a still counts.
        l.on_success(&a.id, &[], None);
        l.on_success(&b.id, &[], None);
        assert_eq!(l.next(later), Next::Done);
        assert_eq!(l.closest_succeeded().len(), 2);
    }
}

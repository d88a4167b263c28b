//! The event queue: a calendar of 1 ms buckets in front of a binary heap.
//!
//! Events pop in (time, sequence number) order, exactly as from one binary heap
//! (the sequence number is given at push, so ties go to the first scheduled);
//! but most pushes land in a ring of per-millisecond buckets (a `Vec` push), and
//! only the bucket being processed is a heap, a small one. Events beyond the
//! ring's horizon wait in an overflow heap. At 100,000 nodes a single heap holds
//! hundreds of thousands of events and each pop walks its whole depth through
//! cold memory; this does not.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Width of a bucket, in nanoseconds.
const WIDTH: u64 = 1_000_000;
/// Buckets in the ring (its horizon, in milliseconds).
const RING: u64 = 4096;

/// An event with its due time and sequence number.
#[derive(Debug)]
pub(crate) struct Keyed<E> {
    pub(crate) at: u64,
    pub(crate) seq: u64,
    pub(crate) item: E,
}

impl<E> PartialEq for Keyed<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<E> Eq for Keyed<E> {}

impl<E> PartialOrd for Keyed<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Keyed<E> {
    /// Reversed, so that `BinaryHeap` pops the earliest, then the first scheduled.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A priority queue of events by (time, sequence number).
#[derive(Debug)]
pub(crate) struct EventQueue<E> {
    /// Bucket being processed (or last processed); everything due in it or
    /// before is in `current`.
    cursor: u64,
    current: BinaryHeap<Keyed<E>>,
    /// Buckets `cursor + 1 .. cursor + RING`, bucket `b` in slot `b % RING`.
    ring: Vec<Vec<Keyed<E>>>,
    in_ring: usize,
    /// Events of bucket `cursor + RING` and later.
    overflow: BinaryHeap<Keyed<E>>,
    next_seq: u64,
    len: usize,
}

impl<E> EventQueue<E> {
    pub(crate) fn new() -> EventQueue<E> {
        EventQueue {
            cursor: 0,
            current: BinaryHeap::new(),
            ring: (0..RING).map(|_| Vec::new()).collect(),
            in_ring: 0,
            overflow: BinaryHeap::new(),
            next_seq: 0,
            len: 0,
        }
    }

    /// Events queued.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Queues `item` at time `at`; returns its sequence number.
    pub(crate) fn push(&mut self, at: u64, item: E) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.len += 1;
        let e = Keyed { at, seq, item };
        let b = at / WIDTH;
        if b <= self.cursor {
            self.current.push(e);
        } else if b < self.cursor + RING {
            self.ring[(b % RING) as usize].push(e);
            self.in_ring += 1;
        } else {
            self.overflow.push(e);
        }
        seq
    }

    /// Removes and returns the earliest event if it is due at or before `until`.
    pub(crate) fn pop_until(&mut self, until: u64) -> Option<Keyed<E>> {
        loop {
            if let Some(top) = self.current.peek() {
                if top.at > until {
                    return None;
                }
                self.len -= 1;
                return self.current.pop();
            }
            if self.len == 0 {
                return None;
            }
            // Move on to the next bucket that may hold something.
            let next = if self.in_ring > 0 {
                self.cursor + 1
            } else {
                self.overflow
                    .peek()
                    .map_or(self.cursor + 1, |e| e.at / WIDTH)
            };
            if next.saturating_mul(WIDTH) > until {
                return None;
            }
            self.cursor = next;
            // `current` is empty: the bucket becomes the heap, in O(n), and its
            // memory goes with it (a ring of buckets that all kept their peak
            // capacity would hold on to a lot of memory).
            let slot = std::mem::take(&mut self.ring[(next % RING) as usize]);
            self.in_ring -= slot.len();
            self.current = BinaryHeap::from(slot);
            while self.overflow.peek().is_some_and(|e| e.at / WIDTH <= next) {
                if let Some(e) = self.overflow.pop() {
                    self.current.push(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn pops_in_time_then_sequence_order_like_a_heap() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut q = EventQueue::new();
        let mut reference: BinaryHeap<Keyed<u32>> = BinaryHeap::new();
        let mut now = 0u64;
        let mut popped = 0;
        for round in 0..20_000u32 {
            // Push a few events: some now, some soon, some far beyond the ring.
            for _ in 0..rng.random_range(0..3) {
                let delay = match rng.random_range(0..10) {
                    0 => 0,
                    1..=6 => rng.random_range(0..100 * WIDTH),
                    7 | 8 => rng.random_range(0..2 * WIDTH),
                    _ => rng.random_range(0..20_000 * WIDTH),
                };
                let seq = q.push(now + delay, round);
                reference.push(Keyed {
                    at: now + delay,
                    seq,
                    item: round,
                });
            }
            // Pop what is due before a random horizon.
            let until = now + rng.random_range(0..5 * WIDTH);
            while let Some(e) = q.pop_until(until) {
                let r = reference.pop().expect("reference has it");
                assert_eq!((e.at, e.seq, e.item), (r.at, r.seq, r.item));
                assert!(e.at >= now);
                now = e.at;
                popped += 1;
            }
            assert!(reference.peek().is_none_or(|r| r.at > until));
            now = until;
            assert_eq!(q.len(), reference.len());
        }
        while let Some(e) = q.pop_until(u64::MAX) {
            let r = reference.pop().expect("reference has it");
            assert_eq!((e.at, e.seq), (r.at, r.seq));
            popped += 1;
        }
        assert!(reference.is_empty());
        assert!(popped > 10_000);
    }
}

//! What a run measured, as JSON (`serde`) and as a table (`Display`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};

/// Figures of one kind of operation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OpReport {
    /// Operations started.
    pub attempted: usize,
    /// Operations that succeeded (see [`SimReport`] for what success means).
    pub succeeded: usize,
    /// Operations whose node went offline before they finished; they count
    /// neither as successes nor as failures.
    pub abandoned: usize,
    /// Operations not finished by the deadline (counted as failures).
    pub timed_out: usize,
    /// `succeeded / (attempted - abandoned)`; 1.0 when that is zero.
    pub success_rate: f64,
    /// Median hops of the successful operations.
    pub hops_p50: u32,
    /// 99th percentile of the hops of the successful operations.
    pub hops_p99: u32,
    /// Median virtual latency of the successful operations, in milliseconds.
    pub latency_ms_p50: f64,
    /// 99th percentile of the virtual latency of the successful operations, in milliseconds.
    pub latency_ms_p99: f64,
    /// Mean requests sent per finished operation.
    pub rpcs_mean: f64,
}

/// How the network formed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Formation {
    /// Whether every node finished its bootstrap before the deadline.
    pub formed: bool,
    /// Nodes that finished their bootstrap with at least one contact.
    pub joined: usize,
    /// Virtual time from the first join to the last node's end of bootstrap, in seconds.
    pub time_to_form_s: f64,
    /// Median virtual time from a node's join to the end of its bootstrap, in milliseconds.
    pub bootstrap_ms_p50: f64,
    /// 99th percentile of the same, in milliseconds.
    pub bootstrap_ms_p99: f64,
    /// Mean routing-table size at formation.
    pub table_size_mean: f64,
    /// Mean requests sent by a joining node's bootstrap query (its own-id
    /// lookup; the bucket refreshes that follow are not counted).
    pub bootstrap_rpcs_mean: f64,
}

/// Churn that happened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChurnCounts {
    /// Nodes that went offline.
    pub left: usize,
    /// Nodes that came back with their id and table.
    pub rejoined: usize,
    /// Fresh nodes that joined in place of departed ones.
    pub replaced: usize,
}

/// What the network carried.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetReport {
    /// Datagrams delivered to a running node.
    pub delivered: u64,
    /// Datagrams lost by the loss model.
    pub lost: u64,
    /// Datagrams dropped because their destination was offline.
    pub to_offline: u64,
    /// Bytes delivered.
    pub bytes: u64,
    /// Core wake-ups handled (timers).
    pub wakeups: u64,
}

/// The figures of one simulated day of the lookup phase (day 0 starts when
/// churn and the workload start). An operation counts on the day it started; a
/// message on the day its first relay took it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DayReport {
    /// The day, from 0.
    pub day: usize,
    /// `find_node` lookups started that day and judged (not abandoned).
    pub lookups_judged: usize,
    /// Of those, successes.
    pub lookups_succeeded: usize,
    /// Presence resolutions started that day and judged.
    pub resolves_judged: usize,
    /// Of those, successes.
    pub resolves_succeeded: usize,
    /// Messages first stored at a relay that day.
    pub messages_stored: usize,
    /// Of those, messages whose recipient came back within the TTL (see
    /// [`crate::ChatReport::eligible`]).
    pub eligible: usize,
    /// Of those, delivered.
    pub eligible_delivered: usize,
}

/// The result of [`crate::run`].
///
/// Success criteria:
/// - a `find_node` lookup succeeds when its result contains the node closest to
///   the target among the *eligible* nodes: those online from the moment the
///   lookup started to the moment it ended, whose bootstrap (or re-bootstrap after
///   coming back) had finished when it started, other than the node looking up
///   (whose own lookups never return itself). `closest_k_recall` is the mean
///   fraction of the `k` closest eligible nodes that the results contain;
/// - a `get` succeeds when it returns the value that was put;
/// - a `put` succeeds when at least one node accepted the item.
///
/// Every field but `wall_time_s`, `peak_rss_bytes` and `bytes_per_node` is a
/// function of the configuration alone.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    /// The seed: run again with it to replay this run exactly.
    pub seed: u64,
    /// Nodes built.
    pub nodes: usize,
    /// Bucket size.
    pub k: usize,
    /// Lookup parallelism.
    pub alpha: usize,
    /// Datagram loss probability.
    pub loss: f64,
    /// Fraction of nodes churned during the lookup phase.
    pub churn: f64,
    /// The churn model.
    pub churn_model: String,
    /// How the network formed.
    pub formation: Formation,
    /// `find_node` lookups of random targets.
    pub lookups: OpReport,
    /// Mean fraction of the true `k` closest eligible nodes found by a lookup.
    pub closest_k_recall: f64,
    /// Lookups that returned no node at all (every node they tried failed).
    pub lookups_empty: usize,
    /// BEP 44 immutable gets.
    pub gets: OpReport,
    /// Presence resolutions (chat layer): a BEP 44 mutable get of a random
    /// online user's presence succeeds when it returns the item of the user's
    /// current session (signed by its key, `seq` at least that of its login
    /// publish). Empty without a chat workload.
    pub resolves: OpReport,
    /// The chat layer's figures (offline delivery), if it ran.
    pub chat: Option<crate::chat::ChatReport>,
    /// Lookups, resolutions and offline delivery per simulated day of the
    /// lookup phase (one entry per day begun).
    pub days: Vec<DayReport>,
    /// BEP 44 immutable puts.
    pub puts: OpReport,
    /// Mean number of nodes that accepted each put.
    pub stored_per_put: f64,
    /// Queries sent over the whole run, per node ever created.
    pub rpcs_per_node: f64,
    /// Queries sent while the network formed (joins and bootstraps), per node.
    pub rpcs_per_node_forming: f64,
    /// Queries sent during the lookup phase (lookups, gets and background work), per node.
    pub rpcs_per_node_lookup_phase: f64,
    /// Queries sent over the whole run, by method (`find_node`, `ping`, `get`, ...).
    pub rpcs_by_method: BTreeMap<String, u64>,
    /// Churn that happened.
    pub churn_events: ChurnCounts,
    /// What the network carried.
    pub network: NetReport,
    /// Virtual time simulated, in seconds.
    pub virtual_time_s: f64,
    /// Fingerprint of every datagram delivered (time, source, destination, bytes):
    /// the same seed and config give the same hash. Serialized as 16 hex digits.
    #[serde(serialize_with = "hex64")]
    pub trace_hash: u64,
    /// Wall-clock time of the run, in seconds.
    pub wall_time_s: f64,
    /// The run stopped at `SimConfig::wall_limit`, before its planned end
    /// (`virtual_time_s` says how far it got).
    pub wall_limit_hit: bool,
    /// Peak resident memory of the process (Linux `VmHWM`), if known.
    pub peak_rss_bytes: Option<u64>,
    /// `peak_rss_bytes` divided by the number of nodes.
    pub bytes_per_node: Option<u64>,
}

fn hex64<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:016x}"))
}

/// The `q`-quantile (0..=1) of sorted `v` by nearest rank; `None` when empty.
pub(crate) fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Peak resident memory of this process, from `/proc/self/status` (Linux only).
pub(crate) fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn ms(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else {
        format!("{v:.0} ms")
    }
}

fn bytes(v: u64) -> String {
    let v = v as f64;
    if v >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", v / (1024.0 * 1024.0 * 1024.0))
    } else if v >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", v / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", v / 1024.0)
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Peerchat DHT simulation, seed {}", self.seed)?;
        writeln!(
            f,
            "  network     {} nodes, k {}, alpha {}, loss {:.1}%, churn {:.1}% ({})",
            self.nodes,
            self.k,
            self.alpha,
            self.loss * 100.0,
            self.churn * 100.0,
            self.churn_model
        )?;
        let fm = &self.formation;
        writeln!(
            f,
            "  formation   {} in {:.1} s virtual ({}/{} joined; bootstrap p50 {}, p99 {}, {:.1} rpcs; {:.0} contacts/table)",
            if fm.formed { "formed" } else { "NOT formed" },
            fm.time_to_form_s,
            fm.joined,
            self.nodes,
            ms(fm.bootstrap_ms_p50),
            ms(fm.bootstrap_ms_p99),
            fm.bootstrap_rpcs_mean,
            fm.table_size_mean
        )?;
        writeln!(
            f,
            "  {:<10} {:>7} {:>9} {:>8} {:>10} {:>12} {:>12} {:>8}",
            "operation",
            "count",
            "success",
            "failed",
            "hops",
            "latency p50",
            "latency p99",
            "rpcs/op"
        )?;
        let mut ops = vec![
            ("find_node", &self.lookups),
            ("put", &self.puts),
            ("get", &self.gets),
        ];
        if self.resolves.attempted > 0 {
            ops.push(("presence", &self.resolves));
        }
        for (name, r) in ops {
            let failed = r.attempted - r.abandoned - r.succeeded;
            writeln!(
                f,
                "  {:<10} {:>7} {:>8.2}% {:>8} {:>10} {:>12} {:>12} {:>8.1}",
                name,
                r.attempted,
                r.success_rate * 100.0,
                failed,
                format!("{}/{}", r.hops_p50, r.hops_p99),
                ms(r.latency_ms_p50),
                ms(r.latency_ms_p99),
                r.rpcs_mean
            )?;
        }
        writeln!(
            f,
            "  recall      {:.2}% of the k closest live nodes found; {} empty lookups; {:.1} nodes stored each put",
            self.closest_k_recall * 100.0,
            self.lookups_empty,
            self.stored_per_put
        )?;
        let methods: Vec<String> = self
            .rpcs_by_method
            .iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect();
        writeln!(
            f,
            "  rpcs/node   {:.1} (forming {:.1}, lookup phase {:.1}); in all: {}",
            self.rpcs_per_node,
            self.rpcs_per_node_forming,
            self.rpcs_per_node_lookup_phase,
            methods.join(", ")
        )?;
        if let Some(c) = &self.chat {
            writeln!(
                f,
                "  offline     {:.2}% delivered of {} messages whose recipient came back within the ttl ({} of {} written, {} never stored, {} recipients not back; {} delivered in all)",
                c.offline_delivery_rate * 100.0,
                c.eligible,
                c.eligible_delivered,
                c.messages,
                c.never_stored,
                c.recipient_not_back,
                c.delivered
            )?;
            writeln!(
                f,
                "  relays      {:.1} copies per message; {} stored, {} handed over, {} cleared by acks, {} expired; left: {} of delivered, {} of undelivered; delivery after login p50 {:.1} s, p99 {:.1} s",
                c.copies_mean,
                c.copies_stored,
                c.copies_handed_over,
                c.copies_acked,
                c.copies_expired,
                c.copies_left_delivered,
                c.copies_left_undelivered,
                c.delivery_after_login_s_p50,
                c.delivery_after_login_s_p99
            )?;
            writeln!(
                f,
                "  users       {}; presence puts {} ({} stored); {} relay refusals; {} duplicate copies dropped",
                c.users, c.presence_puts, c.presence_puts_ok, c.relay_refusals, c.duplicate_copies
            )?;
        }
        if self.days.len() > 1 {
            let pct = |ok: usize, of: usize| {
                if of == 0 {
                    "-".to_string()
                } else {
                    format!("{:.2}%", ok as f64 * 100.0 / of as f64)
                }
            };
            for d in &self.days {
                writeln!(
                    f,
                    "  day {:<7} lookups {} of {} ({}); presence {} of {} ({}); offline {} of {} eligible delivered ({}), {} stored",
                    d.day,
                    d.lookups_succeeded,
                    d.lookups_judged,
                    pct(d.lookups_succeeded, d.lookups_judged),
                    d.resolves_succeeded,
                    d.resolves_judged,
                    pct(d.resolves_succeeded, d.resolves_judged),
                    d.eligible_delivered,
                    d.eligible,
                    pct(d.eligible_delivered, d.eligible),
                    d.messages_stored
                )?;
            }
        }
        let c = &self.churn_events;
        if c.left + c.rejoined + c.replaced > 0 {
            writeln!(
                f,
                "  churn       {} left, {} rejoined, {} replaced",
                c.left, c.rejoined, c.replaced
            )?;
        }
        let n = &self.network;
        writeln!(
            f,
            "  datagrams   {} delivered ({}), {} lost, {} to offline nodes; {} wake-ups",
            n.delivered,
            bytes(n.bytes),
            n.lost,
            n.to_offline,
            n.wakeups
        )?;
        writeln!(f, "  trace hash  {:016x}", self.trace_hash)?;
        if self.wall_limit_hit {
            writeln!(
                f,
                "  STOPPED     at the wall-clock limit, before the planned end"
            )?;
        }
        let mem = match (self.peak_rss_bytes, self.bytes_per_node) {
            (Some(p), Some(per)) => format!(", peak memory {} ({}/node)", bytes(p), bytes(per)),
            _ => String::new(),
        };
        write!(
            f,
            "  time        {:.1} s virtual, {:.1} s wall{}",
            self.virtual_time_s, self.wall_time_s, mem
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7u32], 0.99), Some(7));
        assert_eq!(percentile::<u32>(&[], 0.5), None);
    }
}

//! Fault injection for the Raft peer network: a [`Faults`] handle shared by every node of an
//! in-process test cluster, consulted by [`crate::Network`] for each outgoing RPC.
//!
//! Faults are set per *directed* link `(from, to)`: `from` is the node that sends the RPC and
//! `to` the node it is sent to. Every Raft RPC is a request from the sender plus its reply, so one
//! RPC from `a` to `b` travels the link `a → b` and its reply travels `b → a`:
//!
//! ```text
//!   from ──[blocked? dropped? sleep delay(from→to)]──▶ to   (the request)
//!   from ◀──[sleep delay(to→from), reply lost?]────── to   (the reply; `to` has processed it)
//! ```
//!
//! * **blocked**: the RPC fails at once as openraft's `Unreachable`, before anything is sent (a
//!   cut cable: openraft backs off before retrying). Also true of every link to or from an
//!   [isolated](Faults::isolate) node.
//! * **delay**: the request sleeps the `from → to` delay before being sent, the reply sleeps the
//!   `to → from` delay after arriving. Both count against the RPC's deadline (openraft gives an
//!   append-entries RPC one heartbeat interval), so a round trip longer than that fails as a timeout.
//! * **drop**: a fraction of requests is lost: the caller sees a `NetworkError` at once and the
//!   peer never sees the request.
//! * **lose replies**: a fraction of replies is lost: the peer received and processed the request
//!   (a vote was granted, entries were appended), but the caller sees a `NetworkError`.
//!
//! Links without a fault of their own use the [default link](Faults::set_all_links), which starts
//! out healthy. Random choices come from a seeded counter-based generator (SplitMix64), so a test
//! can name its seed; the order in which concurrent RPCs draw from it is up to the scheduler.
//!
//! # Cost when healthy
//!
//! A node started without faults holds no handle at all. A handle with nothing set costs one
//! relaxed atomic load per RPC: every setter raises an "any fault" flag and [`Faults::heal`] lowers
//! it; only while it is up does an RPC take the read lock on the fault table.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

use crate::types::NodeId;

/// The faults of one directed link (or of every link without its own, see
/// [`Faults::set_all_links`]). The default is a healthy link.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkFault {
    /// Fail every RPC as unreachable before sending it.
    pub blocked: bool,
    /// Sleep this long before a request on this link is sent (and before a reply travelling this
    /// link is handed back).
    pub delay: Duration,
    /// The fraction (0.0 to 1.0) of requests lost before they reach the peer.
    pub drop_rate: f64,
    /// The fraction (0.0 to 1.0) of requests whose reply is lost after the peer processed them.
    pub lose_reply_rate: f64,
}

impl LinkFault {
    fn is_healthy(&self) -> bool {
        *self == Self::default()
    }
}

/// What [`Faults::plan`] decided for one RPC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RpcPlan {
    /// Fail as unreachable; send nothing.
    pub blocked: bool,
    /// Fail as a network error; send nothing (the request was lost).
    pub dropped: bool,
    /// Sleep this long before sending.
    pub request_delay: Duration,
    /// Sleep this long after the reply arrived.
    pub reply_delay: Duration,
    /// Send and let the peer process it, then fail as a network error (the reply was lost).
    pub lose_reply: bool,
}

/// How many RPCs each kind of fault has hit since the handle was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// RPCs failed as unreachable.
    pub blocked: u64,
    /// Requests dropped before reaching the peer.
    pub dropped: u64,
    /// RPCs delayed (in either direction).
    pub delayed: u64,
    /// Replies lost after the peer processed the request.
    pub lost_replies: u64,
}

#[derive(Debug, Default)]
struct Table {
    links: HashMap<(NodeId, NodeId), LinkFault>,
    default_link: LinkFault,
    isolated: BTreeSet<NodeId>,
}

impl Table {
    fn is_healthy(&self) -> bool {
        self.links.is_empty() && self.default_link.is_healthy() && self.isolated.is_empty()
    }

    fn link(&self, from: NodeId, to: NodeId) -> LinkFault {
        self.links
            .get(&(from, to))
            .copied()
            .unwrap_or(self.default_link)
    }
}

#[derive(Debug)]
struct Inner {
    /// Raised while any fault is set; the only thing a healthy RPC reads.
    active: AtomicBool,
    table: RwLock<Table>,
    seed: u64,
    draws: AtomicU64,
    blocked: AtomicU64,
    dropped: AtomicU64,
    delayed: AtomicU64,
    lost_replies: AtomicU64,
}

/// A cloneable handle on the faults of a test cluster's peer network; every clone sees the same
/// faults. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Faults {
    inner: Arc<Inner>,
}

impl Default for Faults {
    fn default() -> Self {
        Self::new()
    }
}

impl Faults {
    /// A handle with no faults set, drawing random choices from seed 0.
    pub fn new() -> Self {
        Self::with_seed(0)
    }

    /// A handle with no faults set, drawing random choices from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                active: AtomicBool::new(false),
                table: RwLock::new(Table::default()),
                seed,
                draws: AtomicU64::new(0),
                blocked: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                delayed: AtomicU64::new(0),
                lost_replies: AtomicU64::new(0),
            }),
        }
    }

    /// Change the table under its write lock and keep the "any fault" flag in step with it.
    fn update(&self, change: impl FnOnce(&mut Table)) {
        let mut table = self.inner.table.write();
        change(&mut table);
        self.inner
            .active
            .store(!table.is_healthy(), Ordering::Release);
    }

    fn update_link(&self, from: NodeId, to: NodeId, change: impl FnOnce(&mut LinkFault)) {
        self.update(|table| {
            let mut link = table.link(from, to);
            change(&mut link);
            table.links.insert((from, to), link);
        });
    }

    /// Set every fault of the link `from → to` at once.
    pub fn set_link(&self, from: NodeId, to: NodeId, fault: LinkFault) {
        self.update(|table| {
            table.links.insert((from, to), fault);
        });
    }

    /// Set the faults of every link that has none of its own.
    pub fn set_all_links(&self, fault: LinkFault) {
        self.update(|table| table.default_link = fault);
    }

    /// The faults in force on the link `from → to` (isolation aside).
    pub fn link(&self, from: NodeId, to: NodeId) -> LinkFault {
        self.inner.table.read().link(from, to)
    }

    /// Make every RPC from `from` to `to` fail as unreachable.
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.update_link(from, to, |link| link.blocked = true);
    }

    /// Undo [`Faults::block`] for the link `from → to`.
    pub fn unblock(&self, from: NodeId, to: NodeId) {
        self.update_link(from, to, |link| link.blocked = false);
    }

    /// Delay requests on the link `from → to` (and replies to RPCs sent from `to` to `from`).
    pub fn delay(&self, from: NodeId, to: NodeId, delay: Duration) {
        self.update_link(from, to, |link| link.delay = delay);
    }

    /// Lose `rate` (0.0 to 1.0) of the requests sent from `from` to `to`.
    pub fn drop_rate(&self, from: NodeId, to: NodeId, rate: f64) {
        self.update_link(from, to, |link| link.drop_rate = rate);
    }

    /// Lose the replies of `rate` (0.0 to 1.0) of the RPCs `from` sends to `to`, after `to` has
    /// processed them.
    pub fn lose_replies(&self, from: NodeId, to: NodeId, rate: f64) {
        self.update_link(from, to, |link| link.lose_reply_rate = rate);
    }

    /// Cut `node` off from every other node, in both directions (nodes started later included),
    /// until [`Faults::rejoin`] or [`Faults::heal`].
    pub fn isolate(&self, node: NodeId) {
        self.update(|table| {
            table.isolated.insert(node);
        });
    }

    /// Undo [`Faults::isolate`] for `node`, leaving other faults alone.
    pub fn rejoin(&self, node: NodeId) {
        self.update(|table| {
            table.isolated.remove(&node);
        });
    }

    /// Block every link between a node of `a` and a node of `b`, in both directions.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        self.update(|table| {
            for &x in a {
                for &y in b {
                    for key in [(x, y), (y, x)] {
                        let mut link = table.link(key.0, key.1);
                        link.blocked = true;
                        table.links.insert(key, link);
                    }
                }
            }
        });
    }

    /// Remove every fault: links, the default link and isolation.
    pub fn heal(&self) {
        self.update(|table| *table = Table::default());
    }

    /// Whether any fault is set.
    pub fn is_active(&self) -> bool {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Decide what happens to one RPC from `from` to `to`, and count it in the stats.
    pub fn plan(&self, from: NodeId, to: NodeId) -> RpcPlan {
        if !self.inner.active.load(Ordering::Relaxed) {
            return RpcPlan::default();
        }
        let (out, back, cut) = {
            let table = self.inner.table.read();
            let cut = table.isolated.contains(&from) || table.isolated.contains(&to);
            (table.link(from, to), table.link(to, from), cut)
        };
        let inner = &self.inner;
        if cut || out.blocked {
            inner.blocked.fetch_add(1, Ordering::Relaxed);
            return RpcPlan {
                blocked: true,
                ..RpcPlan::default()
            };
        }
        if self.chance(out.drop_rate) {
            inner.dropped.fetch_add(1, Ordering::Relaxed);
            return RpcPlan {
                dropped: true,
                ..RpcPlan::default()
            };
        }
        let plan = RpcPlan {
            blocked: false,
            dropped: false,
            request_delay: out.delay,
            reply_delay: back.delay,
            lose_reply: self.chance(out.lose_reply_rate),
        };
        if !plan.request_delay.is_zero() || !plan.reply_delay.is_zero() {
            inner.delayed.fetch_add(1, Ordering::Relaxed);
        }
        if plan.lose_reply {
            inner.lost_replies.fetch_add(1, Ordering::Relaxed);
        }
        plan
    }

    /// How many RPCs each kind of fault has hit so far.
    pub fn stats(&self) -> FaultStats {
        let inner = &self.inner;
        FaultStats {
            blocked: inner.blocked.load(Ordering::Relaxed),
            dropped: inner.dropped.load(Ordering::Relaxed),
            delayed: inner.delayed.load(Ordering::Relaxed),
            lost_replies: inner.lost_replies.load(Ordering::Relaxed),
        }
    }

    /// True with probability `rate`, drawn from the seeded generator (no draw for 0 or 1).
    fn chance(&self, rate: f64) -> bool {
        if rate <= 0.0 {
            return false;
        }
        if rate >= 1.0 {
            return true;
        }
        let n = self.inner.draws.fetch_add(1, Ordering::Relaxed);
        let bits = splitmix64(self.inner.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 11;
        // 53 random bits as a fraction in [0, 1).
        #[allow(clippy::cast_precision_loss)]
        let unit = bits as f64 / (1u64 << 53) as f64;
        unit < rate
    }
}

/// One step of SplitMix64 (Steele, Lea and Flood), a small, well-mixed 64-bit hash.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_handle_plans_every_rpc_as_healthy_without_counting() {
        let faults = Faults::new();
        assert!(!faults.is_active());
        assert_eq!(faults.plan(1, 2), RpcPlan::default());
        assert_eq!(faults.stats(), FaultStats::default());
    }

    #[test]
    fn a_blocked_link_blocks_only_its_own_direction() {
        let faults = Faults::new();
        faults.block(1, 2);
        assert!(faults.plan(1, 2).blocked);
        assert!(!faults.plan(2, 1).blocked);
        assert!(!faults.plan(1, 3).blocked);
        faults.unblock(1, 2);
        assert!(!faults.plan(1, 2).blocked);
        assert_eq!(faults.stats().blocked, 1);
    }

    #[test]
    fn an_isolated_node_is_cut_off_both_ways_until_it_rejoins() {
        let faults = Faults::new();
        faults.isolate(2);
        for (from, to) in [(1, 2), (2, 1), (2, 3), (3, 2), (2, 99)] {
            assert!(faults.plan(from, to).blocked, "{from} -> {to}");
        }
        assert!(!faults.plan(1, 3).blocked);
        faults.rejoin(2);
        assert!(!faults.plan(1, 2).blocked);
        assert!(!faults.is_active());
    }

    #[test]
    fn a_partition_blocks_across_the_groups_but_not_within_them() {
        let faults = Faults::new();
        faults.partition(&[1, 2], &[3, 4, 5]);
        for (from, to) in [(1, 3), (3, 1), (2, 5), (5, 2)] {
            assert!(faults.plan(from, to).blocked, "{from} -> {to}");
        }
        for (from, to) in [(1, 2), (2, 1), (3, 4), (5, 3)] {
            assert!(!faults.plan(from, to).blocked, "{from} -> {to}");
        }
    }

    #[test]
    fn heal_removes_every_fault_and_lowers_the_flag() {
        let faults = Faults::new();
        faults.partition(&[1], &[2]);
        faults.isolate(3);
        faults.set_all_links(LinkFault {
            drop_rate: 1.0,
            ..LinkFault::default()
        });
        assert!(faults.is_active());
        faults.heal();
        assert!(!faults.is_active());
        assert_eq!(faults.plan(1, 2), RpcPlan::default());
        assert_eq!(faults.plan(3, 4), RpcPlan::default());
    }

    #[test]
    fn a_delay_applies_to_requests_on_its_link_and_to_replies_coming_back_over_it() {
        let faults = Faults::new();
        faults.delay(1, 2, Duration::from_millis(30));
        faults.delay(2, 1, Duration::from_millis(20));
        let plan = faults.plan(1, 2);
        assert_eq!(plan.request_delay, Duration::from_millis(30));
        assert_eq!(plan.reply_delay, Duration::from_millis(20));
        let back = faults.plan(2, 1);
        assert_eq!(back.request_delay, Duration::from_millis(20));
        assert_eq!(back.reply_delay, Duration::from_millis(30));
        assert_eq!(faults.stats().delayed, 2);
    }

    #[test]
    fn a_link_of_its_own_overrides_the_default_link() {
        let faults = Faults::new();
        faults.set_all_links(LinkFault {
            delay: Duration::from_millis(5),
            ..LinkFault::default()
        });
        faults.set_link(1, 2, LinkFault::default());
        assert_eq!(faults.plan(1, 2).request_delay, Duration::ZERO);
        assert_eq!(faults.plan(1, 3).request_delay, Duration::from_millis(5));
    }

    #[test]
    fn drop_and_lost_reply_rates_hit_about_their_fraction_of_rpcs() {
        let faults = Faults::with_seed(7);
        faults.drop_rate(1, 2, 0.3);
        faults.lose_replies(1, 2, 0.5);
        let total = 10_000;
        let plans: Vec<RpcPlan> = (0..total).map(|_| faults.plan(1, 2)).collect();
        let dropped = plans.iter().filter(|p| p.dropped).count();
        let lost = plans.iter().filter(|p| p.lose_reply).count();
        assert!((2_700..3_300).contains(&dropped), "dropped {dropped}");
        // Only requests that were not dropped can lose their reply: about 0.7 * 0.5.
        assert!((3_200..3_800).contains(&lost), "lost {lost}");
        assert!(plans.iter().all(|p| !(p.dropped && p.lose_reply)));
        let stats = faults.stats();
        assert_eq!(stats.dropped, dropped as u64);
        assert_eq!(stats.lost_replies, lost as u64);
    }

    #[test]
    fn the_same_seed_draws_the_same_choices() {
        let draw = |seed| {
            let faults = Faults::with_seed(seed);
            faults.drop_rate(1, 2, 0.5);
            (0..64)
                .map(|_| faults.plan(1, 2).dropped)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }
}

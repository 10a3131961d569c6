//! The quota leader's memory for one term: its chunks, the leases cut from them, the open
//! sessions, and what waits for the next batching tick. Pure bookkeeping under one lock; no I/O
//! and no await.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tollgate_proto::v1::{QuotaDown, QuotaLease, QuotaRefusal};
use tollgate_quota::{Window, WindowId};
use tollgate_raft::QuotaOp;
use tonic::Status;

use super::proto_window;

/// How far back leases count for sizing the next chunk.
const RECENT: Duration = Duration::from_millis(100);

/// (key, window kind, window id).
pub(super) type Slot = (String, Window, u64);

/// A gateway session's outgoing half.
pub(super) type Outbox = UnboundedSender<Result<QuotaDown, Status>>;

/// One open `Session` stream.
pub(super) struct Session {
    pub(super) gateway: String,
    pub(super) epoch: u64,
    pub(super) tx: Outbox,
    /// Highest `seq` received.
    pub(super) max_seen: u64,
    /// `seq` -> ops of that message not yet committed.
    pub(super) unacked: BTreeMap<u64, usize>,
    /// The `acked_seq` last sent.
    pub(super) sent_ack: u64,
}

impl Session {
    /// The highest seq whose ops (and those of every earlier seq) are committed.
    pub(super) fn acked(&self) -> u64 {
        match self.unacked.first_key_value() {
            Some((seq, _)) => seq.saturating_sub(1),
            None => self.max_seen,
        }
    }
}

/// The current term's share of one (key, window, window id).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ChunkState {
    /// Granted to this term (committed) and neither leased out nor spent.
    pub(super) available: u64,
    /// Out at gateways now: leased, and not yet reported consumed, returned or closed.
    pub(super) leased: u64,
    /// The window's limit, as of the last grant.
    pub(super) max: u64,
    /// The window's outstanding tokens (all terms), as of the last grant.
    pub(super) outstanding: u64,
}

impl ChunkState {
    /// Near the limit: less than `percent` % of `max` is left to grant.
    fn endgame(&self, percent: u64) -> bool {
        let left = self.max.saturating_sub(self.outstanding);
        left.saturating_mul(100) < self.max.saturating_mul(percent)
    }
}

/// A lease cut in this term, until it is closed.
struct LeaseRecord {
    slot: Slot,
    /// Tokens not yet reported consumed or returned.
    remaining: u64,
}

/// A demand the chunk could not cover, waiting for the next tick.
pub(super) struct Waiting {
    pub(super) session: u64,
    pub(super) demand_id: u64,
    pub(super) key: String,
    pub(super) window: Window,
    pub(super) max: u64,
    pub(super) want: u64,
}

/// A report op waiting for the next tick, with the message it came from.
pub(super) struct PendingOp {
    pub(super) session: u64,
    pub(super) seq: u64,
    pub(super) op: QuotaOp,
}

/// How leases are cut.
#[derive(Debug, Clone, Copy)]
pub(super) struct CutRules {
    pub(super) lease_ttl_ms: u64,
    pub(super) min_lease: u64,
    pub(super) endgame_percent: u64,
}

/// The leader's memory. `term == 0`: not serving.
#[derive(Default)]
pub(super) struct Book {
    pub(super) term: u64,
    next_session: u64,
    next_lease: u64,
    pub(super) sessions: HashMap<u64, Session>,
    /// Open sessions per gateway id (a gateway that reconnects may briefly have two).
    gateways: HashMap<String, usize>,
    pub(super) chunks: HashMap<Slot, ChunkState>,
    leases: HashMap<u64, LeaseRecord>,
    recent: HashMap<(String, Window), VecDeque<(Instant, u64)>>,
    pub(super) waiting: Vec<Waiting>,
    pub(super) ops: Vec<PendingOp>,
}

impl Book {
    /// Serve `term`: a different term than the one held starts from nothing (every session of
    /// the old term ends with `status`).
    pub(super) fn ensure_term(&mut self, term: u64, status: &Status) {
        if self.term != term {
            self.end_all(status);
            self.term = term;
        }
    }

    /// End every session with `status` and forget the term (its chunks stay spent).
    pub(super) fn end_all(&mut self, status: &Status) {
        for (_, session) in self.sessions.drain() {
            let _ = session.tx.send(Err(status.clone()));
        }
        *self = Book {
            next_session: self.next_session,
            ..Book::default()
        };
    }

    /// Register a session; returns its id.
    pub(super) fn open(&mut self, gateway: String, epoch: u64, tx: Outbox) -> u64 {
        self.next_session += 1;
        let id = self.next_session;
        *self.gateways.entry(gateway.clone()).or_default() += 1;
        self.sessions.insert(
            id,
            Session {
                gateway,
                epoch,
                tx,
                max_seen: 0,
                unacked: BTreeMap::new(),
                sent_ack: 0,
            },
        );
        id
    }

    /// Forget a closed session (its leases stay counted until reported).
    pub(super) fn close(&mut self, id: u64) {
        if let Some(session) = self.sessions.remove(&id)
            && let Some(count) = self.gateways.get_mut(&session.gateway)
        {
            *count -= 1;
            if *count == 0 {
                self.gateways.remove(&session.gateway);
            }
        }
        self.waiting.retain(|w| w.session != id);
        self.ops.retain(|op| op.session != id);
    }

    /// Distinct gateways with an open session (at least 1).
    pub(super) fn active_gateways(&self) -> u64 {
        (self.gateways.len() as u64).max(1)
    }

    /// A same-term lease report: `returned` goes back into the chunk, once.
    pub(super) fn report_same_term(
        &mut self,
        lease_id: u64,
        consumed: u64,
        returned: u64,
        closed: bool,
    ) {
        let Some(lease) = self.leases.get_mut(&lease_id) else {
            return;
        };
        let spent = consumed.min(lease.remaining);
        lease.remaining -= spent;
        let back = returned.min(lease.remaining);
        lease.remaining -= back;
        // A closed lease is no longer out: what it neither consumed nor returned is spent.
        let gone = if closed { lease.remaining } else { 0 };
        let slot = lease.slot.clone();
        if closed {
            self.leases.remove(&lease_id);
        }
        if let Some(chunk) = self.chunks.get_mut(&slot) {
            chunk.leased = chunk.leased.saturating_sub(spent + back + gone);
            chunk.available += back;
        }
    }

    /// Tokens leased from (key, window) in the last [`RECENT`].
    pub(super) fn recent(&mut self, key: &str, window: Window, now: Instant) -> u64 {
        let Some(recent) = self.recent.get_mut(&(key.to_owned(), window)) else {
            return 0;
        };
        while recent.front().is_some_and(|(at, _)| now - *at > RECENT) {
            recent.pop_front();
        }
        recent.iter().map(|(_, n)| n).sum()
    }

    /// Drop chunks of windows that ended before `now_ms` (their leases are over too).
    pub(super) fn prune(&mut self, now_ms: u64) {
        self.chunks
            .retain(|(_, window, id), _| window.end_ms(WindowId(*id)) > now_ms);
        self.leases
            .retain(|_, l| l.slot.1.end_ms(WindowId(l.slot.2)) > now_ms);
    }

    /// Send each session its leases and refusals, and the `acked_seq` of every session whose
    /// acknowledgement moved.
    pub(super) fn send(
        &mut self,
        term: u64,
        mut leases: HashMap<u64, Vec<QuotaLease>>,
        mut refusals: HashMap<u64, Vec<QuotaRefusal>>,
    ) {
        for (id, session) in &mut self.sessions {
            let leases = leases.remove(id).unwrap_or_default();
            let refusals = refusals.remove(id).unwrap_or_default();
            let acked_seq = session.acked();
            if leases.is_empty() && refusals.is_empty() && acked_seq == session.sent_ack {
                continue;
            }
            session.sent_ack = acked_seq;
            let _ = session.tx.send(Ok(QuotaDown {
                term,
                leases,
                refusals,
                acked_seq,
            }));
        }
    }

    /// Cut a lease for `want` tokens from the chunk of `slot`, if it holds any.
    pub(super) fn cut(
        &mut self,
        slot: &Slot,
        demand_id: u64,
        want: u64,
        max: u64,
        rules: CutRules,
        now_ms: u64,
    ) -> Option<QuotaLease> {
        let active = self.active_gateways();
        let window_end = slot.1.end_ms(WindowId(slot.2));
        let ttl_ms = rules.lease_ttl_ms.min(window_end.saturating_sub(now_ms));
        let chunk = self.chunks.get_mut(slot)?;
        if max > 0 && max < chunk.max {
            // The limit was lowered (the demand comes from a newer policy than the last grant).
            chunk.max = max;
        }
        if chunk.max > 0 {
            // What is left to lease is the limit less what is already out of the chunk's reach
            // (leased, spent, or held by other terms). Only a lowered limit cuts here; the cut
            // tokens stay counted in the ledger, which is above the new limit anyway, so no
            // later grant is given out against them. Checked on every cut, because same-term
            // returns put tokens back into `available`.
            let elsewhere = chunk.outstanding.saturating_sub(chunk.available);
            chunk.available = chunk.available.min(chunk.max.saturating_sub(elsewhere));
        }
        if chunk.available == 0 || ttl_ms == 0 {
            return None;
        }
        let limit = if chunk.max > 0 {
            chunk.max.min(max)
        } else {
            max
        };
        let exact = limit / active < rules.min_lease;
        let endgame = chunk.endgame(rules.endgame_percent);
        let mut tokens = want.max(1);
        if exact {
            tokens = 1;
        } else if endgame {
            tokens = (tokens / 2).max(1);
        }
        tokens = tokens.min(chunk.available);
        chunk.available -= tokens;
        chunk.leased += tokens;
        self.next_lease += 1;
        let lease_id = self.next_lease;
        self.leases.insert(
            lease_id,
            LeaseRecord {
                slot: slot.clone(),
                remaining: tokens,
            },
        );
        self.recent
            .entry((slot.0.clone(), slot.1))
            .or_default()
            .push_back((Instant::now(), tokens));
        Some(QuotaLease {
            demand_id,
            lease_id,
            key: slot.0.clone(),
            window: proto_window(slot.1) as i32,
            window_id: slot.2,
            tokens,
            ttl_ms,
            endgame,
            exact,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const RULES: CutRules = CutRules {
        lease_ttl_ms: 1_000,
        min_lease: 4,
        endgame_percent: 10,
    };

    fn book_with_chunk(available: u64, max: u64, outstanding: u64) -> (Book, Slot) {
        let mut book = Book::default();
        let slot: Slot = ("k".into(), Window::Minute, 10);
        book.chunks.insert(
            slot.clone(),
            ChunkState {
                available,
                leased: 0,
                max,
                outstanding,
            },
        );
        (book, slot)
    }

    #[test]
    fn a_lease_never_takes_more_than_the_chunk_holds_nor_outlives_its_window() {
        let (mut book, slot) = book_with_chunk(5, 100, 5);
        let now = Window::Minute.end_ms(WindowId(10)) - 300;
        let lease = book.cut(&slot, 1, 50, 100, RULES, now).unwrap();
        assert_eq!(lease.tokens, 5);
        assert_eq!(lease.ttl_ms, 300);
        assert!(book.cut(&slot, 2, 1, 100, RULES, now).is_none());
        assert_eq!(book.chunks[&slot].leased, 5);
    }

    #[test]
    fn a_same_term_return_goes_back_into_the_chunk_only_once() {
        let (mut book, slot) = book_with_chunk(10, 100, 10);
        let lease = book.cut(&slot, 1, 10, 100, RULES, 0).unwrap();
        book.report_same_term(lease.lease_id, 3, 7, true);
        book.report_same_term(lease.lease_id, 3, 7, true);
        assert_eq!(book.chunks[&slot].available, 7);
        assert_eq!(
            book.chunks[&slot].leased, 0,
            "a closed lease is no longer out"
        );
    }

    #[test]
    fn small_limits_lease_one_token_and_the_endgame_halves_leases() {
        let (mut book, slot) = book_with_chunk(3, 3, 3);
        let lease = book.cut(&slot, 1, 3, 3, RULES, 0).unwrap();
        assert!(lease.exact);
        assert_eq!(lease.tokens, 1);
        let (mut book, slot) = book_with_chunk(8, 100, 95);
        let lease = book.cut(&slot, 1, 8, 100, RULES, 0).unwrap();
        assert!(lease.endgame && !lease.exact);
        assert_eq!(lease.tokens, 4);
    }

    #[test]
    fn a_lowered_limit_caps_what_is_left_to_lease_at_once() {
        // 1000 per window; 500 out in all, 400 of them still in this term's chunk.
        let (mut book, slot) = book_with_chunk(400, 1000, 500);
        // Lowered to 300: only 300 - 100 = 200 may still be leased.
        let lease = book.cut(&slot, 1, 1_000, 300, RULES, 0).unwrap();
        assert_eq!(lease.tokens, 200);
        assert!(book.cut(&slot, 2, 1, 300, RULES, 0).is_none());
        // Lowered below what is out elsewhere: nothing more.
        let (mut book, slot) = book_with_chunk(400, 1000, 500);
        assert!(book.cut(&slot, 1, 10, 50, RULES, 0).is_none());
        // A demand still carrying a higher (older) limit changes nothing.
        let (mut book, slot) = book_with_chunk(400, 1000, 500);
        assert_eq!(book.cut(&slot, 1, 10, 2000, RULES, 0).unwrap().tokens, 10);
        assert_eq!(book.chunks[&slot].available, 390);
    }

    #[test]
    fn active_gateways_count_distinct_ids_while_their_sessions_are_open() {
        let mut book = Book::default();
        assert_eq!(book.active_gateways(), 1, "never zero: it divides");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let a1 = book.open("a".into(), 1, tx.clone());
        let a2 = book.open("a".into(), 2, tx.clone());
        let b = book.open("b".into(), 1, tx);
        assert_eq!(book.active_gateways(), 2);
        book.close(a1);
        assert_eq!(book.active_gateways(), 2, "a still has a session");
        book.close(a2);
        book.close(b);
        assert_eq!(book.active_gateways(), 1);
        assert!(book.gateways.is_empty());
    }
}

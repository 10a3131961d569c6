//! The quota ledger: Raft-committed budget of every rate-limited (key, window), per leader term.
//!
//! QUOTA.md splits a limit into two levels of escrow. This module is the first level, the part
//! that must survive failover: **chunks** of a window's budget granted to the leader of one term.
//! Leases cut from a chunk live only in that leader's memory and never appear here.
//!
//! ```text
//!   Request::Quota { now_unix_ms, ops }        (one Raft entry per leader tick, term T from its log id)
//!        │
//!        ├─ clock  = max(clock, now_unix_ms)    the ledger's time never runs backwards
//!        ├─ prune windows with end + length < clock, and gateways silent for SOURCE_RETENTION_MS
//!        └─ for each op, in order ─▶ one QuotaOpResult
//!             Grant    { key, window, max, want }            ─▶ chunk[T].granted  += min(want, max - outstanding)
//!             Release  { .., term: t < T, tokens, from }      ─▶ chunk[t].released += min(tokens, chunk[t] unreleased)
//!             Settle   { .., term: t <= T, consumed, from }   ─▶ chunk[t].consumed += consumed (visibility only)
//!             SetLimit { key, window, max }                   ─▶ max of the current window
//! ```
//!
//! # Rules
//!
//! * **Terms come from the log.** A grant always goes to the term of the entry that carries it
//!   (the `term` argument of [`QuotaLedger::apply`], read from the entry's log id), never to a term
//!   named in the payload, so a deposed leader's late proposal cannot add to another term's chunk.
//! * **Outstanding never passes the limit through a grant.** `outstanding = Σ_terms (granted -
//!   released)`; a grant asks `want` and gets `min(want, max - outstanding)` (0 is a valid answer),
//!   so right after any grant that gave tokens, `outstanding <= max` of that grant. A lowered `max`
//!   stops further grants; chunks already out stay out.
//! * **Only later terms release.** Unused tokens of a term-`t` lease are handed back exactly once:
//!   to the leader of `t` itself (its memory, the ledger does not change) or to a leader of a later
//!   term, which commits a `Release { term: t }`. A release whose term is not earlier than the
//!   entry's term is refused. What nobody ever attests stays spent for its window ("unknown means
//!   spent").
//! * **Reports apply once.** Every gateway-sourced op carries a [`Source`] (gateway id, epoch,
//!   sequence number). The ledger keeps, per gateway, the newest (epoch, seq) it applied and
//!   answers [`QuotaOpResult::Duplicate`] for anything not newer; a newer epoch (a restarted
//!   gateway) starts over at any sequence number. A refused op is not recorded, so the gateway may
//!   send it again. Each op needs its own sequence number: two ops of one report that share one
//!   are one op to the ledger.
//! * **Deterministic.** Ordered maps only; no clock but the one stamped in the entry.
//!
//! # Bounded state
//!
//! A window is pruned once it ended more than one window length before the ledger's clock (the
//! grace lets a later leader release or settle a window that just ended); snapshots therefore
//! carry only live windows. Because the clock is the maximum of every stamped time, a leader with a
//! slow clock can neither resurrect a pruned window nor grant into one: it grants into the window
//! of the ledger's clock, reported back in [`QuotaOpResult::Granted::window_id`].
//!
//! A gateway's dedup record is dropped after [`SOURCE_RETENTION_MS`] of leader time without an
//! applied op. That is safe: every window such a gateway's ops ever referred to started before
//! its last applied op, so it is pruned within two day-window lengths of it; a replay after that
//! finds no window and is refused instead of counted again.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tollgate_quota::{Window, WindowId};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

/// How long (leader time, milliseconds) a gateway's last (epoch, seq) is kept after its last
/// applied op: two day-windows, the longest any window it referred to can stay live.
pub const SOURCE_RETENTION_MS: u64 = 2 * 86_400_000;

/// The serde form of [`Window`]: its lowercase name (`"minute"`).
#[derive(Serialize, Deserialize)]
#[serde(remote = "Window", rename_all = "snake_case")]
enum WindowDef {
    Second,
    Minute,
    Hour,
    Day,
}

/// The serde form of [`WindowId`]: the bare index.
#[derive(Serialize, Deserialize)]
#[serde(remote = "WindowId")]
struct WindowIdDef(u64);

/// Where a gateway-reported op comes from, for exactly-once application.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Source {
    /// Gateway id (stable across its restarts).
    pub gateway: String,
    /// Gateway epoch: raised each time the gateway starts; a newer epoch resets the sequence.
    pub epoch: u64,
    /// Sequence number of the op within the epoch, rising.
    pub seq: u64,
}

/// One quota operation; a [`crate::Request::Quota`] entry carries a batch of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum QuotaOp {
    /// Reserve up to `want` tokens of the current window for the entry's term.
    Grant {
        /// Counter key (for example `grant:<id>:tool:<name>`).
        key: String,
        /// Window kind.
        #[serde(with = "WindowDef")]
        window: Window,
        /// The limit in force, stamped by the leader; becomes the window's `max`.
        max: u64,
        /// Tokens asked for.
        want: u64,
    },
    /// Give back tokens of an earlier term's chunk that a gateway attested unused.
    Release {
        /// Counter key.
        key: String,
        /// Window kind.
        #[serde(with = "WindowDef")]
        window: Window,
        /// The lease's window.
        #[serde(with = "WindowIdDef")]
        window_id: WindowId,
        /// The term of the lease (must be earlier than the entry's term).
        term: u64,
        /// Unused tokens.
        tokens: u64,
        /// The reporting gateway.
        from: Source,
    },
    /// Record tokens a gateway admitted from a term's leases (visibility only).
    Settle {
        /// Counter key.
        key: String,
        /// Window kind.
        #[serde(with = "WindowDef")]
        window: Window,
        /// The lease's window.
        #[serde(with = "WindowIdDef")]
        window_id: WindowId,
        /// The term of the lease (not later than the entry's term).
        term: u64,
        /// Tokens admitted since the last settlement of this lease.
        consumed: u64,
        /// The reporting gateway.
        from: Source,
    },
    /// Set the limit of the current window without granting (a changed policy).
    SetLimit {
        /// Counter key.
        key: String,
        /// Window kind.
        #[serde(with = "WindowDef")]
        window: Window,
        /// The new limit.
        max: u64,
    },
}

/// Why an op changed nothing. Replicated data: every node refuses alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QuotaRefusal {
    /// A release named a term that is not earlier than the entry's term.
    #[error("release of term {term} in an entry of term {entry_term}: only later terms release")]
    NotAnEarlierTerm {
        /// The term named by the op.
        term: u64,
        /// The term of the entry.
        entry_term: u64,
    },
    /// A settlement named a term later than the entry's term.
    #[error("settlement of term {term} in an entry of earlier term {entry_term}")]
    LaterTerm {
        /// The term named by the op.
        term: u64,
        /// The term of the entry.
        entry_term: u64,
    },
    /// The window is not live: never granted, or already pruned.
    #[error("no live {window} window {} of key {key}", window_id.0)]
    UnknownWindow {
        /// Counter key.
        key: String,
        /// Window kind.
        #[serde(with = "WindowDef")]
        window: Window,
        /// Window id.
        #[serde(with = "WindowIdDef")]
        window_id: WindowId,
    },
    /// The window holds no chunk of that term.
    #[error("term {term} holds no chunk of {window} window {} of key {key}", window_id.0)]
    NoChunk {
        /// Counter key.
        key: String,
        /// Window kind.
        #[serde(with = "WindowDef")]
        window: Window,
        /// Window id.
        #[serde(with = "WindowIdDef")]
        window_id: WindowId,
        /// The term named by the op.
        term: u64,
    },
}

/// The outcome of one [`QuotaOp`], in the order of the ops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum QuotaOpResult {
    /// A grant was applied (possibly of 0 tokens).
    Granted {
        /// The window the chunk belongs to (from the ledger's clock).
        #[serde(with = "WindowIdDef")]
        window_id: WindowId,
        /// Tokens added to the entry term's chunk.
        tokens: u64,
        /// Outstanding tokens of the window after the grant.
        outstanding: u64,
        /// The window's limit.
        max: u64,
    },
    /// A release was applied.
    Released {
        /// The window.
        #[serde(with = "WindowIdDef")]
        window_id: WindowId,
        /// The term whose chunk shrank.
        term: u64,
        /// Tokens actually released (never more than the term still had out).
        tokens: u64,
        /// Outstanding tokens of the window after the release.
        outstanding: u64,
    },
    /// A settlement was recorded.
    Settled {
        /// The window.
        #[serde(with = "WindowIdDef")]
        window_id: WindowId,
        /// The term.
        term: u64,
        /// The term's consumed total in this window after the settlement.
        consumed: u64,
    },
    /// A limit was set.
    LimitSet {
        /// The current window.
        #[serde(with = "WindowIdDef")]
        window_id: WindowId,
        /// The new limit.
        max: u64,
        /// Outstanding tokens of the window.
        outstanding: u64,
    },
    /// The op's source (epoch, seq) was not newer than the last applied one; nothing changed.
    Duplicate,
    /// The op was refused; nothing changed.
    Refused {
        /// Why.
        reason: QuotaRefusal,
    },
}

/// One term's chunk of a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Tokens granted to the term.
    pub granted: u64,
    /// Tokens given back by later terms (`<= granted`).
    pub released: u64,
    /// Tokens reported admitted (capped at `granted`).
    pub consumed: u64,
}

impl Chunk {
    /// Tokens of this chunk that count against the limit: `granted - released`.
    pub fn outstanding(&self) -> u64 {
        self.granted.saturating_sub(self.released)
    }
}

/// What the ledger knows about one (key, window kind, window id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WindowReport {
    /// Window kind.
    #[serde(with = "WindowDef")]
    pub window: Window,
    /// Window id.
    #[serde(with = "WindowIdDef")]
    pub window_id: WindowId,
    /// The latest limit.
    pub max: u64,
    /// `granted - released`: tokens that count against the limit.
    pub outstanding: u64,
    /// Granted over all terms.
    pub granted: u64,
    /// Released over all terms.
    pub released: u64,
    /// Consumed over all terms (as settled so far).
    pub consumed: u64,
    /// The chunk of each term.
    pub per_term: BTreeMap<u64, Chunk>,
}

/// The ledger's per-gateway dedup record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SourceState {
    epoch: u64,
    seq: u64,
    last_seen_unix_ms: u64,
}

/// (key, window kind, window id); ordered so one key's windows are adjacent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Slot {
    key: String,
    window: Window,
    id: WindowId,
}

impl Slot {
    fn new(key: &str, window: Window, id: WindowId) -> Self {
        Self {
            key: key.to_owned(),
            window,
            id,
        }
    }

    /// The first instant of the ledger's clock at which the window is pruned.
    fn prune_at(&self) -> u64 {
        self.window
            .end_ms(self.id)
            .saturating_add(self.window.millis())
            .saturating_add(1)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct WindowEntry {
    max: u64,
    terms: BTreeMap<u64, Chunk>,
}

impl WindowEntry {
    fn outstanding(&self) -> u64 {
        self.terms
            .values()
            .fold(0u64, |sum, c| sum.saturating_add(c.outstanding()))
    }
}

/// The replicated quota ledger. See the module docs for its rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "LedgerRepr", into = "LedgerRepr")]
pub struct QuotaLedger {
    /// The ledger's clock: the largest `now_unix_ms` applied so far.
    now_unix_ms: u64,
    windows: BTreeMap<Slot, WindowEntry>,
    /// (prune instant, slot) of every window: derived from `windows`, rebuilt on load.
    expiry: BTreeSet<(u64, Slot)>,
    sources: BTreeMap<String, SourceState>,
}

impl QuotaLedger {
    /// The ledger's clock (unix milliseconds): the largest time stamped in any applied entry.
    pub fn now_unix_ms(&self) -> u64 {
        self.now_unix_ms
    }

    /// Number of live windows.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether no window is live.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The newest (epoch, seq) applied from `gateway`, if it is still remembered.
    pub fn last_applied(&self, gateway: &str) -> Option<(u64, u64)> {
        self.sources.get(gateway).map(|s| (s.epoch, s.seq))
    }

    /// Every live window of `key`, ordered by window kind (shortest first) then id.
    pub fn key_report(&self, key: &str) -> Vec<WindowReport> {
        let from = Slot::new(key, Window::Second, WindowId(0));
        let to = Slot::new(key, Window::Day, WindowId(u64::MAX));
        self.windows
            .range(from..=to)
            .map(|(slot, entry)| report(slot, entry))
            .collect()
    }

    /// One live window, if any.
    pub fn window_report(
        &self,
        key: &str,
        window: Window,
        window_id: WindowId,
    ) -> Option<WindowReport> {
        let slot = Slot::new(key, window, window_id);
        self.windows.get(&slot).map(|entry| report(&slot, entry))
    }

    /// Apply one entry's ops: `term` is the entry's log id term, `now_unix_ms` the time its
    /// leader stamped. Deterministic; one result per op, in order.
    pub fn apply(&mut self, term: u64, now_unix_ms: u64, ops: &[QuotaOp]) -> Vec<QuotaOpResult> {
        self.now_unix_ms = self.now_unix_ms.max(now_unix_ms);
        self.prune();
        ops.iter().map(|op| self.apply_op(term, op)).collect()
    }

    fn prune(&mut self) {
        let now = self.now_unix_ms;
        while let Some(first) = self.expiry.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, slot)) = self.expiry.pop_first() {
                self.windows.remove(&slot);
            }
        }
        self.sources
            .retain(|_, s| now.saturating_sub(s.last_seen_unix_ms) <= SOURCE_RETENTION_MS);
    }

    fn apply_op(&mut self, entry_term: u64, op: &QuotaOp) -> QuotaOpResult {
        match op {
            QuotaOp::Grant {
                key,
                window,
                max,
                want,
            } => {
                let window_id = window.id_at(self.now_unix_ms);
                let entry = self.entry_mut(key, *window, window_id);
                entry.max = *max;
                let before = entry.outstanding();
                let tokens = (*want).min(max.saturating_sub(before));
                if tokens > 0 {
                    entry.terms.entry(entry_term).or_default().granted += tokens;
                }
                QuotaOpResult::Granted {
                    window_id,
                    tokens,
                    outstanding: before + tokens,
                    max: *max,
                }
            }
            QuotaOp::Release {
                key,
                window,
                window_id,
                term,
                tokens,
                from,
            } => {
                if self.is_duplicate(from) {
                    return QuotaOpResult::Duplicate;
                }
                if *term >= entry_term {
                    return refused(QuotaRefusal::NotAnEarlierTerm {
                        term: *term,
                        entry_term,
                    });
                }
                let entry = match self.entry_with_chunk(key, *window, *window_id, *term) {
                    Ok(entry) => entry,
                    Err(reason) => return refused(reason),
                };
                let chunk = entry.terms.entry(*term).or_default();
                let tokens = (*tokens).min(chunk.outstanding());
                chunk.released += tokens;
                let outstanding = entry.outstanding();
                self.record(from);
                QuotaOpResult::Released {
                    window_id: *window_id,
                    term: *term,
                    tokens,
                    outstanding,
                }
            }
            QuotaOp::Settle {
                key,
                window,
                window_id,
                term,
                consumed,
                from,
            } => {
                if self.is_duplicate(from) {
                    return QuotaOpResult::Duplicate;
                }
                if *term > entry_term {
                    return refused(QuotaRefusal::LaterTerm {
                        term: *term,
                        entry_term,
                    });
                }
                let entry = match self.entry_with_chunk(key, *window, *window_id, *term) {
                    Ok(entry) => entry,
                    Err(reason) => return refused(reason),
                };
                let chunk = entry.terms.entry(*term).or_default();
                chunk.consumed = chunk.consumed.saturating_add(*consumed).min(chunk.granted);
                let consumed = chunk.consumed;
                self.record(from);
                QuotaOpResult::Settled {
                    window_id: *window_id,
                    term: *term,
                    consumed,
                }
            }
            QuotaOp::SetLimit { key, window, max } => {
                let window_id = window.id_at(self.now_unix_ms);
                let entry = self.entry_mut(key, *window, window_id);
                entry.max = *max;
                QuotaOpResult::LimitSet {
                    window_id,
                    max: *max,
                    outstanding: entry.outstanding(),
                }
            }
        }
    }

    /// The entry of a window of the ledger's clock, created if needed.
    fn entry_mut(&mut self, key: &str, window: Window, id: WindowId) -> &mut WindowEntry {
        let slot = Slot::new(key, window, id);
        if !self.windows.contains_key(&slot) {
            self.expiry.insert((slot.prune_at(), slot.clone()));
        }
        self.windows.entry(slot).or_default()
    }

    /// A live window's entry that holds a chunk of `term`.
    fn entry_with_chunk(
        &mut self,
        key: &str,
        window: Window,
        window_id: WindowId,
        term: u64,
    ) -> Result<&mut WindowEntry, QuotaRefusal> {
        let slot = Slot::new(key, window, window_id);
        let entry = self
            .windows
            .get_mut(&slot)
            .ok_or_else(|| QuotaRefusal::UnknownWindow {
                key: key.to_owned(),
                window,
                window_id,
            })?;
        if !entry.terms.contains_key(&term) {
            return Err(QuotaRefusal::NoChunk {
                key: key.to_owned(),
                window,
                window_id,
                term,
            });
        }
        Ok(entry)
    }

    fn is_duplicate(&self, from: &Source) -> bool {
        self.sources
            .get(&from.gateway)
            .is_some_and(|s| from.epoch < s.epoch || (from.epoch == s.epoch && from.seq <= s.seq))
    }

    fn record(&mut self, from: &Source) {
        self.sources.insert(
            from.gateway.clone(),
            SourceState {
                epoch: from.epoch,
                seq: from.seq,
                last_seen_unix_ms: self.now_unix_ms,
            },
        );
    }
}

fn refused(reason: QuotaRefusal) -> QuotaOpResult {
    QuotaOpResult::Refused { reason }
}

fn report(slot: &Slot, entry: &WindowEntry) -> WindowReport {
    let sum = |f: fn(&Chunk) -> u64| {
        entry
            .terms
            .values()
            .fold(0u64, |total, c| total.saturating_add(f(c)))
    };
    WindowReport {
        window: slot.window,
        window_id: slot.id,
        max: entry.max,
        outstanding: entry.outstanding(),
        granted: sum(|c| c.granted),
        released: sum(|c| c.released),
        consumed: sum(|c| c.consumed),
        per_term: entry.terms.clone(),
    }
}

/// The serialized form: live windows as a list (JSON maps need string keys), the clock and the
/// dedup table. Every field defaults, so state written before the ledger existed still loads.
#[derive(Serialize, Deserialize)]
struct LedgerRepr {
    #[serde(default)]
    now_unix_ms: u64,
    #[serde(default)]
    windows: Vec<WindowRecord>,
    #[serde(default)]
    sources: BTreeMap<String, SourceState>,
}

#[derive(Serialize, Deserialize)]
struct WindowRecord {
    key: String,
    #[serde(with = "WindowDef")]
    window: Window,
    #[serde(with = "WindowIdDef")]
    window_id: WindowId,
    max: u64,
    terms: BTreeMap<u64, Chunk>,
}

impl From<QuotaLedger> for LedgerRepr {
    fn from(ledger: QuotaLedger) -> Self {
        Self {
            now_unix_ms: ledger.now_unix_ms,
            windows: ledger
                .windows
                .into_iter()
                .map(|(slot, entry)| WindowRecord {
                    key: slot.key,
                    window: slot.window,
                    window_id: slot.id,
                    max: entry.max,
                    terms: entry.terms,
                })
                .collect(),
            sources: ledger.sources,
        }
    }
}

impl From<LedgerRepr> for QuotaLedger {
    fn from(repr: LedgerRepr) -> Self {
        let mut ledger = QuotaLedger {
            now_unix_ms: repr.now_unix_ms,
            sources: repr.sources,
            ..QuotaLedger::default()
        };
        for record in repr.windows {
            let slot = Slot::new(&record.key, record.window, record.window_id);
            ledger.expiry.insert((slot.prune_at(), slot.clone()));
            ledger.windows.insert(
                slot,
                WindowEntry {
                    max: record.max,
                    terms: record.terms,
                },
            );
        }
        ledger
    }
}

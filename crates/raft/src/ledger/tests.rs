use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::state_machine::StateMachineData;
use crate::types::{Request, Response};

/// 2024-03-10T00:00:00Z, a UTC midnight.
const T0: u64 = 1_710_028_800_000;
const MINUTE: u64 = 60_000;

fn grant(key: &str, window: Window, max: u64, want: u64) -> QuotaOp {
    QuotaOp::Grant {
        key: key.into(),
        window,
        max,
        want,
    }
}

fn src(gateway: &str, epoch: u64, seq: u64) -> Source {
    Source {
        gateway: gateway.into(),
        epoch,
        seq,
    }
}

fn release(key: &str, id: WindowId, term: u64, tokens: u64, from: Source) -> QuotaOp {
    QuotaOp::Release {
        key: key.into(),
        window: Window::Minute,
        window_id: id,
        term,
        tokens,
        from,
    }
}

fn settle(key: &str, id: WindowId, term: u64, consumed: u64, from: Source) -> QuotaOp {
    QuotaOp::Settle {
        key: key.into(),
        window: Window::Minute,
        window_id: id,
        term,
        consumed,
        from,
    }
}

fn one(ledger: &mut QuotaLedger, term: u64, now: u64, op: QuotaOp) -> QuotaOpResult {
    let mut results = ledger.apply(term, now, &[op]);
    assert_eq!(results.len(), 1);
    results.remove(0)
}

fn tokens_of(result: &QuotaOpResult) -> u64 {
    match result {
        QuotaOpResult::Granted { tokens, .. } | QuotaOpResult::Released { tokens, .. } => *tokens,
        other => panic!("expected a grant or release, got {other:?}"),
    }
}

fn minute_id(now: u64) -> WindowId {
    Window::Minute.id_at(now)
}

fn outstanding(ledger: &QuotaLedger, key: &str, id: WindowId) -> u64 {
    ledger
        .window_report(key, Window::Minute, id)
        .map_or(0, |r| r.outstanding)
}

#[test]
fn a_grant_gets_what_it_wants_while_budget_remains() {
    let mut l = QuotaLedger::default();
    let result = one(&mut l, 1, T0 + 5, grant("k", Window::Minute, 10, 4));
    assert_eq!(
        result,
        QuotaOpResult::Granted {
            window_id: minute_id(T0),
            tokens: 4,
            outstanding: 4,
            max: 10
        }
    );
}

#[test]
fn a_grant_is_cut_to_the_remaining_budget_and_then_to_zero() {
    let mut l = QuotaLedger::default();
    let got: Vec<u64> = l
        .apply(
            1,
            T0,
            &[
                grant("k", Window::Minute, 10, 6),
                grant("k", Window::Minute, 10, 6),
                grant("k", Window::Minute, 10, 6),
            ],
        )
        .iter()
        .map(tokens_of)
        .collect();
    assert_eq!(got, [6, 4, 0]);
    assert_eq!(outstanding(&l, "k", minute_id(T0)), 10);
}

#[test]
fn grants_go_to_the_term_of_the_entry() {
    let mut l = QuotaLedger::default();
    one(&mut l, 3, T0, grant("k", Window::Minute, 10, 2));
    one(&mut l, 4, T0 + 1, grant("k", Window::Minute, 10, 5));
    let report = l.window_report("k", Window::Minute, minute_id(T0)).unwrap();
    let granted: Vec<(u64, u64)> = report
        .per_term
        .iter()
        .map(|(t, c)| (*t, c.granted))
        .collect();
    assert_eq!(granted, [(3, 2), (4, 5)]);
    assert_eq!((report.granted, report.outstanding), (7, 7));
}

#[test]
fn a_lowered_limit_stops_grants_but_keeps_outstanding_chunks() {
    let mut l = QuotaLedger::default();
    one(&mut l, 1, T0, grant("k", Window::Minute, 10, 8));
    let lowered = one(&mut l, 1, T0, grant("k", Window::Minute, 5, 3));
    assert_eq!(
        lowered,
        QuotaOpResult::Granted {
            window_id: minute_id(T0),
            tokens: 0,
            outstanding: 8,
            max: 5
        }
    );
    let set = one(
        &mut l,
        1,
        T0,
        QuotaOp::SetLimit {
            key: "k".into(),
            window: Window::Minute,
            max: 3,
        },
    );
    assert_eq!(
        set,
        QuotaOpResult::LimitSet {
            window_id: minute_id(T0),
            max: 3,
            outstanding: 8
        }
    );
    assert_eq!(
        l.window_report("k", Window::Minute, minute_id(T0))
            .unwrap()
            .max,
        3
    );
}

#[test]
fn a_later_term_release_lowers_outstanding_and_frees_budget() {
    let mut l = QuotaLedger::default();
    let id = minute_id(T0);
    one(&mut l, 1, T0, grant("k", Window::Minute, 10, 10));
    assert_eq!(
        tokens_of(&one(&mut l, 2, T0, grant("k", Window::Minute, 10, 5))),
        0
    );
    let released = one(&mut l, 2, T0, release("k", id, 1, 4, src("g", 1, 1)));
    assert_eq!(
        released,
        QuotaOpResult::Released {
            window_id: id,
            term: 1,
            tokens: 4,
            outstanding: 6
        }
    );
    assert_eq!(
        tokens_of(&one(&mut l, 2, T0, grant("k", Window::Minute, 10, 10))),
        4
    );
    let report = l.window_report("k", Window::Minute, id).unwrap();
    assert_eq!(
        report.per_term[&1],
        Chunk {
            granted: 10,
            released: 4,
            consumed: 0
        }
    );
    assert_eq!(report.per_term[&2].granted, 4);
}

#[test]
fn a_release_never_exceeds_what_the_term_still_has_out() {
    let mut l = QuotaLedger::default();
    let id = minute_id(T0);
    one(&mut l, 1, T0, grant("k", Window::Minute, 10, 7));
    let first = one(&mut l, 2, T0, release("k", id, 1, 100, src("g", 1, 1)));
    let second = one(&mut l, 2, T0, release("k", id, 1, 5, src("g", 1, 2)));
    assert_eq!((tokens_of(&first), tokens_of(&second)), (7, 0));
    assert_eq!(outstanding(&l, "k", id), 0);
}

#[test]
fn a_release_of_the_same_or_a_later_term_is_refused_and_not_recorded() {
    let mut l = QuotaLedger::default();
    let id = minute_id(T0);
    one(&mut l, 2, T0, grant("k", Window::Minute, 10, 7));
    let before = l.clone();
    for term in [2, 3] {
        assert_eq!(
            one(&mut l, 2, T0, release("k", id, term, 3, src("g", 1, 1))),
            QuotaOpResult::Refused {
                reason: QuotaRefusal::NotAnEarlierTerm {
                    term,
                    entry_term: 2
                }
            }
        );
    }
    assert_eq!(l, before, "a refused release changes nothing");
    assert_eq!(l.last_applied("g"), None);
    let later = one(&mut l, 3, T0, release("k", id, 2, 3, src("g", 1, 1)));
    assert_eq!(
        tokens_of(&later),
        3,
        "the same report applies in a later term"
    );
}

#[test]
fn reports_about_unknown_windows_or_chunks_are_refused() {
    let mut l = QuotaLedger::default();
    let id = minute_id(T0);
    one(&mut l, 2, T0, grant("k", Window::Minute, 10, 7));
    let unknown_window = one(
        &mut l,
        3,
        T0,
        release("k", WindowId(id.0 - 1), 2, 1, src("g", 1, 1)),
    );
    assert!(matches!(
        unknown_window,
        QuotaOpResult::Refused {
            reason: QuotaRefusal::UnknownWindow { .. }
        }
    ));
    let unknown_key = one(&mut l, 3, T0, settle("other", id, 2, 1, src("g", 1, 1)));
    assert!(matches!(
        unknown_key,
        QuotaOpResult::Refused {
            reason: QuotaRefusal::UnknownWindow { .. }
        }
    ));
    let no_chunk = one(&mut l, 3, T0, release("k", id, 1, 1, src("g", 1, 1)));
    assert_eq!(
        no_chunk,
        QuotaOpResult::Refused {
            reason: QuotaRefusal::NoChunk {
                key: "k".into(),
                window: Window::Minute,
                window_id: id,
                term: 1
            }
        }
    );
    assert_eq!(
        no_chunk_message(&no_chunk),
        format!("term 1 holds no chunk of minute window {} of key k", id.0)
    );
}

fn no_chunk_message(result: &QuotaOpResult) -> String {
    match result {
        QuotaOpResult::Refused { reason } => reason.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_settlement_records_consumption_without_changing_outstanding() {
    let mut l = QuotaLedger::default();
    let id = minute_id(T0);
    one(&mut l, 1, T0, grant("k", Window::Minute, 10, 6));
    let same_term = one(&mut l, 1, T0, settle("k", id, 1, 4, src("g", 1, 1)));
    assert_eq!(
        same_term,
        QuotaOpResult::Settled {
            window_id: id,
            term: 1,
            consumed: 4
        }
    );
    let later_term = one(&mut l, 2, T0, settle("k", id, 1, 9, src("g", 1, 2)));
    assert_eq!(
        later_term,
        QuotaOpResult::Settled {
            window_id: id,
            term: 1,
            consumed: 6
        },
        "consumption is capped at what the term was granted"
    );
    let report = l.window_report("k", Window::Minute, id).unwrap();
    assert_eq!((report.outstanding, report.consumed), (6, 6));
}

#[test]
fn a_settlement_of_a_later_term_than_the_entry_is_refused() {
    let mut l = QuotaLedger::default();
    let id = minute_id(T0);
    one(&mut l, 1, T0, grant("k", Window::Minute, 10, 6));
    assert_eq!(
        one(&mut l, 1, T0, settle("k", id, 2, 1, src("g", 1, 1))),
        QuotaOpResult::Refused {
            reason: QuotaRefusal::LaterTerm {
                term: 2,
                entry_term: 1
            }
        }
    );
}

#[test]
fn a_replayed_report_is_a_duplicate_and_changes_nothing() {
    let mut l = QuotaLedger::default();
    let id = minute_id(T0);
    one(&mut l, 1, T0, grant("k", Window::Minute, 10, 10));
    one(&mut l, 2, T0, release("k", id, 1, 2, src("g", 1, 5)));
    let after_first = l.clone();
    let replays = l.apply(
        2,
        T0,
        &[
            release("k", id, 1, 2, src("g", 1, 5)),
            release("k", id, 1, 2, src("g", 1, 4)),
            settle("k", id, 1, 3, src("g", 1, 5)),
        ],
    );
    assert_eq!(replays, vec![QuotaOpResult::Duplicate; 3]);
    assert_eq!(l, after_first);
    assert_eq!(l.last_applied("g"), Some((1, 5)));
}

#[test]
fn a_new_gateway_epoch_resets_its_sequence_and_outdates_the_old_one() {
    let mut l = QuotaLedger::default();
    let id = minute_id(T0);
    one(&mut l, 1, T0, grant("k", Window::Minute, 10, 10));
    one(&mut l, 2, T0, release("k", id, 1, 1, src("g", 1, 10)));
    let restarted = one(&mut l, 2, T0, release("k", id, 1, 1, src("g", 2, 0)));
    assert_eq!(tokens_of(&restarted), 1);
    assert_eq!(l.last_applied("g"), Some((2, 0)));
    assert_eq!(
        one(&mut l, 2, T0, release("k", id, 1, 1, src("g", 1, 11))),
        QuotaOpResult::Duplicate,
        "a late report of the old epoch is skipped"
    );
    let other = one(&mut l, 2, T0, release("k", id, 1, 1, src("h", 0, 0)));
    assert_eq!(tokens_of(&other), 1, "gateways are tracked apart");
}

#[test]
fn windows_are_pruned_once_they_ended_more_than_one_window_length_ago() {
    let mut l = QuotaLedger::default();
    let id = minute_id(T0);
    one(&mut l, 1, T0, grant("k", Window::Minute, 10, 3));
    one(&mut l, 1, T0, grant("k", Window::Hour, 10, 3));
    let end = Window::Minute.end_ms(id);
    l.apply(1, end + MINUTE, &[]);
    assert!(
        l.window_report("k", Window::Minute, id).is_some(),
        "kept through the grace window"
    );
    let late = one(
        &mut l,
        2,
        end + MINUTE,
        release("k", id, 1, 3, src("g", 1, 1)),
    );
    assert_eq!(
        tokens_of(&late),
        3,
        "a just-ended window can still be released"
    );
    l.apply(2, end + MINUTE + 1, &[]);
    assert!(l.window_report("k", Window::Minute, id).is_none());
    assert_eq!(l.len(), 1, "the hour window is still live");
    assert!(matches!(
        one(
            &mut l,
            2,
            end + MINUTE + 1,
            settle("k", id, 1, 1, src("g", 1, 2))
        ),
        QuotaOpResult::Refused {
            reason: QuotaRefusal::UnknownWindow { .. }
        }
    ));
}

#[test]
fn the_ledger_clock_never_runs_backwards() {
    let mut l = QuotaLedger::default();
    one(&mut l, 1, T0, grant("k", Window::Minute, 10, 10));
    let later = T0 + 5 * MINUTE;
    l.apply(1, later, &[]);
    assert!(l.is_empty(), "the first window was pruned");
    let slow_leader = one(&mut l, 2, T0 + 10, grant("k", Window::Minute, 10, 10));
    assert_eq!(
        slow_leader,
        QuotaOpResult::Granted {
            window_id: minute_id(later),
            tokens: 10,
            outstanding: 10,
            max: 10
        },
        "a leader with a slow clock grants into the ledger's window, not a pruned one"
    );
    assert_eq!(l.now_unix_ms(), later);
    assert!(
        l.window_report("k", Window::Minute, minute_id(T0))
            .is_none()
    );
}

#[test]
fn gateways_silent_for_the_retention_are_forgotten() {
    let mut l = QuotaLedger::default();
    let id = minute_id(T0);
    one(&mut l, 1, T0, grant("k", Window::Minute, 10, 10));
    one(&mut l, 2, T0, settle("k", id, 1, 1, src("g", 1, 1)));
    l.apply(2, T0 + SOURCE_RETENTION_MS, &[]);
    assert_eq!(l.last_applied("g"), Some((1, 1)));
    l.apply(2, T0 + SOURCE_RETENTION_MS + 1, &[]);
    assert_eq!(l.last_applied("g"), None);
}

#[test]
fn a_key_report_lists_every_live_window_of_that_key_only() {
    let mut l = QuotaLedger::default();
    l.apply(
        1,
        T0,
        &[
            grant("k", Window::Hour, 100, 30),
            grant("k", Window::Minute, 10, 4),
            grant("kk", Window::Minute, 10, 4),
            grant("j", Window::Minute, 10, 4),
        ],
    );
    one(&mut l, 2, T0 + 1, grant("k", Window::Minute, 10, 3));
    one(
        &mut l,
        2,
        T0 + 2,
        settle("k", minute_id(T0), 1, 2, src("g", 0, 0)),
    );
    let report = l.key_report("k");
    let kinds: Vec<Window> = report.iter().map(|r| r.window).collect();
    assert_eq!(kinds, [Window::Minute, Window::Hour]);
    let minute = &report[0];
    assert_eq!(
        (
            minute.max,
            minute.granted,
            minute.outstanding,
            minute.consumed
        ),
        (10, 7, 7, 2)
    );
    assert_eq!(minute.per_term.len(), 2);
    assert!(l.key_report("nothing").is_empty());
}

#[test]
fn ops_travel_as_tagged_json_with_window_names() {
    let op = release("k", WindowId(42), 3, 5, src("g", 1, 2));
    let json = serde_json::to_value(&op).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"op": "release", "key": "k", "window": "minute", "window_id": 42,
            "term": 3, "tokens": 5, "from": {"gateway": "g", "epoch": 1, "seq": 2}})
    );
    assert_eq!(serde_json::from_value::<QuotaOp>(json).unwrap(), op);
}

#[test]
fn the_ledger_survives_a_json_round_trip_with_its_prune_order() {
    let mut l = QuotaLedger::default();
    l.apply(
        1,
        T0,
        &[
            grant("k", Window::Minute, 10, 4),
            grant("k", Window::Day, 10, 4),
        ],
    );
    one(
        &mut l,
        2,
        T0,
        settle("k", minute_id(T0), 1, 1, src("g", 1, 1)),
    );
    let mut back: QuotaLedger = serde_json::from_slice(&serde_json::to_vec(&l).unwrap()).unwrap();
    assert_eq!(back, l);
    back.apply(2, T0 + 3 * MINUTE, &[]);
    assert_eq!(back.len(), 1, "the loaded minute window is pruned on time");
}

#[test]
fn state_written_before_the_ledger_existed_loads_with_an_empty_ledger() {
    let mut old = serde_json::to_value(StateMachineData::default()).unwrap();
    old.as_object_mut().unwrap().remove("quota");
    let data: StateMachineData = serde_json::from_value(old).unwrap();
    assert!(data.quota.is_empty());
    assert_eq!(data.quota.now_unix_ms(), 0);
}

#[test]
fn quota_requests_leave_the_config_revision_and_change_log_alone() {
    let mut data = StateMachineData::default();
    let applied = data.apply(
        1,
        &Request::PutUpstream {
            name: "u".into(),
            spec: serde_json::json!({}),
        },
    );
    assert_eq!(applied.revision(), 1);
    let quota = data.apply(
        1,
        &Request::Quota {
            now_unix_ms: T0,
            ops: vec![grant("k", Window::Minute, 10, 4)],
        },
    );
    assert_eq!(
        quota,
        Response::Quota {
            revision: 1,
            results: vec![QuotaOpResult::Granted {
                window_id: minute_id(T0),
                tokens: 4,
                outstanding: 4,
                max: 10
            }]
        }
    );
    assert_eq!(data.config.revision(), 1);
    assert_eq!(data.config.changes_since(0).map(|c| c.len()), Some(1));
    assert_eq!(
        data.config.apply(&Request::Quota {
            now_unix_ms: T0,
            ops: vec![]
        }),
        Response::Internal { revision: 1 },
        "the configuration alone treats a quota entry as no change"
    );
}

// ---------------------------------------------------------------------------------------------
// Property tests: random interleavings of terms, time, grants, releases, settles and replays.

const KEYS: [&str; 2] = ["a", "b"];
const WINDOWS: [Window; 2] = [Window::Second, Window::Minute];
const GATEWAYS: [&str; 3] = ["g0", "g1", "g2"];

#[derive(Debug, Clone)]
enum OpSpec {
    Grant {
        key: usize,
        window: usize,
        max: u64,
        want: u64,
    },
    Release {
        key: usize,
        window: usize,
        back: u64,
        term_back: u64,
        tokens: u64,
        from: (usize, u64, u64),
    },
    Settle {
        key: usize,
        window: usize,
        back: u64,
        term_back: u64,
        consumed: u64,
        from: (usize, u64, u64),
    },
    SetLimit {
        key: usize,
        window: usize,
        max: u64,
    },
}

#[derive(Debug, Clone)]
enum Step {
    /// One entry: advance the leader's clock (possibly backwards), maybe change terms, apply ops.
    Entry {
        advance: i64,
        new_term: bool,
        ops: Vec<OpSpec>,
    },
    /// Propose again a gateway report that was applied before, in a fresh entry.
    Replay(usize),
}

fn source_strategy() -> impl Strategy<Value = (usize, u64, u64)> {
    (0..GATEWAYS.len(), 0u64..3, 0u64..12)
}

fn op_strategy() -> impl Strategy<Value = OpSpec> {
    prop_oneof![
        4 => (0..KEYS.len(), 0..WINDOWS.len(), 0u64..20, 0u64..15)
            .prop_map(|(key, window, max, want)| OpSpec::Grant { key, window, max, want }),
        2 => (0..KEYS.len(), 0..WINDOWS.len(), 0u64..3, 0u64..3, 0u64..15, source_strategy())
            .prop_map(|(key, window, back, term_back, tokens, from)| OpSpec::Release {
                key, window, back, term_back, tokens, from
            }),
        2 => (0..KEYS.len(), 0..WINDOWS.len(), 0u64..3, 0u64..3, 0u64..15, source_strategy())
            .prop_map(|(key, window, back, term_back, consumed, from)| OpSpec::Settle {
                key, window, back, term_back, consumed, from
            }),
        1 => (0..KEYS.len(), 0..WINDOWS.len(), 0u64..20)
            .prop_map(|(key, window, max)| OpSpec::SetLimit { key, window, max }),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (-5_000i64..90_000, prop::bool::weighted(0.2), prop::collection::vec(op_strategy(), 0..5))
            .prop_map(|(advance, new_term, ops)| Step::Entry { advance, new_term, ops }),
        1 => (0usize..1000).prop_map(Step::Replay),
    ]
}

/// Turn a spec into an op against the leader's current time and term.
fn build(spec: &OpSpec, now: u64, term: u64) -> QuotaOp {
    let window_id = |window: usize, back: u64| {
        let id = WINDOWS[window].id_at(now);
        WindowId(id.0.saturating_sub(back))
    };
    let source = |(g, epoch, seq): (usize, u64, u64)| src(GATEWAYS[g], epoch, seq);
    match spec {
        OpSpec::Grant {
            key,
            window,
            max,
            want,
        } => grant(KEYS[*key], WINDOWS[*window], *max, *want),
        OpSpec::Release {
            key,
            window,
            back,
            term_back,
            tokens,
            from,
        } => QuotaOp::Release {
            key: KEYS[*key].into(),
            window: WINDOWS[*window],
            window_id: window_id(*window, *back),
            term: term.saturating_sub(*term_back),
            tokens: *tokens,
            from: source(*from),
        },
        OpSpec::Settle {
            key,
            window,
            back,
            term_back,
            consumed,
            from,
        } => QuotaOp::Settle {
            key: KEYS[*key].into(),
            window: WINDOWS[*window],
            window_id: window_id(*window, *back),
            term: term.saturating_sub(*term_back),
            consumed: *consumed,
            from: source(*from),
        },
        OpSpec::SetLimit { key, window, max } => QuotaOp::SetLimit {
            key: KEYS[*key].into(),
            window: WINDOWS[*window],
            max: *max,
        },
    }
}

/// (key, window, window id) -> term -> (granted, released), built only from the results.
type Oracle = BTreeMap<(String, Window, WindowId), BTreeMap<u64, (u64, u64)>>;

fn oracle_outstanding(oracle: &Oracle, slot: &(String, Window, WindowId)) -> u64 {
    oracle
        .get(slot)
        .map_or(0, |terms| terms.values().map(|(g, r)| g - r).sum())
}

/// One entry as the Raft log would carry it.
#[derive(Debug, Clone)]
struct Entry {
    term: u64,
    now: u64,
    ops: Vec<QuotaOp>,
}

/// Turn steps into entries; replays pick an earlier gateway-sourced op (modulo their count).
fn entries_for(steps: &[Step]) -> Vec<(Entry, bool)> {
    let mut now = T0;
    let mut term = 1u64;
    let mut sourced: Vec<QuotaOp> = Vec::new();
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Entry {
                advance,
                new_term,
                ops,
            } => {
                now = now.saturating_add_signed(*advance);
                if *new_term {
                    term += 1;
                }
                let ops: Vec<QuotaOp> = ops.iter().map(|s| build(s, now, term)).collect();
                sourced.extend(
                    ops.iter()
                        .filter(|op| {
                            !matches!(op, QuotaOp::Grant { .. } | QuotaOp::SetLimit { .. })
                        })
                        .cloned(),
                );
                out.push((Entry { term, now, ops }, false));
            }
            Step::Replay(pick) => {
                if sourced.is_empty() {
                    continue;
                }
                let op = sourced[pick % sourced.len()].clone();
                out.push((
                    Entry {
                        term,
                        now,
                        ops: vec![op],
                    },
                    true,
                ));
            }
        }
    }
    out
}

fn run(ledger: &mut QuotaLedger, entries: &[(Entry, bool)]) -> Result<(), TestCaseError> {
    let mut oracle = Oracle::new();
    // Whether each replayed op was applied the first time, by its source.
    let mut applied_sources: Vec<Source> = Vec::new();
    for (entry, replay) in entries {
        let before = ledger.clone();
        let results = ledger.apply(entry.term, entry.now, &entry.ops);
        prop_assert_eq!(results.len(), entry.ops.len());
        if *replay {
            let was_applied = match &entry.ops[0] {
                QuotaOp::Release { from, .. } | QuotaOp::Settle { from, .. } => {
                    applied_sources.contains(from)
                }
                _ => false,
            };
            if was_applied && before.now_unix_ms() == ledger.now_unix_ms() {
                prop_assert_eq!(&results[0], &QuotaOpResult::Duplicate);
                prop_assert_eq!(&before, &*ledger, "a replay changed the ledger");
            }
        }
        for (op, result) in entry.ops.iter().zip(&results) {
            match (op, result) {
                (
                    QuotaOp::Grant {
                        key,
                        window,
                        max,
                        want,
                    },
                    QuotaOpResult::Granted {
                        window_id,
                        tokens,
                        outstanding,
                        max: granted_max,
                    },
                ) => {
                    let slot = (key.clone(), *window, *window_id);
                    prop_assert_eq!(*window_id, window.id_at(ledger.now_unix_ms()));
                    prop_assert_eq!(granted_max, max);
                    prop_assert!(tokens <= want);
                    let terms = oracle.entry(slot.clone()).or_default();
                    terms.entry(entry.term).or_default().0 += tokens;
                    let after = oracle_outstanding(&oracle, &slot);
                    prop_assert_eq!(*outstanding, after);
                    if *tokens > 0 {
                        prop_assert!(
                            after <= *max,
                            "grant of {} made outstanding {} exceed max {}",
                            tokens,
                            after,
                            max
                        );
                    }
                }
                (
                    QuotaOp::Release {
                        key,
                        window,
                        window_id,
                        term,
                        from,
                        ..
                    },
                    QuotaOpResult::Released {
                        tokens,
                        outstanding,
                        ..
                    },
                ) => {
                    prop_assert!(*term < entry.term);
                    let slot = (key.clone(), *window, *window_id);
                    let chunk = oracle.get_mut(&slot).and_then(|terms| terms.get_mut(term));
                    prop_assert!(chunk.is_some(), "released from a chunk never granted");
                    if let Some(chunk) = chunk {
                        chunk.1 += tokens;
                        prop_assert!(chunk.1 <= chunk.0, "released more than granted");
                    }
                    prop_assert_eq!(*outstanding, oracle_outstanding(&oracle, &slot));
                    applied_sources.push(from.clone());
                }
                (QuotaOp::Settle { term, from, .. }, QuotaOpResult::Settled { .. }) => {
                    prop_assert!(*term <= entry.term);
                    applied_sources.push(from.clone());
                }
                (QuotaOp::SetLimit { max, .. }, QuotaOpResult::LimitSet { max: set, .. }) => {
                    prop_assert_eq!(max, set);
                }
                (
                    QuotaOp::Release { .. } | QuotaOp::Settle { .. },
                    QuotaOpResult::Duplicate | QuotaOpResult::Refused { .. },
                ) => {}
                (op, result) => prop_assert!(false, "{:?} answered {:?}", op, result),
            }
        }
        // Every live window agrees with the oracle, and no chunk released or consumed more
        // than it was granted.
        for key in KEYS {
            for report in ledger.key_report(key) {
                let slot = (key.to_owned(), report.window, report.window_id);
                let expected: BTreeMap<u64, (u64, u64)> = oracle
                    .get(&slot)
                    .map(|terms| {
                        terms
                            .iter()
                            .filter(|(_, (g, _))| *g > 0)
                            .map(|(t, c)| (*t, *c))
                            .collect()
                    })
                    .unwrap_or_default();
                let actual: BTreeMap<u64, (u64, u64)> = report
                    .per_term
                    .iter()
                    .map(|(t, c)| (*t, (c.granted, c.released)))
                    .collect();
                prop_assert_eq!(actual, expected);
                for chunk in report.per_term.values() {
                    prop_assert!(chunk.released <= chunk.granted);
                    prop_assert!(chunk.consumed <= chunk.granted);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_never_grant_past_the_limit_and_replays_change_nothing(
        steps in prop::collection::vec(step_strategy(), 1..40)
    ) {
        let entries = entries_for(&steps);
        let mut ledger = QuotaLedger::default();
        run(&mut ledger, &entries)?;
    }

    #[test]
    fn the_same_entries_give_byte_identical_state_even_across_a_snapshot(
        steps in prop::collection::vec(step_strategy(), 1..40),
        cut in 0usize..40,
    ) {
        let entries = entries_for(&steps);
        let apply_all = |ledger: &mut QuotaLedger, entries: &[(Entry, bool)]| {
            entries
                .iter()
                .map(|(e, _)| ledger.apply(e.term, e.now, &e.ops))
                .collect::<Vec<_>>()
        };
        let mut first = QuotaLedger::default();
        let first_results = apply_all(&mut first, &entries);
        let mut second = QuotaLedger::default();
        let second_results = apply_all(&mut second, &entries);
        prop_assert_eq!(&first_results, &second_results);
        let bytes = serde_json::to_vec(&first).unwrap();
        prop_assert_eq!(&bytes, &serde_json::to_vec(&second).unwrap());

        // Stop at `cut`, go through a snapshot, and carry on: same bytes and results.
        let cut = cut.min(entries.len());
        let mut third = QuotaLedger::default();
        let mut third_results = apply_all(&mut third, &entries[..cut]);
        let mut restored: QuotaLedger =
            serde_json::from_slice(&serde_json::to_vec(&third).unwrap()).unwrap();
        prop_assert_eq!(&restored, &third);
        third_results.extend(apply_all(&mut restored, &entries[cut..]));
        prop_assert_eq!(&third_results, &first_results);
        prop_assert_eq!(&bytes, &serde_json::to_vec(&restored).unwrap());
    }
}

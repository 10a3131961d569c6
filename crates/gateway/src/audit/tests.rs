#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use tempfile::TempDir;
use time::macros::datetime;
use tracing::info;

use super::*;

fn rec(request_id: &str, decision: Decision) -> AuditRecord {
    let mut r = AuditRecord::new(request_id, "github", "tools/call", decision);
    r.tool = Some("run-rerun".to_owned());
    r.arg_keys = vec!["run_id".to_owned()];
    r
}

async fn log_with(dir: &TempDir, ids: &[&str]) -> (AuditLog, PathBuf) {
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).await.unwrap();
    for id in ids {
        log.record(rec(id, Decision::Allow));
    }
    log.flush().await.unwrap();
    (log, path)
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn parse(line: &str) -> AuditRecord {
    serde_json::from_str(line).unwrap()
}

fn break_at(path: &Path) -> Break {
    let report = verify(path).unwrap();
    assert!(!report.intact);
    assert_eq!(report.head, None);
    report.first_break.unwrap()
}

#[tokio::test]
async fn recorded_lines_form_a_chain_that_verifies() {
    let dir = TempDir::new().unwrap();
    let (log, path) = log_with(&dir, &["r1", "r2", "r3"]).await;
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 3);
    let records: Vec<_> = lines.iter().map(|l| parse(l)).collect();
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(records[0].prev_hash, GENESIS_HASH);
    assert_eq!(records[1].prev_hash, sha256_hex(lines[0].as_bytes()));
    assert_eq!(records[2].prev_hash, sha256_hex(lines[1].as_bytes()));
    assert_eq!(records[2].request_id, "r3");

    let report = verify(&path).unwrap();
    assert_eq!(
        (report.lines, report.intact, report.first_break),
        (3, true, None)
    );
    assert_eq!(report.head, Some(log.head()));
    assert_eq!(
        log.head(),
        ChainHead {
            seq: 3,
            hash: sha256_hex(lines[2].as_bytes())
        }
    );
    assert_eq!(log.dropped(), 0);
}

#[tokio::test]
async fn an_empty_log_verifies_with_no_lines() {
    let dir = TempDir::new().unwrap();
    let (log, path) = log_with(&dir, &[]).await;
    assert_eq!(log.head(), ChainHead::genesis());
    let report = verify(&path).unwrap();
    assert_eq!((report.lines, report.intact, report.head), (0, true, None));
}

#[tokio::test]
async fn a_record_is_one_line_with_snake_case_fields() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).await.unwrap();
    let mut r = rec("req-7", Decision::RateLimited);
    r.time = format_time(datetime!(2024-03-10 13:47:21.5 UTC));
    r.upstream_status = Some(200);
    r.seq = 99;
    r.prev_hash = "caller's value is replaced".to_owned();
    log.record(r);
    log.flush().await.unwrap();
    let line = &read_lines(&path)[0];
    let json: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(json["time"], "2024-03-10T13:47:21.500Z");
    assert_eq!(json["decision"], "rate_limited");
    assert_eq!(json["request_id"], "req-7");
    assert_eq!(json["upstream_status"], 200);
    assert_eq!(json["grant_id"], serde_json::Value::Null);
    assert_eq!(
        (json["seq"].as_u64(), json["prev_hash"].as_str()),
        (Some(1), Some(GENESIS_HASH))
    );
}

#[test]
fn every_decision_serializes_as_its_snake_case_name() {
    let all = [
        Decision::Allow,
        Decision::Deny,
        Decision::Hidden,
        Decision::UnknownTool,
        Decision::DefaultDeny,
        Decision::RateLimited,
        Decision::ApprovalPending,
        Decision::Approved,
        Decision::Rejected,
        Decision::Expired,
        Decision::WouldDeny,
        Decision::Error,
    ];
    let names: Vec<String> = all
        .iter()
        .map(|d| {
            serde_json::to_value(d)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        names.join(" "),
        "allow deny hidden unknown_tool default_deny rate_limited approval_pending approved rejected expired would_deny error"
    );
    for d in all {
        assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
    }
}

#[test]
fn session_hash_is_short_stable_and_hides_the_id() {
    let h = session_hash("sealed-session-id");
    assert_eq!(h.len(), 16);
    assert_eq!(h, session_hash("sealed-session-id"));
    assert_ne!(h, session_hash("sealed-session-id2"));
    assert!(!h.contains("sealed"));
}

#[tokio::test]
async fn reopening_continues_the_chain_across_restarts() {
    let dir = TempDir::new().unwrap();
    let (first, path) = log_with(&dir, &["a", "b"]).await;
    let head = first.head();
    drop(first);

    info!("--- restart");
    let log = AuditLog::open(&path).await.unwrap();
    assert_eq!(log.head(), head);
    log.record(rec("c", Decision::Deny));
    log.record(rec("d", Decision::Allow));
    log.flush().await.unwrap();

    let lines = read_lines(&path);
    let third = parse(&lines[2]);
    assert_eq!(
        (third.seq, third.prev_hash.as_str()),
        (3, sha256_hex(lines[1].as_bytes()).as_str())
    );
    let report = verify(&path).unwrap();
    assert_eq!((report.lines, report.intact), (4, true));
    assert_eq!(log.head().seq, 4);
}

#[tokio::test]
async fn reopening_finds_the_last_line_beyond_the_first_tail_chunk() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).await.unwrap();
    let mut big = rec("big", Decision::Allow);
    big.message = Some("x".repeat(200_000));
    log.record(rec("small", Decision::Allow));
    log.record(big);
    log.flush().await.unwrap();
    let head = log.head();
    drop(log);

    let log = AuditLog::open(&path).await.unwrap();
    assert_eq!(log.head(), head);
    log.record(rec("after", Decision::Allow));
    log.flush().await.unwrap();
    assert!(verify(&path).unwrap().intact);
}

#[tokio::test]
async fn an_edited_middle_line_is_reported_at_that_line() {
    let dir = TempDir::new().unwrap();
    let (_log, path) = log_with(&dir, &["1", "2", "3", "4", "5"]).await;
    let mut lines = read_lines(&path);
    lines[2] = lines[2].replace("\"decision\":\"allow\"", "\"decision\":\"deny\"");
    write_lines(&path, &lines);
    let b = break_at(&path);
    assert_eq!(b.line, 3, "{}", b.reason);
    assert!(b.reason.contains("edited"), "{}", b.reason);
}

#[tokio::test]
async fn a_deleted_line_is_reported_where_the_gap_is() {
    let dir = TempDir::new().unwrap();
    let (_log, path) = log_with(&dir, &["1", "2", "3", "4", "5"]).await;
    let mut lines = read_lines(&path);
    lines.remove(2);
    write_lines(&path, &lines);
    let b = break_at(&path);
    assert_eq!(b.line, 3);
    assert!(b.reason.contains("seq jumps from 2 to 4"), "{}", b.reason);
    assert_eq!(verify(&path).unwrap().lines, 4);
}

#[tokio::test]
async fn swapped_lines_are_reported_at_the_first_of_them() {
    let dir = TempDir::new().unwrap();
    let (_log, path) = log_with(&dir, &["1", "2", "3", "4", "5"]).await;
    let mut lines = read_lines(&path);
    lines.swap(1, 2);
    write_lines(&path, &lines);
    let b = break_at(&path);
    assert_eq!(b.line, 2);
    assert!(b.reason.contains("reordered"), "{}", b.reason);
}

#[tokio::test]
async fn a_repeated_line_is_reported() {
    let dir = TempDir::new().unwrap();
    let (_log, path) = log_with(&dir, &["1", "2", "3"]).await;
    let mut lines = read_lines(&path);
    lines.insert(2, lines[1].clone());
    write_lines(&path, &lines);
    let b = break_at(&path);
    assert_eq!(b.line, 3);
    assert!(b.reason.contains("seq 2 follows 2"), "{}", b.reason);
}

#[tokio::test]
async fn a_removed_first_line_is_reported_at_line_one() {
    let dir = TempDir::new().unwrap();
    let (_log, path) = log_with(&dir, &["1", "2", "3"]).await;
    let lines = read_lines(&path);
    write_lines(&path, &lines[1..]);
    let b = break_at(&path);
    assert_eq!(b.line, 1);
    assert!(b.reason.contains("removed from the start"), "{}", b.reason);
}

#[tokio::test]
async fn a_truncated_first_line_is_reported_as_not_a_record() {
    let dir = TempDir::new().unwrap();
    let (_log, path) = log_with(&dir, &["1", "2", "3"]).await;
    let mut lines = read_lines(&path);
    let half = lines[0].len() / 2;
    lines[0].truncate(half);
    write_lines(&path, &lines);
    let b = break_at(&path);
    assert_eq!(b.line, 1);
    assert!(b.reason.starts_with("not an audit record"), "{}", b.reason);
}

#[tokio::test]
async fn a_partially_written_last_line_is_reported() {
    let dir = TempDir::new().unwrap();
    let (_log, path) = log_with(&dir, &["1", "2"]).await;
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"time\":\"2024-");
    std::fs::write(&path, text).unwrap();
    let report = verify(&path).unwrap();
    assert_eq!(report.lines, 3);
    let b = report.first_break.unwrap();
    assert_eq!(b.line, 3);
    assert!(b.reason.contains("partially written"), "{}", b.reason);
}

#[tokio::test]
async fn an_edited_last_line_is_caught_only_against_a_recorded_head() {
    let dir = TempDir::new().unwrap();
    let (log, path) = log_with(&dir, &["1", "2", "3"]).await;
    let anchor = log.head();
    let mut lines = read_lines(&path);
    lines[2] = lines[2].replace("\"decision\":\"allow\"", "\"decision\":\"deny\"");
    write_lines(&path, &lines);
    let report = verify(&path).unwrap();
    assert!(
        report.intact,
        "the chain alone cannot vouch for its last line"
    );
    let head = report.head.unwrap();
    assert_eq!(head.seq, anchor.seq);
    assert_ne!(head.hash, anchor.hash, "the recorded head exposes the edit");
}

#[tokio::test]
async fn opening_after_a_torn_write_sets_the_partial_line_aside_and_continues() {
    let dir = TempDir::new().unwrap();
    let (log, path) = log_with(&dir, &["1", "2"]).await;
    let head = log.head();
    drop(log);
    let torn = "{\"time\":\"2024-03-10T13:4";
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(torn);
    std::fs::write(&path, text).unwrap();

    let log = AuditLog::open(&path).await.unwrap();
    assert_eq!(log.head(), head);
    log.record(rec("3", Decision::Allow));
    log.flush().await.unwrap();
    let report = verify(&path).unwrap();
    assert_eq!((report.lines, report.intact), (3, true));

    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".partial-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read_to_string(&aside[0]).unwrap(), torn);
}

#[tokio::test]
async fn opening_a_file_that_is_only_a_torn_line_starts_a_new_chain() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::fs::write(&path, "{\"ti").unwrap();
    let log = AuditLog::open(&path).await.unwrap();
    assert_eq!(log.head(), ChainHead::genesis());
    log.record(rec("1", Decision::Allow));
    log.flush().await.unwrap();
    assert_eq!(verify(&path).unwrap().lines, 1);
    assert!(verify(&path).unwrap().intact);
}

#[tokio::test]
async fn opening_refuses_a_last_line_that_is_not_a_record() {
    let dir = TempDir::new().unwrap();
    let (log, path) = log_with(&dir, &["1"]).await;
    drop(log);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("not json\n");
    std::fs::write(&path, text).unwrap();
    let err = AuditLog::open(&path).await.unwrap_err();
    assert!(matches!(err, AuditError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("cannot resume the chain"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_recording_from_many_tasks_keeps_every_record_in_one_chain() {
    const TASKS: usize = 32;
    const EACH: usize = 250;
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).await.unwrap();

    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    log.record(rec(&format!("t{t}-{i}"), Decision::Allow));
                    if i % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    log.flush().await.unwrap();

    assert_eq!(log.dropped(), 0);
    let report = verify(&path).unwrap();
    assert_eq!(
        (report.lines, report.intact),
        ((TASKS * EACH) as u64, true),
        "{:?}",
        report.first_break
    );
    let ids: BTreeSet<String> = read_lines(&path)
        .iter()
        .map(|l| parse(l).request_id)
        .collect();
    let expected: BTreeSet<String> = (0..TASKS)
        .flat_map(|t| (0..EACH).map(move |i| format!("t{t}-{i}")))
        .collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn a_full_channel_drops_and_counts_instead_of_waiting() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    let options = AuditOptions {
        capacity: 4,
        ..AuditOptions::default()
    };
    let log = AuditLog::open_with(&path, options).await.unwrap();
    // A producer far faster than the writer: with room for 4 queued records, most are dropped,
    // and `record` returns at once every time.
    let total = 10_000u64;
    for i in 0..total {
        log.record(rec(&i.to_string(), Decision::Allow));
    }
    let dropped = log.dropped();
    assert!(dropped > 0, "a 4-record queue cannot hold {total} records");
    log.flush().await.unwrap();
    let report = verify(&path).unwrap();
    assert!(report.intact);
    assert_eq!(
        report.lines + dropped,
        total,
        "every record is either written or counted"
    );
    assert!(
        log.try_record(rec("y", Decision::Allow)).is_ok(),
        "room again after the flush"
    );
}

#[tokio::test]
async fn records_reach_the_file_without_a_flush() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).await.unwrap();
    log.record(rec("1", Decision::Allow));
    // The record reaches the file without flush(); wait on that condition with a time limit.
    tokio::time::timeout(Duration::from_secs(30), async {
        // The writer publishes the chain head after its write returns: wait for both.
        while std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == 0 || log.head().seq == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(log.head().seq, 1);
}

#[test]
fn times_are_rfc3339_utc_with_milliseconds() {
    assert_eq!(
        format_time(datetime!(2024-03-10 13:47:21.5 UTC)),
        "2024-03-10T13:47:21.500Z"
    );
    assert_eq!(
        format_time(datetime!(2024-03-10 15:47:21.0123 +02:00)),
        "2024-03-10T13:47:21.012Z"
    );
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn after_a_failed_write_the_writer_stops_and_counts_what_it_loses() {
    // Every write to /dev/full fails with "no space left on device".
    let log = AuditLog::open("/dev/full").await.unwrap();
    log.record(rec("1", Decision::Allow));
    log.record(rec("2", Decision::Allow));
    // The writer may have failed on its own timer before the flush arrived: either way the flush
    // reports the failure.
    let err = log.flush().await.unwrap_err();
    assert!(
        matches!(err, AuditError::WriteFailed(_) | AuditError::Stopped),
        "{err}"
    );
    assert_eq!(log.dropped(), 2);
    assert!(matches!(
        log.try_record(rec("3", Decision::Allow)),
        Err(AuditError::Stopped)
    ));
    assert_eq!(log.dropped(), 3);
    assert!(matches!(log.flush().await, Err(AuditError::Stopped)));
}

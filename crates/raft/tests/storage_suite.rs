//! openraft's own storage test suite against the on-disk store, plus restart tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite, log_id};
use openraft::{
    Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder, StorageError, Vote,
};
use tempfile::TempDir;
use tollgate_raft::{LogStore, NodeId, Request, StateMachineStore, TypeConfig, open_storage};

struct DiskBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for DiskBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = open_storage(dir.path())?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_against_the_disk_store() {
    Suite::test_all(DiskBuilder).unwrap();
}

fn normal(term: u64, index: u64, request: Request) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(request),
    }
}

fn put(id: &str, doc: &str) -> Request {
    Request::PutPolicy {
        id: id.into(),
        document: doc.into(),
        expected_version: None,
        created_at_unix_ms: 1_700_000_000_000,
    }
}

async fn append(log: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
    log.append_entries(entries).unwrap();
}

#[tokio::test]
async fn votes_logs_snapshot_and_state_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new_committed(3, 1);
    {
        let (mut log, mut sm) = open_storage(dir.path()).unwrap();
        log.save_vote(&vote).await.unwrap();
        let membership = Entry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1])], None)),
        };
        let entries = vec![
            membership,
            normal(1, 2, put("p", "{\"v\":1}")),
            normal(1, 3, put("p", "{\"v\":2}")),
            normal(1, 4, put("q", "{}")),
        ];
        append(&mut log, entries.clone()).await;
        sm.apply(entries[..3].to_vec()).await.unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
        sm.apply(entries[3..].to_vec()).await.unwrap();
        log.purge(log_id(1, 1, 2)).await.unwrap();
        log.truncate(log_id(1, 1, 4)).await.unwrap();
        append(&mut log, vec![normal(2, 4, put("r", "{}"))]).await;
    }
    let (mut log, mut sm) = open_storage(dir.path()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(2, 1, 4)));
    let entries = log.try_get_log_entries(0..10).await.unwrap();
    let ids: Vec<LogId<NodeId>> = entries.iter().map(|e| e.log_id).collect();
    assert_eq!(ids, vec![log_id(1, 1, 3), log_id(2, 1, 4)]);

    // The state machine comes back as of the snapshot (after index 3, revision 2).
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1, 3)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1, 1)));
    let data = sm.data();
    assert_eq!(data.config.revision(), 2);
    assert_eq!(data.config.policy_versions("p").unwrap().len(), 2);
    let snapshot = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 3)));

    // Replaying the remaining log (as openraft does after a restart) reaches the later state.
    sm.apply(entries[1..].to_vec()).await.unwrap();
    assert_eq!(sm.data().config.revision(), 3);
    assert!(sm.data().config.current_policy("r").is_some());
}

#[tokio::test]
async fn a_torn_log_tail_is_cut_off_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        append(
            &mut log,
            vec![normal(1, 1, put("p", "{}")), normal(1, 2, put("p", "{}"))],
        )
        .await;
    }
    let path = dir.path().join("raft.log");
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 3).unwrap();
    drop(file);

    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        Some(log_id(1, 1, 1))
    );
    append(&mut log, vec![normal(1, 2, put("p", "{\"again\":true}"))]).await;
    drop(log);
    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(log.try_get_log_entries(0..).await.unwrap().len(), 2);
}

#[tokio::test]
async fn compaction_keeps_only_live_entries_and_the_purge_point() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        let entries = (1..=20).map(|i| normal(1, i, put("p", "{}"))).collect();
        append(&mut log, entries).await;
        log.purge(log_id(1, 1, 15)).await.unwrap();
        log.compact().unwrap();
    }
    let mut log = LogStore::open(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 15)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 20)));
    assert_eq!(log.try_get_log_entries(0..).await.unwrap().len(), 5);
}

#[tokio::test]
async fn applying_the_same_entries_to_two_fresh_machines_gives_identical_snapshots() {
    let entries: Vec<_> = (1..=50)
        .map(|i| {
            let request = match i % 5 {
                0 => Request::RollbackPolicy {
                    id: "p".into(),
                    to_version: 1,
                    created_at_unix_ms: i,
                },
                1 => put("p", &format!("{{\"n\":{i}}}")),
                2 => Request::PutUpstream {
                    name: format!("u{}", i % 3),
                    spec: serde_json::json!({"url": i}),
                },
                3 => Request::RemoveUpstream {
                    name: format!("u{}", i % 3),
                },
                _ => Request::CreateGrant {
                    id: format!("g{i}"),
                    label: "l".into(),
                    token_sha256: tollgate_raft::TokenHash([i as u8; 32]),
                    server: format!("u{}", i % 3),
                    policy_id: "p".into(),
                    created_at_unix_ms: i,
                },
            };
            normal(1, i, request)
        })
        .collect();
    let mut snapshots = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        sm.apply(entries.clone()).await.unwrap();
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        snapshots.push(snapshot.snapshot.into_inner());
    }
    assert_eq!(snapshots[0], snapshots[1]);
    assert!(!snapshots[0].is_empty());
}

//! The Raft state machine around [`ConfigState`] and the [`QuotaLedger`], with whole-state
//! snapshots on disk.
//!
//! ```text
//!  <dir>/snapshot.json   {"meta": SnapshotMeta, "data": <StateMachineData as JSON>}
//!                        written to snapshot.tmp, fsynced, renamed, directory fsynced
//! ```
//!
//! The state machine itself lives in memory. On open it is restored from the last snapshot file;
//! openraft then re-applies the committed log entries after the snapshot's last log id. The
//! snapshot is the whole state (policies with every version, grants, upstreams, revision, change
//! log, live quota windows, last applied log id and membership) encoded as JSON: the configuration
//! is small (kilobytes to a few megabytes) and JSON keeps it inspectable with ordinary tools.
//!
//! Quota entries go to the ledger with the term of their log id; they never touch the
//! configuration revision, so the revision watch (and every config watcher) stays asleep.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, StorageError,
    StoredMembership,
};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::fsio::{read_optional, storage_err, write_atomic};
use crate::ledger::QuotaLedger;
use crate::state::ConfigState;
use crate::types::{NodeId, PeerNode, Request, Response, TypeConfig};

const SNAPSHOT_FILE: &str = "snapshot.json";

/// Everything a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachineData {
    /// The last log id applied.
    pub last_applied: Option<LogId<NodeId>>,
    /// The last membership applied.
    pub last_membership: StoredMembership<NodeId, PeerNode>,
    /// The configuration.
    pub config: ConfigState,
    /// The quota ledger (absent from snapshots written before it existed).
    #[serde(default)]
    pub quota: QuotaLedger,
}

impl StateMachineData {
    /// Apply one normal entry's request; `term` is the term of the entry's log id. Quota
    /// requests go to the ledger, everything else to the configuration. Deterministic.
    pub fn apply(&mut self, term: u64, request: &Request) -> Response {
        match request {
            Request::Quota { now_unix_ms, ops } => Response::Quota {
                revision: self.config.revision(),
                results: self.quota.apply(term, *now_unix_ms, ops),
            },
            config => self.config.apply(config),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, PeerNode>,
    data: Vec<u8>,
}

/// A read handle on the applied state, for the services built on top (watch, admin reads).
#[derive(Clone)]
pub struct StateReader {
    data: Arc<RwLock<StateMachineData>>,
    revision: watch::Receiver<u64>,
}

impl StateReader {
    /// Run `f` on the applied configuration.
    pub fn read<R>(&self, f: impl FnOnce(&ConfigState) -> R) -> R {
        f(&self.data.read().config)
    }

    /// Run `f` on the applied quota ledger.
    pub fn read_quota<R>(&self, f: impl FnOnce(&QuotaLedger) -> R) -> R {
        f(&self.data.read().quota)
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.data.read().last_applied
    }

    /// A receiver that sees the configuration revision each time it changes.
    pub fn subscribe_revision(&self) -> watch::Receiver<u64> {
        self.revision.clone()
    }
}

/// The Raft state machine store.
pub struct StateMachineStore {
    dir: PathBuf,
    data: Arc<RwLock<StateMachineData>>,
    revision: watch::Sender<u64>,
    /// The newest snapshot on disk; shared with snapshot builders, whose lock orders the writes.
    current: Arc<Mutex<Option<SnapshotFile>>>,
    snapshot_seq: u64,
}

fn snapshot_err(e: impl std::error::Error + 'static, verb: ErrorVerb) -> StorageError<NodeId> {
    storage_err(ErrorSubject::Snapshot(None), verb, e)
}

impl StateMachineStore {
    /// Open the state machine in `dir`, restoring it from the snapshot file if there is one.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError<NodeId>> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| snapshot_err(e, ErrorVerb::Write))?;
        let (data, current) = match read_optional(&dir.join(SNAPSHOT_FILE))
            .map_err(|e| snapshot_err(e, ErrorVerb::Read))?
        {
            Some(bytes) => {
                let file: SnapshotFile =
                    serde_json::from_slice(&bytes).map_err(|e| snapshot_err(e, ErrorVerb::Read))?;
                let data: StateMachineData = serde_json::from_slice(&file.data)
                    .map_err(|e| snapshot_err(e, ErrorVerb::Read))?;
                (data, Some(file))
            }
            None => (StateMachineData::default(), None),
        };
        let (revision, _) = watch::channel(data.config.revision());
        Ok(Self {
            dir,
            data: Arc::new(RwLock::new(data)),
            revision,
            current: Arc::new(Mutex::new(current)),
            snapshot_seq: 0,
        })
    }

    /// A read handle on the applied state.
    pub fn reader(&self) -> StateReader {
        StateReader {
            data: self.data.clone(),
            revision: self.revision.subscribe(),
        }
    }

    /// A copy of the whole applied state.
    pub fn data(&self) -> StateMachineData {
        self.data.read().clone()
    }
}

/// Write `file` as the current snapshot unless a newer one is already there; the caller holds
/// the lock on `current`, which orders concurrent builders and installs.
fn save_snapshot(
    dir: &Path,
    current: &mut Option<SnapshotFile>,
    file: SnapshotFile,
) -> Result<(), StorageError<NodeId>> {
    if let Some(existing) = current.as_ref()
        && existing.meta.last_log_id > file.meta.last_log_id
    {
        return Ok(());
    }
    let signature = Some(file.meta.signature());
    let bytes = serde_json::to_vec(&file).map_err(|e| {
        storage_err(
            ErrorSubject::Snapshot(signature.clone()),
            ErrorVerb::Write,
            e,
        )
    })?;
    write_atomic(&dir.join(SNAPSHOT_FILE), &bytes)
        .map_err(|e| storage_err(ErrorSubject::Snapshot(signature), ErrorVerb::Write, e))?;
    *current = Some(file);
    Ok(())
}

/// Builds a snapshot of the state machine as it was when the builder was made.
pub struct SnapshotBuilder {
    data: StateMachineData,
    snapshot_id: String,
    dir: PathBuf,
    current: Arc<Mutex<Option<SnapshotFile>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let bytes =
            serde_json::to_vec(&self.data).map_err(|e| snapshot_err(e, ErrorVerb::Write))?;
        let meta = SnapshotMeta {
            last_log_id: self.data.last_applied,
            last_membership: self.data.last_membership.clone(),
            snapshot_id: self.snapshot_id.clone(),
        };
        let file = SnapshotFile {
            meta: meta.clone(),
            data: bytes.clone(),
        };
        save_snapshot(&self.dir, &mut self.current.lock(), file)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, PeerNode>), StorageError<NodeId>>
    {
        let data = self.data.read();
        Ok((data.last_applied, data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let revision = {
            let mut data = self.data.write();
            for entry in entries {
                data.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::Internal {
                        revision: data.config.revision(),
                    },
                    EntryPayload::Normal(request) => {
                        data.apply(entry.log_id.leader_id.term, &request)
                    }
                    EntryPayload::Membership(membership) => {
                        data.last_membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                        Response::Internal {
                            revision: data.config.revision(),
                        }
                    }
                };
                responses.push(response);
            }
            data.config.revision()
        };
        self.revision.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let data = self.data.read().clone();
        let snapshot_id = match data.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, self.snapshot_seq),
            None => format!("none-{}", self.snapshot_seq),
        };
        SnapshotBuilder {
            data,
            snapshot_id,
            dir: self.dir.clone(),
            current: self.current.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, PeerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let data: StateMachineData = serde_json::from_slice(&bytes).map_err(|e| {
            storage_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                e,
            )
        })?;
        save_snapshot(
            &self.dir,
            &mut self.current.lock(),
            SnapshotFile {
                meta: meta.clone(),
                data: bytes,
            },
        )?;
        let revision = data.config.revision();
        *self.data.write() = data;
        self.revision.send_replace(revision);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.current.lock().as_ref().map(|file| Snapshot {
            meta: file.meta.clone(),
            snapshot: Box::new(Cursor::new(file.data.clone())),
        }))
    }
}

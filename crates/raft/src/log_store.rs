//! The durable Raft log: one append-only file of checksummed records, plus the vote in its own
//! file.
//!
//! ```text
//!  <dir>/vote.json   the vote, replaced atomically (temp file, fsync, rename, fsync dir)
//!  <dir>/committed.json  the last committed log id this node knows, a hint (no fsync)
//!  <dir>/raft.log    records: [len: u32 LE][crc32: u32 LE][JSON of LogRecord]
//!                    LogRecord = Entry(entry) | Truncate { since } | Purge { upto }
//! ```
//!
//! * **Append** writes all entries of one `append` call in one `write` and one `fdatasync` (group
//!   commit), and only then tells openraft the entries are flushed.
//! * **Truncate** and **purge** append a marker record (fsynced), so replaying the file from the
//!   start rebuilds exactly the live log and `last_purged_log_id`.
//! * **Compaction**: once the file holds many more records than live entries, it is rewritten
//!   (temp file + rename) as one purge marker followed by the live entries.
//! * **Committed**: the committed log id is saved (replaced by rename, not fsynced) so that a
//!   restarted node applies its committed entries at once, before it hears a leader, instead of
//!   serving the older state of its last snapshot meanwhile. openraft treats it as a hint: a lost
//!   or stale file only delays applying until the leader's next heartbeat.
//! * **Recovery**: a torn or corrupt tail (short record or checksum mismatch) was never
//!   acknowledged, because acknowledgement waits for the fsync; it is cut off on open.
//!
//! The live entries are also held in memory (a `BTreeMap`); snapshots purge the log, which bounds
//! it. File I/O is synchronous inside the async methods (as in openraft's own on-disk examples);
//! moving it to a dedicated thread is possible later without changing the format.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, Vote,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::fsio::{crc32, read_optional, storage_err, sync_dir, write_atomic};
use crate::types::{NodeId, TypeConfig};

const LOG_FILE: &str = "raft.log";
const VOTE_FILE: &str = "vote.json";
const COMMITTED_FILE: &str = "committed.json";
/// Compact when the file holds this many more records than live entries.
const COMPACT_SLACK: u64 = 4096;
const HEADER_LEN: usize = 8;

#[derive(Serialize, Deserialize)]
enum LogRecord {
    Entry(Entry<TypeConfig>),
    Truncate { since: u64 },
    Purge { upto: LogId<NodeId> },
}

struct Inner {
    dir: PathBuf,
    file: File,
    /// Records in the file (for the compaction trigger).
    records: u64,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
}

/// The durable Raft log store. Clones share the same log; a clone is also the log reader.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn encode(record: &LogRecord, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let payload = serde_json::to_vec(record)?;
    // A single entry is far below 4 GiB; the conversion cannot fail in practice but is checked.
    let len = u32::try_from(payload.len()).map_err(serde::ser::Error::custom)?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    storage_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    storage_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

impl LogStore {
    /// Open (or create) the log in `dir`, replaying it from disk.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError<NodeId>> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(write_err)?;
        let vote = match read_optional(&dir.join(VOTE_FILE))
            .map_err(|e| storage_err(ErrorSubject::Vote, ErrorVerb::Read, e))?
        {
            Some(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| storage_err(ErrorSubject::Vote, ErrorVerb::Read, e))?,
            ),
            None => None,
        };
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(read_err)?;
        sync_dir(&path).map_err(write_err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(read_err)?;

        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        let mut records = 0;
        let mut pos = 0;
        while let Some((record, next)) = decode_at(&bytes, pos) {
            match record {
                LogRecord::Entry(entry) => {
                    entries.insert(entry.log_id.index, entry);
                }
                LogRecord::Truncate { since } => {
                    entries.split_off(&since);
                }
                LogRecord::Purge { upto } => {
                    entries = entries.split_off(&(upto.index + 1));
                    last_purged = Some(upto);
                }
            }
            records += 1;
            pos = next;
        }
        if pos < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                valid = pos,
                total = bytes.len(),
                "cutting off a torn or corrupt tail of the raft log"
            );
            file.set_len(pos as u64).map_err(write_err)?;
            file.sync_all().map_err(write_err)?;
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                dir,
                file,
                records,
                entries,
                last_purged,
                vote,
            })),
        })
    }

    /// Append entries durably: one write and one fsync for the whole batch (group commit). Returns
    /// only after the entries are on disk; this is what the `RaftLogStorage::append` acknowledges.
    pub fn append_entries(&self, entries: Vec<Entry<TypeConfig>>) -> io::Result<()> {
        let mut buf = Vec::new();
        for entry in &entries {
            encode(&LogRecord::Entry(entry.clone()), &mut buf).map_err(io::Error::other)?;
        }
        let mut inner = self.inner.lock();
        inner.write_records(&buf, entries.len() as u64)?;
        for entry in entries {
            inner.entries.insert(entry.log_id.index, entry);
        }
        Ok(())
    }

    /// Rewrite the log file with only the live entries.
    pub fn compact(&self) -> Result<(), StorageError<NodeId>> {
        self.inner.lock().compact()
    }
}

/// Decode the record at `pos`; `None` at the end or at a torn / corrupt record.
fn decode_at(bytes: &[u8], pos: usize) -> Option<(LogRecord, usize)> {
    let header = bytes.get(pos..pos + HEADER_LEN)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let start = pos + HEADER_LEN;
    let payload = bytes.get(start..start.checked_add(len)?)?;
    if crc32(payload) != crc {
        return None;
    }
    let record = serde_json::from_slice(payload).ok()?;
    Some((record, start + len))
}

impl Inner {
    fn write_records(&mut self, buf: &[u8], count: u64) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.file.sync_data()?;
        self.records += count;
        Ok(())
    }

    fn append_marker(&mut self, record: &LogRecord) -> Result<(), StorageError<NodeId>> {
        let mut buf = Vec::new();
        encode(record, &mut buf).map_err(write_err)?;
        self.write_records(&buf, 1).map_err(write_err)
    }

    fn compact(&mut self) -> Result<(), StorageError<NodeId>> {
        let mut buf = Vec::new();
        let mut count = 0;
        if let Some(upto) = self.last_purged {
            encode(&LogRecord::Purge { upto }, &mut buf).map_err(write_err)?;
            count += 1;
        }
        for entry in self.entries.values() {
            encode(&LogRecord::Entry(entry.clone()), &mut buf).map_err(write_err)?;
            count += 1;
        }
        let path = self.dir.join(LOG_FILE);
        write_atomic(&path, &buf).map_err(write_err)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(write_err)?;
        self.records = count;
        Ok(())
    }

    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(self.last_purged)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.inner.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.inner.lock();
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.inner.lock();
        let bytes = serde_json::to_vec(vote)
            .map_err(|e| storage_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        write_atomic(&inner.dir.join(VOTE_FILE), &bytes)
            .map_err(|e| storage_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let dir = self.inner.lock().dir.clone();
        let bytes = serde_json::to_vec(&committed)
            .map_err(|e| storage_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let path = dir.join(COMMITTED_FILE);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| storage_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let dir = self.inner.lock().dir.clone();
        let bytes = read_optional(&dir.join(COMMITTED_FILE))
            .map_err(|e| storage_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        // A torn or unreadable hint is no hint: openraft learns the commit from the leader.
        let committed = bytes
            .and_then(|b| serde_json::from_slice::<Option<LogId<NodeId>>>(&b).ok())
            .flatten();
        let inner = self.inner.lock();
        // Never claim more than the log holds (a hint written before a torn tail was cut off).
        let last = inner
            .entries
            .keys()
            .next_back()
            .copied()
            .or(inner.last_purged.map(|l| l.index));
        Ok(committed.filter(|c| last.is_some_and(|last| c.index <= last)))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // The write and its fsync run on the blocking pool: an fsync takes milliseconds and
        // would otherwise hold one of the runtime's few worker threads (two on a small node),
        // stalling every request and RPC scheduled on it. openraft issues appends one at a time,
        // so their order is kept.
        let store = self.clone();
        let entries: Vec<_> = entries.into_iter().collect();
        let result = tokio::task::spawn_blocking(move || store.append_entries(entries))
            .await
            .unwrap_or_else(|join| Err(io::Error::other(format!("log append task: {join}"))));
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = write_err(io::Error::new(e.kind(), e.to_string()));
                callback.log_io_completed(Err(e));
                Err(err)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.inner.lock();
        inner.append_marker(&LogRecord::Truncate {
            since: log_id.index,
        })?;
        inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.inner.lock();
        inner.append_marker(&LogRecord::Purge { upto: log_id })?;
        let rest = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = rest;
        inner.last_purged = Some(log_id);
        if inner.records > inner.entries.len() as u64 + COMPACT_SLACK {
            inner.compact()?;
        }
        Ok(())
    }
}

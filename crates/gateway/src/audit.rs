//! The hash-chained audit log: one JSON line per decision.
//!
//! # Chain
//!
//! Every line carries `seq` (1, 2, 3...) and `prev_hash`, the hex SHA-256 of the exact bytes of the
//! previous line without its newline; the first line's `prev_hash` is 64 zeros ([`GENESIS_HASH`]).
//! [`verify`] walks the file and reports the first place where the chain does not hold: an edited
//! line, a removed line (a `seq` gap), lines out of order, removed first lines, a line that is not
//! JSON, or a partially written last line.
//!
//! The chain cannot vouch for its own end: nothing follows the last line, so editing it, or cutting
//! lines off the end, leaves a chain that verifies. Catching that needs an anchor kept elsewhere:
//! [`AuditLog::head`] gives the `seq` and hash of the last line written, [`VerifyReport::head`] the
//! same for the file as it is now; an operator (or a later issue: the Raft log) records the former
//! and compares. Likewise whoever can rewrite the whole file can rebuild a valid chain; the chain
//! detects accidents and careless tampering, not a determined writer with file access.
//!
//! # Writing
//!
//! ```text
//!   request path ── record() ── try_send ──> [bounded channel, 65 536] ──> writer thread
//!                      │ full: count a drop, never wait                    │ take every record queued
//!                      v                                                   │ (up to 4 096), stamp seq and
//!                  dropped()                                               │ prev_hash, one write(2)
//!                                                                          v
//!   flush() ── Flush(ack) ── send().await ─────────────────────────────> fsync, then ack
//!   every second, if anything was written since the last fsync ────────> fsync
//! ```
//!
//! [`AuditLog::record`] never blocks and never awaits: when the channel is full the record is
//! dropped and counted ([`AuditLog::dropped`], exported as `tollgate_audit_dropped_total`). The
//! gateway must not stall tool calls because a disk is slow; an operator who would rather refuse
//! calls than lose audit lines calls [`AuditLog::try_record`] and fails the request closed on error.
//!
//! The writer is a dedicated thread, so a slow disk holds no runtime worker. `record` only pushes
//! onto a locked queue: it never wakes the writer, which drains the queue every
//! [`AuditOptions::batch_interval`] (5 ms by default) or as soon as the queue is half full. At one
//! call at a time, a wake-up (futex, context switch) per record cost more than the rest of the
//! request; batching by time turns N records into one `write`.
//!
//! # Durability
//!
//! A record is in the operating system's page cache (safe against a process crash) once its batch is
//! written, at most one `batch_interval` after `record`. It is on disk after the next periodic
//! fsync (at most [`AuditOptions::fsync_interval`], one second by default, later) or after
//! [`AuditLog::flush`]. A power loss can therefore lose about the last second of records; a crash
//! loses what was still in the channel. Call `flush` at shutdown: records still queued when the
//! runtime stops are lost.
//!
//! After a write error the writer stops: later records are counted as dropped and `flush` fails,
//! because the bytes on disk are no longer known and a chain resumed over them could not verify.
//!
//! # Restart
//!
//! [`AuditLog::open`] reads only the end of the file to resume `seq` and `prev_hash` from the last
//! complete line. A partially written last line (a crash in the middle of a write) is moved to
//! `<file>.partial-<unix ms>` and cut from the log, so the log keeps verifying and nothing is thrown
//! away. A last complete line that is not a valid audit line refuses the open: resuming over it would
//! hide tampering.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::thread::Thread;
use std::time::Instant;
use time::OffsetDateTime;
use time::macros::format_description;

use tokio::sync::oneshot;

/// `prev_hash` of the first line: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Bytes written in one write at most, so a backlog is written in bounded pieces.
const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// How far from the end [`AuditLog::open`] first looks for the last line; doubled until found.
const TAIL_CHUNK: u64 = 64 * 1024;

/// One decision of the gateway, written as one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the decision was made: RFC 3339, UTC, millisecond precision (see [`format_time`]).
    pub time: String,
    /// The gateway's id for the request.
    pub request_id: String,
    /// The grant (client credential) the call came with.
    pub grant_id: Option<String>,
    /// The grant's human label.
    pub grant_label: Option<String>,
    /// A short hash of the session id ([`session_hash`]), never the sealed id itself.
    pub session: Option<String>,
    /// The upstream server's name.
    pub server: String,
    /// The MCP method (`tools/call`, `tools/list`...).
    pub method: String,
    /// The tool called, for `tools/call`.
    pub tool: Option<String>,
    /// `sha256:...` digest of the pinned tool definition.
    pub tool_digest: Option<String>,
    /// The tool's risk category.
    pub risk: Option<String>,
    /// The policy that decided.
    pub policy_id: Option<String>,
    /// That policy's version as the control plane numbered it (absent for a file-configured
    /// gateway).
    pub policy_version: Option<u64>,
    /// `sha256:...` digest of that policy's canonical document.
    pub policy_digest: Option<String>,
    /// What was decided.
    pub decision: Decision,
    /// JSON pointer of the deciding rule, or `(default deny)`...
    pub rule_id: Option<String>,
    /// The message given to the client, if any.
    pub message: Option<String>,
    /// Argument names (never values, unless the policy's `audit.args` says otherwise).
    pub arg_keys: Vec<String>,
    /// Quota counters touched by the call.
    pub counters: Vec<String>,
    /// For an admitted call, the window each counter was counted in, in the order of
    /// `counters`: the window's index since the unix epoch (`unix_ms / window length`), by the
    /// clock of whoever counted it (the quota leader for cluster-wide limits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counter_windows: Vec<u64>,
    /// HTTP status of the upstream's answer.
    pub upstream_status: Option<u16>,
    /// Upstream round trip in milliseconds.
    pub upstream_latency_ms: Option<f64>,
    /// Position in the log, from 1. Set by the writer; whatever the caller puts here is replaced.
    pub seq: u64,
    /// Hex SHA-256 of the previous line. Set by the writer.
    pub prev_hash: String,
}

impl AuditRecord {
    /// A record stamped with the current time, every optional field empty.
    pub fn new(
        request_id: impl Into<String>,
        server: impl Into<String>,
        method: impl Into<String>,
        decision: Decision,
    ) -> Self {
        Self {
            time: format_time(OffsetDateTime::now_utc()),
            request_id: request_id.into(),
            grant_id: None,
            grant_label: None,
            session: None,
            server: server.into(),
            method: method.into(),
            tool: None,
            tool_digest: None,
            risk: None,
            policy_id: None,
            policy_version: None,
            policy_digest: None,
            decision,
            rule_id: None,
            message: None,
            arg_keys: Vec::new(),
            counters: Vec::new(),
            counter_windows: Vec::new(),
            upstream_status: None,
            upstream_latency_ms: None,
            seq: 0,
            prev_hash: String::new(),
        }
    }
}

/// What the gateway decided, as written in the `decision` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Forwarded.
    Allow,
    /// Denied by a rule.
    Deny,
    /// Removed from `tools/list`, or called while hidden.
    Hidden,
    /// Called a tool the upstream does not offer.
    UnknownTool,
    /// Denied by the policy's `default`.
    DefaultDeny,
    /// Denied because a limit was full.
    RateLimited,
    /// Refused because the rate-limit service could not be reached and the limit fails closed.
    LimitUnavailable,
    /// Waiting for a human approval.
    ApprovalPending,
    /// Approved by a human, then forwarded.
    Approved,
    /// Rejected by a human.
    Rejected,
    /// The approval timed out.
    Expired,
    /// Audit mode: would have been denied, forwarded.
    WouldDeny,
    /// The gateway failed to decide or forward.
    Error,
}

impl Decision {
    /// The serialized name (`rate_limited`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Hidden => "hidden",
            Decision::UnknownTool => "unknown_tool",
            Decision::DefaultDeny => "default_deny",
            Decision::RateLimited => "rate_limited",
            Decision::LimitUnavailable => "limit_unavailable",
            Decision::ApprovalPending => "approval_pending",
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
            Decision::Expired => "expired",
            Decision::WouldDeny => "would_deny",
            Decision::Error => "error",
        }
    }
}

/// Formats `t` as RFC 3339 in UTC with milliseconds: `2024-03-10T13:47:21.500Z`.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    // Formatting a valid date with this description only fails for years beyond 9999.
    t.format(&format)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The short, stable tag logged for a session: the first 16 hex digits of SHA-256 of its id.
pub fn session_hash(session_id: &str) -> String {
    let digest = Sha256::digest(session_id.as_bytes());
    hex::encode(&digest[..8])
}

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading or writing the file failed.
    #[error("audit log {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The last complete line cannot carry the chain on.
    #[error("audit log {}: cannot resume the chain: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The channel to the writer is full; the record was not kept.
    #[error("audit channel is full")]
    Full,
    /// The writer has stopped (after a write error, or the runtime is shutting down).
    #[error("audit writer has stopped")]
    Stopped,
    /// A write or fsync failed; the writer stopped.
    #[error("audit write failed: {0}")]
    WriteFailed(String),
}

/// Tuning of [`AuditLog::open_with`].
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Records that may wait for the writer before new ones are dropped.
    pub capacity: usize,
    /// Longest time a written record waits for fsync.
    pub fsync_interval: Duration,
    /// Longest time a record waits in the queue before it is written.
    pub batch_interval: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            fsync_interval: Duration::from_secs(1),
            batch_interval: Duration::from_millis(5),
        }
    }
}

/// The end of a chain: the `seq` of the last line and the hex SHA-256 of its bytes. An empty log's
/// head is `seq` 0 and [`GENESIS_HASH`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// `seq` of the last line, 0 if none.
    pub seq: u64,
    /// Hash of the last line: the `prev_hash` the next line will carry.
    pub hash: String,
}

impl ChainHead {
    fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }
}

/// Handle on an append-only audit file. Cheap to clone; every clone feeds the same writer thread,
/// which stops (after writing and fsyncing what it has) once the last clone is dropped.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Arc<Queue>,
    writer: Thread,
    shared: Arc<Shared>,
    path: PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.items.lock().closed = true;
        self.writer.unpark();
    }
}

/// Records waiting for the writer. The request path takes the lock for one push.
struct Queue {
    items: Mutex<Pending>,
    capacity: usize,
}

#[derive(Default)]
struct Pending {
    commands: Vec<Command>,
    /// Every handle is gone: write what is left, fsync, stop.
    closed: bool,
    /// The writer stopped after an error: nothing queued will ever be written.
    exited: bool,
}

/// State the writer thread and the handles both see.
struct Shared {
    dropped: AtomicU64,
    stopped: AtomicBool,
    head: Mutex<ChainHead>,
}

impl Shared {
    fn count_drops(&self, n: u64) {
        let before = self.dropped.fetch_add(n, Ordering::Relaxed);
        let after = before + n;
        // Log at 1, 2, 4, 8... drops: visible without flooding the log while the disk is slow.
        if before.checked_ilog2() != after.checked_ilog2() {
            tracing::warn!(audit.dropped = after, "audit records dropped");
        }
    }
}

enum Command {
    Record(Box<AuditRecord>),
    Flush(oneshot::Sender<Result<(), AuditError>>),
}

impl AuditLog {
    /// Opens (creating if needed) an append-only JSONL file; resumes the chain from the file's last
    /// line (and its seq). Spawns the writer thread on the current runtime.
    pub async fn open(path: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        Self::open_with(path, AuditOptions::default()).await
    }

    /// [`AuditLog::open`] with explicit options.
    pub async fn open_with(
        path: impl AsRef<Path>,
        options: AuditOptions,
    ) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_path_buf();
        let opened = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || open_file(&path)).await
        };
        let (file, head) = match opened {
            Ok(result) => result?,
            Err(join) => {
                return Err(AuditError::Io {
                    path,
                    source: io::Error::other(join.to_string()),
                });
            }
        };
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            head: Mutex::new(head.clone()),
        });
        let queue = Arc::new(Queue {
            items: Mutex::new(Pending::default()),
            capacity: options.capacity.max(1),
        });
        let writer = Writer {
            file,
            path: path.clone(),
            head,
            shared: shared.clone(),
            buf: Vec::new(),
            unsynced: false,
        };
        // A dedicated thread, not a task: the request path pays one channel send and, when the
        // writer sleeps, one futex wake; serialisation, hashing, write and fsync never touch the
        // runtime (a task hopping to the blocking pool per batch cost ~50 us per call at low
        // concurrency).
        let thread = {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("tollgate-audit".into())
                .spawn(move || writer.run(&queue, options.fsync_interval, options.batch_interval))
                .map_err(|source| AuditError::Io {
                    path: path.clone(),
                    source,
                })?
        };
        Ok(AuditLog {
            inner: Arc::new(Inner {
                queue,
                writer: thread.thread().clone(),
                shared,
                path,
            }),
        })
    }

    /// Hands `rec` to the writer without waiting; if the channel is full (or the writer stopped),
    /// the record is dropped and counted in [`AuditLog::dropped`].
    pub fn record(&self, rec: AuditRecord) {
        // The error is already counted; `record` is the best-effort form of `try_record`.
        let _ = self.try_record(rec);
    }

    /// Like [`AuditLog::record`], but says whether the record was queued, for callers that fail the
    /// request closed when it cannot be audited. A refused record is counted as dropped too.
    pub fn try_record(&self, rec: AuditRecord) -> Result<(), AuditError> {
        let shared = &self.inner.shared;
        if shared.stopped.load(Ordering::Relaxed) {
            shared.count_drops(1);
            return Err(AuditError::Stopped);
        }
        let queue = &self.inner.queue;
        let len = {
            let mut pending = queue.items.lock();
            if pending.exited {
                drop(pending);
                shared.count_drops(1);
                return Err(AuditError::Stopped);
            }
            if pending.commands.len() >= queue.capacity {
                drop(pending);
                shared.count_drops(1);
                return Err(AuditError::Full);
            }
            pending.commands.push(Command::Record(Box::new(rec)));
            pending.commands.len()
        };
        // Half full: do not wait for the timer.
        if len == queue.capacity / 2 {
            self.inner.writer.unpark();
        }
        Ok(())
    }

    /// Flush and fsync everything recorded so far (for tests and shutdown). Waits for room in the
    /// channel rather than failing when it is full.
    pub async fn flush(&self) -> Result<(), AuditError> {
        if self.inner.shared.stopped.load(Ordering::Relaxed) {
            return Err(AuditError::Stopped);
        }
        let (ack, done) = oneshot::channel();
        {
            // A flush is never refused for room: it carries no record.
            let mut pending = self.inner.queue.items.lock();
            if pending.exited {
                return Err(AuditError::Stopped);
            }
            pending.commands.push(Command::Flush(ack));
        }
        self.inner.writer.unpark();
        done.await.map_err(|_| AuditError::Stopped)?
    }

    /// Records lost since open: channel full, or writer stopped.
    pub fn dropped(&self) -> u64 {
        self.inner.shared.dropped.load(Ordering::Relaxed)
    }

    /// `seq` and hash of the last line written to the file (not necessarily fsynced yet). Keep it
    /// somewhere else to detect later edits of the last line or lines cut from the end.
    pub fn head(&self) -> ChainHead {
        self.inner.shared.head.lock().clone()
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// The writer thread's state.
struct Writer {
    file: File,
    path: PathBuf,
    /// Head of the chain as written so far.
    head: ChainHead,
    shared: Arc<Shared>,
    buf: Vec<u8>,
    /// Bytes were written since the last fsync.
    unsynced: bool,
}

impl Writer {
    fn run(mut self, queue: &Queue, fsync_interval: Duration, batch_interval: Duration) {
        let mut last_sync = Instant::now();
        let mut batch = Vec::new();
        loop {
            let closed = {
                let mut pending = queue.items.lock();
                std::mem::swap(&mut batch, &mut pending.commands);
                pending.closed
            };
            if batch.is_empty() {
                if closed {
                    break;
                }
                if self.unsynced && last_sync.elapsed() >= fsync_interval {
                    if let Err(e) = self.sync() {
                        self.stop(&e, queue);
                        return;
                    }
                    last_sync = Instant::now();
                }
                std::thread::park_timeout(batch_interval);
                continue;
            }

            let mut acks = Vec::new();
            let mut records = 0;
            for command in batch.drain(..) {
                match command {
                    Command::Record(rec) => {
                        self.encode(*rec);
                        records += 1;
                        if self.buf.len() >= MAX_BATCH_BYTES {
                            if let Err(e) = self.write() {
                                self.fail(&e, records, acks, queue);
                                return;
                            }
                            records = 0;
                        }
                    }
                    Command::Flush(ack) => acks.push(ack),
                }
            }
            let mut result = self.write();
            if result.is_ok() && (!acks.is_empty() || last_sync.elapsed() >= fsync_interval) {
                result = self.sync();
                last_sync = Instant::now();
            }
            match result {
                Ok(()) => {
                    for ack in acks {
                        let _ = ack.send(Ok(()));
                    }
                }
                Err(e) => {
                    self.fail(&e, records, acks, queue);
                    return;
                }
            }
        }
        // Every handle is gone: make what was written durable.
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "audit log fsync failed at close");
        }
    }

    /// A write failed: whether any of the batch reached the file is unknown, so it counts as lost.
    fn fail(
        &self,
        error: &AuditError,
        records: u64,
        acks: Vec<oneshot::Sender<Result<(), AuditError>>>,
        queue: &Queue,
    ) {
        // Stop first: whoever is told of the failure must already find the log stopped.
        self.stop(error, queue);
        self.shared.count_drops(records);
        for ack in acks {
            let _ = ack.send(Err(AuditError::WriteFailed(error.to_string())));
        }
    }

    /// Appends `rec` to the batch as the next line of the chain.
    fn encode(&mut self, mut rec: AuditRecord) {
        rec.seq = self.head.seq + 1;
        rec.prev_hash.clone_from(&self.head.hash);
        let start = self.buf.len();
        match serde_json::to_writer(&mut self.buf, &rec) {
            Ok(()) => {
                self.head = ChainHead {
                    seq: rec.seq,
                    hash: hex::encode(Sha256::digest(&self.buf[start..])),
                };
                self.buf.push(b'\n');
            }
            Err(e) => {
                self.buf.truncate(start);
                tracing::error!(error = %e, "audit record could not be serialized");
                self.shared.count_drops(1);
            }
        }
    }

    /// Writes the batch in one `write_all`.
    fn write(&mut self) -> Result<(), AuditError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = (&self.file).write_all(&self.buf);
        self.buf.clear();
        result.map_err(|e| self.io_error(e))?;
        self.unsynced = true;
        *self.shared.head.lock() = self.head.clone();
        Ok(())
    }

    fn sync(&mut self) -> Result<(), AuditError> {
        if !self.unsynced {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| self.io_error(e))?;
        self.unsynced = false;
        Ok(())
    }

    /// Stops after a failed write: the file's end is unknown, so the chain cannot go on.
    fn stop(&self, error: &AuditError, queue: &Queue) {
        tracing::error!(error = %error, "audit writer stopped");
        // Handles see `stopped` and refuse new records; what is already queued is counted lost.
        self.shared.stopped.store(true, Ordering::Relaxed);
        let mut lost = 0;
        let queued = {
            let mut pending = queue.items.lock();
            pending.exited = true;
            std::mem::take(&mut pending.commands)
        };
        for cmd in queued {
            match cmd {
                Command::Record(_) => lost += 1,
                Command::Flush(ack) => {
                    let _ = ack.send(Err(AuditError::WriteFailed(error.to_string())));
                }
            }
        }
        if lost > 0 {
            self.shared.count_drops(lost);
        }
    }

    fn io_error(&self, source: io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// The fields that make the chain, read from any line.
#[derive(Deserialize)]
struct ChainFields {
    seq: u64,
    prev_hash: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Opens `path` for appending and finds the chain's head (blocking).
fn open_file(path: &Path) -> Result<(File, ChainHead), AuditError> {
    let io_err = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err)?;
    if !existed {
        sync_parent_dir(path);
    }
    let len = file.metadata().map_err(io_err)?.len();
    if len == 0 {
        return Ok((file, ChainHead::genesis()));
    }

    let (tail_start, tail) = read_tail(&mut file, len).map_err(io_err)?;
    // Bytes after the last newline are a line whose write never finished.
    let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < tail.len() {
        let cut_at = tail_start + complete as u64;
        set_aside_partial(path, &tail[complete..]).map_err(io_err)?;
        file.set_len(cut_at).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        tracing::warn!(audit.path = %path.display(), bytes = tail.len() - complete, "partially written last audit line moved aside");
        if cut_at == 0 {
            return Ok((file, ChainHead::genesis()));
        }
    }
    let lines = &tail[..complete.saturating_sub(1)];
    let last = lines
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(lines, |i| &lines[i + 1..]);
    let corrupt = |reason: String| AuditError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let fields: ChainFields = serde_json::from_slice(last)
        .map_err(|e| corrupt(format!("last line is not an audit record: {e}")))?;
    if fields.seq == 0 {
        return Err(corrupt("last line has seq 0".to_owned()));
    }
    Ok((
        file,
        ChainHead {
            seq: fields.seq,
            hash: sha256_hex(last),
        },
    ))
}

/// Reads the end of the file: enough to hold the last complete line and any partial line after it.
/// Returns the offset the bytes start at.
fn read_tail(file: &mut File, len: u64) -> io::Result<(u64, Vec<u8>)> {
    let mut size = TAIL_CHUNK.min(len);
    loop {
        let start = len - size;
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        Read::by_ref(file).take(size).read_to_end(&mut tail)?;
        let complete = tail.iter().rposition(|&b| b == b'\n');
        // The last complete line is whole when a newline precedes it, or it starts the file.
        let whole = match complete {
            Some(end) => tail[..end].contains(&b'\n'),
            None => false,
        };
        if whole || start == 0 {
            return Ok((start, tail));
        }
        size = (size * 2).min(len);
    }
}

fn set_aside_partial(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut name = path.as_os_str().to_owned();
    let stamp = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    name.push(format!(".partial-{stamp}"));
    let mut aside = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(PathBuf::from(name))?;
    aside.write_all(bytes)?;
    aside.sync_all()
}

/// Makes a newly created file's directory entry durable (best effort; not every platform can).
fn sync_parent_dir(path: &Path) {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(error = %e, "could not fsync the audit log's directory");
    }
}

/// Result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Lines in the file, a partial last line included.
    pub lines: u64,
    /// No break was found.
    pub intact: bool,
    /// Where the chain first fails.
    pub first_break: Option<Break>,
    /// `seq` and hash of the last line when the chain is intact: compare with a head recorded
    /// elsewhere ([`AuditLog::head`]) to detect an edited last line or lines cut from the end.
    pub head: Option<ChainHead>,
}

/// The first place a chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// 1-based line number of the line found wrong.
    pub line: u64,
    /// What is wrong, for an operator.
    pub reason: String,
}

/// Checks the chain of the audit file at `path`, reading it once from start to end.
///
/// Which line is reported:
/// - a line that is not a JSON audit record, or a last line without its newline: that line;
/// - `seq` and `prev_hash` of line n both wrong (lines removed before n, or reordered): line n;
/// - `seq` continuous but line n's `prev_hash` is not the hash of line n-1: line n-1, which was
///   edited (or else line n's `prev_hash` field was; the two cannot be told apart).
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let io_err = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io_err)?);
    let mut line = Vec::new();
    let mut lines = 0u64;
    let mut prev = ChainHead::genesis();
    let mut first_break = None;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io_err)? == 0 {
            break;
        }
        lines += 1;
        if first_break.is_some() {
            continue;
        }
        let Some(content) = line.strip_suffix(b"\n") else {
            first_break = Some(Break {
                line: lines,
                reason: "partially written last line (no newline)".to_owned(),
            });
            continue;
        };
        let fields: ChainFields = match serde_json::from_slice(content) {
            Ok(fields) => fields,
            Err(e) => {
                first_break = Some(Break {
                    line: lines,
                    reason: format!("not an audit record: {e}"),
                });
                continue;
            }
        };
        first_break = check_link(&prev, &fields, lines);
        prev = ChainHead {
            seq: fields.seq,
            hash: sha256_hex(content),
        };
    }
    let intact = first_break.is_none();
    Ok(VerifyReport {
        lines,
        intact,
        first_break,
        head: (intact && lines > 0).then_some(prev),
    })
}

/// Checks that line `n` (with `fields`) follows the line whose head is `prev`.
fn check_link(prev: &ChainHead, fields: &ChainFields, n: u64) -> Option<Break> {
    let expected = prev.seq + 1;
    let reason = if fields.seq == expected && fields.prev_hash == prev.hash {
        return None;
    } else if n == 1 && fields.seq != 1 {
        format!(
            "first line has seq {}, expected 1: lines were removed from the start",
            fields.seq
        )
    } else if n == 1 {
        "first line's prev_hash is not the genesis hash: the line was edited or lines were removed"
            .to_owned()
    } else if fields.seq > expected {
        let missing = fields.seq - expected;
        format!(
            "seq jumps from {} to {}: {missing} line(s) removed before this line, or lines reordered",
            prev.seq, fields.seq
        )
    } else if fields.seq < expected {
        format!(
            "seq {} follows {}: lines reordered or duplicated",
            fields.seq, prev.seq
        )
    } else {
        return Some(Break {
            line: n - 1,
            reason: format!(
                "line does not hash to the prev_hash of line {n}: this line (or that prev_hash) was edited"
            ),
        });
    };
    Some(Break { line: n, reason })
}

#[cfg(test)]
mod tests;

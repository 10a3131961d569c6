//! Replayable SSE streams for the legacy era.
//!
//! Every SSE stream the upstream opens (one per POSTed request, plus one standalone GET stream
//! per session) is backed by a [`StreamLog`]: an append-only list of events with ids
//! `<stream>-<seq>`. A connection is just a cursor into a log, so resumption is the same code as
//! the first delivery:
//!
//! ```text
//!   POST tools/call ──► log 7: [7-0 priming] [7-1 progress] ─ CloseStream ─ [7-2 result] finished
//!   connection 1   ──► reads 7-0, 7-1, stops at the cut            (server closed the stream)
//!   GET Last-Event-ID: 7-1 ──► connection 2 reads 7-2, then the log is finished: end
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::Stream;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

/// The `retry:` hint (ms) sent with priming events.
pub const RETRY_MS: u64 = 500;

struct Inner {
    /// `None` is a priming event (id and empty data).
    events: Vec<Option<Value>>,
    finished: bool,
    /// Set by `cut()`: the first connection stops reading at this many events.
    cut_at: Option<usize>,
}

/// One replayable stream.
pub struct StreamLog {
    id: u64,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    /// Bumped when a new reader takes over (standalone stream): older readers end.
    generation: AtomicU64,
}

impl StreamLog {
    /// An empty log with stream id `id`.
    pub fn new(id: u64) -> Arc<Self> {
        let (changed, _) = watch::channel(0);
        Arc::new(Self {
            id,
            inner: Mutex::new(Inner {
                events: Vec::new(),
                finished: false,
                cut_at: None,
            }),
            changed,
            generation: AtomicU64::new(0),
        })
    }

    /// The stream id (the part of event ids before the dash).
    pub fn id(&self) -> u64 {
        self.id
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Appends a message; returns its sequence number.
    pub fn push(&self, message: Value) -> usize {
        let seq = {
            let mut inner = self.inner.lock();
            inner.events.push(Some(message));
            inner.events.len() - 1
        };
        self.bump();
        seq
    }

    /// Appends a priming event; returns its sequence number.
    pub fn prime(&self) -> usize {
        let seq = {
            let mut inner = self.inner.lock();
            inner.events.push(None);
            inner.events.len() - 1
        };
        self.bump();
        seq
    }

    /// Marks the log complete: readers end once they delivered everything.
    pub fn finish(&self) {
        self.inner.lock().finished = true;
        self.bump();
    }

    /// Closes the first connection at the current end (the client must resume with GET).
    pub fn cut(&self) {
        {
            let mut inner = self.inner.lock();
            let len = inner.events.len();
            inner.cut_at = Some(len);
        }
        self.bump();
    }

    /// Number of events so far.
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().events.len()
    }

    /// A reader starting at `from`. `first_connection` readers honour `cut()`; `exclusive`
    /// readers end when another exclusive reader starts (the standalone GET stream).
    pub fn reader(
        self: &Arc<Self>,
        from: usize,
        first_connection: bool,
        exclusive: bool,
        shutdown: watch::Receiver<bool>,
    ) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        let generation = if exclusive {
            Some(self.generation.fetch_add(1, Ordering::SeqCst) + 1)
        } else {
            None
        };
        if exclusive {
            self.bump();
        }
        let state = ReaderState {
            log: self.clone(),
            cursor: from,
            first_connection,
            generation,
            changed: self.changed.subscribe(),
            shutdown,
        };
        futures_util::stream::unfold(state, |mut st| async move {
            loop {
                if *st.shutdown.borrow() {
                    return None;
                }
                if let Some(g) = st.generation
                    && st.log.generation.load(Ordering::SeqCst) != g
                {
                    return None;
                }
                let next = {
                    let inner = st.log.inner.lock();
                    if st.first_connection && inner.cut_at.is_some_and(|cut| st.cursor >= cut) {
                        return None;
                    }
                    match inner.events.get(st.cursor) {
                        Some(event) => Some(event.clone()),
                        None if inner.finished => return None,
                        None => None,
                    }
                };
                if let Some(event) = next {
                    let frame = encode(st.log.id, st.cursor, event.as_ref());
                    st.cursor += 1;
                    return Some((Ok(frame), st));
                }
                tokio::select! {
                    r = st.changed.changed() => if r.is_err() { return None },
                    _ = st.shutdown.changed() => {}
                }
            }
        })
    }
}

struct ReaderState {
    log: Arc<StreamLog>,
    cursor: usize,
    first_connection: bool,
    generation: Option<u64>,
    changed: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
}

/// Encodes one SSE event: priming events carry `retry:` and empty data.
fn encode(stream: u64, seq: usize, message: Option<&Value>) -> Bytes {
    match message {
        None => Bytes::from(format!("id: {stream}-{seq}\nretry: {RETRY_MS}\ndata: \n\n")),
        Some(m) => Bytes::from(format!("id: {stream}-{seq}\nevent: message\ndata: {m}\n\n")),
    }
}

/// Encodes an event without id (modern streams are not resumable).
pub fn encode_plain(message: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

/// Parses `Last-Event-ID` into (stream id, sequence number).
pub fn parse_event_id(s: &str) -> Option<(u64, usize)> {
    let (stream, seq) = s.trim().split_once('-')?;
    Some((stream.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use serde_json::json;

    fn body(frames: Vec<Result<Bytes, Infallible>>) -> String {
        frames
            .into_iter()
            .map(|f| String::from_utf8(f.unwrap().to_vec()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_cut_stream_resumes_after_the_last_event_id() {
        let (_tx, shutdown) = watch::channel(false);
        let log = StreamLog::new(7);
        log.prime();
        log.push(json!({"n":1}));
        log.cut();
        log.push(json!({"n":2}));
        log.finish();
        let first = body(log.reader(0, true, false, shutdown.clone()).collect().await);
        assert!(first.contains("id: 7-0\nretry: 500\ndata: \n\n"));
        assert!(first.contains("\"n\":1") && !first.contains("\"n\":2"));
        let resumed = body(log.reader(2, false, false, shutdown).collect().await);
        assert_eq!(resumed, "id: 7-2\nevent: message\ndata: {\"n\":2}\n\n");
    }

    #[tokio::test]
    async fn a_new_exclusive_reader_ends_the_previous_one() {
        let (_tx, shutdown) = watch::channel(false);
        let log = StreamLog::new(0);
        let first = log.reader(0, false, true, shutdown.clone());
        let _second = log.reader(0, false, true, shutdown);
        let frames: Vec<_> = first.collect().await;
        assert!(frames.is_empty());
    }

    #[test]
    fn event_ids_parse_into_stream_and_sequence() {
        assert_eq!(parse_event_id("12-3"), Some((12, 3)));
        assert_eq!(parse_event_id("nope"), None);
    }
}

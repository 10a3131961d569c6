//! Server-Sent Events codec (WHATWG HTML "event stream" parsing), incremental and sans-IO.
//!
//! ```text
//!  chunks ──push──> [ byte buffer ] ──lines (LF | CRLF | CR)──> fields ──blank line──> SseEvent
//! ```
//!
//! Parsing follows the WHATWG algorithm: one leading UTF-8 BOM is dropped; lines end in LF, CRLF
//! or CR (a CRLF split across two chunks is one terminator); a line starting with `:` is a
//! comment; `field:value` strips one space after the colon; a line without a colon is a field
//! with an empty value; `data` lines are joined with LF; `id` values containing NUL are ignored;
//! `retry` is taken only when it is all ASCII digits; unknown fields are ignored. Invalid UTF-8
//! is replaced with U+FFFD, as the standard's decoder does.
//!
//! One deliberate difference: a block that sets `id` or `retry` but has no `data` line is still
//! yielded (with empty data). A browser would only update its last event id / reconnection time
//! and dispatch nothing; a gateway has to pass those fields on, and MCP's *priming events*
//! (`id: …` + empty `data:`, sent so the client has something to resume from) look the same.
//! Blocks with nothing but comments or an `event` field are not yielded.
//!
//! [`SseEvent::encode`] always writes at least one `data:` line, so a passed-through id-only
//! block reaches the client as a priming event, which every MCP client must tolerate.

use bytes::Bytes;

/// Default cap on one event (all its lines) or one unterminated line: 4 MiB, like JSON bodies.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One event of an SSE stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `id` field of this event, if it had one (empty string resets the last event id).
    pub id: Option<String>,
    /// `event` field (event type), if any.
    pub event: Option<String>,
    /// `data` lines joined with `\n`; empty for priming events.
    pub data: String,
    /// `retry` in milliseconds, if the event carried a valid one.
    pub retry: Option<u64>,
}

impl SseEvent {
    /// A plain `message` event with the given data.
    pub fn message(data: impl Into<String>) -> SseEvent {
        SseEvent {
            data: data.into(),
            ..SseEvent::default()
        }
    }

    /// Serialises the event: `id`, `event`, `retry`, one `data:` line per line of data (CR, LF
    /// and CRLF in data all become line breaks, i.e. LF after decoding), then a blank line.
    /// An `id` containing NUL, CR or LF, and an `event` containing CR or LF, are left out: they
    /// cannot be written without changing the stream's meaning.
    pub fn encode(&self) -> Bytes {
        let mut out = String::with_capacity(self.data.len() + 32);
        if let Some(id) = &self.id
            && !id.contains(['\0', '\r', '\n'])
        {
            out.push_str("id: ");
            out.push_str(id);
            out.push('\n');
        }
        if let Some(event) = &self.event
            && !event.contains(['\r', '\n'])
        {
            out.push_str("event: ");
            out.push_str(event);
            out.push('\n');
        }
        if let Some(retry) = self.retry {
            out.push_str("retry: ");
            out.push_str(&retry.to_string());
            out.push('\n');
        }
        let data = self.data.replace("\r\n", "\n").replace('\r', "\n");
        for line in data.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        Bytes::from(out)
    }
}

/// Why the decoder gave up. After an error the decoder stays failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// One event, or one line still waiting for its end, is larger than the limit.
    #[error("sse event exceeds {max} bytes")]
    EventTooLarge {
        /// The limit.
        max: usize,
    },
}

/// Fields collected for the event being read.
#[derive(Debug, Default)]
struct Pending {
    id: Option<String>,
    event: Option<String>,
    data: String,
    has_data: bool,
    retry: Option<u64>,
    bytes: usize,
}

/// Incremental SSE decoder: [`push`](SseDecoder::push) bytes as they arrive, then call
/// [`next_event`](SseDecoder::next_event) until it returns `Ok(None)`.
///
/// Empty-data events are yielded (priming events; see the module docs): the gateway passes
/// them through.
#[derive(Debug)]
pub struct SseDecoder {
    buf: Vec<u8>,
    pos: usize,
    bom_checked: bool,
    /// The previous line ended in CR: an LF right after it belongs to that terminator.
    after_cr: bool,
    pending: Pending,
    last_event_id: String,
    max_event_bytes: usize,
    failed: Option<SseError>,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SseDecoder {
    /// A decoder with [`DEFAULT_MAX_EVENT_BYTES`].
    pub fn new() -> SseDecoder {
        Self::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A decoder that fails on events (or unterminated lines) larger than `max`.
    pub fn with_max_event_bytes(max: usize) -> SseDecoder {
        SseDecoder {
            buf: Vec::new(),
            pos: 0,
            bom_checked: false,
            after_cr: false,
            pending: Pending::default(),
            last_event_id: String::new(),
            max_event_bytes: max,
            failed: None,
        }
    }

    /// Appends bytes from the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The last event id seen on the stream (what a reconnect sends as `Last-Event-ID`).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The next complete event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, SseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if !self.bom_checked {
            let rest = &self.buf[self.pos..];
            if rest.len() < BOM.len() && BOM.starts_with(rest) {
                return Ok(None);
            }
            if rest.starts_with(BOM) {
                self.pos += BOM.len();
            }
            self.bom_checked = true;
        }
        loop {
            if self.after_cr {
                match self.buf.get(self.pos) {
                    None => return Ok(None),
                    Some(b'\n') => self.pos += 1,
                    Some(_) => {}
                }
                self.after_cr = false;
            }
            let rest = &self.buf[self.pos..];
            let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') else {
                if self.pending.bytes + rest.len() > self.max_event_bytes {
                    return Err(self.fail());
                }
                return Ok(None);
            };
            let line_start = self.pos;
            self.after_cr = rest[end] == b'\r';
            self.pos += end + 1;
            let line = &self.buf[line_start..line_start + end];
            if line.is_empty() {
                if let Some(event) = self.dispatch() {
                    return Ok(Some(event));
                }
                continue;
            }
            self.pending.bytes += line.len() + 1;
            if self.pending.bytes > self.max_event_bytes {
                return Err(self.fail());
            }
            process_line(&mut self.pending, line);
        }
    }

    fn fail(&mut self) -> SseError {
        let e = SseError::EventTooLarge {
            max: self.max_event_bytes,
        };
        self.failed = Some(e.clone());
        e
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let p = std::mem::take(&mut self.pending);
        if let Some(id) = &p.id {
            self.last_event_id.clone_from(id);
        }
        if !p.has_data && p.id.is_none() && p.retry.is_none() {
            return None;
        }
        let mut data = p.data;
        if data.ends_with('\n') {
            data.pop();
        }
        Some(SseEvent {
            id: p.id,
            event: p.event,
            data,
            retry: p.retry,
        })
    }
}

fn process_line(p: &mut Pending, line: &[u8]) {
    if line[0] == b':' {
        return;
    }
    let (field, value) = match line.iter().position(|b| *b == b':') {
        Some(i) => {
            let v = &line[i + 1..];
            (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
        }
        None => (line, &b""[..]),
    };
    let value = String::from_utf8_lossy(value);
    match field {
        b"data" => {
            p.data.push_str(&value);
            p.data.push('\n');
            p.has_data = true;
        }
        b"event" => p.event = Some(value.into_owned()),
        b"id" if !value.contains('\0') => p.id = Some(value.into_owned()),
        // Only all-digit values count; digit strings too long for u64 are ignored the same way.
        b"retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
            if let Ok(ms) = value.parse() {
                p.retry = Some(ms);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

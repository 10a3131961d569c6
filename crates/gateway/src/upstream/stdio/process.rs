//! One child process: spawn, line I/O, graceful stop, reaping.
//!
//! ```text
//!   write_line ──▶ stdin (mutex: one line at a time)
//!   stdout ──reader task──▶ Sink::line(generation, line)        newline-delimited, capped
//!   stderr ──logger task──▶ tracing (info!/warn!, server + pid)
//!   supervisor task: owns the tokio Child; waits for whichever comes first
//!       exit            ─┐
//!       stop requested  ─┼─▶ close stdin, 2 s, SIGTERM, 2 s, SIGKILL ─▶ reap
//!       stdout closed   ─┘
//!     then lets the reader drain, fixes the gauge and calls Sink::exited(generation, ..)
//! ```
//!
//! Only the supervisor task signals the process, and it does so through the `Child` it owns
//! (`Child::id` is `None` once reaped), so a signal can never reach a recycled PID.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use super::Shared;
use crate::error::ProxyError;

/// How long each step of a graceful stop waits before the next, harsher one.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(2);
/// The longest stdout line accepted from a child.
pub(super) const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// The longest stderr line logged whole (longer ones are cut).
const MAX_LOG_LINE_BYTES: usize = 64 * 1024;
/// How long the reader may still drain stdout after the process is gone.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Receives what a child says and when it ends.
pub(super) trait Sink: Send + Sync + 'static {
    /// One non-blank stdout line of the process of `generation`.
    fn line(&self, generation: u64, line: &[u8]);
    /// The process of `generation` is gone and reaped; `expected` when a stop was asked for.
    fn exited(&self, generation: u64, expected: bool, status: &str);
}

/// A running child process.
pub(super) struct Process {
    pid: u32,
    generation: u64,
    stdin: Mutex<Option<ChildStdin>>,
    stop: watch::Sender<bool>,
    exited: watch::Receiver<bool>,
}

impl Process {
    /// Starts `options.command` and its tasks. Counts the child in `stdio_children`.
    pub(super) fn spawn(
        shared: &Arc<Shared>,
        generation: u64,
        sink: Arc<dyn Sink>,
    ) -> Result<Arc<Process>, ProxyError> {
        let options = &shared.options;
        let mut command = Command::new(&options.command);
        command
            .args(&options.args)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawned = command.spawn().and_then(|mut child| {
            let pid = child
                .id()
                .ok_or_else(|| io::Error::other("child has no pid"))?;
            let stdin = child
                .stdin
                .take()
                .ok_or_else(|| io::Error::other("no stdin pipe"))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| io::Error::other("no stdout pipe"))?;
            let stderr = child
                .stderr
                .take()
                .ok_or_else(|| io::Error::other("no stderr pipe"))?;
            Ok((child, pid, stdin, stdout, stderr))
        });
        let (child, pid, stdin, stdout, stderr) = match spawned {
            Ok(parts) => parts,
            Err(error) => {
                shared
                    .metrics
                    .count_upstream_error(&options.server, "spawn");
                tracing::warn!(server = %options.server, command = %options.command, %error, "cannot start stdio server");
                return Err(ProxyError::UpstreamUnavailable(format!(
                    "cannot start stdio server command `{}`: {error}",
                    options.command
                )));
            }
        };
        shared.child_started();
        tracing::info!(server = %options.server, pid, generation, "stdio server started");

        let (stop, stop_rx) = watch::channel(false);
        let (exited_tx, exited) = watch::channel(false);
        let process = Arc::new(Process {
            pid,
            generation,
            stdin: Mutex::new(Some(stdin)),
            stop,
            exited,
        });
        let server = options.server.clone();
        let line_sink = sink.clone();
        let reader_shared = shared.clone();
        let reader = tokio::spawn(async move {
            let result = read_lines(stdout, MAX_LINE_BYTES, |line| match line {
                Line::Text(bytes) => {
                    if !bytes.trim_ascii().is_empty() {
                        line_sink.line(generation, bytes.trim_ascii());
                    }
                }
                Line::TooLong(len) => {
                    reader_shared
                        .metrics
                        .count_upstream_error(&reader_shared.options.server, "protocol");
                    tracing::warn!(server = %reader_shared.options.server, pid, len, "skipped an over-long stdout line");
                }
            })
            .await;
            if let Err(error) = result {
                tracing::debug!(server = %reader_shared.options.server, pid, %error, "stdout read failed");
            }
        });
        let logger = tokio::spawn(log_stderr(stderr, server, pid));
        tokio::spawn(supervise(
            child,
            process.clone(),
            stop_rx,
            reader,
            logger,
            exited_tx,
            sink,
            shared.clone(),
        ));
        Ok(process)
    }

    /// The operating-system process id.
    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    /// Which start of its channel this process is.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Writes `line` and a newline. `line` must hold no newline.
    pub(super) async fn write_line(&self, line: &[u8]) -> io::Result<()> {
        let mut framed = Vec::with_capacity(line.len() + 1);
        framed.extend_from_slice(line);
        framed.push(b'\n');
        let mut stdin = self.stdin.lock().await;
        let pipe = stdin
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed"))?;
        pipe.write_all(&framed).await?;
        pipe.flush().await
    }

    /// Asks the supervisor to stop the process gracefully; returns at once.
    pub(super) fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until the process is reaped.
    pub(super) async fn wait_exit(&self) {
        let mut exited = self.exited.clone();
        // An error means the supervisor is gone, which only happens after it reaped the child.
        let _ = exited.wait_for(|done| *done).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn supervise(
    mut child: Child,
    process: Arc<Process>,
    stop: watch::Receiver<bool>,
    mut reader: JoinHandle<()>,
    logger: JoinHandle<()>,
    exited: watch::Sender<bool>,
    sink: Arc<dyn Sink>,
    shared: Arc<Shared>,
) {
    let server = shared.options.server.as_str();
    let pid = process.pid;
    let mut reader_done = false;
    let mut stop_requested = stop.clone();
    enum First {
        Exited(io::Result<ExitStatus>),
        StopRequested,
        StdoutClosed,
    }
    let first = tokio::select! {
        status = child.wait() => First::Exited(status),
        _ = async { stop_requested.wait_for(|s| *s).await.map(|_| ()) } => First::StopRequested,
        _ = &mut reader => First::StdoutClosed,
    };
    let (status, expected) = match first {
        First::Exited(status) => (status, *stop.borrow()),
        First::StopRequested => (graceful_stop(&mut child, &process, server).await, true),
        First::StdoutClosed => {
            reader_done = true;
            tracing::warn!(server, pid, "stdio server closed its stdout; stopping it");
            (graceful_stop(&mut child, &process, server).await, false)
        }
    };
    if !reader_done
        && tokio::time::timeout(DRAIN_GRACE, &mut reader)
            .await
            .is_err()
    {
        reader.abort();
    }
    let logger_abort = logger.abort_handle();
    if tokio::time::timeout(DRAIN_GRACE, logger).await.is_err() {
        logger_abort.abort();
    }
    let status = match status {
        Ok(status) => describe(status),
        Err(error) => format!("wait failed: {error}"),
    };
    shared.child_reaped();
    if expected {
        tracing::info!(server, pid, %status, "stdio server stopped");
    } else {
        tracing::warn!(server, pid, %status, "stdio server exited unexpectedly");
    }
    exited.send_replace(true);
    sink.exited(process.generation, expected, &status);
}

/// Close stdin, wait; SIGTERM, wait; SIGKILL. Always reaps.
async fn graceful_stop(
    child: &mut Child,
    process: &Process,
    server: &str,
) -> io::Result<ExitStatus> {
    // A writer stuck on a full pipe holds the lock; then skip straight to the signal.
    if let Ok(mut stdin) = tokio::time::timeout(STOP_GRACE, process.stdin.lock()).await {
        stdin.take();
    }
    if let Ok(status) = tokio::time::timeout(STOP_GRACE, child.wait()).await {
        return status;
    }
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        tracing::info!(
            server,
            pid,
            "stdio server ignored stdin close; sending SIGTERM"
        );
        if let Err(error) = kill(Pid::from_raw(pid), Signal::SIGTERM) {
            tracing::debug!(server, pid, %error, "SIGTERM failed");
        }
    }
    if let Ok(status) = tokio::time::timeout(STOP_GRACE, child.wait()).await {
        return status;
    }
    tracing::warn!(
        server,
        pid = process.pid,
        "stdio server ignored SIGTERM; sending SIGKILL"
    );
    // Fails only when the child is already gone; `wait` below reaps it either way.
    let _ = child.start_kill();
    child.wait().await
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => status.to_string(),
    }
}

/// One line read from a pipe.
pub(super) enum Line<'a> {
    /// A line without its terminator (`\n` or `\r\n`).
    Text(&'a [u8]),
    /// A line longer than the cap, skipped; its length so far.
    TooLong(usize),
}

/// Reads `reader` line by line until EOF, never holding more than `max` bytes of one line.
pub(super) async fn read_lines<R: AsyncRead + Unpin>(
    reader: R,
    max: usize,
    mut on_line: impl FnMut(Line<'_>),
) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut line = Vec::new();
    let mut skipped: Option<usize> = None;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            match skipped {
                Some(len) => on_line(Line::TooLong(len)),
                None if !line.is_empty() => on_line(Line::Text(strip_cr(&line))),
                None => {}
            }
            return Ok(());
        }
        let newline = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..newline.unwrap_or(buf.len())];
        match &mut skipped {
            Some(len) => *len += chunk.len(),
            None if line.len() + chunk.len() > max => {
                skipped = Some(line.len() + chunk.len());
                line = Vec::new();
            }
            None => line.extend_from_slice(chunk),
        }
        let used = newline.map_or(buf.len(), |i| i + 1);
        reader.consume(used);
        if newline.is_some() {
            match skipped.take() {
                Some(len) => on_line(Line::TooLong(len)),
                None => on_line(Line::Text(strip_cr(&line))),
            }
            line.clear();
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Forwards stderr to the log: it is the server's log, not an error channel.
async fn log_stderr<R: AsyncRead + Unpin>(stderr: R, server: String, pid: u32) {
    let result = read_lines(stderr, MAX_LINE_BYTES, |line| {
        let text = match line {
            Line::Text(bytes) => {
                String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_LOG_LINE_BYTES)])
            }
            Line::TooLong(len) => format!("<{len} bytes of stderr skipped>").into(),
        };
        if text.trim().is_empty() {
            return;
        }
        let lower = text.to_ascii_lowercase();
        if ["error", "warn", "fatal", "panic", "traceback"]
            .iter()
            .any(|word| lower.contains(word))
        {
            tracing::warn!(server = %server, pid, stderr = %text, "stdio server log");
        } else {
            tracing::info!(server = %server, pid, stderr = %text, "stdio server log");
        }
    })
    .await;
    if let Err(error) = result {
        tracing::debug!(server = %server, pid, %error, "stderr read failed");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut out = Vec::new();
        read_lines(input, max, |line| match line {
            Line::Text(bytes) => out.push(String::from_utf8(bytes.to_vec()).unwrap()),
            Line::TooLong(len) => out.push(format!("<{len}>")),
        })
        .await
        .unwrap();
        out
    }

    #[tokio::test]
    async fn lines_are_split_on_newlines_and_carriage_returns_dropped() {
        assert_eq!(lines(b"a\r\nbc\n\nd", 10).await, ["a", "bc", "", "d"]);
    }

    #[tokio::test]
    async fn an_over_long_line_is_skipped_and_the_next_one_read() {
        assert_eq!(lines(b"0123456789AB\nok\n", 10).await, ["<12>", "ok"]);
        assert_eq!(lines(b"ok\n0123456789AB", 10).await, ["ok", "<12>"]);
    }
}

//! The baseline: a real `redis-server` on loopback, counted the way Envoy's ratelimit service
//! counts a fixed window: per call one pipeline of `INCRBY key 1` and `EXPIRE key <window>` on the
//! window's key, and the call is admitted when the count is within the limit.
//!
//! RESP is spoken over a plain `TcpStream` (two fixed commands and integer replies: no client
//! crate needed). The server is started by this process with persistence off, on a port picked
//! by binding `127.0.0.1:0` and closing the listener (redis has no port 0), and killed by PID.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::load::{UNLIMITED, histogram};
use crate::report::{Latency, Throughput};

/// Where `scripts/install-redis.sh` puts its wrapper, relative to the workspace.
const INSTALLED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../.tools/redis/bin/redis-server"
);
/// How long the server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The window the keys count in (the same kind as the Tollgate throughput phase's limit).
const WINDOW_SECS: u64 = 60;

/// The `redis-server` to run: `explicit`, else `$TOLLGATE_REDIS_SERVER`, else the one
/// `scripts/install-redis.sh` installed, else one on `PATH`. `None` when there is none.
pub fn find(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("TOLLGATE_REDIS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let installed = PathBuf::from(INSTALLED);
    if installed.exists() {
        return Some(installed);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    })
}

/// A running `redis-server`, killed when stopped or dropped.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    /// Starts `binary` on a free loopback port and waits until it answers PING.
    pub async fn start(binary: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(binary)
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut server = Self { child, port };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await {
                let mut reply = [0u8; 7];
                if stream.write_all(b"PING\r\n").await.is_ok()
                    && stream.read_exact(&mut reply).await.is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return Ok(server);
                }
            }
            if let Some(status) = server.child.try_wait()? {
                anyhow::bail!("redis-server exited at start: {status} (port {port} taken?)");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "redis-server did not answer PING on port {port} within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the server (by its PID) and reaps it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `INCRBY key 1` and `EXPIRE key secs` as one RESP pipeline.
pub fn incr_expire(key: &str, secs: u64) -> Vec<u8> {
    let secs = secs.to_string();
    let mut out = Vec::with_capacity(64 + 2 * key.len());
    for args in [["INCRBY", key, "1"], ["EXPIRE", key, secs.as_str()]] {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Parses `n` RESP integer replies at the start of `buf`: `Ok(None)` until they are all there,
/// then the first one's value and the bytes they took. An error reply or any other type fails.
pub fn integer_replies(buf: &[u8], n: usize) -> anyhow::Result<Option<(i64, usize)>> {
    let mut at = 0;
    let mut first = None;
    for _ in 0..n {
        let Some(end) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[at..at + end];
        match line.first() {
            Some(b':') => {
                let value: i64 = std::str::from_utf8(&line[1..])?.parse()?;
                first.get_or_insert(value);
            }
            Some(b'-') => anyhow::bail!("redis: {}", String::from_utf8_lossy(&line[1..])),
            _ => anyhow::bail!("unexpected reply {:?}", String::from_utf8_lossy(line)),
        }
        at += end + 2;
    }
    Ok(first.map(|value| (value, at)))
}

/// The current window's number.
fn window_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        / WINDOW_SECS
}

/// The key of `window`, named by its start as Envoy's service names it.
fn window_key(window: u64) -> String {
    format!("quota-bench:{}", window * WINDOW_SECS)
}

/// Phase 5: `tasks` connections, each a closed loop of one pipeline per call, counted over
/// `secs` after `warmup`. Every call is timed.
pub async fn throughput(
    server: &Server,
    tasks: usize,
    warmup: Duration,
    secs: f64,
) -> anyhow::Result<Throughput> {
    let calls = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let stream = TcpStream::connect(("127.0.0.1", server.port)).await?;
        stream.set_nodelay(true)?;
        let (calls, measuring, stop) = (calls.clone(), measuring.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            client(stream, calls, measuring, stop).await
        }));
    }
    tokio::time::sleep(warmup).await;
    let before = calls.load(Ordering::Relaxed);
    let started = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let after = calls.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut hist = histogram()?;
    for handle in handles {
        hist.add(handle.await??)?;
    }
    let counted = after.saturating_sub(before);
    Ok(Throughput {
        system: format!(
            "Redis 1 server: {tasks} connections, INCRBY+EXPIRE pipelined per call (Envoy ratelimit's shape)"
        ),
        tasks,
        calls: counted,
        calls_per_sec: counted as f64 / elapsed,
        waited: counted,
        latency: Latency::of(&hist),
        raft_entries_per_sec: None,
    })
}

/// One connection's closed loop. Returns its histogram of call times (ns).
async fn client(
    mut stream: TcpStream,
    calls: Arc<AtomicU64>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Histogram<u64>> {
    let mut hist = histogram()?;
    let mut window = window_now();
    let mut request = incr_expire(&window_key(window), WINDOW_SECS);
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    let mut local = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = window_now();
        if now != window {
            window = now;
            request = incr_expire(&window_key(window), WINDOW_SECS);
        }
        let record = measuring.load(Ordering::Relaxed);
        let started = Instant::now();
        stream.write_all(&request).await?;
        buf.clear();
        let count = loop {
            if let Some((count, used)) = integer_replies(&buf, 2)? {
                anyhow::ensure!(used == buf.len(), "redis sent more than two replies");
                break count;
            }
            let n = stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "redis closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        };
        // The decision Envoy's service makes: within the limit or not.
        anyhow::ensure!(
            u64::try_from(count).is_ok_and(|c| c <= UNLIMITED),
            "the unreachable limit was reached"
        );
        if record {
            hist.record(
                u64::try_from(started.elapsed().as_nanos())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )?;
        }
        local += 1;
        if local == 64 {
            calls.fetch_add(local, Ordering::Relaxed);
            local = 0;
        }
    }
    calls.fetch_add(local, Ordering::Relaxed);
    Ok(hist)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_is_two_resp_arrays_of_bulk_strings() {
        assert_eq!(
            incr_expire("k:60", 60),
            b"*3\r\n$6\r\nINCRBY\r\n$4\r\nk:60\r\n$1\r\n1\r\n\
              *3\r\n$6\r\nEXPIRE\r\n$4\r\nk:60\r\n$2\r\n60\r\n"
                .to_vec()
        );
    }

    #[test]
    fn integer_replies_wait_for_every_reply_and_fail_on_an_error() {
        assert_eq!(integer_replies(b":41\r\n:1", 2).unwrap(), None);
        assert_eq!(integer_replies(b":41\r\n:1\r\n", 2).unwrap(), Some((41, 9)));
        assert!(integer_replies(b"-ERR wrong type\r\n:1\r\n", 2).is_err());
        assert!(integer_replies(b"+OK\r\n", 1).is_err());
    }
}

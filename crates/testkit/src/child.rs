//! Spawned processes that cannot outlive the test that started them.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Owns a child process and kills it (SIGKILL, by PID) when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    pid: u32,
    child: Option<Child>,
}

impl ChildGuard {
    /// Spawns `cmd` and guards it.
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Self> {
        let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        Ok(Self::new(child))
    }

    /// Guards an already spawned child.
    pub fn new(child: Child) -> Self {
        Self {
            pid: child.id(),
            child: Some(child),
        }
    }

    /// Guards a process known only by its PID (e.g. from `tokio::process::Child::id`).
    pub fn from_pid(pid: u32) -> Self {
        Self { pid, child: None }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child, when the guard spawned or was given one (for its pipes).
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Sends `signal` (e.g. SIGSTOP, SIGCONT, SIGTERM) to the process.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        kill(self.pid_t()?, signal).with_context(|| format!("sending {signal} to {}", self.pid))
    }

    fn pid_t(&self) -> anyhow::Result<Pid> {
        Ok(Pid::from_raw(
            i32::try_from(self.pid).context("pid out of range")?,
        ))
    }

    /// Whether the process has exited (always false for PID-only guards that cannot reap).
    pub fn has_exited(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => false,
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(pid) = self.pid_t() {
            // SIGCONT first so a stopped child can die; errors mean it is already gone.
            let _ = kill(pid, Signal::SIGCONT);
            let _ = kill(pid, Signal::SIGKILL);
        }
        if let Some(child) = &mut self.child {
            let _ = child.wait();
        }
    }
}

/// The path of the `tollgate-test-upstream` binary: `$TOLLGATE_TEST_UPSTREAM_BIN`, else next to
/// the running test executable's target directory (build it with
/// `cargo build -p tollgate-testkit --bins` first when testing another crate).
pub fn test_upstream_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("TOLLGATE_TEST_UPSTREAM_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("test executable has no parent directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let candidate = dir.join("tollgate-test-upstream");
    anyhow::ensure!(
        candidate.exists(),
        "{} not found: run `cargo build -p tollgate-testkit --bins`",
        candidate.display()
    );
    Ok(candidate)
}

/// Spawns `tollgate-test-upstream --http 127.0.0.1:0 ARGS...` and returns it with its URL.
pub fn spawn_test_upstream_http(args: &[&str]) -> anyhow::Result<(ChildGuard, String)> {
    let mut cmd = Command::new(test_upstream_bin()?);
    cmd.arg("--http")
        .arg("127.0.0.1:0")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut guard = ChildGuard::spawn(&mut cmd)?;
    let stdout = guard
        .child_mut()
        .and_then(|c| c.stdout.take())
        .context("no stdout pipe")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .context("test upstream did not report its address")?;
    let url = line
        .trim()
        .strip_prefix("listening ")
        .context("unexpected first line from test upstream")?
        .to_string();
    Ok((guard, url))
}

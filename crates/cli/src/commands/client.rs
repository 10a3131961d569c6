//! The admin client every control-plane command uses: the shared connection flags, the admin
//! token, and the one retry loop that follows the Raft leader.
//!
//! ```text
//!   call(kind, f) ──▶ connect(addr) ──fails──▶ next --control address (none left: unreachable)
//!        ▲                │ ok
//!        │                ▼
//!        │            f(client) ──OK──────────────────────────────▶ response
//!        │                │ status
//!        │                ▼
//!        │           Route::on_status
//!        ├── Redirect: UNAVAILABLE + `tollgate-leader: host:port` ─▶ ask that address next
//!        │             (consecutive redirects are bounded: a loop between nodes fails)
//!        ├── Wait:     UNAVAILABLE without a leader (an election) ─▶ back off 50 ms … 1 s
//!        ├── Move on:  a read whose connection broke ──────────────▶ next address
//!        └── Fail:     UNAUTHENTICATED, any other code, a write whose connection broke
//! ```
//!
//! Everything is bounded by `--timeout`. The decisions live in [`Route`], which does no I/O, so
//! they are unit-tested without a network; [`AdminClient::call`] only carries them out.
//!
//! A status made locally by tonic (a broken connection) carries the transport error as its
//! `source`; one sent by a server never does. That is how a lost connection is told apart from a
//! node that answered `UNAVAILABLE`. A write whose connection broke mid-call is not retried: it
//! may already have been committed, and `CreateGrant` or `RollbackPolicy` are not idempotent.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use clap::Args;
use tokio::time::Instant;
use tollgate_proto::v1::admin_service_client::AdminServiceClient;
use tollgate_proto::{ADMIN_TOKEN_METADATA_KEY, named_leader};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::EXIT_CONFIG;

/// The control API address `tollgate serve` listens on by default.
pub const DEFAULT_CONTROL: &str = "127.0.0.1:7070";
/// The environment variable holding the admin token.
pub const ADMIN_TOKEN_ENV: &str = "TOLLGATE_ADMIN_TOKEN";
/// How many redirects in a row are followed before giving up (a redirect loop).
const MAX_REDIRECTS: usize = 5;
/// The first wait while no leader is known; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between two attempts during an election.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How to reach the control plane; flattened into every admin command.
#[derive(Debug, Clone, Args)]
pub struct ControlArgs {
    /// Control node API addresses (`host:port`), tried in order; any node will do, writes follow
    /// the leader.
    #[arg(
        long = "control",
        env = "TOLLGATE_CONTROL",
        value_name = "ADDR[,ADDR...]",
        value_delimiter = ',',
        default_value = DEFAULT_CONTROL
    )]
    pub control: Vec<String>,
    /// Read the admin token from this file (otherwise from the TOLLGATE_ADMIN_TOKEN environment
    /// variable; a token is never taken from the command line).
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Give up after this many seconds (connecting, following the leader, waiting out an
    /// election, and the call itself).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Neither the environment nor `--admin-token-file` gave a token.
    #[error(
        "no admin token: set {ADMIN_TOKEN_ENV} or pass --admin-token-file PATH (a token is never accepted on the command line)"
    )]
    MissingToken,
    /// The token file could not be read.
    #[error("reading the admin token from {path}: {source}")]
    TokenFile {
        /// The file given with `--admin-token-file`.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The token is empty or cannot travel in a header.
    #[error("the admin token is empty or contains characters not allowed in a header")]
    BadToken,
    /// `--control` named no address, or one that is not `host:port`.
    #[error("{0}")]
    BadAddress(String),
    /// Some other argument is unusable (exit 64).
    #[error("{0}")]
    Usage(String),
    /// An input file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No address of `--control` accepted a connection.
    #[error("cannot reach any control node: {0}")]
    Unreachable(String),
    /// `--timeout` passed before an answer came.
    #[error("no answer from the control plane within {secs}s (last: {last})")]
    Timeout {
        /// The `--timeout`.
        secs: u64,
        /// What the last attempt ended with.
        last: String,
    },
    /// Nodes kept naming one another as the leader.
    #[error(
        "followed {MAX_REDIRECTS} leader redirects in a row without reaching the leader (last: {0})"
    )]
    RedirectLoop(String),
    /// The admin token was refused.
    #[error(
        "unauthenticated: the control plane refused the admin token ({0}); check {ADMIN_TOKEN_ENV} or --admin-token-file"
    )]
    Unauthenticated(String),
    /// The connection broke while a write was in flight.
    #[error(
        "the connection to {addr} broke during the call, which may or may not have taken effect: {message}"
    )]
    Interrupted {
        /// The node the write was sent to.
        addr: String,
        /// The transport error.
        message: String,
    },
    /// The control plane answered with an error.
    #[error("{}", describe(.0))]
    Refused(Status),
    /// The command could not do what was asked, for a reason of its own.
    #[error("{0}")]
    Failed(String),
}

impl AdminError {
    /// The process exit code for this error: 64 for unusable arguments, 1 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::MissingToken
            | Self::TokenFile { .. }
            | Self::BadToken
            | Self::BadAddress(_)
            | Self::Usage(_) => ExitCode::from(EXIT_CONFIG),
            _ => ExitCode::FAILURE,
        }
    }
}

/// `not found: no policy seed`: the code in words, then the server's message.
fn describe(status: &Status) -> String {
    let code = match status.code() {
        Code::NotFound => "not found",
        Code::InvalidArgument => "invalid argument",
        Code::FailedPrecondition => "failed precondition",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::Unavailable => "unavailable",
        Code::Internal => "internal error",
        Code::Unimplemented => "not implemented by this control node",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::ResourceExhausted => "resource exhausted",
        Code::Aborted => "aborted",
        Code::Cancelled => "cancelled",
        _ => "error",
    };
    if status.message().is_empty() {
        code.to_owned()
    } else {
        format!("{code}: {}", status.message())
    }
}

/// Whether a call changes state: a write whose connection broke is never retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// Answered by any node; safe to repeat elsewhere.
    Read,
    /// Decided by the leader; not repeated once it may have been sent.
    Write,
}

/// Adds `authorization: Bearer <admin token>` to every request.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(..)")
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request
            .metadata_mut()
            .insert(ADMIN_TOKEN_METADATA_KEY, self.0.clone());
        Ok(request)
    }
}

/// The generated admin client with the token attached.
pub type Admin = AdminServiceClient<InterceptedService<Channel, Bearer>>;

/// The admin token: from `--admin-token-file` when given, else from the environment.
fn admin_token(args: &ControlArgs) -> Result<Bearer, AdminError> {
    let token = match &args.admin_token_file {
        Some(path) => std::fs::read_to_string(path).map_err(|source| AdminError::TokenFile {
            path: path.clone(),
            source,
        })?,
        None => std::env::var(ADMIN_TOKEN_ENV).map_err(|_| AdminError::MissingToken)?,
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(AdminError::BadToken);
    }
    let mut value =
        MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| AdminError::BadToken)?;
    value.set_sensitive(true);
    Ok(Bearer(value))
}

/// `host:port` as given, or a URL when it already names a scheme.
fn endpoint(addr: &str) -> Result<Endpoint, AdminError> {
    tollgate_proto::control_endpoint(addr)
        .map_err(|e| AdminError::BadAddress(format!("{addr} is not a control address: {e}")))
}

/// A client of the control plane's `AdminService` that follows the leader.
pub struct AdminClient {
    addrs: Vec<String>,
    bearer: Bearer,
    timeout: Duration,
    /// One channel per address, reused across retries and calls.
    channels: Mutex<HashMap<String, Channel>>,
}

impl AdminClient {
    /// Check the flags and read the token; connects lazily, on the first call.
    pub fn new(args: &ControlArgs) -> Result<Self, AdminError> {
        let addrs: Vec<String> = args
            .control
            .iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            return Err(AdminError::BadAddress(
                "--control names no address".to_owned(),
            ));
        }
        for addr in &addrs {
            endpoint(addr)?;
        }
        if args.timeout == 0 {
            return Err(AdminError::Usage("--timeout must be at least 1".to_owned()));
        }
        Ok(Self {
            addrs,
            bearer: admin_token(args)?,
            timeout: Duration::from_secs(args.timeout),
            channels: Mutex::new(HashMap::new()),
        })
    }

    async fn channel(&self, addr: &str) -> Result<Channel, String> {
        let cached = self
            .channels
            .lock()
            .map_err(|_| "the channel cache is poisoned".to_owned())?
            .get(addr)
            .cloned();
        if let Some(channel) = cached {
            return Ok(channel);
        }
        let channel = endpoint(addr)
            .map_err(|e| e.to_string())?
            .connect_timeout(self.timeout)
            .connect()
            .await
            .map_err(|e| error_chain(&e))?;
        if let Ok(mut channels) = self.channels.lock() {
            channels.insert(addr.to_owned(), channel.clone());
        }
        Ok(channel)
    }

    /// Run `f` against the control plane until it answers, following the leader and waiting out
    /// elections within `--timeout`; see the module doc for every decision.
    pub async fn call<T, F, Fut>(&self, kind: CallKind, f: F) -> Result<T, AdminError>
    where
        F: Fn(Admin) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_with(kind, AdminServiceClient::new, f).await
    }

    /// [`AdminClient::call`] for another service of the control API (the same token, routing and
    /// retries): `make` builds its client from the authenticated channel.
    pub async fn call_with<C, T, F, Fut>(
        &self,
        kind: CallKind,
        make: impl Fn(InterceptedService<Channel, Bearer>) -> C,
        f: F,
    ) -> Result<T, AdminError>
    where
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let timed_out = |last: String| AdminError::Timeout {
            secs: self.timeout.as_secs(),
            last,
        };
        let mut route = Route::new(self.addrs.clone());
        let mut last = "no attempt made".to_owned();
        loop {
            let addr = route.current().to_owned();
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(timed_out(last));
            }
            let step = match tokio::time::timeout(remaining, self.channel(&addr)).await {
                Err(_) => return Err(timed_out(format!("connecting to {addr}"))),
                Ok(Err(error)) => {
                    last = format!("{addr}: {error}");
                    route.connect_failed(&addr, &error)?
                }
                Ok(Ok(channel)) => {
                    let client = make(InterceptedService::new(channel, self.bearer.clone()));
                    let status = match tokio::time::timeout(remaining, f(client)).await {
                        Err(_) => return Err(timed_out(format!("waiting for {addr} to answer"))),
                        Ok(Ok(response)) => return Ok(response.into_inner()),
                        Ok(Err(status)) => status,
                    };
                    last = format!("{addr}: {}", describe(&status));
                    if is_local(&status) {
                        // The channel is broken: connect afresh if this address is tried again.
                        if let Ok(mut channels) = self.channels.lock() {
                            channels.remove(&addr);
                        }
                    }
                    route.on_status(&addr, &status, kind)?
                }
            };
            if let Step::Wait(wait) = step {
                if deadline.saturating_duration_since(Instant::now()) <= wait {
                    return Err(timed_out(last));
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The error and its sources, `: `-joined (tonic's top-level transport error says little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Whether tonic made `status` itself from a transport error (a server-sent status has no
/// source).
fn is_local(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// What [`AdminClient::call`] does after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Try again at once, at [`Route::current`].
    Retry,
    /// Wait this long, then try [`Route::current`] again.
    Wait(Duration),
}

/// The leader-following decisions of one call, without I/O.
#[derive(Debug)]
pub(crate) struct Route {
    /// The `--control` addresses.
    addrs: Vec<String>,
    /// The configured address to use when not following a redirect.
    index: usize,
    /// The leader address a node named, tried before the configured ones.
    redirect: Option<String>,
    /// Redirects followed since the last wait.
    redirects: usize,
    /// The next wait while no leader is known.
    backoff: Duration,
    /// `addr: error` of every failed connection, for the final message.
    unreachable: Vec<String>,
}

impl Route {
    pub(crate) fn new(addrs: Vec<String>) -> Self {
        Self {
            addrs,
            index: 0,
            redirect: None,
            redirects: 0,
            backoff: FIRST_BACKOFF,
            unreachable: Vec::new(),
        }
    }

    /// The address to try next.
    pub(crate) fn current(&self) -> &str {
        match &self.redirect {
            Some(leader) => leader,
            None => self.addrs.get(self.index).map_or("", String::as_str),
        }
    }

    /// A connection to `addr` failed. A configured address moves on to the next one (none left:
    /// unreachable); a leader that a node named but that does not answer is probably down, so
    /// the call waits for the election a configured node will see.
    pub(crate) fn connect_failed(&mut self, addr: &str, error: &str) -> Result<Step, AdminError> {
        self.unreachable.push(format!("{addr}: {error}"));
        if self.redirect.take().is_some() {
            return Ok(self.wait());
        }
        self.index += 1;
        if self.index >= self.addrs.len() {
            return Err(AdminError::Unreachable(self.unreachable.join("; ")));
        }
        Ok(Step::Retry)
    }

    /// `addr` answered `status` (not OK).
    pub(crate) fn on_status(
        &mut self,
        addr: &str,
        status: &Status,
        kind: CallKind,
    ) -> Result<Step, AdminError> {
        if is_local(status) {
            return match kind {
                CallKind::Read => self.connect_failed(addr, &describe(status)),
                CallKind::Write => Err(AdminError::Interrupted {
                    addr: addr.to_owned(),
                    message: describe(status),
                }),
            };
        }
        match status.code() {
            Code::Unauthenticated => Err(AdminError::Unauthenticated(status.message().to_owned())),
            Code::Unavailable => {
                let leader = named_leader(status).filter(|leader| *leader != addr);
                match leader {
                    Some(leader) => {
                        if self.redirects >= MAX_REDIRECTS {
                            return Err(AdminError::RedirectLoop(format!("{addr} named {leader}")));
                        }
                        self.redirects += 1;
                        self.redirect = Some(leader.to_owned());
                        Ok(Step::Retry)
                    }
                    // No leader known (or a node naming itself while it steps down): an election.
                    None => Ok(self.wait()),
                }
            }
            _ => Err(AdminError::Refused(status.clone())),
        }
    }

    fn wait(&mut self) -> Step {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.redirects = 0;
        Step::Wait(wait)
    }
}

/// Run an admin command on a small runtime of its own; an error is printed to stderr as
/// `error: ...` and mapped to its exit code.
pub fn block_on<F>(future: F) -> ExitCode
where
    F: Future<Output = Result<ExitCode, AdminError>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn two_addresses() -> Route {
        Route::new(vec!["a:1".to_owned(), "b:2".to_owned()])
    }

    fn redirect_to(leader: &str) -> Status {
        let mut status = Status::unavailable("not the leader; retry on the leader");
        status
            .metadata_mut()
            .insert(tollgate_proto::LEADER_METADATA_KEY, leader.parse().unwrap());
        status
    }

    fn broken_connection() -> Status {
        Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )))
    }

    #[test]
    fn unavailable_with_a_leader_address_is_retried_at_that_address() {
        let mut route = two_addresses();
        let step = route
            .on_status("a:1", &redirect_to("c:3"), CallKind::Write)
            .unwrap();
        assert_eq!(step, Step::Retry);
        assert_eq!(route.current(), "c:3");
    }

    #[test]
    fn unavailable_without_a_leader_backs_off_doubling_up_to_a_second() {
        let mut route = two_addresses();
        let waits: Vec<Step> = (0..7)
            .map(|_| {
                route
                    .on_status("a:1", &Status::unavailable("no leader"), CallKind::Write)
                    .unwrap()
            })
            .collect();
        let millis = |ms| Step::Wait(Duration::from_millis(ms));
        assert_eq!(
            waits,
            vec![
                millis(50),
                millis(100),
                millis(200),
                millis(400),
                millis(800),
                millis(1000),
                millis(1000)
            ]
        );
        assert_eq!(route.current(), "a:1", "an election is waited out in place");
    }

    #[test]
    fn redirects_in_a_loop_fail_after_a_bound() {
        let mut route = two_addresses();
        for i in 0..MAX_REDIRECTS {
            let to = if i % 2 == 0 { "c:3" } else { "a:1" };
            let from = route.current().to_owned();
            assert_eq!(
                route
                    .on_status(&from, &redirect_to(to), CallKind::Read)
                    .unwrap(),
                Step::Retry
            );
        }
        let from = route.current().to_owned();
        let error = route
            .on_status(&from, &redirect_to("a:1"), CallKind::Read)
            .unwrap_err();
        assert!(matches!(error, AdminError::RedirectLoop(_)), "{error}");
    }

    #[test]
    fn a_wait_resets_the_redirect_bound() {
        let mut route = two_addresses();
        for _ in 0..MAX_REDIRECTS {
            route
                .on_status("a:1", &redirect_to("c:3"), CallKind::Write)
                .unwrap();
        }
        route.connect_failed("c:3", "connection refused").unwrap();
        assert_eq!(
            route
                .on_status("a:1", &redirect_to("c:3"), CallKind::Write)
                .unwrap(),
            Step::Retry
        );
    }

    #[test]
    fn unauthenticated_fails_at_once_and_names_the_token_variable() {
        let error = two_addresses()
            .on_status(
                "a:1",
                &Status::unauthenticated("wrong admin token"),
                CallKind::Read,
            )
            .unwrap_err();
        assert!(matches!(error, AdminError::Unauthenticated(_)));
        let text = error.to_string();
        assert!(
            text.contains("wrong admin token") && text.contains(ADMIN_TOKEN_ENV),
            "{text}"
        );
        assert_eq!(error.exit_code(), ExitCode::FAILURE);
    }

    #[test]
    fn other_codes_fail_with_the_servers_message() {
        for status in [
            Status::not_found("no policy seed"),
            Status::failed_precondition("policy seed is at version 2, not 1"),
            Status::invalid_argument("an http upstream needs a url"),
        ] {
            let error = two_addresses()
                .on_status("a:1", &status, CallKind::Write)
                .unwrap_err();
            assert!(matches!(error, AdminError::Refused(_)));
            assert!(error.to_string().contains(status.message()), "{error}");
        }
    }

    #[test]
    fn a_connection_failure_moves_to_the_next_address_and_the_last_one_gives_up() {
        let mut route = two_addresses();
        assert_eq!(
            route.connect_failed("a:1", "connection refused").unwrap(),
            Step::Retry
        );
        assert_eq!(route.current(), "b:2");
        let error = route
            .connect_failed("b:2", "connection refused")
            .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("a:1") && text.contains("b:2"), "{text}");
    }

    #[test]
    fn an_unreachable_leader_is_waited_for_from_the_configured_address() {
        let mut route = two_addresses();
        route
            .on_status("a:1", &redirect_to("c:3"), CallKind::Write)
            .unwrap();
        let step = route.connect_failed("c:3", "connection refused").unwrap();
        assert!(matches!(step, Step::Wait(_)));
        assert_eq!(route.current(), "a:1");
    }

    #[test]
    fn a_broken_connection_moves_a_read_on_but_fails_a_write() {
        let status = broken_connection();
        assert!(is_local(&status));
        let mut route = two_addresses();
        assert_eq!(
            route.on_status("a:1", &status, CallKind::Read).unwrap(),
            Step::Retry
        );
        assert_eq!(route.current(), "b:2");
        let error = two_addresses()
            .on_status("a:1", &status, CallKind::Write)
            .unwrap_err();
        assert!(matches!(error, AdminError::Interrupted { .. }), "{error}");
    }

    #[test]
    fn a_node_naming_itself_as_leader_is_waited_out_not_followed() {
        let mut route = two_addresses();
        let step = route
            .on_status("a:1", &redirect_to("a:1"), CallKind::Write)
            .unwrap();
        assert!(matches!(step, Step::Wait(_)));
    }

    #[test]
    fn the_token_comes_from_the_file_trimmed_and_is_refused_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let mut args = ControlArgs {
            control: vec![DEFAULT_CONTROL.to_owned()],
            admin_token_file: Some(path.clone()),
            timeout: 10,
            json: false,
        };
        let Bearer(value) = admin_token(&args).unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer s3cret");
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(admin_token(&args), Err(AdminError::BadToken)));
        args.admin_token_file = Some(dir.path().join("missing"));
        let error = admin_token(&args).unwrap_err();
        assert!(matches!(error, AdminError::TokenFile { .. }));
        assert_eq!(error.exit_code(), ExitCode::from(EXIT_CONFIG));
    }
}

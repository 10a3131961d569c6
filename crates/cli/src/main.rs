//! The `tollgate` binary: everything lives in the library.

/// mimalloc rather than the system allocator: the request path makes many small, short-lived
/// allocations across worker threads, where glibc's malloc spent a fifth of the gateway's CPU
/// (arena locking, consolidation); see benches/README.md for the measurement.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tollgate::run()
}

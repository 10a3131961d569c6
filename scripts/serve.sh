#!/usr/bin/env bash
# Runs Tollgate on a fresh machine: the embedded single-node default (data plane on
# 127.0.0.1:8080, admin on 127.0.0.1:9090, control API on 127.0.0.1:7070: a one-node Raft cluster
# and a gateway in one process) in front of the real `mcp-server-time` MCP server over stdio, which
# this script installs into .tools/ first. Extra arguments go to `tollgate serve`.
# The bearer token is TOLLGATE_TOKEN if set, else a fresh one printed at start; the admin token
# (for `tollgate policy push` ...) is TOLLGATE_ADMIN_TOKEN if set, else printed too. Cluster state
# lives in TOLLGATE_DATA_DIR if set, else in a temporary directory removed at exit.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/install-tools.sh py >/dev/null
cargo build --release --locked -p tollgate
export TOLLGATE_DEFAULT_UPSTREAM="$ROOT/.tools/py/bin/mcp-server-time"
exec "$ROOT/target/release/tollgate" serve "$@"

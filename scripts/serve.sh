#!/usr/bin/env bash
# Runs Tollgate on a fresh machine: the embedded single-node default (data plane on
# 127.0.0.1:8080, admin on 127.0.0.1:9090) in front of the real `mcp-server-time` MCP server over
# stdio, which this script installs into .tools/ first. Extra arguments go to `tollgate serve`.
# The bearer token is TOLLGATE_TOKEN if set, else a fresh one printed at start.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/install-tools.sh py >/dev/null
cargo build --release --locked -p tollgate
export TOLLGATE_DEFAULT_UPSTREAM="$ROOT/.tools/py/bin/mcp-server-time"
exec "$ROOT/target/release/tollgate" serve "$@"

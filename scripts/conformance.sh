#!/usr/bin/env bash
# Runs the official MCP conformance suite's server scenarios against URL and writes a normalised,
# diffable result list.
#
#   scripts/conformance.sh URL OUTDIR [legacy|modern]
#
# Both run the whole server suite (--suite all: active, pending, draft and extension scenarios).
# legacy: conformance 0.1.16 (2025-06-18 / 2025-11-25).
# modern: conformance 0.2.0-alpha.12, run twice: --spec-version 2025-11-25 (legacy wire) and
#         --spec-version 2026-07-28 (stateless wire); each scenario runs at one wire version.
#
# Writes OUTDIR/raw/... (the suite's own output), OUTDIR/results.txt (sorted lines
# "<run>/<scenario>/<check-id>: SUCCESS|FAILURE|WARNING|SKIPPED|INFO", one per check) and
# OUTDIR/summary.txt. Exits 0 when the suite ran, whatever the checks said: compare two
# results.txt files with diff to run the suite differentially.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
URL="${1:?usage: conformance.sh URL OUTDIR [legacy|modern]}"
OUT="${2:?usage: conformance.sh URL OUTDIR [legacy|modern]}"
SUITE="${3:-modern}"
# shellcheck source=tools-env.sh
source "$ROOT/scripts/tools-env.sh"
[[ -x "$TOLLGATE_NODE22" ]] || { echo "conformance.sh: run scripts/install-tools.sh first" >&2; exit 1; }

rm -rf "$OUT"
mkdir -p "$OUT/raw"
case "$SUITE" in
    legacy) runs=("legacy:$TOLLGATE_CONFORMANCE_LEGACY:") ;;
    modern) runs=("2025-11-25:$TOLLGATE_CONFORMANCE_MODERN:2025-11-25" "2026-07-28:$TOLLGATE_CONFORMANCE_MODERN:2026-07-28") ;;
    *) echo "conformance.sh: suite must be legacy or modern" >&2; exit 2 ;;
esac

for run in "${runs[@]}"; do
    IFS=: read -r name entry spec <<<"$run"
    args=(server --url "$URL" --suite all -o "$OUT/raw/$name")
    [[ -n "$spec" ]] && args+=(--spec-version "$spec")
    # The suite exits non-zero when any check fails; that is data, not an error of this script.
    "$TOLLGATE_NODE22" "$entry" "${args[@]}" >"$OUT/raw/$name.log" 2>&1 || true
done

"$TOLLGATE_NODE22" - "$OUT" <<'JS'
const fs = require("fs"), path = require("path");
const out = process.argv[2], raw = path.join(out, "raw");
const lines = [];
function walk(dir, run) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p, run);
    else if (e.name === "checks.json") {
      // raw/<run>/<scenario>-<timestamp>/checks.json (the scenario name may contain '/')
      const rel = path.relative(path.join(raw, run), path.dirname(p));
      const scenario = rel.replace(/-\d{4}-\d{2}-\d{2}T[\d-]+Z?$/, "").replace(/-\d{8,}$/, "");
      let checks;
      try { checks = JSON.parse(fs.readFileSync(p, "utf8")); } catch { continue; }
      const seen = new Map();
      for (const c of checks) {
        // Transport traces (one INFO line per SSE event or HTTP exchange) vary with timing and
        // with intermediaries; they are not checks.
        if (c.status === "INFO" && /^(incoming-|outgoing-|stream-closed)/.test(c.id)) continue;
        const base = `${run}/${scenario}/${c.id}`;
        const n = (seen.get(base) || 0) + 1;
        seen.set(base, n);
        lines.push(`${n > 1 ? `${base}#${n}` : base}: ${c.status}`);
      }
    }
  }
}
for (const e of fs.readdirSync(raw, { withFileTypes: true })) if (e.isDirectory()) walk(path.join(raw, e.name), e.name);
lines.sort();
fs.writeFileSync(path.join(out, "results.txt"), lines.join("\n") + (lines.length ? "\n" : ""));
const count = (s) => lines.filter((l) => l.endsWith(": " + s)).length;
const summary = ["SUCCESS", "FAILURE", "WARNING", "SKIPPED", "INFO"].map((s) => `${s.toLowerCase()}=${count(s)}`).join(" ");
fs.writeFileSync(path.join(out, "summary.txt"), summary + "\n");
console.log(summary);
JS

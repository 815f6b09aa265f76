#!/usr/bin/env bash
# Load benchmark of the gateway: lumina serve in front of a fixed-response upstream (nginx),
# compared in the same run with calling nginx directly. Reports, for non-streaming and
# streaming chat completions:
#   - latency p50/p99 at a fixed 1,000 requests/s, and the latency Lumina adds;
#   - maximum requests/s at 32 connections, through nginx and through the simulated provider
#     (zero latency, no upstream socket);
#   - lumina_gateway_overhead_seconds (Lumina's own time per request, from /metrics) over
#     each 1,000 req/s run, p50 and p99.
# Everything — load generator, nginx, gateway — shares this machine's cores.
# Every request through Lumina writes its events (RequestRouted, UpstreamAttempted,
# RequestSettled) to the local log, the settlement committed before the response ends.
#
# Usage: bench/gateway.sh [seconds per run, default 10]
#   BASELINE=/path/to/an/older/lumina bench/gateway.sh   also measures that binary, in the
#   same run and against the same nginx, and prints both with their ratios (before → after).
#   AFTER=/path/to/a/lumina measures that binary as "this build" instead of building one.
# Installs what it needs: oha (cargo install, cached) and nginx (apt) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN="${1:-10}"
. bench/lib.sh

AFTER_BIN=$(lumina_binary "${AFTER:-}")

# run NAME URL BODY [oha flags…] → one JSON line of results
run() {
  local name=$1 url=$2 body=$3; shift 3
  "$OHA" --no-tui --output-format json -z "${SECONDS_PER_RUN}s" -m POST \
    -H "Authorization: Bearer ${KEY:-none}" -H "content-type: application/json" -d "$body" "$@" "$url" \
    > "$WORK/$name.json"
  python3 - "$name" "$WORK/$name.json" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
s, p = r["summary"], r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
print(json.dumps({"name": name, "rps": s["requestsPerSec"], "p50_ms": p["p50"] * 1000, "p99_ms": p["p99"] * 1000,
                  "success": s["successRate"], "codes": codes}))
PY
}

# scrape NAME → the gateway's /metrics, kept as $WORK/metrics-NAME.txt
scrape() {
  curl -sf "http://127.0.0.1:$GW_PORT/metrics" > "$WORK/metrics-$1.txt" || : > "$WORK/metrics-$1.txt"
}

# measure PREFIX → the gateway's runs, each name prefixed; /metrics around the 1,000 req/s runs
measure() {
  local p=$1
  scrape "${p}start"
  run "${p}lumina-1000rps" "$GW" "$BODY" -c 16 -q 1000 --latency-correction
  scrape "${p}after-1000rps"
  run "${p}lumina-stream-1000rps" "$GW" "$SBODY" -c 16 -q 1000 --latency-correction
  scrape "${p}after-stream-1000rps"
  run "${p}lumina-max" "$GW" "$BODY" -c 32
  scrape "${p}after-max"
  run "${p}lumina-stream-max" "$GW" "$SBODY" -c 32
  scrape "${p}after-stream-max"
  run "${p}lumina-simulated-max" "$GW" "$SIMBODY" -c 32
  run "${p}lumina-simulated-stream-max" "$GW" "$SIMSBODY" -c 32
}

UP_JSON="http://127.0.0.1:$UP_PORT/json/v1/chat/completions"
UP_SSE="http://127.0.0.1:$UP_PORT/sse/v1/chat/completions"
{
  run direct-1000rps "$UP_JSON" "$BODY" -c 16 -q 1000 --latency-correction
  run direct-stream-1000rps "$UP_SSE" "$SBODY" -c 16 -q 1000 --latency-correction
  run direct-max "$UP_JSON" "$BODY" -c 32
  run direct-stream-max "$UP_SSE" "$SBODY" -c 32
  if [ -n "${BASELINE:-}" ]; then
    start_lumina "$BASELINE" before
    measure before-
    kill "$LUMINA_PID"; wait "$LUMINA_PID" 2>/dev/null || true
  fi
  start_lumina "$AFTER_BIN" after
  measure ""
} > "$WORK/results.jsonl"

EVENTS=$(curl -sf "http://127.0.0.1:$GW_PORT/readyz" | python3 -c 'import sys,json; print(json.load(sys.stdin)["log"]["committed_position"])')
python3 - "$WORK/results.jsonl" "$EVENTS" <<'PY'
import json, sys
rows = {r["name"]: r for r in map(json.loads, open(sys.argv[1]))}
print(f"{'run':<34}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'success':>10}")
for name, r in rows.items():
    print(f"{name:<34}{r['rps']:>10.0f}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}{r['success']:>10.3f}")
for prefix in (["before-"] if "before-lumina-max" in rows else []) + [""]:
    label = "before" if prefix else "this build"
    for kind in ["", "stream-"]:
        d, l = rows[f"direct-{kind}1000rps"], rows[f"{prefix}lumina-{kind}1000rps"]
        print(f"{label}: added latency at 1000 rps ({kind or 'non-'}stream): p50 {l['p50_ms'] - d['p50_ms']:.3f} ms, p99 {l['p99_ms'] - d['p99_ms']:.3f} ms")
if "before-lumina-max" in rows:
    for name in ["lumina-max", "lumina-stream-max", "lumina-simulated-max", "lumina-simulated-stream-max"]:
        b, a = rows[f"before-{name}"], rows[name]
        print(f"{name}: {b['rps']:.0f} -> {a['rps']:.0f} req/s (x{a['rps'] / b['rps']:.2f})")
print(f"events committed to this build's local log during the run: {sys.argv[2]}")
PY
# Whether the embedded consumers kept up with each maximum-rate run: the events each had yet
# to apply, and the holds the credit book still counted itself, when the run ended. A backlog
# means that run's rate is not sustainable: the consumers were starved of the cores.
for m in "$WORK"/metrics-*after-*max.txt; do
  name=$(basename "$m" .txt); name=${name#metrics-}
  awk -v run="$name" '/^lumina_consumer_lag_events/ { match($0, /consumer="[^"]+"/); lag = lag " " substr($0, RSTART + 10, RLENGTH - 11) " " $2 }
    /^lumina_credit_pending_holds/ { holds = $2 }
    END { printf "%s: consumer backlog at the end:%s events; pending holds %s\n", run, lag, holds }' "$m"
done
# lumina_gateway_overhead_seconds over each 1,000 req/s run (this build only: the metric is
# new in it): p50 and p99 interpolated within the histogram's buckets.
python3 - "$WORK" <<'PY'
import re, sys
work = sys.argv[1]
def buckets(name, path):
    out = {}
    for line in open(f"{work}/metrics-{name}.txt"):
        m = re.match(r'lumina_gateway_overhead_seconds_bucket\{(.*)\} (\S+)$', line)
        if m and f'lumina_path="{path}"' in m.group(1):
            le = re.search(r'le="([^"]+)"', m.group(1)).group(1)
            out[float("inf") if le == "+Inf" else float(le)] = float(m.group(2))
    return out
def quantile(cum, q):
    total = cum[max(cum)]
    if total == 0:
        return None
    lo, prev = 0.0, 0.0
    for le in sorted(cum):
        if cum[le] >= q * total:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * (q * total - prev) / max(cum[le] - prev, 1e-9)
        lo, prev = le, cum[le]
for before, after, path, label in [("start", "after-1000rps", "fast", "non-stream"),
                                   ("after-1000rps", "after-stream-1000rps", "balanced", "stream")]:
    b, a = buckets(before, path), buckets(after, path)
    if not a:
        continue
    diff = {le: a[le] - b.get(le, 0.0) for le in a}
    p50, p99 = quantile(diff, 0.5), quantile(diff, 0.99)
    if p50 is not None:
        print(f"this build: lumina_gateway_overhead_seconds at 1000 rps ({label}): p50 {p50 * 1000:.3f} ms, p99 {p99 * 1000:.3f} ms over {diff[float('inf')]:.0f} requests")
PY

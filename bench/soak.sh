#!/usr/bin/env bash
# Soak benchmark: lumina serve (release) in front of the fixed-response upstream (nginx) under a
# steady load for MINUTES, its resident memory sampled every few seconds. Reports RSS idle,
# after warm-up and at the end, the spread after warm-up (the share by which the highest and
# lowest samples differ from the warm-up figure) of the whole RSS and of its two parts —
# anonymous (heap, stacks: what the process holds) and file-backed (the binary's code as the
# kernel pages it in, at most its text size) — what the RSS consists of at the end
# (/proc/PID/smaps_rollup), and the load's own figures.
#
# Usage: bench/soak.sh [minutes, default 10]
#   RATE=1000        requests/s (non-streamed and streamed alternate: half each)
#   WARMUP=60        seconds counted as warm-up
#   INTERVAL=5       seconds between samples
#   KEEP=DIR         keep the samples (rss.tsv) and oha's reports in DIR
# Installs what it needs as bench/gateway.sh does (oha into the cache, nginx from Debian).
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES="${1:-10}"
RATE="${RATE:-1000}"
WARMUP="${WARMUP:-60}"
INTERVAL="${INTERVAL:-5}"
. bench/lib.sh

echo "building lumina (release)" >&2
cargo build --release --locked --bin lumina >&2
start_lumina "$CARGO_TARGET_DIR/release/lumina" soak

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$LUMINA_PID/status"; }
# VmRSS, RssAnon and RssFile (+ RssShmem), tab-separated.
rss_parts() { awk '/^VmRSS:/ {t=$2} /^RssAnon:/ {a=$2} /^RssFile:/ {f=$2} /^RssShmem:/ {s=$2} END {printf "%s\t%s\t%s", t, a, f + s}' "/proc/$LUMINA_PID/status"; }
IDLE=$(rss_kib)
SECONDS_TOTAL=$((MINUTES * 60))
HALF=$((RATE / 2))

"$OHA" --no-tui --output-format json -z "${SECONDS_TOTAL}s" -m POST -c 8 -q "$HALF" \
  -H "Authorization: Bearer $KEY" -H "content-type: application/json" -d "$BODY" "$GW" \
  > "$WORK/oha-json.json" &
JSON_LOAD=$!
"$OHA" --no-tui --output-format json -z "${SECONDS_TOTAL}s" -m POST -c 8 -q "$HALF" \
  -H "Authorization: Bearer $KEY" -H "content-type: application/json" -d "$SBODY" "$GW" \
  > "$WORK/oha-stream.json" &
STREAM_LOAD=$!

START=$(date +%s)
printf 'seconds\trss_kib\tanon_kib\tfile_kib\n' > "$WORK/rss.tsv"
while kill -0 "$JSON_LOAD" 2>/dev/null || kill -0 "$STREAM_LOAD" 2>/dev/null; do
  printf '%s\t%s\n' "$(($(date +%s) - START))" "$(rss_parts)" >> "$WORK/rss.tsv"
  sleep "$INTERVAL"
done
wait "$JSON_LOAD" "$STREAM_LOAD"
grep -E '^(Rss|Anonymous|LazyFree|Private|Shared)' "/proc/$LUMINA_PID/smaps_rollup" > "$WORK/smaps.txt" || true
EVENTS=$(curl -sf "http://127.0.0.1:$GW_PORT/readyz" | python3 -c 'import sys,json; print(json.load(sys.stdin)["log"]["committed_position"])')

python3 - "$WORK" "$IDLE" "$WARMUP" "$EVENTS" <<'PY'
import json, sys
work, idle, warmup, events = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows = [tuple(map(int, l.split("\t"))) for l in open(f"{work}/rss.tsv").read().splitlines()[1:]]
mib = lambda k: k / 1024
print(f"samples: {len(rows)} over {rows[-1][0]} s; idle before load {mib(idle):.1f} MiB")
for col, name in [(1, "RSS"), (2, "anonymous"), (3, "file-backed")]:
    after = [r[col] for r in rows if r[0] >= warmup]
    if not after:
        continue
    base = after[0]
    lo, hi = min(after), max(after)
    print(f"{name} after warm-up ({warmup} s): {mib(base):.1f} MiB; min {mib(lo):.1f}, max {mib(hi):.1f}, "
          f"end {mib(after[-1]):.1f} MiB; spread {100 * (lo - base) / base:+.1f}% / {100 * (hi - base) / base:+.1f}%")
    by_minute = {}
    for r in rows:
        by_minute.setdefault(r[0] // 60, r[col])
    print(f"  {name} at the start of each minute (MiB): " + " ".join(f"{mib(v):.0f}" for _, v in sorted(by_minute.items())))
for kind in ["json", "stream"]:
    r = json.load(open(f"{work}/oha-{kind}.json"))
    s, p = r["summary"], r["latencyPercentiles"]
    print(f"{kind}: {s['requestsPerSec']:.0f} req/s, p50 {p['p50'] * 1000:.3f} ms, p99 {p['p99'] * 1000:.3f} ms, "
          f"success {s['successRate']:.4f}, codes {r.get('statusCodeDistribution', {})}")
print("at the end: " + ", ".join(l.split()[0].rstrip(':') + " " + str(round(int(l.split()[1]) / 1024)) + " MiB" for l in open(f"{work}/smaps.txt")))
print(f"events committed: {events}")
PY
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$WORK"/rss.tsv "$WORK"/oha-*.json "$WORK"/smaps.txt "$KEEP"/; fi

#!/usr/bin/env bash
# CPU time and context switches of `lumina serve` per request, counted by `perf stat`'s software
# counters (task-clock, context-switches: they work where hardware counters are "not
# supported") over a fixed number of requests and until the embedded consumers have applied
# every event those requests made — so a request's cost includes the ledger's and the
# projector's work for it, which a maximum-rate figure leaves out when they fall behind.
# Two loads, non-streamed: 32 connections unthrottled, and 1,000 req/s on 16.
#
# Usage: bench/cpu.sh [requests, default 20000] BIN [BIN…]   (each binary measured in turn,
#   ROUNDS=2 rounds by default, interleaved). Without BIN it builds this checkout.
# Installs perf (Debian's linux-perf) when missing, and what bench/lib.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."

N="${1:-20000}"; shift || true
. bench/lib.sh

if ! command -v perf >/dev/null; then
  echo "installing perf" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y linux-perf >&2
fi
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=("$(lumina_binary "")")

# measure BIN LABEL CONNECTIONS [RATE] → one line
measure() {
  local bin=$1 label=$2 conns=$3 rate=${4:-} q=()
  [ -n "$rate" ] && q=(-q "$rate")
  RUN=$((RUN + 1))
  start_lumina "$bin" "cpu-$RUN"   # a data dir of its own: an older build refuses a newer one
  "$OHA" --no-tui -n 2000 -c "$conns" -m POST -H "Authorization: Bearer $KEY" \
    -H "content-type: application/json" -d "$BODY" "$GW" > /dev/null
  wait_caught_up 60
  perf stat -e context-switches,task-clock -p "$LUMINA_PID" -o "$WORK/stat.txt" &
  local stat=$!
  sleep 0.5
  "$OHA" --no-tui -n "$N" -c "$conns" "${q[@]}" -m POST -H "Authorization: Bearer $KEY" \
    -H "content-type: application/json" -d "$BODY" "$GW" > "$WORK/load.txt"
  wait_caught_up 120
  kill -INT "$stat"; wait "$stat" 2>/dev/null || true
  kill "$LUMINA_PID"; wait "$LUMINA_PID" 2>/dev/null || true
  grep -q "Success rate:[[:space:]]*100" "$WORK/load.txt" || { cat "$WORK/load.txt" >&2; exit 1; }
  python3 - "$WORK/stat.txt" "$N" "$label" "$(awk '/Requests\/sec/ { print $2 }' "$WORK/load.txt")" <<'PY'
import re, sys
text, n, label, rps = open(sys.argv[1]).read(), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
switches = float(re.search(r"([\d,.]+)\s+context-switches", text).group(1).replace(",", ""))
msec = float(re.search(r"([\d,.]+)\s+msec task-clock", text).group(1).replace(",", ""))
print(f"{label:<48}{rps:>9.0f}{msec * 1000 / n:>12.1f}{switches / n:>14.2f}")
PY
}

RUN=0
printf '%-48s%9s%12s%14s\n' "binary, load" "req/s" "CPU µs/req" "switches/req"
for round in $(seq 1 "${ROUNDS:-2}"); do
  for bin in "${BINS[@]}"; do
    measure "$bin" "$(basename "$bin"), 32 connections" 32
    measure "$bin" "$(basename "$bin"), 1,000 req/s" 16 1000
  done
done

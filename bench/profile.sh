#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: repeatable on this noisy machine,
# where wall-clock figures are not. `lumina serve` runs under callgrind in front of the fixed
# nginx upstream of bench/lib.sh; each kind of request (non-streamed, streamed) gets its own
# run of N requests, and a run with no request at all is the baseline, so
#   instructions per request = (instructions of the run − those of the baseline) / N
# counts everything a request costs the process: accept and HTTP, body parse, auth,
# classifier, holds, the upstream client, the response, event encoding, the log commit, the
# embedded ledger and projector applying the request's events, the allocator.
# Then where they go: self cost grouped by crate or subsystem, and the inclusive cost of a few
# entry points, per request.
#
# Usage: bench/profile.sh [requests per run, default 1000]
#   BIN=/path/to/lumina bench/profile.sh   profiles that binary instead of building this one.
#   KEEP=DIR keeps the callgrind files in DIR (for callgrind_annotate or kcachegrind).
set -euo pipefail
cd "$(dirname "$0")/.."

N="${1:-1000}"
. bench/lib.sh

if ! command -v valgrind >/dev/null; then
  echo "installing valgrind" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y valgrind >&2
fi
if [ -z "${BIN:-}" ]; then
  echo "building lumina (release)" >&2
  cargo build --release --locked --bin lumina >&2
  BIN="$CARGO_TARGET_DIR/release/lumina"
fi

WARMUP=50

# send BODY COUNT NAME → COUNT requests, 4 at a time, every one a success
send() {
  local body=$1 count=$2 name=$3
  [ "$count" -gt 0 ] || return 0
  "$OHA" --no-tui -n "$count" -c 4 -m POST -H "Authorization: Bearer $KEY" \
    -H "content-type: application/json" -d "$body" "$GW" > "$WORK/$name.oha"
  grep -q "Success rate:[[:space:]]*100" "$WORK/$name.oha" || { cat "$WORK/$name.oha" >&2; exit 1; }
}

# profile NAME BODY COUNT → callgrind file $WORK/NAME.cg
profile() {
  local name=$1 body=$2 count=$3
  WRAP="valgrind --tool=callgrind --callgrind-out-file=$WORK/$name.cg --dump-instr=no" \
    READY_TRIES=6000 start_lumina "$BIN" "$name"
  # Every run warms up alike (lazy initialisations, connection pools, statement caches), so
  # the difference to the baseline is the requests alone.
  send "$BODY" "$WARMUP" "$name-warm-json"
  send "$SBODY" "$WARMUP" "$name-warm-stream"
  send "$body" "$count" "$name"
  wait_caught_up 300
  kill -TERM "$LUMINA_PID"
  wait "$LUMINA_PID" 2>/dev/null || true
}

echo "profiling $N requests per run under callgrind (slow: minutes)" >&2
profile idle "$BODY" 0
profile json "$BODY" "$N"
profile stream "$SBODY" "$N"
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$WORK"/*.cg "$KEEP"/; fi

for run in idle json stream; do
  callgrind_annotate --auto=no --threshold=100 "$WORK/$run.cg" > "$WORK/$run.self" 2>/dev/null
  callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$WORK/$run.cg" > "$WORK/$run.incl" 2>/dev/null
done

python3 - "$WORK" "$N" <<'PY'
import re, sys
work, n = sys.argv[1], int(sys.argv[2])
line = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$")

def costs(path):
    """(program total, [(Ir, function name)]) of a callgrind_annotate listing."""
    total, rows = 0, []
    for l in open(path, errors="replace"):
        m = line.match(l)
        if not m:
            continue
        ir, what = int(m.group(1).replace(",", "")), m.group(2)
        if "PROGRAM TOTALS" in what:
            total = ir
            continue
        what = re.sub(r" \[[^]]*\]$", "", what)
        rows.append((ir, what.split(":", 1)[1] if re.match(r"^[^:<]*:", what) else what))
    return total, rows

GROUPS = [
    ("SQLite (log commit, embedded consumers' writes)", r"sqlite3|rusqlite|\bsqlx"),
    ("HTTP (hyper, http, httparse, reqwest)", r"hyper|httparse|\bhttp::|\bh2::|reqwest|want::|tower"),
    ("Avro events (apache_avro)", r"apache_avro"),
    ("async runtime, channels (tokio, flume, futures)", r"tokio|flume|futures|mio::|parking_lot"),
    ("allocator (mimalloc)", r"\bmi_|_mi_|mimalloc|malloc|\bfree\b|realloc"),
    ("JSON (serde_json)", r"serde_json|serde::|serde_core"),
    ("memcpy, memmove, memset, memcmp", r"mem(cpy|move|set|cmp)|__mem"),
    ("auth (HMAC-SHA-256)", r"sha2|hmac|digest"),
    ("classifier (routing, aho-corasick)", r"aho_corasick|lumina_gateway::routing::"),
    ("metrics, tracing", r"metrics|tracing"),
    ("lumina: gateway", r"lumina_gateway"),
    ("lumina: eventlog, ledger, projector, schemas", r"lumina_(eventlog|ledger|projector|schemas)"),
    ("libc, syscalls", r"libc|syscall|__GI_|epoll"),
]
ENTRY = [
    ("the request, as its handler sees it (chat::create)", r"^lumina_gateway::api::chat::create::\{\{closure\}\}$"),
    ("  the upstream call (OpenAI-compatible)", r"^<lumina_gateway::providers::openai::OpenAi as .*>::complete::\{\{closure\}\}$"),
    ("  event encoding", r"^lumina_schemas::codec::encode$"),
    ("  classifier", r"^lumina_gateway::routing::(classifier::classify(_with|_preferring)?|linear::LinearModel::classify_at)$"),
    ("  usage.cost written into the answer", r"^lumina_gateway::metering::cost::with_cost$"),
    ("log writer thread (group commits)", r"^lumina_eventlog::log::Writer::run$"),
    ("embedded consumers (ledger, projector)", r"^lumina_eventlog::consumer::Consumer<S,P>::run::\{\{closure\}\}$"),
    ("  event decoding", r"^lumina_schemas::codec::decode$"),
]

def grouped(rows):
    out = {g: 0 for g, _ in GROUPS}
    out["other"] = 0
    for ir, what in rows:
        for g, pat in GROUPS:
            if re.search(pat, what):
                out[g] += ir
                break
        else:
            out["other"] += ir
    return out

def entry(rows, pat):
    return max((ir for ir, what in rows if re.search(pat, what)), default=0)

idle_total, idle_self = costs(f"{work}/idle.self")
_, idle_incl = costs(f"{work}/idle.incl")
idle_groups = grouped(idle_self)
for run in ["json", "stream"]:
    total, rows = costs(f"{work}/{run}.self")
    per = (total - idle_total) / n
    print(f"\n{run}: {per:,.0f} instructions per request")
    groups = grouped(rows)
    print(f"  {'self cost by subsystem':<54}{'per request':>12}{'share':>8}")
    for g, ir in sorted(groups.items(), key=lambda kv: -(kv[1] - idle_groups[kv[0]])):
        d = (ir - idle_groups[g]) / n
        print(f"  {g:<54}{d:>12,.0f}{d / per:>8.1%}")
    _, incl = costs(f"{work}/{run}.incl")
    print(f"  {'inclusive cost of entry points':<54}{'per request':>12}")
    for label, pat in ENTRY:
        d = (entry(incl, pat) - entry(idle_incl, pat)) / n
        print(f"  {label:<54}{d:>12,.0f}")
PY

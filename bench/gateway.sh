#!/usr/bin/env bash
# Load benchmark of the gateway: lumina serve in front of a fixed-response upstream (nginx),
# compared in the same run with calling nginx directly. Reports, for non-streaming and
# streaming chat completions:
#   - latency p50/p99 at a fixed 1,000 requests/s, and the latency Lumina adds;
#   - maximum requests/s at 32 connections, through nginx and through the simulated provider
#     (zero latency, no upstream socket).
# Everything — load generator, nginx, gateway — shares this machine's cores.
# Every request through Lumina writes its events (RequestRouted, UpstreamAttempted,
# RequestSettled) to the local log, the settlement committed before the response ends.
#
# Usage: bench/gateway.sh [seconds per run, default 10]
# Installs what it needs: oha (cargo install, cached) and nginx (apt) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN="${1:-10}"
CACHE="${LUMINA_CACHE:-$HOME/.cache/lumina}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
OHA="$CACHE/tools/bin/oha"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null; rm -rf "$WORK"' EXIT

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x "$OHA" ]; then
  echo "installing oha (load generator) into $CACHE/tools" >&2
  cargo install oha --locked --root "$CACHE/tools" >&2
fi
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  echo "installing nginx (fixed-response upstream)" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light >&2 || \
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y nginx >&2
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP_PORT=$(free_port)
GW_PORT=$(free_port)

COMPLETION='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"A fixed answer from the benchmark upstream."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}'
chunk() { printf 'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench","choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]}\\n\\n' "$1" "$2"; }
STREAM="$(chunk '{"role":"assistant","content":""}' null)$(chunk '{"content":"A fixed "}' null)$(chunk '{"content":"streamed answer."}' null)$(chunk '{}' '"stop"')"
STREAM+='data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}\n\ndata: [DONE]\n\n'

cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK;
  proxy_temp_path $WORK;
  fastcgi_temp_path $WORK;
  uwsgi_temp_path $WORK;
  scgi_temp_path $WORK;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP_PORT;
    location = /json/v1/chat/completions { default_type application/json; return 200 '$COMPLETION'; }
    location = /sse/v1/chat/completions { default_type text/event-stream; return 200 '$STREAM'; }
  }
}
EOF
"$NGINX" -c "$WORK/nginx.conf" -p "$WORK"

cat > "$WORK/lumina.toml" <<EOF
[demo]
enabled = false

[[providers]]
name = "json"
kind = "openai"
base_url = "http://127.0.0.1:$UP_PORT/json/v1"
models = { fast = "bench", balanced = "bench", reasoning = "bench" }

[[providers]]
name = "sse"
kind = "openai"
base_url = "http://127.0.0.1:$UP_PORT/sse/v1"
models = { fast = "bench", balanced = "bench", reasoning = "bench" }

[[providers]]
name = "simulated"
kind = "simulated"
models = { reasoning = "sim" }
[providers.simulated]
completion_tokens = 9

[routes.fast]
providers = ["json"]
[routes.balanced]
providers = ["sse"]
[routes.reasoning]
providers = ["simulated"]
EOF

echo "building lumina (release)" >&2
cargo build --release --locked --bin lumina >&2
export LUMINA_ADMIN_KEY="bench-admin-key-0123456789"
LUMINA_LOG=warn "$CARGO_TARGET_DIR/release/lumina" serve --config "$WORK/lumina.toml" \
  --data-dir "$WORK/data" --listen "127.0.0.1:$GW_PORT" > "$WORK/lumina.out" 2>&1 &
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$GW_PORT/readyz" >/dev/null && break; sleep 0.1; done
ACCOUNT=$(curl -sf "http://127.0.0.1:$GW_PORT/admin/accounts" -H "Authorization: Bearer $LUMINA_ADMIN_KEY" \
  -d '{"name":"bench","credits":"1000000"}' | python3 -c 'import sys,json; print(json.load(sys.stdin)["id"])')
KEY=$(curl -sf "http://127.0.0.1:$GW_PORT/admin/keys" -H "Authorization: Bearer $LUMINA_ADMIN_KEY" \
  -d "{\"account_id\":\"$ACCOUNT\",\"name\":\"bench\"}" | python3 -c 'import sys,json; print(json.load(sys.stdin)["key"])')

BODY='{"model":"lumina-fast","max_tokens":64,"messages":[{"role":"user","content":"Give me the fixed answer, please."}]}'
SBODY='{"model":"lumina-balanced","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"Give me the fixed answer, please."}]}'
SIMBODY='{"model":"lumina-reasoning","max_tokens":64,"messages":[{"role":"user","content":"Give me the fixed answer, please."}]}'
SIMSBODY='{"model":"lumina-reasoning","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"Give me the fixed answer, please."}]}'

# run NAME URL BODY [oha flags…] → one JSON line of results
run() {
  local name=$1 url=$2 body=$3; shift 3
  "$OHA" --no-tui --output-format json -z "${SECONDS_PER_RUN}s" -m POST \
    -H "Authorization: Bearer $KEY" -H "content-type: application/json" -d "$body" "$@" "$url" \
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

GW="http://127.0.0.1:$GW_PORT/v1/chat/completions"
UP_JSON="http://127.0.0.1:$UP_PORT/json/v1/chat/completions"
UP_SSE="http://127.0.0.1:$UP_PORT/sse/v1/chat/completions"
{
  run direct-1000rps "$UP_JSON" "$BODY" -c 16 -q 1000 --latency-correction
  run lumina-1000rps "$GW" "$BODY" -c 16 -q 1000 --latency-correction
  run direct-stream-1000rps "$UP_SSE" "$SBODY" -c 16 -q 1000 --latency-correction
  run lumina-stream-1000rps "$GW" "$SBODY" -c 16 -q 1000 --latency-correction
  run direct-max "$UP_JSON" "$BODY" -c 32
  run lumina-max "$GW" "$BODY" -c 32
  run direct-stream-max "$UP_SSE" "$SBODY" -c 32
  run lumina-stream-max "$GW" "$SBODY" -c 32
  run lumina-simulated-max "$GW" "$SIMBODY" -c 32
  run lumina-simulated-stream-max "$GW" "$SIMSBODY" -c 32
} > "$WORK/results.jsonl"

EVENTS=$(curl -sf "http://127.0.0.1:$GW_PORT/readyz" | python3 -c 'import sys,json; print(json.load(sys.stdin)["log"]["committed_position"])')
python3 - "$WORK/results.jsonl" "$EVENTS" <<'PY'
import json, sys
rows = {r["name"]: r for r in map(json.loads, open(sys.argv[1]))}
print(f"{'run':<24}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'success':>10}")
for name, r in rows.items():
    print(f"{name:<24}{r['rps']:>10.0f}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}{r['success']:>10.3f}")
for kind in ["", "stream-"]:
    d, l = rows[f"direct-{kind}1000rps"], rows[f"lumina-{kind}1000rps"]
    print(f"added latency at 1000 rps ({kind or 'non-'}stream): p50 {l['p50_ms'] - d['p50_ms']:.3f} ms, p99 {l['p99_ms'] - d['p99_ms']:.3f} ms")
print(f"events committed to the local log during the run: {sys.argv[2]}")
PY

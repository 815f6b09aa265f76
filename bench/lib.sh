# Shared by the benchmarks that drive the running binary (sourced, not run): tools (oha,
# nginx), a temp dir, a fixed-response upstream (nginx) with one completion and one stream,
# a lumina.toml routing fast → JSON, balanced → SSE, reasoning → the simulated provider, and
# start_lumina, which serves a binary on a fresh port and data dir with a funded key.
CACHE="${LUMINA_CACHE:-$HOME/.cache/lumina}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
OHA="$CACHE/tools/bin/oha"
WORK="$(mktemp -d)"
# Children of the jobs too: a WRAP= wrapper (heaptrack, valgrind) does not pass the signal on.
trap 'for j in $(jobs -p); do pkill -P "$j" 2>/dev/null || true; kill "$j" 2>/dev/null || true; done; [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null; rm -rf "$WORK"' EXIT

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

${EXTRA_CONFIG:-}
EOF

export LUMINA_ADMIN_KEY="bench-admin-key-0123456789"

# lumina_binary [PREBUILT] → the path of the lumina to measure: PREBUILT when given, else this
# checkout built in release
lumina_binary() {
  if [ -n "${1:-}" ]; then
    echo "$1"
  else
    echo "building lumina (release)" >&2
    cargo build --release --locked --bin lumina >&2 || return 1
    echo "$CARGO_TARGET_DIR/release/lumina"
  fi
}

# start_lumina BIN NAME → serves on a fresh port and data dir; sets GW and KEY
start_lumina() {
  local bin=$1 name=$2 port
  port=$(free_port)
  LUMINA_LOG=warn ${WRAP:-} "$bin" serve --config "$WORK/lumina.toml" \
    --data-dir "$WORK/data-$name" --listen "127.0.0.1:$port" > "$WORK/lumina-$name.out" 2>&1 &
  LUMINA_PID=$!
  for _ in $(seq 1 "${READY_TRIES:-100}"); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  local account
  account=$(curl -sf "http://127.0.0.1:$port/admin/accounts" -H "Authorization: Bearer $LUMINA_ADMIN_KEY" \
    -d '{"name":"bench","credits":"1000000"}' | python3 -c 'import sys,json; print(json.load(sys.stdin)["id"])')
  KEY=$(curl -sf "http://127.0.0.1:$port/admin/keys" -H "Authorization: Bearer $LUMINA_ADMIN_KEY" \
    -d "{\"account_id\":\"$account\",\"name\":\"bench\"}" | python3 -c 'import sys,json; print(json.load(sys.stdin)["key"])')
  GW_PORT=$port
  GW="http://127.0.0.1:$port/v1/chat/completions"
}

# consumer_lag → the events the embedded consumers of the gateway at $GW_PORT have yet to apply
consumer_lag() {
  curl -sf "http://127.0.0.1:$GW_PORT/metrics" \
    | awk '/^lumina_consumer_lag_events/ { s += $2 } END { print s + 0 }'
}

# wait_caught_up SECONDS → returns once the consumers applied every event, or after SECONDS
wait_caught_up() {
  local tries=$(( $1 * 5 ))
  for _ in $(seq 1 "$tries"); do [ "$(consumer_lag)" = 0 ] && return 0; sleep 0.2; done
}

BODY='{"model":"lumina-fast","max_tokens":64,"messages":[{"role":"user","content":"Give me the fixed answer, please."}]}'
SBODY='{"model":"lumina-balanced","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"Give me the fixed answer, please."}]}'
SIMBODY='{"model":"lumina-reasoning","max_tokens":64,"messages":[{"role":"user","content":"Give me the fixed answer, please."}]}'
SIMSBODY='{"model":"lumina-reasoning","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"Give me the fixed answer, please."}]}'


#!/usr/bin/env bash
# Lag from a request's settlement to a consumer's view of it: lumina serve (release, simulated
# upstream, zero latency) under a fixed 1,000 requests/s; afterwards, for every settlement,
# the time between the RequestSettled event (occurred_at) and the transaction in which the
# consumer applied it (consumer_applied_events.applied_at) — for `ledger` that is the
# settlement reaching the balance, for `projector` reaching /v1/usage and /v1/requests.
# Prints p50/p99/max.
#
# Usage: bench/lag.sh ledger|projector [seconds, default 20]
# With LUMINA_DATABASE_URL=postgres://… the read models and ledger live in PostgreSQL.
# With DISTRIBUTED=1 as well (and LUMINA_TEST_KAFKA_LIBS, Apache Kafka's jars, which
# scripts/test.sh copies into the cache): distributed mode — a single-node Kafka on free ports
# (scripts/kafka/server.properties), `lumina gateway` shipping to it, `lumina ledger` and
# `lumina projector` on the topic in their consumer groups (ASSIGNMENT=all: every partition
# each) — so the lag is produce-to-apply through the broker. oha's latency percentiles are
# printed too, to compare the gateway with and without the shipper. HEADERS=true ships
# with the event_type/event_id message headers (kafka.headers); KAFKA_SETTINGS='"linger.ms" = "5"'
# adds librdkafka settings ([kafka.settings]). SHIPPER_ONLY=1 stops both
# consumers before the load: the gateway's latency with the shipper and broker alone (with
# NO_BROKER=1 the broker is stopped too). KEEP=1 keeps the work dir.
set -euo pipefail
cd "$(dirname "$0")/.."

CONSUMER="${1:?usage: bench/lag.sh ledger|projector [seconds]}"
case "$CONSUMER" in ledger|projector) ;; *) echo "unknown consumer: $CONSUMER" >&2; exit 2 ;; esac
SECONDS_PER_RUN="${2:-20}"
CACHE="${LUMINA_CACHE:-$HOME/.cache/lumina}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
OHA="$CACHE/tools/bin/oha"
WORK="$(mktemp -d)"; [ -z "${KEEP:-}" ] || echo "work dir: $WORK" >&2
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT

[ -x "$OHA" ] || cargo install oha --locked --root "$CACHE/tools" >&2
cargo build --release --locked --bin lumina >&2
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export LUMINA_ADMIN_KEY="bench-admin-key-0123456789"
cat > "$WORK/lumina.toml" <<TOML
[demo]
enabled = false
TOML
MODE=serve
if [ "${DISTRIBUTED:-0}" = 1 ]; then
  : "${LUMINA_DATABASE_URL:?DISTRIBUTED=1 needs LUMINA_DATABASE_URL (PostgreSQL)}"
  LIBS="${LUMINA_TEST_KAFKA_LIBS:?DISTRIBUTED=1 needs LUMINA_TEST_KAFKA_LIBS (the Kafka jars scripts/test.sh fetches)}"
  KPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  CPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  sed -e "s/@PORT@/$KPORT/g" -e "s/@CONTROLLER_PORT@/$CPORT/g" -e "s|@LOG_DIR@|$WORK/kafka|g" \
    scripts/kafka/server.properties > "$WORK/server.properties"
  KAFKA_JVM="-Xms1g -Xmx1g -XX:+UseG1GC -Dorg.slf4j.simpleLogger.defaultLogLevel=warn"
  # shellcheck disable=SC2086
  java $KAFKA_JVM -cp "$LIBS/*" kafka.tools.StorageTool format --standalone \
    --cluster-id THVtaW5hVGVzdENsdXN0ZQ --config "$WORK/server.properties" >/dev/null
  # shellcheck disable=SC2086
  java $KAFKA_JVM -cp "$LIBS/*" kafka.Kafka "$WORK/server.properties" > "$WORK/kafka.out" 2>&1 &
  BROKER_PID=$!
  for _ in $(seq 1 600); do (echo > "/dev/tcp/127.0.0.1/$KPORT") 2>/dev/null && break; sleep 0.1; done
  printf '[database]\nurl = "%s"\n[kafka]\nbrokers = "127.0.0.1:%s"\nassignment = "%s"\nheaders = %s\n' \
    "$LUMINA_DATABASE_URL" "$KPORT" "${ASSIGNMENT:-group}" "${HEADERS:-false}" >> "$WORK/lumina.toml"
  [ -z "${KAFKA_SETTINGS:-}" ] || printf '[kafka.settings]\n%s\n' "$KAFKA_SETTINGS" >> "$WORK/lumina.toml"
  CONSUMER_PIDS=""
  for c in ledger projector; do
    LUMINA_LOG=warn "$CARGO_TARGET_DIR/release/lumina" $c --config "$WORK/lumina.toml" > "$WORK/$c.out" 2>&1 &
    CONSUMER_PIDS="$CONSUMER_PIDS $!"
  done
  export LUMINA_KEY_SECRET=$(python3 -c 'print("ab" * 32)')
  MODE=gateway
fi
LUMINA_LOG=warn "$CARGO_TARGET_DIR/release/lumina" $MODE --config "$WORK/lumina.toml" \
  --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" > "$WORK/lumina.out" 2>&1 &
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
ACCOUNT=$(curl -sf "http://127.0.0.1:$PORT/admin/accounts" -H "Authorization: Bearer $LUMINA_ADMIN_KEY" \
  -d '{"name":"lag","credits":"1000000"}' | python3 -c 'import sys,json; print(json.load(sys.stdin)["id"])')
KEY=$(curl -sf "http://127.0.0.1:$PORT/admin/keys" -H "Authorization: Bearer $LUMINA_ADMIN_KEY" \
  -d "{\"account_id\":\"$ACCOUNT\",\"name\":\"lag\"}" | python3 -c 'import sys,json; print(json.load(sys.stdin)["key"])')
if [ -n "${SHIPPER_ONLY:-}" ]; then
  # The gateway's latency with the shipper and the broker alone: no consumer competes for the
  # cores during the load, so there is no lag to report afterwards.
  kill $CONSUMER_PIDS
  # NO_BROKER=1 as well: the broker goes too, so the shipper only queues.
  [ -z "${NO_BROKER:-}" ] || { kill -9 "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true; }
fi
"$OHA" --no-tui -z "${SECONDS_PER_RUN}s" -q 1000 -c 16 -m POST -H "Authorization: Bearer $KEY" \
  -H "content-type: application/json" \
  -d '{"model":"lumina-fast","max_tokens":32,"messages":[{"role":"user","content":"hello there"}]}' \
  "http://127.0.0.1:$PORT/v1/chat/completions" | grep -E "Success rate|Requests/sec|50.00%|99.00%" >&2
# Both consumers: settlements are found through the ledger's journal.
[ -z "${SHIPPER_ONLY:-}" ] || exit 0
COUNT="SELECT COUNT(*) FROM consumer_applied_events"
count() {
  if [ -n "${LUMINA_DATABASE_URL:-}" ]; then psql "$LUMINA_DATABASE_URL" -qAtc "$COUNT"
  else python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])' "$WORK/data/lumina.db" "$COUNT"; fi
}
# Wait until the consumers stop advancing (they caught up).
LAST=-1
for _ in $(seq 1 300); do
  sleep 2
  NOW=$(count)
  [ "$NOW" = "$LAST" ] && break
  LAST=$NOW
done
QUERY="SELECT a.applied_at - e.occurred_at FROM ledger_entries e
       JOIN consumer_applied_events a ON a.event_id = e.event_id AND a.consumer = '$CONSUMER'
       WHERE e.kind = 'settle'"
if [ -n "${LUMINA_DATABASE_URL:-}" ]; then
  psql "$LUMINA_DATABASE_URL" -qAtc "$QUERY" > "$WORK/lags"
else
  python3 - "$WORK/data/lumina.db" "$QUERY" > "$WORK/lags" <<'PY'
import sqlite3, sys
for (lag,) in sqlite3.connect(sys.argv[1]).execute(sys.argv[2]):
    print(lag)
PY
fi
python3 - "$WORK/lags" "$CONSUMER" <<'PY'
import sys
lags = sorted(int(l) for l in open(sys.argv[1]) if l.strip())
if not lags:
    sys.exit("no settlements journaled")
pct = lambda p: lags[min(len(lags) - 1, int(round(p * (len(lags) - 1))))] / 1000
print(f"settlements applied by {sys.argv[2]}: {len(lags)}")
print(f"settlement → {sys.argv[2]} lag: p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, max {lags[-1] / 1000:.1f} ms")
PY

#!/usr/bin/env bash
# The dashboard on a big database: REQUESTS requests (default 200,000) through `lumina serve`
# on the simulated provider into one large account, 100 into a small one, then each page's data
# request timed (curl, signed in as the admin, 20 times each: median and max). Fails when a
# page's median is 200 ms or more. Prints SQLite's query plan of each page's reads.
#
# Usage: bench/dashboard.sh [REQUESTS]
#   LUMINA=/path/to/lumina uses that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS="${1:-200000}"
. bench/lib.sh

BIN=$(lumina_binary "${LUMINA:-}")
start_lumina "$BIN" dash
BASE="http://127.0.0.1:$GW_PORT"
DB="$WORK/data-dash/lumina.db"
admin() { curl -sf "$BASE$1" -H "Authorization: Bearer $LUMINA_ADMIN_KEY" "${@:2}"; }
json() { python3 -c "import sys,json; print(json.load(sys.stdin)$1)"; }

SMALL=$(admin /admin/accounts -d '{"name":"small","credits":"1000"}' | json '["id"]')
SMALL_KEY=$(admin /admin/keys -d "{\"account_id\":\"$SMALL\",\"name\":\"small\"}" | json '["key"]')

echo "sending 100 requests to a small account, then $REQUESTS to a large one" >&2
# The small account's requests are the oldest: finding them must not mean walking the others.
"$OHA" --no-tui -n 100 -c 4 -m POST -H "Authorization: Bearer $SMALL_KEY" \
  -H "content-type: application/json" -d "$SIMBODY" "$GW" > /dev/null
"$OHA" --no-tui -n "$REQUESTS" -c 32 -m POST -H "Authorization: Bearer $KEY" \
  -H "content-type: application/json" -d "$SIMBODY" "$GW" > /dev/null
TRACED=$(curl -s -D - -o /dev/null "$GW" -H "Authorization: Bearer $KEY" -H "content-type: application/json" \
  -d "$SIMBODY" | tr -d '\r' | sed -n 's/^x-request-id: //p')

# The views catch up.
python3 - "$DB" "$((REQUESTS + 101))" <<'PY'
import sqlite3, sys, time
db, want = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 600
while True:
    n = sqlite3.connect(db).execute("SELECT COUNT(*) FROM requests WHERE settled_at IS NOT NULL").fetchone()[0]
    if n >= want or time.time() > deadline:
        print(f"{n} settled requests in the request views", file=sys.stderr)
        break
    time.sleep(1)
PY
BIG=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"SELECT account_id FROM requests WHERE request_id = ?\", (sys.argv[2],)).fetchone()[0])" "$DB" "$TRACED")

# Sign in as the admin, as a browser would.
JAR="$WORK/cookies"
CSRF=$(curl -s -c "$JAR" "$BASE/dashboard/login" | sed -n 's/.*name="csrf" value="\([0-9a-f]*\)".*/\1/p')
curl -s -b "$JAR" -c "$JAR" -o /dev/null -d "csrf=$CSRF" --data-urlencode "key=$LUMINA_ADMIN_KEY" "$BASE/dashboard/login"

PAGES=(
  "/dashboard"
  "/dashboard?hours=720"
  "/dashboard/requests"
  "/dashboard/requests?path=reasoning&status=completed"
  "/dashboard/requests?status=failed"
  "/dashboard/requests?account_id=$SMALL"
  "/dashboard/requests?account_id=$BIG&status=cancelled"
  "/dashboard/requests/$TRACED"
  "/dashboard/usage?account_id=$BIG&days=30"
  "/dashboard/usage.csv?account_id=$BIG&days=30"
  "/dashboard/accounts"
  "/dashboard/accounts/$BIG"
  "/dashboard/accounts/$BIG/statement"
  "/dashboard/accounts/$BIG/statement?before=100000"
  "/dashboard/providers"
  "/dashboard/policies"
)
: > "$WORK/times"
for page in "${PAGES[@]}"; do
  for _ in $(seq 1 20); do
    out=$(curl -s -b "$JAR" -o /dev/null -w '%{http_code} %{time_total}' "$BASE$page")
    echo "$page $out" >> "$WORK/times"
  done
done
python3 - "$WORK/times" "$REQUESTS" <<'PY'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    page, code, secs = line.rsplit(" ", 2)
    rows.setdefault(page, []).append((int(code), float(secs)))
print(f"{'page (admin, ' + sys.argv[2] + ' requests)':<72}{'median ms':>10}{'max ms':>10}")
slow = []
for page, got in rows.items():
    codes = {c for c, _ in got}
    ms = sorted(s * 1000 for _, s in got)
    med = statistics.median(ms)
    shown = page if len(page) < 70 else page[:67] + "..."
    print(f"{shown:<72}{med:>10.1f}{ms[-1]:>10.1f}" + ("" if codes == {200} else f"  HTTP {sorted(codes)}"))
    if med >= 200 or codes != {200}:
        slow.append(page)
if slow:
    print("over 200 ms or not 200:", *slow, sep="\n  ")
    sys.exit(1)
PY

# How SQLite reads each page's data (the queries the views run, with this run's values).
python3 - "$DB" "$BIG" "$SMALL" "$TRACED" <<'PY'
import sqlite3, sys
db, big, small, traced = sys.argv[1:]
c = sqlite3.connect(db)
cols = "request_id FROM requests"
plans = [
    ("requests, no filter", f"SELECT {cols} ORDER BY request_id DESC LIMIT 51", ()),
    ("requests of the small account", f"SELECT {cols} WHERE account_id = ?1 ORDER BY request_id DESC LIMIT 51", (small,)),
    ("requests by status", f"SELECT {cols} WHERE outcome = ?1 ORDER BY request_id DESC LIMIT 51", ("failed",)),
    ("requests of an account by status", f"SELECT {cols} WHERE account_id = ?1 AND outcome = ?2 ORDER BY request_id DESC LIMIT 51", (big, "cancelled")),
    ("requests by path and status", f"SELECT {cols} WHERE path = ?1 AND outcome = ?2 ORDER BY request_id DESC LIMIT 51", ("reasoning", "completed")),
    ("request trace", "SELECT * FROM requests WHERE request_id = ?", (traced,)),
    ("request attempts", "SELECT * FROM request_attempts WHERE request_id = ? ORDER BY attempt", (traced,)),
    ("usage", "SELECT * FROM usage_minutes WHERE account_id = ? AND minute >= ? AND minute < ? ORDER BY minute", (big, 0, 2**40)),
    ("overview", "SELECT * FROM path_hours WHERE account_id = ? AND hour >= ? AND hour < ? ORDER BY hour, path", ("", 0, 2**40)),
    ("providers", "SELECT * FROM route_stats ORDER BY path, deployment, task_class", ()),
    ("statement, days", "SELECT * FROM ledger_daily WHERE account_id = ? AND day >= ? AND day <= ? ORDER BY day", (big, "2000-01-01", "2999-12-31")),
    ("statement, entries", "SELECT e.id FROM ledger_entries e JOIN ledger_postings p ON p.entry_event_id = e.event_id WHERE e.id IN (SELECT id FROM ledger_entries WHERE account_id = ? AND id < ? ORDER BY id DESC LIMIT 50) ORDER BY e.id, p.line", (big, 100000)),
    ("accounts", "SELECT * FROM accounts ORDER BY created_at DESC, id DESC LIMIT 200", ()),
    ("keys of an account", "SELECT * FROM api_keys WHERE account_id = ?", (big,)),
]
for name, sql, params in plans:
    detail = [row[-1] for row in c.execute("EXPLAIN QUERY PLAN " + sql, params)]
    print(f"{name}: " + "; ".join(detail))
PY

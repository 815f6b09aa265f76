#!/usr/bin/env bash
# Runs every test of the workspace on a fresh Debian machine that has Rust: starts
# PostgreSQL (installing it when missing), creates the role the tests use, builds a venv with
# the OpenAI SDK, fetches Apache Kafka's jars from Maven Central once (installing Java and Maven
# when missing), installs Debian's Chromium and chromedriver when missing (the dashboard's
# browser test), then runs `cargo test --workspace`. Build output goes to a cache outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${LUMINA_CACHE:-$HOME/.cache/lumina}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
mkdir -p "$CACHE"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# PostgreSQL: the system cluster when we can be root, else a private cluster in the cache.
start_postgres() {
  if [ -z "$(pg_bin)" ]; then
    echo "PostgreSQL is not installed; installing it" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >/dev/null \
      || { as_root apt-get update >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >/dev/null; }
  fi
  if [ "$(id -u)" = 0 ] || command -v sudo >/dev/null; then
    local cluster
    cluster=$(pg_lsclusters -h 2>/dev/null | head -n 1)
    if [ -z "$cluster" ]; then
      as_root pg_createcluster "$(basename "$(dirname "$(pg_bin)")")" main >/dev/null
      cluster=$(pg_lsclusters -h | head -n 1)
    fi
    local version name port status
    read -r version name port status _ <<<"$cluster"
    if [ "$status" != "online" ]; then
      as_root pg_ctlcluster "$version" "$name" start
    fi
    as_root su postgres -c "psql -p $port -qAtc \"SELECT 1 FROM pg_roles WHERE rolname='lumina'\"" | grep -q 1 \
      || as_root su postgres -c "psql -p $port -qc \"CREATE ROLE lumina LOGIN CREATEDB PASSWORD 'lumina'\""
    PG_PORT=$port
  else
    local data="$CACHE/pgdata"
    PG_PORT=55432
    if [ ! -d "$data" ]; then
      "$(pg_bin)/initdb" -D "$data" -U lumina --auth=trust >/dev/null
    fi
    "$(pg_bin)/pg_ctl" -D "$data" -o "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1" -l "$CACHE/pg.log" status >/dev/null \
      || "$(pg_bin)/pg_ctl" -D "$data" -o "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1" -l "$CACHE/pg.log" -w start >/dev/null
  fi
  export LUMINA_TEST_DATABASE_URL="postgres://lumina:lumina@127.0.0.1:$PG_PORT/postgres"
  for _ in $(seq 1 50); do
    PGPASSWORD=lumina psql "$LUMINA_TEST_DATABASE_URL" -qAtc "SELECT 1" >/dev/null 2>&1 && break
    sleep 0.2
  done
  # Drop databases left by earlier runs.
  PGPASSWORD=lumina psql "$LUMINA_TEST_DATABASE_URL" -qAtc \
    "SELECT datname FROM pg_database WHERE datname LIKE 'lumina_t_%'" | while read -r db; do
      PGPASSWORD=lumina psql "$LUMINA_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db" >/dev/null || true
    done
}

# A Python with the official OpenAI and Anthropic SDKs, for the SDK compatibility tests.
setup_python() {
  local venv="$CACHE/venv"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" 2>/dev/null || {
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv >/dev/null
      python3 -m venv "$venv"
    }
  fi
  "$venv/bin/python" -c "import openai, anthropic" 2>/dev/null || "$venv/bin/pip" install -q openai anthropic
  export LUMINA_TEST_PYTHON="$venv/bin/python"
}

# Java 17 or later and Maven, for the Apache Kafka broker; from Debian when missing.
java_major() {
  java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1
}
setup_java() {
  if ! command -v java >/dev/null || [ "$(java_major)" -lt 17 ] || ! command -v mvn >/dev/null; then
    echo "installing Java and Maven from Debian" >&2
    { as_root apt-get update >/dev/null \
        && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y default-jdk-headless maven >/dev/null; } \
      || echo "could not install Java and Maven (installing needs root or sudo)" >&2
  fi
  command -v java >/dev/null && [ "$(java_major)" -ge 17 ] && command -v mvn >/dev/null || {
    echo "the distributed-mode tests need Java 17 or later and Maven (apt-get install default-jdk-headless maven)" >&2
    exit 1
  }
}

# Apache Kafka, the broker the distributed-mode tests start (each its own KRaft node on free
# ports): its jars copied once from Maven Central into the cache, again when the POM changes.
setup_kafka() {
  local libs="$CACHE/kafka/libs"
  local pom=scripts/kafka/pom.xml
  local stamp
  stamp=$(sha256sum "$pom" | cut -d' ' -f1)
  if [ "$(cat "$libs/.complete" 2>/dev/null)" != "$stamp" ]; then
    echo "copying Apache Kafka's jars into $libs (once)" >&2
    rm -rf "$libs"
    mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$libs"
    echo "$stamp" > "$libs/.complete"
  fi
  export LUMINA_TEST_KAFKA_LIBS="$libs"
}

# librdkafka is built with OpenSSL (TLS and SASL to managed Kafka).
if [ ! -f /usr/include/openssl/ssl.h ] || ! command -v pkg-config >/dev/null; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y libssl-dev pkg-config >/dev/null
fi

# Debian's Chromium and its WebDriver, for the dashboard's browser test.
setup_chromium() {
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "installing Chromium and chromedriver from Debian" >&2
    { as_root apt-get update >/dev/null \
        && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver >/dev/null; } \
      || echo "could not install chromium and chromium-driver (installing needs root or sudo)" >&2
  fi
  command -v chromium >/dev/null && command -v chromedriver >/dev/null || {
    echo "the dashboard's browser test needs chromium and chromedriver (apt-get install chromium chromium-driver)" >&2
    exit 1
  }
  export LUMINA_TEST_CHROMIUM="$(command -v chromium)" LUMINA_TEST_CHROMEDRIVER="$(command -v chromedriver)"
}

start_postgres
echo "PostgreSQL ready at 127.0.0.1:$PG_PORT" >&2
setup_python
setup_java
setup_kafka
setup_chromium
cargo test --workspace --locked "$@"

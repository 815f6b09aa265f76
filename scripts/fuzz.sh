#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 60) and fails on the first
# crash, leak or timeout. Installs what it needs when missing: Rust nightly (rustup, minimal
# profile) and cargo-fuzz (crates.io). Build output goes to a cache outside the clone.
#
#   ./scripts/fuzz.sh [SECONDS] [TARGET...]
#
# The committed corpora (fuzz/corpus/<target>, and the schema fixtures for avro_event) are read
# as seeds and never written: new inputs go to a temporary corpus. A crash leaves its input in
# fuzz/artifacts/<target>/ and the command to reproduce it in the output.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH="${1:-60}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(chat_request sse anthropic_request avro_event config)
fi
CACHE="${LUMINA_CACHE:-$HOME/.cache/lumina}"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing Rust nightly (minimal profile)" >&2
  rustup toolchain install nightly --profile minimal >&2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked >&2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for target in "${TARGETS[@]}"; do
  seeds=(fuzz/corpus/"$target")
  if [ "$target" = avro_event ]; then
    seeds=(schemas/tests/fixtures)
  fi
  mkdir -p "$work/$target"
  echo "fuzz.sh: $target for ${SECONDS_EACH}s" >&2
  cargo +nightly fuzz run "$target" --fuzz-dir fuzz --target-dir "$CACHE/fuzz-target" \
    "$work/$target" "${seeds[@]}" -- \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
done
echo "fuzz.sh: ${#TARGETS[@]} targets, ${SECONDS_EACH}s each, no crash" >&2

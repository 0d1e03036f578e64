#!/usr/bin/env bash
# tunelake against the peers (DuckDB, Polars + delta-rs, PySpark) on the same generated data:
#   benches/run.sh --scale 10 [--seed 42] [--reps 3] [--peers duckdb polars_delta pyspark]
# Sets up the peers' virtualenv (shared/peers/setup.sh), generates the data once per scale,
# builds tunelake in release, then runs every contender full and incremental, alternating,
# and writes the table into benches/README.md. Not part of CI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
peers="${PEERS_DIR:-$here/../../shared/peers}"
# A read-only peers folder (as shared/ is mounted on some machines) is set up in a copy.
if [ ! -x "$peers/venv/bin/python" ] && [ ! -w "$peers" ]; then
  copy="$HOME/.cache/tunelake/peers"
  mkdir -p "$copy" && cp -r "$peers"/. "$copy"/ && chmod -R u+w "$copy"
  peers="$copy"
fi
[ -x "$peers/venv/bin/python" ] || "$peers/setup.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tunelake/target}"
(cd "$here/.." && cargo build --release --quiet)
exec "$peers/venv/bin/python" "$here/run.py" --peers-dir "$peers" \
  --tunelake "$CARGO_TARGET_DIR/release/tunelake" "$@"

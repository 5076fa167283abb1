#!/usr/bin/env bash
# Builds crius (release) and runs `crius serve` with the embedded default
# configuration (or /etc/crius/crius.toml when it exists). Extra arguments go
# to `crius serve`, e.g. `hack/run.sh --log-level debug`. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/install-deps.sh runtime
cargo build --release --locked
exec ./target/release/crius serve "$@"

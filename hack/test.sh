#!/usr/bin/env bash
# The whole test suite: installs what the tests need, checks formatting and
# lints, runs the unit tests and the end-to-end tests (which start real
# `crius serve` processes with temporary directories), a 30 s run of each
# fuzz target (hack/fuzz.sh), then the VM tier's CI
# set (hack/vm-e2e.sh: a cgroup-v2 guest kernel under qemu; skip it with
# CRIUS_SKIP_VM=1). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/install-deps.sh test
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
# The fuzz targets build and run for a bounded time (hack/fuzz.sh).
bash hack/fuzz.sh 30
if [ "${CRIUS_SKIP_VM:-}" != 1 ]; then
  bash hack/vm-e2e.sh --set ci
fi

#!/usr/bin/env bash
# The whole test suite: installs what the tests need, checks formatting and
# lints, then runs the unit tests and the end-to-end tests (which start real
# `crius serve` processes with temporary directories). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/install-deps.sh test
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked

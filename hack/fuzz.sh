#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/, cargo-fuzz layout) and runs each for a
# bounded time: hack/fuzz.sh [SECONDS] (default 30). CI runs it from
# hack/test.sh. A run starts from the committed seeds (fuzz/seeds/<target>,
# read only) and a scratch corpus; a crash fails the run and leaves its
# input under fuzz/artifacts/<target>/.
#
# With cargo-fuzz installed (`cargo install cargo-fuzz`) the build is
# `cargo fuzz build --sanitizer none` (stable Rust: the sanitizers need
# nightly); without it, plain cargo with the flags cargo-fuzz 0.13 passes
# for that build (libFuzzer's coverage instrumentation, debug assertions
# and overflow checks on), for the host target only so build scripts and
# proc macros stay uninstrumented (CRIUS_FUZZ_PLAIN=1 takes that path even
# where cargo-fuzz is installed).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-30}
targets=(spdy_frame)
host=$(rustc -vV | sed -n 's/^host: //p')
if [ -z "${CRIUS_FUZZ_PLAIN:-}" ] && cargo fuzz --version >/dev/null 2>&1; then
  cargo fuzz build --sanitizer none "${targets[@]}"
else
  RUSTFLAGS="-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
    -Cllvm-args=-sanitizer-coverage-stack-depth \
    -Ccodegen-units=1 -Cdebug-assertions -Coverflow-checks --cfg fuzzing" \
    cargo build --locked --release --target "$host" --bins
fi
for t in "${targets[@]}"; do
  corpus=$(mktemp -d)
  trap 'rm -rf "$corpus"' EXIT
  mkdir -p "artifacts/$t"
  "target/$host/release/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 "$corpus" "seeds/$t"
  rm -rf "$corpus"
  trap - EXIT
done
echo "fuzz: ${targets[*]}: ${secs} s each, no crash"

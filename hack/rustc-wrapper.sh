#!/usr/bin/env bash
# Cargo's rustc wrapper for crius (.cargo/config.toml): called as
# `rustc-wrapper.sh RUSTC ARGS...` (RUSTC may be clippy-driver followed by
# rustc). It adds `-C target-feature=+crt-static -C panic=abort` to the
# final compile of the per-pod binaries, crius-monitor and crius-pod-init,
# and passes every other compile through unchanged.
#
# crt-static on the binary's own compile is enough: rustc decides the
# static link (static-pie) and picks the static C runtime of std's
# `#[link(cfg(target_feature = "crt-static"))]` attributes when it links
# the binary. panic=abort: a panic in the monitor or in a child it forked
# (before exec) stops that process at once instead of unwinding through
# state it shares with its parent; nothing in these programs catches one.
per_pod=
pod_init=
prev=
bin=
for a in "$@"; do
  case "$a" in
    crius_monitor) [ "$prev" = --crate-name ] && per_pod=1 ;;
    crius_pod_init) [ "$prev" = --crate-name ] && per_pod=1 pod_init=1 ;;
    bin) [ "$prev" = --crate-type ] && bin=1 ;;
  esac
  prev=$a
done
if [ -n "$pod_init" ] && [ -n "$bin" ]; then
  exec "$@" -C target-feature=+crt-static -C panic=abort \
    -C link-arg=-nostartfiles -C link-arg=-nostdlib
fi
if [ -n "$per_pod" ] && [ -n "$bin" ]; then
  exec "$@" -C target-feature=+crt-static -C panic=abort
fi
exec "$@"

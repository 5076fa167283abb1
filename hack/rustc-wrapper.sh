#!/usr/bin/env bash
# Cargo's rustc wrapper for crius (.cargo/config.toml): called as
# `rustc-wrapper.sh RUSTC ARGS...` (RUSTC may be clippy-driver followed by
# rustc). It adds flags to the final compile of the per-pod binaries and
# passes every other compile through unchanged:
# - crius-monitor: `-C target-feature=+crt-static -C panic=abort`; in a
#   profile with LTO (release) also `-C opt-level=z -C lto=fat
#   -C codegen-units=1`: LTO runs in this compile, so the monitor's code
#   (std, the library, its crates) is optimised for size and
#   deduplicated across crates there, while the daemon keeps the
#   profile's settings (Cargo.toml: opt-level z with the hot crates at 3,
#   fat LTO; the monitor measured with opt-level 3 and thin LTO then).
#   Measured with hack/footprint.sh:
#   2364 -> 2060 KiB, 0.18 MiB less RSS and 0.02 MiB less PSS per pod
#   (README, "Memory per pod").
# - crius-pod-init: crt-static, panic=abort and `-nostartfiles -nostdlib`:
#   a `#![no_std]` program with its own `_start` (src/sys/raw.rs); at the
#   profile's opt-level 3 it has one relocation, the one its start checks
#   (z made it larger, with 8-9 relocations, and pulled in core's
#   formatting). The release profile is opt-level s or z for the daemon's
#   sake (Cargo.toml), so the pod init's compile gets `-C opt-level=3`
#   back (the last -C opt-level wins) whenever the profile's is s or z.
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
lto=
opt3=()
for a in "$@"; do
  case "$a" in
    lto=thin | lto=fat | lto=true) [ "$prev" = -C ] && lto=1 ;;
    opt-level=s | opt-level=z) [ "$prev" = -C ] && opt3=(-C opt-level=3) ;;
    crius_monitor) [ "$prev" = --crate-name ] && per_pod=1 ;;
    crius_pod_init) [ "$prev" = --crate-name ] && per_pod=1 pod_init=1 ;;
    bin) [ "$prev" = --crate-type ] && bin=1 ;;
  esac
  prev=$a
done
if [ -n "$pod_init" ] && [ -n "$bin" ]; then
  exec "$@" -C target-feature=+crt-static -C panic=abort \
    -C link-arg=-nostartfiles -C link-arg=-nostdlib "${opt3[@]}"
fi
if [ -n "$per_pod" ] && [ -n "$bin" ] && [ -n "$lto" ]; then
  exec "$@" -C target-feature=+crt-static -C panic=abort \
    -C opt-level=z -C lto=fat -C codegen-units=1
fi
if [ -n "$per_pod" ] && [ -n "$bin" ]; then
  exec "$@" -C target-feature=+crt-static -C panic=abort
fi
exec "$@"

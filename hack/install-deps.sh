#!/usr/bin/env bash
# Installs what crius and its tests need on Debian 12, idempotently.
# Usage: hack/install-deps.sh [runtime|test|bench]   (default: test)
set -euo pipefail
what=${1:-test}

# Debian packages. runtime: what `crius serve` uses on a node, and what
# building it needs (libseccomp compiles the seccomp profiles).
runtime_pkgs=(containernetworking-plugins iptables iproute2 ca-certificates libseccomp-dev pkg-config)
# test: what the test suites drive (a local registry, test images, the VM tier).
test_pkgs=("${runtime_pkgs[@]}" docker-registry openssl busybox-static skopeo umoci apache2-utils
  # hack/critest-images.sh compiles two tiny static programs
  gcc libc6-dev
  # hack/fuzz.sh: libfuzzer-sys compiles libFuzzer (C++)
  g++
  jq procps psmisc util-linux e2fsprogs iputils-ping
  # e2e streaming_tls makes a self-signed certificate
  openssl
  # the VM tier (hack/vm-e2e.sh): qemu, kmod's depmod/modprobe for the guest
  # kernel's modules, and systemd + D-Bus for the guest's systemd mode
  qemu-system-x86 kmod systemd dbus)
# bench: hack/bench.sh also runs containerd (with runc) side by side.
bench_pkgs=("${test_pkgs[@]}" containerd runc)

case "$what" in
  runtime) pkgs=("${runtime_pkgs[@]}") ;;
  test) pkgs=("${test_pkgs[@]}") ;;
  bench) pkgs=("${bench_pkgs[@]}") ;;
  *) echo "usage: $0 [runtime|test|bench]" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rust: Debian 12's own rustc is too old for this crate (edition 2024).
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a Rust toolchain >= 1.85 with rustup (https://rustup.rs)" >&2
  exit 1
fi

#!/usr/bin/env bash
# Runs the CRI validation suite (critest, from kubernetes-sigs/cri-tools)
# against a throw-away crius, offline: the images critest pulls are rebuilt by
# hack/critest-images.sh and served by a local registry (hack/registry.sh) to
# which registry.k8s.io, k8s.gcr.io, gcr.io and docker.io are redirected with
# hosts.toml. We do not build critest: point CRITEST at your binary.
#   CRITEST=/path/to/critest hack/critest.sh [critest/ginkgo flags...]
#   e.g. hack/critest.sh --ginkgo.focus='Image Manager'
# CRIUS=/path/to/crius uses that binary instead of `cargo build`'s.
# CRICTL=/path/to/crictl (default: next to critest, else on PATH) removes the
# pods critest leaves behind (specs that fail half-way) before crius stops.
# KEEP=1 keeps the temp dir (daemon log, config) for a look afterwards.
# Everything (crius, registry, temp dirs, the test bridge) is removed on exit.
# Needs root, docker-registry, skopeo, umoci, busybox-static, gcc
# (hack/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

if [[ -z "${CRITEST:-}" ]]; then
  echo "CRITEST is not set: build critest from kubernetes-sigs/cri-tools and set CRITEST=/path/to/critest" >&2
  exit 2
fi
[[ -x "$CRITEST" ]] || { echo "CRITEST=$CRITEST is not an executable" >&2; exit 2; }

if [[ -z "${CRIUS:-}" ]]; then
  cargo build --quiet
  CRIUS="${CARGO_TARGET_DIR:-$repo/target}/debug/crius"
fi

# The network of the test pods: its own bridge and subnet, so it never meets
# a real crius's crius0 / 10.88.0.0/16.
bridge=critest0
subnet=10.99.0.0/16

# Pods go in cgroups under this parent (and their monitors in
# <parent>-monitors), which belong to this script alone.
cgroup_parent=crius-critest

crictl=${CRICTL:-$(dirname "$CRITEST")/crictl}
[[ -x "$crictl" ]] || crictl=$(command -v crictl || true)

tmp=$(mktemp -d /tmp/crius-critest.XXXXXX)
crius_pid=
cleanup() {
  local rc=$?
  if [[ -n "$crius_pid" ]]; then
    # Pods left by failed specs, through the CRI (CNI DEL, monitors exit).
    if [[ -n "$crictl" ]] && kill -0 "$crius_pid" 2>/dev/null; then
      "$crictl" -r "unix://$tmp/crius.sock" -i "unix://$tmp/crius.sock" rmp -a -f >/dev/null 2>&1 || true
    fi
    kill -TERM "$crius_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$crius_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$crius_pid" 2>/dev/null || true
    wait "$crius_pid" 2>/dev/null || true
  fi
  # What is still alive: monitors (their command line names our state dir)
  # and the processes in our cgroups, killed by PID; then the cgroups.
  local pid cg
  for pid in $(grep -lF "$tmp/" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  for cg in /sys/fs/cgroup/*/"$cgroup_parent" /sys/fs/cgroup/*/"$cgroup_parent"-monitors \
    /sys/fs/cgroup/"$cgroup_parent" /sys/fs/cgroup/"$cgroup_parent"-monitors; do
    [[ -d "$cg" ]] || continue
    for pid in $(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null); do
      kill -KILL "$pid" 2>/dev/null || true
    done
    sleep 0.2
    find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  "$repo/hack/registry.sh" stop "$tmp/registry" || true
  ip link del "$bridge" 2>/dev/null || true
  if [[ "${KEEP:-}" == 1 ]]; then
    echo "kept $tmp" >&2
  else
    # Anything a test left mounted under the temp dir goes first.
    grep -o " $tmp/[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. Registry and images.
addr=$("$repo/hack/registry.sh" start "$tmp/registry")
"$repo/hack/critest-images.sh" build "$tmp/images"
"$repo/hack/critest-images.sh" push "$tmp/images" "$addr"

# 2. The upstream registries, redirected to it (paths do not collide:
# /v2/e2e-test-images/..., /v2/k8s-staging-cri-tools/..., /v2/pause).
for host in registry.k8s.io k8s.gcr.io gcr.io docker.io; do
  mkdir -p "$tmp/certs.d/$host"
  cat >"$tmp/certs.d/$host/hosts.toml" <<EOF
server = "http://$addr"
[host."http://$addr"]
  capabilities = ["pull", "resolve"]
EOF
done

# 3. crius, with temp root, state, socket and an empty CNI conf dir (the
# built-in network on its own bridge).
mkdir -p "$tmp/cni"
cat >"$tmp/crius.toml" <<EOF
listen = "$tmp/crius.sock"
root = "$tmp/root"
state = "$tmp/state"
log_level = "${CRIUS_LOG_LEVEL:-info}"
[cgroup]
default_parent = "/$cgroup_parent"
[registry]
config_path = "$tmp/certs.d"
[network]
conf_dir = "$tmp/cni"
default_bridge = "$bridge"
default_subnet = "$subnet"
EOF
"$CRIUS" serve --config "$tmp/crius.toml" >"$tmp/crius.log" 2>&1 &
crius_pid=$!
for _ in $(seq 200); do
  [[ -S "$tmp/crius.sock" ]] && break
  kill -0 "$crius_pid" 2>/dev/null || { cat "$tmp/crius.log" >&2; exit 1; }
  sleep 0.1
done
[[ -S "$tmp/crius.sock" ]] || { echo "crius did not listen on $tmp/crius.sock" >&2; cat "$tmp/crius.log" >&2; exit 1; }
echo "crius (pid $crius_pid) on $tmp/crius.sock, registry on $addr, log $tmp/crius.log" >&2

# 4. critest. The digest spec pulls test-image-digest@sha256:9700f9..., whose
# upstream bytes cannot be rebuilt here.
set +e
(cd "$tmp" && "$CRITEST" \
  -runtime-endpoint "unix://$tmp/crius.sock" \
  -image-endpoint "unix://$tmp/crius.sock" \
  --ginkgo.skip 'public image with digest should be pulled and removed' \
  "$@")
rc=$?
set -e
if ((rc != 0)); then
  echo "critest failed ($rc); last lines of the crius log:" >&2
  tail -n 40 "$tmp/crius.log" >&2
fi
exit "$rc"

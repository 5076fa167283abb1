#!/usr/bin/env bash
# Per-pod memory of crius: starts a release `crius serve` with temporary
# root, state, socket and cgroup parent, runs PODS pods (host network, PID
# mode POD) with one `sleep` container each through examples/cri-pods, then
# sums Rss and Pss (/proc/PID/smaps_rollup) of every crius process that
# appeared besides the daemon (monitors, pod inits and, with LOGS=1, the
# pods' log writers) and prints the total and the share of one pod. Stops what it started and removes its files,
# also on failure. Needs root, docker-registry, skopeo, umoci and
# busybox-static (hack/install-deps.sh).
# Then, with those pods, the latency of ListPodSandboxStats and
# ListContainerStats as a client sees it (STATS_ROUNDS calls each, after one
# sampler round has seen every pod) and the sampler's own round time (from
# its debug log).
#   hack/footprint.sh                      # the crius built here
#   PODS=100 hack/footprint.sh             # the stats RPCs' target: < 50 ms
#   CRIUS=/path/to/old/crius hack/footprint.sh   # another build, e.g. before a change
#   CRIUS=target/debug/crius CLIENT=target/debug/examples/cri-pods hack/footprint.sh
#                                          # prebuilt binaries, no build
#   DETAIL=1 hack/footprint.sh             # also the mappings of one process
#                                          # of each kind (smaps)
#   LOGS=1 hack/footprint.sh               # each container prints a line to
#                                          # a CRI log (a log writer per pod
#                                          # while it writes)
#   LOGS=1 SETTLE=8 hack/footprint.sh      # measured 8 s after the pods
#                                          # started (default 1): the log
#                                          # writers of quiet pods have ended
#   RUNTIME=containerd hack/footprint.sh   # the same pods on Debian's
#                                          # containerd and runc: sums its
#                                          # shims and pause processes
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/images.sh
source hack/lib/images.sh
# shellcheck source=lib/containerd.sh
source hack/lib/containerd.sh
pods=${PODS:-10}
runtime=${RUNTIME:-crius}
stats_rounds=${STATS_ROUNDS:-50}
target=${CARGO_TARGET_DIR:-target}
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 1; }
images_require_tools docker-registry

# CRIUS and CLIENT name prebuilt binaries (e.g. a debug build); else this
# tree's release build.
if [[ $runtime == containerd ]]; then
  images_require_tools gcc
  for tool in containerd containerd-shim-runc-v2 runc; do
    command -v "$tool" >/dev/null || { echo "$tool not installed (hack/install-deps.sh bench)" >&2; exit 1; }
  done
  [[ -n ${CLIENT:-} ]] || cargo build --release --quiet --example cri-pods
elif [[ -z ${CRIUS:-} || -z ${CLIENT:-} ]]; then
  cargo build --release --quiet --bins --example cri-pods
fi
crius=${CRIUS:-$(pwd)/$target/release/crius}
client=${CLIENT:-$(pwd)/$target/release/examples/cri-pods}

work=$(mktemp -d /tmp/crius-footprint-XXXXXX)
crius_pid=
sock="$work/crius.sock"
had_run_containerd=$([[ -e /run/containerd ]] && echo 1 || echo 0)
cleanup() {
  if [[ -n "$crius_pid" ]]; then
    "$client" "$sock" down >/dev/null 2>&1 || true
    kill "$crius_pid" 2>/dev/null && wait "$crius_pid" 2>/dev/null || true
  fi
  # containerd's shims outlive it too: stop the ones of this run.
  for pid in ${shims:-}; do kill -9 "$pid" 2>/dev/null || true; done
  for pid in ${shims:-}; do
    for _ in $(seq 50); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
  done
  [[ $runtime != containerd || $had_run_containerd == 1 ]] || rm -rf /run/containerd
  hack/registry.sh stop "$work/registry" >/dev/null 2>&1 || true
  # Monitors outlive the daemon by design: stop the ones of this run.
  for f in "$work"/state/pods/*/monitor.pid; do
    [[ -f "$f" ]] || continue
    pid=$(jq -r .pid "$f") && kill -9 "$pid" 2>/dev/null || true
  done
  sleep 0.5
  { grep -o " $work[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  for cg in /sys/fs/cgroup/crius-footprint* /sys/fs/cgroup/*/crius-footprint*; do
    [[ -d "$cg" ]] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  # A daemon that just ended may still have been writing below $work.
  rm -rf "$work" 2>/dev/null || { sleep 1; rm -rf "$work"; }
}
trap cleanup EXIT

# The image: busybox, pushed to a throw-away registry.
oci="$work/oci"
rootfs="$work/rootfs"
busybox_rootfs "$rootfs"
echo "root:x:0:0:root:/root:/bin/sh" >"$rootfs/etc/passwd"
echo "root:x:0:" >"$rootfs/etc/group"
layer_tar "$rootfs" "$work/base.tar"
umoci init --layout "$oci"
umoci new --image "$oci:busybox"
umoci raw add-layer --image "$oci:busybox" "$work/base.tar"
umoci config --image "$oci:busybox" --config.cmd sh --config.env PATH=/bin
addr=$(hack/registry.sh start "$work/registry")
push_image "$oci:busybox" "$addr/footprint/busybox:latest"

mkdir -p "$work/root" "$work/state" "$work/cni"
cat >"$work/crius.toml" <<TOML
[cgroup]
default_parent = "/crius-footprint"
[registry]
config_path = "$work/certs.d"
[network]
conf_dir = "$work/cni"
default_network = false
[stats]
interval_ms = 2000
TOML
# containerd: Debian's package with runc and cgroupfs (hack/bench.sh's
# setup), its sandbox a static pause program pushed to the same registry.
if [[ $runtime == containerd ]]; then
  pause_layer "$work/pause" "$work/pause.tar"
  umoci new --image "$oci:pause"
  umoci raw add-layer --image "$oci:pause" "$work/pause.tar"
  umoci config --image "$oci:pause" --config.entrypoint /pause
  push_image "$oci:pause" "$addr/footprint/pause:3.9"
  mkdir -p "$work/certs.d/$addr"
  printf 'server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
    "$addr" "$addr" >"$work/certs.d/$addr/hosts.toml"
  mkdir -p "$work/containerd"
  sock="$work/containerd/containerd.sock"
  containerd_config "$work/containerd" "$addr/footprint/pause:3.9" "$work/cni" "$work/certs.d" \
    >"$work/containerd.toml"
fi

before=$(ls /proc | grep -E '^[0-9]+$' | sort)
if [[ $runtime == containerd ]]; then
  containerd --config "$work/containerd.toml" >"$work/crius.log" 2>&1 &
else
  "$crius" serve --config "$work/crius.toml" --listen "$sock" \
    --root "$work/root" --state "$work/state" --log-level warn,crius::stats=debug >"$work/crius.log" 2>&1 &
fi
crius_pid=$!
for _ in $(seq 100); do [[ -S "$sock" ]] && break; sleep 0.1; done
[[ -S "$sock" ]] || { cat "$work/crius.log" >&2; exit 1; }

logs=()
[[ -n ${LOGS:-} ]] && logs=("$work/logs")
"$client" "$sock" up "$pods" "$addr/footprint/busybox:latest" "${logs[@]}" >/dev/null
sleep "${SETTLE:-1}"
after=$(ls /proc | grep -E '^[0-9]+$' | sort)
shims=$(for pid in $(comm -13 <(echo "$before") <(echo "$after")); do
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) != containerd-shim* ]] || echo "$pid"
done)

# The monitors of this run, from their pid files.
monitors=" "
for f in "$work"/state/pods/*/monitor.pid; do
  [[ -f "$f" ]] && monitors+="$(jq -r .pid "$f") "
done
# Every new process whose binary is a crius one, except the daemon.
rss=0 pss=0 n=0
declare -A names=()
detail=()
for pid in $(comm -13 <(echo "$before") <(echo "$after")); do
  [[ "$pid" == "$crius_pid" ]] && continue
  # The monitors and pod inits run from sealed handles (a detached mount
  # shows as / in /proc/PID/exe, a memfd as memfd:...): go by their names.
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
  if [[ $runtime == containerd ]]; then
    [[ "$comm" == containerd-shim* || "$comm" == pause ]] || continue
  else
    # This run's monitors and their children only (other crius daemons
    # may run on the machine).
    [[ "$comm" == crius* ]] || continue
    ppid=$(awk '/^PPid:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
    [[ "$monitors" == *" $pid "* || "$monitors" == *" $ppid "* ]] || continue
  fi
  # A short-lived process (a probe, an exec) may be gone by now.
  read -r r p < <(awk '/^Rss:/ {r=$2} /^Pss:/ {p=$2} END {print r, p}' \
    "/proc/$pid/smaps_rollup" 2>/dev/null) || continue
  rss=$((rss + r)) pss=$((pss + p)) n=$((n + 1))
  name=$comm
  names[$name]=$((${names[$name]:-0} + 1))
  [[ -n ${DETAIL:-} && ${names[$name]} == 1 ]] && detail+=("$pid:$name")
done
((n)) || { echo "no $runtime process appeared" >&2; exit 1; }
if [[ $runtime == containerd ]]; then
  echo "runtime:     $(containerd --version), $(runc --version | head -1)"
else
  echo "binary:      $crius ($(du -k "$crius" | cut -f1) KiB)"
  for b in crius-monitor crius-pod-init; do
    f="$(dirname "$crius")/$b"
    [[ -x "$f" ]] || continue
    link=dynamic
    file -L "$f" | grep -qE "statically linked|static-pie linked" && link=static
    echo "             $b: $(du -k "$f" | cut -f1) KiB ($link)"
  done
fi
echo -n "processes:   $n for $pods pods ("
for k in "${!names[@]}"; do echo -n "$k x${names[$k]} "; done
echo ")"
awk -v r="$rss" -v p="$pss" -v n="$pods" 'BEGIN {
  printf "total:       %.1f MiB RSS, %.2f MiB PSS\n", r / 1024, p / 1024
  printf "per pod:     %.2f MiB RSS, %.3f MiB PSS\n", r / 1024 / n, p / 1024 / n
}'

# Where one process of each kind keeps its pages: Rss, Pss and private
# dirty KiB per mapping, the largest first.
for d in "${detail[@]}"; do
  echo "mappings of ${d#*:} (pid ${d%%:*}): rss pss private_dirty name"
  awk '/^[0-9a-f]+-[0-9a-f]+ / { name = ($6 == "" ? "[anon]" : $6) " " $2 }
       /^Rss:/ { rss[name] += $2 } /^Pss:/ { pss[name] += $2 }
       /^Private_Dirty:/ { pd[name] += $2 }
       END { for (n in rss) if (rss[n]) printf "  %6d %6d %6d %s\n", rss[n], pss[n], pd[n], n }' \
    "/proc/${d%%:*}/smaps" | sort -rn | head -25
done

# The stats RPCs, once a sampler round (every 2 s here) has seen every pod
# (crius only: containerd refuses pod stats of pods without a cgroup parent).
[[ $runtime == crius ]] || exit 0
sleep 3
"$client" "$sock" stats "$stats_rounds"
grep -o 'samples=[0-9]* took_ms=[0-9]*' "$work/crius.log" | tail -5 | sed 's/^/sampler round: /'

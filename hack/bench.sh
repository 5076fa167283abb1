#!/usr/bin/env bash
# Side-by-side benchmark of crius and containerd (Debian's package, runc,
# cgroupfs), the same workload against each, driven by the Rust client
# examples/crius-bench (each CRI call timed in that process):
#   pod and container lifecycles, sequential, PAR-way parallel and PAR-way
#   in lockstep (every client making the same call at once); ExecSync
#   of `true`; CreateContainer beside CROWD created containers;
#   StopPodSandbox with a running container in the POD, CONTAINER
#   and NODE PID modes; a cold pull of a multi-layer image from a local
#   registry; the daemon's RSS idle and after CHURN pod cycles; the per-pod
#   footprint (PSS of every process that appeared for the pods);
# and the CNI plugins' own ADD/DEL time with the same configuration, run
# directly. It prints one table: crius, containerd, ratio of the p50s.
#
# Each daemon gets temporary root, state, socket and config, the same CNI
# conflist (bridge crbench0, 10.77.0.0/16), registry hosts.toml and a cgroup
# parent of its own (/crius-bench-<runtime>). Everything it started is
# stopped by PID and every temporary dir, mount, cgroup and the bridge is
# removed on exit, also on failure. Needs root and hack/install-deps.sh bench.
#   hack/bench.sh                      # both runtimes, defaults below
#   RUNTIMES=crius CHURN=100 hack/bench.sh
#   KEEP=1 hack/bench.sh               # keep the work dir (logs, results,
#                                      # each crius daemon's /proc status
#                                      # and smaps after the churn)
#   OUT=DIR hack/bench.sh              # copy the result files (.tsv) to DIR
#   CRIUS=BIN CLIENT=BIN hack/bench.sh # prebuilt crius and crius-bench, no build
#   BASELINE=/path/to/old/crius RUNTIMES="crius crius-base containerd" hack/bench.sh
#                                      # also an older crius binary, for
#                                      # before/after in the same run; the
#                                      # runtimes run in the order RUNTIMES
#                                      # names them (the second of two
#                                      # builds often measures differently:
#                                      # run a pair in both orders)
#   STRACE=1 KEEP=1 hack/bench.sh      # each crius daemon under strace -f -tt
#                                      # -T (its monitors and inits too), to
#                                      # WORK/<name>/strace (slow: for where
#                                      # the time goes, not for the table)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/images.sh
source hack/lib/images.sh
# shellcheck source=lib/containerd.sh
source hack/lib/containerd.sh
N=${N:-20}             # iterations of each sequential lifecycle
PAR=${PAR:-10}         # parallel clients
ROUNDS=${ROUNDS:-2}    # lifecycles per parallel client
EXECS=${EXECS:-50}     # ExecSync calls
PODS=${PODS:-10}       # pods with a running container for the footprint
CROWD=${CROWD:-100}    # other containers in the pod of the crowded CreateContainer
CHURN=${CHURN:-1000}   # pod create/remove cycles before the last RSS reading
LAYERS=${LAYERS:-4}    # data layers of the pulled image (plus busybox)
LAYER_MB=${LAYER_MB:-40}
RUNTIMES=${RUNTIMES:-crius containerd}
target=${CARGO_TARGET_DIR:-target}

[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 1; }
# One run at a time on a machine: runs share the cgroup names, the bridge
# and its subnet, and each one's cleanup kills every process in the
# crius-bench cgroups (a second run killed the first one's daemon).
exec 9>/run/lock/crius-bench.lock
flock -n 9 || { echo "waiting for another hack/bench.sh run to finish..." >&2; flock 9; }
images_require_tools gcc docker-registry
for tool in unshare ip iptables; do
  command -v "$tool" >/dev/null || { echo "$tool not installed (hack/install-deps.sh bench)" >&2; exit 1; }
done
seen=" "
for rt in $RUNTIMES; do
  case $rt in
    crius | containerd) ;;
    crius-base) [[ -x ${BASELINE:-} ]] || { echo "crius-base needs BASELINE=/path/to/crius" >&2; exit 1; } ;;
    *) echo "RUNTIMES: unknown runtime $rt (crius, crius-base, containerd)" >&2; exit 2 ;;
  esac
  # A second run of one name would reuse the first one's root and state.
  [[ $seen != *" $rt "* ]] || { echo "RUNTIMES: $rt named twice" >&2; exit 2; }
  seen+="$rt "
done
if [[ " $RUNTIMES " == *" containerd "* ]]; then
  for tool in containerd runc; do
    command -v "$tool" >/dev/null || { echo "$tool not installed (hack/install-deps.sh bench)" >&2; exit 1; }
  done
fi
cni_bin=/usr/lib/cni
[[ -x $cni_bin/bridge ]] || { echo "CNI plugins not in $cni_bin (hack/install-deps.sh bench)" >&2; exit 1; }

# CRIUS and CLIENT name prebuilt binaries; else this tree's release build.
if [[ -z ${CRIUS:-} || -z ${CLIENT:-} ]]; then
  cargo build --release --quiet --bins --example crius-bench
fi
crius=${CRIUS:-$(pwd)/$target/release/crius}
client=${CLIENT:-$(pwd)/$target/release/examples/crius-bench}

# The daemons' own cgroup (pids controller, or the v2 root), so the client
# can tell their processes (shims, monitors) from the rest of the machine.
if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then cg=/sys/fs/cgroup; else cg=/sys/fs/cgroup/pids; fi
bridge=crbench0
net=crius-bench
had_run_containerd=$([[ -e /run/containerd ]] && echo 1 || echo 0)
work=$(mktemp -d /tmp/crius-bench-XXXXXX)
daemons=()

stop_pid() { # stop_pid PID: SIGTERM, then SIGKILL after 15 s
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}

# Every process left in a cgroup below /crius-bench* (the daemons, their
# shims and monitors, the pods' processes): all were started for this run.
kill_bench_cgroups() {
  local f
  for f in /sys/fs/cgroup/*/crius-bench*/ /sys/fs/cgroup/crius-bench*/; do
    [[ -d $f ]] || continue
    find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | xargs -r kill -9 2>/dev/null || true
  done
}

remove_bench_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/crius-bench* /sys/fs/cgroup/crius-bench*; do
    [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  return 0
}

# NAT rules and chains the bridge plugin left for pods of this network.
remove_nat_rules() {
  local line chain
  iptables -t nat -S POSTROUTING 2>/dev/null | grep -F "name: \\\"$net\\\"" | while read -r line; do
    chain=${line##* }
    # iptables -S quotes the comment the way the shell reads it back.
    eval "iptables -t nat -D ${line#-A }" 2>/dev/null || true
    if [[ $chain == CNI-* ]]; then
      iptables -t nat -F "$chain" 2>/dev/null || true
      iptables -t nat -X "$chain" 2>/dev/null || true
    fi
  done
}

cleanup() {
  local rc=$? p
  set +e # every step runs, whatever the previous one did
  for p in "${daemons[@]}"; do stop_pid "$p"; done
  kill_bench_cgroups
  grep -F " $work/" /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  hack/registry.sh stop "$work/registry" || true
  remove_bench_cgroups
  ip link del "$bridge" 2>/dev/null || true
  remove_nat_rules
  # containerd 1.6 puts its shims' sockets below /run/containerd/s.
  [[ $had_run_containerd == 1 ]] || rm -rf /run/containerd
  if [[ -n ${KEEP:-} ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. Images: busybox, a pause image (containerd's sandbox) and a multi-layer
# image of incompressible data, in a local registry.
echo "building images..." >&2
hack/build-test-images.sh build "$work/images" >/dev/null
oci="$work/oci"
umoci init --layout "$oci"
pause_layer "$work/pause" "$work/pause.tar"
umoci new --image "$oci:pause"
umoci raw add-layer --image "$oci:pause" "$work/pause.tar"
umoci config --image "$oci:pause" --config.entrypoint /pause
mkdir -p "$work/big/l0/bin"
cp /bin/busybox "$work/big/l0/bin/busybox"
layer_tar "$work/big/l0" "$work/big/l0.tar"
random_layers "$work/big" "$work/big/l" "$LAYERS" "$LAYER_MB"
umoci new --image "$oci:big"
for i in $(seq 0 "$LAYERS"); do umoci raw add-layer --image "$oci:big" "$work/big/l$i.tar"; done
rm -rf "$work/big" "$work/pause" "$work/pause.tar"
addr=$(hack/registry.sh start "$work/registry")
hack/build-test-images.sh push "$work/images" "$addr" >/dev/null
push_image "$oci:pause" "$addr/bench/pause:3.9"
push_image "$oci:big" "$addr/bench/big:latest"
rm -rf "$oci" "$work/images"
mkdir -p "$work/certs.d/$addr"
printf 'server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
  "$addr" "$addr" >"$work/certs.d/$addr/hosts.toml"

# 2. One CNI configuration for both runtimes and for the plugins alone.
mkdir -p "$work/cni"
cat >"$work/cni/10-bench.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$net",
  "plugins": [
    {
      "type": "bridge", "bridge": "$bridge",
      "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "10.77.0.0/16" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$work/ipam"
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF

# start_daemon NAME LOG CMD...: CMD in the cgroup crius-bench-daemon-NAME;
# sets $daemon_pid.
start_daemon() {
  local name=$1 log=$2
  shift 2
  mkdir -p "$cg/crius-bench-daemon-$name"
  (echo "$BASHPID" >"$cg/crius-bench-daemon-$name/cgroup.procs" && exec "$@") >"$log" 2>&1 &
  daemon_pid=$!
  daemons+=("$daemon_pid")
}

wait_socket() { # wait_socket SOCKET PID LOG
  for _ in $(seq 300); do
    [[ -S $1 ]] && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  echo "the daemon did not start:" >&2
  cat "$3" >&2
  exit 1
}

# bench NAME SOCKET EXTRA...: the client's workload against one daemon.
bench() {
  local name=$1 socket=$2
  shift 2
  mkdir -p "$work/logs-$name"
  "$client" run --socket "$socket" --label "$name" --image "$addr/busybox:latest" \
    --big-image "$addr/bench/big:latest" --cgroup-root "/crius-bench-$name" \
    --cgroup-prefix /crius-bench --logs "$work/logs-$name" --daemon-pid "$daemon_pid" \
    --out "$work/$name.tsv" --n "$N" --par "$PAR" --rounds "$ROUNDS" --execs "$EXECS" \
    --footprint-pods "$PODS" --crowd "$CROWD" --churn "$CHURN" "$@"
}

# settle: dirty pages written back before a runtime starts, so that none
# pays for what the image build or the previous runtime wrote (every fsync
# of a runtime's database waits for the journal commit that holds them).
settle() { sync; }

# run_crius NAME BINARY: crius with its own root/state/socket/cgroup parent.
run_crius() {
  local name=$1 bin=$2 d="$work/$1"
  settle
  mkdir -p "$d/root" "$d/state"
  cat >"$d/crius.toml" <<EOF
[cgroup]
default_parent = "/crius-bench-$name"
[registry]
config_path = "$work/certs.d"
[network]
conf_dir = "$work/cni"
bin_dirs = ["$cni_bin"]
EOF
  local trace=()
  [[ -z ${STRACE:-} ]] || trace=(strace -f -tt -T -s 120 -o "$d/strace")
  start_daemon "$name" "$d/log" "${trace[@]}" "$bin" serve --config "$d/crius.toml" --listen "$d/crius.sock" \
    --root "$d/root" --state "$d/state" --log-level warn
  wait_socket "$d/crius.sock" "$daemon_pid" "$d/log"
  bench "$name" "$d/crius.sock"
  # Where the last RSS reading lies (mappings, anonymous or file), for
  # KEEP=1: the daemon's status and smaps right after the churn.
  cp "/proc/$daemon_pid/status" "$d/status.after-churn"
  cp "/proc/$daemon_pid/smaps" "$d/smaps.after-churn"
  stop_pid "$daemon_pid"
  kill_bench_cgroups
}

# 3. containerd: Debian's package with runc and cgroupfs, the pause image
# from the local registry.
run_containerd() {
  local d="$work/containerd"
  mkdir -p "$d"
  containerd_config "$d" "$addr/bench/pause:3.9" "$work/cni" "$work/certs.d" "$cni_bin" >"$d/config.toml"
  settle
  start_daemon containerd "$d/log" containerd --config "$d/config.toml"
  wait_socket "$d/containerd.sock" "$daemon_pid" "$d/log"
  bench containerd "$d/containerd.sock" --pause-image "$addr/bench/pause:3.9"
  stop_pid "$daemon_pid"
  kill_bench_cgroups
}

# 4. The runtimes, in the order RUNTIMES names them: crius (this tree's
# release build, or CRIUS), crius-base (BASELINE), containerd.
for rt in $RUNTIMES; do
  case $rt in
    crius) run_crius crius "$crius" ;;
    crius-base) run_crius crius-base "$BASELINE" ;;
    containerd) run_containerd ;;
  esac
done

# 5. The CNI plugins alone, with the same configuration.
"$client" cni --conflist "$work/cni/10-bench.conflist" --bin-dir "$cni_bin" --work "$work" \
  --n "$N" --par "$PAR" --rounds "$ROUNDS" --out "$work/cni.tsv"

# 6. The table.
echo
echo "crius-bench: N=$N PAR=$PAR ROUNDS=$ROUNDS EXECS=$EXECS PODS=$PODS CHURN=$CHURN," \
  "image $((LAYERS + 1)) layers ($LAYERS x $LAYER_MB MB random + busybox); $(nproc) CPUs, $(uname -r)"
a="$work/crius.tsv" b="$work/containerd.tsv"
[[ -f $a ]] || a=/dev/null
[[ -f $b ]] || b=/dev/null
"$client" compare "$a" "$b" --cni "$work/cni.tsv"
if [[ -f $work/crius-base.tsv ]]; then
  echo
  echo "before/after: this tree's crius against BASELINE=$BASELINE"
  "$client" compare "$a" "$work/crius-base.tsv" --a-name crius --b-name crius-base
fi
[[ -z ${OUT:-} ]] || { mkdir -p "$OUT" && cp "$work"/*.tsv "$OUT"/; }

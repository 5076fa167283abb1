#!/usr/bin/env bash
# Pull benchmark: generates a multi-layer image (default 4 layers x 40 MB of
# incompressible data, plus busybox: the image of hack/bench.sh), pushes it
# to a local registry (hack/registry.sh), then RUNS times (default 3): starts
# a release `crius serve` with fresh temporary directories (a cold store),
# pulls the image through the CRI socket and reports the pull time, the
# growth of crius's peak memory (VmHWM) over its RSS before the pull, and
# the image store's size against the unpacked layers'. Needs root,
# docker-registry, skopeo and umoci (hack/install-deps.sh).
#   LAYERS=4 LAYER_MB=40 RUNS=3 hack/bench-pull.sh
#   CRIUS=/path/to/crius CLIENT=/path/to/cri-pull hack/bench-pull.sh
set -euo pipefail
cd "$(dirname "$0")/.."
layers=${LAYERS:-4}
layer_mb=${LAYER_MB:-40}
runs=${RUNS:-3}
target=${CARGO_TARGET_DIR:-target}

# CRIUS and CLIENT given: no build.
if [[ -z ${CRIUS:-} || -z ${CLIENT:-} ]]; then
  cargo build --release --quiet --bin crius --example cri-pull
fi
crius=${CRIUS:-$target/release/crius}
client=${CLIENT:-$target/release/examples/cri-pull}

work=$(mktemp -d /tmp/crius-bench-XXXXXX)
crius_pid=
cleanup() {
  [[ -n "$crius_pid" ]] && kill "$crius_pid" 2>/dev/null && wait "$crius_pid" 2>/dev/null || true
  hack/registry.sh stop "$work/registry" || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "generating a $((layers * layer_mb)) MB image in $layers layers..." >&2
oci="$work/oci"
umoci init --layout "$oci"
umoci new --image "$oci:big"
mkdir -p "$work/l0/bin"
cp /bin/busybox "$work/l0/bin/busybox"
(cd "$work/l0" && tar -cf "$work/l0.tar" .)
umoci raw add-layer --image "$oci:big" "$work/l0.tar"
for i in $(seq 1 "$layers"); do
  d="$work/l$i/data/layer$i"
  mkdir -p "$d"
  # Many files of several sizes, like a real image: 1 MB pieces.
  for f in $(seq 1 "$layer_mb"); do
    head -c 1048576 /dev/urandom >"$d/f$f"
  done
  (cd "$work/l$i" && tar -cf "$work/l$i.tar" .)
  rm -rf "$work/l$i"
  umoci raw add-layer --image "$oci:big" "$work/l$i.tar"
  rm -f "$work/l$i.tar"
done

addr=$(hack/registry.sh start "$work/registry")
skopeo copy --quiet --dest-tls-verify=false "oci:$oci:big" "docker://$addr/bench/big:latest"
rm -rf "$oci"
size=$(du -sm "$work/registry/data" | cut -f1)

printf '[registry]\nconfig_path = "%s/certs.d"\n' "$work" >"$work/crius.toml"
echo "registry:     ${size} MB stored, $((layers + 1)) layers" >&2
for run in $(seq "$runs"); do
  rm -rf "$work/root" "$work/state"
  mkdir -p "$work/root" "$work/state"
  "$crius" serve --config "$work/crius.toml" --listen "$work/crius.sock" \
    --root "$work/root" --state "$work/state" --log-level warn >"$work/crius.log" 2>&1 &
  crius_pid=$!
  for _ in $(seq 100); do [[ -S "$work/crius.sock" ]] && break; sleep 0.1; done
  rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$crius_pid/status")
  sync # the image generation's dirty pages are not the pull's to write

  read -r id secs < <("$client" "$work/crius.sock" "$addr/bench/big:latest")
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$crius_pid/status")
  stored=$(du -sk "$work/root/image" | cut -f1)
  unpacked=$(du -sk "$work/root/image/layers" | cut -f1)
  echo "run $run: pull ${secs} s; crius RSS $((rss_before / 1024)) MiB before," \
    "peak $((hwm / 1024)) MiB (+$(((hwm - rss_before) / 1024)) MiB);" \
    "store $((stored / 1024)) MiB = $(awk -v s="$stored" -v u="$unpacked" 'BEGIN {printf "%.3f", s / u}')x" \
    "the unpacked layers ($((unpacked / 1024)) MiB)"
  kill "$crius_pid"
  wait "$crius_pid" 2>/dev/null || true
  crius_pid=
  rm -f "$work/crius.sock"
done
echo "image:        $addr/bench/big:latest ($id)"

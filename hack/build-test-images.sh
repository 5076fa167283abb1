#!/usr/bin/env bash
# Builds the images the tests need from Debian's busybox-static, with umoci
# and skopeo (no Docker, no internet), into an OCI layout, and pushes them to
# a registry.
#   hack/build-test-images.sh build OUT          OCI layout in OUT/oci
#   hack/build-test-images.sh push OUT HOST:PORT (plain HTTP registry)
#
# Images (name:tags in the registry):
#   busybox:latest,1.35,stable  one gzip layer, Cmd ["sh"]
#   busybox-zstd:latest         the same content, zstd-compressed layer
#   nonroot:latest              busybox with User "1000:1000"
#   layered:latest              busybox + a layer that deletes /data/gone
#                               (whiteout), replaces /data/replaced and makes
#                               /data/dir opaque (only /data/dir/new remains)
set -euo pipefail
cmd=${1:?usage: $0 build OUT | push OUT HOST:PORT}
out=${2:?usage: $0 build OUT | push OUT HOST:PORT}

build() {
  for tool in umoci skopeo; do
    command -v "$tool" >/dev/null || { echo "$tool not installed (hack/install-deps.sh)" >&2; exit 1; }
  done
  [[ -x /bin/busybox ]] || { echo "busybox-static not installed (hack/install-deps.sh)" >&2; exit 1; }
  rm -rf "$out" && mkdir -p "$out"
  local oci="$out/oci" work="$out/work"
  mkdir -p "$work"
  umoci init --layout "$oci"

  # The busybox root filesystem: the static binary and its applet links.
  local rootfs="$work/rootfs"
  mkdir -p "$rootfs"/{bin,etc,tmp,root,home/user,data/dir}
  chmod 1777 "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$rootfs/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nuser:x:1000:\n' >"$rootfs/etc/group"
  chown 1000:1000 "$rootfs/home/user"
  echo gone >"$rootfs/data/gone"
  echo old >"$rootfs/data/replaced"
  echo old >"$rootfs/data/dir/old"
  (cd "$rootfs" && tar --numeric-owner -cf "$work/base.tar" .)

  umoci new --image "$oci:busybox"
  umoci raw add-layer --image "$oci:busybox" "$work/base.tar"
  umoci config --image "$oci:busybox" --config.cmd sh --config.env PATH=/bin \
    --config.workingdir / --config.stopsignal SIGTERM

  umoci tag --image "$oci:busybox" nonroot-base
  umoci config --image "$oci:nonroot-base" --tag nonroot --config.user 1000:1000
  umoci remove --image "$oci:nonroot-base"

  # The upper layer of "layered", written by hand in overlay's OCI form.
  local upper="$work/upper"
  mkdir -p "$upper/data/dir"
  : >"$upper/data/.wh.gone"
  echo new >"$upper/data/replaced"
  : >"$upper/data/dir/.wh..wh..opq"
  echo new >"$upper/data/dir/new"
  (cd "$upper" && tar --numeric-owner -cf "$work/upper.tar" data/.wh.gone data/replaced data/dir/.wh..wh..opq data/dir/new)
  umoci tag --image "$oci:busybox" layered
  umoci raw add-layer --image "$oci:layered" "$work/upper.tar"

  # A layout of its own: in the same one skopeo would reuse the gzip blob.
  skopeo copy --quiet --dest-compress-format zstd "oci:$oci:busybox" "oci:$out/oci-zstd:busybox-zstd"
  rm -rf "$work"
  umoci gc --layout "$oci"
  touch "$out/ready"
}

push() {
  local reg=${3:?registry HOST:PORT}
  local -a copy=(skopeo copy --quiet --dest-tls-verify=false --format oci)
  [[ -n "${REGISTRY_CREDS:-}" ]] && copy+=(--dest-creds "$REGISTRY_CREDS")
  for tag in latest 1.35 stable; do
    "${copy[@]}" "oci:$out/oci:busybox" "docker://$reg/busybox:$tag"
  done
  "${copy[@]}" --dest-compress-format zstd "oci:$out/oci-zstd:busybox-zstd" "docker://$reg/busybox-zstd:latest"
  "${copy[@]}" "oci:$out/oci:nonroot" "docker://$reg/nonroot:latest"
  "${copy[@]}" "oci:$out/oci:layered" "docker://$reg/layered:latest"
}

case "$cmd" in
build) build ;;
push) push "$@" ;;
*) echo "usage: $0 build OUT | push OUT HOST:PORT" >&2; exit 2 ;;
esac

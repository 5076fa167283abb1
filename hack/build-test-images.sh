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
#   probe:latest                busybox + /usr/local/bin/probe (a static C
#                               program making one syscall and printing
#                               "ok" or "errno N", or the effective uid), a
#                               setuid-root copy probe-suid, and users and
#                               groups for the security-context tests
#   probe:1001,1001-63,alice,alice-audio  probe with User 1001, 1001:63,
#                               alice, alice:audio
set -euo pipefail
# shellcheck source=lib/images.sh
source "$(dirname "$0")/lib/images.sh"
cmd=${1:?usage: $0 build OUT | push OUT HOST:PORT}
out=${2:?usage: $0 build OUT | push OUT HOST:PORT}

# The probe program of the probe image.
PROBE_C='#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
static int report(long rc) {
  if (rc < 0) { printf("errno %d\n", errno); return 1; }
  printf("ok\n");
  return 0;
}
int main(int argc, char **argv) {
  const char *w = argc > 1 ? argv[1] : "";
  if (!strcmp(w, "keyctl")) /* KEYCTL_GET_KEYRING_ID of the session keyring */
    return report(syscall(SYS_keyctl, 0, -3, 0));
  if (!strcmp(w, "unshare-user")) return report(unshare(CLONE_NEWUSER));
  if (!strcmp(w, "getppid")) return report(syscall(SYS_getppid));
  if (!strcmp(w, "euid")) { printf("%d\n", (int)geteuid()); return 0; }
  fprintf(stderr, "usage: probe keyctl|unshare-user|getppid|euid\n");
  return 2;
}'

build() {
  images_require_tools gcc
  rm -rf "$out" && mkdir -p "$out"
  local oci="$out/oci" work="$out/work"
  mkdir -p "$work"
  umoci init --layout "$oci"

  # The busybox root filesystem: the static binary and its applet links.
  local rootfs="$work/rootfs"
  busybox_rootfs "$rootfs"
  mkdir -p "$rootfs"/{home/user,data/dir}
  printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nuser:x:1000:\n' >"$rootfs/etc/group"
  chown 1000:1000 "$rootfs/home/user"
  echo gone >"$rootfs/data/gone"
  echo old >"$rootfs/data/replaced"
  echo old >"$rootfs/data/dir/old"
  layer_tar "$rootfs" "$work/base.tar"

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
  layer_tar "$upper" "$work/upper.tar" data/.wh.gone data/replaced data/dir/.wh..wh..opq data/dir/new
  umoci tag --image "$oci:busybox" layered
  umoci raw add-layer --image "$oci:layered" "$work/upper.tar"

  # probe: the probe programs and more users and groups.
  local probe="$work/probe"
  mkdir -p "$probe/usr/local/bin" "$probe/etc"
  printf '%s\n' "$PROBE_C" >"$work/probe.c"
  gcc -static -Os -o "$probe/usr/local/bin/probe" "$work/probe.c"
  cp "$probe/usr/local/bin/probe" "$probe/usr/local/bin/probe-suid"
  chown 0:0 "$probe/usr/local/bin/probe-suid"
  chmod 4755 "$probe/usr/local/bin/probe-suid"
  printf '%s\n' root:x:0:0:root:/root:/bin/sh user:x:1000:1000:user:/home/user:/bin/sh \
    alice:x:1001:1001:alice:/home/alice:/bin/sh >"$probe/etc/passwd"
  printf '%s\n' root:x:0: user:x:1000: alice:x:1001: staff:x:50:alice,user audio:x:63:alice \
    >"$probe/etc/group"
  layer_tar "$probe" "$work/probe.tar" usr etc/passwd etc/group
  umoci tag --image "$oci:busybox" probe
  umoci raw add-layer --image "$oci:probe" "$work/probe.tar"
  # The image USER in each form Docker allows.
  local u
  for u in 1001 1001:63 alice alice:audio; do
    umoci tag --image "$oci:probe" "probe-${u/:/-}-base"
    umoci config --image "$oci:probe-${u/:/-}-base" --tag "probe-${u/:/-}" --config.user "$u"
    umoci remove --image "$oci:probe-${u/:/-}-base"
  done

  # A layout of its own: in the same one skopeo would reuse the gzip blob.
  skopeo copy --quiet --dest-compress-format zstd "oci:$oci:busybox" "oci:$out/oci-zstd:busybox-zstd"
  rm -rf "$work"
  umoci gc --layout "$oci"
  touch "$out/ready"
}

push() {
  local reg=${3:?registry HOST:PORT}
  for tag in latest 1.35 stable; do
    push_image "$out/oci:busybox" "$reg/busybox:$tag"
  done
  push_image "$out/oci-zstd:busybox-zstd" "$reg/busybox-zstd:latest" --dest-compress-format zstd
  push_image "$out/oci:nonroot" "$reg/nonroot:latest"
  push_image "$out/oci:layered" "$reg/layered:latest"
  push_image "$out/oci:probe" "$reg/probe:latest"
  for tag in 1001 1001-63 alice alice-audio; do
    push_image "$out/oci:probe-$tag" "$reg/probe:$tag"
  done
}

case "$cmd" in
build) build ;;
push) push "$@" ;;
*) echo "usage: $0 build OUT | push OUT HOST:PORT" >&2; exit 2 ;;
esac

# shellcheck shell=bash
# Shared by hack/build-test-images.sh and hack/critest-images.sh: image
# building from Debian's busybox-static with umoci and skopeo (no Docker, no
# internet). Source it; it defines functions only.

# Fails unless umoci, skopeo and busybox-static are installed.
images_require_tools() {
  local tool
  for tool in umoci skopeo "$@"; do
    command -v "$tool" >/dev/null || { echo "$tool not installed (hack/install-deps.sh)" >&2; exit 1; }
  done
  [[ -x /bin/busybox ]] || { echo "busybox-static not installed (hack/install-deps.sh)" >&2; exit 1; }
}

# busybox_rootfs DIR: a root filesystem with the static busybox and a hard
# link for each of its applets in /bin (as the upstream busybox images have:
# masking /bin/ls must not mask /bin/busybox behind a symlink), /tmp (1777),
# /root and /etc; the caller writes /etc/passwd and /etc/group. Replace an
# applet by removing its link first, never by writing through it.
busybox_rootfs() {
  local rootfs=$1 applet
  mkdir -p "$rootfs"/{bin,etc,tmp,root}
  chmod 1777 "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ "$applet" == busybox ]] || ln -f "$rootfs/bin/busybox" "$rootfs/bin/$applet"
  done
}

# layer_tar DIR TAR [PATH...]: a layer tarball of DIR (all of it, or PATHs
# relative to it), owners as numbers.
layer_tar() {
  local dir=$1 tar=$2
  shift 2
  if (($#)); then
    (cd "$dir" && tar --numeric-owner -cf "$tar" "$@")
  else
    (cd "$dir" && tar --numeric-owner -cf "$tar" .)
  fi
}

# push_image LAYOUT:TAG REF [skopeo options...]: copies an image of an OCI
# layout to docker://REF over plain HTTP; $REGISTRY_CREDS ("user:pass") when set.
push_image() {
  local src=$1 ref=$2
  shift 2
  local -a copy=(skopeo copy --quiet --dest-tls-verify=false --format oci)
  [[ -n "${REGISTRY_CREDS:-}" ]] && copy+=(--dest-creds "$REGISTRY_CREDS")
  "${copy[@]}" "$@" "oci:$src" "docker://$ref"
}

# pause_layer DIR TAR: a layer holding only /pause, a static program that
# sleeps until SIGINT or SIGTERM and reaps children (the pod sandbox image of
# containerd and CRI-O). Needs gcc.
pause_layer() {
  local dir=$1 tar=$2
  mkdir -p "$dir"
  cat >"$dir.c" <<'C'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGINT, quit); signal(SIGTERM, quit); signal(SIGCHLD, reap);
  for (;;) pause();
}
C
  gcc -static -Os -o "$dir/pause" "$dir.c"
  rm -f "$dir.c"
  layer_tar "$dir" "$tar" pause
}

# random_layers DIR TAR_PREFIX LAYERS MB: LAYERS layer tarballs
# TAR_PREFIX<i>.tar of MB files of 1 MB of incompressible data each, like
# an image's data layers (a pull benchmark's worst case for compression).
random_layers() {
  local dir=$1 prefix=$2 layers=$3 mb=$4 i f
  for i in $(seq 1 "$layers"); do
    mkdir -p "$dir/l$i/data/layer$i"
    for f in $(seq 1 "$mb"); do
      head -c 1048576 /dev/urandom >"$dir/l$i/data/layer$i/f$f"
    done
    layer_tar "$dir/l$i" "$prefix$i.tar"
    rm -rf "${dir:?}/l$i"
  done
}

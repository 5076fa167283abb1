#!/usr/bin/env bash
# Builds stand-ins for the images the CRI validation suite (critest, from
# kubernetes-sigs/cri-tools) pulls, from Debian's busybox-static with umoci
# and skopeo (no Docker, no internet), and pushes them under their original
# repository paths to a local registry. hack/critest.sh points the upstream
# hosts (registry.k8s.io, k8s.gcr.io, gcr.io) at that registry with hosts.toml.
#   hack/critest-images.sh build OUT          OCI layout in OUT/oci
#   hack/critest-images.sh push OUT HOST:PORT (plain HTTP registry)
#
# What critest expects of each image (cri-tools pkg/validate, pkg/framework):
#   e2e-test-images/busybox:1.29-2   sh, top, sleep, echo, cat, ls, ... and
#                                    pgrep, ipcs (scripts: Debian's busybox
#                                    lacks those applets)
#   e2e-test-images/nginx:1.14-2     a web server on port 80 whose process is
#                                    named nginx, shows "master process" in its
#                                    command line and writes /var/run/nginx.pid
#   k8s-staging-cri-tools/hostnet-nginx-amd64:latest  the same on port 12003
#   e2e-test-images/httpd:2.4.39-4   a web server on port 80 logging "httpd"
#   e2e-test-images/nonewprivs:1.3   a setuid-root program printing
#                                    "Effective uid: N"
#   k8s-staging-cri-tools/test-image-user-*  USER 1002, www-data,
#                                    1003:1004, www-data:1004
#   k8s-staging-cri-tools/test-image-predefined-group  USER 1000, a member of
#                                    group 50000
#   k8s-staging-cri-tools/test-image-{latest,1,2,3}:latest, test-image-tag:test
#   and :all (all different), test-image-tags:1,2,3 (one image)
#   pause:3.9 (served as registry.k8s.io/pause and k8s.gcr.io/pause), pause:3.10
# test-image-digest@sha256:9700f9... cannot be rebuilt (its digest fixes the
# upstream bytes): hack/critest.sh skips the spec that pulls it.
set -euo pipefail
# shellcheck source=lib/images.sh
source "$(dirname "$0")/lib/images.sh"
cmd=${1:?usage: $0 build OUT | push OUT HOST:PORT}
out=${2:?usage: $0 build OUT | push OUT HOST:PORT}

E2E=e2e-test-images
STAGING=k8s-staging-cri-tools

# nginx's stand-in: busybox httpd under a parent shell named nginx (comm is
# the script's name) that re-executes itself with "master process" in its
# arguments, as nginx titles its master process.
NGINX_SCRIPT='#!/bin/sh
case "$1" in
"master process") shift ;;
*) exec /usr/sbin/nginx "master process" "$@" ;;
esac
echo $$ >/var/run/nginx.pid
httpd -f -p "${NGINX_PORT:-80}" -h /usr/share/nginx/html &
server=$!
trap '"'"'kill $server; exit 0'"'"' TERM INT QUIT
wait $server'

# pgrep and ipcs, which Debian's busybox-static leaves out.
PGREP_SCRIPT='#!/bin/sh
# pgrep NAME: the pids whose command name is NAME.
found=1
for d in /proc/[0-9]*; do
  if [ "$(cat "$d/comm" 2>/dev/null)" = "$1" ]; then echo "${d#/proc/}"; found=0; fi
done
exit $found'
IPCS_SCRIPT='#!/bin/sh
# ipcs -m: the shared memory segments of this IPC namespace.
echo
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch"
tail -n +2 /proc/sysvipc/shm | while read -r key shmid perms size _ _ nattch uid _; do
  printf "0x%08x %-10s %-10s %-10s %-10s %s\n" "$key" "$shmid" "$uid" "$perms" "$size" "$nattch"
done'

# The nonewprivs program: setuid root, so its effective uid is 0 unless
# no_new_privs is set.
NNP_C='#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\n", (int)geteuid()); return 0; }'


write() { # write FILE MODE CONTENT (a new file: never through a hard link)
  mkdir -p "$(dirname "$1")"
  rm -f "$1"
  printf '%s\n' "$3" >"$1"
  chmod "$2" "$1"
}

# new_image NAME TAR: a fresh image in the layout from one layer.
new_image() {
  umoci new --image "$oci:$1"
  umoci raw add-layer --image "$oci:$1" "$2"
}

# derive BASE NAME TAR [umoci config options...]: BASE plus a layer.
derive() {
  local base=$1 name=$2 tar=$3
  shift 3
  umoci tag --image "$oci:$base" "$name"
  [[ -z "$tar" ]] || umoci raw add-layer --image "$oci:$name" "$tar"
  (($# == 0)) || umoci config --image "$oci:$name" "$@"
}

# one_file_layer NAME: a layer holding only /NAME (cri-tools' image-test).
# shell_that_execs ROOTFS: /bin/sh becomes Debian's dynamically linked
# busybox (package busybox, downloaded, not installed: it conflicts with
# busybox-static) with the libraries it needs. busybox-static's ash runs
# its own applets instead of executing /bin/ls and the like
# (FEATURE_SH_STANDALONE), so critest's MaskedPaths spec, which masks
# /bin/ls and expects `sh -c ls` to fail with "Permission denied", could
# never pass with it; upstream busybox:1.29's sh executes them.
shell_that_execs() {
  local rootfs=$1 deb lib
  (cd "$work" && apt-get download busybox >/dev/null 2>&1) || {
    echo "critest-images: apt-get download busybox failed (MaskedPaths will fail)" >&2
    return 0
  }
  deb=$(ls "$work"/busybox_*.deb)
  dpkg-deb -x "$deb" "$work/busybox-dyn"
  rm -f "$rootfs/bin/sh"
  cp "$work/busybox-dyn/bin/busybox" "$rootfs/bin/sh"
  for lib in $(ldd "$rootfs/bin/sh" | grep -o '/[^ ]*'); do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
}

one_file_layer() {
  local dir="$work/layer-$1"
  mkdir -p "$dir"
  : >"$dir/$1"
  layer_tar "$dir" "$work/$1.tar" "$1"
  echo "$work/$1.tar"
}

build() {
  images_require_tools gcc
  rm -rf "$out" && mkdir -p "$out"
  oci="$out/oci"
  work="$out/work"
  mkdir -p "$work"
  umoci init --layout "$oci"

  # 1. busybox, with the users of busybox's own image (www-data is 33).
  local rootfs="$work/rootfs"
  busybox_rootfs "$rootfs"
  mkdir -p "$rootfs"/{home,var/run,var/www}
  printf '%s\n' root:x:0:0:root:/root:/bin/sh daemon:x:1:1:daemon:/usr/sbin:/bin/false \
    bin:x:2:2:bin:/bin:/bin/false sys:x:3:3:sys:/dev:/bin/false sync:x:4:100:sync:/bin:/bin/sync \
    mail:x:8:8:mail:/var/spool/mail:/bin/false www-data:x:33:33:www-data:/var/www:/bin/false \
    operator:x:37:37:Operator:/var:/bin/false nobody:x:65534:65534:nobody:/home:/bin/false \
    >"$rootfs/etc/passwd"
  printf '%s\n' root:x:0: daemon:x:1: bin:x:2: sys:x:3: adm:x:4: tty:x:5: disk:x:6: wheel:x:10:root \
    mail:x:8: www-data:x:33: operator:x:37: users:x:100: nogroup:x:65534: >"$rootfs/etc/group"
  write "$rootfs/bin/pgrep" 0755 "$PGREP_SCRIPT"
  write "$rootfs/bin/ipcs" 0755 "$IPCS_SCRIPT"
  shell_that_execs "$rootfs"
  layer_tar "$rootfs" "$work/base.tar"
  new_image busybox "$work/base.tar"
  umoci config --image "$oci:busybox" --config.cmd sh --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

  # 2. nginx (port 80) and hostnet-nginx (port 12003).
  local web="$work/nginx"
  write "$web/usr/sbin/nginx" 0755 "$NGINX_SCRIPT"
  write "$web/usr/share/nginx/html/index.html" 0644 '<html><body><h1>Welcome to nginx!</h1></body></html>'
  layer_tar "$web" "$work/nginx.tar" usr
  derive busybox nginx "$work/nginx.tar" --config.cmd nginx --config.cmd -g --config.cmd 'daemon off;' \
    --config.exposedports 80/tcp --config.stopsignal SIGTERM
  derive nginx hostnet-nginx "" --config.env NGINX_PORT=12003 --config.exposedports 12003/tcp

  # 3. httpd: says "httpd" in its log, serves port 80.
  local httpd="$work/httpd"
  write "$httpd/usr/local/bin/httpd-foreground" 0755 '#!/bin/sh
echo "httpd: serving /usr/local/apache2/htdocs on port 80" >&2
exec httpd -f -v -p 80 -h /usr/local/apache2/htdocs'
  write "$httpd/usr/local/apache2/htdocs/index.html" 0644 '<html><body><h1>It works!</h1></body></html>'
  layer_tar "$httpd" "$work/httpd.tar" usr
  derive busybox httpd "$work/httpd.tar" --config.cmd httpd-foreground --config.exposedports 80/tcp \
    --config.stopsignal SIGTERM

  # 4. nonewprivs: /usr/local/bin/nnp, setuid root.
  local nnp="$work/nnp"
  mkdir -p "$nnp/usr/local/bin"
  printf '%s\n' "$NNP_C" >"$work/nnp.c"
  gcc -static -Os -o "$nnp/usr/local/bin/nnp" "$work/nnp.c"
  chown 0:0 "$nnp/usr/local/bin/nnp"
  chmod 4755 "$nnp/usr/local/bin/nnp"
  layer_tar "$nnp" "$work/nnp.tar" usr
  derive busybox nonewprivs "$work/nnp.tar" --clear=config.cmd --config.entrypoint /usr/local/bin/nnp

  # 5. The image-user images (cri-tools images/image-user).
  derive busybox user-uid "" --config.user 1002
  derive busybox user-username "" --config.user www-data
  derive busybox user-uid-group "" --config.user 1003:1004
  derive busybox user-username-group "" --config.user www-data:1004

  # 6. predefined-group: user 1000 (default-user) is in group 50000.
  local pg="$work/predefined-group"
  mkdir -p "$pg/etc" "$pg/home/default-user"
  cp "$rootfs/etc/passwd" "$rootfs/etc/group" "$pg/etc/"
  echo 'default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh' >>"$pg/etc/passwd"
  printf '%s\n' default-user:x:1000: group-defined-in-image:x:50000:default-user >>"$pg/etc/group"
  chown 1000:1000 "$pg/home/default-user"
  layer_tar "$pg" "$work/predefined-group.tar" etc/passwd etc/group home/default-user
  derive busybox predefined-group "$work/predefined-group.tar" --config.user 1000

  # 7. image-test: busybox plus one empty file named after the image.
  local name
  for name in test-image-latest test-image-1 test-image-2 test-image-3 test same-image all; do
    derive busybox "it-$name" "$(one_file_layer "$name")"
  done

  # 8. pause 3.9 and 3.10: only /pause (two builds differ by a label).
  pause_layer "$work/pause" "$work/pause.tar"
  new_image pause-3.9 "$work/pause.tar"
  umoci config --image "$oci:pause-3.9" --config.entrypoint /pause --config.label version=3.9
  new_image pause-3.10 "$work/pause.tar"
  umoci config --image "$oci:pause-3.10" --config.entrypoint /pause --config.label version=3.10

  rm -rf "$work"
  umoci gc --layout "$oci"
  touch "$out/ready"
}

push() {
  local reg=${3:?registry HOST:PORT}
  local o="$out/oci" tag
  push_image "$o:busybox" "$reg/$E2E/busybox:1.29-2"
  push_image "$o:nginx" "$reg/$E2E/nginx:1.14-2"
  push_image "$o:httpd" "$reg/$E2E/httpd:2.4.39-4"
  push_image "$o:nonewprivs" "$reg/$E2E/nonewprivs:1.3"
  push_image "$o:hostnet-nginx" "$reg/$STAGING/hostnet-nginx-amd64:latest"
  for name in user-uid user-username user-uid-group user-username-group; do
    push_image "$o:$name" "$reg/$STAGING/test-image-$name:latest"
  done
  push_image "$o:predefined-group" "$reg/$STAGING/test-image-predefined-group:latest"
  for name in test-image-latest test-image-1 test-image-2 test-image-3; do
    push_image "$o:it-$name" "$reg/$STAGING/$name:latest"
  done
  push_image "$o:it-test" "$reg/$STAGING/test-image-tag:test"
  push_image "$o:it-all" "$reg/$STAGING/test-image-tag:all"
  for tag in 1 2 3; do
    push_image "$o:it-same-image" "$reg/$STAGING/test-image-tags:$tag"
  done
  push_image "$o:pause-3.9" "$reg/pause:3.9"
  push_image "$o:pause-3.10" "$reg/pause:3.10"
}

case "$cmd" in
build) build ;;
push) push "$@" ;;
*) echo "usage: $0 build OUT | push OUT HOST:PORT" >&2; exit 2 ;;
esac

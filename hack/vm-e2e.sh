#!/usr/bin/env bash
# The VM test tier: boots Debian 12's own kernel (linux-image-amd64, 6.1) with
# qemu and runs crius's tests (hack/vm/tests.list) in a cgroup-v2-only guest,
# in two modes:
#
#   cgroupfs  a plain init (busybox sh), cgroup2 alone at /sys/fs/cgroup,
#             crius with the cgroupfs driver
#   systemd   systemd 252 (the host's, not running here) as PID 1 and the
#             system D-Bus, crius with the systemd driver
#
# The guest sees the host's / read-only over 9p (writes go to tmpfs), so it
# runs the crius binary and test executables built here, at the same paths.
# KVM is used when it works, else TCG (software emulation), automatically.
#
# Usage: hack/vm-e2e.sh [--mode cgroupfs|systemd|all] [--set ci|full]
#   --set ci    the lines of tests.list marked ci (what .ci/run runs)
#   --set full  every line (default)
# Environment: CRIUS_VM_CACHE (default /var/cache/crius-vm: the extracted
# kernel package), CRIUS_VM_ACCEL=kvm|tcg (skip the probe),
# CRIUS_VM_TIMEOUT (seconds per mode, default 2400 for ci, 5400 for full),
# CRIUS_VM_KEEP=1 (keep the run directory), CRIUS_VM_MEM (MiB, default
# 2048), CRIUS_VM_LIST (a file in tests.list's format to run instead of
# hack/vm/tests.list: one line, to try a test in a guest). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

modes=all set=full
while (($#)); do
  case "$1" in
    --mode) modes=$2; shift 2 ;;
    --set) set=$2; shift 2 ;;
    *) echo "usage: $0 [--mode cgroupfs|systemd|all] [--set ci|full]" >&2; exit 2 ;;
  esac
done
case "$modes" in all) modes="cgroupfs systemd" ;; cgroupfs | systemd) ;; *) echo "bad --mode $modes" >&2; exit 2 ;; esac
case "$set" in ci | full) ;; *) echo "bad --set $set" >&2; exit 2 ;; esac
[[ "$repo" != *[[:space:]]* ]] || { echo "vm-e2e: the repository path must not contain spaces" >&2; exit 2; }

cache=${CRIUS_VM_CACHE:-/var/cache/crius-vm}
# The full set adds the hundred pods and the rest of the runtime tests:
# under TCG on a loaded host the ci set alone can take 40 minutes.
if [ "$set" = full ]; then timeout_s=${CRIUS_VM_TIMEOUT:-5400}; else timeout_s=${CRIUS_VM_TIMEOUT:-2400}; fi
mem=${CRIUS_VM_MEM:-2048}
list=${CRIUS_VM_LIST:-hack/vm/tests.list}
[ -f "$list" ] || { echo "vm-e2e: no test list $list" >&2; exit 2; }
t0=$(date +%s)
say() { echo "vm-e2e: $*" >&2; }

bash hack/install-deps.sh test

# 1. The kernel: the package linux-image-amd64 points at, extracted (never
#    installed: the host's /boot stays as it is) into the cache, with a
#    modules.dep of its own.
kernel_dir() {
  local pkg ver dir tmp
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -1)
  ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -1)
  if [ -z "$pkg" ] || [ -z "$ver" ]; then
    # No package lists (offline): the newest kernel already in the cache.
    dir=$(find "$cache" -maxdepth 1 -name 'linux-image-*' -type d 2>/dev/null | sort -V | tail -1)
    [ -n "$dir" ] || { say "apt knows no linux-image-amd64 and the cache is empty: run apt-get update"; return 1; }
    echo "$dir"
    return
  fi
  dir=$cache/${pkg}_$ver
  if [ ! -d "$dir" ]; then
    say "fetching $pkg $ver into $cache"
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
    (cd "$tmp" && apt-get download -q "$pkg=$ver" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) || true
    ls "$tmp"/*.deb >/dev/null 2>&1 || { say "apt-get download $pkg failed"; rm -rf "$tmp"; return 1; }
    mkdir "$tmp/root"
    dpkg-deb -x "$tmp"/*.deb "$tmp/root"
    depmod -b "$tmp/root" "$(ls "$tmp/root/lib/modules")"
    mv "$tmp/root" "$dir"
    rm -rf "$tmp"
    # Older extracted kernels are of no more use.
    find "$cache" -maxdepth 1 -name 'linux-image-*' -type d ! -path "$dir" -exec rm -rf {} +
  fi
  echo "$dir"
}
kdir=$(kernel_dir)
kver=$(ls "$kdir/lib/modules")
vmlinuz=$kdir/boot/vmlinuz-$kver
[ -f "$vmlinuz" ] || { say "no $vmlinuz"; exit 1; }

run=$(mktemp -d /tmp/crius-vm.XXXXXX)
cleanup() { if [ "${CRIUS_VM_KEEP:-}" = 1 ]; then say "kept $run"; else rm -rf "$run"; fi; }
trap cleanup EXIT

# 2. What the guest runs: the crius binary and the test executables, named
#    lib (the crate's unit tests), the integration test's target name (e2e),
#    bin_crius (the binary's unit tests) and exe_crius (the daemon itself,
#    which the e2e tests find at the path compiled into them).
say "building the test executables"
cargo test --locked --no-run --message-format=json >"$run/build.json" ||
  { say "cargo test --no-run failed"; exit 1; }
declare -A bins=()
while read -r kind test name exe; do
  name=${name//-/_}
  case "$kind:$test" in
    lib:true) bins[lib]=$exe ;;
    test:true) bins[$name]=$exe ;;
    bin:true) bins[bin_$name]=$exe ;;
    bin:false) bins[exe_$name]=$exe ;;
  esac
done < <(jq -r 'select(.reason == "compiler-artifact" and .executable != null)
  | "\(.target.kind[0]) \(.profile.test) \(.target.name) \(.executable)"' "$run/build.json")
((${#bins[@]})) || { say "cargo test --no-run listed no executable"; exit 1; }

# 3. The initramfs: busybox, the modules that reach the 9p root (virtio_pci
#    first, dependencies before their users) and the ext4 disk, and
#    hack/vm/init.
initrd() {
  local dir=$run/initramfs m
  mkdir -p "$dir"/{bin,modules,proc,sys,dev}
  cp "$(command -v busybox)" "$dir/bin/busybox"
  cp hack/vm/init "$dir/init"
  modprobe -d "$kdir" -S "$kver" --show-depends -a virtio_pci 9pnet_virtio 9p overlay virtio_blk ext4 |
    awk '$1 == "insmod" && !seen[$2]++ { print $2 }' >"$run/modules"
  while read -r m; do
    cp "$m" "$dir/modules/"
    basename "$m" >>"$dir/modules.list"
  done <"$run/modules"
  (cd "$dir" && find . | busybox cpio -o -H newc 2>/dev/null) >"$run/initramfs.cpio"
}
initrd

# 4. KVM when it works (it can exist and still fail), else TCG.
probe_kvm() {
  [ -w /dev/kvm ] || return 1
  # A kernel without a root panics at once; under working KVM in ~1s.
  timeout 15 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nographic -no-reboot \
    -kernel "$vmlinuz" -append "console=ttyS0 panic=-1 quiet" 2>&1 | grep -q 'Kernel panic'
}
accel=${CRIUS_VM_ACCEL:-}
if [ -z "$accel" ]; then
  if probe_kvm; then accel=kvm; else accel=tcg; fi
fi
case "$accel" in
  kvm) accel_args=(-accel kvm -cpu host) ;;
  tcg) accel_args=(-accel tcg,thread=multi -cpu max) ;;
  *) say "CRIUS_VM_ACCEL must be kvm or tcg"; exit 2 ;;
esac
say "kernel $kver, accelerator $accel, $(nproc) host cores"

# 5. One boot per mode.
# The guest's kernel is hung, not slow, when a CPU has been stuck in the
# kernel for 5 minutes (one CI run: both vCPUs in soft lockup from 170 s
# of guest time until the 40-minute timeout, under TCG). Prints the stuck
# seconds when so.
hung_for=300
guest_hung() {
  local s
  s=$(grep -ao 'soft lockup - CPU#[0-9]* stuck for [0-9]*s' "$1" 2>/dev/null |
    sed 's/.* for \([0-9]*\)s/\1/' | sort -n | tail -n 1)
  [ -n "$s" ] && [ "$s" -ge "$hung_for" ] && echo "$s"
}

# boot MODE ATTEMPT: 0 when the guest's tests passed, 1 when they failed or
# gave no result, 2 when the guest's kernel hung (retried once by the caller).
boot() {
  local mode=$1 attempt=$2 share=$run/$1 cmdline start rc
  [ ! -d "$share" ] || mv "$share" "$run/$mode-attempt-$((attempt - 1))"
  mkdir -p "$share"
  cp "$list" "$share/tests.list"
  # An empty ext4 disk (sparse: only what the guest writes takes space),
  # mounted at the guest's /var/tmp: 6.1 cannot idmap tmpfs, so tests
  # that need idmapped mounts (user namespaces) put their roots there.
  truncate -s 8G "$run/$mode-ext4.img"
  mkfs.ext4 -q -F -E root_owner=0:0 "$run/$mode-ext4.img"
  {
    echo "CRIUS_VM_MODE=$mode"
    echo "CRIUS_VM_SET=$set"
    echo "CRIUS_VM_REPO=$repo"
    echo "CRIUS_VM_KERNEL_DIR=$kdir"
    for k in "${!bins[@]}"; do echo "bin_$k=${bins[$k]}"; done
  } >"$share/job.env"
  # softlockup_all_cpu_backtrace: a hang's report shows every CPU's stack.
  cmdline="console=ttyS0 panic=-1 loglevel=4 rdinit=/init cgroup_no_v1=all mitigations=off"
  cmdline+=" softlockup_all_cpu_backtrace=1"
  cmdline+=" crius.mode=$mode crius.repo=$repo crius.busybox=$(command -v busybox)"
  if [ "$mode" = systemd ]; then
    cmdline+=" systemd.unit=crius-vm.target systemd.unified_cgroup_hierarchy=1 fstab=no"
    cmdline+=" systemd.show_status=1 systemd.firstboot=off"
    # What a VM without network, disks or users has no use for (boot time
    # under TCG); journald, udev, tmpfiles and D-Bus run as on a node.
    local u
    for u in systemd-timesyncd systemd-binfmt systemd-random-seed systemd-update-utmp \
      modprobe@dm_mod modprobe@drm modprobe@efi_pstore modprobe@fuse modprobe@loop \
      systemd-journal-flush apt-daily.timer apt-daily-upgrade.timer man-db.timer \
      dpkg-db-backup.timer e2scrub_all.timer; do
      [[ "$u" == *.* ]] || u+=.service
      cmdline+=" systemd.mask=$u"
    done
  fi
  say "booting the $mode guest (attempt $attempt)"
  start=$(date +%s)
  rc=0
  timeout "$timeout_s" qemu-system-x86_64 "${accel_args[@]}" \
    -smp "$(nproc)" -m "$mem" -nographic -no-reboot -nodefaults -serial stdio \
    -kernel "$vmlinuz" -initrd "$run/initramfs.cpio" -append "$cmdline" \
    -fsdev local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    -fsdev local,id=share,path="$share",security_model=passthrough \
    -device virtio-9p-pci,fsdev=share,mount_tag=share \
    -drive file="$run/$mode-ext4.img",if=virtio,format=raw,cache=unsafe \
    </dev/null >"$share/console.log" 2>&1 &
  local qemu=$! stuck=
  while kill -0 "$qemu" 2>/dev/null; do
    if stuck=$(guest_hung "$share/console.log"); then
      kill -TERM "$qemu" 2>/dev/null || true
      break
    fi
    sleep 10
  done
  wait "$qemu" || rc=$?
  local took=$(($(date +%s) - start))
  if [ -n "$stuck" ]; then
    say "the $mode guest's kernel hung (a CPU stuck in the kernel for ${stuck}s, after ${took}s): the first report on its console:"
    grep -a -m1 -A100 'soft lockup - CPU#' "$share/console.log" >&2 || true
    [ ! -f "$share/guest.log" ] || { say "guest.log:"; cat "$share/guest.log" >&2; }
    return 2
  fi
  if [ ! -f "$share/status" ]; then
    if [ "$rc" = 124 ]; then
      say "the $mode guest timed out after ${took}s (CRIUS_VM_TIMEOUT=$timeout_s); its console:"
    else
      say "the $mode guest gave no result (qemu exit $rc after ${took}s); its console:"
    fi
    tail -n 150 "$share/console.log" >&2
    [ ! -f "$share/guest.log" ] || { say "guest.log:"; cat "$share/guest.log" >&2; }
    return 1
  fi
  local p f bad
  read -r p f bad <"$share/status"
  local boot_s
  boot_s=$(cat "$share/boot-seconds" 2>/dev/null || echo '?')
  if [ "$f" -ne 0 ] || [ "$bad" -ne 0 ]; then
    say "the $mode guest: FAILED; its log:"
    cat "$share/guest.log" >&2
    echo "vm-$mode: $p passed, $((f + bad)) failed"
    return 1
  fi
  grep '^crius-vm: ---' "$share/guest.log" >&2 || true
  say "$mode: booted in ${boot_s}s (guest uptime at test start), ${took}s wall in all"
  echo "vm-$mode: $p passed, $f failed"
  total_p=$((total_p + p))
}

total_p=0 failed_modes=()
for mode in $modes; do
  rc=0
  boot "$mode" 1 || rc=$?
  if [ "$rc" = 2 ]; then
    # A kernel hang is the guest's, not a test's result; a second one fails.
    say "booting the $mode guest once more after its kernel hung"
    rc=0
    boot "$mode" 2 || rc=$?
  fi
  [ "$rc" = 0 ] || failed_modes+=("$mode")
done
say "done in $(($(date +%s) - t0))s"
if ((${#failed_modes[@]})); then
  say "FAILED: ${failed_modes[*]}"
  exit 1
fi
echo "vm: $total_p passed, 0 failed"

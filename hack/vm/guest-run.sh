#!/bin/bash
# Runs inside the VM tier's guest (both modes, hack/vm/init): the lines of
# hack/vm/tests.list (the host copies it, or CRIUS_VM_LIST, into the run
# share) for this mode and set, against the test executables the
# host built. Output goes to the run share's guest.log and to the console;
# the tally goes to the share's `status` file, which the host reads.
set -u
share=/run/crius-vm
set -a
# shellcheck source=/dev/null
. "$share/job.env"
set +a
mode=$CRIUS_VM_MODE
log=$share/guest.log
exec > >(tee -a "$log" >/dev/console) 2>&1
tee_pid=$!

echo "crius-vm: guest up after $(cut -d' ' -f1 /proc/uptime)s of guest time, mode $mode, set $CRIUS_VM_SET"
cut -d' ' -f1 /proc/uptime >"$share/boot-seconds"
export HOME=/root TMPDIR=/tmp RUST_BACKTRACE=1 CRIUS_VM_MODE=$mode CRIUS_TEST_CGROUP_V2=1
[ "$mode" = systemd ] && export CRIUS_TEST_SYSTEMD=1
cd "$CRIUS_VM_REPO" || exit 1

passed=0 failed=0 bad_lines=0
out=$(mktemp)
while read -r line; do
  line=${line%%#*}
  read -ra words <<<"$line"
  ((${#words[@]})) || continue
  modes=${words[0]} sets=${words[1]} bin=${words[2]}
  [ "$modes" = both ] || [[ ",$modes," == *",$mode,"* ]] || continue
  [ "$CRIUS_VM_SET" = full ] || [[ ",$sets," == *",ci,"* ]] || continue
  envs=() args=()
  rest=("${words[@]:3}")
  for ((i = 0; i < ${#rest[@]}; i++)); do
    if [ "${rest[i]}" = -- ]; then
      args=("${rest[@]:i+1}")
      break
    fi
    envs+=("${rest[i]}")
  done
  var=bin_$bin
  exe=${!var:-}
  if [ -z "$exe" ]; then
    echo "crius-vm: FAIL: no test executable named $bin (line: $line)"
    bad_lines=$((bad_lines + 1))
    continue
  fi
  echo "crius-vm: === ${envs[*]} $bin ${args[*]}"
  start=$(date +%s)
  env "${envs[@]}" "$exe" "${args[@]}" >"$out" 2>&1
  rc=$?
  cat "$out"
  # libtest's closing line: "test result: ok. 3 passed; 0 failed; ..."
  p=$(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1/p' "$out" | tail -1)
  f=$(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\2/p' "$out" | tail -1)
  p=${p:-0} f=${f:-0}
  passed=$((passed + p)) failed=$((failed + f))
  echo "crius-vm: --- $bin ${args[*]}: exit $rc, $p passed, $f failed, $(($(date +%s) - start))s"
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "crius-vm: FAIL: $bin exited $rc without a failed test"
    bad_lines=$((bad_lines + 1))
  elif [ $((p + f)) -eq 0 ]; then
    echo "crius-vm: FAIL: no test matched: $line"
    bad_lines=$((bad_lines + 1))
  fi
done <"$share/tests.list"
rm -f "$out"

echo "$passed $failed $bad_lines" >"$share/status"
echo "crius-vm: mode $mode: $passed passed, $failed failed, $bad_lines bad lines"
exec >&- 2>&-
wait "$tee_pid"
[ "$failed" -eq 0 ] && [ "$bad_lines" -eq 0 ]

#!/usr/bin/env bash
# A throw-away local registry (Debian's docker-registry) on a free loopback
# port, for the test images, the e2e tests and the benchmarks.
#   hack/registry.sh start DIR [HTPASSWD]  prints host:port; state in DIR
#   hack/registry.sh stop DIR              stops it (by the PID in DIR/pid)
# With REGISTRY_TLS_CERT and REGISTRY_TLS_KEY (PEM files) it serves HTTPS;
# with REGISTRY_TLS_CLIENTCA as well it requires a client certificate
# signed by that CA.
set -euo pipefail
cmd=${1:?usage: $0 start|stop DIR [HTPASSWD]}
dir=${2:?usage: $0 start|stop DIR [HTPASSWD]}

case "$cmd" in
start)
  command -v docker-registry >/dev/null || { echo "docker-registry not installed (hack/install-deps.sh)" >&2; exit 1; }
  mkdir -p "$dir/data"
  dir=$(cd "$dir" && pwd)
  {
    echo "version: 0.1"
    echo "log: {level: info}"
    echo "storage: {filesystem: {rootdirectory: $dir/data}, delete: {enabled: true}}"
    tls=""
    if [[ -n "${REGISTRY_TLS_CERT:-}" ]]; then
      tls=", tls: {certificate: $REGISTRY_TLS_CERT, key: ${REGISTRY_TLS_KEY:?REGISTRY_TLS_KEY}"
      if [[ -n "${REGISTRY_TLS_CLIENTCA:-}" ]]; then
        tls+=", clientcas: [$REGISTRY_TLS_CLIENTCA]"
      fi
      tls+="}"
    fi
    echo "http: {addr: '127.0.0.1:0', secret: crius-test$tls}"
    if [[ -n "${3:-}" ]]; then
      echo "auth: {htpasswd: {realm: crius-test, path: $3}}"
    fi
  } >"$dir/config.yml"
  docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  echo $! >"$dir/pid"
  for _ in $(seq 100); do
    addr=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$dir/log" | head -1 | sed 's/listening on //') || true
    if [[ -n "$addr" ]]; then
      echo "$addr" >"$dir/addr"
      echo "$addr"
      exit 0
    fi
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
    sleep 0.1
  done
  echo "registry did not start:" >&2
  cat "$dir/log" >&2
  kill "$(cat "$dir/pid")" 2>/dev/null || true
  exit 1
  ;;
stop)
  if [[ -f "$dir/pid" ]]; then
    pid=$(cat "$dir/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/pid"
  fi
  ;;
*) echo "usage: $0 start|stop DIR [HTPASSWD]" >&2; exit 2 ;;
esac

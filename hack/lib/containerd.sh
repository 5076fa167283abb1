# shellcheck shell=bash
# Shared by hack/bench.sh and hack/footprint.sh: the configuration they run
# Debian's containerd with (runc, cgroupfs, overlayfs, a local registry).
# Source it; it defines functions only.

# containerd_config DIR SANDBOX_IMAGE CNI_CONF_DIR CERTS_DIR [CNI_BIN_DIR]:
# prints a config whose root, state, socket (DIR/containerd.sock) and opt
# dir are below DIR.
containerd_config() {
  local dir=$1 sandbox=$2 cni_conf=$3 certs=$4 cni_bin=${5:-/opt/cni/bin}
  cat <<EOF_CONFIG
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$dir/containerd.sock"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$sandbox"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Lowering oom_score_adj below containerd's own needs CAP_SYS_RESOURCE,
  # which a test machine's sandbox may not give (runc then fails).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "$cni_conf"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$certs"
EOF_CONFIG
}

# scripts/lib/env.sh — source from bash scripts (scripts/demo, scripts/bench) to drive the
# Rust test harness (integration/src/bin/stl-env.rs): same registry/containerd/shaped-link
# code as the integration tests, started detached and stopped by PID.
#
#   source "$(dirname "$0")/lib/env.sh"
#   stl_env_up /tmp/stl-bench --shaped --starling --peer --images pydeb   # exports vars
#   ctr run --rm $STL_CTR_RUN_OPTS --snapshotter starling "$STL_SHAPED_REGISTRY/pydeb:latest" t1 python3 -c 'print(1)'
#   stl_env_down /tmp/stl-bench            # add --purge to delete registry data and logs
#
# Exported by stl_env_up (when the part is started): STL_REGISTRY, STL_SHAPED_REGISTRY,
# STL_SHAPED_NETNS, STL_SHAPED_VETH (bytes: /sys/class/net/$STL_SHAPED_VETH/statistics/rx_bytes),
# CONTAINERD_ADDRESS, CONTAINERD_NAMESPACE, STL_CTR_RUN_OPTS, STL_STARLING_SOCK,
# STL_STARLING_ROOT, STL_PEER_SOCK, STL_PEER_ROOT, STL_PEER_NAME, STL_IMAGES.

_stl_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# stl_env_bin: path of the stl-env binary ($STL_ENV_BIN, else built in release mode).
stl_env_bin() {
  if [[ -n "${STL_ENV_BIN:-}" ]]; then echo "$STL_ENV_BIN"; return; fi
  local t=${CARGO_TARGET_DIR:-$_stl_root/target}
  (cd "$_stl_root" && cargo build --quiet --release -p integration --bin stl-env) >&2 || return 1
  echo "$t/release/stl-env"
}

# stl_env_up STATE_DIR [stl-env up flags...]: start and export the environment's variables.
stl_env_up() {
  local state=$1; shift
  local bin; bin=$(stl_env_bin) || return 1
  local exports; exports=$("$bin" up --state "$state" "$@") || return 1
  eval "$exports"
}

# stl_env_down STATE_DIR [--purge]: stop everything recorded in STATE_DIR.
stl_env_down() {
  local bin; bin=$(stl_env_bin) || return 1
  "$bin" down --state "$@"
}

# stl_env_status STATE_DIR
stl_env_status() {
  local bin; bin=$(stl_env_bin) || return 1
  "$bin" status --state "$1"
}

# stl_wait_socket PATH [TIMEOUT_S]: wait until a unix socket accepts connections.
stl_wait_socket() {
  local p=$1 t=${2:-30} i
  for ((i = 0; i < t * 20; i++)); do
    /usr/bin/python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "$p" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "timeout waiting for socket $p" >&2; return 1
}

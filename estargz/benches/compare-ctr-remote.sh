#!/usr/bin/env bash
# compare-ctr-remote.sh LAYER.tar [LEVEL...] — times `ctr-remote image convert --oci
# --estargz` (and --zstdchunked) on a one-layer image made from LAYER.tar (gzip -6, as a
# registry would serve it) against `starling estargz build` on the same gzip layer, and
# compares output sizes (starling at each gzip LEVEL, default 9). Starts its own
# containerd under a temp dir; stops it by PID. Needs root and a release starling
# (STARLING_BIN, default target/release/starling).
set -euo pipefail
TAR=$(realpath "$1"); shift
LEVELS=("${@:-9}")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STARLING=${STARLING_BIN:-$ROOT/target/release/starling}
PY=/usr/bin/python3
T=$(mktemp -d /tmp/stl-esgz-cmp-XXXXXX)
PID=
cleanup() {
  set +e
  if [ -n "$PID" ]; then kill "$PID"; for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done; kill -9 "$PID" 2>/dev/null; fi
  { grep -o " $T/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$T"
}
trap cleanup EXIT INT TERM

now() { date +%s.%N; }
secs() { $PY -c "print(f'{$2 - $1:.2f}')"; }

gzip -6 -n -c "$TAR" >"$T/layer.tar.gz"
DIFF=sha256:$(sha256sum "$TAR" | cut -d' ' -f1)
$PY - "$T/oci" "$T/layer.tar.gz" "$DIFF" <<'PYEOF'
import hashlib, json, os, sys
d, blob, diff = sys.argv[1:4]
os.makedirs(f"{d}/blobs/sha256")
def put(data):
    h = hashlib.sha256(data).hexdigest()
    open(f"{d}/blobs/sha256/{h}", "wb").write(data)
    return {"digest": "sha256:" + h, "size": len(data)}
layer = put(open(blob, "rb").read()); layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
config = put(json.dumps({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode())
config["mediaType"] = "application/vnd.oci.image.config.v1+json"
man = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config, "layers": [layer]}).encode())
man["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
man["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
json.dump({"schemaVersion": 2, "manifests": [man]}, open(f"{d}/index.json", "w"))
open(f"{d}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
PYEOF
tar -C "$T/oci" -cf "$T/oci.tar" .

SOCK=$T/c.sock
cat >"$T/containerd.toml" <<TOML
version = 2
root = "$T/croot"
state = "$T/cstate"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$T/copt"
TOML
containerd --config "$T/containerd.toml" >"$T/containerd.log" 2>&1 &
PID=$!
CTR=(ctr -a "$SOCK" -n cmp)
for _ in $(seq 100); do "${CTR[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
"${CTR[@]}" images import --no-unpack --base-name bench/src "$T/oci.tar" >/dev/null

convert() { # flag name
  local s e; s=$(now)
  ctr-remote -a "$SOCK" -n cmp image convert --oci "$1" bench/src:latest "bench/$2:latest" >/dev/null
  e=$(now)
  local man; man=$("${CTR[@]}" images ls | awk -v r="bench/$2:latest" '$1==r {print $3}')
  local size; size=$("${CTR[@]}" content get "$man" | $PY -c 'import json,sys; print(json.load(sys.stdin)["layers"][0]["size"])')
  echo "ctr-remote --$2: $(secs "$s" "$e") s, $size bytes"
}
echo "input: $TAR ($(stat -c %s "$TAR") bytes tar, $(stat -c %s "$T/layer.tar.gz") bytes gzip -6), $(nproc) CPUs"
convert --estargz estargz
convert --zstdchunked zstdchunked
for lvl in "${LEVELS[@]}"; do
  s=$(now); "$STARLING" estargz build --level "$lvl" "$T/layer.tar.gz" "$T/s.blob" >/dev/null; e=$(now)
  echo "starling estargz level $lvl: $(secs "$s" "$e") s, $(stat -c %s "$T/s.blob") bytes"
done
s=$(now); "$STARLING" estargz build --zstdchunked "$T/layer.tar.gz" "$T/s.blob" >/dev/null; e=$(now)
echo "starling zstd:chunked level 3: $(secs "$s" "$e") s, $(stat -c %s "$T/s.blob") bytes"

#!/usr/bin/env bash
# scripts/lib/build-image.sh — build the realistic Debian test images offline as OCI layouts.
# Called by the Rust harness (integration/src/images/debian.rs), which owns caching and
# locking; can also be run by hand:
#
#   build-image.sh pydeb   OUT_LAYOUT WORK_DIR
#       Debian bookworm `debootstrap --variant=minbase` (layer 1) + python3 (layer 2).
#       Tags: latest (layer 2 carries explicit parent dir entries, like docker/buildkit
#       layers) and implicit-parents (layer 2 as umoci emits it: only changed dirs).
#   build-image.sh pylarge OUT_LAYOUT WORK_DIR PYDEB_LAYOUT
#       pydeb:latest + gcc/g++/make and a headless JDK (layer 3, >= 500 MB unpacked in all).
#       Tag: latest.
#
# OUT_LAYOUT must not exist; WORK_DIR is scratch space (deleted at the end).
# Env: MIRROR (default: the bookworm mirror from apt's sources), LOG_DIR (default WORK_DIR).
# Same steps as ../shared/env/recipe.sh's build_pydeb (verified there).
set -euo pipefail

kind=${1:?usage: build-image.sh pydeb|pylarge OUT_LAYOUT WORK_DIR [PYDEB_LAYOUT]}
out=$(realpath -m "${2:?OUT_LAYOUT missing}")
work=$(realpath -m "${3:?WORK_DIR missing}")
logs=${LOG_DIR:-$work}
ENV_PATH=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

[ ! -e "$out" ] || { echo "build-image.sh: $out already exists" >&2; exit 1; }
mkdir -p "$work" "$logs"

detect_mirror() {
  local m=""
  m=$(awk '/^URIs:/{u=$2} /^Suites:/{ if ($0 ~ /[ \t]bookworm([ \t]|$)/) {print u; exit} }' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1) || true
  [ -n "$m" ] || m=$(awk '$1=="deb" && $0 ~ / bookworm / { for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit} }' \
        /etc/apt/sources.list 2>/dev/null | head -1) || true
  [ -n "$m" ] || { echo "no bookworm mirror found in apt sources; set MIRROR" >&2; return 1; }
  echo "$m"
}

clean_rootfs() {
  local R=$1
  rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb \
         "$R"/var/cache/debconf/*-old "$R"/var/lib/dpkg/*-old "$R"/var/log/apt/* "$R"/var/log/dpkg.log \
         "$R"/etc/resolv.conf "$R"/etc/hostname
}

# apt_in_chroot ROOTFS LOGNAME PKG...: apt-get install inside a private mount namespace
# (proc and /dev mounts vanish with it, nothing leaks into the host's mount table).
apt_in_chroot() {
  local R=$1 logname=$2; shift 2
  cp /etc/resolv.conf "$R/etc/resolv.conf"
  unshare -m --propagation private sh -c "mount -t proc proc '$R/proc' && mount --rbind /dev '$R/dev' && \
    chroot '$R' /bin/sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $* && apt-get clean'" \
    > "$logs/$logname.log" 2>&1 || { tail -20 "$logs/$logname.log" >&2; return 1; }
  clean_rootfs "$R"
}

# touch every ancestor dir of a path changed since STAMP so the next layer carries explicit
# parent directory entries (umoci only emits directories whose metadata changed).
touch_parents() {
  local R=$1 stamp=$2
  (cd "$R" && find . -xdev -cnewer "$stamp" -printf '%h\n') | sort -u \
    | awk '{p=$0; while (p != "." && p != "") {print p; sub(/\/[^\/]*$/, "", p)}}' | sort -u \
    | (cd "$R" && xargs -r -d '\n' touch -h -c --)
}

build_pydeb() {
  local mirror; mirror=${MIRROR:-$(detect_mirror)}
  echo "debootstrap mirror: $mirror"
  local B=$work/bundle R=$work/bundle/rootfs
  umoci init --layout "$out"; umoci new --image "$out:base"
  umoci unpack --image "$out:base" "$B"
  # layer 1: bookworm minbase (~125 MB)
  debootstrap --variant=minbase bookworm "$R" "$mirror" > "$logs/debootstrap.log" 2>&1 \
    || { tail -20 "$logs/debootstrap.log" >&2; return 1; }
  clean_rootfs "$R"
  umoci repack --image "$out:base" "$B"
  umoci config --image "$out:base" --architecture amd64 --os linux \
    --config.env "$ENV_PATH" --config.cmd /bin/bash
  rm -rf "$B"; umoci unpack --image "$out:base" "$B"
  # layer 2: python3 (~45 MB)
  local stamp=$work/.stamp; touch "$stamp"
  apt_in_chroot "$R" chroot-python python3
  umoci repack --image "$out:implicit-parents" "$B"
  touch_parents "$R" "$stamp"
  umoci repack --image "$out:latest" "$B"
  for t in latest implicit-parents; do
    umoci config --image "$out:$t" --config.cmd python3 --config.cmd -c --config.cmd 'print(1)'
  done
  umoci rm --image "$out:base"
  umoci gc --layout "$out"
}

build_pylarge() {
  local base; base=$(realpath -m "${1:?PYDEB_LAYOUT missing}")
  local B=$work/bundle R=$work/bundle/rootfs
  cp -a "$base" "$out"
  for t in $(umoci ls --layout "$out"); do [ "$t" = latest ] || umoci rm --image "$out:$t"; done
  umoci gc --layout "$out"
  umoci unpack --image "$out:latest" "$B"
  local stamp=$work/.stamp; touch "$stamp"
  # layer 3: compilers and a JDK (~400 MB)
  apt_in_chroot "$R" chroot-large gcc g++ make libc6-dev openjdk-17-jdk-headless
  touch_parents "$R" "$stamp"
  umoci repack --image "$out:latest" "$B"
  umoci config --image "$out:latest" --config.cmd python3 --config.cmd -c --config.cmd 'print(1)'
  umoci gc --layout "$out"
}

case "$kind" in
  pydeb) build_pydeb ;;
  pylarge) build_pylarge "${4:-}" ;;
  *) echo "build-image.sh: unknown image kind '$kind' (pydeb|pylarge)" >&2; exit 2 ;;
esac
rm -rf "$work/bundle" "$work/.stamp"
umoci stat --image "$out:latest" | head -8

#!/usr/bin/env bash
# realistic-layer.sh OUT.tar — builds a realistic layer tar offline from the Debian
# mirror in apt's sources: debootstrap bookworm minbase + python3 (~170 MB unpacked),
# for the writer benchmark (ESTARGZ_BENCH_TAR=OUT.tar cargo bench -p estargz) and for
# comparisons with ctr-remote. Needs root. Cleans up its work dir.
set -euo pipefail
OUT=$(realpath -m "$1")
W=$(mktemp -d /tmp/stl-esgz-rootfs-XXXXXX)
trap 'set +e; { grep -o " $W/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m"; done; rm -rf "$W"' EXIT
mirror=$(awk '/^URIs:/{u=$2} /^Suites:/{ if ($0 ~ /[ \t]bookworm([ \t]|$)/) {print u; exit} }' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb" && / bookworm / {for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list | head -1)
R=$W/rootfs
debootstrap --variant=minbase bookworm "$R" "$mirror" >"$W/debootstrap.log" 2>&1 || { tail -20 "$W/debootstrap.log"; exit 1; }
cp /etc/resolv.conf "$R/etc/resolv.conf"
unshare -m --propagation private sh -c "mount -t proc proc '$R/proc' && mount --rbind /dev '$R/dev' && \
  chroot '$R' /bin/sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 && apt-get clean'" \
  >"$W/apt.log" 2>&1 || { tail -20 "$W/apt.log"; exit 1; }
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/etc/resolv.conf "$R"/etc/hostname
tar --numeric-owner --xattrs --xattrs-include='*' -C "$R" -cf "$OUT" .
ls -la "$OUT"

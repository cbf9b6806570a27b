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
#   build-image.sh debbase OUT_LAYOUT WORK_DIR
#       Debian bookworm `debootstrap --variant=minbase` alone (1 layer), the base of the
#       broad benchmark set below. Tag: latest.
#   build-image.sh node|java|server|gcc|pysci|script OUT_LAYOUT WORK_DIR DEBBASE_LAYOUT
#       The broad benchmark set (docs/benchmarks.md, "Broad set"), each debbase + app layers:
#         node    nodejs (layer 2); cmd `node`
#         java    openjdk-17-jre-headless (layer 2) + /opt/hello/Hello.class (layer 3);
#                 cmd `java -cp /opt/hello Hello`
#         server  postgresql 15 with its cluster made by initdb (layer 2); user postgres,
#                 cmd `postgres` on a socket in /tmp
#         gcc     gcc + libc6-dev (layer 2); cmd `gcc --version`
#         pysci   python3 + numpy + scipy (layer 2) + pandas, matplotlib, scikit-learn,
#                 scikit-image, statsmodels, sympy, numba, torch (layer 3), >= 1 GB unpacked
#         script  sqlite3 + a shell-script entrypoint that ends in `exec sqlite3` (layer 2);
#                 entrypoint /usr/local/bin/docker-entrypoint.sh, cmd `report`
#       Tag: latest.
# OUT_LAYOUT must not exist; WORK_DIR is scratch space (deleted at the end).
# Env: MIRROR (default: the bookworm mirror from apt's sources), LOG_DIR (default WORK_DIR).
# Same steps as ../shared/env/recipe.sh's build_pydeb (verified there).
set -euo pipefail

kind=${1:?usage: build-image.sh pydeb|pylarge|debbase|node|java|server|gcc|pysci|script OUT_LAYOUT WORK_DIR [BASE_LAYOUT]}
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

# chroot_sh ROOTFS LOGNAME SCRIPT: runs SCRIPT with /bin/sh in the chroot (proc and /dev
# mounted in a private mount namespace, as apt_in_chroot does).
chroot_sh() {
  local R=$1 logname=$2 script=$3
  unshare -m --propagation private sh -c "mount -t proc proc '$R/proc' && mount --rbind /dev '$R/dev' && \
    chroot '$R' /bin/sh -ec \"\$0\"" "$script" \
    > "$logs/$logname.log" 2>&1 || { tail -20 "$logs/$logname.log" >&2; return 1; }
}

# apt_service_in_chroot ROOTFS LOGNAME PKG...: apt_in_chroot with services kept from starting
# (a policy-rc.d that refuses every start, removed again before the layer is made).
apt_service_in_chroot() {
  local R=$1
  printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"; chmod 755 "$R/usr/sbin/policy-rc.d"
  apt_in_chroot "$@"
  rm -f "$R/usr/sbin/policy-rc.d"
}

build_debbase() {
  local mirror; mirror=${MIRROR:-$(detect_mirror)}
  echo "debootstrap mirror: $mirror"
  local B=$work/bundle R=$work/bundle/rootfs
  umoci init --layout "$out"; umoci new --image "$out:latest"
  umoci unpack --image "$out:latest" "$B"
  debootstrap --variant=minbase bookworm "$R" "$mirror" > "$logs/debootstrap.log" 2>&1 \
    || { tail -20 "$logs/debootstrap.log" >&2; return 1; }
  clean_rootfs "$R"
  umoci repack --image "$out:latest" "$B"
  umoci config --image "$out:latest" --architecture amd64 --os linux \
    --config.env "$ENV_PATH" --config.cmd /bin/bash
  umoci gc --layout "$out"
}

# app_start BASE_LAYOUT: copies the base image (tag latest) to OUT and unpacks it to
# $work/bundle; app_layer then adds what changed since as one layer.
app_start() {
  local base; base=$(realpath -m "${1:?BASE_LAYOUT missing}")
  cp -a "$base" "$out"
  for t in $(umoci ls --layout "$out"); do [ "$t" = latest ] || umoci rm --image "$out:$t"; done
  umoci gc --layout "$out"
  umoci unpack --image "$out:latest" "$work/bundle"
  touch "$work/.stamp"
}

app_layer() {
  local R=$work/bundle/rootfs
  touch_parents "$R" "$work/.stamp"
  umoci repack --image "$out:latest" "$work/bundle"
  rm -rf "$work/bundle"
  umoci unpack --image "$out:latest" "$work/bundle"
  touch "$work/.stamp"
}

build_node() {
  app_start "$1"; local R=$work/bundle/rootfs
  apt_in_chroot "$R" chroot-node nodejs
  app_layer
  umoci config --image "$out:latest" --config.cmd node
}

build_java() {
  app_start "$1"; local R=$work/bundle/rootfs
  apt_in_chroot "$R" chroot-java openjdk-17-jre-headless
  app_layer
  # layer 3: a tiny application class, compiled with the JDK's compiler module when the JRE
  # carries it, else with a JDK installed into a throwaway copy of the root
  mkdir -p "$R/opt/hello" "$work/src"
  cat > "$work/src/Hello.java" <<'JAVA'
import java.util.Map;
import java.util.TreeMap;

public class Hello {
    public static void main(String[] args) {
        Map<String, Integer> words = new TreeMap<>();
        for (String w : "the quick brown fox jumps over the lazy dog".split(" ")) {
            words.merge(w, 1, Integer::sum);
        }
        System.out.println("java-ready " + words.size() + " " + String.format("%.3f", Math.sqrt(2)));
    }
}
JAVA
  cp "$work/src/Hello.java" "$R/tmp/Hello.java"
  if chroot_sh "$R" java-modules "java --list-modules | grep -q '^jdk.compiler@'"; then
    chroot_sh "$R" javac "java -m jdk.compiler/com.sun.tools.javac.Main -d /opt/hello /tmp/Hello.java"
  else
    local J=$work/jdk-root
    cp -a "$R" "$J"
    apt_in_chroot "$J" chroot-jdk openjdk-17-jdk-headless
    chroot_sh "$J" javac "javac -d /opt/hello /tmp/Hello.java"
    cp "$J"/opt/hello/*.class "$R/opt/hello/"
    rm -rf "$J"
  fi
  rm -f "$R/tmp/Hello.java"
  app_layer
  umoci config --image "$out:latest" --config.cmd java --config.cmd -cp \
    --config.cmd /opt/hello --config.cmd Hello
}

build_server() {
  app_start "$1"; local R=$work/bundle/rootfs
  apt_service_in_chroot "$R" chroot-postgres postgresql-15
  # the package's postinst made the cluster (initdb); make sure it is there
  [ -f "$R/var/lib/postgresql/15/main/PG_VERSION" ] \
    || chroot_sh "$R" initdb "pg_createcluster 15 main"
  app_layer
  umoci config --image "$out:latest" --config.user postgres \
    --config.cmd /usr/lib/postgresql/15/bin/postgres \
    --config.cmd -D --config.cmd /var/lib/postgresql/15/main \
    --config.cmd -c --config.cmd config_file=/etc/postgresql/15/main/postgresql.conf \
    --config.cmd -c --config.cmd unix_socket_directories=/tmp \
    --config.cmd -c --config.cmd external_pid_file= \
    --config.cmd -c --config.cmd listen_addresses=
}

build_gcc() {
  app_start "$1"; local R=$work/bundle/rootfs
  apt_in_chroot "$R" chroot-gcc gcc libc6-dev
  app_layer
  umoci config --image "$out:latest" --config.cmd gcc --config.cmd --version
}

build_pysci() {
  app_start "$1"; local R=$work/bundle/rootfs
  # layer 2: python with numpy and scipy; layer 3: the data-science and ML libraries
  apt_in_chroot "$R" chroot-pysci-base python3 python3-numpy python3-scipy
  app_layer
  apt_in_chroot "$R" chroot-pysci python3-pandas python3-matplotlib python3-sklearn \
    python3-skimage python3-statsmodels python3-sympy python3-numba python3-torch
  app_layer
  umoci config --image "$out:latest" --config.cmd python3
}

build_script() {
  app_start "$1"; local R=$work/bundle/rootfs
  apt_in_chroot "$R" chroot-script sqlite3
  mkdir -p "$R/etc/app"
  printf 'name = script\nrows = 200\ngreeting = hello\n' > "$R/etc/app/app.conf"
  cat > "$R/usr/local/bin/docker-entrypoint.sh" <<'SH'
#!/bin/sh
# Entrypoint of the benchmark's `script` image: shell setup (config parsing with sed, awk
# and grep, a generated SQL file), then it hands over to sqlite3.
set -eu
conf=/etc/app/app.conf
name=$(sed -n 's/^name *= *//p' "$conf")
rows=$(awk -F= '$1 ~ /^rows/ { gsub(/ /, "", $2); print $2 }' "$conf")
grep -q '^greeting' "$conf" || { echo "no greeting in $conf" >&2; exit 1; }
case "${1:-}" in
  report)
    sql=$(mktemp)
    {
      echo "CREATE TABLE t (id INTEGER PRIMARY KEY, label TEXT, at TEXT);"
      seq 1 "$rows" | awk -v d="$(date -u +%Y-%m-%d)" '{ printf "INSERT INTO t VALUES (%d, %cr%d%c, %c%s%c);\n", $1, 39, $1, 39, 39, d, 39 }'
      echo "SELECT '$name-ready', count(*), sum(id) FROM t;"
    } > "$sql"
    exec sqlite3 -batch :memory: ".read $sql"
    ;;
  *) exec "$@" ;;
esac
SH
  chmod 755 "$R/usr/local/bin/docker-entrypoint.sh"
  app_layer
  umoci config --image "$out:latest" \
    --config.entrypoint /usr/local/bin/docker-entrypoint.sh --config.cmd report
}

case "$kind" in
  pydeb) build_pydeb ;;
  pylarge) build_pylarge "${4:-}" ;;
  debbase) build_debbase ;;
  node|java|server|gcc|pysci|script) "build_$kind" "${4:-}" ;;
  *) echo "build-image.sh: unknown image kind '$kind' (pydeb|pylarge|debbase|node|java|server|gcc|pysci|script)" >&2; exit 2 ;;
esac
rm -rf "$work/bundle" "$work/.stamp"
umoci stat --image "$out:latest" | head -8

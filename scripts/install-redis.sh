#!/usr/bin/env bash
# Makes a redis-server binary available for the quota benchmark's baseline row, without touching
# the system: the Debian packages are unpacked (`apt-get download` + `dpkg -x`, no root needed)
# into <repo>/.tools/redis (git-ignored), with the shared libraries the host lacks next to them.
#
#   scripts/install-redis.sh        # prints the path of the redis-server to run (a wrapper script)
#
# The wrapper sets LD_LIBRARY_PATH to the unpacked libraries and `exec`s the real binary, so the
# PID a caller starts is redis-server's own. Idempotent: a marker holds the installed version.
# When the unpacked binary cannot run here (a library that cannot be unpacked, ldd still says "not
# found"), it falls back to `apt-get install -y redis-server` (needs root) and prints that path.
set -euo pipefail

# Debian bookworm's version; if the archive no longer has it (a newer security update replaced
# it), the candidate version of `apt-cache policy` is taken and said so.
REDIS_VERSION="5:7.0.15-1~deb12u7"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/.tools/redis"
WRAPPER="$DIR/bin/redis-server"

if [[ -x "$WRAPPER" && -f "$DIR/.installed" ]] && "$WRAPPER" --version >/dev/null 2>&1; then
    echo "$WRAPPER"
    exit 0
fi

log() { echo "install-redis: $*" >&2; }

candidate() {
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'
}

# download PACKAGE [VERSION] into the current directory; true when a .deb arrived.
download() {
    local pkg="$1" version="${2:-}"
    if [[ -n "$version" ]] && apt-get download "$pkg=$version" >/dev/null 2>&1; then
        return 0
    fi
    local cand
    cand="$(candidate "$pkg")"
    if [[ -z "$cand" || "$cand" == "(none)" ]]; then
        return 1
    fi
    [[ -n "$version" ]] && log "$pkg $version is not in the archive; taking $cand"
    apt-get download "$pkg=$cand" >/dev/null 2>&1
}

fallback_apt() {
    log "the unpacked redis-server cannot run here: $1; trying apt-get install -y redis-server"
    if [[ "$(id -u)" != 0 ]]; then
        log "apt-get install needs root: run 'sudo apt-get install -y redis-server'"
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server >&2
    # The package starts a system service on port 6379; the benchmark starts its own instance.
    command -v redis-server
    exit 0
}

command -v apt-get >/dev/null || { log "apt-get not found (Debian/Ubuntu only)"; exit 1; }

scratch="$DIR.partial"
rm -rf "$scratch"
mkdir -p "$scratch/debs" "$scratch/root" "$scratch/bin"
(
    cd "$scratch/debs"
    download redis-tools "$REDIS_VERSION" || { log "cannot download redis-tools"; exit 1; }
    download redis-server "$REDIS_VERSION" || { log "cannot download redis-server"; exit 1; }
)
for deb in "$scratch"/debs/*.deb; do
    dpkg -x "$deb" "$scratch/root"
done
# redis-server is a symlink to redis-check-rdb: the binary picks its role from argv[0].
real="$scratch/root/usr/bin/redis-server"
[[ -e "$real" ]] || { log "redis-server missing from the packages"; exit 1; }

# Unpack the libraries ldd cannot find (on a minimal host: libjemalloc2, liblzf1), then check.
libdirs="$scratch/root/usr/lib/x86_64-linux-gnu:$scratch/root/lib/x86_64-linux-gnu"
missing() { LD_LIBRARY_PATH="$libdirs" ldd "$real" | awk '/not found/ {print $1}'; }
for lib in $(missing); do
    pkg="$(dpkg -S "*/$lib" 2>/dev/null | head -n 1 | cut -d: -f1 || true)"
    if [[ -z "$pkg" ]]; then
        # Not installed on the host, so dpkg -S does not know it: the package is named after the
        # soname (libjemalloc.so.2 -> libjemalloc2, liblzf.so.1 -> liblzf1).
        base="${lib%%.so.*}"
        pkg="${base}${lib##*.so.}"
    fi
    log "unpacking $pkg for $lib"
    (cd "$scratch/debs" && download "$pkg") || fallback_apt "cannot download $pkg"
    dpkg -x "$scratch"/debs/"$pkg"_*.deb "$scratch/root"
done
if [[ -n "$(missing)" ]]; then
    fallback_apt "still missing: $(missing | tr '\n' ' ')"
fi

version="$(dpkg-deb -f "$(ls "$scratch"/debs/redis-server_*.deb)" Version)"
rm -rf "$scratch/debs"
rm -rf "$DIR"
mv "$scratch" "$DIR"
libdirs="$DIR/root/usr/lib/x86_64-linux-gnu:$DIR/root/lib/x86_64-linux-gnu"
cat >"$WRAPPER" <<EOF
#!/bin/sh
# Written by scripts/install-redis.sh: the unpacked redis-server $version with its libraries.
LD_LIBRARY_PATH="$libdirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$DIR/root/usr/bin/redis-server" "\$@"
EOF
chmod +x "$WRAPPER"
"$WRAPPER" --version >/dev/null 2>&1 || fallback_apt "$WRAPPER --version failed"
printf '%s' "$version" >"$DIR/.installed"
echo "$WRAPPER"

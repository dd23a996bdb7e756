#!/bin/sh
# The aarch64 cross build (Debian 12 host): installs the cross compiler, the arm64
# multiarch -dev packages and qemu, then builds into build-aarch64/ with
# tools/cross/aarch64-linux-gnu.ini (warnings are errors with CI=true, as in
# tools/setup.sh). tools/test-aarch64.sh then runs tests under qemu.
# Safe to run again: nothing already installed is reinstalled, the build is incremental.
set -eu
cd "$(dirname "$0")/.."

# libc6-dev:arm64 gives qemu the arm64 dynamic linker and C library where it
# looks (/lib/ld-linux-aarch64.so.1, /usr/lib/aarch64-linux-gnu); the cross
# compiler's own copies live elsewhere.
PACKAGES="gcc-aarch64-linux-gnu libc6-dev:arm64 libopenblas-dev:arm64 libcjson-dev:arm64 \
libpcre2-dev:arm64 libutf8proc-dev:arm64 libmicrohttpd-dev:arm64 \
opencl-headers qemu-user meson ninja-build pkg-config python3"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
update=false
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "setup-aarch64: adding the arm64 architecture to dpkg"
    $SUDO dpkg --add-architecture arm64
    update=true
fi
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup-aarch64: installing$missing"
    update=true
fi
if $update; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi

werror=false
[ "${CI:-}" = "true" ] && werror=true
if [ ! -f build-aarch64/build.ninja ]; then
    meson setup build-aarch64 --cross-file tools/cross/aarch64-linux-gnu.ini --buildtype=release -Dwerror=$werror
else
    meson configure build-aarch64 -Dwerror=$werror >/dev/null
fi
ninja -C build-aarch64

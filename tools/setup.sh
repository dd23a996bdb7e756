#!/bin/sh
# Install moecl's build dependencies (Debian 12 packages) and build it in build/.
# Safe to run again: packages already present are not reinstalled and the build is incremental.
# With CI=true the build treats warnings as errors.
set -eu
cd "$(dirname "$0")/.."

# opencl-headers builds the OpenCL backend; libmoecl opens the loader
# (ocl-icd-libopencl1) at run time and needs none of the OpenCL packages to run.
# libclblast-dev is optional (bench-moe's comparison); pocl-opencl-icd gives the
# tests an OpenCL device.
PACKAGES="gcc libc6-dev meson ninja-build pkg-config libopenblas-dev libcjson-dev \
opencl-headers ocl-icd-libopencl1 libclblast-dev pocl-opencl-icd mesa-opencl-icd clinfo \
clang libclang-rt-14-dev libmicrohttpd-dev libpcre2-dev libutf8proc-dev valgrind \
libcairo2-dev libfontconfig-dev"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing$missing"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi

werror=false
[ "${CI:-}" = "true" ] && werror=true
if [ ! -f build/build.ninja ]; then
    meson setup build --buildtype=release -Dwerror=$werror
else
    meson configure build -Dwerror=$werror >/dev/null
fi
ninja -C build

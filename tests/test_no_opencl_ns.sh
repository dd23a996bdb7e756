#!/bin/sh
# The CPU suite where no OpenCL library can be opened at all, not only the
# one $MOECL_OPENCL_LIBRARY names: in a private mount namespace every
# libOpenCL.so* the dynamic linker knows is covered with /dev/null, then
# `moecl devices` must say the library cannot be loaded and the programs
# given (the embedding example, the decode test) must pass. Skips where
# namespaces are not allowed (not root, or a container that forbids them).
#   test_no_opencl_ns.sh MOECL MODEL_DIR PROGRAM [ARGS] [-- PROGRAM [ARGS]]...
set -u
command -v unshare >/dev/null || { echo "test_no_opencl_ns: SKIP: unshare not found" >&2; exit 77; }
if [ "${MOECL_IN_NS:-}" != 1 ]; then
    unshare -m true 2>/dev/null || { echo "test_no_opencl_ns: SKIP: no mount namespace (needs root)" >&2; exit 77; }
    MOECL_IN_NS=1 exec unshare -m "$0" "$@"
fi
unset MOECL_OPENCL_LIBRARY
moecl="$1"; model="$2"; shift 2
libs=$( (ldconfig -p 2>/dev/null | sed -n 's/.*libOpenCL\.so.* => //p'
         ls /usr/lib/*/libOpenCL.so* /usr/lib/libOpenCL.so* /lib/*/libOpenCL.so* 2>/dev/null) | sort -u)
for l in $libs; do
    mount --bind /dev/null "$l" || { echo "test_no_opencl_ns: cannot cover $l" >&2; exit 1; }
done
out=$("$moecl" devices 2>&1) || { echo "test_no_opencl_ns: moecl devices exits $?: $out" >&2; exit 1; }
case "$out" in
    *"cannot load the OpenCL library"*) ;;
    *) echo "test_no_opencl_ns: OpenCL still loads after covering:" $libs "-> $out" >&2; exit 1 ;;
esac
echo "test_no_opencl_ns: covered:" $libs >&2
fail=0
while [ $# -gt 0 ]; do
    cmd=""
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do cmd="$cmd '$1'"; shift; done
    [ $# -gt 0 ] && shift
    eval "$cmd" >/dev/null || { echo "test_no_opencl_ns: failed without OpenCL:$cmd" >&2; fail=1; }
done
[ $fail = 0 ] && echo "test_no_opencl_ns: ok" >&2
exit $fail

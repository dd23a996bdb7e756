#!/bin/sh
# The shared library starts without OpenCL: no NEEDED libOpenCL (or CLBlast),
# no undefined cl* symbol (every entry point comes from cl_loader.c's dlopen).
#   check_needed.sh LIBMOECL_SO
set -u
lib="$1"
command -v readelf >/dev/null || { echo "check_needed: SKIP: readelf not found" >&2; exit 77; }
command -v nm >/dev/null || { echo "check_needed: SKIP: nm not found" >&2; exit 77; }
needed=$(readelf -d "$lib" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
[ -n "$needed" ] || { echo "check_needed: no NEEDED entries read from $lib" >&2; exit 1; }
bad=$(printf '%s\n' "$needed" | grep -i -E 'opencl|clblast' || true)
[ -z "$bad" ] || { echo "check_needed: $lib needs $bad" >&2; exit 1; }
undef=$(nm -D --undefined-only "$lib" | awk '{print $NF}' | grep '^cl[A-Z]' || true)
[ -z "$undef" ] || { echo "check_needed: undefined OpenCL symbols in $lib:" $undef >&2; exit 1; }
echo "check_needed: $lib needs only:" $needed >&2

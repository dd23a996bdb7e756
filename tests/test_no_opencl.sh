#!/bin/sh
# With no OpenCL library to open ($MOECL_OPENCL_LIBRARY names a file that does
# not exist), the CLI runs on the CPU and says why OpenCL is unavailable:
# `moecl devices` names the library and the loader's error, `--backend auto`
# decodes the same ids as `--backend cpu` and logs the reason at INFO, and
# `--backend opencl` fails with it.
#   test_no_opencl.sh MOECL MODEL_DIR
set -u
moecl="$1"; model="$2"; fail=0
lib=/nonexistent/libOpenCL.so.1
export MOECL_OPENCL_LIBRARY="$lib"
err() { echo "test_no_opencl: $*" >&2; fail=1; }
log="${TMPDIR:-/tmp}/moecl_no_opencl.$$"

out=$("$moecl" devices 2>&1) || err "moecl devices exits $?: $out"
case "$out" in
    *"cannot load the OpenCL library"*"$lib"*) ;;
    *) err "moecl devices does not say why OpenCL is unavailable: $out" ;;
esac

cpu=$("$moecl" run -m "$model" --tokens 1,2,3 -n 4 --temp 0 --ids --backend cpu 2>"$log") ||
    err "run --backend cpu exits $?: $(cat "$log")"
auto=$("$moecl" run -m "$model" --tokens 1,2,3 -n 4 --temp 0 --ids --backend auto -v 2>"$log") ||
    err "run --backend auto exits $?: $(cat "$log")"
case "$cpu" in "["*"]") ;; *) err "run --backend cpu printed no ids: '$cpu'" ;; esac
[ "$auto" = "$cpu" ] || err "run --backend auto: ids '$auto', --backend cpu: '$cpu'"
grep -q "info: opencl: unavailable: cannot load the OpenCL library ($lib" "$log" ||
    err "run --backend auto -v does not log why OpenCL is unavailable: $(cat "$log")"

if "$moecl" run -m "$model" --tokens 1,2,3 -n 4 --backend opencl >/dev/null 2>"$log"; then
    err "run --backend opencl succeeded without an OpenCL library"
fi
grep -q "OpenCL backend is unavailable: cannot load the OpenCL library ($lib" "$log" ||
    err "run --backend opencl does not say why: $(cat "$log")"
rm -f "$log"
[ $fail = 0 ] && echo "test_no_opencl: ok, ids $cpu on the CPU" >&2
exit $fail

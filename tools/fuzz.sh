#!/bin/sh
# Build the libFuzzer targets (clang, ASan + UBSan) in build-fuzz/ and run each for
# SECONDS (default 60), seeded from tests/fuzz/corpus/<target>/ and the regressions in
# tests/fuzz/regress/<target>/. New inputs go to a scratch corpus, not the repository.
# Exit status is non-zero if any target found a crash: the input is left as
# build-fuzz/crash-<target>-*; copy it into tests/fuzz/regress/<target>/ once fixed.
#
#   tools/fuzz.sh [SECONDS] [TARGET...]
#       TARGET: fuzz_gguf fuzz_safetensors fuzz_config_json fuzz_tokenizer_json fuzz_serve_request
#       (default: all)
set -eu
cd "$(dirname "$0")/.."
secs="${1:-60}"
[ $# -gt 0 ] && shift
targets="${*:-fuzz_gguf fuzz_safetensors fuzz_config_json fuzz_tokenizer_json fuzz_serve_request}"

if ! command -v clang >/dev/null 2>&1; then
    echo "fuzz: clang is not installed (tools/setup.sh installs it)" >&2
    exit 1
fi
if [ ! -f build-fuzz/build.ninja ]; then
    CC=clang meson setup build-fuzz --buildtype=debugoptimized -Dfuzz=true \
        -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
fi
ninja -C build-fuzz $(for t in $targets; do printf 'tests/%s ' "$t"; done) >/dev/null

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
status=0
for t in $targets; do
    work="build-fuzz/corpus-$t"
    mkdir -p "$work"
    echo "fuzz: $t for ${secs}s"
    regress=""  # libFuzzer stops on a missing directory: a target may have no regressions yet
    [ -d "tests/fuzz/regress/$t" ] && regress="tests/fuzz/regress/$t"
    dict=""
    # JSON inputs are at most 64 KiB here: no single allocation needs 128 MB (a large token id
    # once made a 27 KB tokenizer.json allocate 700 MB; the malloc limit makes that a crash)
    case "$t" in *_json) dict="-dict=tests/fuzz/json.dict -malloc_limit_mb=128" ;; esac
    if ! build-fuzz/tests/"$t" -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
            -print_final_stats=1 -artifact_prefix="build-fuzz/crash-$t-" $dict \
            "$work" "tests/fuzz/corpus/$t" $regress >"build-fuzz/$t.log" 2>&1; then
        echo "fuzz: $t FAILED; see build-fuzz/$t.log and build-fuzz/crash-$t-*" >&2
        tail -40 "build-fuzz/$t.log" >&2
        status=1
    else
        grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "build-fuzz/$t.log" | sed "s/^/fuzz: $t: /"
    fi
done
exit $status

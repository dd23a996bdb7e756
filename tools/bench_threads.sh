#!/bin/bash
# Generation tok/s on T threads, on a quiet machine and with one competing busy
# process, for several programs run back to back, interleaved, over ROUNDS rounds;
# prints min / median / max per program and load (issue 10, item 5).
#
#   tools/bench_threads.sh MODEL.gguf ROUNDS NAME=COMMAND...
#
# COMMAND is run by bash with $M set to the model file; it must print one number,
# the generation tok/s. Helpers for the usual programs (exported functions; under
# env, call them through bash -c):
#   moecl_tg BINARY    moecl bench -p 16 -n 64 -t $T -r 1 --backend cpu
#   llama_tg           llama-bench -p 0 -n 64 -t $T -r 1 ($LLAMA_BENCH)
# Example (what issue 10 item 5 measured):
#   tools/bench_threads.sh /tmp/mm-q4_K_M.gguf 3 \
#     'omp=env -u OMP_WAIT_POLICY bash -c "moecl_tg /tmp/omp-build/moecl"' \
#     'omp-passive=OMP_WAIT_POLICY=passive bash -c "moecl_tg /tmp/omp-build/moecl"' \
#     'pool=moecl_tg build/moecl' 'llama=llama_tg'
# llama-bench needs a GGUF with a tokenizer (moecl quantize of a directory that has
# tokenizer.json). /tmp/omp-build: `meson setup /tmp/omp-build MAIN && ninja -C
# /tmp/omp-build moecl` on a checkout from before the pool. The competing process
# is `nice -n 0 sh -c 'while :; do :; done'`, started before and killed after each
# program's run in the "busy" half of a round.
set -u
T=${T:-2}
LLAMA_BENCH=${LLAMA_BENCH:-/work/llama.cpp/build/bin/llama-bench}
export T LLAMA_BENCH

moecl_tg() {
    timeout 300 "$@" bench -m "$M" -p 16 -n 64 -t "$T" -r 1 --backend cpu 2>/dev/null |
        sed -n 's/^tg64: \([0-9.]*\) tokens.*/\1/p'
}
llama_tg() {
    timeout 300 "$LLAMA_BENCH" -m "$M" -p 0 -n 64 -t "$T" -r 1 -o csv 2>/dev/null |
        python3 -c 'import csv, sys; r = list(csv.DictReader(sys.stdin)); print(r[-1]["avg_ts"] if r else "")'
}
export -f moecl_tg llama_tg

if [ $# -lt 3 ]; then
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
M=$1
ROUNDS=$2
shift 2
export M
names=()
cmds=()
for a in "$@"; do
    names+=("${a%%=*}")
    cmds+=("${a#*=}")
done
out=$(mktemp)
echo "model $M, $T threads, $ROUNDS rounds; load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
    for load in quiet busy; do
        for i in "${!names[@]}"; do
            spinner=""
            if [ "$load" = busy ]; then
                nice -n 0 sh -c 'while :; do :; done' &
                spinner=$!
                sleep 0.5
            fi
            v=$(bash -c "${cmds[$i]}")
            [ -n "$spinner" ] && kill "$spinner" && wait "$spinner" 2>/dev/null
            echo "round $r $load ${names[$i]}: ${v:-failed} tok/s (load $(cut -d' ' -f1 /proc/loadavg))"
            echo "$load ${names[$i]} ${v:-nan}" >>"$out"
        done
    done
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
order = []
for load, name, _ in rows:
    if (name, load) not in order: order.append((name, load))
print(f"{'program':<14}{'load':<7}{'min':>9}{'median':>9}{'max':>9}  tok/s")
for name, load in order:
    v = sorted(float(x) for l, n, x in rows if n == name and l == load and x != "nan")
    if v: print(f"{name:<14}{load:<7}{v[0]:>9.1f}{statistics.median(v):>9.1f}{v[-1]:>9.1f}")
    else: print(f"{name:<14}{load:<7}   failed")
PY
rm -f "$out"

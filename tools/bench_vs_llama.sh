#!/bin/bash
# moecl against llama.cpp on the same GGUF files: prompt and generation tok/s,
# both programs run back to back, interleaved, over several rounds, at equal depth;
# prints a table of min / median / max per program and the ratio moecl / llama.cpp
# (ratio of the medians, and the range of the per-round ratios).
#
#   tools/bench_vs_llama.sh [options] MODEL.gguf...
#
#   -r ROUNDS      rounds (default 3); each round runs every model at every thread count
#   -t LIST        thread counts, comma-separated (default 1,2)
#   -p N           prompt tokens, pp N (default 512)
#   -n N           generated tokens, tg N (default 128)
#   --moecl BIN    moecl binary (default build/moecl beside this script)
#   --llama BIN    llama-bench (default $LLAMA_BENCH or /work/llama.cpp/build/bin/llama-bench)
#   --kv TYPE      moecl's KV cache cells, f16 or f32 (default f16: llama-bench's default cache)
#   --raw FILE     also append every measurement to FILE (one line per program and test)
#   --dry          print the commands of round 1 instead of running anything
#
# Equal depth: both programs time the prompt on an empty cache and generate from an
# empty cache (llama-bench's tg; `moecl bench -d 0`). One round runs, for every
# model and thread count, `llama-bench -p N -n N -r 1` and `moecl bench -p N -n N
# -d 0 -r 1`, each with its own warm-up; which program goes first alternates from
# one round to the next, so that a drift in the machine's load or temperature
# does not favour one of them. llama-bench needs a GGUF with a tokenizer (what
# `moecl quantize` and `moecl generate` write). The table's header records the
# date, the CPU, the load average before and after, and both programs' versions.
set -u
here=$(cd "$(dirname "$0")" && pwd)
ROUNDS=3
THREADS=1,2
NP=512
NG=128
KV=f16
MOECL=$here/../build/moecl
LLAMA=${LLAMA_BENCH:-/work/llama.cpp/build/bin/llama-bench}
RAW=
DRY=0
models=()
usage() {
    sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}
while [ $# -gt 0 ]; do
    case $1 in
    -r) ROUNDS=$2; shift 2 ;;
    -t) THREADS=$2; shift 2 ;;
    -p) NP=$2; shift 2 ;;
    -n) NG=$2; shift 2 ;;
    --moecl) MOECL=$2; shift 2 ;;
    --llama) LLAMA=$2; shift 2 ;;
    --kv) KV=$2; shift 2 ;;
    --raw) RAW=$2; shift 2 ;;
    --dry) DRY=1; shift ;;
    -h | --help) usage ;;
    -*) echo "bench_vs_llama: unknown option $1" >&2; usage ;;
    *) models+=("$1"); shift ;;
    esac
done
[ ${#models[@]} -gt 0 ] || usage
for v in "$ROUNDS" "$NP" "$NG"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "bench_vs_llama: '$v' is not a positive count" >&2; exit 2; }
done
[[ $THREADS =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { echo "bench_vs_llama: -t wants a list like 1,2" >&2; exit 2; }
[ "$KV" = f16 ] || [ "$KV" = f32 ] || { echo "bench_vs_llama: --kv is f16 or f32" >&2; exit 2; }
if [ $DRY = 0 ]; then
    for b in "$MOECL" "$LLAMA"; do
        [ -x "$b" ] || { echo "bench_vs_llama: $b is not an executable (--moecl / --llama)" >&2; exit 1; }
    done
    for m in "${models[@]}"; do
        [ -r "$m" ] || { echo "bench_vs_llama: cannot read $m" >&2; exit 1; }
    done
fi
IFS=, read -r -a tlist <<<"$THREADS"
# llama-bench finds its shared libraries beside it when built with shared libs.
export LD_LIBRARY_PATH=$(dirname "$LLAMA")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

rec=$(mktemp)
trap 'rm -f "$rec"' EXIT

# One line per result on stdout: "pp|tg TOK_PER_S".
run_moecl() { # MODEL THREADS
    timeout 1800 "$MOECL" bench -m "$1" -p "$NP" -n "$NG" -d 0 -t "$2" -r 1 --backend cpu --kv-type "$KV" \
        2>/dev/null | sed -n "s/^pp$NP: \([0-9.]*\) tokens.*/pp \1/p; s/^tg$NG: \([0-9.]*\) tokens.*/tg \1/p"
}
run_llama() { # MODEL THREADS
    timeout 1800 "$LLAMA" -m "$1" -p "$NP" -n "$NG" -t "$2" -r 1 -o csv 2>/dev/null | python3 -c '
import csv, sys
for r in csv.DictReader(sys.stdin):
    if int(r["n_prompt"]) > 0 and int(r["n_gen"]) == 0: print("pp", r["avg_ts"])
    if int(r["n_prompt"]) == 0 and int(r["n_gen"]) > 0: print("tg", r["avg_ts"])'
}
one() { # PROGRAM MODEL THREADS ROUND
    local out
    if [ $DRY = 1 ]; then
        if [ "$1" = moecl ]; then
            echo "$MOECL bench -m $2 -p $NP -n $NG -d 0 -t $3 -r 1 --backend cpu --kv-type $KV"
        else
            echo "$LLAMA -m $2 -p $NP -n $NG -t $3 -r 1 -o csv"
        fi
        return
    fi
    out=$(run_"$1" "$2" "$3")
    if [ "$(wc -l <<<"$out")" != 2 ]; then
        echo "bench_vs_llama: $1 on $2 at $3 threads gave no result (run it by hand to see why)" >&2
        return
    fi
    while read -r test ts; do
        line="$(basename "$2") $3 $test $1 $4 $ts"
        echo "$line" >>"$rec"
        [ -n "$RAW" ] && echo "$(date -u +%T) $line load $(cut -d' ' -f1 /proc/loadavg)" >>"$RAW"
        echo "  $(date -u +%T) round $4 $(basename "$2") t=$3 $1 $test$([ "$test" = pp ] && echo "$NP" || echo "$NG") $ts tok/s" >&2
    done <<<"$out"
}

load0=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
for r in $(seq 1 "$ROUNDS"); do
    for m in "${models[@]}"; do
        for t in "${tlist[@]}"; do
            if [ $((r % 2)) = 1 ]; then
                one llama "$m" "$t" "$r"
                one moecl "$m" "$t" "$r"
            else
                one moecl "$m" "$t" "$r"
                one llama "$m" "$t" "$r"
            fi
        done
    done
    [ $DRY = 1 ] && exit 0
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)

cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
mver=$("$MOECL" --help 2>/dev/null | head -1 | cut -d" " -f1-2)
mgit=$(git -C "$here/.." describe --always --dirty 2>/dev/null)
lver=$("$LLAMA" -m "${models[0]}" -p 0 -n 1 -r 1 -o csv 2>/dev/null | python3 -c '
import csv, sys
r = list(csv.DictReader(sys.stdin))
print("%s (%s)" % (r[0]["build_commit"], r[0]["build_number"]) if r else "?")')
echo "moecl vs llama.cpp, pp$NP and tg$NG from an empty cache, $ROUNDS rounds, interleaved"
echo "date: $start; CPU: $cpu, $(nproc) cores visible; load before $load0, after $load1"
echo "moecl: ${mver:-moecl} $mgit ($MOECL, --kv-type $KV); llama.cpp: $lver ($LLAMA)"
python3 - "$rec" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(dict)  # (model, threads, test, program) -> {round: tok/s}
for line in open(sys.argv[1]):
    model, t, test, prog, rnd, ts = line.split()
    runs[(model, int(t), test, prog)][int(rnd)] = float(ts)
keys = sorted({k[:3] for k in runs}, key=lambda k: (k[0], k[1], k[2] != "tg"))
print()
print("| model | threads | test | moecl tok/s min / median / max | llama.cpp tok/s min / median / max "
      "| ratio of medians | per-round ratio range |")
print("| --- | --- | --- | --- | --- | --- | --- |")
fmt = lambda v: "%.2f / %.2f / %.2f" % (min(v), statistics.median(v), max(v)) if v else "-"
for k in keys:
    mo, ll = runs.get(k + ("moecl",), {}), runs.get(k + ("llama",), {})
    m, l = list(mo.values()), list(ll.values())
    ratio = "%.2f" % (statistics.median(m) / statistics.median(l)) if m and l else "-"
    per = [mo[r] / ll[r] for r in mo if r in ll]
    rng = "%.2f-%.2f" % (min(per), max(per)) if per else "-"
    print(f"| {k[0]} | {k[1]} | {k[2]} | {fmt(m)} | {fmt(l)} | {ratio} | {rng} |")
EOF

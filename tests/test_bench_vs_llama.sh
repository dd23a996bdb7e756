#!/bin/bash
# tools/bench_vs_llama.sh's bookkeeping, with two stand-in programs whose tok/s
# are known: each prints a figure that depends on the round (a counter file), the
# test and the thread count, so the table's medians, ranges and ratios can be
# computed by hand. Also: the order alternates between rounds, a program that gives
# no result is reported and left out, and bad options are refused.
#
#   test_bench_vs_llama.sh SCRIPT WORKDIR
set -eu
script=$1
work=$2
rm -rf "$work"
mkdir -p "$work"
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
command -v python3 >/dev/null || { echo "python3 is needed by bench_vs_llama.sh" >&2; exit 77; }

# Stand-ins. moecl: pp = 100 * round * threads, tg = 10 * round² (rounds 1, 2, 3: a
# median that is not the mean);
# llama: pp = 200 * threads, tg = 10 always. Each appends its name to the order log.
cat >"$work/moecl" <<'EOF'
#!/bin/bash
[ "$1" = --help ] && { echo "moecl 9.9 - stand-in"; exit 0; }
d=$(dirname "$0"); n=$(cat "$d/n.moecl" 2>/dev/null || echo 0); n=$((n + 1)); echo $n >"$d/n.moecl"
t=0; m=; while [ $# -gt 0 ]; do [ "$1" = -t ] && t=$2; [ "$1" = -m ] && m=$2; shift; done
echo "moecl $(basename "$m") $t" >>"$d/order"
case $m in *broken*) exit 1 ;; esac
r=$(( (n - 1) / 2 + 1 )) # one model, two thread counts per round
echo "model: stand-in"
echo "pp512: $((100 * r * t)).00 tokens/s (median of 1)"
echo "tg128: $((10 * r * r)).00 tokens/s (median of 1), 1.00 GB/s of weights read, from depth 0"
EOF
cat >"$work/llama-bench" <<'EOF'
#!/bin/bash
d=$(dirname "$0")
t=0; m=; g=128; while [ $# -gt 0 ]; do [ "$1" = -t ] && t=$2; [ "$1" = -m ] && m=$2; [ "$1" = -n ] && g=$2; shift; done
[ "$g" = 1 ] || echo "llama $(basename "$m") $t" >>"$d/order"
echo 'build_commit,build_number,n_prompt,n_gen,avg_ts'
echo "\"abc1234\",4321,512,0,\"$((200 * t)).000000\""
echo "\"abc1234\",4321,0,128,\"10.000000\""
EOF
chmod +x "$work/moecl" "$work/llama-bench"
: >"$work/m.gguf"

out=$("$script" -r 3 -t 1,2 --moecl "$work/moecl" --llama "$work/llama-bench" --raw "$work/raw" "$work/m.gguf" 2>"$work/err")
echo "$out"
row() { grep -F "| m.gguf | $1 | $2 |" <<<"$out" || fail "no row for t=$1 $2"; }
# tg: moecl 10 / 40 / 90 against llama 10: ratio of medians 4.00, per round 1.00-9.00.
[ "$(row 1 tg)" = "| m.gguf | 1 | tg | 10.00 / 40.00 / 90.00 | 10.00 / 10.00 / 10.00 | 4.00 | 1.00-9.00 |" ] ||
    fail "t=1 tg: $(row 1 tg)"
# pp at 2 threads: moecl 200 / 400 / 600 against llama 400: 1.00, 0.50-1.50.
[ "$(row 2 pp)" = "| m.gguf | 2 | pp | 200.00 / 400.00 / 600.00 | 400.00 / 400.00 / 400.00 | 1.00 | 0.50-1.50 |" ] ||
    fail "t=2 pp: $(row 2 pp)"
grep -q "llama.cpp: abc1234 (4321)" <<<"$out" || fail "llama.cpp's version missing"
grep -q "moecl: moecl 9.9" <<<"$out" || fail "moecl's version missing"
[ "$(wc -l <"$work/raw")" = 24 ] || fail "raw file: $(wc -l <"$work/raw") lines, want 24"
# Order: llama first in odd rounds, moecl first in even ones.
expect=$(printf '%s\n' "llama m.gguf 1" "moecl m.gguf 1" "llama m.gguf 2" "moecl m.gguf 2" \
    "moecl m.gguf 1" "llama m.gguf 1" "moecl m.gguf 2" "llama m.gguf 2" \
    "llama m.gguf 1" "moecl m.gguf 1" "llama m.gguf 2" "moecl m.gguf 2")
[ "$(cat "$work/order")" = "$expect" ] || fail "order: $(cat "$work/order")"

# A program without a result: said on stderr, its cells empty, no ratio.
: >"$work/broken.gguf"
rm -f "$work/n.moecl"
out=$("$script" -r 1 -t 1 --moecl "$work/moecl" --llama "$work/llama-bench" "$work/broken.gguf" 2>"$work/err")
grep -q "moecl on .*broken.gguf at 1 threads gave no result" "$work/err" || fail "no message for a failed run"
grep -qF "| broken.gguf | 1 | tg | - | 10.00 / 10.00 / 10.00 | - | - |" <<<"$out" || fail "failed run's row: $out"

# Refusals.
for bad in "-r 0" "-t 1,,2" "-p x" "--kv q8"; do
    # shellcheck disable=SC2086
    if "$script" $bad --moecl "$work/moecl" --llama "$work/llama-bench" "$work/m.gguf" >/dev/null 2>&1; then
        fail "accepted $bad"
    fi
done
"$script" --moecl "$work/nothing" --llama "$work/llama-bench" "$work/m.gguf" >/dev/null 2>&1 && fail "missing binary"
echo "bench_vs_llama: table, order and refusals as expected"

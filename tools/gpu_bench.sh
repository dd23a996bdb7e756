#!/usr/bin/env bash
# gpu_bench.sh - issue 11's GPU measurements ("Measure") in one run.
#
#   tools/gpu_bench.sh [--small] [--dry] [--layers N] [--out DIR] [--device SEL]
#                      [--build-dir DIR] [--debs DIR] [--jobs N] [--reps N]
#   tools/gpu_bench.sh --fetch-debs DIR
#
# On a machine with an OpenCL GPU (NVIDIA: the driver's libnvidia-opencl and
# /etc/OpenCL/vendors/nvidia.icd), from a clone of moecl:
#   1. builds moecl (release) in --build-dir (default OUT/build; an existing
#      build there is reused);
#   2. measures the device: read bandwidth and one host round trip (the
#      placement planner's probe, measured afresh) and CLBlast's SGEMM rate
#      (build/bench-device);
#   3. for two shapes - mixtral-mini (hidden 1024, 8 layers, 16/4 heads,
#      8 experts top-2, FFN 3584) and Mixtral 8x7B's layer dimensions (hidden
#      4096, 32/8 heads, 8 experts top-2, FFN 14336, vocabulary 32000) with
#      --layers N layers (default 4: 11 GB in F16; disk and time decide) -
#      each in F16 and Q4_K_M (random weights, `moecl generate` and
#      `moecl quantize`): `moecl info`'s plan and prediction, then
#      `moecl bench` with every expert on the device (--placement experts),
#      with the dense layers and every expert there (--placement dense: the
#      hidden states stay on the device; quantized dense weights go there
#      dequantized to F32), as the planner chooses (auto: dense too when the
#      measured bandwidths say so), with the planner given half the experts'
#      bytes (--gpu-mem), and on the CPU alone;
#   4. writes OUT/results.tsv and OUT/results.md: generation tokens/s and the
#      fraction of the device's read bandwidth it reaches (bytes read per
#      token x tokens/s / bandwidth), prompt tokens/s and the fraction of the
#      SGEMM rate (2 x active parameters x tokens/s / rate), the planner's
#      prediction, and per layer the round trip and the time a generated
#      token spends beyond what its bytes cost at the device's bandwidth.
#      Everything the programs printed is in OUT/log.txt.
#
# --small: tiny shapes (hidden 256) on whatever device there is (PoCL here:
# --device pocl), short runs; this is how the script is tested without a GPU.
# --dry: print the commands instead of running them.
#
# A machine with nothing but the driver: the build needs Debian 12 packages
# (gcc, libc6-dev, meson, ninja-build, pkg-config, python3, libopenblas-dev,
# libcjson-dev, libpcre2-dev, libutf8proc-dev, libmicrohttpd-dev,
# opencl-headers, ocl-icd-libopencl1, libclblast-dev and their dependencies).
# On a Debian 12 machine with apt, `tools/gpu_bench.sh --fetch-debs DIR`
# downloads them with every dependency (apt-get download; nothing installed);
# copy DIR along, and on the GPU machine `--debs DIR` unpacks each .deb
# under OUT/prefix (dpkg-deb -x, no root, nothing installed system-wide),
# points PATH, CPATH, LIBRARY_PATH, LD_LIBRARY_PATH, PKG_CONFIG_PATH and
# PYTHONPATH there, and rewrites the pkg-config files' /usr to the prefix.
# libmoecl opens libOpenCL.so.1 at run time: the driver's or the prefix's
# loader finds the NVIDIA ICD through /etc/OpenCL/vendors (or OCL_ICD_VENDORS).
# The prefix's libc6-dev links against the machine's own glibc (its libc.so
# names /lib/x86_64-linux-gnu/libc.so.6), which must be at least Debian 12's
# 2.36; on an older system build in a Debian 12 container instead. Checked
# here: the pkg-config rewrite (libcjson from unpacked .debs resolves to the
# prefix); not checked: a whole build on a machine without a compiler.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
small=0 dry=0 layers=4 out="$PWD/gpu-bench" dev="${MOECL_DEVICE:-}" build="" debs="" fetch=""
jobs=$(nproc 2>/dev/null || echo 4) reps=3
while [ $# -gt 0 ]; do
    case "$1" in
        --small) small=1 ;;
        --dry) dry=1 ;;
        --layers) layers="$2"; shift ;;
        --out) out="$2"; shift ;;
        --device) dev="$2"; shift ;;
        --build-dir) build="$2"; shift ;;
        --debs) debs="$2"; shift ;;
        --fetch-debs) fetch="$2"; shift ;;
        --jobs) jobs="$2"; shift ;;
        --reps) reps="$2"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//; $d'; exit 0 ;;
        *) echo "gpu_bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

PKGS="gcc libc6-dev meson ninja-build pkg-config python3 libopenblas-dev libcjson-dev libpcre2-dev \
libutf8proc-dev libmicrohttpd-dev opencl-headers ocl-icd-libopencl1 libclblast-dev"

if [ -n "$fetch" ]; then
    mkdir -p "$fetch" && cd "$fetch"
    # every dependency, recursively, as .deb files (virtual packages have no file: skipped)
    deps=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
           --no-enhances $PKGS | grep '^[a-zA-Z0-9]' | sort -u)
    apt-get download $deps 2>&1 | grep -v '^Get:' || true
    echo "gpu_bench.sh: $(ls ./*.deb | wc -l) packages in $fetch"
    exit 0
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -n "$build" ] || build="$out/build"
logf="$out/log.txt"
: >"$logf"
log() { echo "[$(date +%T)] $*" | tee -a "$logf" >&2; }
# run CMD...: log it, run it with its output appended to the log (and to $last)
last="$out/last.txt"
run() {
    log "\$ $*"
    if [ $dry = 1 ]; then : >"$last"; return 0; fi
    "$@" >"$last" 2>&1 || { cat "$last" >>"$logf"; log "FAILED: $*"; tail -20 "$last" >&2; return 1; }
    cat "$last" >>"$logf"
}

# ---- packages unpacked under a prefix --------------------------------------------
if [ -n "$debs" ]; then
    prefix="$out/prefix"
    mkdir -p "$prefix"
    for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$prefix"; done
    multi=x86_64-linux-gnu
    for pc in "$prefix"/usr/lib/$multi/pkgconfig/*.pc "$prefix"/usr/share/pkgconfig/*.pc; do
        [ -f "$pc" ] && sed -i "s|=/usr|=$prefix/usr|g" "$pc"
    done
    export PATH="$prefix/usr/bin:$PATH"
    export CPATH="$prefix/usr/include:$prefix/usr/include/$multi${CPATH:+:$CPATH}"
    export LIBRARY_PATH="$prefix/usr/lib/$multi:$prefix/lib/$multi${LIBRARY_PATH:+:$LIBRARY_PATH}"
    export LD_LIBRARY_PATH="$prefix/usr/lib/$multi:$prefix/lib/$multi${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export PKG_CONFIG_PATH="$prefix/usr/lib/$multi/pkgconfig:$prefix/usr/share/pkgconfig"
    export PYTHONPATH="$prefix/usr/lib/python3/dist-packages${PYTHONPATH:+:$PYTHONPATH}"
    log "packages from $debs unpacked under $prefix"
fi

# ---- build --------------------------------------------------------------------------
meson=(meson)
# the unpacked meson's #! names /usr/bin/python3, which a bare machine may lack
[ -n "$debs" ] && [ -f "$out/prefix/usr/bin/meson" ] && meson=(python3 "$out/prefix/usr/bin/meson")
if [ ! -f "$build/build.ninja" ]; then
    run "${meson[@]}" setup "$build" "$src" --buildtype=release
fi
run ninja -C "$build" moecl bench-device
build=$(cd "$build" && pwd)
moecl="$build/moecl"
mkdir -p "$out/models"

# ---- the device -------------------------------------------------------------------
export OMP_WAIT_POLICY=passive # PoCL shares the cores with OpenMP (moecl warns otherwise)
export MOECL_CACHE_DIR="$out/cache"
[ -n "$dev" ] && export MOECL_DEVICE="$dev"
run "$moecl" devices
run "$build/bench-device" $([ $small = 1 ] && echo --small)
kv() { sed -n "s/^$1=//p" "$last" | head -1; }
dev_name=$(kv device) read_gbs=$(kv read_gbs) rtt_us=$(kv rtt_us) gflops=$(kv sgemm_gflops)
[ $dry = 1 ] && dev_name=dry read_gbs=1 rtt_us=1 gflops=1
log "device: $dev_name, reads $read_gbs GB/s, round trip $rtt_us us, CLBlast SGEMM $gflops GFLOP/s"

# ---- models -----------------------------------------------------------------------
if [ $small = 1 ]; then
    shapes=("small-a:--hidden 256 --ff 512 --layers 2 --heads 4 --kv-heads 2 --experts 4 --top-k 2 --vocab 512"
            "small-b:--hidden 256 --ff 768 --layers 3 --heads 8 --kv-heads 2 --experts 8 --top-k 2 --vocab 512")
    np=32 ng=8 reps=1
else
    shapes=("mixtral-mini:--preset mini"
            "mixtral-8x7b-$layers:--hidden 4096 --ff 14336 --heads 32 --kv-heads 8 --experts 8 --top-k 2 --vocab 32000 --layers $layers")
    np=512 ng=64
fi

tsv="$out/results.tsv"
printf 'model\tplacement\tpp_tok_s\ttg_tok_s\tmb_per_token\tgen_frac_bw\tprompt_frac_gemm\tpredicted_tok_s\tbeyond_bw_us_per_layer\n' >"$tsv"
num() { [ -n "$1" ] && echo "$1" || echo nan; }

# bench NAME MODEL LABEL OPTIONS...: one `moecl bench`, one row of results
bench() {
    local name="$1" model="$2" label="$3"
    shift 3
    run "$moecl" bench -m "$model" -p "$np" -n "$ng" -r "$reps" -t "$jobs" "$@" || return 0
    [ $dry = 1 ] && return 0
    local pp tg mb
    pp=$(sed -n "s/^pp$np: \([0-9.]*\) tokens.*/\1/p" "$last")
    tg=$(sed -n "s/^tg$ng: \([0-9.]*\) tokens.*/\1/p" "$last")
    mb=$(sed -n 's/.* \([0-9.]*\) MB read per generated token.*/\1/p' "$last")
    awk -v n="$name" -v l="$label" -v pp="$(num "$pp")" -v tg="$(num "$tg")" -v mb="$(num "$mb")" \
        -v bw="$read_gbs" -v gf="$gflops" -v act="$active" -v pred="$predicted" -v rtt="$rtt_us" -v L="$n_layer" \
        'BEGIN {
            gen = (bw > 0) ? tg * mb * 1e6 / (bw * 1e9) : "nan";
            pr = (gf > 0) ? pp * 2 * act / (gf * 1e9) : "nan";
            beyond = (tg > 0 && bw > 0) ? (1 / tg - mb * 1e6 / (bw * 1e9)) / L * 1e6 : "nan";
            printf "%s\t%s\t%s\t%s\t%s\t%.3f\t%.3f\t%s\t%.0f\n", n, l, pp, tg, mb, gen, pr, pred, beyond
         }' >>"$tsv"
}

for s in "${shapes[@]}"; do
    shape="${s%%:*}" opts="${s#*:}"
    dir="$out/models/$shape-f16"
    [ -f "$dir/config.json" ] || run "$moecl" generate "$dir" $opts --dtype f16
    [ -f "$dir.q4_K_M.gguf" ] || run "$moecl" quantize "$dir" "$dir.q4_K_M.gguf" q4_K_M -t "$jobs"
    for model in "$dir" "$dir.q4_K_M.gguf"; do
        name="$shape-$([ "$model" = "$dir" ] && echo f16 || echo q4_K_M)"
        run "$moecl" info -m "$model" --backend opencl || continue
        active=$(sed -n 's/^active per token *\([0-9]*\) .*/\1/p' "$last")
        n_layer=$(sed -n 's/^layers *\([0-9]*\)$/\1/p' "$last")
        predicted=$(sed -n 's/^predicted *\([0-9.]*\) tokens.*/\1/p' "$last")
        mib=$(sed -n 's/^experts placed .*(\([0-9.]*\) MiB.*/\1/p' "$last" | head -1)
        [ $dry = 1 ] && active=1 n_layer=1 mib=2
        predicted=$(num "$predicted")
        bench "$name" "$model" "device, experts" --backend opencl --placement experts
        bench "$name" "$model" "device, dense+experts" --backend opencl --placement dense
        bench "$name" "$model" "device, auto" --backend opencl --placement auto
        half=$(awk -v m="$(num "$mib")" 'BEGIN { h = int(m / 2); print (h > 0 ? h : 1) }')
        run "$moecl" info -m "$model" --backend opencl --gpu-mem "$half" || true
        predicted=$(num "$(sed -n 's/^predicted *\([0-9.]*\) tokens.*/\1/p' "$last")")
        bench "$name" "$model" "planner, half memory" --backend opencl --gpu-mem "$half"
        predicted=nan
        bench "$name" "$model" "CPU only" --backend cpu
    done
done

# ---- the report -------------------------------------------------------------------
{
    echo "# moecl on $dev_name ($(date -u +%Y-%m-%d))"
    echo
    echo "Device: reads $read_gbs GB/s, host round trip $rtt_us us, CLBlast SGEMM $gflops GFLOP/s."
    echo "Prompt $np tokens, generation $ng tokens, median of $reps; $jobs CPU threads."
    echo
    echo "| model | placement | prompt tok/s | gen tok/s | MB/token | gen / bandwidth | prompt / GEMM | predicted | beyond bandwidth, us/layer |"
    echo "|---|---|---|---|---|---|---|---|---|"
    tail -n +2 "$tsv" | awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }'
    echo
    echo "gen / bandwidth: bytes read per generated token x tokens/s over the device's read bandwidth"
    echo "(targets on the Mixtral shape: >= 0.5). prompt / GEMM: 2 x active parameters x prompt tokens/s"
    echo "over CLBlast's SGEMM rate (>= 0.5). beyond bandwidth: per layer, the time a generated token"
    echo "takes beyond its bytes at the device's bandwidth (host round trips; with experts only, also"
    echo "attention and the LM head on the host); compare with the round trip above. dense+experts against"
    echo "experts is the gain of the dense layers on the device (issue 11 item 2)."
} >"$out/results.md"
log "results: $out/results.md"
cat "$out/results.md"

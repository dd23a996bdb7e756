#!/bin/sh
# moecl info's plan and the placement options, end to end.
#   test_placement_cli.sh MOECL TINY_MODEL_DIR WORK_DIR
# Without an OpenCL device only the refusals are checked (they need none).
moecl="$1"; tiny="$2"; work="$3"; fail=0
mkdir -p "$work" || exit 1
check() { # check NAME: the last command's output (in $out) contains each later argument
    name="$1"; shift
    for w in "$@"; do
        case "$out" in *"$w"*) ;; *) echo "FAIL $name: no '$w' in: $out"; fail=1 ;; esac
    done
}
out=$("$moecl" info -m "$tiny" --placement dense --backend cpu 2>&1) && { echo "FAIL dense on cpu: accepted"; fail=1; }
check dense-cpu "placement dense puts the dense layers on an OpenCL device"
out=$("$moecl" info -m "$tiny" --placement sideways 2>&1) && { echo "FAIL sideways: accepted"; fail=1; }
check sideways "unknown placement sideways"
out=$("$moecl" info -m "$tiny" --expert-profile "$work/none.json" 2>&1) && { echo "FAIL no file: accepted"; fail=1; }
check no-file "$work/none.json"
# tiny-f32: 2 layers of 4 experts, top-2
printf '{"format": "moecl-expert-profile", "version": 1, "model": "tiny", "n_layer": 3, "n_expert": 4,
 "n_expert_used": 2, "tokens": 10, "freq": [[0.5,0.5,0.5,0.5],[0.5,0.5,0.5,0.5],[0.5,0.5,0.5,0.5]]}' >"$work/l3.json"
out=$("$moecl" info -m "$tiny" --expert-profile "$work/l3.json" 2>&1) && { echo "FAIL shape: accepted"; fail=1; }
check shape "$work/l3.json" "n_layer 3, this model has 2"
if [ -n "$MOECL_DEVICE" ] || "$moecl" devices | grep -q '^0:'; then
    printf '{"format": "moecl-expert-profile", "version": 1, "model": "tiny", "n_layer": 2, "n_expert": 4,
 "n_expert_used": 2, "tokens": 10, "freq": [[0.1,0.2,0.9,0.8],[0.7,0.1,0.3,0.9]]}' >"$work/hot.json"
    out=$("$moecl" info -m "$tiny" --backend opencl --device "${MOECL_DEVICE:-0}" --gpu-experts 2 \
          --expert-profile "$work/hot.json" 2>&1) || { echo "FAIL hot: $out"; fail=1; }
    # the two hottest of each layer on the device: experts 2, 3 of layer 0 and 0, 3 of layer 1
    check hot "by the expert profile" "layer 0   ccGG" "layer 1   GccG" "predicted" "dense layers           on the host"
    # --placement dense: the dense layers on the device, then the experts
    out=$("$moecl" info -m "$tiny" --backend opencl --device "${MOECL_DEVICE:-0}" --placement dense 2>&1) \
        || { echo "FAIL dense: $out"; fail=1; }
    check dense "dense layers           on " "MiB: weights, KV cache, activations" "layer 0   GGGG"
    out=$("$moecl" info -m "$tiny" --backend opencl --device "${MOECL_DEVICE:-0}" --placement dense --gpu-mem 0 2>&1) \
        && { echo "FAIL dense without room: accepted"; fail=1; }
    # --calibrate measures what moecl stats --save-profile saves (same tokens, same chunks),
    # so the two give the same plan on a model with a tokenizer.
    "$moecl" generate "$work/gen" --preset tiny --vocab 32000 --seed 7 >/dev/null 2>&1 \
        && cp "$(dirname "$0")/../models/tokenizer.json" "$work/gen/" || { echo "FAIL generate"; fail=1; }
    printf 'Once upon a time there was a little model. It routed every token to two experts,\n' >"$work/cal.txt"
    printf 'and 12345 digits, punctuation!? and   spaces went where they were sent.\n' >>"$work/cal.txt"
    "$moecl" stats -m "$work/gen" -f "$work/cal.txt" --save-profile "$work/cal.json" >/dev/null 2>&1 \
        || { echo "FAIL stats --save-profile"; fail=1; }
    prof=$("$moecl" info -m "$work/gen" --backend opencl --device "${MOECL_DEVICE:-0}" --gpu-experts 3 \
           --expert-profile "$work/cal.json" 2>&1 | grep '^  *layer ') || { echo "FAIL profile plan"; fail=1; }
    out=$("$moecl" info -m "$work/gen" --backend opencl --device "${MOECL_DEVICE:-0}" --gpu-experts 3 \
          --calibrate "$work/cal.txt" 2>&1) || { echo "FAIL calibrate: $out"; fail=1; }
    check calibrate "calibrated expert frequencies on" "by the expert profile"
    cal=$(printf '%s\n' "$out" | grep '^  *layer ')
    if [ -z "$prof" ] || [ "$prof" != "$cal" ]; then
        echo "FAIL calibrate: plan differs from the saved profile's:"; echo "$prof"; echo "---"; echo "$cal"; fail=1
    fi
else
    echo "no OpenCL device: the plan itself is not checked" >&2
fi
out=$("$moecl" info -m "$tiny" --calibrate "$work/none.txt" 2>&1) && { echo "FAIL calibrate no file: accepted"; fail=1; }
check calibrate-no-file "$work/none.txt"
out=$("$moecl" info -m "$tiny" --calibrate "$work/none.txt" --expert-profile "$work/l3.json" 2>&1) \
    && { echo "FAIL calibrate+profile: accepted"; fail=1; }
check calibrate-both "use one"
[ $fail = 0 ] && echo "placement cli: ok"
exit $fail

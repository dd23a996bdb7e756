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
out=$("$moecl" info -m "$tiny" --placement dense 2>&1) && { echo "FAIL dense: accepted"; fail=1; }
check dense "placement 'dense' needs the dense layers on the device" "issue 11 item 2"
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
    check hot "by the expert profile" "layer 0   ccGG" "layer 1   GccG" "predicted"
else
    echo "no OpenCL device: the plan itself is not checked" >&2
fi
[ $fail = 0 ] && echo "placement cli: ok"
exit $fail

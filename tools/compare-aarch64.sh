#!/bin/sh
# Greedy ids of the golden models, x86-64 (this machine's default kernels) against aarch64
# under qemu at each ARM level: qemu -cpu max with MOECL_CPU_ISA auto (NEON + sdot), neon,
# fp16 and scalar (scalar against x86's scalar: the quantized types' default kernels round
# the activations to 8 bits, the scalar ones do not), and -cpu cortex-a53 (NEON int8
# fallback). Prints the kernels each CPU model gets, then one line per model, "same" where
# the ids equal x86-64's. Needs build/ (tools/setup.sh) and build-aarch64/
# (tools/setup-aarch64.sh). A demonstration, not a test; ARM speed cannot be timed under qemu.
set -u
cd "$(dirname "$0")/.."
run() { "$@" run -m "$m" --tokens 1,2,3,4,5 -n 16 --temp 0 --ids --backend cpu 2>/dev/null | head -1; }
for cpu in max cortex-a53; do
    echo "qemu -cpu $cpu: $(QEMU_CPU=$cpu qemu-aarch64 build-aarch64/moecl info -m tests/data/tiny-f32 --backend cpu | grep 'CPU kernels')"
done
echo "x86-64 here: $(build/moecl info -m tests/data/tiny-f32 --backend cpu | grep 'CPU kernels')"
QEMU_CPU=max MOECL_CPU_ISA=fp16 qemu-aarch64 build-aarch64/moecl run -v -m tests/data/tiny-f16 --tokens 1,2 -n 1 --temp 0 --ids --backend cpu 2>&1 | grep 'cpu: kernels'
for m in tests/data/tiny-f32 tests/data/tiny-f16 tests/data/tiny-bf16 tests/data/gguf/tiny-f32-f16.gguf tests/data/gguf/tiny-f32-q8_0.gguf \
         tests/data/gguf/tiny-q-q4_0.gguf tests/data/gguf/tiny-q-q4_K.gguf tests/data/gguf/tiny-q-q5_K.gguf \
         tests/data/gguf/tiny-q-q6_K.gguf tests/data/gguf/tiny-q-q4_K_M.gguf; do
    ref=$(run build/moecl)
    sref=$(MOECL_CPU_ISA=scalar run build/moecl)
    line="$(basename $m): x86 $ref"
    [ "$sref" = "$ref" ] || line="$line (x86 scalar $sref)"
    for cfg in max:auto max:neon max:fp16 max:scalar cortex-a53:auto; do
        ids=$(QEMU_CPU=${cfg%%:*} MOECL_CPU_ISA=${cfg#*:} run qemu-aarch64 build-aarch64/moecl)
        want=$ref
        [ "${cfg#*:}" = scalar ] && want=$sref
        if [ "$ids" = "$want" ]; then line="$line | $cfg same"; else line="$line | $cfg DIFFERENT $ids"; fi
    done
    echo "$line"
done

#!/bin/sh
# The aarch64 cross build's tests under qemu (build-aarch64/, tools/setup-aarch64.sh),
# the part that fits CI's time on a 2-core machine; prints the ISA the CPU kernels
# detect and one summary line "N passed, N failed, N skipped" as tools/test.sh does.
#
# Run: the CPU kernels against float64 and the scalar path at smaller shapes
# (MOECL_TEST_QUICK), on two of qemu's CPU models, each checking the run-time detection:
# kernels-qemu-max (sdot and FP16: the levels dotprod = auto, neon, fp16 and scalar) and
# kernels-qemu-cortex-a53 (ARMv8.0: auto is the NEON int8 fallback); the quantized formats
# (conversions against references), every CPU golden test (transformers' logits, HF and
# GGUF, scalar and default kernels; the quantized GGUF ones again on cortex-a53, the F16
# ones again in FP16 arithmetic: golden-qemu-*), decode, the parsers,
# the tokenizer against HF tokenizers and the scripts that run the CLI (through the
# exe_wrapper), the fuzz corpora, the embedding example, the shared library's exports
# and NEEDED entries, and the no-OpenCL tests.
# Left out, with the reason (each runs on x86 in tools/test.sh):
#   kernels             at its full sizes (the kernels-qemu-* tests run it quick); with
#                       four ARM levels that is tens of CPU-minutes under qemu. Run it with
#                       `tools/test-aarch64.sh kernels` (names given are added).
#   sampling            statistics over millions of draws: 15 min under qemu
#   quantize, quantize_tokenizer, quantize_gguf_py, gguf_python
#                       writing every GGUF type, minutes each under qemu; the formats'
#                       bytes are checked by quant and the golden-gguf tests
#   opencl, golden-*opencl*
#                       no arm64 OpenCL library here: they would skip. no-opencl-ns
#                       needs root; the other no-opencl-* tests run.
#   golden-gguf-cpu-*, golden-gguf-q8_0-cpu-* (tests/test_family_gguf.sh), tokenizer_chat_cli
#                       scripts that start the CLI without the exe_wrapper (run_in_tests):
#                       they would fail with "Exec format error"; the families' golden
#                       logits themselves run (golden-tiny-qwen3moe, ...)
#   the other new tests (json, escape, cli_errors, serve, mapguard, ...) are not in the
#                       list below: some measure RSS or start the CLI, and none is checked
#                       under qemu yet
#
#   tools/test-aarch64.sh [TEST NAME...] [MESON TEST OPTIONS]
set -u
cd "$(dirname "$0")/.."
# Chosen by name, so that a new test joins only when it fits this list (every golden and
# tokenizer test does); then the exclusions above.
run='^(kernels-qemu-.*|safetensors|hf_config|quant|ops|model_errors|decode|gguf|gguf_model|golden-.*|tokenizer.*|example_embed|batch_logits|exports|needed|no-opencl-.*|fuzz_.*_replay)$'
leave_out='^(golden-.*opencl.*|no-opencl-ns|golden-gguf-(q8_0-)?cpu-.*|tokenizer_chat_cli)$'
ninja -C build-aarch64 >/dev/null || exit 1
tests=$(meson test -C build-aarch64 --list --no-rebuild 2>/dev/null | grep -E "$run" | grep -v -E "$leave_out")
[ -n "$tests" ] || { echo "test-aarch64: no tests listed in build-aarch64 (run tools/setup-aarch64.sh)" >&2; exit 1; }

echo "test-aarch64: $(qemu-aarch64 --version | head -1); moecl's CPU kernels under it:"
for cpu in max cortex-a53; do
    isa=$(QEMU_CPU=$cpu qemu-aarch64 build-aarch64/moecl info -m tests/data/tiny-f32 --backend cpu 2>/dev/null |
          sed -n 's/^CPU kernels *//p')
    echo "  -cpu $cpu: ${isa:-unknown}"
done

start=$(date +%s)
# Timeouts x4: the tests' own limits are set for native speed.
meson test -C build-aarch64 --no-rebuild --print-errorlogs --timeout-multiplier 4 $tests "$@"
rc=$?
python3 - build-aarch64/meson-logs/testlog.json <<'PY' || exit 1
import json, sys
counts = {"OK": 0, "FAIL": 0, "SKIP": 0, "TIMEOUT": 0, "ERROR": 0, "EXPECTEDFAIL": 0, "UNEXPECTEDPASS": 0}
with open(sys.argv[1]) as f:
    for line in f:
        if line.strip():
            r = json.loads(line)["result"]
            counts[r] = counts.get(r, 0) + 1
failed = counts["FAIL"] + counts["TIMEOUT"] + counts["ERROR"] + counts["UNEXPECTEDPASS"]
print(f"aarch64: {counts['OK']} passed, {failed} failed, {counts['SKIP']} skipped")
PY
echo "test-aarch64: $(($(date +%s) - start)) s"
exit $rc

#!/bin/sh
# A file moecl quantize writes is read by PyPI gguf's GGUFReader (the
# reference reader, which follows llama.cpp) as a valid llama-architecture
# Mixtral, and dequantizes (gguf.quants) to the HF weights within each type's
# error: tools/check_gguf.py. Skips (77) without python3's gguf and numpy.
#   test_quantize_gguf_py.sh MOECL SRC_DIR
set -eu
moecl="$1"; src="$2"
if ! python3 -c "import gguf, numpy" 2>/dev/null; then
    echo "quantize_gguf_py: SKIP: python3 with gguf and numpy not installed (pip install gguf numpy)" >&2
    exit 77
fi
out="${TMPDIR:-/tmp}/moecl_quantize_py.$$"
mkdir -p "$out"
trap 'rm -rf "$out"' EXIT
for t in q8_0 q4_0 q4_K_M q5_K_M q6_K f16; do
    "$moecl" quantize "$src/data/tiny-q" "$out/$t.gguf" "$t" -t 2 2>/dev/null
    python3 "$src/../tools/check_gguf.py" "$out/$t.gguf" --hf "$src/data/tiny-q"
done

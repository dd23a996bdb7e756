#!/bin/sh
# A model of another family (src/arch/) through GGUF: moecl quantize writes
# it as F32 with the family's llama.cpp architecture, names and keys, and the
# GGUF gives transformers' logits as the directory does.
#   test_family_gguf.sh MOECL TEST_GOLDEN MODEL_DIR [BACKEND]
set -eu
moecl="$1"; golden="$2"; model="$3"; backend="${4:-cpu}"
out="${TMPDIR:-/tmp}/moecl_family_gguf.$$"
mkdir -p "$out"
trap 'rm -rf "$out"' EXIT
"$moecl" quantize "$model" "$out/model.gguf" f32 -t 2 >/dev/null
"$golden" "$out/model.gguf" "$backend" --ref "$model"

#!/bin/sh
# A model of another family (src/arch/) through GGUF: moecl quantize writes
# it with the family's llama.cpp architecture, names and keys, and the GGUF
# gives transformers' logits as the directory does: F32 within the golden
# bound, token for token; another TYPE within BOUND, the reference tokens fed.
#   test_family_gguf.sh MOECL TEST_GOLDEN MODEL_DIR [BACKEND [TYPE BOUND]]
set -eu
moecl="$1"; golden="$2"; model="$3"; backend="${4:-cpu}"; type="${5:-f32}"; bound="${6:-}"
out="${TMPDIR:-/tmp}/moecl_family_gguf.$$"
mkdir -p "$out"
trap 'rm -rf "$out"' EXIT
"$moecl" quantize "$model" "$out/model.gguf" "$type" -t 2 >/dev/null
if [ "$type" = f32 ]; then
    "$golden" "$out/model.gguf" "$backend" --ref "$model"
else
    "$golden" "$out/model.gguf" "$backend" --ref "$model" --no-argmax --bound "$bound"
fi

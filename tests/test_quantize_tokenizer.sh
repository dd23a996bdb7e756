#!/bin/sh
# moecl quantize writes the HF tokenizer into the GGUF (tokenizer.ggml.*):
# a tiny random model with Mixtral's tokenizer.json, quantized, must tokenize
# every reference text and 200,000 random strings as tokenizer.json does.
#   test_quantize_tokenizer.sh MOECL TEST_TOKENIZER_GGUF TOKENIZER_JSON REFS_JSON
set -eu
moecl="$1"; tgguf="$2"; tok="$3"; refs="$4"
dir="${TMPDIR:-/tmp}/moecl_quantize_tok.$$"
trap 'rm -rf "$dir" "$dir.gguf"' EXIT
"$moecl" generate "$dir" --preset tiny --vocab 32000 2>/dev/null
cp "$tok" "$dir/tokenizer.json"
"$moecl" quantize "$dir" "$dir.gguf" q8_0 -t 2
"$tgguf" "$dir.gguf" "$tok" "$refs"

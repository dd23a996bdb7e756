#!/bin/sh
# moecl generate writes a model of every family with the options asked for:
# the directory loads, decodes, and holds each option's tensors and keys
# (QK-norm per head or over the projection, Q/K/V biases, the shared expert
# and its gate, dense layers, the router rule); shapes a family cannot have
# are refused by name. tests/test_generate.py checks the same models'
# logits against transformers.
#   test_generate.sh MOECL
set -eu
moecl="$1"
out="${TMPDIR:-/tmp}/moecl_generate.$$"
mkdir -p "$out"
trap 'rm -rf "$out"' EXIT
fail() { echo "generate: FAIL: $*" >&2; exit 1; }

shape="--preset tiny --vocab 300 --layers 3 --experts 8 --top-k 3 --ff 48"
# name: options; then the tensor names and config lines the options call for
gen() { d="$out/$1"; shift; "$moecl" generate "$d" $shape "$@" 2>/dev/null || fail "generate $d $*"; }
has() { # DIR STRING: the safetensors header (JSON before the data) or config.json names STRING
    head -c 65536 "$out/$1/model.safetensors" | grep -a -q -- "$2" || grep -q -- "$2" "$out/$1/config.json" ||
        fail "$1 lacks $2"
}
hasnt() { head -c 65536 "$out/$1/model.safetensors" | grep -a -q -- "$2" && fail "$1 has $2"; true; }

gen mixtral --arch mixtral
has mixtral '"MixtralForCausalLM"'; has mixtral 'block_sparse_moe.experts.7.w3.weight'; hasnt mixtral q_norm
gen qwen3moe --arch qwen3moe --head-dim 24 --dense-layers 1 --ff-dense 80 --norm-topk 1
has qwen3moe '"Qwen3MoeForCausalLM"'; has qwen3moe '"norm_topk_prob":	true'; has qwen3moe '"mlp_only_layers":	\[0\]'
has qwen3moe '"head_dim":	24'; has qwen3moe 'layers.0.mlp.gate_proj.weight'; has qwen3moe 'layers.1.mlp.experts.7.up_proj.weight'
has qwen3moe '"model.layers.2.self_attn.q_norm.weight":{"dtype":"F32","shape":\[24\]'
hasnt qwen3moe 'layers.0.mlp.experts'; hasnt qwen3moe 'q_proj.bias'
gen qwen2moe --arch qwen2moe --ff-shexp 40 --dense-layers 1
has qwen2moe '"Qwen2MoeForCausalLM"'; has qwen2moe '"norm_topk_prob":	false'; has qwen2moe '"shared_expert_intermediate_size":	40'
has qwen2moe 'layers.1.mlp.shared_expert.down_proj.weight":{"dtype":"F32","shape":\[64,40\]'
has qwen2moe 'layers.2.mlp.shared_expert_gate.weight":{"dtype":"F32","shape":\[1,64\]'
has qwen2moe 'layers.2.self_attn.k_proj.bias'; hasnt qwen2moe 'layers.0.mlp.shared_expert'
gen olmoe --arch olmoe --kv-heads 4
has olmoe '"OlmoeForCausalLM"'; has olmoe '"norm_topk_prob":	false'
has olmoe '"model.layers.1.self_attn.k_norm.weight":{"dtype":"F32","shape":\[64\]'; hasnt olmoe 'mlp_only_layers'
gen olmoe-bf16 --arch olmoe --dtype bf16 --norm-topk 1
has olmoe-bf16 '"norm_topk_prob":	true'; has olmoe-bf16 '"BF16"'

for m in mixtral qwen3moe qwen2moe olmoe olmoe-bf16; do
    "$moecl" run -m "$out/$m" --tokens 5,6,7,8 -n 6 --temp 0 --ids >"$out/ids" 2>"$out/err" || {
        cat "$out/err" >&2; fail "$m does not decode"; }
    [ "$(tr -cd , <"$out/ids" | wc -c)" -ge 5 ] || fail "$m: $(cat "$out/ids")"
    "$moecl" info -m "$out/$m" >"$out/info" 2>&1 || fail "info $m"
done
"$moecl" info -m "$out/qwen3moe" | grep -q "head dim 24" || fail "qwen3moe head_dim"

# The same seed writes the same bytes; another seed other bytes.
"$moecl" generate "$out/again" $shape --arch qwen3moe --head-dim 24 --dense-layers 1 --ff-dense 80 --norm-topk 1 2>/dev/null
cmp -s "$out/qwen3moe/model.safetensors" "$out/again/model.safetensors" || fail "not deterministic"
"$moecl" generate "$out/again" $shape --arch qwen3moe --head-dim 24 --dense-layers 1 --ff-dense 80 --norm-topk 1 --seed 7 2>/dev/null
cmp -s "$out/qwen3moe/model.safetensors" "$out/again/model.safetensors" && fail "the seed changes nothing"

refuse() { # MESSAGE OPTIONS...
    msg="$1"; shift
    if "$moecl" generate "$out/bad" $shape "$@" 2>"$out/err"; then fail "accepted: $*"; fi
    grep -q -- "$msg" "$out/err" || { cat "$out/err" >&2; fail "message for $*"; }
}
refuse "the family has none" --arch olmoe --dense-layers 1
refuse "the family has none" --arch mixtral --dense-layers 1
refuse "no shared expert" --arch qwen3moe --ff-shexp 16
refuse "mixtral always renormalises" --arch mixtral --norm-topk 0
refuse "must be hidden / heads (16)" --arch olmoe --head-dim 8
refuse "unknown architecture 'llama' (mixtral, qwen3moe, olmoe, qwen2moe)" --arch llama
refuse "more than the layers" --arch qwen3moe --dense-layers 4
echo "generate: every family written, loaded and decoded"

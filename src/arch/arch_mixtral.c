/*
 * arch_mixtral.c - Mixtral (MixtralForCausalLM; llama.cpp writes it as
 * "llama" with experts).
 *
 * Every layer: attention without biases or QK-norm, then a router over
 * num_local_experts experts, softmax, top-k, the k weights renormalised.
 * llama.cpp's converter permutes the Q and K rows for its interleaved RoPE.
 */
#include "arch.h"

static const mc_arch_key k_keys[] = {
    MC_KEYS_EMBD,
    MC_KEY_FF,
    MC_KEYS_ATTN("head_dim"),
    MC_KEYS_ROUTER("num_local_experts"),
    MC_KEY_CTX_TRAIN(32768),
    {MC_HP_SLIDING_WINDOW, "sliding_window", NULL, false, 0},
};

const mc_arch mc_arch_mixtral = {
    .name = "mixtral",
    .hf_arch = "MixtralForCausalLM",
    .hf_model_type = "mixtral",
    .gguf_arch = "llama",
    .keys = k_keys,
    .n_keys = (int)(sizeof k_keys / sizeof k_keys[0]),
    .hf_names = {
        MC_HF_LLAMA_NAMES,
        [MC_TN_ROUTER] = "model.layers.%d.block_sparse_moe.gate.weight",
        [MC_TN_EXP_GATE] = "model.layers.%d.block_sparse_moe.experts.%d.w1.weight",
        [MC_TN_EXP_UP] = "model.layers.%d.block_sparse_moe.experts.%d.w3.weight",
        [MC_TN_EXP_DOWN] = "model.layers.%d.block_sparse_moe.experts.%d.w2.weight",
        /* transformers 5 in memory (and in files it saves with the fused layout) */
        [MC_TN_EXPS_GATE_UP] = "model.layers.%d.mlp.experts.gate_up_proj",
        [MC_TN_EXPS_DOWN] = "model.layers.%d.mlp.experts.down_proj",
    },
    .hf_alt = {
        [MC_TN_ROUTER] = "model.layers.%d.mlp.gate.weight",
    },
    .norm_topk = true,
    .gguf_norm_topk = true,
    .gguf_rope_interleaved = true,
    .rope_theta_default = 1e6f,
};

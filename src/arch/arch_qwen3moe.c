/*
 * arch_qwen3moe.c - Qwen3-MoE (Qwen3MoeForCausalLM; llama.cpp "qwen3moe").
 *
 * Attention with an explicit head_dim and an RMSNorm of each query and key
 * head (one weight of head_dim shared by the heads) before RoPE; biases on
 * Q, K, V and O when attention_bias says so. Layers listed in
 * mlp_only_layers, and those not on the decoder_sparse_step grid, have a
 * dense FFN of intermediate_size; the others route over num_experts experts
 * of moe_intermediate_size, renormalising the top-k weights when
 * norm_topk_prob is true. llama.cpp keeps the Q and K rows as they are
 * (NEOX RoPE).
 */
#include "arch.h"

static const mc_arch_key k_keys[] = {
    MC_KEYS_EMBD,
    MC_KEYS_FF_MOE_DENSE,
    MC_KEYS_ATTN("head_dim"),
    MC_KEYS_ROUTER("num_experts"),
    MC_KEY_CTX_TRAIN(32768),
    {MC_HP_SPARSE_STEP, "decoder_sparse_step", NULL, false, 1},
};

static const char *const k_refused[] = {"use_sliding_window", NULL};

const mc_arch mc_arch_qwen3moe = {
    .name = "qwen3moe",
    .hf_arch = "Qwen3MoeForCausalLM",
    .hf_model_type = "qwen3_moe",
    .gguf_arch = "qwen3moe",
    .keys = k_keys,
    .n_keys = (int)(sizeof k_keys / sizeof k_keys[0]),
    .hf_names = {
        MC_HF_QWEN_NAMES,
        MC_HF_OUT_BIAS_QK_NORM_NAMES,
        MC_HF_DENSE_FFN_NAMES,
    },
    .qk_norm = MC_QK_NORM_HEAD,
    .hf_attn_bias = "attention_bias",
    .hf_norm_topk = "norm_topk_prob",
    .norm_topk = false, /* Qwen3MoeConfig's default; the released models set it true */
    .gguf_norm_topk = true, /* llama.cpp's graph for qwen3moe */
    .dense_layers = true,
    .gguf_rope_interleaved = false,
    .rope_theta_default = 10000.0f,
    .hf_refused = k_refused,
};

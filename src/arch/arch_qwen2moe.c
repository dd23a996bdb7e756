/*
 * arch_qwen2moe.c - Qwen2-MoE (Qwen2MoeForCausalLM; llama.cpp "qwen2moe").
 *
 * Attention with biases on Q, K and V (not O) unless qkv_bias is false. MoE layers route over
 * num_experts experts of moe_intermediate_size, softmax then top-k, the
 * weights not renormalised unless norm_topk_prob, and add a shared expert
 * of shared_expert_intermediate_size scaled by sigmoid(x · shared_expert_gate).
 * Layers in mlp_only_layers, or off the decoder_sparse_step grid, have a
 * dense FFN of intermediate_size. llama.cpp keeps the Q and K rows as they
 * are (NEOX RoPE).
 */
#include "arch.h"

static const mc_arch_key k_keys[] = {
    MC_KEYS_EMBD,
    MC_KEYS_FF_MOE_DENSE,
    {MC_HP_N_FF_SHEXP, "shared_expert_intermediate_size", "expert_shared_feed_forward_length", true, 0},
    MC_KEYS_ATTN("head_dim"),
    MC_KEYS_ROUTER("num_experts"),
    MC_KEY_CTX_TRAIN(8192),
    {MC_HP_SPARSE_STEP, "decoder_sparse_step", NULL, false, 1},
};

static const char *const k_refused[] = {"use_sliding_window", NULL};

const mc_arch mc_arch_qwen2moe = {
    .name = "qwen2moe",
    .hf_arch = "Qwen2MoeForCausalLM",
    .hf_model_type = "qwen2_moe",
    .gguf_arch = "qwen2moe",
    .keys = k_keys,
    .n_keys = (int)(sizeof k_keys / sizeof k_keys[0]),
    .hf_names = {
        MC_HF_QWEN_NAMES,
        MC_HF_DENSE_FFN_NAMES,
        [MC_TN_SHEXP_GATE] = "model.layers.%d.mlp.shared_expert.gate_proj.weight",
        [MC_TN_SHEXP_UP] = "model.layers.%d.mlp.shared_expert.up_proj.weight",
        [MC_TN_SHEXP_DOWN] = "model.layers.%d.mlp.shared_expert.down_proj.weight",
        [MC_TN_SHEXP_INP] = "model.layers.%d.mlp.shared_expert_gate.weight",
    },
    .qkv_bias = true,
    .hf_qkv_bias = "qkv_bias",
    .hf_norm_topk = "norm_topk_prob",
    .norm_topk = false,
    .gguf_norm_topk = false,
    .shared_expert = true,
    .dense_layers = true,
    .gguf_rope_interleaved = false,
    .rope_theta_default = 10000.0f,
    .hf_refused = k_refused,
};

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
    {MC_HP_N_VOCAB, "vocab_size", "vocab_size", true, 0},
    {MC_HP_N_EMBD, "hidden_size", "embedding_length", true, 0},
    {MC_HP_N_FF, "moe_intermediate_size", "expert_feed_forward_length", true, 0},
    {MC_HP_N_FF_DENSE, "intermediate_size", "feed_forward_length", false, 0},
    {MC_HP_N_FF_SHEXP, "shared_expert_intermediate_size", "expert_shared_feed_forward_length", true, 0},
    {MC_HP_N_LAYER, "num_hidden_layers", "block_count", true, 0},
    {MC_HP_N_HEAD, "num_attention_heads", "attention.head_count", true, 0},
    {MC_HP_N_HEAD_KV, "num_key_value_heads", "attention.head_count_kv", false, 0},
    {MC_HP_HEAD_DIM, "head_dim", "attention.key_length", false, 0},
    {MC_HP_N_EXPERT, "num_experts", "expert_count", true, 0},
    {MC_HP_N_EXPERT_USED, "num_experts_per_tok", "expert_used_count", true, 0},
    {MC_HP_N_CTX_TRAIN, "max_position_embeddings", "context_length", false, 8192},
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
        [MC_TN_FFN_GATE] = "model.layers.%d.mlp.gate_proj.weight",
        [MC_TN_FFN_UP] = "model.layers.%d.mlp.up_proj.weight",
        [MC_TN_FFN_DOWN] = "model.layers.%d.mlp.down_proj.weight",
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

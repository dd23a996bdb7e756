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
    {MC_HP_N_VOCAB, "vocab_size", "vocab_size", true, 0},
    {MC_HP_N_EMBD, "hidden_size", "embedding_length", true, 0},
    {MC_HP_N_FF, "moe_intermediate_size", "expert_feed_forward_length", true, 0},
    {MC_HP_N_FF_DENSE, "intermediate_size", "feed_forward_length", false, 0},
    {MC_HP_N_LAYER, "num_hidden_layers", "block_count", true, 0},
    {MC_HP_N_HEAD, "num_attention_heads", "attention.head_count", true, 0},
    {MC_HP_N_HEAD_KV, "num_key_value_heads", "attention.head_count_kv", false, 0},
    {MC_HP_HEAD_DIM, "head_dim", "attention.key_length", false, 0},
    {MC_HP_N_EXPERT, "num_experts", "expert_count", true, 0},
    {MC_HP_N_EXPERT_USED, "num_experts_per_tok", "expert_used_count", true, 0},
    {MC_HP_N_CTX_TRAIN, "max_position_embeddings", "context_length", false, 32768},
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
        [MC_TN_ATTN_OUT_BIAS] = "model.layers.%d.self_attn.o_proj.bias",
        [MC_TN_ATTN_Q_NORM] = "model.layers.%d.self_attn.q_norm.weight",
        [MC_TN_ATTN_K_NORM] = "model.layers.%d.self_attn.k_norm.weight",
        [MC_TN_FFN_GATE] = "model.layers.%d.mlp.gate_proj.weight",
        [MC_TN_FFN_UP] = "model.layers.%d.mlp.up_proj.weight",
        [MC_TN_FFN_DOWN] = "model.layers.%d.mlp.down_proj.weight",
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

/*
 * arch_olmoe.c - OLMoE (OlmoeForCausalLM; llama.cpp "olmoe").
 *
 * Attention with an RMSNorm over the whole query projection and over the
 * whole key projection of a token, before RoPE; biases on Q, K, V and O
 * when attention_bias says so. Every layer routes over num_experts experts
 * of intermediate_size, softmax then top-k, the weights not renormalised
 * unless norm_topk_prob. clip_qkv (clamping Q, K, V) is not implemented.
 * llama.cpp keeps the Q and K rows as they are (NEOX RoPE).
 */
#include "arch.h"

static const mc_arch_key k_keys[] = {
    {MC_HP_N_VOCAB, "vocab_size", "vocab_size", true, 0},
    {MC_HP_N_EMBD, "hidden_size", "embedding_length", true, 0},
    {MC_HP_N_FF, "intermediate_size", "feed_forward_length", true, 0},
    {MC_HP_N_LAYER, "num_hidden_layers", "block_count", true, 0},
    {MC_HP_N_HEAD, "num_attention_heads", "attention.head_count", true, 0},
    {MC_HP_N_HEAD_KV, "num_key_value_heads", "attention.head_count_kv", false, 0},
    {MC_HP_HEAD_DIM, NULL, "attention.key_length", false, 0},
    {MC_HP_N_EXPERT, "num_experts", "expert_count", true, 0},
    {MC_HP_N_EXPERT_USED, "num_experts_per_tok", "expert_used_count", true, 0},
    {MC_HP_N_CTX_TRAIN, "max_position_embeddings", "context_length", false, 4096},
};

static const char *const k_refused[] = {"clip_qkv", NULL};

const mc_arch mc_arch_olmoe = {
    .name = "olmoe",
    .hf_arch = "OlmoeForCausalLM",
    .hf_model_type = "olmoe",
    .gguf_arch = "olmoe",
    .keys = k_keys,
    .n_keys = (int)(sizeof k_keys / sizeof k_keys[0]),
    .hf_names = {
        MC_HF_QWEN_NAMES,
        [MC_TN_ATTN_OUT_BIAS] = "model.layers.%d.self_attn.o_proj.bias",
        [MC_TN_ATTN_Q_NORM] = "model.layers.%d.self_attn.q_norm.weight",
        [MC_TN_ATTN_K_NORM] = "model.layers.%d.self_attn.k_norm.weight",
    },
    .qk_norm = MC_QK_NORM_FULL,
    .hf_attn_bias = "attention_bias",
    .hf_norm_topk = "norm_topk_prob",
    .norm_topk = false,
    .gguf_norm_topk = false,
    .gguf_rope_interleaved = false,
    .rope_theta_default = 10000.0f,
    .hf_refused = k_refused,
};

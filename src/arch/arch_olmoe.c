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
    MC_KEYS_EMBD,
    MC_KEY_FF,
    MC_KEYS_ATTN(NULL),
    MC_KEYS_ROUTER("num_experts"),
    MC_KEY_CTX_TRAIN(4096),
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
        MC_HF_OUT_BIAS_QK_NORM_NAMES,
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

/*
 * arch.h - the table of architectures: everything that tells one MoE family
 * from another, as data.
 *
 * One file per family (arch_mixtral.c, arch_qwen3moe.c, ...) fills one
 * mc_arch: its names in config.json and in GGUF, where its hyperparameters
 * live in each format, its tensor names, and the per-block options (QK-norm,
 * attention biases, shared expert, dense layers mixed in, the router rule).
 * The config reader, the GGUF reader, the model binder and the GGUF writer
 * read these entries; the forward pass reads only the options copied into
 * mc_hparams and tests which optional tensors a layer has. Nothing else asks
 * which family runs.
 */
#ifndef MOECL_ARCH_H
#define MOECL_ARCH_H

#include "formats/hf_config.h"
#include "internal.h"

#include <stdbool.h>

/* Every tensor any family may have. Layer tensors take the layer (and the
 * expert) as printf arguments. */
typedef enum mc_tn {
    MC_TN_TOK_EMBD,      /* [n_vocab, n_embd] */
    MC_TN_OUTPUT_NORM,   /* [n_embd] */
    MC_TN_OUTPUT,        /* [n_vocab, n_embd]; absent when tied */
    MC_TN_ATTN_NORM,     /* [n_embd] */
    MC_TN_ATTN_Q,        /* [n_head * head_dim, n_embd] */
    MC_TN_ATTN_K,        /* [n_head_kv * head_dim, n_embd] */
    MC_TN_ATTN_V,        /* [n_head_kv * head_dim, n_embd] */
    MC_TN_ATTN_OUT,      /* [n_embd, n_head * head_dim] */
    MC_TN_ATTN_Q_BIAS,   /* [n_head * head_dim] */
    MC_TN_ATTN_K_BIAS,   /* [n_head_kv * head_dim] */
    MC_TN_ATTN_V_BIAS,   /* [n_head_kv * head_dim] */
    MC_TN_ATTN_OUT_BIAS, /* [n_embd] */
    MC_TN_ATTN_Q_NORM,   /* [head_dim] per head, or [n_head * head_dim] over the projection */
    MC_TN_ATTN_K_NORM,   /* [head_dim] per head, or [n_head_kv * head_dim] */
    MC_TN_FFN_NORM,      /* [n_embd] */
    MC_TN_ROUTER,        /* [n_expert, n_embd] */
    MC_TN_EXP_GATE,      /* [n_ff, n_embd] one expert: layer, expert */
    MC_TN_EXP_UP,        /* [n_ff, n_embd] */
    MC_TN_EXP_DOWN,      /* [n_embd, n_ff] */
    MC_TN_EXPS_GATE,     /* [n_expert, n_ff, n_embd] the experts of a layer stacked */
    MC_TN_EXPS_UP,       /* [n_expert, n_ff, n_embd] */
    MC_TN_EXPS_DOWN,     /* [n_expert, n_embd, n_ff] */
    MC_TN_EXPS_GATE_UP,  /* [n_expert, 2 * n_ff, n_embd] gate rows then up rows (transformers 5) */
    MC_TN_FFN_GATE,      /* [n_ff_dense, n_embd] a dense layer's FFN */
    MC_TN_FFN_UP,        /* [n_ff_dense, n_embd] */
    MC_TN_FFN_DOWN,      /* [n_embd, n_ff_dense] */
    MC_TN_SHEXP_GATE,    /* [n_ff_shexp, n_embd] the shared expert */
    MC_TN_SHEXP_UP,      /* [n_ff_shexp, n_embd] */
    MC_TN_SHEXP_DOWN,    /* [n_embd, n_ff_shexp] */
    MC_TN_SHEXP_INP,     /* [1, n_embd] its sigmoid gate (GGUF: [n_embd]) */
    MC_TN_COUNT
} mc_tn;

/* Integer hyperparameters, each read from the key its family names. */
typedef enum mc_hp {
    MC_HP_N_VOCAB,
    MC_HP_N_EMBD,
    MC_HP_N_FF,          /* one routed expert's FFN width */
    MC_HP_N_FF_DENSE,    /* a dense layer's FFN width */
    MC_HP_N_FF_SHEXP,    /* the shared expert's FFN width */
    MC_HP_N_LAYER,
    MC_HP_N_HEAD,
    MC_HP_N_HEAD_KV,     /* default n_head */
    MC_HP_HEAD_DIM,      /* default n_embd / n_head */
    MC_HP_N_EXPERT,
    MC_HP_N_EXPERT_USED,
    MC_HP_N_CTX_TRAIN,
    MC_HP_SLIDING_WINDOW,
    MC_HP_SPARSE_STEP,   /* every step-th layer is MoE (decoder_sparse_step) */
    MC_HP_COUNT
} mc_hp;

/* Where one hyperparameter lives: a config.json key and a GGUF key (after
 * "<arch>."), either NULL when that format does not have it. */
typedef struct mc_arch_key {
    mc_hp hp;
    const char *hf;
    const char *gguf;
    bool required;
    int64_t def;         /* when absent and not required (MC_HP_N_HEAD_KV, MC_HP_HEAD_DIM: derived) */
} mc_arch_key;

/* Rows of the key tables that families share, each written once. A family's
 * table lists them in the order they are read, which matters: a range may
 * depend on an earlier value (n_head_kv <= n_head, n_expert_used <= n_expert).
 * The GGUF keys are llama.cpp's, the same for every architecture. */
#define MC_KEYS_EMBD                                                               \
    {MC_HP_N_VOCAB, "vocab_size", "vocab_size", true, 0},                          \
    {MC_HP_N_EMBD, "hidden_size", "embedding_length", true, 0}
/* The expert FFN width where every layer is MoE (Mixtral, OLMoE)... */
#define MC_KEY_FF {MC_HP_N_FF, "intermediate_size", "feed_forward_length", true, 0}
/* ...and where dense layers may stand between MoE layers (Qwen): intermediate_size is theirs. */
#define MC_KEYS_FF_MOE_DENSE                                                       \
    {MC_HP_N_FF, "moe_intermediate_size", "expert_feed_forward_length", true, 0},  \
    {MC_HP_N_FF_DENSE, "intermediate_size", "feed_forward_length", false, 0}
/* Layers and heads; hf_head_dim NULL where config.json has no head_dim (n_embd / n_head). */
#define MC_KEYS_ATTN(hf_head_dim)                                                  \
    {MC_HP_N_LAYER, "num_hidden_layers", "block_count", true, 0},                  \
    {MC_HP_N_HEAD, "num_attention_heads", "attention.head_count", true, 0},        \
    {MC_HP_N_HEAD_KV, "num_key_value_heads", "attention.head_count_kv", false, 0}, \
    {MC_HP_HEAD_DIM, hf_head_dim, "attention.key_length", false, 0}
/* The router: hf_n_expert is the family's name for the expert count. */
#define MC_KEYS_ROUTER(hf_n_expert)                                                \
    {MC_HP_N_EXPERT, hf_n_expert, "expert_count", true, 0},                        \
    {MC_HP_N_EXPERT_USED, "num_experts_per_tok", "expert_used_count", true, 0}
/* The training context, def where config.json does not say (transformers' default). */
#define MC_KEY_CTX_TRAIN(def) {MC_HP_N_CTX_TRAIN, "max_position_embeddings", "context_length", false, def}

/* QK-norm: RMSNorm of the queries and keys after the projection, before RoPE. */
typedef enum mc_qk_norm {
    MC_QK_NORM_NONE,
    MC_QK_NORM_HEAD,     /* each head on its own, one weight of head_dim shared by the heads (Qwen3) */
    MC_QK_NORM_FULL,     /* over the whole projection of a token (OLMoE) */
} mc_qk_norm;

/* Hugging Face tensor names that families share, for their hf_names tables
 * (each family adds its own entries after the macro). The Llama layout of
 * embeddings, norms and attention: */
#define MC_HF_LLAMA_NAMES                                                          \
    [MC_TN_TOK_EMBD] = "model.embed_tokens.weight",                                \
    [MC_TN_OUTPUT_NORM] = "model.norm.weight",                                     \
    [MC_TN_OUTPUT] = "lm_head.weight",                                             \
    [MC_TN_ATTN_NORM] = "model.layers.%d.input_layernorm.weight",                  \
    [MC_TN_ATTN_Q] = "model.layers.%d.self_attn.q_proj.weight",                    \
    [MC_TN_ATTN_K] = "model.layers.%d.self_attn.k_proj.weight",                    \
    [MC_TN_ATTN_V] = "model.layers.%d.self_attn.v_proj.weight",                    \
    [MC_TN_ATTN_OUT] = "model.layers.%d.self_attn.o_proj.weight",                  \
    [MC_TN_FFN_NORM] = "model.layers.%d.post_attention_layernorm.weight"
/* ...plus Q/K/V biases and the routed experts under mlp. (Qwen2-MoE,
 * Qwen3-MoE, OLMoE), per expert or fused as transformers 5 keeps them. */
#define MC_HF_QWEN_NAMES                                                           \
    MC_HF_LLAMA_NAMES,                                                             \
    [MC_TN_ATTN_Q_BIAS] = "model.layers.%d.self_attn.q_proj.bias",                 \
    [MC_TN_ATTN_K_BIAS] = "model.layers.%d.self_attn.k_proj.bias",                 \
    [MC_TN_ATTN_V_BIAS] = "model.layers.%d.self_attn.v_proj.bias",                 \
    [MC_TN_ROUTER] = "model.layers.%d.mlp.gate.weight",                            \
    [MC_TN_EXP_GATE] = "model.layers.%d.mlp.experts.%d.gate_proj.weight",          \
    [MC_TN_EXP_UP] = "model.layers.%d.mlp.experts.%d.up_proj.weight",              \
    [MC_TN_EXP_DOWN] = "model.layers.%d.mlp.experts.%d.down_proj.weight",          \
    [MC_TN_EXPS_GATE_UP] = "model.layers.%d.mlp.experts.gate_up_proj",             \
    [MC_TN_EXPS_DOWN] = "model.layers.%d.mlp.experts.down_proj"

/* The dense FFN of the layers that have one (Qwen2-MoE, Qwen3-MoE). */
#define MC_HF_DENSE_FFN_NAMES                                                      \
    [MC_TN_FFN_GATE] = "model.layers.%d.mlp.gate_proj.weight",                     \
    [MC_TN_FFN_UP] = "model.layers.%d.mlp.up_proj.weight",                         \
    [MC_TN_FFN_DOWN] = "model.layers.%d.mlp.down_proj.weight"
/* The output bias of attention_bias and the QK-norm weights (Qwen3-MoE, OLMoE). */
#define MC_HF_OUT_BIAS_QK_NORM_NAMES                                               \
    [MC_TN_ATTN_OUT_BIAS] = "model.layers.%d.self_attn.o_proj.bias",               \
    [MC_TN_ATTN_Q_NORM] = "model.layers.%d.self_attn.q_norm.weight",               \
    [MC_TN_ATTN_K_NORM] = "model.layers.%d.self_attn.k_norm.weight"

typedef struct mc_arch {
    const char *name;          /* moecl's name of the family */
    const char *hf_arch;       /* config.json "architectures"[0] */
    const char *hf_model_type; /* config.json "model_type" */
    const char *gguf_arch;     /* general.architecture as llama.cpp writes it */

    const mc_arch_key *keys;   /* the integer hyperparameters */
    int n_keys;
    const char *hf_names[MC_TN_COUNT]; /* NULL: the family has no such tensor in HF files */
    const char *hf_alt[MC_TN_COUNT];   /* another spelling, tried when the first is absent */

    /* Options, as data. */
    mc_qk_norm qk_norm;
    bool qkv_bias;             /* Q, K and V carry a bias (default of hf_qkv_bias) */
    const char *hf_qkv_bias;   /* config key that says so (Qwen2-MoE "qkv_bias"); NULL: qkv_bias always */
    const char *hf_attn_bias;  /* config key that puts a bias on Q, K, V and O; NULL: none */
    const char *hf_norm_topk;  /* config key of the router rule; NULL: norm_topk below always */
    bool norm_topk;            /* router: softmax, top-k, renormalise the k weights (config default) */
    bool gguf_norm_topk;       /* the rule llama.cpp's graph applies to this architecture */
    bool shared_expert;        /* a shared expert scaled by sigmoid(x · gate) beside the routed ones */
    bool dense_layers;         /* mlp_only_layers / decoder_sparse_step put dense FFNs between MoE layers */
    bool gguf_rope_interleaved;  /* llama.cpp's converter permuted the Q and K rows (its NORM RoPE) */
    float rope_theta_default;
    const char *const *hf_refused; /* config keys that must be absent, null or false: not implemented */
} mc_arch;

/* The architectures moecl runs, NULL-terminated. */
extern const mc_arch *const mc_arches[];

const mc_arch *mc_arch_by_hf(const char *hf_arch);
const mc_arch *mc_arch_by_model_type(const char *model_type);
const mc_arch *mc_arch_by_gguf(const char *name, size_t len);

/* The member of hp that holds hyperparameter id. */
int32_t *mc_hp_field(mc_hparams *hp, mc_hp id);

/* The range a value of id must lie in, given the values read before it
 * (n_expert_used <= n_expert, n_head_kv <= n_head). */
void mc_hp_range(mc_hp id, const mc_hparams *hp, int64_t *lo, int64_t *hi);

/* llama.cpp's tensor names, the same for every family. */
const char *mc_arch_gguf_name(mc_tn t);

/* "a, b, c" of the supported names of kind 0 (HF architectures), 1
 * (model types) or 2 (GGUF architectures), into buf. */
const char *mc_arch_list(int kind, char *buf, size_t n);

#endif

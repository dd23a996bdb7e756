/*
 * hf_config.h - the hyperparameters of a model, read from a Hugging Face
 * config.json (cJSON) through its family's entry in the table of
 * architectures (src/arch/).
 */
#ifndef MOECL_HF_CONFIG_H
#define MOECL_HF_CONFIG_H

#include "internal.h"

#include <stdbool.h>

typedef struct mc_arch mc_arch;

#define MC_MAX_LAYERS 4096

/* The config.json keys named here are Mixtral's; each family names its own
 * (src/arch/). */
typedef struct mc_hparams {
    const mc_arch *arch;     /* the family's entry in the table of architectures */
    char architecture[64];   /* "MixtralForCausalLM" (HF), "llama" (GGUF) */
    int32_t n_vocab;         /* vocab_size */
    int32_t n_embd;          /* hidden_size */
    int32_t n_ff;            /* intermediate_size: one routed expert's FFN width */
    int32_t n_ff_dense;      /* a dense layer's FFN width (intermediate_size); 0 if not given */
    int32_t n_ff_shexp;      /* the shared expert's FFN width; 0 without one */
    int32_t n_layer;         /* num_hidden_layers */
    int32_t n_head;          /* num_attention_heads */
    int32_t n_head_kv;       /* num_key_value_heads (default n_head) */
    int32_t head_dim;        /* head_dim (default n_embd / n_head) */
    int32_t n_expert;        /* num_local_experts */
    int32_t n_expert_used;   /* num_experts_per_tok */
    int32_t n_ctx_train;     /* max_position_embeddings */
    int32_t sliding_window;  /* 0 if null or absent */
    int32_t sparse_step;     /* decoder_sparse_step: layers il with (il + 1) % step == 0 are MoE; default 1 */
    float rms_norm_eps;      /* default 1e-5 */
    float rope_theta;        /* rope_theta or rope_parameters.rope_theta; default 1e6 */
    bool tie_word_embeddings;/* default false */
    bool rope_interleaved;   /* RoPE pairs (2i, 2i+1): Q/K rows as GGUF converters permute them */
    bool norm_topk;          /* router: renormalise the top-k weights to sum to 1 */
    bool attn_bias;          /* Q, K, V and O carry biases */
    bool qkv_bias;           /* Q, K and V carry biases */
    int qk_norm;             /* mc_qk_norm (src/arch/arch.h) */
    bool shared_expert;      /* a shared expert with a sigmoid gate in every MoE layer */
    uint64_t dense[MC_MAX_LAYERS / 64]; /* bit il: layer il has a dense FFN, not experts */
    int32_t bos_id, eos_id;  /* -1 if absent; first element if a list */
} mc_hparams;

static inline bool mc_hp_dense(const mc_hparams *hp, int il) { return (hp->dense[il >> 6] >> (il & 63)) & 1; }
static inline void mc_hp_set_dense(mc_hparams *hp, int il) { hp->dense[il >> 6] |= (uint64_t)1 << (il & 63); }


/* Parse and validate path (a config.json). Errors name the file and field:
 * not JSON, an architecture not in the table (src/arch/), a required field
 * missing or of the wrong type, values out of range or inconsistent
 * (n_head % n_head_kv != 0, n_expert_used > n_expert, hidden_act not silu,
 * rope scaling other than the default, a key the family refuses). */
moecl_status mc_hf_config_load(const char *path, mc_hparams *hp);
/* The same on text[0..len) (NUL-terminated at len) already read; path names
 * it in messages. The fuzzer's entry. */
moecl_status mc_hf_config_parse(const char *path, const char *text, size_t len, mc_hparams *hp);

#endif

/*
 * hf_config.h - the hyperparameters of a Mixtral model, read from a Hugging
 * Face config.json (cJSON).
 */
#ifndef MOECL_HF_CONFIG_H
#define MOECL_HF_CONFIG_H

#include "internal.h"

#include <stdbool.h>

typedef struct mc_hparams {
    char architecture[64];   /* "MixtralForCausalLM" */
    int32_t n_vocab;         /* vocab_size */
    int32_t n_embd;          /* hidden_size */
    int32_t n_ff;            /* intermediate_size */
    int32_t n_layer;         /* num_hidden_layers */
    int32_t n_head;          /* num_attention_heads */
    int32_t n_head_kv;       /* num_key_value_heads (default n_head) */
    int32_t head_dim;        /* head_dim (default n_embd / n_head) */
    int32_t n_expert;        /* num_local_experts */
    int32_t n_expert_used;   /* num_experts_per_tok */
    int32_t n_ctx_train;     /* max_position_embeddings */
    int32_t sliding_window;  /* 0 if null or absent */
    float rms_norm_eps;      /* default 1e-5 */
    float rope_theta;        /* rope_theta or rope_parameters.rope_theta; default 1e6 */
    bool tie_word_embeddings;/* default false */
    bool rope_interleaved;   /* RoPE pairs (2i, 2i+1): Q/K rows as GGUF converters permute them */
    int32_t bos_id, eos_id;  /* -1 if absent; first element if a list */
} mc_hparams;

/* Parse and validate path (a config.json). Errors name the file and field:
 * not JSON, an architecture other than MixtralForCausalLM, a required field
 * missing or of the wrong type, values out of range or inconsistent
 * (n_head % n_head_kv != 0, n_expert_used > n_expert, hidden_act not silu,
 * rope scaling other than the default). */
moecl_status mc_hf_config_load(const char *path, mc_hparams *hp);
/* The same on text[0..len) (NUL-terminated at len) already read; path names
 * it in messages. The fuzzer's entry. */
moecl_status mc_hf_config_parse(const char *path, const char *text, size_t len, mc_hparams *hp);

#endif

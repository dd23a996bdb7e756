/*
 * model.h - a loaded Mixtral model: hyperparameters and weights.
 *
 * Large matrices point into the memory-mapped weight files and keep their
 * stored dtype. Small vectors the host reads every token (norms, the router)
 * are converted to float32 copies owned by the model.
 */
#ifndef MOECL_MODEL_H
#define MOECL_MODEL_H

#include "formats/gguf.h"
#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "internal.h"

typedef struct mc_expert {
    mc_tensor w1; /* (n_ff, n_embd)  gate projection */
    mc_tensor w3; /* (n_ff, n_embd)  up projection */
    mc_tensor w2; /* (n_embd, n_ff)  down projection */
} mc_expert;

typedef struct mc_layer {
    float *attn_norm;   /* (n_embd) f32 copy */
    mc_tensor wq;       /* (n_head * head_dim, n_embd) */
    mc_tensor wk;       /* (n_head_kv * head_dim, n_embd) */
    mc_tensor wv;       /* (n_head_kv * head_dim, n_embd) */
    mc_tensor wo;       /* (n_embd, n_head * head_dim) */
    float *ffn_norm;    /* (n_embd) f32 copy */
    float *router;      /* (n_expert, n_embd) f32 copy: routing is float32 on the host */
    mc_expert *experts; /* [n_expert] */
} mc_layer;

struct moecl_model {
    char *path;
    mc_hparams hp;
    mc_st_set files;    /* a Hugging Face directory's safetensors files */
    mc_gguf *gguf;      /* or a GGUF file; NULL for a directory */
    mc_tensor tok_embd; /* (n_vocab, n_embd) */
    float *out_norm;    /* (n_embd) f32 copy */
    mc_tensor lm_head;  /* (n_vocab, n_embd); the embedding when tied */
    mc_layer *layers;   /* [n_layer] */
    moecl_tokenizer *tokenizer; /* the directory's tokenizer.json; NULL if none */
    struct mc_guard *guard;     /* the mapped files, watched (guard.h) */
};

#endif

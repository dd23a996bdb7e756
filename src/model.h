/*
 * model.h - a loaded model: hyperparameters and weights.
 *
 * Large matrices point into the memory-mapped weight files and keep their
 * stored dtype. Small vectors the host reads every token (norms, biases, the
 * router) are converted to float32 copies owned by the model. A layer holds
 * every tensor any family may need; those its family lacks are NULL (a
 * vector) or have data == NULL (a matrix), and the forward pass tests
 * presence rather than asking which family runs.
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
    float *bq, *bk, *bv;/* (q_dim), (kv_dim), (kv_dim) biases or NULL */
    float *bo;          /* (n_embd) bias or NULL */
    float *q_norm;      /* QK-norm weights or NULL: (head_dim) per head, or (q_dim) over the projection */
    float *k_norm;      /* (head_dim) or (kv_dim) */
    float *ffn_norm;    /* (n_embd) f32 copy */
    float *router;      /* (n_expert, n_embd) f32 copy: routing is float32 on the host; NULL: dense layer */
    mc_expert *experts; /* [n_expert]; NULL: a dense layer */
    mc_expert ffn;      /* a dense layer's FFN (n_ff_dense wide); data NULL in MoE layers */
    mc_expert shexp;    /* the shared expert (n_ff_shexp wide); data NULL without one */
    float *shexp_gate;  /* (n_embd) its sigmoid gate, or NULL */
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

/* The storage type of the routed experts (of the first MoE layer). */
moecl_dtype mc_model_expert_dtype(const moecl_model *m);

#endif

/*
 * arch.c - the registry of architectures and llama.cpp's tensor names.
 */
#include "arch.h"

#include <stdio.h>
#include <string.h>

extern const mc_arch mc_arch_mixtral;
extern const mc_arch mc_arch_qwen3moe;
extern const mc_arch mc_arch_olmoe;
extern const mc_arch mc_arch_qwen2moe;

const mc_arch *const mc_arches[] = {
    &mc_arch_mixtral,
    &mc_arch_qwen3moe,
    &mc_arch_olmoe,
    &mc_arch_qwen2moe,
    NULL,
};

/* llama.cpp's names (src/llama-arch.cpp), one table for every family: a
 * family has the subset its options and hyperparameters call for. */
static const char *const k_gguf_names[MC_TN_COUNT] = {
    [MC_TN_TOK_EMBD] = "token_embd.weight",
    [MC_TN_OUTPUT_NORM] = "output_norm.weight",
    [MC_TN_OUTPUT] = "output.weight",
    [MC_TN_ATTN_NORM] = "blk.%d.attn_norm.weight",
    [MC_TN_ATTN_Q] = "blk.%d.attn_q.weight",
    [MC_TN_ATTN_K] = "blk.%d.attn_k.weight",
    [MC_TN_ATTN_V] = "blk.%d.attn_v.weight",
    [MC_TN_ATTN_OUT] = "blk.%d.attn_output.weight",
    [MC_TN_ATTN_Q_BIAS] = "blk.%d.attn_q.bias",
    [MC_TN_ATTN_K_BIAS] = "blk.%d.attn_k.bias",
    [MC_TN_ATTN_V_BIAS] = "blk.%d.attn_v.bias",
    [MC_TN_ATTN_OUT_BIAS] = "blk.%d.attn_output.bias",
    [MC_TN_ATTN_Q_NORM] = "blk.%d.attn_q_norm.weight",
    [MC_TN_ATTN_K_NORM] = "blk.%d.attn_k_norm.weight",
    [MC_TN_FFN_NORM] = "blk.%d.ffn_norm.weight",
    [MC_TN_ROUTER] = "blk.%d.ffn_gate_inp.weight",
    [MC_TN_EXP_GATE] = "blk.%d.ffn_gate.%d.weight",
    [MC_TN_EXP_UP] = "blk.%d.ffn_up.%d.weight",
    [MC_TN_EXP_DOWN] = "blk.%d.ffn_down.%d.weight",
    [MC_TN_EXPS_GATE] = "blk.%d.ffn_gate_exps.weight",
    [MC_TN_EXPS_UP] = "blk.%d.ffn_up_exps.weight",
    [MC_TN_EXPS_DOWN] = "blk.%d.ffn_down_exps.weight",
    [MC_TN_EXPS_GATE_UP] = NULL,
    [MC_TN_FFN_GATE] = "blk.%d.ffn_gate.weight",
    [MC_TN_FFN_UP] = "blk.%d.ffn_up.weight",
    [MC_TN_FFN_DOWN] = "blk.%d.ffn_down.weight",
    [MC_TN_SHEXP_GATE] = "blk.%d.ffn_gate_shexp.weight",
    [MC_TN_SHEXP_UP] = "blk.%d.ffn_up_shexp.weight",
    [MC_TN_SHEXP_DOWN] = "blk.%d.ffn_down_shexp.weight",
    [MC_TN_SHEXP_INP] = "blk.%d.ffn_gate_inp_shexp.weight",
};

int32_t *mc_hp_field(mc_hparams *hp, mc_hp id) {
    switch (id) {
    case MC_HP_N_VOCAB: return &hp->n_vocab;
    case MC_HP_N_EMBD: return &hp->n_embd;
    case MC_HP_N_FF: return &hp->n_ff;
    case MC_HP_N_FF_DENSE: return &hp->n_ff_dense;
    case MC_HP_N_FF_SHEXP: return &hp->n_ff_shexp;
    case MC_HP_N_LAYER: return &hp->n_layer;
    case MC_HP_N_HEAD: return &hp->n_head;
    case MC_HP_N_HEAD_KV: return &hp->n_head_kv;
    case MC_HP_HEAD_DIM: return &hp->head_dim;
    case MC_HP_N_EXPERT: return &hp->n_expert;
    case MC_HP_N_EXPERT_USED: return &hp->n_expert_used;
    case MC_HP_N_CTX_TRAIN: return &hp->n_ctx_train;
    case MC_HP_SLIDING_WINDOW: return &hp->sliding_window;
    case MC_HP_SPARSE_STEP: return &hp->sparse_step;
    case MC_HP_COUNT: break;
    }
    return NULL;
}

void mc_hp_range(mc_hp id, const mc_hparams *hp, int64_t *lo, int64_t *hi) {
    *lo = 1;
    *hi = 1 << 20; /* widths and counts */
    switch (id) {
    case MC_HP_N_LAYER: *hi = MC_MAX_LAYERS; break;
    case MC_HP_N_EXPERT: *hi = 1024; break; /* the router's scratch holds 1024 */
    case MC_HP_N_EXPERT_USED: *hi = hp->n_expert; break;
    case MC_HP_N_HEAD_KV: *hi = hp->n_head; break;
    case MC_HP_N_CTX_TRAIN: *hi = 1 << 30; break;
    case MC_HP_SLIDING_WINDOW: *lo = 0; *hi = 1 << 30; break;
    case MC_HP_SPARSE_STEP: *hi = MC_MAX_LAYERS; break;
    default: break;
    }
}

const char *mc_arch_gguf_name(mc_tn t) { return t >= 0 && t < MC_TN_COUNT ? k_gguf_names[t] : NULL; }

const mc_arch *mc_arch_by_hf(const char *hf_arch) {
    for (int i = 0; mc_arches[i]; i++)
        if (!strcmp(mc_arches[i]->hf_arch, hf_arch)) return mc_arches[i];
    return NULL;
}

const mc_arch *mc_arch_by_model_type(const char *model_type) {
    for (int i = 0; mc_arches[i]; i++)
        if (!strcmp(mc_arches[i]->hf_model_type, model_type)) return mc_arches[i];
    return NULL;
}

const mc_arch *mc_arch_by_gguf(const char *name, size_t len) {
    for (int i = 0; mc_arches[i]; i++)
        if (strlen(mc_arches[i]->gguf_arch) == len && !memcmp(mc_arches[i]->gguf_arch, name, len)) return mc_arches[i];
    return NULL;
}

const char *mc_arch_list(int kind, char *buf, size_t n) {
    size_t len = 0;
    if (n) buf[0] = '\0';
    for (int i = 0; mc_arches[i] && len < n; i++) {
        const mc_arch *a = mc_arches[i];
        const char *s = kind == 0 ? a->hf_arch : kind == 1 ? a->hf_model_type : a->gguf_arch;
        len += (size_t)snprintf(buf + len, n - len, "%s%s", i ? ", " : "", s);
    }
    return buf;
}

/*
 * kv_cache.c - the pool of KV blocks shared by a context's sequences
 * (layout and rules in kv_cache.h).
 */
#include "kv_cache.h"

#include "backend/cpu/kernels_impl.h" /* mc_cpu_level: the ISA the CPU kernels use */

#include <stdlib.h>
#include <string.h>

#if MC_X86
#include <immintrin.h>
#endif

moecl_status mc_kv_init(mc_kv *kv, moecl_dtype type, int n_layer, int64_t kv_dim, int32_t n_blocks_max,
                        int32_t n_seq) {
    memset(kv, 0, sizeof *kv);
    kv->type = type;
    kv->n_layer = n_layer;
    kv->kv_dim = kv_dim;
    kv->row_bytes = (size_t)kv_dim * (type == MOECL_DTYPE_F16 ? 2 : 4);
    kv->block_bytes = (size_t)n_layer * 2 * MC_KV_BLOCK * kv->row_bytes;
    kv->n_blocks_max = n_blocks_max;
    kv->n_seq = n_seq;
    kv->seq = calloc((size_t)n_seq, sizeof *kv->seq);
    if (!kv->seq) return mc_error(MOECL_ERR_NOMEM, "KV cache: out of memory for %d sequence tables", n_seq);
    return MOECL_OK;
}

void mc_kv_free(mc_kv *kv) {
    if (!kv) return;
    for (int32_t i = 0; i < kv->n_made; i++) free(kv->mem[i]);
    if (kv->seq)
        for (int32_t s = 0; s < kv->n_seq; s++) free(kv->seq[s].blocks);
    free(kv->mem);
    free(kv->free_ids);
    free(kv->seq);
    memset(kv, 0, sizeof *kv);
}

/* Grow an int32/pointer array to hold at least n elements (doubling). */
static bool grow_array(void **arr, int32_t *cap, int32_t n, size_t elem) {
    if (n <= *cap) return true;
    int64_t c = *cap ? *cap : 16;
    while (c < n) c *= 2;
    void *p = realloc(*arr, (size_t)c * elem);
    if (!p) return false;
    *arr = p;
    *cap = (int32_t)(c > INT32_MAX ? INT32_MAX : c);
    return true;
}

/* One block for a sequence: a free one, else new memory. -1 on NOMEM. */
static int32_t take_block(mc_kv *kv) {
    if (kv->n_free) return kv->free_ids[--kv->n_free];
    if (!grow_array((void **)&kv->mem, &kv->mem_cap, kv->n_made + 1, sizeof *kv->mem)) return -1;
    /* The free list must be able to take every block back without failing. */
    if (!grow_array((void **)&kv->free_ids, &kv->free_cap, kv->n_made + 1, sizeof *kv->free_ids)) return -1;
    char *m = malloc(kv->block_bytes);
    if (!m) return -1;
    kv->mem[kv->n_made] = m;
    return kv->n_made++;
}

void mc_kv_truncate(mc_kv *kv, int32_t seq, int32_t n_keep) {
    mc_kv_seq *s = &kv->seq[seq];
    if (n_keep < s->len) s->len = n_keep;
    const int32_t keep = mc_kv_blocks_for(s->len);
    while (s->n_blocks > keep) {
        kv->free_ids[kv->n_free++] = s->blocks[--s->n_blocks];
        kv->n_held--;
    }
}

moecl_status mc_kv_grow(mc_kv *kv, int32_t seq, int64_t len) {
    mc_kv_seq *s = &kv->seq[seq];
    const int32_t need = mc_kv_blocks_needed(kv, seq, len);
    if (need == 0) return MOECL_OK;
    if (need > mc_kv_available(kv))
        return mc_error(MOECL_ERR_CONTEXT_FULL,
                        "the KV cache of %d cells (%d blocks of %d) has %d free blocks; sequence %d needs %d more",
                        kv->n_blocks_max * MC_KV_BLOCK, kv->n_blocks_max, MC_KV_BLOCK, mc_kv_available(kv), seq,
                        need);
    if (!grow_array((void **)&s->blocks, &s->cap, s->n_blocks + need, sizeof *s->blocks))
        return mc_error(MOECL_ERR_NOMEM, "KV cache: out of memory for the block table of sequence %d", seq);
    for (int32_t i = 0; i < need; i++) {
        int32_t b = take_block(kv);
        if (b < 0) {
            mc_kv_truncate(kv, seq, s->len);
            return mc_error(MOECL_ERR_NOMEM, "KV cache: out of memory for a block of %zu bytes", kv->block_bytes);
        }
        s->blocks[s->n_blocks++] = b;
        kv->n_held++;
    }
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* F16 cells                                                                */
/* ------------------------------------------------------------------------ */

bool mc_kv_f16c(void) {
#if MC_X86
    return mc_cpu_level() >= ISA_AVX2; /* the AVX2 level requires F16C (isa.c) */
#else
    return false;
#endif
}

#if MC_X86
__attribute__((target("avx2,f16c"))) static void store_f16c(uint16_t *dst, const float *src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = mc_f32_to_f16(src[i]);
}
#endif

void mc_kv_store(const mc_kv *kv, void *dst, const float *src, int64_t n) {
    if (kv->type == MOECL_DTYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
#if MC_X86
    if (mc_kv_f16c()) {
        store_f16c(dst, src, n);
        return;
    }
#endif
    uint16_t *h = dst;
    for (int64_t i = 0; i < n; i++) h[i] = mc_f32_to_f16(src[i]);
}

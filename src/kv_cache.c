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
    /* About one bucket per block, at most 64 Ki (chains absorb the rest). */
    kv->n_bucket = 64;
    while (kv->n_bucket < n_blocks_max && kv->n_bucket < 65536) kv->n_bucket *= 2;
    kv->bucket = malloc((size_t)kv->n_bucket * sizeof *kv->bucket);
    if (!kv->bucket) {
        mc_kv_free(kv);
        return mc_error(MOECL_ERR_NOMEM, "KV cache: out of memory for the prefix table");
    }
    for (int32_t i = 0; i < kv->n_bucket; i++) kv->bucket[i] = -1;
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
    free(kv->ref);
    free(kv->hashed);
    free(kv->hash);
    free(kv->cow);
    free(kv->parent);
    free(kv->tokens);
    free(kv->chain);
    free(kv->bucket);
    free(kv->count);
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

/* Room for n made blocks in every per-block array. */
static bool grow_blocks(mc_kv *kv, int32_t n) {
    if (n <= kv->mem_cap) return true;
    int32_t cap = kv->mem_cap;
    /* every array grows to the same capacity; mem last, as it records it */
    int32_t c;
#define GROW(arr)                                                                                                      \
    c = cap;                                                                                                           \
    if (!grow_array((void **)&kv->arr, &c, n, sizeof *kv->arr)) return false;
    GROW(ref) GROW(hashed) GROW(hash) GROW(parent) GROW(tokens) GROW(chain) GROW(count)
#undef GROW
    if (!grow_array((void **)&kv->mem, &kv->mem_cap, n, sizeof *kv->mem)) return false;
    return true;
}

/* One block for a sequence, held once: a free one, else new memory. -1 on
 * NOMEM. */
static int32_t take_block(mc_kv *kv) {
    int32_t b;
    if (kv->n_free) b = kv->free_ids[--kv->n_free];
    else {
        if (!grow_blocks(kv, kv->n_made + 1)) return -1;
        /* The free list must be able to take every block back without failing. */
        if (!grow_array((void **)&kv->free_ids, &kv->free_cap, kv->n_made + 1, sizeof *kv->free_ids)) return -1;
        char *m = malloc(kv->block_bytes);
        if (!m) return -1;
        kv->mem[kv->n_made] = m;
        b = kv->n_made++;
        kv->count[b] = 0;
    }
    kv->ref[b] = 1;
    kv->hashed[b] = 0;
    kv->n_held++;
    return b;
}

/* ------------------------------------------------------------------------ */
/* The table of shareable blocks                                            */
/* ------------------------------------------------------------------------ */

/* FNV-1a over the parent hash and the tokens, then a 64-bit finaliser
 * (splitmix64's) so the low bits that pick a bucket depend on every input. */
static uint64_t block_hash(uint64_t parent, const int32_t *tokens) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < 8; i++) h = (h ^ ((parent >> (8 * i)) & 0xff)) * 0x100000001b3ull;
    for (int t = 0; t < MC_KV_BLOCK; t++)
        for (int i = 0; i < 4; i++) h = (h ^ (((uint32_t)tokens[t] >> (8 * i)) & 0xff)) * 0x100000001b3ull;
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

/* The block in the table for (parent, tokens) with hash h, or -1. */
static int32_t lookup(const mc_kv *kv, uint64_t h, uint64_t parent, const int32_t *tokens) {
    for (int32_t b = kv->bucket[h & (uint64_t)(kv->n_bucket - 1)]; b >= 0; b = kv->chain[b])
        if (kv->hash[b] == h && kv->parent[b] == parent && !memcmp(kv->tokens[b], tokens, sizeof kv->tokens[b]))
            return b;
    return -1;
}

/* Take block b out of the table (it is about to change or be freed). */
static void unhash(mc_kv *kv, int32_t b) {
    if (kv->hashed[b] == 2) {
        int32_t *pp = &kv->bucket[kv->hash[b] & (uint64_t)(kv->n_bucket - 1)];
        while (*pp != b) pp = &kv->chain[*pp];
        *pp = kv->chain[b];
    }
    kv->hashed[b] = 0;
}

/* A sequence lets go of block b; the last one gives it back to the pool. */
static void release_block(mc_kv *kv, int32_t b) {
    if (--kv->ref[b] > 0) return;
    unhash(kv, b);
    kv->free_ids[kv->n_free++] = b;
    kv->n_held--;
}

void mc_kv_publish(mc_kv *kv, int32_t seq, const int32_t *tokens, int32_t n) {
    const mc_kv_seq *s = &kv->seq[seq];
    if (n > s->len) n = s->len;
    uint64_t parent = 0;
    for (int32_t i = 0; (i + 1) * MC_KV_BLOCK <= n; i++) {
        const int32_t b = s->blocks[i];
        const int32_t *t = tokens + (int64_t)i * MC_KV_BLOCK;
        if (!kv->hashed[b]) {
            const uint64_t h = block_hash(parent, t);
            kv->hash[b] = h;
            kv->parent[b] = parent;
            memcpy(kv->tokens[b], t, sizeof kv->tokens[b]);
            kv->hashed[b] = 1;
            if (lookup(kv, h, parent, t) < 0) {
                int32_t *head = &kv->bucket[h & (uint64_t)(kv->n_bucket - 1)];
                kv->chain[b] = *head;
                *head = b;
                kv->hashed[b] = 2;
            }
        }
        parent = kv->hash[b];
    }
}

int32_t mc_kv_match(const mc_kv *kv, const int32_t *tokens, int32_t n) {
    uint64_t parent = 0;
    int32_t i = 0;
    for (; (i + 1) * MC_KV_BLOCK <= n; i++) {
        const int32_t *t = tokens + (int64_t)i * MC_KV_BLOCK;
        const uint64_t h = block_hash(parent, t);
        if (lookup(kv, h, parent, t) < 0) break;
        parent = h;
    }
    return i * MC_KV_BLOCK;
}

moecl_status mc_kv_share(mc_kv *kv, int32_t seq, const int32_t *tokens, int32_t n_share) {
    mc_kv_seq *s = &kv->seq[seq];
    const int32_t k = mc_kv_blocks_for(n_share);
    /* The tail of the block table holds the shared ids while the old ones
     * are let go (a block may be in both: its reference keeps it alive). */
    if (!grow_array((void **)&s->blocks, &s->cap, s->n_blocks + k, sizeof *s->blocks))
        return mc_error(MOECL_ERR_NOMEM, "KV cache: out of memory for the block table of sequence %d", seq);
    int32_t *ids = s->blocks + s->n_blocks;
    uint64_t parent = 0;
    for (int32_t i = 0; i < k; i++) {
        const int32_t *t = tokens + (int64_t)i * MC_KV_BLOCK;
        const uint64_t h = block_hash(parent, t);
        ids[i] = lookup(kv, h, parent, t); /* the caller matched these: found */
        kv->ref[ids[i]]++;
        parent = h;
    }
    const int32_t old = s->n_blocks;
    for (int32_t i = 0; i < old; i++) release_block(kv, s->blocks[i]);
    memmove(s->blocks, s->blocks + old, (size_t)k * sizeof *s->blocks);
    s->n_blocks = k;
    s->len = n_share;
    return MOECL_OK;
}

int32_t mc_kv_blocks_freed_by(mc_kv *kv, const bool *drop) {
    int32_t freed = 0;
    for (int32_t s = 0; s < kv->n_seq; s++)
        if (drop[s])
            for (int32_t i = 0; i < kv->seq[s].n_blocks; i++) kv->count[kv->seq[s].blocks[i]]++;
    for (int32_t s = 0; s < kv->n_seq; s++)
        if (drop[s])
            for (int32_t i = 0; i < kv->seq[s].n_blocks; i++) {
                const int32_t b = kv->seq[s].blocks[i];
                if (kv->count[b] == 0) continue; /* counted already */
                freed += kv->count[b] == kv->ref[b];
                kv->count[b] = 0;
            }
    return freed;
}

int32_t mc_kv_blocks_shared(const mc_kv *kv) {
    int32_t n = 0;
    for (int32_t b = 0; b < kv->n_made; b++) n += kv->ref[b] > 1;
    return n;
}

/* ------------------------------------------------------------------------ */
/* Growing and truncating                                                   */
/* ------------------------------------------------------------------------ */

void mc_kv_truncate(mc_kv *kv, int32_t seq, int32_t n_keep) {
    mc_kv_seq *s = &kv->seq[seq];
    if (n_keep < s->len) s->len = n_keep;
    const int32_t keep = mc_kv_blocks_for(s->len);
    while (s->n_blocks > keep) release_block(kv, s->blocks[--s->n_blocks]);
}

/* Whether growing sequence s writes into its last block, held by others too. */
static bool needs_copy(const mc_kv *kv, const mc_kv_seq *s, int64_t len) {
    return len > s->len && s->len % MC_KV_BLOCK && kv->ref[s->blocks[s->len / MC_KV_BLOCK]] > 1;
}

int32_t mc_kv_blocks_needed(const mc_kv *kv, int32_t seq, int64_t len) {
    const mc_kv_seq *s = &kv->seq[seq];
    int32_t n = mc_kv_blocks_for(len) - s->n_blocks;
    return (n > 0 ? n : 0) + needs_copy(kv, s, len);
}

moecl_status mc_kv_grow(mc_kv *kv, int32_t seq, int64_t len) {
    mc_kv_seq *s = &kv->seq[seq];
    const int32_t need = mc_kv_blocks_needed(kv, seq, len);
    if (need == 0) {
        /* Positions from s->len on are written in place: a block in the
         * table no longer holds what its hash says once they are. */
        if (len > s->len && s->len % MC_KV_BLOCK) unhash(kv, s->blocks[s->len / MC_KV_BLOCK]);
        return MOECL_OK;
    }
    if (need > mc_kv_available(kv))
        return mc_error(MOECL_ERR_CONTEXT_FULL,
                        "the KV cache of %d cells (%d blocks of %d) has %d free blocks; sequence %d needs %d more",
                        kv->n_blocks_max * MC_KV_BLOCK, kv->n_blocks_max, MC_KV_BLOCK, mc_kv_available(kv), seq,
                        need);
    if (!grow_array((void **)&s->blocks, &s->cap, mc_kv_blocks_for(len), sizeof *s->blocks))
        return mc_error(MOECL_ERR_NOMEM, "KV cache: out of memory for the block table of sequence %d", seq);
    if (len > s->len && s->len % MC_KV_BLOCK) {
        const int32_t i = s->len / MC_KV_BLOCK, old = s->blocks[i];
        if (kv->ref[old] > 1) { /* copy on write: the others keep the original */
            if (!grow_array((void **)&kv->cow, &kv->cow_cap, kv->n_cow + 1, sizeof *kv->cow))
                return mc_error(MOECL_ERR_NOMEM, "KV cache: out of memory for the list of copied blocks");
            const int32_t b = take_block(kv);
            if (b < 0) return mc_error(MOECL_ERR_NOMEM, "KV cache: out of memory for a block of %zu bytes", kv->block_bytes);
            memcpy(kv->mem[b], kv->mem[old], kv->block_bytes);
            kv->cow[kv->n_cow][0] = old;
            kv->cow[kv->n_cow++][1] = b;
            s->blocks[i] = b;
            release_block(kv, old);
        } else {
            unhash(kv, old);
        }
    }
    while (s->n_blocks < mc_kv_blocks_for(len)) {
        int32_t b = take_block(kv);
        if (b < 0) {
            mc_kv_truncate(kv, seq, s->len);
            return mc_error(MOECL_ERR_NOMEM, "KV cache: out of memory for a block of %zu bytes", kv->block_bytes);
        }
        s->blocks[s->n_blocks++] = b;
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

/*
 * kv_cache.h - the KV cache: one pool of cells shared by every sequence of
 * a context, handed out in blocks of MC_KV_BLOCK positions.
 *
 * A sequence owns a block table: block i holds its positions
 * [i·MC_KV_BLOCK, (i+1)·MC_KV_BLOCK). Blocks are taken from the pool as a
 * sequence grows and given back when it is truncated, so n_seq × n_ctx is a
 * limit, not a reservation. A block's memory is allocated the first time it
 * is used and kept (on the free list) until the context is freed: allocated
 * bytes follow the most cells ever held at once, not the budget.
 *
 * One block, for every layer (E = 4 bytes for F32, 2 for F16):
 *
 *   layer 0: K [MC_KV_BLOCK][kv_dim]  V [MC_KV_BLOCK][kv_dim]
 *   layer 1: K ...                    V ...
 *   ...                                           n_layer·2·MC_KV_BLOCK·kv_dim·E bytes
 *
 * Keys are stored after RoPE. F16 cells hold IEEE binary16, rounded to
 * nearest even from the float32 projections.
 *
 * Shared prefix blocks. A block may be in several sequences' tables (ref
 * counts how many); it goes back to the pool when the last one lets go.
 * Once a block is full and its tokens are known (mc_kv_publish) it is
 * entered in a table under the hash of (the previous block's hash, its 16
 * tokens), so the hash names the whole prefix up to the block's end; a
 * sequence starting with the same whole blocks takes them from the table
 * (mc_kv_share) instead of computing them again. Positions a sequence has
 * are never written again, so a shared block only changes when a sequence
 * that was cut back inside it grows: that sequence first gets a copy of the
 * block of its own (copy on write), and a block that is rewritten in place
 * (held once) leaves the table first.
 */
#ifndef MOECL_KV_CACHE_H
#define MOECL_KV_CACHE_H

#include "internal.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* 16 positions: a sequence wastes at most 15 cells, and the block table of
 * a 4096-position sequence is 256 ids. */
#define MC_KV_BLOCK 16

typedef struct mc_kv_seq {
    int32_t *blocks;   /* [cap] pool block ids, positions in order */
    int32_t n_blocks;  /* blocks held: always mc_kv_blocks_for(len) between calls */
    int32_t cap;
    int32_t len;       /* positions held */
} mc_kv_seq;

typedef struct mc_kv {
    moecl_dtype type;       /* MOECL_DTYPE_F32 or MOECL_DTYPE_F16 */
    int n_layer;
    int64_t kv_dim;         /* n_head_kv * head_dim */
    size_t row_bytes;       /* kv_dim cells of one position, one of K or V */
    size_t block_bytes;     /* n_layer * 2 * MC_KV_BLOCK * row_bytes */
    int32_t n_blocks_max;   /* the budget */
    int32_t n_made;         /* blocks whose memory exists: ids 0..n_made-1 */
    int32_t n_held;         /* blocks in sequences' tables */
    char **mem;             /* [mem_cap] memory of block id */
    int32_t mem_cap;
    int32_t *free_ids;      /* [n_free] made and not held (a stack) */
    int32_t n_free, free_cap;
    int32_t n_seq;
    mc_kv_seq *seq;         /* [n_seq] */
    /* Sharing, per made block (arrays of mem_cap). */
    int32_t *ref;           /* sequences holding the block (0: free) */
    uint8_t *hashed;        /* 0: no hash; 1: hash known; 2: also in the table */
    uint64_t *hash;         /* hash of the prefix ending with the block */
    uint64_t *parent;       /* the previous block's hash (0 for block 0) */
    int32_t (*tokens)[MC_KV_BLOCK]; /* the block's tokens, to confirm a table hit */
    int32_t *chain;         /* next block id in the same table bucket, -1 at the end */
    int32_t *bucket;        /* [n_bucket] first block id of each bucket, -1 if empty */
    int32_t n_bucket;       /* a power of two */
    int32_t *count;         /* scratch for mc_kv_blocks_freed_by, zero between calls */
    /* The copies on write mc_kv_grow made since the caller last set n_cow
     * to 0, as (source, destination) block ids: a device holding its own
     * copy of the cells (the dense layers on OpenCL) repeats them. */
    int32_t (*cow)[2];
    int32_t n_cow, cow_cap;
} mc_kv;

static inline int32_t mc_kv_blocks_for(int64_t positions) {
    return (int32_t)((positions + MC_KV_BLOCK - 1) / MC_KV_BLOCK);
}

/* A pool of n_blocks_max blocks for n_seq sequences; no block memory yet.
 * MOECL_ERR_NOMEM if the tables cannot be allocated. */
moecl_status mc_kv_init(mc_kv *kv, moecl_dtype type, int n_layer, int64_t kv_dim, int32_t n_blocks_max,
                        int32_t n_seq);
void mc_kv_free(mc_kv *kv);

/* Blocks the pool can still hand out (free ones plus ones never made). */
static inline int32_t mc_kv_available(const mc_kv *kv) { return kv->n_blocks_max - kv->n_held; }

/* Blocks sequence seq needs beyond those it holds to hold len positions
 * (one more when its last block is shared and must be copied first). */
int32_t mc_kv_blocks_needed(const mc_kv *kv, int32_t seq, int64_t len);

/* Give sequence seq the blocks for positions up to len (its length is not
 * changed). MOECL_ERR_CONTEXT_FULL if the pool has too few blocks,
 * MOECL_ERR_NOMEM if a block's memory cannot be allocated; on either the
 * blocks taken by this call are back in the pool. */
moecl_status mc_kv_grow(mc_kv *kv, int32_t seq, int64_t len);

/* Drop positions >= n_keep of sequence seq and give back the blocks no
 * longer needed. n_keep >= len only gives back blocks held past len (what
 * a failed mc_kv_grow or decode left). */
void mc_kv_truncate(mc_kv *kv, int32_t seq, int32_t n_keep);

/* Blocks the pool would get back if the sequences with drop[s] set let go
 * of all their blocks: those no other sequence holds. */
int32_t mc_kv_blocks_freed_by(mc_kv *kv, const bool *drop);

/* Blocks held by more than one sequence. */
int32_t mc_kv_blocks_shared(const mc_kv *kv);

/* Sequence seq holds tokens[0..n) (n <= its length): enter its full blocks
 * that have no hash yet in the table of shareable blocks. A block whose
 * prefix is in the table already (another sequence computed the same
 * prefix at the same time) keeps its hash and stays out of the table. */
void mc_kv_publish(mc_kv *kv, int32_t seq, const int32_t *tokens, int32_t n);

/* Positions at the start of tokens[0..n) that the table holds, in whole
 * blocks (a multiple of MC_KV_BLOCK, at most n). */
int32_t mc_kv_match(const mc_kv *kv, const int32_t *tokens, int32_t n);

/* Sequence seq lets go of its blocks and takes the table's blocks for the
 * first n_share positions of tokens (n_share <= mc_kv_match(tokens));
 * its length becomes n_share. MOECL_ERR_NOMEM (seq unchanged) if its block
 * table cannot grow. */
moecl_status mc_kv_share(mc_kv *kv, int32_t seq, const int32_t *tokens, int32_t n_share);

/* The K (which 0) or V (which 1) cells of position pos of sequence seq in
 * layer il: kv_dim elements of kv->type. The position's block must be held. */
static inline void *mc_kv_row(const mc_kv *kv, int32_t seq, int il, int which, int32_t pos) {
    const int32_t b = kv->seq[seq].blocks[pos / MC_KV_BLOCK];
    return kv->mem[b] + ((size_t)(il * 2 + which) * MC_KV_BLOCK + (size_t)(pos % MC_KV_BLOCK)) * kv->row_bytes;
}

/* Whether F16 cells are converted with F16C: the CPU kernels' level is
 * AVX2 or above (src/backend/cpu/isa.c, capped by MOECL_CPU_ISA). */
bool mc_kv_f16c(void);

/* Store n floats as kv->type cells (F16: F16C when the CPU has it). */
void mc_kv_store(const mc_kv *kv, void *dst, const float *src, int64_t n);

/* Bytes of block memory allocated (made blocks, free or held). */
static inline uint64_t mc_kv_bytes(const mc_kv *kv) { return (uint64_t)kv->n_made * kv->block_bytes; }

/* The KV cache of a context (context.c), for the engine's admission. */
const mc_kv *mc_context_kv(const moecl_context *ctx);

/* The same, for the engine's prefix sharing (between decode calls only). */
mc_kv *mc_context_kv_mut(moecl_context *ctx);

/* Experts run by the last successful batch, summed over layers (each expert
 * with at least one token counted once per layer): what `moecl bench
 * --parallel` turns into distinct expert bytes per step. */
int64_t mc_context_experts_run(const moecl_context *ctx);

#endif

/*
 * test_kv.c - the KV cache's shared pool of blocks on the golden tiny model
 * (tests/data/tiny-f32, head_dim 16, 2 layers):
 *   - a budget smaller than the sequences' contexts: the batch that does not
 *     fit is refused with MOECL_ERR_CONTEXT_FULL and changes nothing; cells
 *     given back by truncation are used by another sequence;
 *   - prefix reuse through blocks: rewinding a sequence (inside a block, at
 *     a block's end, past it) while another sequence took blocks in between
 *     and reading the rest gives the logits of a fresh read (1e-4), with F32
 *     and F16 cells;
 *   - blocks shared between sequences (kv_cache.h): a sequence that takes
 *     another's whole prefix blocks from the table and reads the rest gives
 *     the logits of a fresh read (1e-4, F32 and F16); one cut back inside a
 *     shared block writes into a copy, and the others' logits do not move;
 *     a block rewritten in place or freed leaves the table;
 *   - memory follows use: a context of 64 sequences x 4096 positions
 *     allocates nothing for its cache until it decodes, then the blocks it
 *     uses (F16 half of F32), and its RSS grows by far less than the budget.
 *
 * usage: test_kv DATA_DIR
 */
#include "test_util.h"

#include "kv_cache.h"
#include "moecl.h"

#include <string.h>
#include <unistd.h>

static int32_t g_vocab;

static void make_tokens(int32_t *p, int n, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = 3 + (int32_t)((seed >> 33) % 125);
    }
}

static moecl_context *new_ctx(const moecl_model *m, uint32_t n_ctx, uint32_t n_seq, uint32_t cells, moecl_dtype kv) {
    moecl_context_params cp = moecl_context_default_params();
    cp.backend = MOECL_BACKEND_CPU;
    cp.n_threads = 2;
    cp.n_ctx = n_ctx;
    cp.n_batch = 64;
    cp.n_seq_max = n_seq;
    cp.n_kv_cells = cells;
    cp.kv_type = kv;
    moecl_context *ctx = NULL;
    moecl_status st = moecl_context_new(m, &cp, &ctx);
    CHECKF(st == MOECL_OK, "context: %s", moecl_last_error());
    return ctx;
}

static moecl_status decode_seq(moecl_context *ctx, const int32_t *toks, int n, int32_t seq) {
    int32_t seqs[64];
    for (int i = 0; i < n; i++) seqs[i] = seq;
    moecl_batch b = {.n_tokens = n, .tokens = toks, .seq_id = seqs};
    return moecl_decode_batch(ctx, &b);
}

/* Logits of toks[0..n) read fresh in sequence 0 of a new context. */
static void fresh_logits(const moecl_model *m, const int32_t *toks, int n, moecl_dtype kv, float *out) {
    moecl_context *ctx = new_ctx(m, 64, 1, 0, kv);
    if (!ctx) return;
    CHECK(moecl_decode(ctx, toks, n) == MOECL_OK);
    memcpy(out, moecl_get_logits(ctx, -1), (size_t)g_vocab * sizeof(float));
    moecl_context_free(ctx);
}

/* ------------------------------------------------------------------------ */

static void test_exhaustion(const moecl_model *m) {
    int32_t a[40], b[8];
    make_tokens(a, 40, 1);
    make_tokens(b, 8, 2);
    /* 40 cells round up to 3 blocks of 16, for 2 sequences of 64 */
    moecl_context *ctx = new_ctx(m, 64, 2, 40, MOECL_DTYPE_F32);
    if (!ctx) return;
    moecl_kv_info ki;
    CHECK(moecl_context_get_kv_info(ctx, &ki) == MOECL_OK);
    CHECK(ki.n_cells == 48 && ki.block_cells == 16 && ki.n_cells_held == 0 && ki.bytes_allocated == 0);
    CHECK(ki.type == MOECL_DTYPE_F32);

    CHECK(decode_seq(ctx, a, 33, 0) == MOECL_OK); /* 3 blocks */
    float before[4096];
    CHECK(g_vocab <= 4096);
    memcpy(before, moecl_get_logits(ctx, -1), (size_t)g_vocab * sizeof(float));
    /* no block left for sequence 1, nor for sequence 0's 49th position */
    moecl_status st = decode_seq(ctx, b, 1, 1);
    CHECK(st == MOECL_ERR_CONTEXT_FULL);
    CHECKF(strstr(moecl_context_last_error(ctx), "the KV cache is full") != NULL, "%s",
           moecl_context_last_error(ctx));
    CHECK(moecl_seq_length(ctx, 0) == 33 && moecl_seq_length(ctx, 1) == 0);
    CHECK(decode_seq(ctx, a + 33, 7, 0) == MOECL_OK); /* 40 positions: still 3 blocks */
    /* both sequences in one batch: all or nothing */
    int32_t toks[9] = {a[0], b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]};
    int32_t seqs[9] = {0, 1, 1, 1, 1, 1, 1, 1, 1};
    moecl_batch mb = {.n_tokens = 9, .tokens = toks, .seq_id = seqs};
    CHECK(moecl_decode_batch(ctx, &mb) == MOECL_ERR_CONTEXT_FULL);
    CHECK(moecl_seq_length(ctx, 0) == 40 && moecl_seq_length(ctx, 1) == 0);
    CHECK(moecl_context_get_kv_info(ctx, &ki) == MOECL_OK && ki.n_cells_held == 48 && ki.n_positions == 40);

    /* Giving back sequence 0's last block lets sequence 1 in; its logits are
     * those of a fresh read, in a block sequence 0 held before. */
    CHECK(moecl_seq_truncate(ctx, 0, 32) == MOECL_OK);
    CHECK(moecl_context_get_kv_info(ctx, &ki) == MOECL_OK && ki.n_cells_held == 32 && ki.n_positions == 32);
    CHECK(decode_seq(ctx, b, 8, 1) == MOECL_OK);
    float fresh[4096];
    fresh_logits(m, b, 8, MOECL_DTYPE_F32, fresh);
    double err = t_nerr(moecl_get_logits(ctx, -1), fresh, (size_t)g_vocab);
    CHECKF(err <= 1e-4, "sequence 1 in a reused block: %.3g", err);
    /* and sequence 0, read again to 33 positions, gives its logits of before */
    CHECK(decode_seq(ctx, b, 1, 1) == MOECL_OK); /* sequence 1: 9 positions, 1 block */
    CHECK(moecl_seq_truncate(ctx, 1, 0) == MOECL_OK);
    CHECK(decode_seq(ctx, a + 32, 1, 0) == MOECL_OK);
    err = t_nerr(moecl_get_logits(ctx, -1), before, (size_t)g_vocab);
    CHECKF(err <= 1e-4, "sequence 0 after the failures: %.3g", err);
    moecl_context_free(ctx);

    /* a pool must be F32 or F16 */
    moecl_context_params cp = moecl_context_default_params();
    cp.backend = MOECL_BACKEND_CPU;
    cp.kv_type = MOECL_DTYPE_Q8_0;
    ctx = NULL;
    CHECK(moecl_context_new(m, &cp, &ctx) == MOECL_ERR_INVALID_ARG && ctx == NULL);
    CHECKF(strstr(moecl_last_error(), "kv_type q8_0") != NULL, "%s", moecl_last_error());
    CHECK(moecl_context_get_kv_info(NULL, &ki) == MOECL_ERR_INVALID_ARG);
}

/* ------------------------------------------------------------------------ */

static void test_prefix(const moecl_model *m, moecl_dtype kv) {
    int32_t full[48], other[20];
    make_tokens(full, 48, 3);
    make_tokens(other, 20, 4);
    float fresh[4096];
    fresh_logits(m, full, 48, kv, fresh);
    const int keeps[] = {5, 16, 17, 31, 32, 47};
    /* 5 blocks for 2 sequences: the second one's blocks sit between the first one's */
    moecl_context *ctx = new_ctx(m, 64, 2, 80, kv);
    if (!ctx) return;
    for (size_t i = 0; i < sizeof keeps / sizeof keeps[0]; i++) {
        const int keep = keeps[i];
        CHECK(moecl_seq_truncate(ctx, -1, 0) == MOECL_OK);
        CHECK(decode_seq(ctx, full, 10, 0) == MOECL_OK);
        CHECK(decode_seq(ctx, other, 20, 1) == MOECL_OK);
        CHECK(decode_seq(ctx, full + 10, 38, 0) == MOECL_OK);
        /* a different continuation after the kept prefix, then the rewind */
        CHECK(moecl_seq_truncate(ctx, 0, keep) == MOECL_OK);
        CHECK(decode_seq(ctx, other, 48 - keep < 20 ? 48 - keep : 20, 0) == MOECL_OK);
        CHECK(moecl_seq_truncate(ctx, 0, keep) == MOECL_OK);
        CHECK(moecl_seq_truncate(ctx, 1, 3) == MOECL_OK); /* sequence 1 gives blocks back meanwhile */
        CHECK(decode_seq(ctx, full + keep, 48 - keep, 0) == MOECL_OK);
        double err = t_nerr(moecl_get_logits(ctx, -1), fresh, (size_t)g_vocab);
        CHECKF(err <= 1e-4, "%s cells, prefix of %d kept: %.3g", moecl_dtype_name(kv), keep, err);
    }
    moecl_context_free(ctx);
}

/* ------------------------------------------------------------------------ */

static void check_logits(moecl_context *ctx, const moecl_model *m, const int32_t *toks, int n, moecl_dtype kv,
                         const char *what) {
    float fresh[4096];
    fresh_logits(m, toks, n, kv, fresh);
    double err = t_nerr(moecl_get_logits(ctx, -1), fresh, (size_t)g_vocab);
    CHECKF(err <= 1e-4, "%s cells, %s: %.3g", moecl_dtype_name(kv), what, err);
}

static void test_shared(const moecl_model *m, moecl_dtype kv_type) {
    int32_t full[48], other[12], mixed[30];
    make_tokens(full, 48, 6);
    make_tokens(other, 12, 7);
    memcpy(mixed, full, 20 * sizeof *full);
    memcpy(mixed + 20, other, 10 * sizeof *other);
    moecl_context *ctx = new_ctx(m, 64, 3, 0, kv_type);
    if (!ctx) return;
    mc_kv *kv = mc_context_kv_mut(ctx);
    moecl_kv_info ki;

    /* Sequence 0 reads 40 tokens: its 2 full blocks enter the table. */
    CHECK(decode_seq(ctx, full, 40, 0) == MOECL_OK);
    CHECK(mc_kv_match(kv, full, 48) == 0);
    mc_kv_publish(kv, 0, full, 40);
    CHECK(mc_kv_match(kv, full, 48) == 32 && mc_kv_match(kv, full, 31) == 16 && mc_kv_match(kv, other, 12) == 0);
    CHECK(mc_kv_match(kv, mixed, 30) == 16);

    /* Sequence 1 takes them and reads the rest: 1 block of its own. */
    CHECK(mc_kv_share(kv, 1, full, 32) == MOECL_OK);
    CHECK(moecl_seq_length(ctx, 1) == 32 && mc_kv_blocks_shared(kv) == 2);
    CHECK(moecl_context_get_kv_info(ctx, &ki) == MOECL_OK && ki.n_cells_held == 48);
    CHECK(decode_seq(ctx, full + 32, 16, 1) == MOECL_OK);
    check_logits(ctx, m, full, 48, kv_type, "2 shared blocks, then 16 positions read");
    CHECK(moecl_context_get_kv_info(ctx, &ki) == MOECL_OK && ki.n_cells_held == 64);

    /* Sequence 2 takes them too, is cut back inside the second and reads
     * something else from there: into a copy of that block. */
    CHECK(mc_kv_share(kv, 2, full, 32) == MOECL_OK && mc_kv_blocks_shared(kv) == 2);
    CHECK(moecl_seq_truncate(ctx, 2, 20) == MOECL_OK);
    CHECK(mc_kv_blocks_needed(kv, 2, 30) == 1);
    CHECK(decode_seq(ctx, other, 10, 2) == MOECL_OK);
    check_logits(ctx, m, mixed, 30, kv_type, "written into a copy of a shared block");
    CHECK(moecl_context_get_kv_info(ctx, &ki) == MOECL_OK && ki.n_cells_held == 80);
    CHECK(mc_kv_match(kv, full, 48) == 32); /* the originals are untouched */

    /* The owners' logits have not moved. */
    CHECK(decode_seq(ctx, full + 40, 8, 0) == MOECL_OK);
    check_logits(ctx, m, full, 48, kv_type, "sequence 0 after the others shared and copied its blocks");
    CHECK(moecl_seq_truncate(ctx, 1, 47) == MOECL_OK);
    CHECK(decode_seq(ctx, full + 47, 1, 1) == MOECL_OK);
    check_logits(ctx, m, full, 48, kv_type, "sequence 1 after the copy");

    /* The last reference frees a block and takes it out of the table. */
    CHECK(moecl_seq_truncate(ctx, -1, 0) == MOECL_OK);
    CHECK(moecl_context_get_kv_info(ctx, &ki) == MOECL_OK && ki.n_cells_held == 0);
    CHECK(mc_kv_match(kv, full, 48) == 0 && mc_kv_blocks_shared(kv) == 0);

    /* A block held once and rewritten in place leaves the table. */
    CHECK(decode_seq(ctx, full, 32, 0) == MOECL_OK);
    mc_kv_publish(kv, 0, full, 32);
    CHECK(mc_kv_match(kv, full, 48) == 32);
    CHECK(moecl_seq_truncate(ctx, 0, 20) == MOECL_OK);
    CHECK(mc_kv_match(kv, full, 48) == 32); /* not written yet: still good */
    CHECK(decode_seq(ctx, other, 10, 0) == MOECL_OK);
    CHECK(mc_kv_match(kv, full, 48) == 16);
    check_logits(ctx, m, mixed, 30, kv_type, "rewritten in place");

    /* Blocks only the dropped sequences hold are the ones freed. */
    CHECK(mc_kv_share(kv, 1, full, 16) == MOECL_OK);
    CHECK(decode_seq(ctx, other, 12, 2) == MOECL_OK);
    bool drop[3] = {true, false, false};
    CHECK(mc_kv_blocks_freed_by(kv, drop) == 1); /* block 0 is also sequence 1's */
    drop[1] = true;
    CHECK(mc_kv_blocks_freed_by(kv, drop) == 2);
    drop[2] = true;
    CHECK(mc_kv_blocks_freed_by(kv, drop) == 3);
    moecl_context_free(ctx);
}

/* ------------------------------------------------------------------------ */

/* The process's address space (vm) and resident set, KiB. An untouched
 * reservation (calloc of the budget) shows in vm only. */
static bool mem_kib(long *vm, long *rss) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return false;
    bool ok = fscanf(f, "%ld %ld", vm, rss) == 2;
    fclose(f);
    *vm *= sysconf(_SC_PAGESIZE) / 1024;
    *rss *= sysconf(_SC_PAGESIZE) / 1024;
    return ok;
}

static void test_memory(const moecl_model *m) {
    int32_t toks[40];
    make_tokens(toks, 40, 5);
    uint64_t used_bytes[2] = {0, 0};
    for (int f16 = 0; f16 < 2; f16++) {
        const moecl_dtype kv = f16 ? MOECL_DTYPE_F16 : MOECL_DTYPE_F32;
        long vm0 = 0, rss0 = 0, vm1 = 0, rss1 = 0;
        const bool have_mem = mem_kib(&vm0, &rss0);
        moecl_context *ctx = new_ctx(m, 4096, 64, 0, kv);
        if (!ctx) return;
        moecl_kv_info ki;
        CHECK(moecl_context_get_kv_info(ctx, &ki) == MOECL_OK);
        const double budget = (double)ki.n_cells * (double)ki.bytes_per_cell;
        CHECK(ki.n_cells == 64 * 4096 && ki.bytes_allocated == 0 && ki.type == kv);
        CHECK(decode_seq(ctx, toks, 40, 0) == MOECL_OK);
        CHECK(decode_seq(ctx, toks, 20, 63) == MOECL_OK);
        CHECK(moecl_context_get_kv_info(ctx, &ki) == MOECL_OK);
        /* 3 + 2 blocks of 16 cells */
        CHECKF(ki.bytes_allocated == 5 * 16 * ki.bytes_per_cell && ki.n_cells_held == 80 && ki.n_positions == 60,
               "%llu bytes, %lld cells held", (unsigned long long)ki.bytes_allocated, (long long)ki.n_cells_held);
        used_bytes[f16] = ki.bytes_allocated;
        /* The budget (256 Ki cells: 128 MiB of F32 here) is neither reserved
         * nor touched: the address space grows by the scratch of a
         * 4096-position context and the blocks. */
        if (have_mem && mem_kib(&vm1, &rss1)) {
            CHECKF((double)(vm1 - vm0) * 1024.0 < budget / 4 && (double)(rss1 - rss0) * 1024.0 < budget / 4,
                   "address space +%ld KiB, RSS +%ld KiB; the budget is %.0f KiB", vm1 - vm0, rss1 - rss0,
                   budget / 1024.0);
        } else {
            fprintf(stderr, "  (no /proc/self/statm: memory growth not checked)\n");
        }
        fprintf(stderr, "  %s: budget %.0f KiB, %llu bytes allocated for 60 positions, address space +%ld KiB, "
                "RSS +%ld KiB\n", moecl_dtype_name(kv), budget / 1024.0, (unsigned long long)ki.bytes_allocated,
                vm1 - vm0, rss1 - rss0);
        /* truncation gives blocks back to the pool; their memory stays for reuse */
        CHECK(moecl_seq_truncate(ctx, -1, 0) == MOECL_OK);
        CHECK(moecl_context_get_kv_info(ctx, &ki) == MOECL_OK && ki.n_cells_held == 0 && ki.n_positions == 0);
        CHECK(decode_seq(ctx, toks, 40, 7) == MOECL_OK);
        CHECK(moecl_context_get_kv_info(ctx, &ki) == MOECL_OK && ki.bytes_allocated == used_bytes[f16]);
        moecl_context_free(ctx);
    }
    CHECKF(used_bytes[1] * 2 == used_bytes[0], "F16 %llu bytes, F32 %llu", (unsigned long long)used_bytes[1],
           (unsigned long long)used_bytes[0]);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_kv DATA_DIR\n");
        return 1;
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/tiny-f32", argv[1]);
    moecl_model *m = NULL;
    CHECKF(moecl_model_load(path, NULL, &m) == MOECL_OK, "%s", moecl_last_error());
    if (!m) return t_done("kv");
    moecl_model_info info;
    moecl_model_get_info(m, &info);
    g_vocab = info.n_vocab;
    test_exhaustion(m);
    test_prefix(m, MOECL_DTYPE_F32);
    test_prefix(m, MOECL_DTYPE_F16);
    test_shared(m, MOECL_DTYPE_F32);
    test_shared(m, MOECL_DTYPE_F16);
    test_memory(m);
    moecl_model_free(m);
    return t_done("kv");
}

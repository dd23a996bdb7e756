/*
 * test_overlap.c - with experts of a layer on an OpenCL device and on the
 * CPU, the two compute at the same time.
 *
 * The context records, per layer, when its expert work began and ended on
 * the host, how long the CPU spent computing its experts inside moe_submit
 * (sync_ns) and how long the device was busy by its own profiling clock
 * (device_ns, first write's start to the read's end). Run one after the
 * other, the layer takes at least sync_ns + device_ns, since the device's
 * busy time lies inside the submit..wait window after the CPU's part. Run
 * at the same time it takes less. The test asks for less (wall below 0.95
 * of the sum in at least one layer of three prompts, and below the sum in
 * most), and that the device was always submitted to before the CPU began.
 * PoCL and the CPU backend get one thread each, so that they do not fight
 * over the same cores.
 *
 * Skips (77) without an OpenCL device. MOECL_DEVICE selects one.
 */
#include "backend/backend.h"
#include "test_util.h"
#include "tiny_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    setenv("POCL_MAX_PTHREAD_COUNT", "1", 1); /* PoCL's threads, read when its platform starts */
    setenv("POCL_CPU_MAX_CU_COUNT", "1", 1);
    setenv("MOECL_CL_PROFILE", "1", 1);

    char dir[4096];
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/moecl-overlap-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        fprintf(stderr, "cannot make a temporary directory\n");
        return 1;
    }
    /* Experts big enough that each side's part takes milliseconds. */
    moecl_random_model_params p = tiny_params();
    p.n_embd = 256;
    p.n_ff = 768;
    p.n_expert = 8;
    p.n_expert_used = 2;
    p.n_layer = 2;
    int rc = 1;
    moecl_model *m = NULL;
    moecl_context *ctx = NULL;
    if (moecl_random_model_write(dir, &p, NULL, NULL) != MOECL_OK || moecl_model_load(dir, NULL, &m) != MOECL_OK) {
        fprintf(stderr, "model: %s\n", moecl_last_error());
        goto out;
    }
    moecl_context_params cp = moecl_context_default_params();
    cp.backend = MOECL_BACKEND_OPENCL;
    cp.device = getenv("MOECL_DEVICE");
    cp.gpu_experts = 3; /* 3 of 8 on the device: PoCL's kernels are slower than the CPU's */
    cp.n_threads = 1;
    cp.n_ctx = 256;
    cp.n_batch = 96;
    if (moecl_context_new(m, &cp, &ctx) != MOECL_OK) {
        fprintf(stderr, "SKIP: no OpenCL device to run experts on: %s\n", moecl_last_error());
        rc = 77;
        goto out;
    }
    moecl_context_backend_info bi;
    if (moecl_context_get_backend_info(ctx, &bi) != MOECL_OK || bi.n_expert_device == 0) {
        fprintf(stderr, "SKIP: the device holds no expert\n");
        rc = 77;
        goto out;
    }

    mc_moe_trace tr[2];
    mc_context_trace(ctx, tr);
    int32_t prompt[96];
    uint32_t s = 12345;
    int n_layers = 0, n_below = 0, n_clear = 0, bad_order = 0;
    double best = 1e9;
    for (int run = 0; run < 3; run++) {
        for (int i = 0; i < 96; i++) prompt[i] = (int32_t)((s = s * 1103515245u + 12345u) >> 16) % p.n_vocab;
        CHECKF(moecl_seq_truncate(ctx, -1, 0) == MOECL_OK, "%s", moecl_last_error());
        CHECKF(moecl_decode(ctx, prompt, 96) == MOECL_OK, "%s", moecl_last_error());
        for (int il = 0; il < p.n_layer; il++) {
            const mc_moe_trace *t = &tr[il];
            if (!t->n_sync || !t->n_async) continue;
            CHECKF(t->device_ns > 0, "layer %d: the device's busy time was not measured", il);
            if (t->device_ns <= 0) continue;
            if (!t->async_first) bad_order++;
            const double wall = (double)(t->t_end - t->t_begin), parts = (double)(t->sync_ns + t->device_ns);
            const double ratio = wall / parts;
            fprintf(stderr, "run %d layer %d: wall %.2f ms, cpu %.2f ms, device %.2f ms, wall / (cpu + device) %.2f\n",
                    run, il, wall / 1e6, (double)t->sync_ns / 1e6, (double)t->device_ns / 1e6, ratio);
            n_layers++;
            n_below += ratio < 1.0;
            n_clear += ratio < 0.95;
            if (ratio < best) best = ratio;
        }
    }
    CHECKF(n_layers >= 3, "only %d layers had work on both the CPU and the device", n_layers);
    CHECKF(bad_order == 0, "%d layers submitted to the CPU before the device", bad_order);
    CHECKF(n_clear >= 1, "no layer ran its CPU and device parts at the same time (best wall / sum %.2f)", best);
    CHECKF(2 * n_below > n_layers, "only %d of %d layers took less than the sum of their parts", n_below, n_layers);
    rc = t_failures ? 1 : 0;
    if (!rc) fprintf(stderr, "ok: %d of %d layers below the sum of their parts, best %.2f\n", n_below, n_layers, best);
out:
    moecl_context_free(ctx);
    moecl_model_free(m);
    remove_dir(dir);
    return rc;
}
